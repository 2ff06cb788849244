package goplugins

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// startRaw starts the raw test plugin in mode; it is closed at cleanup.
func startRaw(t *testing.T, mode string, h *recordingHandler, mod func(*SubprocessConfig)) *Subprocess[string, string] {
	t.Helper()
	cfg := SubprocessConfig{
		Name: "raw", Command: pluginBinary(t, "raw"), Env: map[string]string{"RAW_MODE": mode},
		StopGrace: 200 * time.Millisecond, Logger: slog.New(h),
	}
	if mod != nil {
		mod(&cfg)
	}
	p, err := NewSubprocess[string, string](context.Background(), cfg)
	if err != nil {
		t.Fatalf("NewSubprocess: %v", err)
	}
	t.Cleanup(func() { p.Close(context.Background()) })
	return p
}

// hangLimit is how long a call that should return at its deadline may take
// before the test calls it blocked: far beyond the deadline, so that only a
// call that hangs fails.
const hangLimit = 10 * time.Second

// TestSubprocessStalledPluginDoesNotBlockCaller: a child that stops reading
// its input must not hold a caller past its ctx or CallTimeout, even when
// the request (or its CANCEL) does not fit in the pipe; the child is killed
// and restarted.
func TestSubprocessStalledPluginDoesNotBlockCaller(t *testing.T) {
	verifyNoLeaks(t)
	checkNoFDLeak(t)
	big := strings.Repeat("x", 1<<20)
	// A request frame of exactly the pipe's capacity (64 KiB on Linux) is
	// written whole; the CANCEL after it then finds the pipe full.
	pipeFull := strings.Repeat("x", 64<<10-13-2)
	tests := []struct {
		name        string
		req         string
		callTimeout time.Duration
		ctx         func() (context.Context, context.CancelFunc)
		want        error
		killed      bool // the write was cut short: the child is restarted
	}{
		{"ctx deadline", big, 0, func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 200*time.Millisecond)
		}, context.DeadlineExceeded, true},
		{"call timeout", big, 200 * time.Millisecond, func() (context.Context, context.CancelFunc) {
			return context.Background(), func() {}
		}, ErrTimeout, true},
		{"ctx cancelled", big, 0, func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(200*time.Millisecond, cancel)
			return ctx, cancel
		}, context.Canceled, true},
		{"CANCEL into a full pipe", pipeFull, 0, func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 200*time.Millisecond)
		}, context.DeadlineExceeded, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			restarted := make(chan error, 10)
			p := startRaw(t, "noread", newRecordingHandler(), func(c *SubprocessConfig) {
				c.CallTimeout = tt.callTimeout
				c.OnRestart = func(_ string, _ int, err error) { restarted <- err }
			})
			ctx, cancel := tt.ctx()
			defer cancel()
			done := make(chan error, 1)
			go func() {
				_, err := p.Execute(ctx, tt.req)
				done <- err
			}()
			select {
			case err := <-done:
				if !errors.Is(err, tt.want) || !errors.Is(err, ErrTimeout) && !errors.Is(err, ErrTransport) {
					t.Fatalf("Execute error = %v, want %v", err, tt.want)
				}
			case <-time.After(hangLimit):
				t.Fatalf("Execute still blocked %v after its deadline: the write to the stalled plugin is unbounded", hangLimit)
			}
			if !tt.killed {
				return
			}
			select {
			case err := <-restarted:
				if err != nil {
					t.Fatalf("restart after the stall: %v", err)
				}
			case <-time.After(hangLimit):
				t.Fatal("the stalled plugin was not restarted")
			}
		})
	}
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
			if _, ok := h.wait(waitCtx, func(r record) bool { return r.msg == fmt.Sprint("queued ", calls) }); !ok {
				t.Fatal("the plugin did not receive every call")
			}
			if err := p.Close(context.Background()); err != nil {
				t.Fatalf("Close: %v", err)
			}
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Errorf("call %d: %v (the plugin answered it before exiting)", i, err)
				}
			}
		})
	}
}
