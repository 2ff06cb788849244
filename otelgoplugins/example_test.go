package otelgoplugins_test

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/goplugins/goplugins"
	"github.com/goplugins/goplugins/otelgoplugins"
)

// A manager recorded by an Instrumentation: a call and a reload, each a
// span (here kept in memory; a host exports them).
func Example() {
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	mp := sdkmetric.NewMeterProvider()
	defer tp.Shutdown(context.Background())
	defer mp.Shutdown(context.Background())

	inst, err := otelgoplugins.New(otelgoplugins.WithTracerProvider(tp), otelgoplugins.WithMeterProvider(mp),
		otelgoplugins.WithPropagator(propagation.TraceContext{}))
	if err != nil {
		fmt.Println(err)
		return
	}
	m := goplugins.NewManager[int, int](goplugins.WithInterceptors(inst.Interceptor()))
	defer m.Shutdown(context.Background())
	stop, err := inst.Observe(m)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stop()

	_ = m.Register(echo("1.0.0"))
	_, _ = m.Execute(context.Background(), "echo", 1)
	_, _ = m.Reload(context.Background(), "echo", echo("1.1.0"))
	for _, s := range spans.Ended() {
		fmt.Println(s.Name(), len(s.Events()), "events")
	}
	// Output:
	// goplugins.execute 0 events
	// goplugins.reload 4 events
}
