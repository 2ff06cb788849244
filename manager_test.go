package goplugins

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goerrors "github.com/agilira/go-errors"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// newTestManager returns a manager without periodic health checks, shut
// down when the test ends.
func newTestManager(t *testing.T, opts ...Option) *Manager[int, int] {
	t.Helper()
	opts = append([]Option{WithPluginDefaults(WithHealthCheck(HealthConfig{Interval: -1}))}, opts...)
	m := NewManager[int, int](opts...)
	t.Cleanup(func() { _ = m.Shutdown(context.Background()) })
	return m
}

func TestRegisterValidates(t *testing.T) {
	cases := []struct {
		name    string
		plugin  Plugin[int, int]
		wantErr error
	}{
		{"valid", newEcho("auth", "1.4.0"), nil},
		{"valid with prerelease and build", newEcho("a.b_c-d9", "2.0.0-rc.1+build.5"), nil},
		{"nil plugin", nil, ErrInvalidPlugin},
		{"empty name", newEcho("", "1.0.0"), ErrInvalidPlugin},
		{"upper case", newEcho("Auth", "1.0.0"), ErrInvalidPlugin},
		{"leading dash", newEcho("-auth", "1.0.0"), ErrInvalidPlugin},
		{"slash", newEcho("a/b", "1.0.0"), ErrInvalidPlugin},
		{"too long", newEcho(string(make([]byte, 65)), "1.0.0"), ErrInvalidPlugin},
		{"v prefix", newEcho("auth", "v1.0.0"), ErrInvalidVersion},
		{"two parts", newEcho("auth", "1.0"), ErrInvalidVersion},
		{"leading zero", newEcho("auth", "01.0.0"), ErrInvalidVersion},
		{"empty version", newEcho("auth", ""), ErrInvalidVersion},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := newTestManager(t)
			err := m.Register(tc.plugin)
			if tc.wantErr == nil {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, tc.wantErr)
			require.Empty(t, m.Plugins())
		})
	}
}

func TestRegisterDuplicateRefused(t *testing.T) {
	m := newTestManager(t)
	require.NoError(t, m.Register(newEcho("auth", "1.0.0")))
	err := m.Register(newEcho("auth", "2.0.0"))
	require.ErrorIs(t, err, ErrAlreadyRegistered)
	require.Contains(t, err.Error(), `"auth"`)
	info, ok := m.Info("auth")
	require.True(t, ok)
	require.Equal(t, "1.0.0", info.Version, "the first registration stays")
}

func TestRegisterChecksVersionPolicy(t *testing.T) {
	p, err := NewVersionPolicy("1.0.0")
	require.NoError(t, err)
	require.NoError(t, p.SetRule("auth", "^2.0.0"))
	m := newTestManager(t, WithVersionPolicy(p))
	err = m.Register(newEcho("auth", "1.9.0"))
	require.ErrorIs(t, err, ErrIncompatibleVersion)
	require.Contains(t, err.Error(), "1.9.0")
	require.NoError(t, m.Register(newEcho("auth", "2.1.0")))
}

func TestExecute(t *testing.T) {
	m := newTestManager(t)
	require.NoError(t, m.Register(newEcho("echo", "1.0.0")))
	got, err := m.Execute(context.Background(), "echo", 42)
	require.NoError(t, err)
	require.Equal(t, 42, got)

	_, err = m.Execute(context.Background(), "nope", 1)
	require.ErrorIs(t, err, ErrNotFound)
	require.Contains(t, err.Error(), `"nope"`)
}

func TestExecutePassesPluginErrorsThrough(t *testing.T) {
	sentinel := errors.New("plugin says no")
	m := newTestManager(t)
	require.NoError(t, m.Register(&scripted{name: "p", version: "1.0.0",
		exec: func(context.Context, int) (int, error) { return 0, fmt.Errorf("wrapped: %w", sentinel) }}))
	_, err := m.Execute(context.Background(), "p", 1)
	require.ErrorIs(t, err, sentinel)
	require.Equal(t, uint64(1), m.Metrics().Plugins["p"].Errors)
}

func TestExecuteRecoversPanic(t *testing.T) {
	m := newTestManager(t)
	require.NoError(t, m.Register(&scripted{name: "p", version: "1.0.0",
		exec: func(_ context.Context, req int) (int, error) {
			if req == 0 {
				panic("nil map")
			}
			return req, nil
		}}))
	_, err := m.Execute(context.Background(), "p", 0)
	require.ErrorIs(t, err, ErrPanic)
	require.Contains(t, err.Error(), "nil map")
	got, err := m.Execute(context.Background(), "p", 7)
	require.NoError(t, err, "the host and the plugin live on")
	require.Equal(t, 7, got)
	pm := m.Metrics().Plugins["p"]
	require.Equal(t, uint64(1), pm.Panics)
	require.Equal(t, uint64(2), pm.Calls)
}

func TestExecuteTimeout(t *testing.T) {
	release := make(chan struct{})
	m := newTestManager(t, WithPluginDefaults(WithBreaker(BreakerConfig{Disabled: true})))
	p := &scripted{name: "slow", version: "1.0.0", exec: func(ctx context.Context, req int) (int, error) {
		if req == 1 { // ignores ctx entirely
			<-release
			return 1, nil
		}
		<-ctx.Done() // honours ctx
		return 0, ctx.Err()
	}}
	require.NoError(t, m.Register(p, WithTimeout(20*time.Millisecond)))

	_, err := m.Execute(context.Background(), "slow", 0)
	require.ErrorIs(t, err, ErrTimeout)

	_, err = m.Execute(context.Background(), "slow", 1)
	require.ErrorIs(t, err, ErrTimeout, "a plugin that ignores ctx still times out")
	pm := m.Metrics().Plugins["slow"]
	require.Equal(t, uint64(2), pm.Timeouts)
	require.Equal(t, int64(1), pm.InFlight, "the abandoned call still counts as in flight")
	close(release)
	require.Eventually(t, func() bool { return m.Metrics().Plugins["slow"].InFlight == 0 }, 5*time.Second, time.Millisecond)
}

// TestPluginDefaultsThenRegisterOptions: WithPluginDefaults sets every
// plugin's defaults (a later call on top of an earlier one), and the
// options given to Register apply after them.
func TestPluginDefaultsThenRegisterOptions(t *testing.T) {
	m := newTestManager(t,
		WithPluginDefaults(WithTimeout(time.Hour)),
		WithPluginDefaults(WithBreaker(BreakerConfig{Disabled: true})))
	slow := func(name string) *scripted {
		return &scripted{name: name, version: "1.0.0", exec: func(ctx context.Context, _ int) (int, error) {
			<-ctx.Done()
			return 0, ctx.Err()
		}}
	}
	require.NoError(t, m.Register(slow("own"), WithTimeout(time.Millisecond)))
	require.NoError(t, m.Register(slow("default")))

	_, err := m.Execute(context.Background(), "own", 0)
	require.ErrorIs(t, err, ErrTimeout, "Register's WithTimeout overrides the default")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = m.Execute(ctx, "default", 0)
	require.ErrorIs(t, err, ErrCanceled, "the default timeout (an hour) did not fire")
	require.NotErrorIs(t, err, ErrTimeout)
	for range 10 {
		_, _ = m.Execute(context.Background(), "own", 0)
	}
	require.Equal(t, BreakerClosed, m.Metrics().Plugins["own"].Breaker, "the earlier default (breaker disabled) still holds")
}

func TestExecuteHonoursCallerContext(t *testing.T) {
	m := newTestManager(t, WithPluginDefaults(WithBreaker(BreakerConfig{ConsecutiveFailures: 1})))
	started := make(chan struct{})
	require.NoError(t, m.Register(&scripted{name: "p", version: "1.0.0", exec: func(ctx context.Context, _ int) (int, error) {
		close(started)
		<-ctx.Done()
		return 0, ctx.Err()
	}}))
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-started
		cancel()
	}()
	_, err := m.Execute(ctx, "p", 1)
	require.ErrorIs(t, err, context.Canceled)
	require.ErrorIs(t, err, ErrCanceled)
	require.Equal(t, BreakerClosed, m.Metrics().Plugins["p"].Breaker, "the caller's cancellation is not the plugin's failure")
}

