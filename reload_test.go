package goplugins

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// holdReq is the request that makes a swappable with a hold channel block.
const holdReq = -1

// swappable is a test plugin with every reload surface it declares: it
// counts the calls it served (its state, handed over with
// PersistState/RestoreState), runs a stream whose position advances with
// every call while it streams (Checkpoint/Resume), and checks
// compatibility (CheckCompat). A test injects a failure into any of them.
type swappable struct {
	name, version string
	surfaces      []Surface

	failPersist, failRestore, failCheckpoint, failResume, failCompat error
	panicRestore                                                     bool

	// hold, when set, makes Execute(holdReq) send on held and then block
	// until hold is closed.
	hold chan struct{}
	held chan struct{}

	mu          sync.Mutex
	n           int    // calls served: the state
	pos         uint64 // stream position
	streaming   bool
	resumes     int
	checkpoints int

	execs        atomic.Int64 // Execute calls that ran on this value
	closed       atomic.Int32
	execsAtClose atomic.Int64 // execs when Close was called
}

// newSwappable returns a plugin that declares surfaces. It does not stream
// until it is resumed (or its streaming field is set, as for a plugin that
// started its stream on its own).
func newSwappable(name, version string, surfaces ...Surface) *swappable {
	return &swappable{name: name, version: version, surfaces: surfaces}
}

func (p *swappable) Info() PluginInfo {
	return PluginInfo{Name: p.name, Version: p.version, Surfaces: p.surfaces}
}

func (p *swappable) Execute(_ context.Context, req int) (int, error) {
	if req == holdReq && p.hold != nil {
		p.held <- struct{}{}
		<-p.hold
	}
	p.execs.Add(1)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n++
	if p.streaming {
		p.pos++
	}
	return p.n, nil
}

func (p *swappable) Health(context.Context) error { return nil }
func (p *swappable) Close(context.Context) error {
	p.execsAtClose.Store(p.execs.Load())
	p.closed.Add(1)
	return nil
}

