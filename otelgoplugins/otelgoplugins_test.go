package otelgoplugins_test

import (
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	goerrors "github.com/agilira/go-errors"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"go.uber.org/goleak"

	"github.com/goplugins/goplugins"
	"github.com/goplugins/goplugins/otelgoplugins"
	"github.com/goplugins/goplugins/otelgoplugins/internal/spaninfo"
)

// telemetry is an Instrumentation on SDK providers whose output a test reads.
type telemetry struct {
	inst   *otelgoplugins.Instrumentation
	spans  *tracetest.SpanRecorder
	tp     *sdktrace.TracerProvider
	reader *sdkmetric.ManualReader
}

func newTelemetry(t *testing.T) *telemetry {
	t.Helper()
	tel := &telemetry{spans: tracetest.NewSpanRecorder(), reader: sdkmetric.NewManualReader()}
	tel.tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(tel.spans))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(tel.reader))
	t.Cleanup(func() {
		_ = tel.tp.Shutdown(context.Background())
		_ = mp.Shutdown(context.Background())
	})
	inst, err := otelgoplugins.New(otelgoplugins.WithTracerProvider(tel.tp), otelgoplugins.WithMeterProvider(mp),
		otelgoplugins.WithPropagator(propagation.TraceContext{}))
	require.NoError(t, err)
	tel.inst = inst
	return tel
}

// manager returns a manager recorded by tel, shut down at cleanup.
func (tel *telemetry) manager(t *testing.T, opts ...goplugins.Option) *goplugins.Manager[int, int] {
	t.Helper()
	opts = append([]goplugins.Option{goplugins.WithInterceptors(tel.inst.Interceptor()),
		goplugins.WithPluginDefaults(goplugins.WithHealthCheck(goplugins.HealthConfig{Interval: -1}))}, opts...)
	m := goplugins.NewManager[int, int](opts...)
	t.Cleanup(func() { _ = m.Shutdown(context.Background()) })
	return m
}

