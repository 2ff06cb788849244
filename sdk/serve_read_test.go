package sdk

import (
	"context"
	"io"
	"testing"

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
		if f.Type != wire.TypeResult || string(f.Payload) != want[f.ID] {
			t.Fatalf("got %s %d %q, want RESULT %q", f.Type, f.ID, f.Payload, want[f.ID])
		}
		delete(want, f.ID)
	}
	h.send(wire.TypeCall, 3, "wait") // released already: answers at once
	if f := h.read(); f.ID != 3 || string(f.Payload) != `"released"` {
		t.Fatalf("got %s %d %q, want RESULT 3", f.Type, f.ID, f.Payload)
	}
	h.toPl.Close()
	if err := <-h.done; err != nil {
		t.Fatalf("serve after EOF: %v", err)
	}
}

// TestServeCancelReachesBlockedHandler: the CANCEL of a request whose
// handler blocks is read and ends the handler's ctx.
func TestServeCancelReachesBlockedHandler(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	h, _ := startServer(t, rendezvous{released: make(chan struct{})})
	h.handshake()
	h.send(wire.TypeCall, 1, "wait")
	h.send(wire.TypeCancel, 1, nil)
	if r := h.errorReply(h.read()); r.Code != wire.CodeCanceled {
		t.Fatalf("cancelled call answered %+v, want code canceled", r)
	}
	h.send(wire.TypeShutdown, 0, nil)
	if err := <-h.done; err != nil {
		t.Fatalf("serve after SHUTDOWN: %v", err)
	}
	h.toPl.Close() // the reader, reading on after SHUTDOWN, meets EOF
}
