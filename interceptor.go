package goplugins

import (
	"context"
	"log/slog"
	"runtime/debug"
	"time"
)

// CallKind says which operation an Interceptor wraps.
type CallKind uint8

// Call kinds.
const (
	// CallExecute is a Manager.Execute.
	CallExecute CallKind = iota + 1
	// CallReload is a Manager.Reload.
	CallReload
	// CallHostFunc is a plugin's call to a host function.
	CallHostFunc
)

var callKindNames = [...]string{CallExecute: "execute", CallReload: "reload", CallHostFunc: "host-call"}

// String returns the kind's name: "execute", "reload" or "host-call".
func (k CallKind) String() string {
	if k > 0 && int(k) < len(callKindNames) {
		return callKindNames[k]
	}
	return "unknown"
}

// Call is what an Interceptor sees of one operation. The manager fills in
// the request side before the first interceptor runs and the outcome when
// the operation returns, before next returns; an interceptor reads the
// outcome after calling next. The manager reads nothing back from it:
// changing a field changes only what the interceptors after see. A Call
// belongs to one operation: do not keep it after the interceptor returns.
type Call struct {
	// Kind says what the operation is.
	Kind CallKind
	// Plugin is the plugin's name, as given to Execute or Reload (for
	// CallHostFunc, the calling plugin).
	Plugin string
	// Function is the host function called, for CallHostFunc.
	Function string
	// Version and Generation name the plugin value: before next, the one
	// serving when the operation began (empty and 0 if none is
	// registered); after next, the one that served the call (a call parked
	// behind a reload runs on the next value), or for a reload the one
	// serving after it.
	Version    string
	Generation uint64
	// OutOfProcess reports whether that value runs outside the host's
	// process (a plugin of the subprocess or gRPC transport): only then
	// does metadata put in the ctx (a trace context) reach the plugin.
	OutOfProcess bool
	// Request is Execute's req, Reload's next plugin (a Plugin[Req, Resp]),
	// or the host call's argument.
	Request any

	// Response is set when next returns: the response Execute returns
	// (the plugin's, or the zero Resp if the call reached no plugin), the
	// ReloadReport of a reload, or the host call's result.
	Response any
	// Retries counts the attempts after the first (see WithRetry), for
	// CallExecute.
	Retries int
	// Parked is how long the call waited behind reloads before it ran,
	// for CallExecute.
	Parked time.Duration
}

// Handler runs the rest of an operation: the next interceptor, or the
// operation itself after the last one.
type Handler func(ctx context.Context) error

// Interceptor wraps operations of a Manager (see WithInterceptors), after
// grpc-go's interceptors. It may
//   - observe: read call before and after next (a tracer records the
//     outcome, a logger the error);
//   - change the ctx it passes to next (add values, a deadline, a trace
//     context): the operation and the interceptors after this one get it;
//   - short-circuit: return an error without calling next; the operation
//     does not run and returns that error unchanged (for Execute: not
//     counted in Metrics, the breaker not told; for Reload: nothing
//     changed and no event sent);
//   - replace the error next returned: the operation returns what the
//     outermost interceptor returns.
//
// An interceptor runs on the caller's goroutine and must be safe for
// concurrent use. It calls next at most once. A panic in it is recovered
// and the operation returns an error matching ErrPanic.
type Interceptor func(ctx context.Context, call *Call, next Handler) error

// WithInterceptors adds interceptors that wrap every Execute, Reload and
// host call of the manager. The first given is the outermost: it runs
// first and sees the outcome last; a later WithInterceptors adds inside
// the earlier ones; nil ones are ignored. Without any, Execute costs no
// more than without the option and allocates nothing; with them, each call
// allocates (the Call, the request and the response as any).
func WithInterceptors(ics ...Interceptor) Option {
	return managerOption(func(c *managerConfig) {
		for _, ic := range ics {
			if ic != nil {
				c.interceptors = append(c.interceptors, ic)
			}
		}
	})
}

// chainInterceptors returns one interceptor that runs ics in order, the
// first outermost; nil when there is none.
func chainInterceptors(ics []Interceptor) Interceptor {
	switch len(ics) {
	case 0:
		return nil
	case 1:
		return ics[0]
	}
	return func(ctx context.Context, c *Call, final Handler) error {
		return ics[0](ctx, c, chainedNext(ics[1:], c, final))
	}
}

