package goplugins

import (
	"context"
	"errors"
	"fmt"
	"strings"

	goerrors "github.com/agilira/go-errors"
)

// The codes carried by every error the library reports, one per sentinel
// below. Hosts match errors with errors.Is and the sentinels; ErrorCode reports
// the code string (for logs and metrics). Five sentinels were merged into
// others that a host never told apart from them: a bad plugin name is an
// ErrInvalidPlugin, a bad version constraint an ErrInvalidVersion, a path
// escape an ErrInvalidManifest, a protocol version mismatch an ErrHandshake,
// and a manager or loader shut down an ErrClosed.
const (
	codeNotFound            goerrors.ErrorCode = "PLUGIN_NOT_FOUND"
	codeAlreadyRegistered   goerrors.ErrorCode = "PLUGIN_ALREADY_REGISTERED"
	codeInvalidVersion      goerrors.ErrorCode = "PLUGIN_INVALID_VERSION"
	codeInvalidPlugin       goerrors.ErrorCode = "PLUGIN_INVALID"
	codeBreakerOpen         goerrors.ErrorCode = "PLUGIN_BREAKER_OPEN"
	codeTimeout             goerrors.ErrorCode = "PLUGIN_TIMEOUT"
	codePanic               goerrors.ErrorCode = "PLUGIN_PANIC"
	codeUnhealthy           goerrors.ErrorCode = "PLUGIN_UNHEALTHY"
	codeIncompatibleVersion goerrors.ErrorCode = "PLUGIN_INCOMPATIBLE_VERSION"
	codeDependencyMissing   goerrors.ErrorCode = "PLUGIN_DEPENDENCY_MISSING"
	codeDependencyCycle     goerrors.ErrorCode = "PLUGIN_DEPENDENCY_CYCLE"
	codeDependentsLoaded    goerrors.ErrorCode = "PLUGIN_DEPENDENTS_LOADED"
	codeReloadFailed        goerrors.ErrorCode = "PLUGIN_RELOAD_FAILED"
	codeDrainTimeout        goerrors.ErrorCode = "PLUGIN_DRAIN_TIMEOUT"
	codeSchemaIncompatible  goerrors.ErrorCode = "PLUGIN_SCHEMA_INCOMPATIBLE"
	codeInvalidManifest     goerrors.ErrorCode = "PLUGIN_INVALID_MANIFEST"
	codeChecksumMismatch    goerrors.ErrorCode = "PLUGIN_CHECKSUM_MISMATCH"
	codeHandshake           goerrors.ErrorCode = "PLUGIN_HANDSHAKE_FAILED"
	codeFrameTooLarge       goerrors.ErrorCode = "PLUGIN_FRAME_TOO_LARGE"
	codeCrashed             goerrors.ErrorCode = "PLUGIN_CRASHED"
	codeTransport           goerrors.ErrorCode = "PLUGIN_TRANSPORT"
	codeRemote              goerrors.ErrorCode = "PLUGIN_REMOTE_ERROR"
	codeInvalidConfig       goerrors.ErrorCode = "PLUGIN_INVALID_CONFIG"
	codeNoFactory           goerrors.ErrorCode = "PLUGIN_NO_FACTORY"
	codeClosed              goerrors.ErrorCode = "PLUGIN_CLOSED"
	codeCanceled            goerrors.ErrorCode = "PLUGIN_CANCELED"
	codeNotGranted          goerrors.ErrorCode = "PLUGIN_HOST_CALL_NOT_GRANTED"
	codeOverloaded          goerrors.ErrorCode = "PLUGIN_OVERLOADED"
)

