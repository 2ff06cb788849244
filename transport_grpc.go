package goplugins

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
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
	"github.com/goplugins/goplugins/internal/supervise"
)

// GRPCConfig describes a plugin served over gRPC (the
// goplugins.plugin.v1.Plugin service of proto/goplugins/plugin/v1), either
// a child process the host starts (Command) or a remote endpoint
// (Endpoint). Exactly one of the two is set. The child-process fields
// (Command through OnRestart) have the same names and meaning as
// SubprocessConfig's.
type GRPCConfig struct {
	// Name is the plugin's name; the plugin must report it in Info.
	Name string
	// Version, if set, is the version the plugin must report in Info.
	Version string

	// Command is the plugin program the host starts, with Args, in Dir.
	// Serve it with grpcplugin.Serve.
	Command string
	Args    []string
	// Env holds the child's environment variables. The child gets the
	// host's PATH (unless Env sets it), Env and the variables of the launch
	// contract (the unix socket it must serve on, in a directory only the
	// host's user can enter, and, with AutoMTLS, its certificate), nothing
	// else, unless InheritEnv is set.
	Env map[string]string
	// InheritEnv passes the host's whole environment too (Env overrides it).
	InheritEnv bool
	Dir        string
	// Checksum, if set ("sha256:<hex>"), is verified before the child is
	// started; the very bytes verified are executed.
	Checksum string
	// StartTimeout bounds the start: the child's start until it reports
	// SERVING, or the first Info call to a remote endpoint (default 10s).
	StartTimeout time.Duration
	// StopGrace paces Close's escalation, counted from the Shutdown RPC:
	// Close waits up to StopGrace for the calls in flight to end (the child
	// finishes them) and the child to exit, then sends SIGTERM to its
	// process group, and SIGKILL 2·StopGrace after the Shutdown RPC. A child
	// that refuses the RPC gets SIGTERM at once and SIGKILL StopGrace later
	// (default 5s).
	StopGrace time.Duration
	// Restart says how a crashed child is restarted: each new child gets a
	// new socket and, with AutoMTLS, new key pairs. It does not apply to a
	// remote endpoint, which grpc-go reconnects to by itself.
	Restart RestartPolicy
	// OnRestart, when set, is called after every restart attempt of a
	// child with the plugin's name, the attempt number (1 for the first
	// after a crash) and its error (nil when the new child is serving). It
	// runs on the supervising goroutine: it must return promptly and must
	// not call Close. Manager.Subscribe reports the same as events.
	OnRestart func(plugin string, attempt int, err error)
	// AutoMTLS secures a child's connection with mutual TLS from key pairs
	// the host generates for each child; no files are involved.
	AutoMTLS bool

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
	// Logger receives the child's stdout and stderr, one record a line,
	// tagged with the plugin's name; JSON log lines keep their level. Nil
	// means slog.Default().
	Logger *slog.Logger
	// DialOptions are added to the host's own when the connection is made
	// (e.g. interceptors, keepalive, grpc.WithConnectParams).
	DialOptions []grpc.DialOption
}

// grpcPlugin is the plugin NewGRPCPlugin returns.
type grpcPlugin[Req, Resp any] struct {
	lifecycle
	name   string
	cfg    GRPCConfig
	grace  time.Duration // a child's StopGrace
	codec  string
	encode func(Req) ([]byte, error)
	decode func([]byte) (Resp, error)
	log    *slog.Logger

	link   atomic.Pointer[grpcLink] // nil while a crashed child is down
	host   atomic.Pointer[Host]     // set by UseHost
	info   atomic.Pointer[PluginInfo]
	closed atomic.Bool

	ctx    context.Context // cancelled by Close; nil for a remote endpoint
	cancel context.CancelFunc
	wg     sync.WaitGroup // the supervisor

	mu sync.Mutex

	closeOnce sync.Once
	closeErr  error
}

// grpcLink is one connection to the plugin: to one child process, or to
// the remote endpoint.
type grpcLink struct {
	conn   *grpc.ClientConn
	client pluginpb.PluginClient
	health healthpb.HealthClient
	child  *grpcChild     // nil for a remote endpoint
	hosts  *grpcHostCalls // nil until the handshake passed

	calls    atomic.Int64  // calls in flight, counted by live and release
	draining atomic.Bool   // closeLink waits for the calls to end
	idle     chan struct{} // a release of a draining link left no call in flight
}

