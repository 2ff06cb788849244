package goplugins

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Defaults of DiscoveryConfig.
const (
	// defaultDiscoveryMaxDepth is how many folder levels below a root are
	// searched for manifests unless configured.
	defaultDiscoveryMaxDepth = 2
	// defaultDiscoveryPollInterval is how often the files are checked for
	// changes unless configured.
	defaultDiscoveryPollInterval = time.Second
)

// defaultManifestNames are the manifest file names looked for in a plugin
// folder unless configured.
var defaultManifestNames = []string{"plugin.json", "plugin.yaml", "plugin.yml"}

// msgHeld is logged (debug) when a manifest that does not read or parse
// is held back to be looked at again.
const msgHeld = "discovery: manifest does not read or parse; looking again on the next poll"

// discoveryEventBuffer is the capacity of the events channel. When it is
// full the watcher waits for the consumer: events are never dropped.
const discoveryEventBuffer = 64

// DiscoveryConfig configures a DiscoveryEngine. The zero value of every
// field but Roots selects its default.
type DiscoveryConfig struct {
	// Roots are the folders searched for plugin folders. Each must exist;
	// it is made absolute, cleaned and resolved through symbolic links
	// once, when the engine is made. Roots must not nest.
	Roots []string
	// MaxDepth is how many folder levels below a root are searched: a
	// manifest directly in a root has depth 0, root/auth/plugin.json depth
	// 1. A folder holding a manifest is a plugin folder and is not searched
	// further. Folders whose names start with '.' are skipped.
	// Default 2.
	MaxDepth int
	// ManifestNames are the manifest file names looked for, each ending in
	// .json, .yaml or .yml. The first one present in a folder, in this
	// order, is the folder's manifest; the others are not read.
	// Default plugin.json, plugin.yaml, plugin.yml.
	ManifestNames []string
	// FollowSymlinks makes the engine follow symbolic links to manifests
	// and folders, as long as their targets stay inside the root; a link
	// that leaves it, or cannot be resolved, is reported as invalid under
	// the link's path (ErrInvalidManifest for one that leaves). Links are
	// resolved again on every poll, so a swapped link is noticed. When
	// false (the default), a linked manifest is reported as invalid and a
	// linked folder is skipped (logged at debug level).
	FollowSymlinks bool
	// PollInterval is how often files are checked for changes while
	// watching: a change is reported within one interval. An invalid
	// manifest is reported once it has stayed the same for one interval
	// (see DiscoveryEngine). Default 1s.
	PollInterval time.Duration
	// Logger receives the engine's diagnostics. Default: discard.
	Logger *slog.Logger
	// AllowOutside lets manifests' command and TLS paths leave their
	// plugin folder (see ManifestAllowOutside).
	AllowOutside bool
	// MaxManifestSize is the largest manifest file accepted, in bytes.
	// Default 1 MiB.
	MaxManifestSize int64
}

// DiscoveryEventKind tells what happened to a manifest.
type DiscoveryEventKind int

// The kinds of DiscoveryEvent.
const (
	// DiscoveryAdded: a valid manifest for a plugin name appeared (at
	// Start, every valid manifest present is reported this way).
	DiscoveryAdded DiscoveryEventKind = iota + 1
	// DiscoveryUpdated: the valid manifest for a plugin name changed: its
	// content (Manifest.Hash) or its file (Manifest.Path).
	DiscoveryUpdated
	// DiscoveryRemoved: the valid manifest for a plugin name is gone;
	// Manifest is the last valid one.
	DiscoveryRemoved
	// DiscoveryInvalid: a manifest file is invalid, or two valid manifests
	// declare the same plugin name; Err says why. When Manifest is non-nil
	// the plugin was valid until now and has left Manifests(): Manifest is
	// its last valid manifest, and the consumer chooses between keeping
	// the running version and unloading it.
	DiscoveryInvalid
)

// String returns "added", "updated", "removed" or "invalid".
func (k DiscoveryEventKind) String() string {
	switch k {
	case DiscoveryAdded:
		return "added"
	case DiscoveryUpdated:
		return "updated"
	case DiscoveryRemoved:
		return "removed"
	case DiscoveryInvalid:
		return "invalid"
	}
	return fmt.Sprintf("DiscoveryEventKind(%d)", int(k))
}

