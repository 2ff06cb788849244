package goplugins

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Handoff moves one reload surface from the old plugin to the next. Its
// steps say "stop, move, start": after the drain, every surface's Prepare
// runs (stop: the old plugin's stream stops at a checkpoint), then every
// Transfer (move: state goes from old to next), then every Resume (start:
// the next plugin's stream starts). So the state moved is the state the
// old plugin had when its stream stopped, and the next plugin resumes
// exactly after it.
//
// Each step, if set, returns an undo that puts the old plugin back as it
// was; on a failure (a step's error or panic, the drain timeout, the
// reload's ctx ending, even after the last step) the undos run in reverse
// order, every one even if one fails, bounded by the drain timeout plus
// the plugin's health-check timeout even after ctx has ended. On error a
// step returns the undo for what it did before failing, or nil. A step's
// ctx ends at the drain timeout or with the reload's ctx.
type Handoff struct {
	// Surface names the handoff. For handoffs registered with a
	// dispatcher it is the surface a plugin declares in PluginInfo.Surfaces.
	Surface Surface
	// Preflight, if set, runs before any traffic is touched. An error (or a
	// panic) stops the reload with nothing changed.
	Preflight func(ctx context.Context, s *Swap) error
	// Prepare, Transfer and Resume are the stop, move and start steps.
	Prepare, Transfer, Resume func(ctx context.Context, s *Swap) (undo func(context.Context) error, err error)
}

// Swap is what a handoff sees of one reload.
type Swap struct {
	// Plugin is the plugin's name.
	Plugin string
	// Old and Next are the plugin values (the Plugin[Req, Resp] values,
	// typed any so that handoffs work for every manager).
	Old, Next any
	// OldInfo and NextInfo are their infos.
	OldInfo, NextInfo PluginInfo

	mu     sync.Mutex
	handed map[Surface][]byte
	// streamMoved: the next plugin resumed the stream, so its undo (stop
	// the next, then resume the old) replaces the prepare step's undo.
	streamMoved bool
}

// Record notes the bytes a handoff moved (persisted state, a checkpoint).
// They appear in the ReloadReport and, if the reload fails, in the
// ReloadError, so nothing is lost.
func (s *Swap) Record(surface Surface, data []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.handed == nil {
		s.handed = make(map[Surface][]byte)
	}
	s.handed[surface] = data
}

func (s *Swap) recorded() map[Surface][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return cloneHanded(s.handed)
}

// cloneHanded copies a map of handed-over bytes, the bytes included.
func cloneHanded(h map[Surface][]byte) map[Surface][]byte {
	out := make(map[Surface][]byte, len(h))
	for k, v := range h {
		out[k] = slices.Clone(v)
	}
	return out
}

// ReloadDispatcher holds the handoffs Manager.Reload runs for the surfaces
// plugins declare. The zero value is an empty table, without the built-in
// handoffs; NewReloadDispatcher returns one with the built-in handoffs
// (schema, state, stream), and Register adds the host's own. It is safe
// for concurrent use.
//
// The built-in handoffs:
//
//	surface  steps                                              undo
//	-------  -----                                              ----
//	schema   preflight: next CheckCompat(old info)              none: nothing changed yet
//	stream   prepare: old Checkpoint (its stream stops)         old Resume(position)
//	state    transfer: old PersistState -> next RestoreState    none: PersistState changes nothing
//	stream   resume: next Resume(position)                      next Checkpoint (stops it)
//
// A registered handoff runs when the next plugin declares its surface;
// host-owned handoffs (WithHandoff) always run, after the registered ones
// in each step. A surface the old plugin declares (schema included) must
// be declared by the next one too and have a handoff, or the reload is
// refused in preflight: what it holds would be lost, or its check skipped.
// The state and stream handoffs move nothing when the old plugin lacks the
// surface: the next plugin starts fresh.
type ReloadDispatcher struct {
	mu       sync.RWMutex
	handoffs []Handoff
}

// NewReloadDispatcher returns a dispatcher with the built-in handoffs.
func NewReloadDispatcher() *ReloadDispatcher {
	return &ReloadDispatcher{handoffs: []Handoff{schemaHandoff, stateHandoff, streamHandoff}}
}

