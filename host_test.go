package goplugins

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goplugins/goplugins/internal/wire"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// memKVReq and memKVResp are the types of the test key-value host functions.
type memKVReq struct {
	Key, Value string
}

type memKVResp struct {
	Value string
	Found bool
}

// memKV is a host's key-value store, scoped by the calling plugin.
type memKV struct {
	mu sync.Mutex
	m  map[string]string
}

func (s *memKV) funcs() []HostFunc {
	return []HostFunc{
		NewHostFunc("kv.get", func(_ context.Context, c Caller, req memKVReq) (memKVResp, error) {
			s.mu.Lock()
			defer s.mu.Unlock()
			v, ok := s.m[c.Plugin+"/"+req.Key]
			return memKVResp{Value: v, Found: ok}, nil
		}),
		NewHostFunc("kv.put", func(_ context.Context, c Caller, req memKVReq) (memKVResp, error) {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.m == nil {
				s.m = map[string]string{}
			}
			s.m[c.Plugin+"/"+req.Key] = req.Value
			return memKVResp{}, nil
		}),
	}
}

// inprocHostUser is an in-process plugin that calls host functions with the
// handle it was given.
type inprocHostUser struct {
	name, version string
	surfaces      []Surface
	host          atomic.Pointer[Host]
	hosts         atomic.Int32 // UseHost calls
	exec          func(ctx context.Context, h *Host, req int) (int, error)
	onClose       func(h *Host)
	compat        error // CheckCompat's answer, with SurfaceSchema
}

func newInprocHostUser(name string, exec func(ctx context.Context, h *Host, req int) (int, error)) *inprocHostUser {
	return &inprocHostUser{name: name, version: "1.0.0", exec: exec}
}

func (p *inprocHostUser) UseHost(h *Host) { p.host.Store(h); p.hosts.Add(1) }
func (p *inprocHostUser) Info() PluginInfo {
	return PluginInfo{Name: p.name, Version: p.version, Surfaces: p.surfaces}
}
func (p *inprocHostUser) Execute(ctx context.Context, req int) (int, error) {
	return p.exec(ctx, p.host.Load(), req)
}
func (p *inprocHostUser) Health(context.Context) error { return nil }
func (p *inprocHostUser) Close(context.Context) error {
	if p.onClose != nil {
		p.onClose(p.host.Load())
	}
	return nil
}
func (p *inprocHostUser) CheckCompat(context.Context, PluginInfo) error { return p.compat }

// callMemKVGet calls kv.get with key, for plugins whose Execute does one call.
func callMemKVGet(ctx context.Context, h *Host, _ int) (int, error) {
	_, err := CallHost[memKVReq, memKVResp](ctx, h, "kv.get", memKVReq{Key: "k"})
	return 0, err
}

func TestHostFuncsScopeByCaller(t *testing.T) {
	kv := &memKV{}
	m := newTestManager(t, WithHostFuncs(kv.funcs()...), WithGrants(Grant{Plugins: "*", Funcs: []string{"kv.*"}}))
	plugins := map[string]*inprocHostUser{}
	for _, name := range []string{"billing", "auth"} {
		p := newInprocHostUser(name, nil)
		require.NoError(t, m.Register(p))
		plugins[name] = p
	}
	ctx := context.Background()
	for name, p := range plugins {
		_, err := CallHost[memKVReq, memKVResp](ctx, p.host.Load(), "kv.put", memKVReq{Key: "owner", Value: name})
		require.NoError(t, err)
	}
	for name, p := range plugins {
		resp, err := CallHost[memKVReq, memKVResp](ctx, p.host.Load(), "kv.get", memKVReq{Key: "owner"})
		require.NoError(t, err)
		assert.Equal(t, memKVResp{Value: name, Found: true}, resp, "each plugin reads its own key")
		assert.Equal(t, Caller{Plugin: name, Version: "1.0.0", Generation: 1}, p.host.Load().Caller())
	}
}

func TestUseHostCalledBeforeServing(t *testing.T) {
	kv := &memKV{}
	m := newTestManager(t, WithHostFuncs(kv.funcs()...), WithGrants(Grant{Plugins: "app", Funcs: []string{"*"}}))
	p := newInprocHostUser("app", callMemKVGet)
	require.NoError(t, m.Register(p))
	require.EqualValues(t, 1, p.hosts.Load())
	_, err := m.Execute(context.Background(), "app", 0)
	require.NoError(t, err, "the plugin's first call already has its handle")
}

// directArg is a request that JSON cannot carry: a direct call is the only
// way for it to arrive intact.
type directArg struct {
	ch chan int
}

