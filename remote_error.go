package goplugins

import "github.com/goplugins/goplugins/internal/wire"

// remoteError is the host's error for a plugin's error reply to op, the
// same on every transport. It matches ErrRemote and wraps an *ErrorReply
// (errors.As reads the plugin's code and message). It is retryable when the
// plugin flagged it so, except that a "frame_too_large" reply, which also
// matches ErrFrameTooLarge, never is: the same request can never fit. A
// "panic" reply also matches ErrPanic. A handler's error that wraps a
// context error is an ordinary reply ("canceled"), not a lost connection.
func remoteError(plugin, op, code, message string, flagged bool) error {
	if code == wire.CodeFrameTooLarge {
		flagged = false
	}
	err := wrapError(&ErrorReply{Code: code, Message: message, Retryable: flagged}, codeRemote, plugin, "%s failed in the plugin", op)
	if flagged {
		err = retryable(err)
	}
	switch code {
	case wire.CodeFrameTooLarge:
		return wrapError(err, codeFrameTooLarge, plugin, "the plugin refused an oversized frame; the request cannot be retried as it is")
	case wire.CodePanic:
		return wrapError(err, codePanic, plugin, "the plugin's handler panicked; the plugin serves on")
	}
	return err
}
