package main

import (
	"bytes"
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// TestHostCalls runs the example: the plugin writes and reads the host's
// key-value store through host calls, in its own namespace, and is
// refused the function it was not granted (a typed error on its side, an
// event on the host's).
func TestHostCalls(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), &out), out.String())
	require.Equal(t, `the plugin stored and read back greeting = "hello"
host store: notes/greeting = "hello"
the plugin was refused admin.reset (sdk.ErrNotGranted)
host event: host-call-refused plugin=notes host_func=admin.reset
host store after the refused reset: 1 entries
`, out.String())
}
