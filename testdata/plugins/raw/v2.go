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
	p := &player{out: out, waits: map[uint64]func(wire.Frame){}}
	for {
		f, err := in.Read()
		if err != nil {
			return
		}
		switch f.Type {
		case wire.TypeHostResult, wire.TypeHostError:
			if then := p.waits[f.ID]; then != nil {
				delete(p.waits, f.ID)
				then(f)
			}
		case wire.TypeShutdown:
			p.shutdown()
		case wire.TypeCall:
			var scenario string
			_ = json.Unmarshal(f.Payload, &scenario)
			p.play(f, scenario)
		}
	}
}

// player is the state of playV2: the host calls waiting for their answer
// and the CALLs held until SHUTDOWN.
type player struct {
	out    *wire.Writer
	waits  map[uint64]func(wire.Frame)
	held   []wire.Frame
	nextID uint64
}

// hostCall sends a HOST_CALL and runs then with its answer.
func (p *player) hostCall(parent uint64, name string, body []byte, then func(wire.Frame)) uint64 {
	p.nextID++
	p.waits[p.nextID] = then
	p.out.Write(wire.TypeHostCall, p.nextID, wire.AppendHostCall(nil, wire.HostCall{Parent: parent, Name: name, Body: body}))
	return p.nextID
}

// answerWith returns the func that answers call with a host call's answer.
func (p *player) answerWith(call wire.Frame) func(wire.Frame) {
	return func(a wire.Frame) {
		b, _ := json.Marshal(a.Type.String() + " " + string(a.Payload))
		p.out.Write(wire.TypeResult, call.ID, b)
	}
}

func drop(wire.Frame) {}

// shutdown answers the held CALLs after a host call each, then exits.
func (p *player) shutdown() {
	if len(p.held) == 0 {
		os.Exit(0)
	}
	for _, call := range p.held {
		answer := p.answerWith(call)
		p.hostCall(call.ID, "kv.get", []byte(`"k"`), func(a wire.Frame) { answer(a); os.Exit(0) })
	}
}

// play starts the scenario of CALL f.
func (p *player) play(f wire.Frame, scenario string) {
	switch scenario {
	case "big":
		body, _ := json.Marshal(strings.Repeat("x", 2000))
		p.hostCall(f.ID, "kv.get", body, p.answerWith(f))
	case "orphan":
		p.hostCall(f.ID+1000, "kv.get", []byte(`"k"`), p.answerWith(f))
	case "cancel":
		id := p.hostCall(f.ID, "block", []byte(`""`), p.answerWith(f))
		p.out.Write(wire.TypeHostCancel, id, nil)
	case "answered":
		p.hostCall(f.ID, "block", []byte(`""`), func(a wire.Frame) {
			fmt.Fprintf(os.Stderr, "answer to the host call: %s %s\n", a.Type, a.Payload)
		})
		p.out.Write(wire.TypeResult, f.ID, []byte(`"answered"`))
	case "hold":
		p.hostCall(f.ID, "block", []byte(`""`), drop)
	case "shutdown":
		p.held = append(p.held, f)
		fmt.Fprintln(os.Stderr, "held until shutdown")
	case "zero", "malformed":
		id, payload := uint64(0), wire.AppendHostCall(nil, wire.HostCall{Parent: f.ID, Name: "kv.get", Body: []byte(`"k"`)})
		if scenario == "malformed" {
			p.nextID++
			id, payload = p.nextID, []byte{0, 0, 0, 0, 0, 0, 0, 1, 200, 'k'} // a name longer than the payload
		}
		p.waits[id] = p.answerWith(f)
		p.out.Write(wire.TypeHostCall, id, payload)
	case "dup":
		id := p.hostCall(f.ID, "block", []byte(`""`), drop)
		p.waits[id] = func(a wire.Frame) { // the refusal of the duplicate comes first
			p.answerWith(f)(a)
			p.waits[id] = drop
			p.out.Write(wire.TypeHostCancel, id, nil)
		}
		p.out.Write(wire.TypeHostCall, id, wire.AppendHostCall(nil, wire.HostCall{Parent: f.ID, Name: "block", Body: []byte(`""`)}))
	default:
		p.out.Write(wire.TypeResult, f.ID, f.Payload)
	}
}
