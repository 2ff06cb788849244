package goplugins

import "encoding/json"

// Codec encodes the requests and responses of out-of-process plugins. Its
// Name is sent to the plugin, which must know a codec of the same name.
// A Codec is used from many goroutines at once.
type Codec interface {
	// Name identifies the encoding on the wire, e.g. "json".
	Name() string
	// Marshal encodes v.
	Marshal(v any) ([]byte, error)
	// Unmarshal decodes data into the value v points to.
	Unmarshal(data []byte, v any) error
}

// JSONCodec is the default Codec, named "json": encoding/json.
type JSONCodec struct{}

// Name returns "json".
func (JSONCodec) Name() string { return "json" }

// Marshal encodes v with encoding/json.
func (JSONCodec) Marshal(v any) ([]byte, error) { return json.Marshal(v) }

// Unmarshal decodes data into v with encoding/json.
func (JSONCodec) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }
