package goplugins

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// BreakerState is the state of a plugin's circuit breaker.
type BreakerState int32

// Breaker states.
const (
	// BreakerClosed: calls flow; failures are counted.
	BreakerClosed BreakerState = iota
	// BreakerOpen: calls are rejected with ErrBreakerOpen until OpenTimeout
	// has passed.
	BreakerOpen
	// BreakerHalfOpen: up to HalfOpenProbes calls are let through; if all
	// succeed the breaker closes, if one fails it opens again.
	BreakerHalfOpen
)

// String returns "closed", "open" or "half-open".
func (s BreakerState) String() string {
	switch s {
	case BreakerClosed:
		return "closed"
	case BreakerOpen:
		return "open"
	case BreakerHalfOpen:
		return "half-open"
	}
	return "unknown"
}

// BreakerConfig configures a plugin's circuit breaker. The breaker opens when
// either trigger fires: ConsecutiveFailures failures in a row, or a failure
// rate of at least FailureRate over a window of Window once MinCalls calls
// were made in it. A success resets the consecutive count.
type BreakerConfig struct {
	// Disabled turns the breaker off: every call reaches the plugin.
	Disabled bool
	// ConsecutiveFailures opens the breaker after that many failures in a
	// row. Default 5; negative turns this trigger off.
	ConsecutiveFailures int
	// FailureRate (0 < r <= 1) opens the breaker when failures/calls in
	// the current window reach it. Default 0: this trigger is off.
	FailureRate float64
	// MinCalls is how many calls a window needs before FailureRate
	// applies. Default 20.
	MinCalls int
	// Window is the length of the (tumbling) window for FailureRate.
	// Default 10s.
	Window time.Duration
	// OpenTimeout is how long the breaker stays open before it lets
	// probes through. Default 5s.
	OpenTimeout time.Duration
	// HalfOpenProbes is how many calls may run at once while half-open,
	// and how many successes close the breaker. Default 1.
	HalfOpenProbes int
	// IsFailure decides which errors count as failures. Default: every
	// error except the caller's own ctx being cancelled or expiring. A
	// panic in IsFailure is recovered, logged, and counts as a failure.
	IsFailure func(error) bool
}

func (c BreakerConfig) withDefaults() BreakerConfig {
	if c.ConsecutiveFailures == 0 {
		c.ConsecutiveFailures = 5
	}
	if c.MinCalls <= 0 {
		c.MinCalls = 20
	}
	if c.Window <= 0 {
		c.Window = 10 * time.Second
	}
	if c.OpenTimeout <= 0 {
		c.OpenTimeout = 5 * time.Second
	}
	if c.HalfOpenProbes <= 0 {
		c.HalfOpenProbes = 1
	}
	c.FailureRate = min(max(c.FailureRate, 0), 1)
	return c
}

// breaker is a circuit breaker whose closed-state success path is two
// atomic loads. Transitions take mu. Times are durations since epoch, read
// from the monotonic clock: a wall-clock step does not move the open
// timeout.
type breaker struct {
	cfg      BreakerConfig
	now      func() time.Time
	calls    func() uint64 // calls made so far, for the failure-rate window
	onChange func(from, to BreakerState)
	onPanic  func(recovered any) // IsFailure panicked; may be nil

	state       atomic.Int32
	consecutive atomic.Int64
	// probes is the episode (high 32 bits), renewed at every transition,
	// and the probes running in it while half-open (low 32 bits): a probe
	// is booked only in the half-open episode that admitted it.
	probes    atomic.Uint64
	openUntil atomic.Int64 // since epoch, in nanoseconds

	mu             sync.Mutex
	epoch          time.Time
	probeSuccesses int
	windowStart    time.Time
	windowBase     uint64
	windowFailures int
}

// ticket records how a call was admitted, so its outcome is booked right.
type ticket struct {
	kind    ticketKind
	episode uint32 // for probes: the half-open episode that admitted it
}

type ticketKind uint8

const (
	ticketNormal ticketKind = iota
	ticketProbe
	ticketNone // breaker disabled
)

// allow admits a call or reports ErrBreakerOpen (as false).
func (b *breaker) allow() (ticket, bool) {
	if b.cfg.Disabled {
		return ticket{kind: ticketNone}, true
	}
	switch BreakerState(b.state.Load()) {
	case BreakerClosed:
		return ticket{}, true
	case BreakerOpen:
		if int64(b.now().Sub(b.epoch)) < b.openUntil.Load() {
			return ticket{}, false
		}
		b.mu.Lock()
		if BreakerState(b.state.Load()) == BreakerOpen {
			b.transition(BreakerHalfOpen)
		}
		b.mu.Unlock()
		return b.allow()
	default:
		for {
			v := b.probes.Load()
			if BreakerState(b.state.Load()) != BreakerHalfOpen {
				return b.allow()
			}
			if int(uint32(v)) >= b.cfg.HalfOpenProbes {
				return ticket{}, false
			}
			if b.probes.CompareAndSwap(v, v+1) {
				return ticket{kind: ticketProbe, episode: uint32(v >> 32)}, true
			}
		}
	}
}

