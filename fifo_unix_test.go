//go:build unix

package goplugins

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Named pipes where a manifest or configuration belongs (unix only: the
// tests make them with mkfifo).

// TestLoadConfigRefusesNamedPipeWithoutBlocking checks that a named pipe
// as a configuration, or as a manifest it references, is refused at once.
func TestLoadConfigRefusesNamedPipeWithoutBlocking(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "goplugins.yaml")
	require.NoError(t, syscall.Mkfifo(fifo, 0o644))
	_, err := LoadConfig(fifo) // blocked forever before the fix
	require.ErrorIs(t, err, ErrInvalidConfig)
	require.ErrorContains(t, err, "named pipe")

	ref := filepath.Join(dir, "p", "plugin.json")
	require.NoError(t, os.MkdirAll(filepath.Dir(ref), 0o755))
	require.NoError(t, syscall.Mkfifo(ref, 0o644))
	cfg := filepath.Join(dir, "c.yaml")
	writeFile(t, cfg, "plugins:\n - {manifest: ./p/plugin.json}\n")
	_, err = LoadConfig(cfg)
	require.ErrorIs(t, err, ErrInvalidManifest)
	require.ErrorContains(t, err, "named pipe")
}

// TestConfigWatcherNamedPipeIsReportedAndCloseReturns checks that a
// configuration replaced by a named pipe while watched is reported as
// invalid instead of blocking the watcher, and that Close returns.
func TestConfigWatcherNamedPipeIsReportedAndCloseReturns(t *testing.T) {
	verifyNoLeaks(t)
	path := filepath.Join(t.TempDir(), "c.yaml")
	writeFile(t, path, "plugins:\n  - {name: a, version: 1.0.0, transport: inprocess}\n")
	reported := make(chan error, 1)
	w, err := NewConfigWatcher(path, ConfigWatchOptions{PollInterval: 10 * time.Millisecond, OnError: func(err error) {
		select {
		case reported <- err:
		default:
		}
	}})
	require.NoError(t, err)
	require.NoError(t, w.Start(context.Background()))
	require.Equal(t, DiscoveryAdded, nextConfigEvent(t, w).Kind)
	require.NoError(t, os.Remove(path))
	require.NoError(t, syscall.Mkfifo(path, 0o644))
	ev := nextConfigEvent(t, w)
	require.Equal(t, DiscoveryInvalid, ev.Kind)
	require.ErrorContains(t, ev.Err, "named pipe")
	select {
	case err := <-reported:
		require.ErrorContains(t, err, "named pipe")
	case <-time.After(eventTimeout):
		t.Fatal("OnError was not called")
	}
	require.Equal(t, "1.0.0", w.Config().Plugins[0].Version, "the last good configuration stays in force")
	require.NoError(t, w.Close())
	require.NoError(t, w.Close(), "a second Close returns the first result")
}

// TestLoadManifestRefusesNamedPipeWithoutBlocking checks that a named pipe
// where a manifest belongs is refused at once, not waited on.
func TestLoadManifestRefusesNamedPipeWithoutBlocking(t *testing.T) {
	path := filepath.Join(t.TempDir(), "plugin.json")
	require.NoError(t, syscall.Mkfifo(path, 0o644))
	_, err := LoadManifest(path) // blocked forever before the fix
	require.ErrorIs(t, err, ErrInvalidManifest)
	assert.Contains(t, err.Error(), "named pipe")
	assert.Contains(t, err.Error(), path)
}
