package goplugins

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type hostcallReq struct {
	Op   string `json:"op"`
	Func string `json:"func,omitempty"`
	Data string `json:"data,omitempty"`
	Key  string `json:"key,omitempty"`
}

type hostcallResp struct {
	Data string   `json:"data,omitempty"`
	Code string   `json:"code,omitempty"`
	Is   []string `json:"is,omitempty"`
}

// testHost is a host-call handle made as a manager makes one, with the
// test's host functions: kv.get answers "<caller's plugin>:<key>", block
// waits for its ctx to end (started and ended report it), boom panics,
// big answers 2000 bytes, echo answers its request.
type testHost struct {
	h       *Host
	hp      *hostPlugin
	log     *recordingHandler
	mu      sync.Mutex
	events  []Event
	started chan struct{} // receives when block starts
	ended   chan error    // receives block's ctx error when its ctx ends
}

func newTestHost(t testing.TB, plugin string, limits HostCallLimits, grants ...Grant) *testHost {
	t.Helper()
	th := &testHost{log: newRecordingHandler(), started: make(chan struct{}, 8), ended: make(chan error, 8)}
	fns := []HostFunc{
		NewHostFunc("kv.get", func(_ context.Context, c Caller, key string) (string, error) { return c.Plugin + ":" + key, nil }),
		NewHostFunc("block", func(ctx context.Context, _ Caller, _ string) (string, error) {
			th.started <- struct{}{}
			<-ctx.Done()
			th.ended <- ctx.Err()
			return "", ctx.Err()
		}),
		NewHostFunc("boom", func(context.Context, Caller, string) (string, error) { panic("host function bug") }),
		NewHostFunc("big", func(context.Context, Caller, string) (string, error) { return strings.Repeat("x", 2000), nil }),
		NewHostFunc("echo", func(_ context.Context, _ Caller, s string) (string, error) { return s, nil }),
	}
	cfg := &hostConfig{funcs: make(map[string]*HostFunc), grants: grants, limits: limits.withDefaults()}
	for i := range fns {
		cfg.funcs[fns[i].name] = &fns[i]
	}
	th.hp = newHostPlugin(cfg)
	th.h = th.hp.bind(cfg, Caller{Plugin: plugin, Version: "1.0.0", Generation: 1}, nil, slog.New(th.log), func(e Event) {
		th.mu.Lock()
		th.events = append(th.events, e)
		th.mu.Unlock()
	})
	return th
}

// awaitBlock waits for the block host function to start.
func (th *testHost) awaitBlock(t *testing.T) {
	t.Helper()
	select {
	case <-th.started:
	case <-time.After(hangLimit):
		t.Fatal("the block host function did not start")
	}
}

// awaitBlockEnded waits for the block host function's ctx to end and
// returns its error.
func (th *testHost) awaitBlockEnded(t *testing.T) error {
	t.Helper()
	select {
	case err := <-th.ended:
		return err
	case <-time.After(hangLimit):
		t.Fatal("the block host function's ctx did not end")
		return nil
	}
}

var grantAll = Grant{Plugins: "*", Funcs: []string{"*"}}

// startHostcall starts the hostcall test plugin bound to th (nil: not
// bound); it is closed at cleanup.
func startHostcall(t testing.TB, th *testHost, h *recordingHandler, mod func(*SubprocessConfig)) *subprocessPlugin[hostcallReq, hostcallResp] {
	t.Helper()
	if h == nil {
		h = newRecordingHandler()
	}
	cfg := SubprocessConfig{Name: "hostcall", Command: pluginBinary(t, "hostcall"), StopGrace: 2 * time.Second, Logger: slog.New(h)}
	if mod != nil {
		mod(&cfg)
	}
	p, err := newSubprocess[hostcallReq, hostcallResp](context.Background(), cfg)
	require.NoError(t, err, "NewSubprocess")
	t.Cleanup(func() { p.Close(context.Background()) })
	if th != nil {
		p.UseHost(th.h)
	}
	return p
}

// TestSubprocessHostCallWithinRequest: a v2 plugin calls a granted host
// function while it handles a request; the function sees the calling
// plugin (Caller) and the call is counted per plugin and function.
func TestSubprocessHostCallWithinRequest(t *testing.T) {
	verifyNoLeaks(t)
	checkNoFDLeak(t)
	th := newTestHost(t, "hostcall", HostCallLimits{}, Grant{Plugins: "hostcall", Funcs: []string{"kv.*"}})
	p := startHostcall(t, th, nil, nil)
	resp, err := p.Execute(context.Background(), hostcallReq{Op: "call", Func: "kv.get", Data: "color"})
	require.NoError(t, err)
	assert.Equal(t, hostcallResp{Data: "hostcall:color"}, resp)
	assert.Equal(t, uint64(1), th.hp.counters["kv.get"].calls.Load(), "calls of kv.get counted")
	assert.Zero(t, th.hp.counters["kv.get"].errors.Load(), "errors of kv.get counted")
}