func chainedNext(ics []Interceptor, c *Call, final Handler) Handler {
	if len(ics) == 0 {
		return final
	}
	return func(ctx context.Context) error {
		return ics[0](ctx, c, chainedNext(ics[1:], c, final))
	}
}

// intercept runs op through ic (not nil), turning a panic in an
// interceptor into ErrPanic, logged to log.
func intercept(ctx context.Context, ic Interceptor, log *slog.Logger, c *Call, op Handler) (err error) {
	defer func() {
		if r := recover(); r != nil {
			log.Error("goplugins: interceptor panicked", "plugin", c.Plugin, "call", c.Kind.String(), "panic", r, "stack", string(debug.Stack()))
			err = newError(codePanic, c.Plugin, "an interceptor panicked during %s (%v); the host recovered, but the interceptor has a bug to fix", c.Kind, r)
		}
	}()
	return ic(ctx, c, op)
}

// serving fills in the plugin value serving name now.
func (m *Manager[Req, Resp]) serving(c *Call) {
	if e := m.reg.Load().entries[c.Plugin]; e != nil {
		if g := e.gen.Load(); g != nil {
			servedBy(c, g)
		}
	}
}

// servedBy names g as the plugin value of c.
func servedBy[Req, Resp any](c *Call, g *generation[Req, Resp]) {
	c.Version, c.Generation = g.info.Version, g.id
	switch g.plugin.(type) {
	case *subprocessPlugin[Req, Resp], *grpcPlugin[Req, Resp]:
		c.OutOfProcess = true
	default:
		c.OutOfProcess = false
	}
}

// executeIntercepted is Execute through the interceptors.
func (m *Manager[Req, Resp]) executeIntercepted(ctx context.Context, name string, req Req) (Resp, error) {
	x := &intercepted[Req, Resp]{m: m, name: name, req: req}
	x.call = Call{Kind: CallExecute, Plugin: name, Request: req}
	m.serving(&x.call)
	err := intercept(ctx, m.interceptor, m.cfg.logger, &x.call, x.execute)
	return x.resp, err
}

// intercepted is one intercepted Execute: its Call and its response, in
// one allocation.
type intercepted[Req, Resp any] struct {
	call Call
	m    *Manager[Req, Resp]
	name string
	req  Req
	resp Resp
}

func (x *intercepted[Req, Resp]) execute(ctx context.Context) (err error) {
	x.resp, err = x.m.execute(ctx, x.name, x.req, &x.call)
	x.call.Response = x.resp
	return err
}

// reloadIntercepted is Reload through the interceptors.
func (m *Manager[Req, Resp]) reloadIntercepted(ctx context.Context, name string, next Plugin[Req, Resp], opts []ReloadOption) (ReloadReport, error) {
	c := &Call{Kind: CallReload, Plugin: name, Request: next}
	m.serving(c)
	rep := ReloadReport{Plugin: name, From: c.Version, Generation: c.Generation}
	err := intercept(ctx, m.interceptor, m.cfg.logger, c, func(ctx context.Context) error {
		var err error
		rep, err = m.reload(ctx, name, next, opts)
		c.Response, c.Version, c.Generation = rep, rep.From, rep.Generation
		if err == nil {
			c.Version = rep.To
		}
		return err
	})
	return rep, err
}

// interceptHostCall runs a host call through ic, the manager's chained
// interceptors (nil when it has none: fn then runs directly, at no cost):
// the plugin value (plugin, version, generation) calls the host function
// named function with req, and fn runs it. It is the one entry point for
// the host-call code, which takes ic and log from the manager when it
// binds a plugin value.
func interceptHostCall[Req, Resp any](ctx context.Context, ic Interceptor, log *slog.Logger,
	plugin, version string, generation uint64, function string, req Req, fn func(context.Context) (Resp, error)) (Resp, error) {
	if ic == nil {
		return fn(ctx)
	}
	c := &Call{Kind: CallHostFunc, Plugin: plugin, Function: function, Version: version, Generation: generation, Request: req}
	var resp Resp
	err := intercept(ctx, ic, log, c, func(ctx context.Context) error {
		var err error
		resp, err = fn(ctx)
		c.Response = resp
		return err
	})
	return resp, err
}
