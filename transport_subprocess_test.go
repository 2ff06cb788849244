//go:build unix

package goplugins

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	goerrors "github.com/agilira/go-errors"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSubprocessLifecycle(t *testing.T) {
	verifyNoLeaks(t)
	checkNoFDLeak(t)
	ctx := context.Background()
	p := startEcho(t, nil, nil)

	info := p.Info()
	const wantInfo = "Info = %+v; want echo 1.0.0 with surfaces state and stream"
	require.Equal(t, "echo", info.Name, wantInfo, info)
	require.Equal(t, "1.0.0", info.Version, wantInfo, info)
	require.True(t, info.Has(SurfaceState), wantInfo, info)
	require.True(t, info.Has(SurfaceStream), wantInfo, info)
	require.False(t, info.Has(SurfaceSchema), wantInfo, info)
	resp, err := p.Execute(ctx, echoReq{Data: "hello"})
	require.NoError(t, err, "Execute")
	require.Equal(t, "hello", resp.Data, "Execute")
	require.NoError(t, p.Health(ctx), "Health")
	pid := pidOf(t, p)
	require.NoError(t, p.Close(ctx), "Close")
	require.NoError(t, p.Close(ctx), "second Close")
	checkReaped(t, pid)
	_, err = p.Execute(ctx, echoReq{Data: "late"})
	require.ErrorIs(t, err, ErrClosed, "Execute after Close")
	require.ErrorIs(t, p.Health(ctx), ErrClosed, "Health after Close")
}

func TestSubprocessConcurrentCalls(t *testing.T) {
	verifyNoLeaks(t)
	ctx := context.Background()
	p := startEcho(t, nil, nil)

	// A call blocked in the plugin must not hold up the others.
	blockCtx, unblock := context.WithCancel(ctx)
	blocked := make(chan error, 1)
	go func() {
		_, err := p.Execute(blockCtx, echoReq{Op: "block", Key: "multiplex"})
		blocked <- err
	}()

	const callers, each = 32, 25
	var wg sync.WaitGroup
	errs := make(chan error, callers*each)
	for g := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				want := strings.Repeat(string(rune('a'+g%26)), i+1)
				resp, err := p.Execute(ctx, echoReq{Data: want})
				if err == nil && resp.Data != want {
					err = errors.New("got " + resp.Data + ", want " + want)
				}
				if err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		assert.NoError(t, err)
	}
	unblock()
	require.ErrorIs(t, <-blocked, context.Canceled, "blocked call")
}

func TestSubprocessCancellationReachesHandler(t *testing.T) {
	verifyNoLeaks(t)
	p := startEcho(t, nil, nil)
	withCallTimeout := startEcho(t, nil, func(c *SubprocessConfig) { c.CallTimeout = time.Second })
	background := func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) }
	tests := []struct {
		name    string
		p       *echoPlugin
		ctx     func() (context.Context, context.CancelFunc)
		cancel  bool // cancel ctx once the handler runs
		wantErr []error
	}{
		{"caller cancels", p, background, true, []error{ErrCanceled, context.Canceled}},
		{"caller deadline", p, func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 50*time.Millisecond)
		}, false, []error{ErrCanceled, context.DeadlineExceeded}},
		{"call timeout", withCallTimeout, background, false, []error{ErrTimeout}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := tt.ctx()
			defer cancel()
			done := make(chan error, 1)
			go func() {
				_, err := tt.p.Execute(ctx, echoReq{Op: "block", Key: tt.name})
				done <- err
			}()
			if tt.cancel {
				startCtx, stop := context.WithTimeout(context.Background(), 10*time.Second)
				defer stop()
				_, err := tt.p.Execute(startCtx, echoReq{Op: "started", Key: tt.name})
				require.NoError(t, err, "waiting for the handler to start")
				cancel()
			}
			err := <-done
			for _, want := range tt.wantErr {
				require.ErrorIs(t, err, want, "Execute")
			}
			// The plugin answers "await" only once the blocked handler has
			// seen its ctx end: proof that the cancellation crossed over.
			awaitCtx, stop := context.WithTimeout(context.Background(), 10*time.Second)
			defer stop()
			resp, err := tt.p.Execute(awaitCtx, echoReq{Op: "await", Key: tt.name})
			require.NoError(t, err, "await: the handler never saw its ctx end")
			require.Equal(t, "handler observed cancellation", resp.Data, "await: the handler never saw its ctx end")
		})
	}
}

