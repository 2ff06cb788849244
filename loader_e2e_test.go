package goplugins

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// installPlugin copies a test plugin binary into dir as file and writes an
// atomic plugin.json for it.
func installPlugin(t *testing.T, dir, binary, file, version string) {
	t.Helper()
	data, err := os.ReadFile(pluginBinary(t, binary))
	require.NoError(t, err)
	require.NoError(t, os.MkdirAll(dir, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, file), data, 0o755))
	sum := sha256.Sum256(data)
	manifest := fmt.Sprintf(`{"name": "echo", "version": %q, "transport": "subprocess",
		"command": "./%s", "checksum": "sha256:%s", "surfaces": ["state", "stream"], "timeout": "5s"}`,
		version, file, hex.EncodeToString(sum[:]))
	tmp := filepath.Join(dir, ".plugin.json.tmp")
	require.NoError(t, os.WriteFile(tmp, []byte(manifest), 0o644))
	require.NoError(t, os.Rename(tmp, filepath.Join(dir, "plugin.json")))
}

// TestDiscoveryToReloadEndToEnd drives the whole flow with real files and
// real child processes: a manifest appears and its plugin loads; a new
// version's manifest replaces it and the plugin is hot-swapped with its
// state; the folder goes away and the plugin is unloaded.
func TestDiscoveryToReloadEndToEnd(t *testing.T) {
	verifyNoLeaks(t)
	root := t.TempDir()
	dir := filepath.Join(root, "echo")
	installPlugin(t, dir, "echo", "echo-1", "1.0.0")

	ctx := context.Background()
	engine, err := NewDiscoveryEngine(DiscoveryConfig{Roots: []string{root}, PollInterval: 20 * time.Millisecond})
	require.NoError(t, err)
	m := NewManager[echoReq, echoResp](WithPluginDefaults(WithHealthCheck(HealthConfig{Interval: -1})))
	events := make(chan Event, 64)
	m.Subscribe(func(ev Event) { events <- ev })
	loader := NewDynamicLoader(m, engine)
	loader.RegisterFactory("subprocess", SubprocessFactory[echoReq, echoResp](SubprocessConfig{Logger: slog.New(slog.DiscardHandler)}))
	require.NoError(t, engine.Start(ctx))
	require.NoError(t, loader.Start(ctx))

	await := func(kind EventKind) Event {
		t.Helper()
		timeout := time.After(30 * time.Second)
		for {
			select {
			case ev := <-events:
				require.NotContains(t, []EventKind{EventReloadFailed, EventLoadFailed}, ev.Kind, "%s: %v", ev.Kind, ev.Err)
				if ev.Kind == kind {
					return ev
				}
			case <-timeout:
				t.Fatalf("no %s event", kind)
			}
		}
	}
	await(EventRegistered)
	_, err = m.Execute(ctx, "echo", echoReq{Op: "set", Data: "hello"})
	require.NoError(t, err)

	installPlugin(t, dir, "echo2", "echo-2", "2.0.0")
	ev := await(EventReloaded)
	require.Equal(t, "2.0.0", ev.Version)
	require.Equal(t, []Surface{SurfaceState, SurfaceStream}, ev.Reload.Steps)
	got, err := m.Execute(ctx, "echo", echoReq{Op: "get"})
	require.NoError(t, err)
	require.Equal(t, echoResp{Data: "hello (restored from 1.0.0)", Version: "2.0.0"}, got)

	require.NoError(t, os.RemoveAll(dir))
	await(EventUnregistered)
	_, err = m.Execute(ctx, "echo", echoReq{})
	require.ErrorIs(t, err, ErrNotFound)

	require.NoError(t, loader.Shutdown(ctx))
	require.NoError(t, engine.Close())
	require.NoError(t, m.Shutdown(ctx))
}

func TestSubprocessFactoryRefusesOtherProtocol(t *testing.T) {
	mf, err := ParseManifest(filepath.Join(t.TempDir(), "plugin.json"),
		[]byte(`{"name": "echo", "version": "1.0.0", "transport": "subprocess", "command": "./echo", "requires": {"protocol": 3}}`))
	require.NoError(t, err)
	_, err = SubprocessFactory[echoReq, echoResp](SubprocessConfig{})(context.Background(), mf)
	require.ErrorIs(t, err, ErrHandshake)
	require.ErrorContains(t, err, "protocol 3")
}

// TestLoaderChecksumErrorNamesManifestFieldOnce checks the error a host
// reads when a binary does not match its manifest's checksum: one line,
// one code, naming the manifest and its checksum field, and no process run.
func TestLoaderChecksumErrorNamesManifestFieldOnce(t *testing.T) {
	verifyNoLeaks(t)
	root := t.TempDir()
	dir := filepath.Join(root, "echo")
	installPlugin(t, dir, "echo", "echo-1", "1.0.0")
	path := filepath.Join(dir, "plugin.json")
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	bad := regexp.MustCompile(`sha256:[0-9a-f]+`).ReplaceAll(data, []byte("sha256:"+strings.Repeat("0", 64)))
	require.NoError(t, os.WriteFile(path, bad, 0o644))

	ctx := context.Background()
	engine, err := NewDiscoveryEngine(DiscoveryConfig{Roots: []string{root}})
	require.NoError(t, err)
	m := NewManager[echoReq, echoResp](WithPluginDefaults(WithHealthCheck(HealthConfig{Interval: -1})))
	loader := NewDynamicLoader(m, engine)
	loader.RegisterFactory("subprocess", SubprocessFactory[echoReq, echoResp](SubprocessConfig{Logger: slog.New(slog.DiscardHandler)}))
	require.NoError(t, engine.Start(ctx))
	err = loader.Start(ctx)
	require.ErrorIs(t, err, ErrChecksumMismatch)
	msg := err.Error()
	require.Equal(t, 1, strings.Count(msg, "[PLUGIN_"), msg)
	require.Equal(t, 1, strings.Count(msg, path), msg)
	require.Contains(t, msg, "field checksum")
	require.Empty(t, m.Plugins())
	require.NoError(t, errors.Join(loader.Shutdown(ctx), engine.Close(), m.Shutdown(ctx)))
}
