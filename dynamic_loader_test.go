package goplugins

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// memSource is an in-memory ManifestSource.
type memSource struct {
	initial []*Manifest
	events  chan DiscoveryEvent
}

func newMemSource(initial ...*Manifest) *memSource {
	return &memSource{initial: initial, events: make(chan DiscoveryEvent)}
}

func (s *memSource) Manifests() []*Manifest        { return s.initial }
func (s *memSource) Events() <-chan DiscoveryEvent { return s.events }

// manifest builds an in-process manifest; deps maps a dependency name to its
// constraint ("?" prefix: optional).
func manifest(t testing.TB, name, version string, deps map[string]string, extra ...string) *Manifest {
	t.Helper()
	raw := map[string]any{"name": name, "version": version, "transport": "inprocess"}
	if len(deps) > 0 {
		d := map[string]any{}
		for n, c := range deps {
			if c[0] == '?' {
				d[n] = map[string]any{"version": c[1:], "optional": true}
			} else {
				d[n] = c
			}
		}
		raw["dependencies"] = d
	}
	for i := 0; i+1 < len(extra); i += 2 {
		raw[extra[i]] = map[string]any{"host": extra[i+1]}
	}
	data, err := json.Marshal(raw)
	require.NoError(t, err)
	mf, err := ParseManifest("/plugins/"+name+"/plugin.json", data)
	require.NoError(t, err)
	return mf
}

// echoFactory makes echo plugins and can be told to fail for a name.
type echoFactory struct {
	mu    sync.Mutex
	fail  map[string]error
	made  map[string]int
	close map[string]*echo
}

func newEchoFactory() *echoFactory {
	return &echoFactory{fail: map[string]error{}, made: map[string]int{}, close: map[string]*echo{}}
}

func (f *echoFactory) make(_ context.Context, mf *Manifest) (Plugin[int, int], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail[mf.Name]; err != nil {
		return nil, err
	}
	f.made[mf.Name]++
	p := newEcho(mf.Name, mf.Version)
	f.close[mf.Name] = p
	return p, nil
}

func (f *echoFactory) setFail(name string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail[name] = err
}

func newTestLoader(t *testing.T, src ManifestSource, opts ...LoaderOption) (*DynamicLoader[int, int], *Manager[int, int], *echoFactory) {
	t.Helper()
	m := newTestManager(t)
	l := NewDynamicLoader(m, src, opts...)
	f := newEchoFactory()
	l.RegisterFactory("inprocess", f.make)
	t.Cleanup(func() { _ = l.Shutdown(context.Background()) })
	return l, m, f
}

func states(l *DynamicLoader[int, int]) map[string]LoadState {
	out := map[string]LoadState{}
	for _, st := range l.Status() {
		out[st.Name] = st.State
	}
	return out
}

func registered(m *Manager[int, int]) []string {
	var names []string
	for _, p := range m.Plugins() {
		names = append(names, p.Name)
	}
	return names
}

// send delivers an event and waits until the loader has applied it (the
// next event is only read after the previous one was handled).
func send(src *memSource, evs ...DiscoveryEvent) {
	for _, ev := range evs {
		src.events <- ev
	}
	src.events <- DiscoveryEvent{Kind: DiscoveryInvalid} // a no-op barrier
}

func TestLoaderLoadAllInOrder(t *testing.T) {
	src := newMemSource(
		manifest(t, "app", "1.0.0", map[string]string{"auth": "^1.0.0", "log": "^1.0.0"}),
		manifest(t, "auth", "1.2.0", map[string]string{"log": "^1.0.0"}),
		manifest(t, "log", "1.0.0", nil),
		manifest(t, "metrics", "2.0.0", map[string]string{"tracing": "?^1.0.0"}),
	)
	l, m, _ := newTestLoader(t, src)
	var order []string
	var mu sync.Mutex
	done := make(chan struct{})
	m.Subscribe(func(ev Event) {
		if ev.Kind == EventRegistered {
			mu.Lock()
			order = append(order, ev.Plugin)
			if len(order) == 4 {
				close(done)
			}
			mu.Unlock()
		}
	})
	require.NoError(t, l.Start(context.Background()))
	<-done
	require.Equal(t, []string{"app", "auth", "log", "metrics"}, registered(m))
	pos := map[string]int{}
	for i, n := range order {
		pos[n] = i
	}
	require.Less(t, pos["log"], pos["auth"])
	require.Less(t, pos["auth"], pos["app"])
	require.Equal(t, loaderMetrics{Loads: 4, Loaded: 4}, l.metrics())
}

