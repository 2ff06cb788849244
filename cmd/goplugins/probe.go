package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/goplugins/goplugins"
)

// probeReport is what probe found.
type probeReport struct {
	Name        string            `json:"name"`
	Version     string            `json:"version"`
	Description string            `json:"description,omitempty"`
	Transport   string            `json:"transport"`
	Pid         int               `json:"pid,omitempty"`
	Surfaces    []string          `json:"surfaces"`
	Metadata    map[string]string `json:"metadata,omitempty"`
	Health      outcome           `json:"health"`
	Call        *callOutcome      `json:"call,omitempty"`
	Stop        outcome           `json:"stop"`
}

type outcome struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

type callOutcome struct {
	outcome
	Request  json.RawMessage `json:"request"`
	Response json.RawMessage `json:"response,omitempty"`
	// Code is the plugin's error code when it answered with an error.
	Code string `json:"code,omitempty"`
}

// jsonPlugin is a plugin probed with raw JSON requests and responses.
type jsonPlugin = goplugins.Plugin[json.RawMessage, json.RawMessage]

func runProbe(env *cli, args []string) int {
	fs := env.newFlags("probe", "[flags] MANIFEST|COMMAND [ARGS...]",
		"Starts a plugin through the library (NewSubprocess, or the gRPC factory for a grpc manifest),\n"+
			"prints its info and reload surfaces, runs a health check and, with --call, one call, then\n"+
			"stops it. MANIFEST is a plugin.json/.yaml/.yml or its folder; anything else is the program\n"+
			"to run, with ARGS. Exit 1 if the health check or the call fails, 3 if the plugin does not start.")
	asJSON := fs.Bool("json", false, "print one JSON document")
	call := fs.String("call", "", "a JSON request to send in one call, e.g. '{\"data\":\"hi\"}'")
	timeout := fs.Duration("timeout", 10*time.Second, "bound of the start, the health check, the call and the stop, each")
	name := fs.String("name", "", "the plugin name a COMMAND must report (default: the name it reports, learned by starting it once before)")
	grpcCmd := fs.Bool("grpc", false, "COMMAND is a gRPC plugin (grpcplugin.Serve); needs --name")
	logs := fs.Bool("log", false, "show the plugin's stdout and stderr (and the transport's records) on stderr")
	pos, code, ok := parse(fs, args, true)
	if !ok {
		return code
	}
	if len(pos) == 0 {
		return env.usageError("probe", "give a manifest or a command")
	}
	if *call != "" && !json.Valid([]byte(*call)) {
		return env.usageError("probe", "--call %q is not JSON", *call)
	}
	if *grpcCmd && *name == "" {
		return env.usageError("probe", "--grpc needs --name: a gRPC plugin's name is checked at the start")
	}
	logger := slog.New(slog.DiscardHandler)
	if *logs {
		logger = slog.New(slog.NewTextHandler(env.stderr, nil))
	}
	o := probeOptions{timeout: *timeout, name: *name, grpc: *grpcCmd, logger: logger}
	p, transport, err := o.start(pos[0], pos[1:])
	if err != nil {
		return env.fail("probe", exitCannot, err)
	}
	rep := o.probe(p, transport, *call)
	if *asJSON {
		env.writeJSON(rep)
	} else {
		printProbe(env.stdout, rep)
	}
	if !rep.Health.OK || !rep.Stop.OK || (rep.Call != nil && !rep.Call.OK) {
		return exitProblems
	}
	return exitOK
}

type probeOptions struct {
	timeout time.Duration
	name    string
	grpc    bool
	logger  *slog.Logger
}