func TestCallHostCallsDirectlyWhenTypesMatch(t *testing.T) {
	f := NewHostFunc("direct", func(_ context.Context, _ Caller, req *directArg) (*directArg, error) { return req, nil })
	m := newTestManager(t, WithHostFuncs(f), WithGrants(Grant{Plugins: "*", Funcs: []string{"*"}}))
	p := newInprocHostUser("app", nil)
	require.NoError(t, m.Register(p))
	arg := &directArg{ch: make(chan int)}
	got, err := CallHost[*directArg, *directArg](context.Background(), p.host.Load(), "direct", arg)
	require.NoError(t, err)
	require.Same(t, arg, got)
}

func TestCallHostConvertsThroughJSONWhenTypesDiffer(t *testing.T) {
	kv := &memKV{}
	m := newTestManager(t, WithHostFuncs(kv.funcs()...), WithGrants(Grant{Plugins: "*", Funcs: []string{"*"}}))
	p := newInprocHostUser("app", nil)
	require.NoError(t, m.Register(p))
	h := p.host.Load()
	ctx := context.Background()
	_, err := CallHost[map[string]string, struct{}](ctx, h, "kv.put", map[string]string{"Key": "a", "Value": "b"})
	require.NoError(t, err)
	got, err := CallHost[memKVReq, map[string]any](ctx, h, "kv.get", memKVReq{Key: "a"})
	require.NoError(t, err)
	require.Equal(t, map[string]any{"Value": "b", "Found": true}, got)

	_, err = CallHost[chan int, memKVResp](ctx, h, "kv.get", make(chan int))
	require.ErrorIs(t, err, ErrInvalidPlugin, "a request JSON cannot encode")
	_, err = CallHost[memKVReq, int](ctx, h, "kv.get", memKVReq{Key: "a"})
	require.ErrorIs(t, err, ErrInvalidPlugin, "a response that does not decode into the caller's type")
	require.Contains(t, err.Error(), `"kv.get"`)
}

func TestGrantsMatchPluginAndFunctionPatterns(t *testing.T) {
	cases := []struct {
		name    string
		grants  []Grant
		plugin  string
		fn      string
		allowed bool
	}{
		{"nothing by default", nil, "app", "kv.get", false},
		{"by plugin and function", []Grant{{Plugins: "app", Funcs: []string{"kv.get"}}}, "app", "kv.get", true},
		{"another plugin", []Grant{{Plugins: "app", Funcs: []string{"kv.get"}}}, "other", "kv.get", false},
		{"another function", []Grant{{Plugins: "app", Funcs: []string{"kv.get"}}}, "app", "kv.put", false},
		{"plugin pattern", []Grant{{Plugins: "auth-*", Funcs: []string{"kv.get"}}}, "auth-ldap", "kv.get", true},
		{"plugin pattern misses", []Grant{{Plugins: "auth-*", Funcs: []string{"kv.get"}}}, "billing", "kv.get", false},
		{"function pattern", []Grant{{Plugins: "app", Funcs: []string{"kv.*"}}}, "app", "kv.put", true},
		{"function pattern misses", []Grant{{Plugins: "app", Funcs: []string{"kv.*"}}}, "app", "clock.now", false},
		{"all", []Grant{{Plugins: "*", Funcs: []string{"*"}}}, "anything", "clock.now", true},
		{"any grant allows", []Grant{{Plugins: "x", Funcs: []string{"*"}}, {Plugins: "app", Funcs: []string{"clock.now"}}}, "app", "clock.now", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			kv := &memKV{}
			clock := NewHostFunc("clock.now", func(context.Context, Caller, memKVReq) (memKVResp, error) { return memKVResp{}, nil })
			m := newTestManager(t, WithHostFuncs(kv.funcs()...), WithHostFuncs(clock), WithGrants(tc.grants...))
			p := newInprocHostUser(tc.plugin, nil)
			require.NoError(t, m.Register(p))
			_, err := CallHost[memKVReq, memKVResp](context.Background(), p.host.Load(), tc.fn, memKVReq{})
			if tc.allowed {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrNotGranted)
			require.Contains(t, err.Error(), fmt.Sprintf("%q", tc.plugin))
			require.Contains(t, err.Error(), fmt.Sprintf("%q", tc.fn))
		})
	}
}

func TestCallHostUnknownFunctionNotGranted(t *testing.T) {
	m := newTestManager(t, WithGrants(Grant{Plugins: "*", Funcs: []string{"*"}}))
	p := newInprocHostUser("app", nil)
	require.NoError(t, m.Register(p))
	_, err := CallHost[int, int](context.Background(), p.host.Load(), "nope", 0)
	require.ErrorIs(t, err, ErrNotGranted)
	require.Contains(t, err.Error(), "WithHostFuncs")
}

