package goplugins

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// TestMain removes the plugin binaries built for the tests.
func TestMain(m *testing.M) {
	code := m.Run()
	if testPlugins.dir != "" {
		os.RemoveAll(testPlugins.dir)
	}
	os.Exit(code)
}

// testPlugins holds the test plugin binaries, built once per test binary.
var testPlugins struct {
	once sync.Once
	dir  string
	err  error
}

// pluginBinary returns the path of a test plugin binary: "echo" (1.0.0),
// "echo2" (the same source built as 2.0.0) or "raw".
func pluginBinary(tb testing.TB, name string) string {
	tb.Helper()
	testPlugins.once.Do(func() {
		testPlugins.dir, testPlugins.err = os.MkdirTemp("", "goplugins-test-plugins-")
		if testPlugins.err != nil {
			return
		}
		builds := [][]string{
			{"-o", filepath.Join(testPlugins.dir, "echo"), "./testdata/plugins/echo"},
			{"-ldflags", "-X main.version=2.0.0", "-o", filepath.Join(testPlugins.dir, "echo2"), "./testdata/plugins/echo"},
			{"-o", filepath.Join(testPlugins.dir, "raw"), "./testdata/plugins/raw"},
		}
		for _, args := range builds {
			cmd := exec.Command("go", append([]string{"build"}, args...)...)
			if out, err := cmd.CombinedOutput(); err != nil {
				testPlugins.err = &buildError{args: args, out: string(out), err: err}
				return
			}
		}
	})
	if testPlugins.err != nil {
		tb.Fatalf("building the test plugins: %v", testPlugins.err)
	}
	return filepath.Join(testPlugins.dir, name)
}

type buildError struct {
	args []string
	out  string
	err  error
}

func (e *buildError) Error() string {
	return e.err.Error() + ": go build " + e.args[len(e.args)-1] + ":\n" + e.out
}

// record is a log record as the recordingHandler saw it.
type record struct {
	level slog.Level
	msg   string
	attrs map[string]any
}

// recordingHandler is a slog.Handler that keeps every record and lets a
// test wait for one.
type recordingHandler struct {
	attrs []slog.Attr
	root  *recordingRoot
}

type recordingRoot struct {
	mu      sync.Mutex
	records []record
	changed chan struct{}
}

func newRecordingHandler() *recordingHandler {
	return &recordingHandler{root: &recordingRoot{changed: make(chan struct{})}}
}

func (h *recordingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordingHandler) WithGroup(string) slog.Handler            { return h }
func (h *recordingHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &recordingHandler{attrs: append(append([]slog.Attr(nil), h.attrs...), as...), root: h.root}
}

func (h *recordingHandler) Handle(_ context.Context, r slog.Record) error {
	rec := record{level: r.Level, msg: r.Message, attrs: make(map[string]any)}
	for _, a := range h.attrs {
		rec.attrs[a.Key] = a.Value.Any()
	}
	r.Attrs(func(a slog.Attr) bool { rec.attrs[a.Key] = a.Value.Any(); return true })
	h.root.mu.Lock()
	h.root.records = append(h.root.records, rec)
	close(h.root.changed)
	h.root.changed = make(chan struct{})
	h.root.mu.Unlock()
	return nil
}

// wait returns the first record matching ok, waiting for new records until
// ctx ends.
func (h *recordingHandler) wait(ctx context.Context, ok func(record) bool) (record, bool) {
	for {
		h.root.mu.Lock()
		for _, r := range h.root.records {
			if ok(r) {
				h.root.mu.Unlock()
				return r, true
			}
		}
		changed := h.root.changed
		h.root.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return record{}, false
		}
	}
}

// openFDs counts the test process's open descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd on this system")
	}
	return len(ents)
}

// checkNoFDLeak fails t if, at cleanup, more descriptors are open than now.
// Register it after verifyNoLeaks so it runs first.
func checkNoFDLeak(t *testing.T) {
	t.Helper()
	before := openFDs(t)
	t.Cleanup(func() {
		if after := openFDs(t); after > before {
			t.Errorf("%d descriptors open after the test, %d before", after, before)
		}
	})
}

// checkReaped fails t if process pid still exists (running or zombie).
func checkReaped(t *testing.T, pid int) {
	t.Helper()
	if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid))); !os.IsNotExist(err) {
		b, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
		t.Errorf("plugin process %d still exists after Close: %s", pid, b)
	}
}

type echoReq struct {
	Op   string `json:"op,omitempty"`
	Data string `json:"data,omitempty"`
	Key  string `json:"key,omitempty"`
	N    int    `json:"n,omitempty"`
}

type echoResp struct {
	Data    string `json:"data,omitempty"`
	Version string `json:"version,omitempty"`
	PID     int    `json:"pid,omitempty"`
}

type echoPlugin = subprocessPlugin[echoReq, echoResp]

// startEcho starts the echo plugin with cfg adjusted by mod; it is closed
// at cleanup.
func startEcho(t testing.TB, h *recordingHandler, mod func(*SubprocessConfig)) *echoPlugin {
	t.Helper()
	if h == nil {
		h = newRecordingHandler()
	}
	cfg := SubprocessConfig{
		Name: "echo", Command: pluginBinary(t, "echo"),
		StopGrace: 2 * time.Second, Logger: slog.New(h),
	}
	if mod != nil {
		mod(&cfg)
	}
	p, err := newSubprocess[echoReq, echoResp](context.Background(), cfg)
	if err != nil {
		t.Fatalf("NewSubprocess: %v", err)
	}
	t.Cleanup(func() { p.Close(context.Background()) })
	return p
}

func pidOf(t *testing.T, p *echoPlugin) int {
	t.Helper()
	resp, err := p.Execute(context.Background(), echoReq{Op: "pid"})
	if err != nil {
		t.Fatalf("pid call: %v", err)
	}
	return resp.PID
}
