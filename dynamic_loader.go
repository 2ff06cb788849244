package goplugins

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	goerrors "github.com/agilira/go-errors"
)

// Factory makes the plugin a manifest describes. Factories are registered
// per transport with DynamicLoader.RegisterFactory. The returned plugin is
// owned by the loader from then on; on error the factory must have released
// whatever it started.
type Factory[Req, Resp any] func(ctx context.Context, m *Manifest) (Plugin[Req, Resp], error)

// LoadState is where a plugin stands in the DynamicLoader.
type LoadState int

// Load states.
const (
	// LoadDiscovered: known from a manifest, not loaded (auto-loading is
	// off and nobody asked for it).
	LoadDiscovered LoadState = iota + 1
	// LoadPending: wanted, but a dependency is missing or unsatisfied; it
	// loads by itself once the dependency appears.
	LoadPending
	// LoadLoading: being made and registered.
	LoadLoading
	// LoadLoaded: registered with the manager and serving.
	LoadLoaded
	// LoadFailed: the last load failed; Status.Err says why.
	LoadFailed
	// LoadUnloading: being unregistered.
	LoadUnloading
)

var loadStateNames = [...]string{
	LoadDiscovered: "discovered", LoadPending: "pending", LoadLoading: "loading",
	LoadLoaded: "loaded", LoadFailed: "failed", LoadUnloading: "unloading",
}

// String returns the state's name, such as "pending".
func (s LoadState) String() string {
	if s > 0 && int(s) < len(loadStateNames) {
		return loadStateNames[s]
	}
	return "unknown"
}

// PluginStatus is the loader's view of one plugin.
type PluginStatus struct {
	// Name is the plugin's name.
	Name string
	// Version is the discovered version; Loaded the version serving, if any.
	Version, Loaded string
	// State is where the plugin is in the loader's life cycle.
	State LoadState
	// Err is why the plugin is pending or failed, or why the last update
	// was refused while the old version kept serving.
	Err error
	// Manifest is the latest valid manifest.
	Manifest *Manifest
	// Since is when State last changed.
	Since time.Time
}

// UnloadPolicy says what Unload does with loaded dependents.
type UnloadPolicy int

const (
	// UnloadRefuse refuses with ErrDependentsLoaded while dependents are
	// loaded.
	UnloadRefuse UnloadPolicy = iota
	// UnloadCascade unloads the dependents first, in reverse load order.
	UnloadCascade
)

// loaderMetrics counts what a DynamicLoader did.
type loaderMetrics struct {
	// Loads, Reloads and Unloads count successful operations;
	// LoadFailures and ReloadFailures failed ones (a refused update is a
	// reload failure).
	Loads, LoadFailures, Reloads, ReloadFailures, Unloads uint64
	// Events counts discovery events consumed.
	Events uint64
	// Loaded, Pending and Failed are the numbers of plugins in those states now.
	Loaded, Pending, Failed int
}

// LoaderOption configures a DynamicLoader.
type LoaderOption interface{ applyLoader(*loaderConfig) }

type loaderConfig struct {
	autoLoad bool
	register func(*Manifest) []PluginOption
}

type loaderOption func(*loaderConfig)

func (f loaderOption) applyLoader(c *loaderConfig) { f(c) }

// WithAutoLoad makes the loader load discovered plugins (and reload updated
// ones) by itself. Default true.
func WithAutoLoad(on bool) LoaderOption {
	return loaderOption(func(c *loaderConfig) { c.autoLoad = on })
}

// WithRegisterOptions adds options to every Register the loader makes, on
// top of those the manifest implies (its timeout, and the fields its health
// section sets, over the manager's health settings).
func WithRegisterOptions(f func(*Manifest) []PluginOption) LoaderOption {
	return loaderOption(func(c *loaderConfig) { c.register = f })
}

// DynamicLoader loads plugins from manifests into a Manager: it consumes a
// ManifestSource's events, checks versions (the host constraint, the
// dependency constraints against the versions loaded or discovered),
// resolves the dependency graph and loads plugins in order.
//
//   - discovered: loaded when auto-loading is on (after its dependencies; a
//     plugin whose dependency is missing waits as pending and loads by itself
//     when the dependency appears);
//   - updated: reloaded through Manager.Reload, refused while a loaded
//     dependent's constraint, the host policy or a dependency's running
//     version would break. Every refused or failed update (the factory's
//     failure included) sends an EventReloadFailed. After it the running
//     version stays in force, also for its dependents' checks and load
//     order (Status shows both versions), and the update is tried again
//     when its manifest is delivered again;
//   - removed: unloaded; loaded dependents are unloaded first and wait as
//     pending for it to come back;
//   - invalid: reported in Status; a running version keeps serving.
//
// A plugin unloaded by Unload stays unloaded until Load, whatever its
// source delivers meanwhile. Life cycle: NewDynamicLoader, Start, then
// Shutdown, which unloads what the loader loaded; there is no Close, as
// nothing is left to end at once (Manager.Shutdown ends the plugins
// themselves). Operations are serialized. A DynamicLoader is safe for
// concurrent use. It follows its manager's settings: each manifest's
// "requires.host" and version are checked against the manager's
// VersionPolicy (WithVersionPolicy), and it logs to the manager's logger.
// A plugin it loads may call only the host functions its manifest asks for
// (host_functions) and the manager grants (WithGrants); a reload applies
// the new manifest's list.
type DynamicLoader[Req, Resp any] struct {
	m   *Manager[Req, Resp]
	src ManifestSource
	cfg loaderConfig

	op sync.Mutex // serializes operations

	mu        sync.Mutex // guards what follows
	factories map[string]Factory[Req, Resp]
	known     map[string]*Manifest // the latest valid manifest of each plugin
	running   map[string]*Manifest // the manifest of the version serving, for loaded plugins
	status    map[string]*PluginStatus
	wanted    map[string]bool // asked to load (explicitly or by auto-load)
	// graph holds the running manifest of a loaded plugin and the latest
	// one of the others: what dependents are checked and ordered against.
	graph *dependencyGraph

	loads, loadFailures, reloads, reloadFailures, unloads, events atomic.Uint64

	ctx     context.Context // cancelled by Shutdown
	cancel  context.CancelFunc
	started atomic.Bool
	stopped chan struct{} // closed when the event loop ends
	closed  atomic.Bool   // Shutdown has begun

	shutDone bool // Shutdown finished (guarded by op), with shutErr
	shutErr  error
}

// NewDynamicLoader returns a loader that loads into m what src describes.
// src may be nil for a loader driven only by Add, Load and Unload. Call
// Start to consume src's events.
func NewDynamicLoader[Req, Resp any](m *Manager[Req, Resp], src ManifestSource, opts ...LoaderOption) *DynamicLoader[Req, Resp] {
	cfg := loaderConfig{autoLoad: true}
	for _, o := range opts {
		o.applyLoader(&cfg)
	}
	l := &DynamicLoader[Req, Resp]{
		m: m, src: src, cfg: cfg,
		factories: make(map[string]Factory[Req, Resp]),
		known:     make(map[string]*Manifest),
		running:   make(map[string]*Manifest),
		status:    make(map[string]*PluginStatus),
		wanted:    make(map[string]bool),
		graph:     newDependencyGraph(),
		stopped:   make(chan struct{}),
	}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	return l
}

// RegisterFactory sets the factory for manifests whose transport is
// transport ("inprocess", "subprocess", "grpc", or a host's own).
func (l *DynamicLoader[Req, Resp]) RegisterFactory(transport string, f Factory[Req, Resp]) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.factories[transport] = f
}

// Start takes the source's current manifests (loading them, level by level,
// when auto-loading is on) and then consumes its events on a goroutine of
// its own until Shutdown. A second Start does nothing; after Shutdown,
// Start fails with ErrClosed.
func (l *DynamicLoader[Req, Resp]) Start(ctx context.Context) error {
	if l.src == nil || !l.started.CompareAndSwap(false, true) {
		if l.closed.Load() {
			return newError(codeClosed, "", "the loader is shut down; make a new one")
		}
		return nil
	}
	// Shutdown stores closed, then loads started: one of the two sees the
	// other, so either Start stops here or Shutdown waits for consume.
	if l.closed.Load() {
		close(l.stopped)
		return newError(codeClosed, "", "the loader is shut down; make a new one")
	}
	for _, mf := range l.src.Manifests() {
		l.Add(mf)
	}
	var err error
	if l.cfg.autoLoad {
		err = l.LoadAll(ctx)
	}
	go l.consume()
	return err
}

func (l *DynamicLoader[Req, Resp]) consume() {
	defer close(l.stopped)
	events := l.src.Events()
	for {
		select {
		case <-l.ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				return
			}
			l.events.Add(1)
			l.handle(ev)
		}
	}
}

// handle applies one discovery event. Errors are recorded in Status and
// logged; the loop goes on.
func (l *DynamicLoader[Req, Resp]) handle(ev DiscoveryEvent) {
	ctx := l.ctx
	var err error
	switch ev.Kind {
	case DiscoveryAdded, DiscoveryUpdated:
		err = l.apply(ctx, ev.Manifest)
	case DiscoveryRemoved:
		err = l.remove(ctx, ev.Name)
	case DiscoveryInvalid:
		if ev.Name != "" {
			l.mu.Lock()
			if st := l.status[ev.Name]; st != nil {
				st.Err = ev.Err
			}
			l.mu.Unlock()
		}
		err = ev.Err
	}
	if err != nil {
		l.m.cfg.logger.Warn("goplugins: discovery event not applied", "event", ev.Kind.String(), "plugin", ev.Name, "path", ev.Path, "error", err)
	}
}

