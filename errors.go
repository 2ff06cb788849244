package goplugins

import (
	"context"
	"errors"
	"fmt"
	"strings"

	goerrors "github.com/agilira/go-errors"
)

// Error codes carried by every error the library reports. Each code has a
// sentinel below; match with errors.Is(err, ErrNotFound), which compares codes,
// or read the code with errors.As into a *goerrors.Error.
const (
	CodeNotFound            goerrors.ErrorCode = "PLUGIN_NOT_FOUND"
	CodeAlreadyRegistered   goerrors.ErrorCode = "PLUGIN_ALREADY_REGISTERED"
	CodeInvalidName         goerrors.ErrorCode = "PLUGIN_INVALID_NAME"
	CodeInvalidVersion      goerrors.ErrorCode = "PLUGIN_INVALID_VERSION"
	CodeInvalidConstraint   goerrors.ErrorCode = "PLUGIN_INVALID_CONSTRAINT"
	CodeInvalidPlugin       goerrors.ErrorCode = "PLUGIN_INVALID"
	CodeBreakerOpen         goerrors.ErrorCode = "PLUGIN_BREAKER_OPEN"
	CodeTimeout             goerrors.ErrorCode = "PLUGIN_TIMEOUT"
	CodePanic               goerrors.ErrorCode = "PLUGIN_PANIC"
	CodeUnhealthy           goerrors.ErrorCode = "PLUGIN_UNHEALTHY"
	CodeShuttingDown        goerrors.ErrorCode = "MANAGER_SHUTTING_DOWN"
	CodeIncompatibleVersion goerrors.ErrorCode = "PLUGIN_INCOMPATIBLE_VERSION"
	CodeDependencyMissing   goerrors.ErrorCode = "PLUGIN_DEPENDENCY_MISSING"
	CodeDependencyCycle     goerrors.ErrorCode = "PLUGIN_DEPENDENCY_CYCLE"
	CodeDependentsLoaded    goerrors.ErrorCode = "PLUGIN_DEPENDENTS_LOADED"
	CodeReloadFailed        goerrors.ErrorCode = "PLUGIN_RELOAD_FAILED"
	CodeDrainTimeout        goerrors.ErrorCode = "PLUGIN_DRAIN_TIMEOUT"
	CodeSchemaIncompatible  goerrors.ErrorCode = "PLUGIN_SCHEMA_INCOMPATIBLE"
	CodeInvalidManifest     goerrors.ErrorCode = "PLUGIN_INVALID_MANIFEST"
	CodePathEscape          goerrors.ErrorCode = "PLUGIN_PATH_ESCAPE"
	CodeChecksumMismatch    goerrors.ErrorCode = "PLUGIN_CHECKSUM_MISMATCH"
	CodeHandshake           goerrors.ErrorCode = "PLUGIN_HANDSHAKE_FAILED"
	CodeProtocolVersion     goerrors.ErrorCode = "PLUGIN_PROTOCOL_VERSION"
	CodeFrameTooLarge       goerrors.ErrorCode = "PLUGIN_FRAME_TOO_LARGE"
	CodeCrashed             goerrors.ErrorCode = "PLUGIN_CRASHED"
	CodeTransport           goerrors.ErrorCode = "PLUGIN_TRANSPORT"
	CodeRemote              goerrors.ErrorCode = "PLUGIN_REMOTE_ERROR"
	CodeInvalidConfig       goerrors.ErrorCode = "PLUGIN_INVALID_CONFIG"
	CodeNoFactory           goerrors.ErrorCode = "PLUGIN_NO_FACTORY"
	CodeClosed              goerrors.ErrorCode = "PLUGIN_CLOSED"
	CodeCanceled            goerrors.ErrorCode = "PLUGIN_CANCELED"
)