// ended returns the ended spans of the given name.
func (tel *telemetry) ended(name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range tel.spans.Ended() {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	out := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes() {
		out[kv.Key] = kv.Value
	}
	return out
}

// plugin is an in-process plugin whose Execute a test sets.
type plugin struct {
	name, version string
	exec          func(ctx context.Context, req int) (int, error)
}

func (p *plugin) Info() goplugins.PluginInfo {
	return goplugins.PluginInfo{Name: p.name, Version: p.version}
}
func (p *plugin) Execute(ctx context.Context, req int) (int, error) {
	if p.exec == nil {
		return req, nil
	}
	return p.exec(ctx, req)
}
func (p *plugin) Health(context.Context) error { return nil }
func (p *plugin) Close(context.Context) error  { return nil }

func echo(version string) *plugin { return &plugin{name: "echo", version: version} }

// TestExecuteSpanIsChildOfCallerSpan: a call's span has the caller's span
// as parent and names the plugin value, its outcome and its retries.
func TestExecuteSpanIsChildOfCallerSpan(t *testing.T) {
	tel := newTelemetry(t)
	m := tel.manager(t, goplugins.WithPluginDefaults(goplugins.WithRetry(goplugins.RetryPolicy{MaxAttempts: 2, Backoff: time.Millisecond})))
	busy := goerrors.New("BUSY", "busy, try again").AsRetryable()
	attempts := 0
	require.NoError(t, m.Register(&plugin{name: "p", version: "1.2.3", exec: func(_ context.Context, req int) (int, error) {
		attempts++
		if req < 0 || attempts == 1 {
			return 0, busy
		}
		return req, nil
	}}))
	ctx, parent := tel.tp.Tracer("test").Start(context.Background(), "request")
	_, err := m.Execute(ctx, "p", 1)
	require.NoError(t, err)
	_, err = m.Execute(ctx, "p", -1)
	require.ErrorIs(t, err, busy)
	parent.End()

	spans := tel.ended("goplugins.execute")
	require.Len(t, spans, 2)
	for _, s := range spans {
		assert.Equal(t, parent.SpanContext().SpanID(), s.Parent().SpanID())
		assert.Equal(t, parent.SpanContext().TraceID(), s.SpanContext().TraceID())
		a := attrs(s)
		assert.Equal(t, "p", a["goplugins.plugin.name"].AsString())
		assert.Equal(t, "1.2.3", a["goplugins.plugin.version"].AsString())
		assert.Equal(t, int64(1), a["goplugins.plugin.generation"].AsInt64())
		assert.Equal(t, int64(1), a["goplugins.call.retries"].AsInt64())
		assert.NotContains(t, a, attribute.Key("goplugins.call.parked"), "not parked: no attribute")
	}
	ok, failed := attrs(spans[0]), attrs(spans[1])
	assert.Equal(t, codes.Unset, spans[0].Status().Code)
	assert.NotContains(t, ok, attribute.Key("error.type"))
	assert.Equal(t, "BUSY", failed["error.type"].AsString())
	assert.Equal(t, codes.Error, spans[1].Status().Code)
	assert.Contains(t, spans[1].Status().Description, "busy, try again")
}

// TestReloadSpanHasPhases: a reload's span carries its phases as events,
// and a failed reload's span its error and phase.
func TestReloadSpanHasPhases(t *testing.T) {
	tel := newTelemetry(t)
	m := tel.manager(t)
	require.NoError(t, m.Register(echo("1.0.0")))
	_, err := m.Reload(context.Background(), "echo", echo("1.1.0"))
	require.NoError(t, err)
	_, err = m.Reload(context.Background(), "echo", echo("not-semver"))
	require.ErrorIs(t, err, goplugins.ErrReloadFailed)

	spans := tel.ended("goplugins.reload")
	require.Len(t, spans, 2)
	var phases []string
	for _, ev := range spans[0].Events() {
		phases = append(phases, ev.Name)
	}
	assert.Equal(t, []string{"preflight", "drain", "dispatch", "commit"}, phases)
	a := attrs(spans[0])
	assert.Equal(t, "1.0.0", a["goplugins.reload.from"].AsString())
	assert.Equal(t, "1.1.0", a["goplugins.reload.to"].AsString())
	assert.Equal(t, int64(2), a["goplugins.plugin.generation"].AsInt64())
	assert.Equal(t, codes.Unset, spans[0].Status().Code)

	a = attrs(spans[1])
	assert.Equal(t, codes.Error, spans[1].Status().Code)
	assert.Equal(t, "preflight", a["goplugins.reload.failed_phase"].AsString())
	assert.Equal(t, string(goplugins.ErrorCode(goplugins.ErrReloadFailed)), a["error.type"].AsString())
	assert.Equal(t, "1.1.0", a["goplugins.plugin.version"].AsString(), "the version serving when it began")
}

// TestHostCallSpanAndMetrics: host calls, which reach the interceptor as
// goplugins.CallHostFunc, get a span and their own metrics.
func TestHostCallSpanAndMetrics(t *testing.T) {
	tel := newTelemetry(t)
	ic := tel.inst.Interceptor()
	refused := goerrors.New("NOT_GRANTED", "kv.put is not granted")
	for _, err := range []error{nil, refused} {
		c := &goplugins.Call{Kind: goplugins.CallHostFunc, Plugin: "p", Function: "kv.put", Version: "1.0.0", Generation: 1}
		got := ic(context.Background(), c, func(context.Context) error { return err })
		require.Equal(t, err, got)
	}
	spans := tel.ended("goplugins.host_call")
	require.Len(t, spans, 2)
	assert.Equal(t, "kv.put", attrs(spans[0])["goplugins.host.function"].AsString())
	assert.Equal(t, "NOT_GRANTED", attrs(spans[1])["error.type"].AsString())

	rm := tel.collect(t)
	assert.Equal(t, int64(1), sumOf(t, rm, "goplugins.host_calls", "goplugins.host.function", "kv.put", "error.type", ""))
	assert.Equal(t, int64(1), sumOf(t, rm, "goplugins.host_calls", "error.type", "NOT_GRANTED"))
	assert.Equal(t, uint64(2), histogramCount(t, rm, "goplugins.host_call.duration", "goplugins.host.function", "kv.put"))
}

func TestMain(m *testing.M) {
	// go-errors' time cache outlives every test by design; the OTel SDK's
	// batch processors and readers are shut down by each test.
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/agilira/go-timecache.(*TimeCache).updateLoop"))
}

// buildTraced builds the grpctraced test plugin.
func buildTraced(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "grpctraced")
	out, err := exec.Command("go", "build", "-o", bin, "./internal/grpctraced").CombinedOutput()
	require.NoError(t, err, "go build ./internal/grpctraced:\n%s", out)
	return bin
}

