// Package proc starts and supervises plugin child processes: each child
// leads its own process group, dies with its parent where the OS allows,
// gets only the descriptors it is given, has its stdout and stderr pumped
// line by line to callbacks, is reaped without a thread blocked for it
// (Linux), and is stopped by escalation (the caller's polite request, then
// SIGTERM, then SIGKILL of the whole group). A binary can be
// checksum-verified before it is executed, without a gap between the check
// and the exec on Linux (see openVerified).
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

// ErrUnsupported is matched (with errors.Is, as is errors.ErrUnsupported)
// by the error Start returns on Windows: plugin child processes need the
// protocol pipes passed as descriptors 3 and 4, process groups and
// signals, which this package implements only on Unix.
var ErrUnsupported = fmt.Errorf("proc: plugin child processes are not supported on this OS: %w", errors.ErrUnsupported)

// maxLine is the longest stdout or stderr line passed to a callback whole;
// longer lines are split.
const maxLine = 64 << 10

// Bounds of the stderr tail a Process keeps for crash reports: the last
// tailLines lines, each cut to tailLineMax bytes.
const (
	tailLines   = 20
	tailLineMax = 200
)

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
	// ExtraFiles become the child's descriptors 3, 4, ...; the child gets
	// no other descriptor than these and 0-2 (stdin is /dev/null).
	ExtraFiles []*os.File
	// Stdout and Stderr receive the child's output one line at a time,
	// without the newline, from one goroutine each. Nil discards.
	Stdout, Stderr func(line []byte)
}

// Process is a started child process.
type Process struct {
	cmd  *exec.Cmd
	pid  int
	done chan struct{}
	keep *os.File // held open until the child is reaped (a verified script)

	// Set before done is closed.
	state *os.ProcessState

	mu     sync.Mutex // guards reaped and tail
	reaped bool       // the pid (and group id) may belong to another process now
	tail   []string
}

// Start verifies and starts the child described by cfg. The caller must
// eventually wait for Done (Stop does) so the child's goroutines end.
func Start(cfg Config) (*Process, error) {
	path, extra := cfg.Path, cfg.ExtraFiles
	var keep *os.File
	if cfg.SHA256 != nil {
		f, err := openVerified(cfg.Path, cfg.SHA256)
		if err != nil {
			return nil, err
		}
		path, keep = execVerified(f)
		if keep != f {
			defer f.Close()
		}
	}
	p, err := start(cfg, path, extra, keep)
	if err != nil && keep != nil {
		keep.Close()
	}
	return p, err
}

func start(cfg Config, path string, extra []*os.File, keep *os.File) (*Process, error) {
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
	err = launch(cmd)
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return nil, fmt.Errorf("proc: starting %s: %w", cfg.Path, err)
	}
	p := &Process{cmd: cmd, pid: cmd.Process.Pid, done: make(chan struct{}), keep: keep}
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
	p.reap()
	if p.keep != nil {
		p.keep.Close()
	}
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

// reap waits for the child to exit and reaps it. Where the OS can wait
// without reaping (Linux), the group's remaining members are killed first,
// while the leader's pid still names the group.
func (p *Process) reap() {
	if awaitExit(p.pid) {
		p.mu.Lock()
		_ = signalGroup(p.pid, syscall.SIGKILL)
		_ = p.cmd.Wait() // the child is a zombie: this does not block
		p.reaped = true
		p.mu.Unlock()
	} else {
		_ = p.cmd.Wait()
		p.mu.Lock()
		p.reaped = true
		p.mu.Unlock()
	}
	p.state = p.cmd.ProcessState
	exited()
}

func (p *Process) pump(wg *sync.WaitGroup, r io.Reader, fn func([]byte), keepTail bool) {
	defer wg.Done()
	br := bufio.NewReaderSize(r, maxLine)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			line = bytes.TrimRight(line, "\r\n")
			if keepTail {
				p.addTail(line)
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

// addTail keeps line, cut to tailLineMax bytes, among the last tailLines.
func (p *Process) addTail(line []byte) {
	s := string(line)
	if len(s) > tailLineMax {
		s = strings.ToValidUTF8(s[:tailLineMax], "") + "…"
	}
	p.mu.Lock()
	if len(p.tail) == tailLines {
		p.tail = append(p.tail[:0], p.tail[1:]...)
	}
	p.tail = append(p.tail, s)
	p.mu.Unlock()
}

// Pid returns the child's process id (also its process group id).
func (p *Process) Pid() int { return p.pid }

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

// StderrTail returns the child's last stderr lines, joined by newlines:
// at most 20 lines of at most 200 bytes each (a longer line is cut and
// ends in "…").
func (p *Process) StderrTail() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.tail, "\n")
}

// Signal sends sig to the child's whole process group. Once the child has
// been reaped it does nothing: the group id may name another group by then.
func (p *Process) Signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.reaped {
		return nil
	}
	if err := signalGroup(p.pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("proc: signal %v to process group %d: %w", sig, p.pid, err)
	}
	return nil
}

// Stop is StopSince(ctx, time.Now(), grace): the caller has just asked the
// child to exit.
func (p *Process) Stop(ctx context.Context, grace time.Duration) syscall.Signal {
	return p.StopSince(ctx, time.Now(), grace)
}

// StopSince stops a child that the caller asked to exit at asked: if it
// has not exited by asked+grace, SIGTERM goes to its group; if not by
// asked+2·grace, SIGKILL; then Stop waits for the exit. So the whole stop,
// the polite request included, takes at most 2·grace before the SIGKILL.
// When ctx ends first, Stop sends SIGKILL at once. It returns the last
// signal it sent, 0 if none.
func (p *Process) StopSince(ctx context.Context, asked time.Time, grace time.Duration) syscall.Signal {
	var sent syscall.Signal
	for i, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t := time.NewTimer(time.Until(asked.Add(time.Duration(i+1) * grace)))
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
