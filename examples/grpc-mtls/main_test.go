package main

import (
	"bytes"
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// TestGRPCMTLS runs the example: the host reaches the remote plugin over
// mutual TLS with generated certificates, calls it, gets its error as
// ErrRemote, and a host with a certificate from another CA is refused.
func TestGRPCMTLS(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), &out), out.String())
	require.Equal(t, `generated a CA, a server certificate and two client certificates
plugin service listening with mTLS on 127.0.0.1
host connected to words 1.3.0 (counts words, remotely)
4 words: MUTUAL TLS BOTH WAYS
the plugin's own error arrives as ErrRemote
a host with a certificate from another CA is refused (ErrTransport: true)
`, out.String())
}