func TestLoaderOutOfOrderDiscoveryWaitsAsPending(t *testing.T) {
	src := newMemSource()
	l, m, _ := newTestLoader(t, src)
	require.NoError(t, l.Start(context.Background()))

	send(src, DiscoveryEvent{Kind: DiscoveryAdded, Name: "app", Manifest: manifest(t, "app", "1.0.0", map[string]string{"auth": "^1.0.0"})})
	require.Equal(t, LoadPending, states(l)["app"])
	st := l.Status()[0]
	require.ErrorIs(t, st.Err, ErrDependencyMissing)
	require.Contains(t, st.Err.Error(), "auth")
	require.Empty(t, registered(m))

	send(src, DiscoveryEvent{Kind: DiscoveryAdded, Name: "auth", Manifest: manifest(t, "auth", "1.0.0", nil)})
	require.Equal(t, map[string]LoadState{"app": LoadLoaded, "auth": LoadLoaded}, states(l))
	require.Equal(t, []string{"app", "auth"}, registered(m))
}

func TestLoaderVersionConflicts(t *testing.T) {
	host, err := NewVersionPolicy("1.5.0")
	require.NoError(t, err)
	src := newMemSource(
		manifest(t, "app", "1.0.0", map[string]string{"auth": "^2.0.0"}),
		manifest(t, "auth", "1.9.0", nil),
		manifest(t, "old", "1.0.0", nil, "requires", "<1.0.0"),
	)
	m := newTestManager(t, WithVersionPolicy(host))
	l := NewDynamicLoader(m, src)
	l.RegisterFactory("inprocess", newEchoFactory().make)
	t.Cleanup(func() { _ = l.Shutdown(context.Background()) })
	err = l.Start(context.Background())
	require.ErrorIs(t, err, ErrIncompatibleVersion, "the host-refused plugin is reported")
	require.Contains(t, err.Error(), `"old"`)
	s := states(l)
	require.Equal(t, LoadPending, s["app"], "auth 1.9.0 does not satisfy ^2.0.0")
	require.Equal(t, LoadLoaded, s["auth"])
	require.Equal(t, LoadFailed, s["old"])
	for _, st := range l.Status() {
		switch st.Name {
		case "app":
			require.ErrorIs(t, st.Err, ErrIncompatibleVersion)
			require.Contains(t, st.Err.Error(), "1.9.0")
		case "old":
			require.ErrorIs(t, st.Err, ErrIncompatibleVersion)
			require.Contains(t, st.Err.Error(), "1.5.0")
		}
	}
	require.Equal(t, []string{"auth"}, registered(m))
}

func TestLoaderUnloadRefuseAndCascade(t *testing.T) {
	src := newMemSource(
		manifest(t, "app", "1.0.0", map[string]string{"auth": "^1.0.0"}),
		manifest(t, "auth", "1.0.0", map[string]string{"log": "^1.0.0"}),
		manifest(t, "log", "1.0.0", nil),
	)
	l, m, f := newTestLoader(t, src)
	ctx := context.Background()
	require.NoError(t, l.Start(ctx))

	err := l.Unload(ctx, "log", UnloadRefuse)
	require.ErrorIs(t, err, ErrDependentsLoaded)
	require.Contains(t, err.Error(), "app")
	require.Contains(t, err.Error(), "auth")
	require.Equal(t, []string{"app", "auth", "log"}, registered(m), "nothing unloaded")

	var unregistered []string
	done := make(chan struct{})
	m.Subscribe(func(ev Event) {
		if ev.Kind == EventUnregistered {
			unregistered = append(unregistered, ev.Plugin)
			if len(unregistered) == 3 {
				close(done)
			}
		}
	})
	require.NoError(t, l.Unload(ctx, "log", UnloadCascade))
	<-done
	require.Equal(t, []string{"app", "auth", "log"}, unregistered, "dependents first")
	require.Empty(t, registered(m))
	for _, n := range []string{"app", "auth", "log"} {
		require.Equal(t, int32(1), f.close[n].closed.Load(), n)
	}
	require.Equal(t, LoadDiscovered, states(l)["log"])
}

func TestLoaderUpdateReloads(t *testing.T) {
	src := newMemSource(manifest(t, "auth", "1.0.0", nil))
	l, m, _ := newTestLoader(t, src)
	require.NoError(t, l.Start(context.Background()))
	send(src, DiscoveryEvent{Kind: DiscoveryUpdated, Name: "auth", Manifest: manifest(t, "auth", "1.1.0", nil)})
	info, ok := m.Info("auth")
	require.True(t, ok)
	require.Equal(t, "1.1.0", info.Version)
	require.Equal(t, uint64(2), m.Metrics().Plugins["auth"].Generation)
	require.Equal(t, uint64(1), l.metrics().Reloads)
}

