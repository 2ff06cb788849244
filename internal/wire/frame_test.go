package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestFrameRoundTrip(t *testing.T) {
	tests := []struct {
		name    string
		typ     Type
		id      uint64
		payload []byte
	}{
		{"empty payload", TypeHealth, 7, nil},
		{"call", TypeCall, 1, []byte(`{"data":"hi"}`)},
		{"max id", TypeResult, ^uint64(0), []byte{0, 1, 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			require.NoError(t, NewWriter(&buf, 0).Write(tt.typ, tt.id, tt.payload))
			require.Equal(t, HeaderSize+len(tt.payload), buf.Len(), "encoded bytes")
			f, err := NewReader(&buf, 0).Read()
			require.NoError(t, err)
			assert.Equal(t, tt.typ, f.Type, "frame type")
			assert.Equal(t, tt.id, f.ID, "frame id")
			assert.Equal(t, tt.payload, f.Payload, "frame payload")
		})
	}
}

// TestFrameBytes pins the byte layout documented in docs/PROTOCOL.md.
func TestFrameBytes(t *testing.T) {
	got := AppendFrame(nil, TypeCall, 1, []byte(`"hi"`))
	want := []byte{0, 0, 0, 13, 0x03, 0, 0, 0, 0, 0, 0, 0, 1, '"', 'h', 'i', '"'}
	assert.Equal(t, want, got, "AppendFrame bytes")
}

func TestReaderErrors(t *testing.T) {
	valid := AppendFrame(nil, TypeResult, 2, []byte("ok"))
	tests := []struct {
		name  string
		input []byte
		want  error
	}{
		{"clean EOF", nil, io.EOF},
		{"short header", []byte{0, 0, 0}, io.ErrUnexpectedEOF},
		{"short payload", valid[:len(valid)-1], io.ErrUnexpectedEOF},
		{"length below minimum", []byte{0, 0, 0, 8, 3, 0, 0, 0, 0, 0, 0, 0, 1}, ErrMalformed},
		{"unknown type", AppendFrame(nil, Type(0x7f), 1, nil), ErrMalformed},
		{"type after version 2", AppendFrame(nil, Type(0x13), 1, nil), ErrMalformed},
		{"text on the pipe", []byte("hello, world! this is not a frame\n"), ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewReader(bytes.NewReader(tt.input), 0).Read()
			assert.ErrorIs(t, err, tt.want, "Read error")
		})
	}
}

func TestReaderSkipsOversizedFrame(t *testing.T) {
	var in []byte
	in = AppendFrame(in, TypeResult, 1, bytes.Repeat([]byte("x"), 100))
	in = AppendFrame(in, TypeResult, 2, []byte("small"))
	r := NewReader(bytes.NewReader(in), 50)
	_, err := r.Read()
	var tl *FrameTooLargeError
	require.ErrorAs(t, err, &tl, "first Read error")
	require.ErrorIs(t, err, ErrFrameTooLarge, "first Read error")
	assert.Equal(t, FrameTooLargeError{ID: 1, Type: TypeResult, Size: MinFrameSize + 100, Max: 50}, *tl, "error fields")
	f, err := r.Read()
	require.NoError(t, err, "frame after the oversized one")
	assert.Equal(t, uint64(2), f.ID, "frame after the oversized one")
	assert.Equal(t, "small", string(f.Payload), "frame after the oversized one")
}

func TestWriterRefusesOversizedFrame(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf, 50)
	err := w.Write(TypeCall, 3, make([]byte, 42))
	require.ErrorIs(t, err, ErrFrameTooLarge, "Write error")
	require.Zero(t, buf.Len(), "oversized Write wrote bytes")
	require.NoError(t, w.Write(TypeCall, 4, make([]byte, 41)), "Write at the limit")
}

type failWriter struct{ n int }

func (f *failWriter) Write(p []byte) (int, error) {
	f.n++
	return 0, io.ErrClosedPipe
}

func TestWriterStickyError(t *testing.T) {
	fw := &failWriter{}
	w := NewWriter(fw, 0)
	for i := 0; i < 2; i++ {
		require.ErrorIs(t, w.Write(TypeCall, 1, nil), io.ErrClosedPipe, "Write %d error", i)
	}
	assert.Equal(t, 1, fw.n, "underlying writer calls after failing")
}

