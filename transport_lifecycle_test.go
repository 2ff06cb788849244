//go:build linux

package goplugins

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// awaitRestart waits for the next restart report; a test that gets none in
// a minute has failed (this bounds the test, it measures nothing).
func awaitRestart(t *testing.T, restarted <-chan error) error {
	t.Helper()
	select {
	case err := <-restarted:
		return err
	case <-time.After(time.Minute):
		t.Fatal("no restart within a minute")
		return nil
	}
}

// TestSubprocessComesBackUnderRandomKills: SIGKILLed every 0.2-1 s while
// idle, the plugin is never left down with the default MaxAttempts, and
// once the kills stop it serves again after one restart.
func TestSubprocessComesBackUnderRandomKills(t *testing.T) {
	verifyNoLeaks(t)
	restarted := make(chan error, 100)
	p := startEcho(t, nil, func(c *SubprocessConfig) {
		c.Restart = RestartPolicy{Backoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, MinUptime: time.Hour}
		c.OnRestart = func(_ string, _ int, err error) { restarted <- err }
	})
	defer p.Close(context.Background())
	for range 8 {
		pid := p.Pid()
		for pid == 0 { // down: wait for the restart under way
			require.NoError(t, awaitRestart(t, restarted), "restart failed")
			pid = p.Pid()
		}
		require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
		time.Sleep(200*time.Millisecond + rand.N(800*time.Millisecond)) // the chaos schedule
	}
	for p.Pid() == 0 {
		require.NoError(t, awaitRestart(t, restarted))
	}
	resp, err := p.Execute(context.Background(), echoReq{Data: "back"})
	require.NoError(t, err, "the plugin serves again once the kills stop")
	assert.Equal(t, "back", resp.Data)
	assert.Equal(t, pidOf(t, p), p.Pid(), "Pid is the serving child's")
}

// TestSubprocessRestartBudgetResetsWithoutCalls: a child that stayed up
// the minimum uptime counts as healthy even if it served no call, so an
// idle plugin killed more often than MaxAttempts over its life is never
// left down.
func TestSubprocessRestartBudgetResetsWithoutCalls(t *testing.T) {
	verifyNoLeaks(t)
	restarted := make(chan error, 10)
	p := startEcho(t, nil, func(c *SubprocessConfig) {
		c.Restart = RestartPolicy{MaxAttempts: 1, Backoff: time.Millisecond, MinUptime: time.Nanosecond}
		c.OnRestart = func(_ string, _ int, err error) { restarted <- err }
	})
	defer p.Close(context.Background())
	for range 3 {
		require.NoError(t, syscall.Kill(p.Pid(), syscall.SIGKILL))
		require.NoError(t, awaitRestart(t, restarted), "an idle child's restart")
	}
	_, err := p.Execute(context.Background(), echoReq{Data: "still here"})
	require.NoError(t, err)
}

