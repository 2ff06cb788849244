package goplugins

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// testPoll is the poll interval of the watching tests.
const testPoll = 20 * time.Millisecond

// eventTimeout bounds every wait for an event; it is a failure deadline,
// not a synchronisation delay.
const eventTimeout = 10 * time.Second

func manifestJSON(name, version string) string {
	return fmt.Sprintf(`{"name": %q, "version": %q, "transport": "subprocess", "command": "./run"}`, name, version)
}

// writePlugin writes dir/plugin.json atomically (a temporary file renamed
// over it), creating dir. Tests of non-atomic writes write directly.
func writePlugin(t *testing.T, dir, content string) string {
	t.Helper()
	require.NoError(t, os.MkdirAll(dir, 0o755))
	path := filepath.Join(dir, "plugin.json")
	tmp := filepath.Join(dir, ".plugin.json.tmp")
	require.NoError(t, os.WriteFile(tmp, []byte(content), 0o644))
	require.NoError(t, os.Rename(tmp, path))
	return path
}

// startEngine starts a watching engine and closes it at the end of the test.
func startEngine(t *testing.T, cfg DiscoveryConfig) *DiscoveryEngine {
	t.Helper()
	if cfg.PollInterval == 0 {
		cfg.PollInterval = testPoll
	}
	e, err := NewDiscoveryEngine(cfg)
	require.NoError(t, err)
	require.NoError(t, e.Start(context.Background()))
	t.Cleanup(func() { require.NoError(t, e.Close()) })
	return e
}

// nextEvent returns the next event or fails the test.
func nextEvent(t *testing.T, e *DiscoveryEngine) DiscoveryEvent {
	t.Helper()
	select {
	case ev, ok := <-e.Events():
		require.True(t, ok, "events channel closed")
		return ev
	case <-time.After(eventTimeout):
		t.Fatalf("no discovery event within %s", eventTimeout)
	}
	panic("unreachable")
}

// barrier adds a plugin folder named zz-barrier-<n> under root and returns
// the events received before its discovery. The engine sweeps the whole
// tree at once and orders a sweep's discoveries by name, so everything that
// happened before the barrier was written has been reported by then.
func barrier(t *testing.T, e *DiscoveryEngine, root string, n int) []DiscoveryEvent {
	t.Helper()
	name := fmt.Sprintf("zz-barrier-%d", n)
	writePlugin(t, filepath.Join(root, name), manifestJSON(name, "1.0.0"))
	var before []DiscoveryEvent
	for {
		ev := nextEvent(t, e)
		if ev.Kind == DiscoveryAdded && ev.Name == name {
			return before
		}
		before = append(before, ev)
	}
}

func names(ms []*Manifest) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Name
	}
	return out
}

func TestDiscoveryScanTestdata(t *testing.T) {
	e, err := NewDiscoveryEngine(DiscoveryConfig{Roots: []string{filepath.Join("testdata", "manifests")}})
	require.NoError(t, err)
	res, err := e.Scan(context.Background())
	require.NoError(t, err)

	root, err := filepath.Abs(filepath.Join("testdata", "manifests"))
	require.NoError(t, err)
	require.Len(t, res.Manifests, 3)
	assert.Equal(t, filepath.Join(root, "auth", "plugin.json"), res.Manifests[0].Path)
	assert.Equal(t, filepath.Join(root, "metrics", "plugin.yaml"), res.Manifests[1].Path)
	assert.Equal(t, filepath.Join(root, "remote", "plugin.yml"), res.Manifests[2].Path)

	require.Len(t, res.Invalid, 2)
	assert.Equal(t, filepath.Join(root, "bad-fields", "plugin.json"), res.Invalid[0].Path)
	assert.ErrorIs(t, res.Invalid[0].Err, ErrInvalidManifest)
	assert.ErrorIs(t, res.Invalid[0].Err, ErrInvalidManifest)
	assert.Equal(t, filepath.Join(root, "bad-unknown", "plugin.yaml"), res.Invalid[1].Path)
	assert.Equal(t, "typo", res.Invalid[1].Name)
	assert.Contains(t, res.Invalid[1].Err.Error(), `unknown field "timout"`)

	assert.Nil(t, e.Manifests(), "Scan does not change Manifests")
}

