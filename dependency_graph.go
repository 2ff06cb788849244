package goplugins

import (
	"cmp"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/Masterminds/semver/v3"
)

// Dependency is a plugin's declared need for another plugin: the plugin named
// Name, at a version that satisfies Constraint (Masterminds syntax, as for
// parseConstraint). An Optional dependency may be absent; when it is present,
// its constraint must hold and it is loaded first, like a required one.
type Dependency struct {
	// Name is the name of the plugin depended on.
	Name string
	// Constraint is the version range it must be in, e.g. ">=1.2, <2".
	Constraint string
	// Optional makes the dependency satisfied when the plugin is absent.
	Optional bool
}

// dependencyGraph holds plugins, each a name and a strict semantic version,
// and the version-constrained dependencies between them. It computes the
// order to load them in (every plugin after the plugins it depends on), the
// levels that may load in parallel, and the order to unload dependents in.
//
// Every order is deterministic: among plugins free to go next, the one with
// the smallest name goes first. Versions and constraints are parsed once, in
// Add. A dependencyGraph is safe for concurrent use. The zero value is an
// empty graph ready to use.
type dependencyGraph struct {
	mu    sync.RWMutex
	nodes map[string]*graphNode
	// needers maps a plugin name to the set of plugins in the graph that
	// declare a dependency on it, whether or not that plugin is present.
	needers map[string]map[string]struct{}
}

// graphNode is one plugin of a dependencyGraph.
type graphNode struct {
	version string
	v       *semver.Version
	deps    []graphEdge
}

// graphEdge is one declared dependency with its parsed constraint.
type graphEdge struct {
	Dependency
	c *semver.Constraints
	// fits reports whether the plugin depended on satisfies c. It is
	// meaningful only while that plugin is present; Add keeps it current.
	fits bool
}

// newDependencyGraph returns an empty graph.
func newDependencyGraph() *dependencyGraph {
	return &dependencyGraph{}
}

// Add adds the plugin name at version with its dependencies, or replaces the
// plugin of that name, its version and all its dependencies. The name and
// every dependency name must pass validateName, the version must be strict
// semver and every constraint must parse; otherwise Add changes nothing and
// returns every problem (errors.Join'ed), each matching ErrInvalidPlugin,
// ErrInvalidVersion, or ErrInvalidConfig for a
// dependency declared twice. Dependencies need not be in the graph yet, and a
// plugin may depend on itself: LoadOrder and Check report what is missing,
// incompatible or cyclic.
func (g *dependencyGraph) Add(name, version string, deps ...Dependency) error {
	var errs []error
	if err := validateName(name); err != nil {
		errs = append(errs, err)
	}
	v, err := parseVersion(name, version)
	if err != nil {
		errs = append(errs, err)
	}
	n := &graphNode{version: version, v: v, deps: make([]graphEdge, len(deps))}
	for i, d := range deps {
		if validateName(d.Name) != nil {
			errs = append(errs, newError(codeInvalidPlugin, name,
				"dependency name %q is invalid; use 1 to %d characters of [a-z0-9._-], starting with a letter or digit",
				d.Name, maxNameLen))
			continue
		}
		if slices.ContainsFunc(deps[:i], func(e Dependency) bool { return e.Name == d.Name }) {
			errs = append(errs, newError(codeInvalidConfig, name,
				"dependency %q is declared twice; declare it once, joining the constraints with a comma", d.Name))
			continue
		}
		c, err := parseDependencyConstraint(name, d)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		n.deps[i] = graphEdge{Dependency: d, c: c}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}

	g.mu.Lock()
	defer g.mu.Unlock()
	if g.nodes == nil {
		g.nodes = make(map[string]*graphNode)
		g.needers = make(map[string]map[string]struct{})
	}
	if old := g.nodes[name]; old != nil {
		g.forget(name, old)
	}
	g.nodes[name] = n
	for i := range n.deps {
		e := &n.deps[i]
		set := g.needers[e.Name]
		if set == nil {
			set = make(map[string]struct{})
			g.needers[e.Name] = set
		}
		set[name] = struct{}{}
		if t := g.nodes[e.Name]; t != nil {
			e.fits, _ = e.c.Validate(t.v)
		}
	}
	for dependent := range g.needers[name] {
		dn := g.nodes[dependent]
		for i := range dn.deps {
			if e := &dn.deps[i]; e.Name == name {
				e.fits, _ = e.c.Validate(v)
			}
		}
	}
	return nil
}