func (p *swappable) PersistState(context.Context) ([]byte, error) {
	if p.failPersist != nil {
		return nil, p.failPersist
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return encodeInt(p.n), nil
}

func (p *swappable) RestoreState(_ context.Context, b []byte) error {
	if p.panicRestore {
		panic("restore bug")
	}
	if p.failRestore != nil {
		return p.failRestore
	}
	n, err := decodeInt(b)
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.n = n
	p.mu.Unlock()
	return nil
}

func (p *swappable) Checkpoint(context.Context) ([]byte, error) {
	if p.failCheckpoint != nil {
		return nil, p.failCheckpoint
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.streaming = false
	p.checkpoints++
	return encodeInt(int(p.pos)), nil
}

func (p *swappable) Resume(_ context.Context, pos []byte) error {
	if p.failResume != nil {
		return p.failResume
	}
	n := 0 // a nil position starts a fresh stream (Register)
	if pos != nil {
		var err error
		if n, err = decodeInt(pos); err != nil {
			return err
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pos, p.streaming = uint64(n), true
	p.resumes++
	return nil
}

func (p *swappable) CheckCompat(context.Context, PluginInfo) error { return p.failCompat }

// snapshot returns the plugin's state, stream position and whether it streams.
// count returns the calls served: the plugin's state.
func (p *swappable) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

func (p *swappable) snapshot() (n int, pos uint64, streaming bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n, p.pos, p.streaming
}

// load is a set of goroutines that call Execute without pause and count
// every call.
type load struct {
	ok, failed atomic.Int64
	stop       chan struct{}
	wg         sync.WaitGroup

	mu   sync.Mutex
	errs []error
}

// startLoad starts workers callers of the named plugin and returns once each
// has completed a call.
func startLoad(t *testing.T, m *Manager[int, int], name string, workers int) *load {
	t.Helper()
	l := &load{stop: make(chan struct{})}
	started := make(chan struct{}, workers)
	for i := range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for first := true; ; first = false {
				select {
				case <-l.stop:
					return
				default:
				}
				if _, err := m.Execute(context.Background(), name, i); err != nil {
					l.failed.Add(1)
					l.mu.Lock()
					if len(l.errs) < 5 {
						l.errs = append(l.errs, err)
					}
					l.mu.Unlock()
				} else {
					l.ok.Add(1)
				}
				if first {
					started <- struct{}{}
				}
			}
		}()
	}
	for range workers {
		<-started
	}
	return l
}

// end stops the callers, fails t if any call failed and returns how many
// calls succeeded.
func (l *load) end(t *testing.T) int64 {
	t.Helper()
	close(l.stop)
	l.wg.Wait()
	n := l.failed.Load()
	assert.Zero(t, n, "%d call(s) of the concurrent load failed, e.g. %v", n, l.errs)
	return l.ok.Load()
}

// newReloadManager returns a manager without periodic health checks, shut
// down when the test ends.
func newReloadManager(t *testing.T, opts ...Option) *Manager[int, int] {
	t.Helper()
	m := NewManager[int, int](append([]Option{WithPluginDefaults(WithHealthCheck(HealthConfig{Interval: -1}))}, opts...)...)
	t.Cleanup(func() { require.NoError(t, m.Shutdown(context.Background())) })
	return m
}

// collectEvents subscribes to m and returns a channel of its events of the
// given kinds.
func collectEvents(m *Manager[int, int], kinds ...EventKind) <-chan Event {
	ch := make(chan Event, 64)
	m.Subscribe(func(ev Event) {
		if slices.Contains(kinds, ev.Kind) {
			ch <- ev
		}
	})
	return ch
}

func awaitEvent(t *testing.T, ch <-chan Event) Event {
	t.Helper()
	select {
	case ev := <-ch:
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no event within 10s")
		return Event{}
	}
}

// gateOf returns the gate set on the plugin's serving generation, or nil.
func gateOf(m *Manager[int, int], name string) *gate {
	if e := m.reg.Load().entries[name]; e != nil {
		if g := e.gen.Load(); g != nil {
			return g.gate.Load()
		}
	}
	return nil
}

// waitParked waits until n calls are parked on the plugin's gate. Parking
// sends no event, so it polls, with a deadline.
func waitParked(t *testing.T, m *Manager[int, int], name string, n int) {
	t.Helper()
	require.Eventually(t, func() bool {
		gt := gateOf(m, name)
		if gt == nil {
			return false
		}
		gt.mu.Lock()
		defer gt.mu.Unlock()
		return len(gt.starts) >= n
	}, 10*time.Second, time.Millisecond, "%d call(s) to %q not parked within 10s", n, name)
}

// waitBlockedIn waits until some goroutine's stack holds every one of
// frames (substrings of function names), such as a caller blocked in a
// lock. Blocking sends no event, so it polls the stacks, with a deadline.
func waitBlockedIn(t *testing.T, frames ...string) {
	t.Helper()
	buf := make([]byte, 1<<20)
	require.Eventually(t, func() bool {
		stacks := string(buf[:runtime.Stack(buf, true)])
		for _, g := range strings.Split(stacks, "\n\n") {
			if !strings.Contains(g, "[chan send") && !strings.Contains(g, "[select") {
				continue
			}
			if !slices.ContainsFunc(frames, func(f string) bool { return !strings.Contains(g, f) }) {
				return true
			}
		}
		return false
	}, 10*time.Second, time.Millisecond, "no goroutine blocked in %v within 10s", frames)
}

// blockingHandoff is a host-owned handoff whose transfer reports that it
// started and then waits for release (or ctx).
func blockingHandoff(surface Surface, entered chan<- struct{}, release <-chan struct{}) Handoff {
	return Handoff{
		Surface: surface,
		Transfer: func(ctx context.Context, _ *Swap) (func(context.Context) error, error) {
			entered <- struct{}{}
			select {
			case <-release:
				return nil, nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		},
	}
}

func TestReloadFailureLeavesOldPluginServing(t *testing.T) {
	errInjected := errors.New("injected failure")
	type row struct {
		name string
		// old and next declare these surfaces.
		oldSurfaces, nextSurfaces []Surface
		nextName, nextVersion     string
		// nextValue, if set, gives the value passed to Reload instead of next.
		nextValue func(old, next *swappable) Plugin[int, int]
		// inject sets up the failure on the plugins or the reload's ctx
		// and returns the reload's options.
		inject func(t *testing.T, old, next *swappable, cancel context.CancelFunc) []ReloadOption
		// mgrOpts returns the manager's options.
		mgrOpts func(t *testing.T) []Option
		hold    bool // keep a call in flight on old through the reload
		// cancelInDrain cancels the reload's ctx once the plugin is gated.
		cancelInDrain bool

		want           []error // the error matches each
		phase, surface string
		step           string
		handed         []Surface // the error carries bytes for these kinds
		oldResumes     int       // times the old plugin resumed its stream (undo)
		parks          bool      // the reload pauses long enough to park calls
	}
	all := []Surface{SurfaceSchema, SurfaceState, SurfaceStream}
	rows := []row{
		{
			name: "compat rejects", oldSurfaces: all, nextSurfaces: all,
			inject: func(_ *testing.T, _, next *swappable, _ context.CancelFunc) []ReloadOption {
				next.failCompat = errInjected
				return nil
			},
			want: []error{ErrReloadFailed, ErrSchemaIncompatible, errInjected}, phase: "preflight", surface: "schema", step: "preflight",
		},
		{
			name: "version rule", oldSurfaces: all, nextSurfaces: all, nextVersion: "2.0.0",
			mgrOpts: func(t *testing.T) []Option {
				p, err := NewVersionPolicy("1.0.0")
				require.NoError(t, err)
				require.NoError(t, p.SetRule("sw", "^1.0.0"))
				return []Option{WithVersionPolicy(p)}
			},
			want: []error{ErrReloadFailed, ErrIncompatibleVersion}, phase: "preflight",
		},
		{
			name: "dependent constraint", oldSurfaces: all, nextSurfaces: all, nextVersion: "2.0.0",
			inject: func(*testing.T, *swappable, *swappable, context.CancelFunc) []ReloadOption {
				return []ReloadOption{withDependentConstraint("app", "~1.0")}
			},
			want: []error{ErrReloadFailed, ErrIncompatibleVersion}, phase: "preflight",
		},
		{
			name: "wrong name", oldSurfaces: all, nextSurfaces: all, nextName: "other",
			want: []error{ErrReloadFailed, ErrInvalidPlugin}, phase: "preflight",
		},
		{
			name: "invalid version", oldSurfaces: all, nextSurfaces: all, nextVersion: "v1.2",
			want: []error{ErrReloadFailed, ErrInvalidVersion}, phase: "preflight",
		},
		{
			name: "nil next", oldSurfaces: all,
			nextValue: func(_, _ *swappable) Plugin[int, int] { return nil },
			want:      []error{ErrReloadFailed, ErrInvalidPlugin}, phase: "preflight",
		},
		{
			name: "typed nil next", oldSurfaces: all,
			nextValue: func(_, _ *swappable) Plugin[int, int] { return (*swappable)(nil) },
			want:      []error{ErrReloadFailed, ErrInvalidPlugin}, phase: "preflight",
		},
		{
			name: "next is the plugin serving", oldSurfaces: all,
			nextValue: func(old, _ *swappable) Plugin[int, int] { return old },
			want:      []error{ErrReloadFailed, ErrInvalidPlugin}, phase: "preflight",
		},
		{
			name: "next lacks the methods of its surfaces", oldSurfaces: all,
			nextValue: func(_, _ *swappable) Plugin[int, int] {
				return &scripted{name: "sw", version: "1.1.0", surfaces: all}
			},
			want: []error{ErrReloadFailed}, phase: "preflight", surface: "schema", step: "preflight",
		},
		{
			name: "host handoff without a name", oldSurfaces: all, nextSurfaces: all,
			inject: func(*testing.T, *swappable, *swappable, context.CancelFunc) []ReloadOption {
				return []ReloadOption{WithHandoff(Handoff{Transfer: func(context.Context, *Swap) (func(context.Context) error, error) {
					return nil, nil
				}})}
			},
			want: []error{ErrReloadFailed, ErrInvalidConfig}, phase: "preflight",
		},
		{
			name: "host handoff reuses a built-in name", oldSurfaces: all, nextSurfaces: all,
			inject: func(*testing.T, *swappable, *swappable, context.CancelFunc) []ReloadOption {
				return []ReloadOption{WithHandoff(Handoff{Surface: SurfaceState, Transfer: func(context.Context, *Swap) (func(context.Context) error, error) {
					return nil, nil
				}})}
			},
			want: []error{ErrReloadFailed, ErrInvalidConfig}, phase: "preflight",
		},
		{
			name: "no handoff for a declared surface", oldSurfaces: append(all, "cache"), nextSurfaces: append(all, "cache"),
			want: []error{ErrReloadFailed, ErrInvalidConfig}, phase: "preflight",
		},
		{
			name: "next drops a surface", oldSurfaces: all, nextSurfaces: []Surface{SurfaceSchema, SurfaceState},
			want: []error{ErrReloadFailed}, phase: "preflight",
		},
		{
			name: "ctx cancelled before the reload", oldSurfaces: all, nextSurfaces: all,
			inject: func(_ *testing.T, _, _ *swappable, cancel context.CancelFunc) []ReloadOption {
				cancel()
				return nil
			},
			want: []error{ErrReloadFailed, context.Canceled}, phase: "preflight",
		},
		{
			name: "drain timeout", oldSurfaces: all, nextSurfaces: all, hold: true,
			mgrOpts: func(*testing.T) []Option {
				return []Option{WithPluginDefaults(WithDrainTimeout(20 * time.Millisecond))}
			},
			want: []error{ErrReloadFailed, ErrDrainTimeout}, phase: "drain", parks: true,
		},
		{
			name: "ctx cancelled during drain", oldSurfaces: all, nextSurfaces: all, hold: true,
			cancelInDrain: true,
			want:          []error{ErrReloadFailed, context.Canceled}, phase: "drain",
		},
		{
			name: "persist fails", oldSurfaces: all, nextSurfaces: all,
			inject: func(_ *testing.T, old, _ *swappable, _ context.CancelFunc) []ReloadOption {
				old.failPersist = errInjected
				return nil
			},
			want: []error{ErrReloadFailed, errInjected}, phase: "dispatch", surface: "state", step: "persist",
			handed: []Surface{SurfaceStream}, oldResumes: 1, // the stream stopped first
		},
		{
			name: "restore fails", oldSurfaces: all, nextSurfaces: all,
			inject: func(_ *testing.T, _, next *swappable, _ context.CancelFunc) []ReloadOption {
				next.failRestore = errInjected
				return nil
			},
			want: []error{ErrReloadFailed, errInjected}, phase: "dispatch", surface: "state", step: "restore",
			handed: []Surface{SurfaceStream, SurfaceState}, oldResumes: 1,
		},
		{
			name: "checkpoint fails", oldSurfaces: all, nextSurfaces: all,
			inject: func(_ *testing.T, old, _ *swappable, _ context.CancelFunc) []ReloadOption {
				old.failCheckpoint = errInjected
				return nil
			},
			want: []error{ErrReloadFailed, errInjected}, phase: "dispatch", surface: "stream", step: "checkpoint",
		},
		{
			name: "resume fails", oldSurfaces: all, nextSurfaces: all,
			inject: func(_ *testing.T, _, next *swappable, _ context.CancelFunc) []ReloadOption {
				next.failResume = errInjected
				return nil
			},
			want: []error{ErrReloadFailed, errInjected}, phase: "dispatch", surface: "stream", step: "resume",
			handed: []Surface{SurfaceState, SurfaceStream}, oldResumes: 1,
		},
		{
			name: "host handoff fails", oldSurfaces: all, nextSurfaces: all,
			inject: func(*testing.T, *swappable, *swappable, context.CancelFunc) []ReloadOption {
				return []ReloadOption{WithHandoff(Handoff{
					Surface: "conn",
					Transfer: func(_ context.Context, h *Swap) (func(context.Context) error, error) {
						h.Record("conn", []byte("fd:7"))
						return nil, errInjected
					},
				})}
			},
			want: []error{ErrReloadFailed, errInjected}, phase: "dispatch", surface: "conn", step: "transfer",
			handed: []Surface{SurfaceState, SurfaceStream, "conn"}, oldResumes: 1,
		},
		{
			name: "host handoff panics", oldSurfaces: all, nextSurfaces: all,
			inject: func(*testing.T, *swappable, *swappable, context.CancelFunc) []ReloadOption {
				return []ReloadOption{WithHandoff(Handoff{
					Surface: "conn",
					Transfer: func(context.Context, *Swap) (func(context.Context) error, error) {
						panic("host handoff bug")
					},
				})}
			},
			want: []error{ErrReloadFailed, ErrPanic}, phase: "dispatch", surface: "conn", step: "transfer",
			handed: []Surface{SurfaceState, SurfaceStream}, oldResumes: 1,
		},
		{
			name: "custom handoff fails", oldSurfaces: append(all, "cache"), nextSurfaces: append(all, "cache"),
			mgrOpts: func(t *testing.T) []Option {
				d := NewReloadDispatcher()
				require.NoError(t, d.Register(Handoff{
					Surface: "cache",
					Transfer: func(context.Context, *Swap) (func(context.Context) error, error) {
						return nil, errInjected
					},
				}))
				return []Option{WithReloadDispatcher(d)}
			},
			want: []error{ErrReloadFailed, errInjected}, phase: "dispatch", surface: "cache", step: "transfer",
			handed: []Surface{SurfaceState, SurfaceStream}, oldResumes: 1,
		},
		{
			name: "custom handoff preflight refuses", oldSurfaces: append(all, "cache"), nextSurfaces: append(all, "cache"),
			mgrOpts: func(t *testing.T) []Option {
				d := NewReloadDispatcher()
				require.NoError(t, d.Register(Handoff{
					Surface:   "cache",
					Preflight: func(context.Context, *Swap) error { return errInjected },
				}))
				return []Option{WithReloadDispatcher(d)}
			},
			want: []error{ErrReloadFailed, errInjected}, phase: "preflight", surface: "cache", step: "preflight",
		},
		{
			name: "handoffs exceed the drain timeout", oldSurfaces: all, nextSurfaces: all,
			mgrOpts: func(*testing.T) []Option {
				return []Option{WithPluginDefaults(WithDrainTimeout(20 * time.Millisecond))}
			},
			inject: func(*testing.T, *swappable, *swappable, context.CancelFunc) []ReloadOption {
				return []ReloadOption{WithHandoff(Handoff{
					Surface: "conn",
					Transfer: func(ctx context.Context, _ *Swap) (func(context.Context) error, error) {
						<-ctx.Done()
						return nil, ctx.Err()
					},
				})}
			},
			want: []error{ErrReloadFailed, ErrDrainTimeout, context.DeadlineExceeded}, phase: "dispatch", surface: "conn", step: "transfer",
			handed: []Surface{SurfaceState, SurfaceStream}, oldResumes: 1,
		},
		{
			name: "ctx cancelled mid-dispatch", oldSurfaces: all, nextSurfaces: all,
			inject: func(_ *testing.T, _, _ *swappable, cancel context.CancelFunc) []ReloadOption {
				return []ReloadOption{WithHandoff(Handoff{
					Surface: "conn",
					Transfer: func(ctx context.Context, _ *Swap) (func(context.Context) error, error) {
						cancel()
						<-ctx.Done()
						return nil, ctx.Err()
					},
				})}
			},
			want: []error{ErrReloadFailed, context.Canceled}, phase: "dispatch", surface: "conn", step: "transfer",
			handed: []Surface{SurfaceState, SurfaceStream}, oldResumes: 1,
		},
		{
			name: "ctx cancelled after the last handoff", oldSurfaces: all, nextSurfaces: all,
			inject: func(_ *testing.T, _, _ *swappable, cancel context.CancelFunc) []ReloadOption {
				return []ReloadOption{WithHandoff(Handoff{
					Surface: "conn",
					Resume: func(context.Context, *Swap) (func(context.Context) error, error) {
						cancel() // in the last step of all
						return nil, nil
					},
				})}
			},
			want: []error{ErrReloadFailed, context.Canceled}, phase: "dispatch",
			handed: []Surface{SurfaceState, SurfaceStream}, oldResumes: 1,
		},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			verifyNoLeaks(t)
			var mopts []Option
			if r.mgrOpts != nil {
				mopts = r.mgrOpts(t)
			}
			m := newReloadManager(t, mopts...)
			events := collectEvents(m, EventReloaded, EventReloadFailed)
			old := newSwappable("sw", "1.0.0", r.oldSurfaces...)
			old.hold, old.held = make(chan struct{}), make(chan struct{})
			require.NoError(t, m.Register(old, WithStreamStart(nil)))
			nextName, nextVersion := cmp.Or(r.nextName, "sw"), cmp.Or(r.nextVersion, "1.1.0")
			next := newSwappable(nextName, nextVersion, r.nextSurfaces...)

			heldDone := make(chan error, 1)
			if r.hold {
				go func() {
					_, err := m.Execute(context.Background(), "sw", holdReq)
					heldDone <- err
				}()
				<-old.held
			}
			l := startLoad(t, m, "sw", 3)
			// Let the callers run before the reload starts.
			for l.ok.Load() < 100 {
				runtime.Gosched()
			}

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var opts []ReloadOption
			if r.inject != nil {
				opts = r.inject(t, old, next, cancel)
			}
			if r.cancelInDrain {
				go cancelWhenGated(m, "sw", cancel)
			}
			var nextPlugin Plugin[int, int] = next
			if r.nextValue != nil {
				nextPlugin = r.nextValue(old, next)
			}
			_, posBefore, _ := old.snapshot()
			rep, err := m.Reload(ctx, "sw", nextPlugin, opts...)
			if r.hold {
				close(old.hold)
				require.NoError(t, <-heldDone, "the call in flight during the reload")
			}
			ok := l.end(t)
			// The old plugin answers after the failure.
			n0, err0 := m.Execute(context.Background(), "sw", 0)

			require.Error(t, err)
			for _, w := range r.want {
				assert.ErrorIs(t, err, w)
			}
			var re *ReloadError
			require.ErrorAs(t, err, &re)
			assert.Equal(t, "sw", re.Plugin)
			assert.Equal(t, r.phase, re.Phase)
			assert.Equal(t, Surface(r.surface), re.Surface)
			assert.Equal(t, r.step, re.Step)
			assert.NoError(t, re.RollbackErr)
			assert.ElementsMatch(t, r.handed, slices.Collect(maps.Keys(re.Handed)))
			assert.Equal(t, re.Handed, rep.Handed)
			handedBytes := 0
			for _, b := range re.Handed {
				handedBytes += len(b)
			}
			assert.Equal(t, handedBytes, rep.BytesHandedOver)
			assert.Contains(t, err.Error(), `plugin "sw"`)
			assert.NotContains(t, err.Error(), "\n", "one-line message")
			assert.Equal(t, uint64(1), rep.Generation)
			if r.parks {
				assert.Positive(t, rep.ParkedCalls, "calls were parked, then released to the old plugin")
			}
			if r.phase == "preflight" {
				assert.Zero(t, rep.Drain, "preflight failed before traffic was touched")
				assert.Zero(t, rep.ParkedCalls)
			}
			assert.Equal(t, re.Report.Generation, rep.Generation)

			require.NoError(t, err0)
			extra := int64(1) // the probe call above
			if r.hold {
				extra++
			}
			n, pos, streaming := old.snapshot()
			if b, ok := re.Handed[SurfaceState]; ok {
				persisted, err := decodeInt(b)
				require.NoError(t, err)
				assert.LessOrEqual(t, persisted, n, "the error carries the state persisted during the reload")
				assert.Positive(t, persisted)
			}
			assert.Equal(t, ok+extra, int64(n0), "the old plugin's last answer counts every call made")
			assert.Equal(t, ok+extra, int64(n), "the old plugin's state counts every call: nothing lost or doubled")
			assert.Equal(t, ok+extra, old.execs.Load())
			assert.Zero(t, next.execs.Load(), "no call ran on the next plugin")
			assert.True(t, streaming, "the old plugin streams on")
			assert.Greater(t, pos, posBefore, "the old stream advanced after the failure")
			assert.Equal(t, 1+r.oldResumes, old.resumes, "old resumed at Register, then from its own checkpoint")
			_, _, nextStreaming := next.snapshot()
			assert.False(t, nextStreaming, "the next plugin's stream is not left running")
			assert.Zero(t, old.closed.Load(), "a failed reload never closes the old plugin")
			assert.Zero(t, next.closed.Load(), "a failed reload never closes the next plugin")
			info, _ := m.Info("sw")
			assert.Equal(t, "1.0.0", info.Version)
			assert.Equal(t, uint64(1), m.Metrics().Plugins["sw"].Generation)

			ev := awaitEvent(t, events)
			assert.Equal(t, EventReloadFailed, ev.Kind)
			assert.Equal(t, "sw", ev.Plugin)
			require.NotNil(t, ev.Reload)
			assert.Equal(t, uint64(1), ev.Reload.Generation)
			assert.ErrorIs(t, ev.Err, ErrReloadFailed)
		})
	}
}

// cancelWhenGated calls cancel once the named plugin is gated for a reload
// (or after 10s). Gating sends no event, so it polls.
func cancelWhenGated(m *Manager[int, int], name string, cancel context.CancelFunc) {
	defer cancel()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if gateOf(m, name) != nil {
			return
		}
	}
}

