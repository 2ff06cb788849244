//go:build unix

package goplugins

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	goerrors "github.com/agilira/go-errors"
)

func TestSubprocessLifecycle(t *testing.T) {
	verifyNoLeaks(t)
	checkNoFDLeak(t)
	ctx := context.Background()
	p := startEcho(t, nil, nil)

	info := p.Info()
	if info.Name != "echo" || info.Version != "1.0.0" || !info.Has(SurfaceState) || !info.Has(SurfaceStream) || info.Has(SurfaceSchema) {
		t.Fatalf("Info = %+v; want echo 1.0.0 with surfaces state and stream", info)
	}
	resp, err := p.Execute(ctx, echoReq{Data: "hello"})
	if err != nil || resp.Data != "hello" {
		t.Fatalf("Execute = %+v, %v; want hello", resp, err)
	}
	if err := p.Health(ctx); err != nil {
		t.Fatalf("Health: %v", err)
	}
	pid := pidOf(t, p)
	if err := p.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := p.Close(ctx); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	checkReaped(t, pid)
	if _, err := p.Execute(ctx, echoReq{Data: "late"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Execute after Close error = %v, want ErrClosed", err)
	}
	if err := p.Health(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("Health after Close error = %v, want ErrClosed", err)
	}
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
		t.Error(err)
	}
	unblock()
	if err := <-blocked; !errors.Is(err, context.Canceled) {
		t.Fatalf("blocked call error = %v, want context.Canceled", err)
	}
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
				if _, err := tt.p.Execute(startCtx, echoReq{Op: "started", Key: tt.name}); err != nil {
					t.Fatalf("waiting for the handler to start: %v", err)
				}
				cancel()
			}
			err := <-done
			for _, want := range tt.wantErr {
				if !errors.Is(err, want) {
					t.Fatalf("Execute error = %v, want %v", err, want)
				}
			}
			// The plugin answers "await" only once the blocked handler has
			// seen its ctx end: proof that the cancellation crossed over.
			awaitCtx, stop := context.WithTimeout(context.Background(), 10*time.Second)
			defer stop()
			resp, err := tt.p.Execute(awaitCtx, echoReq{Op: "await", Key: tt.name})
			if err != nil || resp.Data != "handler observed cancellation" {
				t.Fatalf("await = %+v, %v; the handler never saw its ctx end", resp, err)
			}
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
	if !errors.Is(err, ErrCrashed) {
		t.Fatalf("crash error = %v, want ErrCrashed", err)
	}
	if !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("crash error %q lacks the exit status", err)
	}
	var ge *goerrors.Error
	if !errors.As(err, &ge) || !strings.Contains(fmt.Sprint(ge.Context["stderr_tail"]), "fatal: crashing on purpose: mid-call") {
		t.Errorf("crash error %q lacks the stderr tail in its context", err)
	}
	if strings.Contains(err.Error(), "crashing on purpose") {
		t.Errorf("crash error %q has the stderr tail in its message: keep it one line", err)
	}
	if IsRetryable(err) {
		t.Errorf("the error of a call in flight during a crash is retryable: %v", err)
	}
	if err := <-restarted; err != nil {
		t.Fatalf("restart failed: %v", err)
	}
	resp, err := p.Execute(ctx, echoReq{Data: "after restart"})
	if err != nil || resp.Data != "after restart" {
		t.Fatalf("Execute after restart = %+v, %v", resp, err)
	}
	if newPID := pidOf(t, p); newPID == pid {
		t.Fatalf("pid %d unchanged after the restart", pid)
	}
	if p.restartCount() != 1 {
		t.Fatalf("Restarts = %d, want 1", p.restartCount())
	}
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
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := <-restarted; err != nil {
		t.Fatalf("restart failed: %v", err)
	}
	if got := pidOf(t, p); got == pid {
		t.Fatalf("pid %d unchanged after the restart", pid)
	}
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
			if _, err := p.Execute(ctx, echoReq{Op: "crash"}); !errors.Is(err, ErrCrashed) {
				t.Fatalf("crash error = %v, want ErrCrashed", err)
			}
			// The crash error was returned, so the connection is dead.
			_, err := p.Execute(ctx, echoReq{Data: "while down"})
			if !errors.Is(err, ErrCrashed) || IsRetryable(err) != tt.retryable {
				t.Fatalf("Execute while down error = %v (retryable %v), want ErrCrashed with retryable %v", err, IsRetryable(err), tt.retryable)
			}
			if err := p.Health(ctx); err == nil {
				t.Fatal("Health is nil while the plugin is down")
			}
			if err := p.Close(ctx); err != nil {
				t.Fatal(err)
			}
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
	if _, err := p.Execute(ctx, echoReq{Op: "ignore_term"}); err != nil {
		t.Fatal(err)
	}
	hangCtx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := p.Execute(hangCtx, echoReq{Op: "hang", Key: "hung"}); !errors.Is(err, ErrCanceled) {
		t.Fatalf("hang error = %v, want ErrCanceled", err)
	}
	if err := p.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	checkReaped(t, pid)
	waitCtx, stop := context.WithTimeout(ctx, 5*time.Second)
	defer stop()
	if _, ok := h.wait(waitCtx, func(r record) bool {
		return r.msg == "plugin did not exit on shutdown" && r.attrs["signal"] == "killed"
	}); !ok {
		t.Fatalf("no record says the hung plugin was SIGKILLed: %+v", h.root.records)
	}
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
			if _, err := p.Execute(context.Background(), echoReq{Op: "started", Key: "close"}); err != nil {
				t.Fatal(err)
			}
			if err := p.Close(tt.closeCtx); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if err := <-done; !errors.Is(err, ErrClosed) {
				t.Fatalf("call in flight during Close: %v, want ErrClosed", err)
			}
			checkReaped(t, pid)
			waitCtx, stop := context.WithTimeout(context.Background(), 5*time.Second)
			defer stop()
			if _, ok := h.wait(waitCtx, func(r record) bool {
				return r.msg == "plugin did not exit on shutdown" && r.attrs["signal"] == tt.signal
			}); !ok {
				t.Fatalf("no record says Close sent %s: %+v", tt.signal, h.root.records)
			}
		})
	}
}

