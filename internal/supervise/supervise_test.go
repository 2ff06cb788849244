package supervise

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"
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

func TestBackoffDoublesToTheCapWhileCrashLooping(t *testing.T) {
	p := Policy{Backoff: 100 * time.Millisecond, MaxBackoff: time.Second, MinUptime: time.Minute}
	waits, _, _ := run(t, p, repeat(time.Millisecond, 8))
	want := []time.Duration{100e6, 200e6, 400e6, 800e6, 1e9, 1e9, 1e9}
	if !slices.Equal(waits, want) {
		t.Fatalf("waits %v, want %v", waits, want)
	}
}

// TestBudgetResetsAfterMinUptimeWithoutCalls: a child that stayed up the
// minimum uptime, serving nothing, counts as healthy: the next crash waits
// the first backoff again and is not counted against MaxAttempts.
func TestBudgetResetsAfterMinUptimeWithoutCalls(t *testing.T) {
	p := Policy{MaxAttempts: 2, Backoff: 100 * time.Millisecond, MaxBackoff: time.Second, MinUptime: time.Minute}
	waits, events, _ := run(t, p, repeat(time.Hour, 11))
	if !slices.Equal(waits, repeat(100*time.Millisecond, 10)) {
		t.Fatalf("waits %v, want the first backoff each time", waits)
	}
	for _, ev := range events {
		if ev.Kind == LeftDown {
			t.Fatalf("left down after idle children that each stayed up an hour: %+v", events)
		}
	}
}

// TestPoisonCallsDoNotResetTheBudget: children that crash soon after
// starting (whatever they served first) keep backing off and, with a
// maximum, are left down after it.
func TestPoisonCallsDoNotResetTheBudget(t *testing.T) {
	p := Policy{MaxAttempts: 3, Backoff: 100 * time.Millisecond, MaxBackoff: time.Second, MinUptime: time.Minute}
	waits, events, err := run(t, p, repeat(time.Second, 10))
	if !slices.Equal(waits, []time.Duration{100e6, 200e6, 400e6}) {
		t.Fatalf("waits %v", waits)
	}
	last := events[len(events)-1]
	if last.Kind != LeftDown || last.Attempt != 3 || !errors.Is(err, errExit) {
		t.Fatalf("last event %+v, Run returned %v; want LeftDown after 3 attempts and the exit error", last, err)
	}
}

func TestNoLimitByDefault(t *testing.T) {
	p := Policy{Backoff: time.Millisecond, MaxBackoff: time.Millisecond, MinUptime: time.Minute}
	waits, events, err := run(t, p, repeat(0, 51))
	if len(waits) != 50 || err != nil {
		t.Fatalf("%d attempts, Run returned %v; want 50 attempts until stopped", len(waits), err)
	}
	for _, ev := range events {
		if ev.Kind == LeftDown {
			t.Fatal("left down with MaxAttempts 0")
		}
	}
}

func TestNegativeMaxAttemptsNeverRestarts(t *testing.T) {
	waits, events, err := run(t, Policy{MaxAttempts: -1}, repeat(0, 3))
	if len(waits) != 0 || len(events) != 2 || events[1].Kind != LeftDown || err == nil {
		t.Fatalf("waits %v events %+v err %v; want Crashed, LeftDown and no attempt", waits, events, err)
	}
}

func TestEventsInOrder(t *testing.T) {
	clk := &fakeClock{now: time.Unix(0, 0)}
	ctx, cancel := context.WithCancel(context.Background())
	var kinds []Kind
	starts := 0
	cfg := Config{
		Policy: Policy{Backoff: time.Millisecond, MaxBackoff: time.Millisecond, MinUptime: time.Minute}, Clock: clk,
		Event: func(ev Event) { kinds = append(kinds, ev.Kind) },
		Start: func(context.Context) (Child, error) {
			if starts++; starts == 1 {
				return nil, errors.New("bad start")
			}
			cancel()
			return fakeChild{clk, 0}, nil
		},
	}
	_ = Run(ctx, cfg, fakeChild{clk, 0})
	if want := []Kind{Crashed, RestartFailed, Restarted}; !slices.Equal(kinds, want) {
		t.Fatalf("events %v, want %v", kinds, want)
	}
}