// DiscoveryEvent reports a change among the manifests under the roots.
type DiscoveryEvent struct {
	// Kind is what happened.
	Kind DiscoveryEventKind
	// Name is the plugin's name; for an invalid manifest it is the name
	// the file declares, or "" if it declares no valid name.
	Name string
	// Path is the manifest file's cleaned absolute path (as found under
	// its root, before symbolic links are resolved).
	Path string
	// Manifest is the new manifest (Added, Updated), the last valid
	// one (Removed), or see DiscoveryInvalid.
	Manifest *Manifest
	// Err says why the manifest is invalid (Invalid only). It matches
	// ErrInvalidManifest, also for paths that leave their folder or root.
	Err error
}

// ManifestSource is what the DynamicLoader consumes: the valid manifests
// known now, and the changes to come. DiscoveryEngine implements it.
type ManifestSource interface {
	// Manifests returns the valid manifests known now, sorted by name:
	// each plugin name at most once.
	Manifests() []*Manifest
	// Events delivers changes in the order they were seen. Events are
	// never dropped; a consumer that stops reading stalls the watching.
	// The channel is closed when the source is closed.
	Events() <-chan DiscoveryEvent
}

// ScanResult is the outcome of DiscoveryEngine.Scan.
type ScanResult struct {
	// Manifests are the valid manifests, sorted by path. No two share a
	// name.
	Manifests []*Manifest
	// Invalid lists the manifests that cannot be used, sorted by path.
	Invalid []ScanProblem
}

// ScanProblem is a manifest file that cannot be used.
type ScanProblem struct {
	// Path is the manifest file's cleaned absolute path.
	Path string
	// Name is the plugin name the file declares, or "".
	Name string
	// Err says why; it matches ErrInvalidManifest.
	Err error
}

// DiscoveryEngine finds plugin manifests under a set of root folders,
// validates them, and, once started, watches them and reports changes as
// DiscoveryEvents.
//
// Watching is done with argus (audit disabled, the light strategy). argus
// watches the folders of the tree and the manifest files, and any change
// it reports makes the engine re-check the whole tree: a stat of each
// manifest, with a file read and parsed only when its size, modification
// time or identity changed, and an event only when its content (SHA-256)
// changed, so a truncate-then-write gives one event. Paths argus cannot
// watch (longer than 109 bytes, symbolic links when FollowSymlinks is on,
// or beyond the first 128 paths) are covered by the engine polling the
// tree itself every PollInterval.
//
// Duplicate names: when two valid manifests declare the same plugin name,
// neither is used; each is reported as DiscoveryInvalid with an error naming
// both paths (and a plugin that was valid until then leaves Manifests()).
// Once one of them is removed or renamed, the other is reported as
// DiscoveryAdded.
//
// Half-written files: a manifest that fails to read or parse while
// watching is reported as DiscoveryInvalid only once it has stayed unchanged
// for a PollInterval (so within two intervals), so that a file caught in
// the middle of a non-atomic write is read again instead of reported;
// meanwhile a plugin that was valid keeps its last valid manifest. With
// FollowSymlinks, a link to a plugin folder that dangles or leaves the root
// is held and reported the same way, under the manifest's path and with
// the plugin's name. A manifest that is not a regular file (a named pipe,
// a device) is invalid; it is never opened for a blocking read. At
// Start and in Scan, problems are reported at once. A YAML file cut at a
// line boundary can be valid on its own: write YAML manifests atomically
// (write a temporary file, then rename it).
//
// Order: the events of one sweep come as removals and plugins that became
// invalid (by name), then other invalid manifests (by path), then
// discoveries and updates (by name). A folder that cannot be read (other
// than one removed meanwhile) fails the sweep: Scan returns the error;
// while watching, the engine logs it, keeps what it knew and tries again
// every PollInterval.
//
// Life cycle: NewDiscoveryEngine, then Start, then Close; an engine may not
// be reused. A ConfigWatcher follows the same rule. A DiscoveryEngine is
// safe for concurrent use.
type DiscoveryEngine struct {
	roots []string
	cfg   DiscoveryConfig
	opts  manifestOptions
	log   *slog.Logger

	mu    sync.Mutex // guards valid
	valid map[string]*Manifest

	lifecycle sync.Mutex // serializes Start and Close; guards what follows
	started   bool
	closed    bool
	closeErr  error

	events chan DiscoveryEvent
	cancel context.CancelFunc // ends the watching, and a sweep in progress
	done   chan struct{}      // closed when the watching has ended

	// Owned by the watching goroutine after Start.
	entries  map[string]*discoveryEntry
	reported map[string]string
}

