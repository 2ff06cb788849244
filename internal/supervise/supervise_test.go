package supervise

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeClock advances only when waited on (After) or told to (a child's
// lifetime, in Reap).
type fakeClock struct {
	now   time.Time
	waits []time.Duration
}

func (c *fakeClock) Now() time.Time { return c.now }
func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.waits = append(c.waits, d)
	c.now = c.now.Add(d)
	ch := make(chan time.Time, 1)
	ch <- c.now
	return ch
}

// fakeChild has ended already; it was up for lifetime.
type fakeChild struct {
	clk      *fakeClock
	lifetime time.Duration
}

var errExit = errors.New("exit status 1")

func (c fakeChild) Wait(context.Context) error { c.clk.now = c.clk.now.Add(c.lifetime); return errExit }

// run supervises children with the given lifetimes in turn (the first is
// the initial child) until the last has started, and returns the waits and
// events.
func run(t *testing.T, p Policy, lifetimes []time.Duration) ([]time.Duration, []Event, error) {
	t.Helper()
	clk := &fakeClock{now: time.Unix(0, 0)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	next := 1
	var events []Event
	cfg := Config{
		Policy: p, Clock: clk,
		Event: func(ev Event) { events = append(events, ev) },
		Start: func(context.Context) (Child, error) {
			if next++; next == len(lifetimes) {
				cancel() // the last child: stop supervising
			}
			return fakeChild{clk, lifetimes[next-1]}, nil
		},
	}
	err := Run(ctx, cfg, fakeChild{clk, lifetimes[0]})
	return clk.waits, events, err
}

func repeat(d time.Duration, n int) []time.Duration { return slices.Repeat([]time.Duration{d}, n) }

// kinds returns the kind of each event, in order.
func kinds(events []Event) []Kind {
	ks := make([]Kind, len(events))
	for i, ev := range events {
		ks[i] = ev.Kind
	}
	return ks
}

func TestBackoffDoublesToTheCapWhileCrashLooping(t *testing.T) {
	p := Policy{Backoff: 100 * time.Millisecond, MaxBackoff: time.Second, MinUptime: time.Minute}
	waits, _, _ := run(t, p, repeat(time.Millisecond, 8))
	want := []time.Duration{100e6, 200e6, 400e6, 800e6, 1e9, 1e9, 1e9}
	assert.Equal(t, want, waits, "waits")
}

// TestBudgetResetsAfterMinUptimeWithoutCalls: a child that stayed up the
// minimum uptime, serving nothing, counts as healthy: the next crash waits
// the first backoff again and is not counted against MaxAttempts.
func TestBudgetResetsAfterMinUptimeWithoutCalls(t *testing.T) {
	p := Policy{MaxAttempts: 2, Backoff: 100 * time.Millisecond, MaxBackoff: time.Second, MinUptime: time.Minute}
	waits, events, _ := run(t, p, repeat(time.Hour, 11))
	assert.Equal(t, repeat(100*time.Millisecond, 10), waits, "waits: the first backoff each time")
	assert.NotContains(t, kinds(events), LeftDown, "left down after idle children that each stayed up an hour")
}

// TestPoisonCallsDoNotResetTheBudget: children that crash soon after
// starting (whatever they served first) keep backing off and, with a
// maximum, are left down after it.
func TestPoisonCallsDoNotResetTheBudget(t *testing.T) {
	p := Policy{MaxAttempts: 3, Backoff: 100 * time.Millisecond, MaxBackoff: time.Second, MinUptime: time.Minute}
	waits, events, err := run(t, p, repeat(time.Second, 10))
	require.Equal(t, []time.Duration{100e6, 200e6, 400e6}, waits, "waits")
	require.NotEmpty(t, events)
	last := events[len(events)-1]
	assert.Equal(t, LeftDown, last.Kind, "last event: LeftDown after 3 attempts")
	assert.Equal(t, 3, last.Attempt, "last event: LeftDown after 3 attempts")
	assert.ErrorIs(t, err, errExit, "Run returns the exit error")
}

func TestNoLimitByDefault(t *testing.T) {
	p := Policy{Backoff: time.Millisecond, MaxBackoff: time.Millisecond, MinUptime: time.Minute}
	waits, events, err := run(t, p, repeat(0, 51))
	require.NoError(t, err, "Run")
	require.Len(t, waits, 50, "attempts until stopped")
	assert.NotContains(t, kinds(events), LeftDown, "left down with MaxAttempts 0")
}

func TestNegativeMaxAttemptsNeverRestarts(t *testing.T) {
	waits, events, err := run(t, Policy{MaxAttempts: -1}, repeat(0, 3))
	assert.Empty(t, waits, "no attempt")
	assert.Equal(t, []Kind{Crashed, LeftDown}, kinds(events), "events")
	assert.Error(t, err, "Run")
}

func TestEventsInOrder(t *testing.T) {
	clk := &fakeClock{now: time.Unix(0, 0)}
	ctx, cancel := context.WithCancel(context.Background())
	var got []Kind
	starts := 0
	cfg := Config{
		Policy: Policy{Backoff: time.Millisecond, MaxBackoff: time.Millisecond, MinUptime: time.Minute}, Clock: clk,
		Event: func(ev Event) { got = append(got, ev.Kind) },
		Start: func(context.Context) (Child, error) {
			if starts++; starts == 1 {
				return nil, errors.New("bad start")
			}
			cancel()
			return fakeChild{clk, 0}, nil
		},
	}
	_ = Run(ctx, cfg, fakeChild{clk, 0})
	assert.Equal(t, []Kind{Crashed, RestartFailed, Restarted}, got, "events")
}
