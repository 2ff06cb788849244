package goplugins

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/goplugins/goplugins/internal/wire"
)

// HostUser is implemented by plugins that call host functions. Register,
// and Reload for the incoming plugin value, call UseHost with the value's
// handle before the value serves or takes part in a handoff (a stream's
// first Resume, a schema check). A panic in UseHost fails the Register or
// Reload with ErrInvalidPlugin. The subprocess and gRPC transports
// implement it and relay their plugin's host calls.
type HostUser interface {
	UseHost(h *Host)
}

// Host is one plugin value's handle for calling host functions (see
// CallHost). It is safe for concurrent use, and stops working (ErrClosed)
// once its plugin value's Close has returned: during a reload, the old
// value's handle works until the old value has drained and closed, and a
// plugin may still call the host from its own Close. The handle given to
// a value whose Register or Reload failed is closed too.
type Host struct {
	caller     Caller
	cfg        *hostConfig
	plugin     *hostPlugin
	limits     HostCallLimits
	allowed    map[string]hostGrant // by function; read-only
	asked      []string             // what the manifest asks for; nil: no manifest
	log        *slog.Logger
	emit       func(Event)
	overloaded error // built once: refusing allocates nothing
	closed     atomic.Bool

	warnMu sync.Mutex
	warned map[string]struct{} // functions whose refusal was logged as a warning
}

// hostGrant is a function one plugin value may call.
type hostGrant struct {
	f          *HostFunc
	ctr        *hostCounters
	background bool // outside a request too
}

// hostPlugin is the host-call state of one registered plugin, shared by
// its generations.
type hostPlugin struct {
	inFlight atomic.Int64
	refused  atomic.Uint64
	counters map[string]*hostCounters // by function, every function of the manager; read-only
}

// hostCounters count one plugin's calls of one host function.
type hostCounters struct {
	calls, errors atomic.Uint64
}

func newHostPlugin(cfg *hostConfig) *hostPlugin {
	hp := &hostPlugin{counters: make(map[string]*hostCounters, len(cfg.funcs))}
	for name := range cfg.funcs {
		hp.counters[name] = &hostCounters{}
	}
	return hp
}

// bind returns the handle of the plugin value caller; asked is what its
// manifest asks for (nil: no manifest, the grants alone decide). A nil log
// or emit discards.
func (hp *hostPlugin) bind(cfg *hostConfig, caller Caller, asked []string, log *slog.Logger, emit func(Event)) *Host {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if emit == nil {
		emit = func(Event) {}
	}
	h := &Host{caller: caller, cfg: cfg, plugin: hp, limits: cfg.limits.withDefaults(), asked: asked,
		allowed: make(map[string]hostGrant), log: log, emit: emit}
	for name, f := range cfg.funcs {
		if a := cfg.grantFor(caller.Plugin, name, asked); a != accessNone {
			h.allowed[name] = hostGrant{f: f, ctr: hp.counters[name], background: a == accessBackground}
		}
	}
	for _, name := range asked {
		if _, ok := h.allowed[name]; !ok {
			log.Warn("goplugins: the plugin asks for a host function that is not granted or not offered", "plugin", caller.Plugin, "host_func", name)
		}
	}
	h.overloaded = retryable(newError(codeOverloaded, caller.Plugin,
		"host call refused: the plugin has %d host calls running, the limit (HostCallLimits.MaxConcurrent); retry later", h.limits.MaxConcurrent))
	return h
}

// Caller returns the identity of the handle's plugin value.
func (h *Host) Caller() Caller { return h.caller }

// close makes the handle refuse further calls (ErrClosed).
func (h *Host) close() {
	if h != nil {
		h.closed.Store(true)
	}
}

// admit checks a call of function name and counts it in; release counts
// it out. background says the plugin made it outside a request.
func (h *Host) admit(ctx context.Context, name string, background bool) (hostGrant, error) {
	if h == nil {
		return hostGrant{}, newError(codeNotGranted, "", "host function %q called without a host handle: the plugin is not registered with a manager yet", name)
	}
	if h.closed.Load() {
		h.plugin.refused.Add(1)
		return hostGrant{}, newError(codeClosed, h.caller.Plugin, "host function %q called after the plugin value (generation %d) was closed", name, h.caller.Generation)
	}
	g, ok := h.allowed[name]
	if !ok || (background && !g.background) {
		return hostGrant{}, h.refuse(name, ok)
	}
	if n := h.plugin.inFlight.Add(1); n > int64(h.limits.MaxConcurrent) {
		h.plugin.inFlight.Add(-1)
		h.plugin.refused.Add(1)
		return hostGrant{}, h.overloaded
	}
	g.ctr.calls.Add(1)
	if ctx.Err() != nil {
		g.ctr.errors.Add(1)
		h.release()
		return hostGrant{}, canceledError(ctx, h.caller.Plugin)
	}
	return g, nil
}

func (h *Host) release() { h.plugin.inFlight.Add(-1) }

// refuse counts, logs and reports a call the plugin may not make: granted
// says the function is granted, but only within a request.
func (h *Host) refuse(name string, granted bool) error {
	h.plugin.refused.Add(1)
	var err error
	switch {
	case granted:
		err = newError(codeNotGranted, h.caller.Plugin, "host function %q may be called only within a request: set Grant.Background to allow background calls", name)
	case h.cfg.funcs[name] == nil:
		err = newError(codeNotGranted, h.caller.Plugin, "no host function %q is offered (WithHostFuncs)", name)
	case h.asked != nil && !slices.Contains(h.asked, name):
		err = newError(codeNotGranted, h.caller.Plugin, "host function %q is not asked for: list it in the manifest's host_functions (and grant it with WithGrants)", name)
	default:
		err = newError(codeNotGranted, h.caller.Plugin, "host function %q is not granted to the plugin: grant it with WithGrants", name)
	}
	level := slog.LevelDebug
	if h.firstRefusal(name) {
		level = slog.LevelWarn
	}
	h.log.Log(context.Background(), level, "goplugins: host call refused", "plugin", h.caller.Plugin, "host_func", name, "err", err)
	h.emit(Event{Kind: EventHostCallRefused, Plugin: h.caller.Plugin, Version: h.caller.Version, HostFunc: name, Err: err})
	return err
}

