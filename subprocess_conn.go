package goplugins

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	goerrors "github.com/agilira/go-errors"

	"github.com/goplugins/goplugins/internal/proc"
	"github.com/goplugins/goplugins/internal/wire"
)

// ErrorReply is the error a subprocess plugin answered with. Errors from
// Subprocess methods wrap it: errors.As(err, &reply) reads the plugin's
// code, and IsRetryable(err) reports its retryable flag.
type ErrorReply struct {
	// Code is the plugin's error code (see docs/PROTOCOL.md for the codes
	// the protocol itself uses).
	Code string
	// Message is the plugin's error message.
	Message string
	// Retryable is the plugin's hint that the same request may succeed if
	// sent again.
	Retryable bool
}

// Error returns "code: message".
func (e *ErrorReply) Error() string { return e.Code + ": " + e.Message }

// IsRetryable reports the plugin's retryable flag.
func (e *ErrorReply) IsRetryable() bool { return e.Retryable }

// subReply is what a pending call receives.
type subReply struct {
	f   wire.Frame
	err error
}

var subReplyChans = sync.Pool{New: func() any { return make(chan subReply, 1) }}

// subConn is one running child and the protocol connection to it.
//
// There is no reading goroutine: callers waiting for an answer take turns
// reading the plugin's pipe (whoever holds the read token reads, handing
// other callers their answers, until its own arrives), so a lone caller
// reads its own answer without a goroutine switch. When no call is in
// flight nobody reads; the supervisor watches the process instead.
type subConn struct {
	name    string
	proc    *proc.Process
	toChild *os.File // host → plugin pipe
	toHost  *os.File // plugin → host pipe
	r       *wire.Reader
	w       *wire.Writer
	info    PluginInfo
	grace   time.Duration

	nextID    atomic.Uint64
	served    atomic.Bool           // a call succeeded: the child is not crash-looping
	closing   atomic.Bool           // stop was called: errors report ErrClosed
	violation atomic.Pointer[error] // how the plugin broke the protocol
	stalled   atomic.Bool           // a write to the plugin was cut short
	reading   atomic.Bool           // the read token
	draining  atomic.Bool           // ended waits for the read token
	turn      chan struct{}         // the token is free and calls are waiting

	mu      sync.Mutex
	pending map[uint64]chan subReply // nil once dead

	endOnce sync.Once
	dead    chan struct{} // closed when the connection is unusable
	err     error         // why; set before dead is closed
}

// outcome says how a turn at reading ended.
type outcome int

const (
	answered outcome = iota // the caller's answer arrived
	ctxDone                 // the caller's ctx ended
	timedOut                // the call timeout passed
	connDead                // the connection died
)

// drainTimeout bounds the reading of the answers a child wrote before it
// exited: its pipe ends when every process holding it open has exited,
// and a descendant may hold it open longer.
const drainTimeout = 250 * time.Millisecond

// readFor reads frames, holding the read token, until the answer to id
// arrives, ctx ends, deadline (if set) passes or the connection dies.
// Answers to other calls are handed to them. When reading fails it returns
// connDead and the error, which the caller passes to broken once it has
// given the token back.
func (c *subConn) readFor(ctx context.Context, id uint64, ch chan subReply, deadline time.Time) (subReply, outcome, error) {
	select {
	case r := <-ch: // delivered by the previous reader
		return r, answered, nil
	default:
	}
	if c.isDead() {
		return subReply{}, connDead, nil
	}
	if !deadline.IsZero() {
		_ = c.toHost.SetReadDeadline(deadline)
	}
	var stop func() bool
	if ctx.Done() != nil {
		stop = context.AfterFunc(ctx, func() { _ = c.toHost.SetReadDeadline(time.Unix(1, 0)) })
	}
	defer func() {
		if stop != nil {
			stop()
		}
		if stop != nil || !deadline.IsZero() {
			_ = c.toHost.SetReadDeadline(time.Time{})
		}
	}()
	for {
		f, err := c.r.Read()
		var tl *wire.FrameTooLargeError
		switch {
		case err == nil:
		case errors.Is(err, os.ErrDeadlineExceeded):
			if ctx.Err() != nil {
				return subReply{}, ctxDone, nil
			}
			if !deadline.IsZero() && !time.Now().Before(deadline) {
				return subReply{}, timedOut, nil
			}
			// Set by another call's cancellation that fired late: not ours.
			_ = c.toHost.SetReadDeadline(deadline)
			continue
		case errors.As(err, &tl):
			r := subReply{err: c.tooLarge(tl)}
			if tl.ID == id {
				c.abandon(id)
				return r, answered, nil
			}
			c.deliver(tl.ID, r)
			continue
		default:
			return subReply{}, connDead, err
		}
		if f.Type != wire.TypeResult && f.Type != wire.TypeError {
			return subReply{}, connDead, misdirected(f.Type)
		}
		if f.ID == id {
			c.abandon(id)
			return subReply{f: f}, answered, nil
		}
		c.deliver(f.ID, subReply{f: f})
	}
}

