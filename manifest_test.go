package goplugins

import (
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestManifestLoadTestdata(t *testing.T) {
	dir, err := filepath.Abs(filepath.Join("testdata", "manifests"))
	require.NoError(t, err)

	t.Run("json subprocess", func(t *testing.T) {
		path := filepath.Join(dir, "auth", "plugin.json")
		m, err := LoadManifest(path)
		require.NoError(t, err)
		data, err := os.ReadFile(path)
		require.NoError(t, err)

		assert.Equal(t, "auth", m.Name)
		assert.Equal(t, "1.4.0", m.Version)
		assert.Equal(t, "1.4.0", m.semVer().String())
		assert.Equal(t, "subprocess", m.Transport)
		assert.Equal(t, filepath.Join(dir, "auth", "auth-plugin"), m.Command)
		assert.Equal(t, []string{"--mode", "strict"}, m.Args)
		assert.Equal(t, map[string]string{"AUTH_LEVEL": "high"}, m.Env)
		assert.Equal(t, "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", m.Checksum)
		assert.Equal(t, ManifestRequires{Host: ">=1.2.0, <2.0.0", Protocol: 1}, m.Requires)
		assert.Equal(t, []Dependency{
			{Name: "logging", Constraint: "^1.0.0"},
			{Name: "metrics", Constraint: "~2.1", Optional: true},
		}, m.Dependencies)
		assert.Equal(t, []Surface{SurfaceState}, m.Surfaces)
		assert.Equal(t, 5*time.Second, m.Timeout)
		assert.Equal(t, ManifestHealth{Interval: 10 * time.Second, Timeout: 2 * time.Second}, m.Health)
		assert.Equal(t, RestartPolicy{MaxAttempts: 5, Backoff: 100 * time.Millisecond, MaxBackoff: 10 * time.Second, MinUptime: 30 * time.Second}, m.Restart)
		assert.Equal(t, path, m.Path)
		assert.Equal(t, filepath.Join(dir, "auth"), m.Dir)
		assert.Equal(t, sha256.Sum256(data), m.Hash)
		assert.Equal(t, PluginInfo{Name: "auth", Version: "1.4.0", Description: "Authenticates requests", Surfaces: []Surface{SurfaceState}}, m.Info())
	})

	t.Run("yaml grpc command", func(t *testing.T) {
		m, err := LoadManifest(filepath.Join(dir, "metrics", "plugin.yaml"))
		require.NoError(t, err)
		assert.Equal(t, "grpc", m.Transport)
		assert.Equal(t, filepath.Join(dir, "metrics", "bin", "metrics"), m.Command)
		assert.Equal(t, []Dependency{{Name: "logging", Constraint: ">=1.0.0"}}, m.Dependencies)
		assert.Equal(t, []Surface{SurfaceStream, SurfaceSchema}, m.Surfaces)
		assert.Equal(t, 250*time.Millisecond, m.Timeout)
		assert.Nil(t, m.TLS)
	})

	t.Run("yml grpc endpoint with mTLS", func(t *testing.T) {
		m, err := LoadManifest(filepath.Join(dir, "remote", "plugin.yml"))
		require.NoError(t, err)
		assert.Equal(t, "0.9.0-rc.1", m.Version)
		assert.Equal(t, "plugins.internal:8443", m.Endpoint)
		assert.Empty(t, m.Command)
		require.NotNil(t, m.TLS)
		certs := filepath.Join(dir, "remote", "certs")
		assert.Equal(t, ManifestTLS{
			CAFile:     filepath.Join(certs, "ca.pem"),
			CertFile:   filepath.Join(certs, "client.pem"),
			KeyFile:    filepath.Join(certs, "client-key.pem"),
			ServerName: "plugins.internal",
		}, *m.TLS)
	})

	t.Run("unknown yaml field", func(t *testing.T) {
		_, err := LoadManifest(filepath.Join(dir, "bad-unknown", "plugin.yaml"))
		require.ErrorIs(t, err, ErrInvalidManifest)
		assert.Contains(t, err.Error(), `unknown field "timout"`)
		assert.Contains(t, err.Error(), "line 4")
		assert.Contains(t, err.Error(), filepath.Join(dir, "bad-unknown", "plugin.yaml"))
	})

	t.Run("every problem named", func(t *testing.T) {
		path := filepath.Join(dir, "bad-fields", "plugin.json")
		_, err := LoadManifest(path)
		require.ErrorIs(t, err, ErrInvalidManifest)
		require.ErrorIs(t, err, ErrInvalidManifest)
		for _, field := range []string{`"name"`, `"version"`, `"command"`, `"requires.host"`, `"timeout"`, `"health.interval"`} {
			assert.Contains(t, err.Error(), "field "+field)
		}
		assert.Contains(t, err.Error(), path)
	})
}

func TestManifestInvalid(t *testing.T) {
	const base = `"name": "p", "version": "1.0.0", `
	tests := []struct {
		name string
		file string // plugin.json unless set
		data string
		is   error // besides ErrInvalidManifest
		want []string
	}{
		{name: "unknown json field", data: `{` + base + `"transport": "inprocess", "tiemout": "1s"}`, want: []string{`unknown field "tiemout"`}},
		{name: "unknown nested json field", data: `{` + base + `"transport": "inprocess", "requires": {"hots": "^1"}}`, want: []string{`unknown field "requires.hots"`}},
		{name: "unknown json dependency field", data: `{` + base + `"transport": "inprocess", "dependencies": {"a": {"version": "^1", "optinal": true}}}`, want: []string{`unknown field "dependencies.a.optinal"`}},
		{name: "unknown nested yaml field", file: "plugin.yaml", data: "name: p\nversion: 1.0.0\ntransport: inprocess\nhealth:\n  intervall: 1s\n", want: []string{`unknown field "intervall"`, "line 5"}},
		{name: "unknown yaml dependency field", file: "plugin.yml", data: "name: p\nversion: 1.0.0\ntransport: inprocess\ndependencies:\n  a:\n    versoin: ^1\n", want: []string{`unknown field "versoin"`}},
		{name: "json wrong type", data: `{` + base + `"transport": "inprocess", "surfaces": "state"}`, want: []string{`field "surfaces"`, "want array"}},
		{name: "json dependency wrong type", data: `{` + base + `"transport": "inprocess", "dependencies": {"a": 1}}`, want: []string{"constraint string"}},
		{name: "json duplicate key refused like yaml", data: `{` + base + `"transport": "inprocess", "name": "q"}`, want: []string{`field "name" is given twice`}},
		{name: "json duplicate nested key refused like yaml", data: `{` + base + `"transport": "inprocess", "env": {"A": "1", "A": "2"}}`, want: []string{`field "env": key "A" is given twice`}},
		{name: "yaml duplicate key", file: "plugin.yaml", data: "name: p\nversion: 1.0.0\ntransport: inprocess\nname: q\n", want: []string{"name"}},
		{name: "json trailing data", data: `{` + base + `"transport": "inprocess"} {}`, want: []string{"data after the top-level object"}},
		{name: "json syntax", data: `{` + base + `"transport": "inprocess"`, want: []string{"does not parse"}},
		{name: "yaml two documents", file: "plugin.yaml", data: "name: p\nversion: 1.0.0\ntransport: inprocess\n---\nname: q\n", want: []string{"more than one YAML document"}},
		{name: "yaml empty", file: "plugin.yaml", data: "", want: []string{"empty"}},
		{name: "unknown extension", file: "plugin.toml", data: `name = "p"`, want: []string{`unknown extension ".toml"`}},
		{name: "bad name", data: `{"name": "Auth", "version": "1.0.0", "transport": "inprocess"}`, is: ErrInvalidPlugin, want: []string{`field "name"`, `"Auth"`}},
		{name: "missing name", data: `{"version": "1.0.0", "transport": "inprocess"}`, is: ErrInvalidPlugin, want: []string{`field "name"`}},
		{name: "loose version", data: `{"name": "p", "version": "v1.2", "transport": "inprocess"}`, is: ErrInvalidVersion, want: []string{`field "version"`, `"v1.2"`}},
		{name: "missing version", data: `{"name": "p", "transport": "inprocess"}`, want: []string{`field "version": missing`}},
		{name: "missing transport", data: `{` + base[:len(base)-2] + `}`, want: []string{`field "transport": missing`}},
		{name: "unknown transport", data: `{` + base + `"transport": "wasm"}`, want: []string{`field "transport"`, `"wasm" is unknown`}},
		{name: "subprocess without command", data: `{` + base + `"transport": "subprocess"}`, want: []string{`field "command": missing`}},
		{name: "subprocess with endpoint", data: `{` + base + `"transport": "subprocess", "command": "p", "endpoint": "h:1"}`, want: []string{`field "endpoint"`}},
		{name: "inprocess with command", data: `{` + base + `"transport": "inprocess", "command": "p", "env": {"A": "b"}}`, want: []string{`field "command": not used`, `field "env": not used`}},
		{name: "grpc neither", data: `{` + base + `"transport": "grpc"}`, want: []string{`field "command"`, "command (a local child) or endpoint"}},
		{name: "grpc both", data: `{` + base + `"transport": "grpc", "command": "p", "endpoint": "h:1"}`, want: []string{`field "endpoint": give either`}},
		{name: "grpc tls with command", data: `{` + base + `"transport": "grpc", "command": "p", "tls": {"insecure": true}}`, want: []string{`field "tls"`}},
		{name: "grpc bad endpoint", data: `{` + base + `"transport": "grpc", "endpoint": "nohost"}`, want: []string{`field "endpoint"`, "host:port"}},
		{name: "grpc bad port", data: `{` + base + `"transport": "grpc", "endpoint": "h:99999"}`, want: []string{`field "endpoint"`, "1 to 65535"}},
		{name: "tls half mTLS", data: `{` + base + `"transport": "grpc", "endpoint": "h:1", "tls": {"cert_file": "c.pem"}}`, want: []string{`field "tls.cert_file"`, "give both or neither"}},
		{name: "tls insecure refused", data: `{` + base + `"transport": "grpc", "endpoint": "h:1", "tls": {"insecure": true}}`, want: []string{`field "tls.insecure"`, "not supported"}},
		{name: "tls path escape", data: `{` + base + `"transport": "grpc", "endpoint": "h:1", "tls": {"ca_file": "../ca.pem"}}`, is: ErrInvalidManifest, want: []string{`field "tls.ca_file"`, "outside the plugin folder"}},
		{name: "command escape", data: `{` + base + `"transport": "subprocess", "command": "../other/bin"}`, is: ErrInvalidManifest, want: []string{`field "command"`, "outside the plugin folder"}},
		{name: "command escape through folder", data: `{` + base + `"transport": "subprocess", "command": "sub/../../bin"}`, is: ErrInvalidManifest, want: []string{`field "command"`}},
		{name: "command absolute", data: `{` + base + `"transport": "subprocess", "command": "/usr/bin/env"}`, is: ErrInvalidManifest, want: []string{`field "command"`}},
		{name: "command is the folder", data: `{` + base + `"transport": "subprocess", "command": "."}`, is: ErrInvalidManifest, want: []string{`field "command"`}},
		{name: "args NUL", data: `{` + base + `"transport": "subprocess", "command": "p", "args": ["a\u0000b"]}`, want: []string{`field "args"`}},
		{name: "env bad name", data: `{` + base + `"transport": "subprocess", "command": "p", "env": {"A=B": "c"}}`, want: []string{`field "env"`}},
		{name: "checksum prefix", data: `{` + base + `"transport": "subprocess", "command": "p", "checksum": "md5:00"}`, want: []string{`field "checksum"`, `"sha256:"`}},
		{name: "checksum length", data: `{` + base + `"transport": "subprocess", "command": "p", "checksum": "sha256:abcd"}`, want: []string{`field "checksum"`, "4 hex digits"}},
		{name: "checksum hex", data: `{` + base + `"transport": "subprocess", "command": "p", "checksum": "sha256:` + strings.Repeat("zz", 32) + `"}`, want: []string{`field "checksum"`, "not hexadecimal"}},
		{name: "host constraint", data: `{` + base + `"transport": "inprocess", "requires": {"host": ">>1"}}`, is: ErrInvalidVersion, want: []string{`field "requires.host"`}},
		{name: "negative protocol", data: `{` + base + `"transport": "inprocess", "requires": {"protocol": -1}}`, want: []string{`field "requires.protocol"`}},
		{name: "dependency constraint", data: `{` + base + `"transport": "inprocess", "dependencies": {"log": "not a version"}}`, is: ErrInvalidVersion, want: []string{`field "dependencies.log"`}},
		{name: "dependency empty constraint", data: `{` + base + `"transport": "inprocess", "dependencies": {"log": {"optional": true}}}`, is: ErrInvalidVersion, want: []string{`field "dependencies.log"`}},
		{name: "dependency bad name", data: `{` + base + `"transport": "inprocess", "dependencies": {"Log": "^1"}}`, want: []string{`field "dependencies"`, `"Log"`}},
		{name: "self dependency", data: `{` + base + `"transport": "inprocess", "dependencies": {"p": "^1"}}`, want: []string{`field "dependencies.p"`, "itself"}},
		{name: "surface twice", data: `{` + base + `"transport": "inprocess", "surfaces": ["state", "state"]}`, want: []string{`field "surfaces"`, "twice"}},
		{name: "surface bad", data: `{` + base + `"transport": "inprocess", "surfaces": [""]}`, want: []string{`field "surfaces"`}},
		{name: "timeout unparseable", data: `{` + base + `"transport": "inprocess", "timeout": "5"}`, want: []string{`field "timeout"`, "not a duration"}},
		{name: "timeout zero", data: `{` + base + `"transport": "inprocess", "timeout": "0s"}`, want: []string{`field "timeout"`, "not positive"}},
		{name: "health timeout over interval", data: `{` + base + `"transport": "inprocess", "health": {"interval": "1s", "timeout": "2s"}}`, want: []string{`field "health.timeout"`}},
		{name: "min uptime not a duration", data: `{` + base + `"transport": "subprocess", "command": "p", "restart": {"min_uptime": "a while"}}`, want: []string{`field "restart.min_uptime"`, "not a duration"}},
		{name: "backoff over max", data: `{` + base + `"transport": "subprocess", "command": "p", "restart": {"backoff": "2s", "max_backoff": "1s"}}`, want: []string{`field "restart.max_backoff"`}},
		{name: "negative attempts", data: `{` + base + `"transport": "subprocess", "command": "p", "restart": {"max_attempts": -1}}`, want: []string{`field "restart.max_attempts"`}},
	}
	dir := t.TempDir()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := tt.file
			if file == "" {
				file = "plugin.json"
			}
			path := filepath.Join(dir, "plugin", file)
			m, err := ParseManifest(path, []byte(tt.data))
			require.Error(t, err)
			assert.Nil(t, m)
			assert.ErrorIs(t, err, ErrInvalidManifest)
			if tt.is != nil {
				assert.ErrorIs(t, err, tt.is)
			}
			assert.Contains(t, err.Error(), path, "the error names the file")
			for _, w := range tt.want {
				assert.Contains(t, err.Error(), w)
			}
			assert.NotContains(t, err.Error(), "rawManifest", "no internal type names")
		})
	}
}