// grpcChild is a plugin process the host started.
type grpcChild struct {
	proc *proc.Process
	dir  string // the private directory holding the socket
}

// grpcExitWait bounds how long a call that lost its connection to a child
// waits for the child's exit to be confirmed before reporting a transport
// error instead of a crash.
const grpcExitWait = 2 * time.Second

// NewGRPCPlugin connects to the plugin cfg describes, served over gRPC: it
// starts the child and waits, bounded by ctx and cfg.StartTimeout, until
// the child's standard health service reports SERVING, or, for a remote
// endpoint, makes the first call. It then checks the plugin's Info against
// cfg: name, version, and that the plugin accepts the codec. On error
// nothing is left running. The plugin is safe for concurrent use.
//
// A child the host started is supervised: if it exits, calls in flight
// fail with ErrCrashed (the tail of its stderr is in the error's context
// under "stderr_tail"), it is restarted as cfg.Restart says, and meanwhile
// calls and Health fail fast with a retryable ErrCrashed. A Manager it is
// registered with reports the crashes and restarts as events
// (EventCrashed, EventRestarted, EventRestartFailed, EventLeftDown).
//
// Besides Plugin, the returned value implements StatefulPlugin,
// StreamPlugin and SchemaPlugin by calling the plugin (Info().Surfaces
// says which it really has), HostUser (the plugin calls host functions over
// a stream the host opens, see docs/GRPC.md), and interface{ Pid() int }:
// the process id of the serving child, 0 for a remote endpoint or while the
// child is down.
//
// Every unary call made with a ctx carrying ContextWithMetadata pairs sends
// them as gRPC metadata; pairs gRPC cannot carry fail the call with
// ErrInvalidConfig.
//
// Errors: ErrInvalidConfig for a bad cfg; ErrChecksumMismatch; ErrHandshake
// when a child does not come up; ErrTransport (retryable) when a remote
// endpoint cannot be reached; ErrInvalidPlugin or ErrIncompatibleVersion
// when the plugin is not the one expected.
func NewGRPCPlugin[Req, Resp any](ctx context.Context, cfg GRPCConfig) (Plugin[Req, Resp], error) {
	p, err := newGRPCPlugin[Req, Resp](ctx, cfg)
	if err != nil {
		return nil, err // not a typed nil
	}
	return p, nil
}

// newGRPCPlugin is NewGRPCPlugin with the concrete type.
func newGRPCPlugin[Req, Resp any](ctx context.Context, cfg GRPCConfig) (*grpcPlugin[Req, Resp], error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	p := &grpcPlugin[Req, Resp]{name: cfg.Name, cfg: cfg, grace: cfg.StopGrace, log: cfg.Logger}
	if p.grace <= 0 {
		p.grace = defaultStopGrace
	}
	if p.log == nil {
		p.log = slog.Default()
	}
	p.lifecycle = lifecycle{plugin: cfg.Name, log: p.log.With("plugin", cfg.Name), onRestart: cfg.OnRestart}
	p.setCodec(cfg.Codec)
	l, err := p.open(ctx)
	if err != nil {
		return nil, err
	}
	p.serve(l)
	if l.child != nil {
		p.ctx, p.cancel = context.WithCancel(context.Background())
		p.wg.Add(1)
		go p.supervise(l)
	}
	return p, nil
}

// open connects to the plugin (starting a child first) and checks its
// Info, bounded by ctx and the start timeout. On error nothing is left
// running.
func (p *grpcPlugin[Req, Resp]) open(ctx context.Context) (*grpcLink, error) {
	start := p.cfg.StartTimeout
	if start <= 0 {
		start = defaultStartTimeout
	}
	sctx, cancel := context.WithTimeout(ctx, start)
	defer cancel()
	l := &grpcLink{idle: make(chan struct{}, 1)}
	var err error
	if p.cfg.Command != "" {
		err = p.startChild(l)
	} else {
		err = p.dialRemote(l)
	}
	if err == nil {
		err = p.handshake(sctx, ctx, l)
	}
	if err == nil {
		l.hosts = p.newHostCalls(l)
	}
	if err != nil {
		cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), 2*p.grace)
		defer ccancel()
		_ = p.closeLink(cctx, l)
		return nil, err
	}
	return l, nil
}

