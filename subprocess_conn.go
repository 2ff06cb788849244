package goplugins

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

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

const (
	// subprocessStallTimeout is the default of SubprocessConfig.StallTimeout.
	subprocessStallTimeout = 5 * time.Second
	// subQueueBytes bounds the bytes of requests a connection holds queued or
	// being written (one larger request is let through alone): with the
	// writer's copy of the small ones, at most twice this is what a child
	// that stopped reading can cost its host.
	subQueueBytes = 4 << 20
	// drainTimeout bounds the reading of the answers a child wrote before it
	// exited: its pipe ends when every process holding it open has exited,
	// and a descendant may hold it open longer.
	drainTimeout = 250 * time.Millisecond
	// directWrite is the payload size from which the writer writes a payload
	// from the caller's buffer instead of copying it into its own.
	directWrite = 64 << 10
	// maxSpare is the largest write buffer the writer keeps for reuse.
	maxSpare = 1 << 20
)

// subLimits are the settings of one connection.
type subLimits struct {
	readMax int           // the host's maximum frame size
	grace   time.Duration // how long an ended child may take to exit before SIGKILL
	stall   time.Duration // no write progress for this long: the child stopped reading
}

// subConn is one running child and the protocol connection to it.
//
// The surface the rest of the transport uses: newSubConn (from the process,
// its pipes and limits), run (after the handshake), call, stop, kill, the
// dead channel with err, info, served, ended and release.
//
// One reader goroutine reads the child's pipe at all times and hands each
// answer to its caller through the pending map (late answers, to calls
// abandoned meanwhile, are read and dropped). One writer goroutine drains
// the queue of frames, which holds at most subQueueBytes: callers wait for
// room, bounded by their ctx. A caller that gives up before the writer took
// its frame drops it without touching the stream. A caller that finds the
// stream idle writes its small frame itself, as far as the pipe takes it
// without waiting, and leaves the rest to the writer: no caller ever blocks
// on the pipe. No caller's deadline ever cuts a write: when the writer
// makes no progress for lim.stall, the child stopped reading and is killed.
type subConn struct {
	name    string
	proc    *proc.Process
	toChild *os.File // host → plugin pipe
	toHost  *os.File // plugin → host pipe
	r       *wire.Reader
	lim     subLimits
	peerMax int // the plugin's maximum frame size; set by run
	info    PluginInfo

	nextID    atomic.Uint64
	served    atomic.Bool           // a call succeeded: the child is not crash-looping
	closing   atomic.Bool           // stop was called: errors report ErrClosed
	violation atomic.Pointer[error] // how the plugin broke the protocol
	stalled   atomic.Bool           // the plugin stopped reading its input

	mu      sync.Mutex
	pending map[uint64]*subCall // nil once dead
	queue   []outFrame
	queued  int           // bytes of the frames queued or being written
	writing bool          // a caller or the writer owns the stream
	rest    []byte        // what a caller's write left for the writer
	waiting bool          // a caller waits for room in the queue
	room    chan struct{} // closed (and replaced) when queued bytes are freed
	wake    chan struct{} // the queue has frames

	wdl       time.Time     // the write deadline armed; the writer's
	inline    inlineWrite   // a caller's write; owned with writing
	quit      chan struct{} // closed when the connection ends: the writer returns
	readDone  chan struct{} // closed when the reader returned; nil before run
	writeDone chan struct{} // closed when the writer returned

	endOnce sync.Once
	dead    chan struct{} // closed when the connection is unusable
	err     error         // why; set before dead is closed
}

// outFrame is a frame in the writer's queue; call is nil for CANCEL and
// SHUTDOWN.
type outFrame struct {
	t       wire.Type
	id      uint64
	payload []byte
	call    *subCall
}

// subCall is a request waiting for its answer.
type subCall struct {
	state atomic.Uint32 // callQueued, then callSent (by the writer) or callDropped (by the caller)
	reply chan subReply // buffered; sent to at most once
}