// TestSubprocessHostCallRefusals: a host call that fails reaches the
// plugin as an *sdk.Error with the host's code, matching the sdk's
// sentinel; a refusal is logged with the plugin's name.
func TestSubprocessHostCallRefusals(t *testing.T) {
	verifyNoLeaks(t)
	tests := []struct {
		name   string
		grants []Grant
		bind   bool
		env    map[string]string
		fn     string
		want   hostcallResp
		logged bool
	}{
		{"not granted", []Grant{{Plugins: "hostcall", Funcs: []string{"kv.get"}}}, true, nil, "boom",
			hostcallResp{Code: "not_granted", Is: []string{"ErrNotGranted"}}, true},
		{"not offered", []Grant{grantAll}, true, nil, "kv.delete",
			hostcallResp{Code: "not_granted", Is: []string{"ErrNotGranted"}}, true},
		{"not registered (no handle)", nil, false, nil, "kv.get",
			hostcallResp{Code: "not_granted", Is: []string{"ErrNotGranted"}}, true},
		{"panic", []Grant{grantAll}, true, nil, "boom",
			hostcallResp{Code: "panic", Is: []string{"ErrPanic"}}, false},
		{"response over the plugin's maximum frame size", []Grant{grantAll}, true, map[string]string{"HOSTCALL_MAX_FRAME": "1024"}, "big",
			hostcallResp{Code: "frame_too_large", Is: []string{"ErrFrameTooLarge"}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			th := newTestHost(t, "hostcall", HostCallLimits{}, tt.grants...)
			log := newRecordingHandler()
			bound := th
			if !tt.bind {
				bound = nil
			}
			p := startHostcall(t, bound, log, func(c *SubprocessConfig) { c.Env = tt.env })
			resp, err := p.Execute(context.Background(), hostcallReq{Op: "call", Func: tt.fn, Data: "k"})
			require.NoError(t, err)
			assert.Equal(t, tt.want, resp)
			if !tt.logged {
				return
			}
			refused := func(r record) bool { return r.msg == "goplugins: host call refused" && r.attrs["plugin"] == "hostcall" }
			logger := th.log // the handle logs grant refusals
			if !tt.bind {
				logger = log // the transport logs the refusal of a plugin without a handle
			}
			ctx, cancel := context.WithTimeout(context.Background(), hangLimit)
			defer cancel()
			_, ok := logger.wait(ctx, refused)
			assert.True(t, ok, "the refusal is logged with the plugin's name")
		})
	}
}

// TestSubprocessHostCallBackground: a call outside any request (the sdk's
// WithBackground ctx) is refused unless its grant allows background calls.
func TestSubprocessHostCallBackground(t *testing.T) {
	verifyNoLeaks(t)
	for _, tt := range []struct {
		name       string
		background bool
		want       hostcallResp
	}{
		{"without Grant.Background", false, hostcallResp{Code: "not_granted", Is: []string{"ErrNotGranted"}}},
		{"with Grant.Background", true, hostcallResp{Data: "hostcall:k"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			th := newTestHost(t, "hostcall", HostCallLimits{}, Grant{Plugins: "*", Funcs: []string{"kv.get"}, Background: tt.background})
			p := startHostcall(t, th, nil, nil)
			resp, err := p.Execute(context.Background(), hostcallReq{Op: "bg", Func: "kv.get", Data: "k"})
			require.NoError(t, err)
			assert.Equal(t, tt.want, resp)
		})
	}
}