func TestLoaderUpdateRefusedByDependentConstraint(t *testing.T) {
	src := newMemSource(
		manifest(t, "app", "1.0.0", map[string]string{"auth": "~1.0.0"}),
		manifest(t, "auth", "1.0.0", nil),
	)
	l, m, _ := newTestLoader(t, src)
	failed := make(chan Event, 1)
	m.Subscribe(func(ev Event) {
		if ev.Kind == EventReloadFailed {
			failed <- ev
		}
	})
	require.NoError(t, l.Start(context.Background()))
	send(src, DiscoveryEvent{Kind: DiscoveryUpdated, Name: "auth", Manifest: manifest(t, "auth", "1.1.0", nil)})
	ev := <-failed
	require.ErrorIs(t, ev.Err, ErrIncompatibleVersion)
	require.Contains(t, ev.Err.Error(), `"app"`)
	info, _ := m.Info("auth")
	require.Equal(t, "1.0.0", info.Version, "the running version keeps serving")
	require.Equal(t, uint64(1), l.metrics().ReloadFailures)

	// A compatible update still goes through.
	send(src, DiscoveryEvent{Kind: DiscoveryUpdated, Name: "auth", Manifest: manifest(t, "auth", "1.0.1", nil)})
	info, _ = m.Info("auth")
	require.Equal(t, "1.0.1", info.Version)
}

// TestLoaderLoadAllFailureLoadsTheOthers checks that a failed load in
// LoadAll fails alone: the plugins loaded beside it stay loaded.
func TestLoaderLoadAllFailureLoadsTheOthers(t *testing.T) {
	src := newMemSource(
		manifest(t, "a", "1.0.0", nil),
		manifest(t, "b", "1.0.0", nil),
		manifest(t, "c", "1.0.0", map[string]string{"a": "*"}),
		manifest(t, "d", "1.0.0", map[string]string{"b": "*"}),
		manifest(t, "e", "1.0.0", map[string]string{"d": "*"}),
	)
	l, m, f := newTestLoader(t, src, WithAutoLoad(false))
	require.NoError(t, l.Start(context.Background()))
	require.Empty(t, registered(m), "auto-loading is off")
	boom := errors.New("binary missing")
	f.setFail("d", boom)
	err := l.LoadAll(context.Background())
	require.ErrorIs(t, err, boom)
	require.Contains(t, err.Error(), `"d"`)
	require.Equal(t, []string{"a", "b", "c"}, registered(m), "the others stay loaded")
	require.Equal(t, LoadFailed, states(l)["d"])
	require.Equal(t, LoadPending, states(l)["e"], "d's dependent waits")

	f.setFail("d", nil)
	require.NoError(t, l.LoadAll(context.Background()))
	require.Equal(t, []string{"a", "b", "c", "d", "e"}, registered(m))
	require.Equal(t, 1, f.made["a"], "a started once")
}

func TestLoaderLoadLoadsDependenciesFirst(t *testing.T) {
	src := newMemSource(
		manifest(t, "app", "1.0.0", map[string]string{"auth": "*"}),
		manifest(t, "auth", "1.0.0", nil),
		manifest(t, "other", "1.0.0", nil),
	)
	l, m, _ := newTestLoader(t, src, WithAutoLoad(false))
	require.NoError(t, l.Start(context.Background()))
	require.NoError(t, l.Load(context.Background(), "app"))
	require.Equal(t, []string{"app", "auth"}, registered(m))
	require.ErrorIs(t, l.Load(context.Background(), "nope"), ErrNotFound)
}

func TestLoaderRemovedDependencyMakesDependentsPending(t *testing.T) {
	src := newMemSource(
		manifest(t, "app", "1.0.0", map[string]string{"auth": "^1.0.0"}),
		manifest(t, "auth", "1.0.0", nil),
	)
	l, m, _ := newTestLoader(t, src)
	require.NoError(t, l.Start(context.Background()))
	send(src, DiscoveryEvent{Kind: DiscoveryRemoved, Name: "auth"})
	require.Empty(t, registered(m))
	require.Equal(t, map[string]LoadState{"app": LoadPending}, states(l))

	send(src, DiscoveryEvent{Kind: DiscoveryAdded, Name: "auth", Manifest: manifest(t, "auth", "1.0.0", nil)})
	require.Equal(t, []string{"app", "auth"}, registered(m), "the dependent loads again by itself")
}

func TestLoaderNoFactory(t *testing.T) {
	src := newMemSource(manifest(t, "a", "1.0.0", nil))
	m := newTestManager(t)
	l := NewDynamicLoader(m, src)
	defer l.Shutdown(context.Background())
	err := l.Start(context.Background())
	require.ErrorIs(t, err, ErrNoFactory)
	require.Equal(t, LoadFailed, states(l)["a"])
}

