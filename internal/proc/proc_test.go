//go:build linux

package proc

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

type lines struct {
	mu sync.Mutex
	l  []string
}

func (l *lines) add(b []byte) { l.mu.Lock(); l.l = append(l.l, string(b)); l.mu.Unlock() }
func (l *lines) get() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.l...)
}

func shSum(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile("/bin/sh")
	if err != nil {
		t.Skip("no /bin/sh")
	}
	s := sha256.Sum256(b)
	return s[:]
}

func TestStartPumpsAndReaps(t *testing.T) {
	for _, verified := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "checksum"}[verified], func(t *testing.T) {
			var out, errs lines
			cfg := Config{
				Path:   "/bin/sh",
				Args:   []string{"-c", `echo "$GREETING"; echo err1 >&2; echo err2 >&2; exit 3`},
				Env:    []string{"GREETING=hello"},
				Stdout: out.add, Stderr: errs.add,
			}
			if verified {
				cfg.SHA256 = shSum(t)
			}
			p, err := Start(cfg)
			if err != nil {
				t.Fatal(err)
			}
			<-p.Done()
			if code := p.State().ExitCode(); code != 3 {
				t.Fatalf("exit code %d, want 3", code)
			}
			if got := out.get(); len(got) != 1 || got[0] != "hello" {
				t.Fatalf("stdout lines %q, want [hello] (only the configured environment)", got)
			}
			if got := p.StderrTail(); got != "err1\nerr2" {
				t.Fatalf("stderr tail %q", got)
			}
			if _, err := os.Stat("/proc/" + itoa(p.Pid())); !os.IsNotExist(err) {
				t.Fatalf("child %d still in /proc after Done (zombie?): %v", p.Pid(), err)
			}
		})
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// liveGroupMembers lists the processes of group pgid that are still running
// (not zombies waiting for init, which reaps orphaned descendants).
func liveGroupMembers(t *testing.T, pgid int) []string {
	t.Helper()
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var live []string
	for _, path := range stats {
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...
		fields := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(fields) > 2 && fields[2] == itoa(pgid) && fields[0] != "Z" && fields[0] != "X" {
			live = append(live, string(b))
		}
	}
	return live
}

func TestChecksumMismatchRunsNothing(t *testing.T) {
	dir := t.TempDir()
	marker := dir + "/ran"
	sum := shSum(t)
	sum[0] ^= 0xff
	_, err := Start(Config{Path: "/bin/sh", Args: []string{"-c", "touch " + marker}, SHA256: sum})
	if !errors.Is(err, ErrChecksum) {
		t.Fatalf("Start error = %v, want ErrChecksum", err)
	}
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Fatal("the binary ran despite the checksum mismatch")
	}
}

func TestStopEscalates(t *testing.T) {
	tests := []struct {
		name   string
		script string
		want   syscall.Signal
	}{
		{"exits on its own", "exit 0", 0},
		{"obeys SIGTERM", "sleep 60 & wait", syscall.SIGTERM},
		{"ignores SIGTERM", `trap "" TERM; sleep 60 & while :; do wait; done`, syscall.SIGKILL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out lines
			p, err := Start(Config{Path: "/bin/sh", Args: []string{"-c", "echo started; " + tt.script}, Stdout: out.add})
			if err != nil {
				t.Fatal(err)
			}
			if tt.want == 0 {
				<-p.Done()
			}
			got := p.Stop(context.Background(), 200*time.Millisecond)
			if got != tt.want {
				t.Fatalf("Stop sent %v, want %v", got, tt.want)
			}
			if live := liveGroupMembers(t, p.Pid()); len(live) > 0 {
				t.Fatalf("process group %d still has running members after Stop: %q", p.Pid(), live)
			}
		})
	}
}

func TestParseChecksum(t *testing.T) {
	good := "sha256:" + strings.Repeat("ab", 32)
	if _, err := ParseChecksum(good); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "md5:00", "sha256:zz", "sha256:" + strings.Repeat("ab", 31)} {
		if _, err := ParseChecksum(bad); err == nil {
			t.Errorf("ParseChecksum(%q) accepted", bad)
		}
	}
}

