package goplugins

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// benchSubprocessManager registers the echo plugin with a manager, health
// checks off, so the benchmarks measure Manager.Execute over the wire.
func benchSubprocessManager(b *testing.B) *Manager[echoReq, echoResp] {
	b.Helper()
	p := startEcho(b, nil, func(c *SubprocessConfig) { c.Logger = slog.New(slog.DiscardHandler) })
	m := NewManager[echoReq, echoResp](WithPluginDefaults(WithHealthCheck(HealthConfig{Interval: -1})))
	if err := m.Register(p); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Shutdown(context.Background()) })
	return m
}

var bench64 = echoReq{Data: strings.Repeat("x", 64)}

// BenchmarkSubprocessRoundTrip: one caller, a 64-byte echo through
// Manager.Execute to a child process and back.
func BenchmarkSubprocessRoundTrip(b *testing.B) {
	m := benchSubprocessManager(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if resp, err := m.Execute(ctx, "echo", bench64); err != nil || len(resp.Data) != 64 {
			b.Fatal(resp, err)
		}
	}
}

// benchHostCallManager registers the hostcall plugin with a manager,
// health checks off, its host calls served by a handle with the host
// function echo; the call it returns makes one 64-byte host call.
func benchHostCallManager(b *testing.B) func() {
	p := startHostcall(b, nil, nil, func(c *SubprocessConfig) { c.Logger = slog.New(slog.DiscardHandler) })
	m := NewManager[hostcallReq, hostcallResp](WithPluginDefaults(WithHealthCheck(HealthConfig{Interval: -1})),
		WithHostFuncs(NewHostFunc("echo", func(_ context.Context, _ Caller, s string) (string, error) { return s, nil })),
		WithGrants(Grant{Plugins: "hostcall", Funcs: []string{"echo"}}))
	if err := m.Register(p); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Shutdown(context.Background()) })
	req := hostcallReq{Op: "call", Func: "echo", Data: strings.Repeat("x", 64)}
	return func() {
		if resp, err := m.Execute(context.Background(), "hostcall", req); err != nil || len(resp.Data) != 64 {
			b.Fatal(resp, err)
		}
	}
}

// BenchmarkHostCallRoundTrip: one caller, a call through Manager.Execute
// to a child process that, while handling it, calls the host function
// echo with 64 bytes and answers with its response. Its budget is 1.5x
// BenchmarkSubprocessRoundTrip in the same run (see
// BenchmarkHostCallRatio).
func BenchmarkHostCallRoundTrip(b *testing.B) {
	call := benchHostCallManager(b)
	b.ReportAllocs()
	for b.Loop() {
		call()
	}
}

// BenchmarkHostCallRatio runs BenchmarkHostCallRoundTrip's call and
// BenchmarkSubprocessRoundTrip's alternately, call by call, so that the
// load of a shared machine weighs on both alike, and reports the median
// of each and x-roundtrip, the ratio of the medians.
func BenchmarkHostCallRatio(b *testing.B) {
	host := benchHostCallManager(b)
	m := benchSubprocessManager(b)
	plain := func() {
		if resp, err := m.Execute(context.Background(), "echo", bench64); err != nil || len(resp.Data) != 64 {
			b.Fatal(resp, err)
		}
	}
	h, r := make([]time.Duration, b.N), make([]time.Duration, b.N)
	b.ResetTimer()
	for i := range b.N {
		first, second, fd, sd := host, plain, &h[i], &r[i]
		if i%2 == 1 {
			first, second, fd, sd = plain, host, &r[i], &h[i]
		}
		start := time.Now()
		first()
		mid := time.Now()
		second()
		*fd, *sd = mid.Sub(start), time.Since(mid)
	}
	b.StopTimer()
	hm, rm := median(h), median(r)
	b.ReportMetric(float64(hm.Nanoseconds()), "hostcall-ns/op")
	b.ReportMetric(float64(rm.Nanoseconds()), "roundtrip-ns/op")
	b.ReportMetric(float64(hm)/float64(rm), "x-roundtrip")
}

// BenchmarkSubprocessParallel: many callers pipelining 64-byte echoes over
// one child.
func BenchmarkSubprocessParallel(b *testing.B) {
	m := benchSubprocessManager(b)
	ctx := context.Background()
	b.SetParallelism(16)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if resp, err := m.Execute(ctx, "echo", bench64); err != nil || len(resp.Data) != 64 {
				b.Error(resp, err)
				return
			}
		}
	})
}

// BenchmarkSubprocessStart: start, handshake, first call and Close.
func BenchmarkSubprocessStart(b *testing.B) {
	cfg := SubprocessConfig{Name: "echo", Command: pluginBinary(b, "echo"), Logger: slog.New(slog.DiscardHandler)}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		p, err := newSubprocess[echoReq, echoResp](ctx, cfg)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := p.Execute(ctx, bench64); err != nil {
			b.Fatal(err)
		}
		if err := p.Close(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSubprocessRoundTripUnderCancel: 16 callers pipelining 64-byte
// echoes over one child while every tenth call's ctx ends early (after
// 20 µs, mostly before its answer). Reports calls/s and the restarts of
// the child, which must stay 0: a cancelled call costs the plugin a
// CANCEL, never its life.
func BenchmarkSubprocessRoundTripUnderCancel(b *testing.B) {
	p := startEcho(b, nil, func(c *SubprocessConfig) { c.Logger = slog.New(slog.DiscardHandler) })
	var n atomic.Int64
	b.SetParallelism(8)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if n.Add(1)%10 != 0 {
				if resp, err := p.Execute(context.Background(), bench64); err != nil || len(resp.Data) != 64 {
					b.Error(resp, err)
					return
				}
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Microsecond)
			if _, err := p.Execute(ctx, bench64); err != nil && !errors.Is(err, ErrCanceled) {
				b.Error(err)
			}
			cancel()
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "calls/s")
	b.ReportMetric(float64(p.restartCount()), "restarts")
	if p.restartCount() != 0 {
		b.Fatalf("%d restarts under cancellation", p.restartCount())
	}
}
