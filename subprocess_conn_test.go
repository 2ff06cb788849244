package goplugins

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// startRaw starts the raw test plugin in mode; it is closed at cleanup.
func startRaw(t *testing.T, mode string, h *recordingHandler, mod func(*SubprocessConfig)) *subprocessPlugin[string, string] {
	t.Helper()
	cfg := SubprocessConfig{
		Name: "raw", Command: pluginBinary(t, "raw"), Env: map[string]string{"RAW_MODE": mode},
		StopGrace: 200 * time.Millisecond, Logger: slog.New(h),
	}
	return startString(t, cfg, mod)
}

// startString starts the plugin cfg describes, after mod (if any) changed
// cfg; it is closed at cleanup.
func startString(t *testing.T, cfg SubprocessConfig, mod func(*SubprocessConfig)) *subprocessPlugin[string, string] {
	t.Helper()
	if mod != nil {
		mod(&cfg)
	}
	p, err := newSubprocess[string, string](context.Background(), cfg)
	require.NoError(t, err, "NewSubprocess")
	t.Cleanup(func() { p.Close(context.Background()) })
	return p
}

// hangLimit is how long a call that should return at its deadline may take
// before the test calls it blocked: far beyond the deadline, so that only a
// call that hangs fails.
const hangLimit = 10 * time.Second

// TestSubprocessStalledPluginDoesNotBlockCaller: a child that stops reading
// its input holds no caller past its ctx or CallTimeout, even when the
// request does not fit in the pipe; the stall watchdog, not the caller,
// then kills the child, whose calls fail with ErrCrashed, and it is
// restarted.
func TestSubprocessStalledPluginDoesNotBlockCaller(t *testing.T) {
	verifyNoLeaks(t)
	checkNoFDLeak(t)
	big := strings.Repeat("x", 1<<20)
	tests := []struct {
		name        string
		callTimeout time.Duration
		ctx         func() (context.Context, context.CancelFunc)
		want        []error
	}{
		{"ctx deadline", 0, func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 200*time.Millisecond)
		}, []error{ErrCanceled, context.DeadlineExceeded}},
		{"call timeout", 200 * time.Millisecond, func() (context.Context, context.CancelFunc) {
			return context.Background(), func() {}
		}, []error{ErrTimeout}},
		{"ctx cancelled", 0, func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(200*time.Millisecond, cancel)
			return ctx, cancel
		}, []error{ErrCanceled, context.Canceled}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			restarted := make(chan error, 10)
			p := startRaw(t, "noread", newRecordingHandler(), func(c *SubprocessConfig) {
				c.CallTimeout = tt.callTimeout
				c.StallTimeout = 300 * time.Millisecond
				c.OnRestart = func(_ string, _ int, err error) { restarted <- err }
			})
			patient := make(chan error, 1)
			go func() {
				_, err := p.Execute(context.Background(), "patient")
				patient <- err
			}()
			ctx, cancel := tt.ctx()
			defer cancel()
			done := make(chan error, 1)
			go func() {
				_, err := p.Execute(ctx, big)
				done <- err
			}()
			select {
			case err := <-done:
				for _, want := range tt.want {
					require.ErrorIs(t, err, want, "Execute")
				}
			case <-time.After(hangLimit):
				t.Fatalf("Execute still blocked %v after its deadline: the write to the stalled plugin holds the caller", hangLimit)
			}
			select {
			case err := <-restarted:
				require.NoError(t, err, "restart after the stall")
			case <-time.After(hangLimit):
				t.Fatal("the stalled plugin was not killed and restarted by the watchdog")
			}
			err := <-patient
			if tt.callTimeout == 0 {
				require.ErrorIs(t, err, ErrCrashed, "patient call to the stalled plugin: want ErrCrashed naming StallTimeout")
				require.ErrorContains(t, err, "StallTimeout", "patient call to the stalled plugin: want ErrCrashed naming StallTimeout")
			}
		})
	}
}

// connBinary returns the conn test plugin, built once beside the others.
func connBinary(t testing.TB) string {
	t.Helper()
	connPlugin.once.Do(func() {
		connPlugin.path = filepath.Join(filepath.Dir(pluginBinary(t, "raw")), "conn")
		out, err := exec.Command("go", "build", "-o", connPlugin.path, "./testdata/plugins/conn").CombinedOutput()
		if err != nil {
			connPlugin.err = fmt.Errorf("go build ./testdata/plugins/conn: %v\n%s", err, out)
		}
	})
	require.NoError(t, connPlugin.err)
	return connPlugin.path
}

