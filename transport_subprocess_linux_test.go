//go:build linux

package goplugins

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSubprocessHelperHost is not a test: TestSubprocessChildDiesWithHost
// runs the test binary as a host process that starts the echo plugin,
// prints its pid and waits to be killed.
func TestSubprocessHelperHost(t *testing.T) {
	bin := os.Getenv("GOPLUGINS_HELPER_HOST_PLUGIN")
	if bin == "" {
		t.Skip("helper process for TestSubprocessChildDiesWithHost")
	}
	p, err := newSubprocess[echoReq, echoResp](context.Background(), SubprocessConfig{Name: "echo", Command: bin})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println(pidOf(t, p))
	io.Copy(io.Discard, os.Stdin) // until the parent test kills this process
}

func TestSubprocessChildDiesWithHost(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestSubprocessHelperHost$")
	cmd.Env = append(os.Environ(), "GOPLUGINS_HELPER_HOST_PLUGIN="+pluginBinary(t, "echo"))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var pid int
	if _, err := fmt.Fscan(stdout, &pid); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("reading the plugin pid from the helper host: %v", err)
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Skipf("pidfd_open: %v", err)
	}
	defer unix.Close(pidfd)
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	// The pidfd becomes readable when the plugin exits.
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 10_000)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			t.Fatalf("plugin %d still runs 10s after its host was killed", pid)
		}
		return
	}
}
