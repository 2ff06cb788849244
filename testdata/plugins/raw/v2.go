package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/goplugins/goplugins/internal/wire"
)

// playV2 serves protocol version 2 with host calls the test scripts: each
// CALL's payload is a JSON string naming a scenario, and its RESULT is
// the JSON string "<type> <payload>" of the host's answer to the host call
// the scenario made (unless the scenario says otherwise):
//
//	big       HOST_CALL "kv.get" with a 2000-byte body, over a 1 KiB host limit
//	orphan    HOST_CALL "kv.get" whose parent is no request in flight
//	cancel    HOST_CALL "block", then HOST_CANCEL of it at once
//	answered  HOST_CALL "block", then RESULT "answered" at once, without
//	          HOST_CANCEL; the host's answer to the host call is printed
//	          to stderr: "answer to the host call: <type> <payload>"
//	hold      HOST_CALL "block", and the CALL stays unanswered
//	shutdown  the CALL stays unanswered (stderr: "held until shutdown")
//	          until SHUTDOWN; then HOST_CALL
//	          "kv.get", whose answer answers the CALL, and exit 0
//	zero      HOST_CALL with id 0
//	malformed HOST_CALL whose name is longer than its payload
//	dup       two HOST_CALLs "block" with the same id; the answer to the
//	          second (the refused duplicate), then HOST_CANCEL of the first
func playV2(in *wire.Reader, out *wire.Writer) {
	waits := map[uint64]func(wire.Frame){}
	var held []wire.Frame
	nextID := uint64(0)
	hostCall := func(parent uint64, name string, body []byte, then func(wire.Frame)) uint64 {
		nextID++
		waits[nextID] = then
		out.Write(wire.TypeHostCall, nextID, wire.AppendHostCall(nil, wire.HostCall{Parent: parent, Name: name, Body: body}))
		return nextID
	}
	answerWith := func(call wire.Frame) func(wire.Frame) {
		return func(a wire.Frame) {
			b, _ := json.Marshal(a.Type.String() + " " + string(a.Payload))
			out.Write(wire.TypeResult, call.ID, b)
		}
	}
	drop := func(wire.Frame) {}
	for {
		f, err := in.Read()
		if err != nil {
			return
		}
		switch f.Type {
		case wire.TypeHostResult, wire.TypeHostError:
			if then := waits[f.ID]; then != nil {
				delete(waits, f.ID)
				then(f)
			}
		case wire.TypeShutdown:
			if len(held) == 0 {
				os.Exit(0)
			}
			for _, call := range held {
				answer := answerWith(call)
				hostCall(call.ID, "kv.get", []byte(`"k"`), func(a wire.Frame) { answer(a); os.Exit(0) })
			}
		case wire.TypeCall:
			var scenario string
			_ = json.Unmarshal(f.Payload, &scenario)
			switch scenario {
			case "big":
				body, _ := json.Marshal(strings.Repeat("x", 2000))
				hostCall(f.ID, "kv.get", body, answerWith(f))
			case "orphan":
				hostCall(f.ID+1000, "kv.get", []byte(`"k"`), answerWith(f))
			case "cancel":
				id := hostCall(f.ID, "block", []byte(`""`), answerWith(f))
				out.Write(wire.TypeHostCancel, id, nil)
			case "answered":
				hostCall(f.ID, "block", []byte(`""`), func(a wire.Frame) {
					fmt.Fprintf(os.Stderr, "answer to the host call: %s %s\n", a.Type, a.Payload)
				})
				out.Write(wire.TypeResult, f.ID, []byte(`"answered"`))
			case "hold":
				hostCall(f.ID, "block", []byte(`""`), drop)
			case "shutdown":
				held = append(held, f)
				fmt.Fprintln(os.Stderr, "held until shutdown")
			case "zero", "malformed":
				id, payload := uint64(0), wire.AppendHostCall(nil, wire.HostCall{Parent: f.ID, Name: "kv.get", Body: []byte(`"k"`)})
				if scenario == "malformed" {
					nextID++
					id, payload = nextID, []byte{0, 0, 0, 0, 0, 0, 0, 1, 200, 'k'} // a name longer than the payload
				}
				waits[id] = answerWith(f)
				out.Write(wire.TypeHostCall, id, payload)
			case "dup":
				id := hostCall(f.ID, "block", []byte(`""`), drop)
				waits[id] = func(a wire.Frame) { // the refusal of the duplicate comes first
					answerWith(f)(a)
					waits[id] = drop
					out.Write(wire.TypeHostCancel, id, nil)
				}
				out.Write(wire.TypeHostCall, id, wire.AppendHostCall(nil, wire.HostCall{Parent: f.ID, Name: "block", Body: []byte(`""`)}))
			default:
				out.Write(wire.TypeResult, f.ID, f.Payload)
			}
		}
	}
}
