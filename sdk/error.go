package sdk

import "fmt"

// Error is an error reply with a code and a retryable flag. Return one (or
// an error wrapping one) from a handler to choose what the host sees: its
// error then matches goplugins.ErrRemote and, when Retryable is set,
// goplugins.IsRetryable reports true. Any other error is sent with code
// "error" and its text.
type Error struct {
	Code      string
	Message   string
	Retryable bool
}

// Errorf returns an *Error with code, the retryable flag and a formatted
// message.
func Errorf(code string, retryable bool, format string, args ...any) error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...), Retryable: retryable}
}

// Error returns "code: message".
func (e *Error) Error() string { return e.Code + ": " + e.Message }