// Add records a manifest (as a discovery event would) without loading it.
// A manifest for a known name replaces the old one; if that plugin is
// loaded, its running version stays in force (for its dependents' checks
// too) until it is reloaded.
func (l *DynamicLoader[Req, Resp]) Add(mf *Manifest) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.addLocked(mf)
}

func (l *DynamicLoader[Req, Resp]) addLocked(mf *Manifest) error {
	g := l.graph
	if l.running[mf.Name] != nil {
		g = newDependencyGraph() // only checked: the graph keeps the running version
	}
	if err := addManifest(g, mf); err != nil {
		return err
	}
	l.known[mf.Name] = mf
	st := l.status[mf.Name]
	if st == nil {
		st = &PluginStatus{Name: mf.Name, State: LoadDiscovered, Since: time.Now()}
		l.status[mf.Name] = st
	}
	st.Version, st.Manifest = mf.Version, mf
	return nil
}

// addManifest adds mf's node to g.
func addManifest(g *dependencyGraph, mf *Manifest) error {
	return g.Add(mf.Name, mf.Version, mf.Dependencies...)
}

// setRunningLocked records mf as the manifest of name's version serving,
// or, with mf nil, that name no longer serves; the graph follows.
func (l *DynamicLoader[Req, Resp]) setRunningLocked(name string, mf *Manifest) {
	st := l.status[name]
	if mf == nil {
		delete(l.running, name)
		mf = l.known[name]
		if st != nil {
			st.Loaded = ""
		}
	} else {
		l.running[name] = mf
		if st != nil {
			st.Loaded = mf.Version
		}
	}
	if mf != nil {
		_ = addManifest(l.graph, mf) // checked when it was added
	}
}

// apply handles a discovered or updated manifest. It is recorded as the
// latest. A plugin seen for the first time is wanted when auto-loading is
// on; one unloaded by Unload stays unloaded until Load, whatever its
// manifests. A loaded plugin whose running manifest differs is reloaded
// (when auto-loading is on), so a failed update is tried again when its
// manifest is delivered again. A manifest the loader knows already (the
// source's start events repeat what Start took from Manifests) changes
// nothing else.
func (l *DynamicLoader[Req, Resp]) apply(ctx context.Context, mf *Manifest) error {
	if err := l.lockOp(); err != nil {
		return err
	}
	defer l.op.Unlock()
	l.mu.Lock()
	prev := l.known[mf.Name]
	err := l.addLocked(mf)
	run := l.running[mf.Name]
	auto := l.cfg.autoLoad
	if err == nil && auto && prev == nil {
		l.wanted[mf.Name] = true
	}
	wanted := l.wanted[mf.Name]
	if err == nil && run != nil && run.Hash == mf.Hash {
		l.status[mf.Name].Err = nil // back to the version serving: no update is pending
	}
	l.mu.Unlock()
	switch {
	case err != nil:
		return err
	case run != nil && run.Hash != mf.Hash && auto:
		if err := l.reloadLocked(ctx, mf); err != nil {
			return err
		}
		l.loadPendingLocked(ctx) // dependents that waited for this version
		return nil
	case run == nil && auto && wanted && !sameManifest(prev, mf):
		_, err := l.loadLocked(ctx, mf.Name)
		if errors.Is(err, ErrDependencyMissing) || errors.Is(err, ErrIncompatibleVersion) {
			err = nil // pending: it loads when its dependency appears
		}
		if err == nil {
			l.loadPendingLocked(ctx)
		}
		return err
	}
	return nil
}

// sameManifest reports whether a and b are the same manifest file and content.
func sameManifest(a, b *Manifest) bool {
	return a != nil && b != nil && a.Hash == b.Hash && a.Path == b.Path
}

// checkDependentsLocked refuses mf if a loaded dependent's constraint
// rejects its version.
func (l *DynamicLoader[Req, Resp]) checkDependentsLocked(mf *Manifest) error {
	for _, dc := range l.loadedDependentsLocked(mf.Name) {
		if err := checkDependency(dc.dependent, mf.Name, dc.constraint, mf.Version); err != nil {
			return wrapError(err, codeIncompatibleVersion, mf.Name,
				"update to %s refused: loaded plugin %q needs %s; the running version keeps serving", mf.Version, dc.dependent, dc.constraint)
		}
	}
	return nil
}

