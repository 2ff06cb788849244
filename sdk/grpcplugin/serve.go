// Package grpcplugin is the plugin side of the goplugins gRPC transport: a
// Go program serves an sdk.Plugin as the goplugins.plugin.v1.Plugin gRPC
// service (proto/goplugins/plugin/v1/plugin.proto) together with the
// standard grpc.health.v1 health service.
//
// Serve is for a plugin binary that a goplugins host starts as a child
// (GRPCConfig.Command): it listens on the unix socket the host chose, with
// the host's automatic mTLS material when the host asks for it, and stops
// when the host says so. ListenAndServe is for a plugin deployed as a
// remote service (GRPCConfig.Endpoint), e.g. replicas behind a gRPC-aware
// load balancer; see docs/GRPC.md.
//
// Handlers are the sdk package's: sdk.Plugin, with the optional
// sdk.HealthChecker, sdk.StatefulPlugin, sdk.StreamPlugin and
// sdk.SchemaPlugin, and errors as *sdk.Error. The package is separate from
// sdk so that plugins that do not speak gRPC do not link it.
//
// A plugin calls the host's functions with CallHost, from a handler's ctx
// or from background work (WithBackground), over a stream the host opens:
// the plugin never dials its host. Metadata returns the pairs the host
// attached to a request.
package grpcplugin

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/goplugins/goplugins/internal/pluginpb"
	"github.com/goplugins/goplugins/sdk"
)

// ErrNotLaunched is returned by Serve when the program was not started by
// a goplugins host. Use ListenAndServe to run a plugin as a service.
var ErrNotLaunched = errors.New("grpcplugin: this program is a goplugins gRPC plugin started by a goplugins host; to run it on its own, serve it with grpcplugin.ListenAndServe")

// Option configures Serve and ListenAndServe.
type Option func(*config)

type config struct {
	codecs     []sdk.Codec
	tls        *tlsFiles
	serverOpts []grpc.ServerOption
	background []func(context.Context)
}

type tlsFiles struct{ cert, key, clientCA string }

// WithCodec adds a payload codec the host may use besides the default one
// ("proto" when the request and response types are protobuf messages,
// else "json").
func WithCodec(c sdk.Codec) Option { return func(cf *config) { cf.codecs = append(cf.codecs, c) } }

// WithTLS makes ListenAndServe and ServeListener serve TLS with the PEM certificate and key
// files. When clientCAFile is not empty, clients must present a
// certificate signed by a CA in that PEM file (mTLS). Serve ignores it: a
// host-started child uses the host's automatic mTLS when asked for.
func WithTLS(certFile, keyFile, clientCAFile string) Option {
	return func(cf *config) { cf.tls = &tlsFiles{cert: certFile, key: keyFile, clientCA: clientCAFile} }
}

// WithServerOptions adds options to the gRPC server (interceptors, limits,
// keepalive, ...).
func WithServerOptions(opts ...grpc.ServerOption) Option {
	return func(cf *config) { cf.serverOpts = append(cf.serverOpts, opts...) }
}