func (cfg *GRPCConfig) validate() error {
	if err := validateName(cfg.Name); err != nil {
		return wrapError(err, codeInvalidConfig, cfg.Name, "GRPCConfig.Name is invalid")
	}
	if cfg.Version != "" {
		if _, err := parseVersion(cfg.Name, cfg.Version); err != nil {
			return err
		}
	}
	switch {
	case (cfg.Command == "") == (cfg.Endpoint == ""):
		return newError(codeInvalidConfig, cfg.Name, "set exactly one of GRPCConfig.Command (a child the host starts) and GRPCConfig.Endpoint (a remote service)")
	case cfg.AutoMTLS && cfg.Command == "":
		return newError(codeInvalidConfig, cfg.Name, "GRPCConfig.AutoMTLS applies to a child the host starts; secure a remote endpoint with GRPCConfig.TLS")
	case cfg.TLS != nil && cfg.Endpoint == "":
		return newError(codeInvalidConfig, cfg.Name, "GRPCConfig.TLS applies to a remote endpoint; secure a child with GRPCConfig.AutoMTLS")
	}
	for k := range cfg.Env {
		if !envVarName(k) {
			return newError(codeInvalidConfig, cfg.Name, "GRPCConfig.Env has the invalid variable name %q", k)
		}
	}
	return nil
}

// setCodec chooses the payload codec and binds its functions to Req and
// Resp once, so that calls do no type inspection.
func (p *grpcPlugin[Req, Resp]) setCodec(c Codec) {
	if c == nil {
		req, okReq := protocodec.For[Req]()
		resp, okResp := protocodec.For[Resp]()
		if okReq && okResp {
			p.codec, p.encode, p.decode = protocodec.Name, req.Marshal, resp.Unmarshal
			return
		}
		c = JSONCodec{}
	}
	p.codec = c.Name()
	p.encode = func(req Req) ([]byte, error) { return c.Marshal(req) }
	p.decode = func(b []byte) (Resp, error) {
		var resp Resp
		err := c.Unmarshal(b, &resp)
		return resp, err
	}
}

// startChild creates l's client for a unix socket in a new private
// directory, then starts cfg.Command serving on it; the connection is made
// by the handshake.
func (p *grpcPlugin[Req, Resp]) startChild(l *grpcLink) error {
	cfg := &p.cfg
	var sum []byte
	if cfg.Checksum != "" {
		var err error
		if sum, err = proc.ParseChecksum(cfg.Checksum); err != nil {
			return wrapError(err, codeInvalidConfig, p.name, "GRPCConfig.Checksum is invalid")
		}
	}
	dir, err := os.MkdirTemp(socketTempDir(), "gp-")
	if err != nil {
		return wrapError(err, codeTransport, p.name, "creating the directory for the plugin's socket")
	}
	l.child = &grpcChild{dir: dir}
	sock := filepath.Join(dir, "plugin.sock")
	launch := []string{pluginpb.EnvCookie + "=" + pluginpb.CookieValue, pluginpb.EnvSocket + "=" + sock}
	creds := insecure.NewCredentials()
	if cfg.AutoMTLS {
		var mtlsEnv []string
		creds, mtlsEnv, err = newAutoMTLS()
		if err != nil {
			return wrapError(err, codeTransport, p.name, "generating the automatic mTLS certificates")
		}
		launch = append(launch, mtlsEnv...)
	}
	// The client is made before the child is started: grpc.NewClient
	// refuses unusable dial options (say, per-RPC credentials that need
	// transport security on a plaintext socket), and then no child runs.
	// A local child is connected to again quickly: grpc-go's default
	// reconnect backoff starts at one second.
	opts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithChainUnaryInterceptor(p.interceptor(l)),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{
			BaseDelay: 5 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 500 * time.Millisecond,
		}}),
	}, cfg.DialOptions...)
	if err := p.connect(l, "unix://"+sock, opts); err != nil {
		return err
	}
	logger := p.log.With("plugin", p.name)
	pr, err := proc.Start(proc.Config{
		Path: cfg.Command, Args: cfg.Args, Dir: cfg.Dir, SHA256: sum,
		Env:    childEnviron(cfg.Env, cfg.InheritEnv, launch...),
		Stdout: lineLogger(logger, "stdout"),
		Stderr: lineLogger(logger, "stderr"),
	})
	if err != nil {
		return startError(err, p.name, cfg.Command, "GRPCConfig", codeHandshake)
	}
	l.child.proc = pr
	return nil
}

