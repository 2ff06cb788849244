package goplugins

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Manager owns registered plugins and runs requests through them.
//
// Execute is lock-free: it reads an immutable snapshot of the registry
// through an atomic pointer, which Register and Unregister replace
// copy-on-write. On its success path, and when it refuses a call, it
// takes no mutex and allocates nothing (unless a timeout or interceptors
// are configured, see WithTimeout and WithInterceptors).
//
// A Manager is safe for concurrent use. Shutdown releases everything it
// holds; no goroutine of the manager outlives a Shutdown that returned nil,
// except one still waiting on a plugin whose Close or reload step ignores
// its ctx, or a subscriber that called Shutdown itself (see Shutdown). A
// Manager cannot be reused after Shutdown.
type Manager[Req, Resp any] struct {
	cfg managerConfig
	// interceptor chains cfg.interceptors; nil when there is none.
	interceptor Interceptor
	reg         atomic.Pointer[registry[Req, Resp]]
	mu          sync.Mutex // serializes writers of reg
	bus         eventBus

	// closing is cancelled when Shutdown starts; it aborts reloads.
	closing       context.Context
	cancelClosing context.CancelFunc
	// abandon is cancelled when Shutdown's ctx ends with calls still
	// running: background closers stop waiting and close.
	abandon       context.Context
	cancelAbandon context.CancelFunc

	wg sync.WaitGroup // health loops, background closers, shutdown's closers

	// Shutdown: begin runs once; drained is closed when wg reaches zero
	// after it; final holds the result once a Shutdown finished the job.
	beginOnce   sync.Once
	drained     chan struct{}
	grace       time.Duration
	errs        shutdownErrors
	finalMu     sync.Mutex
	finished    bool
	shutdownErr error
}

type registry[Req, Resp any] struct {
	entries map[string]*entry[Req, Resp]
	closed  bool
}

// entry is a registered name. Its generation changes on Reload; everything
// else lives as long as the registration.
type entry[Req, Resp any] struct {
	m    *Manager[Req, Resp]
	name string
	cfg  pluginConfig

	gen       atomic.Pointer[generation[Req, Resp]]
	unhealthy atomic.Bool
	brk       breaker
	ctr       pluginCounters
	host      *hostPlugin

	// op serializes Reload and Unregister of this plugin; a one-slot
	// semaphore so that waiting for it is bounded by a ctx.
	op     chan struct{}
	genSeq uint64 // guarded by op

	// breakerErr and unhealthyErr are the refusals of Execute, built once
	// and never modified, so that refusing allocates nothing.
	breakerErr, unhealthyErr error

	healthMu    sync.Mutex
	healthState HealthReport
	stopHealth  context.CancelFunc
}

// NewManager returns a Manager configured by opts.
func NewManager[Req, Resp any](opts ...Option) *Manager[Req, Resp] {
	cfg := defaultManagerConfig()
	for _, o := range opts {
		o.applyManager(&cfg)
	}
	m := &Manager[Req, Resp]{cfg: cfg, interceptor: chainInterceptors(cfg.interceptors)}
	m.cfg.host.interceptor = m.interceptor
	m.bus = eventBus{log: cfg.logger, buffer: cfg.eventBuffer}
	m.closing, m.cancelClosing = context.WithCancel(context.Background())
	m.abandon, m.cancelAbandon = context.WithCancel(context.Background())
	m.reg.Store(&registry[Req, Resp]{entries: map[string]*entry[Req, Resp]{}})
	return m
}