// tooLarge is the error of a call whose answer was over the host's limit.
func (c *subConn) tooLarge(tl *wire.FrameTooLargeError) error {
	return newError(CodeFrameTooLarge, c.name, "the answer of %d bytes is over the host's maximum frame size of %d bytes (SubprocessConfig.MaxFrameSize); the connection stays up", tl.Size, tl.Max)
}

// misdirected is the protocol violation of a plugin that sends a frame of
// type t after the handshake.
func misdirected(t wire.Type) error {
	return fmt.Errorf("%w: a plugin may not send %s frames after the handshake", wire.ErrMalformed, t)
}

// drain delivers the answers the child wrote before it exited, which are
// still in the pipe or in the reader's buffer: it takes the read token and
// reads to the end of the pipe, for at most drainTimeout.
func (c *subConn) drain() {
	deadline := time.Now().Add(drainTimeout)
	t := time.NewTimer(drainTimeout)
	defer t.Stop()
	c.draining.Store(true)
	for !c.reading.CompareAndSwap(false, true) {
		select {
		case <-c.turn: // the token was passed on; try to take it
		case <-t.C:
			return
		}
	}
	defer c.reading.Store(false)
	_ = c.toHost.SetReadDeadline(deadline)
	defer func() { _ = c.toHost.SetReadDeadline(time.Time{}) }()
	for {
		f, err := c.r.Read()
		var tl *wire.FrameTooLargeError
		switch {
		case err == nil && (f.Type == wire.TypeResult || f.Type == wire.TypeError):
			c.deliver(f.ID, subReply{f: f})
		case errors.As(err, &tl):
			c.deliver(tl.ID, subReply{err: c.tooLarge(tl)})
		case errors.Is(err, os.ErrDeadlineExceeded) && time.Now().Before(deadline):
			// A caller's cancellation that fired late: not the drain's.
			_ = c.toHost.SetReadDeadline(deadline)
		default:
			return // the end of the pipe, the drain's deadline, or a violation
		}
	}
}

// passTurn frees the read token and wakes a waiting caller to take it.
func (c *subConn) passTurn() {
	c.reading.Store(false)
	c.mu.Lock()
	waiting := len(c.pending) > 0 || c.draining.Load()
	c.mu.Unlock()
	if waiting {
		select {
		case c.turn <- struct{}{}:
		default: // a wake-up is pending already
		}
	}
}

// broken ends the connection after reading failed with err.
func (c *subConn) broken(err error) {
	if errors.Is(err, wire.ErrMalformed) {
		c.violation.CompareAndSwap(nil, &err)
		_ = c.proc.Signal(syscall.SIGKILL)
	}
	c.ended(err)
}

// stall ends the connection after a write to the child was cut short: the
// child stopped reading its input, and a frame may have been cut in the
// middle. The child is killed; the supervisor restarts it.
func (c *subConn) stall(err error) {
	c.stalled.Store(true)
	_ = c.proc.Signal(syscall.SIGKILL)
	c.ended(err)
}

// ended marks the connection dead, once, when the child has exited (it
// waits for that) and the answers it wrote before have been delivered.
// Calls still pending then fail. readErr is how the end showed on the pipe
// (io.EOF when it was seen on the process instead). ended must not be
// called while holding the read token.
func (c *subConn) ended(readErr error) {
	c.endOnce.Do(func() {
		c.awaitExit()
		if c.violation.Load() == nil { // else the stream is unreadable
			c.drain()
		}
		c.fail(c.exitError(readErr))
	})
}

// awaitExit waits for the child to exit after its end of the protocol
// closed, killing it if it lingers past the grace period.
func (c *subConn) awaitExit() {
	t := time.NewTimer(c.grace)
	defer t.Stop()
	select {
	case <-c.proc.Done():
	case <-t.C:
		_ = c.proc.Signal(syscall.SIGKILL)
		<-c.proc.Done()
	}
}

