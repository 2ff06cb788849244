// Command quickstart shows goplugins end to end, with nothing but the Go
// toolchain: it builds a plugin, installs it with its manifest in a
// temporary plugin folder, discovers and loads it, serves requests through
// it, then builds version 2 and installs it while requests keep flowing.
// Discovery sees the new manifest and the loader hot-swaps the plugin: calls
// are parked, not dropped, and the plugin's state (its word counts) moves to
// version 2. The timeline shows each step, the reload report and the call
// counts; the program exits 0 only if no call failed and the state carried
// over. It removes everything it wrote, also on error and on Ctrl-C.
//
// Run it from anywhere inside the module:
//
//	go run ./examples/quickstart
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/goplugins/goplugins"
)

// pluginPackage is the import path of the plugin's source: building by
// import path works from any working directory inside the module.
const pluginPackage = "github.com/goplugins/goplugins/examples/quickstart/plugin"

// request and response mirror the plugin's types (encoded as JSON).
type request struct {
	Word string `json:"word,omitempty"`
}

type response struct {
	Count    int    `json:"count"`
	Total    int    `json:"total"`
	Version  string `json:"version"`
	Restored string `json:"restored,omitempty"`
}

// callers is how many goroutines keep calling the plugin during the swap.
const callers = 4

var words = []string{"alpha", "bravo", "charlie", "delta", "echo"}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart failed:", err)
		os.Exit(1)
	}
}

// Result is what a run achieved; run's caller (the test) checks it.
type Result struct {
	// Calls and Failed count the calls made and the calls that failed.
	Calls, Failed int64
	// Before is the total that 1.0.0 handed over in its state; After the
	// final total, which must equal Calls when nothing was lost.
	Before, After int
	// Version is the version serving at the end; Restored the version its
	// state came from.
	Version, Restored string
	// Report is the reload report.
	Report goplugins.ReloadReport
}

// timeline prints lines stamped with the time since the start. It is safe
// for concurrent use.
type timeline struct {
	mu    sync.Mutex
	out   io.Writer
	start time.Time
}

func (t *timeline) printf(format string, args ...any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	fmt.Fprintf(t.out, "[%7.3fs] %s\n", time.Since(t.start).Seconds(), fmt.Sprintf(format, args...))
}

// Write lets the plugin's log lines join the timeline.
func (t *timeline) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.out.Write(p)
}

func run(ctx context.Context, out io.Writer) error {
	_, err := runQuickstart(ctx, out)
	return err
}