var _ ManifestSource = (*DiscoveryEngine)(nil)

// NewDiscoveryEngine checks cfg and returns an engine. Errors match
// ErrInvalidConfig and name the field.
func NewDiscoveryEngine(cfg DiscoveryConfig) (*DiscoveryEngine, error) {
	if len(cfg.Roots) == 0 {
		return nil, newError(codeInvalidConfig, "", "DiscoveryConfig.Roots is empty; give at least one folder to search")
	}
	if cfg.MaxDepth < 0 {
		return nil, newError(codeInvalidConfig, "", "DiscoveryConfig.MaxDepth is %d; use 0 for the default or a positive depth", cfg.MaxDepth)
	}
	if cfg.MaxDepth == 0 {
		cfg.MaxDepth = defaultDiscoveryMaxDepth
	}
	if len(cfg.ManifestNames) == 0 {
		cfg.ManifestNames = defaultManifestNames
	}
	cfg.ManifestNames = slices.Clone(cfg.ManifestNames)
	for _, n := range cfg.ManifestNames {
		ext := strings.ToLower(filepath.Ext(n))
		if n != filepath.Base(n) || strings.HasPrefix(n, ".") || (ext != ".json" && ext != ".yaml" && ext != ".yml") {
			return nil, newError(codeInvalidConfig, "", "DiscoveryConfig.ManifestNames: %q must be a file name ending in .json, .yaml or .yml", n)
		}
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = defaultDiscoveryPollInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxManifestSize <= 0 {
		cfg.MaxManifestSize = defaultManifestMaxSize
	}
	roots, err := resolveRoots(cfg.Roots)
	if err != nil {
		return nil, err
	}
	cfg.Roots = roots
	return &DiscoveryEngine{
		roots:  roots,
		cfg:    cfg,
		opts:   manifestOptions{maxSize: cfg.MaxManifestSize, allowOutside: cfg.AllowOutside, constraints: newConstraintCache()},
		log:    cfg.Logger,
		valid:  make(map[string]*Manifest),
		events: make(chan DiscoveryEvent, discoveryEventBuffer),
		done:   make(chan struct{}),
	}, nil
}

// resolveRoots makes each root absolute, clean and free of links, and
// checks that it is a folder and that no two nest.
func resolveRoots(in []string) ([]string, error) {
	roots := make([]string, 0, len(in))
	for _, r := range in {
		abs, err := filepath.Abs(r)
		if err == nil {
			abs, err = filepath.EvalSymlinks(abs)
		}
		if err != nil {
			return nil, wrapError(err, codeInvalidConfig, "", "DiscoveryConfig.Roots: folder %s cannot be used", r)
		}
		if fi, err := os.Stat(abs); err != nil || !fi.IsDir() {
			return nil, wrapError(err, codeInvalidConfig, "", "DiscoveryConfig.Roots: %s is not a folder", r)
		}
		for _, o := range roots {
			if within(o, abs) || within(abs, o) {
				return nil, newError(codeInvalidConfig, "", "DiscoveryConfig.Roots: %s and %s nest; give each folder once", o, abs)
			}
		}
		roots = append(roots, abs)
	}
	return roots, nil
}

// within reports whether path is dir or inside it; both are clean.
func within(dir, path string) bool {
	return path == dir || strings.HasPrefix(path, dir+string(filepath.Separator)) ||
		(strings.HasSuffix(dir, string(filepath.Separator)) && strings.HasPrefix(path, dir))
}

// Scan walks the roots once and validates every manifest found. It reports
// invalid manifests and duplicate names in the result; its error is for a
// folder that cannot be read, or ctx ending (matching ErrCanceled and ctx's
// error). Scan does not need Start
// and does not change what Manifests returns.
func (e *DiscoveryEngine) Scan(ctx context.Context) (res ScanResult, err error) {
	defer func() {
		if r := recover(); r != nil {
			res, err = ScanResult{}, newError(codePanic, "", "discovery: panic during a scan: %v", r)
		}
	}()
	c, err := e.collect(ctx, nil, time.Time{})
	if ctx.Err() != nil {
		return ScanResult{}, canceledError(ctx, "")
	}
	if err != nil {
		return ScanResult{}, err
	}
	entries := c.entries
	valid, conflicts := resolveNames(entries)
	for _, en := range entries {
		switch {
		case en.err != nil:
			res.Invalid = append(res.Invalid, ScanProblem{Path: en.path, Name: en.name, Err: en.err})
		case conflicts[en.path] != nil:
			res.Invalid = append(res.Invalid, ScanProblem{Path: en.path, Name: en.name, Err: conflicts[en.path]})
		}
	}
	for _, m := range valid {
		res.Manifests = append(res.Manifests, m)
	}
	slices.SortFunc(res.Manifests, func(a, b *Manifest) int { return strings.Compare(a.Path, b.Path) })
	return res, nil
}

// Manifests returns the valid manifests known now, sorted by name. Before
// Start it returns nil.
func (e *DiscoveryEngine) Manifests() []*Manifest {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.valid) == 0 {
		return nil
	}
	out := make([]*Manifest, 0, len(e.valid))
	for _, name := range slices.Sorted(maps.Keys(e.valid)) {
		out = append(out, e.valid[name])
	}
	return out
}