// Register adds a handoff, run after the ones registered before it (in
// each step) for plugins whose next version declares h.Surface. A surface
// that is registered already is refused.
func (d *ReloadDispatcher) Register(h Handoff) error {
	if h.Surface == "" || (h.Preflight == nil && h.Prepare == nil && h.Transfer == nil && h.Resume == nil) {
		return newError(codeInvalidConfig, "", "a handoff needs a surface name and at least one step (Preflight, Prepare, Transfer or Resume)")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if slices.ContainsFunc(d.handoffs, func(x Handoff) bool { return x.Surface == h.Surface }) {
		return newError(codeInvalidConfig, "", "a handoff for surface %q is registered already", h.Surface)
	}
	d.handoffs = append(d.handoffs, h)
	return nil
}

// Surfaces returns the registered surfaces in the order they run.
func (d *ReloadDispatcher) Surfaces() []Surface {
	d.mu.RLock()
	defer d.mu.RUnlock()
	out := make([]Surface, len(d.handoffs))
	for i, h := range d.handoffs {
		out[i] = h.Surface
	}
	return out
}

// plan returns the handoffs that run for sw, registered ones first (in
// table order), then the host-owned ones, or an error if the next plugin
// drops a surface the old one has.
func (d *ReloadDispatcher) plan(sw *Swap, host []Handoff) ([]Handoff, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	has := func(s Surface) func(Handoff) bool { return func(h Handoff) bool { return h.Surface == s } }
	for _, s := range sw.OldInfo.Surfaces {
		if !sw.NextInfo.Has(s) {
			return nil, fmt.Errorf("the next version (%s) drops the %q surface of version %s, so its %s would be lost or skipped; declare it in the next version",
				sw.NextInfo.Version, s, sw.OldInfo.Version, s)
		}
		if !slices.ContainsFunc(d.handoffs, has(s)) {
			return nil, newError(codeInvalidConfig, sw.Plugin,
				"no handoff handles the %q surface the plugin declares, so its %s would be lost; register one with ReloadDispatcher.Register and pass the dispatcher with WithReloadDispatcher", s, s)
		}
	}
	var plan []Handoff
	for _, h := range d.handoffs {
		if sw.NextInfo.Has(h.Surface) {
			plan = append(plan, h)
		}
	}
	for i, h := range host {
		switch {
		case h.Surface == "":
			return nil, newError(codeInvalidConfig, sw.Plugin, "a host-owned handoff (WithHandoff) has no Surface; name it for reports and errors")
		case slices.ContainsFunc(d.handoffs, has(h.Surface)) || slices.ContainsFunc(host[:i], has(h.Surface)):
			return nil, newError(codeInvalidConfig, sw.Plugin, "the host-owned handoff %q reuses the name of another handoff; give it a name of its own", h.Surface)
		}
	}
	return append(plan, host...), nil
}

// stepError says which surface and step of a reload failed.
type stepError struct {
	surface Surface
	step    string
	err     error
}

func (e *stepError) Error() string { return fmt.Sprintf("%s %s: %v", e.surface, e.step, e.err) }
func (e *stepError) Unwrap() error { return e.err }

// runStep runs f as the named step of surface, turning a panic into an
// error matching ErrPanic; an error that names no step is named after it.
func runStep(surface Surface, step string, f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &stepError{surface, step, newError(codePanic, "",
				"the %s step of the %s handoff panicked (%v); the host recovered, but it has a bug to fix", step, surface, r)}
		}
	}()
	if err = f(); err != nil && !errors.As(err, new(*stepError)) {
		err = &stepError{surface, step, err}
	}
	return err
}

// preflight runs the plan's preflight checks.
func preflight(ctx context.Context, plan []Handoff, sw *Swap) error {
	for _, h := range plan {
		if h.Preflight != nil {
			if err := runStep(h.Surface, "preflight", func() error { return h.Preflight(ctx, sw) }); err != nil {
				return err
			}
		}
	}
	return nil
}

