package goplugins

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/goplugins/goplugins/internal/pluginpb"
	"github.com/goplugins/goplugins/internal/wire"
)

// The pace at which a broken HostCalls stream is opened again.
const (
	grpcHostCallsBackoff    = 20 * time.Millisecond
	grpcHostCallsMaxBackoff = 2 * time.Second
)

// UseHost gives the plugin its handle for the host calls it makes over
// gRPC; a Manager calls it at Register (and at Reload for the incoming
// plugin). It opens the connection's HostCalls stream, and returns once
// the plugin relays host calls over it, or has none (an older plugin), or
// after GRPCConfig.StartTimeout. Before it, the plugin cannot call the
// host. The handle survives restarts of the plugin's child: each new
// child's stream is opened before the child serves.
func (p *grpcPlugin[Req, Resp]) UseHost(h *Host) {
	p.host.Store(h)
	if l := p.link.Load(); l != nil {
		p.startHostCalls(l)
	}
}

// grpcHostCalls serves the host calls a plugin makes over one connection:
// it keeps the connection's HostCalls stream open (opening it again when it
// breaks) and tags the requests sent over the connection so that their
// host calls end with them.
type grpcHostCalls struct {
	plugin string
	client pluginpb.PluginClient
	host   *atomic.Pointer[Host] // the plugin's handle; nil before UseHost
	codec  Codec
	log    *slog.Logger
	token  uint64 // ExecuteRequest.link

	// on reports whether the plugin relays host calls, so that requests
	// are tagged: from its first ready stream on, unless it answered
	// UNIMPLEMENTED.
	on       atomic.Bool
	requests sync.Map // request id -> the request's context.Context
	nextID   atomic.Uint64

	ctx     context.Context // ends when the connection closes
	cancel  context.CancelFunc
	wg      sync.WaitGroup // the stream loop and the calls it serves
	running atomic.Int64   // calls served now; only the stream's reader adds
	freed   chan struct{}  // a call ended while the reader waited for room
	start   sync.Once      // starts run
	first   chan struct{}  // closed once the first stream is ready, or cannot be
	once    sync.Once      // closes first
	done    chan struct{}  // closed when wg is done
}

// newHostCalls returns the host-call state of the connection l, not
// serving yet (see startHostCalls).
func (p *grpcPlugin[Req, Resp]) newHostCalls(l *grpcLink) *grpcHostCalls {
	codec := p.cfg.Codec
	if codec == nil {
		codec = JSONCodec{}
	}
	hc := &grpcHostCalls{
		plugin: p.name, client: l.client, host: &p.host, codec: codec, log: p.log,
		token: rand.Uint64() | 1,
		first: make(chan struct{}), done: make(chan struct{}), freed: make(chan struct{}, 1),
	}
	hc.ctx, hc.cancel = context.WithCancel(context.Background())
	return hc
}

// startHostCalls opens the HostCalls stream of the connection l, once, and
// waits, at most the start timeout, until the plugin relays host calls or
// turns out not to (an older plugin). It runs once the plugin has both a
// handle and a connection, whichever comes last: background work of the
// plugin, which starts when the stream opens, can then call the host.
func (p *grpcPlugin[Req, Resp]) startHostCalls(l *grpcLink) {
	hc := l.hosts
	hc.start.Do(func() {
		hc.wg.Add(1)
		go hc.run()
	})
	wait := p.cfg.StartTimeout
	if wait <= 0 {
		wait = defaultStartTimeout
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-hc.first:
	case <-hc.ctx.Done():
	case <-t.C:
		p.log.Warn("goplugins: the gRPC plugin's HostCalls stream is not ready within the start timeout; its host calls fail until it is", "plugin", p.name)
	}
}

// close stops serving host calls: the calls running are cancelled, and
// close waits for them, bounded by ctx, and reports whether they ended.
func (hc *grpcHostCalls) close(ctx context.Context) bool {
	hc.start.Do(func() {}) // a later startHostCalls starts nothing
	hc.cancel()
	go func() { hc.wg.Wait(); close(hc.done) }()
	select {
	case <-hc.done:
		return true
	case <-ctx.Done():
		return false
	}
}

