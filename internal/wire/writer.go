package wire

import (
	"context"
	"io"
	"sync"
	"time"
)

// maxSpare is the largest batch buffer a Writer keeps for reuse.
const maxSpare = 1 << 20

// deadliner is the part of *os.File a Writer uses to bound a write.
type deadliner interface {
	SetWriteDeadline(t time.Time) error
}

// Writer encodes frames onto a stream. It is safe for concurrent use and
// batches: frames written while another goroutine is in the write system
// call are appended to a buffer that goroutine writes next, so concurrent
// callers share system calls and no lock is held during one.
type Writer struct {
	w        io.Writer
	dl       deadliner // w's write deadline; nil when w has none
	max      int
	mu       sync.Mutex
	buf      []byte
	spare    []byte
	idle     sync.Cond // broadcast when a flush ends
	flushing bool
	flushes  uint64 // numbers the bounded flushes
	armed    uint64 // the bounded flush in progress, 0 if none
	err      error
}

// NewWriter returns a Writer that refuses frames whose length field would
// exceed max (DefaultMaxFrameSize when max <= 0, MaxFrameSizeLimit when
// larger): the limit of the peer.
// When w has a SetWriteDeadline method (an *os.File), WriteContext can
// bound its writes.
func NewWriter(w io.Writer, max int) *Writer {
	if max <= 0 {
		max = DefaultMaxFrameSize
	}
	wr := &Writer{w: w, max: min(max, MaxFrameSizeLimit)}
	wr.dl, _ = w.(deadliner)
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
// the queue. A frame over the limit returns a *FrameTooLargeError and writes
// nothing. After a write error every call returns that error; a frame queued
// behind a failed write is lost with the stream.
func (w *Writer) Write(t Type, id uint64, payload []byte) error {
	return w.WriteContext(context.Background(), time.Time{}, t, id, payload)
}

// WriteContext is Write with a bound: when this call writes the queue and
// ctx ends or deadline (if not zero) passes before the stream has taken it,
// the write is cut short and an error matching os.ErrDeadlineExceeded is
// returned. A frame may then be cut in the middle, so the stream is broken:
// every later call returns that error. A call that only queues its frame
// behind another goroutine's write returns at once. The bound needs a
// stream with a write deadline (an *os.File); on others it is ignored.
func (w *Writer) WriteContext(ctx context.Context, deadline time.Time, t Type, id uint64, payload []byte) error {
	w.mu.Lock()
	if err := w.queue(t, id, payload); err != nil || w.flushing {
		w.mu.Unlock()
		return err
	}
	w.flushing = true
	bounded := w.dl != nil && (ctx.Done() != nil || !deadline.IsZero())
	var stop func() bool
	if bounded {
		w.flushes++
		w.armed = w.flushes
		_ = w.dl.SetWriteDeadline(deadline)
		if ctx.Done() != nil {
			stop = context.AfterFunc(ctx, w.cut(w.armed))
		}
	}
	w.flush()
	if bounded {
		w.armed = 0
		_ = w.dl.SetWriteDeadline(time.Time{})
	}
	err := w.err
	w.mu.Unlock()
	if stop != nil {
		stop()
	}
	return err
}

// Post queues one frame without waiting: unless another goroutine is
// flushing, a new goroutine writes the queue, without a bound. A frame over
// the limit returns a *FrameTooLargeError, a broken stream its error; a
// write error of the new goroutine is returned by later calls.
func (w *Writer) Post(t Type, id uint64, payload []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.queue(t, id, payload); err != nil || w.flushing {
		return err
	}
	w.flushing = true
	go func() {
		w.mu.Lock()
		w.flush()
		w.mu.Unlock()
	}()
	return nil
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

// queue appends one frame to the buffer, with w.mu held.
func (w *Writer) queue(t Type, id uint64, payload []byte) error {
	if size := MinFrameSize + len(payload); size > w.max {
		return &FrameTooLargeError{Type: t, ID: id, Size: size, Max: w.max}
	}
	if w.err != nil {
		return w.err
	}
	w.buf = AppendFrame(w.buf, t, id, payload)
	return nil
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

// cut returns the function that interrupts bounded flush n, if it is still
// in progress, by moving the write deadline to the past.
func (w *Writer) cut(n uint64) func() {
	return func() {
		w.mu.Lock()
		if w.armed == n {
			_ = w.dl.SetWriteDeadline(time.Unix(1, 0))
		}
		w.mu.Unlock()
	}
}
