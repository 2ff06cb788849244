// Command grpctraced is a gRPC test plugin (for the tests of otelgoplugins) named "traced": it serves with
// otelgrpc's server handler, so each call runs in a plugin-side span that
// continues the trace context the host sent, and answers with that span's
// context and its parent's.
package main

import (
	"context"
	"fmt"
	"os"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"

	"github.com/goplugins/goplugins/otelgoplugins/internal/spaninfo"
	"github.com/goplugins/goplugins/sdk"
	"github.com/goplugins/goplugins/sdk/grpcplugin"
)

type traced struct{}

func (traced) Execute(ctx context.Context, _ string) (spaninfo.Span, error) {
	s, ok := spaninfo.Of(trace.SpanFromContext(ctx))
	if !ok {
		return s, sdk.Errorf("no_span", false, "the handler's ctx has no SDK span")
	}
	return s, nil
}

func main() {
	tp := sdktrace.NewTracerProvider()
	defer tp.Shutdown(context.Background())
	handler := otelgrpc.NewServerHandler(otelgrpc.WithTracerProvider(tp), otelgrpc.WithPropagators(propagation.TraceContext{}))
	err := grpcplugin.Serve[string, spaninfo.Span](traced{}, sdk.Info{Name: "traced", Version: "1.0.0"},
		grpcplugin.WithServerOptions(grpc.StatsHandler(handler)))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