func TestReloadUnderLoadLosesNoCall(t *testing.T) {
	verifyNoLeaks(t)
	const reloads = 1000
	m := newReloadManager(t)
	first := newSwappable("ctr", "1.0.0", SurfaceState)
	require.NoError(t, m.Register(first))
	l := startLoad(t, m, "ctr", 3)

	plugins := []*swappable{first}
	parked := 0
	for i := 1; i <= reloads; i++ {
		next := newSwappable("ctr", fmt.Sprintf("1.0.%d", i), SurfaceState)
		rep, err := m.Reload(context.Background(), "ctr", next)
		require.NoError(t, err, "reload %d", i)
		require.Equal(t, uint64(i+1), rep.Generation)
		parked += rep.ParkedCalls
		plugins = append(plugins, next)
	}
	ok := l.end(t)

	last := plugins[len(plugins)-1]
	assert.Equal(t, int(ok), last.count(), "the final counter equals the calls made: none lost or doubled")
	assert.Equal(t, uint64(ok), m.Metrics().Plugins["ctr"].Calls, "the metrics count every call once")
	for i, p := range plugins[:len(plugins)-1] {
		require.Equal(t, int32(1), p.closed.Load(), "plugin %d closed once", i)
	}
	assert.Zero(t, last.closed.Load())
	t.Logf("%d calls during %d reloads, %d of them parked", ok, reloads, parked)
}

