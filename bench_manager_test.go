package goplugins

import (
	"context"
	"errors"
	"testing"
	"time"
)

func benchManager(b *testing.B) *Manager[int, int] {
	m := NewManager[int, int](WithPluginDefaults(WithHealthCheck(HealthConfig{Interval: -1})))
	if err := m.Register(newEcho("echo", "1.0.0")); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Shutdown(context.Background()) })
	return m
}

func BenchmarkExecute(b *testing.B) {
	m := benchManager(b)
	ctx := context.Background()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := m.Execute(ctx, "echo", i); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkExecuteParallel(b *testing.B) {
	m := benchManager(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := m.Execute(ctx, "echo", i); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}

func BenchmarkExecuteRejected(b *testing.B) {
	m := NewManager[int, int](WithPluginDefaults(WithHealthCheck(HealthConfig{Interval: -1}), WithBreaker(BreakerConfig{ConsecutiveFailures: 1, OpenTimeout: time.Hour})))
	fail := errors.New("down")
	if err := m.Register(&scripted{name: "down", version: "1.0.0",
		exec: func(context.Context, int) (int, error) { return 0, fail }}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Shutdown(context.Background()) })
	ctx := context.Background()
	m.Execute(ctx, "down", 0) // opens the breaker
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := m.Execute(ctx, "down", i); !errors.Is(err, ErrBreakerOpen) {
			b.Fatal(err)
		}
	}
}

// BenchmarkExecuteIntercepted: the cost of one interceptor that only
// calls next (compare with BenchmarkExecute in the same run).
func BenchmarkExecuteIntercepted(b *testing.B) {
	pass := func(ctx context.Context, c *Call, next Handler) error { return next(ctx) }
	m := NewManager[int, int](WithInterceptors(pass), WithPluginDefaults(WithHealthCheck(HealthConfig{Interval: -1})))
	if err := m.Register(newEcho("echo", "1.0.0")); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Shutdown(context.Background()) })
	ctx := context.Background()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := m.Execute(ctx, "echo", i); err != nil {
			b.Fatal(err)
		}
	}
}