// TestPluginSpanIsChildOfHostSpan: through a real child process, the
// plugin-side span has the host's call span as its parent, in the same
// trace: for a gRPC child, otelgrpc's server span (the trace context in
// gRPC metadata); for a subprocess child of protocol version 2, the
// plugin's own span, started from the trace context in the call metadata.
func TestPluginSpanIsChildOfHostSpan(t *testing.T) {
	tests := []struct {
		name, plugin string
		start        func(t *testing.T) (goplugins.Plugin[string, spaninfo.Span], error)
	}{
		{"grpc", "traced", func(t *testing.T) (goplugins.Plugin[string, spaninfo.Span], error) {
			return goplugins.NewGRPCPlugin[string, spaninfo.Span](context.Background(), goplugins.GRPCConfig{Name: "traced", Command: buildTraced(t)})
		}},
		{"subprocess", "subtraced", func(t *testing.T) (goplugins.Plugin[string, spaninfo.Span], error) {
			bin := filepath.Join(t.TempDir(), "subtraced")
			out, err := exec.Command("go", "build", "-o", bin, "./internal/subtraced").CombinedOutput()
			require.NoError(t, err, "go build ./internal/subtraced:\n%s", out)
			return goplugins.NewSubprocess[string, spaninfo.Span](context.Background(), goplugins.SubprocessConfig{Name: "subtraced", Command: bin})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tel := newTelemetry(t)
			p, err := tt.start(t)
			require.NoError(t, err)
			m := goplugins.NewManager[string, spaninfo.Span](goplugins.WithInterceptors(tel.inst.Interceptor()))
			defer func() { require.NoError(t, m.Shutdown(context.Background())) }()
			require.NoError(t, m.Register(p))

			got, err := m.Execute(context.Background(), tt.plugin, "hello")
			require.NoError(t, err)
			spans := tel.ended("goplugins.execute")
			require.Len(t, spans, 1)
			host := spans[0].SpanContext()
			assert.True(t, got.Recording, "the plugin's span records")
			assert.Equal(t, host.TraceID().String(), got.TraceID, "one trace")
			assert.Equal(t, host.SpanID().String(), got.ParentSpanID, "the plugin-side span's parent is the host's span")
			assert.True(t, got.ParentRemote)
			assert.NotEqual(t, host.SpanID().String(), got.SpanID)
		})
	}
}

var errPlain = errors.New("plain")