// exitError describes why the connection ended, after the child exited.
func (c *subConn) exitError(readErr error) error {
	status := "exit status unknown"
	if st := c.proc.State(); st != nil {
		status = st.String()
	}
	tail := stderrSummary(c.proc)
	switch v := c.violation.Load(); {
	case c.closing.Load():
		return newError(CodeClosed, c.name, "the plugin was closed (%s)", status)
	case v != nil:
		return wrapError(*v, CodeTransport, c.name, "the plugin broke the protocol and was killed (%s); stderr tail:\n%s\nthe reason", status, tail)
	case c.stalled.Load():
		return newError(CodeCrashed, c.name, "the plugin stopped reading its input and was killed (%s); it is restarted; stderr tail:\n%s", status, tail)
	case readErr == io.EOF || errors.Is(readErr, io.ErrUnexpectedEOF) || errors.Is(readErr, os.ErrClosed):
		return newError(CodeCrashed, c.name, "the plugin process exited (%s); stderr tail:\n%s", status, tail)
	default:
		return wrapError(readErr, CodeCrashed, c.name, "the connection to the plugin failed and the process ended (%s); stderr tail:\n%s\nthe reason", status, tail)
	}
}

func (c *subConn) deliver(id uint64, r subReply) {
	c.mu.Lock()
	ch := c.pending[id]
	delete(c.pending, id)
	c.mu.Unlock()
	if ch != nil {
		ch <- r // buffered, and sent to at most once
	}
}

// fail marks the connection dead with err; pending calls see it.
func (c *subConn) fail(err error) {
	c.mu.Lock()
	c.err = err
	c.pending = nil
	c.mu.Unlock()
	close(c.dead)
}

func (c *subConn) isDead() bool {
	select {
	case <-c.dead:
		return true
	default:
		return false
	}
}

// call sends one request and waits for its answer, for ctx, for timeout
// (when > 0) or for the connection to die, reading the pipe itself when it
// holds the read token.
func (c *subConn) call(ctx context.Context, t wire.Type, payload []byte, timeout time.Duration) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, c.ctxError(t, err)
	}
	id := c.nextID.Add(1)
	ch := subReplyChans.Get().(chan subReply)
	c.mu.Lock()
	if c.pending == nil {
		err := c.err
		c.mu.Unlock()
		subReplyChans.Put(ch)
		return nil, err
	}
	c.pending[id] = ch
	c.mu.Unlock()
	var deadline time.Time
	if timeout > 0 {
		deadline = time.Now().Add(timeout)
	}
	if err := c.w.WriteContext(ctx, deadline, t, id, payload); err != nil {
		c.abandon(id)
		switch {
		case errors.Is(err, wire.ErrFrameTooLarge):
			subReplyChans.Put(ch)
			return nil, newError(CodeFrameTooLarge, c.name, "the %s request of %d bytes is over the plugin's maximum frame size of %d bytes; nothing was sent", t, len(payload)+wire.MinFrameSize, c.w.Max())
		case errors.Is(err, os.ErrDeadlineExceeded):
			c.stall(err)
			return nil, c.stallError(t, ctx.Err(), timeout)
		}
		c.ended(err) // the child closed its end: it is exiting
		return nil, c.err
	}
	var timer <-chan time.Time
	if timeout > 0 {
		tm := time.NewTimer(time.Until(deadline))
		defer tm.Stop()
		timer = tm.C
	}
	for {
		if c.reading.CompareAndSwap(false, true) {
			r, how, err := c.readFor(ctx, id, ch, deadline)
			c.passTurn()
			if err != nil {
				c.broken(err)
			}
			switch how {
			case answered:
				subReplyChans.Put(ch)
				return c.answer(t, r)
			case ctxDone:
				c.cancel(id)
				return nil, c.ctxError(t, ctx.Err())
			case timedOut:
				c.cancel(id)
				return nil, c.timeoutError(t, timeout)
			}
		}
		select {
		case r := <-ch:
			subReplyChans.Put(ch)
			return c.answer(t, r)
		case <-c.turn:
		case <-c.dead:
			select {
			case r := <-ch:
				return c.answer(t, r)
			default:
				return nil, c.err
			}
		case <-ctx.Done():
			c.cancel(id)
			return nil, c.ctxError(t, ctx.Err())
		case <-timer:
			c.cancel(id)
			return nil, c.timeoutError(t, timeout)
		}
	}
}

// cancel abandons request id and tells the plugin to cancel its handler.
// The CANCEL is queued, never waited for: a plugin that stopped reading
// cannot block the caller.
func (c *subConn) cancel(id uint64) {
	c.abandon(id)
	_ = c.w.Post(wire.TypeCancel, id, nil)
}

