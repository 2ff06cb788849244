package goplugins

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// benchGraph returns a random acyclic graph of nodes plugins and edges
// dependencies, the same for every call: each dependency goes from a plugin to
// one with a lower index, with a constraint its version satisfies.
func benchGraph(tb testing.TB, nodes, edges int) *dependencyGraph {
	tb.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	names := make([]string, nodes)
	versions := make([]string, nodes)
	for i := range names {
		names[i] = fmt.Sprintf("plugin-%d", rng.IntN(100000)*nodes+i)
		versions[i] = fmt.Sprintf("1.%d.%d", rng.IntN(20), rng.IntN(20))
	}
	deps := make([][]Dependency, nodes)
	type pair struct{ from, to int }
	seen := make(map[pair]bool, edges)
	constraints := []func(v string) string{
		func(string) string { return "^1.0.0" },
		func(string) string { return ">=1.0.0, <2.0.0" },
		func(v string) string { return "~" + v },
		func(string) string { return "1.x" },
		func(v string) string { return "<1.0.0 || >=" + v },
	}
	for len(seen) < edges {
		from := 1 + rng.IntN(nodes-1)
		to := rng.IntN(from)
		if seen[pair{from, to}] {
			continue
		}
		seen[pair{from, to}] = true
		deps[from] = append(deps[from], Dependency{
			Name:       names[to],
			Constraint: constraints[rng.IntN(len(constraints))](versions[to]),
			Optional:   rng.IntN(4) == 0,
		})
	}
	g := newDependencyGraph()
	for i, name := range names {
		if err := g.Add(name, versions[i], deps[i]...); err != nil {
			tb.Fatal(err)
		}
	}
	return g
}

func BenchmarkLoadOrder10k(b *testing.B) {
	const nodes, edges = 10_000, 30_000
	g := benchGraph(b, nodes, edges)
	b.ReportAllocs()
	for b.Loop() {
		order, err := g.LoadOrder()
		if err != nil {
			b.Fatal(err)
		}
		if len(order) != nodes {
			b.Fatalf("LoadOrder returned %d plugins, want %d", len(order), nodes)
		}
	}
}