// TestCallerCtxEndingGivesErrCanceledOnEveryPath: the caller's ctx ending
// before an answer gives an error matching ErrCanceled and ctx's error on
// every Manager path (direct call, under WithTimeout, parked by a reload,
// between retries), never ErrTimeout.
func TestCallerCtxEndingGivesErrCanceledOnEveryPath(t *testing.T) {
	waitCtx := func(ctx context.Context, _ int) (int, error) { <-ctx.Done(); return 0, ctx.Err() }
	ignored := make(chan struct{})
	defer close(ignored)
	retryable := goerrors.New("BUSY", "busy").AsRetryable()
	cases := []struct {
		name string
		opts []PluginOption
		exec func(context.Context, int) (int, error)
		park bool
	}{
		{"direct", nil, waitCtx, false},
		{"under WithTimeout", []PluginOption{WithTimeout(time.Hour)}, waitCtx, false},
		{"under WithTimeout, plugin ignores ctx", []PluginOption{WithTimeout(time.Hour)},
			func(context.Context, int) (int, error) { <-ignored; return 0, nil }, false},
		{"between retries", []PluginOption{WithRetry(RetryPolicy{MaxAttempts: 3, Backoff: time.Hour})},
			func(context.Context, int) (int, error) { return 0, retryable }, false},
		{"parked by a reload", nil, func(context.Context, int) (int, error) { return 1, nil }, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := NewManager[int, int](WithPluginDefaults(WithHealthCheck(HealthConfig{Interval: -1})))
			short, stop := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer stop()
			defer m.Shutdown(short)
			require.NoError(t, m.Register(&scripted{name: "p", version: "1.0.0", exec: tc.exec}, tc.opts...))
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
			defer cancel()
			if tc.park {
				release := make(chan struct{})
				entered := make(chan struct{}, 1)
				defer close(release)
				go m.Reload(context.Background(), "p", &scripted{name: "p", version: "1.0.1", exec: tc.exec},
					WithHandoff(blockingHandoff("hold", entered, release)))
				<-entered
			}
			_, err := m.Execute(ctx, "p", 1)
			require.ErrorIs(t, err, ErrCanceled)
			require.ErrorIs(t, err, context.DeadlineExceeded)
			require.NotErrorIs(t, err, ErrTimeout)
		})
	}
}

// TestRetryRefusedByBreakerCountedOnce: a call whose retry the open breaker
// refuses ran once and failed once; it is not also counted as rejected.
func TestRetryRefusedByBreakerCountedOnce(t *testing.T) {
	m := newTestManager(t, WithPluginDefaults(WithBreaker(BreakerConfig{ConsecutiveFailures: 1, OpenTimeout: time.Hour}), WithRetry(RetryPolicy{MaxAttempts: 3, Backoff: time.Millisecond})))
	busy := goerrors.New("BUSY", "busy").AsRetryable()
	require.NoError(t, m.Register(&scripted{name: "p", version: "1.0.0",
		exec: func(context.Context, int) (int, error) { return 0, busy }}))
	_, err := m.Execute(context.Background(), "p", 1)
	require.ErrorIs(t, err, busy)
	pm := m.Metrics().Plugins["p"]
	require.Equal(t, uint64(1), pm.Calls)
	require.Equal(t, uint64(1), pm.Errors)
	require.Equal(t, uint64(0), pm.Rejected)
	require.Equal(t, uint64(0), pm.Retries)
}