func (c *subConn) abandon(id uint64) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

func (c *subConn) ctxError(t wire.Type, err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return wrapError(err, CodeTimeout, c.name, "%s abandoned at the caller's deadline; the plugin was asked to cancel it", t)
	}
	return wrapError(err, CodeTransport, c.name, "%s abandoned: the caller's context was cancelled; the plugin was asked to cancel it", t)
}

func (c *subConn) timeoutError(t wire.Type, timeout time.Duration) error {
	return newError(CodeTimeout, c.name, "no answer to %s within the call timeout of %v; the plugin was asked to cancel it", t, timeout)
}

// stallError is the error of a call whose request could not be sent before
// ctx ended (ctxErr) or the call timeout passed.
func (c *subConn) stallError(t wire.Type, ctxErr error, timeout time.Duration) error {
	const what = "%s not sent: the plugin stopped reading its input; it was killed and is restarted"
	switch {
	case errors.Is(ctxErr, context.Canceled):
		return wrapError(ctxErr, CodeTransport, c.name, what+" (the caller's context was cancelled)", t)
	case ctxErr != nil:
		return wrapError(ctxErr, CodeTimeout, c.name, what+" (the caller's deadline passed)", t)
	}
	return newError(CodeTimeout, c.name, what+" (the call timeout of %v passed)", t, timeout)
}

// answer turns a RESULT into its payload and an ERROR into an error.
func (c *subConn) answer(t wire.Type, r subReply) ([]byte, error) {
	if r.err != nil {
		return nil, r.err
	}
	if r.f.Type == wire.TypeResult {
		return r.f.Payload, nil
	}
	var rep wire.ErrorReply
	if err := json.Unmarshal(r.f.Payload, &rep); err != nil {
		return nil, wrapError(err, CodeTransport, c.name, "the plugin's ERROR payload to %s does not decode", t)
	}
	return nil, subRemoteError(c.name, t, rep)
}

// subRemoteError builds the host's error for a plugin's error reply: it
// matches ErrRemote, wraps an *ErrorReply, and is retryable when flagged.
// A "frame_too_large" reply also matches ErrFrameTooLarge.
func subRemoteError(name string, t wire.Type, rep wire.ErrorReply) error {
	cause := &ErrorReply{Code: rep.Code, Message: rep.Message, Retryable: rep.Retryable}
	err := wrapError(cause, CodeRemote, name, "%s failed in the plugin", t)
	if rep.Retryable {
		var e *goerrors.Error
		if errors.As(err, &e) {
			e.AsRetryable()
		}
	}
	switch rep.Code {
	case wire.CodeFrameTooLarge:
		return wrapError(err, CodeFrameTooLarge, name, "the plugin refused an oversized frame")
	case wire.CodePanic:
		return wrapError(err, CodePanic, name, "the plugin's handler panicked; the plugin serves on")
	}
	return err
}

// stop shuts the child down: SHUTDOWN, then SIGTERM and SIGKILL of its
// group after grace each, then delivers the answers the child wrote before
// it exited, fails what is still pending and releases the pipes. It returns the last signal it had to send, 0 if none.
func (c *subConn) stop(ctx context.Context, grace time.Duration) syscall.Signal {
	c.closing.Store(true)
	// A child that stopped reading must not block Close: the write is cut
	// short at the end of the grace period (or of ctx), and the signals
	// follow. Callers writing to it are unblocked when it dies.
	asked := time.Now() // the grace periods count from the SHUTDOWN
	_ = c.w.WriteContext(ctx, asked.Add(grace), wire.TypeShutdown, 0, nil)
	sig := c.proc.StopSince(ctx, asked, grace)
	c.ended(io.EOF)
	c.release()
	return sig
}

// release closes the pipes of a connection whose child has exited; a
// caller still reading gets an error and sees the connection dead.
func (c *subConn) release() {
	c.toChild.Close()
	c.toHost.Close()
}

// kill ends a child that never became usable.
func (c *subConn) kill() {
	c.closing.Store(true)
	_ = c.proc.Signal(syscall.SIGKILL)
	<-c.proc.Done()
	c.release()
}

// stderrSummary returns the stderr tail, or a note that it is empty.
func stderrSummary(p *proc.Process) string {
	if tail := strings.TrimSpace(p.StderrTail()); tail != "" {
		return tail
	}
	return "(empty)"
}
