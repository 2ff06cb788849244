package goplugins

import (
	"context"
	"errors"
	"fmt"
	"slices"
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
// this long (or until their own ctx ends). Default 10s.
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
	Plugin   string
	From, To string // versions
	// Generation is the generation serving after the reload (unchanged
	// when it failed).
	Generation uint64
	// Steps lists the kinds whose transfer completed, in order.
	Steps []Surface
	// Phase timings.
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
	CloseErr error
}

// ReloadError is the error of a failed reload. It matches ErrReloadFailed,
// and also ErrDrainTimeout, ErrSchemaIncompatible or ErrIncompatibleVersion
// when that was the cause. The old plugin serves on: Handed keeps what was
// persisted or checkpointed before the failure, so nothing is lost.
type ReloadError struct {
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

	coded error
}

func (e *ReloadError) Error() string {
	where := e.Phase
	if e.Kind != "" {
		where = fmt.Sprintf("%s (%s %s)", e.Phase, e.Kind, e.Step)
	}
	msg := fmt.Sprintf("%s: reload of plugin %q failed in %s: %v; the old version keeps serving", e.coded, e.Plugin, where, e.Err)
	if e.RollbackErr != nil {
		msg += fmt.Sprintf("; rollback also failed: %v", e.RollbackErr)
	}
	return msg
}

// Unwrap returns the coded errors and the cause, for errors.Is and errors.As.
func (e *ReloadError) Unwrap() []error {
	errs := []error{e.coded, e.Err}
	if e.RollbackErr != nil {
		errs = append(errs, e.RollbackErr)
	}
	return errs
}

