package proc

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

func sysProcAttr() *syscall.SysProcAttr {
	// Setpgid: the child leads a group that Stop can signal as a whole.
	// Pdeathsig: the kernel kills the child if the parent dies (strictly,
	// if the parent's thread that forked it exits; the protocol pipe's EOF
	// covers the rest).
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// openVerified copies the binary at path into a sealed memfd while hashing
// it, checks the digest, and returns a read-only descriptor of the memfd,
// numbered high enough to survive the child's descriptor shuffle. The child
// executes /proc/self/fd/N of it: the very bytes that were hashed, which
// nobody can change any more (F_SEAL_WRITE), so there is no gap between
// check and use even if the file on disk is replaced or rewritten.
func openVerified(path string, want []byte) (*os.File, error) {
	src, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("proc: opening %s to verify its checksum: %w", path, err)
	}
	defer src.Close()
	fd, err := unix.MemfdCreate("goplugins-plugin", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("proc: memfd_create for %s: %w", path, err)
	}
	mem := os.NewFile(uintptr(fd), "memfd:goplugins-plugin")
	defer mem.Close()
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(mem, h), src); err != nil {
		return nil, fmt.Errorf("proc: copying %s for verification: %w", path, err)
	}
	if err := checkSum(path, h.Sum(nil), want); err != nil {
		return nil, err
	}
	seals := unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
	if _, err := unix.FcntlInt(mem.Fd(), unix.F_ADD_SEALS, seals); err != nil {
		return nil, fmt.Errorf("proc: sealing the verified copy of %s: %w", path, err)
	}
	// A descriptor open for writing makes exec fail with ETXTBSY: reopen
	// read-only, above the descriptors the child's ExtraFiles occupy.
	ro, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", mem.Fd()), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("proc: reopening the verified copy of %s: %w", path, err)
	}
	high, err := unix.FcntlInt(uintptr(ro), unix.F_DUPFD_CLOEXEC, 100)
	unix.Close(ro)
	if err != nil {
		return nil, fmt.Errorf("proc: moving the verified copy of %s: %w", path, err)
	}
	return os.NewFile(uintptr(high), "memfd:goplugins-plugin"), nil
}

// execVerified returns the path the child executes to run the verified copy
// f, and the child's extra descriptors. A binary is executed as
// /proc/self/fd/N of f, which is close-on-exec. A script ("#!") is too, but
// the kernel then hands that path to the interpreter, which opens it after
// the exec: so f is passed to the child, as the descriptor after extra,
// and the child executes /proc/self/fd/ of that number (a script keeps it
// open; a binary gets no extra descriptor).
func execVerified(f *os.File, extra []*os.File) (string, []*os.File) {
	magic := make([]byte, 2)
	if n, _ := f.ReadAt(magic, 0); n < 2 || string(magic) != "#!" {
		return fmt.Sprintf("/proc/self/fd/%d", f.Fd()), extra
	}
	extra = append(extra[:len(extra):len(extra)], f)
	return fmt.Sprintf("/proc/self/fd/%d", 3+len(extra)-1), extra
}

// waitExited blocks until the child has exited, without reaping it.
func waitExited(pid int) {
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			return
		}
	}
}
