package goplugins

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	goerrors "github.com/agilira/go-errors"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/stats"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/goplugins/goplugins/internal/pluginpb"
	"github.com/goplugins/goplugins/sdk"
	"github.com/goplugins/goplugins/sdk/grpcplugin"
)

// counterReq and counterResp mirror the grpc-counter test plugin's types.
type counterReq struct {
	Op   string `json:"op"`
	Text string `json:"text,omitempty"`
	N    int    `json:"n,omitempty"`
}

type counterResp struct {
	Text     string `json:"text,omitempty"`
	Total    int    `json:"total"`
	Events   int    `json:"events"`
	Version  string `json:"version"`
	Resumed  bool   `json:"resumed"`
	Restored bool   `json:"restored"`
}

// buildGRPCCounter builds testdata/plugins/grpc-counter into a test
// directory and returns its path.
func buildGRPCCounter(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "grpc-counter")
	out, err := exec.Command("go", "build", "-o", bin, "./testdata/plugins/grpc-counter").CombinedOutput()
	require.NoError(t, err, "go build ./testdata/plugins/grpc-counter:\n%s", out)
	return bin
}

// inProcPlugin is an in-process sdk plugin served over gRPC by the tests:
// "echo" echoes, "fail" fails (retryably when N is 1), "block" signals
// started and waits for ctx, reporting how its ctx ended on ended.
type inProcPlugin struct {
	started chan struct{}
	ended   chan handlerEnd
	health  error
}

// handlerEnd is how a blocked handler's ctx ended.
type handlerEnd struct {
	err         error
	deadline    time.Time
	hasDeadline bool
}

func newInProcPlugin() *inProcPlugin {
	return &inProcPlugin{started: make(chan struct{}, 1), ended: make(chan handlerEnd, 1)}
}

func (p *inProcPlugin) Execute(ctx context.Context, r counterReq) (counterResp, error) {
	switch r.Op {
	case "fail":
		return counterResp{}, sdk.Errorf("overloaded", r.N == 1, "failing: %s", r.Text)
	case "block":
		p.started <- struct{}{}
		<-ctx.Done()
		d, ok := ctx.Deadline()
		p.ended <- handlerEnd{err: ctx.Err(), deadline: d, hasDeadline: ok}
		return counterResp{}, ctx.Err()
	}
	return counterResp{Text: r.Text, Version: "1.0.0"}, nil
}

func (p *inProcPlugin) Health(context.Context) error { return p.health }

// grpcServer is an in-process plugin service on a real listener.
type grpcServer struct {
	addr   string // the host's target
	lis    net.Listener
	cancel context.CancelFunc
	done   chan error
}

// serveGRPC serves p on lis until stop is called (also at cleanup).
func serveGRPC(t *testing.T, lis net.Listener, target string, p sdk.Plugin[counterReq, counterResp], opts ...grpcplugin.Option) *grpcServer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &grpcServer{addr: target, lis: lis, cancel: cancel, done: make(chan error, 1)}
	go func() {
		s.done <- grpcplugin.ServeListener(ctx, lis, p, sdk.Info{Name: "counter", Version: "1.0.0", Metadata: map[string]string{"where": "in-process"}}, opts...)
	}()
	t.Cleanup(func() { s.stop(t) })
	return s
}

// stop stops the server and waits until it has returned.
func (s *grpcServer) stop(t *testing.T) {
	t.Helper()
	s.cancel()
	if s.done != nil {
		require.NoError(t, <-s.done)
		s.done = nil
	}
}

func tcpListener(t *testing.T) (net.Listener, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	return lis, lis.Addr().String()
}

func unixListener(t *testing.T) (net.Listener, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "gpt-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "s.sock")
	lis, err := net.Listen("unix", path)
	require.NoError(t, err)
	return lis, "unix://" + path
}

func newRemote(t *testing.T, cfg GRPCConfig) *grpcPlugin[counterReq, counterResp] {
	t.Helper()
	p, err := newGRPCPlugin[counterReq, counterResp](context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, p.Close(context.Background())) })
	return p
}