// TestSnapshotsAreCopies: what Metrics, Info and Plugins return shares
// nothing with the manager: editing it changes nothing.
func TestSnapshotsAreCopies(t *testing.T) {
	m := newTestManager(t, WithLatencySampling(1))
	require.NoError(t, m.Register(&scripted{name: "p", version: "1.0.0", surfaces: []Surface{"x"},
		exec: func(context.Context, int) (int, error) { return 1, nil }}))
	_, err := m.Execute(context.Background(), "p", 1)
	require.NoError(t, err)
	h := m.Metrics().Plugins["p"].Latency
	want := slices.Clone(h.Bounds)
	h.Bounds[0] = time.Hour
	require.Equal(t, want, m.Metrics().Plugins["p"].Latency.Bounds)

	info, _ := m.Info("p")
	info.Surfaces[0] = "changed"
	m.Plugins()[0].Surfaces[0] = "changed"
	info, _ = m.Info("p")
	require.Equal(t, []Surface{"x"}, info.Surfaces)
}

// TestRejectedCallsShareOneError: refusals return an error built once per
// plugin, so refusing allocates nothing (see BenchmarkExecuteRejected).
func TestRejectedCallsShareOneError(t *testing.T) {
	m := newTestManager(t, WithPluginDefaults(WithBreaker(BreakerConfig{ConsecutiveFailures: 1, OpenTimeout: time.Hour})))
	require.NoError(t, m.Register(&scripted{name: "p", version: "1.0.0",
		exec: func(context.Context, int) (int, error) { return 0, errors.New("down") }}))
	ctx := context.Background()
	m.Execute(ctx, "p", 1)
	allocs := testing.AllocsPerRun(100, func() {
		// A bare check: the measured function does only what is measured.
		if _, err := m.Execute(ctx, "p", 1); !errors.Is(err, ErrBreakerOpen) {
			t.Fatal(err)
		}
	})
	require.Zero(t, allocs)
}

func TestExecuteBreakerOpensAndRecovers(t *testing.T) {
	var failing atomic.Bool
	failing.Store(true)
	var opened, closed = make(chan struct{}, 1), make(chan struct{}, 1)
	m := newTestManager(t, WithPluginDefaults(WithBreaker(BreakerConfig{ConsecutiveFailures: 2, OpenTimeout: 30 * time.Millisecond})))
	m.Subscribe(func(ev Event) {
		switch ev.Kind {
		case EventBreakerOpened:
			opened <- struct{}{}
		case EventBreakerClosed:
			closed <- struct{}{}
		}
	})
	calls := atomic.Int32{}
	require.NoError(t, m.Register(&scripted{name: "p", version: "1.0.0", exec: func(context.Context, int) (int, error) {
		calls.Add(1)
		if failing.Load() {
			return 0, errors.New("down")
		}
		return 1, nil
	}}))
	ctx := context.Background()
	for range 2 {
		_, err := m.Execute(ctx, "p", 1)
		require.Error(t, err)
	}
	<-opened
	_, err := m.Execute(ctx, "p", 1)
	require.ErrorIs(t, err, ErrBreakerOpen)
	require.Equal(t, int32(2), calls.Load(), "an open breaker does not call the plugin")
	require.Equal(t, uint64(1), m.Metrics().Plugins["p"].Rejected)

	failing.Store(false)
	require.Eventually(t, func() bool {
		_, err := m.Execute(ctx, "p", 1)
		return err == nil
	}, 5*time.Second, 5*time.Millisecond)
	<-closed
	require.Equal(t, BreakerClosed, m.Metrics().Plugins["p"].Breaker)
}

func TestExecuteRetriesRetryableErrors(t *testing.T) {
	cases := []struct {
		name      string
		err       error
		attempts  int
		wantCalls int32
	}{
		{"retryable, succeeds on the third attempt", goerrors.New("BUSY", "busy").AsRetryable(), 3, 3},
		{"not retryable", errors.New("bad request"), 3, 1},
		{"retryable, attempts exhausted", goerrors.New("BUSY", "busy").AsRetryable(), 2, 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var calls atomic.Int32
			m := newTestManager(t, WithPluginDefaults(WithBreaker(BreakerConfig{Disabled: true}), WithRetry(RetryPolicy{MaxAttempts: tc.attempts, Backoff: time.Millisecond})))
			require.NoError(t, m.Register(&scripted{name: "p", version: "1.0.0", exec: func(context.Context, int) (int, error) {
				if calls.Add(1) < 3 {
					return 0, tc.err
				}
				return 9, nil
			}}))
			got, err := m.Execute(context.Background(), "p", 1)
			require.Equal(t, tc.wantCalls, calls.Load())
			if tc.wantCalls == 3 {
				require.NoError(t, err)
				require.Equal(t, 9, got)
			} else {
				require.ErrorIs(t, err, tc.err)
			}
			pm := m.Metrics().Plugins["p"]
			require.Equal(t, uint64(tc.wantCalls-1), pm.Retries)
			require.Equal(t, uint64(1), pm.Calls, "retries are one call")
		})
	}
}

func TestUnregisterWaitsForCallsInFlight(t *testing.T) {
	verifyNoLeaks(t)
	m := NewManager[int, int](WithPluginDefaults(WithHealthCheck(HealthConfig{Interval: -1})))
	defer m.Shutdown(context.Background())
	entered, release := make(chan struct{}), make(chan struct{})
	p := &scripted{name: "p", version: "1.0.0", exec: func(context.Context, int) (int, error) {
		close(entered)
		<-release
		return 5, nil
	}}
	require.NoError(t, m.Register(p))

	result := make(chan error, 1)
	go func() {
		got, err := m.Execute(context.Background(), "p", 1)
		if err == nil && got != 5 {
			err = fmt.Errorf("got %d", got)
		}
		result <- err
	}()
	<-entered
	unregistered := make(chan error, 1)
	go func() { unregistered <- m.Unregister(context.Background(), "p") }()

	// New calls are refused at once while the old one still runs.
	require.Eventually(t, func() bool {
		_, err := m.Execute(context.Background(), "p", 1)
		return errors.Is(err, ErrNotFound)
	}, 5*time.Second, time.Millisecond)
	select {
	case err := <-unregistered:
		t.Fatalf("Unregister returned (%v) with a call in flight", err)
	default:
	}
	require.Zero(t, p.closed.Load(), "closed with a call in flight")

	close(release)
	require.NoError(t, <-result, "the call in flight completes")
	require.NoError(t, <-unregistered)
	require.Equal(t, int32(1), p.closed.Load())
}

func TestUnregisterDrainTimeoutClosesLater(t *testing.T) {
	verifyNoLeaks(t)
	m := NewManager[int, int](WithPluginDefaults(WithHealthCheck(HealthConfig{Interval: -1})))
	entered, release := make(chan struct{}), make(chan struct{})
	p := &scripted{name: "p", version: "1.0.0", exec: func(context.Context, int) (int, error) {
		close(entered)
		<-release
		return 1, nil
	}}
	require.NoError(t, m.Register(p))
	done := make(chan error, 1)
	go func() {
		_, err := m.Execute(context.Background(), "p", 1)
		done <- err
	}()
	<-entered
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	err := m.Unregister(ctx, "p")
	require.ErrorIs(t, err, ErrDrainTimeout)
	require.Zero(t, p.closed.Load())
	close(release)
	require.NoError(t, <-done)
	require.NoError(t, m.Shutdown(context.Background()), "Shutdown waits for the background close")
	require.Equal(t, int32(1), p.closed.Load())
}

func TestShutdown(t *testing.T) {
	verifyNoLeaks(t)
	m := NewManager[int, int](WithPluginDefaults(WithHealthCheck(HealthConfig{Interval: time.Millisecond})))
	plugins := []*echo{newEcho("a", "1.0.0"), newEcho("b", "1.0.0"), newEcho("c", "1.0.0")}
	for _, p := range plugins {
		require.NoError(t, m.Register(p))
	}
	var events atomic.Int32
	m.Subscribe(func(ev Event) {
		if ev.Kind == EventUnregistered {
			events.Add(1)
		}
	})
	require.NoError(t, m.Shutdown(context.Background()))
	require.NoError(t, m.Shutdown(context.Background()), "idempotent")
	for _, p := range plugins {
		require.Equal(t, int32(1), p.closed.Load(), "%s closed once", p.name)
	}
	require.Equal(t, int32(3), events.Load(), "queued events are delivered before Shutdown returns")
	_, err := m.Execute(context.Background(), "a", 1)
	require.ErrorIs(t, err, ErrClosed)
	require.ErrorIs(t, m.Register(newEcho("d", "1.0.0")), ErrClosed)
	require.ErrorIs(t, m.Unregister(context.Background(), "a"), ErrClosed)
}

