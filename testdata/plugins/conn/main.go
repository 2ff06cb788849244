// Command conn is the test plugin of subprocess_conn_test.go: it misbehaves
// on the connection. CONN_MODE selects how:
//
//	hellogarbage  answers HELLO with bytes that are not a frame, stays alive
//	helloclose    closes its protocol pipes after HELLO, stays alive
//	shortlen      answers the first CALL with a frame whose length field is
//	              5, keeping its pipe open
//	slowread      reads its input slowly (8 KiB every 2 ms) and echoes
//	              CALLs, printing "reading" to stderr when the first bytes
//	              after the handshake arrive and "got <payload>" for short
//	              CALLs
//	cancelstop    answers nothing, and stops reading after the first CANCEL
//	late          an sdk plugin whose calls ignore their ctx for 50 ms and
//	              answer 256 KiB
//	info          an sdk echo plugin with surfaces and metadata
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/goplugins/goplugins/internal/wire"
	"github.com/goplugins/goplugins/sdk"
)

type late struct{}

func (late) Execute(_ context.Context, _ string) (string, error) {
	time.Sleep(50 * time.Millisecond)
	return strings.Repeat("x", 256<<10), nil
}

type echo struct{}

func (echo) Execute(_ context.Context, s string) (string, error) { return s, nil }

// slowReader hands out at most 8 KiB a read, 2 ms apart; once announce is
// set, the next read that gets bytes prints "reading".
type slowReader struct{ r io.Reader }

var announce atomic.Bool

func (s slowReader) Read(b []byte) (int, error) {
	time.Sleep(2 * time.Millisecond)
	n, err := s.r.Read(b[:min(len(b), 8<<10)])
	if n > 0 && announce.CompareAndSwap(true, false) {
		fmt.Fprintln(os.Stderr, "reading")
	}
	return n, err
}

func main() {
	mode := os.Getenv("CONN_MODE")
	var err error
	switch mode {
	case "late":
		err = sdk.Serve[string, string](late{}, sdk.Info{Name: "conn", Version: "1.0.0"})
	case "info":
		err = sdk.Serve[string, string](echo{}, sdk.Info{Name: "conn", Version: "1.0.0", Surfaces: []string{"state"}, Metadata: map[string]string{"k": "v"}})
	default:
		raw(mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func raw(mode string) {
	inFile := os.NewFile(wire.HostToPluginFD, "in")
	outFile := os.NewFile(wire.PluginToHostFD, "out")
	var src io.Reader = inFile
	if mode == "slowread" {
		src = slowReader{inFile}
	}
	in := wire.NewReader(src, 0)
	out := wire.NewWriter(outFile, 0)
	if _, err := in.Read(); err != nil {
		os.Exit(2)
	}
	switch mode {
	case "hellogarbage":
		outFile.WriteString("this is not a frame, it is garbage\n")
		time.Sleep(time.Hour)
	case "helloclose":
		inFile.Close()
		outFile.Close()
		time.Sleep(time.Hour)
	}
	w := wire.Welcome{Protocol: wire.ProtocolVersion, MaxFrameSize: wire.DefaultMaxFrameSize, Info: wire.Info{Name: "conn", Version: "1.0.0"}}
	b, _ := json.Marshal(w)
	if out.Write(wire.TypeWelcome, 0, b) != nil {
		os.Exit(2)
	}
	announce.Store(true)
	for {
		f, err := in.Read()
		if err != nil {
			return
		}
		switch {
		case mode == "cancelstop" && f.Type == wire.TypeCancel:
			time.Sleep(time.Hour)
		case f.Type != wire.TypeCall || mode == "cancelstop":
		case mode == "shortlen":
			outFile.Write([]byte{0, 0, 0, 5, 4, 0, 0, 0, 0})
			time.Sleep(time.Hour)
		default: // slowread
			if len(f.Payload) < 100 {
				fmt.Fprintf(os.Stderr, "got %s\n", f.Payload)
			}
			out.Write(wire.TypeResult, f.ID, f.Payload)
		}
	}
}
