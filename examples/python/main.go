// Command python shows a plugin written in Python (wordstats_plugin.py,
// standard library only, written from docs/PROTOCOL.md) served to a Go host
// through the subprocess transport, exactly like a Go plugin: the host
// starts `python3 wordstats_plugin.py`, completes the handshake, and calls
// it through a Manager; while it handles a call the plugin calls the
// host's function "stopwords" (protocol version 2), which the host grants
// it. It needs python3 on the PATH.
//
//	go run ./examples/python
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
	"runtime"

	"github.com/goplugins/goplugins"
)

// request and response are the plugin's JSON messages.
type request struct {
	Text string `json:"text"`
}

type response struct {
	Words      int    `json:"words"`
	Distinct   int    `json:"distinct"`
	Top        string `json:"top"`
	TopContent string `json:"top_content"` // the most frequent word that is no stop word
	HostError  string `json:"host_error"`  // the code of the failed host call, if it failed
	Engine     string `json:"engine"`
}

// stopwords is the host function the plugin calls.
var stopwords = goplugins.NewHostFunc("stopwords", func(_ context.Context, _ goplugins.Caller, _ struct{}) ([]string, error) {
	return []string{"a", "and", "on", "the"}, nil
})

func main() {
	if err := run(context.Background(), os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "python failed:", err)
		os.Exit(1)
	}
}

// script returns the absolute path of the plugin script, found beside this
// source file so that the example runs from any working directory.
func script() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("cannot locate the example's source folder")
	}
	path := filepath.Join(filepath.Dir(file), "wordstats_plugin.py")
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("the plugin script: %w", err)
	}
	return path, nil
}

func run(ctx context.Context, out io.Writer) (err error) {
	python, err := exec.LookPath("python3")
	if err != nil {
		return fmt.Errorf("this example needs python3 on the PATH: %w", err)
	}
	path, err := script()
	if err != nil {
		return err
	}
	p, err := goplugins.NewSubprocess[request, response](ctx, goplugins.SubprocessConfig{
		Name:    "wordstats",
		Command: python,
		Args:    []string{path},
		Logger:  slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return err
	}
	info := p.Info()
	fmt.Fprintf(out, "handshake: %s %s\n", info.Name, info.Version)

	m := goplugins.NewManager[request, response](
		goplugins.WithHostFuncs(stopwords),
		goplugins.WithGrants(goplugins.Grant{Plugins: "wordstats", Funcs: []string{"stopwords"}}),
	)
	defer func() {
		if serr := m.Shutdown(context.WithoutCancel(ctx)); serr != nil && err == nil {
			err = serr
		}
	}()
	if err := m.Register(p); err != nil {
		p.Close(ctx)
		return err
	}
	resp, err := m.Execute(ctx, "wordstats", request{Text: "The cat and the hat sat on the mat."})
	if err != nil {
		return err
	}
	if resp.HostError != "" {
		return fmt.Errorf("the plugin's host call failed: %s", resp.HostError)
	}
	fmt.Fprintf(out, "%d words, %d distinct, most frequent %q, without stop words %q (answered by %s)\n", resp.Words, resp.Distinct, resp.Top, resp.TopContent, resp.Engine)

	_, err = m.Execute(ctx, "wordstats", request{Text: "   "})
	var reply *goplugins.ErrorReply
	if !errors.As(err, &reply) {
		return fmt.Errorf("an empty text returned %v, want the plugin's error reply", err)
	}
	fmt.Fprintf(out, "plugin error: code %q: %s\n", reply.Code, reply.Message)

	if err := m.Health(ctx)["wordstats"].Err; err != nil {
		return fmt.Errorf("health check: %w", err)
	}
	fmt.Fprintln(out, "health: ok")
	return nil
}
