package goplugins

import (
	"context"
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
	stubborn := ReloadKind{Surface: "host-handle", Transfer: func(context.Context, *Handoff) (func(context.Context) error, error) {
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
	require.ErrorIs(t, err, ErrShuttingDown)
	require.ErrorIs(t, err, ErrDrainTimeout, "the reload held the plugin past ctx")

	close(release)
	err = awaitErr(t, "Reload", reloaded)
	require.ErrorIs(t, err, ErrReloadFailed, "Shutdown aborts the reload")
	require.ErrorIs(t, err, ErrShuttingDown)
	awaitClosed(t, "the old plugin", old.closedCh)
	require.Zero(t, next.closed.Load(), "a failed reload leaves next to its caller")
}

// Shutdown waits for an Unregister that is draining, and cuts its drain
// short: the plugin is closed before Shutdown returns.
func TestShutdownWaitsForUnregister(t *testing.T) {
	verifyNoLeaks(t)
	m := NewManager[int, int](WithHealthCheck(HealthConfig{Interval: -1}))
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
	require.ErrorIs(t, err, ErrShuttingDown)
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
	m := NewManager[int, int](WithHealthCheck(HealthConfig{Interval: time.Millisecond, Timeout: 50 * time.Millisecond}))
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
	m := NewManager[int, int](WithHealthCheck(HealthConfig{Interval: -1}))
	defer m.Shutdown(context.Background())
	require.NoError(t, m.Register(&scripted{name: "p", version: "1.0.0", exec: func(context.Context, int) (int, error) { return 1, nil }}))
	entered, release := make(chan struct{}), make(chan struct{})
	hold := ReloadKind{Surface: "host-handle", Transfer: func(context.Context, *Handoff) (func(context.Context) error, error) {
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