// Sentinels for errors.Is, the one way to match an error of the library.
// They are never returned themselves and must never be modified: the library
// builds a fresh error with the same code each time, one line that names the
// plugin and says what to do.
var (
	// ErrNotFound: no plugin of that name is registered.
	ErrNotFound = sentinel(codeNotFound)
	// ErrAlreadyRegistered: a plugin of that name is registered already.
	ErrAlreadyRegistered = sentinel(codeAlreadyRegistered)
	// ErrInvalidVersion: a version is not strict semantic versioning, or a
	// version constraint does not parse.
	ErrInvalidVersion = sentinel(codeInvalidVersion)
	// ErrInvalidPlugin: a plugin value is unusable (nil, or its Info is
	// wrong, such as a name that breaks the rules of PluginInfo.Name).
	ErrInvalidPlugin = sentinel(codeInvalidPlugin)
	// ErrBreakerOpen: the plugin's circuit breaker rejected the call.
	ErrBreakerOpen = sentinel(codeBreakerOpen)
	// ErrTimeout: the plugin did not answer within its timeout.
	ErrTimeout = sentinel(codeTimeout)
	// ErrPanic: the plugin panicked; the panic was recovered.
	ErrPanic = sentinel(codePanic)
	// ErrUnhealthy: the plugin failed its health checks and fails fast.
	ErrUnhealthy = sentinel(codeUnhealthy)
	// ErrIncompatibleVersion: a version fails a host, rule or dependency constraint.
	ErrIncompatibleVersion = sentinel(codeIncompatibleVersion)
	// ErrDependencyMissing: a required dependency is neither loaded nor known.
	ErrDependencyMissing = sentinel(codeDependencyMissing)
	// ErrDependencyCycle: dependencies form a cycle.
	ErrDependencyCycle = sentinel(codeDependencyCycle)
	// ErrDependentsLoaded: an unload was refused because dependents are loaded.
	ErrDependentsLoaded = sentinel(codeDependentsLoaded)
	// ErrReloadFailed: a reload failed and was rolled back.
	ErrReloadFailed = sentinel(codeReloadFailed)
	// ErrDrainTimeout: calls in flight did not finish within the drain timeout.
	ErrDrainTimeout = sentinel(codeDrainTimeout)
	// ErrSchemaIncompatible: the next plugin refused the old one's schema.
	ErrSchemaIncompatible = sentinel(codeSchemaIncompatible)
	// ErrInvalidManifest: a manifest (or configuration file) is malformed,
	// or one of its paths leaves the folder it must stay in.
	ErrInvalidManifest = sentinel(codeInvalidManifest)
	// ErrChecksumMismatch: a plugin binary does not match its checksum.
	ErrChecksumMismatch = sentinel(codeChecksumMismatch)
	// ErrHandshake: a child process did not complete the plugin handshake,
	// or host and plugin share no protocol version.
	ErrHandshake = sentinel(codeHandshake)
	// ErrFrameTooLarge: a wire frame exceeds the maximum frame size.
	ErrFrameTooLarge = sentinel(codeFrameTooLarge)
	// ErrCrashed: a plugin process exited while calls were in flight.
	ErrCrashed = sentinel(codeCrashed)
	// ErrTransport: the connection to an out-of-process plugin failed.
	ErrTransport = sentinel(codeTransport)
	// ErrRemote: an out-of-process plugin answered with an error.
	ErrRemote = sentinel(codeRemote)
	// ErrInvalidConfig: an option or configuration value is invalid.
	ErrInvalidConfig = sentinel(codeInvalidConfig)
	// ErrNoFactory: no factory is registered for a plugin's transport.
	ErrNoFactory = sentinel(codeNoFactory)
	// ErrClosed: the plugin was closed, or the manager or loader is shut
	// down or shutting down.
	ErrClosed = sentinel(codeClosed)
	// ErrCanceled: the caller's context ended before the plugin answered; the
	// error also matches the context's error (context.Canceled or
	// context.DeadlineExceeded) with errors.Is.
	ErrCanceled = sentinel(codeCanceled)
	// ErrNotGranted: a plugin called a host function that is not offered or
	// not granted to it (see WithGrants).
	ErrNotGranted = sentinel(codeNotGranted)
	// ErrOverloaded: a plugin has as many host calls running as its limit
	// allows (see HostCallLimits); the call may succeed if made again.
	ErrOverloaded = sentinel(codeOverloaded)
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
// ctx.Err() too when the cause is another error. A ctx whose deadline has
// passed before its timer marked it done counts as ended at its deadline.
func canceledError(ctx context.Context, plugin string) error {
	cause, err := context.Cause(ctx), ctx.Err()
	switch {
	case err == nil:
		cause = context.DeadlineExceeded
	case !errors.Is(cause, err):
		cause = fmt.Errorf("%w: %w", err, cause)
	}
	return wrapError(cause, codeCanceled, plugin, "the caller's context ended before the plugin answered")
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
