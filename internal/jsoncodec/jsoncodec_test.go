package jsoncodec

import (
	"testing"
)

// TestCodecRoundTripsWithEncodingJSON: the codec is named "json" and
// encodes and decodes as encoding/json does.
func TestCodecRoundTripsWithEncodingJSON(t *testing.T) {
	var c Codec
	if c.Name() != "json" {
		t.Fatalf("Name() = %q, want json", c.Name())
	}
	data, err := c.Marshal(map[string]int{"a": 1})
	if err != nil || string(data) != `{"a":1}` {
		t.Fatalf("Marshal = %s, %v", data, err)
	}
	var back map[string]int
	if err := c.Unmarshal(data, &back); err != nil || back["a"] != 1 {
		t.Fatalf("Unmarshal = %v, %v", back, err)
	}
}