// runQuickstart does the work of run and returns what it achieved.
func runQuickstart(ctx context.Context, out io.Writer) (res Result, err error) {
	tl := &timeline{out: out, start: time.Now()}
	tmp, err := os.MkdirTemp("", "goplugins-quickstart-")
	if err != nil {
		return res, fmt.Errorf("making a temporary folder: %w", err)
	}
	defer func() {
		if rmErr := os.RemoveAll(tmp); rmErr != nil && err == nil {
			err = fmt.Errorf("removing %s: %w", tmp, rmErr)
		}
	}()
	bin, root := filepath.Join(tmp, "bin"), filepath.Join(tmp, "plugins")
	dir := filepath.Join(root, "wordcount")
	for _, d := range []string{bin, dir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return res, err
		}
	}

	// 1. Build version 1 and install it with its manifest.
	v1, err := build(ctx, tl, bin, "1.0.0")
	if err != nil {
		return res, err
	}
	if err := install(dir, v1, "1.0.0"); err != nil {
		return res, err
	}
	tl.printf("installed %s", filepath.Join(dir, "plugin.json"))

	// 2. Discovery watches the folder; the loader loads what it finds.
	engine, err := goplugins.NewDiscoveryEngine(goplugins.DiscoveryConfig{
		Roots: []string{root}, PollInterval: 100 * time.Millisecond,
	})
	if err != nil {
		return res, err
	}
	logger := slog.New(slog.NewTextHandler(tl, &slog.HandlerOptions{Level: slog.LevelWarn}))
	m := goplugins.NewManager[request, response](goplugins.WithLogger(logger))
	events := make(chan goplugins.Event, 64)
	cancelSub := m.Subscribe(func(ev goplugins.Event) {
		select {
		case events <- ev:
		default: // nobody is waiting for more: never block the manager's shutdown
		}
	})
	loader := goplugins.NewDynamicLoader(m, engine) // logs to the manager's logger
	loader.RegisterFactory("subprocess", goplugins.SubprocessFactory[request, response](goplugins.SubprocessConfig{Logger: logger}))
	defer func() {
		// Clean up even when ctx was cancelled (Ctrl-C): give it its own time.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		cerr := errors.Join(loader.Shutdown(cctx), engine.Close(), m.Shutdown(cctx))
		cancelSub()
		if cerr != nil && err == nil {
			err = fmt.Errorf("shutting down: %w", cerr)
		}
	}()
	if err := engine.Start(ctx); err != nil {
		return res, err
	}
	if err := loader.Start(ctx); err != nil {
		return res, err
	}
	ev, err := await(ctx, events, goplugins.EventRegistered)
	if err != nil {
		return res, err
	}
	tl.printf("discovered and loaded %s %s (a child process)", ev.Plugin, ev.Version)

	// 3. Serve a few requests.
	var calls, failed atomic.Int64
	call := func(word string) (response, error) {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		calls.Add(1)
		resp, err := m.Execute(cctx, "wordcount", request{Word: word})
		if err != nil {
			failed.Add(1)
		}
		return resp, err
	}
	for i := range 100 {
		if _, err := call(words[i%len(words)]); err != nil {
			return res, fmt.Errorf("calling wordcount 1.0.0: %w", err)
		}
	}
	tl.printf("served %d calls on 1.0.0", calls.Load())

	// 4. Build version 2 while 1.0.0 serves.
	v2, err := build(ctx, tl, bin, "2.0.0")
	if err != nil {
		return res, err
	}

	// 5. Keep requests flowing from several goroutines, install 2.0.0 and
	// wait for the loader's hot swap.
	loadCtx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for g := range callers {
		wg.Go(func() {
			for i := g; loadCtx.Err() == nil; i++ {
				if _, err := call(words[i%len(words)]); err != nil {
					firstErr.CompareAndSwap(nil, err)
				}
			}
		})
	}
	stopTraffic := sync.OnceFunc(func() {
		stopLoad()
		wg.Wait()
	})
	defer stopTraffic()
	tl.printf("%d goroutines calling wordcount without pause", callers)
	if err := pause(ctx, 300*time.Millisecond); err != nil {
		return res, err
	}
	if err := install(dir, v2, "2.0.0"); err != nil {
		return res, err
	}
	tl.printf("installed 2.0.0 (binary, then manifest by atomic rename); %d calls made so far", calls.Load())
	ev, err = await(ctx, events, goplugins.EventReloaded)
	if err != nil {
		return res, err
	}
	r := *ev.Reload
	res.Report = r
	tl.printf("update seen and hot-swapped: %s %s -> %s, generation %d", r.Plugin, r.From, r.To, r.Generation)
	tl.printf("  parked calls %d: p50 %v, p99 %v, max %v; %d gave up", r.ParkedCalls, r.ParkP50, r.ParkP99, r.ParkMax, r.GaveUp)
	tl.printf("  traffic paused %v: drain %v, dispatch %v, commit %v (preflight %v before, no traffic touched)",
		r.Drain+r.Dispatch+r.Commit, r.Drain, r.Dispatch, r.Commit, r.Preflight)
	var handed struct{ Total int }
	if err := json.Unmarshal(r.Handed[goplugins.SurfaceState], &handed); err != nil {
		return res, fmt.Errorf("reading the state handed over: %w", err)
	}
	res.Before = handed.Total
	tl.printf("  handed over: %v, %d bytes (1.0.0 had counted %d words)", r.Steps, r.BytesHandedOver, res.Before)
	if err := pause(ctx, 300*time.Millisecond); err != nil {
		return res, err
	}
	stopTraffic()

	// 6. Check the outcome: every call served, the state carried over.
	final, err := call("")
	if err != nil {
		return res, fmt.Errorf("reading the totals: %w", err)
	}
	calls.Add(-1)
	res.Calls, res.Failed = calls.Load(), failed.Load()
	res.After, res.Version, res.Restored = final.Total, final.Version, final.Restored
	lost := res.Calls - int64(res.After) - res.Failed
	tl.printf("calls made %d, failed %d, lost %d; wordcount %s counted %d words (state restored from %s)",
		res.Calls, res.Failed, lost, res.Version, res.After, res.Restored)
	if e, ok := firstErr.Load().(error); ok {
		return res, fmt.Errorf("%d of %d calls failed, the first with: %w", res.Failed, res.Calls, e)
	}
	switch {
	case res.Version != "2.0.0":
		return res, fmt.Errorf("version %s serves after the swap, want 2.0.0", res.Version)
	case res.Restored != "1.0.0" || res.Before == 0 || res.After < res.Before:
		return res, fmt.Errorf("version 2.0.0 did not restore the state of 1.0.0 (restored from %q)", res.Restored)
	case lost != 0:
		return res, fmt.Errorf("%d calls were lost: the host made %d, the plugin counted %d", lost, res.Calls, res.After)
	}
	tl.printf("done: no call failed or lost, the state carried over; cleaning up")
	return res, nil
}

