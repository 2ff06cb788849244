package goplugins

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"time"

	goerrors "github.com/agilira/go-errors"
)

// ReloadOption configures one Reload.
type ReloadOption interface{ applyReload(*reloadConfig) }

type reloadConfig struct {
	drain      time.Duration
	host       []ReloadKind
	dependents []dependentConstraint
}

type dependentConstraint struct{ dependent, constraint string }

type reloadOption func(*reloadConfig)

func (f reloadOption) applyReload(c *reloadConfig) { f(c) }

// DrainOption is both an Option (the manager's default) and a ReloadOption
// (for one reload).
type DrainOption interface {
	Option
	ReloadOption
}

type drainOption time.Duration

func (d drainOption) applyManager(c *managerConfig) { c.drain = time.Duration(d) }
func (d drainOption) applyReload(c *reloadConfig)   { c.drain = time.Duration(d) }

// WithDrainTimeout bounds how long a reload may pause the plugin's traffic:
// the wait for calls in flight plus the handoffs. Parked calls wait at most
// this long (plus the rollback, if the reload fails), or until their own ctx
// ends. Past it the reload fails with ErrDrainTimeout. Default 10s.
func WithDrainTimeout(d time.Duration) DrainOption {
	if d <= 0 {
		d = 10 * time.Second
	}
	return drainOption(d)
}

// WithHandoff adds a host-owned handoff (an open handle, a live stream) to
// one reload. It runs after the plugin's own kinds, with the same
// transfer-and-undo discipline; its Surface names it in reports and errors.
func WithHandoff(k ReloadKind) ReloadOption {
	return reloadOption(func(c *reloadConfig) { c.host = append(c.host, k) })
}

// WithDependentConstraint makes the reload's preflight check the next
// version against the constraint that a loaded dependent holds on the
// plugin. The DynamicLoader passes one for each loaded dependent.
func WithDependentConstraint(dependent, constraint string) ReloadOption {
	return reloadOption(func(c *reloadConfig) {
		c.dependents = append(c.dependents, dependentConstraint{dependent, constraint})
	})
}

// WithReloadDispatcher sets the table of reload kinds the manager uses
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
	// Steps lists the kinds whose transfer completed, in order (after a
	// failure, they were undone).
	Steps []Surface
	// Preflight, Drain, Dispatch and Commit time the phases that ran;
	// Total times the whole reload, including the wait for another reload
	// of the plugin to end. Drain+Dispatch+Commit is the traffic pause.
	Preflight, Drain, Dispatch, Commit, Total time.Duration
	// ParkedCalls is how many calls were parked and released; ParkP50,
	// ParkP99 and ParkMax describe how long they were parked.
	ParkedCalls               int
	ParkP50, ParkP99, ParkMax time.Duration
	// GaveUp counts parked calls whose own ctx ended before the release.
	GaveUp int
	// Handed holds the bytes each kind handed over; BytesHandedOver sums them.
	Handed          map[Surface][]byte
	BytesHandedOver int
	// CloseErr is the old plugin's Close error after a successful commit.
	// Close gets the plugin's health-check timeout (see HealthConfig).
	CloseErr error
}

