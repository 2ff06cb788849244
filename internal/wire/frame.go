// Package wire implements the framing of the goplugins subprocess protocol
// (docs/PROTOCOL.md): length-prefixed frames carrying a type, a request id
// and a payload, read and written with a maximum frame size.
package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Protocol constants shared by the host and the plugin SDK.
const (
	// ProtocolVersion is the newest protocol version this package speaks:
	// version 2 adds the plugin's calls to the host (HOST_CALL and its
	// answers) and call metadata (METADATA) to version 1.
	ProtocolVersion = 2
	// ProtocolV1 is the first protocol version, which every peer speaks.
	ProtocolV1 = 1
	// CookieKey is the environment variable the host sets in a plugin's
	// environment; CookieValue is its value.
	CookieKey = "GOPLUGINS_MAGIC_COOKIE"
	// CookieValue proves to a plugin that a goplugins host started it.
	CookieValue = "d3b07384d113edec49eaa6238ad5ff00-goplugins"
	// HostToPluginFD is the plugin's file descriptor on which it reads frames.
	HostToPluginFD = 3
	// PluginToHostFD is the plugin's file descriptor on which it writes frames.
	PluginToHostFD = 4
	// HeaderSize is the size of a frame header: a 4-byte length, a 1-byte
	// type and an 8-byte request id.
	HeaderSize = 13
	// MinFrameSize is the smallest legal value of the length field: the type
	// and the request id with an empty payload.
	MinFrameSize = HeaderSize - 4
	// DefaultMaxFrameSize bounds the length field unless configured.
	DefaultMaxFrameSize = 4 << 20
	// MinMaxFrameSize is the smallest maximum frame size a peer may declare.
	MinMaxFrameSize = 1 << 10
	// MaxFrameSizeLimit is the largest maximum frame size a peer may
	// declare: far below the 4 GiB a length field can hold, so that a
	// frame's length never wraps, and an int on every platform.
	MaxFrameSizeLimit = 1 << 30
)

// Type is a frame's type.
type Type uint8

// Frame types. See docs/PROTOCOL.md for who sends which and what answers it.
const (
	TypeHello       Type = 0x01 // host → plugin: offered versions and limits
	TypeWelcome     Type = 0x02 // plugin → host: chosen version and plugin info
	TypeCall        Type = 0x03 // host → plugin: a request (codec payload)
	TypeResult      Type = 0x04 // plugin → host: a successful answer
	TypeError       Type = 0x05 // plugin → host: an error answer (ErrorReply)
	TypeCancel      Type = 0x06 // host → plugin: abandon request id
	TypeHealth      Type = 0x07 // host → plugin: health ping
	TypePersist     Type = 0x08 // host → plugin: return state bytes
	TypeRestore     Type = 0x09 // host → plugin: load state bytes
	TypeCheckpoint  Type = 0x0A // host → plugin: stop the stream, return its position
	TypeResume      Type = 0x0B // host → plugin: resume the stream from a position
	TypeCheckCompat Type = 0x0C // host → plugin: can you replace this plugin (PluginInfo)
	TypeShutdown    Type = 0x0D // host → plugin: finish in-flight requests and exit
	TypeHostCall    Type = 0x0E // plugin → host, version 2: call a host function (HostCall payload)
	TypeHostResult  Type = 0x0F // host → plugin, version 2: a host call's response (codec payload)
	TypeHostError   Type = 0x10 // host → plugin, version 2: a host call's error (ErrorReply)
	TypeHostCancel  Type = 0x11 // plugin → host, version 2: abandon host call id
	TypeMetadata    Type = 0x12 // host → plugin, version 2: metadata of the request that follows
)

var typeNames = [...]string{
	TypeHello: "HELLO", TypeWelcome: "WELCOME", TypeCall: "CALL", TypeResult: "RESULT",
	TypeError: "ERROR", TypeCancel: "CANCEL", TypeHealth: "HEALTH", TypePersist: "PERSIST",
	TypeRestore: "RESTORE", TypeCheckpoint: "CHECKPOINT", TypeResume: "RESUME",
	TypeCheckCompat: "CHECK_COMPAT", TypeShutdown: "SHUTDOWN", TypeHostCall: "HOST_CALL",
	TypeHostResult: "HOST_RESULT", TypeHostError: "HOST_ERROR", TypeHostCancel: "HOST_CANCEL",
	TypeMetadata: "METADATA",
}

// Known reports whether t is a frame type of the newest protocol version.
// A Reader accepts the frames of every version; a peer that chose version
// 1 and gets a frame of version 2 (see In) treats it as a broken protocol.
func (t Type) Known() bool { return t >= TypeHello && t <= TypeMetadata }

// In reports whether t is a frame type of protocol version v.
func (t Type) In(v int) bool {
	if v < 2 {
		return t >= TypeHello && t <= TypeShutdown
	}
	return t.Known()
}

// String returns the type's protocol name, or its number when unknown.
func (t Type) String() string {
	if t.Known() {
		return typeNames[t]
	}
	return fmt.Sprintf("type(0x%02x)", uint8(t))
}

// Frame is one protocol message.
type Frame struct {
	Type    Type
	ID      uint64
	Payload []byte
}