// loadedDependentsLocked returns the loaded plugins whose running version
// depends directly on name, with their constraints.
func (l *DynamicLoader[Req, Resp]) loadedDependentsLocked(name string) []dependentConstraint {
	var out []dependentConstraint
	for _, n := range slices.Sorted(maps.Keys(l.running)) {
		for _, d := range l.running[n].Dependencies {
			if d.Name == name {
				out = append(out, dependentConstraint{dependent: n, constraint: d.Constraint})
			}
		}
	}
	return out
}

// reloadLocked swaps the loaded plugin for the one mf describes. It refuses
// first, while the running version keeps serving, an update that a loaded
// dependent's constraint, the host policy or a dependency's running version
// rejects. Every failed update is recorded in Status and sends an
// EventReloadFailed (Manager.Reload sends its own).
func (l *DynamicLoader[Req, Resp]) reloadLocked(ctx context.Context, mf *Manifest) error {
	next, err := l.prepareReload(ctx, mf)
	if err != nil {
		l.reloadFailures.Add(1)
		l.setErr(mf.Name, err)
		l.m.emit(Event{Kind: EventReloadFailed, Plugin: mf.Name, Version: mf.Version, Err: err})
		return err
	}
	l.mu.Lock()
	opts := []ReloadOption{withReaskedHostFuncs(mf.HostFunctions)}
	for _, dc := range l.loadedDependentsLocked(mf.Name) {
		opts = append(opts, withDependentConstraint(dc.dependent, dc.constraint))
	}
	l.mu.Unlock()
	if _, err := l.m.Reload(ctx, mf.Name, next, opts...); err != nil {
		closeQuietly(next)
		l.reloadFailures.Add(1)
		l.setErr(mf.Name, err)
		return err
	}
	l.reloads.Add(1)
	l.mu.Lock()
	l.setRunningLocked(mf.Name, mf)
	l.status[mf.Name].Err = nil
	l.mu.Unlock()
	return nil
}

// prepareReload checks an update and makes its plugin.
func (l *DynamicLoader[Req, Resp]) prepareReload(ctx context.Context, mf *Manifest) (Plugin[Req, Resp], error) {
	l.mu.Lock()
	err := l.checkDependentsLocked(mf)
	if err == nil {
		if err = l.checkLoadLocked(mf); err != nil {
			err = wrapError(err, codeOr(err, codeIncompatibleVersion), mf.Name,
				"update to %s refused; the running version keeps serving", mf.Version)
		}
	}
	l.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return l.newPlugin(ctx, mf)
}

// Reload applies the latest known manifest of a loaded plugin, for hosts
// that turned auto-loading off (with it on, updates apply by themselves):
// the plugin is hot-swapped through Manager.Reload after the checks an
// update event gets (host policy, dependencies' running versions, loaded
// dependents' constraints). If the running manifest is the latest, Reload
// does nothing. On failure the running version keeps serving.
func (l *DynamicLoader[Req, Resp]) Reload(ctx context.Context, name string) error {
	if err := l.lockOp(); err != nil {
		return err
	}
	defer l.op.Unlock()
	l.mu.Lock()
	mf, run := l.known[name], l.running[name]
	l.mu.Unlock()
	switch {
	case mf == nil:
		return newError(codeNotFound, name, "no manifest for this plugin is known; check the discovery roots")
	case run == nil:
		return newError(codeNotFound, name, "the plugin is not loaded; use Load")
	case run.Hash == mf.Hash:
		return nil
	}
	if err := l.reloadLocked(ctx, mf); err != nil {
		return err
	}
	l.loadPendingLocked(ctx) // dependents that waited for this version
	return nil
}

// Load loads the named plugin, loading its missing dependencies first, in
// order. If a dependency is missing or unsatisfied the plugin waits as
// pending (and loads by itself once it can) and Load returns an error
// matching ErrDependencyMissing or ErrIncompatibleVersion. If a load fails,
// the plugins this call loaded are unloaded again.
func (l *DynamicLoader[Req, Resp]) Load(ctx context.Context, name string) error {
	if err := l.lockOp(); err != nil {
		return err
	}
	defer l.op.Unlock()
	l.mu.Lock()
	if l.known[name] == nil {
		l.mu.Unlock()
		return newError(codeNotFound, name, "no manifest for this plugin is known; check the discovery roots")
	}
	l.wanted[name] = true
	l.mu.Unlock()
	_, err := l.loadLocked(ctx, name)
	if err == nil {
		l.loadPendingLocked(ctx)
	}
	return err
}

