// Command echo is the test plugin of transport_subprocess_test.go: it
// echoes, and on request blocks, crashes, hangs (ignoring SIGTERM if asked), panics, pollutes stdout,
// keeps state and a stream position. Its version is set at build time with
// -ldflags "-X main.version=2.0.0".
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/goplugins/goplugins/sdk"
)

var version = "1.0.0"

// Request and Response mirror the test's types.
type Request struct {
	Op   string `json:"op,omitempty"`
	Data string `json:"data,omitempty"`
	Key  string `json:"key,omitempty"`
	N    int    `json:"n,omitempty"`
}

type Response struct {
	Data    string `json:"data,omitempty"`
	Version string `json:"version,omitempty"`
	PID     int    `json:"pid,omitempty"`
}

type plugin struct {
	mu       sync.Mutex
	state    string
	position int
	stopped  bool
	observed map[string]chan struct{} // closed when a "block" handler saw ctx.Done
	started  map[string]chan struct{} // closed when a "block" handler started
}

func keyChan(mu *sync.Mutex, m map[string]chan struct{}, key string) chan struct{} {
	mu.Lock()
	defer mu.Unlock()
	ch, ok := m[key]
	if !ok {
		ch = make(chan struct{})
		m[key] = ch
	}
	return ch
}

func (p *plugin) observedChan(key string) chan struct{} { return keyChan(&p.mu, p.observed, key) }
func (p *plugin) startedChan(key string) chan struct{}  { return keyChan(&p.mu, p.started, key) }

func (p *plugin) Execute(ctx context.Context, req Request) (Response, error) {
	switch req.Op {
	case "", "echo":
		return Response{Data: req.Data, Version: version}, nil
	case "env":
		return Response{Data: strings.Join(os.Environ(), "\n")}, nil
	case "pid":
		return Response{PID: os.Getpid()}, nil
	case "print":
		fmt.Println("stray stdout line from the plugin")
		fmt.Fprintln(os.Stderr, `{"level":"warn","msg":"json stderr line","answer":42}`)
		fmt.Fprintln(os.Stderr, "plain stderr line")
		return Response{Data: req.Data}, nil
	case "block":
		close(p.startedChan(req.Key))
		<-ctx.Done()
		close(p.observedChan(req.Key))
		return Response{}, ctx.Err()
	case "await":
		select {
		case <-p.observedChan(req.Key):
			return Response{Data: "handler observed cancellation"}, nil
		case <-ctx.Done():
			return Response{}, ctx.Err()
		}
	case "started":
		select {
		case <-p.startedChan(req.Key):
			return Response{Data: "handler started"}, nil
		case <-ctx.Done():
			return Response{}, ctx.Err()
		}
	case "crash":
		fmt.Fprintln(os.Stderr, "fatal: crashing on purpose: "+req.Data)
		os.Exit(3)
	case "ignore_term":
		signal.Ignore(syscall.SIGTERM)
		return Response{}, nil
	case "hang":
		close(p.startedChan(req.Key))
		for { // ignores ctx: only a signal ends it
			time.Sleep(time.Hour)
		}
	case "panic":
		panic(req.Data)
	case "retryable":
		return Response{}, sdk.Errorf("busy", true, "try again later")
	case "big":
		return Response{Data: strings.Repeat("x", req.N)}, nil
	case "set":
		p.mu.Lock()
		p.state = req.Data
		p.mu.Unlock()
		return Response{}, nil
	case "get":
		p.mu.Lock()
		defer p.mu.Unlock()
		return Response{Data: p.state, Version: version}, nil
	case "tick":
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.stopped {
			return Response{}, sdk.Errorf("stopped", false, "the stream is checkpointed")
		}
		p.position++
		return Response{Data: strconv.Itoa(p.position)}, nil
	}
	return Response{}, sdk.Errorf("bad_op", false, "unknown op %q", req.Op)
}

type persisted struct {
	State string `json:"state"`
	From  string `json:"from"`
}

func (p *plugin) PersistState(ctx context.Context) ([]byte, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return json.Marshal(persisted{State: p.state, From: version})
}

func (p *plugin) RestoreState(ctx context.Context, b []byte) error {
	var st persisted
	if err := json.Unmarshal(b, &st); err != nil {
		return sdk.Errorf("bad_state", false, "state does not decode: %v", err)
	}
	p.mu.Lock()
	p.state = st.State + " (restored from " + st.From + ")"
	p.mu.Unlock()
	return nil
}

func (p *plugin) Checkpoint(ctx context.Context) ([]byte, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopped = true
	return []byte(strconv.Itoa(p.position)), nil
}

func (p *plugin) Resume(ctx context.Context, position []byte) error {
	n, err := strconv.Atoi(string(position))
	if err != nil {
		return sdk.Errorf("bad_position", false, "position %q is not a number", position)
	}
	p.mu.Lock()
	p.position, p.stopped = n, false
	p.mu.Unlock()
	return nil
}

func main() {
	fmt.Println("stray stdout at startup: must not break the protocol")
	var opts []sdk.Option
	if n, err := strconv.Atoi(os.Getenv("ECHO_MAX_FRAME")); err == nil {
		opts = append(opts, sdk.WithMaxFrameSize(n))
	}
	p := &plugin{observed: make(map[string]chan struct{}), started: make(map[string]chan struct{})}
	if err := sdk.Serve[Request, Response](p, sdk.Info{Name: "echo", Version: version, Description: "test echo plugin"}, opts...); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
