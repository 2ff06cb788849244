package otelgoplugins_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/goplugins/goplugins"
)

func (tel *telemetry) collect(t *testing.T) metricdata.ResourceMetrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, tel.reader.Collect(context.Background(), &rm))
	return rm
}

// matches reports whether set has every key=value of kv (pairs).
func matches(set attribute.Set, kv []string) bool {
	for i := 0; i+1 < len(kv); i += 2 {
		v, ok := set.Value(attribute.Key(kv[i]))
		if !ok || v.Emit() != kv[i+1] {
			return false
		}
	}
	return true
}

func find(t *testing.T, rm metricdata.ResourceMetrics, name string) metricdata.Aggregation {
	t.Helper()
	for _, sm := range rm.ScopeMetrics {
		for _, mt := range sm.Metrics {
			if mt.Name == name {
				return mt.Data
			}
		}
	}
	t.Fatalf("no metric %s", name)
	return nil
}

// sumOf returns the sum of the counter's points whose attributes match kv.
func sumOf(t *testing.T, rm metricdata.ResourceMetrics, name string, kv ...string) int64 {
	t.Helper()
	var total int64
	switch d := find(t, rm, name).(type) {
	case metricdata.Sum[int64]:
		for _, p := range d.DataPoints {
			if matches(p.Attributes, kv) {
				total += p.Value
			}
		}
	case metricdata.Gauge[int64]: // the observed ones
		for _, p := range d.DataPoints {
			if matches(p.Attributes, kv) {
				total += p.Value
			}
		}
	default:
		t.Fatalf("%s is a %T", name, d)
	}
	return total
}

func histogramCount(t *testing.T, rm metricdata.ResourceMetrics, name string, kv ...string) uint64 {
	t.Helper()
	var n uint64
	for _, p := range find(t, rm, name).(metricdata.Histogram[float64]).DataPoints {
		if matches(p.Attributes, kv) {
			n += p.Count
		}
	}
	return n
}

// TestCallMetrics: calls, errors by code and the latency histogram, per
// plugin; in-flight calls and the breaker state once observed.
func TestCallMetrics(t *testing.T) {
	tel := newTelemetry(t)
	m := tel.manager(t, goplugins.WithPluginDefaults(goplugins.WithBreaker(goplugins.BreakerConfig{ConsecutiveFailures: 2, OpenTimeout: time.Hour})))
	stop, err := tel.inst.Observe(m)
	require.NoError(t, err)
	defer stop()
	entered, release := make(chan struct{}), make(chan struct{})
	require.NoError(t, m.Register(&plugin{name: "p", version: "1.0.0", exec: func(_ context.Context, req int) (int, error) {
		switch req {
		case 1:
			return 0, errPlain
		case 2:
			entered <- struct{}{}
			<-release
		}
		return req, nil
	}}))
	require.NoError(t, m.Register(echo("1.0.0")))
	ctx := context.Background()
	for _, req := range []int{0, 0, 1} {
		_, _ = m.Execute(ctx, "p", req)
	}
	_, _ = m.Execute(ctx, "missing", 0)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = m.Execute(ctx, "p", 2)
	}()
	<-entered

	rm := tel.collect(t)
	assert.Equal(t, int64(3), sumOf(t, rm, "goplugins.calls", "goplugins.plugin.name", "p"), "the running call is counted when it ends")
	assert.Equal(t, int64(0), sumOf(t, rm, "goplugins.calls", "goplugins.plugin.name", "echo"))
	assert.Equal(t, int64(1), sumOf(t, rm, "goplugins.call.errors", "goplugins.plugin.name", "p", "error.type", "_OTHER"))
	assert.Equal(t, int64(1), sumOf(t, rm, "goplugins.call.errors", "goplugins.plugin.name", "_OTHER", "error.type", string(goplugins.ErrorCode(goplugins.ErrNotFound))),
		"a name no plugin has is measured as _OTHER: callers choose it")
	assert.Zero(t, sumOf(t, rm, "goplugins.call.errors", "goplugins.plugin.name", "missing"))
	assert.Equal(t, uint64(3), histogramCount(t, rm, "goplugins.call.duration", "goplugins.plugin.name", "p"))
	assert.Equal(t, int64(1), sumOf(t, rm, "goplugins.calls.in_flight", "goplugins.plugin.name", "p"))
	assert.Equal(t, int64(0), sumOf(t, rm, "goplugins.calls.in_flight", "goplugins.plugin.name", "echo"))
	assert.Equal(t, int64(goplugins.BreakerClosed), sumOf(t, rm, "goplugins.breaker.state", "goplugins.plugin.name", "p"))
	close(release)
	<-done

	for range 2 {
		_, _ = m.Execute(ctx, "p", 1)
	}
	rm = tel.collect(t)
	assert.Equal(t, int64(goplugins.BreakerOpen), sumOf(t, rm, "goplugins.breaker.state", "goplugins.plugin.name", "p"))
	assert.Equal(t, int64(0), sumOf(t, rm, "goplugins.calls.in_flight", "goplugins.plugin.name", "p"))
}

