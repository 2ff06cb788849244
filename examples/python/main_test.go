package main

import (
	"bytes"
	"context"
	"os/exec"
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// TestPython runs the example against the Python plugin: handshake, a
// call during which the plugin calls the host (protocol version 2), the
// plugin's error reply and a health ping. It needs python3.
func TestPython(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 is not on the PATH; the Python example cannot run here")
	}
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), &out), out.String())
	require.Regexp(t, regexp.MustCompile(`^handshake: wordstats 1\.0\.0
9 words, 7 distinct, most frequent "the", without stop words "cat" \(answered by python 3\.[0-9.]+\)
plugin error: code "empty": nothing to count: send a non-empty text
health: ok
$`), out.String())
}