// loadLocked loads name and its dependencies; on failure it unloads what
// it loaded and returns the error. It returns what it loaded.
func (l *DynamicLoader[Req, Resp]) loadLocked(ctx context.Context, name string) ([]string, error) {
	l.mu.Lock()
	order, err := l.graph.LoadOrderFor(name)
	if err != nil {
		state := LoadFailed
		if errors.Is(err, ErrDependencyMissing) || errors.Is(err, ErrIncompatibleVersion) {
			state = LoadPending
		}
		l.setStateLocked(name, state, err)
		l.mu.Unlock()
		if state == LoadPending {
			l.m.emit(Event{Kind: EventPending, Plugin: name, Err: err})
		}
		return nil, err
	}
	l.mu.Unlock()
	var done []string
	for _, n := range order {
		if l.isLoaded(n) {
			continue
		}
		if err := l.loadOne(ctx, n); err != nil {
			l.rollback(done)
			return nil, err
		}
		done = append(done, n)
	}
	return done, nil
}

// LoadAll loads every known plugin that can be loaded, level by level, the
// plugins of a level in parallel. What can be known before loading anything
// is screened first: plugins with a missing or unsatisfied dependency become
// pending, plugins in a cycle or refused by the host's version policy fail.
// A plugin whose load fails fails alone: the plugins loaded beside it stay
// loaded, and its dependents, like those of every plugin that cannot load,
// wait as pending. LoadAll returns every failure joined, each problem once
// (a cycle once, not once per member).
func (l *DynamicLoader[Req, Resp]) LoadAll(ctx context.Context) error {
	if err := l.lockOp(); err != nil {
		return err
	}
	defer l.op.Unlock()
	l.mu.Lock()
	sub, problems := l.screenLocked()
	l.mu.Unlock()
	levels, err := sub.Levels()
	if err != nil { // cannot happen: the screen removed every problem
		return errors.Join(append(problems, err)...)
	}
	blocked := map[string]bool{} // a dependency failed in this call
	for _, level := range levels {
		problems = append(problems, l.loadLevel(ctx, level, blocked)...)
	}
	return errors.Join(problems...)
}

// screenLocked marks every known plugin wanted and returns the graph of
// those LoadAll may load, with the problems found: pending and failed
// plugins, and their dependents, are left out.
func (l *DynamicLoader[Req, Resp]) screenLocked() (*dependencyGraph, []error) {
	var problems []error
	excluded := map[string]bool{}
	names := slices.Sorted(maps.Keys(l.known))
	for _, n := range names {
		l.wanted[n] = true
		if l.status[n].State == LoadLoaded {
			continue
		}
		_, err := l.graph.LoadOrderFor(n)
		state := LoadFailed
		switch {
		case errors.Is(err, ErrDependencyMissing) || errors.Is(err, ErrIncompatibleVersion):
			state = LoadPending
		case errors.Is(err, ErrDependencyCycle) && !l.onCycleLocked(n):
			continue // after a cycle: pending as its dependent, below
		case err == nil:
			if err = l.checkPolicyLocked(l.known[n]); err != nil {
				problems = append(problems, err)
			}
		}
		if err != nil {
			l.setStateLocked(n, state, err)
			excluded[n] = true
		}
	}
	problems = append(problems, cycles(l.graph)...)
	for _, n := range names {
		if excluded[n] {
			l.pendDependentsLocked(n, excluded)
		}
	}
	sub := l.graph.Copy()
	for n := range excluded {
		sub.Remove(n)
	}
	return sub, problems
}

// onCycleLocked reports whether name is on a dependency cycle: whether one
// of its dependencies needs it.
func (l *DynamicLoader[Req, Resp]) onCycleLocked(name string) bool {
	dependents := l.graph.Dependents(name)
	for _, d := range l.graph.Dependencies(name) {
		if slices.Contains(dependents, d.Name) {
			return true
		}
	}
	return false
}