func TestLoaderConcurrentEvents(t *testing.T) {
	verifyNoLeaks(t)
	src := newMemSource()
	m := NewManager[int, int](WithPluginDefaults(WithHealthCheck(HealthConfig{Interval: -1})))
	l := NewDynamicLoader(m, src)
	f := newEchoFactory()
	l.RegisterFactory("inprocess", f.make)
	ctx := context.Background()
	require.NoError(t, l.Start(ctx))

	var wg sync.WaitGroup
	for w := range 3 {
		// The events are made here, in the test's goroutine: manifest
		// fails the test with require.
		var events []DiscoveryEvent
		for i := range 30 {
			name := fmt.Sprintf("p%d", (i+w)%5)
			switch i % 3 {
			case 0:
				events = append(events, DiscoveryEvent{Kind: DiscoveryAdded, Name: name, Manifest: manifest(t, name, "1.0.0", nil)})
			case 1:
				events = append(events, DiscoveryEvent{Kind: DiscoveryUpdated, Name: name, Manifest: manifest(t, name, fmt.Sprintf("1.0.%d", i), nil)})
			case 2:
				events = append(events, DiscoveryEvent{Kind: DiscoveryRemoved, Name: name})
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, ev := range events {
				src.events <- ev
			}
		}()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				l.Status()
				l.metrics()
				_, _ = m.Execute(ctx, "p1", 1)
			}
		}()
	}
	wg.Wait()
	require.NoError(t, l.Shutdown(ctx))
	require.NoError(t, m.Shutdown(ctx))
	require.Empty(t, registered(m))
	require.Equal(t, uint64(90), l.metrics().Events)
}

func TestLoaderCloseUnloadsEverything(t *testing.T) {
	src := newMemSource(
		manifest(t, "app", "1.0.0", map[string]string{"auth": "*"}),
		manifest(t, "auth", "1.0.0", nil),
	)
	l, m, f := newTestLoader(t, src)
	require.NoError(t, l.Start(context.Background()))
	require.NoError(t, l.Shutdown(context.Background()))
	require.NoError(t, l.Shutdown(context.Background()), "idempotent")
	require.Empty(t, registered(m))
	require.Equal(t, int32(1), f.close["app"].closed.Load())
	require.Equal(t, int32(1), f.close["auth"].closed.Load())
	require.ErrorIs(t, l.Start(context.Background()), ErrClosed)
}

// TestLoaderFailedUpdateKeepsRunningManifest checks that after an update
// fails, the loader goes on checking and ordering against the version that
// still serves, shows both versions, and applies the update when its
// manifest is delivered again.
func TestLoaderFailedUpdateKeepsRunningManifest(t *testing.T) {
	src := newMemSource(
		manifest(t, "x", "1.0.0", map[string]string{"y": "^1.0.0"}),
		manifest(t, "y", "1.0.0", nil),
	)
	l, m, f := newTestLoader(t, src)
	require.NoError(t, l.Start(context.Background()))
	version := func(name string) string {
		t.Helper()
		info, ok := m.Info(name)
		require.True(t, ok, name)
		return info.Version
	}
	status := func(name string) PluginStatus {
		t.Helper()
		for _, st := range l.Status() {
			if st.Name == name {
				return st
			}
		}
		t.Fatalf("no status for %s", name)
		return PluginStatus{}
	}

	// x 2.0.0 needs y ^2 and its factory fails: x 1.0.0 keeps serving.
	boom := errors.New("binary missing")
	f.setFail("x", boom)
	send(src, DiscoveryEvent{Kind: DiscoveryUpdated, Name: "x", Manifest: manifest(t, "x", "2.0.0", map[string]string{"y": "^2.0.0"})})
	require.Equal(t, "1.0.0", version("x"))
	st := status("x")
	require.Equal(t, LoadLoaded, st.State)
	require.Equal(t, "2.0.0", st.Version, "Version is the discovered one")
	require.Equal(t, "1.0.0", st.Loaded, "Loaded is the one serving")
	require.Error(t, st.Err)

	// A new plugin that needs x ^1 loads: x 1.0.0 serves.
	send(src, DiscoveryEvent{Kind: DiscoveryAdded, Name: "z", Manifest: manifest(t, "z", "1.0.0", map[string]string{"x": "^1.0.0"})})
	require.Equal(t, LoadLoaded, states(l)["z"])
	require.Equal(t, "1.0.0", version("z"))

	// y 2.0.0 would break the running x 1.0.0 (^1): refused.
	send(src, DiscoveryEvent{Kind: DiscoveryUpdated, Name: "y", Manifest: manifest(t, "y", "2.0.0", nil)})
	require.Equal(t, "1.0.0", version("y"))
	st = status("y")
	require.ErrorIs(t, st.Err, ErrIncompatibleVersion)
	require.Contains(t, st.Err.Error(), `"x"`)
	require.Equal(t, "2.0.0", st.Version)
	require.Equal(t, "1.0.0", st.Loaded)

	// y 1.1.0 suits x 1.0.0: applied.
	send(src, DiscoveryEvent{Kind: DiscoveryUpdated, Name: "y", Manifest: manifest(t, "y", "1.1.0", nil)})
	require.Equal(t, "1.1.0", version("y"))
	require.NoError(t, status("y").Err)

	// x 1.2.0 fails in its factory, then is delivered again once the
	// factory works: the retry applies it.
	x12 := manifest(t, "x", "1.2.0", map[string]string{"y": "^1.0.0"})
	send(src, DiscoveryEvent{Kind: DiscoveryUpdated, Name: "x", Manifest: x12})
	require.Equal(t, "1.0.0", version("x"))
	require.ErrorIs(t, status("x").Err, boom)
	f.setFail("x", nil)
	send(src, DiscoveryEvent{Kind: DiscoveryUpdated, Name: "x", Manifest: x12})
	require.Equal(t, "1.2.0", version("x"))
	st = status("x")
	require.Equal(t, "1.2.0", st.Version)
	require.Equal(t, "1.2.0", st.Loaded)
	require.NoError(t, st.Err)
	require.Equal(t, uint64(2), l.metrics().Reloads, "y 1.1.0 and x 1.2.0")
}