// Events returns the channel of changes; see ManifestSource. It is closed
// by Close.
func (e *DiscoveryEngine) Events() <-chan DiscoveryEvent { return e.events }

// Start scans the roots, queues an event for every manifest found
// (DiscoveryAdded or DiscoveryInvalid), and watches for changes until
// Close. ctx bounds the first scan only (if it ends first, the error
// matches ErrCanceled and ctx's error). Start may be called once; after
// Close it returns an error matching ErrClosed.
func (e *DiscoveryEngine) Start(ctx context.Context) error {
	e.lifecycle.Lock()
	defer e.lifecycle.Unlock()
	switch {
	case e.closed:
		return newError(codeClosed, "", "discovery engine is closed; make a new one")
	case e.started:
		return newError(codeInvalidConfig, "", "discovery engine is started already")
	}
	e.entries = make(map[string]*discoveryEntry)
	e.reported = make(map[string]string)
	evs, desired, _, err := e.safeSweep(ctx, false)
	if ctx.Err() != nil {
		return canceledError(ctx, "")
	}
	if err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	fw := newFileWatch(e.cfg.PollInterval, e.log)
	if err := fw.start(runCtx, desired, evs, e.events, e.check, e.done); err != nil {
		cancel()
		return err
	}
	e.started, e.cancel = true, cancel
	return nil
}

// Close stops watching, waits for the engine's goroutines, and closes the
// Events channel. Events not yet received are discarded with it. A second
// Close returns the first one's result. The engine may not be reused.
func (e *DiscoveryEngine) Close() error {
	e.lifecycle.Lock()
	defer e.lifecycle.Unlock()
	if e.closed {
		return e.closeErr
	}
	e.closed = true
	if e.started {
		e.cancel()
		<-e.done
	}
	close(e.events)
	return nil
}

// check is the watching's look at the tree (see watchCheck).
func (e *DiscoveryEngine) check(ctx context.Context) ([]DiscoveryEvent, []string, bool) {
	evs, desired, again, err := e.safeSweep(ctx, true)
	if err != nil {
		if ctx.Err() == nil {
			e.log.Warn("discovery: scan failed; retrying on the next poll", "err", err)
		}
		return nil, nil, true
	}
	return evs, desired, again
}