// Register adds p under the name in p.Info(). The name must follow the
// rules of PluginInfo.Name (else ErrInvalidPlugin) and the version must be
// strict semver (and pass the manager's VersionPolicy rule for the name, if
// any). Registering a name
// that is taken fails with ErrAlreadyRegistered: use Reload to replace a
// plugin. opts configure this plugin, after the manager's
// WithPluginDefaults; the settings last for its life, reloads included.
// With WithStreamStart, Register starts the plugin's first stream (Resume)
// before the plugin serves. A plugin that implements HostUser gets its
// host handle (generation 1) before anything else is called on it; the
// handle is closed if Register fails.
func (m *Manager[Req, Resp]) Register(p Plugin[Req, Resp], opts ...PluginOption) error {
	if p == nil {
		return newError(codeInvalidPlugin, "", "Register got a nil plugin")
	}
	info, err := pluginInfo(p)
	if err != nil {
		return err
	}
	if m.cfg.policy != nil {
		if err := m.cfg.policy.checkPlugin(info.Name, info.Version); err != nil {
			return err
		}
	}
	cfg := m.cfg.plugin
	for _, o := range opts {
		o.applyPlugin(&cfg)
	}
	if m.reg.Load().entries[info.Name] != nil {
		return m.taken(info.Name)
	}
	e := m.newEntry(info.Name, cfg)
	g, err := m.newGeneration(e, p, info, 1, cfg.hostAsked)
	if err != nil {
		return err
	}
	stopStream, err := startStream(p, info, cfg)
	if err != nil {
		g.host.close()
		return err
	}

	m.mu.Lock()
	r := m.reg.Load()
	if r.closed || r.entries[info.Name] != nil {
		m.mu.Unlock()
		stopStream()
		g.host.close()
		if r.closed {
			return newError(codeClosed, info.Name, "cannot register: the manager is shut down")
		}
		return m.taken(info.Name)
	}
	watchLifecycle(p, m.emit)
	e.genSeq = 1
	e.gen.Store(g)
	next := maps.Clone(r.entries)
	next[info.Name] = e
	m.reg.Store(&registry[Req, Resp]{entries: next})
	if cfg.health.Interval > 0 {
		ctx, cancel := context.WithCancel(context.Background())
		e.stopHealth = cancel
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			e.healthLoop(ctx)
		}()
	}
	// Sent under m.mu, so that an Unregister's event cannot come first.
	m.emit(Event{Kind: EventRegistered, Plugin: info.Name, Version: info.Version})
	m.mu.Unlock()

	m.cfg.logger.Info("goplugins: plugin registered", "plugin", info.Name, "version", info.Version)
	return nil
}

func (m *Manager[Req, Resp]) taken(name string) error {
	return newError(codeAlreadyRegistered, name,
		"a plugin of this name is registered already; use Reload to replace it or Unregister it first")
}

// startStream starts the first stream of a plugin registered with
// WithStreamStart: Resume from the given position, bounded by the health
// timeout. The returned func stops it again (Checkpoint) if Register fails
// after all.
func startStream[Req, Resp any](p Plugin[Req, Resp], info PluginInfo, cfg pluginConfig) (stop func(), err error) {
	if !cfg.streamStart {
		return func() {}, nil
	}
	sp, ok := p.(StreamPlugin)
	if !ok || !info.Has(SurfaceStream) {
		return nil, newError(codeInvalidPlugin, info.Name, "WithStreamStart needs a StreamPlugin that declares the stream surface")
	}
	timeout := cfg.health.Timeout
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := runStep(SurfaceStream, "resume", func() error { return sp.Resume(ctx, cfg.streamPos) }); err != nil {
		return nil, wrapError(err, codeInvalidPlugin, info.Name, "Register started the plugin's stream (WithStreamStart), and Resume failed")
	}
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		_ = runStep(SurfaceStream, "checkpoint", func() error { _, err := sp.Checkpoint(ctx); return err })
	}, nil
}

// newGeneration makes generation id of entry e, plugin value p, with its
// host handle (see HostUser); asked is what p's manifest asks for (nil: no
// manifest). It fails if p's UseHost panics.
func (m *Manager[Req, Resp]) newGeneration(e *entry[Req, Resp], p Plugin[Req, Resp], info PluginInfo, id uint64, asked []string) (*generation[Req, Resp], error) {
	g := newGeneration(p, info, id)
	g.host = e.host.bind(&m.cfg.host, Caller{Plugin: info.Name, Version: info.Version, Generation: id}, asked, m.cfg.logger, m.emit)
	if u, ok := p.(HostUser); ok {
		if err := useHost(u, g.host); err != nil {
			g.host.close()
			return nil, err
		}
	}
	return g, nil
}