func TestGRPCExecute(t *testing.T) {
	verifyNoLeaks(t)
	bin := buildGRPCCounter(t)
	cases := []struct {
		name string
		cfg  func(t *testing.T) GRPCConfig
	}{
		{"tcp loopback endpoint", func(t *testing.T) GRPCConfig {
			lis, addr := tcpListener(t)
			serveGRPC(t, lis, addr, newInProcPlugin())
			return GRPCConfig{Name: "counter", Endpoint: addr}
		}},
		{"unix socket endpoint", func(t *testing.T) GRPCConfig {
			lis, addr := unixListener(t)
			serveGRPC(t, lis, addr, newInProcPlugin())
			return GRPCConfig{Name: "counter", Endpoint: addr}
		}},
		{"child process", func(*testing.T) GRPCConfig {
			return GRPCConfig{Name: "counter", Version: "1.0.0", Command: bin}
		}},
		{"child process with automatic mTLS", func(*testing.T) GRPCConfig {
			return GRPCConfig{Name: "counter", Command: bin, AutoMTLS: true}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := newRemote(t, tc.cfg(t))
			info := p.Info()
			assert.Equal(t, "counter", info.Name)
			assert.Equal(t, "1.0.0", info.Version)

			resp, err := p.Execute(context.Background(), counterReq{Op: "echo", Text: "hello"})
			require.NoError(t, err)
			assert.Equal(t, "hello", resp.Text)
			assert.Equal(t, "1.0.0", resp.Version)

			_, err = p.Execute(context.Background(), counterReq{Op: "fail", Text: "no", N: 1})
			require.ErrorIs(t, err, ErrRemote)
			assert.True(t, IsRetryable(err), "the plugin flagged the error retryable: %v", err)
			assert.Contains(t, err.Error(), "overloaded")
			assert.Contains(t, err.Error(), `"counter"`)

			_, err = p.Execute(context.Background(), counterReq{Op: "fail", Text: "no"})
			require.ErrorIs(t, err, ErrRemote)
			assert.False(t, IsRetryable(err), "the plugin did not flag the error retryable: %v", err)

			require.NoError(t, p.Health(context.Background()))
		})
	}
}

func TestGRPCDeadlineAndCancellation(t *testing.T) {
	verifyNoLeaks(t)
	plugin := newInProcPlugin()
	lis, addr := unixListener(t)
	serveGRPC(t, lis, addr, plugin)
	p := newRemote(t, GRPCConfig{Name: "counter", Endpoint: addr})

	t.Run("deadline", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		want, _ := ctx.Deadline()
		_, err := p.Execute(ctx, counterReq{Op: "block"})
		require.ErrorIs(t, err, context.DeadlineExceeded)
		<-plugin.started
		end := <-plugin.ended
		require.Error(t, end.err, "the handler's ctx ended")
		require.True(t, end.hasDeadline, "the caller's deadline reached the plugin's handler")
		assert.WithinDuration(t, want, end.deadline, 100*time.Millisecond)
	})
	t.Run("cancellation", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() {
			_, err := p.Execute(ctx, counterReq{Op: "block"})
			errc <- err
		}()
		<-plugin.started
		cancel()
		require.ErrorIs(t, <-errc, context.Canceled)
		end := <-plugin.ended
		assert.ErrorIs(t, end.err, context.Canceled, "the cancellation reached the plugin's handler")
		assert.False(t, end.hasDeadline)
	})
}

func TestGRPCHealthService(t *testing.T) {
	verifyNoLeaks(t)
	plugin := newInProcPlugin()
	lis, addr := tcpListener(t)
	serveGRPC(t, lis, addr, plugin)

	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	for _, svc := range []string{"", pluginpb.ServiceName} {
		r, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{Service: svc})
		require.NoError(t, err)
		assert.Equal(t, healthpb.HealthCheckResponse_SERVING, r.Status, "service %q", svc)
	}

	p := newRemote(t, GRPCConfig{Name: "counter", Endpoint: addr})
	require.NoError(t, p.Health(context.Background()))

	plugin.health = errors.New("database down")
	r, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{Service: pluginpb.ServiceName})
	require.NoError(t, err)
	assert.Equal(t, healthpb.HealthCheckResponse_NOT_SERVING, r.Status)
	require.ErrorIs(t, p.Health(context.Background()), ErrUnhealthy)
}

// testPKI is a CA with a server and a client certificate, written as PEM
// files, plus an unrelated CA.
type testPKI struct {
	caFile, otherCAFile             string
	serverCert, serverKey           string
	clientCert, clientKey           string
	otherClientCert, otherClientKey string
}

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	dir := t.TempDir()
	write := func(name, typ string, der []byte) string {
		path := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600))
		return path
	}
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		require.NoError(t, err)
		return k
	}
	serial := int64(1)
	issue := func(tmpl *x509.Certificate, key *ecdsa.PrivateKey, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) *x509.Certificate {
		serial++
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.NotBefore = time.Now().Add(-time.Hour)
		tmpl.NotAfter = time.Now().Add(time.Hour)
		if parent == nil {
			parent, parentKey = tmpl, key
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
		require.NoError(t, err)
		c, err := x509.ParseCertificate(der)
		require.NoError(t, err)
		return c
	}
	keyFile := func(name string, k *ecdsa.PrivateKey) string {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		require.NoError(t, err)
		return write(name, "PRIVATE KEY", der)
	}
	newCA := func(cn string) (*x509.Certificate, *ecdsa.PrivateKey) {
		k := newKey()
		return issue(&x509.Certificate{Subject: pkix.Name{CommonName: cn}, IsCA: true, BasicConstraintsValid: true,
			KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}, k, nil, nil), k
	}
	leaf := func(cn string, usage x509.ExtKeyUsage, ca *x509.Certificate, caKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
		k := newKey()
		return issue(&x509.Certificate{Subject: pkix.Name{CommonName: cn}, DNSNames: []string{"localhost"},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{usage}}, k, ca, caKey), k
	}
	ca, caKey := newCA("test CA")
	other, otherKey := newCA("other CA")
	srv, srvKey := leaf("server", x509.ExtKeyUsageServerAuth, ca, caKey)
	cli, cliKey := leaf("client", x509.ExtKeyUsageClientAuth, ca, caKey)
	ocli, ocliKey := leaf("intruder", x509.ExtKeyUsageClientAuth, other, otherKey)
	return testPKI{
		caFile:          write("ca.pem", "CERTIFICATE", ca.Raw),
		otherCAFile:     write("other-ca.pem", "CERTIFICATE", other.Raw),
		serverCert:      write("server.pem", "CERTIFICATE", srv.Raw),
		serverKey:       keyFile("server-key.pem", srvKey),
		clientCert:      write("client.pem", "CERTIFICATE", cli.Raw),
		clientKey:       keyFile("client-key.pem", cliKey),
		otherClientCert: write("intruder.pem", "CERTIFICATE", ocli.Raw),
		otherClientKey:  keyFile("intruder-key.pem", ocliKey),
	}
}