// run keeps a HostCalls stream open until the connection closes or the
// plugin says it has none.
func (hc *grpcHostCalls) run() {
	defer hc.wg.Done()
	defer hc.once.Do(func() { close(hc.first) })
	delay := grpcHostCallsBackoff
	for {
		ready, err := hc.stream()
		if hc.ctx.Err() != nil {
			return
		}
		if status.Code(err) == codes.Unimplemented {
			hc.on.Store(false)
			hc.log.Debug("goplugins: the gRPC plugin has no HostCalls stream (an older grpcplugin); it cannot call the host", "plugin", hc.plugin)
			return
		}
		if ready {
			delay = grpcHostCallsBackoff
		}
		hc.log.Debug("goplugins: the gRPC plugin's HostCalls stream ended; opening it again", "plugin", hc.plugin, "err", err, "in", delay)
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-hc.ctx.Done():
			t.Stop()
			return
		}
		delay = min(2*delay, grpcHostCallsMaxBackoff)
	}
}

// stream opens one HostCalls stream and serves it until it ends; ready
// says whether the plugin relayed calls over it.
func (hc *grpcHostCalls) stream() (ready bool, err error) {
	md := metadata.Pairs(pluginpb.MDLink, strconv.FormatUint(hc.token, 10), pluginpb.MDHostCodec, hc.codec.Name())
	ctx, cancel := context.WithCancel(metadata.NewOutgoingContext(hc.ctx, md))
	defer cancel()
	s, err := hc.client.HostCalls(ctx, grpc.WaitForReady(true))
	if err != nil {
		return false, err
	}
	h, err := s.Header()
	if err != nil || !slices.Contains(h.Get(pluginpb.MDHostCalls), pluginpb.Ready) {
		if _, rerr := s.Recv(); err == nil {
			err = rerr // the stream's status
		}
		return false, err
	}
	hc.on.Store(true)
	hc.once.Do(func() { close(hc.first) })
	st := &grpcHostStream{s: s, calls: map[uint64]context.CancelFunc{}}
	defer st.end()
	for {
		c, err := s.Recv()
		if err != nil {
			return true, err
		}
		if c.Cancel {
			st.cancel(c.Id)
			continue
		}
		if !hc.awaitRoom(ctx) {
			return true, ctx.Err()
		}
		hc.running.Add(1)
		hc.wg.Add(1)
		go hc.serveCall(st, c)
	}
}

// awaitRoom waits, bounded by ctx, until fewer calls run than the
// plugin's HostCallLimits.MaxConcurrent plus 16. Refusals and answers the
// plugin does not read take room too: a plugin that floods the stream is
// slowed down by gRPC's flow control, never served without bound.
func (hc *grpcHostCalls) awaitRoom(ctx context.Context) bool {
	room := int64(16)
	if h := hc.host.Load(); h != nil {
		room += int64(h.limits.MaxConcurrent)
	}
	for hc.running.Load() >= room {
		select {
		case <-hc.freed:
		case <-ctx.Done():
			return false
		}
	}
	return true
}

// serveCall runs one host call and answers it.
func (hc *grpcHostCalls) serveCall(st *grpcHostStream, c *pluginpb.HostCall) {
	defer func() {
		hc.running.Add(-1)
		select {
		case hc.freed <- struct{}{}:
		default:
		}
		hc.wg.Done()
	}()
	parent, background := hc.ctx, true
	if c.Parent != 0 {
		if rctx, ok := hc.requests.Load(c.Parent); ok {
			parent, background = rctx.(context.Context), false
		}
	}
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	if !st.track(c.Id, cancel) {
		st.send(&pluginpb.HostReply{Id: c.Id, Error: &pluginpb.Error{Code: wire.CodeBadRequest,
			Message: "host call id " + strconv.FormatUint(c.Id, 10) + " is zero or already in flight over the stream"}})
		return
	}
	defer st.untrack(c.Id)
	body, err := hc.host.Load().serve(ctx, c.Name, background, hc.codec, c.Body)
	switch {
	case err != nil:
		r := hostErrorReply(err)
		st.send(&pluginpb.HostReply{Id: c.Id, Error: &pluginpb.Error{Code: r.Code, Message: r.Message, Retryable: r.Retryable}})
	case len(body) > pluginpb.MaxHostMessage:
		st.send(&pluginpb.HostReply{Id: c.Id, Error: &pluginpb.Error{Code: wire.CodeFrameTooLarge,
			Message: "the response of host function " + strconv.Quote(c.Name) + " is " + strconv.Itoa(len(body)) + " bytes, over the limit of " + strconv.Itoa(pluginpb.MaxHostMessage)}})
	default:
		st.send(&pluginpb.HostReply{Id: c.Id, Body: body})
	}
}