func TestHostCallRefusalLoggedWithPluginAndSentAsEvent(t *testing.T) {
	kv := &memKV{}
	h := newRecordingHandler()
	m := newTestManager(t, WithLogger(slog.New(h)), WithHostFuncs(kv.funcs()...), WithGrants(Grant{Plugins: "app", Funcs: []string{"kv.get"}}))
	events := make(chan Event, 16)
	m.Subscribe(func(ev Event) {
		if ev.Kind == EventHostCallRefused {
			events <- ev
		}
	})
	p := newInprocHostUser("app", func(ctx context.Context, h *Host, _ int) (int, error) {
		_, err := CallHost[memKVReq, memKVResp](ctx, h, "kv.put", memKVReq{Key: "k"})
		return 0, err
	})
	require.NoError(t, m.Register(p))
	_, err := m.Execute(context.Background(), "app", 0)
	require.ErrorIs(t, err, ErrNotGranted)

	ev := <-events
	assert.Equal(t, "app", ev.Plugin)
	assert.Equal(t, "1.0.0", ev.Version)
	assert.Equal(t, "kv.put", ev.HostFunc)
	assert.ErrorIs(t, ev.Err, ErrNotGranted)
	assert.Equal(t, "host-call-refused", ev.Kind.String())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rec, ok := h.wait(ctx, func(r record) bool { return r.msg == "goplugins: host call refused" })
	require.True(t, ok, "records: %v", h.records())
	assert.Equal(t, slog.LevelWarn, rec.level)
	assert.Equal(t, "app", rec.attrs["plugin"])
	assert.Equal(t, "kv.put", rec.attrs["host_func"])
	assert.EqualValues(t, 1, m.Metrics().Plugins["app"].HostCallsRefused)

	// The same refusal again is logged at debug level: a plugin calling in
	// a loop what it may not call does not flood the log with warnings.
	_, err = m.Execute(context.Background(), "app", 0)
	require.ErrorIs(t, err, ErrNotGranted)
	rec, ok = h.wait(ctx, func(r record) bool { return r.msg == "goplugins: host call refused" && r.level == slog.LevelDebug })
	require.True(t, ok, "records: %v", h.records())
	warnings := 0
	for _, r := range h.records() {
		if r.msg == "goplugins: host call refused" && r.level == slog.LevelWarn {
			warnings++
		}
	}
	assert.Equal(t, 1, warnings, "one warning per refused function")
	assert.EqualValues(t, 2, m.Metrics().Plugins["app"].HostCallsRefused)
}

func TestHostCallOverLimitOverloadedAcrossGenerations(t *testing.T) {
	verifyNoLeaks(t)
	entered, unblock := make(chan struct{}), make(chan struct{})
	block := NewHostFunc("block", func(ctx context.Context, _ Caller, _ int) (int, error) {
		entered <- struct{}{}
		<-unblock
		return 0, nil
	})
	m := newTestManager(t, WithHostFuncs(block), WithGrants(Grant{Plugins: "*", Funcs: []string{"*"}}),
		WithHostCallLimits(HostCallLimits{MaxConcurrent: 2}))
	old := newInprocHostUser("app", nil)
	require.NoError(t, m.Register(old))
	// Two calls of generation 1 run on, past the reload to generation 2.
	results := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := CallHost[int, int](context.Background(), old.host.Load(), "block", 0)
			results <- err
		}()
		<-entered
	}
	next := newInprocHostUser("app", nil)
	_, err := m.Reload(context.Background(), "app", next)
	require.NoError(t, err)

	_, err = CallHost[int, int](context.Background(), next.host.Load(), "block", 0)
	require.ErrorIs(t, err, ErrOverloaded, "the limit counts every generation's calls")
	require.True(t, IsRetryable(err))
	require.Contains(t, err.Error(), "MaxConcurrent")
	assert.EqualValues(t, 1, m.Metrics().Plugins["app"].HostCallsRefused)

	close(unblock)
	require.NoError(t, <-results)
	require.NoError(t, <-results)
	go func() { <-entered }()
	_, err = CallHost[int, int](context.Background(), next.host.Load(), "block", 0)
	require.NoError(t, err, "a slot is free again")
}