func TestReloadReportAndEvents(t *testing.T) {
	verifyNoLeaks(t)
	m := newReloadManager(t)
	events := collectEvents(m, EventReloaded, EventReloadFailed)
	old := newSwappable("sw", "1.0.0", SurfaceSchema, SurfaceState, SurfaceStream)
	old.streaming = true
	require.NoError(t, m.Register(old))
	for range 5 {
		_, err := m.Execute(context.Background(), "sw", 0)
		require.NoError(t, err)
	}
	next := newSwappable("sw", "1.1.0", SurfaceSchema, SurfaceState, SurfaceStream)

	// A host-owned handoff holds the reload between drain and commit until
	// a call has parked, so the report must count it.
	type result struct {
		n   int
		err error
	}
	parkedCall := make(chan result, 1)
	rep, err := m.Reload(context.Background(), "sw", next,
		withDependentConstraint("app", "^1.0.0"), // 1.1.0 meets it
		WithHandoff(Handoff{
			Surface: "conn",
			Transfer: func(context.Context, *Swap) (func(context.Context) error, error) {
				go func() {
					n, err := m.Execute(context.Background(), "sw", 0)
					parkedCall <- result{n, err}
				}()
				waitParked(t, m, "sw", 1)
				return nil, nil
			},
		}),
		WithHandoff(Handoff{
			Surface: "fd",
			Transfer: func(_ context.Context, h *Swap) (func(context.Context) error, error) {
				h.Record("fd", []byte("fd:7"))
				return nil, nil
			},
		}))
	require.NoError(t, err)
	pc := <-parkedCall
	require.NoError(t, pc.err)
	assert.Equal(t, 6, pc.n, "the parked call ran on the next plugin, with the state handed over")
	assert.Equal(t, int64(1), next.execs.Load())
	assert.Equal(t, int64(5), old.execs.Load())

	assert.Equal(t, "sw", rep.Plugin)
	assert.Equal(t, "1.0.0", rep.From)
	assert.Equal(t, "1.1.0", rep.To)
	assert.Equal(t, uint64(2), rep.Generation)
	assert.Equal(t, []Surface{SurfaceState, SurfaceStream, "conn", "fd"}, rep.Steps)
	assert.Equal(t, encodeInt(5), rep.Handed[SurfaceState])
	assert.Equal(t, encodeInt(5), rep.Handed[SurfaceStream], "the stream position reached: one per call")
	assert.Equal(t, []byte("fd:7"), rep.Handed["fd"])
	assert.Equal(t, 8+8+4, rep.BytesHandedOver)
	assert.Equal(t, 1, rep.ParkedCalls)
	assert.Zero(t, rep.GaveUp)
	assert.Positive(t, rep.ParkP50)
	assert.LessOrEqual(t, rep.ParkP50, rep.ParkP99)
	assert.LessOrEqual(t, rep.ParkP99, rep.ParkMax)
	assert.GreaterOrEqual(t, rep.Total, rep.Preflight+rep.Drain+rep.Dispatch+rep.Commit)
	assert.NoError(t, rep.CloseErr)

	_, pos, streaming := old.snapshot()
	assert.False(t, streaming, "the old plugin stopped at its checkpoint")
	assert.Equal(t, uint64(5), pos)
	n, pos, streaming := next.snapshot()
	assert.True(t, streaming, "the next plugin resumed the stream")
	assert.Equal(t, uint64(6), pos, "from the old checkpoint, then one call")
	assert.Equal(t, 6, n)
	assert.Equal(t, int32(1), old.closed.Load(), "the old plugin is closed after the commit")
	assert.Zero(t, next.closed.Load())
	info, _ := m.Info("sw")
	assert.Equal(t, "1.1.0", info.Version)
	assert.Equal(t, uint64(2), m.Metrics().Plugins["sw"].Generation)

	ev := awaitEvent(t, events)
	assert.Equal(t, EventReloaded, ev.Kind)
	assert.Equal(t, "1.1.0", ev.Version)
	require.NotNil(t, ev.Reload)
	assert.Equal(t, rep.Generation, ev.Reload.Generation)
	assert.Equal(t, rep.BytesHandedOver, ev.Reload.BytesHandedOver)
	assert.NoError(t, ev.Err)

	// A second reload moves to generation 3; closing never repeats.
	rep, err = m.Reload(context.Background(), "sw", newSwappable("sw", "1.2.0", SurfaceSchema, SurfaceState, SurfaceStream))
	require.NoError(t, err)
	assert.Equal(t, uint64(3), rep.Generation)
	assert.Equal(t, int32(1), next.closed.Load())
	require.NoError(t, m.Shutdown(context.Background()))
	assert.Equal(t, int32(1), old.closed.Load(), "closed exactly once")
	assert.Equal(t, int32(1), next.closed.Load(), "closed exactly once")
}

