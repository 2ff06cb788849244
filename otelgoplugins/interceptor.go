package otelgoplugins

import (
	"context"
	"errors"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/goplugins/goplugins"
)

// Interceptor returns the goplugins.Interceptor that records calls,
// reloads and host calls (see the package doc). Give it to
// goplugins.WithInterceptors, first if other interceptors should run inside
// its span.
func (i *Instrumentation) Interceptor() goplugins.Interceptor {
	return i.intercept
}

func (i *Instrumentation) intercept(ctx context.Context, c *goplugins.Call, next goplugins.Handler) error {
	switch c.Kind {
	case goplugins.CallReload:
		return i.reload(ctx, c, next)
	case goplugins.CallHostFunc:
		return i.hostCall(ctx, c, next)
	}
	return i.execute(ctx, c, next)
}

// execute records one Execute: a span, its trace context passed on to the
// plugin, and the call metrics.
func (i *Instrumentation) execute(ctx context.Context, c *goplugins.Call, next goplugins.Handler) error {
	p := i.plugin(c.Plugin, c.Version, c.Generation)
	start := time.Now()
	ctx, span := i.tracer.Start(ctx, "goplugins.execute", clientSpan...)
	recording := span.IsRecording()
	if recording { // set here, not as a start option: that would copy them once more
		span.SetAttributes(p.attrs...)
	}
	if c.OutOfProcess {
		ctx = i.propagate(ctx)
	}
	err := next(ctx)
	d := time.Since(start)
	if recording {
		if c.Generation != p.generation { // parked behind a reload, run by the next value
			span.SetAttributes(keyVersion.String(c.Version), keyGeneration.Int64(int64(c.Generation)))
		}
		if c.Retries > 0 {
			span.SetAttributes(keyRetries.Int(c.Retries))
		}
		if c.Parked > 0 {
			span.SetAttributes(keyParked.Float64(c.Parked.Seconds()))
		}
		endSpan(span, err)
	} else {
		span.End()
	}
	i.duration.Record(ctx, d.Seconds(), p.record...)
	if err != nil {
		i.callErrors.Add(ctx, 1, i.measure(setKey{plugin: p.metricName, a: errorType(err)}, keyErrorType, ""))
	}
	return err
}

var clientSpan = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindClient)}

// propagate returns ctx carrying its trace context as call metadata
// (goplugins.ContextWithMetadata): the subprocess transport sends it in a
// METADATA frame, the gRPC transport as gRPC metadata, where a plugin's
// propagator reads it (propagation.MapCarrier(sdk.Metadata(ctx)) in a
// subprocess plugin, otelgrpc's server handler in a gRPC one).
func (i *Instrumentation) propagate(ctx context.Context) context.Context {
	if !i.inject || !trace.SpanContextFromContext(ctx).IsValid() {
		return ctx
	}
	carrier := propagation.MapCarrier{}
	i.prop.Inject(ctx, carrier)
	return goplugins.ContextWithMetadata(ctx, carrier)
}

// reload records one Reload: a span with its phases as events, and the
// traffic pause.
func (i *Instrumentation) reload(ctx context.Context, c *goplugins.Call, next goplugins.Handler) error {
	start := time.Now()
	ctx, span := i.tracer.Start(ctx, "goplugins.reload", trace.WithTimestamp(start),
		trace.WithAttributes(keyPlugin.String(c.Plugin), keyVersion.String(c.Version), keyGeneration.Int64(int64(c.Generation))))
	err := next(ctx)
	rep, ran := c.Response.(goplugins.ReloadReport)
	if ran && rep.Generation != 0 { // 0: no such plugin, nothing ran
		pause := rep.Drain + rep.Dispatch + rep.Commit
		i.reloadPause.Record(ctx, pause.Seconds(), i.measure(setKey{plugin: c.Plugin, a: outcome(err)}, keyOutcome, ""))
		if span.IsRecording() {
			reloadEvents(span, start, rep)
		}
	}
	var re *goplugins.ReloadError
	if span.IsRecording() && errors.As(err, &re) {
		span.SetAttributes(attribute.String("goplugins.reload.failed_phase", re.Phase))
	}
	endSpan(span, err)
	return err
}

// reloadEvents adds the report to the span: the phases as events (placed
// back to back from the span's start; each carries its exact duration) and
// the parked calls as attributes.
func reloadEvents(span trace.Span, start time.Time, rep goplugins.ReloadReport) {
	span.SetAttributes(
		attribute.String("goplugins.reload.from", rep.From), attribute.String("goplugins.reload.to", rep.To),
		keyGeneration.Int64(int64(rep.Generation)),
		attribute.Int("goplugins.reload.parked_calls", rep.ParkedCalls),
		attribute.Float64("goplugins.reload.park_p99", rep.ParkP99.Seconds()),
		attribute.Float64("goplugins.reload.park_max", rep.ParkMax.Seconds()),
		attribute.Int("goplugins.reload.gave_up", rep.GaveUp),
		attribute.Int("goplugins.reload.bytes_handed_over", rep.BytesHandedOver))
	at := start
	for _, ph := range []struct {
		name string
		d    time.Duration
	}{{"preflight", rep.Preflight}, {"drain", rep.Drain}, {"dispatch", rep.Dispatch}, {"commit", rep.Commit}} {
		if ph.d == 0 {
			continue // the phase did not run
		}
		at = at.Add(ph.d)
		span.AddEvent(ph.name, trace.WithTimestamp(at), trace.WithAttributes(attribute.Float64("goplugins.phase.duration", ph.d.Seconds())))
	}
}

// hostCall records one call from a plugin to a host function.
func (i *Instrumentation) hostCall(ctx context.Context, c *goplugins.Call, next goplugins.Handler) error {
	start := time.Now()
	ctx, span := i.tracer.Start(ctx, "goplugins.host_call", trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(keyPlugin.String(c.Plugin), keyFunction.String(c.Function),
			keyVersion.String(c.Version), keyGeneration.Int64(int64(c.Generation))))
	err := next(ctx)
	d := time.Since(start)
	endSpan(span, err)
	code := ""
	if err != nil {
		code = errorType(err)
	}
	i.hostCalls.Add(ctx, 1, i.measure(setKey{plugin: c.Plugin, a: c.Function, b: code}, keyFunction, keyErrorType))
	i.hostDuration.Record(ctx, d.Seconds(), i.measure(setKey{plugin: c.Plugin, a: c.Function}, keyFunction, ""))
	return err
}

// endSpan sets the outcome and ends span: on failure the status Error,
// with the error's text, and the attribute error.type; else status Unset.
func endSpan(span trace.Span, err error, opts ...trace.SpanEndOption) {
	if err != nil {
		span.SetAttributes(keyErrorType.String(errorType(err)))
		span.SetStatus(codes.Error, err.Error())
	}
	span.End(opts...)
}

// errorType is the goplugins error code of err, or "_OTHER" (the
// OpenTelemetry convention) for an error without one.
func errorType(err error) string {
	if code := goplugins.ErrorCode(err); code != "" {
		return string(code)
	}
	return "_OTHER"
}

// outcome is the value of the goplugins.outcome attribute.
func outcome(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}