// safeSweep is sweep with a panic turned into an error matching ErrPanic,
// so that it never reaches the host; the next poll tries again.
func (e *DiscoveryEngine) safeSweep(ctx context.Context, settle bool) (evs []DiscoveryEvent, desired []string, again bool, err error) {
	defer func() {
		if r := recover(); r != nil {
			evs, desired = nil, nil
			err = newError(codePanic, "", "discovery: panic during a scan: %v", r)
		}
	}()
	return e.sweep(ctx, settle)
}

// discoveryEntry is the state of one manifest file.
type discoveryEntry struct {
	path  string // as found under the root
	size  int64
	mtime time.Time
	fi    os.FileInfo // for os.SameFile; nil when the file could not be stat'ed
	hash  [sha256.Size]byte
	m     *Manifest // nil when err is set
	name  string
	err   error
	seen  time.Time // when this content or problem was first seen
}

// problemKey identifies a problem, so that it is reported once.
func (en *discoveryEntry) problemKey(err error) string {
	return fmt.Sprintf("%x %s", en.hash, err)
}

// dirTask is a folder to search.
type dirTask struct {
	root    string // the root it is under
	path    string // as found under the root
	real    string // where it is: path, unless a followed link was crossed
	depth   int
	viaLink bool
	err     error // a link to it that cannot be followed: report this
}

// dirResult is what searching one folder found.
type dirResult struct {
	entry   *discoveryEntry // the folder's manifest, or nil
	link    bool            // the manifest is a symbolic link
	subdirs []dirTask       // folders to search next
	err     error
}

// collected is what one pass over the tree found.
type collected struct {
	entries []*discoveryEntry // sorted by path
	watch   []string          // folders and manifests argus may watch
	links   bool              // a followed link was crossed: poll the tree
}

// collect searches the roots level by level, each level's folders in
// parallel, and loads every manifest found. With prev (watching), a file
// whose stat is unchanged is not read again.
func (e *DiscoveryEngine) collect(ctx context.Context, prev map[string]*discoveryEntry, now time.Time) (*collected, error) {
	res := &collected{}
	level := make([]dirTask, len(e.roots))
	for i, r := range e.roots {
		level[i] = dirTask{root: r, path: r, real: r}
	}
	for len(level) > 0 {
		outs := make([]dirResult, len(level))
		parallel(ctx, len(level), func(i int) { outs[i] = e.searchDir(level[i], prev, now) })
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		var next []dirTask
		for i, o := range outs {
			if o.err != nil {
				return nil, o.err
			}
			if level[i].viaLink {
				res.links = true
			} else {
				res.watch = append(res.watch, level[i].path)
			}
			if o.entry != nil {
				res.entries = append(res.entries, o.entry)
				if o.link || level[i].viaLink {
					res.links = true
				} else {
					res.watch = append(res.watch, o.entry.path)
				}
			}
			next = append(next, o.subdirs...)
		}
		level = next
	}
	slices.SortFunc(res.entries, func(a, b *discoveryEntry) int { return strings.Compare(a.path, b.path) })
	return res, nil
}

// parallel calls fn(0) to fn(n-1) on up to GOMAXPROCS goroutines and
// returns when all calls have, or early when ctx is done. A panic in fn is
// raised again in the caller's goroutine, where it can be recovered.
func parallel(ctx context.Context, n int, fn func(i int)) {
	workers := min(runtime.GOMAXPROCS(0), 1+n/32)
	var next atomic.Int64
	var panicked atomic.Pointer[any]
	work := func() {
		defer func() {
			if r := recover(); r != nil {
				panicked.CompareAndSwap(nil, &r)
			}
		}()
		for ctx.Err() == nil && panicked.Load() == nil {
			i := int(next.Add(1)) - 1
			if i >= n {
				return
			}
			fn(i)
		}
	}
	var wg sync.WaitGroup
	for range workers - 1 {
		wg.Go(work)
	}
	work()
	wg.Wait()
	if r := panicked.Load(); r != nil {
		panic(*r)
	}
}

