package goplugins

import (
	"context"
	"fmt"
)

// Caller identifies the plugin value that makes a host call, so that a host
// function can scope what it returns (a plugin's own keys, not another's).
type Caller struct {
	// Plugin is the calling plugin's name.
	Plugin string
	// Version is the calling plugin's version.
	Version string
	// Generation is the number of the plugin value that calls: 1 after
	// Register, one more after each committed Reload (see
	// PluginMetrics.Generation). While a reload drains the old value, both
	// generations may call.
	Generation uint64
}

// HostFunc is a function the host offers its plugins: made by NewHostFunc,
// given to a manager with WithHostFuncs, and callable by the plugins that
// WithGrants allows.
type HostFunc struct {
	name    string
	typed   any // func(context.Context, Caller, Req) (Resp, error)
	encoded func(ctx context.Context, caller Caller, codec Codec, body []byte) ([]byte, error)
}

// NewHostFunc returns the host function name, which runs fn. name follows
// the rules of plugin names (1 to 64 bytes of [a-z0-9._-], starting with a
// letter or digit; e.g. "kv.get"). An in-process plugin whose request and
// response types are Req and Resp calls fn directly; plugins out of process
// send the request encoded with their transport's codec (JSON by default)
// and get the response back the same way.
//
// fn receives a ctx that ends when the plugin's call is cancelled, when the
// request during which the plugin called ends, or at the host-call timeout
// (see HostCallLimits); it should honour it. A panic in fn is recovered
// and returned to the plugin as a "panic" error.
//
// NewHostFunc panics if name is invalid or fn is nil: both are programming
// errors, found on the first run.
func NewHostFunc[Req, Resp any](name string, fn func(ctx context.Context, caller Caller, req Req) (Resp, error)) HostFunc {
	if err := validateName(name); err != nil {
		panic(fmt.Sprintf("goplugins: NewHostFunc: host function name %q: %v", name, err))
	}
	if fn == nil {
		panic(fmt.Sprintf("goplugins: NewHostFunc: host function %q has a nil func", name))
	}
	return HostFunc{
		name:  name,
		typed: fn,
		encoded: func(ctx context.Context, caller Caller, codec Codec, body []byte) ([]byte, error) {
			var req Req
			if err := codec.Unmarshal(body, &req); err != nil {
				return nil, wrapError(err, codeInvalidPlugin, caller.Plugin, "the request to host function %q does not decode with codec %q", name, codec.Name())
			}
			resp, err := fn(ctx, caller, req)
			if err != nil {
				return nil, err
			}
			out, err := codec.Marshal(resp)
			if err != nil {
				return nil, fmt.Errorf("the response of host function %q does not encode with codec %q: %w", name, codec.Name(), err)
			}
			return out, nil
		},
	}
}

// Name returns the function's name.
func (f HostFunc) Name() string { return f.name }

// CallHost calls host function name on behalf of the plugin value whose
// handle is h (see HostUser), within ctx: the ctx of the request the plugin
// serves, or its own for background work. It fails with ErrNotGranted when
// the host granted the plugin no such function (see WithGrants),
// ErrOverloaded when the plugin has as many host calls running as
// HostCallLimits.MaxConcurrent allows (retryable; the error is built once
// per plugin value: do not modify it), ErrClosed once the plugin value's
// Close has returned, ErrCanceled when ctx ends, ErrTimeout past
// HostCallLimits.Timeout, ErrPanic when the function panicked, and
// otherwise with the function's own error.
//
// When Req and Resp are the types the function was made with, CallHost
// calls it directly; otherwise the request and response go through JSON
// (ErrInvalidPlugin if they do not convert). A direct call allocates
// nothing of its own when ctx has a deadline no later than
// HostCallLimits.Timeout; otherwise CallHost derives a ctx with the
// timeout. Calls are counted in PluginMetrics.HostCalls.
func CallHost[Req, Resp any](ctx context.Context, h *Host, name string, req Req) (Resp, error) {
	if h != nil && h.cfg.interceptor != nil {
		return interceptHostCall(ctx, h.cfg.interceptor, h.log, h.caller.Plugin, h.caller.Version, h.caller.Generation, name, req,
			func(ctx context.Context) (Resp, error) { return callHost[Req, Resp](ctx, h, name, req) })
	}
	return callHost[Req, Resp](ctx, h, name, req)
}

// callHost is CallHost without the interceptors.
func callHost[Req, Resp any](ctx context.Context, h *Host, name string, req Req) (Resp, error) {
	var zero Resp
	g, err := h.admit(ctx, name, false)
	if err != nil {
		return zero, err
	}
	defer h.release()
	cctx, cancel := h.bound(ctx)
	var (
		resp     Resp
		panicked any
	)
	if fn, ok := g.f.typed.(func(context.Context, Caller, Req) (Resp, error)); ok {
		resp, err, panicked = callTyped(cctx, fn, h.caller, req)
	} else {
		resp, err, panicked = callViaJSON[Req, Resp](cctx, g.f, h.caller, req)
	}
	err = h.outcome(ctx, cctx, name, g.ctr, err, panicked)
	if cancel != nil {
		cancel()
	}
	if err != nil {
		return zero, err
	}
	return resp, nil
}

// callTyped runs fn, reporting a panic instead of letting it through.
func callTyped[Req, Resp any](ctx context.Context, fn func(context.Context, Caller, Req) (Resp, error), caller Caller, req Req) (resp Resp, err error, panicked any) {
	defer func() { panicked = recover() }()
	resp, err = fn(ctx, caller, req)
	return resp, err, nil
}

// callViaJSON runs f with req and the response converted through JSON, for
// a caller whose types differ from the function's. A request or response
// that does not convert fails with ErrInvalidPlugin.
func callViaJSON[Req, Resp any](ctx context.Context, f *HostFunc, caller Caller, req Req) (resp Resp, err error, panicked any) {
	defer func() { panicked = recover() }()
	body, err := JSONCodec{}.Marshal(req)
	if err != nil {
		return resp, wrapError(err, codeInvalidPlugin, caller.Plugin, "the request to host function %q does not encode as JSON", f.name), nil
	}
	out, err := f.encoded(ctx, caller, JSONCodec{}, body)
	if err != nil {
		return resp, err, nil
	}
	if err := (JSONCodec{}).Unmarshal(out, &resp); err != nil {
		return resp, wrapError(err, codeInvalidPlugin, caller.Plugin, "the response of host function %q does not decode into the caller's type", f.name), nil
	}
	return resp, nil, nil
}