// parseDependencyConstraint parses the constraint plugin declares on d.
func parseDependencyConstraint(plugin string, d Dependency) (*semver.Constraints, error) {
	if strings.TrimSpace(d.Constraint) == "" {
		return nil, newError(codeInvalidVersion, plugin,
			"dependency %q has an empty version constraint; use \"*\" to accept any version", d.Name)
	}
	c, err := semver.NewConstraint(d.Constraint)
	if err != nil {
		return nil, newError(codeInvalidVersion, plugin,
			"dependency %q: version constraint %q does not parse: %v", d.Name, d.Constraint, err)
	}
	return c, nil
}

// forget removes name's dependencies, those of node n, from g.needers.
func (g *dependencyGraph) forget(name string, n *graphNode) {
	for _, e := range n.deps {
		set := g.needers[e.Name]
		delete(set, name)
		if len(set) == 0 {
			delete(g.needers, e.Name)
		}
	}
}

// Remove removes the plugin name and its declared dependencies, and reports
// whether it was present. Plugins that depend on it stay; their dependency is
// then missing (or, if optional, ignored).
func (g *dependencyGraph) Remove(name string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := g.nodes[name]
	if n == nil {
		return false
	}
	g.forget(name, n)
	delete(g.nodes, name)
	return true
}

// Has reports whether the plugin name is in the graph.
func (g *dependencyGraph) Has(name string) bool {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.nodes[name] != nil
}

// Version returns the version the plugin name was added with, and whether it
// is in the graph.
func (g *dependencyGraph) Version(name string) (string, bool) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if n := g.nodes[name]; n != nil {
		return n.version, true
	}
	return "", false
}

// Dependencies returns the dependencies the plugin name declared, in the
// order it declared them, or nil if it is not in the graph. The slice is the
// caller's.
func (g *dependencyGraph) Dependencies(name string) []Dependency {
	g.mu.RLock()
	defer g.mu.RUnlock()
	n := g.nodes[name]
	if n == nil || len(n.deps) == 0 {
		return nil
	}
	deps := make([]Dependency, len(n.deps))
	for i, e := range n.deps {
		deps[i] = e.Dependency
	}
	return deps
}

// LoadOrder returns every plugin of the graph in an order to load them in:
// each plugin after all the plugins it depends on (optional ones included when
// present), the smallest name first among plugins free to go.
//
// If the graph has problems, LoadOrder returns no order and every problem,
// errors.Join'ed, as Check does.
func (g *dependencyGraph) LoadOrder() ([]string, error) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	x, order, err := g.sort(slices.Sorted(maps.Keys(g.nodes)))
	if err != nil {
		return nil, err
	}
	return x.namesOf(order), nil
}

