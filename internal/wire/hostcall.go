package wire

import (
	"encoding/binary"
	"fmt"
)

// MaxHostFuncName is the longest host function name a HOST_CALL carries
// (its length is one byte).
const MaxHostFuncName = 255

// hostCallHeader is the size of a HOST_CALL payload before the name: the
// parent request id and the name's length.
const hostCallHeader = 9

// HostCall is the payload of HOST_CALL, a plugin's call of a host function.
type HostCall struct {
	// Parent is the id of the request during which the plugin calls; 0
	// for background work.
	Parent uint64
	// Name is the host function's name, 1 to MaxHostFuncName bytes.
	Name string
	// Body is the request, encoded with the negotiated codec.
	Body []byte
}

// AppendHostCall appends the encoding of hc (parent, name length, name,
// body) to b. The name must be 1 to MaxHostFuncName bytes long.
func AppendHostCall(b []byte, hc HostCall) []byte {
	b = binary.BigEndian.AppendUint64(b, hc.Parent)
	b = append(b, byte(len(hc.Name)))
	b = append(b, hc.Name...)
	return append(b, hc.Body...)
}

// ParseHostCall decodes a HOST_CALL payload; Body aliases payload. It
// fails when the payload is shorter than its header and name say, or the
// name is empty.
func ParseHostCall(payload []byte) (HostCall, error) {
	if len(payload) < hostCallHeader {
		return HostCall{}, fmt.Errorf("wire: HOST_CALL payload of %d bytes is shorter than its %d-byte header", len(payload), hostCallHeader)
	}
	n := int(payload[8])
	if n == 0 {
		return HostCall{}, fmt.Errorf("wire: HOST_CALL names no host function (name length 0)")
	}
	if len(payload) < hostCallHeader+n {
		return HostCall{}, fmt.Errorf("wire: HOST_CALL payload of %d bytes is shorter than its %d-byte name says", len(payload), n)
	}
	return HostCall{
		Parent: binary.BigEndian.Uint64(payload),
		Name:   string(payload[hostCallHeader : hostCallHeader+n]),
		Body:   payload[hostCallHeader+n:],
	}, nil
}