func TestGRPCTLS(t *testing.T) {
	verifyNoLeaks(t)
	pki := newTestPKI(t)
	cases := []struct {
		name      string
		clientCA  string // server side: "" for TLS, else mTLS
		files     *TLSFiles
		wantError bool
	}{
		{"TLS", "", &TLSFiles{CAFile: pki.caFile}, false},
		{"TLS with the server name overridden", "", &TLSFiles{CAFile: pki.caFile, ServerName: "localhost"}, false},
		{"TLS with the wrong CA", "", &TLSFiles{CAFile: pki.otherCAFile}, true},
		{"mTLS", pki.caFile, &TLSFiles{CAFile: pki.caFile, CertFile: pki.clientCert, KeyFile: pki.clientKey}, false},
		{"mTLS without a client certificate", pki.caFile, &TLSFiles{CAFile: pki.caFile}, true},
		{"mTLS with a client certificate of another CA", pki.caFile, &TLSFiles{CAFile: pki.caFile, CertFile: pki.otherClientCert, KeyFile: pki.otherClientKey}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			lis, addr := tcpListener(t)
			serveGRPC(t, lis, addr, newInProcPlugin(), grpcplugin.WithTLS(pki.serverCert, pki.serverKey, tc.clientCA))
			p, err := newGRPCPlugin[counterReq, counterResp](context.Background(), GRPCConfig{Name: "counter", Endpoint: addr, TLS: tc.files})
			if tc.wantError {
				require.ErrorIs(t, err, ErrTransport)
				assert.Nil(t, p)
				return
			}
			require.NoError(t, err)
			defer p.Close(context.Background())
			resp, err := p.Execute(context.Background(), counterReq{Op: "echo", Text: "secret"})
			require.NoError(t, err)
			assert.Equal(t, "secret", resp.Text)
		})
	}

	t.Run("plaintext client refused", func(t *testing.T) {
		lis, addr := tcpListener(t)
		serveGRPC(t, lis, addr, newInProcPlugin(), grpcplugin.WithTLS(pki.serverCert, pki.serverKey, ""))
		_, err := newGRPCPlugin[counterReq, counterResp](context.Background(), GRPCConfig{Name: "counter", Endpoint: addr})
		require.ErrorIs(t, err, ErrTransport)
	})
}

func TestGRPCRemoteReconnect(t *testing.T) {
	verifyNoLeaks(t)
	lis, addr := tcpListener(t)
	srv := serveGRPC(t, lis, addr, newInProcPlugin())
	fastRetry := grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 10 * time.Millisecond, Multiplier: 1.2, MaxDelay: 50 * time.Millisecond}})
	p := newRemote(t, GRPCConfig{Name: "counter", Endpoint: addr, DialOptions: []grpc.DialOption{fastRetry}})
	_, err := p.Execute(context.Background(), counterReq{Op: "echo"})
	require.NoError(t, err)

	srv.stop(t)
	_, err = p.Execute(context.Background(), counterReq{Op: "echo"})
	require.ErrorIs(t, err, ErrTransport, "the endpoint is down")
	assert.True(t, IsRetryable(err), "an unreachable endpoint is retryable: %v", err)
	assert.Contains(t, err.Error(), `"counter"`)

	lis2, err := net.Listen("tcp", addr)
	require.NoError(t, err)
	serveGRPC(t, lis2, addr, newInProcPlugin())
	// grpc-go reconnects on its own backoff; no event tells when, so poll
	// with a deadline.
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := p.Execute(context.Background(), counterReq{Op: "echo", Text: "back"})
		if err == nil {
			assert.Equal(t, "back", resp.Text)
			break
		}
		require.ErrorIs(t, err, ErrTransport)
		require.True(t, time.Now().Before(deadline), "no reconnect within 10s: %v", err)
		time.Sleep(10 * time.Millisecond)
	}
}