const (
	callQueued uint32 = iota
	callSent
	callDropped
)

// subReply is what a pending call receives.
type subReply struct {
	f   wire.Frame
	err error
}

// subCalls recycles the subCalls of answered requests; one whose caller
// gave up is left to the collector, as the writer or the reader may still
// hold it.
var subCalls = sync.Pool{New: func() any { return &subCall{reply: make(chan subReply, 1)} }}

// errStalled is the writer's error when the plugin stopped reading.
var errStalled = errors.New("no write progress: the plugin stopped reading its input")

// newSubConn returns the connection to the started child p over its
// protocol pipes; the caller completes the handshake on them, then calls
// run (or kill).
func newSubConn(name string, p *proc.Process, toChild, toHost *os.File, lim subLimits) *subConn {
	if lim.stall <= 0 {
		lim.stall = subprocessStallTimeout
	}
	return &subConn{
		name: name, proc: p, toChild: toChild, toHost: toHost,
		r:       wire.NewReader(toHost, lim.readMax),
		lim:     lim,
		pending: make(map[uint64]*subCall),
		room:    make(chan struct{}),
		wake:    make(chan struct{}, 1),
		quit:    make(chan struct{}),
		dead:    make(chan struct{}),
	}
}

// run starts the reader and the writer once the handshake is done; peerMax
// is the plugin's maximum frame size.
func (c *subConn) run(peerMax int) {
	c.peerMax = min(peerMax, wire.MaxFrameSizeLimit)
	c.readDone, c.writeDone = make(chan struct{}), make(chan struct{})
	c.inline.start(c.toChild)
	go func() {
		err := c.readLoop()
		if errors.Is(err, wire.ErrMalformed) {
			c.violation.CompareAndSwap(nil, &err)
			_ = c.proc.Signal(syscall.SIGKILL)
		}
		close(c.readDone)
		c.ended(err)
	}()
	go func() {
		err := c.writeLoop()
		close(c.writeDone)
		if errors.Is(err, errStalled) {
			c.stalled.Store(true)
			_ = c.proc.Signal(syscall.SIGKILL)
		}
		if err != nil {
			c.ended(err)
		}
	}()
}

// readLoop reads frames and delivers answers until the stream fails.
func (c *subConn) readLoop() error {
	for {
		f, err := c.r.Read()
		var tl *wire.FrameTooLargeError
		switch {
		case err == nil:
		case errors.As(err, &tl):
			c.deliver(tl.ID, subReply{err: c.tooLarge(tl)})
			continue
		default:
			return err
		}
		if f.Type != wire.TypeResult && f.Type != wire.TypeError {
			return misdirected(f.Type)
		}
		c.deliver(f.ID, subReply{f: f})
	}
}

// deliver hands r to the call waiting for id; an answer nobody waits for
// is dropped.
func (c *subConn) deliver(id uint64, r subReply) {
	c.mu.Lock()
	sc := c.pending[id]
	delete(c.pending, id)
	c.mu.Unlock()
	if sc != nil {
		sc.reply <- r
	}
}

// writeLoop writes the queued frames until the connection ends (nil) or a
// write fails.
func (c *subConn) writeLoop() error {
	var batch []outFrame
	var buf []byte
	for {
		select {
		case <-c.wake:
		case <-c.quit:
			return nil
		}
		c.mu.Lock()
		if c.writing && c.rest == nil {
			c.mu.Unlock()
			continue // a caller writes; it wakes the writer when it is done
		}
		c.writing = true
		rest := c.rest
		c.rest = nil
		batch, c.queue = c.queue, batch[:0]
		c.mu.Unlock()
		err := c.writeAll(rest)
		if err == nil {
			buf, err = c.writeBatch(buf[:0], batch)
		}
		size := len(rest)
		for _, f := range batch {
			size += wire.HeaderSize + len(f.payload)
		}
		clear(batch)
		c.mu.Lock()
		c.writing = false
		c.queued -= size
		c.wakeWriter()
		if c.waiting {
			close(c.room)
			c.room, c.waiting = make(chan struct{}), false
		}
		c.mu.Unlock()
		if err != nil {
			return err
		}
		if cap(buf) > maxSpare {
			buf = nil
		}
	}
}

