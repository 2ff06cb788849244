package wire

import (
	"bytes"
	"testing"
)

func TestReaderBuffered(t *testing.T) {
	stream := AppendFrame(nil, TypeCall, 1, []byte("one"))
	stream = AppendFrame(stream, TypeCall, 2, []byte("two"))
	r := NewReader(bytes.NewReader(stream), 0)
	if r.Buffered() {
		t.Fatal("Buffered before the first read")
	}
	for i, want := range []bool{true, false} {
		if _, err := r.Read(); err != nil {
			t.Fatal(err)
		}
		if got := r.Buffered(); got != want {
			t.Fatalf("Buffered after frame %d = %v, want %v", i+1, got, want)
		}
	}
}
