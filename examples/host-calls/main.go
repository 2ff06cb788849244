// Command host-calls shows a plugin calling its host: the host offers a
// key-value store as the host functions kv.get and kv.put, scoped by the
// calling plugin (Caller.Plugin), and an admin.reset function that it
// does not grant to the plugin. The plugin ("notes", a child process
// written with the sdk package) stores and reads its notes through host
// calls made while it handles the host's requests, and is refused
// admin.reset.
//
//	go run ./examples/host-calls
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"

	"github.com/goplugins/goplugins"
)

// pluginPackage is the plugin's import path: building by import path works
// from any working directory inside the module.
const pluginPackage = "github.com/goplugins/goplugins/examples/host-calls/plugin"

// request and response mirror the plugin's types.
type request struct {
	Op    string `json:"op"`
	Key   string `json:"key,omitempty"`
	Value string `json:"value,omitempty"`
}

type response struct {
	Value string `json:"value,omitempty"`
}

// entry is the request of kv.put.
type entry struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// store is the host's key-value store: one namespace per plugin.
type store struct {
	mu   sync.Mutex
	data map[string]map[string]string
}

func (s *store) get(_ context.Context, c goplugins.Caller, key string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.data[c.Plugin][key], nil
}

func (s *store) put(_ context.Context, c goplugins.Caller, e entry) (struct{}, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.data[c.Plugin] == nil {
		s.data[c.Plugin] = map[string]string{}
	}
	s.data[c.Plugin][e.Key] = e.Value
	return struct{}{}, nil
}

func (s *store) reset(context.Context, goplugins.Caller, struct{}) (struct{}, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.data)
	return struct{}{}, nil
}

// dump lists the store's entries as "plugin/key = value", sorted.
func (s *store) dump() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var lines []string
	for p, kv := range s.data {
		for k, v := range kv {
			lines = append(lines, fmt.Sprintf("%s/%s = %q", p, k, v))
		}
	}
	sort.Strings(lines)
	return lines
}

func main() {
	if err := run(context.Background(), os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "host-calls failed:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out io.Writer) (err error) {
	tmp, err := os.MkdirTemp("", "goplugins-host-calls-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "notes")
	if b, err := exec.CommandContext(ctx, "go", "build", "-o", bin, pluginPackage).CombinedOutput(); err != nil {
		return fmt.Errorf("building %s (run from inside the goplugins module): %w\n%s", pluginPackage, err, b)
	}

	kv := &store{data: map[string]map[string]string{}}
	m := goplugins.NewManager[request, response](
		goplugins.WithHostFuncs(
			goplugins.NewHostFunc("kv.get", kv.get),
			goplugins.NewHostFunc("kv.put", kv.put),
			goplugins.NewHostFunc("admin.reset", kv.reset),
		),
		// notes may use the key-value store, and nothing else.
		goplugins.WithGrants(goplugins.Grant{Plugins: "notes", Funcs: []string{"kv.*"}}),
	)
	defer func() {
		if serr := m.Shutdown(context.WithoutCancel(ctx)); serr != nil && err == nil {
			err = serr
		}
	}()
	refused := make(chan goplugins.Event, 1)
	defer m.Subscribe(func(e goplugins.Event) {
		if e.Kind == goplugins.EventHostCallRefused {
			select {
			case refused <- e:
			default:
			}
		}
	})()

	p, err := goplugins.NewSubprocess[request, response](ctx, goplugins.SubprocessConfig{
		Name: "notes", Command: bin, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return err
	}
	if err := m.Register(p); err != nil { // binds the plugin's host-call handle
		p.Close(ctx)
		return err
	}

	if _, err := m.Execute(ctx, "notes", request{Op: "put", Key: "greeting", Value: "hello"}); err != nil {
		return err
	}
	got, err := m.Execute(ctx, "notes", request{Op: "get", Key: "greeting"})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "the plugin stored and read back greeting = %q\n", got.Value)
	for _, line := range kv.dump() {
		fmt.Fprintln(out, "host store:", line)
	}

	_, err = m.Execute(ctx, "notes", request{Op: "reset"})
	var reply *goplugins.ErrorReply
	if !errors.As(err, &reply) || reply.Code != "refused" {
		return fmt.Errorf("admin.reset returned %v, want the plugin to report the host's refusal", err)
	}
	fmt.Fprintln(out, "the plugin was refused admin.reset (sdk.ErrNotGranted)")
	e := <-refused
	fmt.Fprintf(out, "host event: %s plugin=%s host_func=%s\n", e.Kind, e.Plugin, e.HostFunc)
	fmt.Fprintf(out, "host store after the refused reset: %d entries\n", len(kv.dump()))
	return nil
}
