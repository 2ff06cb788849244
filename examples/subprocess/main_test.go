package main

import (
	"bytes"
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// TestSubprocess runs the example: the plugin answers, its error reply is
// typed, its stderr reaches the host's logger with its level, a crash fails
// the call in flight with ErrCrashed and the child is restarted and serves
// again from a new process (run checks the hash and the pid).
func TestSubprocess(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), &out), out.String())
	for _, want := range []string{
		"sha256(hello) = 2cf24dba5fb0a30e…\n",
		`plugin error: code "empty", retryable false`,
		`level=INFO msg="hasher starting" plugin=hasher stream=stderr`,
		`level=ERROR msg="crashing on request" plugin=hasher stream=stderr`,
		"call during the crash: ErrCrashed\n",
		"restarted after 1 attempt(s)\n",
		"served again by a new process: same hash, new pid\n",
	} {
		require.Contains(t, out.String(), want)
	}
}
