package goplugins

import "encoding/json"

// Codec turns requests and responses into bytes for plugins that run out of
// process, and back. Host and plugin must use the same codec; its Name is
// sent so that a mismatch is reported rather than misread.
type Codec interface {
	// Name identifies the codec on the wire, e.g. "json".
	Name() string
	Marshal(v any) ([]byte, error)
	Unmarshal(data []byte, v any) error
}

// JSONCodec encodes with encoding/json. It is the default codec.
var JSONCodec Codec = jsonCodec{}

type jsonCodec struct{}

func (jsonCodec) Name() string                       { return "json" }
func (jsonCodec) Marshal(v any) ([]byte, error)      { return json.Marshal(v) }
func (jsonCodec) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }
