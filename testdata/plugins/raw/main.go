// Command raw is a misbehaving test plugin written against the wire
// package directly. RAW_MODE selects the misbehaviour:
//
//	garbage     answers the first CALL with bytes that are not a frame
//	badversion  chooses a protocol version the host did not offer
//	bigframe    answers a CALL whose payload is "big" with a RESULT larger
//	            than the host's maximum frame size, others with an echo
//	noread      stops reading after the handshake
//	hugemax     declares a maximum frame size over the protocol's limit
//	lastwords   keeps every CALL unanswered, printing "queued N" to stderr
//	            after the Nth; on SHUTDOWN answers them all (echo) in one
//	            write and exits 0
//	v1hostcall  sends a HOST_CALL in protocol version 1 on the first CALL
//	v2          chooses protocol version 2 and plays the host-call
//	            scenario each CALL names (see v2.go)
//
// Every other mode chooses protocol version 1.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

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
	w := wire.Welcome{Protocol: wire.ProtocolV1, MaxFrameSize: wire.DefaultMaxFrameSize, Info: wire.Info{Name: "raw", Version: "1.0.0"}}
	switch mode {
	case "v2":
		w.Protocol = 2
	case "badversion":
		w.Protocol = 99
	case "hugemax":
		w.MaxFrameSize = 1<<32 + 1<<10 // wraps to 1 KiB in a uint32
	}
	b, _ := json.Marshal(w)
	if out.Write(wire.TypeWelcome, 0, b) != nil {
		os.Exit(2)
	}
	switch mode {
	case "noread":
		time.Sleep(time.Hour)
	case "v2":
		playV2(in, out)
		return
	}
	var queued []wire.Frame
	for {
		f, err := in.Read()
		if err != nil {
			return
		}
		if mode == "lastwords" {
			switch f.Type {
			case wire.TypeCall:
				queued = append(queued, f)
				fmt.Fprintf(os.Stderr, "queued %d\n", len(queued))
			case wire.TypeShutdown: // all answers in one write, then exit
				var b []byte
				for _, q := range queued {
					b = wire.AppendFrame(b, wire.TypeResult, q.ID, q.Payload)
				}
				outFile.Write(b)
				os.Exit(0)
			}
			continue
		}
		if f.Type != wire.TypeCall {
			continue
		}
		switch {
		case mode == "v1hostcall":
			out.Write(wire.TypeHostCall, 1, wire.AppendHostCall(nil, wire.HostCall{Parent: f.ID, Name: "kv.get", Body: []byte(`"k"`)}))
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