// dialRemote creates the client of a remote endpoint; grpc-go connects on
// the first call.
func (p *grpcPlugin[Req, Resp]) dialRemote(l *grpcLink) error {
	cfg := &p.cfg
	creds := insecure.NewCredentials()
	if cfg.TLS != nil {
		var err error
		if creds, err = cfg.TLS.credentials(); err != nil {
			return wrapError(err, codeInvalidConfig, p.name, "GRPCConfig.TLS does not load")
		}
	}
	return p.connect(l, cfg.Endpoint, append([]grpc.DialOption{grpc.WithTransportCredentials(creds), grpc.WithChainUnaryInterceptor(p.interceptor(l))}, cfg.DialOptions...))
}

func (p *grpcPlugin[Req, Resp]) connect(l *grpcLink, target string, opts []grpc.DialOption) error {
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return wrapError(err, codeInvalidConfig, p.name, "the gRPC target %q is unusable", target)
	}
	l.conn = conn
	l.client = pluginpb.NewPluginClient(conn)
	l.health = healthpb.NewHealthClient(conn)
	return nil
}

// handshake waits for a child to serve, then fetches and checks Info and
// stores it as the plugin's. sctx is bounded by the start timeout; ctx is
// the caller's.
func (p *grpcPlugin[Req, Resp]) handshake(sctx, ctx context.Context, l *grpcLink) error {
	cfg := &p.cfg
	if l.child != nil {
		if err := p.awaitServing(sctx, ctx, l); err != nil {
			return err
		}
	}
	r, err := l.client.Info(sctx, &pluginpb.InfoRequest{})
	if err != nil {
		if l.child == nil && ctx.Err() == nil && sctx.Err() != nil {
			return newError(codeTransport, p.name, "the endpoint %s did not answer Info within the start timeout", cfg.Endpoint)
		}
		return p.callError(ctx, l, "Info", err)
	}
	info := PluginInfo{Name: r.Name, Version: r.Version, Description: r.Description, Metadata: r.Metadata}
	for _, s := range r.Surfaces {
		info.Surfaces = append(info.Surfaces, Surface(s))
	}
	if info.Name != cfg.Name {
		return newError(codeInvalidPlugin, cfg.Name, "the gRPC plugin reports the name %q; point GRPCConfig at the right plugin or fix its name", info.Name)
	}
	if _, err := parseVersion(info.Name, info.Version); err != nil {
		return err
	}
	if cfg.Version != "" && info.Version != cfg.Version {
		return newError(codeIncompatibleVersion, cfg.Name, "the gRPC plugin reports version %s, GRPCConfig.Version expects %s", info.Version, cfg.Version)
	}
	if !slices.Contains(r.Codecs, p.codec) {
		return newError(codeInvalidConfig, cfg.Name, "the gRPC plugin accepts the codecs %v, not the host's %q: configure the same codec on both sides", r.Codecs, p.codec)
	}
	p.info.Store(&info)
	return nil
}

// awaitServing watches the child's standard health service until it
// reports SERVING for the plugin service, the child exits, or sctx ends.
func (p *grpcPlugin[Req, Resp]) awaitServing(sctx, ctx context.Context, l *grpcLink) error {
	wctx, cancel := context.WithCancel(sctx)
	defer cancel()
	exited := make(chan struct{})
	go func() {
		select {
		case <-l.child.proc.Done():
			close(exited)
			cancel()
		case <-wctx.Done():
		}
	}()
	err := p.watchServing(wctx, l)
	cancel()
	select {
	case <-exited:
		return withStderr(newError(codeHandshake, p.name, "the plugin process exited during start (%v); see the error's stderr_tail", l.child.proc.State()), l.child.proc)
	default:
	}
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return wrapError(ctx.Err(), codeHandshake, p.name, "the start was abandoned")
	case sctx.Err() != nil:
		return withStderr(newError(codeHandshake, p.name, "the plugin did not report SERVING within the start timeout; it must serve with grpcplugin.Serve"), l.child.proc)
	default:
		return wrapError(err, codeHandshake, p.name, "waiting for the plugin to serve")
	}
}

