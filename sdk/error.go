package sdk

import (
	"fmt"

	"github.com/goplugins/goplugins/internal/wire"
)

// Error is an error reply with a code and a retryable flag. Return one (or
// an error wrapping one) from a handler to choose what the host sees: its
// error then matches goplugins.ErrRemote and, when Retryable is set,
// goplugins.IsRetryable reports true. Any other error is sent with code
// "error" and its text.
//
// CallHost fails with an *Error carrying the host's code; errors.Is
// matches it against the sentinels below (ErrNotGranted, ...), which
// compare codes only.
type Error struct {
	Code      string
	Message   string
	Retryable bool

	cause error // what Unwrap returns: the ctx's error of a cancelled call
}

// Errorf returns an *Error with code, the retryable flag and a formatted
// message.
func Errorf(code string, retryable bool, format string, args ...any) error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...), Retryable: retryable}
}

// Error returns "code: message".
func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Is reports whether target is an *Error with the same code, so that
// errors.Is(err, sdk.ErrNotGranted) matches every "not_granted" reply.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Unwrap returns the cause of the error: for a host call abandoned because
// its ctx ended, the ctx's error; otherwise nil.
func (e *Error) Unwrap() error { return e.cause }

// Sentinels of the codes a host call fails with (see CallHost and
// docs/PROTOCOL.md), for errors.Is. They match by code; do not modify them.
var (
	// ErrNotGranted: the host function does not exist or is not granted
	// to the plugin (or not outside a request, for background calls).
	ErrNotGranted = &Error{Code: wire.CodeNotGranted, Message: "the host function is not granted to the plugin"}
	// ErrOverloaded: the plugin has as many host calls running as the
	// host allows; retryable.
	ErrOverloaded = &Error{Code: wire.CodeOverloaded, Message: "too many host calls running", Retryable: true}
	// ErrTimeout: the host call ran past the host's host-call timeout.
	ErrTimeout = &Error{Code: wire.CodeTimeout, Message: "the host call timed out"}
	// ErrCanceled: the host call was cancelled; when its ctx ended, the
	// error also matches the ctx's error.
	ErrCanceled = &Error{Code: wire.CodeCanceled, Message: "the host call was cancelled"}
	// ErrPanic: the host function panicked.
	ErrPanic = &Error{Code: wire.CodePanic, Message: "the host function panicked"}
	// ErrShuttingDown: the plugin's value on the host was closed (it was
	// unregistered or replaced by a reload).
	ErrShuttingDown = &Error{Code: wire.CodeShuttingDown, Message: "the host is shutting the plugin down"}
	// ErrBadRequest: the request did not encode, or the host could not
	// decode it, or the response did not decode.
	ErrBadRequest = &Error{Code: wire.CodeBadRequest, Message: "the host call's request or response does not decode"}
	// ErrFrameTooLarge: the request or its response is over a maximum
	// frame size.
	ErrFrameTooLarge = &Error{Code: wire.CodeFrameTooLarge, Message: "the host call is over a maximum frame size"}
	// ErrUnsupported: the host speaks protocol version 1, which has no
	// host calls, or the ctx is not one of Serve's.
	ErrUnsupported = &Error{Code: wire.CodeUnsupported, Message: "host calls are not supported here"}
	// ErrHostFunc: the host function failed with an error without a code
	// of its own (code "error").
	ErrHostFunc = &Error{Code: wire.CodeError, Message: "the host function failed"}
)
