// Command subtraced is a subprocess test plugin (for the tests of
// otelgoplugins) named "subtraced": it continues the trace context the host
// sent in the call metadata (sdk.Metadata) in a span of its own, and
// answers with that span's context and its parent's (subprocess protocol
// version 2).
package main

import (
	"context"
	"fmt"
	"os"

	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/goplugins/goplugins/otelgoplugins/internal/spaninfo"
	"github.com/goplugins/goplugins/sdk"
)

type traced struct{ tracer trace.Tracer }

func (p traced) Execute(ctx context.Context, _ string) (spaninfo.Span, error) {
	ctx = propagation.TraceContext{}.Extract(ctx, propagation.MapCarrier(sdk.Metadata(ctx)))
	_, span := p.tracer.Start(ctx, "plugin.work")
	defer span.End()
	s, _ := spaninfo.Of(span) // the SDK's tracer makes SDK spans
	return s, nil
}

func main() {
	tp := sdktrace.NewTracerProvider()
	defer tp.Shutdown(context.Background())
	if err := sdk.Serve[string, spaninfo.Span](traced{tracer: tp.Tracer("subtraced")}, sdk.Info{Name: "subtraced", Version: "1.0.0"}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