func TestGRPCChildLifecycle(t *testing.T) {
	verifyNoLeaks(t)
	bin := buildGRPCCounter(t)
	ctx := context.Background()

	t.Run("close stops the child and removes its socket", func(t *testing.T) {
		fds := grpcOpenFDs(t)
		var logs syncBuffer
		logger := slog.New(slog.NewTextHandler(&logs, nil))
		p, err := newGRPCPlugin[counterReq, counterResp](ctx, GRPCConfig{Name: "counter", Command: bin, AutoMTLS: true, Logger: logger})
		require.NoError(t, err)
		child := grpcChildOf(t, p)
		dir, pid := child.dir, child.proc.Pid()
		fi, err := os.Stat(dir)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o700), fi.Mode().Perm(), "the socket directory is private")
		assert.Less(t, len(filepath.Join(dir, "plugin.sock")), 108)

		// The socket speaks mTLS only: a plaintext client is refused.
		conn, err := grpc.NewClient("unix://"+filepath.Join(dir, "plugin.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
		require.NoError(t, err)
		_, err = pluginpb.NewPluginClient(conn).Info(ctx, &pluginpb.InfoRequest{})
		require.Error(t, err)
		conn.Close()

		require.NoError(t, p.Close(ctx))
		_, err = os.Stat(dir)
		assert.True(t, os.IsNotExist(err), "socket directory %s still exists", dir)
		_, err = os.Stat(filepath.Join("/proc", strconv.Itoa(pid)))
		assert.True(t, os.IsNotExist(err), "plugin process %d still exists", pid)
		assert.Equal(t, 0, child.proc.State().ExitCode(), "the child exited gracefully after Shutdown")
		assert.Contains(t, logs.String(), `msg="grpc-counter 1.0.0 starting" plugin=counter stream=stderr`, "the child's stderr reaches the logger")
		assert.Contains(t, logs.String(), `level=WARN msg="grpc-counter is a test plugin" plugin=counter version=1.0.0 stream=stderr`, "a JSON log line keeps its level")

		_, err = p.Execute(ctx, counterReq{Op: "echo"})
		require.ErrorIs(t, err, ErrClosed)
		require.NoError(t, p.Close(ctx), "Close is idempotent")
		// grpc-go closes a client's connections on goroutines of its own:
		// a leak stays, a closing descriptor goes within moments.
		assert.Eventually(t, func() bool { return grpcOpenFDs(t) <= fds }, 5*time.Second, 10*time.Millisecond,
			"descriptors open after Close: %d, before: %d", grpcOpenFDs(t), fds)
	})

	errorCases := []struct {
		name string
		cfg  GRPCConfig
		want error
	}{
		{"exits at start", GRPCConfig{Name: "counter", Command: bin, Args: []string{"-exit-at-start"}}, ErrHandshake},
		{"wrong name", GRPCConfig{Name: "other", Command: bin}, ErrInvalidPlugin},
		{"wrong version", GRPCConfig{Name: "counter", Version: "2.0.0", Command: bin}, ErrIncompatibleVersion},
		{"codec the plugin lacks", GRPCConfig{Name: "counter", Command: bin, Codec: upperJSON{}}, ErrInvalidConfig},
		{"checksum mismatch", GRPCConfig{Name: "counter", Command: bin, Checksum: "sha256:" + strings.Repeat("00", 32)}, ErrChecksumMismatch},
		{"not a plugin", GRPCConfig{Name: "counter", Command: "/bin/true"}, ErrHandshake},
		{"never serves", GRPCConfig{Name: "counter", Command: "/bin/sleep", Args: []string{"60"}, StartTimeout: 200 * time.Millisecond}, ErrHandshake},
		{"both command and endpoint", GRPCConfig{Name: "counter", Command: bin, Endpoint: "localhost:1"}, ErrInvalidConfig},
		{"neither command nor endpoint", GRPCConfig{Name: "counter"}, ErrInvalidConfig},
		{"TLS files for a child", GRPCConfig{Name: "counter", Command: bin, TLS: &TLSFiles{}}, ErrInvalidConfig},
		{"automatic mTLS for an endpoint", GRPCConfig{Name: "counter", Endpoint: "localhost:1", AutoMTLS: true}, ErrInvalidConfig},
		{"invalid name", GRPCConfig{Name: "Counter", Command: bin}, ErrInvalidConfig},
		// grpc.NewClient refuses per-RPC credentials that need transport
		// security on the plaintext socket of a child without AutoMTLS.
		{"dial options the client refuses", GRPCConfig{Name: "counter", Command: bin, DialOptions: []grpc.DialOption{grpc.WithPerRPCCredentials(secureOnlyCreds{})}}, ErrInvalidConfig},
	}
	for _, tc := range errorCases {
		t.Run(tc.name, func(t *testing.T) {
			before, children := gpSocketDirs(t), grpcChildPids(t)
			p, err := newGRPCPlugin[counterReq, counterResp](ctx, tc.cfg)
			require.ErrorIs(t, err, tc.want)
			assert.Nil(t, p)
			assert.Equal(t, before, gpSocketDirs(t), "a failed start leaves no socket directory")
			assert.Equal(t, children, grpcChildPids(t), "a failed start leaves no child process")
		})
	}
}

