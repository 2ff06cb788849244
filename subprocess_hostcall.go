package goplugins

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sync/atomic"
	"unicode/utf8"

	"github.com/goplugins/goplugins/internal/wire"
)

// hostSide is what a connection needs to serve its plugin's host calls
// (protocol version 2).
type hostSide struct {
	host  *atomic.Pointer[Host] // the plugin value's handle, set by UseHost; nil or empty: not registered
	codec Codec                 // encodes host-call requests and responses
	log   *slog.Logger          // tagged with the plugin
}

// handle returns the plugin value's handle, nil when it has none (serve
// then refuses).
func (hs hostSide) handle() *Host {
	if hs.host == nil {
		return nil
	}
	return hs.host.Load()
}

// hostCall starts the plugin's host call f on a goroutine of its own, so
// that the reader reads on. Its ctx ends when the plugin cancels it
// (HOST_CANCEL), when the request during which it was made ends, or when
// the connection ends; a parent that is no request in flight makes it a
// background call.
func (c *subConn) hostCall(f wire.Frame) {
	hc, err := wire.ParseHostCall(f.Payload)
	if err == nil && f.ID == 0 {
		err = errors.New("wire: HOST_CALL has id 0; host-call ids are nonzero")
	}
	if err != nil {
		c.refuseHostCall(f.ID, wrapError(err, codeInvalidPlugin, c.name, "a malformed host call was refused"))
		return
	}
	c.mu.Lock()
	if c.hostCalls == nil { // the connection ended
		c.mu.Unlock()
		return
	}
	if c.hostCalls[f.ID] != nil {
		c.mu.Unlock()
		c.refuseHostCall(f.ID, newError(codeInvalidPlugin, c.name, "host call id %d is in use by another host call in flight; ids must be unique among them", f.ID))
		return
	}
	parent, background := context.Context(context.Background()), true
	if sc := c.pending[hc.Parent]; hc.Parent != 0 && sc != nil {
		if sc.hctx == nil {
			sc.hctx, sc.hcancel = context.WithCancel(context.WithoutCancel(sc.ctx))
		}
		parent, background = sc.hctx, false
	}
	ctx, cancel := context.WithCancel(parent)
	c.hostCalls[f.ID] = cancel
	c.hostWG.Add(1)
	c.mu.Unlock()
	go c.runHostCall(ctx, f.ID, hc, background)
}

// runHostCall serves one host call and queues its answer.
func (c *subConn) runHostCall(ctx context.Context, id uint64, hc wire.HostCall, background bool) {
	defer c.hostWG.Done()
	h := c.hs.handle()
	out, err := h.serve(ctx, hc.Name, background, c.hs.codec, hc.Body)
	if h == nil {
		c.hs.log.Log(ctx, c.warnedNoHost.level(), "goplugins: host call refused", "plugin", c.name, "host_func", hc.Name, "err", err)
	}
	c.mu.Lock()
	cancel := c.hostCalls[id]
	delete(c.hostCalls, id) // before the answer: the plugin may reuse the id once it has it
	c.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	if err == nil && wire.MinFrameSize+len(out) > c.peerMax {
		err = newError(codeFrameTooLarge, c.name, "the response of host function %q, %d bytes, is over the plugin's maximum frame size of %d bytes", hc.Name, wire.MinFrameSize+len(out), c.peerMax)
	}
	if err != nil {
		c.answerHostError(id, err)
		return
	}
	_ = c.enqueue(context.Background(), outFrame{t: wire.TypeHostResult, id: id, payload: out}, nil, 0) // fails only when the connection ended
}

// hostCallTooLarge refuses a HOST_CALL over the host's maximum frame size,
// which the reader skipped.
func (c *subConn) hostCallTooLarge(tl *wire.FrameTooLargeError) {
	c.refuseHostCall(tl.ID, newError(codeFrameTooLarge, c.name, "a host call of %d bytes is over the host's maximum frame size of %d bytes (SubprocessConfig.MaxFrameSize); the connection stays up", tl.Size, tl.Max))
}

// refuseHostCall logs err and answers host call id with it, on a goroutine
// of its own: the reader never waits for room in the writer's queue.
func (c *subConn) refuseHostCall(id uint64, err error) {
	c.hs.log.Log(context.Background(), c.warnedMalformed.level(), "goplugins: host call refused", "plugin", c.name, "host_call_id", id, "err", err)
	c.mu.Lock()
	if c.hostCalls == nil {
		c.mu.Unlock()
		return
	}
	c.hostWG.Add(1)
	c.mu.Unlock()
	go func() {
		defer c.hostWG.Done()
		c.answerHostError(id, err)
	}()
}

// hostCancel cancels the plugin's host call id; an id not running is
// ignored (its answer is on its way).
func (c *subConn) hostCancel(id uint64) {
	c.mu.Lock()
	cancel := c.hostCalls[id]
	c.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// answerHostError queues HOST_ERROR for host call id.
func (c *subConn) answerHostError(id uint64, err error) {
	rep := hostErrorReply(err)
	if errors.Is(err, ErrFrameTooLarge) {
		rep.Code = wire.CodeFrameTooLarge
	}
	payload := fitReply(rep, c.peerMax)
	_ = c.enqueue(context.Background(), outFrame{t: wire.TypeHostError, id: id, payload: payload}, nil, 0) // fails only when the connection ended
}

// fitReply encodes rep so that its frame fits limit (at least
// wire.MinMaxFrameSize): a long code or message is cut on a character
// boundary, to a length whose encoding fits whatever its escaping.
func fitReply(rep wire.ErrorReply, limit int) []byte {
	b, _ := json.Marshal(rep) // strings and a bool always encode
	if wire.MinFrameSize+len(b) <= limit {
		return b
	}
	cut := func(s string, n int) string {
		if len(s) <= n {
			return s
		}
		for n > 0 && !utf8.RuneStart(s[n]) {
			n--
		}
		return s[:n] + "…"
	}
	// Escaping makes a byte at most 6 bytes long; 64 bytes stay for the
	// frame header and the JSON around the strings.
	room := (limit - wire.MinFrameSize - 64) / 6
	rep.Code = cut(rep.Code, 32)
	rep.Message = cut(rep.Message, room-32-3)
	b, _ = json.Marshal(rep)
	return b
}

// awaitHostCalls waits for the goroutines serving host calls, until ctx
// ends; the connection has ended, so their ctxs are cancelled.
func (c *subConn) awaitHostCalls(ctx context.Context) {
	done := make(chan struct{})
	go func() {
		c.hostWG.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// metadata returns the payload of the METADATA frame that precedes a
// request of type t made with ctx: nil in protocol version 1 and when ctx
// carries no metadata.
func (c *subConn) metadata(ctx context.Context, t wire.Type) ([]byte, error) {
	if c.protocol < 2 {
		return nil, nil
	}
	md := MetadataFromContext(ctx)
	if md == nil {
		return nil, nil
	}
	b, _ := json.Marshal(md) // a map of strings always encodes
	if size := wire.MinFrameSize + len(b); size > c.peerMax {
		return nil, newError(codeFrameTooLarge, c.name, "the metadata of the %s request, %d bytes, is over the plugin's maximum frame size of %d bytes; nothing was sent", t, size, c.peerMax)
	}
	return b, nil
}

// warnOnce is the level of a record a plugin may cause in a loop: a
// warning the first time, debug level after, so that it does not flood the
// host's log.
type warnOnce struct{ warned atomic.Bool }

func (w *warnOnce) level() slog.Level {
	if w.warned.CompareAndSwap(false, true) {
		return slog.LevelWarn
	}
	return slog.LevelDebug
}
