package main

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// pluginFolder makes a plugin folder holding a copy of bin and a manifest
// with the given JSON fields after name and command; version 1.0.0 and the
// checksum of the copy are set unless fields give them.
func pluginFolder(t *testing.T, bin, name, fields string) string {
	t.Helper()
	dir := t.TempDir()
	data, err := os.ReadFile(bin)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, filepath.Base(bin)), data, 0o755))
	sum := sha256.Sum256(data)
	if !strings.Contains(fields, `"checksum"`) {
		fields += `, "checksum": "sha256:` + hex.EncodeToString(sum[:]) + `"`
	}
	if !strings.Contains(fields, `"version"`) {
		fields += `, "version": "1.0.0"`
	}
	manifest := `{"name": "` + name + `", "command": "./` + filepath.Base(bin) + `"` + fields + `}`
	require.NoError(t, os.WriteFile(filepath.Join(dir, "plugin.json"), []byte(manifest), 0o644))
	return dir
}

func python(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not on PATH")
	}
	return p
}

// statuses returns the result of each check by name, and checks that the
// report lists the suite's checks in order.
func statuses(t *testing.T, rep conformReport) map[string]string {
	t.Helper()
	var names []string
	out := map[string]string{}
	for _, c := range rep.Checks {
		names = append(names, c.Name)
		out[c.Name] = c.Result
		assert.NotEmpty(t, c.Detail, c.Name)
	}
	var want []string
	for _, c := range conformChecks {
		want = append(want, c.name)
	}
	assert.Equal(t, want, names)
	return out
}

// TestConformPassesConformingPlugins covers the suite on plugins that
// follow the protocol: the Go echo test plugin (by command and by
// manifest, checksum verified), the Python echo plugin of protocol 1 and
// the Python example plugin pass; the
// surfaces they do not declare are skipped; nothing goes to stderr.
func TestConformPassesConformingPlugins(t *testing.T) {
	echoDir := pluginFolder(t, echoBin, "echo", `, "transport": "subprocess", "surfaces": ["state", "stream"]`)
	example, err := filepath.Abs("../../examples/python/wordstats_plugin.py")
	require.NoError(t, err)
	echoPy, err := filepath.Abs("../../testdata/plugins/python/echo_plugin.py") // written from PROTOCOL.md alone
	require.NoError(t, err)
	tests := []struct {
		name    string
		args    []string
		plugin  string
		skipped []string
	}{
		{"go echo command", []string{echoBin}, "echo", []string{"schema"}},
		{"go echo manifest", []string{echoDir}, "echo", []string{"schema"}},
		{"python echo of protocol 1", []string{"python3", echoPy}, "pyecho", []string{"state", "stream", "schema", "metadata", "host-calls", "stray-host-answers"}},
		{"python example", []string{"--request", `{"text": "the cat and the hat"}`, "python3", example}, "wordstats", []string{"state", "stream", "schema"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if slices.Contains(tt.args, "python3") {
				python(t)
			}
			var rep conformReport
			r := runJSON(t, &rep, append([]string{"conform", "--json"}, tt.args...)...)
			assert.Equal(t, exitOK, r.code, r.stdout)
			quietInScripts(t, r)
			require.NotNil(t, rep.Plugin)
			assert.Equal(t, tt.plugin, rep.Plugin.Name)
			var skipped []string
			for name, st := range statuses(t, rep) {
				if st == "skip" {
					skipped = append(skipped, name)
				} else {
					assert.Equal(t, "pass", st, name)
				}
			}
			assert.ElementsMatch(t, tt.skipped, skipped)
			assert.Equal(t, 0, rep.Failed)
			if tt.plugin == "wordstats" {
				assert.Contains(t, detail(rep, "host-calls"), "after 1 host call", "the example calls the host for each request")
			}
		})
	}
}

// TestConformFindsEachFault covers the suite's checks one by one: each
// fault of the misbehaving plugin fails exactly the check meant to find
// it, and the run exits 1.
func TestConformFindsEachFault(t *testing.T) {
	tests := []struct {
		fault  string
		failed []string
	}{
		{"ok", nil},
		{"ignore-cookie", []string{"cookie"}},
		{"no-refusal", []string{"protocol-refusal"}},
		{"no-frame-limit", []string{"frame-too-large"}},
		{"double-answer", []string{"concurrent-calls", "cancel"}},
		{"stdout-frames", []string{"stdout"}},
		{"shutdown-exit-1", []string{"shutdown"}},
		{"ignore-eof", []string{"eof"}},
		{"bad-state", []string{"state"}},
		{"unhealthy", []string{"health", "cancel", "frame-too-large"}},
	}
	for _, tt := range tests {
		t.Run(tt.fault, func(t *testing.T) {
			var rep conformReport
			r := runJSON(t, &rep, "conform", "--json", "--timeout", "2s", badBin, tt.fault)
			var failed []string
			for name, st := range statuses(t, rep) {
				if st == "fail" {
					failed = append(failed, name)
				}
			}
			assert.ElementsMatch(t, tt.failed, failed)
			if tt.failed == nil {
				assert.Equal(t, exitOK, r.code)
			} else {
				assert.Equal(t, exitProblems, r.code)
			}
		})
	}
}

