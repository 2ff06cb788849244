package otelgoplugins_test

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

func BenchmarkRawSpan(b *testing.B) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()))
	defer tp.Shutdown(context.Background())
	tr := tp.Tracer("x")
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		_, s := tr.Start(ctx, "x")
		s.End()
	}
}

func BenchmarkRawInject(b *testing.B) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()))
	defer tp.Shutdown(context.Background())
	ctx, s := tp.Tracer("x").Start(context.Background(), "x")
	defer s.End()
	b.ReportAllocs()
	for b.Loop() {
		c := propagation.MapCarrier{}
		propagation.TraceContext{}.Inject(ctx, c)
	}
}