// watchServing waits until the plugin service reports SERVING.
// A watch that ends Unavailable (the connection broke while the child
// starts) is made again, as the health protocol asks of its clients,
// until ctx ends.
func (p *grpcPlugin[Req, Resp]) watchServing(ctx context.Context, l *grpcLink) error {
	for {
		err := watchOnce(ctx, l)
		if status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			return err
		}
	}
}

// watchOnce watches the health of the plugin service until it reports
// SERVING (nil) or the watch fails.
func watchOnce(ctx context.Context, l *grpcLink) error {
	stream, err := l.health.Watch(ctx, &healthpb.HealthCheckRequest{Service: pluginpb.ServiceName}, grpc.WaitForReady(true))
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

// Info describes the plugin as it reported itself when it was last
// connected (started or restarted).
func (p *grpcPlugin[Req, Resp]) Info() PluginInfo {
	info := *p.info.Load()
	info.Surfaces = slices.Clone(info.Surfaces)
	info.Metadata = maps.Clone(info.Metadata)
	return info
}

// Execute encodes req, calls the plugin with ctx's deadline, and decodes
// its answer. Errors: ctx's error when ctx ended; ErrTimeout when the call's
// deadline passed elsewhere; ErrTransport (retryable) when the plugin
// cannot be reached; ErrCrashed when a child exited during the call, or
// (retryable while a restart is pending) when it is down; ErrRemote for
// the plugin's own errors, with its code in the message and retryable as
// the plugin flagged it; ErrClosed after Close.
func (p *grpcPlugin[Req, Resp]) Execute(ctx context.Context, req Req) (Resp, error) {
	var zero Resp
	l, err := p.live()
	if err != nil {
		return zero, err
	}
	defer l.release()
	payload, err := p.encode(req)
	if err != nil {
		return zero, wrapError(err, codeInvalidConfig, p.name, "the request does not encode with codec %q", p.codec)
	}
	er := &pluginpb.ExecuteRequest{Codec: p.codec, Payload: payload}
	cctx := ctx
	if hc := l.hosts; hc != nil && hc.on.Load() {
		var cancel context.CancelFunc
		cctx, cancel = hc.begin(ctx, er)
		defer hc.end(er.RequestId, cancel)
	}
	r, err := l.client.Execute(cctx, er)
	if err != nil {
		return zero, p.callError(ctx, l, "Execute", err)
	}
	resp, err := p.decode(r.Payload)
	if err != nil {
		return zero, wrapError(err, codeRemote, p.name, "the answer does not decode with codec %q; host and plugin disagree on the response type", p.codec)
	}
	return resp, nil
}

// Health checks the plugin through the standard grpc.health.v1 service:
// nil when it reports SERVING, ErrUnhealthy when it reports otherwise, the
// call's error (see Execute) when it cannot answer or its child is down.
func (p *grpcPlugin[Req, Resp]) Health(ctx context.Context) error {
	l, err := p.live()
	if err != nil {
		return err
	}
	defer l.release()
	r, err := l.health.Check(ctx, &healthpb.HealthCheckRequest{Service: pluginpb.ServiceName})
	if err != nil {
		return p.callError(ctx, l, "Health", err)
	}
	if r.Status != healthpb.HealthCheckResponse_SERVING {
		return newError(codeUnhealthy, p.name, "the plugin's health service reports %s", r.Status)
	}
	return nil
}

// PersistState asks the plugin for its state (surface "state").
func (p *grpcPlugin[Req, Resp]) PersistState(ctx context.Context) ([]byte, error) {
	l, err := p.live()
	if err != nil {
		return nil, err
	}
	defer l.release()
	r, err := l.client.PersistState(ctx, &pluginpb.PersistStateRequest{})
	if err != nil {
		return nil, p.callError(ctx, l, "PersistState", err)
	}
	return r.State, nil
}

// RestoreState hands state to the plugin (surface "state").
func (p *grpcPlugin[Req, Resp]) RestoreState(ctx context.Context, state []byte) error {
	l, err := p.live()
	if err != nil {
		return err
	}
	defer l.release()
	if _, err := l.client.RestoreState(ctx, &pluginpb.RestoreStateRequest{State: state}); err != nil {
		return p.callError(ctx, l, "RestoreState", err)
	}
	return nil
}

// Checkpoint stops the plugin's stream processing and returns its position
// (surface "stream").
func (p *grpcPlugin[Req, Resp]) Checkpoint(ctx context.Context) ([]byte, error) {
	l, err := p.live()
	if err != nil {
		return nil, err
	}
	defer l.release()
	r, err := l.client.Checkpoint(ctx, &pluginpb.CheckpointRequest{})
	if err != nil {
		return nil, p.callError(ctx, l, "Checkpoint", err)
	}
	return r.Position, nil
}

// Resume restarts the plugin's stream processing from position (surface
// "stream").
func (p *grpcPlugin[Req, Resp]) Resume(ctx context.Context, position []byte) error {
	l, err := p.live()
	if err != nil {
		return err
	}
	defer l.release()
	if _, err := l.client.Resume(ctx, &pluginpb.ResumeRequest{Position: position}); err != nil {
		return p.callError(ctx, l, "Resume", err)
	}
	return nil
}

// CheckCompat asks the plugin whether it can replace the plugin old
// describes (surface "schema"); the plugin's refusal is an ErrRemote.
func (p *grpcPlugin[Req, Resp]) CheckCompat(ctx context.Context, old PluginInfo) error {
	l, err := p.live()
	if err != nil {
		return err
	}
	defer l.release()
	req := &pluginpb.CheckCompatRequest{Old: &pluginpb.InfoResponse{
		Name: old.Name, Version: old.Version, Description: old.Description, Metadata: old.Metadata,
	}}
	for _, s := range old.Surfaces {
		req.Old.Surfaces = append(req.Old.Surfaces, string(s))
	}
	if _, err := l.client.CheckCompat(ctx, req); err != nil {
		return p.callError(ctx, l, "CheckCompat", err)
	}
	return nil
}

// restartCount returns how many restart attempts of a crashed child were
// made so far.
func (p *grpcPlugin[Req, Resp]) restartCount() int { return int(p.restarts.Load()) }

// Pid returns the process id of the plugin's child process (also its
// process group id), or 0 for a remote endpoint and while the child is
// down.
func (p *grpcPlugin[Req, Resp]) Pid() int { return int(p.pid.Load()) }

// live returns the connection to call, counting the call in flight until
// its release, or the error explaining why there is none.
func (p *grpcPlugin[Req, Resp]) live() (*grpcLink, error) {
	if p.closed.Load() {
		return nil, p.closedError()
	}
	if l := p.link.Load(); l != nil && !l.exited() {
		l.calls.Add(1)
		return l, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return nil, downError(p.name, p.closed.Load(), p.leftDown(), p.cfg.Restart)
}

// release ends a call that live counted.
func (l *grpcLink) release() {
	if l.calls.Add(-1) == 0 && l.draining.Load() {
		select {
		case l.idle <- struct{}{}:
		default:
		}
	}
}

// awaitCalls waits, bounded by ctx, until no call is in flight over l, and
// reports whether none is.
func (l *grpcLink) awaitCalls(ctx context.Context) bool {
	l.draining.Store(true)
	for l.calls.Load() != 0 {
		select {
		case <-l.idle:
		case <-ctx.Done():
			return false
		}
	}
	return true
}

// exited reports whether l's child has exited.
func (l *grpcLink) exited() bool {
	if l.child == nil {
		return false
	}
	select {
	case <-l.child.proc.Done():
		return true
	default:
		return false
	}
}

// awaitExit waits, bounded by ctx and grpcExitWait, for l's child to exit,
// and reports whether it did.
func (l *grpcLink) awaitExit(ctx context.Context) bool {
	t := time.NewTimer(grpcExitWait)
	defer t.Stop()
	select {
	case <-l.child.proc.Done():
		return true
	case <-ctx.Done():
	case <-t.C:
	}
	return false
}

// serve makes l the connection calls use.
func (p *grpcPlugin[Req, Resp]) serve(l *grpcLink) {
	// With a handle, the stream is ready before the connection serves: the
	// plugin's first requests can call the host. A UseHost racing with the
	// store starts it otherwise.
	started := p.host.Load() != nil
	if started {
		p.startHostCalls(l)
	}
	p.link.Store(l)
	if l.child != nil {
		p.pid.Store(int64(l.child.proc.Pid()))
	}
	if !started && p.host.Load() != nil {
		p.startHostCalls(l)
	}
}

// supervise restarts the child each time it exits, until Close. l is the
// serving connection.
func (p *grpcPlugin[Req, Resp]) supervise(l *grpcLink) {
	defer p.wg.Done()
	p.lifecycle.supervise(p.ctx, p.cfg.Restart, p.restart, grpcSupervised[Req, Resp]{p, l})
}

// restart starts a new child and makes it the serving one. Close, if it
// is running, swaps it out and closes it after the supervisor returned.
func (p *grpcPlugin[Req, Resp]) restart(ctx context.Context) (supervise.Child, error) {
	l, err := p.open(ctx)
	if err != nil {
		return nil, err
	}
	p.serve(l)
	return grpcSupervised[Req, Resp]{p, l}, nil
}

// grpcSupervised is a child as the supervisor sees it.
type grpcSupervised[Req, Resp any] struct {
	p *grpcPlugin[Req, Resp]
	l *grpcLink
}

func (s grpcSupervised[Req, Resp]) Wait(ctx context.Context) error {
	pr := s.l.child.proc
	select {
	case <-pr.Done():
	case <-ctx.Done():
		return nil
	}
	if s.p.link.CompareAndSwap(s.l, nil) {
		s.p.pid.Store(0)
	}
	if err := s.p.closeLink(ctx, s.l); err != nil {
		s.p.log.Warn("goplugins: releasing the exited gRPC plugin", "plugin", s.p.name, "err", err)
	}
	return newError(codeCrashed, s.p.name, "the gRPC plugin process (pid %d) exited: %v", pr.Pid(), pr.State())
}

// Close disconnects from the plugin. It stops restarting a crashed child
// (abandoning a restart under way) and returns once the supervisor is
// gone. A child is asked to shut down gracefully: it finishes its calls in
// flight, and their callers get the answers (Close waits for them until
// GRPCConfig.StopGrace after the request, bounded by ctx, before closing
// the connection). It is then stopped by escalation: SIGTERM to its
// process group StopGrace after the request, SIGKILL 2·StopGrace after it
// (SIGKILL at once when ctx ends). It is reaped and its socket directory
// removed. A remote service is left
// running. Calling Close again returns the first call's result.
func (p *grpcPlugin[Req, Resp]) Close(ctx context.Context) error {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed.Store(true)
		p.mu.Unlock()
		if p.cancel != nil {
			p.cancel()
		}
		p.wg.Wait()
		p.pid.Store(0)
		if l := p.link.Swap(nil); l != nil {
			p.closeErr = p.closeLink(ctx, l)
		}
	})
	return p.closeErr
}