// Serve serves p to the goplugins host that started the program, on the
// unix socket named in its environment, until the host calls Shutdown or
// sends SIGTERM; it then finishes the calls in flight and returns nil.
// Handlers run concurrently; one that panics answers with the "panic" error
// code and the plugin serves on.
//
// Serve returns ErrNotLaunched when the program was run by hand; a typical
// main prints the error to stderr and exits with status 1.
func Serve[Req, Resp any](p sdk.Plugin[Req, Resp], info sdk.Info, opts ...Option) error {
	if os.Getenv(pluginpb.EnvCookie) != pluginpb.CookieValue {
		return ErrNotLaunched
	}
	path := os.Getenv(pluginpb.EnvSocket)
	if path == "" {
		return fmt.Errorf("grpcplugin: %s is empty: start the plugin from a goplugins host", pluginpb.EnvSocket)
	}
	var creds credentials.TransportCredentials
	if os.Getenv(pluginpb.EnvServerCert) != "" {
		c, err := autoMTLS()
		if err != nil {
			return err
		}
		creds = c
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("grpcplugin: listening on the host's socket: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	return serve(ctx, lis, creds, true, p, info, opts)
}

// ListenAndServe serves p as a remote plugin service on addr ("host:port",
// ":port", "unix:///path" or "unix:path"); see ServeListener.
func ListenAndServe[Req, Resp any](ctx context.Context, addr string, p sdk.Plugin[Req, Resp], info sdk.Info, opts ...Option) error {
	network, address := "tcp", addr
	if rest, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, address = "unix", strings.TrimPrefix(rest, "//")
	}
	var lc net.ListenConfig
	lis, err := lc.Listen(ctx, network, address)
	if err != nil {
		return fmt.Errorf("grpcplugin: listening on %s: %w", addr, err)
	}
	return ServeListener(ctx, lis, p, info, opts...)
}

// ServeListener serves p as a remote plugin service on lis, which it
// closes, until ctx ends; then it stops gracefully: it finishes the calls
// in flight and returns nil. It refuses the Shutdown RPC (a service may
// have many hosts); stop it through ctx, e.g. with signal.NotifyContext.
// Serve TLS or mTLS with WithTLS.
func ServeListener[Req, Resp any](ctx context.Context, lis net.Listener, p sdk.Plugin[Req, Resp], info sdk.Info, opts ...Option) error {
	var cf config
	for _, o := range opts {
		o(&cf)
	}
	var creds credentials.TransportCredentials
	if cf.tls != nil {
		c, err := fileTLS(*cf.tls)
		if err != nil {
			lis.Close()
			return err
		}
		creds = c
	}
	return serve(ctx, lis, creds, false, p, info, opts)
}

// serve runs the gRPC server on lis until ctx ends or, when launched, the
// host calls Shutdown.
func serve[Req, Resp any](ctx context.Context, lis net.Listener, creds credentials.TransportCredentials, launched bool, p sdk.Plugin[Req, Resp], info sdk.Info, opts []Option) error {
	var cf config
	for _, o := range opts {
		o(&cf)
	}
	svc, err := newService(p, info, cf)
	if err != nil {
		lis.Close()
		return err
	}
	sopts := append([]grpc.ServerOption{grpc.ChainUnaryInterceptor(svc.countCalls)}, cf.serverOpts...)
	if creds != nil {
		sopts = append([]grpc.ServerOption{grpc.Creds(creds)}, sopts...)
	}
	srv := grpc.NewServer(sopts...)
	hs := health.NewServer()
	stopped := make(chan struct{})
	var once sync.Once
	stopGracefully := func() {
		once.Do(func() {
			go func() {
				hs.Shutdown()
				graceful := make(chan struct{})
				go func() {
					srv.GracefulStop()
					close(graceful)
				}()
				// GracefulStop waits for the HostCalls streams too, which
				// last until the handlers in flight no longer call the host.
				svc.drain()
				<-graceful
				svc.wg.Wait()
				close(stopped)
			}()
		})
	}
	if launched {
		svc.shutdown = stopGracefully
	}
	pluginpb.RegisterPluginServer(srv, svc)
	healthpb.RegisterHealthServer(srv, &healthService{Server: hs, plugin: p})
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(pluginpb.ServiceName, healthpb.HealthCheckResponse_SERVING)

	ctxDone := make(chan struct{})
	defer close(ctxDone)
	go func() {
		select {
		case <-ctx.Done():
			stopGracefully()
		case <-stopped:
		case <-ctxDone:
		}
	}()
	err = srv.Serve(lis)
	stopGracefully() // Serve failed on its own: release the stopper
	<-stopped
	if errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
}

// healthService answers health checks for the plugin service with the
// plugin's own Health when it has one.
type healthService struct {
	*health.Server
	plugin any
}

// Check reports NOT_SERVING when the plugin's Health fails.
func (h *healthService) Check(ctx context.Context, r *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	resp, err := h.Server.Check(ctx, r)
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		return resp, err
	}
	if hc, ok := h.plugin.(sdk.HealthChecker); ok && hc.Health(ctx) != nil {
		return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_NOT_SERVING}, nil
	}
	return resp, nil
}

// autoMTLS builds the server credentials of automatic mTLS from the PEM
// material the host put in the environment.
func autoMTLS() (credentials.TransportCredentials, error) {
	cert, err := tls.X509KeyPair([]byte(os.Getenv(pluginpb.EnvServerCert)), []byte(os.Getenv(pluginpb.EnvServerKey)))
	if err != nil {
		return nil, fmt.Errorf("grpcplugin: the host's automatic mTLS certificate does not load: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(os.Getenv(pluginpb.EnvClientCA))) {
		return nil, fmt.Errorf("grpcplugin: %s holds no PEM certificate", pluginpb.EnvClientCA)
	}
	return credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS13,
	}), nil
}

// fileTLS builds server credentials from PEM files.
func fileTLS(f tlsFiles) (credentials.TransportCredentials, error) {
	cert, err := tls.LoadX509KeyPair(f.cert, f.key)
	if err != nil {
		return nil, fmt.Errorf("grpcplugin: loading the TLS certificate %s and key %s: %w", f.cert, f.key, err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if f.clientCA != "" {
		pem, err := os.ReadFile(f.clientCA)
		if err != nil {
			return nil, fmt.Errorf("grpcplugin: reading the client CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("grpcplugin: client CA file %s holds no PEM certificate", f.clientCA)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return credentials.NewTLS(cfg), nil
}
