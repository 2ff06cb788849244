package otelgoplugins_test

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/goplugins/goplugins"
	"github.com/goplugins/goplugins/otelgoplugins"
)

// benchManager returns a manager serving an in-process echo plugin, with
// opts.
func benchManager(b *testing.B, opts ...goplugins.Option) *goplugins.Manager[int, int] {
	opts = append(opts, goplugins.WithPluginDefaults(goplugins.WithHealthCheck(goplugins.HealthConfig{Interval: -1})))
	m := goplugins.NewManager[int, int](opts...)
	if err := m.Register(echo("1.0.0")); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = m.Shutdown(context.Background()) })
	return m
}

func runExecute(b *testing.B, m *goplugins.Manager[int, int]) {
	ctx := context.Background()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := m.Execute(ctx, "echo", i); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkExecute is the baseline of BenchmarkExecuteTraced: no interceptor.
func BenchmarkExecute(b *testing.B) {
	runExecute(b, benchManager(b))
}

// BenchmarkExecuteTraced: every call traced (sampled, its span exported
// through a batch processor to a no-op exporter), measured (SDK meter
// provider) and its trace context injected for the plugin.
func BenchmarkExecuteTraced(b *testing.B) {
	runExecute(b, benchManager(b, goplugins.WithInterceptors(tracedInstrumentation(b, sdktrace.AlwaysSample()).Interceptor())))
}

// BenchmarkExecuteTracedUnsampled: as BenchmarkExecuteTraced, with the
// sampler dropping every span (metrics still recorded).
func BenchmarkExecuteTracedUnsampled(b *testing.B) {
	runExecute(b, benchManager(b, goplugins.WithInterceptors(tracedInstrumentation(b, sdktrace.NeverSample()).Interceptor())))
}

func tracedInstrumentation(b *testing.B, sampler sdktrace.Sampler) *otelgoplugins.Instrumentation {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sampler), sdktrace.WithBatcher(tracetest.NewNoopExporter()))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	b.Cleanup(func() {
		_ = tp.Shutdown(context.Background())
		_ = mp.Shutdown(context.Background())
	})
	inst, err := otelgoplugins.New(otelgoplugins.WithTracerProvider(tp), otelgoplugins.WithMeterProvider(mp),
		otelgoplugins.WithPropagator(propagation.TraceContext{}))
	if err != nil {
		b.Fatal(err)
	}
	return inst
}

// BenchmarkSDKSpan is what the SDK alone costs for one span (start and end,
// the batch processor and no-op exporter of BenchmarkExecuteTraced): the
// floor under BenchmarkExecuteTraced's overhead.
func BenchmarkSDKSpan(b *testing.B) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()))
	b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	tr := tp.Tracer("bench")
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		_, s := tr.Start(ctx, "span")
		s.End()
	}
}