func TestSubprocessCrashAndRestart(t *testing.T) {
	verifyNoLeaks(t)
	checkNoFDLeak(t)
	ctx := context.Background()
	restarted := make(chan error, 10)
	p := startEcho(t, nil, func(c *SubprocessConfig) {
		c.Restart = RestartPolicy{MaxAttempts: 3, Backoff: 10 * time.Millisecond}
		c.OnRestart = func(_ string, attempt int, err error) { restarted <- err }
	})
	pid := pidOf(t, p)

	_, err := p.Execute(ctx, echoReq{Op: "crash", Data: "mid-call"})
	require.ErrorIs(t, err, ErrCrashed, "crash error")
	assert.ErrorContains(t, err, "exit status 3", "crash error lacks the exit status")
	var ge *goerrors.Error
	if assert.ErrorAs(t, err, &ge, "crash error lacks the stderr tail in its context") {
		assert.Contains(t, fmt.Sprint(ge.Context["stderr_tail"]), "fatal: crashing on purpose: mid-call",
			"crash error %q lacks the stderr tail in its context", err)
	}
	assert.NotContains(t, err.Error(), "crashing on purpose", "crash error has the stderr tail in its message: keep it one line")
	assert.False(t, IsRetryable(err), "the error of a call in flight during a crash is retryable: %v", err)
	require.NoError(t, <-restarted, "restart failed")
	resp, err := p.Execute(ctx, echoReq{Data: "after restart"})
	require.NoError(t, err, "Execute after restart")
	require.Equal(t, "after restart", resp.Data, "Execute after restart")
	require.NotEqual(t, pid, pidOf(t, p), "pid %d unchanged after the restart", pid)
	require.Equal(t, 1, p.restartCount(), "Restarts")
	checkReaped(t, pid)
}

// TestSubprocessKilledWhileIdle: with no call in flight nobody reads the
// pipe, so the supervisor must notice the exit by itself.
func TestSubprocessKilledWhileIdle(t *testing.T) {
	verifyNoLeaks(t)
	checkNoFDLeak(t)
	restarted := make(chan error, 10)
	p := startEcho(t, nil, func(c *SubprocessConfig) {
		c.Restart = RestartPolicy{Backoff: time.Millisecond}
		c.OnRestart = func(_ string, attempt int, err error) { restarted <- err }
	})
	pid := pidOf(t, p)
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	require.NoError(t, <-restarted, "restart failed")
	require.NotEqual(t, pid, pidOf(t, p), "pid %d unchanged after the restart", pid)
	checkReaped(t, pid)
}

func TestSubprocessDownFailsFast(t *testing.T) {
	verifyNoLeaks(t)
	ctx := context.Background()
	tests := []struct {
		name      string
		policy    RestartPolicy
		retryable bool
	}{
		{"restart pending", RestartPolicy{MaxAttempts: 1, Backoff: time.Hour}, true},
		{"restarts disabled", RestartPolicy{MaxAttempts: -1}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := startEcho(t, nil, func(c *SubprocessConfig) { c.Restart = tt.policy })
			_, err := p.Execute(ctx, echoReq{Op: "crash"})
			require.ErrorIs(t, err, ErrCrashed, "crash error")
			// The crash error was returned, so the connection is dead.
			_, err = p.Execute(ctx, echoReq{Data: "while down"})
			require.ErrorIs(t, err, ErrCrashed, "Execute while down")
			require.Equal(t, tt.retryable, IsRetryable(err), "Execute while down: IsRetryable(%v)", err)
			require.Error(t, p.Health(ctx), "Health is nil while the plugin is down")
			require.NoError(t, p.Close(ctx))
		})
	}
}

func TestSubprocessCloseKillsHungPlugin(t *testing.T) {
	verifyNoLeaks(t)
	checkNoFDLeak(t)
	ctx := context.Background()
	h := newRecordingHandler()
	p := startEcho(t, h, func(c *SubprocessConfig) { c.StopGrace = 100 * time.Millisecond })
	pid := pidOf(t, p)
	_, err := p.Execute(ctx, echoReq{Op: "ignore_term"})
	require.NoError(t, err)
	hangCtx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	_, err = p.Execute(hangCtx, echoReq{Op: "hang", Key: "hung"})
	require.ErrorIs(t, err, ErrCanceled, "hang error")
	require.NoError(t, p.Close(ctx), "Close")
	checkReaped(t, pid)
	waitCtx, stop := context.WithTimeout(ctx, 5*time.Second)
	defer stop()
	_, ok := h.wait(waitCtx, func(r record) bool {
		return r.msg == "plugin did not exit on shutdown" && r.attrs["signal"] == "killed"
	})
	require.True(t, ok, "no record says the hung plugin was SIGKILLed: %+v", h.records())
}