func TestReloadParkedCallCtxEnds(t *testing.T) {
	verifyNoLeaks(t)
	m := newReloadManager(t)
	old := newEcho("echo", "1.0.0")
	require.NoError(t, m.Register(old))
	entered, release := make(chan struct{}, 1), make(chan struct{})
	type result struct {
		rep ReloadReport
		err error
	}
	reloaded := make(chan result, 1)
	go func() {
		rep, err := m.Reload(context.Background(), "echo", newEcho("echo", "1.1.0"), WithHandoff(blockingHandoff("conn", entered, release)))
		reloaded <- result{rep, err}
	}()
	<-entered

	ctx, cancel := context.WithCancel(context.Background())
	called := make(chan error, 1)
	go func() {
		_, err := m.Execute(ctx, "echo", 1)
		called <- err
	}()
	waitParked(t, m, "echo", 1)
	cancel()
	assert.ErrorIs(t, <-called, context.Canceled, "a parked call returns its ctx's error")

	close(release)
	r := <-reloaded
	require.NoError(t, r.err)
	assert.Equal(t, 1, r.rep.GaveUp)
	assert.Zero(t, r.rep.ParkedCalls)
}

func TestReloadSerializedPerPlugin(t *testing.T) {
	verifyNoLeaks(t)
	m := newReloadManager(t)
	require.NoError(t, m.Register(newEcho("echo", "1.0.0")))
	entered, release := make(chan struct{}, 2), make(chan struct{})
	type result struct {
		rep ReloadReport
		err error
	}
	first, second := make(chan result, 1), make(chan result, 1)
	go func() {
		rep, err := m.Reload(context.Background(), "echo", newEcho("echo", "1.1.0"), WithHandoff(blockingHandoff("conn", entered, release)))
		first <- result{rep, err}
	}()
	<-entered
	go func() {
		rep, err := m.Reload(context.Background(), "echo", newEcho("echo", "1.2.0"), WithHandoff(blockingHandoff("conn", entered, release)))
		second <- result{rep, err}
	}()
	// The second reload waits for the first to end before it starts.
	waitBlockedIn(t, ").Reload(", ").lock(")
	assert.Empty(t, entered, "the second reload started while the first ran")
	// A third one gives up when its ctx ends while it waits.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	third := newEcho("echo", "1.3.0")
	_, err := m.Reload(ctx, "echo", third, WithHandoff(blockingHandoff("conn", entered, release)))
	assert.ErrorIs(t, err, ErrReloadFailed)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Empty(t, entered, "the third reload never started its handoffs")
	assert.Zero(t, third.closed.Load())
	close(release)

	r1, r2 := <-first, <-second
	require.NoError(t, r1.err)
	require.NoError(t, r2.err)
	assert.Equal(t, uint64(2), r1.rep.Generation)
	assert.Equal(t, "1.1.0", r2.rep.From, "the second reload replaced what the first committed")
	assert.Equal(t, uint64(3), r2.rep.Generation)
}

func TestReloadParallelAcrossPlugins(t *testing.T) {
	verifyNoLeaks(t)
	m := newReloadManager(t)
	require.NoError(t, m.Register(newEcho("a", "1.0.0")))
	require.NoError(t, m.Register(newEcho("b", "1.0.0")))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	inA, inB := make(chan struct{}), make(chan struct{})
	// Each reload's handoff waits for the other's: both complete only if
	// they run at the same time.
	meet := func(mine, other chan struct{}) ReloadOption {
		return WithHandoff(Handoff{
			Surface: "meet",
			Transfer: func(ctx context.Context, _ *Swap) (func(context.Context) error, error) {
				close(mine)
				select {
				case <-other:
					return nil, nil
				case <-ctx.Done():
					return nil, ctx.Err()
				}
			},
		})
	}
	errs := make(chan error, 2)
	go func() {
		_, err := m.Reload(ctx, "a", newEcho("a", "1.1.0"), meet(inA, inB))
		errs <- err
	}()
	go func() {
		_, err := m.Reload(ctx, "b", newEcho("b", "1.1.0"), meet(inB, inA))
		errs <- err
	}()
	require.NoError(t, <-errs)
	require.NoError(t, <-errs)
}

func TestReloadThenUnregisterWaits(t *testing.T) {
	verifyNoLeaks(t)
	m := newReloadManager(t)
	old, next := newEcho("echo", "1.0.0"), newEcho("echo", "1.1.0")
	require.NoError(t, m.Register(old))
	entered, release := make(chan struct{}, 1), make(chan struct{})
	reloaded := make(chan error, 1)
	go func() {
		_, err := m.Reload(context.Background(), "echo", next, WithHandoff(blockingHandoff("conn", entered, release)))
		reloaded <- err
	}()
	<-entered
	unregistered := make(chan error, 1)
	go func() { unregistered <- m.Unregister(context.Background(), "echo") }()
	waitBlockedIn(t, ").Unregister(", ").lock(")
	assert.Empty(t, unregistered, "Unregister returned while the reload ran")
	close(release)

	require.NoError(t, <-reloaded, "the reload completes")
	require.NoError(t, <-unregistered, "then Unregister removes the plugin")
	_, err := m.Execute(context.Background(), "echo", 1)
	assert.ErrorIs(t, err, ErrNotFound)
	assert.Equal(t, int32(1), old.closed.Load(), "the reload closed the old plugin")
	assert.Equal(t, int32(1), next.closed.Load(), "Unregister closed the version the reload installed")
}

func TestReloadAbortedByShutdown(t *testing.T) {
	verifyNoLeaks(t)
	m := newReloadManager(t)
	old := newSwappable("ctr", "1.0.0", SurfaceState)
	next := newSwappable("ctr", "1.1.0", SurfaceState)
	require.NoError(t, m.Register(old))
	_, err := m.Execute(context.Background(), "ctr", 0)
	require.NoError(t, err)
	entered := make(chan struct{}, 1)
	reloaded := make(chan error, 1)
	go func() {
		_, err := m.Reload(context.Background(), "ctr", next, WithHandoff(blockingHandoff("conn", entered, nil)))
		reloaded <- err
	}()
	<-entered
	require.NoError(t, m.Shutdown(context.Background()))

	err = <-reloaded
	assert.ErrorIs(t, err, ErrReloadFailed)
	assert.ErrorIs(t, err, ErrClosed)
	var re *ReloadError
	require.ErrorAs(t, err, &re)
	assert.Equal(t, "dispatch", re.Phase)
	assert.Equal(t, encodeInt(1), re.Handed[SurfaceState], "the persisted state is in the error")
	assert.Equal(t, 1, old.count(), "the old plugin kept its state")
	assert.Equal(t, int32(1), old.closed.Load(), "Shutdown closed the old plugin once")
	assert.Zero(t, next.closed.Load(), "the next plugin stays the caller's")
	_, err = m.Execute(context.Background(), "ctr", 0)
	assert.ErrorIs(t, err, ErrClosed)
	_, err = m.Reload(context.Background(), "ctr", next)
	assert.ErrorIs(t, err, ErrClosed)
}