// LoadOrderFor is LoadOrder for the plugins names and every plugin they need,
// directly or transitively; other plugins of the graph, and their problems,
// are left out. A name not in the graph is an error matching ErrNotFound.
func (g *dependencyGraph) LoadOrderFor(names ...string) ([]string, error) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	var errs []error
	closure := make(map[string]bool)
	stack := make([]string, 0, len(names))
	for _, name := range names {
		if g.nodes[name] == nil {
			errs = append(errs, newError(codeNotFound, name,
				"the plugin is not in the dependency graph; add it before asking for its load order"))
			continue
		}
		if !closure[name] {
			closure[name] = true
			stack = append(stack, name)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	for len(stack) > 0 {
		name := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, e := range g.nodes[name].deps {
			if g.nodes[e.Name] != nil && !closure[e.Name] {
				closure[e.Name] = true
				stack = append(stack, e.Name)
			}
		}
	}
	x, order, err := g.sort(slices.Sorted(maps.Keys(closure)))
	if err != nil {
		return nil, err
	}
	return x.namesOf(order), nil
}

// Levels groups the plugins of the graph by depth: level 0 holds the plugins
// that depend on no plugin of the graph, level k those whose deepest
// dependency is on level k-1. The plugins of one level depend on none of each
// other and may load in parallel once the levels before are loaded. Each level
// is sorted by name. Problems are reported as by LoadOrder.
func (g *dependencyGraph) Levels() ([][]string, error) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	x, order, err := g.sort(slices.Sorted(maps.Keys(g.nodes)))
	if err != nil {
		return nil, err
	}
	depth := make([]int32, len(x.names))
	var levels [][]string
	for _, i := range order {
		d := int32(0)
		for _, j := range x.deps(i) {
			d = max(d, depth[j]+1)
		}
		depth[i] = d
	}
	for i, d := range depth {
		for int(d) >= len(levels) {
			levels = append(levels, nil)
		}
		levels[d] = append(levels[d], x.names[i])
	}
	return levels, nil
}

// Dependents returns the plugins of the graph that depend on the plugin name,
// directly or transitively (through optional dependencies too), in an order
// that is safe to unload them in: each plugin before the plugins it depends
// on, the smallest name first among plugins free to go. name itself is not
// included; it may be absent from the graph. Dependents caught in a
// dependency cycle, which have no safe order, come last in name order.
func (g *dependencyGraph) Dependents(name string) []string {
	g.mu.RLock()
	defer g.mu.RUnlock()
	found := make(map[string]bool)
	stack := []string{name}
	for len(stack) > 0 {
		cur := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for d := range g.needers[cur] {
			if d != name && !found[d] {
				found[d] = true
				stack = append(stack, d)
			}
		}
	}
	if len(found) == 0 {
		return nil
	}
	x, _ := g.index(slices.Sorted(maps.Keys(found)))
	// Unloading runs along the dependency edges: a plugin goes before the
	// plugins it depends on.
	order, placed := topoOrder(len(x.names), x.depStart, x.depIDs)
	for i, ok := range placed {
		if !ok {
			order = append(order, int32(i))
		}
	}
	return x.namesOf(order)
}

// Check reports every problem of the graph, errors.Join'ed, or nil:
// a required dependency that is not in the graph (ErrDependencyMissing), a
// dependency present at a version its constraint rejects
// (ErrIncompatibleVersion, with semver's reasons), and each dependency cycle
// (ErrDependencyCycle, naming the cycle from its smallest name, "a -> b -> a").
// Problems come in plugin name order, cycles last.
func (g *dependencyGraph) Check() error {
	g.mu.RLock()
	defer g.mu.RUnlock()
	_, _, err := g.sort(slices.Sorted(maps.Keys(g.nodes)))
	return err
}

// Copy returns an independent copy of the graph: changes to either do not
// affect the other.
func (g *dependencyGraph) Copy() *dependencyGraph {
	g.mu.RLock()
	defer g.mu.RUnlock()
	c := &dependencyGraph{
		nodes:   make(map[string]*graphNode, len(g.nodes)),
		needers: make(map[string]map[string]struct{}, len(g.needers)),
	}
	for name, n := range g.nodes {
		// Parsed versions and constraints are never modified once parsed,
		// so the copies share them.
		c.nodes[name] = &graphNode{version: n.version, v: n.v, deps: slices.Clone(n.deps)}
	}
	for name, set := range g.needers {
		c.needers[name] = maps.Clone(set)
	}
	return c
}

