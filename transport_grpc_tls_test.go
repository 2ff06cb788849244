package goplugins

import (
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goplugins/goplugins/internal/pluginpb"
)

// TestGRPCAutoMTLSValidity checks that both certificates of the automatic
// mTLS outlive any child: grpc-go makes a new TLS handshake each time it
// reconnects to a child, so an expiring certificate would cut the host off
// from a child that is still running.
func TestGRPCAutoMTLSValidity(t *testing.T) {
	// Certificates carry whole seconds.
	before := time.Now().Truncate(time.Second)
	_, env, err := newAutoMTLS()
	require.NoError(t, err)
	vars := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		vars[k] = v
	}
	for _, name := range []string{pluginpb.EnvServerCert, pluginpb.EnvClientCA} {
		t.Run(name, func(t *testing.T) {
			block, _ := pem.Decode([]byte(vars[name]))
			require.NotNil(t, block, "no PEM certificate in %s", name)
			cert, err := x509.ParseCertificate(block.Bytes)
			require.NoError(t, err)
			assert.False(t, cert.NotBefore.After(before), "NotBefore %s is after the generation time %s", cert.NotBefore, before)
			assert.False(t, cert.NotAfter.Before(before.Add(autoMTLSValidity)),
				"NotAfter %s: the certificate must stay valid for %s", cert.NotAfter, autoMTLSValidity)
			assert.GreaterOrEqual(t, autoMTLSValidity, 10*365*24*time.Hour)
		})
	}
}