// build compiles the plugin at version into bin and returns the binary's path.
func build(ctx context.Context, tl *timeline, bin, version string) (string, error) {
	start := time.Now()
	path := filepath.Join(bin, "wordcount-"+version)
	cmd := exec.CommandContext(ctx, "go", "build", "-ldflags", "-X main.version="+version, "-o", path, pluginPackage)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building the plugin %s (go build %s; run from inside the goplugins module): %w\n%s", version, pluginPackage, err, out)
	}
	tl.printf("built wordcount %s in %v", version, time.Since(start).Round(time.Millisecond))
	return path, nil
}

// install copies the binary into the plugin folder and then replaces the
// manifest atomically (a temporary file, then a rename), so discovery never
// sees a half-written manifest or a manifest without its binary.
func install(dir, binary, version string) error {
	data, err := os.ReadFile(binary)
	if err != nil {
		return err
	}
	file := "wordcount-" + version
	if err := os.WriteFile(filepath.Join(dir, file), data, 0o755); err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	manifest := fmt.Sprintf(`{
  "name": "wordcount",
  "version": %q,
  "description": "counts words; its counts survive a hot swap",
  "transport": "subprocess",
  "command": "./%s",
  "checksum": "sha256:%s",
  "surfaces": ["state"],
  "timeout": "5s"
}
`, version, file, hex.EncodeToString(sum[:]))
	tmp := filepath.Join(dir, ".plugin.json.tmp")
	if err := os.WriteFile(tmp, []byte(manifest), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, "plugin.json"))
}

// await returns the next event of kind, failing on a failed load or reload.
func await(ctx context.Context, events <-chan goplugins.Event, kind goplugins.EventKind) (goplugins.Event, error) {
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	for {
		select {
		case ev := <-events:
			switch ev.Kind {
			case kind:
				return ev, nil
			case goplugins.EventLoadFailed, goplugins.EventReloadFailed:
				return ev, fmt.Errorf("%s %s: %w", ev.Plugin, ev.Kind, ev.Err)
			}
		case <-timeout.C:
			return goplugins.Event{}, fmt.Errorf("no %s event within 30s", kind)
		case <-ctx.Done():
			return goplugins.Event{}, ctx.Err()
		}
	}
}

// pause lets traffic flow for d, or until ctx ends.
func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
