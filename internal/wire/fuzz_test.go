package wire

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/stretchr/testify/require"
)

// FuzzFrame decodes arbitrary bytes as a frame stream. Decoding must never
// panic, every error must be one of the documented kinds, and every frame
// read must re-encode to the exact bytes it came from.
func FuzzFrame(f *testing.F) {
	f.Add(AppendFrame(nil, TypeCall, 1, []byte(`{"data":"hi"}`)))
	f.Add(AppendFrame(AppendFrame(nil, TypeHealth, 2, nil), TypeCancel, 1, nil))
	f.Add([]byte("not a frame at all\n"))
	f.Add([]byte{0, 0, 0, 9, 0x05, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x03, 0, 0, 0, 0, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		const max = 256
		r := NewReader(bytes.NewReader(data), max)
		consumed := 0
		for {
			fr, err := r.Read()
			if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, ErrMalformed) {
				return
			}
			var tl *FrameTooLargeError
			if errors.As(err, &tl) {
				require.Greater(t, tl.Size, max, "frame refused under the limit")
				consumed += 4 + tl.Size
				continue
			}
			require.NoError(t, err, "undocumented error")
			enc := AppendFrame(nil, fr.Type, fr.ID, fr.Payload)
			require.Equal(t, data[consumed:consumed+len(enc)], enc, "frame %+v re-encodes to other bytes than its input", fr)
			consumed += len(enc)
		}
	})
}
