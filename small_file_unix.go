//go:build unix

package goplugins

import (
	"syscall"

	goerrors "github.com/agilira/go-errors"
)

// readSmallFile reads the regular file at path, of at most max bytes, for
// LoadManifest, LoadConfig, the DiscoveryEngine and the ConfigWatcher. It
// opens without blocking and checks the type of what it opened, so a named
// pipe or a device put where a manifest or configuration belongs is refused
// instead of waited on forever. what names the file in errors ("manifest",
// "configuration"), which carry code.
//
// It uses the system calls directly: os.Open would also register the file
// with the network poller, a wasted system call for a regular file that
// costs a tenth of a discovery scan.
func readSmallFile(path string, max int64, what string, code goerrors.ErrorCode) ([]byte, error) {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
	for err == syscall.EINTR {
		fd, err = syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
	}
	if err != nil {
		return nil, wrapError(err, code, "", "%s %s cannot be opened", what, path)
	}
	defer syscall.Close(fd)
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return nil, wrapError(err, code, "", "%s %s cannot be read", what, path)
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return nil, newError(code, "", "%s %s is not a regular file (%s); put the file itself there", what, path, fileType(uint32(st.Mode)))
	}
	if st.Size > max {
		return nil, newError(code, "", "%s %s is %d bytes; the limit is %d: shrink it or raise the limit", what, path, st.Size, max)
	}
	// Read the size fstat saw, in one read for a small file: a file that
	// changes meanwhile has a newer stat, and the next look reads it again.
	data := make([]byte, st.Size)
	n := 0
	for n < len(data) {
		m, err := syscall.Read(fd, data[n:])
		switch {
		case err == syscall.EINTR:
			continue
		case err != nil:
			return nil, wrapError(err, code, "", "%s %s cannot be read", what, path)
		case m == 0:
			return data[:n], nil
		}
		n += m
	}
	return data, nil
}

// fileType names the type of a file that is not regular.
func fileType(mode uint32) string {
	switch mode & syscall.S_IFMT {
	case syscall.S_IFIFO:
		return "a named pipe"
	case syscall.S_IFCHR, syscall.S_IFBLK:
		return "a device"
	case syscall.S_IFSOCK:
		return "a socket"
	case syscall.S_IFDIR:
		return "a folder"
	}
	return "not a regular file"
}