func TestManifestAllowOutside(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p", "plugin.json")
	data := []byte(`{"name": "p", "version": "1.0.0", "transport": "subprocess", "command": "/usr/bin/env",
		"args": ["x"]}`)

	_, err := ParseManifest(path, data)
	require.ErrorIs(t, err, ErrInvalidManifest)

	m, err := ParseManifest(path, data, ManifestAllowOutside(true))
	require.NoError(t, err)
	assert.Equal(t, "/usr/bin/env", m.Command)

	data = []byte(`{"name": "p", "version": "1.0.0", "transport": "subprocess", "command": "../shared/bin"}`)
	m, err = ParseManifest(path, data, ManifestAllowOutside(true))
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(filepath.Dir(filepath.Dir(path)), "shared", "bin"), m.Command)
}

func TestManifestRelativePathIsMadeAbsolute(t *testing.T) {
	m, err := ParseManifest(filepath.Join("x", "plugin.json"), []byte(`{"name": "p", "version": "1.0.0", "transport": "subprocess", "command": "run"}`))
	require.NoError(t, err)
	wd, err := os.Getwd()
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(wd, "x", "plugin.json"), m.Path)
	assert.Equal(t, filepath.Join(wd, "x"), m.Dir)
	assert.Equal(t, filepath.Join(wd, "x", "run"), m.Command)
}

