package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"

	goerrors "github.com/agilira/go-errors"

	"github.com/goplugins/goplugins"
)

// graphReport is what graph says about the plugins under the roots.
type graphReport struct {
	// Order is an order to load the plugins in: the levels in turn, as
	// DynamicLoader.LoadAll loads them.
	Order []string `json:"order"`
	// Levels groups the loadable plugins by depth: level 0 needs no other
	// plugin, level k needs plugins of levels below k only.
	Levels [][]string `json:"levels"`
	// Pending are plugins that would wait: a dependency is missing, at a
	// version its constraint refuses, or cannot load itself.
	Pending []graphIssue `json:"pending"`
	// Cycles are the dependency cycles, each as a path "a -> b -> a".
	Cycles [][]string `json:"cycles"`
	// Failed are plugins refused for another reason.
	Failed []graphIssue `json:"failed"`
	// Invalid are the manifests that are not in the graph at all.
	Invalid []fileReport `json:"invalid"`
	// Plugins are the graph's nodes and edges, by name.
	Plugins []graphNode `json:"plugins"`
}

type graphIssue struct {
	Name   string `json:"name"`
	Reason string `json:"reason"`
}

type graphNode struct {
	Name         string      `json:"name"`
	Version      string      `json:"version"`
	File         string      `json:"file"`
	State        string      `json:"state"` // "ok", "pending", "cycle", "failed"
	Dependencies []graphEdge `json:"dependencies"`
}

type graphEdge struct {
	Name       string `json:"name"`
	Constraint string `json:"constraint"`
	Optional   bool   `json:"optional,omitempty"`
	Missing    bool   `json:"missing,omitempty"`
}

func runGraph(env *cli, args []string) int {
	fs := env.newFlags("graph", "[flags] DIR...",
		"Resolves the dependency graph of the manifests under the folders the way a DynamicLoader\n"+
			"does, without starting any plugin: load order, levels, pending plugins (a dependency\n"+
			"missing or at a refused version) and cycles (with their path). Exit 1 if a plugin is\n"+
			"pending, on a cycle or failed (e.g. refused by --host), or a manifest is invalid.")
	asJSON := fs.Bool("json", false, "print one JSON document")
	dot := fs.Bool("dot", false, "print the graph in Graphviz's dot language")
	host := fs.String("host", "", "a host version: plugins whose requires.host it does not satisfy fail")
	var sf scanFlags
	sf.add(fs)
	roots, code, ok := parse(fs, args, false)
	if !ok {
		return code
	}
	if len(roots) == 0 {
		return env.usageError("graph", "give at least one folder")
	}
	if *asJSON && *dot {
		return env.usageError("graph", "give --json or --dot, not both")
	}
	var policy *goplugins.VersionPolicy
	if *host != "" {
		var err error
		if policy, err = goplugins.NewVersionPolicy(*host); err != nil {
			return env.usageError("graph", "--host %q is not a strict semantic version", *host)
		}
	}
	res, err := sf.scan(roots)
	if err != nil {
		return env.fail("graph", exitCannot, err)
	}
	rep := resolveGraph(res, policy)
	switch {
	case *asJSON:
		env.writeJSON(rep)
	case *dot:
		printDot(env.stdout, rep)
	default:
		printGraph(env.stdout, rep)
	}
	if len(rep.Pending)+len(rep.Cycles)+len(rep.Failed)+len(rep.Invalid) > 0 {
		return exitProblems
	}
	return exitOK
}

// stubPlugin stands for a plugin in the loader that resolves the graph:
// nothing is started.
type stubPlugin struct{ info goplugins.PluginInfo }

func (s stubPlugin) Info() goplugins.PluginInfo                          { return s.info }
func (s stubPlugin) Execute(context.Context, struct{}) (struct{}, error) { return struct{}{}, nil }
func (s stubPlugin) Health(context.Context) error                        { return nil }
func (s stubPlugin) Close(context.Context) error                         { return nil }