// TestVerifiedScriptRuns: a script ("#!") run from its verified copy
// reaches its interpreter, which must open the copy after the exec, and
// the caller's extra descriptors keep their numbers.
func TestVerifiedScriptRuns(t *testing.T) {
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skip("no /bin/sh")
	}
	script := []byte("#!/bin/sh\necho \"script ran: $1\" >&2\necho ok >&3\nexit 4\n")
	path := filepath.Join(t.TempDir(), "plugin.sh")
	if err := os.WriteFile(path, script, 0o755); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(script)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var errs lines
	p, err := Start(Config{Path: path, Args: []string{"arg"}, SHA256: sum[:], ExtraFiles: []*os.File{w}, Stderr: errs.add})
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	<-p.Done()
	if code := p.State().ExitCode(); code != 4 {
		t.Fatalf("exit code %d, want 4; stderr: %q", code, errs.get())
	}
	if got := errs.get(); len(got) != 1 || got[0] != "script ran: arg" {
		t.Fatalf("stderr %q, want [\"script ran: arg\"]", got)
	}
	out := make([]byte, 16)
	if n, _ := r.Read(out); string(out[:n]) != "ok\n" {
		t.Fatalf("descriptor 3 got %q, want \"ok\\n\"", out[:n])
	}
}

// childFds starts cfg (with a shell command that ends in listing its own
// descriptors) and returns the child's open descriptors, number -> target,
// without the listing's own directory descriptor.
func childFds(t *testing.T, cfg Config) map[string]string {
	t.Helper()
	var out lines
	cfg.Stdout = out.add
	p, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	<-p.Done()
	fds := map[string]string{}
	for _, l := range out.get() {
		before, target, ok := strings.Cut(l, " -> ")
		if !ok {
			continue
		}
		f := strings.Fields(before)
		if strings.HasPrefix(target, "/proc/") && strings.HasSuffix(target, "/fd") {
			continue // ls's own
		}
		fds[f[len(f)-1]] = target
	}
	return fds
}

// TestChildGetsOnlyItsDescriptors: a descriptor the host holds without
// close-on-exec (as one it inherited would be) and the verified copy of a
// checksummed script do not reach the child: it has 0-2 and ExtraFiles.
func TestChildGetsOnlyItsDescriptors(t *testing.T) {
	if _, err := os.Stat("/bin/ls"); err != nil {
		t.Skip("no /bin/ls")
	}
	leak := filepath.Join(t.TempDir(), "inherited")
	fd, err := syscall.Open(leak, syscall.O_CREAT|syscall.O_RDWR, 0o600) // no O_CLOEXEC
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	script := []byte("#!/bin/sh\nexec ls -l /proc/self/fd\n")
	path := filepath.Join(t.TempDir(), "list.sh")
	if err := os.WriteFile(path, script, 0o755); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(script)
	for name, cfg := range map[string]Config{
		"binary":             {Path: "/bin/sh", Args: []string{"-c", "exec ls -l /proc/self/fd"}, ExtraFiles: []*os.File{r, w}},
		"checksummed script": {Path: path, SHA256: sum[:], ExtraFiles: []*os.File{r, w}},
	} {
		t.Run(name, func(t *testing.T) {
			fds := childFds(t, cfg)
			for _, n := range []string{"0", "1", "2", "3", "4"} {
				if _, ok := fds[n]; !ok {
					t.Errorf("descriptor %s missing: %v", n, fds)
				}
				delete(fds, n)
			}
			if len(fds) != 0 {
				t.Fatalf("the child has descriptors beyond 0-4: %v", fds)
			}
		})
	}
}

func threads(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip(err)
	}
	for l := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Threads:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	t.Fatal("no Threads line in /proc/self/status")
	return 0
}

// TestReapingBlocksNoThreadPerChild: 200 running children do not hold 200
// host threads (the reaper waits through the runtime's poller).
func TestReapingBlocksNoThreadPerChild(t *testing.T) {
	const n = 200
	before := threads(t)
	ps := make([]*Process, 0, n)
	defer func() {
		for _, p := range ps {
			_ = p.Signal(syscall.SIGKILL)
			<-p.Done()
		}
	}()
	for range n {
		p, err := Start(Config{Path: "/bin/sh", Args: []string{"-c", "exec sleep 60"}})
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	got := threads(t) - before
	t.Logf("%d running children added %d host threads", n, got)
	if got > 20 {
		t.Fatalf("%d children added %d host threads, want at most 20", n, got)
	}
}

// TestChildSurvivesItsStarterThread: a child started by a goroutine that
// locked its OS thread and returned (which ends the thread) keeps running:
// the parent-death signal is bound to the forker's thread.
func TestChildSurvivesItsStarterThread(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	type started struct {
		p   *Process
		tid int
		err error
	}
	ch := make(chan started, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		p, err := Start(Config{Path: "/bin/sh", Args: []string{"-c", "read x <&3; echo alive"}, ExtraFiles: []*os.File{r}})
		ch <- started{p, syscall.Gettid(), err}
	}()
	s := <-ch
	if s.err != nil {
		t.Fatal(s.err)
	}
	defer func() { _ = s.p.Signal(syscall.SIGKILL); <-s.p.Done() }()
	task := "/proc/self/task/" + itoa(s.tid)
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, err := os.Stat(task); os.IsNotExist(err) {
			break // the starter's thread is gone
		}
		if time.Now().After(deadline) {
			t.Skip("the runtime kept the locked thread")
		}
		runtime.Gosched()
	}
	if _, err := w.WriteString("go\n"); err != nil {
		t.Fatal(err)
	}
	w.Close()
	<-s.p.Done()
	if st := s.p.State(); !st.Exited() || st.ExitCode() != 0 {
		t.Fatalf("the child ended with %v after its starter's thread exited, want exit status 0", st)
	}
}

