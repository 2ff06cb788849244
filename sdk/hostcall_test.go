package sdk

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goplugins/goplugins/internal/wire"
)

// caller calls host function req (a request "name" or "meta:key") and
// answers with the response, the error's code, or the metadata under key.
type caller struct{}

func (caller) Execute(ctx context.Context, req string) (string, error) {
	if key, ok := cutPrefix(req, "meta:"); ok {
		return Metadata(ctx)[key], nil
	}
	out, err := CallHost[string, string](ctx, req, "arg")
	if err != nil {
		var e *Error
		if !errors.As(err, &e) {
			return "not an *Error: " + err.Error(), nil
		}
		return "error " + e.Code, nil
	}
	return out, nil
}

func cutPrefix(s, p string) (string, bool) {
	if len(s) >= len(p) && s[:len(p)] == p {
		return s[len(p):], true
	}
	return "", false
}

// handshakeV2 completes a handshake in which the host offers versions 1
// and 2.
func (h *host) handshakeV2() wire.Welcome {
	h.t.Helper()
	h.send(wire.TypeHello, 0, wire.Hello{Protocols: []int{1, 2}, Codec: "json", MaxFrameSize: 4096})
	f := h.read()
	var w wire.Welcome
	require.Equal(h.t, wire.TypeWelcome, f.Type, "handshake answer; payload %q", f.Payload)
	require.NoError(h.t, json.Unmarshal(f.Payload, &w), "handshake answer")
	return w
}

// readHostCall reads a HOST_CALL and decodes it.
func (h *host) readHostCall() (uint64, wire.HostCall) {
	h.t.Helper()
	f := h.read()
	require.Equal(h.t, wire.TypeHostCall, f.Type, "frame type; payload %q", f.Payload)
	hc, err := wire.ParseHostCall(f.Payload)
	require.NoError(h.t, err)
	return f.ID, hc
}

// readResult reads the RESULT of request id and returns its JSON string.
func (h *host) readResult(id uint64) string {
	h.t.Helper()
	f := h.read()
	require.Equal(h.t, wire.TypeResult, f.Type, "frame type; payload %q", f.Payload)
	require.Equal(h.t, id, f.ID, "RESULT id")
	var s string
	require.NoError(h.t, json.Unmarshal(f.Payload, &s))
	return s
}

// TestServeChoosesProtocol2: the sdk chooses version 2 when the host offers
// it, 1 when the host offers only 1.
func TestServeChoosesProtocol2(t *testing.T) {
	assert.Equal(t, 2, startServe(t, echo{}).handshakeV2().Protocol, "host offers [1 2]")
	assert.Equal(t, 1, startServe(t, echo{}).handshake().Protocol, "host offers [1]")
}

// TestCallHostWithinRequest: a handler's host call carries the request's
// id as parent, the function's name and the encoded body; HOST_RESULT and
// HOST_ERROR reach it as the response and an *Error with the host's code.
func TestCallHostWithinRequest(t *testing.T) {
	h := startServe(t, caller{})
	h.handshakeV2()
	h.send(wire.TypeCall, 7, "kv.get")
	id, hc := h.readHostCall()
	assert.NotZero(t, id, "host-call id")
	assert.Equal(t, wire.HostCall{Parent: 7, Name: "kv.get", Body: []byte(`"arg"`)}, hc)
	h.send(wire.TypeHostResult, id, "value")
	assert.Equal(t, "value", h.readResult(7))

	h.send(wire.TypeCall, 8, "kv.put")
	id2, _ := h.readHostCall()
	assert.NotEqual(t, id, id2, "host-call ids are unique")
	h.send(wire.TypeHostError, id2, wire.ErrorReply{Code: wire.CodeNotGranted, Message: "no"})
	assert.Equal(t, "error not_granted", h.readResult(8))
}

// TestCallHostCancelledWithRequest: when the request's ctx ends (CANCEL),
// CallHost returns at once with ErrCanceled matching context.Canceled and
// sends HOST_CANCEL; a late answer is dropped.
func TestCallHostCancelledWithRequest(t *testing.T) {
	errs := make(chan error, 1)
	h := startServe(t, handlerFunc(func(ctx context.Context, req string) (string, error) {
		out, err := CallHost[string, string](ctx, "block", "")
		errs <- err
		return out, err
	}))
	h.handshakeV2()
	h.send(wire.TypeCall, 1, "x")
	id, _ := h.readHostCall()
	h.send(wire.TypeCancel, 1, nil)
	var got []wire.Type
	for range 2 { // HOST_CANCEL and the request's ERROR, in either order
		f := h.read()
		got = append(got, f.Type)
		if f.Type == wire.TypeHostCancel {
			assert.Equal(t, id, f.ID, "HOST_CANCEL id")
		}
	}
	assert.ElementsMatch(t, []wire.Type{wire.TypeHostCancel, wire.TypeError}, got)
	err := <-errs // returned without any answer to the host call
	assert.ErrorIs(t, err, ErrCanceled)
	assert.ErrorIs(t, err, context.Canceled)
	h.send(wire.TypeHostError, id, wire.ErrorReply{Code: wire.CodeCanceled, Message: "late"}) // dropped
	h.send(wire.TypeCall, 2, "y")
	id2, _ := h.readHostCall()
	h.send(wire.TypeHostResult, id2, "ok")
	assert.Equal(t, "ok", h.readResult(2), "the next host call gets its own answer")
	require.NoError(t, <-errs)
	h.send(wire.TypeShutdown, 0, nil)
	assert.NoError(t, <-h.done)
}

