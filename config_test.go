package goplugins

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	tmp := path + ".tmp"
	require.NoError(t, os.WriteFile(tmp, []byte(content), 0o644))
	require.NoError(t, os.Rename(tmp, path))
}

func TestParseConfig(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "extra", "auth", "plugin.json"), `{"name": "auth", "version": "1.2.0", "transport": "inprocess"}`)
	t.Setenv("GOPLUGINS_TEST_ROOT", "plugins")
	t.Setenv("GOPLUGINS_TEST_EMPTY", "")

	yamlConfig := `
host_version: 1.4.0
defaults:
  timeout: 5s
  drain_timeout: 3s
  breaker: {consecutive_failures: 7, failure_rate: 0.5, min_calls: 10, window: 30s, open_timeout: 2s, half_open_probes: 2}
  health: {interval: 15s, timeout: 1s, unhealthy_after: 4}
  restart: {max_attempts: 3, backoff: 50ms, max_backoff: 1s, min_uptime: 20s}
discovery:
  roots: ["./${GOPLUGINS_TEST_ROOT}", "${GOPLUGINS_TEST_UNSET:-/opt/plugins}"]
  max_depth: 3
  poll_interval: 500ms
plugins:
  - manifest: ./extra/auth/plugin.json
  - name: metrics
    version: 2.0.0
    transport: inprocess
    description: "costs $$5 ${GOPLUGINS_TEST_EMPTY:-nothing}"
    dependencies: {auth: ^1.0.0}
`
	path := filepath.Join(dir, "goplugins.yaml")
	writeFile(t, path, yamlConfig)
	c, err := LoadConfig(path)
	require.NoError(t, err)
	require.Equal(t, "1.4.0", c.HostVersion)
	require.Equal(t, ConfigDefaults{
		Timeout: 5 * time.Second, DrainTimeout: 3 * time.Second,
		Breaker: BreakerConfig{ConsecutiveFailures: 7, FailureRate: 0.5, MinCalls: 10, Window: 30 * time.Second, OpenTimeout: 2 * time.Second, HalfOpenProbes: 2},
		Health:  HealthConfig{Interval: 15 * time.Second, Timeout: time.Second, UnhealthyAfter: 4},
		Restart: RestartPolicy{MaxAttempts: 3, Backoff: 50 * time.Millisecond, MaxBackoff: time.Second, MinUptime: 20 * time.Second},
	}, c.Defaults)
	require.Equal(t, []string{filepath.Join(dir, "plugins"), "/opt/plugins"}, c.Discovery.Roots)
	require.Equal(t, 3, c.Discovery.MaxDepth)
	require.Equal(t, 500*time.Millisecond, c.Discovery.PollInterval)
	require.Len(t, c.Plugins, 2)
	require.Equal(t, "auth", c.Plugins[0].Name)
	require.Equal(t, filepath.Join(dir, "extra", "auth", "plugin.json"), c.Plugins[0].Path)
	require.Equal(t, "metrics", c.Plugins[1].Name)
	require.Equal(t, "costs $5 nothing", c.Plugins[1].Description, "$$ is a literal $; an empty variable takes the :- default")
	require.Equal(t, []Dependency{{Name: "auth", Constraint: "^1.0.0"}}, c.Plugins[1].Dependencies)
	require.NotNil(t, c.versionPolicy())
	mc := defaultManagerConfig()
	for _, o := range c.ManagerOptions() {
		o.applyManager(&mc)
	}
	require.Equal(t, 5*time.Second, mc.plugin.timeout, "ManagerOptions: the defaults")
	require.Equal(t, 3*time.Second, mc.plugin.drain)
	require.Equal(t, 7, mc.plugin.breaker.ConsecutiveFailures)
	require.Equal(t, 4, mc.plugin.health.UnhealthyAfter)
	require.NotNil(t, mc.policy, "ManagerOptions: the host version's policy")

	// The same configuration in JSON parses the same.
	jsonPath := filepath.Join(dir, "goplugins.json")
	writeFile(t, jsonPath, `{"host_version": "1.4.0", "plugins": [{"manifest": "./extra/auth/plugin.json"}]}`)
	cj, err := LoadConfig(jsonPath)
	require.NoError(t, err)
	require.Equal(t, "auth", cj.Plugins[0].Name)
}