// resolveGraph loads the valid manifests of res as stubs into a
// DynamicLoader, which screens them as it would for real (with policy,
// when not nil, as the manager's VersionPolicy), and reads the outcome
// from its Status and LoadAll's error.
func resolveGraph(res goplugins.ScanResult, policy *goplugins.VersionPolicy) graphReport {
	rep := graphReport{Order: []string{}, Levels: [][]string{}, Pending: []graphIssue{}, Cycles: [][]string{},
		Failed: []graphIssue{}, Invalid: []fileReport{}, Plugins: []graphNode{}}
	for _, p := range res.Invalid {
		rep.Invalid = append(rep.Invalid, fileReport{File: p.Path, Name: p.Name, Problems: manifestProblems(p.Err, p.Path)})
	}
	opts := []goplugins.Option{goplugins.WithLogger(slog.New(slog.DiscardHandler))}
	if policy != nil {
		opts = append(opts, goplugins.WithVersionPolicy(policy))
	}
	m := goplugins.NewManager[struct{}, struct{}](opts...)
	defer m.Shutdown(context.Background())
	l := goplugins.NewDynamicLoader(m, nil, goplugins.WithAutoLoad(false))
	defer l.Shutdown(context.Background())
	stub := func(_ context.Context, mf *goplugins.Manifest) (goplugins.Plugin[struct{}, struct{}], error) {
		return stubPlugin{mf.Info()}, nil
	}
	for _, t := range []string{"inprocess", "subprocess", "grpc"} {
		l.RegisterFactory(t, stub)
	}
	manifests := map[string]*goplugins.Manifest{}
	for _, mf := range res.Manifests {
		if err := l.Add(mf); err != nil {
			rep.Failed = append(rep.Failed, graphIssue{mf.Name, reason(err, mf.Name)})
			continue
		}
		manifests[mf.Name] = mf
	}
	for _, err := range unjoin(l.LoadAll(context.Background())) {
		if errors.Is(err, goplugins.ErrDependencyCycle) {
			rep.Cycles = append(rep.Cycles, cyclePath(err))
		}
	}
	rep.layout(manifests, rep.states(l.Status()))
	return rep
}

// states records the pending and failed plugins of the loader's status
// and returns the state of each plugin: "ok" (loaded), "pending", "cycle"
// or "failed".
func (rep *graphReport) states(status []goplugins.PluginStatus) map[string]string {
	state := map[string]string{}
	for _, st := range status {
		switch {
		case st.State == goplugins.LoadLoaded:
			state[st.Name] = "ok"
		case st.State == goplugins.LoadPending:
			state[st.Name] = "pending"
			rep.Pending = append(rep.Pending, graphIssue{st.Name, reason(st.Err, st.Name)})
		case errors.Is(st.Err, goplugins.ErrDependencyCycle):
			state[st.Name] = "cycle"
		default:
			state[st.Name] = "failed"
			rep.Failed = append(rep.Failed, graphIssue{st.Name, reason(st.Err, st.Name)})
		}
	}
	return state
}

// layout fills the nodes, the levels and the load order.
func (rep *graphReport) layout(manifests map[string]*goplugins.Manifest, state map[string]string) {
	level := map[string]int{}
	names := slices.Sorted(maps.Keys(manifests))
	for _, n := range names {
		if state[n] == "ok" {
			levelOf(n, manifests, state, level)
		}
		rep.Plugins = append(rep.Plugins, node(manifests[n], manifests, state[n]))
	}
	for _, n := range names {
		if d, ok := level[n]; ok {
			for d >= len(rep.Levels) {
				rep.Levels = append(rep.Levels, []string{})
			}
			rep.Levels[d] = append(rep.Levels[d], n)
		}
	}
	for _, lv := range rep.Levels {
		rep.Order = append(rep.Order, lv...)
	}
}

// levelOf returns the level of the loadable plugin n: 0 when it needs no
// plugin of the graph, else one more than its deepest dependency's.
// Loadable plugins depend on loadable ones only (the loader makes the
// dependents of any other wait), so the recursion ends.
func levelOf(n string, mfs map[string]*goplugins.Manifest, state map[string]string, level map[string]int) int {
	if d, ok := level[n]; ok {
		return d
	}
	d := 0
	for _, dep := range mfs[n].Dependencies {
		if state[dep.Name] == "ok" {
			d = max(d, levelOf(dep.Name, mfs, state, level)+1)
		}
	}
	level[n] = d
	return d
}

