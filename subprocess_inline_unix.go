//go:build unix

package goplugins

import (
	"os"
	"syscall"
)

// inlineWrite is a write to the child that never waits: it takes what the
// pipe has room for now. It belongs to whoever owns the stream.
type inlineWrite struct {
	raw syscall.RawConn
	fn  func(fd uintptr) bool // made once: a call allocates nothing
	buf []byte                // the frame being written
	b   []byte                // what is left of it
	n   int                   // bytes written
}

// start prepares writes to f; without a raw descriptor every write is
// left to the writer.
func (w *inlineWrite) start(f *os.File) {
	w.raw, _ = f.SyscallConn()
	w.fn = w.writeFD
}

// write writes as much of b as the pipe takes at once and returns how much.
func (w *inlineWrite) write(b []byte) int {
	if w.raw == nil {
		return 0
	}
	w.b, w.n = b, 0
	_ = w.raw.Write(w.fn) // an error (an expired deadline, a closed file) leaves it all to the writer
	w.b = nil
	return w.n
}

func (w *inlineWrite) writeFD(fd uintptr) bool {
	for len(w.b) > 0 {
		n, err := syscall.Write(int(fd), w.b)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || n <= 0 {
			break
		}
		w.b, w.n = w.b[n:], w.n+n
	}
	return true // never wait for the pipe
}
