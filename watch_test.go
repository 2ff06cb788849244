package goplugins

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestFileWatchPollsWhatArgusCannotFollow checks that the argus wrapper
// watches short plain paths and polls paths over 109 bytes and paths
// through a symbolic link (argus cuts the first and resolves the second
// once).
func TestFileWatchPollsWhatArgusCannotFollow(t *testing.T) {
	verifyNoLeaks(t)
	dir := t.TempDir()
	plain := filepath.Join(dir, "plain.json")
	require.NoError(t, os.WriteFile(plain, []byte("{}"), 0o644))
	long := filepath.Join(dir, strings.Repeat("long-name-", 12)+".json")
	require.NoError(t, os.WriteFile(long, []byte("{}"), 0o644))
	link := filepath.Join(dir, "link.json")
	require.NoError(t, os.Symlink(plain, link))

	fw := newFileWatch(testPoll, slog.New(slog.DiscardHandler))
	defer fw.close()
	fw.set([]string{plain})
	assert.Equal(t, map[string]bool{plain: true}, fw.watched)
	assert.False(t, fw.polling)
	assert.True(t, fw.fresh, "a path newly watched is looked at once more")

	for _, p := range []string{long, link} {
		fw.set([]string{plain, p})
		assert.Equal(t, map[string]bool{plain: true}, fw.watched, p)
		assert.True(t, fw.polling, "polled: %s", p)
	}
	fw.set(nil)
	assert.Empty(t, fw.watched, "unwatched")
}

// TestFileWatchLooksAgainAfterNewWatch checks the change-between-load-and-
// watch case: after a path is newly watched the loop checks once more on
// the next poll though argus reports nothing.
func TestFileWatchLooksAgainAfterNewWatch(t *testing.T) {
	verifyNoLeaks(t)
	path := filepath.Join(t.TempDir(), "c.json")
	require.NoError(t, os.WriteFile(path, []byte("{}"), 0o644))
	fw := newFileWatch(testPoll, slog.New(slog.DiscardHandler))
	checked := make(chan struct{}, 1)
	check := func(context.Context) ([]DiscoveryEvent, []string, bool) {
		select {
		case checked <- struct{}{}:
		default:
		}
		return nil, nil, false
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	require.NoError(t, fw.start(ctx, []string{path}, nil, make(chan DiscoveryEvent), check, done))
	<-checked
	cancel()
	<-done
}