// secureOnlyCreds are per-RPC credentials that require transport security.
type secureOnlyCreds struct{}

func (secureOnlyCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer test"}, nil
}

func (secureOnlyCreds) RequireTransportSecurity() bool { return true }

// grpcChildOf returns the child p is connected to now.
func grpcChildOf(t *testing.T, p *grpcPlugin[counterReq, counterResp]) *grpcChild {
	t.Helper()
	l := p.link.Load()
	require.NotNil(t, l, "the plugin is down")
	require.NotNil(t, l.child, "the plugin is not a child process")
	return l.child
}

// childEnvVar returns the value of key in the environment of process pid.
func childEnvVar(t *testing.T, pid int, key string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "environ"))
	require.NoError(t, err)
	var v string
	found := false
	for _, kv := range strings.Split(string(b), "\x00") {
		if v, found = strings.CutPrefix(kv, key+"="); found {
			break
		}
	}
	require.True(t, found, "process %d has no %s in its environment", pid, key)
	return v
}

func TestGRPCChildCrashAndRestart(t *testing.T) {
	verifyNoLeaks(t)
	bin := buildGRPCCounter(t)
	ctx := context.Background()
	children, dirs := grpcChildPids(t), gpSocketDirs(t)
	restarted := make(chan error, 10)
	p, err := newGRPCPlugin[counterReq, counterResp](ctx, GRPCConfig{
		Name: "counter", Command: bin, AutoMTLS: true,
		Restart:   RestartPolicy{MaxAttempts: 3, Backoff: 10 * time.Millisecond},
		OnRestart: func(_ string, _ int, err error) { restarted <- err },
	})
	require.NoError(t, err)
	old := grpcChildOf(t, p)
	oldCert := childEnvVar(t, old.proc.Pid(), pluginpb.EnvServerCert)
	_, err = p.Execute(ctx, counterReq{Op: "add", N: 5})
	require.NoError(t, err)

	_, err = p.Execute(ctx, counterReq{Op: "exit"})
	require.ErrorIs(t, err, ErrCrashed, "a call in flight when the child exits")
	assert.Contains(t, err.Error(), "exit status 3", "the crash error carries the exit status")
	var ge *goerrors.Error
	require.ErrorAs(t, err, &ge)
	assert.Contains(t, ge.Context["stderr_tail"], "grpc-counter 1.0.0 starting", "the crash error carries the stderr tail in its context")
	assert.NotContains(t, err.Error(), "grpc-counter 1.0.0 starting", "the stderr tail is not in the message")
	assert.False(t, IsRetryable(err), "a call in flight during a crash may have had effects: not retryable")

	require.NoError(t, <-restarted, "the first restart attempt")
	resp, err := p.Execute(ctx, counterReq{Op: "add", N: 1, Text: "after restart"})
	require.NoError(t, err)
	assert.Equal(t, "after restart", resp.Text)
	assert.Equal(t, 1, resp.Total, "the new process starts from zero")
	require.NoError(t, p.Health(ctx))
	assert.Equal(t, 1, p.restartCount())

	cur := grpcChildOf(t, p)
	assert.NotEqual(t, old.proc.Pid(), cur.proc.Pid(), "a new process")
	assert.NotEqual(t, old.dir, cur.dir, "a new socket directory")
	assert.NotEqual(t, oldCert, childEnvVar(t, cur.proc.Pid(), pluginpb.EnvServerCert), "new key material")
	_, err = os.Stat(old.dir)
	assert.True(t, os.IsNotExist(err), "the crashed child's socket directory %s is removed", old.dir)
	_, err = os.Stat(filepath.Join("/proc", strconv.Itoa(old.proc.Pid())))
	assert.True(t, os.IsNotExist(err), "the crashed child %d is reaped", old.proc.Pid())

	require.NoError(t, p.Close(ctx))
	assert.Equal(t, children, grpcChildPids(t), "no child left")
	assert.Equal(t, dirs, gpSocketDirs(t), "no socket directory left")
}