// useHost gives u its handle, recovering a panic.
func useHost(u HostUser, h *Host) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = newError(codeInvalidPlugin, h.caller.Plugin, "the plugin's UseHost method panicked: %v", r)
		}
	}()
	u.UseHost(h)
	return nil
}

// pluginInfo reads and validates p.Info, recovering a panic.
func pluginInfo[Req, Resp any](p Plugin[Req, Resp]) (info PluginInfo, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = newError(codeInvalidPlugin, "", "the plugin's Info method panicked: %v", r)
		}
	}()
	info = p.Info().clone()
	return info, validateInfo(info)
}

func (m *Manager[Req, Resp]) newEntry(name string, cfg pluginConfig) *entry[Req, Resp] {
	e := &entry[Req, Resp]{m: m, name: name, cfg: cfg, op: make(chan struct{}, 1), host: newHostPlugin(&m.cfg.host)}
	e.breakerErr = newError(codeBreakerOpen, name,
		"circuit breaker is open after repeated failures; calls resume after a successful probe once its open timeout passes")
	e.unhealthyErr = newError(codeUnhealthy, name,
		"the plugin failed %d health checks in a row and fails fast until a check passes; Manager.Health reports the last error", cfg.health.UnhealthyAfter)
	e.brk = breaker{
		cfg: cfg.breaker,
		now: time.Now,
		calls: func() uint64 {
			if g := e.gen.Load(); g != nil {
				return g.baseStarted + g.startedCalls()
			}
			return 0
		},
		onChange: func(from, to BreakerState) {
			kind := map[BreakerState]EventKind{
				BreakerOpen: EventBreakerOpened, BreakerHalfOpen: EventBreakerHalfOpen, BreakerClosed: EventBreakerClosed,
			}[to]
			m.cfg.logger.Warn("goplugins: circuit breaker changed", "plugin", name, "from", from.String(), "to", to.String())
			m.emit(Event{Kind: kind, Plugin: name})
		},
		onPanic: func(r any) {
			m.cfg.logger.Error("goplugins: BreakerConfig.IsFailure panicked; the call counts as a failure",
				"plugin", name, "panic", r, "stack", string(debug.Stack()))
		},
	}
	e.brk.startWindow()
	return e
}

// Execute runs req through the named plugin.
//
// Errors: ErrNotFound if no such plugin is registered, ErrClosed after
// Shutdown, ErrBreakerOpen or ErrUnhealthy when the plugin is rejecting
// calls, ErrTimeout past the plugin's own timeout (WithTimeout), ErrPanic if
// it panicked, else the plugin's own error unchanged.
//
// When ctx ends before the plugin answers (while the call runs, is parked
// by a reload, or waits between retries), the error matches ErrCanceled and
// also ctx's error (context.Canceled or context.DeadlineExceeded) with
// errors.Is; it never matches ErrTimeout, which is for the plugin's own
// timeout alone. The same rule holds on every transport.
//
// While the plugin is being reloaded the call is parked (bounded by ctx and
// the drain timeout) and then runs on whichever plugin serves after the
// reload: no call is dropped. A refused call (breaker open, unhealthy)
// returns an error built once per plugin: do not modify it.
//
// With interceptors (WithInterceptors), the call runs through them, and
// Execute returns the error the outermost one returns.
func (m *Manager[Req, Resp]) Execute(ctx context.Context, name string, req Req) (Resp, error) {
	if m.interceptor != nil {
		return m.executeIntercepted(ctx, name, req)
	}
	return m.execute(ctx, name, req, nil)
}

