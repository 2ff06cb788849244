package goplugins

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	goerrors "github.com/agilira/go-errors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/goplugins/goplugins/internal/pluginpb"
	"github.com/goplugins/goplugins/internal/proc"
	"github.com/goplugins/goplugins/internal/protocodec"
)

// Defaults of GRPCConfig.
const (
	// DefaultGRPCStartTimeout bounds a child's start when
	// GRPCConfig.StartTimeout is zero.
	DefaultGRPCStartTimeout = 10 * time.Second
	// DefaultGRPCStopGrace is how long Close waits, when
	// GRPCConfig.StopGrace is zero, for a child to exit after each step of
	// the escalation (Shutdown RPC, SIGTERM) before the next one.
	DefaultGRPCStopGrace = 5 * time.Second
)

// GRPCConfig describes a plugin served over gRPC (the
// goplugins.plugin.v1.Plugin service of proto/goplugins/plugin/v1), either
// a child process the host starts (Command) or a remote endpoint
// (Endpoint). Exactly one of the two is set.
type GRPCConfig struct {
	// Name is the plugin's name; the plugin must report it in Info.
	Name string
	// Version, if set, is the version the plugin must report in Info.
	Version string

	// Command is the plugin program the host starts, with Args, in Dir.
	// The child gets Env and nothing else of the host's environment, plus
	// the variables of the launch contract: the unix socket it must serve
	// on (in a directory only the host's user can enter) and, with
	// AutoMTLS, its certificate. Serve it with grpcplugin.Serve.
	Command string
	Args    []string
	Env     map[string]string
	Dir     string
	// Checksum, if set ("sha256:<hex>"), is verified before the child is
	// started; the very bytes verified are executed.
	Checksum string
	// AutoMTLS secures a child's connection with mutual TLS from key pairs
	// the host generates for each child; no files are involved.
	AutoMTLS bool
	// StopGrace is how long Close waits after each step of stopping a child
	// (the Shutdown RPC, then SIGTERM) before escalating (to SIGTERM, then
	// SIGKILL). Zero means DefaultGRPCStopGrace.
	StopGrace time.Duration

	// Endpoint is a remote plugin service: "host:port", "dns:///host:port",
	// "unix:///path" or any target grpc.NewClient accepts. The connection
	// is made lazily and re-made after failures the way grpc-go does.
	Endpoint string
	// TLS secures the connection to Endpoint; nil means plaintext.
	TLS *TLSFiles

	// Codec encodes requests and responses. Nil means the protobuf codec
	// ("proto") when both Req and Resp are protobuf message pointers, and
	// JSONCodec otherwise. The plugin must accept the codec.
	Codec Codec
	// StartTimeout bounds the start: the child's start until it reports
	// SERVING, or the first Info call to a remote endpoint. Zero means
	// DefaultGRPCStartTimeout.
	StartTimeout time.Duration
	// Logger receives the child's stdout and stderr, one record a line,
	// tagged with the plugin's name; JSON log lines keep their level. Nil
	// means slog.Default().
	Logger *slog.Logger
	// DialOptions are added to the host's own when the connection is made
	// (e.g. interceptors, keepalive, grpc.WithConnectParams).
	DialOptions []grpc.DialOption
}

// GRPCPlugin is a plugin served over gRPC. It implements Plugin[Req, Resp],
// StatefulPlugin, StreamPlugin and SchemaPlugin by calling the plugin; its
// Info declares the surfaces the plugin reported. It is safe for
// concurrent use.
type GRPCPlugin[Req, Resp any] struct {
	name   string
	info   PluginInfo
	conn   *grpc.ClientConn
	client pluginpb.PluginClient
	health healthpb.HealthClient
	codec  string
	encode func(Req) ([]byte, error)
	decode func([]byte) (Resp, error)
	child  *grpcChild // nil for a remote endpoint
	log    *slog.Logger
	closed atomic.Bool

	closeOnce sync.Once
	closeErr  error
}

// grpcChild is a plugin process the host started.
type grpcChild struct {
	proc  *proc.Process
	dir   string // the private directory holding the socket
	grace time.Duration
}

// NewGRPCPlugin connects to the plugin cfg describes: it starts the child
// and waits, bounded by ctx and cfg.StartTimeout, until the child's
// standard health service reports SERVING, or, for a remote endpoint, makes
// the first call. It then checks the plugin's Info against cfg: name,
// version, and that the plugin accepts the codec. On error nothing is left
// running.
//
// Errors: ErrInvalidConfig for a bad cfg; ErrChecksumMismatch; ErrHandshake
// when a child does not come up; ErrTransport (retryable) when a remote
// endpoint cannot be reached; ErrInvalidPlugin or ErrIncompatibleVersion
// when the plugin is not the one expected.
func NewGRPCPlugin[Req, Resp any](ctx context.Context, cfg GRPCConfig) (*GRPCPlugin[Req, Resp], error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	p := &GRPCPlugin[Req, Resp]{name: cfg.Name, log: cfg.Logger}
	if p.log == nil {
		p.log = slog.Default()
	}
	p.setCodec(cfg.Codec)
	start := cfg.StartTimeout
	if start <= 0 {
		start = DefaultGRPCStartTimeout
	}
	sctx, cancel := context.WithTimeout(ctx, start)
	defer cancel()
	var err error
	if cfg.Command != "" {
		err = p.startChild(cfg)
	} else {
		err = p.dialRemote(cfg)
	}
	if err == nil {
		err = p.handshake(sctx, ctx, cfg)
	}
	if err != nil {
		cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), p.stopGrace())
		defer ccancel()
		_ = p.Close(cctx)
		return nil, err
	}
	return p, nil
}

func (cfg *GRPCConfig) validate() error {
	if err := ValidateName(cfg.Name); err != nil {
		return wrapError(err, CodeInvalidConfig, cfg.Name, "GRPCConfig.Name is invalid")
	}
	if cfg.Version != "" {
		if _, err := ParseVersion(cfg.Name, cfg.Version); err != nil {
			return err
		}
	}
	switch {
	case (cfg.Command == "") == (cfg.Endpoint == ""):
		return newError(CodeInvalidConfig, cfg.Name, "set exactly one of GRPCConfig.Command (a child the host starts) and GRPCConfig.Endpoint (a remote service)")
	case cfg.AutoMTLS && cfg.Command == "":
		return newError(CodeInvalidConfig, cfg.Name, "GRPCConfig.AutoMTLS applies to a child the host starts; secure a remote endpoint with GRPCConfig.TLS")
	case cfg.TLS != nil && cfg.Endpoint == "":
		return newError(CodeInvalidConfig, cfg.Name, "GRPCConfig.TLS applies to a remote endpoint; secure a child with GRPCConfig.AutoMTLS")
	}
	return nil
}

// setCodec chooses the payload codec and binds its functions to Req and
// Resp once, so that calls do no type inspection.
func (p *GRPCPlugin[Req, Resp]) setCodec(c Codec) {
	if c == nil {
		req, okReq := protocodec.For[Req]()
		resp, okResp := protocodec.For[Resp]()
		if okReq && okResp {
			p.codec, p.encode, p.decode = protocodec.Name, req.Marshal, resp.Unmarshal
			return
		}
		c = JSONCodec
	}
	p.codec = c.Name()
	p.encode = func(req Req) ([]byte, error) { return c.Marshal(req) }
	p.decode = func(b []byte) (Resp, error) {
		var resp Resp
		err := c.Unmarshal(b, &resp)
		return resp, err
	}
}