var connPlugin struct {
	once sync.Once
	path string
	err  error
}

// connConfig is the configuration of the conn test plugin in mode.
func connConfig(t testing.TB, mode string, h *recordingHandler) SubprocessConfig {
	if h == nil {
		h = newRecordingHandler()
	}
	return SubprocessConfig{
		Name: "conn", Command: connBinary(t), Env: map[string]string{"CONN_MODE": mode},
		StopGrace: 2 * time.Second, Logger: slog.New(h),
	}
}

// startConn starts the conn test plugin in mode; it is closed at cleanup.
func startConn(t *testing.T, mode string, h *recordingHandler, mod func(*SubprocessConfig)) *subprocessPlugin[string, string] {
	t.Helper()
	cfg := connConfig(t, mode, h)
	return startString(t, cfg, mod)
}

// TestSubprocessShortDeadlineDoesNotKillSlowReader: a caller whose deadline
// ends while its request is being written to a plugin that reads slowly
// (backpressure) gets ErrCanceled; the write goes on, the plugin is not
// killed, and a patient caller behind it is answered.
func TestSubprocessShortDeadlineDoesNotKillSlowReader(t *testing.T) {
	verifyNoLeaks(t)
	checkNoFDLeak(t)
	p := startConn(t, "slowread", nil, nil)
	big := strings.Repeat("x", 1<<20)
	short, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err := p.Execute(short, big)
	require.ErrorIs(t, err, ErrCanceled, "short-deadline call")
	require.ErrorIs(t, err, context.DeadlineExceeded, "short-deadline call")
	got, err := p.Execute(context.Background(), big)
	require.NoError(t, err, "patient call after it")
	require.True(t, got == big, "patient call after it: %d bytes, want the %d sent", len(got), len(big)) // not Equal: no 1 MiB diff
	n := p.restartCount()
	require.Zero(t, n, "%d restarts: the short deadline killed a plugin that was reading", n)
}

// TestSubprocessDroppedRequestNeverWritten: a caller whose ctx ends while
// its request is still queued drops it: the plugin never receives it.
func TestSubprocessDroppedRequestNeverWritten(t *testing.T) {
	verifyNoLeaks(t)
	checkNoFDLeak(t)
	h := newRecordingHandler()
	p := startConn(t, "slowread", h, nil)
	big := strings.Repeat("x", 1<<20)
	done := make(chan error, 1)
	go func() { // fills the pipe for a while
		_, err := p.Execute(context.Background(), big)
		done <- err
	}()
	ctx, stop := context.WithTimeout(context.Background(), hangLimit)
	defer stop()
	_, ok := h.wait(ctx, func(r record) bool { return r.msg == "reading" })
	require.True(t, ok, "the plugin did not start reading the big call")
	short, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err := p.Execute(short, "dropme")
	require.ErrorIs(t, err, ErrCanceled, "queued call")
	require.NoError(t, <-done, "big call")
	_, err = p.Execute(context.Background(), "after")
	require.NoError(t, err, "call after")
	_, ok = h.wait(ctx, func(r record) bool { return r.msg == `got "after"` })
	require.True(t, ok, "the plugin did not log the last call")
	_, ok = h.wait(canceledCtx(), func(r record) bool { return r.msg == `got "dropme"` })
	require.False(t, ok, "the plugin received the request its caller dropped before it was written")
}

func canceledCtx() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

// TestSubprocessNonReadingPluginMemoryBounded: requests to a plugin that
// stopped reading after a CANCEL are not buffered without bound: the heap
// grows by at most the queue's budget, whatever was sent.
func TestSubprocessNonReadingPluginMemoryBounded(t *testing.T) {
	verifyNoLeaks(t)
	checkNoFDLeak(t)
	p := startConn(t, "cancelstop", nil, func(c *SubprocessConfig) { c.StallTimeout = time.Hour })
	big := strings.Repeat("x", 1<<20)
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()
	for range 40 {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		_, err := p.Execute(ctx, big)
		cancel()
		require.ErrorIs(t, err, ErrCanceled, "Execute")
	}
	const bound = subQueueBytes + 4<<20 // the queue, and the batch being written
	grown := int64(heap()) - int64(before)
	require.LessOrEqual(t, grown, int64(bound), "the heap grew by %d MiB after 40 abandoned 1 MiB calls; the bound is %d MiB", grown>>20, bound>>20)
}

