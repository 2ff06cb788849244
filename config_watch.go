package goplugins

import (
	"context"
	"crypto/sha256"
	"log/slog"
	"os"
	"reflect"
	"sync"
	"time"
)

// defaultConfigPollInterval is how often a ConfigWatcher checks its files.
const defaultConfigPollInterval = time.Second

// ConfigWatchOptions configures WatchConfig.
type ConfigWatchOptions struct {
	// PollInterval is how often the file and the manifests it references
	// are checked; a change is seen within one interval, an invalid file
	// is reported once it has stayed the same for one interval (so a
	// half-written file is not). Default 1s.
	PollInterval time.Duration
	// Logger receives the watcher's records. Default: discard.
	Logger *slog.Logger
	// OnError, if set, is called (from the watcher's goroutine) when the
	// file becomes invalid; the last good configuration stays in force.
	// It may call the watcher's Config and Err but not Close, which waits
	// for that goroutine; a panic in it is recovered and logged. The
	// watcher checks for further changes only once it has returned.
	OnError func(error)
}

// ConfigWatcher watches a configuration file and offers its plugins as a
// ManifestSource, so that a DynamicLoader applies every change: a plugin
// added to the file is loaded, a changed one reloaded, a removed one
// unloaded. A new version of the file is validated as a whole before any
// of it is applied; a broken file keeps the last good configuration in
// force, is reported (OnError, the log, an invalid DiscoveryEvent, Err) and
// is retried on the next change. Watching is done by the same argus
// wrapper as the DiscoveryEngine's, with the same guarantees.
//
// Only the plugins section applies while running: changes to the defaults,
// the host version or the discovery settings are logged and take effect
// when the host next builds its Manager from Config.
//
// Like a DiscoveryEngine, a ConfigWatcher is made, then started with
// Start, then closed with Close; it may not be reused. It is safe for
// concurrent use.
type ConfigWatcher struct {
	path string
	opts ConfigWatchOptions
	log  *slog.Logger

	mu      sync.Mutex
	cur     *Config
	err     error
	pending [sha256.Size]byte // hash of an invalid file seen once, not yet reported

	lifecycle sync.Mutex // serializes Start and Close; guards what follows
	started   bool
	closed    bool
	cancel    context.CancelFunc

	events chan DiscoveryEvent
	done   chan struct{} // closed when the watching has ended
}