func TestGRPCChildDownFailsFast(t *testing.T) {
	verifyNoLeaks(t)
	bin := buildGRPCCounter(t)
	ctx := context.Background()
	tests := []struct {
		name      string
		policy    RestartPolicy
		retryable bool
	}{
		{"restart pending", RestartPolicy{MaxAttempts: 1, Backoff: time.Hour}, true},
		{"restarts disabled", RestartPolicy{MaxAttempts: -1}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			children, dirs := grpcChildPids(t), gpSocketDirs(t)
			p, err := newGRPCPlugin[counterReq, counterResp](ctx, GRPCConfig{Name: "counter", Command: bin, Restart: tt.policy})
			require.NoError(t, err)
			_, err = p.Execute(ctx, counterReq{Op: "exit"})
			require.ErrorIs(t, err, ErrCrashed)
			// The crash was confirmed, so the child is down now.
			_, err = p.Execute(ctx, counterReq{Op: "echo"})
			require.ErrorIs(t, err, ErrCrashed)
			assert.Equal(t, tt.retryable, IsRetryable(err), "Execute while down: %v", err)
			err = p.Health(ctx)
			require.ErrorIs(t, err, ErrCrashed, "Health while down")
			assert.Equal(t, tt.retryable, IsRetryable(err), "Health while down: %v", err)
			require.NoError(t, p.Close(ctx), "Close while down (a restart pending or not)")
			_, err = p.Execute(ctx, counterReq{Op: "echo"})
			require.ErrorIs(t, err, ErrClosed)
			assert.Equal(t, 0, p.restartCount())
			assert.Equal(t, children, grpcChildPids(t), "no child left")
			assert.Equal(t, dirs, gpSocketDirs(t), "no socket directory left")
		})
	}
}

// TestGRPCCloseDuringRestart closes the plugin while a restarted child is
// starting and never comes to serve.
func TestGRPCCloseDuringRestart(t *testing.T) {
	verifyNoLeaks(t)
	bin := buildGRPCCounter(t)
	ctx := context.Background()
	dir := t.TempDir()
	first, second := filepath.Join(dir, "first"), filepath.Join(dir, "second")
	// The first run is the plugin; later runs hang before serving.
	script := filepath.Join(dir, "plugin.sh")
	require.NoError(t, os.WriteFile(script, []byte("#!/bin/sh\n"+
		"if [ -e "+first+" ]; then : > "+second+"; exec /bin/sleep 60; fi\n"+
		": > "+first+"\nexec "+bin+"\n"), 0o755))
	children, dirs := grpcChildPids(t), gpSocketDirs(t)
	restarted := make(chan error, 10)
	p, err := newGRPCPlugin[counterReq, counterResp](ctx, GRPCConfig{
		Name: "counter", Command: script, StartTimeout: time.Minute,
		Restart:   RestartPolicy{Backoff: time.Millisecond},
		OnRestart: func(_ string, _ int, err error) { restarted <- err },
	})
	require.NoError(t, err)
	_, err = p.Execute(ctx, counterReq{Op: "exit"})
	require.ErrorIs(t, err, ErrCrashed)
	// The hanging child announces itself with a file; no event exists.
	deadline := time.Now().Add(10 * time.Second)
	for _, err := os.Stat(second); err != nil; _, err = os.Stat(second) {
		require.True(t, time.Now().Before(deadline), "the restart did not start the second child within 10s")
		time.Sleep(5 * time.Millisecond)
	}
	err = p.Health(ctx)
	require.ErrorIs(t, err, ErrCrashed, "Health while the restart is under way")
	assert.True(t, IsRetryable(err))

	require.NoError(t, p.Close(ctx))
	require.ErrorIs(t, <-restarted, ErrHandshake, "Close abandons the restart under way")
	assert.Equal(t, children, grpcChildPids(t), "the starting child is stopped")
	assert.Equal(t, dirs, gpSocketDirs(t), "no socket directory left")
}

// gpSocketDirs lists the socket directories of gRPC children.
func gpSocketDirs(t *testing.T) []string {
	t.Helper()
	dirs, err := filepath.Glob(filepath.Join(socketTempDir(), "gp-*"))
	require.NoError(t, err)
	return dirs
}

// grpcChildPids lists the test process's child processes.
func grpcChildPids(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("/proc/self/task/*/children")
	require.NoError(t, err)
	var pids []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // the thread ended
		}
		pids = append(pids, strings.Fields(string(b))...)
	}
	slices.Sort(pids)
	return pids
}

// upperJSON is a codec the test plugins do not have.
type upperJSON struct{}

func (upperJSON) Name() string                       { return "upper-json" }
func (upperJSON) Marshal(v any) ([]byte, error)      { return JSONCodec{}.Marshal(v) }
func (upperJSON) Unmarshal(data []byte, v any) error { return JSONCodec{}.Unmarshal(data, v) }

