package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/goplugins/goplugins"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestValidateReportsEveryProblemOfEveryFile covers validate's promise:
// every manifest under the roots, each problem as file, field and reason,
// all problems of a file and not only the first, exit 1 when one is
// invalid.
func TestValidateReportsEveryProblemOfEveryFile(t *testing.T) {
	root := testdata(t, "validate", "bad")
	var rep validateReport
	r := runJSON(t, &rep, "validate", "--json", root)
	assert.Equal(t, exitProblems, r.code)
	quietInScripts(t, r)
	byFile := map[string]fileReport{}
	for _, f := range rep.Files {
		byFile[strings.TrimPrefix(f.File, root+string(filepath.Separator))] = f
	}
	fields := func(f fileReport) []string {
		var out []string
		for _, p := range f.Problems {
			out = append(out, p.Field)
			assert.NotEmpty(t, p.Reason, "%s: field %s", f.File, p.Field)
		}
		return out
	}
	assert.Equal(t, []string{"name", "version", "command", "timeout", "health.timeout"}, fields(byFile["fields/plugin.json"]))
	assert.Equal(t, []string{"timout"}, fields(byFile["yaml/plugin.yaml"]))
	assert.Equal(t, []string{"command"}, fields(byFile["nocommand/plugin.json"]))
	assert.True(t, byFile["fine/plugin.json"].Valid)
	assert.Empty(t, byFile["fine/plugin.json"].Problems)
	assert.Equal(t, 1, rep.Valid)
	assert.Equal(t, 3, rep.Invalid)
	assert.Contains(t, byFile["fields/plugin.json"].Problems[3].Reason, `"soon" is not a duration`)

	text := run(t, "", "validate", root)
	assert.Equal(t, exitProblems, text.code)
	out := lines(text.stdout)
	assert.Contains(t, out, filepath.Join(root, "fields", "plugin.json")+`: timeout: "soon" is not a duration; write it like "5s" or "250ms"`)
	assert.Contains(t, out, filepath.Join(root, "fine", "plugin.json")+": ok (fine 1.0.0, inprocess)")
	assert.Equal(t, "1 valid, 3 invalid", out[len(out)-1])
}

func TestValidateExitStatus(t *testing.T) {
	empty := t.TempDir()
	tests := []struct {
		name  string
		roots []string
		code  int
		last  string
	}{
		{"all valid", []string{testdata(t, "validate", "good")}, exitOK, "2 valid, 0 invalid"},
		{"two roots", []string{testdata(t, "validate", "good"), testdata(t, "validate", "bad")}, exitProblems, "3 valid, 3 invalid"},
		{"no manifest", []string{empty}, exitProblems, "no manifest found under " + empty},
		{"depth", []string{"--depth", "1", testdata(t, "validate")}, exitProblems, "no manifest found under " + testdata(t, "validate")},
		{"depth 2", []string{"--depth", "2", testdata(t, "validate")}, exitProblems, "3 valid, 3 invalid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := run(t, "", append([]string{"validate"}, tt.roots...)...)
			assert.Equal(t, tt.code, r.code, r.stdout+r.stderr)
			out := lines(r.stdout)
			assert.Equal(t, tt.last, out[len(out)-1])
		})
	}
}

// TestValidateChecksTheCommandFile covers the checks beyond the library's:
// the command must be an executable file with the manifest's checksum.
func TestValidateChecksTheCommandFile(t *testing.T) {
	dir := t.TempDir()
	prog := filepath.Join(dir, "p", "prog")
	require.NoError(t, os.MkdirAll(filepath.Dir(prog), 0o755))
	require.NoError(t, os.WriteFile(prog, []byte("#!/bin/sh\n"), 0o755))
	sum := sha256.Sum256([]byte("#!/bin/sh\n"))
	manifest := func(checksum string) {
		require.NoError(t, os.WriteFile(filepath.Join(dir, "p", "plugin.json"),
			[]byte(`{"name":"p","version":"1.0.0","transport":"subprocess","command":"./prog"`+checksum+`}`), 0o644))
	}
	tests := []struct {
		name, checksum string
		mode           os.FileMode
		problem        string
	}{
		{"matching checksum", `,"checksum":"sha256:` + hex.EncodeToString(sum[:]) + `"`, 0o755, ""},
		{"other checksum", `,"checksum":"sha256:` + strings.Repeat("0", 64) + `"`, 0o755, "checksum: " + prog + " has sha256:" + hex.EncodeToString(sum[:])},
		{"not executable", "", 0o644, "command: " + prog + " is not executable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			manifest(tt.checksum)
			require.NoError(t, os.Chmod(prog, tt.mode))
			r := run(t, "", "validate", dir)
			if tt.problem == "" {
				assert.Equal(t, exitOK, r.code, r.stdout)
				return
			}
			assert.Equal(t, exitProblems, r.code)
			assert.Contains(t, r.stdout, tt.problem)
		})
	}
}

// TestManifestProblemsNamesFieldsAndLeavesOutTheFile covers the reading
// of the library's problems: each field problem on its own, a value
// holding `; field "` kept whole, and the file's own name left out.
func TestManifestProblemsNamesFieldsAndLeavesOutTheFile(t *testing.T) {
	_, err := goplugins.ParseManifest("/p/plugin.json", []byte(`{"name": "x", "version": "1; field \"name\": no", "transport": "inprocess", "timeout": "soon"}`))
	ps := manifestProblems(err, "/p/plugin.json")
	require.Len(t, ps, 2, "%v", ps)
	assert.Equal(t, "version", ps[0].Field)
	assert.Contains(t, ps[0].Reason, `1; field \"name\": no`)
	assert.Equal(t, "timeout", ps[1].Field)
	assert.Equal(t, []problem{{"", "manifest /p/plugin.json is a named pipe"}},
		manifestProblems(errors.New("manifest /p/plugin.json is a named pipe"), "/p/plugin.json"))
	_, err = goplugins.ParseManifest("/p/plugin.json", []byte(`{"name": "x",`))
	ps = manifestProblems(err, "/p/plugin.json")
	require.Len(t, ps, 1)
	assert.NotContains(t, ps[0].Reason, "/p/plugin.json", "the file is named by the report")
}

// TestValidateReportsDuplicateNames covers two manifests of one name:
// both files are reported, each with the reason.
func TestValidateReportsDuplicateNames(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"a", "b"} {
		require.NoError(t, os.MkdirAll(filepath.Join(root, d), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(root, d, "plugin.json"), []byte(`{"name":"x","version":"1.0.0","transport":"inprocess"}`), 0o644))
	}
	var rep validateReport
	r := runJSON(t, &rep, "validate", "--json", root)
	assert.Equal(t, exitProblems, r.code)
	require.Len(t, rep.Files, 2)
	for _, f := range rep.Files {
		require.Len(t, f.Problems, 1, f.File)
		assert.Equal(t, "", f.Problems[0].Field)
		assert.True(t, strings.HasPrefix(f.Problems[0].Reason, "declared by more than one manifest ("), f.Problems[0].Reason)
	}
}
