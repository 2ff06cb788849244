package goplugins

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/goplugins/goplugins/internal/pluginpb"
	"github.com/goplugins/goplugins/sdk"
	"github.com/goplugins/goplugins/sdk/grpcplugin"
)

type kvReq struct {
	Key string `json:"key"`
}

type kvResp struct {
	Value string `json:"value"`
}

// hostFixture is a Host made the way a Manager makes one, with host
// functions that report to the test.
type hostFixture struct {
	host    *Host
	entered chan struct{} // "block" started
	ended   chan error    // how "block"'s ctx ended
	events  chan Event
	logs    *syncBuffer
	gate    chan struct{} // "gate" signals entered, then waits for it
}

func newHostFixture(t *testing.T, opts ...Option) *hostFixture {
	t.Helper()
	f := &hostFixture{entered: make(chan struct{}, 4), ended: make(chan error, 4), events: make(chan Event, 16), logs: &syncBuffer{}, gate: make(chan struct{})}
	c := defaultManagerConfig()
	WithHostFuncs(
		NewHostFunc("kv.get", func(_ context.Context, c Caller, r kvReq) (kvResp, error) {
			return kvResp{Value: c.Plugin + ":" + r.Key}, nil
		}),
		NewHostFunc("block", func(ctx context.Context, _ Caller, _ kvReq) (kvResp, error) {
			f.entered <- struct{}{}
			<-ctx.Done()
			f.ended <- ctx.Err()
			return kvResp{}, ctx.Err()
		}),
		NewHostFunc("boom", func(context.Context, Caller, kvReq) (kvResp, error) { panic("host function bug") }),
		NewHostFunc("big", func(context.Context, Caller, kvReq) (kvResp, error) {
			return kvResp{Value: strings.Repeat("x", pluginpb.MaxHostMessage)}, nil
		}),
		NewHostFunc("gate", func(context.Context, Caller, kvReq) (kvResp, error) {
			f.entered <- struct{}{}
			<-f.gate
			return kvResp{Value: "through"}, nil
		}),
		NewHostFunc("coded", func(context.Context, Caller, kvReq) (kvResp, error) {
			return kvResp{}, &ErrorReply{Code: "no_such_key", Message: "k is not there", Retryable: true}
		}),
	).applyManager(&c)
	for _, o := range opts {
		o.applyManager(&c)
	}
	log := slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	f.host = newHostPlugin(&c.host).bind(&c.host, Caller{Plugin: "counter", Version: "1.0.0", Generation: 1}, nil, log, func(e Event) { f.events <- e })
	return f
}

// hostCallPlugin is an in-process sdk plugin served over gRPC that calls the
// host: "host" calls the function named by Text and answers its value;
// "detached" calls it on a goroutine whose ctx keeps the request's values
// but not its cancellation, and returns once the host function runs;
// "no-ctx" calls it with a ctx of its own; "keep" hands its ctx, without
// its cancellation, to the test and returns; "metadata" answers the call's
// metadata as JSON; "wait" waits for proceed, then does as "host";
// "host-big" sends a request over the limit.
type hostCallPlugin struct {
	entered  chan struct{} // the fixture's: a detached call reached the host
	detached chan error
	proceed  chan struct{}
	waiting  chan struct{}
	kept     chan context.Context
}

func newHostCallPlugin(f *hostFixture) *hostCallPlugin {
	return &hostCallPlugin{entered: f.entered, detached: make(chan error, 1), proceed: make(chan struct{}), waiting: make(chan struct{}, 1), kept: make(chan context.Context, 1)}
}

func (p *hostCallPlugin) Execute(ctx context.Context, r counterReq) (counterResp, error) {
	switch r.Op {
	case "detached":
		go func() {
			_, err := grpcplugin.CallHost[kvReq, kvResp](context.WithoutCancel(ctx), r.Text, kvReq{Key: "k"})
			p.detached <- err
		}()
		<-p.entered
		return counterResp{}, nil
	case "no-ctx":
		ctx = context.Background()
	case "keep":
		p.kept <- context.WithoutCancel(ctx)
		return counterResp{}, nil
	case "metadata":
		b, err := json.Marshal(grpcplugin.Metadata(ctx))
		return counterResp{Text: string(b)}, err
	case "wait":
		p.waiting <- struct{}{}
		<-p.proceed
	}
	key := "k"
	if r.Op == "host-big" {
		key = strings.Repeat("k", pluginpb.MaxHostMessage)
	}
	resp, err := grpcplugin.CallHost[kvReq, kvResp](ctx, r.Text, kvReq{Key: key})
	if err != nil {
		return counterResp{}, err
	}
	return counterResp{Text: resp.Value}, nil
}

// PersistState answers the value of the host function "kv.get".
func (p *hostCallPlugin) PersistState(ctx context.Context) ([]byte, error) {
	resp, err := grpcplugin.CallHost[kvReq, kvResp](ctx, "kv.get", kvReq{Key: "state"})
	return []byte(resp.Value), err
}