// TestLoaderReloadLoadsWaitingDependents checks that a plugin pending on a
// version its dependency's running version does not satisfy loads once
// the dependency is reloaded to a version that does.
func TestLoaderReloadLoadsWaitingDependents(t *testing.T) {
	src := newMemSource(manifest(t, "y", "1.0.0", nil))
	l, m, _ := newTestLoader(t, src)
	require.NoError(t, l.Start(context.Background()))
	send(src, DiscoveryEvent{Kind: DiscoveryAdded, Name: "x", Manifest: manifest(t, "x", "1.0.0", map[string]string{"y": "^2.0.0"})})
	require.Equal(t, LoadPending, states(l)["x"])
	send(src, DiscoveryEvent{Kind: DiscoveryUpdated, Name: "y", Manifest: manifest(t, "y", "2.0.0", nil)})
	require.Equal(t, LoadLoaded, states(l)["x"])
	require.Equal(t, []string{"x", "y"}, registered(m))
}

// TestLoaderUpdateRefusedByDependencyVersion checks that an update whose
// dependency constraint the dependency's running version does not meet is
// refused before its factory runs, and the old version keeps serving.
func TestLoaderUpdateRefusedByDependencyVersion(t *testing.T) {
	src := newMemSource(
		manifest(t, "x", "1.0.0", map[string]string{"y": "^1.0.0"}),
		manifest(t, "y", "1.0.0", nil),
	)
	l, m, f := newTestLoader(t, src)
	require.NoError(t, l.Start(context.Background()))
	send(src, DiscoveryEvent{Kind: DiscoveryUpdated, Name: "x", Manifest: manifest(t, "x", "2.0.0", map[string]string{"y": "^2.0.0"})})
	info, _ := m.Info("x")
	require.Equal(t, "1.0.0", info.Version)
	f.mu.Lock()
	require.Equal(t, 1, f.made["x"], "the factory did not run for the refused update")
	f.mu.Unlock()
	for _, st := range l.Status() {
		if st.Name == "x" {
			require.ErrorIs(t, st.Err, ErrIncompatibleVersion)
			require.Contains(t, st.Err.Error(), "running version keeps serving")
		}
	}
	require.Equal(t, uint64(1), l.metrics().ReloadFailures)
}

