package wire

import (
	"io"
	"sync"
)

// maxSpare is the largest batch buffer a Writer keeps for reuse.
const maxSpare = 1 << 20

// Writer encodes frames onto a stream. It is safe for concurrent use and
// batches: frames written while another goroutine is in the write system
// call are appended to a buffer that goroutine writes next, so concurrent
// callers share system calls and no lock is held during one.
type Writer struct {
	w        io.Writer
	max      int
	mu       sync.Mutex
	buf      []byte
	spare    []byte
	flushing bool
	err      error
}

// NewWriter returns a Writer that refuses frames whose length field would
// exceed max (DefaultMaxFrameSize when max <= 0): the limit of the peer.
func NewWriter(w io.Writer, max int) *Writer {
	if max <= 0 {
		max = DefaultMaxFrameSize
	}
	return &Writer{w: w, max: max}
}

// SetMax changes the peer's maximum frame size, as learned in the handshake.
func (w *Writer) SetMax(max int) {
	w.mu.Lock()
	w.max = max
	w.mu.Unlock()
}

// Max returns the peer's maximum frame size.
func (w *Writer) Max() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.max
}

// Write queues one frame and, unless another goroutine is flushing, writes
// the queue. A frame over the limit returns a *FrameTooLargeError and writes
// nothing. After a write error every call returns that error; a frame queued
// behind a failed write is lost with the stream.
func (w *Writer) Write(t Type, id uint64, payload []byte) error {
	w.mu.Lock()
	if size := MinFrameSize + len(payload); size > w.max {
		max := w.max
		w.mu.Unlock()
		return &FrameTooLargeError{Type: t, ID: id, Size: size, Max: max}
	}
	if w.err != nil {
		err := w.err
		w.mu.Unlock()
		return err
	}
	w.buf = AppendFrame(w.buf, t, id, payload)
	if w.flushing {
		w.mu.Unlock()
		return nil
	}
	w.flushing = true
	for len(w.buf) > 0 && w.err == nil {
		out := w.buf
		w.buf = w.spare[:0]
		w.mu.Unlock()
		_, err := w.w.Write(out)
		w.mu.Lock()
		if cap(out) <= maxSpare {
			w.spare = out[:0]
		} else {
			w.spare = nil
		}
		if err != nil {
			w.err = err
		}
	}
	w.flushing = false
	err := w.err
	w.mu.Unlock()
	return err
}