// NewConfigWatcher loads the configuration file at path; an invalid file
// is an error. Config is in force from then on; Start watches the file.
func NewConfigWatcher(path string, opts ConfigWatchOptions) (*ConfigWatcher, error) {
	cfg, err := LoadConfig(path)
	if err != nil {
		return nil, err
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = defaultConfigPollInterval
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &ConfigWatcher{
		path: cfg.Path, opts: opts, log: log, cur: cfg,
		events: make(chan DiscoveryEvent),
		done:   make(chan struct{}),
	}, nil
}

// Start queues a DiscoveryAdded event for each plugin of the
// configuration in force and watches the file (and the manifest files it
// references) until Close. A change made since NewConfigWatcher read the
// file is seen too. Start may be called once; after Close it returns an
// error matching ErrClosed. ctx is not used beyond Start.
func (w *ConfigWatcher) Start(ctx context.Context) error {
	w.lifecycle.Lock()
	defer w.lifecycle.Unlock()
	switch {
	case w.closed:
		return newError(codeClosed, "", "configuration watcher for %s is closed; make a new one", w.path)
	case w.started:
		return newError(codeInvalidConfig, "", "configuration watcher for %s is started already", w.path)
	case ctx.Err() != nil:
		return canceledError(ctx, "")
	}
	cfg := w.Config()
	var initial []DiscoveryEvent
	for _, mf := range cfg.Plugins {
		initial = append(initial, DiscoveryEvent{Kind: DiscoveryAdded, Name: mf.Name, Path: mf.Path, Manifest: mf})
	}
	runCtx, cancel := context.WithCancel(context.Background())
	fw := newFileWatch(w.opts.PollInterval, w.log)
	if err := fw.start(runCtx, watchedPaths(cfg), initial, w.events, w.check, w.done); err != nil {
		cancel()
		return wrapError(err, codeInvalidConfig, "", "configuration %s", w.path)
	}
	w.started, w.cancel = true, cancel
	return nil
}

// Config returns the configuration in force: the last valid one.
func (w *ConfigWatcher) Config() *Config {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.cur
}

// Err returns why the file on disk is not in force, or nil if it is.
func (w *ConfigWatcher) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Manifests returns the plugins of the configuration in force.
func (w *ConfigWatcher) Manifests() []*Manifest { return w.Config().Plugins }

// Events delivers the changes to the plugins, in order. None is dropped;
// the channel is closed by Close.
func (w *ConfigWatcher) Events() <-chan DiscoveryEvent { return w.events }

// Close stops watching, waits for the watcher's goroutine, and closes
// Events; events not yet received are discarded with it. A second Close
// returns the first one's result.
func (w *ConfigWatcher) Close() error {
	w.lifecycle.Lock()
	defer w.lifecycle.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	if w.started {
		w.cancel()
		<-w.done
	}
	close(w.events)
	return nil
}

// watchedPaths are the file and the manifests it references.
func watchedPaths(cfg *Config) []string {
	paths := []string{cfg.Path}
	for _, mf := range cfg.Plugins {
		if _, err := os.Stat(mf.Path); err == nil { // not an inline manifest
			paths = append(paths, mf.Path)
		}
	}
	return paths
}

// check reads the file again and returns the events of what changed, the
// paths to watch, and whether to check again on the next poll (an invalid
// file seen once); see watchCheck. It runs on the watching goroutine, the
// only writer of the watcher's state; w.mu is held only to publish that
// state, never while calling out, so OnError may call Config and Err.
func (w *ConfigWatcher) check(context.Context) ([]DiscoveryEvent, []string, bool) {
	next, err := LoadConfig(w.path)
	if err != nil {
		evs, again := w.invalid(err)
		return evs, nil, again
	}
	w.mu.Lock()
	w.err, w.pending = nil, [sha256.Size]byte{}
	prev := w.cur
	changed := next.Hash != prev.Hash
	if changed {
		w.cur = next
	}
	w.mu.Unlock()
	if !changed {
		return nil, nil, false
	}
	if prev.HostVersion != next.HostVersion || !reflect.DeepEqual(prev.Defaults, next.Defaults) || !reflect.DeepEqual(prev.Discovery, next.Discovery) {
		w.log.Warn("goplugins: configuration defaults, host version or discovery changed; they apply when the host restarts", "path", w.path)
	}
	return diffPlugins(prev.Plugins, next.Plugins), watchedPaths(next), false
}

// invalid handles a file that does not load: it is reported once it has
// stayed the same for one check, and only once while it stays so.
func (w *ConfigWatcher) invalid(err error) ([]DiscoveryEvent, bool) {
	data, rerr := readSmallFile(w.path, configMaxSize, "configuration", codeInvalidConfig)
	if rerr != nil {
		data = []byte(rerr.Error()) // not a file that reads: the same while its problem is
	}
	sum := sha256.Sum256(data)
	w.mu.Lock()
	if sum != w.pending {
		w.pending = sum // maybe half-written: report if it stays so
		w.mu.Unlock()
		return nil, true
	}
	if w.err != nil && w.err.Error() == err.Error() {
		w.mu.Unlock()
		return nil, false
	}
	w.err = err
	w.mu.Unlock()
	w.log.Error("goplugins: configuration is invalid; the last good one stays in force", "path", w.path, "error", err)
	w.report(err)
	return []DiscoveryEvent{{Kind: DiscoveryInvalid, Path: w.path, Err: err}}, false
}

// report calls OnError, if set; a panic in it is logged, not propagated.
func (w *ConfigWatcher) report(err error) {
	if w.opts.OnError == nil {
		return
	}
	defer func() {
		if r := recover(); r != nil {
			w.log.Error("goplugins: ConfigWatchOptions.OnError panicked", "path", w.path, "panic", r)
		}
	}()
	w.opts.OnError(err)
}

// diffPlugins returns the events that turn the plugin set before into
// after: discoveries, then updates, then removals.
func diffPlugins(before, after []*Manifest) []DiscoveryEvent {
	old := make(map[string]*Manifest, len(before))
	for _, mf := range before {
		old[mf.Name] = mf
	}
	var added, updated, removed []DiscoveryEvent
	for _, mf := range after {
		switch prev, ok := old[mf.Name]; {
		case !ok:
			added = append(added, DiscoveryEvent{Kind: DiscoveryAdded, Name: mf.Name, Path: mf.Path, Manifest: mf})
		case prev.Hash != mf.Hash || prev.Path != mf.Path:
			updated = append(updated, DiscoveryEvent{Kind: DiscoveryUpdated, Name: mf.Name, Path: mf.Path, Manifest: mf})
		}
		delete(old, mf.Name)
	}
	for _, mf := range before {
		if _, gone := old[mf.Name]; gone {
			removed = append(removed, DiscoveryEvent{Kind: DiscoveryRemoved, Name: mf.Name, Path: mf.Path, Manifest: mf})
		}
	}
	return append(append(added, updated...), removed...)
}
