package goplugins

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goerrors "github.com/agilira/go-errors"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// recorder is an interceptor that records the calls it sees (a copy of
// the Call before next and after it).
type recorder struct {
	mu            sync.Mutex
	before, after []Call
}

func (r *recorder) intercept(ctx context.Context, c *Call, next Handler) error {
	r.mu.Lock()
	r.before = append(r.before, *c)
	r.mu.Unlock()
	err := next(ctx)
	r.mu.Lock()
	r.after = append(r.after, *c)
	r.mu.Unlock()
	return err
}

func (r *recorder) last() (before, after Call) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.before[len(r.before)-1], r.after[len(r.after)-1]
}

// TestInterceptorsFirstIsOutermost: the first interceptor given runs first
// and sees the outcome last; a later WithInterceptors adds inside.
func TestInterceptorsFirstIsOutermost(t *testing.T) {
	var order []string
	tag := func(name string) Interceptor {
		return func(ctx context.Context, c *Call, next Handler) error {
			order = append(order, name+" in")
			err := next(ctx)
			order = append(order, name+" out")
			return err
		}
	}
	m := newTestManager(t, WithInterceptors(tag("a"), tag("b")), WithInterceptors(tag("c")))
	require.NoError(t, m.Register(&scripted{name: "p", version: "1.0.0", exec: func(_ context.Context, req int) (int, error) {
		order = append(order, "plugin")
		return req, nil
	}}))
	_, err := m.Execute(context.Background(), "p", 1)
	require.NoError(t, err)
	assert.Equal(t, []string{"a in", "b in", "c in", "plugin", "c out", "b out", "a out"}, order)
}

type ctxKey struct{}

// TestInterceptorChangesCtx: the ctx an interceptor passes to next is the
// one the plugin (and the interceptors after it) get.
func TestInterceptorChangesCtx(t *testing.T) {
	addValue := func(ctx context.Context, c *Call, next Handler) error {
		return next(context.WithValue(ctx, ctxKey{}, "from the interceptor"))
	}
	var inner any
	seeValue := func(ctx context.Context, c *Call, next Handler) error {
		inner = ctx.Value(ctxKey{})
		return next(ctx)
	}
	seen := make(chan any, 1)
	m := newTestManager(t, WithInterceptors(addValue, seeValue))
	require.NoError(t, m.Register(&scripted{name: "p", version: "1.0.0", exec: func(ctx context.Context, req int) (int, error) {
		seen <- ctx.Value(ctxKey{})
		return req, nil
	}}))
	_, err := m.Execute(context.Background(), "p", 1)
	require.NoError(t, err)
	assert.Equal(t, "from the interceptor", <-seen)
	assert.Equal(t, "from the interceptor", inner)
}

// TestInterceptorShortCircuits: an interceptor that returns without
// calling next makes Execute return its error unchanged; the plugin does
// not run, Metrics does not count the call and the breaker is not told.
func TestInterceptorShortCircuits(t *testing.T) {
	denied := errors.New("denied: no token")
	deny := func(ctx context.Context, c *Call, next Handler) error { return denied }
	var ran atomic.Int32
	m := newTestManager(t, WithInterceptors(deny),
		WithPluginDefaults(WithBreaker(BreakerConfig{ConsecutiveFailures: 1, OpenTimeout: time.Hour})))
	require.NoError(t, m.Register(&scripted{name: "p", version: "1.0.0", exec: func(_ context.Context, req int) (int, error) {
		ran.Add(1)
		return req, nil
	}}))
	for range 3 {
		resp, err := m.Execute(context.Background(), "p", 7)
		require.Equal(t, denied, err, "the interceptor's error, unchanged")
		assert.Zero(t, resp)
	}
	assert.Zero(t, ran.Load())
	pm := m.Metrics().Plugins["p"]
	assert.Zero(t, pm.Calls)
	assert.Zero(t, pm.Errors)
	assert.Equal(t, BreakerClosed, pm.Breaker)
}