func TestHostCallTimeoutEndsCtxWithErrTimeout(t *testing.T) {
	verifyNoLeaks(t)
	wait := NewHostFunc("wait", func(ctx context.Context, _ Caller, _ int) (int, error) {
		<-ctx.Done()
		return 0, ctx.Err()
	})
	m := newTestManager(t, WithHostFuncs(wait), WithGrants(Grant{Plugins: "*", Funcs: []string{"*"}}),
		WithHostCallLimits(HostCallLimits{Timeout: 20 * time.Millisecond}))
	p := newInprocHostUser("app", nil)
	require.NoError(t, m.Register(p))
	_, err := CallHost[int, int](context.Background(), p.host.Load(), "wait", 0)
	require.ErrorIs(t, err, ErrTimeout)
	require.NotErrorIs(t, err, ErrCanceled)
	require.Contains(t, err.Error(), "HostCallLimits.Timeout")
	assert.Equal(t, HostCallMetrics{Calls: 1, Errors: 1}, m.Metrics().Plugins["app"].HostCalls["wait"])

	// A caller's ctx that ends before the timeout is the caller's ending.
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	_, err = CallHost[int, int](ctx, p.host.Load(), "wait", 0)
	require.ErrorIs(t, err, ErrCanceled)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.NotErrorIs(t, err, ErrTimeout)
}

func TestHostCallCanceledWithRequest(t *testing.T) {
	verifyNoLeaks(t)
	entered := make(chan struct{})
	wait := NewHostFunc("wait", func(ctx context.Context, _ Caller, _ int) (int, error) {
		close(entered)
		<-ctx.Done()
		return 0, errors.New("stopped")
	})
	m := newTestManager(t, WithHostFuncs(wait), WithGrants(Grant{Plugins: "*", Funcs: []string{"*"}}))
	p := newInprocHostUser("app", func(ctx context.Context, h *Host, _ int) (int, error) {
		return CallHost[int, int](ctx, h, "wait", 0)
	})
	require.NoError(t, m.Register(p))
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-entered; cancel() }()
	_, err := m.Execute(ctx, "app", 0)
	require.ErrorIs(t, err, ErrCanceled)
	require.ErrorIs(t, err, context.Canceled)

	// A ctx that ended already: the function does not run.
	_, err = CallHost[int, int](ctx, p.host.Load(), "wait", 0)
	require.ErrorIs(t, err, ErrCanceled)
	assert.Equal(t, HostCallMetrics{Calls: 2, Errors: 2}, m.Metrics().Plugins["app"].HostCalls["wait"])
}

func TestHostFuncPanicRecoveredAsErrPanic(t *testing.T) {
	calls := 0
	boom := NewHostFunc("boom", func(context.Context, Caller, int) (int, error) {
		calls++
		if calls == 1 {
			panic("bad state")
		}
		return 7, nil
	})
	h := newRecordingHandler()
	m := newTestManager(t, WithLogger(slog.New(h)), WithHostFuncs(boom), WithGrants(Grant{Plugins: "*", Funcs: []string{"*"}}))
	p := newInprocHostUser("app", nil)
	require.NoError(t, m.Register(p))
	_, err := CallHost[int, int](context.Background(), p.host.Load(), "boom", 0)
	require.ErrorIs(t, err, ErrPanic)
	require.Contains(t, err.Error(), "bad state")
	got, err := CallHost[int, int](context.Background(), p.host.Load(), "boom", 0)
	require.NoError(t, err, "the function serves on")
	require.Equal(t, 7, got)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rec, ok := h.wait(ctx, func(r record) bool { return r.msg == "goplugins: host function panicked" })
	require.True(t, ok)
	assert.Equal(t, "app", rec.attrs["plugin"])
	assert.Equal(t, HostCallMetrics{Calls: 2, Errors: 1}, m.Metrics().Plugins["app"].HostCalls["boom"])
}

func TestHostFuncOwnErrorReturnedUnchanged(t *testing.T) {
	mine := errors.New("no such key")
	f := NewHostFunc("fail", func(context.Context, Caller, int) (int, error) { return 0, mine })
	m := newTestManager(t, WithHostFuncs(f), WithGrants(Grant{Plugins: "*", Funcs: []string{"*"}}))
	p := newInprocHostUser("app", nil)
	require.NoError(t, m.Register(p))
	_, err := CallHost[int, int](context.Background(), p.host.Load(), "fail", 0)
	require.Same(t, mine, err)
}

