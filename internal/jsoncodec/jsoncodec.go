// Package jsoncodec is the JSON codec that the host (goplugins.JSONCodec)
// and the plugin SDK (sdk.JSONCodec) share: one type, named "json" on the
// wire, so that both sides encode alike.
package jsoncodec

import "encoding/json"

// Codec encodes with encoding/json.
type Codec struct{}

// Name returns "json".
func (Codec) Name() string { return "json" }

// Marshal encodes v with encoding/json.
func (Codec) Marshal(v any) ([]byte, error) { return json.Marshal(v) }

// Unmarshal decodes data into v with encoding/json.
func (Codec) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }
