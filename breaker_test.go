package goplugins

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fakeClock is a settable clock for the breaker.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

// TestBreakerTransitions drives the breaker's state machine step by step.
// Each step is an action and the state expected after it.
func TestBreakerTransitions(t *testing.T) {
	boom := errors.New("boom")
	type step struct {
		do      string // "ok", "fail", "cancel" (the caller's ctx ends), "wait", "reject" (allow must refuse), "probe" (admit and hold), "release-ok", "release-cancelled"
		want    BreakerState
		advance time.Duration
	}
	cases := []struct {
		name  string
		cfg   BreakerConfig
		steps []step
	}{
		{
			name: "consecutive failures open it",
			cfg:  BreakerConfig{ConsecutiveFailures: 3},
			steps: []step{
				{do: "fail", want: BreakerClosed},
				{do: "fail", want: BreakerClosed},
				{do: "fail", want: BreakerOpen},
				{do: "reject", want: BreakerOpen},
			},
		},
		{
			name: "a success resets the count",
			cfg:  BreakerConfig{ConsecutiveFailures: 3},
			steps: []step{
				{do: "fail", want: BreakerClosed},
				{do: "fail", want: BreakerClosed},
				{do: "ok", want: BreakerClosed},
				{do: "fail", want: BreakerClosed},
				{do: "fail", want: BreakerClosed},
				{do: "fail", want: BreakerOpen},
			},
		},
		{
			name: "half-open after the timeout, a successful probe closes",
			cfg:  BreakerConfig{ConsecutiveFailures: 1, OpenTimeout: time.Second},
			steps: []step{
				{do: "fail", want: BreakerOpen},
				{do: "wait", advance: 999 * time.Millisecond, want: BreakerOpen},
				{do: "reject", want: BreakerOpen},
				{do: "wait", advance: time.Millisecond, want: BreakerOpen},
				{do: "ok", want: BreakerClosed},
			},
		},
		{
			name: "a failed probe reopens for a fresh timeout",
			cfg:  BreakerConfig{ConsecutiveFailures: 1, OpenTimeout: time.Second},
			steps: []step{
				{do: "fail", want: BreakerOpen},
				{do: "wait", advance: time.Second, want: BreakerOpen},
				{do: "fail", want: BreakerOpen},
				{do: "wait", advance: 500 * time.Millisecond, want: BreakerOpen},
				{do: "reject", want: BreakerOpen},
				{do: "wait", advance: 500 * time.Millisecond, want: BreakerOpen},
				{do: "ok", want: BreakerClosed},
			},
		},
		{
			name: "half-open admits a bounded number of probes and needs all to succeed",
			cfg:  BreakerConfig{ConsecutiveFailures: 1, OpenTimeout: time.Second, HalfOpenProbes: 2},
			steps: []step{
				{do: "fail", want: BreakerOpen},
				{do: "wait", advance: time.Second, want: BreakerOpen},
				{do: "probe", want: BreakerHalfOpen},
				{do: "probe", want: BreakerHalfOpen},
				{do: "reject", want: BreakerHalfOpen},
				{do: "release-ok", want: BreakerHalfOpen},
				{do: "release-ok", want: BreakerClosed},
			},
		},
		{
			name: "a probe its caller cancelled proves nothing",
			cfg:  BreakerConfig{ConsecutiveFailures: 1, OpenTimeout: time.Second},
			steps: []step{
				{do: "fail", want: BreakerOpen},
				{do: "wait", advance: time.Second, want: BreakerOpen},
				{do: "cancel", want: BreakerHalfOpen},
				{do: "ok", want: BreakerClosed},
			},
		},
		{
			name: "a cancelled probe frees its slot",
			cfg:  BreakerConfig{ConsecutiveFailures: 1, OpenTimeout: time.Second},
			steps: []step{
				{do: "fail", want: BreakerOpen},
				{do: "wait", advance: time.Second, want: BreakerOpen},
				{do: "probe", want: BreakerHalfOpen},
				{do: "reject", want: BreakerHalfOpen},
				{do: "release-cancelled", want: BreakerHalfOpen},
				{do: "probe", want: BreakerHalfOpen},
				{do: "release-ok", want: BreakerClosed},
			},
		},
		{
			name: "a cancelled probe does not count towards closing",
			cfg:  BreakerConfig{ConsecutiveFailures: 1, OpenTimeout: time.Second, HalfOpenProbes: 2},
			steps: []step{
				{do: "fail", want: BreakerOpen},
				{do: "wait", advance: time.Second, want: BreakerOpen},
				{do: "ok", want: BreakerHalfOpen},
				{do: "cancel", want: BreakerHalfOpen},
				{do: "ok", want: BreakerClosed},
			},
		},
		{
			name: "failure rate over the window opens it",
			cfg:  BreakerConfig{ConsecutiveFailures: -1, FailureRate: 0.5, MinCalls: 4, Window: time.Minute},
			steps: []step{
				{do: "ok", want: BreakerClosed},
				{do: "fail", want: BreakerClosed},
				{do: "ok", want: BreakerClosed},
				{do: "fail", want: BreakerOpen}, // 2 of 4
			},
		},
		{
			name: "the rate needs MinCalls in the window",
			cfg:  BreakerConfig{ConsecutiveFailures: -1, FailureRate: 0.5, MinCalls: 10, Window: time.Minute},
			steps: []step{
				{do: "fail", want: BreakerClosed},
				{do: "fail", want: BreakerClosed},
				{do: "fail", want: BreakerClosed},
			},
		},
		{
			name: "a new window forgets old failures",
			cfg:  BreakerConfig{ConsecutiveFailures: -1, FailureRate: 0.5, MinCalls: 4, Window: time.Minute},
			steps: []step{
				{do: "fail", want: BreakerClosed},
				{do: "ok", want: BreakerClosed},
				{do: "wait", advance: time.Minute, want: BreakerClosed},
				{do: "ok", want: BreakerClosed},
				{do: "ok", want: BreakerClosed},
				{do: "ok", want: BreakerClosed},
				{do: "fail", want: BreakerClosed}, // 1 of 4 in this window
			},
		},
		{
			name: "disabled never opens",
			cfg:  BreakerConfig{Disabled: true, ConsecutiveFailures: 1},
			steps: []step{
				{do: "fail", want: BreakerClosed},
				{do: "fail", want: BreakerClosed},
				{do: "ok", want: BreakerClosed},
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clock := &fakeClock{t: time.Unix(1000, 0)}
			var calls uint64
			var changes []BreakerState
			b := &breaker{
				cfg:      tc.cfg.withDefaults(),
				now:      clock.now,
				calls:    func() uint64 { return calls },
				onChange: func(_, to BreakerState) { changes = append(changes, to) },
			}
			b.startWindow()
			var held []ticket
			ctx := context.Background()
			cancelled, cancel := context.WithCancel(ctx)
			cancel()
			for i, s := range tc.steps {
				switch s.do {
				case "ok", "fail":
					tk, ok := b.allow()
					require.True(t, ok, "step %d: call refused", i)
					calls++
					var err error
					if s.do == "fail" {
						err = boom
					}
					b.record(ctx, tk, err)
				case "probe":
					tk, ok := b.allow()
					require.True(t, ok, "step %d: probe refused", i)
					require.Equal(t, ticketProbe, tk.kind, "step %d", i)
					calls++
					held = append(held, tk)
				case "cancel":
					tk, ok := b.allow()
					require.True(t, ok, "step %d: call refused", i)
					calls++
					b.record(cancelled, tk, context.Canceled)
				case "release-ok", "release-cancelled":
					if s.do == "release-ok" {
						b.record(ctx, held[0], nil)
					} else {
						b.record(cancelled, held[0], context.Canceled)
					}
					held = held[1:]
				case "reject":
					_, ok := b.allow()
					require.False(t, ok, "step %d: call admitted", i)
				case "wait":
					clock.advance(s.advance)
				}
				require.Equal(t, s.want, BreakerState(b.state.Load()), "step %d (%s)", i, s.do)
			}
			if tc.cfg.Disabled {
				require.Empty(t, changes)
			}
		})
	}
}