// searchDir looks for a manifest in t; without one, it lists t's
// subfolders when t is above MaxDepth.
func (e *DiscoveryEngine) searchDir(t dirTask, prev map[string]*discoveryEntry, now time.Time) dirResult {
	if t.err != nil {
		// A link to the folder that cannot be followed: the problem of the
		// manifest last seen through it, so that it is held and reported as
		// a manifest's (with its name) would be.
		c := candidate{path: t.path, err: t.err}
		for _, name := range e.cfg.ManifestNames {
			if p := filepath.Join(t.path, name); prev[p] != nil {
				c.path = p
				break
			}
		}
		return dirResult{entry: e.loadOne(c, nil, prev[c.path], now), link: true}
	}
	// The first of the manifest names present is the folder's manifest.
	// Looking for the others too would cost a stat each on every folder.
	for _, name := range e.cfg.ManifestNames {
		c := candidate{path: filepath.Join(t.path, name), real: filepath.Join(t.real, name)}
		fi, err := os.Lstat(c.real)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
				continue // absent, or the folder was replaced meanwhile
			}
			return dirResult{err: wrapError(err, codeInvalidConfig, "", "discovery: folder %s cannot be read; check its permissions", t.path)}
		}
		link := fi.Mode()&fs.ModeSymlink != 0
		switch {
		case link && !e.cfg.FollowSymlinks:
			c.err = newError(codeInvalidManifest, "", "manifest %s is a symbolic link and following links is off; replace it with the file or enable FollowSymlinks", c.path)
		case link:
			if c.real, c.err = e.resolveLink(t.root, c.real); c.err == nil {
				if fi, err = os.Stat(c.real); err != nil {
					c.err = wrapError(err, codeInvalidManifest, "", "manifest %s: the target of the link cannot be read", c.path)
				}
			}
		}
		return dirResult{entry: e.loadOne(c, fi, prev[c.path], now), link: link}
	}
	if t.depth >= e.cfg.MaxDepth {
		return dirResult{}
	}
	return e.subdirs(t)
}

// subdirs lists the folders of t to search next: its subfolders, and,
// with FollowSymlinks, its links to folders inside the root.
func (e *DiscoveryEngine) subdirs(t dirTask) dirResult {
	ents, err := os.ReadDir(t.real)
	if err != nil {
		if t.depth > 0 && errors.Is(err, fs.ErrNotExist) {
			return dirResult{} // removed while searching: its manifests are gone
		}
		return dirResult{err: wrapError(err, codeInvalidConfig, "", "discovery: folder %s cannot be read; check its permissions", t.path)}
	}
	var subs []dirTask
	for _, d := range ents {
		name := d.Name()
		if strings.HasPrefix(name, ".") {
			continue
		}
		sub := dirTask{root: t.root, path: filepath.Join(t.path, name), real: filepath.Join(t.real, name), depth: t.depth + 1, viaLink: t.viaLink}
		switch typ := d.Type(); {
		case typ.IsDir():
		case typ&fs.ModeSymlink != 0:
			if !e.cfg.FollowSymlinks {
				e.log.Debug("discovery: skipping a linked folder; FollowSymlinks is off", "path", sub.path)
				continue
			}
			sub.viaLink = true
			target, err := e.resolveLink(t.root, sub.real)
			if err != nil {
				sub.err = err // reported like an invalid manifest
				break
			}
			if st, err := os.Stat(target); err != nil || !st.IsDir() {
				continue // a link to a file that is not a manifest
			}
			sub.real = target
		default:
			continue
		}
		subs = append(subs, sub)
	}
	return dirResult{subdirs: subs}
}

// candidate is a manifest file found by searchDir.
type candidate struct {
	path string // as found under the root
	real string // the file to open: path, or its target when a link is followed
	err  error  // a problem found before opening it
}