// TestSubprocessLifecycleEvents: crash, restart, restart-failed and
// left-down reach Manager.Subscribe with the plugin's name, and OnRestart
// learns the plugin's name.
func TestSubprocessLifecycleEvents(t *testing.T) {
	verifyNoLeaks(t)
	ctx := context.Background()
	// A copy of the plugin with its checksum: replacing the copy makes
	// the second restart fail.
	bin := filepath.Join(t.TempDir(), "echo")
	b, err := os.ReadFile(pluginBinary(t, "echo"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(bin, b, 0o755))
	names := make(chan string, 10)
	p := startEcho(t, nil, func(c *SubprocessConfig) {
		c.Command, c.Checksum = bin, checksumOf(t, bin)
		c.Restart = RestartPolicy{MaxAttempts: 2, Backoff: time.Millisecond, MinUptime: time.Hour}
		c.OnRestart = func(name string, _ int, _ error) { names <- name }
	})
	m := NewManager[echoReq, echoResp]()
	defer m.Shutdown(ctx)
	events := make(chan Event, 100)
	m.Subscribe(func(ev Event) { events <- ev })
	require.NoError(t, m.Register(p))
	next := func(kind EventKind) Event {
		t.Helper()
		for {
			select {
			case ev := <-events:
				if ev.Kind == kind {
					return ev
				}
			case <-time.After(time.Minute):
				t.Fatalf("no %v event within a minute", kind)
			}
		}
	}
	require.NoError(t, syscall.Kill(p.Pid(), syscall.SIGKILL))
	ev := next(EventCrashed)
	assert.Equal(t, "echo", ev.Plugin)
	assert.ErrorIs(t, ev.Err, ErrCrashed)
	ev = next(EventRestarted)
	assert.Equal(t, "echo", ev.Plugin)
	assert.Equal(t, 1, ev.Attempt)
	assert.Equal(t, "echo", <-names)

	require.NoError(t, os.WriteFile(bin, []byte("#!/bin/sh\nexit 1\n"), 0o755))
	require.NoError(t, syscall.Kill(p.Pid(), syscall.SIGKILL))
	next(EventCrashed)
	ev = next(EventRestartFailed)
	assert.ErrorIs(t, ev.Err, ErrChecksumMismatch)
	ev = next(EventLeftDown)
	assert.Equal(t, "echo", ev.Plugin)
	assert.ErrorIs(t, ev.Err, ErrChecksumMismatch)
	assert.Equal(t, 0, p.Pid(), "no pid while down")
	_, err = p.Execute(ctx, echoReq{})
	assert.ErrorIs(t, err, ErrCrashed)
	assert.False(t, IsRetryable(err), "left down: not retryable")
}

func checksumOf(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// TestSubprocessSurvivesItsStarterThread: a plugin started by a goroutine
// that locked its OS thread and returned (ending the thread) keeps serving.
func TestSubprocessSurvivesItsStarterThread(t *testing.T) {
	verifyNoLeaks(t)
	type started struct {
		p   *echoPlugin
		err error
		tid int
	}
	cfg := SubprocessConfig{Name: "echo", Command: pluginBinary(t, "echo"), StopGrace: 2 * time.Second, Logger: slog.New(newRecordingHandler())}
	ch := make(chan started, 1)
	var s started
	for s.tid == 0 {
		go func() { // no require here: it would end this goroutine, not the test
			runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
			if syscall.Gettid() == syscall.Getpid() {
				// The main thread is never ended, only parked: try
				// another goroutine, which runs on another thread.
				runtime.UnlockOSThread()
				ch <- started{}
				return
			}
			p, err := newSubprocess[echoReq, echoResp](context.Background(), cfg)
			ch <- started{p, err, syscall.Gettid()}
		}()
		s = <-ch
	}
	require.NoError(t, s.err, "NewSubprocess")
	defer s.p.Close(context.Background())
	task := "/proc/self/task/" + strconv.Itoa(s.tid)
	for deadline := time.Now().Add(10 * time.Second); ; runtime.Gosched() {
		if _, err := os.Stat(task); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Skip("the runtime kept the locked thread")
		}
	}
	resp, err := s.p.Execute(context.Background(), echoReq{Data: "alive"})
	require.NoError(t, err, "the plugin outlives the thread that started it")
	assert.Equal(t, "alive", resp.Data)
}

// TestSubprocessStderrFloodIsBounded: a child flooding stderr without
// newlines before it crashes leaves a short tail in the error.
func TestSubprocessStderrFloodIsBounded(t *testing.T) {
	verifyNoLeaks(t)
	_, err := newSubprocess[echoReq, echoResp](context.Background(), SubprocessConfig{
		Name: "flood", Command: "/bin/sh", Args: []string{"-c", "head -c 2000000 /dev/zero | tr '\\0' x >&2; exit 1"},
		Logger: slog.New(slog.DiscardHandler),
	})
	require.ErrorIs(t, err, ErrHandshake)
	assert.Less(t, len(err.Error()), 8<<10, "the error carries a bounded stderr tail")
}

func TestParseLogLine(t *testing.T) {
	tests := []struct {
		line  string
		level slog.Level
		msg   string
		attrs string
	}{
		{`{"level":"WARNING","msg":"m"}`, slog.LevelWarn, "m", ""},
		{`{"level":"Warning","msg":"m"}`, slog.LevelWarn, "m", ""},
		{`{"level":"warn","msg":"m"}`, slog.LevelWarn, "m", ""},
		{`{"level":"ERROR","message":"m"}`, slog.LevelError, "m", ""},
		{`{"level":"critical","msg":"m"}`, slog.LevelError, "m", ""},
		{`{"level":"Debug","msg":"m"}`, slog.LevelDebug, "m", ""},
		{`{"msg":"no level","n":1}`, slog.LevelInfo, "no level", "n=1"},
		{`{"level":"loud","msg":"m"}`, slog.LevelInfo, "m", "level=loud"},
		{`{"level":"info","msg":"sizes","size":4194304,"ratio":0.5,"time":"x"}`, slog.LevelInfo, "sizes", "ratio=0.5 size=4194304"},
		{`plain text`, slog.LevelInfo, "plain text", ""},
		{`{"level":"info"} trailing`, slog.LevelInfo, `{"level":"info"} trailing`, ""},
	}
	for _, tt := range tests {
		level, msg, attrs := parseLogLine([]byte(tt.line))
		var got []string
		for _, a := range attrs {
			got = append(got, a.String())
		}
		assert.Equal(t, tt.level, level, "parseLogLine(%s): level", tt.line)
		assert.Equal(t, tt.msg, msg, "parseLogLine(%s): message", tt.line)
		assert.Equal(t, tt.attrs, strings.Join(got, " "), "parseLogLine(%s): attributes", tt.line)
	}
	_, _, attrs := parseLogLine([]byte(`{"level":"info","size":4194304}`))
	require.NotEmpty(t, attrs, "the integer field is missing")
	assert.Equal(t, slog.KindInt64, attrs[0].Value.Kind(), "an integer field has kind %v, want Int64", attrs[0].Value.Kind())
}

func TestRemoteErrorIsTheSameOnBothTransports(t *testing.T) {
	err := remoteError("p", "CALL", "frame_too_large", "too big", true)
	var rep *ErrorReply
	require.ErrorAs(t, err, &rep)
	assert.Equal(t, "frame_too_large", rep.Code)
	assert.ErrorIs(t, err, ErrFrameTooLarge)
	assert.ErrorIs(t, err, ErrRemote)
	assert.False(t, IsRetryable(err), "an oversize request can never fit: not retryable")

	err = remoteError("p", "CALL", "panic", "boom", false)
	assert.ErrorIs(t, err, ErrPanic)
	assert.ErrorIs(t, err, ErrRemote)

	err = remoteError("p", "CALL", "busy", "later", true)
	assert.True(t, IsRetryable(err))
	assert.False(t, errors.Is(err, ErrTransport))
}

// TestSubprocessCloseCountsGraceFromShutdown: when SHUTDOWN cannot be
// written (the plugin stopped reading and its pipe is full), SIGTERM still
// goes StopGrace after Close began, not StopGrace after the write gave up.
func TestSubprocessCloseCountsGraceFromShutdown(t *testing.T) {
	verifyNoLeaks(t)
	const grace = 400 * time.Millisecond
	p, err := newSubprocess[echoReq, echoResp](context.Background(), SubprocessConfig{
		Name: "raw", Command: pluginBinary(t, "raw"), Env: map[string]string{"RAW_MODE": "noread"},
		StopGrace: grace, Logger: slog.New(slog.DiscardHandler),
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close(context.Background()) })
	// A request larger than the pipe's buffer: its write blocks, with no
	// deadline to cut it short, until the plugin dies.
	done := make(chan error, 1)
	go func() {
		_, err := p.Execute(context.Background(), echoReq{Data: strings.Repeat("x", 1<<20)})
		done <- err
	}()
	awaitPipeFull(t, p.Pid())
	began := time.Now()
	require.NoError(t, p.Close(context.Background()))
	took := time.Since(began)
	t.Logf("Close took %v; Execute: %v", took, <-done)
	// The plugin exits on SIGTERM: Close ends about one grace period after
	// it began; two were the bug.
	assert.Less(t, took, 3*grace/2, "SIGTERM was sent later than StopGrace after Close began")
}

// awaitPipeFull waits until the pipe the plugin pid reads its requests
// from (its descriptor 3) holds a full pipe buffer: the host's writes to it
// block.
func awaitPipeFull(t *testing.T, pid int) {
	t.Helper()
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/fd/3")
	require.NoError(t, err)
	defer f.Close()
	for deadline := time.Now().Add(time.Minute); ; runtime.Gosched() {
		n, err := unix.IoctlGetInt(int(f.Fd()), unix.TIOCINQ) // FIONREAD
		require.NoError(t, err)
		if n >= 60<<10 { // a pipe is full when its pages are: some hold less than a page
			return
		}
		require.True(t, time.Now().Before(deadline), "the request pipe holds %d bytes after a minute", n)
	}
}

// TestConstructorsExposePidAndSurfaces: the plugins NewSubprocess and
// NewGRPCPlugin return implement the reload surfaces and interface{ Pid()
// int }, as their docs promise, reached by type assertion.
func TestConstructorsExposePidAndSurfaces(t *testing.T) {
	verifyNoLeaks(t)
	ctx := context.Background()
	sub, err := NewSubprocess[echoReq, echoResp](ctx, SubprocessConfig{Name: "echo", Command: pluginBinary(t, "echo"), Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	defer sub.Close(ctx)
	grpcp, err := NewGRPCPlugin[counterReq, counterResp](ctx, GRPCConfig{Name: "counter", Command: buildGRPCCounter(t), Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	defer grpcp.Close(ctx)
	for name, p := range map[string]any{"subprocess": sub, "grpc": grpcp} {
		pp, ok := p.(interface{ Pid() int })
		require.True(t, ok, "%s: no Pid method", name)
		assert.NotZero(t, pp.Pid(), "%s: the serving child's pid", name)
		for _, ok := range []bool{
			func() bool { _, ok := p.(StatefulPlugin); return ok }(),
			func() bool { _, ok := p.(StreamPlugin); return ok }(),
			func() bool { _, ok := p.(SchemaPlugin); return ok }(),
		} {
			assert.True(t, ok, "%s: a reload surface is missing", name)
		}
	}
}
