package goplugins

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	goerrors "github.com/agilira/go-errors"
)

// ReloadOption configures one Reload.
type ReloadOption interface{ applyReload(*reloadConfig) }

type reloadConfig struct {
	host       []Handoff
	dependents []dependentConstraint
	hostAsked  []string // the next manifest's host_functions
	reasked    bool     // hostAsked is set; else the old value's asks carry over
}

type dependentConstraint struct{ dependent, constraint string }

type reloadOption func(*reloadConfig)

func (f reloadOption) applyReload(c *reloadConfig) { f(c) }

// WithHandoff adds a host-owned handoff (an open handle, a live stream) to
// one reload. Its steps run after the registered handoffs' in each step,
// with the same undo discipline; its Surface names it in reports and errors.
func WithHandoff(h Handoff) ReloadOption {
	return reloadOption(func(c *reloadConfig) { c.host = append(c.host, h) })
}

// withDependentConstraint makes the reload's preflight check the next
// version against the constraint that a loaded dependent holds on the
// plugin. The DynamicLoader passes one for each loaded dependent.
func withDependentConstraint(dependent, constraint string) ReloadOption {
	return reloadOption(func(c *reloadConfig) {
		c.dependents = append(c.dependents, dependentConstraint{dependent, constraint})
	})
}

// WithReloadDispatcher sets the table of handoffs the manager uses
// (default: NewReloadDispatcher()).
func WithReloadDispatcher(d *ReloadDispatcher) Option {
	return managerOption(func(c *managerConfig) {
		if d != nil {
			c.dispatcher = d
		}
	})
}

// ReloadReport describes a reload, successful or not.
type ReloadReport struct {
	// Plugin is the plugin's name.
	Plugin string
	// From and To are the old and the next version (To is empty when the
	// next plugin's Info could not be read).
	From, To string
	// Generation is the generation serving after the reload (unchanged
	// when it failed).
	Generation uint64
	// Steps lists the surfaces whose handoffs completed, in order; empty
	// after a failure (what ran was undone).
	Steps []Surface
	// Preflight, Drain, Dispatch and Commit time the phases that ran
	// (Preflight starts once the wait for another reload or Unregister of
	// the plugin is over); Total times the whole reload, that wait
	// included. Drain+Dispatch+Commit is the traffic pause.
	Preflight, Drain, Dispatch, Commit, Total time.Duration
	// ParkedCalls is how many calls were parked and released; ParkP50,
	// ParkP99 and ParkMax describe how long they were parked.
	ParkedCalls               int
	ParkP50, ParkP99, ParkMax time.Duration
	// GaveUp counts parked calls whose own ctx ended before the release.
	GaveUp int
	// Handed holds the bytes each surface handed over; BytesHandedOver sums them.
	Handed          map[Surface][]byte
	BytesHandedOver int
	// CloseErr is the old plugin's Close error after a successful commit.
	// Close gets the plugin's health-check timeout (see HealthConfig).
	CloseErr error
}

// ReloadError is the error of a failed reload. It matches ErrReloadFailed,
// and also the one code of its cause: ErrClosed when Shutdown aborted
// it, ErrCanceled (and ctx's error) when the caller's ctx ended, else
// ErrDrainTimeout when the drain timeout passed, else the failing step's
// code (ErrSchemaIncompatible, ErrIncompatibleVersion, ErrInvalidPlugin,
// ErrInvalidVersion, ErrPanic...); and the cause itself. The old plugin
// serves on: Handed keeps what was persisted or checkpointed before the
// failure, so nothing is lost.
type ReloadError struct {
	// Plugin is the name of the plugin whose reload failed.
	Plugin string
	// Phase is "preflight", "drain" or "dispatch".
	Phase string
	// Surface and Step name the failing step, when a handoff failed (e.g.
	// "state", "restore").
	Surface Surface
	Step    string
	// Handed holds the bytes handed over before the failure.
	Handed map[Surface][]byte
	// Err is the cause; RollbackErr the first undo that failed, if any.
	Err, RollbackErr error
	// Report describes the reload up to the failure.
	Report ReloadReport

	codes []error // fresh coded errors, for errors.Is
}