func TestReloadRollbackRunsUndosInReverse(t *testing.T) {
	verifyNoLeaks(t)
	var (
		mu    sync.Mutex
		order []string
	)
	note := func(s string) {
		mu.Lock()
		order = append(order, s)
		mu.Unlock()
	}
	handoff := func(s Surface, fail, failUndo error) Handoff {
		return Handoff{
			Surface: s,
			Transfer: func(context.Context, *Swap) (func(context.Context) error, error) {
				note("transfer " + string(s))
				return func(context.Context) error {
					note("undo " + string(s))
					return failUndo
				}, fail
			},
		}
	}
	errUndo, errHost := errors.New("undo failed"), errors.New("host handoff failed")
	d := NewReloadDispatcher()
	require.NoError(t, d.Register(handoff("cache", nil, errUndo)))
	assert.Equal(t, []Surface{SurfaceSchema, SurfaceState, SurfaceStream, "cache"}, d.Surfaces())
	m := newReloadManager(t, WithReloadDispatcher(d))
	surfaces := []Surface{SurfaceState, SurfaceStream, "cache"}
	old := newSwappable("sw", "1.0.0", surfaces...)
	old.streaming = true
	require.NoError(t, m.Register(old))
	next := newSwappable("sw", "1.1.0", surfaces...)

	_, err := m.Reload(context.Background(), "sw", next, WithHandoff(handoff("h1", nil, nil)), WithHandoff(handoff("h2", errHost, nil)))
	assert.ErrorIs(t, err, ErrReloadFailed)
	assert.ErrorIs(t, err, errHost)
	assert.ErrorIs(t, err, errUndo, "the failed undo is reported")
	var re *ReloadError
	require.ErrorAs(t, err, &re)
	assert.Equal(t, Surface("h2"), re.Surface)
	assert.ErrorIs(t, re.RollbackErr, errUndo)
	assert.Contains(t, err.Error(), "rollback also failed")
	assert.Equal(t, []string{"transfer cache", "transfer h1", "transfer h2", "undo h2", "undo h1", "undo cache"}, order,
		"kinds run in table order, host-owned last; undos in reverse, every one even after one fails")
	_, _, streaming := old.snapshot()
	assert.True(t, streaming, "the stream undo ran after the others")
	_, _, streaming = next.snapshot()
	assert.False(t, streaming)
	_, err = m.Execute(context.Background(), "sw", 0)
	assert.NoError(t, err)
}

func TestReloadDispatcherRegister(t *testing.T) {
	noop := func(context.Context, *Swap) error { return nil }
	tests := []struct {
		name    string
		handoff Handoff
		ok      bool
	}{
		{"custom handoff", Handoff{Surface: "cache", Preflight: noop}, true},
		{"no surface", Handoff{Preflight: noop}, false},
		{"no funcs", Handoff{Surface: "cache"}, false},
		{"built-in surface", Handoff{Surface: SurfaceState, Preflight: noop}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := NewReloadDispatcher()
			err := d.Register(tt.handoff)
			if tt.ok {
				require.NoError(t, err)
				assert.Equal(t, []Surface{SurfaceSchema, SurfaceState, SurfaceStream, tt.handoff.Surface}, d.Surfaces())
				assert.ErrorIs(t, d.Register(tt.handoff), ErrInvalidConfig, "registered twice")
				return
			}
			assert.ErrorIs(t, err, ErrInvalidConfig)
			assert.Equal(t, []Surface{SurfaceSchema, SurfaceState, SurfaceStream}, d.Surfaces())
		})
	}
}

func TestReloadNotRegistered(t *testing.T) {
	m := newReloadManager(t)
	_, err := m.Reload(context.Background(), "nope", newEcho("nope", "1.0.0"))
	assert.ErrorIs(t, err, ErrNotFound)
}

func TestReloadWaitsForTimedOutCall(t *testing.T) {
	verifyNoLeaks(t)
	m := newReloadManager(t, WithPluginDefaults(WithTimeout(10*time.Millisecond)))
	old := newSwappable("sw", "1.0.0")
	old.hold, old.held = make(chan struct{}), make(chan struct{}, 1)
	require.NoError(t, m.Register(old))
	// The caller gives up at the timeout; the call runs on, detached.
	_, err := m.Execute(context.Background(), "sw", holdReq)
	require.ErrorIs(t, err, ErrTimeout)
	<-old.held

	reloaded := make(chan error, 1)
	go func() {
		_, err := m.Reload(context.Background(), "sw", newSwappable("sw", "1.1.0"))
		reloaded <- err
	}()
	waitBlockedIn(t, ").Reload(", ").drain(")
	assert.Empty(t, reloaded, "the reload committed with a call still running")
	close(old.hold)
	require.NoError(t, <-reloaded)
	assert.Equal(t, int32(1), old.closed.Load())
	assert.Equal(t, int64(1), old.execsAtClose.Load(), "the old plugin was closed after its last call returned")
}

func TestReloadAbortedByShutdownDuringDrain(t *testing.T) {
	verifyNoLeaks(t)
	m := newReloadManager(t)
	old, next := newSwappable("sw", "1.0.0", SurfaceState), newSwappable("sw", "1.1.0", SurfaceState)
	old.hold, old.held = make(chan struct{}), make(chan struct{}, 1)
	require.NoError(t, m.Register(old))
	held := make(chan error, 1)
	go func() {
		_, err := m.Execute(context.Background(), "sw", holdReq)
		held <- err
	}()
	<-old.held
	reloaded := make(chan error, 1)
	go func() {
		_, err := m.Reload(context.Background(), "sw", next)
		reloaded <- err
	}()
	waitBlockedIn(t, ").Reload(", ").drain(")
	shutdown := make(chan error, 1)
	go func() { shutdown <- m.Shutdown(context.Background()) }()

	err := <-reloaded
	assert.ErrorIs(t, err, ErrReloadFailed)
	assert.ErrorIs(t, err, ErrClosed)
	var re *ReloadError
	require.ErrorAs(t, err, &re)
	assert.Equal(t, "drain", re.Phase)
	// Shutdown waits for the call in flight, then closes the old plugin.
	close(old.hold)
	require.NoError(t, <-held, "the call in flight finishes on the old plugin")
	require.NoError(t, <-shutdown)
	n, _, _ := old.snapshot()
	assert.Equal(t, 1, n)
	assert.Equal(t, int32(1), old.closed.Load())
	assert.Equal(t, int64(1), old.execsAtClose.Load(), "closed after its last call")
	assert.Zero(t, next.closed.Load())
}

func TestReloadRandomFailuresUnderLoad(t *testing.T) {
	verifyNoLeaks(t)
	const reloads = 300
	errInjected := errors.New("injected failure")
	m := newReloadManager(t)
	surfaces := []Surface{SurfaceState, SurfaceStream}
	current := newSwappable("sw", "1.0.0", surfaces...)
	current.streaming = true
	require.NoError(t, m.Register(current))
	l := startLoad(t, m, "sw", 3)

	rng := rand.New(rand.NewPCG(1, 2))
	var replaced, refused []*swappable
	for i := range reloads {
		next := newSwappable("sw", fmt.Sprintf("1.0.%d", i+1), surfaces...)
		var opts []ReloadOption
		switch rng.IntN(10) { // 0-4 fail a step, the rest commit
		case 0:
			current.failPersist = errInjected
		case 1:
			next.failRestore = errInjected
		case 2:
			current.failCheckpoint = errInjected
		case 3:
			next.failResume = errInjected
		case 4:
			opts = append(opts, WithHandoff(Handoff{
				Surface: "conn",
				Transfer: func(context.Context, *Swap) (func(context.Context) error, error) {
					return nil, errInjected
				},
			}))
		}
		_, err := m.Reload(context.Background(), "sw", next, opts...)
		current.failPersist, current.failCheckpoint = nil, nil
		if err != nil {
			require.ErrorIs(t, err, errInjected, "reload %d", i)
			refused = append(refused, next)
			continue
		}
		replaced = append(replaced, current)
		current = next
	}
	ok := l.end(t)

	n, _, streaming := current.snapshot()
	assert.Equal(t, int(ok), n, "the serving plugin's state counts every call across successful and failed reloads")
	assert.True(t, streaming)
	assert.Zero(t, current.closed.Load())
	for _, p := range replaced {
		assert.Equal(t, int32(1), p.closed.Load())
		_, _, streaming := p.snapshot()
		assert.False(t, streaming, "a replaced plugin stopped its stream")
	}
	for _, p := range refused {
		assert.Zero(t, p.closed.Load())
		assert.Zero(t, p.execs.Load())
		_, _, streaming := p.snapshot()
		assert.False(t, streaming, "a refused plugin's stream was stopped")
	}
	t.Logf("%d calls, %d reloads committed, %d rolled back", ok, len(replaced), len(refused))
}

