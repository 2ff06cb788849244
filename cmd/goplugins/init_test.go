package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/goplugins/goplugins"
)

// TestInitWritesAPluginThatBuildsConformsAndLoads covers init's promise
// for each language: the folder builds (Go: init builds it, against the
// checkout found on its own), passes conform and validate, and loads with
// a DynamicLoader that serves a call.
func TestInitWritesAPluginThatBuildsConformsAndLoads(t *testing.T) {
	for _, lang := range []string{"go", "python"} {
		t.Run(lang, func(t *testing.T) {
			if lang == "python" {
				python(t)
			}
			root := t.TempDir()
			r := run(t, root, "init", "hello-"+lang, "--lang", lang)
			require.Equal(t, exitOK, r.code, r.stderr)
			quietInScripts(t, r)
			dir := filepath.Join(root, "hello-"+lang)
			assert.Equal(t, "wrote hello-"+lang+" ("+lang+" plugin hello-"+lang+" 0.1.0)\nnext: goplugins conform hello-"+lang+"\n", r.stdout)

			c := run(t, root, "conform", "hello-"+lang)
			assert.Equal(t, exitOK, c.code, c.stdout)
			v := run(t, "", "validate", dir)
			assert.Equal(t, exitOK, v.code, v.stdout)
			assert.Equal(t, "hello, Ada, from hello-"+lang+" 0.1.0", loadAndCall(t, root, "hello-"+lang))
		})
	}
}

// loadAndCall loads the plugins under root with a DiscoveryEngine and a
// DynamicLoader, calls name with {"name": "Ada"}, and returns the message.
func loadAndCall(t *testing.T, root, name string) string {
	t.Helper()
	defer goleak.VerifyNone(t, append(leakOptions, goleak.IgnoreCurrent())...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	type msg = map[string]string
	logger := slog.New(slog.DiscardHandler)
	m := goplugins.NewManager[msg, msg](goplugins.WithLogger(logger))
	defer func() { require.NoError(t, m.Shutdown(ctx)) }()
	e, err := goplugins.NewDiscoveryEngine(goplugins.DiscoveryConfig{Roots: []string{root}})
	require.NoError(t, err)
	defer e.Close()
	require.NoError(t, e.Start(ctx))
	l := goplugins.NewDynamicLoader(m, e)
	l.RegisterFactory("subprocess", goplugins.SubprocessFactory[msg, msg](goplugins.SubprocessConfig{Logger: logger}))
	defer func() { require.NoError(t, l.Shutdown(ctx)) }()
	require.NoError(t, l.Start(ctx))
	st := l.Status()
	require.Len(t, st, 1)
	require.Equal(t, goplugins.LoadLoaded, st[0].State, "%v", st[0].Err)
	resp, err := m.Execute(ctx, name, msg{"name": "Ada"})
	require.NoError(t, err)
	return resp["message"]
}

func TestInitRefuses(t *testing.T) {
	root := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(root, "taken"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(root, "taken", "notes"), []byte("x"), 0o644))
	tests := []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"folder holds files", []string{"init", "taken", "--lang", "python"}, exitCannot, "holds files already"},
		{"not a goplugins checkout", []string{"init", "x", "--lang", "go", "--goplugins", root}, exitCannot, "go.mod"},
		{"another module", []string{"init", "x", "--lang", "go", "--goplugins", "testdata/module"}, exitCannot, `holds module "example.com/other"`},
		{"build fails", []string{"init", "x", "--lang", "go", "--goplugins", "testdata/nosdk"}, exitCannot, "go build in x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if last := args[len(args)-1]; strings.HasPrefix(last, "testdata/") {
				args = append(slices.Clone(args[:len(args)-1]), testdata(t, strings.TrimPrefix(last, "testdata/")))
			}
			r := run(t, root, args...)
			assert.Equal(t, tt.code, r.code, r.stdout+r.stderr)
			assert.Contains(t, r.stderr, tt.stderr)
		})
	}
}

// TestInitGoAgainstAGivenCheckout covers --goplugins and --dir: the go.mod
// replaces the module with the checkout given, and the plugin builds.
func TestInitGoAgainstAGivenCheckout(t *testing.T) {
	checkout, err := filepath.Abs("../..")
	require.NoError(t, err)
	dir := filepath.Join(t.TempDir(), "nested", "plug")
	r := run(t, "", "init", "plug", "--lang", "go", "--dir", dir, "--goplugins", "../..", "--module", "example.org/plug")
	require.Equal(t, exitOK, r.code, r.stderr)
	gomod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	require.NoError(t, err)
	assert.Contains(t, string(gomod), "module example.org/plug\n")
	assert.Contains(t, string(gomod), "replace github.com/goplugins/goplugins => "+checkout+"\n")
	fi, err := os.Stat(filepath.Join(dir, "plug"))
	require.NoError(t, err, "the binary is built")
	assert.NotZero(t, fi.Mode().Perm()&0o100)
}

// TestInitGoWithoutBuilding covers --build=false: the folder is written,
// nothing is built.
func TestInitGoWithoutBuilding(t *testing.T) {
	root := t.TempDir()
	r := run(t, root, "init", "plain", "--lang", "go", "--build=false")
	require.Equal(t, exitOK, r.code, r.stderr)
	for _, f := range []string{"main.go", "go.mod", "go.sum", "plugin.json"} {
		assert.FileExists(t, filepath.Join(root, "plain", f))
	}
	assert.NoFileExists(t, filepath.Join(root, "plain", "plain"))
}