// Error says where the reload failed, why, what was handed over before the
// failure and which version serves on, on one line.
func (e *ReloadError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "[%s]: plugin %q: reload failed in %s", codeReloadFailed, e.Plugin, e.Phase)
	cause := e.Err
	if se, ok := cause.(*stepError); ok {
		fmt.Fprintf(&b, " (%s %s)", se.surface, se.step)
		cause = se.err
	}
	fmt.Fprintf(&b, ": %v", cause)
	if len(e.Handed) > 0 {
		surfaces := slices.Sorted(maps.Keys(e.Handed))
		b.WriteString("; handed over before the failure (kept in ReloadError.Handed):")
		for i, k := range surfaces {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, " %s %d bytes", k, len(e.Handed[k]))
		}
	}
	if e.RollbackErr != nil {
		fmt.Fprintf(&b, "; rollback also failed, so the old version may not serve as before: %v", e.RollbackErr)
	} else if e.Report.From != "" {
		fmt.Fprintf(&b, "; version %s keeps serving", e.Report.From)
	}
	return b.String()
}

// Unwrap returns the coded errors and the causes, for errors.Is and errors.As.
func (e *ReloadError) Unwrap() []error {
	errs := append(slices.Clip(e.codes), e.Err)
	if e.RollbackErr != nil {
		errs = append(errs, e.RollbackErr)
	}
	return errs
}

// Reload hot-swaps the named plugin for next, without dropping a call.
// Reloads and Unregisters of one plugin are serialized; reloads of
// different plugins run in parallel. A reload runs in phases:
//
//  1. Preflight, with no traffic touched: next is a new value with the
//     same name and a strict-semver version that passes the manager's
//     VersionPolicy and the constraints loaded dependents hold on the
//     plugin (withDependentConstraint); it keeps every surface of the old
//     plugin; next, if a HostUser, gets its host handle (the next
//     generation's, allowed what the old value was, unless a
//     DynamicLoader reloads it with a new manifest's host_functions);
//     every handoff's Preflight passes (schema runs CheckCompat here).
//     Failure: nothing changed.
//  2. Drain: new calls park, each bounded by its own ctx; calls in flight
//     on the old plugin finish.
//  3. Dispatch: the handoffs of the plugin's surfaces run their steps,
//     stop, move, start (see Handoff and ReloadDispatcher).
//  4. Commit: one atomic swap, with a clean breaker and health status;
//     the generation number increases; parked calls run on the new
//     plugin; the old one, with no call left, is closed (Close gets the
//     health-check timeout); the report is returned and sent with
//     EventReloaded.
//  5. Rollback, on a failure in phase 2 or 3 (a step fails or panics, the
//     drain timeout passes, ctx ends): the undos run in reverse, and the
//     parked calls are released to the old plugin, which serves on with
//     its state. The error is a *ReloadError naming the phase, surface and
//     step and carrying what was handed over; EventReloadFailed is sent.
//     next is not closed: the caller still owns it; its host handle is.
//
// The drain timeout (WithDrainTimeout) bounds phases 2 and 3 together, and
// so how long a call stays parked, even when a step ignores its ctx: at the
// timeout the parked calls are released to the old plugin, which serves
// them while the overrunning step is abandoned; Reload returns (with
// ErrDrainTimeout) once that step has returned and the undos have run.
//
// ctx bounds the whole reload, including the wait for another reload or
// Unregister of the plugin; if it ends before the commit, the reload rolls
// back and the error matches ErrCanceled and ctx's error. Shutdown aborts
// a reload the same way, with an error matching ErrClosed, and then
// closes the old plugin. Unregister during a reload waits for it and
// removes whichever version serves. A plugin that is not registered is
// reported with ErrNotFound (or ErrClosed after Shutdown), without a
// ReloadError. With interceptors (WithInterceptors), the reload runs
// through them.
func (m *Manager[Req, Resp]) Reload(ctx context.Context, name string, next Plugin[Req, Resp], opts ...ReloadOption) (ReloadReport, error) {
	if m.interceptor != nil {
		return m.reloadIntercepted(ctx, name, next, opts)
	}
	return m.reload(ctx, name, next, opts)
}

