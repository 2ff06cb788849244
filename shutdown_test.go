package goplugins

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// stuckBound is how long a test waits for something that must happen
// promptly before it declares the manager stuck. It bounds liveness, not
// speed.
const stuckBound = 5 * time.Second

// closeNotifier is a scripted plugin whose Close closes a channel.
type closeNotifier struct {
	*scripted
	closedCh chan struct{}
}

func newCloseNotifier(p *scripted) *closeNotifier {
	return &closeNotifier{scripted: p, closedCh: make(chan struct{})}
}

func (p *closeNotifier) Close(ctx context.Context) error {
	if p.scripted.closed.Add(1) == 1 {
		close(p.closedCh)
	}
	return nil
}

func awaitErr(t *testing.T, what string, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(stuckBound):
		t.Fatalf("%s still blocked after %v", what, stuckBound)
		return nil
	}
}

func awaitClosed(t *testing.T, what string, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(stuckBound):
		t.Fatalf("%s not closed after %v", what, stuckBound)
	}
}

// A reload step that ignores its ctx holds the plugin past Shutdown's ctx:
// Shutdown must still return (health checks are on by default) and close
// the plugin once the reload lets go of it.
func TestShutdownWhileReloadHoldsPlugin(t *testing.T) {
	verifyNoLeaks(t)
	m := NewManager[int, int]()
	old := newCloseNotifier(&scripted{name: "p", version: "1.0.0", exec: func(context.Context, int) (int, error) { return 1, nil }})
	require.NoError(t, m.Register(old))

	entered, release := make(chan struct{}), make(chan struct{})
	stubborn := Handoff{Surface: "host-handle", Transfer: func(context.Context, *Swap) (func(context.Context) error, error) {
		close(entered)
		<-release // ignores ctx
		return nil, nil
	}}
	next := newCloseNotifier(&scripted{name: "p", version: "1.1.0", exec: func(context.Context, int) (int, error) { return 2, nil }})
	reloaded := make(chan error, 1)
	go func() {
		_, err := m.Reload(context.Background(), "p", next, WithHandoff(stubborn))
		reloaded <- err
	}()
	<-entered

	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		shut <- m.Shutdown(ctx)
	}()
	err := awaitErr(t, "Shutdown", shut)
	require.ErrorIs(t, err, ErrClosed)
	require.ErrorIs(t, err, ErrDrainTimeout, "the reload held the plugin past ctx")

	close(release)
	err = awaitErr(t, "Reload", reloaded)
	require.ErrorIs(t, err, ErrReloadFailed, "Shutdown aborts the reload")
	require.ErrorIs(t, err, ErrClosed)
	awaitClosed(t, "the old plugin", old.closedCh)
	require.Zero(t, next.closed.Load(), "a failed reload leaves next to its caller")
}

// Shutdown waits for an Unregister that is draining, and cuts its drain
// short: the plugin is closed before Shutdown returns.
func TestShutdownWaitsForUnregister(t *testing.T) {
	verifyNoLeaks(t)
	m := NewManager[int, int](WithPluginDefaults(WithHealthCheck(HealthConfig{Interval: -1})))
	entered, release := make(chan struct{}), make(chan struct{})
	p := newCloseNotifier(&scripted{name: "p", version: "1.0.0", exec: func(context.Context, int) (int, error) {
		close(entered)
		<-release
		return 1, nil
	}})
	require.NoError(t, m.Register(p))
	called := make(chan error, 1)
	go func() {
		_, err := m.Execute(context.Background(), "p", 1)
		called <- err
	}()
	<-entered

	unregistered := make(chan error, 1)
	go func() { unregistered <- m.Unregister(context.Background(), "p") }()
	// No event marks the removal itself (EventUnregistered comes after
	// Close): poll for it.
	require.Eventually(t, func() bool { _, ok := m.Info("p"); return !ok }, stuckBound, time.Millisecond)

	shut := make(chan error, 1)
	go func() { shut <- m.Shutdown(context.Background()) }()
	err := awaitErr(t, "Unregister", unregistered)
	require.ErrorIs(t, err, ErrDrainTimeout, "Shutdown cuts Unregister's drain short")
	require.ErrorIs(t, err, ErrClosed)
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned (%v) with a call in flight on an unregistered plugin", err)
	default:
	}
	require.Zero(t, p.closed.Load(), "not closed while its call runs")

	close(release)
	require.NoError(t, awaitErr(t, "Execute", called))
	require.NoError(t, awaitErr(t, "Shutdown", shut))
	require.Equal(t, int32(1), p.closed.Load(), "closed before Shutdown returned")
}

// A Health method that ignores its ctx bounds neither Manager.Health nor
// Shutdown, and the plugin is closed all the same.
func TestHealthIgnoringCtxDoesNotBlock(t *testing.T) {
	verifyNoLeaks(t)
	m := NewManager[int, int](WithPluginDefaults(WithHealthCheck(HealthConfig{Interval: time.Millisecond, Timeout: 50 * time.Millisecond})))
	release := make(chan struct{})
	defer close(release) // lets the stuck checks end before the leak check
	p := newCloseNotifier(&scripted{name: "p", version: "1.0.0",
		exec:   func(context.Context, int) (int, error) { return 1, nil },
		health: func(context.Context) error { <-release; return nil }})
	require.NoError(t, m.Register(p))

	checked := make(chan error, 1)
	go func() { checked <- m.Health(context.Background())["p"].Err }()
	require.ErrorIs(t, awaitErr(t, "Manager.Health", checked), ErrTimeout)

	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		shut <- m.Shutdown(ctx)
	}()
	awaitErr(t, "Shutdown", shut)
	awaitClosed(t, "the plugin", p.closedCh)
}

// Unregister that cannot take the plugin from a running reload within its
// ctx reports ErrDrainTimeout (as its doc promises) and changes nothing.
func TestUnregisterWhileReloadHoldsPlugin(t *testing.T) {
	verifyNoLeaks(t)
	m := NewManager[int, int](WithPluginDefaults(WithHealthCheck(HealthConfig{Interval: -1})))
	defer m.Shutdown(context.Background())
	require.NoError(t, m.Register(&scripted{name: "p", version: "1.0.0", exec: func(context.Context, int) (int, error) { return 1, nil }}))
	entered, release := make(chan struct{}), make(chan struct{})
	hold := Handoff{Surface: "host-handle", Transfer: func(context.Context, *Swap) (func(context.Context) error, error) {
		close(entered)
		<-release
		return nil, nil
	}}
	reloaded := make(chan error, 1)
	go func() {
		_, err := m.Reload(context.Background(), "p", &scripted{name: "p", version: "1.1.0", exec: func(context.Context, int) (int, error) { return 2, nil }}, WithHandoff(hold))
		reloaded <- err
	}()
	<-entered
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	err := m.Unregister(ctx, "p")
	require.ErrorIs(t, err, ErrDrainTimeout)
	require.NotErrorIs(t, err, ErrTimeout, "ErrTimeout is for calls past the plugin's timeout")
	close(release)
	require.NoError(t, awaitErr(t, "Reload", reloaded))
	got, err := m.Execute(context.Background(), "p", 0)
	require.NoError(t, err, "the plugin stays registered")
	require.Equal(t, 2, got)
}

// TestEventsFollowTheChanges: a plugin's Registered event comes before the
// Unregistered event of a concurrent Unregister, and Seq numbers events in
// the order they arrive.
func TestEventsFollowTheChanges(t *testing.T) {
	m := newTestManager(t)
	var mu sync.Mutex
	var got []Event
	m.Subscribe(func(ev Event) {
		mu.Lock()
		got = append(got, ev)
		mu.Unlock()
	})
	const rounds = 200
	for range rounds {
		go m.Register(newEcho("p", "1.0.0"))
		for m.Unregister(context.Background(), "p") != nil {
			runtime.Gosched()
		}
	}
	require.NoError(t, m.Shutdown(context.Background()))
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, got, 2*rounds)
	for i, ev := range got {
		want := EventRegistered
		if i%2 == 1 {
			want = EventUnregistered
		}
		require.Equal(t, want, ev.Kind, "event %d", i)
		if i > 0 {
			require.Greater(t, ev.Seq, got[i-1].Seq)
		}
	}
}

// TestCancelStopsQueuedDelivery: once cancel returns, a subscription
// delivers nothing more, not even events queued before.
func TestCancelStopsQueuedDelivery(t *testing.T) {
	verifyNoLeaks(t)
	m := NewManager[int, int](WithPluginDefaults(WithHealthCheck(HealthConfig{Interval: -1})))
	defer m.Shutdown(context.Background())
	entered, release := make(chan struct{}), make(chan struct{})
	var delivered atomic.Int32
	cancel := m.Subscribe(func(Event) {
		if delivered.Add(1) == 1 {
			close(entered)
			<-release
		}
	})
	var s *subscriber
	for sub := range m.bus.subs {
		s = sub
	}
	for _, name := range []string{"a", "b", "c"} {
		require.NoError(t, m.Register(newEcho(name, "1.0.0")))
	}
	<-entered
	cancel()
	close(release)
	awaitClosed(t, "the cancelled subscriber", s.done)
	require.Equal(t, int32(1), delivered.Load())
}

// TestShutdownFromSubscriber: a subscriber may call Shutdown; neither its
// call nor a concurrent one deadlocks or burns its ctx.
func TestShutdownFromSubscriber(t *testing.T) {
	verifyNoLeaks(t)
	m := NewManager[int, int](WithPluginDefaults(WithHealthCheck(HealthConfig{Interval: -1})))
	inner := make(chan error, 1)
	m.Subscribe(func(ev Event) {
		if ev.Kind == EventRegistered {
			inner <- m.Shutdown(context.Background())
		}
	})
	require.NoError(t, m.Register(newEcho("p", "1.0.0")))
	outer := make(chan error, 1)
	go func() { outer <- m.Shutdown(context.Background()) }()
	require.NoError(t, awaitErr(t, "Shutdown from the subscriber", inner))
	require.NoError(t, awaitErr(t, "Shutdown beside it", outer))
}

// TestEndedCtxGivesDeterministicResults: Unregister and Shutdown with a ctx
// that ended already, on an idle plugin, always do their job.
func TestEndedCtxGivesDeterministicResults(t *testing.T) {
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	for range 50 {
		m := NewManager[int, int](WithPluginDefaults(WithHealthCheck(HealthConfig{Interval: -1})))
		a, b := newEcho("a", "1.0.0"), newEcho("b", "1.0.0")
		require.NoError(t, m.Register(a))
		require.NoError(t, m.Register(b))
		require.NoError(t, m.Unregister(ended, "a"))
		require.Equal(t, int32(1), a.closed.Load())
		require.NoError(t, m.Shutdown(ended))
		require.Equal(t, int32(1), b.closed.Load())
	}
}

// TestShutdownAgainFinishesTheJob: a Shutdown whose ctx ended before a
// Close returned reports it, and a later Shutdown waits for the rest and
// returns the result every call after it returns too.
func TestShutdownAgainFinishesTheJob(t *testing.T) {
	verifyNoLeaks(t)
	m := NewManager[int, int](WithPluginDefaults(WithHealthCheck(HealthConfig{Interval: -1, Timeout: time.Millisecond})))
	release := make(chan struct{})
	closing := make(chan struct{})
	p := &slowCloser{echo: newEcho("p", "1.0.0"), entered: closing, release: release}
	require.NoError(t, m.Register(p))
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	err := m.Shutdown(ended)
	require.ErrorIs(t, err, ErrClosed)
	require.ErrorIs(t, err, context.Canceled)
	awaitClosed(t, "Close", closing)
	close(release)
	require.NoError(t, m.Shutdown(context.Background()))
	require.NoError(t, m.Shutdown(ended), "a finished Shutdown returns its result")
}

// slowCloser is an echo whose Close ignores its ctx until released.
type slowCloser struct {
	*echo
	entered chan struct{}
	release chan struct{}
}

func (p *slowCloser) Close(context.Context) error {
	close(p.entered)
	<-p.release
	return nil
}