// execute is Execute; c, when not nil, gets the plugin value that served,
// the retries and the time parked.
func (m *Manager[Req, Resp]) execute(ctx context.Context, name string, req Req, c *Call) (Resp, error) {
	for {
		e := m.reg.Load().entries[name]
		if e == nil {
			var zero Resp
			return zero, m.missing(name)
		}
		g := e.gen.Load()
		if g == nil { // unregistered since the snapshot was taken
			var zero Resp
			return zero, m.missing(name)
		}
		if e.unhealthy.Load() {
			e.ctr.rejected.Add(1)
			var zero Resp
			return zero, e.unhealthyErr
		}
		t, ok := e.brk.allow()
		if !ok {
			e.ctr.rejected.Add(1)
			var zero Resp
			return zero, e.breakerErr
		}
		shard, n := g.start()
		if gt := g.gate.Load(); gt != nil {
			g.backout(shard)
			e.brk.release(t)
			if park(ctx, gt, c) != nil {
				var zero Resp
				return zero, canceledError(ctx, name)
			}
			continue
		}
		if c != nil {
			servedBy(c, g)
		}
		return e.run(ctx, g, shard, n, t, req, c)
	}
}

// park waits on the gate, adding the time to c's when c is not nil.
func park(ctx context.Context, gt *gate, c *Call) error {
	if c == nil {
		return gt.wait(ctx)
	}
	start := time.Now()
	err := gt.wait(ctx)
	c.Parked += time.Since(start)
	return err
}

// run runs an admitted call, with retries, and books it.
func (e *entry[Req, Resp]) run(ctx context.Context, g *generation[Req, Resp], shard uint32, n uint64, t ticket, req Req, c *Call) (Resp, error) {
	var start time.Time
	sampled := n&e.m.cfg.sampleMask == 0
	if sampled {
		start = time.Now()
	}
	resp, err := e.attempt(ctx, g, req)
	e.brk.record(ctx, t, err)
	if err != nil && e.cfg.retry.MaxAttempts > 1 {
		resp, err = e.retry(ctx, g, req, err, c)
	}
	g.finish(shard)
	if sampled {
		e.ctr.latency.observe(time.Since(start))
	}
	if err != nil {
		e.ctr.errors.Add(1)
		if isCanceled(ctx, err) && !errors.Is(err, ErrCanceled) {
			err = canceledError(ctx, e.name)
		}
	}
	return resp, err
}

// retry re-runs a failed call while its error is retryable, with backoff.
// A retry the breaker refuses ends the call with the last attempt's error:
// the call ran and failed, so it is not counted as rejected too.
func (e *entry[Req, Resp]) retry(ctx context.Context, g *generation[Req, Resp], req Req, err error, c *Call) (Resp, error) {
	var resp Resp
	backoff := e.cfg.retry.Backoff
	for attempt := 1; attempt < e.cfg.retry.MaxAttempts && IsRetryable(err); attempt++ {
		timer := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			timer.Stop()
			return resp, canceledError(ctx, e.name)
		case <-timer.C:
		}
		backoff = min(2*backoff, e.cfg.retry.MaxBackoff)
		t, ok := e.brk.allow()
		if !ok {
			return resp, err
		}
		e.ctr.retries.Add(1)
		if c != nil {
			c.Retries++
		}
		resp, err = e.attempt(ctx, g, req)
		e.brk.record(ctx, t, err)
	}
	return resp, err
}

// attempt runs the plugin once, on its own goroutine when a timeout is set.
func (e *entry[Req, Resp]) attempt(ctx context.Context, g *generation[Req, Resp], req Req) (Resp, error) {
	if e.cfg.timeout <= 0 {
		return e.invoke(ctx, g, req)
	}
	tctx, cancel := context.WithTimeout(ctx, e.cfg.timeout)
	defer cancel()
	type result struct {
		resp Resp
		err  error
	}
	done := make(chan result, 1)
	g.detached.Add(1)
	go func() {
		resp, err := e.invoke(tctx, g, req)
		done <- result{resp, err}
		g.detached.Add(-1)
		if g.gate.Load() != nil {
			g.signalIfIdle()
		}
	}()
	select {
	case r := <-done:
		if r.err != nil && ctx.Err() == nil && errors.Is(tctx.Err(), context.DeadlineExceeded) {
			return r.resp, e.timeoutError()
		}
		return r.resp, r.err
	case <-tctx.Done():
		var zero Resp
		if ctx.Err() != nil {
			return zero, canceledError(ctx, e.name)
		}
		return zero, e.timeoutError()
	}
}