// TestInterceptorChangingCallChangesNothing: the manager reads nothing
// back from the Call; the interceptors after see the change.
func TestInterceptorChangingCallChangesNothing(t *testing.T) {
	redirect := func(ctx context.Context, c *Call, next Handler) error {
		c.Plugin, c.Request = "other", 99
		return next(ctx)
	}
	var inner Call
	see := func(ctx context.Context, c *Call, next Handler) error {
		inner = *c
		return next(ctx)
	}
	m := newTestManager(t, WithInterceptors(redirect, see))
	require.NoError(t, m.Register(newEcho("echo", "1.0.0")))
	require.NoError(t, m.Register(&scripted{name: "other", version: "1.0.0", exec: func(context.Context, int) (int, error) {
		t.Error("the call went to the plugin the interceptor named")
		return 0, nil
	}}))
	resp, err := m.Execute(context.Background(), "echo", 7)
	require.NoError(t, err)
	assert.Equal(t, 7, resp, "echo served the caller's request")
	assert.Equal(t, "other", inner.Plugin)
	assert.Equal(t, 99, inner.Request)
}

// TestInterceptorReplacesError: Execute returns what the outermost
// interceptor returns, and the response the plugin gave.
func TestInterceptorReplacesError(t *testing.T) {
	wrapped := errors.New("wrapped by the interceptor")
	replace := func(ctx context.Context, c *Call, next Handler) error {
		if err := next(ctx); err != nil {
			return errors.Join(wrapped, err)
		}
		return nil
	}
	fail := errors.New("plugin failed")
	m := newTestManager(t, WithInterceptors(replace))
	require.NoError(t, m.Register(&scripted{name: "p", version: "1.0.0", exec: func(_ context.Context, req int) (int, error) {
		return req * 2, fail
	}}))
	resp, err := m.Execute(context.Background(), "p", 4)
	assert.ErrorIs(t, err, wrapped)
	assert.ErrorIs(t, err, fail)
	assert.Equal(t, 8, resp)
}

// TestInterceptorSeesCallAndOutcome: the Call names the plugin value
// before next, and after it holds the response and the retries.
func TestInterceptorSeesCallAndOutcome(t *testing.T) {
	rec := &recorder{}
	var attempts atomic.Int32
	m := newTestManager(t, WithInterceptors(rec.intercept),
		WithPluginDefaults(WithRetry(RetryPolicy{MaxAttempts: 3, Backoff: time.Millisecond})))
	require.NoError(t, m.Register(&scripted{name: "p", version: "1.2.3", exec: func(_ context.Context, req int) (int, error) {
		if attempts.Add(1) < 3 {
			return 0, goerrors.New("BUSY", "busy").AsRetryable()
		}
		return req + 1, nil
	}}))
	resp, err := m.Execute(context.Background(), "p", 41)
	require.NoError(t, err)
	require.Equal(t, 42, resp)

	before, after := rec.last()
	assert.Equal(t, Call{Kind: CallExecute, Plugin: "p", Version: "1.2.3", Generation: 1, Request: 41}, before)
	assert.Equal(t, Call{Kind: CallExecute, Plugin: "p", Version: "1.2.3", Generation: 1, Request: 41,
		Response: 42, Retries: 2}, after)

	_, err = m.Execute(context.Background(), "missing", 1)
	require.ErrorIs(t, err, ErrNotFound)
	before, after = rec.last()
	assert.Equal(t, Call{Kind: CallExecute, Plugin: "missing", Request: 1}, before, "no plugin value serves")
	assert.Equal(t, Call{Kind: CallExecute, Plugin: "missing", Request: 1, Response: 0}, after)
}

// TestInterceptorSeesParkedTime: a call parked behind a reload reports the
// time it waited, and the generation that ran it (the next one).
func TestInterceptorSeesParkedTime(t *testing.T) {
	verifyNoLeaks(t)
	rec := &recorder{}
	m := newReloadManager(t, WithInterceptors(rec.intercept))
	require.NoError(t, m.Register(newEcho("echo", "1.0.0")))
	entered, release := make(chan struct{}, 1), make(chan struct{})
	reloaded := make(chan error, 1)
	go func() {
		_, err := m.Reload(context.Background(), "echo", newEcho("echo", "1.1.0"), WithHandoff(blockingHandoff("conn", entered, release)))
		reloaded <- err
	}()
	<-entered
	called := make(chan error, 1)
	go func() {
		_, err := m.Execute(context.Background(), "echo", 1)
		called <- err
	}()
	waitParked(t, m, "echo", 1)
	close(release)
	require.NoError(t, awaitErr(t, "the parked call", called))
	require.NoError(t, awaitErr(t, "the reload", reloaded))

	rec.mu.Lock()
	defer rec.mu.Unlock()
	var exec []Call
	for _, c := range rec.after {
		if c.Kind == CallExecute {
			exec = append(exec, c)
		}
	}
	require.Len(t, exec, 1)
	assert.Equal(t, "1.1.0", exec[0].Version)
	assert.Equal(t, uint64(2), exec[0].Generation)
	assert.Positive(t, exec[0].Parked)
}