func TestManifestSizeLimit(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "plugin.json")
	// Valid JSON padded with whitespace past the limit.
	data := `{"name": "p", "version": "1.0.0", "transport": "inprocess"}` + strings.Repeat(" ", 200)
	require.NoError(t, os.WriteFile(path, []byte(data), 0o644))

	_, err := LoadManifest(path, ManifestMaxSize(100))
	require.ErrorIs(t, err, ErrInvalidManifest)
	assert.Contains(t, err.Error(), "the limit is 100")
	assert.Contains(t, err.Error(), path)

	_, err = ParseManifest(path, []byte(data), ManifestMaxSize(100))
	require.ErrorIs(t, err, ErrInvalidManifest)

	m, err := LoadManifest(path, ManifestMaxSize(1000))
	require.NoError(t, err)
	assert.Equal(t, "p", m.Name)

	big := filepath.Join(dir, "big", "plugin.json")
	require.NoError(t, os.MkdirAll(filepath.Dir(big), 0o755))
	require.NoError(t, os.WriteFile(big, []byte(`{"description": "`+strings.Repeat("x", defaultManifestMaxSize)+`"}`), 0o644))
	_, err = LoadManifest(big)
	require.ErrorIs(t, err, ErrInvalidManifest)
	assert.Contains(t, err.Error(), "limit")
}

