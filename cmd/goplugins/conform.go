package main

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/goplugins/goplugins"
	"github.com/goplugins/goplugins/internal/wire"
)

// conformRun is one run of the suite against a target.
type conformRun struct {
	target  *target
	timeout time.Duration
	request []byte        // the CALL payload
	welcome *wire.Welcome // set by the handshake check when it passes
}

type conformReport struct {
	Command  string        `json:"command"`
	Args     []string      `json:"args"`
	Plugin   *wire.Info    `json:"plugin,omitempty"`
	Protocol int           `json:"protocol,omitempty"`
	Checks   []checkReport `json:"checks"`
	Passed   int           `json:"passed"`
	Failed   int           `json:"failed"`
	Skipped  int           `json:"skipped"`
}

type checkReport struct {
	Name   string `json:"name"`
	About  string `json:"about"`
	Result string `json:"result"` // "pass", "fail" or "skip"
	Detail string `json:"detail"`
}

func runConform(env *cli, args []string) int {
	fs := env.newFlags("conform", "[flags] MANIFEST|COMMAND [ARGS...]",
		"Runs the protocol conformance suite of docs/PROTOCOL.md against a subprocess plugin written\n"+
			"in any language: it starts the plugin as a host does (descriptors 3 and 4, the magic\n"+
			"cookie, a minimal environment) and drives it frame by frame, one process per check.\n"+
			"MANIFEST is a plugin.json/.yaml/.yml or the folder holding it (its command, args, env,\n"+
			"checksum; name, version and surfaces are checked against the handshake); anything else\n"+
			"is the program to run, with ARGS. Exit 1 if a check fails, 3 if the plugin does not start.\n\n"+
			"checks:\n"+checkList())
	asJSON := fs.Bool("json", false, "print one JSON document")
	timeout := fs.Duration("timeout", 10*time.Second, "how long each step waits for the plugin")
	request := fs.String("request", "{}", "the CALL payload the checks send (the plugin's answer may be an ERROR)")
	pos, code, ok := parse(fs, args, true)
	if !ok {
		return code
	}
	if len(pos) == 0 {
		return env.usageError("conform", "give a manifest or a command")
	}
	if !json.Valid([]byte(*request)) {
		return env.usageError("conform", "--request %q is not JSON (the suite offers the json codec)", *request)
	}
	t, err := resolveTarget(pos[0], pos[1:])
	if err != nil {
		return env.fail("conform", exitCannot, err)
	}
	if t.transport == "grpc" {
		return env.fail("conform", exitCannot, errors.New("the suite is for subprocess plugins; a gRPC plugin speaks the gRPC service: use goplugins probe"))
	}
	c := &conformRun{target: t.target, timeout: *timeout, request: []byte(*request)}
	s, err := startSession(c.target, true, c.timeout)
	if err != nil {
		return env.fail("conform", exitCannot, fmt.Errorf("the plugin does not start: %w", err))
	}
	s.close()
	rep := c.run(env.progress("conform"))
	if *asJSON {
		env.writeJSON(rep)
	} else {
		printConform(env.stdout, rep)
	}
	if rep.Failed > 0 {
		return exitProblems
	}
	return exitOK
}

// checkList lists the checks with what each one checks, for -h.
func checkList() string {
	var b strings.Builder
	for i, c := range conformChecks {
		if i > 0 {
			b.WriteByte('\n')
		}
		fmt.Fprintf(&b, "  %-20s %s", c.name, c.about)
	}
	return b.String()
}

// run runs every check in order.
func (c *conformRun) run(p *progress) conformReport {
	rep := conformReport{Command: c.target.command, Args: c.target.args, Checks: []checkReport{}}
	if rep.Args == nil {
		rep.Args = []string{}
	}
	for i, ch := range conformChecks {
		p.step("[%d/%d] %s", i+1, len(conformChecks), ch.name)
		var r checkResult
		switch {
		case ch.protocol > 0 && c.welcome == nil:
			r = skip("no valid handshake")
		case ch.protocol > 0 && c.welcome.Protocol < ch.protocol:
			r = skip("the plugin did not offer protocol %d", ch.protocol)
		default:
			r = ch.run(c)
		}
		rep.Checks = append(rep.Checks, checkReport{ch.name, ch.about, r.status, r.detail})
		switch r.status {
		case "pass":
			rep.Passed++
		case "fail":
			rep.Failed++
		default:
			rep.Skipped++
		}
	}
	p.done()
	if c.welcome != nil {
		rep.Plugin, rep.Protocol = &c.welcome.Info, c.welcome.Protocol
	}
	return rep
}

