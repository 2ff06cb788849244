package main

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestGraphOrderAndLevels covers graph on a sound graph: load order,
// levels (optional dependencies count when present), exit 0.
func TestGraphOrderAndLevels(t *testing.T) {
	var rep graphReport
	r := runJSON(t, &rep, "graph", "--json", testdata(t, "graph", "ok"))
	assert.Equal(t, exitOK, r.code, r.stderr)
	quietInScripts(t, r)
	assert.Equal(t, []string{"base", "side", "mid", "top"}, rep.Order)
	assert.Equal(t, [][]string{{"base", "side"}, {"mid"}, {"top"}}, rep.Levels)
	assert.Empty(t, rep.Pending)
	assert.Empty(t, rep.Cycles)
	text := run(t, "", "graph", testdata(t, "graph", "ok"))
	assert.Equal(t, []string{"load order: base side mid top", "level 0: base side", "level 1: mid", "level 2: top"}, lines(text.stdout))
}

// TestGraphPendingAndCycles covers graph's problems: a missing dependency
// and one at a refused version make plugins pending, a cycle is reported
// with its path and its dependents wait; exit 1.
func TestGraphPendingAndCycles(t *testing.T) {
	var rep graphReport
	r := runJSON(t, &rep, "graph", "--json", testdata(t, "graph", "broken"))
	assert.Equal(t, exitProblems, r.code)
	assert.Equal(t, []string{"base", "fine"}, rep.Order)
	assert.Equal(t, [][]string{{"base"}, {"fine"}}, rep.Levels)
	assert.Equal(t, [][]string{{"cyca", "cycb", "cyca"}}, rep.Cycles)
	pending := map[string]string{}
	for _, p := range rep.Pending {
		pending[p.Name] = p.Reason
	}
	assert.Len(t, pending, 3)
	assert.Contains(t, pending["needsx"], `required dependency "x" (^1.0.0) is not known`)
	assert.Contains(t, pending["toonew"], `dependency "base" version 1.0.0 does not satisfy "^2.0.0"`)
	assert.Contains(t, pending["aftercycle"], `dependency "cyca" cannot load`)
	assert.Empty(t, rep.Failed)

	text := run(t, "", "graph", testdata(t, "graph", "broken"))
	assert.Equal(t, exitProblems, text.code)
	assert.Contains(t, lines(text.stdout), "cycle: cyca -> cycb -> cyca")
}

// TestGraphDot covers --dot: nodes, edges labelled with constraints,
// optional edges dashed, missing dependencies as dashed nodes, the cycle
// in red.
func TestGraphDot(t *testing.T) {
	r := run(t, "", "graph", "--dot", testdata(t, "graph", "ok"))
	assert.Equal(t, exitOK, r.code)
	out := lines(r.stdout)
	assert.Equal(t, "digraph plugins {", out[0])
	assert.Equal(t, "}", out[len(out)-1])
	for _, want := range []string{
		`  "top" -> "mid" [label="~1.2"];`,
		`  "top" -> "side" [label=">=1.0.0", style=dashed];`,
		`  "absent" [label="absent\n(missing)", style=dashed];`,
		`  "mid" [label="mid\n1.2.0"];`,
	} {
		assert.Contains(t, out, want)
	}
	broken := lines(run(t, "", "graph", "--dot", testdata(t, "graph", "broken")).stdout)
	assert.Contains(t, broken, `  "cyca" -> "cycb" [label="^1.0.0", color=red];`)
	assert.Contains(t, broken, `  "needsx" [label="needsx\n1.0.0", color=orange];`)
}

// TestGraphHostVersion covers --host: a plugin whose requires.host the
// host version does not satisfy fails, and its dependents wait.
func TestGraphHostVersion(t *testing.T) {
	tests := []struct {
		host    string
		code    int
		order   []string
		failed  []graphIssue
		pending []string
	}{
		{"1.5.0", exitOK, []string{"base", "side", "mid", "top"}, []graphIssue{}, nil},
		{"0.5.0", exitProblems, []string{"base", "side"},
			[]graphIssue{{"mid", `the plugin requires host ">=1.0.0" but this host is 0.5.0 ("0.5.0" is less than "1.0.0"); use a build of the plugin made for this host`}},
			[]string{"top"}},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			var rep graphReport
			r := runJSON(t, &rep, "graph", "--json", "--host", tt.host, testdata(t, "graph", "ok"))
			assert.Equal(t, tt.code, r.code)
			assert.Equal(t, tt.order, rep.Order)
			assert.Equal(t, tt.failed, rep.Failed)
			var pending []string
			for _, p := range rep.Pending {
				pending = append(pending, p.Name)
			}
			assert.Equal(t, tt.pending, pending)
		})
	}
	r := run(t, "", "graph", "--host", "1.0", testdata(t, "graph", "ok"))
	assert.Equal(t, exitUsage, r.code)
}