func TestReloadOldGenerationCallsHostUntilClosed(t *testing.T) {
	verifyNoLeaks(t)
	kv := &memKV{}
	m := newTestManager(t, WithHostFuncs(kv.funcs()...), WithGrants(Grant{Plugins: "*", Funcs: []string{"*"}}))
	inCall, finish := make(chan struct{}), make(chan struct{})
	old := newInprocHostUser("app", func(ctx context.Context, h *Host, _ int) (int, error) {
		close(inCall)
		<-finish // the reload drains while this call runs
		_, err := CallHost[memKVReq, memKVResp](ctx, h, "kv.put", memKVReq{Key: "k", Value: "v1"})
		return 0, err
	})
	var closeErr error
	old.onClose = func(h *Host) {
		_, closeErr = CallHost[memKVReq, memKVResp](context.Background(), h, "kv.get", memKVReq{Key: "k"})
	}
	require.NoError(t, m.Register(old))
	oldHost := old.host.Load()
	callDone := make(chan error, 1)
	go func() { _, err := m.Execute(context.Background(), "app", 0); callDone <- err }()
	<-inCall

	next := newInprocHostUser("app", nil)
	next.version = "1.1.0"
	reloaded := make(chan error, 1)
	go func() { _, err := m.Reload(context.Background(), "app", next); reloaded <- err }()
	close(finish)
	require.NoError(t, <-callDone, "the old generation's host call during the drain works")
	require.NoError(t, <-reloaded)
	require.NoError(t, closeErr, "the old value may call the host from its Close")

	_, err := CallHost[memKVReq, memKVResp](context.Background(), oldHost, "kv.get", memKVReq{Key: "k"})
	require.ErrorIs(t, err, ErrClosed, "closed with its value")
	require.Contains(t, err.Error(), "generation 1")
	require.Equal(t, Caller{Plugin: "app", Version: "1.1.0", Generation: 2}, next.host.Load().Caller())
	resp, err := CallHost[memKVReq, memKVResp](context.Background(), next.host.Load(), "kv.get", memKVReq{Key: "k"})
	require.NoError(t, err)
	require.Equal(t, memKVResp{Value: "v1", Found: true}, resp)
	pm := m.Metrics().Plugins["app"]
	assert.Equal(t, HostCallMetrics{Calls: 1}, pm.HostCalls["kv.put"])
	assert.Equal(t, HostCallMetrics{Calls: 2}, pm.HostCalls["kv.get"], "summed over the generations")
	assert.EqualValues(t, 1, pm.HostCallsRefused, "the closed handle's call")
}

func TestReloadHandleGivenBeforeHandoffPreflight(t *testing.T) {
	kv := &memKV{}
	m := newTestManager(t, WithHostFuncs(kv.funcs()...), WithGrants(Grant{Plugins: "*", Funcs: []string{"*"}}))
	old := newInprocHostUser("app", nil)
	old.surfaces = []Surface{SurfaceSchema}
	require.NoError(t, m.Register(old))
	next := &inprocHostUserCompat{inprocHostUser: newInprocHostUser("app", nil)}
	next.surfaces = []Surface{SurfaceSchema}
	_, err := m.Reload(context.Background(), "app", next)
	require.NoError(t, err)
	require.NoError(t, next.compatErr, "CheckCompat could call the host")
}

// inprocHostUserCompat calls the host from its schema check.
type inprocHostUserCompat struct {
	*inprocHostUser
	compatErr error
}

func (p *inprocHostUserCompat) CheckCompat(ctx context.Context, _ PluginInfo) error {
	_, p.compatErr = CallHost[memKVReq, memKVResp](ctx, p.host.Load(), "kv.get", memKVReq{Key: "k"})
	return nil
}

func TestFailedReloadClosesIncomingHandle(t *testing.T) {
	kv := &memKV{}
	m := newTestManager(t, WithHostFuncs(kv.funcs()...), WithGrants(Grant{Plugins: "*", Funcs: []string{"*"}}))
	old := newInprocHostUser("app", nil)
	old.surfaces = []Surface{SurfaceSchema}
	require.NoError(t, m.Register(old))
	next := newInprocHostUser("app", nil)
	next.surfaces = []Surface{SurfaceSchema}
	next.compat = errors.New("schema v3 unknown")
	_, err := m.Reload(context.Background(), "app", next)
	require.ErrorIs(t, err, ErrReloadFailed)

	ctx := context.Background()
	_, err = CallHost[memKVReq, memKVResp](ctx, next.host.Load(), "kv.get", memKVReq{})
	require.ErrorIs(t, err, ErrClosed)
	_, err = CallHost[memKVReq, memKVResp](ctx, old.host.Load(), "kv.get", memKVReq{})
	require.NoError(t, err, "the old value serves on")

	next.compat = nil
	_, err = m.Reload(ctx, "app", next)
	require.NoError(t, err, "the same value, retried, gets a new handle")
	require.EqualValues(t, 2, next.hosts.Load())
	require.EqualValues(t, 2, next.host.Load().Caller().Generation)
}