// TestSubprocessHostCallEndsWithItsRequest: when the request during which
// the plugin calls the host is abandoned (its caller's ctx ends, or the
// plugin's CallTimeout passes), the host function's ctx is cancelled and
// the plugin's CallHost returns at once with ErrCanceled.
func TestSubprocessHostCallEndsWithItsRequest(t *testing.T) {
	verifyNoLeaks(t)
	for _, tt := range []struct {
		name    string
		timeout time.Duration
		want    error
	}{
		{"caller's ctx ends", 0, ErrCanceled},
		{"CallTimeout", 100 * time.Millisecond, ErrTimeout},
	} {
		t.Run(tt.name, func(t *testing.T) {
			th := newTestHost(t, "hostcall", HostCallLimits{}, grantAll)
			log := newRecordingHandler()
			p := startHostcall(t, th, log, func(c *SubprocessConfig) { c.CallTimeout = tt.timeout })
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			errc := make(chan error, 1)
			go func() {
				_, err := p.Execute(ctx, hostcallReq{Op: "wait", Func: "block"})
				errc <- err
			}()
			th.awaitBlock(t)
			if tt.timeout == 0 {
				cancel()
			}
			require.ErrorIs(t, <-errc, tt.want, "Execute")
			assert.ErrorIs(t, th.awaitBlockEnded(t), context.Canceled, "the host function's ctx")
			wctx, wcancel := context.WithTimeout(context.Background(), hangLimit)
			defer wcancel()
			_, ok := log.wait(wctx, func(r record) bool { return r.msg == "host call returned: canceled ctx=true" })
			assert.True(t, ok, "the plugin's CallHost returned ErrCanceled matching its ctx's error; records: %v", log.records())
		})
	}
}

// TestSubprocessMetadataReachesPlugin: the metadata of the caller's ctx
// (ContextWithMetadata) reaches the plugin's handler (sdk.Metadata), and
// only that request's.
func TestSubprocessMetadataReachesPlugin(t *testing.T) {
	verifyNoLeaks(t)
	p := startHostcall(t, nil, nil, nil)
	ctx := ContextWithMetadata(context.Background(), map[string]string{"traceparent": "00-abc-01"})
	resp, err := p.Execute(ctx, hostcallReq{Op: "meta", Key: "traceparent"})
	require.NoError(t, err)
	assert.Equal(t, "00-abc-01", resp.Data, "metadata of the request")
	resp, err = p.Execute(context.Background(), hostcallReq{Op: "meta", Key: "traceparent"})
	require.NoError(t, err)
	assert.Empty(t, resp.Data, "metadata of a request made without any")
}