func (m *Manager[Req, Resp]) reload(ctx context.Context, name string, next Plugin[Req, Resp], opts []ReloadOption) (ReloadReport, error) {
	r := &reload[Req, Resp]{m: m, began: time.Now(), rep: ReloadReport{Plugin: name}}
	for _, o := range opts {
		o.applyReload(&r.cfg)
	}
	if r.e = m.reg.Load().entries[name]; r.e == nil {
		return r.rep, m.missing(name)
	}
	if g := r.e.gen.Load(); g != nil { // for a failure before the lock is taken
		r.rep.From, r.rep.Generation = g.info.Version, g.id
	}
	ctx, stop := mergeCancel(ctx, m.closing)
	defer stop()
	if err := r.e.lock(ctx); err != nil {
		return r.fail(ctx, "preflight", fmt.Errorf("another reload or Unregister of the plugin was still running: %w", context.Cause(ctx)), nil)
	}
	defer r.e.unlock()
	r.ctx = ctx
	if r.old = r.e.gen.Load(); r.old == nil {
		return r.rep, m.missing(name)
	}
	r.rep.From, r.rep.Generation = r.old.info.Version, r.old.id
	if err := r.preflight(ctx, next); err != nil {
		return r.fail(ctx, "preflight", err, nil)
	}
	r.pause, r.cancelPause = context.WithTimeout(ctx, r.e.cfg.drain)
	defer r.cancelPause()
	if err := r.drain(); err != nil {
		return r.fail(ctx, "drain", err, nil)
	}
	if err, undoErr := r.dispatch(); err != nil {
		return r.fail(ctx, "dispatch", err, undoErr)
	}
	return r.commit(ctx), nil
}

// reload is one run of Manager.Reload, split by phase.
type reload[Req, Resp any] struct {
	m     *Manager[Req, Resp]
	e     *entry[Req, Resp]
	cfg   reloadConfig
	began time.Time
	rep   ReloadReport

	old, next *generation[Req, Resp]
	sw        *Swap
	plan      []Handoff
	gt        *gate

	ctx         context.Context // the caller's ctx, ended by Shutdown too
	pause       context.Context // ends at the drain timeout or with ctx
	cancelPause context.CancelFunc
	decided     atomic.Bool // the pause was ended by a release, or the handoffs claimed the commit
}

// preflight checks next and plans the handoffs; nothing is touched.
// Its time excludes the wait for the op slot.
func (r *reload[Req, Resp]) preflight(ctx context.Context, next Plugin[Req, Resp]) error {
	t := time.Now()
	defer func() { r.rep.Preflight = time.Since(t) }()
	name := r.e.name
	switch {
	case ctx.Err() != nil: // a free op slot is taken even when ctx has ended
		return context.Cause(ctx)
	case next == nil:
		return newError(codeInvalidPlugin, name, "the next plugin is nil")
	case isSameValue(next, r.old.plugin):
		return newError(codeInvalidPlugin, name, "the next plugin is the value serving now; pass a new value (the old one is closed after the commit)")
	}
	info, err := pluginInfo(next)
	if err != nil {
		return err
	}
	r.rep.To = info.Version
	if info.Name != name {
		return newError(codeInvalidPlugin, name, "the next plugin is named %q; reload a plugin of the same name", info.Name)
	}
	if err := r.m.checkReloadVersion(info, r.cfg.dependents); err != nil {
		return err
	}
	r.sw = &Swap{Plugin: name, Old: r.old.plugin, Next: next, OldInfo: r.old.info, NextInfo: info}
	if r.plan, err = r.m.cfg.dispatcher.plan(r.sw, r.cfg.host); err != nil {
		return err
	}
	asked := r.old.host.asked
	if r.cfg.reasked {
		asked = r.cfg.hostAsked
	}
	// Made before the pause, to keep it short, and before the handoffs'
	// preflight, which may call the host.
	if r.next, err = r.m.newGeneration(r.e, next, info, r.e.genSeq+1, asked); err != nil {
		return err
	}
	if err := preflight(ctx, r.plan, r.sw); err != nil {
		return err
	}
	watchLifecycle(next, r.m.emit)
	return nil
}

// drain parks new calls on a gate and waits for the calls in flight.
func (r *reload[Req, Resp]) drain() error {
	t := time.Now()
	r.gt = newGate()
	r.old.gate.Store(r.gt)
	if err := r.old.drain(r.pause); err != nil {
		r.release()
		return fmt.Errorf("%d call(s) still running when the drain ended (the drain timeout is %v: raise it with WithDrainTimeout or find what keeps them): %w",
			r.old.inFlight(), r.e.cfg.drain, err)
	}
	r.rep.Drain = time.Since(t)
	return nil
}