// invoke calls the plugin, turning a panic into ErrPanic.
func (e *entry[Req, Resp]) invoke(ctx context.Context, g *generation[Req, Resp], req Req) (resp Resp, err error) {
	defer func() {
		if r := recover(); r != nil {
			e.ctr.panics.Add(1)
			e.m.cfg.logger.Error("goplugins: plugin panicked", "plugin", e.name, "panic", r, "stack", string(debug.Stack()))
			err = newError(codePanic, e.name, "the plugin panicked (%v); the host recovered and the plugin keeps serving, but the plugin has a bug to fix", r)
		}
	}()
	return g.plugin.Execute(ctx, req)
}

func (e *entry[Req, Resp]) timeoutError() error {
	e.ctr.timeouts.Add(1)
	return newError(codeTimeout, e.name, "no answer within the plugin's timeout of %v; raise WithTimeout or find what slows the plugin", e.cfg.timeout)
}

// missing explains why name cannot be called.
func (m *Manager[Req, Resp]) missing(name string) error {
	if m.reg.Load().closed {
		return newError(codeClosed, name, "the manager is shut down")
	}
	return newError(codeNotFound, name, "no plugin of this name is registered; check the name or register it first")
}

// lock takes the plugin's operation slot (Reload and Unregister hold it).
// A free slot is taken even when ctx has ended already, so that the result
// does not depend on a race between the two.
func (e *entry[Req, Resp]) lock(ctx context.Context) error {
	select {
	case e.op <- struct{}{}:
		return nil
	default:
	}
	select {
	case e.op <- struct{}{}:
		return nil
	case <-ctx.Done():
		return wrapError(ctx.Err(), codeDrainTimeout, e.name,
			"a reload or unregister of the plugin is still running; retry with a longer ctx")
	}
}

func (e *entry[Req, Resp]) unlock() { <-e.op }

// Unregister removes the named plugin: new calls get ErrNotFound at once,
// calls in flight finish, then the plugin is closed. If a reload of the
// plugin is running, Unregister first waits for it to end.
//
// If ctx ends (or Shutdown starts) before the calls in flight finish, the
// plugin is removed all the same and closed in the background after its
// last call, or when Shutdown gives up waiting; Unregister then returns an
// error matching ErrDrainTimeout. If ctx ends while a reload still holds
// the plugin, Unregister changes nothing and returns an error matching
// ErrDrainTimeout. Shutdown waits for every Unregister in progress.
func (m *Manager[Req, Resp]) Unregister(ctx context.Context, name string) error {
	e := m.reg.Load().entries[name]
	if e == nil {
		return m.missing(name)
	}
	if err := e.lock(ctx); err != nil {
		return err
	}
	defer e.unlock()

	m.mu.Lock()
	r := m.reg.Load()
	if r.entries[name] != e {
		m.mu.Unlock()
		return m.missing(name)
	}
	next := maps.Clone(r.entries)
	delete(next, name)
	m.reg.Store(&registry[Req, Resp]{entries: next, closed: r.closed})
	// Shutdown waits for this removal: the registry is open, so Shutdown
	// has not started waiting yet (it closes the registry under m.mu).
	m.wg.Add(1)
	m.mu.Unlock()

	g := e.retire()
	dctx, stop := mergeCancel(ctx, m.closing)
	defer stop()
	if g.drain(dctx) != nil {
		left := g.inFlight()
		go m.closeLater(e, g)
		return wrapError(context.Cause(dctx), codeDrainTimeout, name,
			"removed, but %d call(s) were still running; it will be closed after the last one ends", left)
	}
	defer m.wg.Done()
	closeCtx, cancel := ctx, context.CancelFunc(func() {})
	if ctx.Err() != nil { // an ended ctx still gets a bounded Close
		closeCtx, cancel = context.WithTimeout(context.WithoutCancel(ctx), e.cfg.health.Timeout)
	}
	defer cancel()
	err := g.close(closeCtx, name)
	m.cfg.logger.Info("goplugins: plugin unregistered", "plugin", name, "version", g.info.Version)
	m.emit(Event{Kind: EventUnregistered, Plugin: name, Version: g.info.Version, Err: err})
	if err != nil {
		return wrapError(err, codeClosed, name, "unregistered, but Close failed")
	}
	return nil
}

