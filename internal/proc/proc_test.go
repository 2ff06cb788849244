//go:build linux

package proc

import (
	"bytes"
	"context"
	"crypto/sha256"
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

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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
			require.NoError(t, err)
			<-p.Done()
			assert.Equal(t, 3, p.State().ExitCode(), "exit code")
			assert.Equal(t, []string{"hello"}, out.get(), "stdout lines (only the configured environment)")
			assert.Equal(t, "err1\nerr2", p.StderrTail(), "stderr tail")
			_, err = os.Stat("/proc/" + itoa(p.Pid()))
			assert.ErrorIs(t, err, os.ErrNotExist, "child %d still in /proc after Done (zombie?)", p.Pid())
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
	require.ErrorIs(t, err, ErrChecksum, "Start error")
	_, err = os.Stat(marker)
	assert.ErrorIs(t, err, os.ErrNotExist, "the binary ran despite the checksum mismatch")
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
			require.NoError(t, err)
			if tt.want == 0 {
				<-p.Done()
			}
			require.Equal(t, tt.want, p.Stop(context.Background(), 200*time.Millisecond), "Stop sent")
			assert.Empty(t, liveGroupMembers(t, p.Pid()), "process group %d still has running members after Stop", p.Pid())
		})
	}
}

func TestParseChecksum(t *testing.T) {
	good := "sha256:" + strings.Repeat("ab", 32)
	_, err := ParseChecksum(good)
	require.NoError(t, err)
	for _, bad := range []string{"", "md5:00", "sha256:zz", "sha256:" + strings.Repeat("ab", 31)} {
		_, err := ParseChecksum(bad)
		assert.Error(t, err, "ParseChecksum(%q) accepted", bad)
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
	require.NoError(t, os.WriteFile(path, script, 0o755))
	sum := sha256.Sum256(script)
	r, w, err := os.Pipe()
	require.NoError(t, err)
	defer r.Close()
	var errs lines
	p, err := Start(Config{Path: path, Args: []string{"arg"}, SHA256: sum[:], ExtraFiles: []*os.File{w}, Stderr: errs.add})
	w.Close()
	require.NoError(t, err)
	<-p.Done()
	require.Equal(t, 4, p.State().ExitCode(), "exit code; stderr: %q", errs.get())
	require.Equal(t, []string{"script ran: arg"}, errs.get(), "stderr")
	out := make([]byte, 16)
	n, _ := r.Read(out)
	assert.Equal(t, "ok\n", string(out[:n]), "descriptor 3")
}

// childFds starts cfg (with a shell command that ends in listing its own
// descriptors) and returns the child's open descriptors, number -> target,
// without the listing's own directory descriptor.
func childFds(t *testing.T, cfg Config) map[string]string {
	t.Helper()
	var out lines
	cfg.Stdout = out.add
	p, err := Start(cfg)
	require.NoError(t, err)
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
	require.NoError(t, err)
	defer syscall.Close(fd)
	r, w, err := os.Pipe()
	require.NoError(t, err)
	defer r.Close()
	defer w.Close()
	script := []byte("#!/bin/sh\nexec ls -l /proc/self/fd\n")
	path := filepath.Join(t.TempDir(), "list.sh")
	require.NoError(t, os.WriteFile(path, script, 0o755))
	sum := sha256.Sum256(script)
	for name, cfg := range map[string]Config{
		"binary":             {Path: "/bin/sh", Args: []string{"-c", "exec ls -l /proc/self/fd"}, ExtraFiles: []*os.File{r, w}},
		"checksummed script": {Path: path, SHA256: sum[:], ExtraFiles: []*os.File{r, w}},
	} {
		t.Run(name, func(t *testing.T) {
			fds := childFds(t, cfg)
			for _, n := range []string{"0", "1", "2", "3", "4"} {
				assert.Contains(t, fds, n, "descriptor %s missing", n)
				delete(fds, n)
			}
			assert.Empty(t, fds, "the child has descriptors beyond 0-4")
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
	require.Fail(t, "no Threads line in /proc/self/status")
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
		require.NoError(t, err)
		ps = append(ps, p)
	}
	got := threads(t) - before
	t.Logf("%d running children added %d host threads", n, got)
	assert.LessOrEqual(t, got, 20, "host threads added by %d children", n)
}

// TestChildSurvivesItsStarterThread: a child started by a goroutine that
// locked its OS thread and returned (which ends the thread) keeps running:
// the parent-death signal is bound to the forker's thread.
func TestChildSurvivesItsStarterThread(t *testing.T) {
	r, w, err := os.Pipe()
	require.NoError(t, err)
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
	require.NoError(t, s.err)
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
	_, err = w.WriteString("go\n")
	require.NoError(t, err)
	w.Close()
	<-s.p.Done()
	st := s.p.State()
	assert.True(t, st.Exited() && st.ExitCode() == 0, "the child ended with %v after its starter's thread exited, want exit status 0", st)
}

// TestStderrTailIsBounded: a child flooding stderr without newlines leaves
// a short tail, not megabytes.
func TestStderrTailIsBounded(t *testing.T) {
	p, err := Start(Config{Path: "/bin/sh", Args: []string{"-c", "head -c 2000000 /dev/zero | tr '\\0' x >&2; exit 1"}})
	require.NoError(t, err)
	<-p.Done()
	tail := p.StderrTail()
	assert.NotEmpty(t, tail, "stderr tail")
	assert.LessOrEqual(t, len(tail), tailLines*(tailLineMax+4), "stderr tail bytes")
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
	require.NoError(t, err)
	<-ready
	const grace = 300 * time.Millisecond
	asked := time.Now().Add(-grace) // the request took the first grace period
	require.Equal(t, syscall.SIGKILL, p.StopSince(context.Background(), asked, grace), "StopSince sent")
	assert.Less(t, time.Since(asked), 3*grace, "the stop ended past 2 grace periods of %v after the request", grace)
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
	require.NoError(t, err)
	proc := "/proc/" + itoa(p.Pid())
	for deadline := time.Now().Add(10 * time.Second); ; runtime.Gosched() {
		if _, err := os.Stat(proc); os.IsNotExist(err) {
			break // reaped
		}
		if time.Now().After(deadline) {
			require.Fail(t, "the child was not reaped within 10s")
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
		require.NoError(t, cmd.Start())
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
	require.NoError(t, p.Signal(syscall.SIGKILL))
	_ = other.Process.Signal(syscall.SIGTERM)
	err = other.Wait()
	ws, ok := other.ProcessState.Sys().(syscall.WaitStatus)
	require.True(t, ok && ws.Signal() == syscall.SIGTERM, "the process that got the recycled pid ended with %v, want SIGTERM (Signal reached it)", err)
	<-p.Done()
}
