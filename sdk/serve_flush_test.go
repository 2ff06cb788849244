package sdk

import (
	"context"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goplugins/goplugins/internal/wire"
)

// gate is a plugin whose handler answers "released" once open is closed.
type gate struct{ open chan struct{} }

func (g gate) Execute(ctx context.Context, req string) (string, error) {
	select {
	case <-g.open:
		return "released", nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// heldWriter reports on started each time a Write begins and, once hold is
// set, holds every Write until proceed is closed.
type heldWriter struct {
	w       io.Writer
	started chan struct{}
	hold    *atomic.Bool
	proceed chan struct{}
}

func (h heldWriter) Write(b []byte) (int, error) {
	select {
	case h.started <- struct{}{}:
	default:
	}
	if h.hold.Load() {
		<-h.proceed
	}
	return h.w.Write(b)
}

// TestServeFlushesBeforeReturning: after SHUTDOWN, an answer queued while
// another goroutine's write is blocked is written before Serve returns,
// not lost to the plugin's exit.
func TestServeFlushesBeforeReturning(t *testing.T) {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	out := heldWriter{w: outW, started: make(chan struct{}, 1), hold: new(atomic.Bool), proceed: make(chan struct{})}
	h := &host{t: t, r: wire.NewReader(outR, 0), w: wire.NewWriter(inW, 0), toPl: inW, done: make(chan error, 1)}
	g := gate{open: make(chan struct{})}
	go func() {
		err := serve(context.Background(), inR, out, g, Info{Name: "t", Version: "1.0.0"})
		outW.Close() // what the plugin's exit does to its pipe
		h.done <- err
	}()
	t.Cleanup(func() { inW.Close(); outR.Close() })
	h.handshake()
	<-out.started // the WELCOME's write
	out.hold.Store(true)
	h.send(wire.TypeCall, 1, "wait")
	h.send(wire.TypeShutdown, 0, nil)
	h.send(wire.TypeCall, 2, "late")
	// The refusal of request 2 is being written, and is held. Request 1's
	// answer is queued behind it, and request 1 is done, which ends Serve.
	<-out.started
	close(g.open)
	// Serve must not return while the write is held. Without the flush it
	// returns within microseconds; this bound only gives it time to.
	select {
	case err := <-h.done:
		require.Failf(t, "Serve returned while an answer was queued behind a write in progress", "Serve returned %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	close(out.proceed)
	got := map[uint64]wire.Type{}
	for {
		f, err := h.r.Read()
		if err != nil {
			break
		}
		got[f.ID] = f.Type
	}
	require.Equal(t, wire.TypeResult, got[1], "answer to 1 before the end of the stream: %v", got)
	require.Equal(t, wire.TypeError, got[2], "answer to 2 before the end of the stream: %v", got)
	assert.NoError(t, <-h.done, "serve after SHUTDOWN")
}