// retire stops routing calls to the entry: health checks stop, calls
// starting from now on find no generation (callers that already hold it
// back out and retry). It returns the generation to drain and close, nil
// if the entry was retired already. The op slot must be held.
func (e *entry[Req, Resp]) retire() *generation[Req, Resp] {
	if e.stopHealth != nil {
		e.stopHealth()
	}
	g := e.gen.Load()
	if g == nil {
		return nil
	}
	gt := newGate()
	g.gate.Store(gt)
	e.gen.Store(nil)
	gt.open()
	return g
}

// closeLater closes g after its last call, or when Shutdown gives up
// waiting. It runs on its own goroutine and owns one count of m.wg, which
// its caller added.
func (m *Manager[Req, Resp]) closeLater(e *entry[Req, Resp], g *generation[Req, Resp]) {
	defer m.wg.Done()
	drained := g.drain(m.abandon) == nil
	ctx, cancel := context.WithTimeout(context.Background(), e.cfg.health.Timeout)
	defer cancel()
	err := g.close(ctx, e.name)
	if !drained {
		m.cfg.logger.Warn("goplugins: plugin closed with calls still running", "plugin", e.name, "in_flight", g.inFlight())
	}
	m.emit(Event{Kind: EventUnregistered, Plugin: e.name, Version: g.info.Version, Err: err})
}

// Shutdown stops health checks, aborts reloads in progress (they roll
// back), refuses new calls with ErrClosed, waits for the calls in
// flight and for Unregisters in progress, and closes every plugin
// concurrently. Event subscribers receive what was queued, then stop; a
// subscriber may call Shutdown itself (it does not wait for its own
// delivery).
//
// If ctx ends first, plugins with calls still running are closed anyway;
// a plugin that a reload still holds (a reload step ignoring its ctx) is
// closed as soon as the reload lets go of it. Shutdown then waits at most
// one more health-check timeout (the bound Close gets, see HealthConfig)
// for those closes and for subscribers. If everything finished, it returns
// the Close and drain errors; otherwise an error matching ErrClosed
// and ctx's error, and the job is not done: call Shutdown again (with a
// new ctx) to wait for the rest. Once a call has finished the job, every
// later call returns that call's result. A Manager cannot be reused after
// Shutdown.
func (m *Manager[Req, Resp]) Shutdown(ctx context.Context) error {
	m.beginOnce.Do(m.beginShutdown)
	self := m.bus.reentered(goroutineID())
	if err := m.awaitDrained(ctx); err != nil {
		return err
	}
	m.cancelAbandon()
	for _, s := range m.bus.close() {
		if s == self {
			continue
		}
		if err := m.awaitSubscriber(ctx, s); err != nil {
			return err
		}
	}
	m.finalMu.Lock()
	defer m.finalMu.Unlock()
	if !m.finished {
		m.finished, m.shutdownErr = true, m.errs.result()
	}
	return m.shutdownErr
}

