// Package spaninfo is what the tracing test plugins answer: the context of
// the plugin-side span of a call and of its parent.
package spaninfo

import (
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Span is the plugin-side span of a call, as a test plugin answers it.
type Span struct {
	TraceID, SpanID, ParentSpanID string
	ParentRemote                  bool
	Recording                     bool
}

// Of describes span, an SDK span; ok is false for a span of another kind.
func Of(span trace.Span) (s Span, ok bool) {
	ro, ok := span.(sdktrace.ReadOnlySpan)
	if !ok {
		return Span{}, false
	}
	return Span{
		TraceID:      ro.SpanContext().TraceID().String(),
		SpanID:       ro.SpanContext().SpanID().String(),
		ParentSpanID: ro.Parent().SpanID().String(),
		ParentRemote: ro.Parent().IsRemote(),
		Recording:    span.IsRecording(),
	}, true
}
