package wire

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestWriterMaxCapped: a peer's declared maximum frame size is capped at
// MaxFrameSizeLimit, so a frame's 32-bit length field can never wrap.
func TestWriterMaxCapped(t *testing.T) {
	const huge = 1<<32 + 1<<10 // wraps to 1 KiB in a uint32
	tests := []struct {
		name string
		w    func() *Writer
	}{
		{"NewWriter", func() *Writer { return NewWriter(new(bytes.Buffer), huge) }},
		{"SetMax", func() *Writer { w := NewWriter(new(bytes.Buffer), 0); w.SetMax(huge); return w }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, MaxFrameSizeLimit, tt.w().Max(), "Max()")
		})
	}
}