// closeLink closes l's connection and stops its child, if any, as
// GRPCConfig.StopGrace says: a child that accepts the Shutdown RPC has
// until StopGrace after it to finish the calls in flight over l (the
// connection is closed after them) and exit, then SIGTERM and SIGKILL
// follow StopGrace apart; one that refuses it gets SIGTERM at once.
func (p *grpcPlugin[Req, Resp]) closeLink(ctx context.Context, l *grpcLink) error {
	var errs []error
	asked := time.Now()
	if l.child != nil && l.child.proc != nil && !l.exited() {
		err := errors.New("no client was made")
		if l.client != nil {
			sctx, cancel := context.WithDeadline(ctx, asked.Add(p.grace))
			_, err = l.client.Shutdown(sctx, &pluginpb.ShutdownRequest{})
			cancel()
		}
		if err != nil {
			// Not asked politely: the polite grace is over.
			p.log.Debug("goplugins: the gRPC plugin did not accept Shutdown; stopping it by signal", "plugin", p.name, "err", err)
			asked = time.Now().Add(-p.grace)
		} else {
			// The child finishes its calls in flight before it exits;
			// closing the connection now would cancel them on this side.
			wctx, cancel := context.WithDeadline(ctx, asked.Add(p.grace))
			if !l.awaitCalls(wctx) {
				p.log.Warn("goplugins: calls to the gRPC plugin were still in flight after Shutdown; they are cancelled", "plugin", p.name, "calls", l.calls.Load())
			}
			cancel()
		}
	}
	if l.conn != nil {
		if err := l.conn.Close(); err != nil {
			errs = append(errs, wrapError(err, codeTransport, p.name, "closing the connection"))
		}
	}
	if l.hosts != nil && !l.hosts.close(ctx) {
		p.log.Warn("goplugins: host calls of the gRPC plugin were still running when the connection closed", "plugin", p.name)
	}
	if l.child != nil {
		if l.child.proc != nil {
			if sig := l.child.proc.StopSince(ctx, asked, p.grace); sig != 0 {
				p.log.Warn("goplugins: the gRPC plugin did not exit after Shutdown; it was signalled", "plugin", p.name, "signal", sig.String())
			}
		}
		if err := os.RemoveAll(l.child.dir); err != nil {
			errs = append(errs, wrapError(err, codeTransport, p.name, "removing the socket directory %s", l.child.dir))
		}
	}
	return errors.Join(errs...)
}

