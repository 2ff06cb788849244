package proc

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

func sysProcAttr() *syscall.SysProcAttr {
	// Setpgid: the child leads a group that Stop can signal as a whole.
	// Pdeathsig: the kernel kills the child when the thread that forked
	// it exits; launch forks from a thread that outlives every child.
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// forker is the goroutine that forks every child, locked to its OS thread.
// Linux's parent-death signal fires when the forking thread exits, not the
// process: a child forked by a goroutine that called runtime.LockOSThread
// and returned would be killed with that goroutine's thread. The forker's
// thread lives while any child it forked lives (live counts them); when
// the last one is reaped the forker returns, and its thread with it,
// killing nobody.
var forker struct {
	mu   sync.Mutex
	live int
	reqs chan forkReq // nil while no child lives
}

type forkReq struct {
	cmd  *exec.Cmd
	done chan error
}

// launch starts cmd from the forker's thread, with only the descriptors
// cmd names inherited.
func launch(cmd *exec.Cmd) error {
	forker.mu.Lock()
	if forker.live == 0 {
		forker.reqs = make(chan forkReq)
		go forkLoop(forker.reqs)
	}
	forker.live++
	reqs := forker.reqs
	forker.mu.Unlock()
	done := make(chan error, 1)
	reqs <- forkReq{cmd, done}
	err := <-done
	if err != nil {
		exited()
	}
	return err
}

// exited is called once for every child launch started, when it is reaped.
func exited() {
	forker.mu.Lock()
	defer forker.mu.Unlock()
	if forker.live--; forker.live == 0 {
		close(forker.reqs)
		forker.reqs = nil
	}
}

func forkLoop(reqs <-chan forkReq) {
	runtime.LockOSThread() // never unlocked: the thread ends with the loop
	for r := range reqs {
		closeOnExecInherited()
		r.done <- r.cmd.Start()
	}
}

// closeOnExecInherited marks close-on-exec every descriptor above 2 of the
// host that lacks the flag: Go opens everything close-on-exec, but a host
// may have inherited descriptors without it (or opened them through cgo),
// and exec would pass them to every child.
func closeOnExecInherited() {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd <= 2 {
			continue
		}
		if flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil && flags&unix.FD_CLOEXEC == 0 {
			_, _ = unix.FcntlInt(uintptr(fd), unix.F_SETFD, flags|unix.FD_CLOEXEC)
		}
	}
}

// awaitExit blocks the calling goroutine, not a thread, until the child
// has exited, without reaping it: it waits for the child's pidfd to become
// readable through the runtime's poller. It returns false if it could not
// wait without reaping (a kernel without pidfd), true otherwise.
func awaitExit(pid int) bool {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return waitNoReap(pid)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return waitNoReap(pid)
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return waitNoReap(pid)
	}
	exitedOrGone := func(fd uintptr) bool {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PIDFD, int(fd), &info, unix.WEXITED|unix.WNOWAIT|unix.WNOHANG, nil)
		return err != unix.EINTR && (err != nil || info.Signo != 0)
	}
	if rc.Read(exitedOrGone) != nil {
		return waitNoReap(pid)
	}
	return true
}

// waitNoReap is awaitExit for kernels without pidfd: it blocks a thread.
func waitNoReap(pid int) bool {
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			return true
		}
	}
}

func signalGroup(pid int, sig syscall.Signal) error { return syscall.Kill(-pid, sig) }

// openVerified copies the binary at path into a sealed memfd while hashing
// it, checks the digest, and returns a read-only descriptor of the memfd.
// The child executes the very bytes that were hashed, which nobody can
// change any more (F_SEAL_WRITE), so there is no gap between check and use
// even if the file on disk is replaced or rewritten.
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
	// read-only.
	ro, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", mem.Fd()), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("proc: reopening the verified copy of %s: %w", path, err)
	}
	return os.NewFile(uintptr(ro), "memfd:goplugins-plugin"), nil
}

// execVerified returns the path the child executes to run the verified copy
// f, and f again if f must stay open while the child runs. A binary is
// executed as /proc/self/fd/N: the kernel opens it during the exec, before
// the close-on-exec descriptor is closed. A script ("#!") is executed as
// /proc/<host pid>/fd/N, the host's descriptor, because the kernel hands
// that path to the interpreter, which opens it after the exec: so the
// child inherits no descriptor of it, and the host keeps f open until the
// child is reaped.
func execVerified(f *os.File) (string, *os.File) {
	magic := make([]byte, 2)
	if n, _ := f.ReadAt(magic, 0); n < 2 || string(magic) != "#!" {
		return fmt.Sprintf("/proc/self/fd/%d", f.Fd()), nil
	}
	return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), f.Fd()), f
}
