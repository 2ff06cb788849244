package goplugins

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// FuzzManifest feeds arbitrary bytes to ParseManifest as JSON and as YAML.
// It must never panic; an accepted manifest must satisfy every rule that
// validation promises, and writing it back out as JSON and parsing that
// must give the same manifest.
func FuzzManifest(f *testing.F) {
	f.Add([]byte(`{"name": "auth", "version": "1.4.0", "transport": "subprocess", "command": "./auth"}`), false)
	f.Add([]byte("name: metrics\nversion: 2.1.3\ntransport: grpc\nendpoint: localhost:9000\n"), true)
	f.Add([]byte(`{"name": "kv", "version": "1.0.0", "transport": "inprocess", "host_functions": ["kv.get", "kv.put"]}`), false)
	f.Add([]byte("name: kv\nversion: 1.0.0\ntransport: inprocess\nhost_functions: [kv.get]\n"), true)
	dir := filepath.Join(f.TempDir(), "plugin")
	f.Fuzz(func(t *testing.T, data []byte, asYAML bool) {
		path := filepath.Join(dir, "plugin.json")
		if asYAML {
			path = filepath.Join(dir, "plugin.yaml")
		}
		if !asYAML {
			checkJSONDecoder(t, data)
		}
		m, err := ParseManifest(path, data)
		if err != nil {
			require.Nil(t, m, "an error and a manifest: %v", err)
			require.Equal(t, codeInvalidManifest, ErrorCode(err), "error code: %v", err)
			require.Contains(t, err.Error(), path, "the error does not name the file")
			return
		}
		checkManifestRules(t, m, data)

		again, err := ParseManifest(path, data)
		require.NoError(t, err, "parsing the same bytes again")
		require.Equal(t, m, again, "parsing the same bytes again differs")

		out, err := json.Marshal(manifestJSONForm(m))
		require.NoError(t, err)
		back, err := ParseManifest(filepath.Join(dir, "plugin.json"), out)
		require.NoError(t, err, "the manifest written back does not parse:\n%s", out)
		back.Hash, back.Path = m.Hash, m.Path
		require.Equal(t, m, back, "the manifest written back differs")
	})
}