// RestoreState calls the host function named after "call:" in state.
func (p *hostCallPlugin) RestoreState(ctx context.Context, state []byte) error {
	if fn, ok := strings.CutPrefix(string(state), "call:"); ok {
		_, err := grpcplugin.CallHost[kvReq, kvResp](ctx, fn, kvReq{})
		return err
	}
	return nil
}

// hostCallCode returns the code of the host call error that the plugin
// passed on as its own, or "" if err is none.
func hostCallCode(t *testing.T, err error) string {
	t.Helper()
	var rep *ErrorReply
	if !errors.As(err, &rep) {
		return ""
	}
	return rep.Code
}

// newHostCallRemote serves p on a unix socket and returns the host's
// plugin with f's handle.
func newHostCallRemote(t *testing.T, f *hostFixture, p sdk.Plugin[counterReq, counterResp], opts ...grpcplugin.Option) (*grpcPlugin[counterReq, counterResp], *grpcServer) {
	t.Helper()
	lis, addr := unixListener(t)
	srv := serveGRPC(t, lis, addr, p, opts...)
	gp := newRemote(t, GRPCConfig{Name: "counter", Endpoint: addr, Logger: slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	gp.UseHost(f.host)
	return gp, srv
}

func TestGRPCHostCallsServedWithGrantsAndTypedErrors(t *testing.T) {
	verifyNoLeaks(t)
	f := newHostFixture(t, WithGrants(Grant{Plugins: "counter", Funcs: []string{"kv.*", "boom", "big", "coded"}}))
	p, _ := newHostCallRemote(t, f, newHostCallPlugin(f))
	ctx := context.Background()

	resp, err := p.Execute(ctx, counterReq{Op: "host", Text: "kv.get"})
	require.NoError(t, err)
	assert.Equal(t, "counter:k", resp.Text, "the host function ran with the caller's identity")

	cases := []struct {
		name, fn, code string
		retryable      bool
	}{
		{"not granted", "block", "not_granted", false},
		{"not offered", "kv-missing", "not_granted", false},
		{"a panic is recovered", "boom", "panic", false},
		{"the function's own code", "coded", "no_such_key", true},
		{"a response over the limit", "big", "frame_too_large", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := p.Execute(ctx, counterReq{Op: "host", Text: tc.fn})
			require.ErrorIs(t, err, ErrRemote)
			assert.Equal(t, tc.code, hostCallCode(t, err), "%v", err)
			var rep *ErrorReply
			require.ErrorAs(t, err, &rep)
			assert.Equal(t, tc.retryable, rep.Retryable)
		})
	}
	ev := <-f.events
	assert.Equal(t, EventHostCallRefused, ev.Kind)
	assert.Equal(t, "block", ev.HostFunc)
	assert.Contains(t, f.logs.String(), `msg="goplugins: host call refused" plugin=counter host_func=block`, "a refusal is logged with the plugin's name")

	resp, err = p.Execute(ctx, counterReq{Op: "host", Text: "kv.get"})
	require.NoError(t, err, "the stream serves on after refusals, a panic and an oversized answer")
	assert.Equal(t, "counter:k", resp.Text)

	_, err = p.Execute(ctx, counterReq{Op: "no-ctx", Text: "kv.get"})
	assert.Equal(t, "unsupported", hostCallCode(t, err), "a ctx neither of a handler nor of background work: %v", err)
	assert.Equal(t, uint64(1), f.host.plugin.counters["kv.get"].calls.Load()-1, "the calls are counted per function")
}

func TestGRPCHostCallEndsWithItsRequest(t *testing.T) {
	verifyNoLeaks(t)
	f := newHostFixture(t, WithGrants(Grant{Plugins: "counter", Funcs: []string{"block"}}))
	plugin := newHostCallPlugin(f)
	p, _ := newHostCallRemote(t, f, plugin)

	t.Run("the caller cancels the request", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() {
			_, err := p.Execute(ctx, counterReq{Op: "host", Text: "block"})
			errc <- err
		}()
		<-f.entered
		cancel()
		require.ErrorIs(t, <-errc, ErrCanceled)
		assert.ErrorIs(t, <-f.ended, context.Canceled, "the host function's ctx ended with the request")
	})
	t.Run("the request is answered while its host call runs", func(t *testing.T) {
		// The plugin's goroutine keeps the request's tag but ignores its
		// end: the host itself cancels the call when the answer arrives.
		_, err := p.Execute(context.Background(), counterReq{Op: "detached", Text: "block"})
		require.NoError(t, err)
		assert.ErrorIs(t, <-f.ended, context.Canceled, "the host function's ctx ended with the request")
		assert.Equal(t, "canceled", hostCallCode(t, asRemote(<-plugin.detached)), "the plugin is told its call was cancelled")
	})
	t.Run("the host-call timeout", func(t *testing.T) {
		f := newHostFixture(t, WithGrants(Grant{Plugins: "counter", Funcs: []string{"block"}}), WithHostCallLimits(HostCallLimits{Timeout: 20 * time.Millisecond}))
		p.UseHost(f.host)
		_, err := p.Execute(context.Background(), counterReq{Op: "host", Text: "block"})
		assert.Equal(t, "timeout", hostCallCode(t, err), "%v", err)
		<-f.entered
		assert.ErrorIs(t, <-f.ended, context.DeadlineExceeded)
	})
}