// graphIndex is a set of plugins interned to ints for sorting: the plugin
// names[i] has id i, so ids order like names. Its dependency edges are in
// compressed rows: the plugins i depends on are depIDs[depStart[i]:depStart[i+1]].
type graphIndex struct {
	names    []string
	depStart []int32
	depIDs   []int32
}

func (x *graphIndex) deps(i int32) []int32 { return x.depIDs[x.depStart[i]:x.depStart[i+1]] }

func (x *graphIndex) namesOf(ids []int32) []string {
	out := make([]string, len(ids))
	for k, i := range ids {
		out[k] = x.names[i]
	}
	return out
}

// index interns names, which must be sorted and in the graph, and keeps the
// edges between them. It returns the problems of their dependencies: missing
// required ones, and present ones at an incompatible version. Edges to
// plugins of the graph outside names are dropped silently. g.mu must be held.
func (g *dependencyGraph) index(names []string) (*graphIndex, []error) {
	ids := make(map[string]int32, len(names))
	for i, name := range names {
		ids[name] = int32(i)
	}
	x := &graphIndex{names: names, depStart: make([]int32, len(names)+1)}
	nodes := make([]*graphNode, len(names))
	edges := 0
	for i, name := range names {
		nodes[i] = g.nodes[name]
		edges += len(nodes[i].deps)
	}
	x.depIDs = make([]int32, 0, edges)
	var problems []error
	for i, name := range names {
		for _, e := range nodes[i].deps {
			j, ok := ids[e.Name]
			if !ok {
				if !e.Optional && g.nodes[e.Name] == nil {
					problems = append(problems, newError(codeDependencyMissing, name,
						"required dependency %q (%s) is not known; add a plugin %q whose version satisfies %q, or mark the dependency optional",
						e.Name, e.Constraint, e.Name, e.Constraint))
				}
				continue
			}
			if !e.fits {
				problems = append(problems, checkConstraint(name, "dependency \""+e.Name+"\" version", g.nodes[e.Name].v, e.c))
			}
			x.depIDs = append(x.depIDs, j)
		}
		x.depStart[i+1] = int32(len(x.depIDs))
	}
	return x, problems
}

// sort indexes names (sorted, in the graph, and holding every plugin they
// depend on) and returns their load order, or every problem found. g.mu
// must be held.
func (g *dependencyGraph) sort(names []string) (*graphIndex, []int32, error) {
	x, problems := g.index(names)
	// Loading runs against the dependency edges: a plugin goes after the
	// plugins it depends on, so sort along the reversed edges.
	n := len(names)
	revStart := make([]int32, n+1)
	for _, j := range x.depIDs {
		revStart[j+1]++
	}
	for i := range n {
		revStart[i+1] += revStart[i]
	}
	revIDs := make([]int32, len(x.depIDs))
	next := slices.Clone(revStart[:n])
	for i := range int32(n) {
		for _, j := range x.deps(i) {
			revIDs[next[j]] = i
			next[j]++
		}
	}
	order, placed := topoOrder(n, revStart, revIDs)
	if len(order) < n {
		for _, cycle := range x.cycles(placed) {
			problems = append(problems, newError(codeDependencyCycle, names[cycle[0]],
				"dependency cycle %s; remove one of these dependencies", strings.Join(x.namesOf(cycle), " -> ")))
		}
	}
	if len(problems) > 0 {
		return nil, nil, errors.Join(problems...)
	}
	return x, order, nil
}

// topoOrder sorts the n nodes of the graph whose edges from node i go to
// adj[start[i]:start[i+1]]: each node comes after every node with an edge to
// it, the smallest id first among the nodes free to go. Nodes on a cycle, or
// after one, are left out; placed tells which nodes were sorted.
func topoOrder(n int, start, adj []int32) (order []int32, placed []bool) {
	pending := make([]int32, n)
	for _, j := range adj {
		pending[j]++
	}
	// Ascending ids make a valid min-heap as they are.
	ready := make(readyHeap, 0, n)
	for i := range int32(n) {
		if pending[i] == 0 {
			ready = append(ready, i)
		}
	}
	order = make([]int32, 0, n)
	placed = make([]bool, n)
	for len(ready) > 0 {
		i := ready.pop()
		order = append(order, i)
		placed[i] = true
		for _, j := range adj[start[i]:start[i+1]] {
			if pending[j]--; pending[j] == 0 {
				ready.push(j)
			}
		}
	}
	return order, placed
}