// beginShutdown closes the registry and starts closing every plugin; it
// runs once, for the first Shutdown.
func (m *Manager[Req, Resp]) beginShutdown() {
	m.cancelClosing()
	m.mu.Lock()
	entries := m.reg.Load().entries
	m.reg.Store(&registry[Req, Resp]{entries: map[string]*entry[Req, Resp]{}, closed: true})
	// The last m.wg.Add: from now on the registry is closed, so Register
	// and Unregister add nothing.
	m.wg.Add(len(entries))
	m.mu.Unlock()

	m.errs.log = m.cfg.logger
	m.grace = m.cfg.plugin.health.Timeout
	for _, e := range entries {
		m.grace = max(m.grace, e.cfg.health.Timeout)
		go func() {
			defer m.wg.Done()
			m.shutdownEntry(e)
		}()
	}
	m.drained = make(chan struct{})
	go func() {
		m.wg.Wait()
		close(m.drained)
	}()
}

// awaitDrained waits until every plugin is closed. When ctx ends first it
// gives up on calls still running (the plugins are closed anyway) and waits
// one grace period more.
func (m *Manager[Req, Resp]) awaitDrained(ctx context.Context) error {
	return m.await(ctx, m.drained, func() {
		m.cancelAbandon()
	}, "a plugin's Close or reload ignores its ctx: still running %v after shutdown's ctx ended; it is closed when it returns")
}

// awaitSubscriber waits until s delivered what was queued (or s itself
// called Shutdown), with the same bounds as awaitDrained.
func (m *Manager[Req, Resp]) awaitSubscriber(ctx context.Context, s *subscriber) error {
	return m.await(ctx, s.stopped(), func() {},
		"an event subscriber is still running %v after shutdown's ctx ended")
}

// await waits for done: at once if it is done already, else until ctx
// ends, then (after onLate) one grace period more. It returns the error of
// an unfinished job, or nil.
func (m *Manager[Req, Resp]) await(ctx context.Context, done <-chan struct{}, onLate func(), late string) error {
	select {
	case <-done:
		return nil
	default:
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	onLate()
	t := time.NewTimer(m.grace)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-t.C:
	}
	return errors.Join(m.errs.snapshot(), newError(codeClosed, "", late, m.grace),
		wrapError(ctx.Err(), codeClosed, "", "shutdown did not finish in time; call Shutdown again to wait for the rest"))
}

// graceCtx returns a ctx that ends d after abandon ends: the bound of a
// Close during Shutdown.
func graceCtx(abandon context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	var t *time.Timer
	var mu sync.Mutex
	stop := context.AfterFunc(abandon, func() {
		mu.Lock()
		t = time.AfterFunc(d, cancel)
		mu.Unlock()
	})
	return ctx, func() {
		stop()
		mu.Lock()
		if t != nil {
			t.Stop()
		}
		mu.Unlock()
		cancel()
	}
}

// shutdownErrors gathers the errors of a shutdown. Errors that arrive after
// Shutdown returned are logged instead.
type shutdownErrors struct {
	log      *slog.Logger
	mu       sync.Mutex
	errs     []error
	returned bool
}

func (s *shutdownErrors) add(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.returned {
		s.log.Warn("goplugins: error after shutdown returned", "error", err.Error())
		return
	}
	s.errs = append(s.errs, err)
}

func (s *shutdownErrors) snapshot() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return errors.Join(s.errs...)
}

func (s *shutdownErrors) result() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.returned = true
	return errors.Join(s.errs...)
}

