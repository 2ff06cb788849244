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

	"github.com/goplugins/goplugins/sdk"
	"github.com/goplugins/goplugins/sdk/grpcplugin"
)

// Span is the plugin-side span of a call, as the plugin answers it.
type Span struct {
	TraceID, SpanID, ParentSpanID string
	ParentRemote                  bool
	Recording                     bool
}

type traced struct{}

func (traced) Execute(ctx context.Context, _ string) (Span, error) {
	span := trace.SpanFromContext(ctx)
	ro, ok := span.(sdktrace.ReadOnlySpan)
	if !ok {
		return Span{}, sdk.Errorf("no_span", false, "the handler's ctx has no SDK span")
	}
	return Span{
		TraceID:      ro.SpanContext().TraceID().String(),
		SpanID:       ro.SpanContext().SpanID().String(),
		ParentSpanID: ro.Parent().SpanID().String(),
		ParentRemote: ro.Parent().IsRemote(),
		Recording:    span.IsRecording(),
	}, nil
}

func main() {
	tp := sdktrace.NewTracerProvider()
	defer tp.Shutdown(context.Background())
	handler := otelgrpc.NewServerHandler(otelgrpc.WithTracerProvider(tp), otelgrpc.WithPropagators(propagation.TraceContext{}))
	err := grpcplugin.Serve[string, Span](traced{}, sdk.Info{Name: "traced", Version: "1.0.0"},
		grpcplugin.WithServerOptions(grpc.StatsHandler(handler)))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
