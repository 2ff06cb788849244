package goplugins_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/goplugins/goplugins"
)

// memo is an in-process plugin that remembers, in the host's key-value
// store, whom it greeted last: it calls the host through the handle it is
// given at Register (goplugins.HostUser).
type memo struct {
	host atomic.Pointer[goplugins.Host]
}

func (p *memo) UseHost(h *goplugins.Host) { p.host.Store(h) }

func (p *memo) Info() goplugins.PluginInfo {
	return goplugins.PluginInfo{Name: "memo", Version: "1.0.0"}
}

func (p *memo) Execute(ctx context.Context, name string) (string, error) {
	last, err := goplugins.CallHost[string, string](ctx, p.host.Load(), "kv.swap", name)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("hello %s (last: %q)", name, last), nil
}

func (p *memo) Health(context.Context) error { return nil }
func (p *memo) Close(context.Context) error  { return nil }

func ExampleCallHost() {
	var (
		mu    sync.Mutex
		store = map[string]string{}
	)
	// kv.swap stores the value under the calling plugin's name and returns
	// the one it replaces: each plugin sees its own key.
	swap := goplugins.NewHostFunc("kv.swap", func(_ context.Context, c goplugins.Caller, v string) (string, error) {
		mu.Lock()
		defer mu.Unlock()
		old := store[c.Plugin]
		store[c.Plugin] = v
		return old, nil
	})
	wipe := goplugins.NewHostFunc("kv.wipe", func(context.Context, goplugins.Caller, struct{}) (struct{}, error) {
		return struct{}{}, nil
	})
	m := goplugins.NewManager[string, string](
		goplugins.WithHostFuncs(swap, wipe),
		goplugins.WithGrants(goplugins.Grant{Plugins: "memo", Funcs: []string{"kv.swap"}}),
	)
	defer m.Shutdown(context.Background())
	p := &memo{}
	_ = m.Register(p)

	out, _ := m.Execute(context.Background(), "memo", "ada")
	fmt.Println(out)
	out, _ = m.Execute(context.Background(), "memo", "bob")
	fmt.Println(out)

	_, err := goplugins.CallHost[struct{}, struct{}](context.Background(), p.host.Load(), "kv.wipe", struct{}{})
	fmt.Println(errors.Is(err, goplugins.ErrNotGranted))
	// Output:
	// hello ada (last: "")
	// hello bob (last: "ada")
	// true
}
