package goplugins_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/goplugins/goplugins"
)

// greeter is an in-process plugin that may declare reload surfaces of its
// own, such as "cache".
type greeter struct {
	version  string
	surfaces []goplugins.Surface
	cache    map[string]string
}

func (p *greeter) Info() goplugins.PluginInfo {
	return goplugins.PluginInfo{Name: "greeter", Version: p.version, Surfaces: p.surfaces}
}

func (p *greeter) Execute(_ context.Context, name string) (string, error) {
	return "hello " + name, nil
}
func (*greeter) Health(context.Context) error { return nil }
func (*greeter) Close(context.Context) error  { return nil }

func ExampleReloadDispatcher_Register() {
	// A kind for the "cache" surface: the next version takes over the old
	// one's warm cache. The old plugin keeps its own, so no undo is needed.
	d := goplugins.NewReloadDispatcher()
	err := d.Register(goplugins.Handoff{
		Surface: "cache",
		Transfer: func(_ context.Context, h *goplugins.Swap) (func(context.Context) error, error) {
			old, next := h.Old.(*greeter), h.Next.(*greeter)
			next.cache = make(map[string]string, len(old.cache))
			for k, v := range old.cache {
				next.cache[k] = v
			}
			return nil, nil
		},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(d.Surfaces())

	m := goplugins.NewManager[string, string](goplugins.WithReloadDispatcher(d))
	defer m.Shutdown(context.Background())
	cache := []goplugins.Surface{"cache"}
	_ = m.Register(&greeter{version: "1.0.0", surfaces: cache, cache: map[string]string{"ann": "hello ann"}})
	next := &greeter{version: "1.1.0", surfaces: cache}
	report, err := m.Reload(context.Background(), "greeter", next)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(report.Steps, len(next.cache))
	// Output:
	// [schema state stream cache]
	// [cache] 1
}

func ExampleWithHandoff() {
	m := goplugins.NewManager[string, string]()
	defer m.Shutdown(context.Background())
	_ = m.Register(&greeter{version: "1.0.0"})

	// The host owns a resource the plugin uses (here, a named socket). It
	// moves to the next version inside the reload, with an undo that moves
	// it back if a later step fails.
	owner := "greeter 1.0.0"
	conn := goplugins.Handoff{
		Surface: "socket",
		Transfer: func(_ context.Context, h *goplugins.Swap) (func(context.Context) error, error) {
			prev := owner
			owner = "greeter " + h.NextInfo.Version
			h.Record("socket", []byte("/run/greeter.sock"))
			return func(context.Context) error { owner = prev; return nil }, nil
		},
	}
	report, err := m.Reload(context.Background(), "greeter", &greeter{version: "1.1.0"}, goplugins.WithHandoff(conn))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(report.Steps, report.BytesHandedOver, owner)
	// Output: [socket] 17 greeter 1.1.0
}

func ExampleReloadError() {
	m := goplugins.NewManager[string, string]()
	defer m.Shutdown(context.Background())
	_ = m.Register(&greeter{version: "1.0.0"})

	failing := goplugins.Handoff{
		Surface: "socket",
		Transfer: func(context.Context, *goplugins.Swap) (func(context.Context) error, error) {
			return nil, errors.New("address in use")
		},
	}
	_, err := m.Reload(context.Background(), "greeter", &greeter{version: "1.1.0"}, goplugins.WithHandoff(failing))
	var re *goplugins.ReloadError
	if errors.As(err, &re) {
		fmt.Println(re.Phase, re.Surface, re.Step)
	}
	fmt.Println(errors.Is(err, goplugins.ErrReloadFailed))
	info, _ := m.Info("greeter")
	fmt.Println("serving", info.Version)
	// Output:
	// dispatch socket transfer
	// true
	// serving 1.0.0
}