// TestWriterConcurrent checks that frames written from many goroutines
// arrive whole and each exactly once.
func TestWriterConcurrent(t *testing.T) {
	pr, pw := io.Pipe()
	w := NewWriter(pw, 0)
	const writers, each = 8, 200
	var wg sync.WaitGroup
	for g := 0; g < writers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				id := uint64(g*each + i)
				if !assert.NoError(t, w.Write(TypeCall, id, bytes.Repeat([]byte{byte(id)}, int(id%50)))) {
					return
				}
			}
		}()
	}
	go func() { wg.Wait(); pw.Close() }()
	seen := make(map[uint64]bool)
	r := NewReader(pr, 0)
	for {
		f, err := r.Read()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		require.False(t, seen[f.ID], "frame %d duplicated", f.ID)
		require.Len(t, f.Payload, int(f.ID%50), "payload of frame %d", f.ID)
		seen[f.ID] = true
	}
	assert.Len(t, seen, writers*each, "frames read")
}

func BenchmarkWriteRead(b *testing.B) {
	payload := make([]byte, 64)
	var buf bytes.Buffer
	w := NewWriter(&buf, 0)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		buf.Reset()
		if err := w.Write(TypeCall, uint64(i), payload); err != nil {
			b.Fatal(err)
		}
		if _, err := NewReader(&buf, 0).Read(); err != nil {
			b.Fatal(err)
		}
	}
}

// TestDocumentedPayloads pins the JSON of the worked example in
// docs/PROTOCOL.md.
func TestDocumentedPayloads(t *testing.T) {
	tests := []struct {
		v    any
		want string
	}{
		{Hello{Protocols: []int{1, 2}, Codec: "json", MaxFrameSize: DefaultMaxFrameSize, Name: "echo"},
			`{"protocols":[1,2],"codec":"json","max_frame_size":4194304,"name":"echo"}`},
		{Welcome{Protocol: 2, MaxFrameSize: DefaultMaxFrameSize, Info: Info{Name: "echo", Version: "1.0.0"}},
			`{"protocol":2,"max_frame_size":4194304,"name":"echo","version":"1.0.0"}`},
		{ErrorReply{Code: CodeCanceled, Message: "context canceled"},
			`{"code":"canceled","message":"context canceled"}`},
	}
	for _, tt := range tests {
		got, err := json.Marshal(tt.v)
		if assert.NoError(t, err, "json.Marshal(%T)", tt.v) {
			assert.Equal(t, tt.want, string(got), "json.Marshal(%T)", tt.v)
		}
	}
}

// flaky returns errFlaky before every other Read, as a stream with a read
// deadline does.
type flaky struct {
	r    io.Reader
	fail bool
}

var errFlaky = errors.New("i/o timeout")

func (f *flaky) Read(p []byte) (int, error) {
	f.fail = !f.fail
	if f.fail {
		return 0, errFlaky
	}
	return f.r.Read(p[:min(len(p), 3)]) // a few bytes at a time
}

func TestReaderResumesAfterError(t *testing.T) {
	var in []byte
	in = AppendFrame(in, TypeResult, 1, []byte("first payload"))
	in = AppendFrame(in, TypeResult, 2, bytes.Repeat([]byte("y"), 40)) // over the limit: skipped
	in = AppendFrame(in, TypeError, 3, []byte("third"))
	r := NewReader(&flaky{r: bytes.NewReader(in)}, 30)
	var got []string
	for len(got) < 3 {
		f, err := r.Read()
		var tl *FrameTooLargeError
		switch {
		case errors.Is(err, errFlaky):
			continue
		case errors.As(err, &tl):
			got = append(got, "too large")
		default:
			require.NoError(t, err, "Read")
			got = append(got, string(f.Payload))
		}
	}
	require.Equal(t, []string{"first payload", "too large", "third"}, got, "frames")
	if _, err := r.Read(); err != io.EOF {
		assert.ErrorIs(t, err, errFlaky, "Read at the end, want EOF")
	}
}

// TestReaderShortLengthFailsAtOnce: a length field below 9 breaks the
// stream as soon as it arrives (PROTOCOL.md section 3), even when the
// peer keeps the stream open and sends nothing more, so the reader does
// not wait for a header that never comes.
func TestReaderShortLengthFailsAtOnce(t *testing.T) {
	for _, tc := range []struct {
		name  string
		bytes []byte
	}{
		{"length 5", []byte{0, 0, 0, 5, 4, 0, 0, 0, 0}},
		{"unknown type", []byte{0, 0, 0, 9, 0xEE}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pr, pw := io.Pipe()
			defer pw.Close()
			go pw.Write(tc.bytes) // and the stream stays open
			done := make(chan error, 1)
			go func() {
				_, err := NewReader(pr, 0).Read()
				done <- err
			}()
			select {
			case err := <-done:
				assert.ErrorIs(t, err, ErrMalformed, "Read error")
			case <-time.After(10 * time.Second):
				require.Fail(t, "Read waits for the rest of a header whose length field is already invalid")
			}
		})
	}
}
