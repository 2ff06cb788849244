package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// pki holds the paths of the PEM files makePKI writes.
type pki struct {
	CA                    string // the CA that signs the server and the host
	ServerCert, ServerKey string // the plugin service's key pair
	HostCert, HostKey     string // the host's client key pair
	RogueCert, RogueKey   string // a client key pair signed by another CA
}

// makePKI writes, into dir, a CA, a server certificate for localhost and
// 127.0.0.1, a client certificate for the host, both signed by the CA, and
// a client certificate signed by an unrelated CA. The certificates are valid
// for an hour; keys are ECDSA P-256, written with mode 0600.
func makePKI(dir string) (pki, error) {
	var (
		p      pki
		serial int64
		err    error
	)
	issue := func(tmpl *x509.Certificate, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
		if err != nil {
			return nil, nil
		}
		var key *ecdsa.PrivateKey
		if key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			return nil, nil
		}
		serial++
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Minute), time.Now().Add(time.Hour)
		if parent == nil { // self-signed
			parent, parentKey = tmpl, key
		}
		var der []byte
		if der, err = x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey); err != nil {
			return nil, nil
		}
		var cert *x509.Certificate
		cert, err = x509.ParseCertificate(der)
		return cert, key
	}
	ca := func(cn string) *x509.Certificate {
		return &x509.Certificate{Subject: pkix.Name{CommonName: cn}, IsCA: true, BasicConstraintsValid: true,
			KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	}
	leaf := func(cn string, usage x509.ExtKeyUsage) *x509.Certificate {
		return &x509.Certificate{Subject: pkix.Name{CommonName: cn},
			DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}}
	}
	write := func(name string, cert *x509.Certificate, key *ecdsa.PrivateKey) (certPath, keyPath string) {
		if err != nil {
			return "", ""
		}
		certPath = filepath.Join(dir, name+".pem")
		if err = os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o644); err != nil {
			return "", ""
		}
		if key == nil {
			return certPath, ""
		}
		var der []byte
		if der, err = x509.MarshalPKCS8PrivateKey(key); err != nil {
			return "", ""
		}
		keyPath = filepath.Join(dir, name+"-key.pem")
		err = os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
		return certPath, keyPath
	}

	caCert, caKey := issue(ca("goplugins example CA"), nil, nil)
	otherCert, otherKey := issue(ca("unrelated CA"), nil, nil)
	srv, srvKey := issue(leaf("wordcount service", x509.ExtKeyUsageServerAuth), caCert, caKey)
	host, hostKey := issue(leaf("host", x509.ExtKeyUsageClientAuth), caCert, caKey)
	rogue, rogueKey := issue(leaf("rogue host", x509.ExtKeyUsageClientAuth), otherCert, otherKey)
	p.CA, _ = write("ca", caCert, nil)
	p.ServerCert, p.ServerKey = write("server", srv, srvKey)
	p.HostCert, p.HostKey = write("host", host, hostKey)
	p.RogueCert, p.RogueKey = write("rogue", rogue, rogueKey)
	return p, err
}
