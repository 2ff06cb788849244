// Command raw is a misbehaving test plugin written against the wire
// package directly. RAW_MODE selects the misbehaviour:
//
//	garbage     answers the first CALL with bytes that are not a frame
//	badversion  chooses a protocol version the host did not offer
//	bigframe    answers a CALL whose payload is "big" with a RESULT larger
//	            than the host's maximum frame size, others with an echo
package main

import (
	"encoding/json"
	"os"
	"strings"

	"github.com/goplugins/goplugins/internal/wire"
)

func main() {
	in := wire.NewReader(os.NewFile(wire.HostToPluginFD, "in"), 0)
	outFile := os.NewFile(wire.PluginToHostFD, "out")
	out := wire.NewWriter(outFile, 0)
	mode := os.Getenv("RAW_MODE")
	if _, err := in.Read(); err != nil {
		os.Exit(2)
	}
	w := wire.Welcome{Protocol: wire.ProtocolVersion, MaxFrameSize: wire.DefaultMaxFrameSize, Info: wire.Info{Name: "raw", Version: "1.0.0"}}
	if mode == "badversion" {
		w.Protocol = 99
	}
	b, _ := json.Marshal(w)
	if out.Write(wire.TypeWelcome, 0, b) != nil {
		os.Exit(2)
	}
	for {
		f, err := in.Read()
		if err != nil {
			return
		}
		if f.Type != wire.TypeCall {
			continue
		}
		switch {
		case mode == "garbage":
			outFile.WriteString("this is not a frame, it is garbage\n")
		case mode == "bigframe" && string(f.Payload) == `"big"`:
			big, _ := json.Marshal(strings.Repeat("x", 8000))
			out.Write(wire.TypeResult, f.ID, big)
		default:
			out.Write(wire.TypeResult, f.ID, f.Payload)
		}
	}
}