func TestParseConfigErrors(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name, file, content string
		want                error
		mention             string
	}{
		{"unknown top-level field", "c.yaml", "hosts_version: 1.0.0\n", ErrInvalidConfig, "hosts_version"},
		{"unknown defaults field", "c.json", `{"defaults": {"timout": "5s"}}`, ErrInvalidConfig, "timout"},
		{"bad duration", "c.yaml", "defaults: {timeout: 5 seconds}\n", ErrInvalidConfig, "defaults.timeout"},
		{"bad host version", "c.yaml", "host_version: v1\n", ErrInvalidConfig, "host_version"},
		{"unset variable", "c.yaml", "discovery: {roots: [\"${GOPLUGINS_SURELY_UNSET}\"]}\n", ErrInvalidConfig, "GOPLUGINS_SURELY_UNSET"},
		{"no roots", "c.yaml", "discovery: {max_depth: 2}\n", ErrInvalidConfig, "discovery.roots"},
		{"bad rate", "c.yaml", "defaults: {breaker: {failure_rate: 2}}\n", ErrInvalidConfig, "failure_rate"},
		{"duplicate plugin", "c.yaml", "plugins:\n - {name: a, version: 1.0.0, transport: inprocess}\n - {name: a, version: 1.1.0, transport: inprocess}\n", ErrInvalidConfig, "plugins[1]"},
		{"invalid inline manifest", "c.yaml", "plugins:\n - {name: a, version: 1.0, transport: inprocess}\n", ErrInvalidManifest, "plugins[0]"},
		{"inline path escape", "c.yaml", "plugins:\n - {name: a, version: 1.0.0, transport: subprocess, command: ../../bin/a}\n", ErrInvalidManifest, "command"},
		{"reference with other fields", "c.yaml", "plugins:\n - {manifest: ./x/plugin.json, name: a}\n", ErrInvalidConfig, "no other field"},
		{"missing reference", "c.yaml", "plugins:\n - {manifest: ./nope/plugin.json}\n", ErrInvalidManifest, "nope"},
		{"bad extension", "c.toml", "x = 1\n", ErrInvalidConfig, ".toml"},
		{"broken YAML", "c.yaml", "plugins: [\n", ErrInvalidConfig, "YAML"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, tc.file)
			_, err := ParseConfig(path, []byte(tc.content))
			require.ErrorIs(t, err, tc.want)
			require.ErrorContains(t, err, tc.mention)
		})
	}
}

func TestExpandString(t *testing.T) {
	t.Setenv("GP_A", "alpha")
	t.Setenv("GP_EMPTY", "")
	cases := []struct{ in, want, err string }{
		{"plain", "plain", ""},
		{"${GP_A}/x", "alpha/x", ""},
		{"${GP_UNSET_X:-def}", "def", ""},
		{"${GP_EMPTY:-def}", "def", ""},
		{"${GP_EMPTY}", "", ""},
		{"$$5 and $5", "$5 and $5", ""},
		{"${GP_UNSET_X}", "", "not set"},
		{"${GP_A", "", "unclosed"},
		{"${1BAD}", "", "not a variable name"},
	}
	for _, tc := range cases {
		got, err := expandString(tc.in)
		if tc.err != "" {
			require.ErrorContains(t, err, tc.err, tc.in)
			continue
		}
		require.NoError(t, err, tc.in)
		require.Equal(t, tc.want, got, tc.in)
	}
}

// TestConfigWatcherRoundTrip drives a loader from a configuration file:
// plugins added, changed and removed in the file are loaded, reloaded and
// unloaded; a broken file keeps the last good configuration serving.
func TestConfigWatcherRoundTrip(t *testing.T) {
	verifyNoLeaks(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "plugins.yaml")
	writeFile(t, path, "plugins:\n  - {name: a, version: 1.0.0, transport: inprocess}\n")

	var errMu sync.Mutex
	var reported []error
	w, err := NewConfigWatcher(path, ConfigWatchOptions{PollInterval: 10 * time.Millisecond, OnError: func(err error) {
		errMu.Lock()
		reported = append(reported, err)
		errMu.Unlock()
	}})
	require.NoError(t, err)
	require.NoError(t, w.Start(context.Background()))
	m := NewManager[int, int](WithPluginDefaults(WithHealthCheck(HealthConfig{Interval: -1})))
	events := make(chan Event, 64)
	m.Subscribe(func(ev Event) { events <- ev })
	l := NewDynamicLoader(m, w)
	l.RegisterFactory("inprocess", newEchoFactory().make)
	ctx := context.Background()
	require.NoError(t, l.Start(ctx))
	await := func(kind EventKind, plugin string) Event {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for {
			select {
			case ev := <-events:
				if ev.Kind == kind && ev.Plugin == plugin {
					return ev
				}
			case <-timeout:
				t.Fatalf("no %s event for %s", kind, plugin)
			}
		}
	}
	await(EventRegistered, "a")

	writeFile(t, path, "plugins:\n  - {name: a, version: 1.1.0, transport: inprocess}\n  - {name: b, version: 1.0.0, transport: inprocess, dependencies: {a: ^1.0.0}}\n")
	await(EventRegistered, "b")
	require.Equal(t, "1.1.0", await(EventReloaded, "a").Version)

	// A broken file: the last good configuration keeps serving.
	writeFile(t, path, "plugins:\n  - {name: a, version: 1.2.0, transport: inprocess, colour: red}\n")
	require.Eventually(t, func() bool { return w.Err() != nil }, 10*time.Second, 5*time.Millisecond)
	require.ErrorIs(t, w.Err(), ErrInvalidManifest)
	require.ErrorContains(t, w.Err(), "colour")
	errMu.Lock()
	require.Len(t, reported, 1)
	errMu.Unlock()
	require.Len(t, w.Config().Plugins, 2)
	got, err := m.Execute(ctx, "b", 7)
	require.NoError(t, err)
	require.Equal(t, 7, got)

	// Fixed, and b removed: b is unloaded.
	writeFile(t, path, "plugins:\n  - {name: a, version: 1.1.0, transport: inprocess}\n")
	await(EventUnregistered, "b")
	require.NoError(t, w.Err())
	require.Equal(t, []string{"a"}, registered(m))

	require.NoError(t, l.Shutdown(ctx))
	require.NoError(t, w.Close())
	require.NoError(t, w.Close())
	require.NoError(t, m.Shutdown(ctx))
}