func TestShutdownConcurrentCallers(t *testing.T) {
	verifyNoLeaks(t)
	m := NewManager[int, int]()
	p := newEcho("a", "1.0.0")
	require.NoError(t, m.Register(p))
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			assert.NoError(t, m.Shutdown(context.Background()))
		}()
	}
	wg.Wait()
	require.Equal(t, int32(1), p.closed.Load())
}

// TestStorm runs Execute, Register and Unregister concurrently (run it with
// -race). Every Execute either succeeds with the right answer or reports
// ErrNotFound; nothing else.
func TestStorm(t *testing.T) {
	verifyNoLeaks(t)
	m := NewManager[int, int](WithPluginDefaults(WithHealthCheck(HealthConfig{Interval: time.Millisecond})))
	names := []string{"p0", "p1", "p2", "p3"}
	ctx := context.Background()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var ok, missing atomic.Int64
	served := make(chan struct{}) // closed by the first call served
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				got, err := m.Execute(ctx, names[(i+w)%len(names)], i)
				if errors.Is(err, ErrNotFound) {
					missing.Add(1)
					continue
				}
				if !assert.NoError(t, err, "Execute") || !assert.Equal(t, i, got, "Execute") {
					return
				}
				if ok.Add(1) == 1 {
					close(served)
				}
			}
		}()
	}
	for round := range 300 {
		name := names[round%len(names)]
		if err := m.Register(newEcho(name, "1.0.0")); err != nil {
			require.ErrorIs(t, err, ErrAlreadyRegistered)
		}
		if round%3 == 0 {
			if err := m.Unregister(ctx, names[(round+1)%len(names)]); err != nil {
				require.ErrorIs(t, err, ErrNotFound)
			}
		}
		m.Plugins()
		m.Metrics()
	}
	// With one processor the callers may not have run yet: let them serve
	// at least once before the storm ends.
	for _, name := range names {
		if err := m.Register(newEcho(name, "1.0.0")); err != nil {
			require.ErrorIs(t, err, ErrAlreadyRegistered)
		}
	}
	select {
	case <-served:
	case <-time.After(10 * time.Second):
		t.Fatal("no call was served")
	}
	close(stop)
	wg.Wait()
	require.NoError(t, m.Shutdown(ctx))
	require.Positive(t, ok.Load())
	t.Logf("calls: %d served, %d not found", ok.Load(), missing.Load())
}

func TestHealthChecks(t *testing.T) {
	var healthy atomic.Bool
	m := newTestManager(t, WithPluginDefaults(WithHealthCheck(HealthConfig{Interval: -1, UnhealthyAfter: 2})))
	changes := make(chan HealthStatus, 16)
	m.Subscribe(func(ev Event) {
		if ev.Kind == EventHealthChanged {
			changes <- ev.Health
		}
	})
	require.NoError(t, m.Register(&scripted{name: "p", version: "1.0.0",
		exec: func(context.Context, int) (int, error) { return 1, nil },
		health: func(context.Context) error {
			if healthy.Load() {
				return nil
			}
			return errors.New("disk full")
		}}))
	ctx := context.Background()

	rep := m.Health(ctx)["p"]
	require.Equal(t, HealthDegraded, rep.Status)
	require.ErrorContains(t, rep.Err, "disk full")
	_, err := m.Execute(ctx, "p", 1)
	require.NoError(t, err, "a degraded plugin still serves")

	rep = m.Health(ctx)["p"]
	require.Equal(t, HealthUnhealthy, rep.Status)
	require.Equal(t, 2, rep.Failures)
	_, err = m.Execute(ctx, "p", 1)
	require.ErrorIs(t, err, ErrUnhealthy)

	healthy.Store(true)
	require.Equal(t, HealthHealthy, m.Health(ctx)["p"].Status)
	_, err = m.Execute(ctx, "p", 1)
	require.NoError(t, err)
	require.Equal(t, []HealthStatus{HealthDegraded, HealthUnhealthy, HealthHealthy}, []HealthStatus{<-changes, <-changes, <-changes})
}