// TestInterceptorWrapsReload: a reload runs through the interceptors; the
// Call carries the next plugin and, after next, the report and the value
// serving after it. A short-circuited reload changes nothing.
func TestInterceptorWrapsReload(t *testing.T) {
	rec := &recorder{}
	var refuse atomic.Bool
	refused := errors.New("reloads are frozen")
	gatekeeper := func(ctx context.Context, c *Call, next Handler) error {
		if c.Kind == CallReload && refuse.Load() {
			return refused
		}
		return next(ctx)
	}
	m := newReloadManager(t, WithInterceptors(rec.intercept, gatekeeper))
	events := collectEvents(m, EventReloaded, EventReloadFailed)
	require.NoError(t, m.Register(newEcho("echo", "1.0.0")))

	next := newEcho("echo", "1.1.0")
	rep, err := m.Reload(context.Background(), "echo", next)
	require.NoError(t, err)
	before, after := rec.last()
	assert.Equal(t, Call{Kind: CallReload, Plugin: "echo", Version: "1.0.0", Generation: 1, Request: next}, before)
	assert.Equal(t, Call{Kind: CallReload, Plugin: "echo", Version: "1.1.0", Generation: 2, Request: next, Response: rep}, after)
	assert.Equal(t, EventReloaded, (<-events).Kind)

	refuse.Store(true)
	rep, err = m.Reload(context.Background(), "echo", newEcho("echo", "1.2.0"))
	require.Equal(t, refused, err)
	assert.Equal(t, ReloadReport{Plugin: "echo", From: "1.1.0", Generation: 2}, rep)
	info, _ := m.Info("echo")
	assert.Equal(t, "1.1.0", info.Version, "nothing changed")
	_, after = rec.last()
	assert.Equal(t, "1.1.0", after.Version)
	assert.Nil(t, after.Response, "the reload did not run")
	refuse.Store(false)
	_, err = m.Reload(context.Background(), "echo", newEcho("echo", "1.3.0"))
	require.NoError(t, err)
	ev := <-events
	assert.Equal(t, EventReloaded, ev.Kind, "the refused reload sent no event before this one")
	assert.Equal(t, "1.3.0", ev.Version)
}

// TestInterceptorPanicIsErrPanic: a panicking interceptor does not reach
// the host; the call returns ErrPanic.
func TestInterceptorPanicIsErrPanic(t *testing.T) {
	boom := func(ctx context.Context, c *Call, next Handler) error { panic("interceptor bug") }
	m := newTestManager(t, WithInterceptors(boom))
	require.NoError(t, m.Register(newEcho("echo", "1.0.0")))
	_, err := m.Execute(context.Background(), "echo", 1)
	require.ErrorIs(t, err, ErrPanic)
	assert.Contains(t, err.Error(), "interceptor bug")
	_, err = m.Reload(context.Background(), "echo", newEcho("echo", "1.0.1"))
	require.ErrorIs(t, err, ErrPanic)
}

// TestInterceptorWrapsHostCalls: the host-call entry point runs the call
// through the interceptors, and runs it directly when there is none.
func TestInterceptorWrapsHostCalls(t *testing.T) {
	fn := func(ctx context.Context) (string, error) { return "result:" + ctx.Value(ctxKey{}).(string), nil }
	ctx := context.WithValue(context.Background(), ctxKey{}, "v")
	log := slog.New(slog.DiscardHandler)

	got, err := interceptHostCall(ctx, nil, log, "p", "1.0.0", 1, "kv.get", "key", fn)
	require.NoError(t, err)
	assert.Equal(t, "result:v", got)

	rec := &recorder{}
	m := newTestManager(t, WithInterceptors(rec.intercept))
	got, err = interceptHostCall(ctx, m.interceptor, m.cfg.logger, "p", "1.0.0", 3, "kv.get", "key", fn)
	require.NoError(t, err)
	assert.Equal(t, "result:v", got)
	before, after := rec.last()
	want := Call{Kind: CallHostFunc, Plugin: "p", Function: "kv.get", Version: "1.0.0", Generation: 3, Request: "key"}
	assert.Equal(t, want, before)
	want.Response = "result:v"
	assert.Equal(t, want, after)

	boom := func(ctx context.Context, c *Call, next Handler) error { panic("interceptor bug") }
	_, err = interceptHostCall(ctx, chainInterceptors([]Interceptor{boom}), log, "p", "1.0.0", 3, "kv.get", "key", fn)
	require.ErrorIs(t, err, ErrPanic)
}