func TestGRPCReloadHandsStateOver(t *testing.T) {
	verifyNoLeaks(t)
	bin := buildGRPCCounter(t)
	ctx := context.Background()
	m := NewManager[counterReq, counterResp]()
	defer m.Shutdown(ctx)

	v1, err := newGRPCPlugin[counterReq, counterResp](ctx, GRPCConfig{Name: "counter", Command: bin, Args: []string{"-version", "1.0.0"}, AutoMTLS: true})
	require.NoError(t, err)
	assert.ElementsMatch(t, []Surface{SurfaceState, SurfaceStream}, v1.Info().Surfaces)
	require.NoError(t, m.Register(v1))
	for _, n := range []int{5, 7, 30} {
		_, err := m.Execute(ctx, "counter", counterReq{Op: "add", N: n})
		require.NoError(t, err)
	}

	v2, err := newGRPCPlugin[counterReq, counterResp](ctx, GRPCConfig{Name: "counter", Command: bin, Args: []string{"-version", "2.0.0"}, AutoMTLS: true})
	require.NoError(t, err)
	oldChild := grpcChildOf(t, v1)
	oldDir, oldPid := oldChild.dir, oldChild.proc.Pid()
	report, err := m.Reload(ctx, "counter", v2)
	require.NoError(t, err)
	assert.Equal(t, "1.0.0", report.From)
	assert.Equal(t, "2.0.0", report.To)
	assert.Equal(t, []byte("42"), report.Handed[SurfaceState])
	assert.Equal(t, []byte("3"), report.Handed[SurfaceStream])
	require.NoError(t, report.CloseErr)

	resp, err := m.Execute(ctx, "counter", counterReq{Op: "add", N: 8})
	require.NoError(t, err)
	assert.Equal(t, "2.0.0", resp.Version)
	assert.True(t, resp.Restored)
	assert.True(t, resp.Resumed)
	assert.Equal(t, 50, resp.Total, "v2 continues from v1's state")
	assert.Equal(t, 4, resp.Events, "v2 resumes from v1's checkpoint")

	_, err = os.Stat(oldDir)
	assert.True(t, os.IsNotExist(err), "v1's socket directory is removed")
	_, err = os.Stat(filepath.Join("/proc", strconv.Itoa(oldPid)))
	assert.True(t, os.IsNotExist(err), "v1's process %d is gone", oldPid)
	require.NoError(t, m.Shutdown(ctx))
}

func TestGRPCProtoCodec(t *testing.T) {
	verifyNoLeaks(t)
	lis, target := unixListener(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- grpcplugin.ServeListener[*wrapperspb.BytesValue, *wrapperspb.BytesValue](ctx, lis, benchEcho{}, sdk.Info{Name: "echo", Version: "1.0.0"})
	}()
	defer func() { cancel(); require.NoError(t, <-done) }()

	p, err := newGRPCPlugin[*wrapperspb.BytesValue, *wrapperspb.BytesValue](context.Background(), GRPCConfig{Name: "echo", Endpoint: target})
	require.NoError(t, err)
	defer p.Close(context.Background())
	assert.Equal(t, "proto", p.codec, "protobuf message types choose the proto codec")
	resp, err := p.Execute(context.Background(), wrapperspb.Bytes([]byte{0, 1, 2, 255}))
	require.NoError(t, err)
	assert.Equal(t, []byte{0, 1, 2, 255}, resp.Value)

	_, err = newGRPCPlugin[*wrapperspb.BytesValue, *wrapperspb.BytesValue](context.Background(), GRPCConfig{Name: "echo", Endpoint: target, Codec: JSONCodec{}})
	require.ErrorIs(t, err, ErrInvalidConfig, "the plugin accepts only proto; a JSON host is refused before any call")
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// grpcOpenFDs counts the test process's open descriptors.
func grpcOpenFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd on this system")
	}
	return len(ents)
}

// schemaPlugin is an in-process plugin with the schema surface only: it
// takes over from 1.x versions.
type schemaPlugin struct{ *inProcPlugin }

func (schemaPlugin) CheckCompat(_ context.Context, old sdk.Info) error {
	if !strings.HasPrefix(old.Version, "1.") || old.Name != "counter" {
		return sdk.Errorf("schema_mismatch", false, "cannot take over from %s %s", old.Name, old.Version)
	}
	return nil
}

func TestGRPCSurfacesForwarded(t *testing.T) {
	verifyNoLeaks(t)
	lis, addr := unixListener(t)
	serveGRPC(t, lis, addr, schemaPlugin{newInProcPlugin()})
	p := newRemote(t, GRPCConfig{Name: "counter", Endpoint: addr})
	ctx := context.Background()
	assert.Equal(t, []Surface{SurfaceSchema}, p.Info().Surfaces)
	assert.Equal(t, map[string]string{"where": "in-process"}, p.Info().Metadata)

	require.NoError(t, p.CheckCompat(ctx, PluginInfo{Name: "counter", Version: "1.3.0"}))
	err := p.CheckCompat(ctx, PluginInfo{Name: "counter", Version: "0.9.0"})
	require.ErrorIs(t, err, ErrRemote)
	assert.Contains(t, err.Error(), "schema_mismatch")
	assert.Contains(t, err.Error(), "0.9.0", "the old info reached the plugin")

	_, err = p.PersistState(ctx)
	require.ErrorIs(t, err, ErrRemote, "a surface the plugin lacks")
	assert.Contains(t, err.Error(), "unsupported")
	require.ErrorIs(t, p.Resume(ctx, []byte("1")), ErrRemote)
}