// ErrFrameTooLarge is matched (errors.Is) by every *FrameTooLargeError.
var ErrFrameTooLarge = errors.New("wire: frame too large")

// ErrMalformed is matched by errors that make a stream unreadable: the peer
// broke the framing, and the connection must be dropped.
var ErrMalformed = errors.New("wire: malformed frame")

// FrameTooLargeError reports a frame over the maximum frame size. When a
// Reader returns it, the frame was skipped and the stream stays usable; when
// a Writer returns it, nothing was written.
type FrameTooLargeError struct {
	Type Type
	ID   uint64
	Size int // value of the length field
	Max  int // the limit it exceeds
}

// Error names the frame, its size and the limit.
func (e *FrameTooLargeError) Error() string {
	return fmt.Sprintf("wire: %s frame %d is %d bytes, over the maximum frame size of %d bytes", e.Type, e.ID, e.Size, e.Max)
}

// Is makes errors.Is(err, ErrFrameTooLarge) true.
func (e *FrameTooLargeError) Is(target error) bool { return target == ErrFrameTooLarge }

// AppendFrame appends the encoding of a frame to b and returns the result.
// The payload must be shorter than MaxFrameSizeLimit (a Writer checks the
// peer's limit, which is at most that).
func AppendFrame(b []byte, t Type, id uint64, payload []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(MinFrameSize+len(payload)))
	b = append(b, byte(t))
	b = binary.BigEndian.AppendUint64(b, id)
	return append(b, payload...)
}

// Reader decodes frames from a stream. A read error that leaves the stream
// usable, such as a deadline set on an *os.File, can be retried: the next
// Read resumes the frame where the failed one stopped.
type Reader struct {
	r   *bufio.Reader
	max int

	// The frame being read, between a header and the end of its payload.
	inFrame bool
	cur     Frame
	got     int                 // payload bytes read into cur
	skip    int                 // bytes of an oversized frame left to skip
	tooBig  *FrameTooLargeError // set while skipping
}

// NewReader returns a Reader that refuses frames whose length field exceeds
// max (DefaultMaxFrameSize when max <= 0).
func NewReader(r io.Reader, max int) *Reader {
	if max <= 0 {
		max = DefaultMaxFrameSize
	}
	return &Reader{r: bufio.NewReaderSize(r, 64<<10), max: max}
}

// Read returns the next frame. Its payload is freshly allocated and owned by
// the caller. Read returns io.EOF at a clean end of stream,
// io.ErrUnexpectedEOF inside a frame, an error matching ErrMalformed when the
// stream breaks the framing (it must then be abandoned), and a
// *FrameTooLargeError, after skipping the frame, when it is over the limit.
// Any other error comes from the stream; calling Read again retries.
func (r *Reader) Read() (Frame, error) {
	if !r.inFrame {
		if err := r.header(); err != nil {
			return Frame{}, err
		}
	}
	if r.tooBig != nil {
		for r.skip > 0 {
			n, err := r.r.Discard(r.skip)
			r.skip -= n
			if err != nil {
				return Frame{}, unexpected(err)
			}
		}
		err := r.tooBig
		r.tooBig, r.inFrame = nil, false
		return Frame{}, err
	}
	for r.got < len(r.cur.Payload) {
		n, err := r.r.Read(r.cur.Payload[r.got:])
		r.got += n
		if err != nil {
			return Frame{}, unexpected(err)
		}
	}
	f := r.cur
	r.cur, r.inFrame = Frame{}, false
	return f, nil
}

// header consumes the next frame header, or nothing if it fails. A length
// field or a type that breaks the framing fails as soon as its bytes
// arrive, without waiting for the rest of the header.
func (r *Reader) header() error {
	hdr, err := r.peek(5)
	if err != nil {
		return err
	}
	size, t := int(binary.BigEndian.Uint32(hdr[:4])), Type(hdr[4])
	if size < MinFrameSize {
		return fmt.Errorf("%w: length field %d is below the minimum of %d", ErrMalformed, size, MinFrameSize)
	}
	if !t.Known() {
		return fmt.Errorf("%w: unknown frame type 0x%02x (header % x)", ErrMalformed, uint8(t), hdr)
	}
	if hdr, err = r.peek(HeaderSize); err != nil {
		return err
	}
	id := binary.BigEndian.Uint64(hdr[5:])
	_, _ = r.r.Discard(HeaderSize) // peeked: cannot fail
	r.inFrame, r.got = true, 0
	r.cur = Frame{Type: t, ID: id}
	n := size - MinFrameSize
	if size > r.max {
		r.tooBig = &FrameTooLargeError{Type: t, ID: id, Size: size, Max: r.max}
		r.skip = n
		return nil
	}
	if n > 0 {
		r.cur.Payload = make([]byte, n)
	}
	return nil
}

// peek returns the next n bytes without consuming them; an end of stream
// after some of them is io.ErrUnexpectedEOF.
func (r *Reader) peek(n int) ([]byte, error) {
	b, err := r.r.Peek(n)
	if err == io.EOF && len(b) > 0 {
		return nil, io.ErrUnexpectedEOF
	}
	return b, err
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