func printConform(w io.Writer, rep conformReport) {
	if rep.Plugin != nil {
		fmt.Fprintf(w, "%s %s (protocol %d): %s\n", rep.Plugin.Name, rep.Plugin.Version, rep.Protocol, strings.Join(append([]string{rep.Command}, rep.Args...), " "))
	}
	fmt.Fprintf(w, "%-20s %-6s %s\n", "CHECK", "RESULT", "DETAIL")
	for _, ch := range rep.Checks {
		fmt.Fprintf(w, "%-20s %-6s %s\n", ch.Name, ch.Result, ch.Detail)
	}
	fmt.Fprintf(w, "%d checks: %d passed, %d failed, %d skipped\n", len(rep.Checks), rep.Passed, rep.Failed, rep.Skipped)
}

// resolved is a plugin named on the command line.
type resolved struct {
	*target
	transport string
	manifest  *goplugins.Manifest // nil for a bare command
}

// resolveTarget reads what probe and conform were given: a manifest file,
// a folder holding one, or a program to run with args.
func resolveTarget(arg string, args []string) (resolved, error) {
	path, isManifest, err := manifestPath(arg)
	if err != nil {
		return resolved{}, err
	}
	if !isManifest {
		cmd, err := commandPath(arg)
		if err != nil {
			return resolved{}, err
		}
		return resolved{target: &target{command: cmd, args: args}, transport: "subprocess"}, nil
	}
	m, err := goplugins.LoadManifest(path)
	if err != nil {
		return resolved{}, err
	}
	if m.Command == "" {
		return resolved{}, fmt.Errorf("%s has no command to start (transport %q)", m.Path, m.Transport)
	}
	t := &target{command: m.Command, args: append(append([]string(nil), m.Args...), args...), env: m.Env, dir: m.Dir,
		name: m.Name, version: m.Version}
	for _, s := range m.Surfaces {
		t.surfaces = append(t.surfaces, string(s))
	}
	if m.Checksum != "" {
		t.sum, _ = hex.DecodeString(strings.TrimPrefix(m.Checksum, "sha256:")) // validated by LoadManifest
	}
	return resolved{target: t, transport: m.Transport, manifest: m}, nil
}

// manifestPath reports whether arg names a manifest: a .json, .yaml or
// .yml file, or a folder holding plugin.json, plugin.yaml or plugin.yml.
func manifestPath(arg string) (string, bool, error) {
	fi, err := os.Stat(arg)
	if err == nil && fi.IsDir() {
		for _, n := range []string{"plugin.json", "plugin.yaml", "plugin.yml"} {
			p := filepath.Join(arg, n)
			if _, err := os.Stat(p); err == nil {
				return p, true, nil
			}
		}
		return "", false, fmt.Errorf("%s is a folder without plugin.json, plugin.yaml or plugin.yml", arg)
	}
	switch strings.ToLower(filepath.Ext(arg)) {
	case ".json", ".yaml", ".yml":
		return arg, true, nil
	}
	return "", false, nil
}

// commandPath makes a program path usable by exec: a bare name is looked
// up in PATH, a path is made absolute (the plugin may run in another folder).
func commandPath(arg string) (string, error) {
	if !strings.ContainsRune(arg, filepath.Separator) {
		return exec.LookPath(arg)
	}
	abs, err := filepath.Abs(arg)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(abs); err != nil {
		return "", err
	}
	return abs, nil
}

// progress shows the steps of a long run on a terminal's stderr, on one
// line; elsewhere it is silent.
type progress struct {
	w    io.Writer // nil: silent
	name string
}

func (env *cli) progress(name string) *progress {
	if !env.terminal {
		return &progress{}
	}
	return &progress{w: env.stderr, name: name}
}

func (p *progress) step(format string, args ...any) {
	if p.w != nil {
		fmt.Fprintf(p.w, "\r\033[K%s: %s", p.name, fmt.Sprintf(format, args...))
	}
}

func (p *progress) done() {
	if p.w != nil {
		fmt.Fprint(p.w, "\r\033[K")
	}
}
