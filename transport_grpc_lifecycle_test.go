//go:build linux

package goplugins

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestGRPCHandlerCanceledIsARemoteError: a handler's error that wraps
// context.Canceled is the plugin's answer (ErrRemote with the reply's
// code, as on the subprocess transport), not a lost connection.
func TestGRPCHandlerCanceledIsARemoteError(t *testing.T) {
	verifyNoLeaks(t)
	bin := buildGRPCCounter(t)
	ctx := context.Background()
	p, err := newGRPCPlugin[counterReq, counterResp](ctx, GRPCConfig{Name: "counter", Command: bin})
	require.NoError(t, err)
	defer p.Close(ctx)
	_, err = p.Execute(ctx, counterReq{Op: "canceled"})
	require.ErrorIs(t, err, ErrRemote)
	assert.NotErrorIs(t, err, ErrTransport)
	assert.NotErrorIs(t, err, ErrCrashed)
	var rep *ErrorReply
	require.ErrorAs(t, err, &rep)
	assert.Equal(t, "canceled", rep.Code)
	assert.Contains(t, rep.Message, "the handler gave up")
	_, err = p.Execute(ctx, counterReq{Op: "echo", Text: "still serving"})
	require.NoError(t, err)
}

// TestGRPCOversizeRequestIsNotRetryable: a request over the server's
// message limit (RESOURCE_EXHAUSTED) matches ErrFrameTooLarge and is not
// retryable: it can never fit.
func TestGRPCOversizeRequestIsNotRetryable(t *testing.T) {
	verifyNoLeaks(t)
	lis, addr := tcpListener(t)
	srv := serveGRPC(t, lis, addr, newInProcPlugin())
	p := newRemote(t, GRPCConfig{Name: "counter", Endpoint: srv.addr})
	_, err := p.Execute(context.Background(), counterReq{Text: strings.Repeat("x", 5<<20)})
	require.ErrorIs(t, err, ErrFrameTooLarge)
	assert.False(t, IsRetryable(err), "retrying resends a request that cannot fit")
}

// TestGRPCStopWithinTwoGracesWhenShutdownFails: a child that cannot answer
// the Shutdown RPC (stopped here with SIGSTOP) is SIGKILLed 2·StopGrace
// after Close began, not 3·StopGrace.
func TestGRPCStopWithinTwoGracesWhenShutdownFails(t *testing.T) {
	verifyNoLeaks(t)
	bin := buildGRPCCounter(t)
	ctx := context.Background()
	const grace = 500 * time.Millisecond
	p, err := newGRPCPlugin[counterReq, counterResp](ctx, GRPCConfig{Name: "counter", Command: bin, StopGrace: grace})
	require.NoError(t, err)
	require.NotZero(t, p.Pid())
	assert.Equal(t, grpcChildOf(t, p).proc.Pid(), p.Pid(), "Pid is the child's")
	require.NoError(t, syscall.Kill(p.Pid(), syscall.SIGSTOP))
	began := time.Now()
	require.NoError(t, p.Close(ctx))
	// The documented bound is 2·grace; 3·grace was the bug.
	assert.Less(t, time.Since(began), 5*grace/2, "Close took longer than two grace periods")
}

// TestGRPCFactoryServesMixedFolder: a GRPCFactory base with AutoMTLS
// serves both a child's manifest (over mTLS) and an endpoint's (AutoMTLS
// does not apply to it).
func TestGRPCFactoryServesMixedFolder(t *testing.T) {
	verifyNoLeaks(t)
	bin := buildGRPCCounter(t)
	ctx := context.Background()
	lis, addr := tcpListener(t)
	srv := serveGRPC(t, lis, addr, newInProcPlugin())
	factory := GRPCFactory[counterReq, counterResp](GRPCConfig{AutoMTLS: true})
	for _, m := range []*Manifest{
		{Name: "counter", Version: "1.0.0", Transport: "grpc", Command: bin},
		{Name: "counter", Version: "1.0.0", Transport: "grpc", Endpoint: srv.addr},
	} {
		p, err := factory(ctx, m)
		require.NoError(t, err, "manifest with command %q, endpoint %q", m.Command, m.Endpoint)
		_, err = p.Execute(ctx, counterReq{Op: "echo", Text: "hi"})
		assert.NoError(t, err)
		require.NoError(t, p.Close(ctx))
	}
}