// Sentinels for errors.Is. They are never returned themselves and must never
// be modified: the library builds a fresh error with the same code each time,
// with a message that names the plugin and says what to do.
var (
	// ErrNotFound: no plugin of that name is registered.
	ErrNotFound = sentinel(CodeNotFound)
	// ErrAlreadyRegistered: a plugin of that name is registered already.
	ErrAlreadyRegistered = sentinel(CodeAlreadyRegistered)
	// ErrInvalidName: a plugin name breaks the rules of ValidateName.
	ErrInvalidName = sentinel(CodeInvalidName)
	// ErrInvalidVersion: a version is not strict semantic versioning.
	ErrInvalidVersion = sentinel(CodeInvalidVersion)
	// ErrInvalidConstraint: a version constraint does not parse.
	ErrInvalidConstraint = sentinel(CodeInvalidConstraint)
	// ErrInvalidPlugin: a plugin value is unusable (nil, or its Info is wrong).
	ErrInvalidPlugin = sentinel(CodeInvalidPlugin)
	// ErrBreakerOpen: the plugin's circuit breaker rejected the call.
	ErrBreakerOpen = sentinel(CodeBreakerOpen)
	// ErrTimeout: the plugin did not answer within its timeout.
	ErrTimeout = sentinel(CodeTimeout)
	// ErrPanic: the plugin panicked; the panic was recovered.
	ErrPanic = sentinel(CodePanic)
	// ErrUnhealthy: the plugin failed its health checks and fails fast.
	ErrUnhealthy = sentinel(CodeUnhealthy)
	// ErrShuttingDown: the manager (or loader) is shut down or shutting down.
	ErrShuttingDown = sentinel(CodeShuttingDown)
	// ErrIncompatibleVersion: a version fails a host, rule or dependency constraint.
	ErrIncompatibleVersion = sentinel(CodeIncompatibleVersion)
	// ErrDependencyMissing: a required dependency is neither loaded nor known.
	ErrDependencyMissing = sentinel(CodeDependencyMissing)
	// ErrDependencyCycle: dependencies form a cycle.
	ErrDependencyCycle = sentinel(CodeDependencyCycle)
	// ErrDependentsLoaded: an unload was refused because dependents are loaded.
	ErrDependentsLoaded = sentinel(CodeDependentsLoaded)
	// ErrReloadFailed: a reload failed and was rolled back.
	ErrReloadFailed = sentinel(CodeReloadFailed)
	// ErrDrainTimeout: calls in flight did not finish within the drain timeout.
	ErrDrainTimeout = sentinel(CodeDrainTimeout)
	// ErrSchemaIncompatible: the next plugin refused the old one's schema.
	ErrSchemaIncompatible = sentinel(CodeSchemaIncompatible)
	// ErrInvalidManifest: a manifest (or configuration file) is malformed.
	ErrInvalidManifest = sentinel(CodeInvalidManifest)
	// ErrPathEscape: a path leaves the folder it must stay in.
	ErrPathEscape = sentinel(CodePathEscape)
	// ErrChecksumMismatch: a plugin binary does not match its checksum.
	ErrChecksumMismatch = sentinel(CodeChecksumMismatch)
	// ErrHandshake: a child process did not complete the plugin handshake.
	ErrHandshake = sentinel(CodeHandshake)
	// ErrProtocolVersion: host and plugin share no protocol version.
	ErrProtocolVersion = sentinel(CodeProtocolVersion)
	// ErrFrameTooLarge: a wire frame exceeds the maximum frame size.
	ErrFrameTooLarge = sentinel(CodeFrameTooLarge)
	// ErrCrashed: a plugin process exited while calls were in flight.
	ErrCrashed = sentinel(CodeCrashed)
	// ErrTransport: the connection to an out-of-process plugin failed.
	ErrTransport = sentinel(CodeTransport)
	// ErrRemote: an out-of-process plugin answered with an error.
	ErrRemote = sentinel(CodeRemote)
	// ErrInvalidConfig: an option or configuration value is invalid.
	ErrInvalidConfig = sentinel(CodeInvalidConfig)
	// ErrNoFactory: no factory is registered for a plugin's transport.
	ErrNoFactory = sentinel(CodeNoFactory)
	// ErrClosed: the object was closed.
	ErrClosed = sentinel(CodeClosed)
	// ErrCanceled: the caller's context ended before the plugin answered; the
	// error also matches the context's error (context.Canceled or
	// context.DeadlineExceeded) with errors.Is.
	ErrCanceled = sentinel(CodeCanceled)
)

func sentinel(code goerrors.ErrorCode) error {
	return goerrors.New(code, string(code))
}

// newError returns a fresh coded error whose message names the plugin.
// plugin may be empty when no plugin is concerned.
func newError(code goerrors.ErrorCode, plugin, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if plugin != "" {
		msg = fmt.Sprintf("plugin %q: %s", plugin, msg)
	}
	e := goerrors.New(code, msg)
	if plugin != "" {
		e.WithContext("plugin", plugin)
	}
	return e
}

// wrapError is newError with a cause; the cause's text is appended to the
// message because go-errors does not print it (see causeText). A nil cause
// gives newError.
func wrapError(cause error, code goerrors.ErrorCode, plugin, format string, args ...any) error {
	if cause == nil {
		return newError(code, plugin, format, args...)
	}
	msg := fmt.Sprintf(format, args...) + ": " + causeText(cause, plugin)
	if plugin != "" {
		msg = fmt.Sprintf("plugin %q: %s", plugin, msg)
	}
	e := goerrors.Wrap(cause, code, msg)
	if plugin != "" {
		e.WithContext("plugin", plugin)
	}
	return e
}

// canceledError is the error of a call whose caller's ctx ended before the
// plugin answered: it matches ErrCanceled and wraps context.Cause(ctx), and
// ctx.Err() too when the cause is another error.
func canceledError(ctx context.Context, plugin string) error {
	cause := context.Cause(ctx)
	if err := ctx.Err(); !errors.Is(cause, err) {
		cause = fmt.Errorf("%w: %w", err, cause)
	}
	return wrapError(cause, CodeCanceled, plugin, "the caller's context ended before the plugin answered")
}

// isCanceled reports whether err is ctx's own ending: ctx is done and err
// is (or wraps) its error.
func isCanceled(ctx context.Context, err error) bool {
	return ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded))
}

// IsRetryable reports whether err, or an error it wraps, is marked retryable
// (go-errors' AsRetryable, or any error with an IsRetryable() bool method
// that returns true).
func IsRetryable(err error) bool {
	for err != nil {
		if r, ok := err.(goerrors.Retryable); ok && r.IsRetryable() {
			return true
		}
		switch u := err.(type) {
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				if IsRetryable(e) {
					return true
				}
			}
			return false
		case interface{ Unwrap() error }:
			err = u.Unwrap()
		default:
			return false
		}
	}
	return false
}

// ErrorCode returns the library code of err (the first coded error in its
// chain) or "" when err carries none.
func ErrorCode(err error) goerrors.ErrorCode {
	var e *goerrors.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// causeText is the text of a cause in a wrapping message: for one of this
// package's errors its message without the code and without the plugin
// the wrapping message names already, so that a line says each once.
func causeText(cause error, plugin string) string {
	ge, ok := cause.(*goerrors.Error)
	if !ok {
		return cause.Error()
	}
	if plugin != "" {
		return strings.TrimPrefix(ge.Message, fmt.Sprintf("plugin %q: ", plugin))
	}
	return ge.Message
}