// asRemote turns a plugin-side host call error into the host's view of it,
// as if the plugin had answered it.
func asRemote(err error) error {
	var e *sdk.Error
	if errors.As(err, &e) {
		return remoteError("counter", "host call", e.Code, e.Message, e.Retryable)
	}
	return err
}

func TestGRPCHostCallPluginSideCancellation(t *testing.T) {
	verifyNoLeaks(t)
	f := newHostFixture(t, WithGrants(Grant{Plugins: "counter", Funcs: []string{"block"}, Background: true}))
	calls := make(chan error, 1)
	cancelled := make(chan context.CancelFunc, 1)
	bg := grpcplugin.WithBackground(func(ctx context.Context) {
		cctx, cancel := context.WithCancel(ctx)
		cancelled <- cancel
		_, err := grpcplugin.CallHost[kvReq, kvResp](cctx, "block", kvReq{})
		calls <- err
		<-ctx.Done()
	})
	newHostCallRemote(t, f, newHostCallPlugin(f), bg)
	<-f.entered
	(<-cancelled)()
	err := <-calls
	assert.ErrorIs(t, err, context.Canceled, "CallHost returns at once with ctx's error")
	var e *sdk.Error
	require.ErrorAs(t, err, &e)
	assert.Equal(t, "canceled", e.Code)
	assert.ErrorIs(t, <-f.ended, context.Canceled, "the plugin's cancellation reached the host function")
}

func TestGRPCHostCallsBackground(t *testing.T) {
	verifyNoLeaks(t)
	for _, granted := range []bool{true, false} {
		t.Run(map[bool]string{true: "granted", false: "not granted"}[granted], func(t *testing.T) {
			f := newHostFixture(t, WithGrants(Grant{Plugins: "counter", Funcs: []string{"kv.get"}, Background: granted}))
			got := make(chan error, 1)
			var value string
			bg := grpcplugin.WithBackground(func(ctx context.Context) {
				resp, err := grpcplugin.CallHost[kvReq, kvResp](ctx, "kv.get", kvReq{Key: "bg"})
				value = resp.Value
				got <- err
				<-ctx.Done()
			})
			newHostCallRemote(t, f, newHostCallPlugin(f), bg)
			err := <-got
			if granted {
				require.NoError(t, err)
				assert.Equal(t, "counter:bg", value)
				return
			}
			var e *sdk.Error
			require.ErrorAs(t, err, &e)
			assert.Equal(t, "not_granted", e.Code)
			assert.Contains(t, e.Message, "Grant.Background")
		})
	}
	t.Run("a call whose request ended counts as background", func(t *testing.T) {
		f := newHostFixture(t, WithGrants(Grant{Plugins: "counter", Funcs: []string{"kv.get"}}))
		plugin := newHostCallPlugin(f)
		p, _ := newHostCallRemote(t, f, plugin)
		_, err := p.Execute(context.Background(), counterReq{Op: "keep"})
		require.NoError(t, err)
		_, err = grpcplugin.CallHost[kvReq, kvResp](<-plugin.kept, "kv.get", kvReq{})
		var e *sdk.Error
		require.ErrorAs(t, err, &e)
		assert.Equal(t, "not_granted", e.Code, "%v", err)
		assert.Contains(t, e.Message, "Grant.Background")
	})
}

func TestGRPCHostCallLimit(t *testing.T) {
	verifyNoLeaks(t)
	f := newHostFixture(t, WithGrants(Grant{Plugins: "counter", Funcs: []string{"block", "kv.get"}}), WithHostCallLimits(HostCallLimits{MaxConcurrent: 1}))
	p, _ := newHostCallRemote(t, f, newHostCallPlugin(f))
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := p.Execute(ctx, counterReq{Op: "host", Text: "block"})
		errc <- err
	}()
	<-f.entered
	_, err := p.Execute(context.Background(), counterReq{Op: "host", Text: "kv.get"})
	assert.Equal(t, "overloaded", hostCallCode(t, err), "%v", err)
	assert.True(t, IsRetryable(err), "overloaded is retryable")
	cancel()
	<-errc
	<-f.ended
	// The cancelled call leaves the limit's count once its function has
	// returned, just after it reported its end.
	require.Eventually(t, func() bool { return f.host.plugin.inFlight.Load() == 0 }, 5*time.Second, time.Millisecond)
	_, err = p.Execute(context.Background(), counterReq{Op: "host", Text: "kv.get"})
	require.NoError(t, err)
}

func TestGRPCHostCallsWithoutHandle(t *testing.T) {
	verifyNoLeaks(t)
	f := newHostFixture(t)
	lis, addr := unixListener(t)
	serveGRPC(t, lis, addr, newHostCallPlugin(f))
	p := newRemote(t, GRPCConfig{Name: "counter", Endpoint: addr})
	_, err := p.Execute(context.Background(), counterReq{Op: "host", Text: "kv.get"})
	assert.Equal(t, "unsupported", hostCallCode(t, err), "before UseHost the plugin cannot call the host: %v", err)
	assert.Contains(t, err.Error(), "from a host that relays host calls")
}