func TestConfigWatcherLongPath(t *testing.T) {
	verifyNoLeaks(t)
	dir := t.TempDir()
	for len(dir) < 120 {
		dir = filepath.Join(dir, "a-rather-long-folder-name")
	}
	path := filepath.Join(dir, "plugins.json")
	require.Greater(t, len(path), 109)
	writeFile(t, path, `{"plugins": [{"name": "a", "version": "1.0.0", "transport": "inprocess"}]}`)
	w, err := NewConfigWatcher(path, ConfigWatchOptions{PollInterval: 10 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, w.Start(context.Background()))
	defer w.Close()
	ev := <-w.Events()
	require.Equal(t, DiscoveryAdded, ev.Kind)
	writeFile(t, path, `{"plugins": [{"name": "a", "version": "1.0.1", "transport": "inprocess"}]}`)
	ev = <-w.Events()
	require.Equal(t, DiscoveryUpdated, ev.Kind)
	require.Equal(t, "1.0.1", ev.Manifest.Version)
}

func TestConfigWatcherInvalidAtStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.yaml")
	writeFile(t, path, "nonsense: true\n")
	_, err := NewConfigWatcher(path, ConfigWatchOptions{})
	require.ErrorIs(t, err, ErrInvalidConfig)
}

func TestMergeSources(t *testing.T) {
	first := newMemSource(manifest(t, "a", "1.0.0", nil))
	second := newMemSource(manifest(t, "a", "2.0.0", nil), manifest(t, "b", "1.0.0", nil))
	merged := MergeSources(first, second)
	got := merged.Manifests()
	require.Len(t, got, 2)
	require.Equal(t, "1.0.0", got[0].Version, "the first source wins")

	recv := func() DiscoveryEvent {
		t.Helper()
		select {
		case ev := <-merged.Events():
			return ev
		case <-time.After(5 * time.Second):
			t.Fatal("no merged event")
		}
		return DiscoveryEvent{}
	}
	// The second source's update to a shadowed plugin is reported, not used.
	second.events <- DiscoveryEvent{Kind: DiscoveryUpdated, Name: "a", Manifest: manifest(t, "a", "2.1.0", nil)}
	ev := recv()
	require.Equal(t, DiscoveryInvalid, ev.Kind)
	require.True(t, errors.Is(ev.Err, ErrInvalidManifest))
	// The first source removes it: the second takes over.
	first.events <- DiscoveryEvent{Kind: DiscoveryRemoved, Name: "a"}
	ev = recv()
	require.Equal(t, DiscoveryUpdated, ev.Kind)
	require.Equal(t, "2.1.0", ev.Manifest.Version)
	// The second removes it too: it is gone.
	second.events <- DiscoveryEvent{Kind: DiscoveryRemoved, Name: "a"}
	require.Equal(t, DiscoveryRemoved, recv().Kind)
	// Unrelated events pass through.
	first.events <- DiscoveryEvent{Kind: DiscoveryAdded, Name: "c", Manifest: manifest(t, "c", "1.0.0", nil)}
	require.Equal(t, "c", recv().Name)

	close(first.events)
	close(second.events)
	_, open := <-merged.Events()
	require.False(t, open, "closed once every source is closed")
}

