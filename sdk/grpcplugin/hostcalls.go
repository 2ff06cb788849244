package grpcplugin

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/goplugins/goplugins/internal/pluginpb"
	"github.com/goplugins/goplugins/sdk"
)

// Error codes of CallHost's own failures, besides the host's codes
// (docs/GRPC.md lists them all).
const (
	codeFrameTooLarge = "frame_too_large"
	codeUnavailable   = "unavailable"
)

// CallHost calls the host function name with req and returns its response,
// both encoded with the codec the host names for host calls (JSON unless
// the host's GRPCConfig.Codec is set; the plugin must have it, see
// WithCodec).
//
// ctx must be the ctx of a handler (Execute or a reload surface's, or
// derived from it): the call is made within that request, and ends when
// the request ends; or the ctx
// of background work (see WithBackground), for a call outside any
// request, which the host allows only if it granted it. When ctx ends,
// CallHost asks the host to cancel the call and returns at once.
//
// Errors are *sdk.Error values with the host's code: "not_granted",
// "overloaded" (retryable), "timeout", "canceled", "panic",
// "shutting_down", "bad_request", "frame_too_large", "codec", "error", or
// the host function's own code. CallHost's own: "canceled" when ctx ended
// (the error also matches ctx's error), "unsupported" when ctx is neither a
// handler's nor background work's or the host opened no HostCalls stream to
// this process, "unavailable" (retryable) when the stream to the host broke,
// "frame_too_large" for a request over pluginpb.MaxHostMessage bytes, and
// "bad_request" when req does not encode or the response does not decode
// into Resp.
func CallHost[Req, Resp any](ctx context.Context, name string, req Req) (Resp, error) {
	var zero Resp
	r, ok := ctx.Value(requestKey{}).(hostRequest)
	if !ok {
		return zero, &sdk.Error{Code: codeUnsupported, Message: fmt.Sprintf("host call %q: CallHost needs the ctx of a handler or of WithBackground work, from a host that relays host calls (the plugin is registered with a host's manager, and the host is not older)", name)}
	}
	l := r.links.get(r.link)
	if l == nil {
		return zero, &sdk.Error{Code: codeUnsupported, Message: fmt.Sprintf("host call %q: the host opened no HostCalls stream to this process (the plugin is not registered with a host manager, the host is older, or a load balancer sent the request to another replica than the stream)", name)}
	}
	if l.codec == nil {
		return zero, &sdk.Error{Code: codeCodec, Message: fmt.Sprintf("host call %q: the host encodes host calls with codec %q, which the plugin lacks: add it with grpcplugin.WithCodec", name, l.codecName)}
	}
	body, err := l.codec.Marshal(req)
	if err != nil {
		return zero, &sdk.Error{Code: codeBadRequest, Message: fmt.Sprintf("host call %q: the request does not encode with codec %q: %v", name, l.codecName, err)}
	}
	if len(body) > pluginpb.MaxHostMessage {
		return zero, &sdk.Error{Code: codeFrameTooLarge, Message: fmt.Sprintf("host call %q: the request is %d bytes, over the limit of %d", name, len(body), pluginpb.MaxHostMessage)}
	}
	reply, err := l.call(ctx, r.parent, name, body)
	if err != nil {
		return zero, err
	}
	if e := reply.Error; e != nil {
		return zero, &sdk.Error{Code: e.Code, Message: e.Message, Retryable: e.Retryable}
	}
	var resp Resp
	if err := l.codec.Unmarshal(reply.Body, &resp); err != nil {
		return zero, &sdk.Error{Code: codeBadRequest, Message: fmt.Sprintf("host call %q: the response does not decode into %T with codec %q: %v", name, resp, l.codecName, err)}
	}
	return resp, nil
}

// canceledError is CallHost's error when ctx ended: it matches both the
// *sdk.Error (errors.As) and ctx's error (errors.Is).
type canceledError struct {
	reply *sdk.Error
	cause error
}

func (e *canceledError) Error() string   { return e.reply.Error() }
func (e *canceledError) Unwrap() []error { return []error{e.reply, e.cause} }

// Metadata returns the pairs the host attached to the call whose handler
// has ctx (goplugins.ContextWithMetadata on the host): the request's gRPC
// metadata without gRPC's own headers (":authority", "content-type",
// "user-agent", "grpc-*") and the transport's ("goplugins-*"). It is nil
// when there are none. With several values under one key, the last wins.
func Metadata(ctx context.Context) map[string]string {
	md, _ := metadata.FromIncomingContext(ctx)
	var out map[string]string
	for k, v := range md {
		if len(v) == 0 || strings.HasPrefix(k, ":") || strings.HasPrefix(k, "grpc-") || strings.HasPrefix(k, "goplugins-") || k == "content-type" || k == "user-agent" {
			continue
		}
		if out == nil {
			out = make(map[string]string, len(md))
		}
		out[k] = v[len(v)-1]
	}
	return out
}

// WithBackground runs fn for each HostCalls stream a host opens (a host
// that started the plugin opens one; a host opens it again after a
// reconnect), in its own goroutine, with a ctx for host calls outside any
// request (see CallHost). The ctx ends when that stream ends or serving
// stops; Serve, ServeListener and ListenAndServe return only after every fn
// has returned.
func WithBackground(fn func(ctx context.Context)) Option {
	return func(cf *config) { cf.background = append(cf.background, fn) }
}

// requestKey is the ctx key of a hostRequest.
type requestKey struct{}

