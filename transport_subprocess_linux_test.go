//go:build linux

package goplugins

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"testing"

	"github.com/stretchr/testify/require"
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
	require.NoError(t, err)
	fmt.Println(pidOf(t, p))
	io.Copy(io.Discard, os.Stdin) // until the parent test kills this process
}

func TestSubprocessChildDiesWithHost(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestSubprocessHelperHost$")
	cmd.Env = append(os.Environ(), "GOPLUGINS_HELPER_HOST_PLUGIN="+pluginBinary(t, "echo"))
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	defer stdin.Close()
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	var pid int
	if _, err = fmt.Fscan(stdout, &pid); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
	}
	require.NoError(t, err, "reading the plugin pid from the helper host")
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Skipf("pidfd_open: %v", err)
	}
	defer unix.Close(pidfd)
	require.NoError(t, cmd.Process.Kill())
	cmd.Wait()
	// The pidfd becomes readable when the plugin exits.
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 10_000)
		if err == unix.EINTR {
			continue
		}
		require.NoError(t, err)
		require.NotZero(t, n, "plugin %d still runs 10s after its host was killed", pid)
		return
	}
}