func TestReloadStreamRollbackNeverRunsBothStreams(t *testing.T) {
	verifyNoLeaks(t)
	errStop, errHost := errors.New("cannot stop"), errors.New("host handoff failed")
	m := newReloadManager(t)
	old := newSwappable("sw", "1.0.0", SurfaceStream)
	require.NoError(t, m.Register(old, WithStreamStart(nil)))
	next := newSwappable("sw", "1.1.0", SurfaceStream)
	next.failCheckpoint = errStop

	_, err := m.Reload(context.Background(), "sw", next, WithHandoff(Handoff{
		Surface: "conn",
		Resume: func(context.Context, *Swap) (func(context.Context) error, error) {
			return nil, errHost // after the next plugin resumed the stream
		},
	}))
	assert.ErrorIs(t, err, errHost)
	var re *ReloadError
	require.ErrorAs(t, err, &re)
	assert.ErrorIs(t, re.RollbackErr, errStop)
	_, _, oldStreaming := old.snapshot()
	_, _, nextStreaming := next.snapshot()
	assert.True(t, nextStreaming, "the next plugin could not be stopped")
	assert.False(t, oldStreaming, "so the old one did not resume: the stream never runs twice")
	assert.Equal(t, encodeInt(0), re.Handed[SurfaceStream], "the checkpoint is in the error")
	_, err = m.Execute(context.Background(), "sw", 0)
	assert.NoError(t, err, "the old plugin still serves calls")
}

// TestReloadResetsBreakerFailures: a successful reload gives the new plugin
// a clean breaker, even when the breaker was closed with failures counted.
func TestReloadResetsBreakerFailures(t *testing.T) {
	verifyNoLeaks(t)
	m := NewManager[int, int](WithPluginDefaults(WithHealthCheck(HealthConfig{Interval: -1}), WithBreaker(BreakerConfig{ConsecutiveFailures: 3})))
	defer m.Shutdown(context.Background())
	boom := errors.New("boom")
	failing := func(context.Context, int) (int, error) { return 0, boom }
	require.NoError(t, m.Register(&scripted{name: "p", version: "1.0.0", exec: failing}))
	for range 2 {
		_, err := m.Execute(context.Background(), "p", 0)
		require.ErrorIs(t, err, boom)
	}
	_, err := m.Reload(context.Background(), "p", &scripted{name: "p", version: "1.1.0", exec: failing})
	require.NoError(t, err)
	_, err = m.Execute(context.Background(), "p", 0)
	require.ErrorIs(t, err, boom)
	require.Equal(t, BreakerClosed, m.Metrics().Plugins["p"].Breaker, "the old plugin's failures do not count against the new one")
}

// streamer is a plugin with state and stream whose stream runs on its own
// goroutine: each event it consumes adds one to its state and its position,
// then it waits for the next tick. An event arrives while PersistState runs
// if the stream still runs then.
type streamer struct {
	name, version string

	mu           sync.Mutex
	n, pos       int
	stop, exited chan struct{} // set while the stream runs
	tick         chan struct{}
}

func newStreamer(version string) *streamer {
	return &streamer{name: "st", version: version, tick: make(chan struct{})}
}

func (p *streamer) Info() PluginInfo {
	return PluginInfo{Name: p.name, Version: p.version, Surfaces: []Surface{SurfaceState, SurfaceStream}}
}
func (p *streamer) Execute(context.Context, int) (int, error) { return 0, nil }
func (p *streamer) Health(context.Context) error              { return nil }
func (p *streamer) Close(ctx context.Context) error {
	_, err := p.Checkpoint(ctx)
	return err
}

func (p *streamer) counts() (n, pos int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n, p.pos
}

func (p *streamer) PersistState(context.Context) ([]byte, error) {
	p.mu.Lock()
	n, running := p.n, p.stop != nil
	p.mu.Unlock()
	if running {
		p.tick <- struct{}{} // an event arrives meanwhile
		<-p.tick             // and is consumed
	}
	return encodeInt(n), nil
}

func (p *streamer) RestoreState(_ context.Context, b []byte) error {
	n, err := decodeInt(b)
	p.mu.Lock()
	p.n = n
	p.mu.Unlock()
	return err
}

