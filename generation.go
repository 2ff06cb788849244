package goplugins

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// counterShards spreads the in-flight counters of a generation over cache
// lines so that cores calling the same plugin rarely contend.
const counterShards = 16

// callShard holds the started and finished counts of one shard. A call
// starts and finishes on the same shard, which therefore stays in one
// core's cache for the whole call. The padding keeps shards on separate
// cache lines (and apart from the adjacent-line prefetcher).
type callShard struct {
	started  atomic.Uint64
	finished atomic.Uint64
	_        [128 - 16]byte
}

// generation is one plugin value in the life of a registered name. Register
// makes generation 1, each successful Reload the next. Calls are counted per
// generation so that a reload or Unregister can wait for exactly the calls
// running on the value it replaces.
//
// The drain protocol: the drainer sets gate, then waits until every call
// that started has finished. A caller increments started, then loads gate;
// if gate is set it backs out (counts the start out without running) and
// parks on the gate. Go's atomics are sequentially consistent, so either
// the caller sees the gate or the drainer sees the caller's start.
type generation[Req, Resp any] struct {
	shards [counterShards]callShard

	plugin Plugin[Req, Resp]
	info   PluginInfo
	id     uint64
	host   *Host // the plugin value's handle; closed after its Close
	// baseCalls and baseStarted are the calls and starts of the
	// generations before this one; set before it is published.
	baseCalls, baseStarted uint64

	gate     atomic.Pointer[gate]
	idle     chan struct{} // signalled when a finish may have made the generation idle
	detached atomic.Int64  // timed-out calls still running on their own goroutine
	backouts atomic.Uint64 // starts that parked instead of running

	// checks counts health checks running on their own goroutine; close
	// waits for them (bounded by its ctx) and refuses new ones.
	checkMu   sync.Mutex
	checks    int
	checkIdle chan struct{} // closed when checks drops to 0 while close waits
	closing   bool
	closeOnce sync.Once
	closeErr  error
}

func newGeneration[Req, Resp any](p Plugin[Req, Resp], info PluginInfo, id uint64) *generation[Req, Resp] {
	return &generation[Req, Resp]{plugin: p, info: info, id: id, idle: make(chan struct{}, 1)}
}

// start counts a call in and returns its shard and the shard's start count.
func (g *generation[Req, Resp]) start() (uint32, uint64) {
	s := callerShard()
	return s, g.shards[s].started.Add(1)
}

// callerShard returns a shard owned by the caller's P (the scheduler's
// processor, one a core): sync.Pool keeps one token per P and hands a P
// its own, so the calls a core makes in a row stay on one cache line and
// two cores never share one. (A random shard per call would make each core
// write lines the other wrote last about half the time; a shard per
// goroutine would let two busy goroutines collide.) The pool may drop its
// tokens at a garbage collection; a new one is then made, and the next
// token number picked.
func callerShard() uint32 {
	t := shardTokens.Get().(*uint32)
	s := *t
	shardTokens.Put(t)
	return s
}

var (
	nextShard   atomic.Uint32
	shardTokens = sync.Pool{New: func() any {
		t := new(uint32)
		*t = nextShard.Add(1) % counterShards
		return t
	}}
)

// finish counts a call out. While a drain is waiting it signals when the
// generation may have become idle.
func (g *generation[Req, Resp]) finish(shard uint32) {
	g.shards[shard].finished.Add(1)
	if g.gate.Load() != nil {
		g.signalIfIdle()
	}
}

// backout undoes a start whose call will not run. It counts the start out
// with backouts alone (not finished), so that calls never reads a backout
// half done.
func (g *generation[Req, Resp]) backout(uint32) {
	g.backouts.Add(1)
	if g.gate.Load() != nil {
		g.signalIfIdle()
	}
}

func (g *generation[Req, Resp]) signalIfIdle() {
	if g.inFlight() == 0 {
		select {
		case g.idle <- struct{}{}:
		default:
		}
	}
}

// inFlight returns the number of calls running. It reads every finished
// and backout count before any started count: a result of 0 then proves
// there was an instant with no call running (see generation).
func (g *generation[Req, Resp]) inFlight() int64 {
	fin := g.backouts.Load()
	var st uint64
	for i := range g.shards {
		fin += g.shards[i].finished.Load()
	}
	for i := range g.shards {
		st += g.shards[i].started.Load()
	}
	return int64(st-fin) + g.detached.Load()
}