// start starts the plugin arg names and returns it with its transport.
func (o probeOptions) start(arg string, args []string) (jsonPlugin, string, error) {
	r, err := resolveTarget(arg, args)
	if err != nil {
		return nil, "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	if m := r.manifest; m != nil {
		switch m.Transport {
		case "subprocess":
			p, err := goplugins.SubprocessFactory[json.RawMessage, json.RawMessage](goplugins.SubprocessConfig{
				Logger: o.logger, StartTimeout: o.timeout, StopGrace: o.timeout / 2})(ctx, m)
			return p, m.Transport, err
		case "grpc":
			p, err := goplugins.GRPCFactory[json.RawMessage, json.RawMessage](goplugins.GRPCConfig{
				Logger: o.logger, StartTimeout: o.timeout, StopGrace: o.timeout / 2})(ctx, m)
			return p, m.Transport, err
		}
		return nil, "", fmt.Errorf("%s: transport %q is not a process or service to start", m.Path, m.Transport)
	}
	if o.grpc {
		p, err := goplugins.NewGRPCPlugin[json.RawMessage, json.RawMessage](ctx, goplugins.GRPCConfig{
			Name: o.name, Command: r.command, Args: r.args, Logger: o.logger, StartTimeout: o.timeout, StopGrace: o.timeout / 2})
		return p, "grpc", err
	}
	name := o.name
	if name == "" {
		if name, err = reportedName(r.target, o.timeout); err != nil {
			return nil, "", err
		}
	}
	p, err := goplugins.NewSubprocess[json.RawMessage, json.RawMessage](ctx, goplugins.SubprocessConfig{
		Name: name, Command: r.command, Args: r.args, Logger: o.logger, StartTimeout: o.timeout, StopGrace: o.timeout / 2})
	return p, "subprocess", err
}

// reportedName starts the program once to learn the name it reports in
// its WELCOME: the host must be told the name it expects.
func reportedName(t *target, timeout time.Duration) (string, error) {
	s, err := startSession(t, true, timeout)
	if err != nil {
		return "", err
	}
	defer s.close()
	w, err := s.handshake("")
	if err != nil {
		return "", fmt.Errorf("%s did not complete the handshake (is it a goplugins plugin?): %w", t.command, err)
	}
	return w.Name, nil
}

// probe reads p's info, checks its health, makes the call if any, and
// closes p.
func (o probeOptions) probe(p jsonPlugin, transport, call string) probeReport {
	info := p.Info()
	rep := probeReport{Name: info.Name, Version: info.Version, Description: info.Description,
		Transport: transport, Surfaces: []string{}, Metadata: info.Metadata}
	if pp, ok := p.(interface{ Pid() int }); ok {
		rep.Pid = pp.Pid()
	}
	for _, s := range info.Surfaces {
		rep.Surfaces = append(rep.Surfaces, string(s))
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	rep.Health = outcomeOf(p.Health(ctx))
	cancel()
	if call != "" {
		ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
		resp, err := p.Execute(ctx, json.RawMessage(call))
		cancel()
		rep.Call = &callOutcome{outcome: outcomeOf(err), Request: json.RawMessage(call), Response: resp}
		var er *goplugins.ErrorReply
		if errors.As(err, &er) {
			rep.Call.Code = er.Code
		}
	}
	ctx, cancel = context.WithTimeout(context.Background(), o.timeout)
	rep.Stop = outcomeOf(p.Close(ctx))
	cancel()
	return rep
}

func outcomeOf(err error) outcome {
	if err != nil {
		return outcome{Error: oneLine(err.Error())}
	}
	return outcome{OK: true}
}

func (o outcome) String() string {
	if o.OK {
		return "ok"
	}
	return "failed: " + o.Error
}

func printProbe(w io.Writer, rep probeReport) {
	fmt.Fprintf(w, "plugin     %s %s\n", rep.Name, rep.Version)
	if rep.Description != "" {
		fmt.Fprintf(w, "about      %s\n", rep.Description)
	}
	if rep.Pid != 0 {
		fmt.Fprintf(w, "transport  %s (pid %d)\n", rep.Transport, rep.Pid)
	} else {
		fmt.Fprintf(w, "transport  %s\n", rep.Transport)
	}
	surfaces := "none (stateless)"
	if len(rep.Surfaces) > 0 {
		surfaces = strings.Join(rep.Surfaces, ", ")
	}
	fmt.Fprintf(w, "surfaces   %s\n", surfaces)
	for _, k := range slices.Sorted(maps.Keys(rep.Metadata)) {
		fmt.Fprintf(w, "metadata   %s=%s\n", k, rep.Metadata[k])
	}
	fmt.Fprintf(w, "health     %s\n", rep.Health)
	if c := rep.Call; c != nil {
		if c.OK {
			fmt.Fprintf(w, "call       %s -> %s\n", c.Request, c.Response)
		} else {
			fmt.Fprintf(w, "call       %s -> %s\n", c.Request, c.outcome)
		}
	}
	fmt.Fprintf(w, "stop       %s\n", rep.Stop)
}
