package benchmarks

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"

	"github.com/goplugins/goplugins"
	"github.com/goplugins/goplugins/benchmarks/shared"
)

// BenchmarkSpread spreads 64-byte calls from spreadCallers goroutines over
// N children, mostly idle, goplugins and go-plugin in the same run, in
// alternating blocks so that both see the same load. One op is one call
// of each. It reports each one's calls/s and p99 latency in µs, and the
// host's threads at the end. Every child is stopped before it returns.
func BenchmarkSpread(b *testing.B) {
	for _, n := range []int{200, 500} {
		// The children are started once for every b.N the sub-benchmark
		// is run with, and stopped when it is done.
		ours, stopOurs := startSpreadGoplugins(b, n)
		theirs, stopTheirs := startSpreadGoPlugin(b, n)
		b.Run(map[int]string{200: "N200", 500: "N500"}[n], func(b *testing.B) {
			ctx := context.Background()
			var oursLat, theirsLat []time.Duration
			var oursT, theirsT time.Duration
			b.ResetTimer()
			for done := 0; done < b.N; done += spreadBlock {
				k := min(spreadBlock, b.N-done)
				lat, d := spread(b, k, n, func(i int) error {
					_, err := ours[i].Execute(ctx, msg64)
					return err
				})
				oursLat, oursT = append(oursLat, lat...), oursT+d
				lat, d = spread(b, k, n, func(i int) error {
					_, err := theirs[i].Echo(ctx, []byte(msg64))
					return err
				})
				theirsLat, theirsT = append(theirsLat, lat...), theirsT+d
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/oursT.Seconds(), "goplugins-calls/s")
			b.ReportMetric(float64(b.N)/theirsT.Seconds(), "goplugin-calls/s")
			b.ReportMetric(p99(oursLat), "goplugins-p99-us")
			b.ReportMetric(p99(theirsLat), "goplugin-p99-us")
			if tasks, err := os.ReadDir("/proc/self/task"); err == nil {
				b.ReportMetric(float64(len(tasks)), "host-threads")
			}
		})
		stopOurs()
		stopTheirs()
	}
}

const (
	spreadCallers = 8
	spreadBlock   = 2000
)

// spread makes k calls from spreadCallers goroutines, each to the next of n
// children in turn, and returns their latencies and the wall time.
func spread(b *testing.B, k, n int, call func(child int) error) ([]time.Duration, time.Duration) {
	lat := make([]time.Duration, k)
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range spreadCallers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= k {
					return
				}
				t := time.Now()
				if err := call(i * 7919 % n); err != nil {
					b.Error(err)
					return
				}
				lat[i] = time.Since(t)
			}
		}()
	}
	wg.Wait()
	return lat, time.Since(start)
}

// p99 returns the 99th percentile of lat in µs.
func p99(lat []time.Duration) float64 {
	if len(lat) == 0 {
		return 0
	}
	slices.Sort(lat)
	return float64(lat[len(lat)*99/100].Microseconds())
}

// startParallel runs start(i) for i < n on a few goroutines.
func startParallel(b *testing.B, n int, start func(i int) error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				if err := start(i); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
}

// startSpreadGoplugins starts n goplugins echo children; stop (also run at
// cleanup) stops them.
func startSpreadGoplugins(b *testing.B, n int) (ps []goplugins.Plugin[string, string], stop func()) {
	ps = make([]goplugins.Plugin[string, string], n)
	stop = sync.OnceFunc(func() {
		startParallel(b, n, func(i int) error {
			if ps[i] != nil {
				return ps[i].Close(context.Background())
			}
			return nil
		})
	})
	b.Cleanup(stop)
	cfg := goplugins.SubprocessConfig{Name: "echo", Command: binary(b, "gpecho"), Logger: slog.New(slog.DiscardHandler)}
	startParallel(b, n, func(i int) (err error) {
		ps[i], err = goplugins.NewSubprocess[string, string](context.Background(), cfg)
		return err
	})
	return ps, stop
}

// startSpreadGoPlugin starts n go-plugin echo children; stop (also run at
// cleanup) kills them.
func startSpreadGoPlugin(b *testing.B, n int) (echoes []shared.Echoer, stop func()) {
	echoes = make([]shared.Echoer, n)
	clients := make([]*plugin.Client, n)
	stop = sync.OnceFunc(func() {
		startParallel(b, n, func(i int) error {
			if clients[i] != nil {
				clients[i].Kill()
			}
			return nil
		})
	})
	b.Cleanup(stop)
	path := binary(b, "hcecho")
	startParallel(b, n, func(i int) error {
		clients[i] = plugin.NewClient(&plugin.ClientConfig{
			HandshakeConfig:  shared.Handshake,
			Plugins:          plugin.PluginSet{"echo": &shared.EchoPlugin{}},
			Cmd:              exec.Command(path),
			AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
			Logger:           hclog.NewNullLogger(),
		})
		rpc, err := clients[i].Client()
		if err != nil {
			return err
		}
		raw, err := rpc.Dispense("echo")
		if err != nil {
			return err
		}
		echoes[i] = raw.(shared.Echoer)
		return nil
	})
	return echoes, stop
}
