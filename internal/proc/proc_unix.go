//go:build unix && !linux

package proc

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
)

func sysProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

// launch starts cmd. This OS has no parent-death signal: a child that
// does not exit at the end of its protocol pipe can outlive a host that
// is killed.
func launch(cmd *exec.Cmd) error { return cmd.Start() }

func exited() {}

// awaitExit returns false: this OS cannot wait without reaping, so the
// child is reaped first and its group is not killed afterwards (the group
// id may be reused by then); Stop signals the group while the child lives.
func awaitExit(int) bool { return false }

func signalGroup(pid int, sig syscall.Signal) error { return syscall.Kill(-pid, sig) }

// openVerified hashes the binary at path and returns it open. Without
// memfd the child executes the path again, so a file replaced between the
// check and the exec is not detected on this OS.
func openVerified(path string, want []byte) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("proc: opening %s to verify its checksum: %w", path, err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		f.Close()
		return nil, fmt.Errorf("proc: reading %s for verification: %w", path, err)
	}
	if err := checkSum(path, h.Sum(nil), want); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// execVerified returns the path the child executes (the verified file's).
func execVerified(f *os.File) (string, *os.File) { return f.Name(), nil }