func TestDiscoveryScanRules(t *testing.T) {
	tests := []struct {
		name    string
		cfg     DiscoveryConfig
		files   map[string]string // path under root -> content
		valid   []string          // names, by path
		invalid map[string][]string
		is      map[string]error
	}{
		{
			name: "max depth and plugin folders not searched",
			cfg:  DiscoveryConfig{MaxDepth: 2},
			files: map[string]string{
				"a/plugin.json":               manifestJSON("a", "1.0.0"),
				"group/b/plugin.json":         manifestJSON("b", "1.0.0"),
				"group/deeper/c/plugin.json":  manifestJSON("c", "1.0.0"),
				"a/vendor/inner/plugin.json":  manifestJSON("inner", "1.0.0"),
				".hidden/plugin.json":         manifestJSON("hidden", "1.0.0"),
				"group/notes.txt":             "not a folder",
				"group/b/extra/d/plugin.json": manifestJSON("d", "1.0.0"),
			},
			valid: []string{"a", "b"},
		},
		{
			name: "depth 3 reaches deeper",
			cfg:  DiscoveryConfig{MaxDepth: 3},
			files: map[string]string{
				"group/b/plugin.json":        manifestJSON("b", "1.0.0"),
				"group/deeper/c/plugin.json": manifestJSON("c", "1.0.0"),
			},
			valid: []string{"b", "c"},
		},
		{
			name: "duplicate names: neither is used",
			files: map[string]string{
				"one/plugin.json":  manifestJSON("auth", "1.0.0"),
				"two/plugin.yaml":  "name: auth\nversion: 2.0.0\ntransport: inprocess\n",
				"other/plugin.yml": "name: other\nversion: 1.0.0\ntransport: inprocess\n",
			},
			valid: []string{"other"},
			invalid: map[string][]string{
				"one/plugin.json": {"more than one manifest", "one/plugin.json", "two/plugin.yaml"},
				"two/plugin.yaml": {"more than one manifest", "one/plugin.json", "two/plugin.yaml"},
			},
		},
		{
			name:    "size limit",
			cfg:     DiscoveryConfig{MaxManifestSize: 120},
			files:   map[string]string{"big/plugin.json": manifestJSON("big", "1.0.0") + strings.Repeat(" ", 100), "small/plugin.json": manifestJSON("small", "1.0.0")},
			valid:   []string{"small"},
			invalid: map[string][]string{"big/plugin.json": {"the limit is 120"}},
		},
		{
			name:    "command escape",
			files:   map[string]string{"p/plugin.json": `{"name": "p", "version": "1.0.0", "transport": "subprocess", "command": "../q/run"}`},
			invalid: map[string][]string{"p/plugin.json": {`field "command"`, "outside the plugin folder"}},
			is:      map[string]error{"p/plugin.json": ErrInvalidManifest},
		},
		{
			name:  "command escape allowed",
			cfg:   DiscoveryConfig{AllowOutside: true},
			files: map[string]string{"p/plugin.json": `{"name": "p", "version": "1.0.0", "transport": "subprocess", "command": "../q/run"}`},
			valid: []string{"p"},
		},
		{
			name:    "unknown field",
			files:   map[string]string{"p/plugin.json": `{"name": "p", "version": "1.0.0", "transport": "inprocess", "surface": ["state"]}`},
			invalid: map[string][]string{"p/plugin.json": {`unknown field "surface"`}},
		},
		{
			name: "first manifest name wins",
			files: map[string]string{
				"p/plugin.json": manifestJSON("p", "1.0.0"),
				"p/plugin.yaml": "not: read",
			},
			valid: []string{"p"},
		},
		{
			name:  "custom manifest names",
			cfg:   DiscoveryConfig{ManifestNames: []string{"ext.yaml"}},
			files: map[string]string{"p/ext.yaml": "name: p\nversion: 1.0.0\ntransport: inprocess\n", "q/plugin.json": manifestJSON("q", "1.0.0")},
			valid: []string{"p"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			for p, content := range tt.files {
				full := filepath.Join(root, filepath.FromSlash(p))
				require.NoError(t, os.MkdirAll(filepath.Dir(full), 0o755))
				require.NoError(t, os.WriteFile(full, []byte(content), 0o644))
			}
			cfg := tt.cfg
			cfg.Roots = []string{root}
			e, err := NewDiscoveryEngine(cfg)
			require.NoError(t, err)
			res, err := e.Scan(context.Background())
			require.NoError(t, err)
			assert.Equal(t, tt.valid, namesOrNil(res.Manifests))
			require.Len(t, res.Invalid, len(tt.invalid), "invalid: %v", res.Invalid)
			for _, p := range res.Invalid {
				rel, err := filepath.Rel(root, p.Path)
				require.NoError(t, err)
				want, ok := tt.invalid[filepath.ToSlash(rel)]
				require.True(t, ok, "unexpected invalid manifest %s: %v", p.Path, p.Err)
				assert.ErrorIs(t, p.Err, ErrInvalidManifest)
				for _, w := range want {
					assert.Contains(t, p.Err.Error(), filepath.FromSlash(w))
				}
				if is := tt.is[filepath.ToSlash(rel)]; is != nil {
					assert.ErrorIs(t, p.Err, is)
				}
			}
		})
	}
}

func namesOrNil(ms []*Manifest) []string {
	if len(ms) == 0 {
		return nil
	}
	return names(ms)
}

