// Package otelgoplugins records what a goplugins Manager does as
// OpenTelemetry traces and metrics. It is a module of its own, so a host
// that does not import it does not link OpenTelemetry.
//
// One Instrumentation serves any number of managers:
//
//	inst, err := otelgoplugins.New() // the global providers, or WithTracerProvider, ...
//	m := goplugins.NewManager[Req, Resp](goplugins.WithInterceptors(inst.Interceptor()))
//	stop, err := inst.Observe(m) // restarts, in-flight calls, breaker states
//	defer stop()
//
// Traces: a span per call ("goplugins.execute"), per reload
// ("goplugins.reload", its phases as span events), per host call
// ("goplugins.host_call") and per restart of a plugin's child process
// ("goplugins.restart", from the manager's events). A call's span has the
// attributes goplugins.plugin.name, .version and .generation (of the value
// that ran it), goplugins.call.retries and goplugins.call.parked (seconds
// behind a reload; both only when not zero), and on failure the status
// Error and error.type (the goplugins error code, or _OTHER). A call's span is the
// child of the span in the caller's ctx. For a plugin out of process its
// trace context travels into the plugin, written by the propagator (see
// WithPropagator), so that the plugin's own spans join the host's trace:
// as call metadata (goplugins.ContextWithMetadata): gRPC metadata for the
// gRPC transport (otelgrpc's server handler continues it), and the
// METADATA frame of subprocess protocol version 2, which a subprocess
// plugin reads with sdk.Metadata.
//
// Metrics (instrument names; every one has the attribute
// goplugins.plugin.name, which is "_OTHER" for calls to a name no plugin
// has, since callers choose those):
//
//	goplugins.calls                calls that reached the plugin (Observe; PluginMetrics.Calls)
//	goplugins.call.errors          calls that failed, by error.type (the goplugins error code, or _OTHER)
//	goplugins.call.duration        call latency, in seconds
//	goplugins.calls.in_flight      calls running now (Observe)
//	goplugins.breaker.state        0 closed, 1 open, 2 half-open (Observe)
//	goplugins.crashes              child processes that ended unexpectedly (Observe)
//	goplugins.restarts             restart attempts, by goplugins.outcome ok or error (Observe)
//	goplugins.reload.pause         traffic pause of each reload (drain+dispatch+commit), in seconds, by goplugins.outcome
//	goplugins.host_calls           host calls, by goplugins.host.function and error.type (empty when it succeeded)
//	goplugins.host_call.duration   host call latency, in seconds, by goplugins.host.function
package otelgoplugins

import (
	"sync"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// scope is the instrumentation scope of the tracer and the meter.
const scope = "github.com/goplugins/goplugins/otelgoplugins"

// Attribute keys.
const (
	keyPlugin     = attribute.Key("goplugins.plugin.name")
	keyVersion    = attribute.Key("goplugins.plugin.version")
	keyGeneration = attribute.Key("goplugins.plugin.generation")
	keyOutcome    = attribute.Key("goplugins.outcome")
	keyRetries    = attribute.Key("goplugins.call.retries")
	keyParked     = attribute.Key("goplugins.call.parked") // seconds
	keyErrorType  = attribute.Key("error.type")
	keyFunction   = attribute.Key("goplugins.host.function")
	keyAttempt    = attribute.Key("goplugins.restart.attempt")
)

// Option configures New.
type Option func(*config)

type config struct {
	tp   trace.TracerProvider
	mp   metric.MeterProvider
	prop propagation.TextMapPropagator
}

// WithTracerProvider sets where spans go (default: otel.GetTracerProvider()
// when New runs).
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *config) {
		if tp != nil {
			c.tp = tp
		}
	}
}

// WithMeterProvider sets where measurements go (default:
// otel.GetMeterProvider() when New runs).
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(c *config) {
		if mp != nil {
			c.mp = mp
		}
	}
}

// WithPropagator sets how the trace context is written into a call's
// metadata for the plugin (default: otel.GetTextMapPropagator() when New
// runs; the global default writes nothing: set
// propagation.TraceContext{} there or here).
func WithPropagator(p propagation.TextMapPropagator) Option {
	return func(c *config) {
		if p != nil {
			c.prop = p
		}
	}
}

// Instrumentation turns a manager's calls, reloads, host calls and events
// into spans and measurements. It is safe for concurrent use. One may serve
// several managers whose plugins have different names; the series of
// managers that share plugin names mix, so give each its own (with
// providers or attributes that tell them apart).
type Instrumentation struct {
	tracer trace.Tracer
	meter  metric.Meter
	prop   propagation.TextMapPropagator
	inject bool // prop writes something

	callErrors, hostCalls, crashes, restarts metric.Int64Counter
	duration, hostDuration, reloadPause      metric.Float64Histogram
	inFlight, breaker                        metric.Int64ObservableGauge
	calls                                    metric.Int64ObservableCounter

	sets    sync.Map // setKey -> metric.MeasurementOption, built once a key
	plugins sync.Map // plugin name -> *pluginOptions
}

