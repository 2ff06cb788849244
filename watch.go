package goplugins

import (
	"context"
	"log/slog"
	"maps"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/agilira/argus"
)

// argusMaxPath is the longest path argus v1.4.2 reports changes for: its
// events carry at most 109 bytes of the path, and a cut path matches no watch.
const argusMaxPath = 109

// argusMaxWatches bounds the paths given to argus: its stat cache is copied
// on every update, so a poll costs the square of the watched paths. Beyond
// this the source polls by itself, which costs one stat a path.
const argusMaxWatches = 128

// watchCheck looks at the files again and returns the events of what
// changed, the paths to watch next, and whether to look again on the next
// poll even if argus reports nothing (a file held back, a failed look).
type watchCheck func(ctx context.Context) (evs []DiscoveryEvent, paths []string, again bool)

// fileWatch is the one argus wrapper, used by the DiscoveryEngine and the
// ConfigWatcher. It handles every trap of argus v1.4.2 once:
//
//   - audit is off (it would write every config value to a world-readable
//     SQLite file) and the light strategy keeps an idle watch cheap;
//   - callbacks only signal a channel, never block and recover panics (a
//     panic wedges argus; Watch or Unwatch from a callback deadlocks);
//   - Watch and Unwatch run on the loop's goroutine only, never from a
//     callback; Stop runs once, after the loop ended; a Watcher is never
//     started again (a new fileWatch is made for each start);
//   - paths argus cannot follow are polled instead, every PollInterval:
//     paths longer than 109 bytes, paths beyond the first 128, and paths
//     through a symbolic link (argus resolves links once, so a swapped
//     link, the way Kubernetes updates a ConfigMap, is never seen);
//   - a path newly watched is looked at once more on the next poll: a
//     change between the look that found it and its watch is one argus
//     never reports;
//   - argus reports half-written files and duplicate changes: the check
//     compares content (a hash) and holds back what does not parse, and
//     says so with again.
type fileWatch struct {
	poll    time.Duration
	log     *slog.Logger
	argus   *argus.Watcher
	watched map[string]bool
	kick    chan struct{}
	polling bool // some wanted path is not watched by argus
	fresh   bool // a path was newly watched: look once more
	stop    sync.Once
}

// newFileWatch returns a wrapper that polls every poll; log gets its
// diagnostics.
func newFileWatch(poll time.Duration, log *slog.Logger) *fileWatch {
	fw := &fileWatch{poll: poll, log: log, watched: map[string]bool{}, kick: make(chan struct{}, 1)}
	fw.argus = argus.New(argus.Config{
		PollInterval:         poll,
		CacheTTL:             poll / 4,
		MaxWatchedFiles:      argusMaxWatches,
		DisableAudit:         true,
		OptimizationStrategy: argus.OptimizationLight,
		ErrorHandler: func(err error, path string) {
			defer func() { _ = recover() }() // a panicking log handler must not wedge argus
			fw.log.Debug("goplugins: argus cannot stat a path", "path", path, "err", err)
		},
	})
	return fw
}

// onChange is argus's callback: it only asks for a check.
func (fw *fileWatch) onChange(argus.ChangeEvent) {
	defer func() { _ = recover() }()
	select {
	case fw.kick <- struct{}{}:
	default:
	}
}

// set makes argus watch the paths it can follow; the others are polled.
func (fw *fileWatch) set(paths []string) {
	want := make(map[string]bool, len(paths))
	fw.polling = false
	for _, p := range paths {
		switch {
		case fw.watched[p]:
			want[p] = true
		case len(p) > argusMaxPath || len(want) >= argusMaxWatches || linked(p):
			fw.polling = true
		default:
			want[p] = true
		}
	}
	for p := range fw.watched {
		if !want[p] {
			_ = fw.argus.Unwatch(p)
			delete(fw.watched, p)
		}
	}
	for _, p := range slices.Sorted(maps.Keys(want)) {
		if fw.watched[p] {
			continue
		}
		if err := fw.argus.Watch(p, fw.onChange); err != nil {
			fw.polling = true
			fw.log.Debug("goplugins: argus refuses a path; polling it instead", "path", p, "err", err)
			continue
		}
		fw.watched[p] = true
		fw.fresh = true
	}
}

// linked reports whether p, or a folder above it, is a symbolic link (or
// cannot be resolved, which a poll reports better than argus).
func linked(p string) bool {
	real, err := filepath.EvalSymlinks(p)
	return err != nil || real != p
}

// start watches paths and runs the loop on a goroutine of its own: it
// delivers queue, then the events of each check, to out, until ctx ends;
// done is closed when the loop has ended.
func (fw *fileWatch) start(ctx context.Context, paths []string, queue []DiscoveryEvent, out chan<- DiscoveryEvent, check watchCheck, done chan<- struct{}) error {
	fw.set(paths)
	if err := fw.argus.Start(); err != nil {
		return wrapError(err, codeInvalidConfig, "", "the file watcher does not start")
	}
	go func() {
		defer close(done)
		defer fw.close()
		fw.loop(ctx, queue, out, check)
	}()
	return nil
}

// close stops argus, once. Callbacks may still run briefly afterwards:
// they only signal kick, which never blocks.
func (fw *fileWatch) close() {
	fw.stop.Do(func() { _ = fw.argus.Stop() })
}

// loop is the watching goroutine: it delivers queued events, and checks
// when argus reports a change or, when needed, every poll. While events
// wait for the consumer it only delivers them: a consumer that stops
// reading stalls the watching (a change meanwhile is kept by kick).
func (fw *fileWatch) loop(ctx context.Context, queue []DiscoveryEvent, out chan<- DiscoveryEvent, check watchCheck) {
	ticker := time.NewTicker(fw.poll)
	defer ticker.Stop()
	again := false
	for {
		if len(queue) > 0 {
			select {
			case <-ctx.Done():
				return
			case out <- queue[0]:
				queue = queue[1:]
			}
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-fw.kick:
		case <-ticker.C:
			if !fw.polling && !fw.fresh && !again {
				continue
			}
		}
		fw.fresh = false
		var evs []DiscoveryEvent
		var paths []string
		evs, paths, again = check(ctx)
		if ctx.Err() != nil {
			return
		}
		if paths != nil {
			fw.set(paths)
		}
		queue = append(queue, evs...)
	}
}
