package goplugins

import "github.com/goplugins/goplugins/internal/jsoncodec"

// Codec turns requests and responses into bytes for plugins that run out of
// process, and back. Host and plugin must use the same codec; its Name is
// sent so that a mismatch is reported rather than misread.
type Codec interface {
	// Name identifies the codec on the wire, e.g. "json".
	Name() string
	Marshal(v any) ([]byte, error)
	Unmarshal(data []byte, v any) error
}

// JSONCodec is the default codec: encoding/json, named "json" on the wire.
// It is the same type as the plugin SDK's sdk.JSONCodec, so host and plugin
// encode alike. Its zero value is ready to use: JSONCodec{}.
type JSONCodec = jsoncodec.Codec
