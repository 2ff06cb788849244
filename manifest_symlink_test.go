package goplugins

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestManifestSymlinkEscape checks that command and TLS paths cannot leave
// the plugin folder through symbolic links inside it, with real links on
// disk.
func TestManifestSymlinkEscape(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "p")      // the plugin folder
	outside := filepath.Join(root, "p2") // a sibling whose name starts with the folder's
	for _, d := range []string{dir, outside, filepath.Join(dir, "real")} {
		require.NoError(t, os.MkdirAll(d, 0o755))
	}
	for _, f := range []string{filepath.Join(outside, "plugin"), filepath.Join(outside, "ca.pem"), filepath.Join(dir, "real", "plugin"), filepath.Join(dir, "plugin")} {
		require.NoError(t, os.WriteFile(f, []byte("x"), 0o755))
	}
	links := map[string]string{
		"bin":      outside,                           // a folder outside, absolute
		"up":       "../p2",                           // a folder outside, relative
		"tool":     filepath.Join(outside, "plugin"),  // a file outside
		"inbin":    "real",                            // a folder inside, relative
		"absin":    filepath.Join(dir, "real"),        // a folder inside, absolute
		"dangling": filepath.Join(root, "nothing"),    // leads nowhere yet
		"chain":    "bin",                             // a link to a link that leaves
		"self":     filepath.Join(dir, "real", "..."), // inside, leads nowhere yet
	}
	for name, target := range links {
		require.NoError(t, os.Symlink(target, filepath.Join(dir, name)))
	}
	// The plugin folder reached through a link of its own stays usable.
	linkedDir := filepath.Join(root, "linked")
	require.NoError(t, os.Symlink(dir, linkedDir))

	grpcTLS := func(ca string) string {
		return `{"name": "p", "version": "1.0.0", "transport": "grpc", "endpoint": "h:1", "tls": {"ca_file": "` + ca + `"}}`
	}
	command := func(c string) string {
		return `{"name": "p", "version": "1.0.0", "transport": "subprocess", "command": "` + c + `"}`
	}
	tests := []struct {
		name     string
		folder   string
		data     string
		escapes  bool
		field    string
		resolved string // the Command or CAFile when accepted
	}{
		{"folder link to an existing file", dir, command("./bin/plugin"), true, "command", ""},
		{"folder link to a file not built yet", dir, command("bin/later"), true, "command", ""},
		{"relative folder link", dir, command("up/plugin"), true, "command", ""},
		{"file link", dir, command("tool"), true, "command", ""},
		{"dangling link", dir, command("dangling"), true, "command", ""},
		{"link to a link", dir, command("chain/plugin"), true, "command", ""},
		{"TLS file through a link", dir, grpcTLS("bin/ca.pem"), true, "tls.ca_file", ""},
		{"relative link inside", dir, command("inbin/plugin"), false, "", filepath.Join(dir, "inbin", "plugin")},
		{"absolute link inside", dir, command("absin/plugin"), false, "", filepath.Join(dir, "absin", "plugin")},
		{"dangling link inside", dir, command("self"), true, "command", ""},
		{"no link", dir, command("plugin"), false, "", filepath.Join(dir, "plugin")},
		{"folder reached through a link", linkedDir, command("inbin/plugin"), false, "", filepath.Join(linkedDir, "inbin", "plugin")},
		{"folder reached through a link, escaping", linkedDir, command("bin/plugin"), true, "command", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(tc.folder, "plugin.json")
			m, err := ParseManifest(path, []byte(tc.data))
			if tc.escapes {
				require.ErrorIs(t, err, ErrInvalidManifest)
				require.ErrorIs(t, err, ErrInvalidManifest)
				assert.Contains(t, err.Error(), `field "`+tc.field+`"`)
				assert.Contains(t, err.Error(), "symbolic link")

				m, err := ParseManifest(path, []byte(tc.data), ManifestAllowOutside(true))
				require.NoError(t, err, "ManifestAllowOutside accepts links that leave")
				assert.NotNil(t, m)
				return
			}
			require.NoError(t, err)
			got := m.Command
			if m.TLS != nil {
				got = m.TLS.CAFile
			}
			assert.Equal(t, tc.resolved, got)
		})
	}
}