func (p *grpcPlugin[Req, Resp]) closedError() error {
	return newError(codeClosed, p.name, "the gRPC plugin is closed; create a new one with NewGRPCPlugin")
}

// callError turns the error of a call to the plugin over l into the
// library's typed error, naming the plugin and the operation.
func (p *grpcPlugin[Req, Resp]) callError(ctx context.Context, l *grpcLink, op string, err error) error {
	if ctx.Err() != nil || deadlinePassed(ctx) {
		return canceledError(ctx, p.name)
	}
	if p.closed.Load() {
		return p.closedError()
	}
	if errors.Is(err, ErrInvalidConfig) {
		return err // the host's own check, before sending
	}
	st := status.Convert(err)
	for _, d := range st.Details() {
		if e, ok := d.(*pluginpb.Error); ok {
			return remoteError(p.name, op, e.Code, e.Message, e.Retryable)
		}
	}
	if l.child != nil {
		// A lost connection to a child is most often its exit, which is
		// confirmed once it has been reaped.
		if l.exited() || st.Code() == codes.Unavailable && l.awaitExit(ctx) {
			pr := l.child.proc
			return withStderr(newError(codeCrashed, p.name, "%s failed: the plugin process exited (%v)", op, pr.State()), pr)
		}
		if ctx.Err() != nil {
			return canceledError(ctx, p.name)
		}
	}
	return p.statusError(ctx, op, st)
}