func (p *streamer) Checkpoint(context.Context) ([]byte, error) {
	p.mu.Lock()
	stop, exited := p.stop, p.exited
	p.stop, p.exited = nil, nil
	p.mu.Unlock()
	if stop != nil {
		close(stop)
		<-exited
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return encodeInt(p.pos), nil
}

func (p *streamer) Resume(_ context.Context, pos []byte) error {
	n := 0
	if pos != nil {
		var err error
		if n, err = decodeInt(pos); err != nil {
			return err
		}
	}
	stop, exited := make(chan struct{}), make(chan struct{})
	p.mu.Lock()
	p.pos, p.stop, p.exited = n, stop, exited
	p.mu.Unlock()
	go func() {
		defer close(exited)
		for {
			select {
			case <-stop:
				return
			case <-p.tick:
			}
			p.mu.Lock()
			p.n++
			p.pos++
			p.mu.Unlock()
			select {
			case <-stop:
				return
			case p.tick <- struct{}{}:
			}
		}
	}()
	return nil
}

// step makes the stream consume one event.
func (p *streamer) step() {
	p.tick <- struct{}{}
	<-p.tick
}

// TestReloadMovesStateAndStreamConsistently: with both surfaces, the stream
// stops before the state is persisted, so an event is never in neither the
// saved state nor after the resume position.
func TestReloadMovesStateAndStreamConsistently(t *testing.T) {
	verifyNoLeaks(t)
	m := newReloadManager(t)
	old := newStreamer("1.0.0")
	require.NoError(t, m.Register(old, WithStreamStart(nil)))
	for range 3 {
		old.step()
	}
	next := newStreamer("1.1.0")
	_, err := m.Reload(context.Background(), "st", next)
	require.NoError(t, err)
	next.step()
	n, pos := next.counts()
	require.Equal(t, 4, pos)
	require.Equal(t, pos, n, "the state counts every event before the resume position")
}

// TestReloadParkedCallsBoundedByDrainTimeout: a handoff step that ignores
// its ctx does not keep parked calls past the drain timeout: they are
// released to the old plugin, and the reload rolls back once the step
// returns.
func TestReloadParkedCallsBoundedByDrainTimeout(t *testing.T) {
	verifyNoLeaks(t)
	m := newReloadManager(t)
	old := newSwappable("sw", "1.0.0")
	require.NoError(t, m.Register(old, WithDrainTimeout(50*time.Millisecond)))
	entered, release := make(chan struct{}, 1), make(chan struct{})
	undone := make(chan struct{})
	stubborn := Handoff{Surface: "conn", Transfer: func(context.Context, *Swap) (func(context.Context) error, error) {
		entered <- struct{}{}
		<-release // ignores ctx
		return func(context.Context) error { close(undone); return nil }, nil
	}}
	reloaded := make(chan error, 1)
	go func() {
		_, err := m.Reload(context.Background(), "sw", newSwappable("sw", "1.1.0"),
			WithHandoff(stubborn))
		reloaded <- err
	}()
	<-entered
	parked := make(chan error, 1)
	go func() {
		_, err := m.Execute(context.Background(), "sw", 1)
		parked <- err
	}()
	require.NoError(t, awaitErr(t, "the parked call, with the step still stuck", parked))
	require.Equal(t, int64(1), old.execs.Load(), "the parked call ran on the old plugin")
	close(release)
	err := awaitErr(t, "Reload", reloaded)
	require.ErrorIs(t, err, ErrDrainTimeout)
	awaitClosed(t, "the undo", undone)
}

// canceller is a swappable whose CheckCompat waits for its ctx to end.
type canceller struct {
	*swappable
	entered chan struct{}
}

func (p *canceller) CheckCompat(ctx context.Context, _ PluginInfo) error {
	close(p.entered)
	<-ctx.Done()
	return ctx.Err()
}

// TestReloadCancelledDuringCompatReportsCtx: a reload cancelled by its
// caller or by Shutdown while CheckCompat runs reports that, not
// ErrSchemaIncompatible.
func TestReloadCancelledDuringCompatReportsCtx(t *testing.T) {
	for _, byShutdown := range []bool{false, true} {
		t.Run(fmt.Sprintf("shutdown=%v", byShutdown), func(t *testing.T) {
			m := NewManager[int, int](WithPluginDefaults(WithHealthCheck(HealthConfig{Interval: -1})))
			defer m.Shutdown(context.Background())
			require.NoError(t, m.Register(newSwappable("sw", "1.0.0", SurfaceSchema)))
			next := &canceller{newSwappable("sw", "1.1.0", SurfaceSchema), make(chan struct{})}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go func() {
				<-next.entered
				if byShutdown {
					m.Shutdown(context.Background())
				} else {
					cancel()
				}
			}()
			_, err := m.Reload(ctx, "sw", next)
			require.ErrorIs(t, err, ErrReloadFailed)
			require.NotErrorIs(t, err, ErrSchemaIncompatible)
			if byShutdown {
				require.ErrorIs(t, err, ErrClosed)
			} else {
				require.ErrorIs(t, err, ErrCanceled)
				require.ErrorIs(t, err, context.Canceled)
			}
		})
	}
}

// TestReloadCannotDropSchema: a next version that drops the schema surface
// does not skip the compat check: the reload is refused.
func TestReloadCannotDropSchema(t *testing.T) {
	m := newReloadManager(t)
	require.NoError(t, m.Register(newSwappable("sw", "1.0.0", SurfaceSchema)))
	_, err := m.Reload(context.Background(), "sw", newSwappable("sw", "2.0.0"))
	require.ErrorIs(t, err, ErrReloadFailed)
	require.ErrorContains(t, err, `drops the "schema" surface`)
	info, _ := m.Info("sw")
	require.Equal(t, "1.0.0", info.Version)
}

// TestReloadPreflightExcludesLockWait: ReloadReport.Preflight does not
// include the wait for another reload of the plugin; Total does.
func TestReloadPreflightExcludesLockWait(t *testing.T) {
	verifyNoLeaks(t)
	m := newReloadManager(t)
	require.NoError(t, m.Register(newSwappable("sw", "1.0.0")))
	entered, release := make(chan struct{}, 1), make(chan struct{})
	first := make(chan error, 1)
	go func() {
		_, err := m.Reload(context.Background(), "sw", newSwappable("sw", "1.1.0"), WithHandoff(blockingHandoff("hold", entered, release)))
		first <- err
	}()
	<-entered
	second := make(chan ReloadReport, 1)
	go func() {
		rep, _ := m.Reload(context.Background(), "sw", newSwappable("sw", "1.2.0"))
		second <- rep
	}()
	waitBlockedIn(t, "(*entry[...]).lock")
	const wait = 50 * time.Millisecond
	time.Sleep(wait) // the wait to be excluded (not synchronisation)
	close(release)
	require.NoError(t, awaitErr(t, "the first reload", first))
	rep := <-second
	require.Less(t, rep.Preflight, wait, "Preflight excludes the wait")
	require.GreaterOrEqual(t, rep.Total, wait, "Total includes the wait")
}

// TestReloadResetsHealthWithEvent: the commit resets the health status
// together with the swap and reports the reset with an event.
func TestReloadResetsHealthWithEvent(t *testing.T) {
	m := newReloadManager(t)
	old := &scripted{name: "p", version: "1.0.0", exec: func(context.Context, int) (int, error) { return 1, nil },
		health: func(context.Context) error { return errors.New("sick") }}
	require.NoError(t, m.Register(old))
	require.Equal(t, HealthDegraded, m.Health(context.Background())["p"].Status)
	events := collectEvents(m, EventHealthChanged, EventReloaded)
	_, err := m.Reload(context.Background(), "p", &scripted{name: "p", version: "1.1.0",
		exec: func(context.Context, int) (int, error) { return 2, nil }})
	require.NoError(t, err)
	ev := awaitEvent(t, events)
	require.Equal(t, EventHealthChanged, ev.Kind)
	require.Equal(t, HealthUnknown, ev.Health)
	require.Equal(t, EventReloaded, awaitEvent(t, events).Kind)
	require.Equal(t, HealthUnknown, m.Metrics().Plugins["p"].Health)
}

// TestRegisterStartsFirstStream: with WithStreamStart, Register gives a
// StreamPlugin its first Resume, from the position given (nil: the
// beginning); a failing Resume fails Register.
func TestRegisterStartsFirstStream(t *testing.T) {
	m := newReloadManager(t)
	p := newSwappable("sw", "1.0.0", SurfaceStream)
	require.NoError(t, m.Register(p, WithStreamStart(encodeInt(7))))
	_, pos, streaming := p.snapshot()
	require.True(t, streaming)
	require.Equal(t, uint64(7), pos)
	require.Equal(t, 1, p.resumes)

	plain := newSwappable("plain", "1.0.0", SurfaceStream)
	require.NoError(t, m.Register(plain))
	require.Zero(t, plain.resumes, "without the option the plugin starts its own stream")

	bad := newSwappable("bad", "1.0.0", SurfaceStream)
	bad.failResume = errors.New("no stream")
	require.ErrorIs(t, m.Register(bad, WithStreamStart(nil)), ErrInvalidPlugin)
	require.ErrorIs(t, m.Register(newEcho("nostream", "1.0.0"), WithStreamStart(nil)), ErrInvalidPlugin)
	require.Empty(t, slices.DeleteFunc(m.Plugins(), func(i PluginInfo) bool { return i.Name != "bad" }))
}

// TestReloadRestorePanicNamesRestoreStep: a RestoreState that panics is
// reported as the state surface's "restore" step.
func TestReloadRestorePanicNamesRestoreStep(t *testing.T) {
	m := newReloadManager(t)
	require.NoError(t, m.Register(newSwappable("sw", "1.0.0", SurfaceState)))
	next := newSwappable("sw", "1.1.0", SurfaceState)
	next.panicRestore = true
	_, err := m.Reload(context.Background(), "sw", next)
	var re *ReloadError
	require.ErrorAs(t, err, &re)
	require.ErrorIs(t, err, ErrPanic)
	require.Equal(t, SurfaceState, re.Surface)
	require.Equal(t, "restore", re.Step)
}

// TestReloadEventReportIsACopy: the report sent with EventReloaded shares
// nothing with the one Reload returns.
func TestReloadEventReportIsACopy(t *testing.T) {
	m := newReloadManager(t)
	require.NoError(t, m.Register(newSwappable("sw", "1.0.0", SurfaceState)))
	events := collectEvents(m, EventReloaded)
	rep, err := m.Reload(context.Background(), "sw", newSwappable("sw", "1.1.0", SurfaceState))
	require.NoError(t, err)
	want := slices.Clone(rep.Handed[SurfaceState])
	rep.Handed[SurfaceState][0] = 0xff
	rep.Steps[0] = "changed"
	ev := awaitEvent(t, events)
	require.Equal(t, want, ev.Reload.Handed[SurfaceState])
	require.Equal(t, []Surface{SurfaceState}, ev.Reload.Steps)
}