// begin tags r as a request whose host calls end with it, and returns the
// request's ctx and its cancel func, which end must get.
func (hc *grpcHostCalls) begin(ctx context.Context, r *pluginpb.ExecuteRequest) (context.Context, context.CancelFunc) {
	r.Link, r.RequestId = hc.token, hc.nextID.Add(1)
	rctx, cancel := context.WithCancel(ctx)
	hc.requests.Store(r.RequestId, rctx)
	return rctx, cancel
}

// end ends the request id that begin tagged, cancelling its host calls.
func (hc *grpcHostCalls) end(id uint64, cancel context.CancelFunc) {
	hc.requests.Delete(id)
	cancel()
}

// grpcHostStream is one HostCalls stream and the calls in flight over it.
type grpcHostStream struct {
	s      pluginpb.Plugin_HostCallsClient
	sendMu sync.Mutex // a gRPC stream's SendMsg is not safe for concurrent use

	mu    sync.Mutex
	calls map[uint64]context.CancelFunc // nil once the stream ended
}

// track records the call id in flight; false if id is zero or taken.
func (st *grpcHostStream) track(id uint64, cancel context.CancelFunc) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.calls == nil {
		cancel() // the stream ended: nobody waits for the answer
		return true
	}
	if _, taken := st.calls[id]; taken || id == 0 {
		return false
	}
	st.calls[id] = cancel
	return true
}

func (st *grpcHostStream) untrack(id uint64) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.calls != nil {
		delete(st.calls, id)
	}
}

// cancel cancels the call id, if it is in flight.
func (st *grpcHostStream) cancel(id uint64) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if c := st.calls[id]; c != nil {
		c()
	}
}

// end cancels the calls in flight: their answers cannot be delivered.
func (st *grpcHostStream) end() {
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, c := range st.calls {
		c()
	}
	st.calls = nil
}

// send answers a call; an error means the stream broke, which the stream's
// reader sees too.
func (st *grpcHostStream) send(r *pluginpb.HostReply) {
	st.sendMu.Lock()
	defer st.sendMu.Unlock()
	_ = st.s.Send(r)
}

// interceptor returns the client interceptor of the connection l's unary
// calls: it sends the pairs of the call's ctx (see ContextWithMetadata) as
// gRPC metadata, keys in lower case (a pair gRPC cannot carry fails the
// call with ErrInvalidConfig), and tags the calls other than Execute (the
// reload surfaces, Info, Health) for host calls, as Execute tags its
// request, with metadata.
func (p *grpcPlugin[Req, Resp]) interceptor(l *grpcLink) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoke grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		var kv []string
		if md := MetadataFromContext(ctx); len(md) > 0 {
			kv = make([]string, 0, 2*len(md)+4)
			for k, v := range md {
				k = strings.ToLower(k)
				if err := checkMetadataPair(k, v); err != nil {
					return newError(codeInvalidConfig, p.name, "call metadata (ContextWithMetadata): %s", err)
				}
				kv = append(kv, k, v)
			}
		}
		if hc := l.hosts; hc != nil && hc.on.Load() && method != pluginpb.Plugin_Execute_FullMethodName {
			id := hc.nextID.Add(1)
			rctx, cancel := context.WithCancel(ctx)
			hc.requests.Store(id, rctx)
			defer hc.end(id, cancel)
			ctx = rctx
			kv = append(kv, pluginpb.MDLink, strconv.FormatUint(hc.token, 10), pluginpb.MDRequest, strconv.FormatUint(id, 10))
		}
		if len(kv) > 0 {
			ctx = metadata.AppendToOutgoingContext(ctx, kv...)
		}
		return invoke(ctx, method, req, reply, cc, opts...)
	}
}

// checkMetadataPair says why gRPC cannot carry the pair k (lower case), v,
// if it cannot.
func checkMetadataPair(k, v string) error {
	if k == "" || strings.HasPrefix(k, "grpc-") || strings.HasPrefix(k, "goplugins-") {
		return fmt.Errorf("the key %q is empty or reserved (grpc-*, goplugins-*)", k)
	}
	for _, c := range []byte(k) {
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("the key %q has characters other than [0-9a-z-_.]", k)
		}
	}
	if strings.HasSuffix(k, "-bin") {
		return nil
	}
	for _, c := range []byte(v) {
		if c < 0x20 || c > 0x7e {
			return fmt.Errorf("the value of %q is not printable ASCII; binary values need a key ending in -bin", k)
		}
	}
	return nil
}
