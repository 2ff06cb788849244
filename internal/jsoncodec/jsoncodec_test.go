package jsoncodec

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestCodecRoundTripsWithEncodingJSON: the codec is named "json" and
// encodes and decodes as encoding/json does.
func TestCodecRoundTripsWithEncodingJSON(t *testing.T) {
	var c Codec
	require.Equal(t, "json", c.Name())
	data, err := c.Marshal(map[string]int{"a": 1})
	require.NoError(t, err, "Marshal")
	require.Equal(t, `{"a":1}`, string(data), "Marshal: the bytes encoding/json writes")
	var back map[string]int
	require.NoError(t, c.Unmarshal(data, &back), "Unmarshal")
	require.Equal(t, map[string]int{"a": 1}, back, "Unmarshal")
}