// deadlinePassed reports whether ctx's deadline has passed though ctx's
// own timer may not have marked it done yet: gRPC, and the plugin's
// handler (whose deadline derives from ctx's), can see it pass first.
func deadlinePassed(ctx context.Context) bool {
	d, ok := ctx.Deadline()
	return ok && time.Until(d) <= 0
}

// statusError is the error of a gRPC status without the plugin's Error
// detail.
func (p *grpcPlugin[Req, Resp]) statusError(ctx context.Context, op string, st *status.Status) error {
	switch st.Code() {
	case codes.Unavailable:
		return retryable(newError(codeTransport, p.name, "%s failed: the plugin is unreachable (%s); the call may be retried", op, st.Message()))
	case codes.ResourceExhausted:
		return newError(codeFrameTooLarge, p.name, "%s failed: a message is over a gRPC size limit (%s); the request cannot be retried as it is", op, st.Message())
	case codes.Aborted:
		return retryable(newError(codeRemote, p.name, "%s failed with %s: %s; the call may be retried", op, st.Code(), st.Message()))
	case codes.DeadlineExceeded:
		return newError(codeTimeout, p.name, "%s got no answer in time: %s", op, st.Message())
	case codes.Canceled:
		return newError(codeTransport, p.name, "%s was cancelled by the connection: %s", op, st.Message())
	case codes.Unauthenticated, codes.PermissionDenied:
		return newError(codeTransport, p.name, "%s was refused (%s): %s; check the TLS and credential settings", op, st.Code(), st.Message())
	case codes.Unimplemented:
		return newError(codeRemote, p.name, "%s is not implemented by the plugin: %s", op, st.Message())
	default:
		return newError(codeRemote, p.name, "%s failed with %s: %s", op, st.Code(), st.Message())
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

// socketTempDir returns a directory short enough for a unix socket path
// (at most 108 bytes on Linux) inside it.
func socketTempDir() string {
	if dir := os.TempDir(); len(dir) <= 64 {
		return dir
	}
	return "/tmp"
}

// Interfaces a GRPCPlugin implements.
var (
	_ Plugin[any, any] = (*grpcPlugin[any, any])(nil)
	_ StatefulPlugin   = (*grpcPlugin[any, any])(nil)
	_ StreamPlugin     = (*grpcPlugin[any, any])(nil)
	_ SchemaPlugin     = (*grpcPlugin[any, any])(nil)
	_ HostUser         = (*grpcPlugin[any, any])(nil)
)