// TestBreakerIgnoresCallerCancellation: a call cut short by the caller's own
// ctx says nothing about the plugin.
func TestBreakerIgnoresCallerCancellation(t *testing.T) {
	b := &breaker{cfg: BreakerConfig{ConsecutiveFailures: 1}.withDefaults(), now: time.Now, calls: func() uint64 { return 0 }}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	tk, _ := b.allow()
	b.record(ctx, tk, context.Canceled)
	require.Equal(t, BreakerClosed, BreakerState(b.state.Load()))
	tk, _ = b.allow()
	b.record(context.Background(), tk, context.DeadlineExceeded)
	require.Equal(t, BreakerOpen, BreakerState(b.state.Load()), "a deadline the caller did not set is a failure")
}

// TestBreakerIsFailurePanicIsContained: a panic in the user's IsFailure
// reaches neither the caller nor the in-flight count, and counts as a
// failure.
func TestBreakerIsFailurePanicIsContained(t *testing.T) {
	verifyNoLeaks(t)
	m := NewManager[int, int](WithPluginDefaults(WithHealthCheck(HealthConfig{Interval: -1}), WithBreaker(BreakerConfig{ConsecutiveFailures: 1, IsFailure: func(error) bool { panic("bad classifier") }})))
	defer m.Shutdown(context.Background())
	boom := errors.New("boom")
	require.NoError(t, m.Register(&scripted{name: "p", version: "1.0.0", exec: func(context.Context, int) (int, error) { return 0, boom }}))

	require.NotPanics(t, func() {
		_, err := m.Execute(context.Background(), "p", 1)
		require.ErrorIs(t, err, boom, "the plugin's error reaches the caller")
	})
	pm := m.Metrics().Plugins["p"]
	require.Zero(t, pm.InFlight, "the call is counted out")
	require.Equal(t, BreakerOpen, pm.Breaker, "the panic counted as a failure")
	_, err := m.Execute(context.Background(), "p", 1)
	require.ErrorIs(t, err, ErrBreakerOpen)
}

