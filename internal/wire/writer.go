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
	idle     sync.Cond // broadcast when a flush ends
	flushing bool
	err      error
}

// NewWriter returns a Writer that refuses frames whose length field would
// exceed max (DefaultMaxFrameSize when max <= 0, MaxFrameSizeLimit when
// larger): the limit of the peer.
func NewWriter(w io.Writer, max int) *Writer {
	if max <= 0 {
		max = DefaultMaxFrameSize
	}
	wr := &Writer{w: w, max: min(max, MaxFrameSizeLimit)}
	wr.idle.L = &wr.mu
	return wr
}

// SetMax changes the peer's maximum frame size, as learned in the
// handshake. It is capped at MaxFrameSizeLimit, so that a frame's length
// field never wraps.
func (w *Writer) SetMax(max int) {
	w.mu.Lock()
	w.max = min(max, MaxFrameSizeLimit)
	w.mu.Unlock()
}

// Max returns the peer's maximum frame size.
func (w *Writer) Max() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.max
}

// Write queues one frame and, unless another goroutine is flushing, writes
// the queue. A call that only queues its frame behind another goroutine's
// write returns at once. A frame over the limit returns a
// *FrameTooLargeError and writes nothing. After a write error every call
// returns that error; a frame queued behind a failed write is lost with
// the stream.
func (w *Writer) Write(t Type, id uint64, payload []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if size := MinFrameSize + len(payload); size > w.max {
		return &FrameTooLargeError{Type: t, ID: id, Size: size, Max: w.max}
	}
	if w.err != nil {
		return w.err
	}
	w.buf = AppendFrame(w.buf, t, id, payload)
	if w.flushing {
		return nil
	}
	w.flushing = true
	w.flush()
	return w.err
}

// Flush waits until no goroutine is writing the queue, so that every frame
// queued before it was called has been written, and returns the stream's
// error, if any.
func (w *Writer) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for w.flushing {
		w.idle.Wait()
	}
	return w.err
}

// flush writes the buffer until it stays empty or a write fails, with w.mu
// held and w.flushing set; it clears w.flushing and wakes Flush.
func (w *Writer) flush() {
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
	w.idle.Broadcast()
}