func TestLoadManifestFileErrors(t *testing.T) {
	dir := t.TempDir()
	_, err := LoadManifest(filepath.Join(dir, "missing", "plugin.json"))
	require.ErrorIs(t, err, ErrInvalidManifest)
	assert.True(t, errors.Is(err, os.ErrNotExist), "the cause is kept: %v", err)

	folder := filepath.Join(dir, "plugin.json")
	require.NoError(t, os.Mkdir(folder, 0o755))
	_, err = LoadManifest(folder)
	require.ErrorIs(t, err, ErrInvalidManifest)
	assert.Contains(t, err.Error(), "not a regular file")
}

func TestManifestDependenciesGoToTheGraph(t *testing.T) {
	m, err := LoadManifest(filepath.Join("testdata", "manifests", "auth", "plugin.json"))
	require.NoError(t, err)
	assert.Equal(t, []Dependency{
		{Name: "logging", Constraint: "^1.0.0"},
		{Name: "metrics", Constraint: "~2.1", Optional: true},
	}, m.Dependencies)
	g := newDependencyGraph()
	require.NoError(t, g.Add(m.Name, m.Version, m.Dependencies...))
	assert.Equal(t, m.Dependencies, g.Dependencies(m.Name))
}

func TestManifestHostFunctions(t *testing.T) {
	cases := []struct {
		name    string
		file    string
		data    string
		want    []string
		wantErr string
	}{
		{"json", "plugin.json", `{"name": "kv", "version": "1.0.0", "transport": "inprocess", "host_functions": ["kv.get", "kv.put"]}`, []string{"kv.get", "kv.put"}, ""},
		{"yaml", "plugin.yaml", "name: kv\nversion: 1.0.0\ntransport: inprocess\nhost_functions: [kv.get]\n", []string{"kv.get"}, ""},
		{"absent", "plugin.json", `{"name": "kv", "version": "1.0.0", "transport": "inprocess"}`, nil, ""},
		{"empty", "plugin.json", `{"name": "kv", "version": "1.0.0", "transport": "inprocess", "host_functions": []}`, nil, ""},
		{"invalid name", "plugin.json", `{"name": "kv", "version": "1.0.0", "transport": "inprocess", "host_functions": ["KV Get"]}`, nil, `field "host_functions": "KV Get" is not a host function name`},
		{"twice", "plugin.yaml", "name: kv\nversion: 1.0.0\ntransport: inprocess\nhost_functions: [kv.get, kv.get]\n", nil, `field "host_functions": "kv.get" is listed twice`},
		{"not a list", "plugin.json", `{"name": "kv", "version": "1.0.0", "transport": "inprocess", "host_functions": "kv.get"}`, nil, `host_functions`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "kv", tc.file)
			m, err := ParseManifest(path, []byte(tc.data))
			if tc.wantErr != "" {
				require.ErrorIs(t, err, ErrInvalidManifest)
				require.Contains(t, err.Error(), tc.wantErr)
				require.Contains(t, err.Error(), path)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, m.HostFunctions)
		})
	}
}