func TestGRPCMetadataReachesThePlugin(t *testing.T) {
	verifyNoLeaks(t)
	f := newHostFixture(t)
	p, _ := newHostCallRemote(t, f, newHostCallPlugin(f))

	resp, err := p.Execute(context.Background(), counterReq{Op: "metadata"})
	require.NoError(t, err)
	assert.Equal(t, "null", resp.Text, "no pairs without ContextWithMetadata")

	ctx := ContextWithMetadata(context.Background(), map[string]string{"traceparent": "00-abc-def-01", "Tenant": "acme"})
	resp, err = p.Execute(ctx, counterReq{Op: "metadata"})
	require.NoError(t, err)
	var md map[string]string
	require.NoError(t, json.Unmarshal([]byte(resp.Text), &md))
	assert.Equal(t, map[string]string{"traceparent": "00-abc-def-01", "tenant": "acme"}, md, "the pairs, keys lowercase, without gRPC's headers")
}

// oldPlugin is a plugin service of an older grpcplugin: no HostCalls.
type oldPlugin struct {
	pluginpb.UnimplementedPluginServer
	links chan uint64
}

func (oldPlugin) Info(context.Context, *pluginpb.InfoRequest) (*pluginpb.InfoResponse, error) {
	return &pluginpb.InfoResponse{Name: "counter", Version: "1.0.0", Codecs: []string{"json"}}, nil
}

func (o oldPlugin) Execute(_ context.Context, r *pluginpb.ExecuteRequest) (*pluginpb.ExecuteResponse, error) {
	o.links <- r.Link
	return &pluginpb.ExecuteResponse{Payload: []byte(`{"text":"old"}`)}, nil
}

func TestGRPCOlderPluginWithoutHostCalls(t *testing.T) {
	verifyNoLeaks(t)
	srv0 := oldPlugin{links: make(chan uint64, 1)}
	addr := servePluginService(t, srv0)
	var logs syncBuffer
	p := newRemote(t, GRPCConfig{Name: "counter", Endpoint: addr, Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	p.UseHost(newHostFixture(t).host)
	resp, err := p.Execute(context.Background(), counterReq{Op: "echo"})
	require.NoError(t, err, "an older plugin serves as before")
	assert.Equal(t, "old", resp.Text)
	assert.Contains(t, logs.String(), "level=DEBUG", "the missing stream is logged at debug")
	assert.Contains(t, logs.String(), "has no HostCalls stream")
	assert.Zero(t, <-srv0.links, "the requests are not tagged for host calls")
	assert.NotContains(t, logs.String(), "level=WARN")
	assert.NotContains(t, logs.String(), "level=ERROR")
}

func TestGRPCHostCallsDuringPluginStop(t *testing.T) {
	verifyNoLeaks(t)
	f := newHostFixture(t, WithGrants(Grant{Plugins: "counter", Funcs: []string{"kv.get"}}))
	plugin := newHostCallPlugin(f)
	p, srv := newHostCallRemote(t, f, plugin)
	errc := make(chan error, 1)
	var resp counterResp
	go func() {
		var err error
		resp, err = p.Execute(context.Background(), counterReq{Op: "wait", Text: "kv.get"})
		errc <- err
	}()
	<-plugin.waiting
	srv.cancel() // the plugin stops: it finishes the call in flight
	stopped := make(chan error, 1)
	go func() { stopped <- <-srv.done }()
	close(plugin.proceed)
	require.NoError(t, <-errc, "a host call of a request in flight is served while the plugin stops")
	assert.Equal(t, "counter:k", resp.Text)
	require.NoError(t, <-stopped, "the plugin stopped")
	srv.done = nil
}

func TestGRPCHostCallsStreamReopened(t *testing.T) {
	verifyNoLeaks(t)
	f := newHostFixture(t, WithGrants(Grant{Plugins: "counter", Funcs: []string{"kv.get"}}))
	dir, err := os.MkdirTemp("", "gpt-")
	require.NoError(t, err)
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "s.sock")
	lis, err := net.Listen("unix", path)
	require.NoError(t, err)
	srv := serveGRPC(t, lis, "unix://"+path, newHostCallPlugin(f))
	p := newRemote(t, GRPCConfig{Name: "counter", Endpoint: "unix://" + path})
	p.UseHost(f.host)
	_, err = p.Execute(context.Background(), counterReq{Op: "host", Text: "kv.get"})
	require.NoError(t, err)

	srv.stop(t)
	lis2, err := net.Listen("unix", path)
	require.NoError(t, err)
	serveGRPC(t, lis2, "unix://"+path, newHostCallPlugin(f))
	// grpc-go reconnects, and the host opens the stream again, on their
	// own backoff; no event tells when, so poll with a deadline.
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := p.Execute(context.Background(), counterReq{Op: "host", Text: "kv.get"})
		if err == nil {
			assert.Equal(t, "counter:k", resp.Text)
			break
		}
		require.True(t, time.Now().Before(deadline), "no host call after the reconnect within 10s: %v", err)
		time.Sleep(10 * time.Millisecond)
	}
}