// cycles returns the dependency cycles of g, each once.
func cycles(g *dependencyGraph) []error {
	var out []error
	for _, err := range unjoin(g.Check()) {
		if errors.Is(err, ErrDependencyCycle) {
			out = append(out, err)
		}
	}
	return out
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

// loadLevel loads in parallel the plugins of one level that are not
// blocked; the dependents of one that fails wait as pending and are
// blocked. It returns the failures.
func (l *DynamicLoader[Req, Resp]) loadLevel(ctx context.Context, level []string, blocked map[string]bool) []error {
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		failed []error
	)
	for _, n := range level {
		if blocked[n] || l.isLoaded(n) {
			continue
		}
		wg.Go(func() {
			if err := l.loadOne(ctx, n); err != nil {
				mu.Lock()
				failed = append(failed, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, n := range level {
		if l.status[n].State == LoadFailed {
			l.pendDependentsLocked(n, blocked)
		}
	}
	return failed
}

// pendDependentsLocked makes the plugins that need name, which cannot
// load, wait as pending, except those loaded or in skip; it adds them to
// skip.
func (l *DynamicLoader[Req, Resp]) pendDependentsLocked(name string, skip map[string]bool) {
	for _, d := range l.graph.Dependents(name) {
		if st := l.status[d]; st != nil && st.State != LoadLoaded && !skip[d] {
			skip[d] = true
			l.setStateLocked(d, LoadPending, newError(codeDependencyMissing, d, "dependency %q cannot load", name))
		}
	}
}

// loadPendingLocked retries the pending plugins, until no more load.
func (l *DynamicLoader[Req, Resp]) loadPendingLocked(ctx context.Context) {
	for progress := true; progress; {
		progress = false
		l.mu.Lock()
		var pending []string
		for n, st := range l.status {
			if st.State == LoadPending && l.wanted[n] {
				pending = append(pending, n)
			}
		}
		l.mu.Unlock()
		slices.Sort(pending)
		for _, n := range pending {
			if done, err := l.loadLocked(ctx, n); err == nil && len(done) > 0 {
				progress = true
			}
		}
	}
}

// loadOne makes and registers one plugin whose dependencies are loaded.
func (l *DynamicLoader[Req, Resp]) loadOne(ctx context.Context, name string) error {
	l.mu.Lock()
	mf := l.known[name]
	err := l.checkLoadLocked(mf)
	if err != nil {
		l.setStateLocked(name, LoadFailed, err)
		l.mu.Unlock()
		l.loadFailures.Add(1)
		l.m.emit(Event{Kind: EventLoadFailed, Plugin: name, Version: mf.Version, Err: err})
		return err
	}
	l.setStateLocked(name, LoadLoading, nil)
	l.mu.Unlock()

	p, err := l.newPlugin(ctx, mf)
	if err == nil {
		opts := []PluginOption{withAskedHostFuncs(mf.HostFunctions)}
		if mf.Timeout > 0 {
			opts = append(opts, WithTimeout(mf.Timeout))
		}
		if mf.Health != (ManifestHealth{}) {
			opts = append(opts, WithHealthCheck(l.healthConfig(mf)))
		}
		if l.cfg.register != nil {
			opts = append(opts, l.cfg.register(mf)...)
		}
		if err = l.m.Register(p, opts...); err != nil {
			closeQuietly(p)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.setStateLocked(name, LoadFailed, err)
		l.loadFailures.Add(1)
		l.m.emit(Event{Kind: EventLoadFailed, Plugin: name, Version: mf.Version, Err: err})
		return err
	}
	l.setStateLocked(name, LoadLoaded, nil)
	l.setRunningLocked(name, mf)
	l.loads.Add(1)
	return nil
}

// healthConfig returns the manager's health settings with the fields mf's
// health section sets replaced, so a manifest that sets only a timeout
// keeps the host's interval (or its checks off) and UnhealthyAfter.
func (l *DynamicLoader[Req, Resp]) healthConfig(mf *Manifest) HealthConfig {
	h := l.m.cfg.plugin.health
	if mf.Health.Interval > 0 {
		h.Interval = mf.Health.Interval
	}
	if mf.Health.Timeout > 0 {
		h.Timeout = mf.Health.Timeout
	}
	return h
}

// checkLoadLocked checks the host constraint and the dependencies' loaded
// versions.
func (l *DynamicLoader[Req, Resp]) checkLoadLocked(mf *Manifest) error {
	if err := l.checkPolicyLocked(mf); err != nil {
		return err
	}
	for _, d := range mf.Dependencies {
		info, ok := l.m.Info(d.Name)
		if !ok {
			if d.Optional {
				continue
			}
			return newError(codeDependencyMissing, mf.Name, "dependency %q (%s) is not loaded", d.Name, d.Constraint)
		}
		if err := checkDependency(mf.Name, d.Name, d.Constraint, info.Version); err != nil {
			return err
		}
	}
	return nil
}

// checkPolicyLocked checks mf against the manager's VersionPolicy, if any.
func (l *DynamicLoader[Req, Resp]) checkPolicyLocked(mf *Manifest) error {
	p := l.m.cfg.policy
	if p == nil {
		return nil
	}
	if err := p.checkHost(mf.Name, mf.Requires.Host); err != nil {
		return err
	}
	return p.checkPlugin(mf.Name, mf.Version)
}

// newPlugin runs the transport's factory for mf.
func (l *DynamicLoader[Req, Resp]) newPlugin(ctx context.Context, mf *Manifest) (p Plugin[Req, Resp], err error) {
	transport := mf.Transport
	if transport == "" {
		transport = "inprocess"
	}
	l.mu.Lock()
	f := l.factories[transport]
	l.mu.Unlock()
	if f == nil {
		return nil, newError(codeNoFactory, mf.Name, "no factory for transport %q; register one with RegisterFactory", transport)
	}
	defer func() {
		if r := recover(); r != nil {
			err = newError(codePanic, mf.Name, "the %s factory panicked: %v", transport, r)
		}
	}()
	p, err = f(ctx, mf)
	if err != nil && ctx.Err() != nil {
		return nil, canceledError(ctx, mf.Name)
	}
	if errors.Is(err, ErrChecksumMismatch) {
		return nil, checksumError(err, mf)
	}
	if err != nil {
		return nil, wrapError(err, codeOr(err, codeInvalidPlugin), mf.Name, "the %s factory failed", transport)
	}
	if p == nil {
		return nil, newError(codeInvalidPlugin, mf.Name, "the %s factory returned no plugin", transport)
	}
	if info, err := pluginInfo(p); err != nil || info.Name != mf.Name || info.Version != mf.Version {
		closeQuietly(p)
		if err == nil {
			err = newError(codeInvalidPlugin, mf.Name, "the plugin reports %s %s but its manifest says %s %s",
				info.Name, info.Version, mf.Name, mf.Version)
		}
		return nil, err
	}
	return p, nil
}

// checksumError is the one line for a binary that does not match its
// manifest's checksum: it names the manifest and its field, once; err, the
// transport's report, stays the cause for errors.Is and errors.As.
func checksumError(err error, mf *Manifest) error {
	e := goerrors.Wrap(err, codeChecksumMismatch, fmt.Sprintf(
		"plugin %q: manifest %s, field checksum: %s does not have that SHA-256, so nothing was run; replace the binary or update the checksum",
		mf.Name, mf.Path, mf.Command))
	e.WithContext("plugin", mf.Name)
	return e
}

// rollback unloads, in reverse order, plugins loaded by a failed call.
func (l *DynamicLoader[Req, Resp]) rollback(loaded []string) {
	ctx := context.Background()
	for i := len(loaded) - 1; i >= 0; i-- {
		if err := l.unloadOne(ctx, loaded[i], LoadDiscovered); err != nil {
			l.m.cfg.logger.Error("goplugins: rollback could not unload plugin", "plugin", loaded[i], "error", err)
		}
	}
}

// Unload unloads the named plugin. With UnloadRefuse it fails with
// ErrDependentsLoaded while loaded plugins depend on it; with UnloadCascade
// it unloads them first, dependents before their dependencies. Unloaded
// plugins stay known (LoadDiscovered) and are not loaded again by
// auto-loading until Load is called.
func (l *DynamicLoader[Req, Resp]) Unload(ctx context.Context, name string, policy UnloadPolicy) error {
	if err := l.lockOp(); err != nil {
		return err
	}
	defer l.op.Unlock()
	if !l.isLoaded(name) {
		return newError(codeNotFound, name, "the plugin is not loaded")
	}
	loadedDeps := l.loadedTransitiveDependents(name)
	if len(loadedDeps) > 0 && policy == UnloadRefuse {
		return newError(codeDependentsLoaded, name,
			"loaded plugins depend on it: %v; unload them first or use UnloadCascade", loadedDeps)
	}
	for _, n := range append(loadedDeps, name) {
		l.mu.Lock()
		delete(l.wanted, n)
		l.mu.Unlock()
		if err := l.unloadOne(ctx, n, LoadDiscovered); err != nil {
			return err
		}
	}
	return nil
}

// loadedTransitiveDependents returns the loaded plugins that need name,
// directly or not, in a safe unload order (dependents first).
func (l *DynamicLoader[Req, Resp]) loadedTransitiveDependents(name string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, d := range l.graph.Dependents(name) {
		if st := l.status[d]; st != nil && st.State == LoadLoaded {
			out = append(out, d)
		}
	}
	return out
}

// remove handles a removed manifest: loaded dependents are unloaded and
// wait as pending, then the plugin is unloaded and forgotten.
func (l *DynamicLoader[Req, Resp]) remove(ctx context.Context, name string) error {
	if err := l.lockOp(); err != nil {
		return err
	}
	defer l.op.Unlock()
	var errs []error
	if l.isLoaded(name) {
		for _, d := range l.loadedTransitiveDependents(name) {
			errs = append(errs, l.unloadOne(ctx, d, LoadPending))
		}
		errs = append(errs, l.unloadOne(ctx, name, LoadDiscovered))
	}
	l.mu.Lock()
	l.graph.Remove(name)
	delete(l.known, name)
	delete(l.status, name)
	delete(l.wanted, name)
	l.mu.Unlock()
	return errors.Join(errs...)
}

// unloadOne unregisters one plugin and leaves it in state after.
func (l *DynamicLoader[Req, Resp]) unloadOne(ctx context.Context, name string, after LoadState) error {
	l.mu.Lock()
	l.setStateLocked(name, LoadUnloading, nil)
	l.mu.Unlock()
	err := l.m.Unregister(ctx, name)
	if errors.Is(err, ErrNotFound) {
		err = nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var reason error
	if after == LoadPending {
		reason = newError(codeDependencyMissing, name, "waiting for a dependency that was removed")
	}
	l.setStateLocked(name, after, reason)
	l.setRunningLocked(name, nil)
	if err == nil {
		l.unloads.Add(1)
	}
	return err
}

func (l *DynamicLoader[Req, Resp]) isLoaded(name string) bool { return l.state(name) == LoadLoaded }

// state returns name's state, or 0 for a plugin not known.
func (l *DynamicLoader[Req, Resp]) state(name string) LoadState {
	l.mu.Lock()
	defer l.mu.Unlock()
	if st := l.status[name]; st != nil {
		return st.State
	}
	return 0
}

func (l *DynamicLoader[Req, Resp]) setErr(name string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if st := l.status[name]; st != nil {
		st.Err = err
	}
}

func (l *DynamicLoader[Req, Resp]) setStateLocked(name string, s LoadState, err error) {
	st := l.status[name]
	if st == nil {
		return
	}
	if st.State != s {
		st.State, st.Since = s, time.Now()
	}
	st.Err = err
}

// Status returns the loader's view of every known plugin, sorted by name.
func (l *DynamicLoader[Req, Resp]) Status() []PluginStatus {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]PluginStatus, 0, len(l.status))
	for _, n := range slices.Sorted(maps.Keys(l.status)) {
		out = append(out, *l.status[n])
	}
	return out
}

// metrics returns the loader's counters.
func (l *DynamicLoader[Req, Resp]) metrics() loaderMetrics {
	out := loaderMetrics{
		Loads: l.loads.Load(), LoadFailures: l.loadFailures.Load(),
		Reloads: l.reloads.Load(), ReloadFailures: l.reloadFailures.Load(),
		Unloads: l.unloads.Load(), Events: l.events.Load(),
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, st := range l.status {
		switch st.State {
		case LoadLoaded:
			out.Loaded++
		case LoadPending:
			out.Pending++
		case LoadFailed:
			out.Failed++
		}
	}
	return out
}

// Shutdown stops consuming events and unloads every plugin the loader
// loaded, dependents first; ctx bounds the wait for the event loop and
// each unload. It does not close the source or the manager. An operation
// (Load, LoadAll, Unload, an event) already running finishes first and what
// it loaded is unloaded; one that begins, or waits for its turn, after
// Shutdown has begun fails with ErrClosed.
//
// If ctx ends first, Shutdown returns an error matching ErrCanceled and
// ctx's error, and may be called again to finish unloading. Once it has
// finished, every further call returns its first result. A loader may not
// be reused after Shutdown.
func (l *DynamicLoader[Req, Resp]) Shutdown(ctx context.Context) error {
	l.closed.Store(true)
	l.cancel()
	if l.started.Load() {
		select {
		case <-l.stopped:
		case <-ctx.Done():
			return canceledError(ctx, "")
		}
	}
	l.op.Lock()
	defer l.op.Unlock()
	if l.shutDone {
		return l.shutErr
	}
	err := l.unloadAllLocked(ctx)
	if ctx.Err() != nil {
		return errors.Join(canceledError(ctx, ""), err)
	}
	l.shutDone, l.shutErr = true, err
	return err
}

// unloadAllLocked unloads the loaded plugins, dependents first.
func (l *DynamicLoader[Req, Resp]) unloadAllLocked(ctx context.Context) error {
	l.mu.Lock()
	loaded := l.graph.Copy()
	for n, st := range l.status {
		if st.State != LoadLoaded {
			loaded.Remove(n)
		}
	}
	order, err := loaded.LoadOrder()
	if err != nil { // cannot happen for loaded plugins; unload by name then
		order = slices.Sorted(maps.Keys(l.status))
	}
	l.mu.Unlock()
	var errs []error
	for i := len(order) - 1; i >= 0 && ctx.Err() == nil; i-- {
		if l.isLoaded(order[i]) {
			errs = append(errs, l.unloadOne(ctx, order[i], LoadDiscovered))
		}
	}
	return errors.Join(errs...)
}

// lockOp takes the operations lock, unless Shutdown has begun: then it fails
// with ErrClosed, so that nothing is loaded after Shutdown unloads.
func (l *DynamicLoader[Req, Resp]) lockOp() error {
	l.op.Lock()
	if l.closed.Load() {
		l.op.Unlock()
		return newError(codeClosed, "", "the loader is shut down; make a new one")
	}
	return nil
}

// closeQuietly closes a plugin the loader made but will not use.
func closeQuietly[Req, Resp any](p Plugin[Req, Resp]) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	defer func() { _ = recover() }()
	_ = p.Close(ctx)
}

// codeOr returns err's library code, or def when it has none.
func codeOr(err error, def goerrors.ErrorCode) goerrors.ErrorCode {
	if c := ErrorCode(err); c != "" {
		return c
	}
	return def
}