// TestSubprocessCloseReadsLateAnswers: Close of an sdk plugin that still
// writes answers to calls abandoned meanwhile (more than a pipe holds)
// ends on SHUTDOWN, without a signal: the host reads on during stop.
func TestSubprocessCloseReadsLateAnswers(t *testing.T) {
	verifyNoLeaks(t)
	checkNoFDLeak(t)
	h := newRecordingHandler()
	cfg := connConfig(t, "late", h)
	cfg.StopGrace = time.Hour
	p, err := newSubprocess[string, string](context.Background(), cfg)
	require.NoError(t, err)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
			defer cancel()
			_, err := p.Execute(ctx, "x")
			assert.ErrorIs(t, err, ErrCanceled, "Execute")
		}()
	}
	wg.Wait()
	done := make(chan error, 1)
	go func() { done <- p.Close(context.Background()) }()
	select {
	case err := <-done:
		require.NoError(t, err, "Close")
	case <-time.After(hangLimit):
		t.Fatal("Close is blocked: nobody reads the plugin's late answers during stop")
	}
	r, ok := h.wait(canceledCtx(), func(r record) bool { return r.msg == "plugin did not exit on shutdown" })
	require.False(t, ok, "Close had to signal the plugin: %v", r.attrs)
}

// TestSubprocessShortLengthFrameFailsAtOnce: a frame whose length field is
// below 9 (the pipe kept open) fails the call in flight at once with
// ErrTransport, not at its ctx's end.
func TestSubprocessShortLengthFrameFailsAtOnce(t *testing.T) {
	verifyNoLeaks(t)
	checkNoFDLeak(t)
	p := startConn(t, "shortlen", nil, nil)
	done := make(chan error, 1)
	go func() {
		_, err := p.Execute(context.Background(), "x")
		done <- err
	}()
	select {
	case err := <-done:
		require.ErrorIs(t, err, ErrTransport, "Execute: want ErrTransport for a broken protocol")
		require.ErrorContains(t, err, "broke the protocol", "Execute: want ErrTransport for a broken protocol")
	case <-time.After(hangLimit):
		t.Fatal("the call hangs after a frame with a length field below 9")
	}
}

// TestNewSubprocessBadHandshakeHonoursBounds: a child that answers HELLO
// with garbage, or closes its pipes, and stays alive, makes NewSubprocess
// fail with ErrHandshake within its ctx and StartTimeout, never waiting
// for the stop grace.
func TestNewSubprocessBadHandshakeHonoursBounds(t *testing.T) {
	verifyNoLeaks(t)
	checkNoFDLeak(t)
	for _, mode := range []string{"hellogarbage", "helloclose"} {
		for _, bound := range []string{"ctx", "StartTimeout"} {
			t.Run(mode+" "+bound, func(t *testing.T) {
				cfg := connConfig(t, mode, nil)
				cfg.StopGrace = time.Hour
				cfg.StartTimeout = time.Hour
				ctx := context.Background()
				if bound == "ctx" {
					var cancel context.CancelFunc
					ctx, cancel = context.WithTimeout(ctx, 300*time.Millisecond)
					defer cancel()
				} else {
					cfg.StartTimeout = 300 * time.Millisecond
				}
				done := make(chan error, 1)
				go func() {
					p, err := newSubprocess[string, string](ctx, cfg)
					if err == nil {
						p.Close(context.Background())
					}
					done <- err
				}()
				select {
				case err := <-done:
					require.ErrorIs(t, err, ErrHandshake, "NewSubprocess")
				case <-time.After(hangLimit):
					t.Fatalf("NewSubprocess ignores its %s", bound)
				}
			})
		}
	}
}

// TestSubprocessInfoIsACopy: Info returns copies of Surfaces and Metadata;
// changing them does not change the plugin's info.
func TestSubprocessInfoIsACopy(t *testing.T) {
	verifyNoLeaks(t)
	checkNoFDLeak(t)
	p := startConn(t, "info", nil, nil)
	info := p.Info()
	require.Len(t, info.Surfaces, 1, "Info = %+v, want surface state and metadata k=v", info)
	require.Equal(t, "v", info.Metadata["k"], "Info = %+v, want surface state and metadata k=v", info)
	info.Surfaces[0] = "changed"
	info.Metadata["k"] = "changed"
	again := p.Info()
	require.Equal(t, SurfaceState, again.Surfaces[0], "Info after changing a returned copy = %+v", again)
	require.Equal(t, "v", again.Metadata["k"], "Info after changing a returned copy = %+v", again)
}