// TestLoaderOperationsAfterClose checks that nothing is loaded, unloaded or
// forgotten once Close has run: every operation fails with ErrClosed.
func TestLoaderOperationsAfterClose(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		op   func(*DynamicLoader[int, int]) error
	}{
		{"Load", func(l *DynamicLoader[int, int]) error { return l.Load(ctx, "a") }},
		{"LoadAll", func(l *DynamicLoader[int, int]) error { return l.LoadAll(ctx) }},
		{"Unload", func(l *DynamicLoader[int, int]) error { return l.Unload(ctx, "a", UnloadCascade) }},
		{"discovered event", func(l *DynamicLoader[int, int]) error { return l.apply(ctx, manifest(t, "b", "1.0.0", nil)) }},
		{"removed event", func(l *DynamicLoader[int, int]) error { return l.remove(ctx, "a") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, m, _ := newTestLoader(t, nil)
			require.NoError(t, l.Add(manifest(t, "a", "1.0.0", nil)))
			require.NoError(t, l.Load(ctx, "a"))
			require.NoError(t, l.Shutdown(ctx))
			require.Empty(t, registered(m))

			require.ErrorIs(t, tc.op(l), ErrClosed)
			require.Empty(t, registered(m), "nothing is loaded after Close")
			require.Equal(t, map[string]LoadState{"a": LoadDiscovered}, states(l), "nothing is changed after Close")
		})
	}
}

// TestLoaderCloseWaitsForRunningLoad checks that a load running when Close
// begins finishes first and is unloaded by Close, and that a load asked
// for once Close has begun is refused.
func TestLoaderCloseWaitsForRunningLoad(t *testing.T) {
	verifyNoLeaks(t)
	ctx := context.Background()
	m := newTestManager(t)
	l := NewDynamicLoader(m, nil)
	entered, release := make(chan struct{}), make(chan struct{})
	made := map[string]*echo{}
	var mu sync.Mutex
	l.RegisterFactory("inprocess", func(_ context.Context, mf *Manifest) (Plugin[int, int], error) {
		if mf.Name == "a" {
			close(entered)
			<-release
		}
		p := newEcho(mf.Name, mf.Version)
		mu.Lock()
		made[mf.Name] = p
		mu.Unlock()
		return p, nil
	})
	require.NoError(t, l.Add(manifest(t, "a", "1.0.0", nil)))
	require.NoError(t, l.Add(manifest(t, "b", "1.0.0", nil)))

	loadA := make(chan error, 1)
	go func() { loadA <- l.Load(ctx, "a") }()
	<-entered // a's load holds the loader
	closed := make(chan error, 1)
	go func() { closed <- l.Shutdown(ctx) }()
	require.Eventually(t, l.closed.Load, 10*time.Second, time.Millisecond, "Close has begun") // no event marks it
	loadB := make(chan error, 1)
	go func() { loadB <- l.Load(ctx, "b") }() // waits for its turn behind a's load and Close
	close(release)

	require.NoError(t, <-loadA)
	require.NoError(t, <-closed)
	require.ErrorIs(t, <-loadB, ErrClosed)
	require.Empty(t, registered(m), "a was unloaded by Close, b never loaded")
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, int32(1), made["a"].closed.Load())
	require.Nil(t, made["b"])
}

// TestLoaderManifestHealthOverridesOnlyItsFields checks that a manifest's
// health section replaces only the fields it sets in the manager's health
// settings.
func TestLoaderManifestHealthOverridesOnlyItsFields(t *testing.T) {
	host := HealthConfig{Interval: -1, Timeout: 500 * time.Millisecond, UnhealthyAfter: 7}
	for _, tc := range []struct {
		name   string
		health string // the manifest's health section, JSON
		want   HealthConfig
	}{
		{"none", `{}`, host},
		{"timeout only: checks stay off", `{"timeout": "2s"}`, HealthConfig{Interval: -1, Timeout: 2 * time.Second, UnhealthyAfter: 7}},
		{"interval only", `{"interval": "1m"}`, HealthConfig{Interval: time.Minute, Timeout: 500 * time.Millisecond, UnhealthyAfter: 7}},
		{"both", `{"interval": "1m", "timeout": "3s"}`, HealthConfig{Interval: time.Minute, Timeout: 3 * time.Second, UnhealthyAfter: 7}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newTestManager(t, WithPluginDefaults(WithHealthCheck(host)))
			l := NewDynamicLoader(m, nil)
			l.RegisterFactory("inprocess", newEchoFactory().make)
			t.Cleanup(func() { _ = l.Shutdown(context.Background()) })
			mf, err := ParseManifest("/plugins/a/plugin.json",
				[]byte(`{"name": "a", "version": "1.0.0", "transport": "inprocess", "health": `+tc.health+`}`))
			require.NoError(t, err)
			require.NoError(t, l.Add(mf))
			require.NoError(t, l.Load(context.Background(), "a"))
			require.Equal(t, tc.want, m.reg.Load().entries["a"].cfg.health)
		})
	}
}

