package sdk

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/goplugins/goplugins/internal/wire"
)

// host is the test's side of a serve loop running over in-memory pipes.
type host struct {
	t    *testing.T
	r    *wire.Reader
	w    *wire.Writer
	toPl *io.PipeWriter
	done chan error
}

type echo struct{}

func (echo) Execute(ctx context.Context, req string) (string, error) {
	switch req {
	case "panic":
		panic("handler bug")
	case "block":
		<-ctx.Done()
		return "", ctx.Err()
	case "big":
		return strings.Repeat("x", 4000), nil
	}
	return req, nil
}

// observer closes seen when its handler's ctx ends.
type observer struct{ seen chan struct{} }

func (o observer) Execute(ctx context.Context, req string) (string, error) {
	<-ctx.Done()
	close(o.seen)
	return "", ctx.Err()
}

type stateful struct{ echo }

func (stateful) PersistState(context.Context) ([]byte, error) { return []byte("state"), nil }
func (stateful) RestoreState(context.Context, []byte) error   { return nil }

func startServe(t *testing.T, p Plugin[string, string], opts ...Option) *host {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	h := &host{t: t, r: wire.NewReader(outR, 0), w: wire.NewWriter(inW, 0), toPl: inW, done: make(chan error, 1)}
	go func() {
		err := serve(context.Background(), inR, outW, p, Info{Name: "t", Version: "1.0.0"}, opts...)
		outW.Close()
		h.done <- err
	}()
	t.Cleanup(func() { inW.Close(); outR.Close() })
	return h
}

func (h *host) send(t wire.Type, id uint64, payload any) {
	h.t.Helper()
	var b []byte
	switch p := payload.(type) {
	case nil:
	case []byte:
		b = p
	default:
		b, _ = json.Marshal(p)
	}
	if err := h.w.Write(t, id, b); err != nil {
		h.t.Fatal(err)
	}
}

func (h *host) read() wire.Frame {
	h.t.Helper()
	f, err := h.r.Read()
	if err != nil {
		h.t.Fatalf("reading from the plugin: %v", err)
	}
	return f
}

func (h *host) errorReply(f wire.Frame) wire.ErrorReply {
	h.t.Helper()
	if f.Type != wire.TypeError {
		h.t.Fatalf("got %s %q, want ERROR", f.Type, f.Payload)
	}
	var r wire.ErrorReply
	if err := json.Unmarshal(f.Payload, &r); err != nil {
		h.t.Fatal(err)
	}
	return r
}

func (h *host) handshake() wire.Welcome {
	h.t.Helper()
	h.send(wire.TypeHello, 0, wire.Hello{Protocols: []int{1}, Codec: "json", MaxFrameSize: 2048})
	f := h.read()
	var w wire.Welcome
	if f.Type != wire.TypeWelcome || json.Unmarshal(f.Payload, &w) != nil {
		h.t.Fatalf("handshake answer %s %q", f.Type, f.Payload)
	}
	return w
}

func TestServeHandshakeRefusals(t *testing.T) {
	tests := []struct {
		name  string
		hello wire.Hello
		code  string
	}{
		{"no shared protocol version", wire.Hello{Protocols: []int{2, 3}, Codec: "json"}, wire.CodeProtocolVersion},
		{"unknown codec", wire.Hello{Protocols: []int{1}, Codec: "msgpack"}, wire.CodeCodec},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := startServe(t, echo{})
			h.send(wire.TypeHello, 0, tt.hello)
			if r := h.errorReply(h.read()); r.Code != tt.code {
				t.Fatalf("code %q, want %q", r.Code, tt.code)
			}
			if err := <-h.done; err == nil {
				t.Fatal("serve returned nil after refusing the handshake")
			}
		})
	}
}

func TestServeSurfacesDetected(t *testing.T) {
	h := startServe(t, stateful{})
	if w := h.handshake(); strings.Join(w.Surfaces, ",") != "state" || w.Name != "t" || w.Protocol != 1 {
		t.Fatalf("WELCOME = %+v; want surfaces [state]", w)
	}
}

func TestServeRequests(t *testing.T) {
	h := startServe(t, echo{}, WithMaxFrameSize(1024))
	if w := h.handshake(); w.MaxFrameSize != 1024 {
		t.Fatalf("declared max frame size %d, want 1024", w.MaxFrameSize)
	}
	tests := []struct {
		name    string
		typ     wire.Type
		payload any
		code    string // "" for a RESULT
		result  string
	}{
		{"echo", wire.TypeCall, "hi", "", `"hi"`},
		{"panic", wire.TypeCall, "panic", wire.CodePanic, ""},
		{"bad request", wire.TypeCall, []byte("{not json"), wire.CodeBadRequest, ""},
		{"oversized request", wire.TypeCall, strings.Repeat("z", 2000), wire.CodeFrameTooLarge, ""},
		{"oversized answer", wire.TypeCall, "big", wire.CodeFrameTooLarge, ""},
		{"no state surface", wire.TypePersist, nil, wire.CodeUnsupported, ""},
		{"health", wire.TypeHealth, nil, "", ""},
		{"host-only frame", wire.TypeResult, nil, wire.CodeUnsupported, ""},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := uint64(i + 1)
			h.t = t
			h.send(tt.typ, id, tt.payload)
			f := h.read()
			if f.ID != id {
				t.Fatalf("answer for id %d, want %d", f.ID, id)
			}
			if tt.code != "" {
				if r := h.errorReply(f); r.Code != tt.code {
					t.Fatalf("error %+v, want code %q", r, tt.code)
				}
				return
			}
			if f.Type != wire.TypeResult || string(f.Payload) != tt.result {
				t.Fatalf("got %s %q, want RESULT %q", f.Type, f.Payload, tt.result)
			}
		})
	}
}