type handlerFunc func(ctx context.Context, req string) (string, error)

func (f handlerFunc) Execute(ctx context.Context, req string) (string, error) { return f(ctx, req) }

// TestCallHostFailsLocally: a request over the host's maximum frame size
// is not sent (ErrFrameTooLarge), and a response that does not decode
// fails with ErrBadRequest.
func TestCallHostFailsLocally(t *testing.T) {
	errs := make(chan error, 2)
	h := startServe(t, handlerFunc(func(ctx context.Context, req string) (string, error) {
		_, err := CallHost[string, int](ctx, "kv.get", req)
		errs <- err
		return "", nil
	}))
	h.handshakeV2() // the host's limit: 4096 bytes
	h.send(wire.TypeCall, 1, string(make([]byte, 5000)))
	assert.ErrorIs(t, <-errs, ErrFrameTooLarge)
	assert.Equal(t, "", h.readResult(1), "no HOST_CALL was sent before the RESULT")
	h.send(wire.TypeCall, 2, "k")
	id, _ := h.readHostCall()
	h.send(wire.TypeHostResult, id, "not a number")
	assert.ErrorIs(t, <-errs, ErrBadRequest)
	h.readResult(2)
}

// TestCallHostUnsupported: with a host that chose protocol version 1, and
// with a ctx that is not one of Serve's, CallHost fails with
// ErrUnsupported.
func TestCallHostUnsupported(t *testing.T) {
	h := startServe(t, caller{})
	h.handshake()
	h.send(wire.TypeCall, 1, "kv.get")
	assert.Equal(t, "error unsupported", h.readResult(1))

	_, err := CallHost[string, string](context.Background(), "kv.get", "")
	assert.ErrorIs(t, err, ErrUnsupported)
}

// TestMetadataAttachesToItsRequest: METADATA reaches the request that
// follows it at once, and no other.
func TestMetadataAttachesToItsRequest(t *testing.T) {
	h := startServe(t, caller{})
	h.handshakeV2()
	h.send(wire.TypeMetadata, 1, map[string]string{"k": "v"})
	h.send(wire.TypeCall, 1, "meta:k")
	assert.Equal(t, "v", h.readResult(1), "metadata of its request")
	h.send(wire.TypeMetadata, 5, map[string]string{"k": "stray"}) // not followed by request 5
	h.send(wire.TypeCall, 2, "meta:k")
	assert.Empty(t, h.readResult(2), "a METADATA not followed by its request is dropped")
}

// TestWithBackground: background work runs after the handshake with a
// ctx whose host calls have parent 0; it is cancelled when serving ends,
// and Serve returns after it did.
func TestWithBackground(t *testing.T) {
	results := make(chan string, 1)
	returned := make(chan struct{})
	bg := func(ctx context.Context) {
		defer close(returned)
		out, err := CallHost[string, string](ctx, "clock.now", "")
		if err != nil {
			results <- err.Error()
		} else {
			results <- out
		}
		<-ctx.Done()
	}
	h := startServe(t, echo{}, WithBackground(bg))
	h.handshakeV2()
	id, hc := h.readHostCall()
	assert.Equal(t, wire.HostCall{Parent: 0, Name: "clock.now", Body: []byte(`""`)}, hc, "a background host call")
	h.send(wire.TypeHostResult, id, "noon")
	assert.Equal(t, "noon", <-results)
	select {
	case <-returned:
		t.Fatal("background work ended while serving")
	default:
	}
	h.send(wire.TypeShutdown, 0, nil)
	assert.NoError(t, <-h.done)
	select {
	case <-returned:
	default:
		t.Fatal("Serve returned before the background work did")
	}
}

// TestErrorIsMatchesCodes: *Error matches a sentinel with the same code,
// and only that one.
func TestErrorIsMatchesCodes(t *testing.T) {
	err := error(&Error{Code: wire.CodeOverloaded, Message: "busy", Retryable: true})
	assert.ErrorIs(t, err, ErrOverloaded)
	assert.NotErrorIs(t, err, ErrNotGranted)
	assert.ErrorIs(t, Errorf("not_granted", false, "x"), ErrNotGranted)
}
