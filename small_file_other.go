//go:build !unix

package goplugins

import (
	"io"
	"os"

	goerrors "github.com/agilira/go-errors"
)

// readSmallFile reads the regular file at path, of at most max bytes (see
// the unix version). Where opening cannot be made non-blocking, the type is
// checked before opening: a named pipe swapped in between is not caught.
func readSmallFile(path string, max int64, what string, code goerrors.ErrorCode) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, wrapError(err, code, "", "%s %s cannot be opened", what, path)
	}
	if !st.Mode().IsRegular() {
		return nil, newError(code, "", "%s %s is not a regular file (%s); put the file itself there", what, path, st.Mode().Type())
	}
	if st.Size() > max {
		return nil, newError(code, "", "%s %s is %d bytes; the limit is %d: shrink it or raise the limit", what, path, st.Size(), max)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, wrapError(err, code, "", "%s %s cannot be opened", what, path)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, wrapError(err, code, "", "%s %s cannot be read", what, path)
	}
	if int64(len(data)) > max {
		return nil, newError(code, "", "%s %s is over %d bytes: shrink it or raise the limit", what, path, max)
	}
	return data, nil
}