func TestFailedRegisterClosesHandle(t *testing.T) {
	kv := &memKV{}
	m := newTestManager(t, WithHostFuncs(kv.funcs()...), WithGrants(Grant{Plugins: "*", Funcs: []string{"*"}}))
	p := newInprocHostUser("app", nil) // not a StreamPlugin: the stream start fails
	require.ErrorIs(t, m.Register(p, WithStreamStart(nil)), ErrInvalidPlugin)
	_, err := CallHost[memKVReq, memKVResp](context.Background(), p.host.Load(), "kv.get", memKVReq{})
	require.ErrorIs(t, err, ErrClosed)
}

// panicsInUseHost panics in UseHost.
type panicsInUseHost struct{ *inprocHostUser }

func (panicsInUseHost) UseHost(*Host) { panic("no thanks") }

func TestUseHostPanicFailsRegisterAndReload(t *testing.T) {
	m := newTestManager(t)
	err := m.Register(panicsInUseHost{newInprocHostUser("app", nil)})
	require.ErrorIs(t, err, ErrInvalidPlugin)
	require.Contains(t, err.Error(), "UseHost")
	require.Empty(t, m.Plugins())

	require.NoError(t, m.Register(newEcho("app", "1.0.0")))
	_, err = m.Reload(context.Background(), "app", panicsInUseHost{newInprocHostUser("app", nil)})
	require.ErrorIs(t, err, ErrInvalidPlugin)
	require.ErrorIs(t, err, ErrReloadFailed)
	info, _ := m.Info("app")
	require.Equal(t, "1.0.0", info.Version, "the old value serves on")
}

func TestUnregisterAndShutdownCloseHandles(t *testing.T) {
	kv := &memKV{}
	m := NewManager[int, int](WithHostFuncs(kv.funcs()...), WithGrants(Grant{Plugins: "*", Funcs: []string{"*"}}))
	a, b := newInprocHostUser("a", nil), newInprocHostUser("b", nil)
	require.NoError(t, m.Register(a))
	require.NoError(t, m.Register(b))
	ctx := context.Background()
	require.NoError(t, m.Unregister(ctx, "a"))
	_, err := CallHost[memKVReq, memKVResp](ctx, a.host.Load(), "kv.get", memKVReq{})
	require.ErrorIs(t, err, ErrClosed)
	require.NoError(t, m.Shutdown(ctx))
	_, err = CallHost[memKVReq, memKVResp](ctx, b.host.Load(), "kv.get", memKVReq{})
	require.ErrorIs(t, err, ErrClosed)
}

func TestHostServeBackgroundNeedsGrant(t *testing.T) {
	kv := &memKV{}
	m := newTestManager(t, WithHostFuncs(kv.funcs()...),
		WithGrants(Grant{Plugins: "*", Funcs: []string{"kv.get"}}, Grant{Plugins: "*", Funcs: []string{"kv.put"}, Background: true}))
	p := newInprocHostUser("app", nil)
	require.NoError(t, m.Register(p))
	h, ctx := p.host.Load(), context.Background()

	_, err := h.serve(ctx, "kv.get", true, JSONCodec{}, []byte(`{"Key":"k"}`))
	require.ErrorIs(t, err, ErrNotGranted)
	require.Contains(t, err.Error(), "Grant.Background")
	_, err = h.serve(ctx, "kv.get", false, JSONCodec{}, []byte(`{"Key":"k"}`))
	require.NoError(t, err, "within a request")
	_, err = h.serve(ctx, "kv.put", true, JSONCodec{}, []byte(`{"Key":"k","Value":"v"}`))
	require.NoError(t, err, "granted with Background")
	out, err := h.serve(ctx, "kv.get", false, JSONCodec{}, []byte(`{"Key":"k"}`))
	require.NoError(t, err)
	require.JSONEq(t, `{"Value":"v","Found":true}`, string(out))
}

func TestHostServeBadBodyIsInvalidPlugin(t *testing.T) {
	kv := &memKV{}
	m := newTestManager(t, WithHostFuncs(kv.funcs()...), WithGrants(Grant{Plugins: "*", Funcs: []string{"*"}}))
	p := newInprocHostUser("app", nil)
	require.NoError(t, m.Register(p))
	_, err := p.host.Load().serve(context.Background(), "kv.get", false, JSONCodec{}, []byte(`{"Key":`))
	require.ErrorIs(t, err, ErrInvalidPlugin)
	require.Equal(t, wire.CodeBadRequest, hostErrorReply(err).Code)
}

