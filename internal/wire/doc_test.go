package wire

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// hexdump formats b as `hexdump -C` does, without the final offset line.
func hexdump(b []byte) string {
	var sb strings.Builder
	for off := 0; off < len(b); off += 16 {
		row := b[off:min(off+16, len(b))]
		fmt.Fprintf(&sb, "%08x ", off)
		for i := range 16 {
			if i == 8 {
				sb.WriteByte(' ')
			}
			if i < len(row) {
				fmt.Fprintf(&sb, " %02x", row[i])
			} else {
				sb.WriteString("   ")
			}
		}
		sb.WriteString("  |")
		for _, c := range row {
			if c < 0x20 || c > 0x7e {
				c = '.'
			}
			sb.WriteByte(c)
		}
		sb.WriteString("|\n")
	}
	return sb.String()
}

func mustJSON(t *testing.T, v any) []byte {
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return b
}

// workedExample returns the frames of docs/PROTOCOL.md's worked example
// (section 11), in order.
func workedExample(t *testing.T) []struct {
	name  string
	frame []byte
} {
	return []struct {
		name  string
		frame []byte
	}{
		{"HELLO", AppendFrame(nil, TypeHello, 0, mustJSON(t, Hello{Protocols: []int{1, 2}, Codec: "json", MaxFrameSize: DefaultMaxFrameSize, Name: "echo"}))},
		{"WELCOME", AppendFrame(nil, TypeWelcome, 0, mustJSON(t, Welcome{Protocol: 2, MaxFrameSize: DefaultMaxFrameSize, Info: Info{Name: "echo", Version: "1.0.0"}}))},
		{"CALL 1", AppendFrame(nil, TypeCall, 1, []byte(`{"data":"hi"}`))},
		{"HOST_CALL 1", AppendFrame(nil, TypeHostCall, 1, AppendHostCall(nil, HostCall{Parent: 1, Name: "kv.get", Body: []byte(`"color"`)}))},
		{"HOST_RESULT 1", AppendFrame(nil, TypeHostResult, 1, []byte(`"blue"`))},
		{"RESULT 1", AppendFrame(nil, TypeResult, 1, []byte(`{"data":"hi blue"}`))},
		{"CANCEL 2", AppendFrame(nil, TypeCancel, 2, nil)},
		{"ERROR 2", AppendFrame(nil, TypeError, 2, mustJSON(t, ErrorReply{Code: CodeCanceled, Message: "context canceled"}))},
	}
}

// TestWorkedExampleInProtocolDoc: every frame of the worked example in
// docs/PROTOCOL.md is written there byte for byte as this package encodes
// it. GOPLUGINS_PRINT_EXAMPLE=1 prints the dumps.
func TestWorkedExampleInProtocolDoc(t *testing.T) {
	doc, err := os.ReadFile("../../docs/PROTOCOL.md")
	require.NoError(t, err)
	for _, f := range workedExample(t) {
		dump := hexdump(f.frame)
		if os.Getenv("GOPLUGINS_PRINT_EXAMPLE") != "" {
			fmt.Printf("%s, %d bytes\n```\n%s```\n\n", f.name, len(f.frame), dump)
		}
		assert.True(t, strings.Contains(string(doc), dump), "docs/PROTOCOL.md lacks the %s frame of the worked example:\n%s", f.name, dump)
	}
}
