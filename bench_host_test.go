package goplugins

import (
	"context"
	"testing"
	"time"
)

// BenchmarkHostCallInProcess measures an in-process plugin's host call of
// a typed function, within a request whose deadline is no later than the
// host-call timeout: the overhead CallHost adds to calling the function.
func BenchmarkHostCallInProcess(b *testing.B) {
	f := NewHostFunc("add", func(_ context.Context, _ Caller, n int) (int, error) { return n + 1, nil })
	m := NewManager[int, int](WithPluginDefaults(WithHealthCheck(HealthConfig{Interval: -1})),
		WithHostFuncs(f), WithGrants(Grant{Plugins: "*", Funcs: []string{"*"}}))
	p := newInprocHostUser("app", nil)
	if err := m.Register(p); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Shutdown(context.Background()) })
	h := p.host.Load()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := CallHost[int, int](ctx, h, "add", i); err != nil {
			b.Fatal(err)
		}
	}
}
