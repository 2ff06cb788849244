package goplugins_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"path/filepath"

	"github.com/goplugins/goplugins"
)

func ExampleDiscoveryEngine_Scan() {
	e, err := goplugins.NewDiscoveryEngine(goplugins.DiscoveryConfig{
		Roots: []string{filepath.Join("testdata", "manifests")},
	})
	if err != nil {
		log.Fatal(err)
	}
	res, err := e.Scan(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	for _, m := range res.Manifests {
		fmt.Println("valid:", m.Name, m.Version, m.Transport)
	}
	for _, p := range res.Invalid {
		fmt.Println("invalid:", filepath.Base(filepath.Dir(p.Path)), errors.Is(p.Err, goplugins.ErrInvalidManifest))
	}
	// Output:
	// valid: auth 1.4.0 subprocess
	// valid: metrics 2.1.3 grpc
	// valid: remote 0.9.0-rc.1 grpc
	// invalid: bad-fields true
	// invalid: bad-unknown true
}

func ExampleParseManifest() {
	data := []byte(`{
  "name": "auth", "version": "1.4.0", "transport": "subprocess",
  "command": "./auth-plugin",
  "dependencies": {"logging": "^1.0.0", "metrics": {"version": "~2.1", "optional": true}},
  "timeout": "5s"
}`)
	m, err := goplugins.ParseManifest("/plugins/auth/plugin.json", data)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(m.Name, m.Version, m.Command, m.Timeout)
	for _, d := range m.Dependencies {
		fmt.Printf("%s %q optional=%v\n", d.Name, d.Constraint, d.Optional)
	}

	_, err = goplugins.ParseManifest("/plugins/auth/plugin.json", []byte(`{"name": "auth", "version": "1.4", "transport": "inprocess", "timout": "5s"}`))
	fmt.Println(err)
	// Output:
	// auth 1.4.0 /plugins/auth/auth-plugin 5s
	// logging "^1.0.0" optional=false
	// metrics "~2.1" optional=true
	// [PLUGIN_INVALID_MANIFEST]: plugin "auth": manifest /plugins/auth/plugin.json does not parse: unknown field "timout" (remove it or fix its spelling)
}