// endProbe frees the slot of a probe of the current episode and reports
// whether it was one; a probe of an earlier episode has no slot any more.
func (b *breaker) endProbe(t ticket) bool {
	for {
		v := b.probes.Load()
		if uint32(v>>32) != t.episode {
			return false
		}
		if b.probes.CompareAndSwap(v, v-1) {
			return true
		}
	}
}

// release gives back an admission whose call never ran (it was parked).
func (b *breaker) release(t ticket) {
	if t.kind == ticketProbe {
		b.endProbe(t)
	}
}

// record books the outcome of an admitted call. callerCtx is the caller's
// ctx, used by the default failure classification.
func (b *breaker) record(callerCtx context.Context, t ticket, err error) {
	if t.kind == ticketNone {
		return
	}
	failed := err != nil && b.isFailure(callerCtx, err)
	if t.kind == ticketProbe {
		b.mu.Lock()
		current := b.endProbe(t) && BreakerState(b.state.Load()) == BreakerHalfOpen
		b.mu.Unlock()
		if current {
			b.recordProbe(callerCtx, failed, err)
			return
		}
		// The episode that admitted the probe is over: its outcome is an
		// ordinary call's in the state the breaker is in now.
	}
	if !failed {
		if b.consecutive.Load() != 0 {
			b.consecutive.Store(0)
		}
		return
	}
	n := b.consecutive.Add(1)
	b.mu.Lock()
	defer b.mu.Unlock()
	if BreakerState(b.state.Load()) != BreakerClosed {
		return
	}
	if b.cfg.ConsecutiveFailures > 0 && n >= int64(b.cfg.ConsecutiveFailures) {
		b.open()
		return
	}
	if b.cfg.FailureRate <= 0 {
		return
	}
	now, calls := b.now(), b.calls()
	if now.Sub(b.windowStart) >= b.cfg.Window {
		// The window rolls on a failure: it starts with this call.
		b.windowStart, b.windowBase, b.windowFailures = now, calls-1, 0
	}
	b.windowFailures++
	inWindow := calls - b.windowBase
	if inWindow >= uint64(b.cfg.MinCalls) && float64(b.windowFailures)/float64(inWindow) >= b.cfg.FailureRate {
		b.open()
	}
}

// recordProbe books a probe of the current half-open episode. A probe has
// three outcomes: a failure reopens, a success counts towards closing, and
// a probe the caller gave up on proves nothing: the breaker stays half-open.
func (b *breaker) recordProbe(callerCtx context.Context, failed bool, err error) {
	if !failed && err != nil && callerGaveUp(callerCtx, err) {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if BreakerState(b.state.Load()) != BreakerHalfOpen {
		return
	}
	if failed {
		b.open()
	} else if b.probeSuccesses++; b.probeSuccesses >= b.cfg.HalfOpenProbes {
		b.transition(BreakerClosed)
	}
}

// startWindow starts a failure-rate window now; it runs when the breaker is
// made and each time it closes.
func (b *breaker) startWindow() {
	if b.epoch.IsZero() {
		b.epoch = b.now()
	}
	b.windowStart, b.windowBase, b.windowFailures = b.now(), b.calls(), 0
}

// isFailure classifies a call's error (err is not nil).
func (b *breaker) isFailure(callerCtx context.Context, err error) bool {
	if b.cfg.IsFailure != nil {
		return b.userIsFailure(err)
	}
	return !callerGaveUp(callerCtx, err)
}

// userIsFailure calls the configured IsFailure; a panic counts as a failure.
func (b *breaker) userIsFailure(err error) (failed bool) {
	defer func() {
		if r := recover(); r != nil {
			failed = true
			if b.onPanic != nil {
				b.onPanic(r)
			}
		}
	}()
	return b.cfg.IsFailure(err)
}

// callerGaveUp reports whether err is the caller's own ctx ending.
func callerGaveUp(callerCtx context.Context, err error) bool {
	return callerCtx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded))
}

// open moves to BreakerOpen; mu is held.
func (b *breaker) open() {
	b.openUntil.Store(int64(b.now().Sub(b.epoch) + b.cfg.OpenTimeout))
	b.transition(BreakerOpen)
}

// transition changes state and resets the counters of the new state; mu is held.
func (b *breaker) transition(to BreakerState) {
	from := BreakerState(b.state.Load())
	if from == to {
		return
	}
	b.consecutive.Store(0)
	b.probeSuccesses = 0
	b.probes.Store((b.probes.Load()>>32 + 1) << 32) // a new episode, no probe
	if to == BreakerClosed {
		b.startWindow()
	}
	b.state.Store(int32(to))
	if b.onChange != nil {
		b.onChange(from, to)
	}
}