func TestNewDiscoveryEngineConfig(t *testing.T) {
	root := t.TempDir()
	file := filepath.Join(root, "file")
	require.NoError(t, os.WriteFile(file, nil, 0o644))
	require.NoError(t, os.Mkdir(filepath.Join(root, "sub"), 0o755))
	tests := []struct {
		name string
		cfg  DiscoveryConfig
		want string
	}{
		{"no roots", DiscoveryConfig{}, "Roots is empty"},
		{"missing root", DiscoveryConfig{Roots: []string{filepath.Join(root, "nope")}}, "Roots"},
		{"root is a file", DiscoveryConfig{Roots: []string{file}}, "not a folder"},
		{"nested roots", DiscoveryConfig{Roots: []string{root, filepath.Join(root, "sub")}}, "nest"},
		{"same root twice", DiscoveryConfig{Roots: []string{root, root + "/."}}, "nest"},
		{"negative depth", DiscoveryConfig{Roots: []string{root}, MaxDepth: -1}, "MaxDepth"},
		{"manifest name with a folder", DiscoveryConfig{Roots: []string{root}, ManifestNames: []string{"x/plugin.json"}}, "ManifestNames"},
		{"manifest name extension", DiscoveryConfig{Roots: []string{root}, ManifestNames: []string{"plugin.toml"}}, "ManifestNames"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewDiscoveryEngine(tt.cfg)
			require.ErrorIs(t, err, ErrInvalidConfig)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

func TestDiscoveryLifecycle(t *testing.T) {
	verifyNoLeaks(t)
	root := t.TempDir()

	e, err := NewDiscoveryEngine(DiscoveryConfig{Roots: []string{root}, PollInterval: testPoll})
	require.NoError(t, err)
	require.NoError(t, e.Close(), "Close before Start")
	_, open := <-e.Events()
	assert.False(t, open, "Close closes Events")
	require.ErrorIs(t, e.Start(context.Background()), ErrClosed)

	e, err = NewDiscoveryEngine(DiscoveryConfig{Roots: []string{root}, PollInterval: testPoll})
	require.NoError(t, err)
	require.NoError(t, e.Start(context.Background()))
	err = e.Start(context.Background())
	require.ErrorIs(t, err, ErrInvalidConfig)
	assert.Contains(t, err.Error(), "started already")
	require.NoError(t, e.Close())
	require.NoError(t, e.Close(), "Close is idempotent")
	_, open = <-e.Events()
	assert.False(t, open)
	require.ErrorIs(t, e.Start(context.Background()), ErrClosed)

	e, err = NewDiscoveryEngine(DiscoveryConfig{Roots: []string{root}, PollInterval: testPoll})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = e.Start(ctx)
	require.ErrorIs(t, err, ErrCanceled)
	require.ErrorIs(t, err, context.Canceled)
	require.NoError(t, e.Close())
}

func TestDiscoveryStartReportsExisting(t *testing.T) {
	verifyNoLeaks(t)
	root := t.TempDir()
	writePlugin(t, filepath.Join(root, "b"), manifestJSON("b", "1.0.0"))
	writePlugin(t, filepath.Join(root, "a"), manifestJSON("a", "2.0.0"))
	bad := writePlugin(t, filepath.Join(root, "c"), `{"name": "c", "version": "1.0.0", "transport": "carrier-pigeon"}`)

	e := startEngine(t, DiscoveryConfig{Roots: []string{root}})
	assert.Equal(t, []string{"a", "b"}, names(e.Manifests()), "known as soon as Start returns")

	ev := nextEvent(t, e)
	assert.Equal(t, DiscoveryInvalid, ev.Kind)
	assert.Equal(t, bad, ev.Path)
	assert.Equal(t, "c", ev.Name)
	assert.Nil(t, ev.Manifest)
	require.ErrorIs(t, ev.Err, ErrInvalidManifest)
	assert.Contains(t, ev.Err.Error(), `field "transport"`)

	for _, want := range []string{"a", "b"} {
		ev = nextEvent(t, e)
		assert.Equal(t, DiscoveryAdded, ev.Kind)
		assert.Equal(t, want, ev.Name)
		require.NotNil(t, ev.Manifest)
		assert.Equal(t, filepath.Join(root, want, "plugin.json"), ev.Path)
		assert.Equal(t, ev.Path, ev.Manifest.Path)
	}
	assert.Empty(t, barrier(t, e, root, 1))
}

func TestDiscoveryEventKinds(t *testing.T) {
	verifyNoLeaks(t)
	root := t.TempDir()
	e := startEngine(t, DiscoveryConfig{Roots: []string{root}})
	dir := filepath.Join(root, "auth")

	// Discovered: a new plugin folder under the root.
	path := writePlugin(t, dir, manifestJSON("auth", "1.0.0"))
	ev := nextEvent(t, e)
	assert.Equal(t, DiscoveryAdded, ev.Kind)
	assert.Equal(t, "auth", ev.Name)
	assert.Equal(t, path, ev.Path)
	require.NotNil(t, ev.Manifest)
	assert.Equal(t, "1.0.0", ev.Manifest.Version)
	assert.Equal(t, filepath.Join(dir, "run"), ev.Manifest.Command)
	assert.Equal(t, []string{"auth"}, names(e.Manifests()))

	// Updated: the content changes.
	writePlugin(t, dir, manifestJSON("auth", "1.1.0"))
	ev = nextEvent(t, e)
	assert.Equal(t, DiscoveryUpdated, ev.Kind)
	assert.Equal(t, "1.1.0", ev.Manifest.Version)
	assert.Equal(t, "1.1.0", e.Manifests()[0].Version)

	// Invalid: a valid plugin's manifest gains a misspelt field.
	writePlugin(t, dir, `{"name": "auth", "version": "1.2.0", "transport": "subprocess", "command": "./run", "timeuot": "1s"}`)
	ev = nextEvent(t, e)
	assert.Equal(t, DiscoveryInvalid, ev.Kind)
	assert.Equal(t, "auth", ev.Name)
	assert.Equal(t, path, ev.Path)
	require.NotNil(t, ev.Manifest, "the last valid manifest comes with it")
	assert.Equal(t, "1.1.0", ev.Manifest.Version)
	require.ErrorIs(t, ev.Err, ErrInvalidManifest)
	assert.Contains(t, ev.Err.Error(), `unknown field "timeuot"`)
	assert.Empty(t, e.Manifests())

	// Fixed: discovered again.
	writePlugin(t, dir, manifestJSON("auth", "1.2.0"))
	ev = nextEvent(t, e)
	assert.Equal(t, DiscoveryAdded, ev.Kind)
	assert.Equal(t, "1.2.0", ev.Manifest.Version)

	// Removed: the folder goes away.
	require.NoError(t, os.RemoveAll(dir))
	ev = nextEvent(t, e)
	assert.Equal(t, DiscoveryRemoved, ev.Kind)
	assert.Equal(t, "auth", ev.Name)
	assert.Equal(t, path, ev.Path)
	assert.Equal(t, "1.2.0", ev.Manifest.Version)
	assert.Empty(t, e.Manifests())

	// A plugin that is invalid from the start: Invalid without a manifest.
	bad := writePlugin(t, filepath.Join(root, "bad"), `{"name": "bad", "version": "01.0.0", "transport": "inprocess"}`)
	ev = nextEvent(t, e)
	assert.Equal(t, DiscoveryInvalid, ev.Kind)
	assert.Equal(t, bad, ev.Path)
	assert.Nil(t, ev.Manifest)
	assert.ErrorIs(t, ev.Err, ErrInvalidVersion)
	assert.Contains(t, ev.Err.Error(), `field "version"`)

	// Nothing else: each change was reported once.
	assert.Empty(t, barrier(t, e, root, 1))
}

func TestDiscoveryRenamedFolderIsAnUpdate(t *testing.T) {
	verifyNoLeaks(t)
	root := t.TempDir()
	writePlugin(t, filepath.Join(root, "v1"), manifestJSON("auth", "1.0.0"))
	e := startEngine(t, DiscoveryConfig{Roots: []string{root}})
	require.Equal(t, DiscoveryAdded, nextEvent(t, e).Kind)

	require.NoError(t, os.Rename(filepath.Join(root, "v1"), filepath.Join(root, "v2")))
	ev := nextEvent(t, e)
	assert.Equal(t, DiscoveryUpdated, ev.Kind)
	assert.Equal(t, filepath.Join(root, "v2", "plugin.json"), ev.Path)
	assert.Equal(t, filepath.Join(root, "v2", "run"), ev.Manifest.Command)
	assert.Empty(t, barrier(t, e, root, 1))
}

func TestDiscoveryRapidWrites(t *testing.T) {
	verifyNoLeaks(t)
	root := t.TempDir()
	dir := filepath.Join(root, "p")
	path := writePlugin(t, dir, manifestJSON("p", "1.0.0"))
	// A poll long enough that no write is stalled half-done for a whole
	// interval, which would rightly be reported as invalid.
	e := startEngine(t, DiscoveryConfig{Roots: []string{root}, PollInterval: 200 * time.Millisecond})
	require.Equal(t, DiscoveryAdded, nextEvent(t, e).Kind)

	// os.WriteFile truncates, then writes: each write is non-atomic.
	const last = 50
	for i := 1; i <= last; i++ {
		require.NoError(t, os.WriteFile(path, []byte(manifestJSON("p", fmt.Sprintf("1.%d.0", i))), 0o644))
	}
	final := fmt.Sprintf("1.%d.0", last)
	var seen []string
	for {
		ev := nextEvent(t, e)
		require.Equal(t, DiscoveryUpdated, ev.Kind, "only updates, never a half-read manifest: %v", ev.Err)
		require.NotNil(t, ev.Manifest)
		seen = append(seen, ev.Manifest.Version)
		if ev.Manifest.Version == final {
			break
		}
	}
	assert.Empty(t, barrier(t, e, root, 1), "nothing after the final content")
	assert.Equal(t, final, e.Manifests()[0].Version)
	t.Logf("%d writes gave %d events: %v", last, len(seen), seen)
}

// logHandler is a slog handler for tests of the engine's diagnostics: it
// sends the path of each held manifest to held, the error of each failed
// scan to failed (when set, never blocking), and panics on the record whose
// message is panicOn.
type logHandler struct {
	panicOn string
	held    chan string
	failed  chan error
}

func (h logHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h logHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h logHandler) WithGroup(string) slog.Handler            { return h }
func (h logHandler) Handle(_ context.Context, r slog.Record) error {
	if h.panicOn != "" && r.Message == h.panicOn {
		panic("handler panic")
	}
	r.Attrs(func(a slog.Attr) bool {
		switch {
		case r.Message == msgHeld && a.Key == "path" && h.held != nil:
			select {
			case h.held <- a.Value.String():
			default:
			}
		case r.Message == "discovery: scan failed; retrying on the next poll" && h.failed != nil:
			if err, ok := a.Value.Any().(error); ok {
				select {
				case h.failed <- err:
				default:
				}
			}
		}
		return true
	})
	return nil
}

func TestDiscoveryNonAtomicWrite(t *testing.T) {
	verifyNoLeaks(t)
	root := t.TempDir()
	dir := filepath.Join(root, "p")
	path := writePlugin(t, dir, manifestJSON("p", "1.0.0"))
	held := make(chan string, 1)
	// A poll long enough that a half-written file seen by one sweep is
	// completed well before it could be reported as invalid.
	e := startEngine(t, DiscoveryConfig{Roots: []string{root}, PollInterval: 500 * time.Millisecond,
		Logger: slog.New(logHandler{held: held})})
	require.Equal(t, DiscoveryAdded, nextEvent(t, e).Kind)

	// writeHalf truncates the manifest, writes half of content, and waits
	// until a sweep has seen the half-written file.
	writeHalf := func(content string) *os.File {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0o644)
		require.NoError(t, err)
		_, err = f.WriteString(content[:len(content)/2])
		require.NoError(t, err)
		select {
		case p := <-held:
			require.Equal(t, path, p)
		case <-time.After(eventTimeout):
			t.Fatal("no sweep saw the half-written manifest")
		}
		return f
	}

	// Same bytes written again in two steps: no event at all.
	same := manifestJSON("p", "1.0.0")
	f := writeHalf(same)
	assert.Equal(t, "1.0.0", e.Manifests()[0].Version, "the last valid manifest stays known meanwhile")
	_, err := f.WriteString(same[len(same)/2:])
	require.NoError(t, err)
	require.NoError(t, f.Close())
	assert.Empty(t, barrier(t, e, root, 1), "same content: no event")

	// New bytes written in two steps: one update with the final content.
	next := manifestJSON("p", "2.0.0")
	f = writeHalf(next)
	_, err = f.WriteString(next[len(next)/2:])
	require.NoError(t, err)
	require.NoError(t, f.Close())
	ev := nextEvent(t, e)
	assert.Equal(t, DiscoveryUpdated, ev.Kind)
	assert.Equal(t, "2.0.0", ev.Manifest.Version)
	assert.Empty(t, barrier(t, e, root, 2))
}

func TestDiscoveryHalfWrittenThatStaysIsReported(t *testing.T) {
	verifyNoLeaks(t)
	root := t.TempDir()
	dir := filepath.Join(root, "p")
	path := writePlugin(t, dir, manifestJSON("p", "1.0.0"))
	e := startEngine(t, DiscoveryConfig{Roots: []string{root}})
	require.Equal(t, DiscoveryAdded, nextEvent(t, e).Kind)

	content := manifestJSON("p", "1.0.1")
	require.NoError(t, os.WriteFile(path, []byte(content[:len(content)/2]), 0o644))
	ev := nextEvent(t, e)
	assert.Equal(t, DiscoveryInvalid, ev.Kind, "a write that never completes is reported")
	assert.Equal(t, path, ev.Path)
	require.NotNil(t, ev.Manifest)
	assert.Equal(t, "1.0.0", ev.Manifest.Version)
	assert.ErrorIs(t, ev.Err, ErrInvalidManifest)
	assert.Empty(t, barrier(t, e, root, 1), "reported once")
}

func TestDiscoveryLongPath(t *testing.T) {
	verifyNoLeaks(t)
	root := t.TempDir()
	deep := filepath.Join(root, strings.Repeat("long-folder-name-", 5), strings.Repeat("plugin-", 6))
	path := filepath.Join(deep, "plugin.json")
	require.Greater(t, len(path), argusMaxPath, "the path must be longer than argus reports")
	require.Greater(t, len(deep), argusMaxPath, "the plugin folder too")

	e := startEngine(t, DiscoveryConfig{Roots: []string{root}})
	writePlugin(t, deep, manifestJSON("deep", "1.0.0"))
	ev := nextEvent(t, e)
	assert.Equal(t, DiscoveryAdded, ev.Kind)
	assert.Equal(t, path, ev.Path)

	writePlugin(t, deep, manifestJSON("deep", "1.0.1"))
	ev = nextEvent(t, e)
	assert.Equal(t, DiscoveryUpdated, ev.Kind)
	assert.Equal(t, "1.0.1", ev.Manifest.Version)

	require.NoError(t, os.Remove(path))
	ev = nextEvent(t, e)
	assert.Equal(t, DiscoveryRemoved, ev.Kind)
	assert.Equal(t, path, ev.Path)
}

func TestDiscoveryLongRoot(t *testing.T) {
	verifyNoLeaks(t)
	root := filepath.Join(t.TempDir(), strings.Repeat("a-very-long-root-folder-", 5))
	require.NoError(t, os.MkdirAll(root, 0o755))
	require.Greater(t, len(root), argusMaxPath)

	e := startEngine(t, DiscoveryConfig{Roots: []string{root}})
	writePlugin(t, filepath.Join(root, "p"), manifestJSON("p", "1.0.0"))
	ev := nextEvent(t, e)
	assert.Equal(t, DiscoveryAdded, ev.Kind)
	assert.Equal(t, "p", ev.Name)
}

func TestDiscoverySymlinksNotFollowed(t *testing.T) {
	verifyNoLeaks(t)
	root := t.TempDir()
	outside := t.TempDir()
	writePlugin(t, filepath.Join(outside, "ext"), manifestJSON("ext", "1.0.0"))
	require.NoError(t, os.Symlink(filepath.Join(outside, "ext"), filepath.Join(root, "ext")))
	require.NoError(t, os.Mkdir(filepath.Join(root, "linked"), 0o755))
	link := filepath.Join(root, "linked", "plugin.json")
	require.NoError(t, os.Symlink(filepath.Join(outside, "ext", "plugin.json"), link))

	e := startEngine(t, DiscoveryConfig{Roots: []string{root}})
	assert.Empty(t, e.Manifests(), "a linked folder is skipped")
	ev := nextEvent(t, e)
	assert.Equal(t, DiscoveryInvalid, ev.Kind, "a linked manifest is reported")
	assert.Equal(t, link, ev.Path)
	require.ErrorIs(t, ev.Err, ErrInvalidManifest)
	assert.Contains(t, ev.Err.Error(), "FollowSymlinks")
	assert.Empty(t, barrier(t, e, root, 1))
}

func TestDiscoverySymlinkEscapeRefused(t *testing.T) {
	verifyNoLeaks(t)
	root := t.TempDir()
	outside := t.TempDir()
	writePlugin(t, filepath.Join(outside, "ext"), manifestJSON("ext", "1.0.0"))
	require.NoError(t, os.Symlink(filepath.Join(outside, "ext"), filepath.Join(root, "ext")))
	require.NoError(t, os.Mkdir(filepath.Join(root, "linked"), 0o755))
	link := filepath.Join(root, "linked", "plugin.json")
	require.NoError(t, os.Symlink(filepath.Join(outside, "ext", "plugin.json"), link))

	e, err := NewDiscoveryEngine(DiscoveryConfig{Roots: []string{root}, FollowSymlinks: true})
	require.NoError(t, err)
	res, err := e.Scan(context.Background())
	require.NoError(t, err)
	assert.Empty(t, res.Manifests, "neither the linked folder nor the linked manifest is used")
	require.Len(t, res.Invalid, 2)
	assert.Equal(t, filepath.Join(root, "ext"), res.Invalid[0].Path, "the linked folder")
	assert.Equal(t, link, res.Invalid[1].Path, "the linked manifest")
	for _, p := range res.Invalid {
		assert.ErrorIs(t, p.Err, ErrInvalidManifest)
		assert.ErrorIs(t, p.Err, ErrInvalidManifest)
		assert.Contains(t, p.Err.Error(), "outside the root")
	}
}

func TestDiscoverySymlinkFollowedAndSwapped(t *testing.T) {
	verifyNoLeaks(t)
	root := t.TempDir()
	// The Kubernetes ConfigMap layout: the plugin folder is a link to a
	// versioned folder, and an update swaps the link atomically.
	v1 := filepath.Join(root, ".versions", "v1")
	v2 := filepath.Join(root, ".versions", "v2")
	writePlugin(t, v1, manifestJSON("k8s", "1.0.0"))
	writePlugin(t, v2, manifestJSON("k8s", "2.0.0"))
	current := filepath.Join(root, "k8s")
	require.NoError(t, os.Symlink(v1, current))

	e := startEngine(t, DiscoveryConfig{Roots: []string{root}, FollowSymlinks: true})
	ev := nextEvent(t, e)
	assert.Equal(t, DiscoveryAdded, ev.Kind)
	assert.Equal(t, filepath.Join(current, "plugin.json"), ev.Path, "reported under the link's path")
	assert.Equal(t, "1.0.0", ev.Manifest.Version)
	assert.Equal(t, filepath.Join(current, "run"), ev.Manifest.Command)

	tmp := filepath.Join(root, "k8s.tmp")
	require.NoError(t, os.Symlink(v2, tmp))
	require.NoError(t, os.Rename(tmp, current))
	ev = nextEvent(t, e)
	assert.Equal(t, DiscoveryUpdated, ev.Kind)
	assert.Equal(t, "2.0.0", ev.Manifest.Version)

	// A linked manifest file inside the root is followed too.
	require.NoError(t, os.Mkdir(filepath.Join(root, "filelink"), 0o755))
	writePlugin(t, filepath.Join(root, ".store"), manifestJSON("filelink", "1.0.0"))
	require.NoError(t, os.Symlink(filepath.Join(root, ".store", "plugin.json"), filepath.Join(root, "filelink", "plugin.json")))
	ev = nextEvent(t, e)
	assert.Equal(t, DiscoveryAdded, ev.Kind)
	assert.Equal(t, "filelink", ev.Name)
	assert.Equal(t, filepath.Join(root, "filelink", "plugin.json"), ev.Path)
}

func TestDiscoveryDuplicateNamesWatched(t *testing.T) {
	verifyNoLeaks(t)
	root := t.TempDir()
	first := writePlugin(t, filepath.Join(root, "one"), manifestJSON("auth", "1.0.0"))
	e := startEngine(t, DiscoveryConfig{Roots: []string{root}})
	require.Equal(t, DiscoveryAdded, nextEvent(t, e).Kind)

	second := writePlugin(t, filepath.Join(root, "two"), manifestJSON("auth", "2.0.0"))
	evs := []DiscoveryEvent{nextEvent(t, e), nextEvent(t, e)}
	for _, ev := range evs {
		assert.Equal(t, DiscoveryInvalid, ev.Kind)
		assert.Equal(t, "auth", ev.Name)
		require.ErrorIs(t, ev.Err, ErrInvalidManifest)
		assert.Contains(t, ev.Err.Error(), first)
		assert.Contains(t, ev.Err.Error(), second)
	}
	assert.Equal(t, first, evs[0].Path)
	require.NotNil(t, evs[0].Manifest, "the plugin that was valid comes with its manifest")
	assert.Equal(t, "1.0.0", evs[0].Manifest.Version)
	assert.Equal(t, second, evs[1].Path)
	assert.Nil(t, evs[1].Manifest)
	assert.Empty(t, e.Manifests(), "neither is used")

	require.NoError(t, os.RemoveAll(filepath.Join(root, "two")))
	ev := nextEvent(t, e)
	assert.Equal(t, DiscoveryAdded, ev.Kind)
	assert.Equal(t, first, ev.Path)
	assert.Empty(t, barrier(t, e, root, 1))
}

func TestDiscoveryEventsNeverDropped(t *testing.T) {
	verifyNoLeaks(t)
	root := t.TempDir()
	e := startEngine(t, DiscoveryConfig{Roots: []string{root}})
	// More plugins than the events channel holds, with nobody reading.
	const n = 3 * discoveryEventBuffer
	for i := range n {
		writePlugin(t, filepath.Join(root, fmt.Sprintf("p%03d", i)), manifestJSON(fmt.Sprintf("p%03d", i), "1.0.0"))
	}
	got := map[string]bool{}
	for len(got) < n {
		ev := nextEvent(t, e)
		require.Equal(t, DiscoveryAdded, ev.Kind)
		got[ev.Name] = true
	}
	assert.Len(t, e.Manifests(), n)
}

func TestDiscoveryEventKindString(t *testing.T) {
	for k, want := range map[DiscoveryEventKind]string{
		DiscoveryAdded: "added", DiscoveryUpdated: "updated", DiscoveryRemoved: "removed",
		DiscoveryInvalid: "invalid", DiscoveryEventKind(9): "DiscoveryEventKind(9)",
	} {
		assert.Equal(t, want, k.String())
	}
}

func TestDiscoveryPanicNeverReachesTheHost(t *testing.T) {
	verifyNoLeaks(t)
	root := t.TempDir()
	link := filepath.Join(root, "linked")
	// Logging about a linked folder panics, in whichever goroutine scans it.
	h := logHandler{panicOn: "discovery: skipping a linked folder; FollowSymlinks is off", failed: make(chan error, 1)}
	logger := slog.New(h)
	for i := range 100 {
		writePlugin(t, filepath.Join(root, fmt.Sprintf("p%03d", i)), manifestJSON(fmt.Sprintf("p%03d", i), "1.0.0"))
	}
	require.NoError(t, os.Symlink(t.TempDir(), link))

	e, err := NewDiscoveryEngine(DiscoveryConfig{Roots: []string{root}, PollInterval: testPoll, Logger: logger})
	require.NoError(t, err)
	_, err = e.Scan(context.Background())
	require.ErrorIs(t, err, ErrPanic)
	require.ErrorIs(t, e.Start(context.Background()), ErrPanic)
	require.NoError(t, e.Close())

	require.NoError(t, os.Remove(link))
	e = startEngine(t, DiscoveryConfig{Roots: []string{root}, Logger: logger})
	for range 100 {
		require.Equal(t, DiscoveryAdded, nextEvent(t, e).Kind)
	}

	// A sweep that panics while watching is survived: it is logged as a
	// failed scan, and once the cause is gone watching goes on.
	require.NoError(t, os.Symlink(t.TempDir(), link))
	select {
	case err := <-h.failed:
		require.ErrorIs(t, err, ErrPanic)
	case <-time.After(eventTimeout):
		t.Fatal("no sweep saw the linked folder")
	}
	writePlugin(t, filepath.Join(root, "late"), manifestJSON("late", "1.0.0"))
	require.NoError(t, os.Remove(link))
	ev := nextEvent(t, e)
	assert.Equal(t, DiscoveryAdded, ev.Kind)
	assert.Equal(t, "late", ev.Name)
	assert.Empty(t, barrier(t, e, root, 1))
}

// TestDiscoveryFolderLinkDanglingIsHeldLikeAFile checks that with
// FollowSymlinks a linked plugin folder whose link dangles for a moment is
// held back for a poll, as a half-written file is: the plugin keeps its
// manifest and no event is sent once the link resolves again.
func TestDiscoveryFolderLinkDanglingIsHeldLikeAFile(t *testing.T) {
	verifyNoLeaks(t)
	root := t.TempDir()
	v1 := filepath.Join(root, ".versions", "v1")
	writePlugin(t, v1, manifestJSON("k8s", "1.0.0"))
	current := filepath.Join(root, "k8s")
	require.NoError(t, os.Symlink(v1, current))
	held := make(chan string, 1)
	e := startEngine(t, DiscoveryConfig{Roots: []string{root}, FollowSymlinks: true,
		PollInterval: 500 * time.Millisecond, Logger: slog.New(logHandler{held: held})})
	require.Equal(t, DiscoveryAdded, nextEvent(t, e).Kind)

	away := v1 + ".away"
	require.NoError(t, os.Rename(v1, away)) // the link dangles
	select {
	case p := <-held:
		require.Equal(t, filepath.Join(current, "plugin.json"), p, "held under the manifest's path")
	case <-time.After(eventTimeout):
		t.Fatal("no sweep held the dangling link")
	}
	require.Equal(t, []string{"k8s"}, names(e.Manifests()), "the plugin keeps its manifest meanwhile")
	require.NoError(t, os.Rename(away, v1))
	assert.Empty(t, barrier(t, e, root, 1), "back before a poll passed: no event")
}

// TestDiscoveryFolderLinkSwappedOutsideIsOneNamedInvalid checks that a
// plugin folder link swapped to a folder outside the root gives one
// DiscoveryInvalid event naming the plugin with its last manifest, as a
// file that became invalid does, and no DiscoveryRemoved.
func TestDiscoveryFolderLinkSwappedOutsideIsOneNamedInvalid(t *testing.T) {
	verifyNoLeaks(t)
	root := t.TempDir()
	v1 := filepath.Join(root, ".versions", "v1")
	writePlugin(t, v1, manifestJSON("k8s", "1.0.0"))
	outside := t.TempDir()
	writePlugin(t, outside, manifestJSON("k8s", "2.0.0"))
	current := filepath.Join(root, "k8s")
	require.NoError(t, os.Symlink(v1, current))
	e := startEngine(t, DiscoveryConfig{Roots: []string{root}, FollowSymlinks: true})
	require.Equal(t, DiscoveryAdded, nextEvent(t, e).Kind)

	tmp := filepath.Join(root, "k8s.tmp")
	require.NoError(t, os.Symlink(outside, tmp))
	require.NoError(t, os.Rename(tmp, current))
	ev := nextEvent(t, e)
	assert.Equal(t, DiscoveryInvalid, ev.Kind)
	assert.Equal(t, "k8s", ev.Name)
	require.NotNil(t, ev.Manifest, "the last valid manifest, for the consumer to choose")
	assert.Equal(t, "1.0.0", ev.Manifest.Version)
	assert.ErrorIs(t, ev.Err, ErrInvalidManifest)
	assert.Empty(t, barrier(t, e, root, 1), "one event: no removal, no nameless invalid")
}