// ReloadError is the error of a failed reload. It matches ErrReloadFailed,
// and also ErrDrainTimeout, ErrSchemaIncompatible, ErrIncompatibleVersion,
// ErrInvalidPlugin, ErrInvalidVersion or ErrShuttingDown when that was the
// cause, and the cause itself (a kind's error, ctx's error). The old plugin
// serves on: Handed keeps what was persisted or checkpointed before the
// failure, so nothing is lost.
type ReloadError struct {
	// Plugin is the name of the plugin whose reload failed.
	Plugin string
	// Phase is "preflight", "drain" or "dispatch".
	Phase string
	// Kind and Step name the failing step, when a kind failed (e.g.
	// "state", "restore").
	Kind Surface
	Step string
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
	fmt.Fprintf(&b, "[%s]: plugin %q: reload failed in %s", CodeReloadFailed, e.Plugin, e.Phase)
	cause := e.Err
	if se, ok := cause.(*stepError); ok {
		fmt.Fprintf(&b, " (%s %s)", se.kind, se.step)
		cause = se.err
	}
	fmt.Fprintf(&b, ": %v", cause)
	if len(e.Handed) > 0 {
		kinds := slices.Sorted(maps.Keys(e.Handed))
		b.WriteString("; handed over before the failure (kept in ReloadError.Handed):")
		for i, k := range kinds {
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

// Reload hot-swaps the named plugin for next, without dropping a call: see
// the phases and kinds in ReloadDispatcher. Reloads of one plugin are
// serialized; reloads of different plugins run in parallel.
//
// On success the old plugin is closed after its last call and the report
// says what happened; an EventReloaded carries it too. On failure the error
// is a *ReloadError (and an EventReloadFailed is sent), the old plugin
// serves on with its state, parked calls run on it, and next is not
// closed: the caller still owns it. Only a plugin that is not registered is
// reported otherwise, with ErrNotFound (or ErrShuttingDown after Shutdown).
//
// ctx bounds the whole reload, including the wait for another reload of
// the plugin to end; if it ends before the commit, the reload rolls back.
// Unregister and Shutdown while a reload runs: Unregister waits for the
// reload to end and then removes whichever version serves. Shutdown aborts
// the reload: it rolls back, returns a *ReloadError that also matches
// ErrShuttingDown, and Shutdown then closes the old plugin.
func (m *Manager[Req, Resp]) Reload(ctx context.Context, name string, next Plugin[Req, Resp], opts ...ReloadOption) (ReloadReport, error) {
	began := time.Now()
	rep := ReloadReport{Plugin: name}
	cfg := reloadConfig{drain: m.cfg.drain}
	for _, o := range opts {
		o.applyReload(&cfg)
	}
	e := m.reg.Load().entries[name]
	if e == nil {
		return rep, m.missing(name)
	}
	if g := e.gen.Load(); g != nil { // for a failure before the lock is taken
		rep.From, rep.Generation = g.info.Version, g.id
	}
	var (
		h  *Handoff
		gt *gate
	)
	fail := func(phase string, err, undoErr error, codes ...goerrors.ErrorCode) (ReloadReport, error) {
		rep.Total = time.Since(began)
		if gt != nil {
			rep.setParked(gt)
		}
		re := &ReloadError{Plugin: name, Phase: phase, Err: err, RollbackErr: undoErr,
			codes: []error{newError(CodeReloadFailed, name, "reload failed in %s", phase)}}
		for _, c := range codes {
			if c != "" && c != CodeReloadFailed {
				re.codes = append(re.codes, newError(c, name, "reload failed in %s", phase))
			}
		}
		if se := (*stepError)(nil); errors.As(err, &se) {
			re.Kind, re.Step = se.kind, se.step
		}
		if h != nil {
			rep.setHanded(h)
			re.Handed = rep.Handed
		}
		re.Report = rep
		m.cfg.logger.Warn("goplugins: reload failed", "plugin", name, "phase", phase, "error", re.Error())
		m.emit(Event{Kind: EventReloadFailed, Plugin: name, Version: rep.From, Err: re, Reload: &re.Report})
		return rep, re
	}

	ctx, stop := mergeCancel(ctx, m.closing)
	defer stop()
	if err := e.lock(ctx); err != nil {
		return fail("preflight", fmt.Errorf("another reload or Unregister of the plugin was still running: %w", context.Cause(ctx)), nil, ctxCode(ctx))
	}
	defer e.unlock()
	if ctx.Err() != nil { // the lock may win the race with a ctx that has ended
		return fail("preflight", context.Cause(ctx), nil, ctxCode(ctx))
	}
	old := e.gen.Load()
	if old == nil {
		return rep, m.missing(name)
	}
	rep.From, rep.Generation = old.info.Version, old.id

	// Phase 1: preflight. Nothing is touched.
	if next == nil {
		return fail("preflight", errors.New("the next plugin is nil"), nil, CodeInvalidPlugin)
	}
	if isSameValue(next, old.plugin) {
		return fail("preflight", errors.New("the next plugin is the value serving now; pass a new value (the old one is closed after the commit)"), nil, CodeInvalidPlugin)
	}
	info, err := pluginInfo(next)
	if err != nil {
		return fail("preflight", err, nil, CodeInvalidPlugin, ErrorCode(err))
	}
	rep.To = info.Version
	if info.Name != name {
		return fail("preflight", fmt.Errorf("the next plugin is named %q, not %q; reload a plugin of the same name", info.Name, name), nil, CodeInvalidPlugin)
	}
	if err := m.checkReloadVersion(info, cfg.dependents); err != nil {
		return fail("preflight", err, nil, ErrorCode(err))
	}
	h = &Handoff{Plugin: name, Old: old.plugin, Next: next, OldInfo: old.info, NextInfo: info}
	plan, err := m.cfg.dispatcher.plan(h, cfg.host)
	if err != nil {
		return fail("preflight", err, nil, ErrorCode(err))
	}
	if err := preflight(ctx, plan, h); err != nil {
		return fail("preflight", err, nil, ErrorCode(err))
	}
	rep.Preflight = time.Since(began)

	// Made before the pause, to keep the pause short.
	ng := newGeneration(next, info, e.genSeq+1)
	watchLifecycle(next, m.emit)

	// Phase 2: drain. New calls park on the gate; calls in flight finish.
	pause, cancelPause := context.WithTimeout(ctx, cfg.drain)
	defer cancelPause()
	gt = newGate()
	old.gate.Store(gt)
	resume := func() { // abort: the old plugin serves the parked calls
		old.gate.Store(nil)
		gt.open()
	}
	t := time.Now()
	if err := old.drain(pause); err != nil {
		resume()
		if ctx.Err() != nil {
			return fail("drain", context.Cause(ctx), nil, ctxCode(ctx))
		}
		err = fmt.Errorf("%d call(s) still running after the drain timeout of %v (raise it with WithDrainTimeout or find what keeps them): %w",
			old.inFlight(), cfg.drain, err)
		return fail("drain", err, nil, CodeDrainTimeout)
	}
	rep.Drain = time.Since(t)

	// Phase 3: dispatch the handoffs.
	t = time.Now()
	steps, err, undoErr := dispatch(pause, plan, h, e.cfg.health.Timeout+cfg.drain)
	rep.Steps, rep.Dispatch = steps, time.Since(t)
	if err != nil {
		resume()
		code := ErrorCode(err)
		switch {
		case ctx.Err() != nil:
			code = ctxCode(ctx)
		case pause.Err() != nil:
			err = fmt.Errorf("the handoffs did not finish within the drain timeout of %v: %w", cfg.drain, err)
			code = CodeDrainTimeout
		}
		return fail("dispatch", err, undoErr, code)
	}

	// Phase 4: commit.
	t = time.Now()
	e.genSeq = ng.id
	// The old generation is drained: its counts are final and carry over
	// with the swap, so Metrics never counts a call twice or not at all.
	ng.baseCalls = old.baseCalls + old.calls()
	ng.baseStarted = old.baseStarted + old.startedCalls()
	e.resetState()
	e.gen.Store(ng)
	gt.open()
	rep.Commit = time.Since(t)
	rep.Generation = ng.id
	rep.setHanded(h)
	rep.setParked(gt)
	closeCtx, cancelClose := context.WithTimeout(context.WithoutCancel(ctx), e.cfg.health.Timeout)
	rep.CloseErr = old.close(closeCtx, name)
	cancelClose()
	rep.Total = time.Since(began)
	m.cfg.logger.Info("goplugins: plugin reloaded", "plugin", name, "from", rep.From, "to", rep.To,
		"parked", rep.ParkedCalls, "pause", rep.Drain+rep.Dispatch+rep.Commit)
	m.emit(Event{Kind: EventReloaded, Plugin: name, Version: info.Version, Reload: &rep})
	return rep, nil
}

// isSameValue reports whether a and b are the same pointer. Other kinds of
// values are never reported the same: comparing them could panic.
func isSameValue(a, b any) bool {
	t := reflect.TypeOf(a)
	return t != nil && t.Kind() == reflect.Pointer && t == reflect.TypeOf(b) && a == b
}

// setHanded fills in what the kinds handed over.
func (r *ReloadReport) setHanded(h *Handoff) {
	r.Handed = h.recorded()
	r.BytesHandedOver = 0
	for _, b := range r.Handed {
		r.BytesHandedOver += len(b)
	}
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

// ctxCode returns the library code of the reason ctx ended (CodeShuttingDown
// when Shutdown aborted the reload), or "".
func ctxCode(ctx context.Context) goerrors.ErrorCode { return ErrorCode(context.Cause(ctx)) }

// checkReloadVersion applies the version policy and dependents' constraints.
func (m *Manager[Req, Resp]) checkReloadVersion(info PluginInfo, dependents []dependentConstraint) error {
	if m.cfg.policy != nil {
		if err := m.cfg.policy.CheckPlugin(info.Name, info.Version); err != nil {
			return err
		}
	}
	for _, d := range dependents {
		if err := checkDependency(d.dependent, info.Name, d.constraint, info.Version); err != nil {
			return wrapError(err, CodeIncompatibleVersion, info.Name,
				"loaded plugin %q needs %s, so version %s would break it", d.dependent, d.constraint, info.Version)
		}
	}
	return nil
}

// resetState gives a new generation a clean breaker and health status:
// closed, with no failures counted (transition changes nothing when the
// breaker is closed already, so the count is reset here).
func (e *entry[Req, Resp]) resetState() {
	e.brk.mu.Lock()
	e.brk.transition(BreakerClosed)
	e.brk.consecutive.Store(0)
	e.brk.startWindow()
	e.brk.mu.Unlock()
	e.healthMu.Lock()
	e.healthState = HealthReport{}
	e.unhealthy.Store(false)
	e.healthMu.Unlock()
}

// mergeCancel returns a ctx that also ends, with ErrShuttingDown as its
// cause, when also (the manager's closing ctx) ends.
func mergeCancel(ctx, also context.Context) (context.Context, context.CancelFunc) {
	merged, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(also, func() {
		cancel(newError(CodeShuttingDown, "", "the manager is shutting down"))
	})
	return merged, func() {
		stop()
		cancel(nil)
	}
}
