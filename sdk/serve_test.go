package sdk

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

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
	require.NoError(h.t, h.w.Write(t, id, b))
}

func (h *host) read() wire.Frame {
	h.t.Helper()
	f, err := h.r.Read()
	require.NoError(h.t, err, "reading from the plugin")
	return f
}

func (h *host) errorReply(f wire.Frame) wire.ErrorReply {
	h.t.Helper()
	require.Equal(h.t, wire.TypeError, f.Type, "frame type; payload %q", f.Payload)
	var r wire.ErrorReply
	require.NoError(h.t, json.Unmarshal(f.Payload, &r))
	return r
}

func (h *host) handshake() wire.Welcome {
	h.t.Helper()
	h.send(wire.TypeHello, 0, wire.Hello{Protocols: []int{1}, Codec: "json", MaxFrameSize: 2048})
	f := h.read()
	var w wire.Welcome
	require.Equal(h.t, wire.TypeWelcome, f.Type, "handshake answer; payload %q", f.Payload)
	require.NoError(h.t, json.Unmarshal(f.Payload, &w), "handshake answer")
	return w
}

func TestServeHandshakeRefusals(t *testing.T) {
	tests := []struct {
		name  string
		hello wire.Hello
		code  string
	}{
		{"no shared protocol version", wire.Hello{Protocols: []int{3, 4}, Codec: "json"}, wire.CodeProtocolVersion},
		{"unknown codec", wire.Hello{Protocols: []int{1}, Codec: "msgpack"}, wire.CodeCodec},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := startServe(t, echo{})
			h.send(wire.TypeHello, 0, tt.hello)
			require.Equal(t, tt.code, h.errorReply(h.read()).Code, "code")
			assert.Error(t, <-h.done, "serve returned nil after refusing the handshake")
		})
	}
}

func TestServeSurfacesDetected(t *testing.T) {
	h := startServe(t, stateful{})
	w := h.handshake()
	assert.Equal(t, []string{"state"}, w.Surfaces, "WELCOME surfaces")
	assert.Equal(t, "t", w.Name, "WELCOME name")
	assert.Equal(t, 1, w.Protocol, "WELCOME protocol")
}

func TestServeRequests(t *testing.T) {
	h := startServe(t, echo{}, WithMaxFrameSize(1024))
	require.Equal(t, 1024, h.handshake().MaxFrameSize, "declared max frame size")
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
			require.Equal(t, id, f.ID, "answer's id")
			if tt.code != "" {
				r := h.errorReply(f)
				assert.Equal(t, tt.code, r.Code, "error %+v", r)
				return
			}
			assert.Equal(t, wire.TypeResult, f.Type, "frame type; payload %q", f.Payload)
			assert.Equal(t, tt.result, string(f.Payload), "RESULT payload")
		})
	}
}

func TestServeCancelAndShutdown(t *testing.T) {
	h := startServe(t, echo{})
	h.handshake()
	h.send(wire.TypeCall, 1, "block")
	h.send(wire.TypeCancel, 1, nil)
	require.Equal(t, wire.CodeCanceled, h.errorReply(h.read()).Code, "cancelled call's answer")
	h.send(wire.TypeShutdown, 0, nil)
	assert.NoError(t, <-h.done, "serve after SHUTDOWN")
}

func TestServeShutdownWaitsForRequests(t *testing.T) {
	h := startServe(t, echo{})
	h.handshake()
	h.send(wire.TypeCall, 1, "block")
	h.send(wire.TypeShutdown, 0, nil)
	h.send(wire.TypeCall, 2, "late")
	require.Equal(t, wire.CodeShuttingDown, h.errorReply(h.read()).Code, "request after SHUTDOWN answered")
	select {
	case err := <-h.done:
		require.Failf(t, "serve returned with a request in flight", "serve returned %v", err)
	default:
	}
	h.send(wire.TypeCancel, 1, nil)
	require.Equal(t, wire.CodeCanceled, h.errorReply(h.read()).Code, "request 1 answered")
	assert.NoError(t, <-h.done, "serve after SHUTDOWN")
}

func TestServeHostGoneCancelsHandlers(t *testing.T) {
	o := observer{seen: make(chan struct{})}
	h := startServe(t, o)
	h.handshake()
	h.send(wire.TypeCall, 1, "wait")
	h.toPl.Close()
	require.NoError(t, <-h.done, "serve after EOF")
	<-o.seen // the handler's ctx ended: without cancellation this hangs
}

func TestErrorf(t *testing.T) {
	err := Errorf("busy", true, "queue %d full", 3)
	var e *Error
	require.ErrorAs(t, err, &e, "Errorf")
	assert.Equal(t, &Error{Code: "busy", Retryable: true, Message: "queue 3 full"}, e, "Errorf")
	assert.EqualError(t, err, "busy: queue 3 full", "Errorf")
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
			require.Equal(t, wire.TypeWelcome, h.read().Type, "handshake answer")
			h.send(wire.TypeCall, 1, "x")
			h.send(wire.TypeHealth, 2, nil)
			f := h.read() // requests are served concurrently: either comes first
			if f.ID != 1 {
				f = h.read()
				require.Equal(t, uint64(1), f.ID, "answers for ids 2 and %d: the error reply to id 1 was dropped", f.ID)
			}
			require.LessOrEqual(t, len(f.Payload)+wire.MinFrameSize, limit, "ERROR frame over the host's limit")
			r := h.errorReply(f)
			require.Equal(t, tt.code, r.Code, "reply %+v", r)
			require.Equal(t, errors.As(tt.err, new(*Error)), r.Retryable, "reply %+v: the retryable flag kept", r)
			if tt.prefixOf == "" {
				assert.Equal(t, errorReplyTooLarge, r.Message, "message")
				return
			}
			msg, cut := strings.CutSuffix(r.Message, "…")
			assert.True(t, cut && msg != "" && strings.HasPrefix(tt.prefixOf, msg) && utf8.ValidString(msg),
				"message %q, want a non-empty prefix of the original marked with …", r.Message)
		})
	}
}
