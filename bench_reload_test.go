package goplugins

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkReloadPause reloads a stateless in-process plugin over and over
// while callers run Execute without pause, and reports how long the calls
// that arrived during a reload were parked (p50, p99, over every parked call
// of every reload), how many calls were parked per reload, and how many
// calls failed. Budget: p99 at most 1 ms, no failed call.
func BenchmarkReloadPause(b *testing.B) {
	const callers = 3
	m := NewManager[int, int](WithPluginDefaults(WithHealthCheck(HealthConfig{Interval: -1})))
	b.Cleanup(func() { m.Shutdown(context.Background()) })
	if err := m.Register(newEcho("echo", "1.0.0")); err != nil {
		b.Fatal(err)
	}
	var (
		failed  atomic.Int64
		stop    = make(chan struct{})
		wg      sync.WaitGroup
		started = make(chan struct{}, callers)
	)
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for first := true; ; first = false {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := m.Execute(context.Background(), "echo", i); err != nil {
					failed.Add(1)
				}
				if first {
					started <- struct{}{}
				}
			}
		}()
	}
	for range callers {
		<-started
	}

	ctx := context.Background()
	var parked []time.Duration
	for b.Loop() {
		// The generation being replaced keeps its gate after the commit: it
		// holds the park time of every call this reload parked.
		old := m.reg.Load().entries["echo"].gen.Load()
		if _, err := m.Reload(ctx, "echo", newEcho("echo", "1.0.1")); err != nil {
			b.Fatal(err)
		}
		p, _ := old.gate.Load().parkTimes()
		parked = append(parked, p...)
	}
	b.StopTimer()
	close(stop)
	wg.Wait()

	var p50, p99 time.Duration
	if len(parked) > 0 {
		slices.Sort(parked)
		p50, p99 = parked[len(parked)/2], parked[len(parked)*99/100]
	}
	b.ReportMetric(float64(p50.Nanoseconds()), "p50-park-ns")
	b.ReportMetric(float64(p99.Nanoseconds()), "p99-park-ns")
	b.ReportMetric(float64(len(parked))/float64(b.N), "parked/op")
	b.ReportMetric(float64(failed.Load()), "failed-calls")
}
