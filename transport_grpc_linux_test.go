package goplugins

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestGRPCHelperHost is not a test: TestGRPCChildDiesWithHost runs the
// test binary as a host process that starts the plugin (named by the
// environment), prints the child's pid, and waits to be killed.
func TestGRPCHelperHost(t *testing.T) {
	bin := os.Getenv("GOPLUGINS_GRPC_HELPER_PLUGIN")
	if bin == "" {
		t.Skip("helper process for TestGRPCChildDiesWithHost")
	}
	p, err := newGRPCPlugin[counterReq, counterResp](context.Background(), GRPCConfig{Name: "counter", Command: bin})
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Printf("pid %d dir %s\n", grpcChildOf(t, p).proc.Pid(), grpcChildOf(t, p).dir)
	select {}
}

func TestGRPCChildDiesWithHost(t *testing.T) {
	verifyNoLeaks(t)
	bin := buildGRPCCounter(t)
	host := exec.Command(os.Args[0], "-test.run=^TestGRPCHelperHost$")
	host.Env = append(os.Environ(), "GOPLUGINS_GRPC_HELPER_PLUGIN="+bin)
	out, err := host.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, host.Start())
	var pid int
	var dir string
	_, err = fmt.Fscanf(out, "pid %d dir %s\n", &pid, &dir)
	require.NoError(t, err, "the helper host did not start the plugin")
	t.Cleanup(func() { os.RemoveAll(dir) }) // the killed host cannot remove it
	pidfd, err := unix.PidfdOpen(pid, 0)
	require.NoError(t, err)
	defer unix.Close(pidfd)

	require.NoError(t, host.Process.Kill())
	_ = host.Wait()
	// The pidfd becomes readable when the child exits.
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 10_000)
	require.NoError(t, err)
	require.Equal(t, 1, n, "plugin process %d outlived its host by 10s", pid)
}