// cycles returns one dependency cycle for every strongly connected group of
// the plugins that could not be placed, found with Tarjan's algorithm: the
// shortest cycle through the group's smallest id, starting and ending there,
// taking smaller ids first among equally short ones. Cycles are sorted by
// their first id.
func (x *graphIndex) cycles(placed []bool) [][]int32 {
	n := len(x.names)
	visit := make([]int32, n) // 1 + the order of the visit; 0: not yet visited
	low := make([]int32, n)
	group := make([]int32, n) // 1 + the group's number; 0: not assigned
	var stack []int32
	var visited, groups int32
	var out [][]int32
	var strongConnect func(v int32)
	strongConnect = func(v int32) {
		visited++
		visit[v], low[v] = visited, visited
		stack = append(stack, v)
		for _, w := range x.deps(v) {
			switch {
			case placed[w]:
			case visit[w] == 0:
				strongConnect(w)
				low[v] = min(low[v], low[w])
			case group[w] == 0:
				low[v] = min(low[v], visit[w])
			}
		}
		if low[v] != visit[v] {
			return
		}
		groups++
		smallest, size := v, 0
		for {
			w := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			group[w] = groups
			smallest = min(smallest, w)
			size++
			if w == v {
				break
			}
		}
		if size > 1 || slices.Contains(x.deps(v), v) {
			out = append(out, x.shortestCycle(smallest, group))
		}
	}
	for v := range int32(n) {
		if !placed[v] && visit[v] == 0 {
			strongConnect(v)
		}
	}
	slices.SortFunc(out, func(a, b []int32) int { return cmp.Compare(a[0], b[0]) })
	return out
}

// shortestCycle returns the shortest cycle from s back to s within s's group,
// by breadth-first search taking smaller ids first.
func (x *graphIndex) shortestCycle(s int32, group []int32) []int32 {
	parent := map[int32]int32{s: s}
	queue := []int32{s}
	for len(queue) > 0 {
		u := queue[0]
		queue = queue[1:]
		next := slices.Clone(x.deps(u))
		slices.Sort(next)
		for _, w := range next {
			if w == s {
				var path []int32
				for v := u; v != s; v = parent[v] {
					path = append(path, v)
				}
				path = append(path, s)
				slices.Reverse(path)
				return append(path, s)
			}
			if _, seen := parent[w]; !seen && group[w] == group[s] {
				parent[w] = u
				queue = append(queue, w)
			}
		}
	}
	// Unreachable: every member of a strongly connected group lies on a
	// cycle through each other member.
	return []int32{s, s}
}

// readyHeap is a binary min-heap of ids.
type readyHeap []int32

func (h *readyHeap) push(v int32) {
	s := append(*h, v)
	for i := len(s) - 1; i > 0; {
		p := (i - 1) / 2
		if s[p] <= s[i] {
			break
		}
		s[p], s[i] = s[i], s[p]
		i = p
	}
	*h = s
}

func (h *readyHeap) pop() int32 {
	s := *h
	top := s[0]
	last := len(s) - 1
	s[0] = s[last]
	s = s[:last]
	for i := 0; ; {
		c := 2*i + 1
		if c >= len(s) {
			break
		}
		if c+1 < len(s) && s[c+1] < s[c] {
			c++
		}
		if s[i] <= s[c] {
			break
		}
		s[i], s[c] = s[c], s[i]
		i = c
	}
	*h = s
	return top
}