func TestHostServeNilHandleRefuses(t *testing.T) {
	var h *Host
	_, err := h.serve(context.Background(), "kv.get", false, JSONCodec{}, nil)
	require.ErrorIs(t, err, ErrNotGranted)
	require.Contains(t, err.Error(), "not registered")
}

func TestHostBindDefaultsLimitsAndLoggers(t *testing.T) {
	// The transports' tests bind handles from a bare hostConfig.
	kv := &memKV{}
	cfg := &hostConfig{funcs: map[string]*HostFunc{}, grants: []Grant{{Plugins: "*", Funcs: []string{"*"}}}}
	for _, f := range kv.funcs() {
		cfg.funcs[f.Name()] = &f
	}
	h := newHostPlugin(cfg).bind(cfg, Caller{Plugin: "app"}, nil, nil, nil)
	_, err := h.serve(context.Background(), "kv.put", false, JSONCodec{}, []byte(`{"Key":"k"}`))
	require.NoError(t, err)
	_, err = h.serve(context.Background(), "nope", false, JSONCodec{}, nil)
	require.ErrorIs(t, err, ErrNotGranted)
}

func TestBindWarnsOfAskedFunctionsNotGranted(t *testing.T) {
	kv := &memKV{}
	rh := newRecordingHandler()
	cfg := &hostConfig{funcs: map[string]*HostFunc{}, grants: []Grant{{Plugins: "*", Funcs: []string{"kv.get"}}}}
	for _, f := range kv.funcs() {
		cfg.funcs[f.Name()] = &f
	}
	newHostPlugin(cfg).bind(cfg, Caller{Plugin: "app"}, []string{"kv.get", "kv.put"}, slog.New(rh), nil)
	recs := rh.records()
	require.Len(t, recs, 1)
	assert.Equal(t, "app", recs[0].attrs["plugin"])
	assert.Equal(t, "kv.put", recs[0].attrs["host_func"])
}

func TestHostErrorReplyCodes(t *testing.T) {
	cases := []struct {
		name      string
		err       error
		code      string
		retryable bool
	}{
		{"not granted", newError(codeNotGranted, "p", "x"), wire.CodeNotGranted, false},
		{"overloaded", newError(codeOverloaded, "p", "x"), wire.CodeOverloaded, true},
		{"timeout", newError(codeTimeout, "p", "x"), wire.CodeTimeout, false},
		{"canceled", canceledError(canceledCtx(), "p"), wire.CodeCanceled, false},
		{"panic", newError(codePanic, "p", "x"), wire.CodePanic, false},
		{"closed", newError(codeClosed, "p", "x"), wire.CodeShuttingDown, false},
		{"bad request", newError(codeInvalidPlugin, "p", "x"), wire.CodeBadRequest, false},
		{"plain", errors.New("disk full"), wire.CodeError, false},
		{"the function's own code", fmt.Errorf("wrapped: %w", &ErrorReply{Code: "no_such_key", Message: "k", Retryable: true}), "no_such_key", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := hostErrorReply(tc.err)
			assert.Equal(t, tc.code, r.Code)
			assert.Equal(t, tc.retryable, r.Retryable)
			assert.NotEmpty(t, r.Message)
		})
	}
}

func TestHostConfigPanicsOnProgrammingErrors(t *testing.T) {
	ok := func(context.Context, Caller, int) (int, error) { return 0, nil }
	cases := map[string]func(){
		"invalid name":       func() { NewHostFunc("Bad Name", ok) },
		"nil func":           func() { NewHostFunc[int, int]("f", nil) },
		"zero HostFunc":      func() { NewManager[int, int](WithHostFuncs(HostFunc{})) },
		"two of one name":    func() { NewManager[int, int](WithHostFuncs(NewHostFunc("f", ok)), WithHostFuncs(NewHostFunc("f", ok))) },
		"malformed pattern":  func() { WithGrants(Grant{Plugins: "[", Funcs: []string{"*"}}) },
		"malformed function": func() { WithGrants(Grant{Plugins: "*", Funcs: []string{"kv.[a"}}) },
		"empty pattern":      func() { WithGrants(Grant{Plugins: "", Funcs: []string{"*"}}) },
		"no funcs":           func() { WithGrants(Grant{Plugins: "*"}) },
	}
	for name, fn := range cases {
		t.Run(name, func(t *testing.T) { require.Panics(t, fn) })
	}
}

