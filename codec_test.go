package goplugins

import (
	"testing"

	"github.com/goplugins/goplugins/sdk"
	"github.com/stretchr/testify/require"
)

// TestJSONCodecIsTheSDKs: the host's JSONCodec is the SDK's type (one
// codec for both sides), named "json".
func TestJSONCodecIsTheSDKs(t *testing.T) {
	var c sdk.JSONCodec = JSONCodec{} // one type: this compiles only if so
	require.Equal(t, "json", c.Name())
	var _ Codec = c
}