// writeBatch writes the frames of batch whose callers still wait, using buf
// as the write buffer, which it returns.
func (c *subConn) writeBatch(buf []byte, batch []outFrame) ([]byte, error) {
	for _, f := range batch {
		if f.call != nil && !f.call.state.CompareAndSwap(callQueued, callSent) {
			continue // its caller gave up before it was written
		}
		if len(f.payload) < directWrite {
			buf = wire.AppendFrame(buf, f.t, f.id, f.payload)
			continue
		}
		buf = wire.AppendFrame(buf, f.t, f.id, nil)
		binary.BigEndian.PutUint32(buf[len(buf)-wire.HeaderSize:], uint32(wire.MinFrameSize+len(f.payload)))
		if err := c.writeAll(buf); err != nil {
			return buf, err
		}
		if err := c.writeAll(f.payload); err != nil {
			return buf, err
		}
		buf = buf[:0]
	}
	if len(buf) == 0 {
		return buf, nil
	}
	return buf, c.writeAll(buf)
}

// wakeWriter wakes the writer if frames are queued, with c.mu held.
func (c *subConn) wakeWriter() {
	if len(c.queue) > 0 || c.rest != nil {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
}

// writeAll writes b to the child. It fails with errStalled when no byte
// was taken for lim.stall: the write deadline is that long after the last
// progress (armed lazily, so that a busy writer rarely resets it).
func (c *subConn) writeAll(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	last := time.Now()
	for {
		if c.wdl.Sub(last) < c.lim.stall/2 {
			c.wdl = last.Add(c.lim.stall)
			_ = c.toChild.SetWriteDeadline(c.wdl)
		}
		n, err := c.toChild.Write(b)
		if err == nil {
			return nil
		}
		b = b[n:]
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			return err
		}
		select {
		case <-c.quit:
			return err
		default:
		}
		now := time.Now()
		if n > 0 {
			last = now
		} else if now.Sub(last) >= c.lim.stall {
			return errStalled
		}
		c.wdl = last.Add(c.lim.stall)
		_ = c.toChild.SetWriteDeadline(c.wdl)
	}
}

// enqueue queues f for the writer, waiting for room in the queue until ctx
// ends, timer fires or the connection dies. A frame with a call is
// registered as pending.
func (c *subConn) enqueue(ctx context.Context, f outFrame, timer <-chan time.Time, timeout time.Duration) error {
	size := wire.HeaderSize + len(f.payload)
	c.mu.Lock()
	for c.pending != nil && c.queued > 0 && c.queued+size > subQueueBytes {
		c.waiting = true
		room := c.room
		c.mu.Unlock()
		select {
		case <-room:
		case <-c.dead:
		case <-ctx.Done():
			return canceledError(ctx, c.name)
		case <-timer:
			return c.timeoutError(f.t, timeout)
		}
		c.mu.Lock()
	}
	if c.pending == nil {
		err := c.err
		c.mu.Unlock()
		return err
	}
	c.pending[f.id] = f.call
	if c.writing || len(c.queue) > 0 || size > directWrite {
		c.push(f, size)
		c.mu.Unlock()
		return nil
	}
	c.writing = true
	c.mu.Unlock()
	c.writeInline(f)
	return nil
}

