package proc

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
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
