// Command grpc-counter is a gRPC test plugin named "counter": it echoes
// text, adds to a running total (its state, surface "state"), counts the
// events it processed (its stream position, surface "stream"), fails and
// sleeps on request, and calls the host function named by Text ("host",
// with the request {"key": "k"}; it answers the response's "value"). Its version is the -version flag, so that one binary
// plays two versions in reload tests.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/goplugins/goplugins/sdk"
	"github.com/goplugins/goplugins/sdk/grpcplugin"
)

// Request is what the host sends.
type Request struct {
	Op   string `json:"op"` // "echo", "add", "fail", "canceled", "sleep", "exit", "host"
	Text string `json:"text,omitempty"`
	N    int    `json:"n,omitempty"`
}

// Response is what the plugin answers.
type Response struct {
	Text     string `json:"text,omitempty"`
	Total    int    `json:"total"`
	Events   int    `json:"events"`
	Version  string `json:"version"`
	Resumed  bool   `json:"resumed"`
	Restored bool   `json:"restored"`
}

type counter struct {
	version string

	mu       sync.Mutex
	total    int
	events   int
	resumed  bool
	restored bool
}

func (c *counter) Execute(ctx context.Context, r Request) (Response, error) {
	c.mu.Lock()
	switch r.Op {
	case "add":
		c.total += r.N
		c.events++
	case "fail":
		c.mu.Unlock()
		return Response{}, sdk.Errorf("overloaded", r.N == 1, "failing on request: %s", r.Text)
	case "canceled":
		c.mu.Unlock()
		return Response{}, fmt.Errorf("the handler gave up: %w", context.Canceled)
	case "sleep":
		c.mu.Unlock()
		select {
		case <-ctx.Done():
			return Response{}, ctx.Err()
		case <-time.After(time.Duration(r.N) * time.Millisecond):
		}
		c.mu.Lock()
	case "exit":
		os.Exit(3)
	case "host":
		c.mu.Unlock()
		resp, err := grpcplugin.CallHost[map[string]string, map[string]string](ctx, r.Text, map[string]string{"key": "k"})
		if err != nil {
			return Response{}, err
		}
		return Response{Text: resp["value"], Version: c.version}, nil
	}
	resp := Response{Text: r.Text, Total: c.total, Events: c.events, Version: c.version, Resumed: c.resumed, Restored: c.restored}
	c.mu.Unlock()
	return resp, nil
}

func (c *counter) PersistState(context.Context) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return []byte(strconv.Itoa(c.total)), nil
}

func (c *counter) RestoreState(_ context.Context, state []byte) error {
	n, err := strconv.Atoi(string(state))
	if err != nil {
		return sdk.Errorf("bad_state", false, "state %q is not a number", state)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.total, c.restored = n, true
	return nil
}

func (c *counter) Checkpoint(context.Context) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return []byte(strconv.Itoa(c.events)), nil
}

func (c *counter) Resume(_ context.Context, position []byte) error {
	n, err := strconv.Atoi(string(position))
	if err != nil {
		return sdk.Errorf("bad_position", false, "position %q is not a number", position)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.events, c.resumed = n, true
	return nil
}

func main() {
	version := flag.String("version", "1.0.0", "the version to report")
	name := flag.String("name", "counter", "the name to report")
	exitAtStart := flag.Bool("exit-at-start", false, "exit before serving")
	flag.Parse()
	if *exitAtStart {
		fmt.Fprintln(os.Stderr, "grpc-counter: exiting at start as asked")
		os.Exit(2)
	}
	fmt.Fprintf(os.Stderr, "grpc-counter %s starting\n", *version)
	fmt.Fprintf(os.Stderr, `{"level":"warn","msg":"grpc-counter is a test plugin","version":%q}`+"\n", *version)
	err := grpcplugin.Serve[Request, Response](&counter{version: *version}, sdk.Info{Name: *name, Version: *version})
	if err != nil {
		fmt.Fprintln(os.Stderr, "grpc-counter:", err)
		os.Exit(1)
	}
}