// pluginOptions are the options of a call's span and measurements for one
// plugin value, built once: a call allocates nothing for them.
type pluginOptions struct {
	version    string
	generation uint64
	metricName string               // the plugin's name in measurements
	attrs      []attribute.KeyValue // of the span
	record     []metric.RecordOption
}

// unknownPlugin is the name measurements give calls to a name no plugin
// has: callers choose those names, and a series each would be unbounded.
const unknownPlugin = "_OTHER"

// plugin returns the options for the plugin value, made anew after a
// reload. Generation 0 (no such plugin) is not cached.
func (i *Instrumentation) plugin(name, version string, generation uint64) *pluginOptions {
	if generation == 0 {
		return &pluginOptions{metricName: unknownPlugin, attrs: []attribute.KeyValue{keyPlugin.String(name)},
			record: []metric.RecordOption{i.measure(setKey{plugin: unknownPlugin}, "", "")}}
	}
	if p, ok := i.plugins.Load(name); ok {
		if p := p.(*pluginOptions); p.generation == generation && p.version == version {
			return p
		}
	}
	set := i.measure(setKey{plugin: name}, "", "")
	p := &pluginOptions{
		version: version, generation: generation, metricName: name,
		attrs:  []attribute.KeyValue{keyPlugin.String(name), keyVersion.String(version), keyGeneration.Int64(int64(generation))},
		record: []metric.RecordOption{set},
	}
	i.plugins.Store(name, p)
	return p
}

// New returns an Instrumentation configured by opts. It fails only if an
// instrument cannot be created (the MeterProvider refused it).
func New(opts ...Option) (*Instrumentation, error) {
	c := config{tp: otel.GetTracerProvider(), mp: otel.GetMeterProvider(), prop: otel.GetTextMapPropagator()}
	for _, o := range opts {
		o(&c)
	}
	i := &Instrumentation{
		tracer: c.tp.Tracer(scope),
		meter:  c.mp.Meter(scope),
		prop:   c.prop,
		inject: len(c.prop.Fields()) > 0,
	}
	return i, i.instruments()
}

// instruments creates the instruments; the error names the first that failed.
func (i *Instrumentation) instruments() error {
	var errs []error
	counter := func(name, unit, desc string) metric.Int64Counter {
		c, err := i.meter.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	seconds := func(name, desc string) metric.Float64Histogram {
		h, err := i.meter.Float64Histogram(name, metric.WithUnit("s"), metric.WithDescription(desc),
			metric.WithExplicitBucketBoundaries(1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1, 5, 10))
		errs = append(errs, err)
		return h
	}
	gauge := func(name, unit, desc string) metric.Int64ObservableGauge {
		g, err := i.meter.Int64ObservableGauge(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return g
	}
	calls, err := i.meter.Int64ObservableCounter("goplugins.calls", metric.WithUnit("{call}"),
		metric.WithDescription("Calls that reached a plugin (goplugins.PluginMetrics.Calls)."))
	i.calls = calls
	errs = append(errs, err)
	i.callErrors = counter("goplugins.call.errors", "{call}", "Calls to a plugin that failed, by error.type.")
	i.duration = seconds("goplugins.call.duration", "Latency of calls to a plugin.")
	i.inFlight = gauge("goplugins.calls.in_flight", "{call}", "Calls running on a plugin now.")
	i.breaker = gauge("goplugins.breaker.state", "{state}", "The plugin's circuit breaker: 0 closed, 1 open, 2 half-open.")
	i.crashes = counter("goplugins.crashes", "{crash}", "Child processes of a plugin that ended unexpectedly.")
	i.restarts = counter("goplugins.restarts", "{restart}", "Restart attempts of a plugin's child process, by goplugins.outcome.")
	i.reloadPause = seconds("goplugins.reload.pause", "Traffic pause of a reload: drain, dispatch and commit.")
	i.hostCalls = counter("goplugins.host_calls", "{call}", "Calls from a plugin to a host function.")
	i.hostDuration = seconds("goplugins.host_call.duration", "Latency of host calls.")
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// setKey identifies one attribute set of a measurement.
type setKey struct{ plugin, a, b string }

// measure returns the measurement option for the attributes plugin (and
// the optional ka=a, kb=b), built once: a call allocates nothing for it.
func (i *Instrumentation) measure(k setKey, ka, kb attribute.Key) metric.MeasurementOption {
	if o, ok := i.sets.Load(k); ok {
		return o.(metric.MeasurementOption)
	}
	kv := []attribute.KeyValue{keyPlugin.String(k.plugin)}
	if ka != "" {
		kv = append(kv, ka.String(k.a))
	}
	if kb != "" {
		kv = append(kv, kb.String(k.b))
	}
	o, _ := i.sets.LoadOrStore(k, metric.WithAttributeSet(attribute.NewSet(kv...)))
	return o.(metric.MeasurementOption)
}