// startChild starts cfg.Command serving on a unix socket in a private
// directory and connects to it; the connection is made by the handshake.
func (p *GRPCPlugin[Req, Resp]) startChild(cfg GRPCConfig) error {
	var sum []byte
	if cfg.Checksum != "" {
		var err error
		if sum, err = proc.ParseChecksum(cfg.Checksum); err != nil {
			return wrapError(err, CodeInvalidConfig, p.name, "GRPCConfig.Checksum is invalid")
		}
	}
	dir, err := os.MkdirTemp(socketTempDir(), "gp-")
	if err != nil {
		return wrapError(err, CodeTransport, p.name, "creating the directory for the plugin's socket")
	}
	p.child = &grpcChild{dir: dir, grace: cfg.StopGrace}
	if p.child.grace <= 0 {
		p.child.grace = DefaultGRPCStopGrace
	}
	sock := filepath.Join(dir, "plugin.sock")
	env := childEnv(cfg.Env, pluginpb.EnvCookie+"="+pluginpb.CookieValue, pluginpb.EnvSocket+"="+sock)
	creds := insecure.NewCredentials()
	if cfg.AutoMTLS {
		var mtlsEnv []string
		creds, mtlsEnv, err = newAutoMTLS()
		if err != nil {
			return wrapError(err, CodeTransport, p.name, "generating the automatic mTLS certificates")
		}
		env = append(env, mtlsEnv...)
	}
	logger := p.log.With("plugin", p.name)
	pr, err := proc.Start(proc.Config{
		Path: cfg.Command, Args: cfg.Args, Env: env, Dir: cfg.Dir, SHA256: sum,
		Stdout: lineLogger(logger, "stdout"),
		Stderr: lineLogger(logger, "stderr"),
	})
	if errors.Is(err, proc.ErrChecksum) {
		return wrapError(err, CodeChecksumMismatch, p.name, "the plugin binary is not the one the checksum names; rebuild it or update GRPCConfig.Checksum")
	}
	if err != nil {
		return wrapError(err, CodeHandshake, p.name, "starting %s", cfg.Command)
	}
	p.child.proc = pr
	// A local child is connected to again quickly: grpc-go's default
	// reconnect backoff starts at one second.
	opts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{
			BaseDelay: 5 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 500 * time.Millisecond,
		}}),
	}, cfg.DialOptions...)
	return p.connect("unix://"+sock, opts)
}

// dialRemote creates the client of a remote endpoint; grpc-go connects on
// the first call.
func (p *GRPCPlugin[Req, Resp]) dialRemote(cfg GRPCConfig) error {
	creds := insecure.NewCredentials()
	if cfg.TLS != nil {
		var err error
		if creds, err = cfg.TLS.credentials(); err != nil {
			return wrapError(err, CodeInvalidConfig, p.name, "GRPCConfig.TLS does not load")
		}
	}
	return p.connect(cfg.Endpoint, append([]grpc.DialOption{grpc.WithTransportCredentials(creds)}, cfg.DialOptions...))
}

func (p *GRPCPlugin[Req, Resp]) connect(target string, opts []grpc.DialOption) error {
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return wrapError(err, CodeInvalidConfig, p.name, "the gRPC target %q is unusable", target)
	}
	p.conn = conn
	p.client = pluginpb.NewPluginClient(conn)
	p.health = healthpb.NewHealthClient(conn)
	return nil
}

// handshake waits for a child to serve, then fetches and checks Info.
// sctx is bounded by the start timeout; ctx is the caller's.
func (p *GRPCPlugin[Req, Resp]) handshake(sctx, ctx context.Context, cfg GRPCConfig) error {
	if p.child != nil {
		if err := p.awaitServing(sctx, ctx); err != nil {
			return err
		}
	}
	r, err := p.client.Info(sctx, &pluginpb.InfoRequest{})
	if err != nil {
		if p.child == nil && ctx.Err() == nil && sctx.Err() != nil {
			return newError(CodeTransport, p.name, "the endpoint %s did not answer Info within the start timeout", cfg.Endpoint)
		}
		return p.callError(ctx, "Info", err)
	}
	info := PluginInfo{Name: r.Name, Version: r.Version, Description: r.Description, Metadata: r.Metadata}
	for _, s := range r.Surfaces {
		info.Surfaces = append(info.Surfaces, Surface(s))
	}
	if info.Name != cfg.Name {
		return newError(CodeInvalidPlugin, cfg.Name, "the gRPC plugin reports the name %q; point GRPCConfig at the right plugin or fix its name", info.Name)
	}
	if _, err := ParseVersion(info.Name, info.Version); err != nil {
		return err
	}
	if cfg.Version != "" && info.Version != cfg.Version {
		return newError(CodeIncompatibleVersion, cfg.Name, "the gRPC plugin reports version %s, GRPCConfig.Version expects %s", info.Version, cfg.Version)
	}
	if !slices.Contains(r.Codecs, p.codec) {
		return newError(CodeInvalidConfig, cfg.Name, "the gRPC plugin accepts the codecs %v, not the host's %q: configure the same codec on both sides", r.Codecs, p.codec)
	}
	p.info = info
	return nil
}

