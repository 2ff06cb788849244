// Command badplugin is the conform suite's test plugin: written on
// internal/wire without the sdk, it follows docs/PROTOCOL.md (name "bad",
// version 1.0.0, surface "state") except for the one fault named by its
// first argument:
//
//	ok               none
//	ignore-cookie    speaks the protocol without the cookie
//	no-refusal       answers any HELLO with WELCOME, even without a shared version
//	no-frame-limit   exits on a frame over its limit instead of skipping it
//	double-answer    answers every CALL twice
//	stdout-frames    copies its frames to stdout
//	shutdown-exit-1  exits 1 after SHUTDOWN
//	ignore-eof       keeps running at the end of descriptor 3
//	bad-state        declares "state" but refuses PERSIST
//	unhealthy        answers HEALTH with ERROR
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/goplugins/goplugins/internal/wire"
)

const maxFrame = 1 << 10

func main() {
	fault := "ok"
	if len(os.Args) > 1 {
		fault = os.Args[1]
	}
	if fault != "ignore-cookie" && os.Getenv(wire.CookieKey) != wire.CookieValue {
		fmt.Fprintln(os.Stderr, "badplugin: start me from a goplugins host")
		os.Exit(1)
	}
	in, out := os.NewFile(wire.HostToPluginFD, "in"), os.NewFile(wire.PluginToHostFD, "out")
	var w io.Writer = out
	if fault == "stdout-frames" {
		w = io.MultiWriter(out, os.Stdout)
	}
	os.Exit(serve(fault, wire.NewReader(in, maxFrame), wire.NewWriter(w, wire.DefaultMaxFrameSize)))
}

func serve(fault string, r *wire.Reader, w *wire.Writer) int {
	f, err := r.Read()
	if err != nil || f.Type != wire.TypeHello {
		return 1
	}
	var h wire.Hello
	_ = json.Unmarshal(f.Payload, &h)
	if !contains(h.Protocols, 1) && fault != "no-refusal" {
		reply(w, wire.TypeError, 0, wire.ErrorReply{Code: wire.CodeProtocolVersion, Message: "protocol 1 only"})
		return 1
	}
	if h.Codec != "json" {
		reply(w, wire.TypeError, 0, wire.ErrorReply{Code: wire.CodeCodec, Message: "json only"})
		return 1
	}
	reply(w, wire.TypeWelcome, 0, wire.Welcome{Protocol: 1, MaxFrameSize: maxFrame,
		Info: wire.Info{Name: "bad", Version: "1.0.0", Surfaces: []string{"state"}}})
	fmt.Fprintln(os.Stderr, `{"level":"info","msg":"badplugin ready"}`)
	for {
		f, err := r.Read()
		var tooBig *wire.FrameTooLargeError
		switch {
		case errors.As(err, &tooBig) && fault != "no-frame-limit":
			reply(w, wire.TypeError, tooBig.ID, wire.ErrorReply{Code: wire.CodeFrameTooLarge, Message: "too large"})
			continue
		case err != nil && fault == "ignore-eof":
			for {
				time.Sleep(time.Hour) // not select{}: the runtime would call that a deadlock and exit
			}
		case err != nil:
			return 0
		}
		switch f.Type {
		case wire.TypeCall:
			_ = w.Write(wire.TypeResult, f.ID, f.Payload)
			if fault == "double-answer" {
				_ = w.Write(wire.TypeResult, f.ID, f.Payload)
			}
		case wire.TypeHealth:
			if fault == "unhealthy" {
				reply(w, wire.TypeError, f.ID, wire.ErrorReply{Code: "unhealthy", Message: "the disk is full"})
			} else {
				_ = w.Write(wire.TypeResult, f.ID, nil)
			}
		case wire.TypePersist:
			if fault == "bad-state" {
				reply(w, wire.TypeError, f.ID, wire.ErrorReply{Code: wire.CodeUnsupported, Message: "no"})
			} else {
				_ = w.Write(wire.TypeResult, f.ID, []byte("state"))
			}
		case wire.TypeRestore:
			_ = w.Write(wire.TypeResult, f.ID, nil)
		case wire.TypeCancel:
		case wire.TypeShutdown:
			if fault == "shutdown-exit-1" {
				return 1
			}
			return 0
		default:
			reply(w, wire.TypeError, f.ID, wire.ErrorReply{Code: wire.CodeUnsupported, Message: "no such surface"})
		}
	}
}

func reply(w *wire.Writer, t wire.Type, id uint64, v any) {
	b, _ := json.Marshal(v)
	_ = w.Write(t, id, b)
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
