package goplugins

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"time"

	"google.golang.org/grpc/credentials"

	"github.com/goplugins/goplugins/internal/pluginpb"
)

// TLSFiles names the PEM files that secure the connection to a remote gRPC
// plugin: TLS when only the server is verified, mutual TLS when the host
// presents a client certificate too.
type TLSFiles struct {
	// CAFile holds the CA certificates that verify the server; "" means
	// the system's roots.
	CAFile string
	// CertFile and KeyFile are the host's client certificate and key, for
	// mTLS; set both or neither.
	CertFile, KeyFile string
	// ServerName, if set, is the name checked in the server's certificate
	// instead of the endpoint's host name.
	ServerName string
}

// credentials loads the files into gRPC transport credentials.
func (f *TLSFiles) credentials() (credentials.TransportCredentials, error) {
	cfg := &tls.Config{ServerName: f.ServerName, MinVersion: tls.VersionTLS12}
	if f.CAFile != "" {
		pemData, err := os.ReadFile(f.CAFile)
		if err != nil {
			return nil, fmt.Errorf("reading CAFile: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pemData) {
			return nil, fmt.Errorf("CAFile %s holds no PEM certificate", f.CAFile)
		}
	}
	if (f.CertFile == "") != (f.KeyFile == "") {
		return nil, fmt.Errorf("set both CertFile and KeyFile for mTLS, or neither")
	}
	if f.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("loading the client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return credentials.NewTLS(cfg), nil
}

// autoMTLSValidity is how long the certificates newAutoMTLS generates are
// valid. They live only in the memory of the host and of one child, and
// grpc-go makes a new TLS handshake each time it reconnects to the child
// (after an idle half hour, say), so they must outlive any child: a
// certificate that expired under a running child would cut the host off
// from it for good. A new child gets new key pairs.
const autoMTLSValidity = 10 * 365 * 24 * time.Hour

// newAutoMTLS generates a key pair for the host and one for a child, each
// the only certificate the other side trusts, valid for autoMTLSValidity.
// It returns the host's credentials and the child's environment entries.
func newAutoMTLS() (credentials.TransportCredentials, []string, error) {
	hostCert, hostPEM, _, err := selfSigned("goplugins-host", x509.ExtKeyUsageClientAuth)
	if err != nil {
		return nil, nil, err
	}
	childCert, childPEM, childKeyPEM, err := selfSigned(pluginpb.AutoMTLSServerName, x509.ExtKeyUsageServerAuth)
	if err != nil {
		return nil, nil, err
	}
	roots := x509.NewCertPool()
	roots.AddCert(childCert.Leaf)
	creds := credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{hostCert},
		RootCAs:      roots,
		ServerName:   pluginpb.AutoMTLSServerName,
		MinVersion:   tls.VersionTLS13,
	})
	env := []string{
		pluginpb.EnvServerCert + "=" + string(childPEM),
		pluginpb.EnvServerKey + "=" + string(childKeyPEM),
		pluginpb.EnvClientCA + "=" + string(hostPEM),
	}
	return creds, env, nil
}

// selfSigned returns a fresh ECDSA P-256 certificate for name, valid from a
// minute ago (to allow for clock steps) for autoMTLSValidity, self-signed so that it can be its own trust anchor, with its PEM
// certificate and key.
func selfSigned(name string, usage x509.ExtKeyUsage) (tls.Certificate, []byte, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name},
		DNSNames:              []string{name},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(autoMTLSValidity),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{usage},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	return cert, certPEM, keyPEM, err
}
