package goplugins

import (
	"slices"
	"sync/atomic"
	"time"
)

// Metrics is a snapshot of the manager's counters.
type Metrics struct {
	// Plugins holds the counters of each registered plugin by name.
	Plugins map[string]PluginMetrics
	// DroppedEvents counts events not delivered because a subscriber's
	// buffer was full (see WithEventBuffer).
	DroppedEvents uint64
}

// PluginMetrics are the counters of one plugin, summed over all its
// generations (a reload does not reset them).
type PluginMetrics struct {
	// Calls counts Execute calls that reached the plugin (retries are one call).
	Calls uint64
	// Errors counts the calls that ran on the plugin (see Calls) and
	// returned an error, whatever the cause: the plugin's error, a timeout,
	// a panic, the caller's ctx. Calls refused before reaching the plugin
	// (see Rejected) and calls parked by a reload whose ctx ended first are
	// not counted.
	Errors uint64
	// Timeouts counts calls that hit the plugin's timeout.
	Timeouts uint64
	// Panics counts calls in which the plugin panicked.
	Panics uint64
	// Rejected counts calls refused by the breaker or by an unhealthy status.
	Rejected uint64
	// Retries counts attempts after the first.
	Retries uint64
	// InFlight is the number of calls running now.
	InFlight int64
	// Generation is the number of the plugin value now serving: 1 after
	// Register, one more after each successful Reload.
	Generation uint64
	// Breaker is the breaker's state; Health the latest health status.
	Breaker BreakerState
	Health  HealthStatus
	// Latency is the histogram of sampled call durations.
	Latency LatencyHistogram
	// HostCalls counts the plugin's calls of host functions, by function
	// (see CallHost); functions it never called are absent, and the map is
	// nil when it called none.
	HostCalls map[string]HostCallMetrics
	// HostCallsRefused counts the plugin's host calls refused before the
	// function ran: not granted (see EventHostCallRefused), over
	// HostCallLimits.MaxConcurrent, or made through a closed handle.
	HostCallsRefused uint64
}

// HostCallMetrics are the counters of one plugin's calls of one host
// function, summed over the plugin's generations.
type HostCallMetrics struct {
	// Calls counts the calls admitted (granted and within the limit).
	Calls uint64
	// Errors counts those of them that failed, whatever the cause: the
	// function's error, a timeout, a panic, the caller's ctx.
	Errors uint64
}

// metrics returns the plugin's host-call counters (see PluginMetrics).
func (hp *hostPlugin) metrics() (map[string]HostCallMetrics, uint64) {
	var calls map[string]HostCallMetrics
	for name, c := range hp.counters {
		errs := c.errors.Load() // before calls: a call counts in before it fails
		if n := c.calls.Load(); n > 0 {
			if calls == nil {
				calls = make(map[string]HostCallMetrics)
			}
			calls[name] = HostCallMetrics{Calls: n, Errors: errs}
		}
	}
	return calls, hp.refused.Load()
}

// latencyBounds are the upper bounds of the histogram buckets: 1-2-5 steps
// from 1µs to 10s. Durations above the last bound go to an overflow bucket.
var latencyBounds = func() []time.Duration {
	var b []time.Duration
	for d := time.Microsecond; d <= 10*time.Second; d *= 10 {
		b = append(b, d, 2*d, 5*d)
	}
	return b[:len(b)-2]
}()

// LatencyHistogram is a fixed-bucket histogram of call durations. Only one
// call in SampleEvery is timed (see WithLatencySampling).
type LatencyHistogram struct {
	// Bounds are the buckets' inclusive upper bounds; Counts has one more
	// element than Bounds, its last counting durations above every bound.
	Bounds []time.Duration
	Counts []uint64
	// Count and Sum are over the sampled calls.
	Count uint64
	Sum   time.Duration
	// SampleEvery is the sampling period.
	SampleEvery int
}

// Quantile returns the upper bound of the bucket holding quantile q
// (0 <= q <= 1) of the sampled calls, or 0 when none was sampled. A quantile
// in the overflow bucket reports the largest bound.
func (h LatencyHistogram) Quantile(q float64) time.Duration {
	if h.Count == 0 {
		return 0
	}
	rank := uint64(q*float64(h.Count) + 0.5)
	rank = min(max(rank, 1), h.Count)
	var seen uint64
	for i, c := range h.Counts {
		if seen += c; seen >= rank {
			return h.Bounds[min(i, len(h.Bounds)-1)]
		}
	}
	return h.Bounds[len(h.Bounds)-1]
}

// histogram is the lock-free recording side of LatencyHistogram.
type histogram struct {
	counts [24]atomic.Uint64
	count  atomic.Uint64
	sum    atomic.Int64
}

func (h *histogram) observe(d time.Duration) {
	i := 0
	for i < len(latencyBounds) && d > latencyBounds[i] {
		i++
	}
	h.counts[i].Add(1)
	h.count.Add(1)
	h.sum.Add(int64(d))
}

func (h *histogram) snapshot(sampleEvery int) LatencyHistogram {
	s := LatencyHistogram{
		Bounds:      slices.Clone(latencyBounds),
		Counts:      make([]uint64, len(latencyBounds)+1),
		Count:       h.count.Load(),
		Sum:         time.Duration(h.sum.Load()),
		SampleEvery: sampleEvery,
	}
	for i := range s.Counts {
		s.Counts[i] = h.counts[i].Load()
	}
	return s
}

// pluginCounters are the per-plugin counters touched only off the success
// path (errors and rejections), plus the latency histogram.
type pluginCounters struct {
	errors, timeouts, panics, rejected, retries atomic.Uint64
	latency                                     histogram
}