// calls returns the number of calls that ran on this generation.
func (g *generation[Req, Resp]) calls() uint64 {
	var fin uint64
	for i := range g.shards {
		fin += g.shards[i].finished.Load()
	}
	return fin
}

// startedCalls returns how many calls started (for the breaker's window).
func (g *generation[Req, Resp]) startedCalls() uint64 {
	var st uint64
	for i := range g.shards {
		st += g.shards[i].started.Load()
	}
	return st
}

// drain waits until no call runs on g. The gate must be set.
func (g *generation[Req, Resp]) drain(ctx context.Context) error {
	for g.inFlight() != 0 {
		select {
		case <-g.idle:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// health runs the plugin's Health on a goroutine of its own and returns its
// result, or ctx's error as soon as ctx ends: a check that ignores ctx never
// holds up its caller. The caller tells a timeout from a caller giving up. Once close has started, health refuses to run.
func (g *generation[Req, Resp]) health(ctx context.Context, name string) error {
	g.checkMu.Lock()
	if g.closing {
		g.checkMu.Unlock()
		return newError(codeClosed, name, "the plugin is being closed; check the plugin that serves now")
	}
	g.checks++
	g.checkMu.Unlock()

	done := make(chan error, 1)
	go func() {
		defer g.checkDone()
		done <- g.runHealth(ctx, name)
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// runHealth calls the plugin's Health, turning a panic into ErrPanic.
func (g *generation[Req, Resp]) runHealth(ctx context.Context, name string) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = newError(codePanic, name, "health check panicked: %v", r)
		}
	}()
	return g.plugin.Health(ctx)
}

// checkDone counts a health check out and wakes a close waiting for it.
func (g *generation[Req, Resp]) checkDone() {
	g.checkMu.Lock()
	defer g.checkMu.Unlock()
	g.checks--
	if g.checks == 0 && g.checkIdle != nil {
		close(g.checkIdle)
		g.checkIdle = nil
	}
}

// close closes the plugin once; later calls return the first result. It
// refuses new health checks and waits for the running ones, bounded by ctx;
// when ctx ends first it closes the plugin all the same. The plugin's host
// handle is closed once its Close has returned (a plugin may call the host
// while it closes).
func (g *generation[Req, Resp]) close(ctx context.Context, name string) error {
	g.closeOnce.Do(func() {
		defer g.host.close()
		g.checkMu.Lock()
		g.closing = true
		var idle chan struct{}
		if g.checks > 0 {
			idle = make(chan struct{})
			g.checkIdle = idle
		}
		g.checkMu.Unlock()
		if idle != nil {
			select {
			case <-idle:
			case <-ctx.Done():
			}
		}
		defer func() {
			if r := recover(); r != nil {
				g.closeErr = newError(codePanic, name, "Close panicked: %v", r)
			}
		}()
		g.closeErr = g.plugin.Close(ctx)
	})
	return g.closeErr
}

// gate parks calls to a plugin while it is drained for a reload or removal.
type gate struct {
	released chan struct{}

	mu       sync.Mutex
	opened   time.Time
	starts   []time.Time // when each parked call parked; zero if it gave up
	gaveUp   int
	isOpened bool
}

func newGate() *gate { return &gate{released: make(chan struct{})} }

// open releases every parked call (and every later one) to retry.
func (gt *gate) open() {
	gt.mu.Lock()
	defer gt.mu.Unlock()
	if !gt.isOpened {
		gt.isOpened, gt.opened = true, time.Now()
		close(gt.released)
	}
}

// wait parks until the gate opens or ctx is done.
func (gt *gate) wait(ctx context.Context) error {
	gt.mu.Lock()
	if gt.isOpened {
		gt.mu.Unlock()
		return nil
	}
	i := len(gt.starts)
	gt.starts = append(gt.starts, time.Now())
	gt.mu.Unlock()
	select {
	case <-gt.released:
		return nil
	case <-ctx.Done():
		gt.mu.Lock()
		if !gt.isOpened {
			gt.starts[i] = time.Time{}
			gt.gaveUp++
		}
		gt.mu.Unlock()
		return ctx.Err()
	}
}

// parkTimes returns, once the gate is open, how long each call that was
// released had been parked, and how many parked calls gave up first.
func (gt *gate) parkTimes() (parked []time.Duration, gaveUp int) {
	gt.mu.Lock()
	defer gt.mu.Unlock()
	for _, s := range gt.starts {
		if !s.IsZero() {
			parked = append(parked, gt.opened.Sub(s))
		}
	}
	return parked, gt.gaveUp
}
