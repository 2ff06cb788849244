package wire

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"
	"time"
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
			w := tt.w()
			if got := w.Max(); got != MaxFrameSizeLimit {
				t.Fatalf("Max() = %d, want %d", got, MaxFrameSizeLimit)
			}
		})
	}
}

// stalledPipe returns a pipe that nobody reads until the test does.
func stalledPipe(t *testing.T) (r, w *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	return r, w
}

// TestWriterBounded: a write into a stream nobody reads returns at its
// deadline or at the end of its ctx, breaks the stream, and a cancellation
// that fires after a bounded write ended does not cut the next one.
func TestWriterBounded(t *testing.T) {
	big := make([]byte, 1<<20)
	tests := []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
		dl   time.Time
	}{
		{"deadline", func() (context.Context, context.CancelFunc) { return context.Background(), func() {} }, time.Now().Add(50 * time.Millisecond)},
		{"ctx deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 50*time.Millisecond)
		}, time.Time{}},
		{"ctx cancelled", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(50*time.Millisecond, cancel)
			return ctx, cancel
		}, time.Time{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, pw := stalledPipe(t)
			w := NewWriter(pw, 2<<20)
			ctx, cancel := tt.ctx()
			defer cancel()
			if err := w.WriteContext(ctx, tt.dl, TypeCall, 1, big); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("WriteContext = %v, want os.ErrDeadlineExceeded", err)
			}
			if err := w.Write(TypeCall, 2, nil); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("Write after the cut = %v, want the stream's error", err)
			}
		})
	}
	t.Run("late cancellation", func(t *testing.T) {
		pr, pw := stalledPipe(t)
		w := NewWriter(pw, 0)
		ctx, cancel := context.WithCancel(context.Background())
		if err := w.WriteContext(ctx, time.Time{}, TypeCall, 1, []byte("a")); err != nil {
			t.Fatal(err)
		}
		cancel() // after the write: must not cut the next one
		// A write that blocks until the reader drains the pipe.
		done := make(chan error, 1)
		go func() { done <- w.Write(TypeCall, 2, big) }()
		r := NewReader(pr, 2<<20)
		for id := uint64(1); id <= 2; id++ {
			if f, err := r.Read(); err != nil || f.ID != id {
				t.Fatalf("frame %d: %+v, %v", id, f.ID, err)
			}
		}
		if err := <-done; err != nil {
			t.Fatalf("Write after a late cancellation = %v", err)
		}
	})
}

// TestWriterPostAndFlush: Post never waits for a stalled stream, and Flush
// waits until the queued frames are written.
func TestWriterPostAndFlush(t *testing.T) {
	pr, pw := stalledPipe(t)
	w := NewWriter(pw, 2<<20)
	// Fill the pipe: the goroutine Post starts blocks; Post returned.
	if err := w.Post(TypeCall, 1, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	if err := w.Post(TypeCancel, 1, nil); err != nil {
		t.Fatal(err)
	}
	flushed := make(chan error, 1)
	go func() { flushed <- w.Flush() }()
	r := NewReader(pr, 2<<20)
	for _, want := range []Type{TypeCall, TypeCancel} {
		f, err := r.Read()
		if err != nil || f.Type != want {
			t.Fatalf("read %v, %v; want %v", f.Type, err, want)
		}
	}
	if err := <-flushed; err != nil {
		t.Fatalf("Flush = %v", err)
	}
}
