package goplugins_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/goplugins/goplugins"
)

// upper is an in-process plugin that upper-cases its input.
type upper struct{ version string }

func (p upper) Info() goplugins.PluginInfo {
	return goplugins.PluginInfo{Name: "upper", Version: p.version}
}

func (upper) Execute(_ context.Context, s string) (string, error) { return strings.ToUpper(s), nil }
func (upper) Health(context.Context) error                        { return nil }
func (upper) Close(context.Context) error                         { return nil }

func ExampleNewManager() {
	m := goplugins.NewManager[string, string](goplugins.WithPluginDefaults(goplugins.WithTimeout(2*time.Second), goplugins.WithBreaker(goplugins.BreakerConfig{ConsecutiveFailures: 5, OpenTimeout: 10 * time.Second}), goplugins.WithRetry(goplugins.RetryPolicy{MaxAttempts: 3, Backoff: 50 * time.Millisecond})))
	defer m.Shutdown(context.Background())

	fmt.Println(len(m.Plugins()), "plugins")
	// Output: 0 plugins
}

func ExampleManager_Register() {
	m := goplugins.NewManager[string, string]()
	defer m.Shutdown(context.Background())

	if err := m.Register(upper{version: "1.0.0"}); err != nil {
		fmt.Println(err)
		return
	}
	err := m.Register(upper{version: "1.1.0"})
	fmt.Println(errors.Is(err, goplugins.ErrAlreadyRegistered))
	fmt.Println(m.Plugins()[0].Name, m.Plugins()[0].Version)
	// Output:
	// true
	// upper 1.0.0
}

func ExampleManager_Execute() {
	m := goplugins.NewManager[string, string]()
	defer m.Shutdown(context.Background())
	_ = m.Register(upper{version: "1.0.0"})

	out, err := m.Execute(context.Background(), "upper", "hello")
	fmt.Println(out, err)

	_, err = m.Execute(context.Background(), "lower", "hello")
	fmt.Println(errors.Is(err, goplugins.ErrNotFound))
	// Output:
	// HELLO <nil>
	// true
}

// tally is a stateful plugin: it counts calls and hands the count over when
// it is reloaded.
type tally struct {
	version string
	mu      sync.Mutex
	n       int
}

func (p *tally) Info() goplugins.PluginInfo {
	return goplugins.PluginInfo{Name: "tally", Version: p.version, Surfaces: []goplugins.Surface{goplugins.SurfaceState}}
}

func (p *tally) Execute(context.Context, string) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n++
	return p.n, nil
}

func (p *tally) Health(context.Context) error { return nil }
func (p *tally) Close(context.Context) error  { return nil }

func (p *tally) PersistState(context.Context) ([]byte, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return []byte(fmt.Sprint(p.n)), nil
}

func (p *tally) RestoreState(_ context.Context, b []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, err := fmt.Sscan(string(b), &p.n)
	return err
}

func ExampleManager_Reload() {
	m := goplugins.NewManager[string, int]()
	defer m.Shutdown(context.Background())
	ctx := context.Background()

	_ = m.Register(&tally{version: "1.0.0"})
	m.Execute(ctx, "tally", "a")
	m.Execute(ctx, "tally", "b")

	// Hot-swap to 1.1.0: calls are parked, not dropped, while the old
	// version's state moves to the new one.
	report, err := m.Reload(ctx, "tally", &tally{version: "1.1.0"})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(report.From, "->", report.To, "generation", report.Generation, "steps", report.Steps)

	n, _ := m.Execute(ctx, "tally", "c")
	fmt.Println("count", n)
	// Output:
	// 1.0.0 -> 1.1.0 generation 2 steps [state]
	// count 3
}