// awaitServing watches the child's standard health service until it
// reports SERVING for the plugin service, the child exits, or sctx ends.
func (p *GRPCPlugin[Req, Resp]) awaitServing(sctx, ctx context.Context) error {
	wctx, cancel := context.WithCancel(sctx)
	defer cancel()
	exited := make(chan struct{})
	go func() {
		select {
		case <-p.child.proc.Done():
			close(exited)
			cancel()
		case <-wctx.Done():
		}
	}()
	err := p.watchServing(wctx)
	cancel()
	select {
	case <-exited:
		return newError(CodeHandshake, p.name, "the plugin process exited during start (%v); its last stderr lines:\n%s",
			p.child.proc.State(), p.child.proc.StderrTail())
	default:
	}
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return wrapError(ctx.Err(), CodeHandshake, p.name, "the start was abandoned")
	case sctx.Err() != nil:
		return newError(CodeHandshake, p.name, "the plugin did not report SERVING within the start timeout; it must serve with grpcplugin.Serve (last stderr lines:\n%s)", p.child.proc.StderrTail())
	default:
		return wrapError(err, CodeHandshake, p.name, "waiting for the plugin to serve")
	}
}

func (p *GRPCPlugin[Req, Resp]) watchServing(ctx context.Context) error {
	stream, err := p.health.Watch(ctx, &healthpb.HealthCheckRequest{Service: pluginpb.ServiceName}, grpc.WaitForReady(true))
	if err != nil {
		return err
	}
	for {
		r, err := stream.Recv()
		if err != nil {
			return err
		}
		if r.Status == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
	}
}

// Info describes the plugin as it reported itself when it was connected.
func (p *GRPCPlugin[Req, Resp]) Info() PluginInfo {
	info := p.info
	info.Surfaces = slices.Clone(info.Surfaces)
	info.Metadata = maps.Clone(info.Metadata)
	return info
}

// Execute encodes req, calls the plugin with ctx's deadline, and decodes
// its answer. Errors: ctx's error when ctx ended; ErrTimeout when the call's
// deadline passed elsewhere; ErrTransport (retryable) when the plugin
// cannot be reached; ErrCrashed when a child exited; ErrRemote for the
// plugin's own errors, with its code in the message and retryable as the
// plugin flagged it; ErrClosed after Close.
func (p *GRPCPlugin[Req, Resp]) Execute(ctx context.Context, req Req) (Resp, error) {
	var zero Resp
	if p.closed.Load() {
		return zero, p.closedError()
	}
	payload, err := p.encode(req)
	if err != nil {
		return zero, wrapError(err, CodeInvalidConfig, p.name, "the request does not encode with codec %q", p.codec)
	}
	r, err := p.client.Execute(ctx, &pluginpb.ExecuteRequest{Codec: p.codec, Payload: payload})
	if err != nil {
		return zero, p.callError(ctx, "Execute", err)
	}
	resp, err := p.decode(r.Payload)
	if err != nil {
		return zero, wrapError(err, CodeRemote, p.name, "the answer does not decode with codec %q; host and plugin disagree on the response type", p.codec)
	}
	return resp, nil
}

// Health checks the plugin through the standard grpc.health.v1 service:
// nil when it reports SERVING, ErrUnhealthy when it reports otherwise, the
// call's error (see Execute) when it cannot answer.
func (p *GRPCPlugin[Req, Resp]) Health(ctx context.Context) error {
	if p.closed.Load() {
		return p.closedError()
	}
	r, err := p.health.Check(ctx, &healthpb.HealthCheckRequest{Service: pluginpb.ServiceName})
	if err != nil {
		return p.callError(ctx, "Health", err)
	}
	if r.Status != healthpb.HealthCheckResponse_SERVING {
		return newError(CodeUnhealthy, p.name, "the plugin's health service reports %s", r.Status)
	}
	return nil
}

// PersistState asks the plugin for its state (surface "state").
func (p *GRPCPlugin[Req, Resp]) PersistState(ctx context.Context) ([]byte, error) {
	if p.closed.Load() {
		return nil, p.closedError()
	}
	r, err := p.client.PersistState(ctx, &pluginpb.PersistStateRequest{})
	if err != nil {
		return nil, p.callError(ctx, "PersistState", err)
	}
	return r.State, nil
}

