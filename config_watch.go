package goplugins

import (
	"crypto/sha256"
	"log/slog"
	"os"
	"reflect"
	"sync"
	"time"

	"github.com/agilira/argus"
)

// DefaultConfigPollInterval is how often a ConfigWatcher checks its files.
const DefaultConfigPollInterval = time.Second

// ConfigWatchOptions configures WatchConfig.
type ConfigWatchOptions struct {
	// PollInterval is how often the file and the manifests it references
	// are checked; a change is seen within one interval, an invalid file
	// is reported once it has stayed the same for one interval (so a
	// half-written file is not). Default DefaultConfigPollInterval.
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
// is retried on the next change.
//
// Only the plugins section applies while running: changes to the defaults,
// the host version or the discovery settings are logged and take effect
// when the host next builds its Manager from Config.
type ConfigWatcher struct {
	path string
	opts ConfigWatchOptions
	log  *slog.Logger

	mu      sync.Mutex
	cur     *Config
	err     error
	pending [sha256.Size]byte // hash of an invalid file seen once, not yet reported

	events  chan DiscoveryEvent
	kick    chan struct{}
	stop    chan struct{}
	done    chan struct{}
	watcher *argus.Watcher
	watched map[string]bool
	polling bool
	once    sync.Once
}

// WatchConfig loads the configuration file at path and watches it (and the
// manifest files it references) until Close. An invalid file at start is
// an error. The current plugins are delivered first as ManifestDiscovered
// events.
func WatchConfig(path string, opts ConfigWatchOptions) (*ConfigWatcher, error) {
	cfg, err := LoadConfig(path)
	if err != nil {
		return nil, err
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = DefaultConfigPollInterval
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &ConfigWatcher{
		path: cfg.Path, opts: opts, log: log, cur: cfg,
		events:  make(chan DiscoveryEvent),
		kick:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
		watched: map[string]bool{},
	}
	w.watcher = argus.New(argus.Config{
		PollInterval:         opts.PollInterval,
		CacheTTL:             opts.PollInterval / 4,
		DisableAudit:         true,
		OptimizationStrategy: argus.OptimizationLight,
		ErrorHandler:         func(error, string) {},
	})
	w.syncWatches(cfg)
	if err := w.watcher.Start(); err != nil {
		return nil, wrapError(err, CodeInvalidConfig, "", "configuration %s: the file watcher does not start", cfg.Path)
	}
	var initial []DiscoveryEvent
	for _, mf := range cfg.Plugins {
		initial = append(initial, DiscoveryEvent{Kind: ManifestDiscovered, Name: mf.Name, Path: mf.Path, Manifest: mf})
	}
	go w.run(initial)
	return w, nil
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

// Close stops watching and closes Events. It is idempotent.
func (w *ConfigWatcher) Close() error {
	w.once.Do(func() {
		close(w.stop)
		<-w.done
		_ = w.watcher.Stop()
		close(w.events)
	})
	return nil
}

// syncWatches watches the file and its referenced manifests through argus;
// paths argus cannot watch (too long) are polled by the run loop.
func (w *ConfigWatcher) syncWatches(cfg *Config) {
	want := map[string]bool{cfg.Path: true}
	for _, mf := range cfg.Plugins {
		if _, err := os.Stat(mf.Path); err == nil {
			want[mf.Path] = true
		}
	}
	w.polling = false
	for p := range w.watched {
		if !want[p] {
			_ = w.watcher.Unwatch(p)
			delete(w.watched, p)
		}
	}
	for p := range want {
		if w.watched[p] {
			continue
		}
		if len(p) > argusMaxPath {
			w.polling = true
			continue
		}
		if err := w.watcher.Watch(p, w.onChange); err != nil {
			w.polling = true
			continue
		}
		w.watched[p] = true
	}
}

func (w *ConfigWatcher) onChange(argus.ChangeEvent) {
	defer func() { _ = recover() }()
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

func (w *ConfigWatcher) run(queue []DiscoveryEvent) {
	defer close(w.done)
	ticker := time.NewTicker(w.opts.PollInterval)
	defer ticker.Stop()
	retry := false
	for {
		if len(queue) > 0 {
			select {
			case w.events <- queue[0]:
				queue = queue[1:]
				continue
			case <-w.stop:
				return
			case <-w.kick:
			case <-ticker.C:
			}
		} else {
			select {
			case <-w.stop:
				return
			case <-w.kick:
			case <-ticker.C:
				if !w.polling && !retry {
					continue
				}
			}
		}
		var evs []DiscoveryEvent
		evs, retry = w.check()
		queue = append(queue, evs...)
	}
}

// check reads the file again and returns the events of what changed, and
// whether to check again on the next tick (an invalid file seen once).
// It runs on the watcher's goroutine, the only writer of the watcher's
// state; w.mu is held only to publish that state, never while calling out,
// so OnError may call Config and Err.
func (w *ConfigWatcher) check() ([]DiscoveryEvent, bool) {
	next, err := LoadConfig(w.path)
	if err != nil {
		return w.invalid(err)
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
		return nil, false
	}
	w.syncWatches(next)
	if prev.HostVersion != next.HostVersion || !reflect.DeepEqual(prev.Defaults, next.Defaults) || !reflect.DeepEqual(prev.Discovery, next.Discovery) {
		w.log.Warn("goplugins: configuration defaults, host version or discovery changed; they apply when the host restarts", "path", w.path)
	}
	return diffPlugins(prev.Plugins, next.Plugins), false
}

// invalid handles a file that does not load: it is reported once it has
// stayed the same for one check, and only once while it stays so.
func (w *ConfigWatcher) invalid(err error) ([]DiscoveryEvent, bool) {
	data, _ := os.ReadFile(w.path)
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
	return []DiscoveryEvent{{Kind: ManifestInvalid, Path: w.path, Err: err}}, false
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
			added = append(added, DiscoveryEvent{Kind: ManifestDiscovered, Name: mf.Name, Path: mf.Path, Manifest: mf})
		case prev.Hash != mf.Hash || prev.Path != mf.Path:
			updated = append(updated, DiscoveryEvent{Kind: ManifestUpdated, Name: mf.Name, Path: mf.Path, Manifest: mf})
		}
		delete(old, mf.Name)
	}
	for _, mf := range before {
		if _, gone := old[mf.Name]; gone {
			removed = append(removed, DiscoveryEvent{Kind: ManifestRemoved, Name: mf.Name, Path: mf.Path, Manifest: mf})
		}
	}
	return append(append(added, updated...), removed...)
}
