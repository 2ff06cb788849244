package goplugins

import (
	"context"
	"testing"
)

func benchManager(b *testing.B) *Manager[int, int] {
	m := NewManager[int, int](WithHealthCheck(HealthConfig{Interval: -1}))
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
