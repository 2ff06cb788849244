package goplugins

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// ReloadKind is one kind of handoff between an old and a next plugin.
type ReloadKind struct {
	// Surface names the kind. For kinds registered with a dispatcher it is
	// the surface a plugin declares in PluginInfo.Surfaces.
	Surface Surface
	// Preflight, if set, runs before any traffic is touched. An error (or a
	// panic) stops the reload with nothing changed.
	Preflight func(ctx context.Context, h *Handoff) error
	// Transfer, if set, runs after the old plugin is drained; its ctx ends
	// at the drain timeout or with the reload's ctx. It returns an undo that
	// puts the old plugin back as it was, run (in reverse order with the
	// other kinds' undos) if this or a later step fails, or if the reload's
	// ctx ends before the commit. On error Transfer returns the undo for
	// what it did before failing, or nil. A panic counts as an error. Undos
	// run even after ctx has ended, bounded by the drain timeout plus the
	// plugin's health-check timeout; every undo runs even if one fails.
	Transfer func(ctx context.Context, h *Handoff) (undo func(context.Context) error, err error)
}

// Handoff is what a kind sees of one reload.
type Handoff struct {
	// Plugin is the plugin's name.
	Plugin string
	// Old and Next are the plugin values (the Plugin[Req, Resp] values,
	// typed any so that kinds work for every manager).
	Old, Next any
	// OldInfo and NextInfo are their infos.
	OldInfo, NextInfo PluginInfo

	mu     sync.Mutex
	handed map[Surface][]byte
}

// Record notes the bytes a kind handed over (persisted state, a
// checkpoint). They appear in the ReloadReport and, if the reload fails, in
// the ReloadError, so nothing is lost.
func (h *Handoff) Record(kind Surface, data []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.handed == nil {
		h.handed = make(map[Surface][]byte)
	}
	h.handed[kind] = data
}

func (h *Handoff) recorded() map[Surface][]byte {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[Surface][]byte, len(h.handed))
	for k, v := range h.handed {
		out[k] = v
	}
	return out
}

// ReloadDispatcher holds the table of reload kinds: the handoffs that
// Manager.Reload runs between drain and commit. The zero value is an
// empty table, without the built-in kinds; NewReloadDispatcher returns one
// with the built-in kinds (schema, state, stream), and Register adds the
// host's own. It is safe for
// concurrent use.
//
// Manager.Reload swaps a plugin in four phases:
//
//  1. Preflight, with no traffic touched: the next plugin is not nil, has
//     the same name and a strict-semver version that passes the manager's
//     VersionPolicy and the constraints loaded dependents hold on the
//     plugin (WithDependentConstraint); it keeps every surface of the old
//     plugin; every kind's Preflight passes (schema runs CheckCompat here).
//     Failure: nothing changed.
//  2. Drain: new calls are parked, each bounded by its own ctx; calls in
//     flight on the old plugin finish. Failure (drain timeout, ctx ended):
//     the parked calls are released to the old plugin.
//  3. Dispatch: each kind's Transfer runs, in the order below, and returns
//     an undo. Failure (a step fails or panics, the drain timeout passes, or
//     ctx ends, even after the last step): the undos run in reverse, the
//     old plugin serves on with its state, the parked calls run on it, and
//     the ReloadError names the kind and step and carries what was
//     persisted or checkpointed.
//  4. Commit: one atomic swap; the generation number increases; parked
//     calls run on the new plugin; the old one is closed (it has no call
//     left); a ReloadReport is returned and sent as EventReloaded.
//
// The drain timeout (WithDrainTimeout) bounds phases 2 and 3 together;
// after a failure the undos get another drain timeout plus the health
// timeout. A parked call waits at most that long, or until its ctx ends.
//
// The kinds, in the order they run:
//
//	kind        discipline                                        on failure
//	----        ----------                                        ----------
//	schema      preflight: new CheckCompat(old info), before      hard error, nothing changed
//	            any traffic is touched
//	state       old PersistState -> bytes -> new                  no undo needed: PersistState left
//	            RestoreState(bytes)                               the old plugin's state as it was
//	stream      old Checkpoint -> position (old stops) -> new     undo: the next plugin is stopped
//	            Resume(position)                                  (Checkpoint), then the old one
//	                                                              resumes from the same position
//	custom      kinds added with Register, for plugins whose      their own undo
//	            next version declares the surface
//	host-owned  resources the host owns (open handles, live       their own undo, same rules
//	            streams), passed per reload with WithHandoff
//
// A registered kind runs when the next plugin declares its surface;
// host-owned kinds always run. A surface the old plugin declares must be
// declared by the next one too and have a kind, or the reload is refused
// in preflight: what it holds would be lost. The state and stream kinds hand nothing over
// when the old plugin lacks the surface: the next plugin starts fresh.
type ReloadDispatcher struct {
	mu    sync.RWMutex
	kinds []ReloadKind
}