// writeInline writes f, whose caller owns the stream, as far as the pipe
// takes it without waiting, and hands the rest and the stream to the
// writer.
func (c *subConn) writeInline(f outFrame) {
	f.call.state.Store(callSent)
	b := wire.AppendFrame(c.inline.buf[:0], f.t, f.id, f.payload)
	c.inline.buf = b
	n := c.inline.write(b)
	c.mu.Lock()
	if n < len(b) {
		c.rest = b[n:]
		c.queued += len(c.rest)
	} else {
		c.writing = false
	}
	c.wakeWriter()
	c.mu.Unlock()
}

// post queues a frame without a call (CANCEL, SHUTDOWN), whatever room is
// left: it is small, and follows a request that was written.
func (c *subConn) post(t wire.Type, id uint64) {
	c.mu.Lock()
	if c.pending != nil {
		c.push(outFrame{t: t, id: id}, wire.HeaderSize)
	}
	c.mu.Unlock()
}

// push appends f to the queue, with c.mu held, and wakes the writer.
func (c *subConn) push(f outFrame, size int) {
	c.queue = append(c.queue, f)
	c.queued += size
	if len(c.queue) == 1 && !c.writing {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
}

// call sends one request and waits for its answer, for ctx, for timeout
// (the plugin's CallTimeout, when > 0) or for the connection to die. When
// ctx ends first the error matches ErrCanceled and ctx's error; when the
// timeout passes, ErrTimeout. Either way a request already written is
// cancelled in the plugin, and one not yet written is dropped.
func (c *subConn) call(ctx context.Context, t wire.Type, payload []byte, timeout time.Duration) ([]byte, error) {
	if ctx.Err() != nil {
		return nil, canceledError(ctx, c.name)
	}
	if size := wire.MinFrameSize + len(payload); size > c.peerMax {
		return nil, newError(codeFrameTooLarge, c.name, "the %s request of %d bytes is over the plugin's maximum frame size of %d bytes; nothing was sent", t, size, c.peerMax)
	}
	var timer <-chan time.Time
	if timeout > 0 {
		tm := time.NewTimer(timeout)
		defer tm.Stop()
		timer = tm.C
	}
	sc := subCalls.Get().(*subCall)
	sc.state.Store(callQueued)
	id := c.nextID.Add(1)
	if err := c.enqueue(ctx, outFrame{t: t, id: id, payload: payload, call: sc}, timer, timeout); err != nil {
		subCalls.Put(sc)
		return nil, err
	}
	select {
	case r := <-sc.reply:
		subCalls.Put(sc)
		return c.answer(t, r)
	case <-c.dead:
		select {
		case r := <-sc.reply:
			return c.answer(t, r)
		default:
			return nil, c.err
		}
	case <-ctx.Done():
		c.abandon(id, sc)
		return nil, canceledError(ctx, c.name)
	case <-timer:
		c.abandon(id, sc)
		return nil, c.timeoutError(t, timeout)
	}
}

// abandon gives up request id: a request not yet written is dropped, one
// written is cancelled in the plugin (the CANCEL is queued, never waited
// for).
func (c *subConn) abandon(id uint64, sc *subCall) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
	if !sc.state.CompareAndSwap(callQueued, callDropped) {
		c.post(wire.TypeCancel, id)
	}
}

// tooLarge is the error of a call whose answer was over the host's limit.
func (c *subConn) tooLarge(tl *wire.FrameTooLargeError) error {
	return newError(codeFrameTooLarge, c.name, "the answer of %d bytes is over the host's maximum frame size of %d bytes (SubprocessConfig.MaxFrameSize); the connection stays up", tl.Size, tl.Max)
}

// misdirected is the protocol violation of a plugin that sends a frame of
// type t after the handshake.
func misdirected(t wire.Type) error {
	return fmt.Errorf("%w: a plugin may not send %s frames after the handshake", wire.ErrMalformed, t)
}

func (c *subConn) timeoutError(t wire.Type, timeout time.Duration) error {
	return newError(codeTimeout, c.name, "no answer to %s within the call timeout of %v (SubprocessConfig.CallTimeout); the plugin was asked to cancel it", t, timeout)
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
		return nil, wrapError(err, codeTransport, c.name, "the plugin's ERROR payload to %s does not decode", t)
	}
	return nil, remoteError(c.name, t.String(), rep.Code, rep.Message, rep.Retryable)
}