func TestGRPCHostCallsFromChildAcrossRestart(t *testing.T) {
	verifyNoLeaks(t)
	bin := buildGRPCCounter(t)
	f := newHostFixture(t, WithGrants(Grant{Plugins: "counter", Funcs: []string{"kv.get"}}))
	restarted := make(chan error, 4)
	p, err := newGRPCPlugin[counterReq, counterResp](context.Background(), GRPCConfig{
		Name: "counter", Command: bin, AutoMTLS: true,
		Restart:   RestartPolicy{MaxAttempts: 3, Backoff: 10 * time.Millisecond},
		OnRestart: func(_ string, _ int, err error) { restarted <- err },
	})
	require.NoError(t, err)
	defer func() { require.NoError(t, p.Close(context.Background())) }()
	p.UseHost(f.host)
	ctx := context.Background()
	resp, err := p.Execute(ctx, counterReq{Op: "host", Text: "kv.get"})
	require.NoError(t, err)
	assert.Equal(t, "counter:k", resp.Text)
	_, err = p.Execute(ctx, counterReq{Op: "host", Text: "block"})
	assert.Equal(t, "not_granted", hostCallCode(t, err), "%v", err)

	_, err = p.Execute(ctx, counterReq{Op: "exit"})
	require.ErrorIs(t, err, ErrCrashed)
	// A restart attempt can fail on a loaded machine; the policy tries
	// again, and the test waits for the attempt that serves.
	for attempt := 1; ; attempt++ {
		err := <-restarted
		if err == nil {
			break
		}
		require.Less(t, attempt, 3, "no restart served: %v", err)
	}
	resp, err = p.Execute(ctx, counterReq{Op: "host", Text: "kv.get"})
	require.NoError(t, err, "the restarted child calls the host through the same handle")
	assert.Equal(t, "counter:k", resp.Text)
}

func TestGRPCMetadataGRPCCannotCarryIsInvalidConfig(t *testing.T) {
	verifyNoLeaks(t)
	f := newHostFixture(t)
	p, _ := newHostCallRemote(t, f, newHostCallPlugin(f))
	for _, md := range []map[string]string{
		{"bad key": "v"}, {"grpc-timeout": "1S"}, {"é": "v"}, {"x-trace": "line\nbreak"}, {"goplugins-link": "1"},
	} {
		_, err := p.Execute(ContextWithMetadata(context.Background(), md), counterReq{Op: "metadata"})
		require.ErrorIs(t, err, ErrInvalidConfig, "%v", md)
		assert.Contains(t, err.Error(), "ContextWithMetadata")
	}
	resp, err := p.Execute(ContextWithMetadata(context.Background(), map[string]string{"trace-bin": "\x00\x01"}), counterReq{Op: "metadata"})
	require.NoError(t, err, "a -bin key carries any bytes")
	assert.JSONEq(t, `{"trace-bin":"\u0000\u0001"}`, resp.Text)
}

// rawHostCaller is a plugin service that speaks the HostCalls stream by
// hand: the test sends what it wants with calls and reads the answers
// from replies.
type rawHostCaller struct {
	oldPlugin
	calls   chan *pluginpb.HostCall
	replies chan *pluginpb.HostReply
	opened  chan struct{}
}

func (r rawHostCaller) HostCalls(s pluginpb.Plugin_HostCallsServer) error {
	r.opened <- struct{}{}
	if err := s.SendHeader(map[string][]string{pluginpb.MDHostCalls: {pluginpb.Ready}}); err != nil {
		return err
	}
	go func() {
		for {
			rep, err := s.Recv()
			if err != nil {
				return
			}
			r.replies <- rep
		}
	}()
	for {
		select {
		case c := <-r.calls:
			if err := s.Send(c); err != nil {
				go func() { r.calls <- c }() // for the host's next stream
				return err
			}
		case <-s.Context().Done():
			return nil
		}
	}
}