// TestReloadPauseMetric: each reload that ran records its traffic pause,
// by outcome.
func TestReloadPauseMetric(t *testing.T) {
	tel := newTelemetry(t)
	m := tel.manager(t)
	require.NoError(t, m.Register(echo("1.0.0")))
	_, err := m.Reload(context.Background(), "echo", echo("1.1.0"))
	require.NoError(t, err)
	_, err = m.Reload(context.Background(), "echo", echo("1.1"))
	require.Error(t, err)
	rm := tel.collect(t)
	assert.Equal(t, uint64(1), histogramCount(t, rm, "goplugins.reload.pause", "goplugins.plugin.name", "echo", "goplugins.outcome", "ok"))
	assert.Equal(t, uint64(1), histogramCount(t, rm, "goplugins.reload.pause", "goplugins.plugin.name", "echo", "goplugins.outcome", "error"))
}

// events is a Manager that sends the events a test gives it.
type events struct {
	mu sync.Mutex
	fn func(goplugins.Event)
}

func (e *events) Subscribe(fn func(goplugins.Event)) func() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.fn = fn
	return func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		e.fn = nil
	}
}

func (e *events) Metrics() goplugins.Metrics { return goplugins.Metrics{} }

func (e *events) send(evs ...goplugins.Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, ev := range evs {
		if e.fn != nil {
			e.fn(ev)
		}
	}
}

// TestRestartSpans: a restart span runs from EventCrashed to EventRestarted
// (or EventLeftDown), each failed attempt an event on it; the crash and
// restart counters count them.
func TestRestartSpans(t *testing.T) {
	tel := newTelemetry(t)
	src := &events{}
	stop, err := tel.inst.Observe(src)
	require.NoError(t, err)
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	crash := errors.New("exit status 2")
	src.send(
		goplugins.Event{Kind: goplugins.EventCrashed, Plugin: "a", Time: at(0), Err: crash, Attempt: 0},
		goplugins.Event{Kind: goplugins.EventRestartFailed, Plugin: "a", Time: at(10), Attempt: 1, Err: errors.New("fork failed")},
		goplugins.Event{Kind: goplugins.EventRestarted, Plugin: "a", Time: at(30), Attempt: 2},
		goplugins.Event{Kind: goplugins.EventCrashed, Plugin: "b", Time: at(5), Err: crash},
		goplugins.Event{Kind: goplugins.EventRestartFailed, Plugin: "b", Time: at(15), Attempt: 1, Err: errors.New("fork failed")},
		goplugins.Event{Kind: goplugins.EventLeftDown, Plugin: "b", Time: at(20), Attempt: 1, Err: errors.New("no attempts left")},
		goplugins.Event{Kind: goplugins.EventCrashed, Plugin: "c", Time: at(40), Err: crash},
	)
	stop()
	stop() // a second call changes nothing
	src.send(goplugins.Event{Kind: goplugins.EventRestarted, Plugin: "c", Time: at(50), Attempt: 1})

	spans := tel.ended("goplugins.restart")
	require.Len(t, spans, 3)
	byPlugin := map[string]int{}
	for i, s := range spans {
		byPlugin[attrs(s)["goplugins.plugin.name"].AsString()] = i
	}
	a, b, c := spans[byPlugin["a"]], spans[byPlugin["b"]], spans[byPlugin["c"]]
	assert.Equal(t, at(0), a.StartTime())
	assert.Equal(t, at(30), a.EndTime())
	assert.Equal(t, codes.Unset, a.Status().Code)
	require.Len(t, a.Events(), 2)
	assert.Equal(t, "crashed", a.Events()[0].Name)
	assert.Equal(t, "restart-failed", a.Events()[1].Name)
	assert.Equal(t, int64(2), attrs(a)["goplugins.restart.attempt"].AsInt64())

	assert.Equal(t, at(20), b.EndTime())
	assert.Equal(t, codes.Error, b.Status().Code)
	assert.Contains(t, b.Status().Description, "no attempts left")
	assert.Equal(t, codes.Error, c.Status().Code, "ended by stop")

	rm := tel.collect(t)
	assert.Equal(t, int64(3), sumOf(t, rm, "goplugins.crashes"))
	assert.Equal(t, int64(1), sumOf(t, rm, "goplugins.restarts", "goplugins.outcome", "ok"))
	assert.Equal(t, int64(2), sumOf(t, rm, "goplugins.restarts", "goplugins.outcome", "error"))
}
