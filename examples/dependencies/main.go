// Command dependencies shows plugins that depend on each other, declared in
// their manifests with version constraints: the DynamicLoader loads them in
// dependency order (the plugins of one level in parallel), keeps a plugin
// whose dependency is missing pending until the dependency's manifest
// appears, refuses to unload a plugin that loaded plugins depend on, and
// unloads it with its dependents on a cascade.
//
// The plugins are in-process Go values made by the host's "inprocess"
// factory, so the example needs no build; the manifests are real files in a
// temporary folder, watched by a DiscoveryEngine.
//
//	go run ./examples/dependencies
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/goplugins/goplugins"
)

func main() {
	if err := run(context.Background(), os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "dependencies failed:", err)
		os.Exit(1)
	}
}

// manifests are the plugins installed at the start, by name; "api" needs
// "cache", which is installed later.
var manifests = map[string]string{
	"logging": `{"name": "logging", "version": "1.2.0", "transport": "inprocess"}`,
	"metrics": `{"name": "metrics", "version": "2.1.4", "transport": "inprocess",
		"dependencies": {"logging": "^1.0.0"}}`,
	"auth": `{"name": "auth", "version": "1.4.0", "transport": "inprocess",
		"dependencies": {"logging": "^1.1", "metrics": {"version": "~2.1", "optional": true}}}`,
	"api": `{"name": "api", "version": "3.0.0", "transport": "inprocess",
		"dependencies": {"auth": ">=1.4.0, <2.0.0", "cache": "^1.0.0"}}`,
}

const cacheManifest = `{"name": "cache", "version": "1.0.2", "transport": "inprocess",
	"dependencies": {"logging": "^1.0.0"}}`

// service is the in-process plugin the factory makes for every manifest.
type service struct{ info goplugins.PluginInfo }

func (s *service) Info() goplugins.PluginInfo { return s.info }
func (s *service) Execute(_ context.Context, req string) (string, error) {
	return s.info.Name + " " + s.info.Version + " handled " + req, nil
}
func (s *service) Health(context.Context) error { return nil }
func (s *service) Close(context.Context) error  { return nil }

func run(ctx context.Context, out io.Writer) (err error) {
	root, err := os.MkdirTemp("", "goplugins-dependencies-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	for name, text := range manifests {
		if err := writeManifest(root, name, text); err != nil {
			return err
		}
	}

	engine, err := goplugins.NewDiscoveryEngine(goplugins.DiscoveryConfig{Roots: []string{root}, PollInterval: 50 * time.Millisecond})
	if err != nil {
		return err
	}
	m := goplugins.NewManager[string, string]()
	events := make(chan goplugins.Event, 64)
	m.Subscribe(func(ev goplugins.Event) {
		select {
		case events <- ev:
		default: // nobody is waiting for more: never block the manager's shutdown
		}
	})
	loader := goplugins.NewDynamicLoader(m, engine)
	loader.RegisterFactory("inprocess", func(_ context.Context, mf *goplugins.Manifest) (goplugins.Plugin[string, string], error) {
		return &service{info: mf.Info()}, nil
	})
	defer func() {
		cctx := context.WithoutCancel(ctx)
		if cerr := errors.Join(loader.Shutdown(cctx), engine.Close(), m.Shutdown(cctx)); cerr != nil && err == nil {
			err = cerr
		}
	}()

	// Start: everything that can load, loads, level by level.
	if err := engine.Start(ctx); err != nil {
		return err
	}
	if err := loader.Start(ctx); err != nil {
		return err
	}
	var registered []string
	for len(registered) < 3 {
		ev, err := await(ctx, events, goplugins.EventRegistered)
		if err != nil {
			return err
		}
		registered = append(registered, ev.Plugin)
	}
	if err := checkOrder(engine.Manifests(), registered); err != nil {
		return err
	}
	fmt.Fprintln(out, "registered, each after its dependencies:", strings.Join(registered, ", "))
	for _, st := range loader.Status() {
		if st.State == goplugins.LoadPending {
			fmt.Fprintf(out, "%s is %s: missing dependency: %v\n", st.Name, st.State, errors.Is(st.Err, goplugins.ErrDependencyMissing))
		}
	}

	// The missing dependency appears: api loads by itself after it.
	if err := writeManifest(root, "cache", cacheManifest); err != nil {
		return err
	}
	fmt.Fprintln(out, "installed cache 1.0.2")
	for _, want := range []string{"cache", "api"} {
		ev, err := await(ctx, events, goplugins.EventRegistered)
		if err != nil {
			return err
		}
		if ev.Plugin != want {
			return fmt.Errorf("%s was registered, want %s", ev.Plugin, want)
		}
		fmt.Fprintf(out, "loaded %s %s\n", ev.Plugin, ev.Version)
	}
	resp, err := m.Execute(ctx, "api", "GET /orders")
	if err != nil {
		return err
	}
	fmt.Fprintln(out, resp)

	// logging cannot go while plugins that need it are loaded.
	err = loader.Unload(ctx, "logging", goplugins.UnloadRefuse)
	if !errors.Is(err, goplugins.ErrDependentsLoaded) {
		return fmt.Errorf("unloading logging returned %v, want ErrDependentsLoaded", err)
	}
	fmt.Fprintln(out, "unload logging refused: dependents loaded")

	// A cascade unloads the dependents first, in reverse load order.
	if err := loader.Unload(ctx, "logging", goplugins.UnloadCascade); err != nil {
		return err
	}
	var unloaded []string
	for len(unloaded) < 5 {
		ev, err := await(ctx, events, goplugins.EventUnregistered)
		if err != nil {
			return err
		}
		unloaded = append(unloaded, ev.Plugin)
	}
	fmt.Fprintln(out, "cascade unloaded, in order:", strings.Join(unloaded, ", "))
	return nil
}

// writeManifest installs a manifest atomically in root/name/plugin.json.
func writeManifest(root, name, text string) error {
	dir := filepath.Join(root, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp := filepath.Join(dir, ".plugin.json.tmp")
	if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, "plugin.json"))
}

// checkOrder reports an error if a plugin was registered before one of its
// dependencies, as its manifest declares them.
func checkOrder(manifests []*goplugins.Manifest, registered []string) error {
	for _, mf := range manifests {
		i := slices.Index(registered, mf.Name)
		if i < 0 {
			continue
		}
		for _, d := range mf.Dependencies {
			if j := slices.Index(registered, d.Name); j > i || (j < 0 && !d.Optional) {
				return fmt.Errorf("%s was registered before its dependency %s", mf.Name, d.Name)
			}
		}
	}
	return nil
}

// await returns the next event of one of kinds; a failed load is an error.
func await(ctx context.Context, events <-chan goplugins.Event, kinds ...goplugins.EventKind) (goplugins.Event, error) {
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for {
		select {
		case ev := <-events:
			if ev.Kind == goplugins.EventLoadFailed {
				return ev, fmt.Errorf("loading %s failed: %w", ev.Plugin, ev.Err)
			}
			if slices.Contains(kinds, ev.Kind) {
				return ev, nil
			}
		case <-timeout.C:
			return goplugins.Event{}, fmt.Errorf("no %v event within 10s", kinds)
		case <-ctx.Done():
			return goplugins.Event{}, ctx.Err()
		}
	}
}
