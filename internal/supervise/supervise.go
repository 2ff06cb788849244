// Package supervise restarts plugin child processes, for both transports,
// with crash-loop semantics like Kubernetes' CrashLoopBackOff: the wait
// before a restart doubles with each consecutive crash up to a cap, and the
// count of consecutive crashes starts again only once a child has stayed up
// for a minimum uptime, whether or not it served a call.
package supervise

import (
	"context"
	"time"
)

// Policy says how a crashed child is restarted. Its zero fields are not
// defaults: the transports fill them in.
type Policy struct {
	// MaxAttempts is how many consecutive restart attempts are made before
	// the child is left down: 0 means no limit, < 0 never restart.
	MaxAttempts int
	// Backoff is the wait before the first attempt after a crash; the n-th
	// consecutive attempt waits Backoff·2ⁿ⁻¹, at most MaxBackoff.
	Backoff, MaxBackoff time.Duration
	// MinUptime is how long a child must stay up for its crash not to count
	// as consecutive with the ones before.
	MinUptime time.Duration
}

// Delay returns the wait before consecutive attempt n (from 1).
func (p Policy) Delay(n int) time.Duration {
	wait := p.Backoff << min(n-1, 32)
	if wait <= 0 || wait > p.MaxBackoff {
		wait = p.MaxBackoff
	}
	return wait
}

// Child is a running child as the supervisor sees it.
type Child interface {
	// Wait blocks until the child has ended, releases what it held and
	// returns why it ended, or returns early when ctx ends.
	Wait(ctx context.Context) error
}

// Kind says what an Event reports.
type Kind int

// Event kinds.
const (
	Crashed       Kind = iota + 1 // the child ended; Err says why
	Restarted                     // a new child serves
	RestartFailed                 // an attempt failed; Err says why
	LeftDown                      // no more attempts are made; Err is the last failure
)

// Event reports a step of the supervision.
type Event struct {
	Kind Kind
	// Attempt is the consecutive attempt (from 1) of Restarted and
	// RestartFailed, and the number of attempts made for Crashed and
	// LeftDown.
	Attempt int
	Err     error
}

// Clock is the time source; nil means the real clock.
type Clock interface {
	Now() time.Time
	After(time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Config is what Run needs.
type Config struct {
	Policy Policy
	// Start starts a new child and makes it the serving one; it is called
	// on Run's goroutine.
	Start func(ctx context.Context) (Child, error)
	// Event, when set, is called on Run's goroutine for every event.
	Event func(Event)
	Clock Clock
}

// Run supervises child, started at the time Run is called, and every child
// that replaces it, until ctx ends (then it returns nil) or the policy
// leaves the child down (then it returns the last failure). A child that
// ends is reaped, then replaced after the policy's backoff.
func Run(ctx context.Context, cfg Config, child Child) error {
	clk := cfg.Clock
	if clk == nil {
		clk = realClock{}
	}
	emit := func(ev Event) {
		if cfg.Event != nil {
			cfg.Event(ev)
		}
	}
	attempt, up := 0, clk.Now()
	for {
		reason := child.Wait(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if clk.Now().Sub(up) >= cfg.Policy.MinUptime {
			attempt = 0
		}
		emit(Event{Kind: Crashed, Attempt: attempt, Err: reason})
		for {
			if max := cfg.Policy.MaxAttempts; max < 0 || max > 0 && attempt >= max {
				emit(Event{Kind: LeftDown, Attempt: attempt, Err: reason})
				return reason
			}
			attempt++
			select {
			case <-clk.After(cfg.Policy.Delay(attempt)):
			case <-ctx.Done():
			}
			if ctx.Err() != nil {
				return nil
			}
			c, err := cfg.Start(ctx)
			if err == nil {
				child, up = c, clk.Now()
				emit(Event{Kind: Restarted, Attempt: attempt})
				break
			}
			reason = err
			emit(Event{Kind: RestartFailed, Attempt: attempt, Err: err})
		}
	}
}
