package otelgoplugins

import (
	"context"
	"errors"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/goplugins/goplugins"
)

// Manager is what Observe reads of a manager; every
// *goplugins.Manager[Req, Resp] has it.
type Manager interface {
	Subscribe(fn func(goplugins.Event)) (cancel func())
	Metrics() goplugins.Metrics
}

// Observe records what m reports outside calls: a span per restart of a
// plugin's child process, from EventCrashed to EventRestarted (or
// EventLeftDown, or the plugin's removal), each failed attempt an event on
// it; the crash and restart counters; and, at each collection, the calls,
// the calls in flight and the breaker state of every plugin (from
// m.Metrics). stop ends the
// recording (a restart span still open ends then, as an error); it waits
// for nothing and may be called more than once. Observe a manager once:
// a second Observe counts its events twice.
func (i *Instrumentation) Observe(m Manager) (stop func(), err error) {
	o := &observer{i: i, open: map[string]trace.Span{}}
	reg, err := i.meter.RegisterCallback(func(ctx context.Context, obs metric.Observer) error {
		for name, pm := range m.Metrics().Plugins {
			set := i.measure(setKey{plugin: name}, "", "")
			obs.ObserveInt64(i.inFlight, pm.InFlight, set)
			obs.ObserveInt64(i.breaker, int64(pm.Breaker), set)
			obs.ObserveInt64(i.calls, int64(pm.Calls), set)
		}
		return nil
	}, i.inFlight, i.breaker, i.calls)
	if err != nil {
		return nil, err
	}
	cancel := m.Subscribe(o.event)
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			_ = reg.Unregister()
			o.endAll()
		})
	}, nil
}

// observer turns events into restart spans; events arrive on one
// goroutine, endAll on another.
type observer struct {
	i    *Instrumentation
	mu   sync.Mutex
	open map[string]trace.Span // restart spans by plugin
	done bool
}

func (o *observer) event(ev goplugins.Event) {
	ctx := context.Background()
	plugin := o.i.measure(setKey{plugin: ev.Plugin}, "", "")
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.done {
		return
	}
	switch ev.Kind {
	case goplugins.EventCrashed:
		o.i.crashes.Add(ctx, 1, plugin)
		o.end(ev, errors.New("a new crash before the restart finished"))
		_, span := o.i.tracer.Start(ctx, "goplugins.restart", trace.WithTimestamp(ev.Time),
			trace.WithAttributes(keyPlugin.String(ev.Plugin)))
		span.AddEvent("crashed", trace.WithTimestamp(ev.Time), trace.WithAttributes(errAttr(ev.Err)))
		o.open[ev.Plugin] = span
	case goplugins.EventRestartFailed:
		o.i.restarts.Add(ctx, 1, o.i.measure(setKey{plugin: ev.Plugin, a: "error"}, keyOutcome, ""))
		if span := o.open[ev.Plugin]; span != nil {
			span.AddEvent("restart-failed", trace.WithTimestamp(ev.Time),
				trace.WithAttributes(keyAttempt.Int(ev.Attempt), errAttr(ev.Err)))
		}
	case goplugins.EventRestarted:
		o.i.restarts.Add(ctx, 1, o.i.measure(setKey{plugin: ev.Plugin, a: "ok"}, keyOutcome, ""))
		o.end(ev, nil)
	case goplugins.EventLeftDown:
		o.end(ev, ev.Err)
	case goplugins.EventUnregistered:
		o.end(ev, errors.New("the plugin was removed before a restart succeeded"))
	}
}

// end ends the plugin's open restart span, if any, at the event's time.
func (o *observer) end(ev goplugins.Event, err error) {
	span := o.open[ev.Plugin]
	if span == nil {
		return
	}
	delete(o.open, ev.Plugin)
	span.SetAttributes(keyAttempt.Int(ev.Attempt))
	endSpan(span, err, trace.WithTimestamp(ev.Time))
}

func (o *observer) endAll() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.done = true
	for name, span := range o.open {
		span.SetStatus(codes.Error, "recording stopped before the restart finished")
		span.End()
		delete(o.open, name)
	}
}

func errAttr(err error) attribute.KeyValue {
	if err == nil {
		return attribute.String("error.message", "")
	}
	return attribute.String("error.message", err.Error())
}
