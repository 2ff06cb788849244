package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// TestQuickstart runs the quickstart as `go run` would and checks its
// outcome: the loader hot-swapped 1.0.0 for 2.0.0, 2.0.0 carries the state
// of 1.0.0 and counted on from it, every call the host made was counted by
// the plugin (none failed, none lost), and the temporary folder is gone.
func TestQuickstart(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	before, err := filepath.Glob(filepath.Join(os.TempDir(), "goplugins-quickstart-*"))
	require.NoError(t, err)

	var out bytes.Buffer
	res, err := runQuickstart(context.Background(), &out)
	require.NoError(t, err, out.String())

	require.Equal(t, "2.0.0", res.Version)
	require.Equal(t, "1.0.0", res.Restored)
	require.Zero(t, res.Failed)
	require.Equal(t, res.Calls, int64(res.After), "the plugin counted a word for every call the host made")
	require.Positive(t, res.Before, "1.0.0 handed over the words it had counted")
	require.Greater(t, res.After, res.Before, "2.0.0 kept counting on top of the state handed over")
	require.Equal(t, "1.0.0", res.Report.From)
	require.Equal(t, "2.0.0", res.Report.To)
	require.Equal(t, uint64(2), res.Report.Generation)
	require.Contains(t, out.String(), "update seen and hot-swapped: wordcount 1.0.0 -> 2.0.0")
	require.Contains(t, out.String(), "failed 0, lost 0")

	after, err := filepath.Glob(filepath.Join(os.TempDir(), "goplugins-quickstart-*"))
	require.NoError(t, err)
	require.ElementsMatch(t, before, after, "the quickstart removed its temporary folder")
}

// TestQuickstartCancelled checks that a run interrupted at once (as by
// Ctrl-C) reports the cancellation and still cleans up.
func TestQuickstartCancelled(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	before, err := filepath.Glob(filepath.Join(os.TempDir(), "goplugins-quickstart-*"))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()

	var out bytes.Buffer
	err = run(ctx, &out)
	require.Error(t, err)
	require.True(t, strings.Contains(err.Error(), "context canceled"), err.Error())

	after, err := filepath.Glob(filepath.Join(os.TempDir(), "goplugins-quickstart-*"))
	require.NoError(t, err)
	require.ElementsMatch(t, before, after)
}
