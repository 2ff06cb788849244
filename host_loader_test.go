package goplugins

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// hostFuncsManifest parses an in-process manifest of version that asks for
// fns (nil: no host_functions field).
func hostFuncsManifest(t *testing.T, dir, name, version string, fns []string) *Manifest {
	t.Helper()
	data := fmt.Sprintf(`{"name": %q, "version": %q, "transport": "inprocess"`, name, version)
	if fns != nil {
		data += fmt.Sprintf(`, "host_functions": ["%s"]`, strings.Join(fns, `", "`))
	}
	mf, err := ParseManifest(filepath.Join(dir, name, "plugin.json"), []byte(data+"}"))
	require.NoError(t, err)
	return mf
}

// inprocHostUserFactory makes inprocHostUser plugins and keeps the latest of each name.
type inprocHostUserFactory struct {
	mu     sync.Mutex
	latest map[string]*inprocHostUser
}

func (f *inprocHostUserFactory) make(_ context.Context, mf *Manifest) (Plugin[int, int], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := newInprocHostUser(mf.Name, nil)
	p.version = mf.Version
	f.latest[mf.Name] = p
	return p, nil
}

func (f *inprocHostUserFactory) host(name string) *Host {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.latest[name].host.Load()
}

func TestLoaderManifestAsksAndGrantsBothNeeded(t *testing.T) {
	kv := &memKV{}
	m := newTestManager(t, WithHostFuncs(kv.funcs()...), WithGrants(Grant{Plugins: "*", Funcs: []string{"*"}}))
	l := NewDynamicLoader(m, newMemSource(), WithAutoLoad(false))
	t.Cleanup(func() { _ = l.Shutdown(context.Background()) })
	f := &inprocHostUserFactory{latest: map[string]*inprocHostUser{}}
	l.RegisterFactory("inprocess", f.make)
	dir, ctx := t.TempDir(), context.Background()
	require.NoError(t, l.Add(hostFuncsManifest(t, dir, "app", "1.0.0", []string{"kv.get"})))
	require.NoError(t, l.Add(hostFuncsManifest(t, dir, "bare", "1.0.0", nil)))
	require.NoError(t, l.Load(ctx, "app"))
	require.NoError(t, l.Load(ctx, "bare"))

	call := func(plugin, fn string) error {
		_, err := CallHost[memKVReq, memKVResp](ctx, f.host(plugin), fn, memKVReq{Key: "k"})
		return err
	}
	require.NoError(t, call("app", "kv.get"), "asked and granted")
	err := call("app", "kv.put")
	require.ErrorIs(t, err, ErrNotGranted, "granted, not asked")
	require.Contains(t, err.Error(), "host_functions")
	require.ErrorIs(t, call("bare", "kv.get"), ErrNotGranted, "a manifest that asks for nothing gets nothing")

	// A reload applies the new manifest's asks.
	require.NoError(t, l.Add(hostFuncsManifest(t, dir, "app", "1.1.0", []string{"kv.put"})))
	require.NoError(t, l.Reload(ctx, "app"))
	require.NoError(t, call("app", "kv.put"))
	require.ErrorIs(t, call("app", "kv.get"), ErrNotGranted)

	// A reload from Go code keeps what the manifest asked for.
	next := newInprocHostUser("app", nil)
	next.version = "1.2.0"
	_, err = m.Reload(ctx, "app", next)
	require.NoError(t, err)
	_, err = CallHost[memKVReq, memKVResp](ctx, next.host.Load(), "kv.put", memKVReq{})
	require.NoError(t, err)
	_, err = CallHost[memKVReq, memKVResp](ctx, next.host.Load(), "kv.get", memKVReq{})
	require.ErrorIs(t, err, ErrNotGranted)
}

func TestLoaderManifestAsksNotGrantedRefused(t *testing.T) {
	kv := &memKV{}
	m := newTestManager(t, WithHostFuncs(kv.funcs()...), WithGrants(Grant{Plugins: "other", Funcs: []string{"*"}}))
	l := NewDynamicLoader(m, newMemSource(), WithAutoLoad(false))
	t.Cleanup(func() { _ = l.Shutdown(context.Background()) })
	f := &inprocHostUserFactory{latest: map[string]*inprocHostUser{}}
	l.RegisterFactory("inprocess", f.make)
	require.NoError(t, l.Add(hostFuncsManifest(t, t.TempDir(), "app", "1.0.0", []string{"kv.get"})))
	require.NoError(t, l.Load(context.Background(), "app"))
	_, err := CallHost[memKVReq, memKVResp](context.Background(), f.host("app"), "kv.get", memKVReq{})
	require.ErrorIs(t, err, ErrNotGranted, "asked, not granted")
	require.Contains(t, err.Error(), "WithGrants")
}