// TestSubprocessCallerCtxIsErrCanceled: the caller's ctx ending before the
// answer gives ErrCanceled matching the ctx's error, never ErrTimeout;
// the plugin's CallTimeout gives ErrTimeout.
func TestSubprocessCallerCtxIsErrCanceled(t *testing.T) {
	verifyNoLeaks(t)
	checkNoFDLeak(t)
	p := startEcho(t, nil, func(c *SubprocessConfig) { c.CallTimeout = time.Hour })
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := p.Execute(ctx, echoReq{Op: "block", Key: "deadline"})
	require.ErrorIs(t, err, ErrCanceled, "caller deadline")
	require.ErrorIs(t, err, context.DeadlineExceeded, "caller deadline")
	require.NotErrorIs(t, err, ErrTimeout, "caller deadline")
	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	_, err = p.Execute(ctx, echoReq{Op: "block", Key: "cancel"})
	require.ErrorIs(t, err, ErrCanceled, "caller cancel")
	require.ErrorIs(t, err, context.Canceled, "caller cancel")
	q := startEcho(t, nil, func(c *SubprocessConfig) { c.CallTimeout = 50 * time.Millisecond })
	_, err = q.Execute(context.Background(), echoReq{Op: "block", Key: "timeout"})
	require.ErrorIs(t, err, ErrTimeout, "CallTimeout")
	require.NotErrorIs(t, err, ErrCanceled, "CallTimeout")
}

// TestSubprocessAnswersBeforeExitDelivered: answers a plugin writes before
// it exits reach their callers, also during Close (PROTOCOL.md §9).
func TestSubprocessAnswersBeforeExitDelivered(t *testing.T) {
	verifyNoLeaks(t)
	checkNoFDLeak(t)
	const calls = 20
	for round := range 3 {
		t.Run(fmt.Sprint("round ", round), func(t *testing.T) {
			h := newRecordingHandler()
			p := startRaw(t, "lastwords", h, nil)
			var wg sync.WaitGroup
			errs := make([]error, calls)
			for i := range calls {
				wg.Add(1)
				go func() {
					defer wg.Done()
					req := fmt.Sprint(i, strings.Repeat(" answer", 400))
					got, err := p.Execute(context.Background(), req)
					if err == nil && got != req {
						err = fmt.Errorf("answer %q, want %q", got, req)
					}
					errs[i] = err
				}()
			}
			waitCtx, stop := context.WithTimeout(context.Background(), hangLimit)
			defer stop()
			_, ok := h.wait(waitCtx, func(r record) bool { return r.msg == fmt.Sprint("queued ", calls) })
			require.True(t, ok, "the plugin did not receive every call")
			require.NoError(t, p.Close(context.Background()), "Close")
			wg.Wait()
			for i, err := range errs {
				assert.NoError(t, err, "call %d (the plugin answered it before exiting)", i)
			}
		})
	}
}

// childSwitches sums the context switches of every thread of process pid:
// each is a wake-up of the child.
func childSwitches(t *testing.T, pid int) int {
	t.Helper()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Skipf("no /proc on this system: %v", err)
	}
	n := 0
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, task.Name()))
		if err != nil {
			continue // the thread exited
		}
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.HasSuffix(k, "ctxt_switches") {
				m, _ := strconv.Atoi(strings.TrimSpace(v))
				n += m
			}
		}
	}
	return n
}

// TestSubprocessIsolatedCallWakeups: an sdk plugin that gets isolated calls
// wakes a small, fixed number of times per call, not on timers after each
// call, and not at all while idle.
func TestSubprocessIsolatedCallWakeups(t *testing.T) {
	verifyNoLeaks(t)
	checkNoFDLeak(t)
	p := startEcho(t, nil, nil)
	pid := pidOf(t, p)
	const calls = 50
	before := childSwitches(t, pid)
	for range calls {
		_, err := p.Execute(context.Background(), echoReq{Data: "x"})
		require.NoError(t, err)
		time.Sleep(5 * time.Millisecond) // spreads the calls: each finds the plugin idle
	}
	perCall := float64(childSwitches(t, pid)-before) / calls
	t.Logf("%.1f wake-ups of the plugin per isolated call", perCall)
	require.LessOrEqual(t, perCall, 10.0, "the plugin wakes %.1f times per isolated call; a request must cost a small fixed number", perCall)
	idle := childSwitches(t, pid)
	time.Sleep(100 * time.Millisecond) // an idle period, to count the wake-ups in it
	woke := childSwitches(t, pid) - idle
	require.LessOrEqual(t, woke, 3, "the idle plugin woke %d times in 100ms", woke)
}
