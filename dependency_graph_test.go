package goplugins

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// graphNodeSpec is a plugin to add to a test graph.
type graphNodeSpec struct {
	name, version string
	deps          []Dependency
}

func graphPlugin(name, version string, deps ...Dependency) graphNodeSpec {
	return graphNodeSpec{name, version, deps}
}

func graphNeed(name, constraint string) Dependency {
	return Dependency{Name: name, Constraint: constraint}
}

func graphMayNeed(name, constraint string) Dependency {
	return Dependency{Name: name, Constraint: constraint, Optional: true}
}

func buildGraph(t *testing.T, nodes ...graphNodeSpec) *dependencyGraph {
	t.Helper()
	g := newDependencyGraph()
	for _, n := range nodes {
		require.NoError(t, g.Add(n.name, n.version, n.deps...), "Add(%q)", n.name)
	}
	return g
}

// joined returns the errors err joins, or err alone.
func joinedErrors(err error) []error {
	var j interface{ Unwrap() []error }
	if errors.As(err, &j) {
		return j.Unwrap()
	}
	if err == nil {
		return nil
	}
	return []error{err}
}

// assertGraphProblems asserts that err joins exactly len(want) errors, the i-th
// matching want[i].is and containing every want[i].contains.
func assertGraphProblems(t *testing.T, err error, want []graphProblem) {
	t.Helper()
	got := joinedErrors(err)
	require.Len(t, got, len(want), "problems: %v", err)
	for i, w := range want {
		assert.ErrorIs(t, got[i], w.is, "problem %d", i)
		assert.ErrorIs(t, err, w.is, "the joined error must match problem %d", i)
		for _, s := range w.contains {
			assert.Contains(t, got[i].Error(), s, "problem %d", i)
		}
	}
}

type graphProblem struct {
	is       error
	contains []string
}