func TestConfigInlinePluginHostFunctions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "plugins.yaml")
	cfg, err := ParseConfig(path, []byte("plugins:\n  - {name: kv, version: 1.0.0, transport: inprocess, host_functions: [kv.get]}\n"))
	require.NoError(t, err)
	require.Len(t, cfg.Plugins, 1)
	require.Equal(t, []string{"kv.get"}, cfg.Plugins[0].HostFunctions)
}

// TestManifestProblemsListsEachProblem: ManifestProblems gives every field
// problem of a file on its own, a file that does not parse as one problem
// without a field, and nothing for an error of another kind.
func TestManifestProblemsListsEachProblem(t *testing.T) {
	_, err := ParseManifest("/p/plugin.json", []byte(`{"name": "p", "version": "v1", "transport": "wasm"}`))
	require.ErrorIs(t, err, ErrInvalidManifest)
	ps := ManifestProblems(err)
	require.Len(t, ps, 2, "%v", ps)
	assert.Equal(t, "version", ps[0].Field)
	assert.Contains(t, ps[0].Reason, `"v1"`)
	assert.Equal(t, "transport", ps[1].Field)
	assert.Contains(t, ps[1].Reason, `"wasm" is unknown`)
	assert.Contains(t, err.Error(), ps[1].String(), "the message lists each problem")

	_, err = ParseManifest("/p/plugin.json", []byte(`{"name": "p",`))
	ps = ManifestProblems(err)
	require.Len(t, ps, 1)
	assert.Empty(t, ps[0].Field)
	assert.Contains(t, ps[0].Reason, "unexpected end of JSON input")
	assert.NotContains(t, ps[0].Reason, `plugin "p": `, "the plugin is not named twice")

	_, err = ParseManifest("/p/plugin.yaml", []byte("name: p\nversion: 1.0.0\ntransport: inprocess\ntimout: 1s\nhelth: {}\n"))
	ps = ManifestProblems(err)
	require.Len(t, ps, 2, "%v", ps)
	assert.Equal(t, []string{"timout", "helth"}, []string{ps[0].Field, ps[1].Field}, "each unknown YAML field on its own")

	assert.Nil(t, ManifestProblems(ErrTimeout))
	assert.Nil(t, ManifestProblems(nil))
}
