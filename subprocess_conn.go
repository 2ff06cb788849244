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
// its pipes, limits and host-call settings), run (after the handshake),
// call, stop, kill, the dead channel with err, info, served, ended and
// release.
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
//
// From protocol version 2 the reader also reads the plugin's host calls:
// it hands each to a goroutine of its own (subprocess_hostcall.go), whose
// answer goes through the writer's queue like a request.
type subConn struct {
	name     string
	proc     *proc.Process
	toChild  *os.File // host → plugin pipe
	toHost   *os.File // plugin → host pipe
	r        *wire.Reader
	lim      subLimits
	peerMax  int // the plugin's maximum frame size; set by run
	protocol int // the protocol version the plugin chose; set by run
	info     PluginInfo

	hs              hostSide
	hostCalls       map[uint64]context.CancelFunc // the plugin's host calls running, by its id; nil once dead; under mu
	hostWG          sync.WaitGroup                // the goroutines serving host calls
	warnedNoHost    warnOnce                      // a host call without a handle
	warnedMalformed warnOnce                      // a malformed host call

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

// outFrame is a frame in the writer's queue; call is nil for CANCEL,
// SHUTDOWN and the answers to host calls. meta, when set, is the payload
// of the METADATA frame written right before it.
type outFrame struct {
	t       wire.Type
	id      uint64
	payload []byte
	meta    []byte
	call    *subCall
}

// size is the number of bytes f takes on the stream.
func (f *outFrame) size() int {
	n := wire.HeaderSize + len(f.payload)
	if f.meta != nil {
		n += wire.HeaderSize + len(f.meta)
	}
	return n
}

// appendTo appends f's frames to b, without the payload when head is set.
func (f *outFrame) appendTo(b []byte, head bool) []byte {
	if f.meta != nil {
		b = wire.AppendFrame(b, wire.TypeMetadata, f.id, f.meta)
	}
	if head {
		b = wire.AppendFrame(b, f.t, f.id, nil)
		binary.BigEndian.PutUint32(b[len(b)-wire.HeaderSize:], uint32(wire.MinFrameSize+len(f.payload)))
		return b
	}
	return wire.AppendFrame(b, f.t, f.id, f.payload)
}

// subCall is a request waiting for its answer.
type subCall struct {
	state atomic.Uint32 // callQueued, then callSent (by the writer) or callDropped (by the caller)
	reply chan subReply // buffered; sent to at most once

	// The caller's ctx, whose values the request's host calls see, and
	// the parent of their ctxs, made when the first arrives and cancelled
	// when the request ends; hctx and hcancel are under the conn's mu.
	ctx     context.Context
	hctx    context.Context
	hcancel context.CancelFunc
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
func newSubConn(name string, p *proc.Process, toChild, toHost *os.File, lim subLimits, hs hostSide) *subConn {
	if lim.stall <= 0 {
		lim.stall = subprocessStallTimeout
	}
	return &subConn{
		name: name, proc: p, toChild: toChild, toHost: toHost,
		r:         wire.NewReader(toHost, lim.readMax),
		lim:       lim,
		hs:        hs,
		hostCalls: make(map[uint64]context.CancelFunc),
		pending:   make(map[uint64]*subCall),
		room:      make(chan struct{}),
		wake:      make(chan struct{}, 1),
		quit:      make(chan struct{}),
		dead:      make(chan struct{}),
	}
}

// run starts the reader and the writer once the handshake is done; peerMax
// is the plugin's maximum frame size, protocol the version it chose.
func (c *subConn) run(peerMax, protocol int) {
	c.peerMax = min(peerMax, wire.MaxFrameSizeLimit)
	c.protocol = protocol
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

// readLoop reads frames, delivers answers and starts host calls until the
// stream fails.
func (c *subConn) readLoop() error {
	for {
		f, err := c.r.Read()
		var tl *wire.FrameTooLargeError
		switch {
		case err == nil:
		case errors.As(err, &tl):
			switch {
			case !c.fromPlugin(tl.Type):
				return c.misdirected(tl.Type)
			case tl.Type == wire.TypeHostCall:
				c.hostCallTooLarge(tl)
			default:
				c.deliver(tl.ID, subReply{err: c.tooLarge(tl)})
			}
			continue
		default:
			return err
		}
		switch {
		case !c.fromPlugin(f.Type):
			return c.misdirected(f.Type)
		case f.Type == wire.TypeHostCall:
			c.hostCall(f)
		case f.Type == wire.TypeHostCancel:
			c.hostCancel(f.ID)
		default:
			c.deliver(f.ID, subReply{f: f})
		}
	}
}

// fromPlugin reports whether the plugin may send frames of type t after
// the handshake, in the protocol version it chose.
func (c *subConn) fromPlugin(t wire.Type) bool {
	switch t {
	case wire.TypeResult, wire.TypeError:
		return true
	case wire.TypeHostCall, wire.TypeHostCancel:
		return c.protocol >= 2
	}
	return false
}

// deliver hands r to the call waiting for id, and ends the host calls
// made during it; an answer nobody waits for is dropped.
func (c *subConn) deliver(id uint64, r subReply) {
	c.mu.Lock()
	sc := c.pending[id]
	delete(c.pending, id)
	end := sc.endHostCalls()
	c.mu.Unlock()
	if end != nil {
		end()
	}
	if sc != nil {
		sc.reply <- r
	}
}

// endHostCalls returns the func that cancels the host calls made during
// sc's request (nil if none were), with the conn's mu held; sc may be nil.
func (sc *subCall) endHostCalls() context.CancelFunc {
	if sc == nil {
		return nil
	}
	end := sc.hcancel
	sc.hctx, sc.hcancel = nil, nil
	return end
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
		for i := range batch {
			size += batch[i].size()
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
	for i := range batch {
		f := &batch[i]
		if f.call != nil && !f.call.state.CompareAndSwap(callQueued, callSent) {
			continue // its caller gave up before it was written
		}
		if len(f.payload) < directWrite {
			buf = f.appendTo(buf, false)
			continue
		}
		buf = f.appendTo(buf, true)
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
	size := f.size()
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
	if f.call != nil {
		c.pending[f.id] = f.call
	}
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
	if f.call != nil {
		f.call.state.Store(callSent)
	}
	b := f.appendTo(c.inline.buf[:0], false)
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
// cancelled in the plugin, and one not yet written is dropped, and the
// host calls the plugin made during it are cancelled. In protocol version
// 2 the metadata ctx carries (ContextWithMetadata) precede the request in
// a METADATA frame.
func (c *subConn) call(ctx context.Context, t wire.Type, payload []byte, timeout time.Duration) ([]byte, error) {
	if ctx.Err() != nil {
		return nil, canceledError(ctx, c.name)
	}
	if size := wire.MinFrameSize + len(payload); size > c.peerMax {
		return nil, newError(codeFrameTooLarge, c.name, "the %s request of %d bytes is over the plugin's maximum frame size of %d bytes; nothing was sent", t, size, c.peerMax)
	}
	meta, err := c.metadata(ctx, t)
	if err != nil {
		return nil, err
	}
	var timer <-chan time.Time
	if timeout > 0 {
		tm := time.NewTimer(timeout)
		defer tm.Stop()
		timer = tm.C
	}
	sc := subCalls.Get().(*subCall)
	sc.state.Store(callQueued)
	sc.ctx = ctx
	id := c.nextID.Add(1)
	if err := c.enqueue(ctx, outFrame{t: t, id: id, payload: payload, meta: meta, call: sc}, timer, timeout); err != nil {
		sc.ctx = nil
		subCalls.Put(sc)
		return nil, err
	}
	select {
	case r := <-sc.reply:
		sc.ctx = nil
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
// for), and so are the host calls the plugin made during it.
func (c *subConn) abandon(id uint64, sc *subCall) {
	c.mu.Lock()
	delete(c.pending, id)
	end := sc.endHostCalls()
	c.mu.Unlock()
	if !sc.state.CompareAndSwap(callQueued, callDropped) {
		c.post(wire.TypeCancel, id)
	}
	if end != nil {
		end() // after the CANCEL is queued: the plugin reads it before the host calls' answers
	}
}

// tooLarge is the error of a call whose answer was over the host's limit.
func (c *subConn) tooLarge(tl *wire.FrameTooLargeError) error {
	return newError(codeFrameTooLarge, c.name, "the answer of %d bytes is over the host's maximum frame size of %d bytes (SubprocessConfig.MaxFrameSize); the connection stays up", tl.Size, tl.Max)
}

// misdirected is the protocol violation of a plugin that sends a frame of
// type t after the handshake.
func (c *subConn) misdirected(t wire.Type) error {
	return fmt.Errorf("%w: a plugin may not send %s frames after the handshake (protocol version %d)", wire.ErrMalformed, t, c.protocol)
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

// fail marks the connection dead with err; pending calls see it, and the
// host calls still running are cancelled.
func (c *subConn) fail(err error) {
	c.mu.Lock()
	c.err = err
	c.pending = nil
	c.queue = nil
	hostCalls := c.hostCalls
	c.hostCalls = nil
	c.mu.Unlock()
	for _, cancel := range hostCalls {
		cancel()
	}
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
// ends), reading the child's answers and serving its host calls
// meanwhile; then it fails what is still pending, cancels the host calls
// still running and waits for them (until ctx ends), and releases the
// pipes. It returns the last signal it had to send, 0 if none.
func (c *subConn) stop(ctx context.Context, grace time.Duration) syscall.Signal {
	c.closing.Store(true)
	asked := time.Now() // the grace periods count from the SHUTDOWN
	c.post(wire.TypeShutdown, 0)
	sig := c.proc.StopSince(ctx, asked, grace)
	c.ended(io.EOF)
	c.awaitHostCalls(ctx)
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
