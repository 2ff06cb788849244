package wire

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestHostCallBytes pins the HOST_CALL payload layout of docs/PROTOCOL.md
// and its round trip.
func TestHostCallBytes(t *testing.T) {
	hc := HostCall{Parent: 1, Name: "kv.get", Body: []byte(`"k"`)}
	got := AppendHostCall(nil, hc)
	want := []byte{0, 0, 0, 0, 0, 0, 0, 1, 6, 'k', 'v', '.', 'g', 'e', 't', '"', 'k', '"'}
	require.Equal(t, want, got, "AppendHostCall bytes")
	back, err := ParseHostCall(got)
	require.NoError(t, err)
	assert.Equal(t, hc, back, "ParseHostCall")
}

func TestParseHostCallRefusesMalformed(t *testing.T) {
	for _, tt := range []struct {
		name    string
		payload []byte
	}{
		{"empty", nil},
		{"short header", []byte{0, 0, 0, 1}},
		{"empty name", []byte{0, 0, 0, 0, 0, 0, 0, 1, 0, 'x'}},
		{"name cut short", []byte{0, 0, 0, 0, 0, 0, 0, 1, 5, 'k', 'v'}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseHostCall(tt.payload)
			assert.Error(t, err)
		})
	}
}

// TestTypeIn: version 2's frame types are not frames of version 1.
func TestTypeIn(t *testing.T) {
	assert.True(t, TypeShutdown.In(1))
	assert.False(t, TypeHostCall.In(1))
	assert.False(t, TypeMetadata.In(1))
	assert.True(t, TypeHostCall.In(2))
	assert.True(t, TypeMetadata.In(2))
	assert.False(t, Type(0x13).In(2))
	assert.Equal(t, "HOST_CANCEL", TypeHostCancel.String())
}