func TestLoaderReloadWithAutoLoadOff(t *testing.T) {
	src := newMemSource(manifest(t, "auth", "1.0.0", nil))
	l, m, _ := newTestLoader(t, src, WithAutoLoad(false))
	ctx := context.Background()
	require.NoError(t, l.Start(ctx))
	require.ErrorIs(t, l.Reload(ctx, "auth"), ErrNotFound, "not loaded yet")
	require.NoError(t, l.Load(ctx, "auth"))

	send(src, DiscoveryEvent{Kind: DiscoveryUpdated, Name: "auth", Manifest: manifest(t, "auth", "1.1.0", nil)})
	info, _ := m.Info("auth")
	require.Equal(t, "1.0.0", info.Version, "auto-loading is off: the update waits")
	st := l.Status()[0]
	require.Equal(t, "1.1.0", st.Version)
	require.Equal(t, "1.0.0", st.Loaded)

	require.NoError(t, l.Reload(ctx, "auth"))
	info, _ = m.Info("auth")
	require.Equal(t, "1.1.0", info.Version)
	require.Equal(t, uint64(2), m.Metrics().Plugins["auth"].Generation)
	require.NoError(t, l.Reload(ctx, "auth"), "already the latest: nothing to do")
	require.Equal(t, uint64(2), m.Metrics().Plugins["auth"].Generation)
	require.ErrorIs(t, l.Reload(ctx, "nope"), ErrNotFound)
}

// receive returns the next value of ch or fails the test.
func receive[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(eventTimeout):
		t.Fatalf("nothing received within %s", eventTimeout)
	}
	panic("unreachable")
}

// inprocessJSON is an in-process manifest for a DiscoveryEngine's folder.
func inprocessJSON(name, version string) string {
	return fmt.Sprintf(`{"name": %q, "version": %q, "transport": "inprocess"}`, name, version)
}

// TestLoaderCycleDependentsWaitAsPending checks the LoadAll doc: plugins on
// a cycle fail, their dependents wait as pending, and the joined error
// names the cycle once.
func TestLoaderCycleDependentsWaitAsPending(t *testing.T) {
	src := newMemSource(
		manifest(t, "a", "1.0.0", map[string]string{"b": "*"}),
		manifest(t, "b", "1.0.0", map[string]string{"a": "*"}),
		manifest(t, "c", "1.0.0", map[string]string{"a": "*"}),
		manifest(t, "d", "1.0.0", map[string]string{"c": "*"}),
		manifest(t, "ok", "1.0.0", nil),
	)
	l, m, _ := newTestLoader(t, src)
	err := l.Start(context.Background())
	require.ErrorIs(t, err, ErrDependencyCycle)
	require.Equal(t, 1, strings.Count(err.Error(), "dependency cycle"), "the cycle is listed once: %v", err)
	require.Equal(t, map[string]LoadState{"a": LoadFailed, "b": LoadFailed, "c": LoadPending, "d": LoadPending, "ok": LoadLoaded}, states(l))
	require.Equal(t, []string{"ok"}, registered(m))
}

// TestLoaderUnloadedStaysUnloadedUntilLoad checks that a plugin unloaded
// right after Start is not loaded again by the start events still queued,
// nor by an updated manifest, but is by Load.
func TestLoaderUnloadedStaysUnloadedUntilLoad(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	writePlugin(t, filepath.Join(root, "base"), inprocessJSON("base", "1.0.0"))
	writePlugin(t, filepath.Join(root, "leaf"), inprocessJSON("leaf", "1.0.0"))
	e := startEngine(t, DiscoveryConfig{Roots: []string{root}})
	l, m, f := newTestLoader(t, e)
	require.NoError(t, l.Start(ctx))
	require.NoError(t, l.Unload(ctx, "leaf", UnloadRefuse))

	writePlugin(t, filepath.Join(root, "leaf"), inprocessJSON("leaf", "1.1.0"))
	updated := make(chan struct{})
	m.Subscribe(func(ev Event) {
		if ev.Kind == EventRegistered && ev.Plugin == "zz" {
			close(updated)
		}
	})
	// The engine orders a sweep's events by name: zz comes after leaf's update.
	writePlugin(t, filepath.Join(root, "zz"), inprocessJSON("zz", "1.0.0"))
	receive(t, updated)
	require.Equal(t, LoadDiscovered, states(l)["leaf"])
	require.ElementsMatch(t, []string{"base", "zz"}, registered(m))
	f.mu.Lock()
	require.Equal(t, 1, f.made["leaf"], "leaf was started once, before Unload")
	f.mu.Unlock()

	require.NoError(t, l.Load(ctx, "leaf"))
	info, ok := m.Info("leaf")
	require.True(t, ok)
	require.Equal(t, "1.1.0", info.Version, "Load takes the latest manifest")
}