// TestConfigWatcherOnError checks that OnError may read the watcher's state
// and may panic: either way the last good configuration stays in force,
// later changes are still applied and Close returns.
func TestConfigWatcherOnError(t *testing.T) {
	for _, tc := range []struct {
		name  string
		panic bool
	}{
		{name: "reads Err and Config"},
		{name: "panics", panic: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			verifyNoLeaks(t)
			path := filepath.Join(t.TempDir(), "plugins.yaml")
			writeFile(t, path, "plugins:\n  - {name: a, version: 1.0.0, transport: inprocess}\n")
			type seen struct {
				err error
				cfg *Config
			}
			called := make(chan seen, 1)
			var w *ConfigWatcher
			ready := make(chan struct{})
			w, err := NewConfigWatcher(path, ConfigWatchOptions{PollInterval: 10 * time.Millisecond, OnError: func(error) {
				<-ready
				if tc.panic {
					called <- seen{}
					panic("host bug")
				}
				called <- seen{err: w.Err(), cfg: w.Config()}
			}})
			require.NoError(t, err)
			require.NoError(t, w.Start(context.Background()))
			close(ready)
			require.Equal(t, DiscoveryAdded, (<-w.Events()).Kind)

			writeFile(t, path, "plugins:\n  - {name: a, version: 1.1.0, transport: inprocess, colour: red}\n")
			var got seen
			select {
			case got = <-called:
			case <-time.After(10 * time.Second):
				t.Fatal("OnError was not called, or blocked in the watcher")
			}
			ev := <-w.Events()
			require.Equal(t, DiscoveryInvalid, ev.Kind)
			require.ErrorIs(t, ev.Err, ErrInvalidManifest)
			if !tc.panic {
				require.ErrorIs(t, got.err, ErrInvalidManifest, "Err inside OnError sees the new error")
				require.Equal(t, "1.0.0", got.cfg.Plugins[0].Version, "Config inside OnError is the last good one")
			}

			writeFile(t, path, "plugins:\n  - {name: a, version: 1.2.0, transport: inprocess}\n")
			ev = <-w.Events()
			require.Equal(t, DiscoveryUpdated, ev.Kind, "the watcher goes on after OnError")
			require.Equal(t, "1.2.0", ev.Manifest.Version)
			require.NoError(t, w.Err())

			closed := make(chan struct{})
			go func() {
				_ = w.Close()
				close(closed)
			}()
			select {
			case <-closed:
			case <-time.After(10 * time.Second):
				t.Fatal("Close blocked")
			}
		})
	}
}

// TestConfigMissingReferenceSaysCodeAndPathOnce checks that the error for
// a referenced manifest that is missing is one line naming the
// configuration, the entry and the manifest's path once, with one code.
func TestConfigMissingReferenceSaysCodeAndPathOnce(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.yaml")
	_, err := ParseConfig(path, []byte("plugins:\n - {manifest: ./nope/plugin.json}\n"))
	require.ErrorIs(t, err, ErrInvalidManifest)
	require.ErrorIs(t, err, os.ErrNotExist)
	msg := err.Error()
	require.Equal(t, 1, strings.Count(msg, "[PLUGIN_"), msg)
	require.Equal(t, 1, strings.Count(msg, filepath.Join(dir, "nope", "plugin.json")), msg)
	require.Contains(t, msg, "plugins[0].manifest")
	require.NotContains(t, msg, "\n")
}

// nextConfigEvent returns the watcher's next event or fails the test.
func nextConfigEvent(t *testing.T, w *ConfigWatcher) DiscoveryEvent {
	t.Helper()
	select {
	case ev, ok := <-w.Events():
		require.True(t, ok, "events channel closed")
		return ev
	case <-time.After(eventTimeout):
		t.Fatalf("no configuration event within %s", eventTimeout)
	}
	panic("unreachable")
}

// TestConfigWatcherSeesWriteBeforeFirstWatch checks the change between the
// first load and the first watch: a write that lands after the file was
// read and before argus watches it is delivered too.
func TestConfigWatcherSeesWriteBeforeFirstWatch(t *testing.T) {
	verifyNoLeaks(t)
	path := filepath.Join(t.TempDir(), "c.yaml")
	writeFile(t, path, "plugins:\n  - {name: a, version: 1.0.0, transport: inprocess}\n")
	w, err := NewConfigWatcher(path, ConfigWatchOptions{PollInterval: 10 * time.Millisecond})
	require.NoError(t, err)
	defer w.Close()
	writeFile(t, path, "plugins:\n  - {name: a, version: 1.1.0, transport: inprocess}\n")
	require.NoError(t, w.Start(context.Background()))
	require.Equal(t, DiscoveryAdded, nextConfigEvent(t, w).Kind)
	ev := nextConfigEvent(t, w)
	require.Equal(t, DiscoveryUpdated, ev.Kind)
	require.Equal(t, "1.1.0", ev.Manifest.Version)
}