func TestGRPCHostCallsStreamProtocol(t *testing.T) {
	verifyNoLeaks(t)
	f := newHostFixture(t, WithGrants(Grant{Plugins: "counter", Funcs: []string{"*"}, Background: true}))
	raw := rawHostCaller{oldPlugin: oldPlugin{links: make(chan uint64, 1)}, calls: make(chan *pluginpb.HostCall), replies: make(chan *pluginpb.HostReply, 4), opened: make(chan struct{}, 2)}
	addr := servePluginService(t, raw)
	p := newRemote(t, GRPCConfig{Name: "counter", Endpoint: addr})
	p.UseHost(f.host)

	_, err := p.Execute(context.Background(), counterReq{})
	require.NoError(t, err)
	assert.NotZero(t, <-raw.links, "requests are tagged once the stream is ready")

	call := func(c *pluginpb.HostCall) *pluginpb.HostReply {
		raw.calls <- c
		return <-raw.replies
	}
	rep := call(&pluginpb.HostCall{Id: 1, Name: "kv.get", Body: []byte(`{"key":"a"}`)})
	assert.Equal(t, `{"value":"counter:a"}`, string(rep.Body), "a background call, granted")
	assert.Nil(t, rep.Error)

	cases := []struct {
		name string
		call *pluginpb.HostCall
		code string
	}{
		{"a zero id", &pluginpb.HostCall{Id: 0, Name: "kv.get", Body: []byte(`{}`)}, "bad_request"},
		{"a body that does not decode", &pluginpb.HostCall{Id: 2, Name: "kv.get", Body: []byte(`[1]`)}, "bad_request"},
		{"a parent that is not a request in flight counts as background, granted here", &pluginpb.HostCall{Id: 3, Parent: 99, Name: "kv.get", Body: []byte(`{}`)}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rep := call(tc.call)
			assert.Equal(t, tc.call.Id, rep.Id)
			if tc.code == "" {
				assert.Nil(t, rep.Error, "background work is granted here")
				return
			}
			require.NotNil(t, rep.Error)
			assert.Equal(t, tc.code, rep.Error.Code, rep.Error.Message)
		})
	}

	t.Run("a duplicate id in flight, then a cancellation", func(t *testing.T) {
		raw.calls <- &pluginpb.HostCall{Id: 7, Name: "block", Body: []byte(`{}`)}
		<-f.entered
		rep := call(&pluginpb.HostCall{Id: 7, Name: "kv.get", Body: []byte(`{}`)})
		require.NotNil(t, rep.Error)
		assert.Equal(t, "bad_request", rep.Error.Code, rep.Error.Message)
		rep = call(&pluginpb.HostCall{Id: 7, Cancel: true})
		assert.Equal(t, uint64(7), rep.Id, "the cancelled call is answered")
		require.NotNil(t, rep.Error)
		assert.Equal(t, "canceled", rep.Error.Code)
		assert.ErrorIs(t, <-f.ended, context.Canceled)
	})

	t.Run("a call over gRPC's receive limit breaks the stream, which is opened again", func(t *testing.T) {
		<-raw.opened
		raw.calls <- &pluginpb.HostCall{Id: 9, Name: "kv.get", Body: bytes.Repeat([]byte(" "), 5<<20)}
		<-raw.opened
		rep := call(&pluginpb.HostCall{Id: 10, Name: "kv.get", Body: []byte(`{"key":"b"}`)})
		assert.Equal(t, `{"value":"counter:b"}`, string(rep.Body))
	})

	t.Run("after the plugin value closed", func(t *testing.T) {
		f.host.close()
		rep := call(&pluginpb.HostCall{Id: 8, Name: "kv.get", Body: []byte(`{}`)})
		require.NotNil(t, rep.Error)
		assert.Equal(t, "shutting_down", rep.Error.Code, rep.Error.Message)
	})
}

func TestGRPCHostCallRequestOverTheLimit(t *testing.T) {
	verifyNoLeaks(t)
	f := newHostFixture(t, WithGrants(Grant{Plugins: "counter", Funcs: []string{"kv.get"}}))
	p, _ := newHostCallRemote(t, f, newHostCallPlugin(f))
	_, err := p.Execute(context.Background(), counterReq{Op: "host-big", Text: "kv.get"})
	assert.Equal(t, "frame_too_large", hostCallCode(t, err), "%v", err)
	resp, err := p.Execute(context.Background(), counterReq{Op: "host", Text: "kv.get"})
	require.NoError(t, err)
	assert.Equal(t, "counter:k", resp.Text)
}

func TestGRPCBackgroundWorkEndsBeforeServeReturns(t *testing.T) {
	verifyNoLeaks(t)
	f := newHostFixture(t, WithGrants(Grant{Plugins: "counter", Funcs: []string{"kv.get"}, Background: true}))
	running, ctxEnded, release := make(chan struct{}), make(chan struct{}), make(chan struct{})
	bg := grpcplugin.WithBackground(func(ctx context.Context) {
		close(running)
		<-ctx.Done()
		close(ctxEnded)
		<-release
	})
	_, srv := newHostCallRemote(t, f, newHostCallPlugin(f), bg)
	<-running
	srv.cancel()
	<-ctxEnded
	select {
	case err := <-srv.done:
		t.Fatalf("ServeListener returned (%v) while background work ran", err)
	default:
	}
	close(release)
	require.NoError(t, <-srv.done)
	srv.done = nil
}

// handleProbe is an in-process plugin that records whether it got a host
// handle.
type handleProbe struct{ got bool }

func (p *handleProbe) UseHost(*Host) { p.got = true }
func (*handleProbe) Info() PluginInfo {
	return PluginInfo{Name: "probe", Version: "1.0.0"}
}
func (*handleProbe) Execute(context.Context, counterReq) (counterResp, error) {
	return counterResp{}, nil
}
func (*handleProbe) Health(context.Context) error { return nil }
func (*handleProbe) Close(context.Context) error  { return nil }

