// Command subprocess shows a Go plugin running as a child process: the
// host builds it, starts it with NewSubprocess, calls it through a Manager,
// gets its errors as typed errors and its stderr in its own logger, and
// restarts it automatically, with backoff, after it crashes.
//
//	go run ./examples/subprocess
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/goplugins/goplugins"
)

// pluginPackage is the plugin's import path: building by import path works
// from any working directory inside the module.
const pluginPackage = "github.com/goplugins/goplugins/examples/subprocess/plugin"

// request and response mirror the plugin's types.
type request struct {
	Text  string `json:"text"`
	Crash bool   `json:"crash,omitempty"`
}

type response struct {
	SHA256 string `json:"sha256"`
	PID    int    `json:"pid"`
}

func main() {
	if err := run(context.Background(), os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "subprocess failed:", err)
		os.Exit(1)
	}
}

// syncWriter serializes writes: the logger writes from the transport's
// goroutines while run prints.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func run(ctx context.Context, w io.Writer) (err error) {
	out := &syncWriter{w: w}
	tmp, err := os.MkdirTemp("", "goplugins-subprocess-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "hasher")
	if b, err := exec.CommandContext(ctx, "go", "build", "-o", bin, pluginPackage).CombinedOutput(); err != nil {
		return fmt.Errorf("building %s (run from inside the goplugins module): %w\n%s", pluginPackage, err, b)
	}

	// The child's stderr lines become records of this logger, tagged with
	// the plugin's name; the plugin's JSON lines keep their level.
	logger := slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey || a.Key == "pid" {
				return slog.Attr{} // keep the output short
			}
			return a
		},
	}))
	type restart struct {
		attempt int
		err     error
	}
	restarted := make(chan restart, 8)
	p, err := goplugins.NewSubprocess[request, response](ctx, goplugins.SubprocessConfig{
		Name:    "hasher",
		Command: bin,
		Logger:  logger,
		Restart: goplugins.RestartPolicy{MaxAttempts: 5, Backoff: 50 * time.Millisecond},
		OnRestart: func(_ string, attempt int, err error) {
			select { // it runs on the supervisor: never block it
			case restarted <- restart{attempt, err}:
			default:
			}
		},
	})
	if err != nil {
		return err
	}
	m := goplugins.NewManager[request, response]()
	defer func() {
		if serr := m.Shutdown(context.WithoutCancel(ctx)); serr != nil && err == nil {
			err = serr
		}
	}()
	if err := m.Register(p); err != nil {
		p.Close(ctx)
		return err
	}

	first, err := m.Execute(ctx, "hasher", request{Text: "hello"})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "sha256(hello) = %s…\n", first.SHA256[:16])

	// The plugin's own error: typed, with its code.
	_, err = m.Execute(ctx, "hasher", request{})
	var reply *goplugins.ErrorReply
	if !errors.As(err, &reply) || !errors.Is(err, goplugins.ErrRemote) {
		return fmt.Errorf("an empty text returned %v, want the plugin's error reply", err)
	}
	fmt.Fprintf(out, "plugin error: code %q, retryable %v\n", reply.Code, reply.Retryable)

	// A crash fails the call in flight with ErrCrashed; the child is
	// restarted with backoff.
	_, err = m.Execute(ctx, "hasher", request{Crash: true})
	if !errors.Is(err, goplugins.ErrCrashed) {
		return fmt.Errorf("the crashing call returned %v, want ErrCrashed", err)
	}
	fmt.Fprintln(out, "call during the crash: ErrCrashed")
	var r restart
	select {
	case r = <-restarted:
		if r.err != nil {
			return fmt.Errorf("the restart failed: %w", r.err)
		}
	case <-time.After(10 * time.Second):
		return errors.New("the plugin was not restarted within 10s")
	case <-ctx.Done():
		return ctx.Err()
	}
	fmt.Fprintf(out, "restarted after %d attempt(s)\n", r.attempt)

	again, err := m.Execute(ctx, "hasher", request{Text: "hello"})
	if err != nil {
		return err
	}
	if again.SHA256 != first.SHA256 || again.PID == first.PID {
		return fmt.Errorf("after the restart: hash %s from pid %d, before: %s from pid %d", again.SHA256, again.PID, first.SHA256, first.PID)
	}
	fmt.Fprintln(out, "served again by a new process: same hash, new pid")
	return nil
}