// TestHealthCallerGivingUpIsNotAFailedCheck: a caller of Manager.Health
// whose ctx ends (an HTTP health endpoint hung up) does not book a failed
// check, even three times in a row.
func TestHealthCallerGivingUpIsNotAFailedCheck(t *testing.T) {
	m := newTestManager(t, WithPluginDefaults(WithHealthCheck(HealthConfig{Interval: -1, UnhealthyAfter: 3})))
	entered := make(chan struct{}, 1)
	require.NoError(t, m.Register(&scripted{name: "p", version: "1.0.0",
		exec: func(context.Context, int) (int, error) { return 1, nil },
		health: func(ctx context.Context) error {
			entered <- struct{}{}
			<-ctx.Done()
			return ctx.Err()
		}}))
	for range 3 {
		ctx, cancel := context.WithCancel(context.Background())
		go func() { <-entered; cancel() }()
		rep := m.Health(ctx)["p"]
		require.ErrorIs(t, rep.Err, ErrCanceled)
		require.Equal(t, 0, rep.Failures)
	}
	require.Equal(t, HealthUnknown, m.Metrics().Plugins["p"].Health)
	_, err := m.Execute(context.Background(), "p", 1)
	require.NoError(t, err)
}

// TestUnhealthyRefusalDoesNotMatchTimeout: the fail-fast ErrUnhealthy says
// no call ran; it does not match the failed check's ErrTimeout.
func TestUnhealthyRefusalDoesNotMatchTimeout(t *testing.T) {
	m := newTestManager(t, WithPluginDefaults(WithHealthCheck(HealthConfig{Interval: -1, UnhealthyAfter: 1, Timeout: time.Millisecond})))
	require.NoError(t, m.Register(&scripted{name: "p", version: "1.0.0",
		exec: func(context.Context, int) (int, error) { return 1, nil },
		health: func(ctx context.Context) error {
			<-ctx.Done()
			return ctx.Err()
		}}))
	rep := m.Health(context.Background())["p"]
	require.ErrorIs(t, rep.Err, ErrTimeout)
	require.Equal(t, HealthUnhealthy, rep.Status)
	_, err := m.Execute(context.Background(), "p", 1)
	require.ErrorIs(t, err, ErrUnhealthy)
	require.NotErrorIs(t, err, ErrTimeout)
	require.NotErrorIs(t, err, context.DeadlineExceeded)
}

func TestPeriodicHealthCheck(t *testing.T) {
	verifyNoLeaks(t)
	m := NewManager[int, int]()
	defer m.Shutdown(context.Background())
	unhealthy := make(chan struct{})
	m.Subscribe(func(ev Event) {
		if ev.Kind == EventHealthChanged && ev.Health == HealthUnhealthy {
			close(unhealthy)
		}
	})
	require.NoError(t, m.Register(&scripted{name: "p", version: "1.0.0",
		exec:   func(context.Context, int) (int, error) { return 1, nil },
		health: func(context.Context) error { return errors.New("down") },
	}, WithHealthCheck(HealthConfig{Interval: time.Millisecond, UnhealthyAfter: 3})))
	<-unhealthy
	_, err := m.Execute(context.Background(), "p", 1)
	require.ErrorIs(t, err, ErrUnhealthy)
}

func TestMetrics(t *testing.T) {
	m := newTestManager(t, WithPluginDefaults(WithBreaker(BreakerConfig{Disabled: true})), WithLatencySampling(1))
	require.NoError(t, m.Register(&scripted{name: "p", version: "1.0.0", exec: func(_ context.Context, req int) (int, error) {
		if req < 0 {
			return 0, errors.New("negative")
		}
		return req, nil
	}}))
	ctx := context.Background()
	for i := range 10 {
		_, _ = m.Execute(ctx, "p", i-3) // three fail
	}
	pm := m.Metrics().Plugins["p"]
	require.Equal(t, uint64(10), pm.Calls)
	require.Equal(t, uint64(3), pm.Errors)
	require.Equal(t, int64(0), pm.InFlight)
	require.Equal(t, uint64(1), pm.Generation)
	require.Equal(t, uint64(10), pm.Latency.Count, "every call sampled")
	require.Len(t, pm.Latency.Counts, len(pm.Latency.Bounds)+1)
	var sum uint64
	for _, c := range pm.Latency.Counts {
		sum += c
	}
	require.Equal(t, pm.Latency.Count, sum)
	require.Positive(t, pm.Latency.Quantile(0.99))
}