func node(mf *goplugins.Manifest, mfs map[string]*goplugins.Manifest, state string) graphNode {
	g := graphNode{Name: mf.Name, Version: mf.Version, File: mf.Path, State: state, Dependencies: []graphEdge{}}
	for _, d := range mf.Dependencies {
		_, known := mfs[d.Name]
		g.Dependencies = append(g.Dependencies, graphEdge{Name: d.Name, Constraint: d.Constraint, Optional: d.Optional, Missing: !known})
	}
	return g
}

// cycleText finds the path in the library's cycle error,
// `dependency cycle a -> b -> a; remove one of these dependencies`.
var cycleText = regexp.MustCompile(`dependency cycle (.+?); `)

func cyclePath(err error) []string {
	m := cycleText.FindStringSubmatch(err.Error())
	if m == nil {
		return []string{reason(err, "")}
	}
	return strings.Split(m[1], " -> ")
}

// reason is err's message without its code and the plugin name the
// report names already.
func reason(err error, plugin string) string {
	if err == nil {
		return ""
	}
	var parts []string
	for _, e := range unjoin(err) {
		msg := e.Error()
		var ge *goerrors.Error
		if errors.As(e, &ge) {
			msg = ge.Message
		}
		parts = append(parts, strings.TrimPrefix(msg, "plugin "+strconv.Quote(plugin)+": "))
	}
	return oneLine(strings.Join(parts, "; "))
}

// unjoin returns the errors err joins, or err alone.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	if err == nil {
		return nil
	}
	return []error{err}
}

func printGraph(w io.Writer, rep graphReport) {
	fmt.Fprintf(w, "load order: %s\n", strings.Join(rep.Order, " "))
	for i, lv := range rep.Levels {
		fmt.Fprintf(w, "level %d: %s\n", i, strings.Join(lv, " "))
	}
	for _, p := range rep.Pending {
		fmt.Fprintf(w, "pending: %s: %s\n", p.Name, p.Reason)
	}
	for _, c := range rep.Cycles {
		fmt.Fprintf(w, "cycle: %s\n", strings.Join(c, " -> "))
	}
	for _, p := range rep.Failed {
		fmt.Fprintf(w, "failed: %s: %s\n", p.Name, p.Reason)
	}
	for _, f := range rep.Invalid {
		for _, p := range f.Problems {
			fmt.Fprintf(w, "invalid: %s: %s\n", f.File, strings.TrimPrefix(p.Field+": "+p.Reason, ": "))
		}
	}
}

// printDot prints the graph for Graphviz: an edge from each plugin to each
// plugin it needs, labelled with the constraint (dashed when optional);
// pending plugins orange, plugins and edges on a cycle red, missing
// dependencies as dashed boxes.
func printDot(w io.Writer, rep graphReport) {
	onCycle := map[[2]string]bool{}
	for _, c := range rep.Cycles {
		for i := 0; i+1 < len(c); i++ {
			onCycle[[2]string{c[i], c[i+1]}] = true
		}
	}
	fmt.Fprintln(w, "digraph plugins {")
	fmt.Fprintln(w, "  node [shape=box];")
	missing := map[string]bool{}
	for _, n := range rep.Plugins {
		attrs := ""
		switch n.State {
		case "pending":
			attrs = ", color=orange"
		case "cycle", "failed":
			attrs = ", color=red"
		}
		fmt.Fprintf(w, "  %s [label=%s%s];\n", strconv.Quote(n.Name), strconv.Quote(n.Name+"\n"+n.Version), attrs)
		for _, d := range n.Dependencies {
			if d.Missing {
				missing[d.Name] = true
			}
		}
	}
	for _, n := range slices.Sorted(maps.Keys(missing)) {
		fmt.Fprintf(w, "  %s [label=%s, style=dashed];\n", strconv.Quote(n), strconv.Quote(n+"\n(missing)"))
	}
	for _, n := range rep.Plugins {
		for _, d := range n.Dependencies {
			attrs := []string{"label=" + strconv.Quote(d.Constraint)}
			if d.Optional {
				attrs = append(attrs, "style=dashed")
			}
			if onCycle[[2]string{n.Name, d.Name}] {
				attrs = append(attrs, "color=red")
			}
			fmt.Fprintf(w, "  %s -> %s [%s];\n", strconv.Quote(n.Name), strconv.Quote(d.Name), strings.Join(attrs, ", "))
		}
	}
	fmt.Fprintln(w, "}")
}