// maxWarned bounds the function names a handle remembers refusing.
const maxWarned = 32

// firstRefusal reports whether this is the handle's first refusal of
// function name, so that a plugin calling in a loop what it may not call
// logs one warning per function (the rest at debug level), not a flood.
func (h *Host) firstRefusal(name string) bool {
	h.warnMu.Lock()
	defer h.warnMu.Unlock()
	if _, ok := h.warned[name]; ok || len(h.warned) >= maxWarned {
		return false
	}
	if h.warned == nil {
		h.warned = map[string]struct{}{}
	}
	h.warned[name] = struct{}{}
	return true
}

// bound returns ctx bounded by the host-call timeout, and its cancel func;
// a ctx that ends no later than the timeout is returned as it is (nil
// cancel), so that a call within a request with a deadline allocates
// nothing.
func (h *Host) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= h.limits.Timeout {
		return ctx, nil
	}
	return context.WithTimeout(ctx, h.limits.Timeout)
}

// outcome turns what the function returned into the call's error: the
// caller's ctx ending (ErrCanceled), the host-call timeout (ErrTimeout), a
// panic (ErrPanic) or the function's own error.
func (h *Host) outcome(parent, cctx context.Context, name string, ctr *hostCounters, err error, panicked any) error {
	if panicked == nil && err == nil {
		return nil
	}
	ctr.errors.Add(1)
	switch {
	case panicked != nil:
		h.log.Error("goplugins: host function panicked", "plugin", h.caller.Plugin, "host_func", name, "panic", panicked)
		return newError(codePanic, h.caller.Plugin, "host function %q panicked (%v); the host recovered, but the function has a bug to fix", name, panicked)
	case parent.Err() != nil:
		return canceledError(parent, h.caller.Plugin)
	case errors.Is(cctx.Err(), context.DeadlineExceeded):
		return newError(codeTimeout, h.caller.Plugin, "host function %q ran past the host-call timeout of %v (HostCallLimits.Timeout)", name, h.limits.Timeout)
	}
	return err
}

// serve runs a host call that a plugin out of process made: body is the
// request encoded with codec, and background says the plugin made it
// outside a request. It returns the response encoded with codec; its
// errors are CallHost's, and ErrInvalidPlugin when body does not decode. A
// transport whose plugin is not registered yet calls it on a nil handle,
// which refuses.
func (h *Host) serve(ctx context.Context, name string, background bool, codec Codec, body []byte) ([]byte, error) {
	if h != nil && h.cfg.interceptor != nil {
		return interceptHostCall(ctx, h.cfg.interceptor, h.log, h.caller.Plugin, h.caller.Version, h.caller.Generation, name, body,
			func(ctx context.Context) ([]byte, error) { return h.serveDirect(ctx, name, background, codec, body) })
	}
	return h.serveDirect(ctx, name, background, codec, body)
}

// serveDirect is serve without the interceptors.
func (h *Host) serveDirect(ctx context.Context, name string, background bool, codec Codec, body []byte) ([]byte, error) {
	g, err := h.admit(ctx, name, background)
	if err != nil {
		return nil, err
	}
	defer h.release()
	cctx, cancel := h.bound(ctx)
	if cancel != nil {
		defer cancel()
	}
	out, err, panicked := callEncoded(cctx, g.f, h.caller, codec, body)
	if err := h.outcome(ctx, cctx, name, g.ctr, err, panicked); err != nil {
		return nil, err
	}
	return out, nil
}

// callEncoded runs f on an encoded request, reporting a panic instead of
// letting it through.
func callEncoded(ctx context.Context, f *HostFunc, caller Caller, codec Codec, body []byte) (out []byte, err error, panicked any) {
	defer func() { panicked = recover() }()
	out, err = f.encoded(ctx, caller, codec, body)
	return out, err, nil
}

// hostErrorReply is the error reply a transport sends a plugin for a host
// call that failed with err: the codes of docs/PROTOCOL.md, or the code a
// host function gave with an *ErrorReply.
func hostErrorReply(err error) wire.ErrorReply {
	var rep *ErrorReply
	if errors.As(err, &rep) {
		return wire.ErrorReply{Code: rep.Code, Message: rep.Message, Retryable: rep.Retryable}
	}
	r := wire.ErrorReply{Code: wire.CodeError, Message: err.Error()}
	for _, m := range []struct {
		sentinel error
		code     string
	}{
		{ErrNotGranted, wire.CodeNotGranted},
		{ErrOverloaded, wire.CodeOverloaded},
		{ErrTimeout, wire.CodeTimeout},
		{ErrCanceled, wire.CodeCanceled},
		{ErrPanic, wire.CodePanic},
		{ErrClosed, wire.CodeShuttingDown},
		{ErrInvalidPlugin, wire.CodeBadRequest},
	} {
		if errors.Is(err, m.sentinel) {
			r.Code = m.code
			break
		}
	}
	r.Retryable = r.Code == wire.CodeOverloaded
	return r
}