// NewReloadDispatcher returns a dispatcher with the built-in kinds.
func NewReloadDispatcher() *ReloadDispatcher {
	return &ReloadDispatcher{kinds: []ReloadKind{schemaKind, stateKind, streamKind}}
}

// Register adds a kind, run after the ones registered before it for
// plugins whose next version declares k.Surface. A surface that is
// registered already is refused.
func (d *ReloadDispatcher) Register(k ReloadKind) error {
	if k.Surface == "" || (k.Preflight == nil && k.Transfer == nil) {
		return newError(CodeInvalidConfig, "", "a reload kind needs a surface name and a Preflight or Transfer func")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if slices.ContainsFunc(d.kinds, func(x ReloadKind) bool { return x.Surface == k.Surface }) {
		return newError(CodeInvalidConfig, "", "reload kind %q is registered already", k.Surface)
	}
	d.kinds = append(d.kinds, k)
	return nil
}

// Kinds returns the registered surfaces in the order they run.
func (d *ReloadDispatcher) Kinds() []Surface {
	d.mu.RLock()
	defer d.mu.RUnlock()
	out := make([]Surface, len(d.kinds))
	for i, k := range d.kinds {
		out[i] = k.Surface
	}
	return out
}

// plan returns the kinds that run for h, registered ones first (in table
// order), then the host-owned ones, or an error if the next plugin drops a
// surface the old one has.
func (d *ReloadDispatcher) plan(h *Handoff, host []ReloadKind) ([]ReloadKind, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	for _, s := range h.OldInfo.Surfaces {
		if s == SurfaceSchema {
			continue
		}
		if !h.NextInfo.Has(s) {
			return nil, fmt.Errorf("the next version (%s) drops the %q surface of version %s, so its %s would be lost; declare it in the next version",
				h.NextInfo.Version, s, h.OldInfo.Version, s)
		}
		if !slices.ContainsFunc(d.kinds, func(k ReloadKind) bool { return k.Surface == s }) {
			return nil, newError(CodeInvalidConfig, h.Plugin,
				"no reload kind handles the %q surface the plugin declares, so its %s would be lost; register one with ReloadDispatcher.Register and pass the dispatcher with WithReloadDispatcher", s, s)
		}
	}
	var plan []ReloadKind
	for _, k := range d.kinds {
		if h.NextInfo.Has(k.Surface) {
			plan = append(plan, k)
		}
	}
	for i, k := range host {
		taken := func(x ReloadKind) bool { return x.Surface == k.Surface }
		switch {
		case k.Surface == "":
			return nil, newError(CodeInvalidConfig, h.Plugin, "a host-owned handoff (WithHandoff) has no Surface; name it for reports and errors")
		case slices.ContainsFunc(d.kinds, taken) || slices.ContainsFunc(host[:i], taken):
			return nil, newError(CodeInvalidConfig, h.Plugin, "the host-owned handoff %q reuses the name of another reload kind; give it a name of its own", k.Surface)
		}
	}
	return append(plan, host...), nil
}

// stepError says which kind and step of a reload failed.
type stepError struct {
	kind Surface
	step string
	err  error
}

func (e *stepError) Error() string { return fmt.Sprintf("%s %s: %v", e.kind, e.step, e.err) }
func (e *stepError) Unwrap() error { return e.err }

func failStep(kind Surface, step string, err error) error {
	return &stepError{kind: kind, step: step, err: err}
}

// preflight runs the plan's preflight checks.
func preflight(ctx context.Context, plan []ReloadKind, h *Handoff) error {
	for _, k := range plan {
		if k.Preflight == nil {
			continue
		}
		if err := callSafely(func() error { return k.Preflight(ctx, h) }); err != nil {
			return failStep(k.Surface, "preflight", err)
		}
	}
	return nil
}

// dispatch runs the plan's transfers. On failure it runs the undos gathered
// so far in reverse, bounded by rollbackTimeout even if ctx is done, and
// returns the step's error and the first undo error.
func dispatch(ctx context.Context, plan []ReloadKind, h *Handoff, rollbackTimeout time.Duration) (steps []Surface, err, undoErr error) {
	var undos []func(context.Context) error
	for _, k := range plan {
		if k.Transfer == nil {
			continue
		}
		if ctx.Err() != nil {
			err = failStep(k.Surface, "transfer", context.Cause(ctx))
			break
		}
		var undo func(context.Context) error
		err = callSafely(func() (e error) {
			undo, e = k.Transfer(ctx, h)
			return e
		})
		if undo != nil {
			undos = append(undos, undo)
		}
		if err != nil {
			if !errors.As(err, new(*stepError)) {
				err = failStep(k.Surface, "transfer", err)
			}
			break
		}
		steps = append(steps, k.Surface)
	}
	if err == nil && ctx.Err() != nil {
		// The last transfer finished but ctx ended: the reload must not
		// commit, and the undos are still at hand.
		err = fmt.Errorf("ctx ended after the handoffs, before the commit: %w", context.Cause(ctx))
	}
	if err == nil {
		return steps, nil, nil
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
	defer cancel()
	for i := len(undos) - 1; i >= 0; i-- {
		if e := callSafely(func() error { return undos[i](rctx) }); e != nil && undoErr == nil {
			undoErr = e
		}
	}
	return steps, err, undoErr
}

// callSafely runs f, turning a panic into an error matching ErrPanic.
func callSafely(f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = newError(CodePanic, "", "a reload kind panicked (%v); the host recovered, but the kind has a bug to fix", r)
		}
	}()
	return f()
}

