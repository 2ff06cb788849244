package goplugins

import (
	"context"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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
// "echo2" (the same source built as 2.0.0), "raw" or "hostcall".
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
			{"-o", filepath.Join(testPlugins.dir, "hostcall"), "./testdata/plugins/hostcall"},
		}
		for _, args := range builds {
			cmd := exec.Command("go", append([]string{"build"}, args...)...)
			if out, err := cmd.CombinedOutput(); err != nil {
				testPlugins.err = &buildError{args: args, out: string(out), err: err}
				return
			}
		}
	})
	require.NoError(tb, testPlugins.err, "building the test plugins")
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

// records returns a copy of the records seen so far, for failure messages.
func (h *recordingHandler) records() []record {
	h.root.mu.Lock()
	defer h.root.mu.Unlock()
	return append([]record(nil), h.root.records...)
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
		// A descriptor being closed on another goroutine goes within
		// moments; a leaked one stays.
		assert.Eventually(t, func() bool { return openFDs(t) <= before }, 5*time.Second, 10*time.Millisecond,
			"%d descriptors open after the test, %d before", openFDs(t), before)
	})
}

// checkReaped fails t if process pid still exists (running or zombie).
func checkReaped(t *testing.T, pid int) {
	t.Helper()
	dir := filepath.Join("/proc", strconv.Itoa(pid))
	_, err := os.Stat(dir)
	stat, _ := os.ReadFile(filepath.Join(dir, "stat")) // for the message
	assert.ErrorIs(t, err, fs.ErrNotExist, "plugin process %d still exists after Close: %s", pid, stat)
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
	require.NoError(t, err, "NewSubprocess")
	t.Cleanup(func() { p.Close(context.Background()) })
	return p
}

func pidOf(t *testing.T, p *echoPlugin) int {
	t.Helper()
	resp, err := p.Execute(context.Background(), echoReq{Op: "pid"})
	require.NoError(t, err, "pid call")
	return resp.PID
}