// TestTraceContextOnlyForOutOfProcessPlugins: the call's trace context is
// put in the outgoing metadata for a plugin out of process, not for one in
// process, and not when the propagator writes nothing (the global default).
func TestTraceContextOnlyForOutOfProcessPlugins(t *testing.T) {
	tel := newTelemetry(t)
	silent, err := otelgoplugins.New(otelgoplugins.WithTracerProvider(tel.tp)) // the global propagator: writes nothing
	require.NoError(t, err)
	for _, tc := range []struct {
		name         string
		inst         *otelgoplugins.Instrumentation
		outOfProcess bool
		want         bool
	}{
		{"out of process", tel.inst, true, true},
		{"in process", tel.inst, false, false},
		{"propagator writes nothing", silent, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var sent []string
			var spanID string
			c := &goplugins.Call{Kind: goplugins.CallExecute, Plugin: "p", Version: "1.0.0", Generation: 1, OutOfProcess: tc.outOfProcess}
			require.NoError(t, tc.inst.Interceptor()(context.Background(), c, func(ctx context.Context) error {
				sent = sentTraceparent(ctx)
				spanID = trace.SpanContextFromContext(ctx).SpanID().String()
				return nil
			}))
			if !tc.want {
				assert.Empty(t, sent)
				return
			}
			require.Len(t, sent, 1)
			assert.Contains(t, sent[0], spanID, "the call's own span is the parent")
		})
	}
}

// TestExecuteSpanOfAParkedCall: a call parked behind a reload names the
// value that ran it and the time it was parked.
func TestExecuteSpanOfAParkedCall(t *testing.T) {
	tel := newTelemetry(t)
	c := &goplugins.Call{Kind: goplugins.CallExecute, Plugin: "p", Version: "1.0.0", Generation: 1}
	require.NoError(t, tel.inst.Interceptor()(context.Background(), c, func(context.Context) error {
		c.Version, c.Generation, c.Parked = "1.1.0", 2, 3*time.Millisecond // as the manager sets them
		return nil
	}))
	spans := tel.ended("goplugins.execute")
	require.Len(t, spans, 1)
	a := attrs(spans[0])
	assert.Equal(t, "1.1.0", a["goplugins.plugin.version"].AsString())
	assert.Equal(t, int64(2), a["goplugins.plugin.generation"].AsInt64())
	assert.Equal(t, 0.003, a["goplugins.call.parked"].AsFloat64())
	assert.NotContains(t, a, attribute.Key("goplugins.call.retries"), "no retry: no attribute")
}

// endCounter is a TracerProvider whose spans do not record and count
// their ends.
type endCounter struct {
	noop.TracerProvider
	started, ended atomic.Int32
}

func (p *endCounter) Tracer(string, ...trace.TracerOption) trace.Tracer { return countingTracer{p: p} }

type countingTracer struct {
	noop.Tracer
	p *endCounter
}

func (t countingTracer) Start(ctx context.Context, _ string, _ ...trace.SpanStartOption) (context.Context, trace.Span) {
	t.p.started.Add(1)
	s := countingSpan{p: t.p}
	return trace.ContextWithSpan(ctx, s), s
}

type countingSpan struct {
	noop.Span
	p *endCounter
}

func (s countingSpan) End(...trace.SpanEndOption) { s.p.ended.Add(1) }

// TestSpansEndWhenNotRecording: every span started is ended, also one
// that does not record (a sampled-out span).
func TestSpansEndWhenNotRecording(t *testing.T) {
	tp := &endCounter{}
	inst, err := otelgoplugins.New(otelgoplugins.WithTracerProvider(tp))
	require.NoError(t, err)
	m := goplugins.NewManager[int, int](goplugins.WithInterceptors(inst.Interceptor()))
	defer m.Shutdown(context.Background())
	require.NoError(t, m.Register(echo("1.0.0")))
	_, err = m.Execute(context.Background(), "echo", 1)
	require.NoError(t, err)
	_, err = m.Reload(context.Background(), "echo", echo("1.1.0"))
	require.NoError(t, err)
	assert.Equal(t, int32(2), tp.started.Load())
	assert.Equal(t, int32(2), tp.ended.Load())
}

// sentTraceparent returns the traceparent values ctx sends to a plugin.
func sentTraceparent(ctx context.Context) []string {
	if v, ok := goplugins.MetadataFromContext(ctx)["traceparent"]; ok {
		return []string{v}
	}
	return nil
}