// release ends the pause without a swap: the parked calls go to the old
// plugin.
func (r *reload[Req, Resp]) release() {
	r.old.gate.Store(nil)
	r.gt.open()
}

// dispatch runs the handoffs (and, on failure, their undos). The parked
// calls wait no longer than the pause: if it ends while a step still runs
// (one that ignores its ctx), they are released to the old plugin at once,
// and the reload fails once the step has returned and its undos have run.
// Exactly one side decides, through r.decided: the release when the pause
// ends, or the handoffs' claim to commit when they all succeeded.
func (r *reload[Req, Resp]) dispatch() (err, undoErr error) {
	t := time.Now()
	stop := context.AfterFunc(r.pause, func() {
		if r.decided.CompareAndSwap(false, true) {
			r.release()
		}
	})
	defer stop()
	claim := func() bool { return r.decided.CompareAndSwap(false, true) }
	rollback := r.e.cfg.health.Timeout + r.e.cfg.drain
	steps, err, undoErr := dispatch(r.pause, r.plan, r.sw, rollback, claim)
	r.rep.Steps, r.rep.Dispatch = steps, time.Since(t)
	if err != nil {
		r.release()
		if r.pause.Err() != nil && r.ctx.Err() == nil {
			err = fmt.Errorf("the handoffs did not finish within the drain timeout of %v: %w", r.e.cfg.drain, err)
		}
	}
	return err, undoErr
}

// commit swaps in the next generation, releases the parked calls to it and
// closes the old one.
func (r *reload[Req, Resp]) commit(ctx context.Context) ReloadReport {
	t := time.Now()
	e, old, ng := r.e, r.old, r.next
	e.genSeq = ng.id
	// The old generation is drained: its counts are final and carry over
	// with the swap, so Metrics never counts a call twice or not at all.
	ng.baseCalls = old.baseCalls + old.calls()
	ng.baseStarted = old.baseStarted + old.startedCalls()
	e.swapTo(ng)
	r.gt.open()
	r.rep.Commit = time.Since(t)
	r.rep.Generation = ng.id
	r.rep.setHanded(r.sw)
	r.rep.setParked(r.gt)
	closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.cfg.health.Timeout)
	r.rep.CloseErr = old.close(closeCtx, e.name)
	cancel()
	r.rep.Total = time.Since(r.began)
	r.m.cfg.logger.Info("goplugins: plugin reloaded", "plugin", e.name, "from", r.rep.From, "to", r.rep.To,
		"parked", r.rep.ParkedCalls, "pause", r.rep.Drain+r.rep.Dispatch+r.rep.Commit)
	r.m.emit(Event{Kind: EventReloaded, Plugin: e.name, Version: ng.info.Version, Reload: r.rep.clone()})
	return r.rep
}

// fail builds the *ReloadError of a failure in phase, classified once
// (see classify), and sends EventReloadFailed.
func (r *reload[Req, Resp]) fail(ctx context.Context, phase string, err, undoErr error) (ReloadReport, error) {
	name := r.e.name
	if r.next != nil {
		r.next.host.close()
	}
	code, cause := classify(ctx, r.pause, err)
	r.rep.Total = time.Since(r.began)
	if r.gt != nil {
		r.rep.setParked(r.gt)
	}
	re := &ReloadError{Plugin: name, Phase: phase, Err: cause, RollbackErr: undoErr,
		codes: []error{newError(codeReloadFailed, name, "reload failed in %s", phase)}}
	if code != "" && code != codeReloadFailed {
		re.codes = append(re.codes, newError(code, name, "reload failed in %s", phase))
	}
	if se := (*stepError)(nil); errors.As(err, &se) {
		re.Surface, re.Step = se.surface, se.step
		if cause != err {
			re.Err = &stepError{se.surface, se.step, cause}
		}
	}
	if r.sw != nil {
		r.rep.setHanded(r.sw)
		re.Handed = r.rep.Handed
	}
	re.Report = r.rep
	r.m.cfg.logger.Warn("goplugins: reload failed", "plugin", name, "phase", phase, "error", re.Error())
	r.m.emit(Event{Kind: EventReloadFailed, Plugin: name, Version: r.rep.From, Err: re, Reload: r.rep.clone()})
	return r.rep, re
}

