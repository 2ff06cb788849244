package protocodec

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func TestFor(t *testing.T) {
	_, ok := For[*wrapperspb.StringValue]()
	assert.True(t, ok, "a generated message pointer")
	_, ok = For[string]()
	assert.False(t, ok)
	_, ok = For[wrapperspb.StringValue]()
	assert.False(t, ok, "a message value is not a proto.Message")
	_, ok = For[any]()
	assert.False(t, ok)
}

func TestRoundTrip(t *testing.T) {
	c, ok := For[*wrapperspb.StringValue]()
	require.True(t, ok)
	b, err := c.Marshal(wrapperspb.String("hello"))
	require.NoError(t, err)
	v, err := c.Unmarshal(b)
	require.NoError(t, err)
	assert.Equal(t, "hello", v.GetValue())

	b, err = c.Marshal(nil)
	require.NoError(t, err, "a nil message encodes as an empty one")
	assert.Empty(t, b)

	_, err = c.Unmarshal([]byte{0xff, 0xff})
	require.ErrorContains(t, err, "google.protobuf.StringValue")
}