func TestDependencyGraphLoadOrder(t *testing.T) {
	tests := []struct {
		name       string
		nodes      []graphNodeSpec
		wantOrder  []string
		wantLevels [][]string
	}{
		{
			name:       "empty",
			wantOrder:  []string{},
			wantLevels: nil,
		},
		{
			name:       "independent plugins load in name order",
			nodes:      []graphNodeSpec{graphPlugin("x", "1.0.0"), graphPlugin("m", "1.0.0"), graphPlugin("a", "1.0.0")},
			wantOrder:  []string{"a", "m", "x"},
			wantLevels: [][]string{{"a", "m", "x"}},
		},
		{
			name: "chain against name order",
			nodes: []graphNodeSpec{
				graphPlugin("a", "1.0.0", graphNeed("b", "^1.0.0")),
				graphPlugin("b", "1.2.0", graphNeed("c", "~2.1")),
				graphPlugin("c", "2.1.7"),
			},
			wantOrder:  []string{"c", "b", "a"},
			wantLevels: [][]string{{"c"}, {"b"}, {"a"}},
		},
		{
			name: "diamond",
			nodes: []graphNodeSpec{
				graphPlugin("app", "3.0.0", graphNeed("zeta", ">=1.0.0, <2.0.0"), graphNeed("beta", "1.x")),
				graphPlugin("zeta", "1.0.0", graphNeed("core", "^0.3.0")),
				graphPlugin("beta", "1.9.0", graphNeed("core", "0.3.1")),
				graphPlugin("core", "0.3.1"),
			},
			wantOrder:  []string{"core", "beta", "zeta", "app"},
			wantLevels: [][]string{{"core"}, {"beta", "zeta"}, {"app"}},
		},
		{
			name: "a plugin freed later but with a smaller name goes first",
			nodes: []graphNodeSpec{
				graphPlugin("b", "1.0.0", graphNeed("d", "*")),
				graphPlugin("a", "1.0.0", graphNeed("c", "*")),
				graphPlugin("c", "1.0.0"),
				graphPlugin("d", "1.0.0"),
			},
			// d is free from the start, a only after c; a still goes before d.
			wantOrder:  []string{"c", "a", "d", "b"},
			wantLevels: [][]string{{"c", "d"}, {"a", "b"}},
		},
		{
			name: "level is the longest path, not the shortest",
			nodes: []graphNodeSpec{
				graphPlugin("top", "1.0.0", graphNeed("base", "*"), graphNeed("mid", "*")),
				graphPlugin("mid", "1.0.0", graphNeed("base", "*")),
				graphPlugin("base", "1.0.0"),
			},
			wantOrder:  []string{"base", "mid", "top"},
			wantLevels: [][]string{{"base"}, {"mid"}, {"top"}},
		},
		{
			name: "optional dependency absent is ignored",
			nodes: []graphNodeSpec{
				graphPlugin("a", "1.0.0", graphMayNeed("metrics", "~2.1"), graphNeed("b", "^1")),
				graphPlugin("b", "1.0.0"),
			},
			wantOrder:  []string{"b", "a"},
			wantLevels: [][]string{{"b"}, {"a"}},
		},
		{
			name: "optional dependency present and satisfied orders the load",
			nodes: []graphNodeSpec{
				graphPlugin("a", "1.0.0", graphMayNeed("metrics", "~2.1")),
				graphPlugin("metrics", "2.1.4"),
			},
			wantOrder:  []string{"metrics", "a"},
			wantLevels: [][]string{{"metrics"}, {"a"}},
		},
		{
			name: "prerelease accepted by a prerelease constraint",
			nodes: []graphNodeSpec{
				graphPlugin("a", "1.0.0", graphNeed("b", ">=2.0.0-0")),
				graphPlugin("b", "2.0.0-rc.1"),
			},
			wantOrder:  []string{"b", "a"},
			wantLevels: [][]string{{"b"}, {"a"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := buildGraph(t, tt.nodes...)
			order, err := g.LoadOrder()
			require.NoError(t, err)
			assert.Equal(t, tt.wantOrder, order)
			levels, err := g.Levels()
			require.NoError(t, err)
			assert.Equal(t, tt.wantLevels, levels)
			assert.NoError(t, g.Check())
		})
	}
}

func TestDependencyGraphProblems(t *testing.T) {
	tests := []struct {
		name  string
		nodes []graphNodeSpec
		want  []graphProblem
	}{
		{
			name:  "missing required dependency",
			nodes: []graphNodeSpec{graphPlugin("a", "1.0.0", graphNeed("b", "^1.2.0"))},
			want: []graphProblem{{ErrDependencyMissing,
				[]string{`plugin "a"`, `dependency "b"`, "^1.2.0", "mark the dependency optional"}}},
		},
		{
			name:  "unsatisfied constraint",
			nodes: []graphNodeSpec{graphPlugin("a", "1.0.0", graphNeed("b", "^2.0.0")), graphPlugin("b", "1.4.0")},
			want: []graphProblem{{ErrIncompatibleVersion,
				[]string{`plugin "a"`, `dependency "b"`, "1.4.0", "^2.0.0", `"1.4.0" is less than "2.0.0"`}}},
		},
		{
			name:  "optional dependency present and unsatisfied",
			nodes: []graphNodeSpec{graphPlugin("a", "1.0.0", graphMayNeed("b", "~1.3")), graphPlugin("b", "1.4.0")},
			want: []graphProblem{{ErrIncompatibleVersion,
				[]string{`plugin "a"`, `dependency "b"`, "1.4.0", "~1.3", "does not have same major and minor version"}}},
		},
		{
			name:  "prerelease excluded by a release constraint",
			nodes: []graphNodeSpec{graphPlugin("a", "1.0.0", graphNeed("b", ">=1.0.0")), graphPlugin("b", "1.1.0-beta.1")},
			want: []graphProblem{{ErrIncompatibleVersion,
				[]string{`plugin "a"`, "1.1.0-beta.1", ">=1.0.0", "prerelease"}}},
		},
		{
			name:  "cycle of length 1",
			nodes: []graphNodeSpec{graphPlugin("a", "1.0.0", graphNeed("a", "*"))},
			want:  []graphProblem{{ErrDependencyCycle, []string{`plugin "a"`, "dependency cycle a -> a;"}}},
		},
		{
			name: "cycle of length 2",
			nodes: []graphNodeSpec{
				graphPlugin("b", "1.0.0", graphNeed("a", "*")),
				graphPlugin("a", "1.0.0", graphNeed("b", "*")),
			},
			want: []graphProblem{{ErrDependencyCycle, []string{"dependency cycle a -> b -> a;"}}},
		},
		{
			name: "cycle of length 3",
			nodes: []graphNodeSpec{
				graphPlugin("c", "1.0.0", graphNeed("a", "*")),
				graphPlugin("b", "1.0.0", graphNeed("c", "*")),
				graphPlugin("a", "1.0.0", graphNeed("b", "*")),
			},
			want: []graphProblem{{ErrDependencyCycle, []string{"dependency cycle a -> b -> c -> a;"}}},
		},
		{
			name: "cycle of length 4 starts at its smallest name",
			nodes: []graphNodeSpec{
				graphPlugin("m", "1.0.0", graphNeed("x", "*")),
				graphPlugin("x", "1.0.0", graphNeed("c", "*")),
				graphPlugin("c", "1.0.0", graphNeed("q", "*")),
				graphPlugin("q", "1.0.0", graphNeed("m", "*")),
			},
			want: []graphProblem{{ErrDependencyCycle, []string{`plugin "c"`, "dependency cycle c -> q -> m -> x -> c;"}}},
		},
		{
			name: "cycle through an optional dependency, with plugins before and after it",
			nodes: []graphNodeSpec{
				graphPlugin("app", "1.0.0", graphNeed("b", "*")),
				graphPlugin("b", "1.0.0", graphNeed("c", "*")),
				graphPlugin("c", "1.0.0", graphMayNeed("b", "*"), graphNeed("base", "*")),
				graphPlugin("base", "1.0.0"),
			},
			want: []graphProblem{{ErrDependencyCycle, []string{"dependency cycle b -> c -> b;"}}},
		},
		{
			name: "two cycles in one group: the shortest through the smallest name",
			nodes: []graphNodeSpec{
				graphPlugin("a", "1.0.0", graphNeed("c", "*"), graphNeed("b", "*")),
				graphPlugin("b", "1.0.0", graphNeed("a", "*")),
				graphPlugin("c", "1.0.0", graphNeed("d", "*")),
				graphPlugin("d", "1.0.0", graphNeed("a", "*")),
			},
			want: []graphProblem{{ErrDependencyCycle, []string{"dependency cycle a -> b -> a;"}}},
		},
		{
			name: "two separate cycles, sorted",
			nodes: []graphNodeSpec{
				graphPlugin("y", "1.0.0", graphNeed("z", "*")),
				graphPlugin("z", "1.0.0", graphNeed("y", "*")),
				graphPlugin("k", "1.0.0", graphNeed("k", "*")),
			},
			want: []graphProblem{
				{ErrDependencyCycle, []string{"dependency cycle k -> k;"}},
				{ErrDependencyCycle, []string{"dependency cycle y -> z -> y;"}},
			},
		},
		{
			name: "every problem at once, in plugin order, cycles last",
			nodes: []graphNodeSpec{
				graphPlugin("a", "1.0.0", graphNeed("gone", "^1"), graphNeed("b", "^2.0.0")),
				graphPlugin("b", "1.0.0", graphNeed("c", "*")),
				graphPlugin("c", "1.0.0", graphNeed("b", "*"), graphNeed("lost", "~1.1")),
			},
			want: []graphProblem{
				{ErrDependencyMissing, []string{`plugin "a"`, `"gone"`, "^1"}},
				{ErrIncompatibleVersion, []string{`plugin "a"`, `dependency "b"`, "1.0.0", "^2.0.0"}},
				{ErrDependencyMissing, []string{`plugin "c"`, `"lost"`, "~1.1"}},
				{ErrDependencyCycle, []string{"dependency cycle b -> c -> b;"}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := buildGraph(t, tt.nodes...)
			order, err := g.LoadOrder()
			assert.Nil(t, order)
			assertGraphProblems(t, err, tt.want)
			levels, err := g.Levels()
			assert.Nil(t, levels)
			assertGraphProblems(t, err, tt.want)
			assertGraphProblems(t, g.Check(), tt.want)
		})
	}
}

func TestDependencyGraphAdd(t *testing.T) {
	tests := []struct {
		name    string
		plugin  string
		version string
		deps    []Dependency
		want    []graphProblem
	}{
		{"invalid name", "Auth", "1.0.0", nil,
			[]graphProblem{{ErrInvalidPlugin, []string{`"Auth"`}}}},
		{"invalid name and version", "-a", "1.0", nil,
			[]graphProblem{{ErrInvalidPlugin, []string{`"-a"`}}, {ErrInvalidVersion, []string{`"1.0"`}}}},
		{"v prefix", "auth", "v1.0.0", nil,
			[]graphProblem{{ErrInvalidVersion, []string{`plugin "auth"`, `"v1.0.0"`, "strict"}}}},
		{"invalid dependency name", "auth", "1.0.0", []Dependency{graphNeed("../db", "^1")},
			[]graphProblem{{ErrInvalidPlugin, []string{`plugin "auth"`, `"../db"`}}}},
		{"empty constraint", "auth", "1.0.0", []Dependency{graphNeed("db", " ")},
			[]graphProblem{{ErrInvalidVersion, []string{`plugin "auth"`, `"db"`, "empty", `"*"`}}}},
		{"constraint does not parse", "auth", "1.0.0", []Dependency{graphNeed("db", ">>1")},
			[]graphProblem{{ErrInvalidVersion, []string{`plugin "auth"`, `"db"`, `">>1"`, "does not parse"}}}},
		{"dependency declared twice", "auth", "1.0.0", []Dependency{graphNeed("db", "^1"), graphMayNeed("db", "<1.5")},
			[]graphProblem{{ErrInvalidConfig, []string{`plugin "auth"`, `"db"`, "twice"}}}},
		{"every problem reported", "auth", "1.2", []Dependency{graphNeed("db", ""), graphNeed("Log", "*"), graphNeed("cache", ">>2")},
			[]graphProblem{
				{ErrInvalidVersion, []string{`"1.2"`}},
				{ErrInvalidVersion, []string{`"db"`, "empty"}},
				{ErrInvalidPlugin, []string{`"Log"`}},
				{ErrInvalidVersion, []string{`"cache"`, `">>2"`}},
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := buildGraph(t, graphPlugin("auth", "1.0.0", graphNeed("db", "^1")), graphPlugin("db", "1.0.0"))
			assertGraphProblems(t, g.Add(tt.plugin, tt.version, tt.deps...), tt.want)
			// A refused Add changes nothing.
			v, ok := g.Version("auth")
			assert.True(t, ok)
			assert.Equal(t, "1.0.0", v)
			assert.Equal(t, []Dependency{graphNeed("db", "^1")}, g.Dependencies("auth"))
			assert.Equal(t, []string{"auth"}, g.Dependents("db"))
			if tt.plugin != "auth" {
				assert.False(t, g.Has(tt.plugin))
			}
		})
	}
}

func TestDependencyGraphAccessors(t *testing.T) {
	var g dependencyGraph // the zero value is usable
	assert.False(t, g.Has("auth"))
	_, ok := g.Version("auth")
	assert.False(t, ok)
	assert.Nil(t, g.Dependencies("auth"))
	assert.Nil(t, g.Dependents("auth"))
	order, err := g.LoadOrder()
	require.NoError(t, err)
	assert.Empty(t, order)

	deps := []Dependency{graphNeed("db", "^1"), graphMayNeed("metrics", "~2.1")}
	require.NoError(t, g.Add("auth", "1.4.0-rc.1+build.7", deps...))
	assert.True(t, g.Has("auth"))
	v, ok := g.Version("auth")
	assert.True(t, ok)
	assert.Equal(t, "1.4.0-rc.1+build.7", v)
	got := g.Dependencies("auth")
	assert.Equal(t, deps, got)
	got[0].Constraint = "^9"
	deps[1].Name = "changed"
	assert.Equal(t, []Dependency{graphNeed("db", "^1"), graphMayNeed("metrics", "~2.1")}, g.Dependencies("auth"),
		"neither the caller's slice nor the returned one aliases the graph")
}

func TestDependencyGraphRemoveAndReplace(t *testing.T) {
	g := buildGraph(t,
		graphPlugin("api", "1.0.0", graphNeed("db", "^1.2.0"), graphMayNeed("cache", "^1")),
		graphPlugin("db", "1.3.0"),
		graphPlugin("cache", "1.0.0"),
	)
	order, err := g.LoadOrder()
	require.NoError(t, err)
	assert.Equal(t, []string{"cache", "db", "api"}, order)

	// Removing a plugin another one needs makes the need missing.
	assert.True(t, g.Remove("db"))
	assert.False(t, g.Remove("db"), "a second Remove finds nothing")
	assert.False(t, g.Has("db"))
	_, err = g.LoadOrder()
	assertGraphProblems(t, err, []graphProblem{{ErrDependencyMissing, []string{`plugin "api"`, `"db"`, "^1.2.0"}}})
	assert.Equal(t, []string{"api"}, g.Dependents("db"), "a missing plugin still has dependents")

	// Removing an optional dependency leaves nothing to report.
	assert.True(t, g.Remove("cache"))
	require.NoError(t, g.Add("db", "1.2.9"))
	order, err = g.LoadOrder()
	require.NoError(t, err)
	assert.Equal(t, []string{"db", "api"}, order)

	// Replacing a dependency with a version its dependents reject, and back.
	require.NoError(t, g.Add("db", "2.0.0"))
	_, err = g.LoadOrder()
	assertGraphProblems(t, err, []graphProblem{{ErrIncompatibleVersion, []string{`plugin "api"`, "2.0.0", "^1.2.0"}}})
	require.NoError(t, g.Add("db", "1.5.0"))
	require.NoError(t, g.Check())

	// Replacing a dependent replaces its dependencies.
	require.NoError(t, g.Add("api", "1.1.0", graphNeed("cache", "^1")))
	assert.Nil(t, g.Dependents("db"))
	assert.Equal(t, []string{"api"}, g.Dependents("cache"))
	_, err = g.LoadOrder()
	assertGraphProblems(t, err, []graphProblem{{ErrDependencyMissing, []string{`plugin "api"`, `"cache"`}}})
	require.NoError(t, g.Add("cache", "1.0.0"))
	order, err = g.LoadOrder()
	require.NoError(t, err)
	assert.Equal(t, []string{"cache", "api", "db"}, order, "api no longer waits for db")

	// Removing a plugin with a self-dependency clears its cycle.
	require.NoError(t, g.Add("self", "1.0.0", graphNeed("self", "*")))
	require.ErrorIs(t, g.Check(), ErrDependencyCycle)
	assert.True(t, g.Remove("self"))
	require.NoError(t, g.Check())
	assert.Nil(t, g.Dependents("self"))
}

func TestDependencyGraphDependents(t *testing.T) {
	diamond := []graphNodeSpec{
		graphPlugin("app", "1.0.0", graphNeed("zeta", "*"), graphNeed("beta", "*")),
		graphPlugin("zeta", "1.0.0", graphNeed("core", "*")),
		graphPlugin("beta", "1.0.0", graphNeed("core", "*")),
		graphPlugin("core", "1.0.0"),
		graphPlugin("tool", "1.0.0", graphMayNeed("app", "*")),
	}
	tests := []struct {
		name  string
		nodes []graphNodeSpec
		of    string
		want  []string
	}{
		{"diamond base: dependents before what they depend on", diamond, "core", []string{"tool", "app", "beta", "zeta"}},
		{"diamond side", diamond, "beta", []string{"tool", "app"}},
		{"optional dependent", diamond, "app", []string{"tool"}},
		{"nothing depends on it", diamond, "tool", nil},
		{"unknown plugin", diamond, "ghost", nil},
		{
			name: "chain",
			nodes: []graphNodeSpec{
				graphPlugin("a", "1.0.0", graphNeed("b", "*")),
				graphPlugin("b", "1.0.0", graphNeed("c", "*")),
				graphPlugin("c", "1.0.0", graphNeed("d", "*")),
				graphPlugin("d", "1.0.0"),
			},
			of:   "d",
			want: []string{"a", "b", "c"},
		},
		{
			name: "ties by name",
			nodes: []graphNodeSpec{
				graphPlugin("z", "1.0.0", graphNeed("base", "*")),
				graphPlugin("m", "1.0.0", graphNeed("base", "*"), graphNeed("x", "*")),
				graphPlugin("x", "1.0.0", graphNeed("base", "*")),
				graphPlugin("base", "1.0.0"),
			},
			of:   "base",
			want: []string{"m", "x", "z"},
		},
		{
			name: "dependents on a cycle come last in name order",
			nodes: []graphNodeSpec{
				graphPlugin("top", "1.0.0", graphNeed("y", "*")),
				graphPlugin("y", "1.0.0", graphNeed("x", "*")),
				graphPlugin("x", "1.0.0", graphNeed("y", "*"), graphNeed("base", "*")),
				graphPlugin("base", "1.0.0"),
			},
			of:   "base",
			want: []string{"top", "x", "y"},
		},
		{
			name: "a cycle through the plugin itself leaves it out",
			nodes: []graphNodeSpec{
				graphPlugin("a", "1.0.0", graphNeed("b", "*")),
				graphPlugin("b", "1.0.0", graphNeed("a", "*")),
			},
			of:   "a",
			want: []string{"b"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := buildGraph(t, tt.nodes...)
			assert.Equal(t, tt.want, g.Dependents(tt.of))
		})
	}
}

func TestDependencyGraphLoadOrderFor(t *testing.T) {
	g := buildGraph(t,
		graphPlugin("web", "1.0.0", graphNeed("auth", "^1"), graphMayNeed("cache", "*"), graphMayNeed("absent", "*")),
		graphPlugin("auth", "1.0.0", graphNeed("db", "^1")),
		graphPlugin("db", "1.0.0"),
		graphPlugin("cache", "1.0.0"),
		graphPlugin("batch", "1.0.0", graphNeed("db", "^1"), graphNeed("queue", "^1")), // queue is missing
		graphPlugin("lonely", "1.0.0"),
		graphPlugin("loop", "1.0.0", graphNeed("loop", "*")),
	)
	_, err := g.LoadOrder()
	require.ErrorIs(t, err, ErrDependencyMissing, "the whole graph has problems")

	tests := []struct {
		name string
		of   []string
		want []string
	}{
		{"none", nil, []string{}},
		{"leaf", []string{"db"}, []string{"db"}},
		{"transitive and optional present", []string{"web"}, []string{"cache", "db", "auth", "web"}},
		{"overlapping names", []string{"auth", "web", "auth", "lonely"}, []string{"cache", "db", "auth", "lonely", "web"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			order, err := g.LoadOrderFor(tt.of...)
			require.NoError(t, err)
			assert.Equal(t, tt.want, order)
		})
	}

	t.Run("problems of the subset", func(t *testing.T) {
		order, err := g.LoadOrderFor("batch", "loop", "lonely")
		assert.Nil(t, order)
		assertGraphProblems(t, err, []graphProblem{
			{ErrDependencyMissing, []string{`plugin "batch"`, `"queue"`}},
			{ErrDependencyCycle, []string{"loop -> loop"}},
		})
	})
	t.Run("unknown plugins", func(t *testing.T) {
		order, err := g.LoadOrderFor("ghost", "web", "queue")
		assert.Nil(t, order)
		assertGraphProblems(t, err, []graphProblem{
			{ErrNotFound, []string{`plugin "ghost"`}},
			{ErrNotFound, []string{`plugin "queue"`}},
		})
	})
}

func TestDependencyGraphCopy(t *testing.T) {
	g := buildGraph(t,
		graphPlugin("api", "1.0.0", graphNeed("db", "^1")),
		graphPlugin("db", "1.0.0"),
	)
	c := g.Copy()

	// Changes to the original do not reach the copy.
	require.NoError(t, g.Add("db", "2.0.0"))
	require.NoError(t, g.Add("api", "1.1.0", graphNeed("db", "^2"), graphNeed("log", "*")))
	require.NoError(t, g.Add("log", "1.0.0"))
	assert.True(t, g.Remove("log"))
	require.NoError(t, g.Add("extra", "1.0.0", graphNeed("api", "*")))

	v, _ := c.Version("db")
	assert.Equal(t, "1.0.0", v)
	assert.Equal(t, []Dependency{graphNeed("db", "^1")}, c.Dependencies("api"))
	assert.False(t, c.Has("extra"))
	assert.Equal(t, []string{"api"}, c.Dependents("db"))
	order, err := c.LoadOrder()
	require.NoError(t, err, "the copy kept its own compatibility state")
	assert.Equal(t, []string{"db", "api"}, order)

	// Changes to the copy do not reach the original.
	require.NoError(t, c.Add("db", "3.0.0"))
	assert.True(t, c.Remove("api"))
	_, err = g.LoadOrder()
	assertGraphProblems(t, err, []graphProblem{{ErrDependencyMissing, []string{`plugin "api"`, `"log"`}}})
	v, _ = g.Version("db")
	assert.Equal(t, "2.0.0", v)
	assert.Equal(t, []string{"extra", "api"}, g.Dependents("db"))
	assert.Equal(t, []string{"db"}, mustGraphLoadOrder(t, c))
}

func mustGraphLoadOrder(t *testing.T, g *dependencyGraph) []string {
	t.Helper()
	order, err := g.LoadOrder()
	require.NoError(t, err)
	return order
}

// TestDependencyGraphConcurrent runs writers and readers together (under
// -race): the chain p00 <- p01 <- ... stays fixed while writers change
// versions within every constraint and add and remove a leaf, so every
// answer a reader gets must be the chain, with or without the leaf.
func TestDependencyGraphConcurrent(t *testing.T) {
	verifyNoLeaks(t)
	const chain = 20
	g := newDependencyGraph()
	want := make([]string, chain)
	for i := range chain {
		want[i] = fmt.Sprintf("p%02d", i)
		var deps []Dependency
		if i > 0 {
			deps = []Dependency{graphNeed(want[i-1], "^1.0.0")}
		}
		require.NoError(t, g.Add(want[i], "1.0.0", deps...))
	}
	withLeaf := append(slices.Clone(want), "zz-leaf")

	var wg sync.WaitGroup
	errs := make(chan error, 64)
	report := func(format string, args ...any) {
		select {
		case errs <- fmt.Errorf(format, args...):
		default:
		}
	}
	for w := range 2 {
		wg.Go(func() {
			for k := range 300 {
				i := (k*7 + w) % chain
				var deps []Dependency
				if i > 0 {
					deps = []Dependency{graphNeed(want[i-1], "^1.0.0")}
				}
				if err := g.Add(want[i], fmt.Sprintf("1.%d.%d", k%5, w), deps...); err != nil {
					report("Add: %v", err)
				}
				if w == 0 {
					if err := g.Add("zz-leaf", "1.0.0", graphNeed(want[chain-1], "^1")); err != nil {
						report("Add leaf: %v", err)
					}
				} else {
					g.Remove("zz-leaf")
				}
			}
		})
	}
	for range 3 {
		wg.Go(func() {
			for range 200 {
				order, err := g.LoadOrder()
				if err != nil || !(slices.Equal(order, want) || slices.Equal(order, withLeaf)) {
					report("LoadOrder = %v, %v", order, err)
				}
				if levels, err := g.Levels(); err != nil || len(levels) < chain {
					report("Levels = %v, %v", levels, err)
				}
				if d := g.Dependents(want[chain-2]); !slices.Equal(d, []string{want[chain-1]}) &&
					!slices.Equal(d, []string{"zz-leaf", want[chain-1]}) {
					report("Dependents = %v", d)
				}
				if err := g.Copy().Check(); err != nil {
					report("Copy().Check: %v", err)
				}
				if order, err := g.LoadOrderFor(want[3]); err != nil || !slices.Equal(order, want[:4]) {
					report("LoadOrderFor = %v, %v", order, err)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		assert.NoError(t, err)
	}
}

func TestDependencyGraphCycleMessageNamesEveryPlugin(t *testing.T) {
	// A long cycle is named in full, not cut short.
	const n = 50
	g := newDependencyGraph()
	names := make([]string, n)
	for i := range n {
		names[i] = fmt.Sprintf("n%02d", i)
	}
	for i := range n {
		require.NoError(t, g.Add(names[i], "1.0.0", graphNeed(names[(i+1)%n], "*")))
	}
	err := g.Check()
	require.ErrorIs(t, err, ErrDependencyCycle)
	assert.Contains(t, err.Error(), strings.Join(append(names, names[0]), " -> "))
}

// TestDependencyGraphOrdersAndChecks (was ExampleDependencyGraph): load
// order, levels and dependents of a small graph, and a replaced version
// that breaks its dependents' constraints.
func TestDependencyGraphOrdersAndChecks(t *testing.T) {
	g := newDependencyGraph()
	require.NoError(t, g.Add("logging", "1.2.0"))
	require.NoError(t, g.Add("metrics", "2.1.4", Dependency{Name: "logging", Constraint: "^1.0.0"}))
	require.NoError(t, g.Add("auth", "1.4.0",
		Dependency{Name: "logging", Constraint: "^1.1"},
		Dependency{Name: "metrics", Constraint: "~2.1", Optional: true}))
	require.NoError(t, g.Add("api", "3.0.0", Dependency{Name: "auth", Constraint: ">=1.4.0, <2.0.0"}))

	order, err := g.LoadOrder()
	require.NoError(t, err)
	require.Equal(t, []string{"logging", "metrics", "auth", "api"}, order)
	levels, err := g.Levels()
	require.NoError(t, err)
	require.Equal(t, [][]string{{"logging"}, {"metrics"}, {"auth"}, {"api"}}, levels)
	require.Equal(t, []string{"api", "auth", "metrics"}, g.Dependents("logging"))

	require.NoError(t, g.Add("logging", "2.0.0")) // breaks metrics' and auth's constraints
	require.ErrorIs(t, g.Check(), ErrIncompatibleVersion)
}