// TestLoaderEveryFailedUpdateSendsReloadFailed checks that an update whose
// factory fails sends an EventReloadFailed, as a refused update does.
func TestLoaderEveryFailedUpdateSendsReloadFailed(t *testing.T) {
	src := newMemSource(manifest(t, "x", "1.0.0", nil))
	l, m, f := newTestLoader(t, src)
	failed := make(chan Event, 4)
	m.Subscribe(func(ev Event) {
		if ev.Kind == EventReloadFailed {
			failed <- ev
		}
	})
	require.NoError(t, l.Start(context.Background()))
	boom := errors.New("checksum mismatch")
	f.setFail("x", boom)
	send(src, DiscoveryEvent{Kind: DiscoveryUpdated, Name: "x", Manifest: manifest(t, "x", "1.1.0", nil)})
	ev := receive(t, failed)
	require.Equal(t, "x", ev.Plugin)
	require.ErrorIs(t, ev.Err, boom)
	require.Equal(t, uint64(1), l.metrics().ReloadFailures)
}

// TestLoaderOneBadPluginKeepsTheGoodLoaded checks the README's promise for
// Start: the plugins that could not load are reported, the others serve
// right away, each started once (the start events queued by the engine
// start nothing again).
func TestLoaderOneBadPluginKeepsTheGoodLoaded(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	writePlugin(t, filepath.Join(root, "kv"), inprocessJSON("kv", "1.0.0"))
	writePlugin(t, filepath.Join(root, "kvbad"), inprocessJSON("kvbad", "1.0.0"))
	writePlugin(t, filepath.Join(root, "kvuser"), `{"name": "kvuser", "version": "1.0.0", "transport": "inprocess", "dependencies": {"kvbad": "*"}}`)
	e := startEngine(t, DiscoveryConfig{Roots: []string{root}})
	l, m, f := newTestLoader(t, e)
	boom := errors.New("checksum mismatch")
	f.setFail("kvbad", boom)
	err := l.Start(ctx)
	require.ErrorIs(t, err, boom)
	require.Equal(t, []string{"kv"}, registered(m), "kv serves right after Start")
	require.Equal(t, map[string]LoadState{"kv": LoadLoaded, "kvbad": LoadFailed, "kvuser": LoadPending}, states(l))

	loaded := make(chan struct{})
	m.Subscribe(func(ev Event) {
		if ev.Kind == EventRegistered && ev.Plugin == "zz" {
			close(loaded)
		}
	})
	writePlugin(t, filepath.Join(root, "zz"), inprocessJSON("zz", "1.0.0"))
	receive(t, loaded) // the start events came before zz's
	f.mu.Lock()
	defer f.mu.Unlock()
	require.Equal(t, 1, f.made["kv"], "kv started once")
	require.Equal(t, int32(0), f.close["kv"].closed.Load())
}

// TestLoaderShutdownRetriedAfterCtxEndsFinishes checks the lifecycle rule:
// a Shutdown whose ctx ended says so and can be called again to finish;
// once finished, further calls return its result.
func TestLoaderShutdownRetriedAfterCtxEndsFinishes(t *testing.T) {
	l, m, f := newTestLoader(t, nil)
	require.NoError(t, l.Add(manifest(t, "a", "1.0.0", nil)))
	require.NoError(t, l.Load(context.Background(), "a"))
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	err := l.Shutdown(ended)
	require.ErrorIs(t, err, ErrCanceled)
	require.ErrorIs(t, err, context.Canceled)
	require.ErrorIs(t, l.Load(context.Background(), "a"), ErrClosed, "Shutdown has begun")
	require.Equal(t, []string{"a"}, registered(m), "nothing unloaded yet")

	require.NoError(t, l.Shutdown(context.Background()))
	require.Empty(t, registered(m))
	require.Equal(t, int32(1), f.close["a"].closed.Load())
	require.NoError(t, l.Shutdown(ended), "the first result, though this ctx has ended")
}

// TestLoaderCallerCtxEndingIsCanceled checks the project's rule on the
// loader's path: a factory stopped by the caller's ctx ending gives an
// error matching ErrCanceled and the ctx's error, not a factory failure.
func TestLoaderCallerCtxEndingIsCanceled(t *testing.T) {
	m := newTestManager(t)
	l := NewDynamicLoader(m, nil)
	t.Cleanup(func() { _ = l.Shutdown(context.Background()) })
	l.RegisterFactory("inprocess", func(ctx context.Context, _ *Manifest) (Plugin[int, int], error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	require.NoError(t, l.Add(manifest(t, "a", "1.0.0", nil)))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := l.Load(ctx, "a")
	require.ErrorIs(t, err, ErrCanceled)
	require.ErrorIs(t, err, context.Canceled)
	require.NotErrorIs(t, err, ErrInvalidPlugin)
}