func TestSubprocessCloseWithCallInFlight(t *testing.T) {
	verifyNoLeaks(t)
	checkNoFDLeak(t)
	expired, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name     string
		closeCtx context.Context
		signal   string // the last signal Close had to send
	}{
		// SHUTDOWN waits for the hung handler; SIGTERM ends it.
		{"grace periods", context.Background(), "terminated"},
		// With Close's ctx already done there is no grace: SIGKILL at once.
		{"expired ctx", expired, "killed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newRecordingHandler()
			p := startEcho(t, h, func(c *SubprocessConfig) { c.StopGrace = 100 * time.Millisecond })
			pid := pidOf(t, p)
			done := make(chan error, 1)
			go func() {
				_, err := p.Execute(context.Background(), echoReq{Op: "hang", Key: "close"})
				done <- err
			}()
			_, err := p.Execute(context.Background(), echoReq{Op: "started", Key: "close"})
			require.NoError(t, err)
			require.NoError(t, p.Close(tt.closeCtx), "Close")
			require.ErrorIs(t, <-done, ErrClosed, "call in flight during Close")
			checkReaped(t, pid)
			waitCtx, stop := context.WithTimeout(context.Background(), 5*time.Second)
			defer stop()
			_, ok := h.wait(waitCtx, func(r record) bool {
				return r.msg == "plugin did not exit on shutdown" && r.attrs["signal"] == tt.signal
			})
			require.True(t, ok, "no record says Close sent %s: %+v", tt.signal, h.records())
		})
	}
}

func TestSubprocessOutputReachesLogger(t *testing.T) {
	verifyNoLeaks(t)
	ctx := context.Background()
	h := newRecordingHandler()
	p := startEcho(t, h, nil)
	resp, err := p.Execute(ctx, echoReq{Op: "print", Data: "still works"})
	require.NoError(t, err, "Execute after stdout pollution")
	require.Equal(t, "still works", resp.Data, "Execute after stdout pollution")
	tests := []struct {
		name   string
		level  slog.Level
		msg    string
		stream string
		attr   string
		value  any
	}{
		{"stdout at startup", slog.LevelInfo, "stray stdout at startup: must not break the protocol", "stdout", "", nil},
		{"stdout in a call", slog.LevelInfo, "stray stdout line from the plugin", "stdout", "", nil},
		{"json stderr keeps its level", slog.LevelWarn, "json stderr line", "stderr", "answer", int64(42)},
		{"plain stderr", slog.LevelInfo, "plain stderr line", "stderr", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			waitCtx, stop := context.WithTimeout(ctx, 5*time.Second)
			defer stop()
			r, ok := h.wait(waitCtx, func(r record) bool { return r.msg == tt.msg })
			require.True(t, ok, "no record %q", tt.msg)
			const wantRecord = "record = %+v; want level %v, plugin echo, stream %s"
			require.Equal(t, tt.level, r.level, wantRecord, r, tt.level, tt.stream)
			require.Equal(t, "echo", r.attrs["plugin"], wantRecord, r, tt.level, tt.stream)
			require.Equal(t, tt.stream, r.attrs["stream"], wantRecord, r, tt.level, tt.stream)
			if tt.attr != "" {
				require.Equal(t, tt.value, r.attrs[tt.attr], "record attribute %s", tt.attr)
			}
		})
	}
}

func TestSubprocessGarbageOnProtocolPipe(t *testing.T) {
	verifyNoLeaks(t)
	checkNoFDLeak(t)
	p, err := newSubprocess[string, string](context.Background(), SubprocessConfig{
		Name: "raw", Command: pluginBinary(t, "raw"), Env: map[string]string{"RAW_MODE": "garbage"},
		Restart: RestartPolicy{MaxAttempts: -1}, Logger: slog.New(newRecordingHandler()),
	})
	require.NoError(t, err)
	defer p.Close(context.Background())
	_, err = p.Execute(context.Background(), "hi")
	require.ErrorIs(t, err, ErrTransport, "Execute: want ErrTransport saying the plugin broke the protocol")
	require.ErrorContains(t, err, "broke the protocol", "Execute: want ErrTransport saying the plugin broke the protocol")
}

func TestSubprocessFrameTooLarge(t *testing.T) {
	verifyNoLeaks(t)
	ctx := context.Background()
	t.Run("request over the plugin's limit", func(t *testing.T) {
		p := startEcho(t, nil, func(c *SubprocessConfig) { c.Env = map[string]string{"ECHO_MAX_FRAME": "2048"} })
		_, err := p.Execute(ctx, echoReq{Data: strings.Repeat("y", 4000)})
		require.ErrorIs(t, err, ErrFrameTooLarge)
		_, err = p.Execute(ctx, echoReq{Data: "small"})
		require.NoError(t, err, "call after the refused one")
	})
	t.Run("answer over the host's limit, refused by the plugin", func(t *testing.T) {
		p := startEcho(t, nil, func(c *SubprocessConfig) { c.MaxFrameSize = 4096 })
		_, err := p.Execute(ctx, echoReq{Op: "big", N: 10000})
		require.ErrorIs(t, err, ErrFrameTooLarge, "want ErrFrameTooLarge from the plugin")
		require.ErrorIs(t, err, ErrRemote, "want ErrFrameTooLarge from the plugin")
		_, err = p.Execute(ctx, echoReq{Data: "small"})
		require.NoError(t, err, "call after the refused one")
	})
	t.Run("answer over the host's limit, refused by the host", func(t *testing.T) {
		p, err := newSubprocess[string, string](ctx, SubprocessConfig{
			Name: "raw", Command: pluginBinary(t, "raw"), Env: map[string]string{"RAW_MODE": "bigframe"},
			MaxFrameSize: 4096, Logger: slog.New(newRecordingHandler()),
		})
		require.NoError(t, err)
		defer p.Close(ctx)
		_, err = p.Execute(ctx, "big")
		require.ErrorIs(t, err, ErrFrameTooLarge)
		got, err := p.Execute(ctx, "small")
		require.NoError(t, err, "call after the refused one")
		require.Equal(t, "small", got, "call after the refused one")
	})
}

func TestSubprocessStartFailures(t *testing.T) {
	verifyNoLeaks(t)
	checkNoFDLeak(t)
	dir := t.TempDir()
	marker := filepath.Join(dir, "ran")
	echoBin := pluginBinary(t, "echo")
	b, err := os.ReadFile("/bin/sh")
	if err != nil {
		t.Skip("no /bin/sh")
	}
	shSum := sha256.Sum256(b)
	shSum[0] ^= 0xff
	tests := []struct {
		name string
		cfg  SubprocessConfig
		want []error
	}{
		{"not a plugin", SubprocessConfig{Name: "sh", Command: "/bin/sh", Args: []string{"-c", "echo I am not a plugin"}}, []error{ErrHandshake}},
		{"silent non-plugin", SubprocessConfig{Name: "sh", Command: "/bin/sh", Args: []string{"-c", "exec sleep 30"}, StartTimeout: 200 * time.Millisecond}, []error{ErrHandshake}},
		{"wrong name", SubprocessConfig{Name: "other", Command: echoBin}, []error{ErrHandshake}},
		{"wrong version", SubprocessConfig{Name: "echo", Version: "9.9.9", Command: echoBin}, []error{ErrHandshake, ErrIncompatibleVersion}},
		{"protocol version", SubprocessConfig{Name: "raw", Command: pluginBinary(t, "raw"), Env: map[string]string{"RAW_MODE": "badversion"}}, []error{ErrHandshake}},
		{"plugin's maximum frame size over the limit", SubprocessConfig{Name: "raw", Command: pluginBinary(t, "raw"), Env: map[string]string{"RAW_MODE": "hugemax"}}, []error{ErrHandshake}},
		{"maximum frame size over the limit", SubprocessConfig{Name: "echo", Command: echoBin, MaxFrameSize: 1<<30 + 1}, []error{ErrInvalidConfig}},
		{"checksum mismatch", SubprocessConfig{Name: "sh", Command: "/bin/sh", Args: []string{"-c", "touch " + marker}, Checksum: "sha256:" + hex.EncodeToString(shSum[:])}, []error{ErrChecksumMismatch}},
		{"bad checksum syntax", SubprocessConfig{Name: "echo", Command: echoBin, Checksum: "md5:00"}, []error{ErrInvalidConfig}},
		{"missing binary", SubprocessConfig{Name: "echo", Command: filepath.Join(dir, "nope")}, []error{ErrTransport}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Logger = slog.New(newRecordingHandler())
			p, err := newSubprocess[echoReq, echoResp](context.Background(), tt.cfg)
			if err == nil {
				p.Close(context.Background())
			}
			require.Error(t, err, "NewSubprocess succeeded")
			for _, want := range tt.want {
				require.ErrorIs(t, err, want)
			}
		})
	}
	_, err = os.Stat(marker)
	require.ErrorIs(t, err, fs.ErrNotExist, "the binary with the wrong checksum ran")
}

func TestSubprocessChecksumVerifiedExec(t *testing.T) {
	verifyNoLeaks(t)
	b, err := os.ReadFile(pluginBinary(t, "echo"))
	require.NoError(t, err)
	sum := sha256.Sum256(b)
	p := startEcho(t, nil, func(c *SubprocessConfig) { c.Checksum = "sha256:" + hex.EncodeToString(sum[:]) })
	resp, err := p.Execute(context.Background(), echoReq{Data: "verified"})
	require.NoError(t, err, "Execute")
	require.Equal(t, "verified", resp.Data, "Execute")
}

func TestSubprocessRunByHand(t *testing.T) {
	bin := pluginBinary(t, "echo")
	for _, env := range [][]string{nil, {"GOPLUGINS_MAGIC_COOKIE=wrong"}} {
		cmd := exec.Command(bin)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		const want = "env %q: err %v, output %q; want exit status 1 and a message"
		if assert.ErrorAs(t, err, &exit, want, env, err, out) {
			assert.Equal(t, 1, exit.ExitCode(), want, env, err, out)
		}
		assert.Contains(t, string(out), "cannot be run by hand", want, env, err, out)
	}
}

func TestSubprocessReloadSurfaces(t *testing.T) {
	verifyNoLeaks(t)
	ctx := context.Background()
	v1 := startEcho(t, nil, nil)
	v2 := startEcho(t, nil, func(c *SubprocessConfig) { c.Command, c.Version = pluginBinary(t, "echo2"), "2.0.0" })
	mustExec := func(p *echoPlugin, req echoReq) echoResp {
		t.Helper()
		resp, err := p.Execute(ctx, req)
		require.NoError(t, err, req.Op)
		return resp
	}

	mustExec(v1, echoReq{Op: "set", Data: "alpha"})
	state, err := v1.PersistState(ctx)
	require.NoError(t, err)
	require.NoError(t, v2.RestoreState(ctx, state))
	got := mustExec(v2, echoReq{Op: "get"})
	require.Equal(t, "alpha (restored from 1.0.0)", got.Data, "v2 state = %+v", got)
	require.Equal(t, "2.0.0", got.Version, "v2 state = %+v", got)
	require.Equal(t, "alpha", mustExec(v1, echoReq{Op: "get"}).Data, "v1 state after PersistState: want it unchanged")

	for range 3 {
		mustExec(v1, echoReq{Op: "tick"})
	}
	pos, err := v1.Checkpoint(ctx)
	require.NoError(t, err, "Checkpoint")
	require.Equal(t, "3", string(pos), "Checkpoint")
	_, err = v1.Execute(ctx, echoReq{Op: "tick"})
	require.ErrorIs(t, err, ErrRemote, "tick after Checkpoint: want the plugin's refusal")
	require.NoError(t, v2.Resume(ctx, pos))
	require.Equal(t, "4", mustExec(v2, echoReq{Op: "tick"}).Data, "v2 tick after Resume")

	require.ErrorIs(t, v1.CheckCompat(ctx, v2.Info()), ErrInvalidPlugin, "CheckCompat on a plugin without the schema surface")
}

func TestSubprocessRemoteErrors(t *testing.T) {
	verifyNoLeaks(t)
	ctx := context.Background()
	p := startEcho(t, nil, nil)
	pid := pidOf(t, p)
	tests := []struct {
		name      string
		req       echoReq
		want      []error
		code      string
		retryable bool
	}{
		{"panic", echoReq{Op: "panic", Data: "boom"}, []error{ErrPanic, ErrRemote}, "panic", false},
		{"retryable", echoReq{Op: "retryable"}, []error{ErrRemote}, "busy", true},
		{"plain", echoReq{Op: "no-such-op"}, []error{ErrRemote}, "bad_op", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := p.Execute(ctx, tt.req)
			for _, want := range tt.want {
				require.ErrorIs(t, err, want)
			}
			var rep *ErrorReply
			require.ErrorAs(t, err, &rep, "want an ErrorReply with code %q", tt.code)
			require.Equal(t, tt.code, rep.Code, "error = %v, want an ErrorReply with code %q", err, tt.code)
			require.Equal(t, tt.retryable, IsRetryable(err), "IsRetryable(%v)", err)
		})
	}
	got := pidOf(t, p)
	require.Equal(t, pid, got, "the plugin was replaced (pid %d, then %d): a panic must not kill it", pid, got)
}

func TestSubprocessPythonPlugin(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed; the Python plugin test needs it")
	}
	verifyNoLeaks(t)
	checkNoFDLeak(t)
	ctx := context.Background()
	p, err := newSubprocess[map[string]any, map[string]any](ctx, SubprocessConfig{
		Name: "pyecho", Version: "1.0.0", Command: python, Args: []string{"testdata/plugins/python/echo_plugin.py"},
		Logger: slog.New(newRecordingHandler()),
	})
	require.NoError(t, err)
	defer p.Close(ctx)
	resp, err := p.Execute(ctx, map[string]any{"data": "from Go to Python"})
	require.NoError(t, err, "Execute")
	require.Equal(t, "from Go to Python", resp["data"], "Execute = %v", resp)
	require.NoError(t, p.Health(ctx), "Health")
	require.NoError(t, p.Close(ctx))
}

// TestSubprocessVerifiedScriptPlugin: an executable script plugin with a
// checksum runs from its verified copy (its interpreter must be able to
// open that copy after the exec).
func TestSubprocessVerifiedScriptPlugin(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed; the Python plugin test needs it")
	}
	verifyNoLeaks(t)
	checkNoFDLeak(t)
	src, err := os.ReadFile("testdata/plugins/python/echo_plugin.py")
	require.NoError(t, err)
	_, body, _ := strings.Cut(string(src), "\n")
	script := []byte("#!" + python + "\n" + body)
	path := filepath.Join(t.TempDir(), "echo_plugin.py")
	require.NoError(t, os.WriteFile(path, script, 0o755))
	sum := sha256.Sum256(script)
	ctx := context.Background()
	p, err := newSubprocess[map[string]any, map[string]any](ctx, SubprocessConfig{
		Name: "pyecho", Version: "1.0.0", Command: path, Checksum: "sha256:" + hex.EncodeToString(sum[:]),
		Logger: slog.New(newRecordingHandler()),
	})
	require.NoError(t, err)
	defer p.Close(ctx)
	resp, err := p.Execute(ctx, map[string]any{"data": "verified script"})
	require.NoError(t, err, "Execute")
	require.Equal(t, "verified script", resp["data"], "Execute = %v", resp)
	require.NoError(t, p.Close(ctx))
}

func TestSubprocessEnvironment(t *testing.T) {
	verifyNoLeaks(t)
	t.Setenv("GOPLUGINS_TEST_HOST_VAR", "from the host")
	cookie := "GOPLUGINS_MAGIC_COOKIE=d3b07384d113edec49eaa6238ad5ff00-goplugins"
	tests := []struct {
		name    string
		inherit bool
		want    []string // exactly these, in any order, unless inherit
		wantHas []string
	}{
		{"minimal", false, []string{"A=1", "B=two", cookie, "PATH=" + os.Getenv("PATH")}, nil},
		{"inherited", true, nil, []string{"A=1", "B=two", cookie, "GOPLUGINS_TEST_HOST_VAR=from the host"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := startEcho(t, nil, func(c *SubprocessConfig) {
				c.Env = map[string]string{"A": "1", "B": "two"}
				c.InheritEnv = tt.inherit
			})
			resp, err := p.Execute(context.Background(), echoReq{Op: "env"})
			require.NoError(t, err)
			got := strings.Split(resp.Data, "\n")
			if tt.want != nil {
				require.ElementsMatch(t, tt.want, got, "plugin environment %q, want exactly %q", got, tt.want)
			}
			for _, kv := range tt.wantHas {
				require.Contains(t, got, kv, "plugin environment lacks %q: %q", kv, got)
			}
		})
	}
}