// resolveLink resolves the link at path and refuses targets outside root.
func (e *DiscoveryEngine) resolveLink(root, path string) (string, error) {
	target, err := filepath.EvalSymlinks(path)
	if err != nil {
		return "", wrapError(err, codeInvalidManifest, "", "symbolic link %s cannot be resolved", path)
	}
	if !within(root, target) {
		return "", newError(codeInvalidManifest, "", "symbolic link %s points to %s, outside the root %s; links must stay inside the root", path, target, root)
	}
	return target, nil
}

// loadOne returns the entry of c, whose stat is fi: prev when nothing
// changed, or nil when the file no longer exists.
func (e *DiscoveryEngine) loadOne(c candidate, fi os.FileInfo, prev *discoveryEntry, now time.Time) *discoveryEntry {
	en := &discoveryEntry{path: c.path, seen: now}
	if c.err != nil {
		// No file to stat: the problem is the same one while its text is.
		if prev != nil && prev.fi == nil && prev.err != nil && prev.err.Error() == c.err.Error() {
			return prev
		}
		en.err = c.err
		if prev != nil {
			en.name = prev.name // the plugin last seen there
		}
		return en
	}
	if prev != nil && prev.fi != nil && sameStat(prev, fi) {
		return prev // unchanged since it was seen, problem or not
	}
	// From here the file changed: a problem found is a new one, seen now.
	en.size, en.mtime, en.fi = fi.Size(), fi.ModTime(), fi
	data, err := readSmallFile(c.real, e.opts.maxSize, "manifest", codeInvalidManifest)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		en.err = err
		return en
	}
	en.hash = sha256.Sum256(data)
	if prev != nil && prev.hash == en.hash && prev.err == nil {
		// Same content, new stat (e.g. rewritten with the same bytes).
		cp := *prev
		cp.size, cp.mtime, cp.fi = en.size, en.mtime, en.fi
		return &cp
	}
	en.m, en.name, en.err = parseManifestNamed(c.path, data, e.opts)
	return en
}

func sameStat(en *discoveryEntry, fi os.FileInfo) bool {
	return fi.Size() == en.size && fi.ModTime().Equal(en.mtime) && os.SameFile(en.fi, fi)
}

// resolveNames picks the valid manifests by name; manifests that share a
// name go to conflicts (by path) instead.
func resolveNames(entries []*discoveryEntry) (map[string]*Manifest, map[string]error) {
	byName := make(map[string][]*discoveryEntry, len(entries))
	for _, en := range entries {
		if en.err == nil {
			byName[en.m.Name] = append(byName[en.m.Name], en)
		}
	}
	valid := make(map[string]*Manifest, len(byName))
	var conflicts map[string]error
	for name, ens := range byName {
		if len(ens) == 1 {
			valid[name] = ens[0].m
			continue
		}
		paths := make([]string, len(ens))
		for i, en := range ens {
			paths[i] = en.path
		}
		slices.Sort(paths)
		if conflicts == nil {
			conflicts = make(map[string]error)
		}
		for _, en := range ens {
			conflicts[en.path] = newError(codeInvalidManifest, name,
				"declared by more than one manifest (%s); neither is used until one is removed or renamed", strings.Join(paths, ", "))
		}
	}
	return valid, conflicts
}

// sweep walks and loads the tree, updates the engine's state and returns
// the events to deliver, the paths to watch, and whether to look again on
// the next poll. With settle, a problem is reported only once it has
// stayed unchanged for a PollInterval.
func (e *DiscoveryEngine) sweep(ctx context.Context, settle bool) ([]DiscoveryEvent, []string, bool, error) {
	now := time.Now()
	c, err := e.collect(ctx, e.entries, now)
	if err != nil {
		return nil, nil, false, err
	}
	valid, conflicts := resolveNames(c.entries)
	e.mu.Lock()
	old := e.valid
	e.mu.Unlock()
	st := e.settle(c.entries, conflicts, old, valid, settle, now)
	removed, changed := e.diff(old, valid, st)
	evs := slices.Concat(removed, e.newProblems(st), changed)
	e.entries = st.next
	e.mu.Lock()
	e.valid = valid
	e.mu.Unlock()
	// argus resolves links once: poll the paths through followed links.
	return evs, c.watch, len(st.held) > 0 || c.links, nil
}

