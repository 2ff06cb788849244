// Command config shows a configuration file driving the plugins of a host:
// plugins added to the file are loaded, changed ones are hot-reloaded,
// removed ones are unloaded, and a broken file keeps the last good
// configuration serving. The plugins are in-process greeters, so the
// example needs nothing but Go.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/goplugins/goplugins"
)

func main() {
	if err := run(context.Background(), os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "config example:", err)
		os.Exit(1)
	}
}

// greeter is an in-process plugin made from a manifest: its greeting comes
// from the manifest's description.
type greeter struct{ info goplugins.PluginInfo }

func (g greeter) Info() goplugins.PluginInfo { return g.info }
func (g greeter) Execute(_ context.Context, who string) (string, error) {
	return fmt.Sprintf("%s, %s! (%s %s)", g.info.Description, who, g.info.Name, g.info.Version), nil
}
func (greeter) Health(context.Context) error { return nil }
func (greeter) Close(context.Context) error  { return nil }

const (
	v1 = `host_version: 1.0.0
defaults:
  timeout: 2s
plugins:
  - {name: hello, version: 1.0.0, transport: inprocess, description: Hello}
`
	v2 = `host_version: 1.0.0
defaults:
  timeout: 2s
plugins:
  - {name: hello, version: 1.1.0, transport: inprocess, description: "${GREETING:-Good day}"}
  - {name: bye, version: 1.0.0, transport: inprocess, description: Goodbye, dependencies: {hello: ^1.0.0}}
`
	broken = `host_version: 1.0.0
plugins:
  - {name: hello, version: 1.2, transport: inprocess}
`
	v3 = `host_version: 1.0.0
defaults:
  timeout: 2s
plugins:
  - {name: hello, version: 1.1.0, transport: inprocess, description: "${GREETING:-Good day}"}
`
)

func run(ctx context.Context, out io.Writer) error {
	dir, err := os.MkdirTemp("", "goplugins-config-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "plugins.yaml")
	if err := write(path, v1); err != nil {
		return err
	}

	start := time.Now()
	say := func(format string, args ...any) {
		fmt.Fprintf(out, "%6.0fms  %s\n", float64(time.Since(start).Microseconds())/1000, fmt.Sprintf(format, args...))
	}

	cfg, err := goplugins.LoadConfig(path)
	if err != nil {
		return err
	}
	m := goplugins.NewManager[string, string](cfg.ManagerOptions()...)
	defer m.Shutdown(context.Background())
	events := make(chan goplugins.Event, 64)
	m.Subscribe(func(ev goplugins.Event) { events <- ev })

	refused := make(chan error, 1)
	watcher, err := goplugins.NewConfigWatcher(path, goplugins.ConfigWatchOptions{
		PollInterval: 50 * time.Millisecond,
		OnError: func(err error) {
			select {
			case refused <- err:
			default:
			}
		},
	})
	if err != nil {
		return err
	}
	if err := watcher.Start(ctx); err != nil {
		return err
	}
	defer watcher.Close()
	loader := goplugins.NewDynamicLoader(m, watcher) // checks requires.host against the manager's policy
	defer loader.Shutdown(context.Background())
	loader.RegisterFactory("inprocess", func(_ context.Context, mf *goplugins.Manifest) (goplugins.Plugin[string, string], error) {
		return greeter{info: mf.Info()}, nil
	})
	if err := loader.Start(ctx); err != nil {
		return err
	}
	say("loaded from %s: %v", filepath.Base(path), names(m))
	if err := greet(ctx, m, say, "hello"); err != nil {
		return err
	}

	say("editing the file: hello 1.0.0 -> 1.1.0, bye added")
	if err := write(path, v2); err != nil {
		return err
	}
	if err := await(events, goplugins.EventRegistered, "bye"); err != nil {
		return err
	}
	if err := await(events, goplugins.EventReloaded, "hello"); err != nil {
		return err
	}
	say("reloaded and loaded: %v", names(m))
	for _, p := range []string{"hello", "bye"} {
		if err := greet(ctx, m, say, p); err != nil {
			return err
		}
	}

	say("writing a broken file (version \"1.2\" is not semver)")
	if err := write(path, broken); err != nil {
		return err
	}
	select {
	case err := <-refused:
		say("refused, the last good configuration keeps serving: %s", firstLine(err.Error()))
	case <-time.After(10 * time.Second):
		return errors.New("the broken file was not reported")
	}
	if err := greet(ctx, m, say, "bye"); err != nil {
		return err
	}

	say("fixing the file and removing bye")
	if err := write(path, v3); err != nil {
		return err
	}
	if err := await(events, goplugins.EventUnregistered, "bye"); err != nil {
		return err
	}
	say("unloaded bye: %v", names(m))
	return nil
}

func greet(ctx context.Context, m *goplugins.Manager[string, string], say func(string, ...any), plugin string) error {
	msg, err := m.Execute(ctx, plugin, "world")
	if err != nil {
		return err
	}
	say("  %s says %q", plugin, msg)
	return nil
}

func names(m *goplugins.Manager[string, string]) []string {
	var out []string
	for _, p := range m.Plugins() {
		out = append(out, p.Name+"@"+p.Version)
	}
	return out
}

// await waits for an event of kind about plugin.
func await(events <-chan goplugins.Event, kind goplugins.EventKind, plugin string) error {
	deadline := time.After(10 * time.Second)
	for {
		select {
		case ev := <-events:
			if ev.Kind == kind && ev.Plugin == plugin {
				return nil
			}
			if ev.Kind == goplugins.EventLoadFailed || ev.Kind == goplugins.EventReloadFailed {
				return fmt.Errorf("%s %s: %v", ev.Kind, ev.Plugin, ev.Err)
			}
		case <-deadline:
			return fmt.Errorf("no %s event for %s", kind, plugin)
		}
	}
}

// write replaces a file atomically, as editors and config managers do.
func write(path, content string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 100 {
		s = s[:100] + "..."
	}
	return s
}
