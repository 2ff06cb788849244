package main

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goplugins/goplugins"
)

// TestChecksumPrintsTheManifestFormat covers `checksum FILE`: the digest
// as a manifest's checksum field holds it, which the library accepts.
func TestChecksumPrintsTheManifestFormat(t *testing.T) {
	file := filepath.Join(t.TempDir(), "prog")
	require.NoError(t, os.WriteFile(file, []byte("plugin bytes"), 0o755))
	sum := sha256.Sum256([]byte("plugin bytes"))
	want := "sha256:" + hex.EncodeToString(sum[:])

	r := run(t, "", "checksum", file)
	assert.Equal(t, exitOK, r.code)
	assert.Equal(t, want+"\n", r.stdout)
	quietInScripts(t, r)
	var js map[string]string
	runJSON(t, &js, "checksum", "--json", file)
	assert.Equal(t, map[string]string{"file": file, "checksum": want}, js)

	m, err := goplugins.ParseManifest(filepath.Join(filepath.Dir(file), "plugin.json"),
		[]byte(`{"name":"p","version":"1.0.0","transport":"subprocess","command":"./prog","checksum":"`+want+`"}`))
	require.NoError(t, err, "the library accepts the printed format")
	assert.Equal(t, want, m.Checksum)
}

// TestChecksumWriteKeepsTheManifest covers `checksum --write`: the
// command's digest is written into the checksum field, added after
// command or replaced in place, and every other byte of the file stays as
// it was, for JSON and YAML; the manifest then loads with that checksum.
func TestChecksumWriteKeepsTheManifest(t *testing.T) {
	sum := sha256.Sum256([]byte("#!/bin/sh\n"))
	digest := "sha256:" + hex.EncodeToString(sum[:])
	old := "sha256:" + strings.Repeat("ab", 32)
	tests := []struct {
		name, file, before, after string
	}{
		{"json added", "plugin.json",
			"{\n  \"name\": \"p\",\n  \"version\": \"1.0.0\",\n  \"transport\": \"subprocess\",\n  \"command\": \"./prog\",\n  \"args\": [\"-v\"]\n}\n",
			"{\n  \"name\": \"p\",\n  \"version\": \"1.0.0\",\n  \"transport\": \"subprocess\",\n  \"command\": \"./prog\",\n  \"checksum\": \"" + digest + "\",\n  \"args\": [\"-v\"]\n}\n"},
		{"json compact added", "plugin.json",
			`{"name":"p","version":"1.0.0","transport":"subprocess","command":"./prog"}`,
			`{"name":"p","version":"1.0.0","transport":"subprocess","command":"./prog","checksum":"` + digest + `"}`},
		{"json replaced", "plugin.json",
			"{\"checksum\" : \"" + old + "\", \"name\": \"p\", \"version\": \"1.0.0\", \"transport\": \"subprocess\", \"command\": \"./prog\"}",
			"{\"checksum\" : \"" + digest + "\", \"name\": \"p\", \"version\": \"1.0.0\", \"transport\": \"subprocess\", \"command\": \"./prog\"}"},
		{"yaml added", "plugin.yaml",
			"# the p plugin\nname: p\nversion: 1.0.0 # pinned\ntransport: subprocess\ncommand: ./prog\nrestart:\n  max_attempts: 3\n",
			"# the p plugin\nname: p\nversion: 1.0.0 # pinned\ntransport: subprocess\ncommand: ./prog\nchecksum: " + digest + "\nrestart:\n  max_attempts: 3\n"},
		{"yaml added at the end without newline", "plugin.yml",
			"name: p\r\nversion: 1.0.0\r\ntransport: subprocess\r\ncommand: ./prog",
			"name: p\r\nversion: 1.0.0\r\ntransport: subprocess\r\ncommand: ./prog\r\nchecksum: " + digest + "\r\n"},
		{"yaml replaced quoted", "plugin.yaml",
			"name: p\nchecksum: \"" + old + "\"  # update me\nversion: 1.0.0\ntransport: subprocess\ncommand: ./prog\n",
			"name: p\nchecksum: \"" + digest + "\"  # update me\nversion: 1.0.0\ntransport: subprocess\ncommand: ./prog\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			require.NoError(t, os.WriteFile(filepath.Join(dir, "prog"), []byte("#!/bin/sh\n"), 0o755))
			path := filepath.Join(dir, tt.file)
			require.NoError(t, os.WriteFile(path, []byte(tt.before), 0o640))
			r := run(t, "", "checksum", "--write", path)
			require.Equal(t, exitOK, r.code, r.stderr)
			assert.Equal(t, path+": checksum "+digest+" written\n", r.stdout)
			got, err := os.ReadFile(path)
			require.NoError(t, err)
			assert.Equal(t, tt.after, string(got))
			fi, err := os.Stat(path)
			require.NoError(t, err)
			assert.Equal(t, os.FileMode(0o640), fi.Mode().Perm(), "the file keeps its mode")
			m, err := goplugins.LoadManifest(path)
			require.NoError(t, err)
			assert.Equal(t, digest, m.Checksum)

			again := run(t, "", "checksum", "--write", path)
			assert.Equal(t, exitOK, again.code)
			assert.Contains(t, again.stdout, "(unchanged)")
		})
	}
}

func TestChecksumWriteRefuses(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
		return p
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, "prog"), []byte("x"), 0o755))
	tests := []struct {
		name, path string
		code       int
		stderr     string
	}{
		{"no command", write("inproc.json", `{"name":"p","version":"1.0.0","transport":"inprocess"}`), exitCannot, "has no command"},
		{"command missing", write("missing.json", `{"name":"p","version":"1.0.0","transport":"subprocess","command":"./nothing"}`), exitCannot, "field command"},
		{"flow yaml", write("flow.yaml", `{name: p, version: 1.0.0, transport: subprocess, command: ./prog}`), exitCannot, "flow style"},
		{"not a manifest", write("notes.txt", "x"), exitCannot, "unknown extension"},
		{"still invalid", write("invalid.json", `{"name":"p","version":"1.0","transport":"subprocess","command":"./prog"}`), exitProblems, `field "version"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, _ := os.ReadFile(tt.path)
			r := run(t, "", "checksum", "--write", tt.path)
			assert.Equal(t, tt.code, r.code, r.stdout+r.stderr)
			assert.Contains(t, r.stderr, tt.stderr)
			if tt.code == exitCannot {
				after, _ := os.ReadFile(tt.path)
				assert.Equal(t, before, after, "nothing written")
			}
		})
	}
}
