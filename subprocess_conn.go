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

// reply is what a pending call receives.
type reply struct {
	f   wire.Frame
	err error
}

var replyChans = sync.Pool{New: func() any { return make(chan reply, 1) }}

// subConn is one running child and the protocol connection to it.
type subConn struct {
	name    string
	proc    *proc.Process
	toChild *os.File // host → plugin pipe
	toHost  *os.File // plugin → host pipe
	r       *wire.Reader
	w       *wire.Writer
	info    PluginInfo
	grace   time.Duration

	nextID  atomic.Uint64
	served  atomic.Bool // a call succeeded: the child is not crash-looping
	closing atomic.Bool // stop was called: errors report ErrClosed

	mu      sync.Mutex
	pending map[uint64]chan reply // nil once dead

	dead     chan struct{} // closed when the connection is unusable
	err      error         // why; set before dead is closed
	loopDone chan struct{}
}

// readLoop delivers answers to pending calls until the stream ends, then
// waits for the child to exit and fails every call still pending.
func (c *subConn) readLoop() {
	defer close(c.loopDone)
	var err error
	for {
		var f wire.Frame
		f, err = c.r.Read()
		var tl *wire.FrameTooLargeError
		if errors.As(err, &tl) {
			c.deliver(tl.ID, reply{err: newError(CodeFrameTooLarge, c.name, "the answer of %d bytes is over the host's maximum frame size of %d bytes (SubprocessConfig.MaxFrameSize); the connection stays up", tl.Size, tl.Max)})
			continue
		}
		if err != nil {
			break
		}
		if f.Type != wire.TypeResult && f.Type != wire.TypeError {
			err = fmt.Errorf("%w: a plugin may not send %s frames after the handshake", wire.ErrMalformed, f.Type)
			break
		}
		c.deliver(f.ID, reply{f: f})
	}
	violation := errors.Is(err, wire.ErrMalformed)
	if violation {
		_ = c.proc.Signal(syscall.SIGKILL)
	}
	c.awaitExit()
	c.fail(c.exitError(err, violation))
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
func (c *subConn) exitError(readErr error, violation bool) error {
	status := "exit status unknown"
	if st := c.proc.State(); st != nil {
		status = st.String()
	}
	tail := stderrSummary(c.proc)
	switch {
	case c.closing.Load():
		return newError(CodeClosed, c.name, "the plugin was closed (%s)", status)
	case violation:
		return wrapError(readErr, CodeTransport, c.name, "the plugin broke the protocol and was killed (%s); stderr tail:\n%s\nthe reason", status, tail)
	case readErr == io.EOF || errors.Is(readErr, io.ErrUnexpectedEOF) || errors.Is(readErr, os.ErrClosed):
		return newError(CodeCrashed, c.name, "the plugin process exited (%s); stderr tail:\n%s", status, tail)
	default:
		return wrapError(readErr, CodeCrashed, c.name, "reading from the plugin failed and the process ended (%s); stderr tail:\n%s\nthe reason", status, tail)
	}
}

func (c *subConn) deliver(id uint64, r reply) {
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
// (when > 0) or for the connection to die.
func (c *subConn) call(ctx context.Context, t wire.Type, payload []byte, timeout time.Duration) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, c.ctxError(t, err)
	}
	id := c.nextID.Add(1)
	ch := replyChans.Get().(chan reply)
	c.mu.Lock()
	if c.pending == nil {
		err := c.err
		c.mu.Unlock()
		replyChans.Put(ch)
		return nil, err
	}
	c.pending[id] = ch
	c.mu.Unlock()
	if err := c.w.Write(t, id, payload); err != nil {
		c.abandon(id)
		if errors.Is(err, wire.ErrFrameTooLarge) {
			replyChans.Put(ch)
			return nil, newError(CodeFrameTooLarge, c.name, "the %s request of %d bytes is over the plugin's maximum frame size of %d bytes; nothing was sent", t, len(payload)+wire.MinFrameSize, c.w.Max())
		}
		<-c.dead // the reader sees the broken pipe too and says why
		return nil, c.err
	}
	var timer <-chan time.Time
	if timeout > 0 {
		tm := time.NewTimer(timeout)
		defer tm.Stop()
		timer = tm.C
	}
	select {
	case r := <-ch:
		replyChans.Put(ch)
		return c.answer(t, r)
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
		return nil, newError(CodeTimeout, c.name, "no answer to %s within the call timeout of %v; the plugin was asked to cancel it", t, timeout)
	}
}

// cancel abandons request id and tells the plugin to cancel its handler.
func (c *subConn) cancel(id uint64) {
	c.abandon(id)
	_ = c.w.Write(wire.TypeCancel, id, nil)
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

// answer turns a RESULT into its payload and an ERROR into an error.
func (c *subConn) answer(t wire.Type, r reply) ([]byte, error) {
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
	return nil, remoteError(c.name, t, rep)
}

// remoteError builds the host's error for a plugin's error reply: it
// matches ErrRemote, wraps an *ErrorReply, and is retryable when flagged.
// A "frame_too_large" reply also matches ErrFrameTooLarge.
func remoteError(name string, t wire.Type, rep wire.ErrorReply) error {
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
// group after grace each, then releases the pipes once the reader ended.
// It returns the last signal it had to send, 0 if none.
func (c *subConn) stop(ctx context.Context, grace time.Duration) syscall.Signal {
	c.closing.Store(true)
	_ = c.w.Write(wire.TypeShutdown, 0, nil)
	sig := c.proc.Stop(ctx, grace)
	c.toChild.Close()
	<-c.loopDone
	c.toHost.Close()
	return sig
}

// release closes the pipes of a connection whose child has exited.
func (c *subConn) release() {
	<-c.loopDone
	c.toChild.Close()
	c.toHost.Close()
}

// kill ends a child that never became usable.
func (c *subConn) kill() {
	c.closing.Store(true)
	_ = c.proc.Signal(syscall.SIGKILL)
	<-c.proc.Done()
	c.toChild.Close()
	if c.loopDone != nil {
		<-c.loopDone
	}
	c.toHost.Close()
}

// stderrSummary returns the stderr tail, or a note that it is empty.
func stderrSummary(p *proc.Process) string {
	if tail := strings.TrimSpace(p.StderrTail()); tail != "" {
		return tail
	}
	return "(empty)"
}