func TestSubprocessOutputReachesLogger(t *testing.T) {
	verifyNoLeaks(t)
	ctx := context.Background()
	h := newRecordingHandler()
	p := startEcho(t, h, nil)
	resp, err := p.Execute(ctx, echoReq{Op: "print", Data: "still works"})
	if err != nil || resp.Data != "still works" {
		t.Fatalf("Execute after stdout pollution = %+v, %v", resp, err)
	}
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
			if !ok {
				t.Fatalf("no record %q", tt.msg)
			}
			if r.level != tt.level || r.attrs["plugin"] != "echo" || r.attrs["stream"] != tt.stream {
				t.Fatalf("record = %+v; want level %v, plugin echo, stream %s", r, tt.level, tt.stream)
			}
			if tt.attr != "" && r.attrs[tt.attr] != tt.value {
				t.Fatalf("record attribute %s = %v, want %v", tt.attr, r.attrs[tt.attr], tt.value)
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
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	_, err = p.Execute(context.Background(), "hi")
	if !errors.Is(err, ErrTransport) || !strings.Contains(err.Error(), "broke the protocol") {
		t.Fatalf("Execute error = %v, want ErrTransport saying the plugin broke the protocol", err)
	}
}

func TestSubprocessFrameTooLarge(t *testing.T) {
	verifyNoLeaks(t)
	ctx := context.Background()
	t.Run("request over the plugin's limit", func(t *testing.T) {
		p := startEcho(t, nil, func(c *SubprocessConfig) { c.Env = map[string]string{"ECHO_MAX_FRAME": "2048"} })
		_, err := p.Execute(ctx, echoReq{Data: strings.Repeat("y", 4000)})
		if !errors.Is(err, ErrFrameTooLarge) {
			t.Fatalf("error = %v, want ErrFrameTooLarge", err)
		}
		if _, err := p.Execute(ctx, echoReq{Data: "small"}); err != nil {
			t.Fatalf("call after the refused one: %v", err)
		}
	})
	t.Run("answer over the host's limit, refused by the plugin", func(t *testing.T) {
		p := startEcho(t, nil, func(c *SubprocessConfig) { c.MaxFrameSize = 4096 })
		_, err := p.Execute(ctx, echoReq{Op: "big", N: 10000})
		if !errors.Is(err, ErrFrameTooLarge) || !errors.Is(err, ErrRemote) {
			t.Fatalf("error = %v, want ErrFrameTooLarge from the plugin", err)
		}
		if _, err := p.Execute(ctx, echoReq{Data: "small"}); err != nil {
			t.Fatalf("call after the refused one: %v", err)
		}
	})
	t.Run("answer over the host's limit, refused by the host", func(t *testing.T) {
		p, err := newSubprocess[string, string](ctx, SubprocessConfig{
			Name: "raw", Command: pluginBinary(t, "raw"), Env: map[string]string{"RAW_MODE": "bigframe"},
			MaxFrameSize: 4096, Logger: slog.New(newRecordingHandler()),
		})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close(ctx)
		if _, err := p.Execute(ctx, "big"); !errors.Is(err, ErrFrameTooLarge) {
			t.Fatalf("error = %v, want ErrFrameTooLarge", err)
		}
		if got, err := p.Execute(ctx, "small"); err != nil || got != "small" {
			t.Fatalf("call after the refused one = %q, %v", got, err)
		}
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
				t.Fatal("NewSubprocess succeeded")
			}
			for _, want := range tt.want {
				if !errors.Is(err, want) {
					t.Fatalf("error = %v, want %v", err, want)
				}
			}
		})
	}
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Fatal("the binary with the wrong checksum ran")
	}
}

func TestSubprocessChecksumVerifiedExec(t *testing.T) {
	verifyNoLeaks(t)
	b, err := os.ReadFile(pluginBinary(t, "echo"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	p := startEcho(t, nil, func(c *SubprocessConfig) { c.Checksum = "sha256:" + hex.EncodeToString(sum[:]) })
	if resp, err := p.Execute(context.Background(), echoReq{Data: "verified"}); err != nil || resp.Data != "verified" {
		t.Fatalf("Execute = %+v, %v", resp, err)
	}
}

func TestSubprocessRunByHand(t *testing.T) {
	bin := pluginBinary(t, "echo")
	for _, env := range [][]string{nil, {"GOPLUGINS_MAGIC_COOKIE=wrong"}} {
		cmd := exec.Command(bin)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(string(out), "cannot be run by hand") {
			t.Errorf("env %q: err %v, output %q; want exit status 1 and a message", env, err, out)
		}
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
		if err != nil {
			t.Fatalf("%s: %v", req.Op, err)
		}
		return resp
	}

	mustExec(v1, echoReq{Op: "set", Data: "alpha"})
	state, err := v1.PersistState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := v2.RestoreState(ctx, state); err != nil {
		t.Fatal(err)
	}
	if got := mustExec(v2, echoReq{Op: "get"}); got.Data != "alpha (restored from 1.0.0)" || got.Version != "2.0.0" {
		t.Fatalf("v2 state = %+v", got)
	}
	if got := mustExec(v1, echoReq{Op: "get"}); got.Data != "alpha" {
		t.Fatalf("v1 state after PersistState = %q, want it unchanged", got.Data)
	}

	for range 3 {
		mustExec(v1, echoReq{Op: "tick"})
	}
	pos, err := v1.Checkpoint(ctx)
	if err != nil || string(pos) != "3" {
		t.Fatalf("Checkpoint = %q, %v; want 3", pos, err)
	}
	if _, err := v1.Execute(ctx, echoReq{Op: "tick"}); !errors.Is(err, ErrRemote) {
		t.Fatalf("tick after Checkpoint error = %v, want the plugin's refusal", err)
	}
	if err := v2.Resume(ctx, pos); err != nil {
		t.Fatal(err)
	}
	if got := mustExec(v2, echoReq{Op: "tick"}); got.Data != "4" {
		t.Fatalf("v2 tick after Resume = %q, want 4", got.Data)
	}

	if err := v1.CheckCompat(ctx, v2.Info()); !errors.Is(err, ErrInvalidPlugin) {
		t.Fatalf("CheckCompat on a plugin without the schema surface: %v, want ErrInvalidPlugin", err)
	}
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
				if !errors.Is(err, want) {
					t.Fatalf("error = %v, want %v", err, want)
				}
			}
			var rep *ErrorReply
			if !errors.As(err, &rep) || rep.Code != tt.code {
				t.Fatalf("error = %v, want an ErrorReply with code %q", err, tt.code)
			}
			if IsRetryable(err) != tt.retryable {
				t.Fatalf("IsRetryable = %v, want %v", IsRetryable(err), tt.retryable)
			}
		})
	}
	if got := pidOf(t, p); got != pid {
		t.Fatalf("the plugin was replaced (pid %d, then %d): a panic must not kill it", pid, got)
	}
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
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(ctx)
	resp, err := p.Execute(ctx, map[string]any{"data": "from Go to Python"})
	if err != nil || resp["data"] != "from Go to Python" {
		t.Fatalf("Execute = %v, %v", resp, err)
	}
	if err := p.Health(ctx); err != nil {
		t.Fatalf("Health: %v", err)
	}
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
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
	if err != nil {
		t.Fatal(err)
	}
	_, body, _ := strings.Cut(string(src), "\n")
	script := []byte("#!" + python + "\n" + body)
	path := filepath.Join(t.TempDir(), "echo_plugin.py")
	if err := os.WriteFile(path, script, 0o755); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(script)
	ctx := context.Background()
	p, err := newSubprocess[map[string]any, map[string]any](ctx, SubprocessConfig{
		Name: "pyecho", Version: "1.0.0", Command: path, Checksum: "sha256:" + hex.EncodeToString(sum[:]),
		Logger: slog.New(newRecordingHandler()),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(ctx)
	resp, err := p.Execute(ctx, map[string]any{"data": "verified script"})
	if err != nil || resp["data"] != "verified script" {
		t.Fatalf("Execute = %v, %v", resp, err)
	}
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
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
			if err != nil {
				t.Fatal(err)
			}
			got := strings.Split(resp.Data, "\n")
			if tt.want != nil {
				slices.Sort(got)
				slices.Sort(tt.want)
				if !slices.Equal(got, tt.want) {
					t.Fatalf("plugin environment %q, want exactly %q", got, tt.want)
				}
			}
			for _, kv := range tt.wantHas {
				if !slices.Contains(got, kv) {
					t.Fatalf("plugin environment lacks %q: %q", kv, got)
				}
			}
		})
	}
}