// TestStderrTailIsBounded: a child flooding stderr without newlines leaves
// a short tail, not megabytes.
func TestStderrTailIsBounded(t *testing.T) {
	p, err := Start(Config{Path: "/bin/sh", Args: []string{"-c", "head -c 2000000 /dev/zero | tr '\\0' x >&2; exit 1"}})
	if err != nil {
		t.Fatal(err)
	}
	<-p.Done()
	if n := len(p.StderrTail()); n == 0 || n > tailLines*(tailLineMax+4) {
		t.Fatalf("stderr tail of %d bytes, want 1..%d", n, tailLines*(tailLineMax+4))
	}
}

// TestStopSinceCountsFromTheRequest: when the polite request itself took
// the grace period, SIGTERM goes at once, and the whole stop ends within
// two grace periods of the request.
func TestStopSinceCountsFromTheRequest(t *testing.T) {
	ready := make(chan struct{}, 1)
	p, err := Start(Config{
		Path: "/bin/sh", Args: []string{"-c", `trap "" TERM; echo ready; while :; do sleep 1; done`},
		Stdout: func([]byte) { ready <- struct{}{} },
	})
	if err != nil {
		t.Fatal(err)
	}
	<-ready
	const grace = 300 * time.Millisecond
	asked := time.Now().Add(-grace) // the request took the first grace period
	if got := p.StopSince(context.Background(), asked, grace); got != syscall.SIGKILL {
		t.Fatalf("StopSince sent %v, want SIGKILL", got)
	}
	if took := time.Since(asked); took >= 3*grace {
		t.Fatalf("the stop ended %v after the request, past 2 grace periods of %v", took, grace)
	}
}

// TestSignalAfterReapSparesARecycledGroup: once the child is reaped its
// pid, and so its group id, may name another process group; Signal must
// not reach it, even while the output pumps are still draining (a
// descendant outside the group holds stderr open here). The test recycles
// the pid through /proc/sys/kernel/ns_last_pid, so it needs root.
func TestSignalAfterReapSparesARecycledGroup(t *testing.T) {
	const lastPid = "/proc/sys/kernel/ns_last_pid"
	if f, err := os.OpenFile(lastPid, os.O_WRONLY, 0); err != nil {
		t.Skipf("cannot choose the next pid: %v", err)
	} else {
		f.Close()
	}
	p, err := Start(Config{Path: "/bin/sh", Args: []string{"-c", "setsid sleep 3 & sleep 0.3"}})
	if err != nil {
		t.Fatal(err)
	}
	proc := "/proc/" + itoa(p.Pid())
	for deadline := time.Now().Add(10 * time.Second); ; runtime.Gosched() {
		if _, err := os.Stat(proc); os.IsNotExist(err) {
			break // reaped
		}
		if time.Now().After(deadline) {
			t.Fatal("the child was not reaped within 10s")
		}
	}
	select {
	case <-p.Done():
		t.Skip("the pumps finished before the pid could be recycled")
	default:
	}
	var other *exec.Cmd
	for range 200 {
		if err := os.WriteFile(lastPid, []byte(itoa(p.Pid()-1)), 0); err != nil {
			t.Skip(err)
		}
		cmd := exec.Command("/bin/sleep", "60")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if cmd.Process.Pid == p.Pid() {
			other = cmd
			break
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
	if other == nil {
		t.Skip("could not recycle the pid")
	}
	if err := p.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = other.Process.Signal(syscall.SIGTERM)
	err = other.Wait()
	if ws, ok := other.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGTERM {
		t.Fatalf("the process that got the recycled pid ended with %v, want SIGTERM (Signal reached it)", err)
	}
	<-p.Done()
}