func TestWithGrantsCopiesItsArguments(t *testing.T) {
	kv := &memKV{}
	grants := []Grant{{Plugins: "app", Funcs: []string{"kv.get"}}}
	opt := WithGrants(grants...)
	grants[0].Plugins = "other"
	m := newTestManager(t, WithHostFuncs(kv.funcs()...), opt)
	p := newInprocHostUser("app", nil)
	require.NoError(t, m.Register(p))
	_, err := CallHost[memKVReq, memKVResp](context.Background(), p.host.Load(), "kv.get", memKVReq{})
	require.NoError(t, err)
}

func TestCallHostWithinDeadlineAllocatesNothing(t *testing.T) {
	f := NewHostFunc("add", func(_ context.Context, _ Caller, n int) (int, error) { return n + 1, nil })
	m := newTestManager(t, WithHostFuncs(f), WithGrants(Grant{Plugins: "*", Funcs: []string{"*"}}))
	p := newInprocHostUser("app", nil)
	require.NoError(t, m.Register(p))
	h := p.host.Load()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second) // within the 30s default
	defer cancel()
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := CallHost[int, int](ctx, h, "add", 1); err != nil {
			t.Fatal(err)
		}
	})
	require.Zero(t, allocs)
}

func TestMetricsHostCallsNilWithoutCalls(t *testing.T) {
	m := newTestManager(t)
	require.NoError(t, m.Register(newEcho("app", "1.0.0")))
	pm := m.Metrics().Plugins["app"]
	require.Nil(t, pm.HostCalls)
	require.Zero(t, pm.HostCallsRefused)
}

func TestMetadataContext(t *testing.T) {
	ctx := context.Background()
	require.Nil(t, MetadataFromContext(ctx))
	require.Equal(t, ctx, ContextWithMetadata(ctx, nil), "nothing to carry")

	md := map[string]string{"Trace-ID": "1", "tenant": "a"}
	ctx1 := ContextWithMetadata(ctx, md)
	md["tenant"] = "changed"
	require.Equal(t, map[string]string{"trace-id": "1", "tenant": "a"}, MetadataFromContext(ctx1), "copied, keys lowercased")

	ctx2 := ContextWithMetadata(ctx1, map[string]string{"TENANT": "b", "span": "2"})
	require.Equal(t, map[string]string{"trace-id": "1", "tenant": "b", "span": "2"}, MetadataFromContext(ctx2), "outer pairs kept unless set again")
	require.Equal(t, "a", MetadataFromContext(ctx1)["tenant"], "the outer ctx is unchanged")
}

func TestInProcessPluginReadsMetadata(t *testing.T) {
	m := newTestManager(t)
	var got string
	p := &scripted{name: "app", version: "1.0.0", exec: func(ctx context.Context, _ int) (int, error) {
		got = MetadataFromContext(ctx)["traceparent"]
		return 0, nil
	}}
	require.NoError(t, m.Register(p))
	_, err := m.Execute(ContextWithMetadata(context.Background(), map[string]string{"traceparent": "00-abc"}), "app", 0)
	require.NoError(t, err)
	require.Equal(t, "00-abc", got)
}

func TestHostCallLimitsDefaults(t *testing.T) {
	require.Equal(t, HostCallLimits{MaxConcurrent: 64, Timeout: 30 * time.Second}, HostCallLimits{}.withDefaults())
	require.Equal(t, HostCallLimits{MaxConcurrent: 64, Timeout: 30 * time.Second}, HostCallLimits{MaxConcurrent: -1, Timeout: -1}.withDefaults())
	require.Equal(t, HostCallLimits{MaxConcurrent: 3, Timeout: time.Second}, HostCallLimits{MaxConcurrent: 3, Timeout: time.Second}.withDefaults())
}

// TestInProcessCallsCountAsWithinARequest: an in-process plugin's calls
// count as made within a request (Grant.Background's doc), so a function
// granted without Background is callable from a plugin's own goroutine.
func TestInProcessCallsCountAsWithinARequest(t *testing.T) {
	kv := &memKV{}
	m := newTestManager(t, WithHostFuncs(kv.funcs()...), WithGrants(Grant{Plugins: "app", Funcs: []string{"kv.*"}}))
	p := newInprocHostUser("app", nil)
	require.NoError(t, m.Register(p))
	errc := make(chan error, 1)
	go func() { // the plugin's own background work: no Execute in flight
		_, err := CallHost[memKVReq, memKVResp](context.Background(), p.host.Load(), "kv.put", memKVReq{Key: "k", Value: "v"})
		errc <- err
	}()
	require.NoError(t, <-errc)
	got, err := CallHost[memKVReq, memKVResp](context.Background(), p.host.Load(), "kv.get", memKVReq{Key: "k"})
	require.NoError(t, err)
	assert.Equal(t, memKVResp{Value: "v", Found: true}, got)
}