// RestoreState hands state to the plugin (surface "state").
func (p *GRPCPlugin[Req, Resp]) RestoreState(ctx context.Context, state []byte) error {
	if p.closed.Load() {
		return p.closedError()
	}
	if _, err := p.client.RestoreState(ctx, &pluginpb.RestoreStateRequest{State: state}); err != nil {
		return p.callError(ctx, "RestoreState", err)
	}
	return nil
}

// Checkpoint stops the plugin's stream processing and returns its position
// (surface "stream").
func (p *GRPCPlugin[Req, Resp]) Checkpoint(ctx context.Context) ([]byte, error) {
	if p.closed.Load() {
		return nil, p.closedError()
	}
	r, err := p.client.Checkpoint(ctx, &pluginpb.CheckpointRequest{})
	if err != nil {
		return nil, p.callError(ctx, "Checkpoint", err)
	}
	return r.Position, nil
}

// Resume restarts the plugin's stream processing from position (surface
// "stream").
func (p *GRPCPlugin[Req, Resp]) Resume(ctx context.Context, position []byte) error {
	if p.closed.Load() {
		return p.closedError()
	}
	if _, err := p.client.Resume(ctx, &pluginpb.ResumeRequest{Position: position}); err != nil {
		return p.callError(ctx, "Resume", err)
	}
	return nil
}

// CheckCompat asks the plugin whether it can replace the plugin old
// describes (surface "schema"); the plugin's refusal is an ErrRemote.
func (p *GRPCPlugin[Req, Resp]) CheckCompat(ctx context.Context, old PluginInfo) error {
	if p.closed.Load() {
		return p.closedError()
	}
	req := &pluginpb.CheckCompatRequest{Old: &pluginpb.InfoResponse{
		Name: old.Name, Version: old.Version, Description: old.Description, Metadata: old.Metadata,
	}}
	for _, s := range old.Surfaces {
		req.Old.Surfaces = append(req.Old.Surfaces, string(s))
	}
	if _, err := p.client.CheckCompat(ctx, req); err != nil {
		return p.callError(ctx, "CheckCompat", err)
	}
	return nil
}

// Close disconnects from the plugin. A child is asked to shut down
// gracefully (it finishes its calls in flight), then stopped by escalation
// (SIGTERM, then SIGKILL of its process group, GRPCConfig.StopGrace apart;
// at once when ctx ends), reaped, and its socket directory removed. A
// remote service is left running. Calling Close again returns the first
// call's result.
func (p *GRPCPlugin[Req, Resp]) Close(ctx context.Context) error {
	p.closeOnce.Do(func() {
		p.closed.Store(true)
		p.closeErr = p.close(ctx)
	})
	return p.closeErr
}

func (p *GRPCPlugin[Req, Resp]) close(ctx context.Context) error {
	var errs []error
	if p.child != nil && p.child.proc != nil {
		select {
		case <-p.child.proc.Done():
		default:
			sctx, cancel := context.WithTimeout(ctx, p.child.grace)
			_, err := p.client.Shutdown(sctx, &pluginpb.ShutdownRequest{})
			cancel()
			if err != nil {
				// Not asked politely: skip the wait for a polite exit.
				p.log.Debug("goplugins: the gRPC plugin did not accept Shutdown; stopping it by signal", "plugin", p.name, "err", err)
				_ = p.child.proc.Signal(syscall.SIGTERM)
			}
		}
	}
	if p.conn != nil {
		if err := p.conn.Close(); err != nil {
			errs = append(errs, wrapError(err, CodeTransport, p.name, "closing the connection"))
		}
	}
	if p.child != nil {
		if p.child.proc != nil {
			if sig := p.child.proc.Stop(ctx, p.child.grace); sig != 0 {
				p.log.Warn("goplugins: the gRPC plugin did not exit after Shutdown; it was signalled", "plugin", p.name, "signal", sig.String())
			}
		}
		if err := os.RemoveAll(p.child.dir); err != nil {
			errs = append(errs, wrapError(err, CodeTransport, p.name, "removing the socket directory %s", p.child.dir))
		}
	}
	return errors.Join(errs...)
}