// checkJSONDecoder compares the manifest JSON decoder with encoding/json:
// whatever it accepts, encoding/json (unknown fields disallowed) accepts
// and decodes to the same value. It may refuse more: keys match exactly,
// where encoding/json ignores case.
func checkJSONDecoder(t *testing.T, data []byte) {
	t.Helper()
	var got, want rawManifest
	if err := decodeJSONManifest(data, &got); err != nil {
		return
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	err := dec.Decode(&want)
	if err == nil {
		if _, tokErr := dec.Token(); tokErr != io.EOF {
			err = errors.New("trailing data")
		}
	}
	require.NoError(t, err, "accepted what encoding/json refuses: %q", data)
	require.Equal(t, want, got, "decoded differently from encoding/json")
}

// UnmarshalJSON gives encoding/json the dependency forms, for
// checkJSONDecoder only.
func (d *rawDependency) UnmarshalJSON(b []byte) error {
	switch {
	case len(b) > 0 && b[0] == '"':
		return json.Unmarshal(b, &d.Version)
	case len(b) > 0 && b[0] == '{':
		type plain rawDependency
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		return dec.Decode((*plain)(d))
	}
	return errors.New("a dependency is a string or an object")
}

// checkManifestRules checks what validation promises about m.
func checkManifestRules(t *testing.T, m *Manifest, data []byte) {
	t.Helper()
	require.NoError(t, validateName(m.Name), "accepted name %q", m.Name)
	require.NotNil(t, m.semVer(), "accepted version %q", m.Version)
	require.Equal(t, m.Version, m.semVer().Original(), "accepted version")
	require.Contains(t, manifestTransports, m.Transport, "accepted transport")
	if m.Transport == "subprocess" {
		require.NotEmpty(t, m.Command, "subprocess without command")
	}
	if m.Transport == "grpc" {
		require.NotEqual(t, m.Command == "", m.Endpoint == "", "grpc needs exactly one of command and endpoint")
	}
	for _, p := range []string{m.Command, tlsField(m, func(t *ManifestTLS) string { return t.CAFile }),
		tlsField(m, func(t *ManifestTLS) string { return t.CertFile }), tlsField(m, func(t *ManifestTLS) string { return t.KeyFile })} {
		if p != "" {
			require.True(t, strings.HasPrefix(p, m.Dir+string(filepath.Separator)), "path %q leaves the plugin folder %q", p, m.Dir)
		}
	}
	for _, d := range []int64{int64(m.Timeout), int64(m.Health.Interval), int64(m.Health.Timeout), int64(m.Restart.Backoff), int64(m.Restart.MaxBackoff), int64(m.Restart.MinUptime)} {
		require.GreaterOrEqual(t, d, int64(0), "negative duration accepted")
	}
	if m.Requires.Host != "" {
		_, err := parseConstraint(m.Name, m.Requires.Host)
		require.NoError(t, err, "host constraint not parsed")
	}
	require.True(t, slices.IsSortedFunc(m.Dependencies, func(a, b Dependency) int { return strings.Compare(a.Name, b.Name) }),
		"dependencies not sorted")
	for _, d := range m.Dependencies {
		_, err := parseConstraint(m.Name, d.Constraint)
		require.NoError(t, err, "dependency %q accepted", d.Name)
		require.NotEqual(t, m.Name, d.Name, "dependency %q accepted", d.Name)
	}
	for i, f := range m.HostFunctions {
		require.NoError(t, validateName(f), "accepted host function %q", f)
		require.NotContains(t, m.HostFunctions[:i], f, "host function %q accepted twice", f)
	}
	require.Equal(t, sha256.Sum256(data), m.Hash, "hash is not the SHA-256 of the bytes")
}

func tlsField(m *Manifest, f func(*ManifestTLS) string) string {
	if m.TLS == nil {
		return ""
	}
	return f(m.TLS)
}

// manifestJSONForm writes m back in the file format.
func manifestJSONForm(m *Manifest) map[string]any {
	out := map[string]any{"name": m.Name, "version": m.Version, "transport": m.Transport}
	set := func(k string, v any, ok bool) {
		if ok {
			out[k] = v
		}
	}
	rel := func(p string) string { r, _ := filepath.Rel(m.Dir, p); return r }
	set("description", m.Description, m.Description != "")
	set("command", rel(m.Command), m.Command != "")
	set("args", m.Args, m.Args != nil)
	set("env", m.Env, m.Env != nil)
	set("checksum", m.Checksum, m.Checksum != "")
	set("endpoint", m.Endpoint, m.Endpoint != "")
	req := map[string]any{}
	if m.Requires.Host != "" {
		req["host"] = m.Requires.Host
	}
	if m.Requires.Protocol != 0 {
		req["protocol"] = m.Requires.Protocol
	}
	set("requires", req, len(req) > 0)
	if len(m.Dependencies) > 0 {
		deps := map[string]any{}
		for _, d := range m.Dependencies {
			deps[d.Name] = map[string]any{"version": d.Constraint, "optional": d.Optional}
		}
		out["dependencies"] = deps
	}
	set("surfaces", m.Surfaces, m.Surfaces != nil)
	set("host_functions", m.HostFunctions, m.HostFunctions != nil)
	set("timeout", m.Timeout.String(), m.Timeout != 0)
	health := map[string]any{}
	if m.Health.Interval != 0 {
		health["interval"] = m.Health.Interval.String()
	}
	if m.Health.Timeout != 0 {
		health["timeout"] = m.Health.Timeout.String()
	}
	set("health", health, len(health) > 0)
	restart := map[string]any{}
	if m.Restart.MaxAttempts != 0 {
		restart["max_attempts"] = m.Restart.MaxAttempts
	}
	if m.Restart.Backoff != 0 {
		restart["backoff"] = m.Restart.Backoff.String()
	}
	if m.Restart.MaxBackoff != 0 {
		restart["max_backoff"] = m.Restart.MaxBackoff.String()
	}
	if m.Restart.MinUptime != 0 {
		restart["min_uptime"] = m.Restart.MinUptime.String()
	}
	set("restart", restart, len(restart) > 0)
	if m.TLS != nil {
		tls := map[string]any{"server_name": m.TLS.ServerName, "insecure": false}
		for k, p := range map[string]string{"ca_file": m.TLS.CAFile, "cert_file": m.TLS.CertFile, "key_file": m.TLS.KeyFile} {
			if p != "" {
				tls[k] = rel(p)
			}
		}
		out["tls"] = tls
	}
	return out
}