// Reload hot-swaps the named plugin for next, without dropping a call: see
// the phases and kinds in ReloadDispatcher. Reloads of one plugin are
// serialized; reloads of different plugins run in parallel. Unregister
// waits for a running reload to end; Shutdown aborts it (it rolls back).
//
// On success the old plugin is closed and the report says what happened.
// On failure the error is a *ReloadError, the old plugin serves on with its
// state, and next is not closed: the caller still owns it.
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
	ctx, stop := mergeCancel(ctx, m.closing)
	defer stop()
	if err := e.lock(ctx); err != nil {
		return rep, err
	}
	defer e.unlock()
	old := e.gen.Load()
	if old == nil {
		return rep, m.missing(name)
	}
	rep.From, rep.Generation = old.info.Version, old.id

	fail := func(phase string, code goerrors.ErrorCode, err error, h *Handoff, undoErr error) (ReloadReport, error) {
		rep.Total = time.Since(began)
		re := &ReloadError{Plugin: name, Phase: phase, Err: err, RollbackErr: undoErr, Report: rep,
			coded: newError(CodeReloadFailed, name, "reload failed in %s", phase)}
		if code != "" {
			re.coded = errors.Join(re.coded, newError(code, name, "reload failed in %s", phase))
		}
		var se *stepError
		if errors.As(err, &se) {
			re.Kind, re.Step = se.kind, se.step
		}
		if h != nil {
			re.Handed = h.recorded()
			re.Report.Handed = re.Handed
		}
		m.cfg.logger.Warn("goplugins: reload failed", "plugin", name, "phase", phase, "error", err)
		m.emit(Event{Kind: EventReloadFailed, Plugin: name, Version: old.info.Version, Err: re, Reload: &re.Report})
		return re.Report, re
	}

	// Phase 1: preflight. Nothing is touched.
	if next == nil {
		return fail("preflight", CodeInvalidPlugin, errors.New("next plugin is nil"), nil, nil)
	}
	info, err := pluginInfo(next)
	if err != nil {
		return fail("preflight", ErrorCode(err), err, nil, nil)
	}
	rep.To = info.Version
	if info.Name != name {
		return fail("preflight", CodeInvalidPlugin, fmt.Errorf("the next plugin is named %q, not %q", info.Name, name), nil, nil)
	}
	if err := m.checkReloadVersion(info, cfg.dependents); err != nil {
		return fail("preflight", ErrorCode(err), err, nil, nil)
	}
	h := &Handoff{Plugin: name, Old: old.plugin, Next: next, OldInfo: old.info, NextInfo: info}
	plan, err := m.cfg.dispatcher.plan(h, cfg.host)
	if err != nil {
		return fail("preflight", "", err, h, nil)
	}
	if err := preflight(ctx, plan, h); err != nil {
		return fail("preflight", ErrorCode(err), err, h, nil)
	}
	rep.Preflight = time.Since(began)

	// Phase 2: drain. New calls park on the gate; calls in flight finish.
	pause, cancelPause := context.WithTimeout(ctx, cfg.drain)
	defer cancelPause()
	gt := newGate()
	old.gate.Store(gt)
	resume := func() { // abort: the old plugin serves the parked calls
		old.gate.Store(nil)
		gt.open()
	}
	t := time.Now()
	if err := old.drain(pause); err != nil {
		resume()
		if ctx.Err() == nil {
			err = fmt.Errorf("%d call(s) still running after the drain timeout of %v: %w", old.inFlight(), cfg.drain, err)
			return fail("drain", CodeDrainTimeout, err, h, nil)
		}
		return fail("drain", "", context.Cause(ctx), h, nil)
	}
	rep.Drain = time.Since(t)

	// Phase 3: dispatch the handoffs.
	t = time.Now()
	steps, err, undoErr := dispatch(pause, plan, h, m.cfg.plugin.health.Timeout+cfg.drain)
	rep.Steps, rep.Dispatch = steps, time.Since(t)
	if err != nil {
		resume()
		if pause.Err() != nil && ctx.Err() == nil {
			err = fmt.Errorf("handoffs did not finish within the drain timeout of %v: %w", cfg.drain, err)
		}
		return fail("dispatch", ErrorCode(err), err, h, undoErr)
	}

	// Phase 4: commit.
	t = time.Now()
	e.genSeq++
	ng := newGeneration(next, info, e.genSeq)
	e.ctr.retiredStarted.Add(old.startedCalls())
	e.ctr.retiredCalls.Add(old.calls())
	e.resetState()
	e.gen.Store(ng)
	gt.open()
	rep.Commit = time.Since(t)
	rep.Generation = ng.id
	rep.Handed = h.recorded()
	for _, b := range rep.Handed {
		rep.BytesHandedOver += len(b)
	}
	parked, gaveUp := gt.parkTimes()
	rep.ParkedCalls, rep.GaveUp = len(parked), gaveUp
	if len(parked) > 0 {
		slices.Sort(parked)
		rep.ParkP50 = parked[len(parked)/2]
		rep.ParkP99 = parked[(len(parked)*99)/100]
		rep.ParkMax = parked[len(parked)-1]
	}
	rep.CloseErr = old.close(context.WithoutCancel(ctx), name)
	rep.Total = time.Since(began)
	m.cfg.logger.Info("goplugins: plugin reloaded", "plugin", name, "from", rep.From, "to", rep.To,
		"parked", rep.ParkedCalls, "pause", rep.Drain+rep.Dispatch+rep.Commit)
	m.emit(Event{Kind: EventReloaded, Plugin: name, Version: info.Version, Reload: &rep})
	return rep, nil
}

// checkReloadVersion applies the version policy and dependents' constraints.
func (m *Manager[Req, Resp]) checkReloadVersion(info PluginInfo, dependents []dependentConstraint) error {
	if m.cfg.policy != nil {
		if err := m.cfg.policy.CheckPlugin(info.Name, info.Version); err != nil {
			return err
		}
	}
	for _, d := range dependents {
		if err := CheckDependency(d.dependent, info.Name, d.constraint, info.Version); err != nil {
			return wrapError(err, CodeIncompatibleVersion, info.Name,
				"loaded plugin %q needs %s, so version %s would break it", d.dependent, d.constraint, info.Version)
		}
	}
	return nil
}

// resetState gives a new generation a clean breaker and health status.
func (e *entry[Req, Resp]) resetState() {
	e.brk.mu.Lock()
	e.brk.transition(BreakerClosed)
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