func TestLatencyQuantile(t *testing.T) {
	var h histogram
	for range 90 {
		h.observe(3 * time.Microsecond) // bucket <= 5µs
	}
	for range 10 {
		h.observe(30 * time.Millisecond) // bucket <= 50ms
	}
	s := h.snapshot(1)
	require.Equal(t, 5*time.Microsecond, s.Quantile(0.5))
	require.Equal(t, 5*time.Microsecond, s.Quantile(0.9))
	require.Equal(t, 50*time.Millisecond, s.Quantile(0.99))
	require.Equal(t, time.Duration(0), LatencyHistogram{}.Quantile(0.5))
}

func TestSubscribeSlowSubscriberNeverBlocks(t *testing.T) {
	verifyNoLeaks(t)
	m := NewManager[int, int](WithPluginDefaults(WithHealthCheck(HealthConfig{Interval: -1})), WithEventBuffer(1))
	block := make(chan struct{})
	got := make(chan EventKind, 16)
	cancel := m.Subscribe(func(ev Event) {
		<-block
		got <- ev.Kind
	})
	for i := range 5 { // the first is taken by fn, the next fills the buffer, the rest drop
		require.NoError(t, m.Register(newEcho(fmt.Sprintf("p%d", i), "1.0.0")))
	}
	require.Eventually(t, func() bool { return m.Metrics().DroppedEvents >= 3 }, 5*time.Second, time.Millisecond)
	close(block)
	require.Equal(t, EventRegistered, <-got)
	cancel()
	cancel()
	require.NoError(t, m.Shutdown(context.Background()))
}

func TestSubscriberPanicIsContained(t *testing.T) {
	m := newTestManager(t)
	second := make(chan string, 2)
	m.Subscribe(func(Event) { panic("subscriber bug") })
	m.Subscribe(func(ev Event) { second <- ev.Plugin })
	require.NoError(t, m.Register(newEcho("a", "1.0.0")))
	require.NoError(t, m.Register(newEcho("b", "1.0.0")))
	require.Equal(t, "a", <-second)
	require.Equal(t, "b", <-second)
}

func TestPluginsSorted(t *testing.T) {
	m := newTestManager(t)
	for _, n := range []string{"c", "a", "b"} {
		require.NoError(t, m.Register(newEcho(n, "1.0.0")))
	}
	var names []string
	for _, p := range m.Plugins() {
		names = append(names, p.Name)
	}
	require.Equal(t, []string{"a", "b", "c"}, names)
}

func TestErrorsAreCoded(t *testing.T) {
	err := newError(codeNotFound, "auth", "check the name")
	require.ErrorIs(t, err, ErrNotFound)
	require.NotErrorIs(t, err, ErrTimeout)
	require.Equal(t, codeNotFound, ErrorCode(err))
	require.Contains(t, err.Error(), `plugin "auth": check the name`)

	cause := errors.New("disk full")
	w := wrapError(cause, codeTransport, "auth", "writing")
	require.ErrorIs(t, w, ErrTransport)
	require.ErrorIs(t, w, cause)
	require.Contains(t, w.Error(), "disk full")

	require.True(t, IsRetryable(fmt.Errorf("x: %w", goerrors.New("BUSY", "busy").AsRetryable())))
	require.True(t, IsRetryable(errors.Join(errors.New("a"), goerrors.New("BUSY", "busy").AsRetryable())))
	require.False(t, IsRetryable(cause))
	require.False(t, IsRetryable(nil))
}
