package goplugins_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/goplugins/goplugins"
)

// service is an in-process plugin made from a manifest.
type service struct{ info goplugins.PluginInfo }

func (s *service) Info() goplugins.PluginInfo { return s.info }
func (s *service) Execute(_ context.Context, req string) (string, error) {
	return s.info.Name + " handled " + req, nil
}
func (*service) Health(context.Context) error { return nil }
func (*service) Close(context.Context) error  { return nil }

// A loader driven by hand (no discovery): manifests are added, and Load
// loads a plugin after its dependencies. A plugin whose dependency is
// missing waits as pending and loads by itself when the dependency is added.
func ExampleNewDynamicLoader() {
	ctx := context.Background()
	m := goplugins.NewManager[string, string]()
	defer m.Shutdown(ctx)
	loader := goplugins.NewDynamicLoader(m, nil)
	defer loader.Shutdown(ctx)
	loader.RegisterFactory("inprocess", func(_ context.Context, mf *goplugins.Manifest) (goplugins.Plugin[string, string], error) {
		return &service{info: mf.Info()}, nil
	})
	add := func(path, text string) {
		mf, err := goplugins.ParseManifest(path, []byte(text))
		if err != nil {
			log.Fatal(err)
		}
		if err := loader.Add(mf); err != nil {
			log.Fatal(err)
		}
	}
	add("/plugins/api/plugin.json", `{"name": "api", "version": "3.0.0", "transport": "inprocess", "dependencies": {"auth": "^1.4"}}`)

	err := loader.Load(ctx, "api")
	fmt.Println(errors.Is(err, goplugins.ErrDependencyMissing), loader.Status()[0].State)

	add("/plugins/auth/plugin.json", `{"name": "auth", "version": "1.4.2", "transport": "inprocess"}`)
	if err := loader.Load(ctx, "api"); err != nil {
		log.Fatal(err)
	}
	for _, st := range loader.Status() {
		fmt.Println(st.Name, st.Loaded, st.State)
	}
	fmt.Println(m.Execute(ctx, "api", "GET /"))
	// Output:
	// true pending
	// api 3.0.0 loaded
	// auth 1.4.2 loaded
	// api handled GET / <nil>
}

// The whole flow: a DiscoveryEngine watches plugin folders and a
// DynamicLoader loads what it finds, reloads updated plugins and unloads
// removed ones. Subprocess plugins are started by SubprocessFactory.
func ExampleNewDiscoveryEngine() {
	ctx := context.Background()
	engine, err := goplugins.NewDiscoveryEngine(goplugins.DiscoveryConfig{
		Roots:        []string{"/opt/myservice/plugins"},
		PollInterval: 500 * time.Millisecond,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer engine.Close()
	policy, err := goplugins.NewVersionPolicy("1.6.0") // checked against manifests' requires.host
	if err != nil {
		log.Fatal(err)
	}
	m := goplugins.NewManager[map[string]string, map[string]string](goplugins.WithVersionPolicy(policy))
	defer m.Shutdown(ctx)
	loader := goplugins.NewDynamicLoader(m, engine)
	defer loader.Shutdown(ctx)
	loader.RegisterFactory("subprocess", goplugins.SubprocessFactory[map[string]string, map[string]string](goplugins.SubprocessConfig{}))
	loader.RegisterFactory("grpc", goplugins.GRPCFactory[map[string]string, map[string]string](goplugins.GRPCConfig{AutoMTLS: true}))

	if err := engine.Start(ctx); err != nil {
		log.Fatal(err)
	}
	if err := loader.Start(ctx); err != nil {
		log.Print(err) // plugins that could not load; the others serve
	}
	for _, st := range loader.Status() {
		fmt.Println(st.Name, st.Version, st.State, st.Err)
	}
}

// A Go plugin binary (written with the sdk package) started as a child
// process and registered with a manager. If the child crashes it is
// restarted with backoff.
func ExampleNewSubprocess() {
	ctx := context.Background()
	p, err := goplugins.NewSubprocess[map[string]string, map[string]string](ctx, goplugins.SubprocessConfig{
		Name:     "auth",
		Command:  filepath.Join("plugins", "auth", "auth-plugin"),
		Checksum: os.Getenv("AUTH_PLUGIN_SHA256"), // "sha256:<hex>", checked before every start
		Restart:  goplugins.RestartPolicy{MaxAttempts: 5, Backoff: 100 * time.Millisecond},
	})
	if err != nil {
		log.Fatal(err)
	}
	m := goplugins.NewManager[map[string]string, map[string]string](goplugins.WithPluginDefaults(goplugins.WithTimeout(2 * time.Second)))
	defer m.Shutdown(ctx) // closes the plugin: shutdown message, then signals
	if err := m.Register(p); err != nil {
		log.Fatal(err)
	}
	resp, err := m.Execute(ctx, "auth", map[string]string{"user": "ada"})
	fmt.Println(resp, err)
}
