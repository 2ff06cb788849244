package sdk

import "github.com/goplugins/goplugins/internal/jsoncodec"

// Codec encodes request and response bodies. The host names the codec in
// the handshake; Serve knows JSONCodec and those passed with WithCodec.
type Codec interface {
	Name() string
	Marshal(v any) ([]byte, error)
	Unmarshal(data []byte, v any) error
}

// JSONCodec is the default codec: encoding/json, named "json" on the wire.
// It is the same type as the host's goplugins.JSONCodec. Its zero value is
// ready to use: JSONCodec{}.
type JSONCodec = jsoncodec.Codec