// shutdownEntry retires, drains and closes one plugin, reporting errors.
// If a reload or Unregister holds the plugin past ctx, it stops the health
// checks at once, reports that, and closes the plugin when the holder lets
// go (without waiting for calls in flight any more).
func (m *Manager[Req, Resp]) shutdownEntry(e *entry[Req, Resp]) {
	report := m.errs.add
	drainCtx := m.abandon
	if err := e.lock(drainCtx); err != nil {
		if e.stopHealth != nil {
			e.stopHealth()
		}
		report(wrapError(err, codeClosed, e.name, "not closed in time; it will be closed when the reload ends"))
		e.op <- struct{}{}
	}
	defer e.unlock()
	g := e.retire()
	if g == nil { // an Unregister removed it and closes it
		return
	}
	drainErr := g.drain(drainCtx)
	closeCtx, cancel := graceCtx(m.abandon, e.cfg.health.Timeout)
	defer cancel()
	err := g.close(closeCtx, e.name)
	m.emit(Event{Kind: EventUnregistered, Plugin: e.name, Version: g.info.Version, Err: err})
	if err != nil {
		report(wrapError(err, codeClosed, e.name, "Close failed during shutdown"))
	}
	if drainErr != nil {
		report(wrapError(drainErr, codeDrainTimeout, e.name, "closed with %d call(s) still running", g.inFlight()))
	}
}

// Plugins returns the info of every registered plugin, sorted by name. The
// infos are copies: changing them changes nothing in the manager.
func (m *Manager[Req, Resp]) Plugins() []PluginInfo {
	r := m.reg.Load()
	out := make([]PluginInfo, 0, len(r.entries))
	for _, e := range r.entries {
		if g := e.gen.Load(); g != nil {
			out = append(out, g.info.clone())
		}
	}
	slices.SortFunc(out, func(a, b PluginInfo) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Info returns (a copy of) the info of the named plugin as it serves now.
func (m *Manager[Req, Resp]) Info(name string) (PluginInfo, bool) {
	if e := m.reg.Load().entries[name]; e != nil {
		if g := e.gen.Load(); g != nil {
			return g.info.clone(), true
		}
	}
	return PluginInfo{}, false
}

// Health checks every plugin now, concurrently (each check bounded by its
// health timeout and by ctx), and returns the reports by plugin name.
// Statuses, events and fail-fast behaviour update as for periodic checks.
func (m *Manager[Req, Resp]) Health(ctx context.Context) map[string]HealthReport {
	r := m.reg.Load()
	out := make(map[string]HealthReport, len(r.entries))
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	for name, e := range r.entries {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep := e.checkHealth(ctx)
			mu.Lock()
			out[name] = rep
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

// Metrics returns a snapshot of every plugin's counters.
func (m *Manager[Req, Resp]) Metrics() Metrics {
	r := m.reg.Load()
	out := Metrics{Plugins: make(map[string]PluginMetrics, len(r.entries)), DroppedEvents: m.bus.dropped.Load()}
	for name, e := range r.entries {
		pm := PluginMetrics{
			Errors:   e.ctr.errors.Load(),
			Timeouts: e.ctr.timeouts.Load(),
			Panics:   e.ctr.panics.Load(),
			Rejected: e.ctr.rejected.Load(),
			Retries:  e.ctr.retries.Load(),
			Breaker:  BreakerState(e.brk.state.Load()),
			Health:   e.healthReport().Status,
			Latency:  e.ctr.latency.snapshot(int(m.cfg.sampleMask + 1)),
		}
		pm.HostCalls, pm.HostCallsRefused = e.host.metrics()
		if g := e.gen.Load(); g != nil {
			pm.Calls = g.baseCalls + g.calls()
			pm.InFlight = g.inFlight()
			pm.Generation = g.id
		}
		out.Plugins[name] = pm
	}
	return out
}

// Subscribe calls fn with every event from now on, in order, from a
// goroutine of its own: a slow fn never blocks Execute or other
// subscribers, but events beyond its buffer are dropped and counted (see
// WithEventBuffer). A panic in fn is recovered and logged. Events carry
// Seq, their place in the order of the changes. Call cancel to stop: once
// it returns, fn gets no further event (queued ones are dropped; a call
// running then finishes). Shutdown stops every subscriber after delivering
// what was queued; fn may call Shutdown.
func (m *Manager[Req, Resp]) Subscribe(fn func(Event)) (cancel func()) {
	return m.bus.subscribe(fn)
}

func (m *Manager[Req, Resp]) emit(ev Event) { m.bus.emit(ev) }