func TestServeCancelAndShutdown(t *testing.T) {
	h := startServe(t, echo{})
	h.handshake()
	h.send(wire.TypeCall, 1, "block")
	h.send(wire.TypeCancel, 1, nil)
	if r := h.errorReply(h.read()); r.Code != wire.CodeCanceled {
		t.Fatalf("cancelled call answered %+v, want code canceled", r)
	}
	h.send(wire.TypeShutdown, 0, nil)
	if err := <-h.done; err != nil {
		t.Fatalf("serve after SHUTDOWN: %v", err)
	}
}

func TestServeShutdownWaitsForRequests(t *testing.T) {
	h := startServe(t, echo{})
	h.handshake()
	h.send(wire.TypeCall, 1, "block")
	h.send(wire.TypeShutdown, 0, nil)
	h.send(wire.TypeCall, 2, "late")
	if r := h.errorReply(h.read()); r.Code != wire.CodeShuttingDown {
		t.Fatalf("request after SHUTDOWN answered %+v, want code shutting_down", r)
	}
	select {
	case err := <-h.done:
		t.Fatalf("serve returned (%v) with a request in flight", err)
	default:
	}
	h.send(wire.TypeCancel, 1, nil)
	if r := h.errorReply(h.read()); r.Code != wire.CodeCanceled {
		t.Fatalf("request 1 answered %+v, want code canceled", r)
	}
	if err := <-h.done; err != nil {
		t.Fatalf("serve after SHUTDOWN: %v", err)
	}
}

func TestServeHostGoneCancelsHandlers(t *testing.T) {
	o := observer{seen: make(chan struct{})}
	h := startServe(t, o)
	h.handshake()
	h.send(wire.TypeCall, 1, "wait")
	h.toPl.Close()
	if err := <-h.done; err != nil {
		t.Fatalf("serve after EOF: %v", err)
	}
	<-o.seen // the handler's ctx ended: without cancellation this hangs
}

func TestErrorf(t *testing.T) {
	err := Errorf("busy", true, "queue %d full", 3)
	var e *Error
	if !errors.As(err, &e) || e.Code != "busy" || !e.Retryable || e.Message != "queue 3 full" || err.Error() != "busy: queue 3 full" {
		t.Fatalf("Errorf = %#v", err)
	}
}

// failing answers every request with its error.
type failing struct{ err error }

func (f failing) Execute(context.Context, string) (string, error) { return "", f.err }

// TestServeErrorReplyFitsHostLimit: an error reply whose encoding is over
// the host's maximum frame size is cut to fit, never dropped.
func TestServeErrorReplyFitsHostLimit(t *testing.T) {
	const limit = 1024
	tests := []struct {
		name     string
		err      error
		code     string
		prefixOf string // the message sent is a prefix of this, marked "…"
	}{
		{"characters JSON escapes", Errorf("busy", true, "%s", strings.Repeat("<", 600)), "busy", strings.Repeat("<", 600)},
		{"multibyte characters", errors.New(strings.Repeat("é", 1000)), wire.CodeError, strings.Repeat("é", 1000)},
		{"code over the limit", &Error{Code: strings.Repeat("c", 2000), Message: "m", Retryable: true}, wire.CodeError, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := startServe(t, failing{tt.err})
			h.send(wire.TypeHello, 0, wire.Hello{Protocols: []int{1}, Codec: "json", MaxFrameSize: limit})
			if f := h.read(); f.Type != wire.TypeWelcome {
				t.Fatalf("handshake answer %s", f.Type)
			}
			h.send(wire.TypeCall, 1, "x")
			h.send(wire.TypeHealth, 2, nil)
			f := h.read() // requests are served concurrently: either comes first
			if f.ID != 1 {
				if f = h.read(); f.ID != 1 {
					t.Fatalf("answers for ids 2 and %d: the error reply to id 1 was dropped", f.ID)
				}
			}
			if size := len(f.Payload) + wire.MinFrameSize; size > limit {
				t.Fatalf("ERROR frame of %d bytes, over the host's limit of %d", size, limit)
			}
			r := h.errorReply(f)
			if r.Code != tt.code || !r.Retryable != !errors.As(tt.err, new(*Error)) {
				t.Fatalf("reply %+v, want code %q and the retryable flag kept", r, tt.code)
			}
			if tt.prefixOf == "" {
				if r.Message != errorReplyTooLarge {
					t.Fatalf("message %q, want %q", r.Message, errorReplyTooLarge)
				}
				return
			}
			msg, cut := strings.CutSuffix(r.Message, "…")
			if !cut || msg == "" || !strings.HasPrefix(tt.prefixOf, msg) || !utf8.ValidString(msg) {
				t.Fatalf("message %q, want a non-empty prefix of the original marked with …", r.Message)
			}
		})
	}
}