// ended marks the connection dead, once: it waits for the child to exit
// (killing it if it lingers past the grace period), lets the reader read
// what the child wrote before (for at most drainTimeout), stops the reader
// and the writer, and fails the calls still pending. cause is how the end
// showed (io.EOF when it was seen on the process).
func (c *subConn) ended(cause error) {
	c.endOnce.Do(func() {
		c.awaitExit()
		if c.readDone != nil {
			t := time.NewTimer(drainTimeout)
			select {
			case <-c.readDone:
			case <-t.C:
			}
			t.Stop()
			close(c.quit)
			_ = c.toHost.SetReadDeadline(time.Unix(1, 0))
			_ = c.toChild.SetWriteDeadline(time.Unix(1, 0))
			<-c.readDone
			<-c.writeDone
		}
		c.fail(c.exitError(cause))
	})
}

// awaitExit waits for the child to exit after its end of the protocol
// closed, killing it if it lingers past the grace period.
func (c *subConn) awaitExit() {
	t := time.NewTimer(c.lim.grace)
	defer t.Stop()
	select {
	case <-c.proc.Done():
	case <-t.C:
		_ = c.proc.Signal(syscall.SIGKILL)
		<-c.proc.Done()
	}
}

// exitError describes why the connection ended, after the child exited.
func (c *subConn) exitError(cause error) error {
	status := "exit status unknown"
	if st := c.proc.State(); st != nil {
		status = st.String()
	}
	switch v := c.violation.Load(); {
	case c.closing.Load():
		return newError(codeClosed, c.name, "the plugin was closed (%s)", status)
	case v != nil:
		return withStderr(wrapError(*v, codeTransport, c.name, "the plugin broke the protocol and was killed (%s)", status), c.proc)
	case c.stalled.Load():
		return withStderr(newError(codeCrashed, c.name, "the plugin stopped reading its input for %v (SubprocessConfig.StallTimeout) and was killed (%s); it is restarted", c.lim.stall, status), c.proc)
	case cause == io.EOF || errors.Is(cause, io.ErrUnexpectedEOF) || errors.Is(cause, os.ErrClosed) || errors.Is(cause, syscall.EPIPE):
		return withStderr(newError(codeCrashed, c.name, "the plugin process exited (%s)", status), c.proc)
	default:
		return withStderr(wrapError(cause, codeCrashed, c.name, "the connection to the plugin failed and the process ended (%s)", status), c.proc)
	}
}

// fail marks the connection dead with err; pending calls see it.
func (c *subConn) fail(err error) {
	c.mu.Lock()
	c.err = err
	c.pending = nil
	c.queue = nil
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

// stop shuts the child down: SHUTDOWN (queued, never waited for), then
// SIGTERM and SIGKILL of its group after grace each (at once when ctx
// ends), reading the child's answers meanwhile; then it fails what is
// still pending and releases the pipes. It returns the last signal it had
// to send, 0 if none.
func (c *subConn) stop(ctx context.Context, grace time.Duration) syscall.Signal {
	c.closing.Store(true)
	asked := time.Now() // the grace periods count from the SHUTDOWN
	c.post(wire.TypeShutdown, 0)
	sig := c.proc.StopSince(ctx, asked, grace)
	c.ended(io.EOF)
	c.release()
	return sig
}

// release closes the pipes of a connection whose child has exited.
func (c *subConn) release() {
	c.toChild.Close()
	c.toHost.Close()
}

// kill ends a child at once, with SIGKILL, and releases everything.
func (c *subConn) kill() {
	c.closing.Store(true)
	_ = c.proc.Signal(syscall.SIGKILL)
	c.ended(io.EOF)
	c.release()
}