// hostRequest says over which link a handler's or background work's host
// calls go, and their parent request (0 for background work).
type hostRequest struct {
	links  *hostLinks
	link   uint64
	parent uint64
}

// hostLinks are a service's HostCalls streams, by link token.
type hostLinks struct{ m sync.Map }

func (ls *hostLinks) get(token uint64) *hostLink {
	l, _ := ls.m.Load(token)
	hl, _ := l.(*hostLink)
	return hl
}

// hostLink is one HostCalls stream and the calls waiting for answers over
// it.
type hostLink struct {
	s         pluginpb.Plugin_HostCallsServer
	codec     sdk.Codec // nil if the plugin lacks the host's codec
	codecName string
	nextID    atomic.Uint64

	sendMu sync.Mutex  // a gRPC stream's SendMsg is not safe for concurrent use
	ended  atomic.Bool // the stream's handler returns: sending would touch a finished stream

	mu      sync.Mutex
	pending map[uint64]chan *pluginpb.HostReply // nil once the stream ended
}

// call sends one host call and waits for its answer, bounded by ctx.
func (l *hostLink) call(ctx context.Context, parent uint64, name string, body []byte) (*pluginpb.HostReply, error) {
	id := l.nextID.Add(1)
	ch := make(chan *pluginpb.HostReply, 1)
	l.mu.Lock()
	if l.pending == nil {
		l.mu.Unlock()
		return nil, l.unavailable(name)
	}
	l.pending[id] = ch
	l.mu.Unlock()
	if err := l.send(&pluginpb.HostCall{Id: id, Parent: parent, Name: name, Body: body}); err != nil {
		l.forget(id)
		return nil, l.unavailable(name)
	}
	select {
	case r, ok := <-ch:
		if !ok {
			return nil, l.unavailable(name)
		}
		return r, nil
	case <-ctx.Done():
		l.forget(id)
		go l.send(&pluginpb.HostCall{Id: id, Cancel: true}) // the answer comes, and is dropped
		return nil, &canceledError{reply: &sdk.Error{Code: codeCanceled, Message: fmt.Sprintf("host call %q: %v", name, ctx.Err())}, cause: ctx.Err()}
	}
}

func (l *hostLink) unavailable(name string) error {
	return &sdk.Error{Code: codeUnavailable, Retryable: true, Message: fmt.Sprintf("host call %q: the HostCalls stream to the host ended", name)}
}

func (l *hostLink) send(c *pluginpb.HostCall) error {
	l.sendMu.Lock()
	defer l.sendMu.Unlock()
	if l.ended.Load() {
		return errors.New("the HostCalls stream ended")
	}
	return l.s.Send(c)
}

func (l *hostLink) forget(id uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.pending, id)
}

// deliver hands an answer to the call waiting for it; answers nobody waits
// for (the call was cancelled) are dropped.
func (l *hostLink) deliver(r *pluginpb.HostReply) {
	l.mu.Lock()
	ch := l.pending[r.Id]
	delete(l.pending, r.Id)
	l.mu.Unlock()
	if ch != nil {
		ch <- r
	}
}

// end fails the calls waiting for answers, and sends no more.
func (l *hostLink) end() {
	l.ended.Store(true)
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, ch := range l.pending {
		close(ch)
	}
	l.pending = nil
}

// HostCalls relays the plugin's host calls to the host that opened the
// stream, until the host closes it or the plugin stops (then after the
// calls in flight of other RPCs have ended, since their handlers may call
// the host).
func (s *service[Req, Resp]) HostCalls(stream pluginpb.Plugin_HostCallsServer) error {
	md, _ := metadata.FromIncomingContext(stream.Context())
	token, err := strconv.ParseUint(last(md.Get(pluginpb.MDLink)), 10, 64)
	if err != nil || token == 0 {
		return status.Errorf(codes.InvalidArgument, "the HostCalls stream needs the metadata %s, a nonzero decimal link token", pluginpb.MDLink)
	}
	l := &hostLink{s: stream, codecName: last(md.Get(pluginpb.MDHostCodec)), pending: map[uint64]chan *pluginpb.HostReply{}}
	for _, c := range s.hostCodecs {
		if c.Name() == l.codecName {
			l.codec = c
		}
	}
	s.links.m.Store(token, l) // a newer stream of the same host replaces an older one
	defer s.links.m.CompareAndDelete(token, l)
	defer l.end()
	if err := stream.SendHeader(metadata.Pairs(pluginpb.MDHostCalls, pluginpb.Ready)); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.WithValue(stream.Context(), requestKey{}, hostRequest{links: &s.links, link: token}))
	defer cancel()
	for _, fn := range s.background {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			fn(ctx)
		}()
	}
	recvDone := make(chan struct{})
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(recvDone)
		for {
			r, err := stream.Recv()
			if err != nil {
				return
			}
			l.deliver(r)
		}
	}()
	select {
	case <-recvDone:
	case <-s.stopLinks:
	}
	return nil
}

func last(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

// inflight counts the unary calls being handled, so that stopping can wait
// for them before it ends the HostCalls streams.
type inflight struct {
	n        atomic.Int64
	draining atomic.Bool
	idle     chan struct{}
}

func (f *inflight) begin() { f.n.Add(1) }

func (f *inflight) end() {
	if f.n.Add(-1) == 0 && f.draining.Load() {
		select {
		case f.idle <- struct{}{}:
		default:
		}
	}
}

// wait returns once no unary call is being handled.
func (f *inflight) wait() {
	f.draining.Store(true)
	for f.n.Load() != 0 {
		<-f.idle
	}
}