// TestSubprocessHostCallWire: host-call scenarios played by a plugin
// written against the wire package (testdata/plugins/raw, mode v2); each
// answer is "<type> <payload>" of the host's answer to the host call.
func TestSubprocessHostCallWire(t *testing.T) {
	verifyNoLeaks(t)
	checkNoFDLeak(t)
	for _, tt := range []struct {
		name     string
		scenario string
		grant    Grant
		want     string // prefix of the answer
		logged   string // prefix of a line the plugin prints afterwards
	}{
		{"HOST_CALL over the host's limit: frame_too_large, stream survives", "big", grantAll,
			`HOST_ERROR {"code":"frame_too_large"`, ""},
		{"parent not in flight counts as background: refused", "orphan", grantAll,
			`HOST_ERROR {"code":"not_granted"`, ""},
		{"parent not in flight counts as background: allowed by Grant.Background", "orphan", Grant{Plugins: "*", Funcs: []string{"*"}, Background: true},
			`HOST_RESULT "raw:k"`, ""},
		{"HOST_CANCEL cancels the host call, which is still answered", "cancel", grantAll,
			`HOST_ERROR {"code":"canceled"`, ""},
		{"id 0 is refused", "zero", grantAll,
			`HOST_ERROR {"code":"bad_request"`, ""},
		{"a malformed payload is refused", "malformed", grantAll,
			`HOST_ERROR {"code":"bad_request"`, ""},
		{"an id in use is refused", "dup", grantAll,
			`HOST_ERROR {"code":"bad_request"`, ""},
		{"the request's answer ends its host calls", "answered", grantAll,
			`answered`, `answer to the host call: HOST_ERROR {"code":"canceled"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			th := newTestHost(t, "raw", HostCallLimits{}, tt.grant)
			log := newRecordingHandler()
			p := startRaw(t, "v2", log, func(c *SubprocessConfig) { c.MaxFrameSize = 1024 })
			p.UseHost(th.h)
			got, err := p.Execute(context.Background(), tt.scenario)
			require.NoError(t, err)
			assert.True(t, strings.HasPrefix(got, tt.want), "answer %q, want it to start with %q", got, tt.want)
			if tt.logged != "" {
				ctx, cancel := context.WithTimeout(context.Background(), hangLimit)
				defer cancel()
				_, ok := log.wait(ctx, func(r record) bool { return strings.HasPrefix(r.msg, tt.logged) })
				assert.True(t, ok, "the plugin did not print %q; records: %v", tt.logged, log.records())
			}
			got, err = p.Execute(context.Background(), "ping")
			require.NoError(t, err, "a call after the scenario")
			assert.Equal(t, "ping", got, "a call after the scenario")
		})
	}
}

// TestSubprocessHostCallEndsWhenRequestAbandoned: a plugin that never
// cancels its host call itself (no HOST_CANCEL) still has it cancelled
// when the host abandons the request it was made in.
func TestSubprocessHostCallEndsWhenRequestAbandoned(t *testing.T) {
	verifyNoLeaks(t)
	th := newTestHost(t, "raw", HostCallLimits{}, grantAll)
	p := startRaw(t, "v2", newRecordingHandler(), nil)
	p.UseHost(th.h)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := p.Execute(ctx, "hold")
		errc <- err
	}()
	th.awaitBlock(t)
	cancel()
	require.ErrorIs(t, <-errc, ErrCanceled, "Execute")
	assert.ErrorIs(t, th.awaitBlockEnded(t), context.Canceled, "the host function's ctx")
}

// TestSubprocessCloseCancelsHostCalls: host calls still running when the
// child has exited are cancelled, and Close returns after them.
func TestSubprocessCloseCancelsHostCalls(t *testing.T) {
	verifyNoLeaks(t)
	th := newTestHost(t, "raw", HostCallLimits{}, grantAll)
	p := startRaw(t, "v2", newRecordingHandler(), nil)
	p.UseHost(th.h)
	errc := make(chan error, 1)
	go func() {
		_, err := p.Execute(context.Background(), "hold")
		errc <- err
	}()
	th.awaitBlock(t)
	require.NoError(t, p.Close(context.Background()))
	select {
	case err := <-th.ended:
		assert.ErrorIs(t, err, context.Canceled, "the host function's ctx")
	default:
		t.Fatal("Close returned before the host call running ended")
	}
	require.ErrorIs(t, <-errc, ErrClosed, "the call in flight")
}

// TestSubprocessHostCallServedDuringShutdown: after SHUTDOWN the host
// still serves the host calls of the requests in flight, so they can
// finish.
func TestSubprocessHostCallServedDuringShutdown(t *testing.T) {
	verifyNoLeaks(t)
	th := newTestHost(t, "raw", HostCallLimits{}, grantAll)
	log := newRecordingHandler()
	p := startRaw(t, "v2", log, nil)
	p.UseHost(th.h)
	type result struct {
		s   string
		err error
	}
	res := make(chan result, 1)
	go func() {
		s, err := p.Execute(context.Background(), "shutdown")
		res <- result{s, err}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), hangLimit)
	defer cancel()
	_, ok := log.wait(ctx, func(r record) bool { return r.msg == "held until shutdown" })
	require.True(t, ok, "the plugin did not get the request")
	require.NoError(t, p.Close(context.Background()))
	r := <-res
	require.NoError(t, r.err, "the request answered after its host call during shutdown")
	assert.Equal(t, `HOST_RESULT "raw:k"`, r.s)
}

// TestSubprocessV1PluginHostCallBreaksProtocol: a plugin that chose
// protocol version 1 and sends a HOST_CALL breaks the protocol, as any
// frame it may not send does.
func TestSubprocessV1PluginHostCallBreaksProtocol(t *testing.T) {
	verifyNoLeaks(t)
	p := startRaw(t, "v1hostcall", newRecordingHandler(), func(c *SubprocessConfig) { c.Restart = RestartPolicy{MaxAttempts: -1} })
	p.UseHost(newTestHost(t, "raw", HostCallLimits{}, grantAll).h)
	_, err := p.Execute(context.Background(), "hi")
	require.ErrorIs(t, err, ErrTransport)
	require.ErrorContains(t, err, "broke the protocol")
}

// TestSubprocessMalformedHostCallsWarnOnce: the first malformed host call
// of a child is logged as a warning, the next ones at debug level, so a
// plugin sending them in a loop does not flood the host's log.
func TestSubprocessMalformedHostCallsWarnOnce(t *testing.T) {
	verifyNoLeaks(t)
	th := newTestHost(t, "raw", HostCallLimits{}, grantAll)
	log := newRecordingHandler()
	p := startRaw(t, "v2", log, nil)
	p.UseHost(th.h)
	for range 3 {
		got, err := p.Execute(context.Background(), "zero")
		require.NoError(t, err)
		require.True(t, strings.HasPrefix(got, `HOST_ERROR {"code":"bad_request"`), "answer %q", got)
	}
	levels := map[slog.Level]int{}
	for _, r := range log.records() {
		if r.msg == "goplugins: host call refused" {
			levels[r.level]++
		}
	}
	assert.Equal(t, map[slog.Level]int{slog.LevelWarn: 1, slog.LevelDebug: 2}, levels)
}
