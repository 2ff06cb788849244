package sdk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/goplugins/goplugins/internal/wire"
)

// scope is the ctx of a request's handler or of background work: it
// carries the server, the request's id (0 for background work) and the
// request's metadata.
type scope struct {
	context.Context
	s  *server
	id uint64
	md map[string]string
}

type scopeKey struct{}

// Value returns the scope itself for scopeKey, else the wrapped ctx's value.
func (c *scope) Value(key any) any {
	if key == (scopeKey{}) {
		return c
	}
	return c.Context.Value(key)
}

// WithBackground runs fn after the handshake on a goroutine of its own,
// with a ctx for host calls outside any request (the host refuses them
// unless it granted the function with Grant.Background). The ctx is
// cancelled when serving ends, and Serve waits for fn to return before it
// returns. It may be given more than once.
func WithBackground(fn func(ctx context.Context)) Option {
	return func(cf *config) { cf.background = append(cf.background, fn) }
}

// Metadata returns the metadata the host sent with the request whose
// handler got ctx (goplugins.ContextWithMetadata), or nil. The map must
// not be modified.
func Metadata(ctx context.Context) map[string]string {
	if sc, _ := ctx.Value(scopeKey{}).(*scope); sc != nil {
		return sc.md
	}
	return nil
}

// CallHost calls the host function name with req and returns its
// response, both encoded with the codec of the handshake. ctx must be a
// handler's ctx (or derived from it: the call is made within that
// request, and ends when it does) or the ctx of WithBackground (a
// background call). When ctx ends first, CallHost asks the host to cancel
// the call and returns at once.
//
// It fails with an *Error carrying the host's code: ErrNotGranted,
// ErrOverloaded, ErrTimeout, ErrCanceled (also matching ctx's error when
// ctx ended), ErrPanic, ErrShuttingDown, ErrBadRequest, ErrFrameTooLarge,
// ErrHostFunc or the code of the host function's own error; with
// ErrUnsupported when the host speaks protocol version 1 or ctx is not
// one of Serve's. Safe for concurrent use.
func CallHost[Req, Resp any](ctx context.Context, name string, req Req) (Resp, error) {
	var zero Resp
	sc, _ := ctx.Value(scopeKey{}).(*scope)
	if sc == nil {
		return zero, &Error{Code: wire.CodeUnsupported, Message: fmt.Sprintf("host function %q: sdk.CallHost needs the ctx of a handler or of sdk.WithBackground", name)}
	}
	s := sc.s
	body, err := s.codec.Marshal(req)
	if err != nil {
		return zero, &Error{Code: wire.CodeBadRequest, Message: fmt.Sprintf("the request to host function %q does not encode with codec %q: %v", name, s.codec.Name(), err)}
	}
	out, err := s.callHost(ctx, sc.id, name, body)
	if err != nil {
		return zero, err
	}
	var resp Resp
	if err := s.codec.Unmarshal(out, &resp); err != nil {
		return zero, &Error{Code: wire.CodeBadRequest, Message: fmt.Sprintf("the response of host function %q does not decode with codec %q: %v", name, s.codec.Name(), err)}
	}
	return resp, nil
}

// callHost sends one HOST_CALL made during request parent (0: background)
// and waits for its answer or for ctx to end.
func (s *server) callHost(ctx context.Context, parent uint64, name string, body []byte) ([]byte, error) {
	switch {
	case s.protocol < 2:
		return nil, &Error{Code: wire.CodeUnsupported, Message: fmt.Sprintf("host function %q: the host speaks protocol version %d, which has no host calls; upgrade the host", name, s.protocol)}
	case len(name) == 0 || len(name) > wire.MaxHostFuncName:
		return nil, &Error{Code: wire.CodeBadRequest, Message: fmt.Sprintf("host function name %q: names are 1 to %d bytes", name, wire.MaxHostFuncName)}
	case ctx.Err() != nil:
		return nil, canceled(name, ctx.Err())
	}
	payload := wire.AppendHostCall(nil, wire.HostCall{Parent: parent, Name: name, Body: body})
	id := s.hostID.Add(1)
	answer := make(chan wire.Frame, 1)
	s.mu.Lock()
	s.hostCalls[id] = answer
	s.mu.Unlock()
	if err := s.out.Write(wire.TypeHostCall, id, payload); err != nil {
		s.forgetHostCall(id)
		if errors.Is(err, wire.ErrFrameTooLarge) {
			return nil, &Error{Code: wire.CodeFrameTooLarge, Message: fmt.Sprintf("the call of host function %q, %d bytes, is over the host's maximum frame size of %d bytes", name, wire.MinFrameSize+len(payload), s.out.Max()), cause: err}
		}
		return nil, &Error{Code: wire.CodeError, Message: fmt.Sprintf("host function %q: writing to the host: %v", name, err), cause: err}
	}
	select {
	case f := <-answer:
		out, err := hostAnswer(name, f)
		if errors.Is(err, ErrCanceled) && ctx.Err() != nil {
			return nil, canceled(name, ctx.Err()) // the host cancelled it because the request ended
		}
		return out, err
	case <-ctx.Done():
		if s.forgetHostCall(id) {
			_ = s.out.Write(wire.TypeHostCancel, id, nil) // a write error ends the loop's stream too
		}
		return nil, canceled(name, ctx.Err())
	case <-s.ctx.Done():
		s.forgetHostCall(id)
		return nil, canceled(name, s.ctx.Err())
	}
}

// forgetHostCall stops waiting for host call id and reports whether it
// was still waited for.
func (s *server) forgetHostCall(id uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.hostCalls[id]
	delete(s.hostCalls, id)
	return ok
}

// hostAnswered hands the host's answer f to the host call waiting for it;
// an answer nobody waits for is dropped.
func (s *server) hostAnswered(f wire.Frame) {
	s.mu.Lock()
	answer := s.hostCalls[f.ID]
	delete(s.hostCalls, f.ID)
	s.mu.Unlock()
	if answer != nil {
		answer <- f // buffered: one answer per call
	}
}

// hostAnswer turns HOST_RESULT into its payload and HOST_ERROR into an
// *Error.
func hostAnswer(name string, f wire.Frame) ([]byte, error) {
	if f.Type == wire.TypeHostResult {
		return f.Payload, nil
	}
	var r wire.ErrorReply
	if err := json.Unmarshal(f.Payload, &r); err != nil {
		return nil, &Error{Code: wire.CodeError, Message: fmt.Sprintf("host function %q: the host's HOST_ERROR does not decode: %v", name, err)}
	}
	return nil, &Error{Code: r.Code, Message: r.Message, Retryable: r.Retryable}
}

// canceled is the error of a host call abandoned because its ctx ended.
func canceled(name string, err error) error {
	return &Error{Code: wire.CodeCanceled, Message: fmt.Sprintf("host function %q: %v", name, err), cause: err}
}

// takeMetadata returns the metadata read for request id and forgets it:
// METADATA applies to the frame that follows it at once, or to none.
// Touched by the reading goroutine only.
func (s *server) takeMetadata(id uint64) map[string]string {
	md, ok := s.meta, s.metaID == id && s.meta != nil
	s.meta, s.metaID = nil, 0
	if !ok {
		return nil
	}
	return md
}

// readMetadata keeps the payload of METADATA f for the request that
// follows; one that does not decode is dropped.
func (s *server) readMetadata(f wire.Frame) {
	var md map[string]string
	if json.Unmarshal(f.Payload, &md) != nil {
		md = nil
	}
	s.meta, s.metaID = md, f.ID
}