// TestExecuteWithoutInterceptorsAllocatesNothing: no interceptor, no cost.
func TestExecuteWithoutInterceptorsAllocatesNothing(t *testing.T) {
	m := newTestManager(t, WithInterceptors()) // an empty option sets none
	require.NoError(t, m.Register(newEcho("echo", "1.0.0")))
	ctx := context.Background()
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := m.Execute(ctx, "echo", 1000); err != nil {
			t.Fatal(err)
		}
	})
	require.Zero(t, allocs)
}

func TestCallKindString(t *testing.T) {
	for k, want := range map[CallKind]string{CallExecute: "execute", CallReload: "reload", CallHostFunc: "host-call", 0: "unknown", 9: "unknown"} {
		assert.Equal(t, want, k.String())
	}
}

// TestInterceptorSeesOutOfProcess: OutOfProcess is set for plugins of the
// subprocess and gRPC transports (real children), not for in-process ones.
func TestInterceptorSeesOutOfProcess(t *testing.T) {
	var seen atomic.Bool
	see := func(ctx context.Context, c *Call, next Handler) error {
		err := next(ctx)
		seen.Store(c.OutOfProcess)
		return err
	}
	ctx := context.Background()

	sub := NewManager[echoReq, echoResp](WithInterceptors(see))
	defer sub.Shutdown(ctx)
	require.NoError(t, sub.Register(startEcho(t, nil, nil)))
	_, err := sub.Execute(ctx, "echo", echoReq{Op: "echo", Data: "hi"})
	require.NoError(t, err)
	assert.True(t, seen.Load(), "subprocess")

	rpc := NewManager[counterReq, counterResp](WithInterceptors(see))
	defer rpc.Shutdown(ctx)
	p, err := NewGRPCPlugin[counterReq, counterResp](ctx, GRPCConfig{Name: "counter", Command: buildGRPCCounter(t)})
	require.NoError(t, err)
	require.NoError(t, rpc.Register(p))
	_, err = rpc.Execute(ctx, "counter", counterReq{Op: "echo", Text: "hi"})
	require.NoError(t, err)
	assert.True(t, seen.Load(), "gRPC")

	in := newTestManager(t, WithInterceptors(see))
	require.NoError(t, in.Register(newEcho("echo", "1.0.0")))
	_, err = in.Execute(ctx, "echo", 1)
	require.NoError(t, err)
	assert.False(t, seen.Load(), "in-process")
}

// TestInterceptorWrapsCallHost: a plugin's host calls, refused ones
// included, run through the manager's interceptors, inside the Execute
// during which the plugin made them.
func TestInterceptorWrapsCallHost(t *testing.T) {
	kv := &memKV{}
	rec := &recorder{}
	m := newTestManager(t, WithInterceptors(rec.intercept), WithHostFuncs(kv.funcs()...),
		WithGrants(Grant{Plugins: "app", Funcs: []string{"kv.put"}}))
	p := newInprocHostUser("app", func(ctx context.Context, h *Host, _ int) (int, error) {
		if _, err := CallHost[memKVReq, memKVResp](ctx, h, "kv.put", memKVReq{Key: "k", Value: "v"}); err != nil {
			return 0, err
		}
		_, err := CallHost[memKVReq, memKVResp](ctx, h, "kv.get", memKVReq{Key: "k"})
		return 0, err
	})
	require.NoError(t, m.Register(p))
	_, err := m.Execute(context.Background(), "app", 0)
	require.ErrorIs(t, err, ErrNotGranted)

	rec.mu.Lock()
	defer rec.mu.Unlock()
	kinds := make([]string, len(rec.before))
	for i, c := range rec.before {
		kinds[i] = c.Kind.String() + ":" + c.Function
	}
	assert.Equal(t, []string{"execute:", "host-call:kv.put", "host-call:kv.get"}, kinds, "Execute outermost, then each host call")
	put := rec.before[1]
	assert.Equal(t, "app", put.Plugin)
	assert.Equal(t, uint64(1), put.Generation)
	assert.Equal(t, memKVReq{Key: "k", Value: "v"}, put.Request)
	last := rec.after[len(rec.after)-2] // the refused kv.get ended before the Execute
	assert.Equal(t, "kv.get", last.Function)
}