// TestConformTable covers the text output: a pass/fail table and a count.
func TestConformTable(t *testing.T) {
	r := run(t, "", "conform", badBin, "shutdown-exit-1")
	assert.Equal(t, exitProblems, r.code)
	out := lines(r.stdout)
	assert.Equal(t, "bad 1.0.0 (protocol 1): "+badBin+" shutdown-exit-1", out[0])
	assert.Equal(t, "CHECK                RESULT DETAIL", out[1])
	assert.Contains(t, out, "shutdown             fail   the calls were answered, then exit status 1; exit 0")
	assert.Equal(t, "20 checks: 14 passed, 1 failed, 5 skipped", out[len(out)-1])
}

// TestConformChecksTheManifest covers a manifest's part: the handshake
// must report its name, version and surfaces (else the checks that need a
// handshake are skipped), its checksum must match (else nothing runs:
// exit 3), and a gRPC manifest is refused (exit 3).
func TestConformChecksTheManifest(t *testing.T) {
	tests := []struct {
		name, plugin, fields string
		code                 int
		detail               string
	}{
		{"other name", "other", `, "transport": "subprocess"`, exitProblems, `name "echo", but the manifest says "other"`},
		{"other version", "echo", `, "transport": "subprocess", "version": "2.0.0"`, exitProblems, `version "1.0.0", but the manifest says "2.0.0"`},
		{"undeclared surface", "echo", `, "transport": "subprocess", "surfaces": ["schema"]`, exitProblems, `the manifest lists surface "schema", the WELCOME does not`},
		{"checksum mismatch", "echo", `, "transport": "subprocess", "checksum": "sha256:` + strings.Repeat("0", 64) + `"`, exitCannot, "checksum mismatch"},
		{"grpc", "echo", `, "transport": "grpc"`, exitCannot, "the suite is for subprocess plugins"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := pluginFolder(t, echoBin, tt.plugin, tt.fields)
			var rep conformReport
			r := run(t, "", "conform", "--json", dir)
			assert.Equal(t, tt.code, r.code, r.stdout+r.stderr)
			if tt.code == exitCannot {
				assert.Contains(t, r.stderr, tt.detail)
				return
			}
			require.NoError(t, jsonUnmarshal(r.stdout, &rep))
			st := statuses(t, rep)
			assert.Equal(t, "fail", st["handshake"])
			assert.Contains(t, rep.Checks[1].Detail, tt.detail)
			assert.Equal(t, "skip", st["health"])
			assert.Equal(t, "no valid handshake", rep.Checks[4].Detail)
		})
	}
}

// TestConformSkipsChecksOfALaterProtocol covers the suite's extension
// point: a check that needs a protocol version the plugin did not choose
// is skipped, saying so. Run in the test's process, it also shows that a
// run leaves no goroutine and no descriptor behind.
func TestConformSkipsChecksOfALaterProtocol(t *testing.T) {
	defer goleak.VerifyNone(t, leakOptions...)
	fds := openFDs(t)
	defer func() { assert.Equal(t, fds, openFDs(t), "descriptors left open") }()
	saved := conformChecks
	t.Cleanup(func() { conformChecks = saved })
	ran := false
	conformChecks = append(slices.Clone(saved[:2]), conformCheck{"host-calls", "a protocol 2 check", 2,
		func(*conformRun) checkResult { ran = true; return pass("ran") }})
	v1, err := filepath.Abs("../../testdata/plugins/python/echo_plugin.py") // speaks protocol 1 only
	require.NoError(t, err)
	c := &conformRun{target: &target{command: python(t), args: []string{v1}}, timeout: 10 * time.Second, request: []byte("{}")}
	rep := c.run(&progress{})
	require.Len(t, rep.Checks, 3)
	assert.Equal(t, checkReport{"host-calls", "a protocol 2 check", "skip", "the plugin did not offer protocol 2"}, rep.Checks[2])
	assert.False(t, ran)
	assert.Equal(t, 2, rep.Passed)
}

// openFDs counts the test process's open descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd on this system")
	}
	return len(ents)
}

// detail returns the detail of check name in rep.
func detail(rep conformReport, name string) string {
	for _, c := range rep.Checks {
		if c.Name == name {
			return c.Detail
		}
	}
	return ""
}