func (p *GRPCPlugin[Req, Resp]) stopGrace() time.Duration {
	if p.child != nil {
		return 3 * p.child.grace
	}
	return DefaultGRPCStopGrace
}

func (p *GRPCPlugin[Req, Resp]) closedError() error {
	return newError(CodeClosed, p.name, "the gRPC plugin is closed; create a new one with NewGRPCPlugin")
}

// callError turns the error of a call to the plugin into the library's
// typed error, naming the plugin and the operation.
func (p *GRPCPlugin[Req, Resp]) callError(ctx context.Context, op string, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return ctxErr
	}
	if p.closed.Load() {
		return p.closedError()
	}
	st := status.Convert(err)
	for _, d := range st.Details() {
		if e, ok := d.(*pluginpb.Error); ok {
			err := newError(CodeRemote, p.name, "%s failed with the plugin's error %s: %s", op, e.Code, e.Message)
			if e.Retryable {
				return retryable(err)
			}
			return err
		}
	}
	if p.child != nil {
		select {
		case <-p.child.proc.Done():
			return newError(CodeCrashed, p.name, "%s failed: the plugin process exited (%v); its last stderr lines:\n%s",
				op, p.child.proc.State(), p.child.proc.StderrTail())
		default:
		}
	}
	switch st.Code() {
	case codes.Unavailable:
		return retryable(newError(CodeTransport, p.name, "%s failed: the plugin is unreachable (%s); the call may be retried", op, st.Message()))
	case codes.ResourceExhausted, codes.Aborted:
		return retryable(newError(CodeRemote, p.name, "%s failed with %s: %s; the call may be retried", op, st.Code(), st.Message()))
	case codes.DeadlineExceeded:
		// gRPC can see the caller's deadline pass before ctx's own timer
		// marks ctx done; the plugin's deadline derives from ctx's and is
		// never earlier (grpc-timeout rounds up).
		if d, ok := ctx.Deadline(); ok && time.Until(d) <= 0 {
			return context.DeadlineExceeded
		}
		return newError(CodeTimeout, p.name, "%s got no answer in time: %s", op, st.Message())
	case codes.Canceled:
		return newError(CodeTransport, p.name, "%s was cancelled by the connection: %s", op, st.Message())
	case codes.Unauthenticated, codes.PermissionDenied:
		return newError(CodeTransport, p.name, "%s was refused (%s): %s; check the TLS and credential settings", op, st.Code(), st.Message())
	case codes.Unimplemented:
		return newError(CodeRemote, p.name, "%s is not implemented by the plugin: %s", op, st.Message())
	default:
		return newError(CodeRemote, p.name, "%s failed with %s: %s", op, st.Code(), st.Message())
	}
}

// retryable marks a library error retryable.
func retryable(err error) error {
	var e *goerrors.Error
	if errors.As(err, &e) {
		e.AsRetryable()
	}
	return err
}

// childEnv returns env as sorted "KEY=value" strings followed by extra.
func childEnv(env map[string]string, extra ...string) []string {
	out := make([]string, 0, len(env)+len(extra))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return append(out, extra...)
}

// socketTempDir returns a directory short enough for a unix socket path
// (at most 108 bytes on Linux) inside it.
func socketTempDir() string {
	if dir := os.TempDir(); len(dir) <= 64 {
		return dir
	}
	return "/tmp"
}

// lineLogger logs each line a child writes, tagged with its stream; a JSON
// log line keeps its level, message and fields (see parseLogLine).
func lineLogger(l *slog.Logger, stream string) func([]byte) {
	return func(line []byte) {
		level, msg, attrs := parseLogLine(line)
		l.LogAttrs(context.Background(), level, msg, append(attrs, slog.String("stream", stream))...)
	}
}

// Interfaces a GRPCPlugin implements.
var (
	_ Plugin[any, any] = (*GRPCPlugin[any, any])(nil)
	_ StatefulPlugin   = (*GRPCPlugin[any, any])(nil)
	_ StreamPlugin     = (*GRPCPlugin[any, any])(nil)
	_ SchemaPlugin     = (*GRPCPlugin[any, any])(nil)
)
