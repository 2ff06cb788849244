package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// The programs the tests run, built once per test binary by TestMain: the
// command itself (with -race when the tests run with it), the echo test
// plugin of the root package, and the misbehaving plugin of testdata.
var (
	cmdBin  string
	echoBin string
	badBin  string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "goplugins-cmd-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code, err := buildAndRun(m, dir)
	os.RemoveAll(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(code)
}

func buildAndRun(m *testing.M, dir string) (int, error) {
	cmdBin, echoBin, badBin = filepath.Join(dir, "goplugins"), filepath.Join(dir, "echo"), filepath.Join(dir, "badplugin")
	builds := []struct {
		out, pkg string
		race     bool
	}{{cmdBin, ".", raceEnabled}, {echoBin, "../../testdata/plugins/echo", false}, {badBin, "./testdata/badplugin", false}}
	for _, b := range builds {
		args := []string{"build", "-o", b.out}
		if b.race {
			args = append(args, "-race")
		}
		if out, err := exec.Command("go", append(args, b.pkg)...).CombinedOutput(); err != nil {
			return 0, fmt.Errorf("go build %s: %v\n%s", b.pkg, err, out)
		}
	}
	return m.Run(), nil
}

// leakOptions ignores the goroutine go-errors starts when it is imported.
var leakOptions = []goleak.Option{goleak.IgnoreTopFunction("github.com/agilira/go-timecache.(*TimeCache).updateLoop")}

// result is one run of the command.
type result struct {
	stdout, stderr string
	code           int
}

// run runs the command with args in dir ("" for the test's folder).
func run(t *testing.T, dir string, args ...string) result {
	t.Helper()
	cmd := exec.Command(cmdBin, args...)
	cmd.Dir = dir
	// A race-built command would sleep a second at exit; a race it finds
	// still fails the test: it exits 66 and writes the report to stderr.
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("running goplugins %v: %v", args, err)
	}
	return result{stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()}
}

// runJSON runs the command with args and decodes its stdout into v.
func runJSON(t *testing.T, v any, args ...string) result {
	t.Helper()
	r := run(t, "", args...)
	require.NoError(t, json.Unmarshal([]byte(r.stdout), v), "stdout of goplugins %v is not JSON:\n%s\nstderr: %s", args, r.stdout, r.stderr)
	return r
}

func TestUsageAndExitCodes(t *testing.T) {
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout string // a part of stdout
		stderr string // a part of stderr
	}{
		{"no command", nil, exitUsage, "", "usage: goplugins COMMAND"},
		{"help", []string{"-h"}, exitOK, "exit status: 0 ok; 1 problems found; 2 usage error; 3 could not run", ""},
		{"unknown command", []string{"frobnicate"}, exitUsage, "", `unknown command "frobnicate"`},
		{"unknown flag", []string{"validate", "--frob", "."}, exitUsage, "", "flag provided but not defined: -frob"},
		{"validate without folder", []string{"validate"}, exitUsage, "", "give at least one folder"},
		{"graph without folder", []string{"graph"}, exitUsage, "", "give at least one folder"},
		{"graph json and dot", []string{"graph", "--json", "--dot", "."}, exitUsage, "", "not both"},
		{"checksum without file", []string{"checksum"}, exitUsage, "", "give one file"},
		{"probe without plugin", []string{"probe"}, exitUsage, "", "give a manifest or a command"},
		{"probe bad call", []string{"probe", "--call", "{nope", "x"}, exitUsage, "", "is not JSON"},
		{"probe grpc without name", []string{"probe", "--grpc", "x"}, exitUsage, "", "--grpc needs --name"},
		{"conform without plugin", []string{"conform"}, exitUsage, "", "give a manifest or a command"},
		{"conform lists its checks", []string{"conform", "-h"}, exitOK, "  frame-too-large      a CALL over the plugin's maximum frame size gets ERROR frame_too_large", ""},
		{"conform bad request", []string{"conform", "--request", "nope", "x"}, exitUsage, "", "is not JSON"},
		{"conform inprocess manifest", []string{"conform", "testdata/validate/good/alpha"}, exitCannot, "", "has no command to start"},
		{"init without name", []string{"init", "--lang", "go"}, exitUsage, "", "give one plugin NAME"},
		{"init bad name", []string{"init", "Bad Name", "--lang", "go"}, exitUsage, "", "is not a plugin name"},
		{"init without lang", []string{"init", "x"}, exitUsage, "", "give --lang go or --lang python"},
		{"init unknown lang", []string{"init", "x", "--lang", "cobol"}, exitUsage, "", `"cobol" is not go or python`},
		{"validate missing folder", []string{"validate", "/nonexistent/plugins"}, exitCannot, "", "/nonexistent/plugins"},
		{"checksum missing file", []string{"checksum", "/nonexistent/file"}, exitCannot, "", "no such file"},
		{"conform missing program", []string{"conform", "/nonexistent/plugin"}, exitCannot, "", "no such file"},
		{"conform not a plugin", []string{"conform", "/bin/true"}, exitProblems, "handshake", ""},
		{"probe missing program", []string{"probe", "/nonexistent/plugin"}, exitCannot, "", "no such file"},
		{"probe not a plugin", []string{"probe", "/bin/true"}, exitCannot, "", "did not complete the handshake"},
	}
	for _, c := range commands {
		tests = append(tests, struct {
			name   string
			args   []string
			code   int
			stdout string
			stderr string
		}{c.name + " -h", []string{c.name, "-h"}, exitOK, "usage: goplugins " + c.name, ""})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := run(t, "", tt.args...)
			assert.Equal(t, tt.code, r.code, "stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
			assert.Contains(t, r.stdout, tt.stdout)
			assert.Contains(t, r.stderr, tt.stderr)
		})
	}
}