// isSameValue reports whether a and b are the same pointer. Other kinds of
// values are never reported the same: comparing them could panic.
func isSameValue(a, b any) bool {
	t := reflect.TypeOf(a)
	return t != nil && t.Kind() == reflect.Pointer && t == reflect.TypeOf(b) && a == b
}

// setHanded fills in what the handoffs handed over.
func (r *ReloadReport) setHanded(sw *Swap) {
	r.Handed = sw.recorded()
	r.BytesHandedOver = 0
	for _, b := range r.Handed {
		r.BytesHandedOver += len(b)
	}
}

// clone returns a copy of r that shares no map, slice or bytes with it, for
// the event (the caller may change the report it got).
func (r ReloadReport) clone() *ReloadReport {
	r.Steps = slices.Clone(r.Steps)
	if r.Handed != nil {
		r.Handed = cloneHanded(r.Handed)
	}
	return &r
}

// setParked fills in the parked-call figures from an opened gate.
func (r *ReloadReport) setParked(gt *gate) {
	parked, gaveUp := gt.parkTimes()
	r.ParkedCalls, r.GaveUp = len(parked), gaveUp
	if len(parked) > 0 {
		slices.Sort(parked)
		r.ParkP50 = parked[len(parked)/2]
		r.ParkP99 = parked[(len(parked)*99)/100]
		r.ParkMax = parked[len(parked)-1]
	}
}

// classify returns the one code a reload failure matches besides
// ErrReloadFailed, and its cause: the reason ctx ended (ErrClosed
// when Shutdown aborted the reload, ErrCanceled when the caller's ctx
// ended; the cause is then ctx's, not the step's error, which the ending
// caused), else ErrDrainTimeout when pause ended, else err's own code.
func classify(ctx, pause context.Context, err error) (goerrors.ErrorCode, error) {
	switch {
	case ctx.Err() != nil:
		cause := context.Cause(ctx)
		if code := ErrorCode(cause); code != "" {
			return code, cause
		}
		return codeCanceled, cause
	case pause != nil && pause.Err() != nil:
		return codeDrainTimeout, err
	}
	return ErrorCode(err), err
}

// checkReloadVersion applies the version policy and dependents' constraints.
func (m *Manager[Req, Resp]) checkReloadVersion(info PluginInfo, dependents []dependentConstraint) error {
	if m.cfg.policy != nil {
		if err := m.cfg.policy.checkPlugin(info.Name, info.Version); err != nil {
			return err
		}
	}
	for _, d := range dependents {
		if err := checkDependency(d.dependent, info.Name, d.constraint, info.Version); err != nil {
			return wrapError(err, codeIncompatibleVersion, info.Name,
				"loaded plugin %q needs %s, so version %s would break it", d.dependent, d.constraint, info.Version)
		}
	}
	return nil
}

// swapTo makes ng the serving generation, with a clean breaker and health
// status, under healthMu: a health check of the old plugin that finishes
// meanwhile is not booked on the new one (see checkHealth). A status reset
// sends EventHealthChanged, as a breaker reset sends its event.
func (e *entry[Req, Resp]) swapTo(ng *generation[Req, Resp]) {
	e.healthMu.Lock()
	defer e.healthMu.Unlock()
	e.brk.mu.Lock()
	e.brk.transition(BreakerClosed)
	e.brk.consecutive.Store(0) // transition changes nothing when closed already
	e.brk.startWindow()
	e.brk.mu.Unlock()
	prev := e.healthState.Status
	e.healthState = HealthReport{}
	e.unhealthy.Store(false)
	e.gen.Store(ng)
	if prev != HealthUnknown {
		e.m.emit(Event{Kind: EventHealthChanged, Plugin: e.name, Health: HealthUnknown})
	}
}

// mergeCancel returns a ctx that also ends, with ErrClosed as its
// cause, when also (the manager's closing ctx) ends.
func mergeCancel(ctx, also context.Context) (context.Context, context.CancelFunc) {
	merged, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(also, func() {
		cancel(newError(codeClosed, "", "the manager is shutting down"))
	})
	return merged, func() {
		stop()
		cancel(nil)
	}
}
