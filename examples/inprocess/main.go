// Command inprocess shows plugins that are Go values in the host's own
// process: a Manager with a timeout and a circuit breaker, a plugin that
// panics (recovered, counted, the host serves on), a plugin that keeps
// failing (the breaker opens and fails fast), and a hot swap that hands a
// plugin's state to its next version.
//
//	go run ./examples/inprocess
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/goplugins/goplugins"
)

func main() {
	if err := run(context.Background(), os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "inprocess failed:", err)
		os.Exit(1)
	}
}

// greeter greets by name and remembers how many greetings it gave: its
// state (surface "state"), handed to the next version on Reload.
type greeter struct {
	version, greeting string

	mu     sync.Mutex
	served int
}

func (g *greeter) Info() goplugins.PluginInfo {
	return goplugins.PluginInfo{Name: "greeter", Version: g.version, Surfaces: []goplugins.Surface{goplugins.SurfaceState}}
}

func (g *greeter) Execute(_ context.Context, name string) (string, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if name == "" {
		panic("greeter: no name") // a bug: the manager recovers it
	}
	g.served++
	return fmt.Sprintf("%s, %s (greeting #%d from %s)", g.greeting, name, g.served, g.version), nil
}

func (g *greeter) Health(context.Context) error { return nil }
func (g *greeter) Close(context.Context) error  { return nil }

// PersistState returns the count without changing it.
func (g *greeter) PersistState(context.Context) ([]byte, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return fmt.Appendf(nil, "%d", g.served), nil
}

// RestoreState takes over the count of an older version.
func (g *greeter) RestoreState(_ context.Context, b []byte) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	_, err := fmt.Sscan(string(b), &g.served)
	return err
}

// flaky stands for a plugin whose backend is down: every call fails.
type flaky struct{}

var errBackendDown = errors.New("backend unreachable")

func (flaky) Info() goplugins.PluginInfo {
	return goplugins.PluginInfo{Name: "flaky", Version: "0.3.1"}
}
func (flaky) Execute(context.Context, string) (string, error) {
	return "", errBackendDown
}
func (flaky) Health(context.Context) error { return nil }
func (flaky) Close(context.Context) error  { return nil }

func run(ctx context.Context, out io.Writer) error {
	m := goplugins.NewManager[string, string](goplugins.WithPluginDefaults(goplugins.WithTimeout(time.Second), goplugins.WithBreaker(goplugins.BreakerConfig{ConsecutiveFailures: 3, OpenTimeout: time.Minute})))
	defer m.Shutdown(context.WithoutCancel(ctx))
	if err := m.Register(&greeter{version: "1.0.0", greeting: "hello"}); err != nil {
		return err
	}
	if err := m.Register(flaky{}); err != nil {
		return err
	}
	for _, info := range m.Plugins() {
		fmt.Fprintf(out, "registered %s %s\n", info.Name, info.Version)
	}

	for _, name := range []string{"Ada", "Grace"} {
		s, err := m.Execute(ctx, "greeter", name)
		if err != nil {
			return err
		}
		fmt.Fprintln(out, s)
	}

	// A panic in the plugin is an error for that call only.
	_, err := m.Execute(ctx, "greeter", "")
	if !errors.Is(err, goplugins.ErrPanic) {
		return fmt.Errorf("a panicking call returned %v, want ErrPanic", err)
	}
	fmt.Fprintln(out, "panic recovered:", errors.Is(err, goplugins.ErrPanic))

	// Three failures in a row open flaky's breaker; then calls fail fast.
	for i := 1; i <= 4; i++ {
		_, err := m.Execute(ctx, "flaky", "ping")
		switch {
		case errors.Is(err, goplugins.ErrBreakerOpen):
			fmt.Fprintf(out, "flaky call %d: breaker open, failed fast\n", i)
		case errors.Is(err, errBackendDown):
			fmt.Fprintf(out, "flaky call %d: %v\n", i, err)
		default:
			return fmt.Errorf("flaky call %d returned %v", i, err)
		}
	}
	if st := m.Metrics().Plugins["flaky"].Breaker; st != goplugins.BreakerOpen {
		return fmt.Errorf("flaky's breaker is %s, want open", st)
	}

	// Hot swap: version 2.0.0 takes over the count of 1.0.0.
	report, err := m.Reload(ctx, "greeter", &greeter{version: "2.0.0", greeting: "good day"})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "reloaded greeter %s -> %s, handed over %v (%d bytes)\n", report.From, report.To, report.Steps, report.BytesHandedOver)
	s, err := m.Execute(ctx, "greeter", "Linus")
	if err != nil {
		return err
	}
	fmt.Fprintln(out, s)
	if !strings.Contains(s, "#3 from 2.0.0") {
		return fmt.Errorf("2.0.0 did not carry the count over: %q", s)
	}

	pm := m.Metrics().Plugins["greeter"]
	fmt.Fprintf(out, "greeter: %d calls, %d errors, %d panics, generation %d\n", pm.Calls, pm.Errors, pm.Panics, pm.Generation)
	return nil
}