func TestGRPCFactoryRestartPolicy(t *testing.T) {
	verifyNoLeaks(t)
	bin := buildGRPCCounter(t)
	ctx := context.Background()
	base := GRPCConfig{Restart: RestartPolicy{MaxAttempts: 9, Backoff: time.Second, MaxBackoff: time.Minute}}
	tests := []struct {
		name    string
		restart RestartPolicy
		want    RestartPolicy
	}{
		{"manifest overrides", RestartPolicy{MaxAttempts: 2, Backoff: 7 * time.Millisecond, MaxBackoff: 70 * time.Millisecond, MinUptime: time.Hour},
			RestartPolicy{MaxAttempts: 2, Backoff: 7 * time.Millisecond, MaxBackoff: 70 * time.Millisecond, MinUptime: time.Hour}},
		{"base fills the gaps", RestartPolicy{MaxAttempts: -1}, RestartPolicy{MaxAttempts: -1, Backoff: time.Second, MaxBackoff: time.Minute}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &Manifest{Name: "counter", Version: "1.0.0", Transport: "grpc", Command: bin, Dir: filepath.Dir(bin), Restart: tt.restart}
			p, err := GRPCFactory[counterReq, counterResp](base)(ctx, m)
			require.NoError(t, err)
			defer p.Close(ctx)
			assert.Equal(t, tt.want, p.(*grpcPlugin[counterReq, counterResp]).cfg.Restart)
		})
	}
}

// TestGRPCRestartUnderConcurrentCalls: calls made while the child crashes
// and is replaced fail only with ErrCrashed, and succeed again on the new
// child; the connection swap is race-free (run with -race).
func TestGRPCRestartUnderConcurrentCalls(t *testing.T) {
	verifyNoLeaks(t)
	bin := buildGRPCCounter(t)
	ctx := context.Background()
	restarted := make(chan error, 10)
	p, err := newGRPCPlugin[counterReq, counterResp](ctx, GRPCConfig{
		Name: "counter", Command: bin,
		Restart:   RestartPolicy{Backoff: time.Millisecond},
		OnRestart: func(_ string, _ int, err error) { restarted <- err },
	})
	require.NoError(t, err)
	defer p.Close(ctx)

	stop := make(chan struct{})
	errs := make(chan error, 4)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					errs <- nil
					return
				default:
				}
				if _, err := p.Execute(ctx, counterReq{Op: "echo", Text: "x"}); err != nil && !errors.Is(err, ErrCrashed) {
					errs <- err
					return
				}
			}
		}()
	}
	_, err = p.Execute(ctx, counterReq{Op: "exit"})
	require.ErrorIs(t, err, ErrCrashed)
	require.NoError(t, <-restarted)
	_, err = p.Execute(ctx, counterReq{Op: "echo"})
	require.NoError(t, err, "a call on the restarted child")
	close(stop)
	wg.Wait()
	for range 4 {
		require.NoError(t, <-errs, "a concurrent call failed with something other than ErrCrashed")
	}
}

// TestGRPCCloseFinishesCallsInFlight closes a child while a call is in
// flight in it: the child finishes the call gracefully, and its caller
// gets the answer instead of a cancellation.
func TestGRPCCloseFinishesCallsInFlight(t *testing.T) {
	verifyNoLeaks(t)
	bin := buildGRPCCounter(t)
	ctx := context.Background()
	children, dirs := grpcChildPids(t), gpSocketDirs(t)
	sent := &requestSent{method: "/" + pluginpb.ServiceName + "/Execute", ch: make(chan struct{}, 1)}
	p, err := newGRPCPlugin[counterReq, counterResp](ctx, GRPCConfig{
		Name: "counter", Command: bin, AutoMTLS: true,
		DialOptions: []grpc.DialOption{grpc.WithStatsHandler(sent)},
	})
	require.NoError(t, err)

	type result struct {
		resp counterResp
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := p.Execute(ctx, counterReq{Op: "sleep", N: 300, Text: "finished"})
		done <- result{resp, err}
	}()
	// The request is on the connection before the Shutdown RPC, so the
	// child has the call when it starts its graceful stop.
	<-sent.ch
	require.NoError(t, p.Close(ctx))
	r := <-done
	require.NoError(t, r.err, "the call the child finished gracefully")
	assert.Equal(t, "finished", r.resp.Text)
	assert.Equal(t, children, grpcChildPids(t), "no child left")
	assert.Equal(t, dirs, gpSocketDirs(t), "no socket directory left")
}

// requestSent is a client stats handler that signals on ch when the
// request message of a call to method has been written to the connection.
type requestSent struct {
	method string
	ch     chan struct{}
}

type rpcMethodKey struct{}

func (h *requestSent) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	return context.WithValue(ctx, rpcMethodKey{}, info.FullMethodName)
}

func (h *requestSent) HandleRPC(ctx context.Context, s stats.RPCStats) {
	if _, ok := s.(*stats.OutPayload); ok && ctx.Value(rpcMethodKey{}) == h.method {
		select {
		case h.ch <- struct{}{}:
		default:
		}
	}
}

func (h *requestSent) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }

func (h *requestSent) HandleConn(context.Context, stats.ConnStats) {}