// dispatch runs the plan's steps: every Prepare, then every Transfer, then
// every Resume. When they all succeed it asks claim whether the reload may
// commit; if ctx has ended or claim refuses, that is a failure too. On
// failure it runs the undos gathered so far in reverse, bounded by
// rollbackTimeout even if ctx is done, and returns the surfaces whose steps
// all completed, the step's error and the first undo error.
func dispatch(ctx context.Context, plan []Handoff, sw *Swap, rollbackTimeout time.Duration, claim func() bool) (done []Surface, err, undoErr error) {
	type stepFn = func(context.Context, *Swap) (func(context.Context) error, error)
	steps := []struct {
		name string
		fn   func(Handoff) stepFn
	}{
		{"prepare", func(h Handoff) stepFn { return h.Prepare }},
		{"transfer", func(h Handoff) stepFn { return h.Transfer }},
		{"resume", func(h Handoff) stepFn { return h.Resume }},
	}
	var undos []func(context.Context) error
run:
	for _, st := range steps {
		for _, h := range plan {
			f := st.fn(h)
			if f == nil {
				continue
			}
			if ctx.Err() != nil {
				err = &stepError{h.Surface, st.name, context.Cause(ctx)}
				break run
			}
			var undo func(context.Context) error
			err = runStep(h.Surface, st.name, func() (e error) {
				undo, e = f(ctx, sw)
				return e
			})
			if undo != nil {
				undos = append(undos, undo)
			}
			if err != nil {
				break run
			}
		}
	}
	if err == nil && (ctx.Err() != nil || !claim()) {
		// The last step finished but ctx ended (or the parked calls were
		// released meanwhile): the reload must not commit, and the undos
		// are still at hand.
		err = fmt.Errorf("ctx ended after the handoffs, before the commit: %w", context.Cause(ctx))
	}
	if err == nil {
		for _, h := range plan {
			if h.Prepare != nil || h.Transfer != nil || h.Resume != nil {
				done = append(done, h.Surface)
			}
		}
		return done, nil, nil
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
	defer cancel()
	for i := len(undos) - 1; i >= 0; i-- {
		if e := runStep("", "undo", func() error { return undos[i](rctx) }); e != nil && undoErr == nil {
			undoErr = e
		}
	}
	return nil, err, undoErr
}

var schemaHandoff = Handoff{
	Surface: SurfaceSchema,
	Preflight: func(ctx context.Context, sw *Swap) error {
		next, ok := sw.Next.(SchemaPlugin)
		if !ok {
			return fmt.Errorf("the next plugin declares the schema surface but has no CheckCompat method")
		}
		return runStep(SurfaceSchema, "preflight", func() error {
			if err := next.CheckCompat(ctx, sw.OldInfo); err != nil {
				return wrapError(err, codeSchemaIncompatible, sw.Plugin,
					"version %s refuses to take over from %s", sw.NextInfo.Version, sw.OldInfo.Version)
			}
			return nil
		})
	},
}

var stateHandoff = Handoff{
	Surface: SurfaceState,
	Preflight: func(_ context.Context, sw *Swap) error {
		return needBoth[StatefulPlugin](sw, SurfaceState, "PersistState and RestoreState")
	},
	Transfer: func(ctx context.Context, sw *Swap) (func(context.Context) error, error) {
		if !sw.OldInfo.Has(SurfaceState) {
			return nil, nil // nothing to hand over: the next plugin starts fresh
		}
		var data []byte
		if err := runStep(SurfaceState, "persist", func() (err error) {
			data, err = sw.Old.(StatefulPlugin).PersistState(ctx)
			return err
		}); err != nil {
			return nil, err
		}
		sw.Record(SurfaceState, data)
		// PersistState leaves the old plugin's state as it was: no undo.
		return nil, runStep(SurfaceState, "restore", func() error {
			return sw.Next.(StatefulPlugin).RestoreState(ctx, data)
		})
	},
}

var streamHandoff = Handoff{
	Surface: SurfaceStream,
	Preflight: func(_ context.Context, sw *Swap) error {
		return needBoth[StreamPlugin](sw, SurfaceStream, "Checkpoint and Resume")
	},
	Prepare: func(ctx context.Context, sw *Swap) (func(context.Context) error, error) {
		if !sw.OldInfo.Has(SurfaceStream) {
			return nil, nil
		}
		old := sw.Old.(StreamPlugin)
		var pos []byte
		if err := runStep(SurfaceStream, "checkpoint", func() (err error) {
			pos, err = old.Checkpoint(ctx)
			return err
		}); err != nil {
			return nil, err
		}
		sw.Record(SurfaceStream, pos)
		return func(ctx context.Context) error {
			sw.mu.Lock()
			moved := sw.streamMoved
			sw.mu.Unlock()
			if moved { // the resume step's undo resumes the old plugin
				return nil
			}
			return old.Resume(ctx, pos)
		}, nil
	},
	Resume: func(ctx context.Context, sw *Swap) (func(context.Context) error, error) {
		if !sw.OldInfo.Has(SurfaceStream) {
			return nil, nil // nothing to hand over: the next plugin starts its own stream
		}
		pos := sw.recorded()[SurfaceStream]
		next := sw.Next.(StreamPlugin)
		if err := runStep(SurfaceStream, "resume", func() error { return next.Resume(ctx, pos) }); err != nil {
			return nil, err
		}
		sw.mu.Lock()
		sw.streamMoved = true
		sw.mu.Unlock()
		// Undo: stop the next plugin's stream first, then resume the old
		// one, so that the stream is never processed by both. If the next
		// cannot be stopped, the old plugin stays stopped and the rollback
		// error says why.
		return func(ctx context.Context) error {
			if _, err := next.Checkpoint(ctx); err != nil {
				return fmt.Errorf("stopping the next plugin's stream: %w", err)
			}
			return sw.Old.(StreamPlugin).Resume(ctx, pos)
		}, nil
	},
}

// needBoth checks that the plugins declaring surface s implement T.
func needBoth[T any](sw *Swap, s Surface, methods string) error {
	if _, ok := sw.Next.(T); !ok {
		return fmt.Errorf("the next plugin declares the %s surface but lacks %s", s, methods)
	}
	if _, ok := sw.Old.(T); sw.OldInfo.Has(s) && !ok {
		return fmt.Errorf("the old plugin declares the %s surface but lacks %s", s, methods)
	}
	return nil
}