// TestBreakerProbeBookedInItsEpisode: a half-open probe is booked in the
// episode that admitted it. A late probe whose episode closed the breaker
// counts as an ordinary call (its failure is not dropped), and a probe of
// an earlier episode never frees a slot of a later one.
func TestBreakerProbeBookedInItsEpisode(t *testing.T) {
	boom := errors.New("boom")
	clock := &fakeClock{t: time.Unix(1000, 0)}
	b := &breaker{cfg: BreakerConfig{ConsecutiveFailures: 1, HalfOpenProbes: 2, OpenTimeout: time.Second}.withDefaults(),
		now: clock.now, calls: func() uint64 { return 0 }}
	b.startWindow()
	ctx := context.Background()
	open := func() {
		tk, _ := b.allow()
		b.record(ctx, tk, boom)
		require.Equal(t, BreakerOpen, BreakerState(b.state.Load()))
		clock.advance(time.Second)
	}
	open()
	p1, ok1 := b.allow()
	p2, ok2 := b.allow()
	require.True(t, ok1 && ok2)
	b.record(ctx, p1, nil)
	p3, ok3 := b.allow()
	require.True(t, ok3)
	b.record(ctx, p3, nil)
	require.Equal(t, BreakerClosed, BreakerState(b.state.Load()))
	b.record(ctx, p2, boom) // late: its episode closed the breaker
	require.Equal(t, BreakerOpen, BreakerState(b.state.Load()), "the late failure counts")

	clock.advance(time.Second)
	q1, ok := b.allow() // a new half-open episode
	require.True(t, ok)
	stale, _ := b.allow()
	b.record(ctx, q1, boom) // reopens
	clock.advance(time.Second)
	r1, ok1 := b.allow()
	r2, ok2 := b.allow()
	require.True(t, ok1 && ok2)
	b.release(stale) // a probe of the earlier episode
	_, ok = b.allow()
	require.False(t, ok, "the stale probe freed no slot of this episode")
	b.record(ctx, r1, nil)
	b.record(ctx, r2, nil)
	require.Equal(t, BreakerClosed, BreakerState(b.state.Load()))
}