// TestConfigErrorsNameFileFieldPathAndWant checks the errors a user reads
// for a configuration of the wrong shape: the file, the field's path and
// what was expected, in the terms of the file's format, with no Go types.
func TestConfigErrorsNameFileFieldPathAndWant(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, file, content string
		want                []string
	}{
		{"yaml number for a string", "c.yaml", "host_version: 1.4\n", []string{"host_version: want a string, got the number 1.4", `quote it: "1.4"`}},
		{"yaml mapping for a list", "c.yaml", "plugins: {name: a}\n", []string{"plugins: want a list, got a mapping"}},
		{"yaml misspelt field", "c.yaml", "defaults:\n  timeuot: 5s\n", []string{"defaults.timeuot is not a field", "the fields in defaults are", "timeout"}},
		{"yaml nested wrong kind", "c.yaml", "defaults: {breaker: {min_calls: many}}\n", []string{`defaults.breaker.min_calls: want a whole number, got the string "many"`}},
		{"yaml inline manifest number for a string", "c.yaml", "plugins:\n  - {name: a, version: 1.5, transport: inprocess}\n", []string{"plugins[0].version: want a string, got the number 1.5", "quote it"}},
		{"yaml inline manifest misspelt field", "c.yaml", "plugins:\n  - {name: a, version: 1.0.0, transport: inprocess, timeuot: 5s}\n", []string{"plugins[0].timeuot is not a field", "the fields in plugins[0] are"}},
		{"yaml inline dependency of the wrong kind", "c.yaml", "plugins:\n  - {name: a, version: 1.0.0, transport: inprocess, dependencies: {b: [1]}}\n", []string{"plugins[0].dependencies.b: want a constraint string or {version: ..., optional: true}, got a sequence"}},
		{"json object for a string", "c.json", `{"host_version": {"v": 1}}`, []string{"host_version: want a string, got an object"}},
		{"json duplicate key refused like yaml", "c.json", `{"defaults": {"timeout": "1s", "timeout": "2s"}}`, []string{"defaults.timeout is given twice"}},
		{"yaml duplicate key", "c.yaml", "host_version: 1.0.0\nhost_version: 1.1.0\n", []string{"host_version"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, tc.file)
			_, err := ParseConfig(path, []byte(tc.content))
			if strings.Contains(tc.name, "inline") {
				require.ErrorIs(t, err, ErrInvalidManifest, "a plugin's problem")
			} else {
				require.ErrorIs(t, err, ErrInvalidConfig)
			}
			msg := err.Error()
			require.Contains(t, msg, path)
			for _, w := range tc.want {
				require.Contains(t, msg, w)
			}
			for _, internal := range []string{"json: cannot", "json: unknown", "rawConfig", "map[string]", "Go struct"} {
				require.NotContains(t, msg, internal)
			}
		})
	}
}

// TestConfigWatcherLifecycle checks the rule the two manifest sources
// share: made, then Start (once), then Close (a second Close returns the
// first result); Start after Close or with an ended ctx fails.
func TestConfigWatcherLifecycle(t *testing.T) {
	verifyNoLeaks(t)
	path := filepath.Join(t.TempDir(), "c.yaml")
	writeFile(t, path, "plugins:\n  - {name: a, version: 1.0.0, transport: inprocess}\n")
	opts := ConfigWatchOptions{PollInterval: 10 * time.Millisecond}

	w, err := NewConfigWatcher(path, opts)
	require.NoError(t, err)
	require.Equal(t, "a", w.Manifests()[0].Name, "the configuration is in force before Start")
	require.NoError(t, w.Close(), "Close before Start")
	_, open := <-w.Events()
	require.False(t, open, "Close closes Events")
	require.ErrorIs(t, w.Start(context.Background()), ErrClosed)

	w, err = NewConfigWatcher(path, opts)
	require.NoError(t, err)
	require.NoError(t, w.Start(context.Background()))
	require.ErrorContains(t, w.Start(context.Background()), "started already")
	require.NoError(t, w.Close())
	require.NoError(t, w.Close())

	w, err = NewConfigWatcher(path, opts)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = w.Start(ctx)
	require.ErrorIs(t, err, ErrCanceled)
	require.ErrorIs(t, err, context.Canceled)
	require.NoError(t, w.Close())
}