// skipWithoutManagerHandles skips a test of the manager's wiring of host
// handles where Register does not give them yet (a branch without it).
func skipWithoutManagerHandles(t *testing.T) {
	t.Helper()
	m := NewManager[counterReq, counterResp]()
	defer m.Shutdown(context.Background())
	probe := &handleProbe{}
	require.NoError(t, m.Register(probe))
	if !probe.got {
		t.Skip("Manager.Register gives no host handles on this branch yet")
	}
}

func TestGRPCHostCallsThroughManager(t *testing.T) {
	verifyNoLeaks(t)
	skipWithoutManagerHandles(t)
	f := newHostFixture(t)
	gens := make(chan uint64, 8)
	m := NewManager[counterReq, counterResp](
		WithHostFuncs(NewHostFunc("kv.get", func(_ context.Context, c Caller, r kvReq) (kvResp, error) {
			gens <- c.Generation
			return kvResp{Value: c.Plugin + ":" + r.Key}, nil
		})),
		WithGrants(Grant{Plugins: "counter", Funcs: []string{"kv.get"}}),
	)
	defer m.Shutdown(context.Background())
	lis, addr := unixListener(t)
	serveGRPC(t, lis, addr, newHostCallPlugin(f))
	p, err := NewGRPCPlugin[counterReq, counterResp](context.Background(), GRPCConfig{Name: "counter", Endpoint: addr})
	require.NoError(t, err)
	require.NoError(t, m.Register(p))
	resp, err := m.Execute(context.Background(), "counter", counterReq{Op: "host", Text: "kv.get"})
	require.NoError(t, err)
	assert.Equal(t, "counter:k", resp.Text)
	assert.Equal(t, uint64(1), <-gens)

	lis2, addr2 := unixListener(t)
	serveGRPC(t, lis2, addr2, newHostCallPlugin(f))
	p2, err := NewGRPCPlugin[counterReq, counterResp](context.Background(), GRPCConfig{Name: "counter", Endpoint: addr2})
	require.NoError(t, err)
	_, err = m.Reload(context.Background(), "counter", p2)
	require.NoError(t, err)
	assert.Equal(t, uint64(1), <-gens, "the old value's PersistState called the host during the handoff")
	resp, err = m.Execute(context.Background(), "counter", counterReq{Op: "host", Text: "kv.get"})
	require.NoError(t, err)
	assert.Equal(t, "counter:k", resp.Text)
	assert.Equal(t, uint64(2), <-gens)
	_, err = m.Execute(context.Background(), "counter", counterReq{Op: "host", Text: "block"})
	assert.Equal(t, "not_granted", hostCallCode(t, err))
}

func TestGRPCPluginHostCallFailsWhenTheStreamEnds(t *testing.T) {
	verifyNoLeaks(t)
	f := newHostFixture(t, WithGrants(Grant{Plugins: "counter", Funcs: []string{"block"}, Background: true}))
	got := make(chan error, 1)
	bg := grpcplugin.WithBackground(func(ctx context.Context) {
		// A ctx that never ends: only the stream's end stops the call.
		_, err := grpcplugin.CallHost[kvReq, kvResp](context.WithoutCancel(ctx), "block", kvReq{})
		got <- err
	})
	p, _ := newHostCallRemote(t, f, newHostCallPlugin(f), bg)
	<-f.entered
	require.NoError(t, p.Close(context.Background()))
	err := <-got
	var e *sdk.Error
	require.ErrorAs(t, err, &e)
	assert.Equal(t, "unavailable", e.Code, "%v", err)
	assert.True(t, e.Retryable)
	assert.ErrorIs(t, <-f.ended, context.Canceled, "closing the connection cancels the host call")
}

func TestGRPCPluginLacksTheHostCallCodec(t *testing.T) {
	verifyNoLeaks(t)
	f := newHostFixture(t)
	lis, addr := unixListener(t)
	serveGRPC(t, lis, addr, newHostCallPlugin(f))
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	client := pluginpb.NewPluginClient(conn)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := client.HostCalls(metadata.NewOutgoingContext(ctx, metadata.Pairs(pluginpb.MDLink, "5", pluginpb.MDHostCodec, "nope")))
	require.NoError(t, err)
	h, err := s.Header()
	require.NoError(t, err)
	require.Equal(t, []string{pluginpb.Ready}, h.Get(pluginpb.MDHostCalls))
	_, err = client.Execute(ctx, &pluginpb.ExecuteRequest{Codec: "json", Payload: []byte(`{"op":"host","text":"kv.get"}`), Link: 5, RequestId: 1})
	st := status.Convert(err)
	require.Len(t, st.Details(), 1, "%v", err)
	e := st.Details()[0].(*pluginpb.Error)
	assert.Equal(t, "codec", e.Code, e.Message)
	assert.Contains(t, e.Message, "grpcplugin.WithCodec")
}

