package sdk

import (
	"bytes"
	"context"
	"io"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/goplugins/goplugins/internal/wire"
)

// rendezvous is a plugin whose "wait" handler blocks until a "release"
// request has been served (or its ctx ends): both are answered only if the
// second request is read while the first handler blocks.
type rendezvous struct{ released chan struct{} }

func (r rendezvous) Execute(ctx context.Context, req string) (string, error) {
	switch req {
	case "wait":
		select {
		case <-r.released:
			return "released", nil
		case <-ctx.Done():
			return "", ctx.Err()
		}
	case "release":
		close(r.released)
	}
	return req, nil
}

// startServer runs a server for p over in-memory pipes and returns it with
// the test's side.
func startServer(t *testing.T, p Plugin[string, string]) (*host, *server) {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	h := &host{t: t, r: wire.NewReader(outR, 0), w: wire.NewWriter(inW, 0), toPl: inW, done: make(chan error, 1)}
	s := newServer(context.Background(), inR, outW, p, Info{Name: "t", Version: "1.0.0"})
	go func() {
		err := s.run()
		outW.Close()
		h.done <- err
	}()
	t.Cleanup(func() { inW.Close(); outR.Close() })
	return h, s
}

// TestServeReadsWhileHandlerBlocks: reading goes on while a handler
// blocks, so that another request and a CANCEL reach the plugin.
// In-memory pipes deliver one frame a read, so no frame is ever buffered
// ahead.
func TestServeReadsWhileHandlerBlocks(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	h, _ := startServer(t, rendezvous{released: make(chan struct{})})
	h.handshake()
	h.send(wire.TypeCall, 1, "wait")
	h.send(wire.TypeCall, 2, "release") // blocks until read
	want := map[uint64]string{1: `"released"`, 2: `"release"`}
	for range 2 {
		f := h.read()
		require.Equal(t, wire.TypeResult, f.Type, "answer to %d; payload %q", f.ID, f.Payload)
		require.Equal(t, want[f.ID], string(f.Payload), "RESULT %d", f.ID)
		delete(want, f.ID)
	}
	h.send(wire.TypeCall, 3, "wait") // released already: answers at once
	f := h.read()
	require.Equal(t, uint64(3), f.ID, "answer's id")
	require.Equal(t, `"released"`, string(f.Payload), "RESULT 3")
	h.toPl.Close()
	assert.NoError(t, <-h.done, "serve after EOF")
}

// TestServeCancelReachesBlockedHandler: the CANCEL of a request whose
// handler blocks is read and ends the handler's ctx.
func TestServeCancelReachesBlockedHandler(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	h, _ := startServer(t, rendezvous{released: make(chan struct{})})
	h.handshake()
	h.send(wire.TypeCall, 1, "wait")
	h.send(wire.TypeCancel, 1, nil)
	require.Equal(t, wire.CodeCanceled, h.errorReply(h.read()).Code, "cancelled call's answer")
	h.send(wire.TypeShutdown, 0, nil)
	assert.NoError(t, <-h.done, "serve after SHUTDOWN")
	h.toPl.Close() // the reader, reading on after SHUTDOWN, meets EOF
}

// gateAll is a plugin whose handlers block until release is closed.
type gateAll struct {
	started chan struct{}
	release chan struct{}
}

func (g gateAll) Execute(ctx context.Context, req string) (string, error) {
	g.started <- struct{}{}
	<-g.release
	return req, nil
}

// TestServeIdleWorkersBounded: after a burst of concurrent requests, at
// most maxIdleWorkers workers stay parked for the reading seat (one more
// holds it), and none is left once serving ends.
func TestServeIdleWorkersBounded(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	const burst = 3 * maxIdleWorkers
	g := gateAll{started: make(chan struct{}), release: make(chan struct{})}
	h, _ := startServer(t, g)
	h.handshake()
	for id := range uint64(burst) {
		h.send(wire.TypeCall, id+1, "x")
		<-g.started
	}
	// The reader started last may not have run yet (a goroutine that has
	// not started shows its go statement's wrapper, not work).
	require.Eventually(t, func() bool { return countWorkers() == burst+1 },
		5*time.Second, time.Millisecond, "a worker serves each blocked request, one reads: %d", countWorkers())
	close(g.release)
	for range burst {
		require.Equal(t, wire.TypeResult, h.read().Type)
	}
	// Workers past the bound exit on their own once they answered.
	require.Eventually(t, func() bool { return countWorkers() == maxIdleWorkers+1 },
		5*time.Second, time.Millisecond, "workers after the burst: %d", countWorkers())
	h.toPl.Close()
	assert.NoError(t, <-h.done, "serve after EOF")
}

// countWorkers counts the server's worker goroutines.
func countWorkers() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return bytes.Count(buf, []byte("workers.(*Pool).run("))
}