// TestParseFlagsBetweenArguments covers parse: flags may follow positional
// arguments, "--" ends them, and the plugin's own arguments are left alone.
func TestParseFlagsBetweenArguments(t *testing.T) {
	env := &cli{stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}}
	tests := []struct {
		args        []string
		stopAtFirst bool
		pos         []string
		json        bool
	}{
		{[]string{"a", "--json", "b"}, false, []string{"a", "b"}, true},
		{[]string{"--json", "a", "--", "--json"}, false, []string{"a", "--json"}, true},
		{[]string{"cmd", "--json", "x"}, true, []string{"cmd", "--json", "x"}, false},
		{[]string{"--json", "cmd", "-v"}, true, []string{"cmd", "-v"}, true},
	}
	for _, tt := range tests {
		fs := env.newFlags("t", "", "")
		j := fs.Bool("json", false, "")
		pos, _, ok := parse(fs, tt.args, tt.stopAtFirst)
		require.True(t, ok, "%v", tt.args)
		assert.Equal(t, tt.pos, pos, "%v", tt.args)
		assert.Equal(t, tt.json, *j, "%v", tt.args)
	}
}

// TestProgressOnlyOnATerminal covers "long steps show progress on a
// terminal and stay quiet in scripts": progress is written only when
// stderr is a character device.
func TestProgressOnlyOnATerminal(t *testing.T) {
	devNull, err := os.Open(os.DevNull)
	require.NoError(t, err)
	defer devNull.Close()
	r, w, err := os.Pipe()
	require.NoError(t, err)
	defer r.Close()
	defer w.Close()
	if runtime.GOOS != "windows" {
		assert.True(t, isTerminal(devNull), "a character device counts as a terminal")
	}
	assert.False(t, isTerminal(w), "a pipe is not a terminal")

	for _, terminal := range []bool{false, true} {
		var stderr bytes.Buffer
		env := &cli{stdout: &bytes.Buffer{}, stderr: &stderr, terminal: terminal}
		p := env.progress("conform")
		p.step("[%d/%d] %s", 1, 2, "cookie")
		p.done()
		if terminal {
			assert.Equal(t, "\r\033[Kconform: [1/2] cookie\r\033[K", stderr.String())
		} else {
			assert.Empty(t, stderr.String())
		}
	}
}

// quietInScripts asserts that a run wrote nothing to stderr, as a run in a
// script (stderr a pipe) must not show progress.
func quietInScripts(t *testing.T, r result) {
	t.Helper()
	assert.Empty(t, r.stderr, "stderr is a pipe: no progress")
}

// testdata returns the absolute path of a file under testdata.
func testdata(t *testing.T, elem ...string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join(append([]string{"testdata"}, elem...)...))
	require.NoError(t, err)
	return p
}

// lines splits s into its lines.
func lines(s string) []string { return strings.Split(strings.TrimRight(s, "\n"), "\n") }

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }
