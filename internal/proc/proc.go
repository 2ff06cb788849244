// Package proc starts and supervises plugin child processes: each child
// leads its own process group, dies with its parent where the OS allows,
// has its stdout and stderr pumped line by line to callbacks, is reaped,
// and is stopped by escalation (the caller's polite request, then SIGTERM,
// then SIGKILL of the whole group). A binary can be checksum-verified
// before it is executed, without a gap between the check and the exec on
// Linux (see openVerified).
package proc

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrChecksum is matched by the error Start returns when the binary does
// not have the expected SHA-256 digest.
var ErrChecksum = errors.New("proc: checksum mismatch")

// maxLine is the longest stdout or stderr line passed to a callback whole;
// longer lines are split.
const maxLine = 64 << 10

// tailLines is how many stderr lines a Process keeps for crash reports.
const tailLines = 20

// pumpGrace bounds how long, after the child exits, the line pumps may
// drain output still held open by descendants that escaped the group.
const pumpGrace = time.Second

// Config describes a child process.
type Config struct {
	Path string   // the program to run
	Args []string // arguments, without the program name
	Env  []string // the complete environment, "KEY=value"
	Dir  string   // the working directory; "" for the parent's
	// SHA256, when set, is the digest the binary must have; Start verifies
	// it and executes the very bytes it verified.
	SHA256 []byte
	// ExtraFiles become the child's descriptors 3, 4, ...
	ExtraFiles []*os.File
	// Stdout and Stderr receive the child's output one line at a time,
	// without the newline, from one goroutine each. Nil discards.
	Stdout, Stderr func(line []byte)
}

// Process is a started child process.
type Process struct {
	cmd  *exec.Cmd
	done chan struct{}

	// Set before done is closed.
	state *os.ProcessState

	mu   sync.Mutex
	tail []string
}

// Start verifies and starts the child described by cfg. The caller must
// eventually wait for Done (Stop does) so the child is reaped.
func Start(cfg Config) (*Process, error) {
	path, extra := cfg.Path, cfg.ExtraFiles
	if cfg.SHA256 != nil {
		f, err := openVerified(cfg.Path, cfg.SHA256)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		path, extra = execVerified(f, extra)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("proc: stdout pipe: %w", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, fmt.Errorf("proc: stderr pipe: %w", err)
	}
	cmd := &exec.Cmd{
		Path:        path,
		Args:        append([]string{cfg.Path}, cfg.Args...),
		Env:         cfg.Env,
		Dir:         cfg.Dir,
		Stdout:      outW,
		Stderr:      errW,
		ExtraFiles:  extra,
		SysProcAttr: sysProcAttr(),
	}
	if cmd.Env == nil {
		cmd.Env = []string{} // nil would mean the parent's environment
	}
	err = cmd.Start()
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return nil, fmt.Errorf("proc: starting %s: %w", cfg.Path, err)
	}
	p := &Process{cmd: cmd, done: make(chan struct{})}
	var pumps sync.WaitGroup
	pumps.Add(2)
	go p.pump(&pumps, outR, cfg.Stdout, false)
	go p.pump(&pumps, errR, cfg.Stderr, true)
	go p.wait(&pumps, outR, errR)
	return p, nil
}

// wait reaps the child, kills what is left of its group, and lets the
// pumps drain before closing done.
func (p *Process) wait(pumps *sync.WaitGroup, outR, errR *os.File) {
	waitExited(p.cmd.Process.Pid)
	// The leader is a zombie now, so its pid, the group id, cannot be
	// reused: killing the group reaches only the child's descendants.
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	_ = p.cmd.Wait()
	p.state = p.cmd.ProcessState
	drained := make(chan struct{})
	go func() { pumps.Wait(); close(drained) }()
	t := time.NewTimer(pumpGrace)
	select {
	case <-drained:
	case <-t.C:
	}
	t.Stop()
	outR.Close() // unblocks a pump held by an escaped descendant
	errR.Close()
	<-drained
	close(p.done)
}

func (p *Process) pump(wg *sync.WaitGroup, r io.Reader, fn func([]byte), keepTail bool) {
	defer wg.Done()
	br := bufio.NewReaderSize(r, maxLine)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			line = bytes.TrimRight(line, "\r\n")
			if keepTail {
				p.mu.Lock()
				if len(p.tail) == tailLines {
					p.tail = append(p.tail[:0], p.tail[1:]...)
				}
				p.tail = append(p.tail, string(line))
				p.mu.Unlock()
			}
			if fn != nil {
				fn(line)
			}
		}
		if err != nil && err != bufio.ErrBufferFull {
			return
		}
	}
}

// Pid returns the child's process id (also its process group id).
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed once the child has exited, been reaped, and its output
// has been pumped.
func (p *Process) Done() <-chan struct{} { return p.done }

// State returns the child's exit state; it is nil until Done is closed.
func (p *Process) State() *os.ProcessState {
	select {
	case <-p.done:
		return p.state
	default:
		return nil
	}
}

// StderrTail returns the child's last stderr lines, joined by newlines.
func (p *Process) StderrTail() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.tail, "\n")
}

// Signal sends sig to the child's whole process group.
func (p *Process) Signal(sig syscall.Signal) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	if err := syscall.Kill(-p.cmd.Process.Pid, sig); err != nil && err != syscall.ESRCH {
		return fmt.Errorf("proc: signal %v to process group %d: %w", sig, p.cmd.Process.Pid, err)
	}
	return nil
}

// Stop waits up to grace for the child to exit (the caller has asked it
// to), then sends SIGTERM to its group and waits up to grace again, then
// sends SIGKILL and waits for the exit. When ctx ends first, Stop sends
// SIGKILL at once. It returns the last signal it sent, 0 if none.
func (p *Process) Stop(ctx context.Context, grace time.Duration) syscall.Signal {
	var sent syscall.Signal
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t := time.NewTimer(grace)
		select {
		case <-p.done:
			t.Stop()
			return sent
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			sig = syscall.SIGKILL
		}
		_ = p.Signal(sig)
		sent = sig
		if sig == syscall.SIGKILL {
			break
		}
	}
	<-p.done
	return sent
}

// ParseChecksum parses "sha256:<64 hex digits>" into a digest.
func ParseChecksum(s string) ([]byte, error) {
	hexDigits, ok := strings.CutPrefix(s, "sha256:")
	if !ok {
		return nil, fmt.Errorf("proc: checksum %q does not start with \"sha256:\"", s)
	}
	sum, err := hex.DecodeString(hexDigits)
	if err != nil || len(sum) != sha256.Size {
		return nil, fmt.Errorf("proc: checksum %q is not sha256: followed by %d hex digits", s, 2*sha256.Size)
	}
	return sum, nil
}

func checkSum(path string, got, want []byte) error {
	if !bytes.Equal(got, want) {
		return fmt.Errorf("%w: %s has sha256:%x, want sha256:%x; nothing was run", ErrChecksum, path, got, want)
	}
	return nil
}