// sweepState is what one sweep found, by manifest path.
type sweepState struct {
	next     map[string]*discoveryEntry
	problems map[string]*discoveryEntry // to report now
	errs     map[string]error           // why, for each problem
	held     map[string]bool            // problems looked at again next poll
}

// settle sorts the entries' problems into those to report and, with
// settle, those held back for a poll because the file may be in the middle
// of a write; meanwhile a held plugin keeps its last valid manifest in valid.
func (e *DiscoveryEngine) settle(entries []*discoveryEntry, conflicts map[string]error, old, valid map[string]*Manifest, settle bool, now time.Time) sweepState {
	oldByPath := make(map[string]*Manifest, len(old))
	for _, m := range old {
		oldByPath[m.Path] = m
	}
	st := sweepState{next: make(map[string]*discoveryEntry, len(entries)),
		problems: map[string]*discoveryEntry{}, errs: map[string]error{}, held: map[string]bool{}}
	for _, en := range entries {
		st.next[en.path] = en
		err := en.err
		if err == nil {
			err = conflicts[en.path]
		}
		switch {
		case err == nil:
		case settle && en.err != nil && now.Sub(en.seen) < e.cfg.PollInterval:
			st.held[en.path] = true
			e.log.Debug(msgHeld, "path", en.path, "err", en.err)
			if m := oldByPath[en.path]; m != nil && valid[m.Name] == nil {
				valid[m.Name] = m
			}
		default:
			st.problems[en.path], st.errs[en.path] = en, err
		}
	}
	return st
}

// diff returns the events that turn old into valid: removals and plugins
// that became invalid, and discoveries and updates, each sorted by name.
// A plugin whose content did not change keeps the manifest handed out.
func (e *DiscoveryEngine) diff(old, valid map[string]*Manifest, st sweepState) (removed, changed []DiscoveryEvent) {
	for name, m := range old {
		if nm, ok := valid[name]; ok {
			if nm != m && (nm.Hash != m.Hash || nm.Path != m.Path) {
				changed = append(changed, DiscoveryEvent{Kind: DiscoveryUpdated, Name: name, Path: nm.Path, Manifest: nm})
			} else if nm != m {
				valid[name] = m
			}
			continue
		}
		if en := st.problems[m.Path]; en != nil {
			err := st.errs[m.Path]
			removed = append(removed, DiscoveryEvent{Kind: DiscoveryInvalid, Name: name, Path: m.Path, Manifest: m, Err: err})
			e.reported[m.Path] = en.problemKey(err)
			continue
		}
		removed = append(removed, DiscoveryEvent{Kind: DiscoveryRemoved, Name: name, Path: m.Path, Manifest: m})
	}
	for name, m := range valid {
		if _, ok := old[name]; !ok {
			changed = append(changed, DiscoveryEvent{Kind: DiscoveryAdded, Name: name, Path: m.Path, Manifest: m})
		}
	}
	byName := func(a, b DiscoveryEvent) int { return strings.Compare(a.Name, b.Name) }
	slices.SortFunc(removed, byName)
	slices.SortFunc(changed, byName)
	return removed, changed
}

// newProblems returns the invalid events of the problems not reported yet,
// sorted by path, and forgets those that went away.
func (e *DiscoveryEngine) newProblems(st sweepState) []DiscoveryEvent {
	var invalid []DiscoveryEvent
	for path, en := range st.problems {
		key := en.problemKey(st.errs[path])
		if e.reported[path] == key {
			continue
		}
		e.reported[path] = key
		name := en.name
		if en.m != nil {
			name = en.m.Name
		}
		invalid = append(invalid, DiscoveryEvent{Kind: DiscoveryInvalid, Name: name, Path: path, Err: st.errs[path]})
	}
	for path := range e.reported {
		if st.problems[path] == nil && !st.held[path] {
			delete(e.reported, path) // valid or gone: report its next problem
		}
	}
	slices.SortFunc(invalid, func(a, b DiscoveryEvent) int { return strings.Compare(a.Path, b.Path) })
	return invalid
}