var schemaKind = ReloadKind{
	Surface: SurfaceSchema,
	Preflight: func(ctx context.Context, h *Handoff) error {
		next, ok := h.Next.(SchemaPlugin)
		if !ok {
			return fmt.Errorf("the next plugin declares the schema surface but has no CheckCompat method")
		}
		if err := next.CheckCompat(ctx, h.OldInfo); err != nil {
			return wrapError(err, CodeSchemaIncompatible, h.Plugin,
				"version %s refuses to take over from %s", h.NextInfo.Version, h.OldInfo.Version)
		}
		return nil
	},
}

var stateKind = ReloadKind{
	Surface: SurfaceState,
	Preflight: func(_ context.Context, h *Handoff) error {
		return needBoth[StatefulPlugin](h, SurfaceState, "PersistState and RestoreState")
	},
	Transfer: func(ctx context.Context, h *Handoff) (func(context.Context) error, error) {
		if !h.OldInfo.Has(SurfaceState) {
			return nil, nil // nothing to hand over: the next plugin starts fresh
		}
		data, err := h.Old.(StatefulPlugin).PersistState(ctx)
		if err != nil {
			return nil, failStep(SurfaceState, "persist", err)
		}
		h.Record(SurfaceState, data)
		if err := h.Next.(StatefulPlugin).RestoreState(ctx, data); err != nil {
			return nil, failStep(SurfaceState, "restore", err)
		}
		// PersistState leaves the old plugin's state as it was: no undo.
		return nil, nil
	},
}

var streamKind = ReloadKind{
	Surface: SurfaceStream,
	Preflight: func(_ context.Context, h *Handoff) error {
		return needBoth[StreamPlugin](h, SurfaceStream, "Checkpoint and Resume")
	},
	Transfer: func(ctx context.Context, h *Handoff) (func(context.Context) error, error) {
		if !h.OldInfo.Has(SurfaceStream) {
			return nil, nil
		}
		old := h.Old.(StreamPlugin)
		pos, err := old.Checkpoint(ctx)
		if err != nil {
			return nil, failStep(SurfaceStream, "checkpoint", err)
		}
		h.Record(SurfaceStream, pos)
		resumeOld := func(ctx context.Context) error { return old.Resume(ctx, pos) }
		next := h.Next.(StreamPlugin)
		if err := next.Resume(ctx, pos); err != nil {
			return resumeOld, failStep(SurfaceStream, "resume", err)
		}
		// Undo after the next plugin resumed: stop it first, so that the
		// stream is never processed by both. If it cannot be stopped, the
		// old plugin stays stopped and the rollback error says why.
		return func(ctx context.Context) error {
			if _, err := next.Checkpoint(ctx); err != nil {
				return fmt.Errorf("stopping the next plugin's stream: %w", err)
			}
			return resumeOld(ctx)
		}, nil
	},
}

// needBoth checks that the plugins declaring surface s implement T.
func needBoth[T any](h *Handoff, s Surface, methods string) error {
	if _, ok := h.Next.(T); !ok {
		return fmt.Errorf("the next plugin declares the %s surface but lacks %s", s, methods)
	}
	if _, ok := h.Old.(T); h.OldInfo.Has(s) && !ok {
		return fmt.Errorf("the old plugin declares the %s surface but lacks %s", s, methods)
	}
	return nil
}