func TestGRPCChildServesHostCallsDuringShutdown(t *testing.T) {
	verifyNoLeaks(t)
	bin := buildGRPCCounter(t)
	f := newHostFixture(t, WithGrants(Grant{Plugins: "counter", Funcs: []string{"gate"}}))
	shutdownSent := make(chan struct{})
	onShutdown := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoke grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoke(ctx, method, req, reply, cc, opts...)
		if method == pluginpb.Plugin_Shutdown_FullMethodName {
			close(shutdownSent)
		}
		return err
	}
	p, err := newGRPCPlugin[counterReq, counterResp](context.Background(), GRPCConfig{
		Name: "counter", Command: bin, DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(onShutdown)},
	})
	require.NoError(t, err)
	p.UseHost(f.host)
	child := grpcChildOf(t, p)
	type result struct {
		resp counterResp
		err  error
	}
	res := make(chan result, 1)
	go func() {
		resp, err := p.Execute(context.Background(), counterReq{Op: "host", Text: "gate"})
		res <- result{resp, err}
	}()
	<-f.entered
	closed := make(chan error, 1)
	go func() { closed <- p.Close(context.Background()) }()
	<-shutdownSent
	close(f.gate)
	r := <-res
	require.NoError(t, r.err, "the host call in flight is served after Shutdown")
	assert.Equal(t, "through", r.resp.Text)
	require.NoError(t, <-closed)
	assert.Equal(t, 0, child.proc.State().ExitCode(), "the child exited gracefully")
}

func TestGRPCHostCallsFromReloadSurfaces(t *testing.T) {
	verifyNoLeaks(t)
	f := newHostFixture(t, WithGrants(Grant{Plugins: "counter", Funcs: []string{"kv.get", "block"}}))
	p, _ := newHostCallRemote(t, f, newHostCallPlugin(f))
	state, err := p.PersistState(context.Background())
	require.NoError(t, err, "a PersistState handler calls the host within its request")
	assert.Equal(t, "counter:state", string(state))

	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- p.RestoreState(ctx, []byte("call:block")) }()
	<-f.entered
	cancel()
	require.ErrorIs(t, <-errc, ErrCanceled)
	assert.ErrorIs(t, <-f.ended, context.Canceled, "the host call ends with the RestoreState request")
}

// floodingCaller is a plugin service that sends the host calls it is given
// over the HostCalls stream and never reads the answers: a plugin flooding
// the stream.
type floodingCaller struct {
	oldPlugin
	calls chan *pluginpb.HostCall
}

func (r floodingCaller) HostCalls(s pluginpb.Plugin_HostCallsServer) error {
	if err := s.SendHeader(map[string][]string{pluginpb.MDHostCalls: {pluginpb.Ready}}); err != nil {
		return err
	}
	for {
		select {
		case c := <-r.calls:
			if err := s.Send(c); err != nil {
				return err
			}
		case <-s.Context().Done():
			return nil
		}
	}
}

// TestGRPCHostCallsFloodIsBounded: a plugin that sends host calls and
// never reads their answers gets at most MaxConcurrent + 16 of them served
// at once (refusals included); past that the host stops reading the stream
// (docs/GRPC.md, "Bounds").
func TestGRPCHostCallsFloodIsBounded(t *testing.T) {
	verifyNoLeaks(t)
	const limit, sent = 4, 100
	wide := NewHostFunc("wide", func(context.Context, Caller, kvReq) (kvResp, error) {
		return kvResp{Value: strings.Repeat("x", 256<<10)}, nil // over gRPC's flow-control window
	})
	f := newHostFixture(t, WithHostFuncs(wide), WithHostCallLimits(HostCallLimits{MaxConcurrent: limit}),
		WithGrants(Grant{Plugins: "counter", Funcs: []string{"*"}, Background: true}))
	flood := floodingCaller{oldPlugin: oldPlugin{links: make(chan uint64, 1)}, calls: make(chan *pluginpb.HostCall, sent)}
	addr := servePluginService(t, flood)
	p := newRemote(t, GRPCConfig{Name: "counter", Endpoint: addr})
	p.UseHost(f.host)
	l, err := p.live()
	require.NoError(t, err)
	hosts := l.hosts
	l.release()
	for id := range uint64(sent) {
		flood.calls <- &pluginpb.HostCall{Id: id + 1, Name: "wide", Body: []byte(`{}`)}
	}

	room := int64(limit + 16)
	var seen int64
	ok := assert.Eventually(t, func() bool { seen = hosts.running.Load(); return seen == room }, 10*time.Second, time.Millisecond)
	require.True(t, ok, "host calls served at once: %d, want the bound %d", seen, room)
	for range 20 { // the reader waits for room: the count never passes the bound
		time.Sleep(time.Millisecond) // sampling a count that must stay bounded, not synchronising
		require.LessOrEqual(t, hosts.running.Load(), room)
	}
}

// servePluginService serves impl as the plugin service on a unix socket
// until the test ends, and returns the socket's address.
func servePluginService(t *testing.T, impl pluginpb.PluginServer) string {
	t.Helper()
	lis, addr := unixListener(t)
	srv := grpc.NewServer()
	pluginpb.RegisterPluginServer(srv, impl)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() { srv.Stop(); <-done })
	return addr
}
