package goplugins

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/goplugins/goplugins/internal/proc"
	"github.com/goplugins/goplugins/internal/supervise"
	"github.com/goplugins/goplugins/internal/wire"
)

// SubprocessConfig describes a plugin that runs as a child process speaking
// the protocol of docs/PROTOCOL.md (for Go plugins: the sdk package). The
// child-process fields (Command through OnRestart) have the same names and
// meaning as GRPCConfig's.
type SubprocessConfig struct {
	// Name is the plugin's name; the child must report the same name.
	Name string
	// Version, when set, is the exact version the child must report.
	Version string

	// Command is the plugin program.
	Command string
	// Args are the arguments, without the program name.
	Args []string
	// Env holds the child's environment variables. The child gets the
	// host's PATH (unless Env sets it), Env and the protocol's magic cookie,
	// nothing else, unless InheritEnv is set.
	Env map[string]string
	// InheritEnv passes the host's whole environment too (Env overrides it).
	InheritEnv bool
	// Dir is the child's working directory; "" for the host's.
	Dir string
	// Checksum, when set, is "sha256:<hex>" of the program. It is checked
	// before every start (restarts included), and on Linux the child runs
	// from a sealed in-memory copy of the very bytes checked. For a script
	// ("#!") the script is checked, not its interpreter.
	Checksum string
	// StartTimeout bounds the start and handshake (default 10s).
	StartTimeout time.Duration
	// StopGrace is each grace period of Close, counted from the shutdown
	// message: SIGTERM goes to the child's process group StopGrace after
	// it, SIGKILL 2·StopGrace after it (default 5s).
	StopGrace time.Duration
	// StallTimeout is how long the host waits for a child that takes no
	// byte of the requests written to it before it decides the child
	// stopped reading: the child is then killed, its calls fail with
	// ErrCrashed, and it is restarted (default 5s).
	StallTimeout time.Duration
	// Restart says how a crashed child is restarted.
	Restart RestartPolicy
	// OnRestart, when set, is called after every restart attempt with the
	// plugin's name, the attempt number (1 for the first after a crash) and
	// its error (nil when the child is serving again). It runs on the
	// supervising goroutine: it must return promptly and must not call
	// Close. Manager.Subscribe reports the same as events.
	OnRestart func(plugin string, attempt int, err error)

	// Codec encodes requests and responses; nil means JSONCodec.
	Codec Codec
	// CallTimeout, when > 0, bounds every call on top of the caller's ctx;
	// a call that reaches it fails with ErrTimeout.
	CallTimeout time.Duration
	// MaxFrameSize is the largest frame the host accepts, in bytes
	// (wire default 4 MiB, at least 1 KiB, at most 1 GiB).
	MaxFrameSize int
	// Logger receives the child's stdout and stderr lines and the
	// transport's own records; nil means slog.Default().
	Logger *slog.Logger
}

// subprocessPlugin is the plugin NewSubprocess returns.
type subprocessPlugin[Req, Resp any] struct {
	lifecycle
	cfg   SubprocessConfig
	sum   []byte
	codec Codec
	log   *slog.Logger

	conn atomic.Pointer[subConn] // nil while down
	info atomic.Pointer[PluginInfo]
	host atomic.Pointer[Host] // the handle its host calls are served with; kept across restarts

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // the supervisor

	mu     sync.Mutex
	closed bool
}

// NewSubprocess starts the plugin described by cfg as a supervised child
// process and completes the handshake. Calls are multiplexed over the one
// child. If it crashes, calls in flight fail with ErrCrashed (the tail of
// its stderr is in the error's context under "stderr_tail"), the child is
// restarted as cfg.Restart says, and meanwhile calls and Health fail fast
// with a retryable ErrCrashed. A Manager it is registered with reports the
// crashes and restarts as events (EventCrashed, EventRestarted,
// EventRestartFailed, EventLeftDown). The plugin is safe for concurrent use.
//
// Besides Plugin, the returned value implements StatefulPlugin,
// StreamPlugin and SchemaPlugin by forwarding over the wire (the surfaces
// the child declared in its handshake, in Info().Surfaces, say which of
// them it really has), HostUser (a Manager gives it the handle that
// serves the host calls of a child speaking protocol version 2; a host
// call made before it is refused with not_granted), and
// interface{ Pid() int }: the process id of the serving child (also its
// process group id), 0 while it is down. The metadata of an Execute's ctx
// (ContextWithMetadata) reaches a version 2 child with the request.
//
// Errors match ErrInvalidConfig (bad cfg), ErrChecksumMismatch (nothing
// ran), ErrHandshake (not a plugin, or the name or version is not the
// expected one), or ErrTransport (matching errors.ErrUnsupported too) on an
// OS without child processes (Windows).
func NewSubprocess[Req, Resp any](ctx context.Context, cfg SubprocessConfig) (Plugin[Req, Resp], error) {
	p, err := newSubprocess[Req, Resp](ctx, cfg)
	if err != nil {
		return nil, err // not a typed nil
	}
	return p, nil
}

// newSubprocess is NewSubprocess with the concrete type.
func newSubprocess[Req, Resp any](ctx context.Context, cfg SubprocessConfig) (*subprocessPlugin[Req, Resp], error) {
	s := &subprocessPlugin[Req, Resp]{cfg: cfg, codec: cfg.Codec, log: cfg.Logger}
	if err := s.validate(); err != nil {
		return nil, err
	}
	s.lifecycle = lifecycle{plugin: cfg.Name, log: s.log, onRestart: cfg.OnRestart}
	c, err := s.start(ctx)
	if err != nil {
		return nil, err
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.serve(c)
	s.wg.Add(1)
	go s.supervise(c)
	return s, nil
}

// validate checks cfg and fills in defaults.
func (s *subprocessPlugin[Req, Resp]) validate() error {
	cfg := &s.cfg
	if err := validateName(cfg.Name); err != nil {
		return wrapError(err, codeInvalidConfig, cfg.Name, "SubprocessConfig.Name")
	}
	if cfg.Version != "" {
		if _, err := parseVersion(cfg.Name, cfg.Version); err != nil {
			return wrapError(err, codeInvalidConfig, cfg.Name, "SubprocessConfig.Version")
		}
	}
	if cfg.Command == "" {
		return newError(codeInvalidConfig, cfg.Name, "SubprocessConfig.Command is empty; set it to the plugin program")
	}
	if cfg.Checksum != "" {
		sum, err := proc.ParseChecksum(cfg.Checksum)
		if err != nil {
			return wrapError(err, codeInvalidConfig, cfg.Name, "SubprocessConfig.Checksum")
		}
		s.sum = sum
	}
	for k := range cfg.Env {
		if !envVarName(k) {
			return newError(codeInvalidConfig, cfg.Name, "SubprocessConfig.Env has the invalid variable name %q", k)
		}
	}
	switch {
	case cfg.MaxFrameSize == 0:
		cfg.MaxFrameSize = wire.DefaultMaxFrameSize
	case cfg.MaxFrameSize < wire.MinMaxFrameSize:
		return newError(codeInvalidConfig, cfg.Name, "SubprocessConfig.MaxFrameSize %d is below the minimum of %d bytes", cfg.MaxFrameSize, wire.MinMaxFrameSize)
	case cfg.MaxFrameSize > wire.MaxFrameSizeLimit:
		return newError(codeInvalidConfig, cfg.Name, "SubprocessConfig.MaxFrameSize %d is over the protocol's limit of %d bytes", cfg.MaxFrameSize, wire.MaxFrameSizeLimit)
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = defaultStartTimeout
	}
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = defaultStopGrace
	}
	if s.codec == nil {
		s.codec = JSONCodec{}
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.log = s.log.With(slog.String("plugin", cfg.Name))
	return nil
}

// start starts a child and completes the handshake.
func (s *subprocessPlugin[Req, Resp]) start(ctx context.Context) (*subConn, error) {
	name := s.cfg.Name
	childIn, toChild, err := os.Pipe()
	if err != nil {
		return nil, wrapError(err, codeTransport, name, "creating the protocol pipe")
	}
	toHost, childOut, err := os.Pipe()
	if err != nil {
		childIn.Close()
		toChild.Close()
		return nil, wrapError(err, codeTransport, name, "creating the protocol pipe")
	}
	p, err := proc.Start(proc.Config{
		Path:       s.cfg.Command,
		Args:       s.cfg.Args,
		Env:        childEnviron(s.cfg.Env, s.cfg.InheritEnv, wire.CookieKey+"="+wire.CookieValue),
		Dir:        s.cfg.Dir,
		SHA256:     s.sum,
		ExtraFiles: []*os.File{childIn, childOut},
		Stdout:     lineLogger(s.log, "stdout"),
		Stderr:     lineLogger(s.log, "stderr"),
	})
	childIn.Close()
	childOut.Close()
	if err != nil {
		toChild.Close()
		toHost.Close()
		return nil, startError(err, name, s.cfg.Command, "SubprocessConfig", codeTransport)
	}
	c := newSubConn(name, p, toChild, toHost,
		subLimits{readMax: s.cfg.MaxFrameSize, grace: s.cfg.StopGrace, stall: s.cfg.StallTimeout},
		hostSide{host: &s.host, codec: s.codec, log: s.log})
	if err := s.handshake(ctx, c); err != nil {
		c.kill()
		return nil, err
	}
	s.log.Debug("plugin started", slog.Int("pid", p.Pid()), slog.String("version", c.info.Version))
	return c, nil
}

// serve makes c the serving child.
func (s *subprocessPlugin[Req, Resp]) serve(c *subConn) {
	s.conn.Store(c)
	s.info.Store(&c.info)
	s.pid.Store(int64(c.proc.Pid()))
}

// supervise restarts the child each time it dies, until Close.
func (s *subprocessPlugin[Req, Resp]) supervise(c *subConn) {
	defer s.wg.Done()
	s.lifecycle.supervise(s.ctx, s.cfg.Restart, s.restart, subChild[Req, Resp]{s, c})
}

// restart starts a new child and makes it the serving one, unless Close
// began meanwhile.
func (s *subprocessPlugin[Req, Resp]) restart(ctx context.Context) (supervise.Child, error) {
	c, err := s.start(ctx)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		c.kill()
		return nil, newError(codeClosed, s.cfg.Name, "the plugin was closed during a restart")
	}
	s.serve(c)
	return subChild[Req, Resp]{s, c}, nil
}

// subChild is a child as the supervisor sees it.
type subChild[Req, Resp any] struct {
	s *subprocessPlugin[Req, Resp]
	c *subConn
}

func (sc subChild[Req, Resp]) Wait(ctx context.Context) error {
	c := sc.c
	select {
	case <-c.dead:
	case <-c.proc.Done(): // exited; a descendant may still hold its pipe open
		c.ended(io.EOF)
	case <-ctx.Done():
		return nil
	}
	if sc.s.conn.CompareAndSwap(c, nil) {
		sc.s.pid.Store(0)
		c.release()
	}
	return c.err
}

// live returns the serving child, or the error explaining why none is.
func (s *subprocessPlugin[Req, Resp]) live() (*subConn, error) {
	if c := s.conn.Load(); c != nil && !c.isDead() {
		return c, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return nil, downError(s.cfg.Name, s.closed, s.leftDown(), s.cfg.Restart)
}

// UseHost makes h the handle that serves the host calls of the plugin's
// child (protocol version 2), this one and those restarted after it.
// Until it is called, host calls are refused with ErrNotGranted.
func (s *subprocessPlugin[Req, Resp]) UseHost(h *Host) { s.host.Store(h) }

// Pid returns the process id of the plugin's child process (also its
// process group id), or 0 while it is down.
func (s *subprocessPlugin[Req, Resp]) Pid() int { return int(s.pid.Load()) }

// Info returns the info the child reported in its handshake (a copy: the
// caller may modify it).
func (s *subprocessPlugin[Req, Resp]) Info() PluginInfo {
	info := *s.info.Load()
	info.Surfaces = slices.Clone(info.Surfaces)
	info.Metadata = maps.Clone(info.Metadata)
	return info
}

// restartCount returns how many restart attempts were made so far.
func (s *subprocessPlugin[Req, Resp]) restartCount() int { return int(s.restarts.Load()) }

// Execute sends req to the child and returns its answer. When ctx ends
// first the call is abandoned (a request already sent is cancelled in the
// child, one not yet sent is dropped) and the error matches ErrCanceled and
// ctx's error; past CallTimeout it matches ErrTimeout.
func (s *subprocessPlugin[Req, Resp]) Execute(ctx context.Context, req Req) (Resp, error) {
	var zero Resp
	c, err := s.live()
	if err != nil {
		return zero, err
	}
	payload, err := s.codec.Marshal(req)
	if err != nil {
		return zero, wrapError(err, codeTransport, s.cfg.Name, "encoding the request with codec %q", s.codec.Name())
	}
	out, err := c.call(ctx, wire.TypeCall, payload, s.cfg.CallTimeout)
	if err != nil {
		return zero, err
	}
	var resp Resp
	if err := s.codec.Unmarshal(out, &resp); err != nil {
		return zero, wrapError(err, codeTransport, s.cfg.Name, "the plugin's answer does not decode with codec %q", s.codec.Name())
	}
	c.served.Store(true)
	return resp, nil
}

// Health pings the child; it fails while the child is down.
func (s *subprocessPlugin[Req, Resp]) Health(ctx context.Context) error {
	_, err := s.control(ctx, wire.TypeHealth, "", nil)
	return err
}

// PersistState asks the child for its state (surface "state").
func (s *subprocessPlugin[Req, Resp]) PersistState(ctx context.Context) ([]byte, error) {
	return s.control(ctx, wire.TypePersist, SurfaceState, nil)
}

// RestoreState hands state to the child (surface "state").
func (s *subprocessPlugin[Req, Resp]) RestoreState(ctx context.Context, state []byte) error {
	_, err := s.control(ctx, wire.TypeRestore, SurfaceState, state)
	return err
}

// Checkpoint stops the child's stream and returns its position (surface
// "stream").
func (s *subprocessPlugin[Req, Resp]) Checkpoint(ctx context.Context) ([]byte, error) {
	return s.control(ctx, wire.TypeCheckpoint, SurfaceStream, nil)
}

// Resume restarts the child's stream from position (surface "stream").
func (s *subprocessPlugin[Req, Resp]) Resume(ctx context.Context, position []byte) error {
	_, err := s.control(ctx, wire.TypeResume, SurfaceStream, position)
	return err
}

// CheckCompat asks the child whether it can replace old (surface "schema").
// A refusal matches ErrSchemaIncompatible.
func (s *subprocessPlugin[Req, Resp]) CheckCompat(ctx context.Context, old PluginInfo) error {
	payload, err := json.Marshal(old)
	if err != nil {
		return wrapError(err, codeInvalidPlugin, s.cfg.Name, "encoding the old plugin's info")
	}
	_, err = s.control(ctx, wire.TypeCheckCompat, SurfaceSchema, payload)
	if errors.Is(err, ErrRemote) {
		return wrapError(err, codeSchemaIncompatible, s.cfg.Name, "the plugin cannot replace %s %s", old.Name, old.Version)
	}
	return err
}

// control sends a control request that needs surface (none when "").
func (s *subprocessPlugin[Req, Resp]) control(ctx context.Context, t wire.Type, surface Surface, payload []byte) ([]byte, error) {
	if surface != "" && !s.Info().Has(surface) {
		return nil, newError(codeInvalidPlugin, s.cfg.Name, "the plugin does not declare the %q surface, so it cannot answer %s", surface, t)
	}
	c, err := s.live()
	if err != nil {
		return nil, err
	}
	return c.call(ctx, t, payload, s.cfg.CallTimeout)
}

// Close stops the child: the shutdown message, then StopGrace after it
// SIGTERM to its process group, then 2·StopGrace after it SIGKILL (at
// once when ctx ends). The child's host calls are served until it exits;
// those still running then are cancelled. It returns when the child is
// reaped and every goroutine and descriptor of the plugin is released
// (a host function that ignores its ctx is waited for until ctx ends).
// Calling Close again returns nil.
func (s *subprocessPlugin[Req, Resp]) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	c := s.conn.Swap(nil)
	s.pid.Store(0)
	if c == nil {
		return nil
	}
	if sig := c.stop(ctx, s.cfg.StopGrace); sig != 0 {
		s.log.Warn("plugin did not exit on shutdown", slog.String("signal", sig.String()))
	}
	return nil
}

// Compile-time checks of the interfaces Subprocess implements.
var (
	_ Plugin[any, any] = (*subprocessPlugin[any, any])(nil)
	_ StatefulPlugin   = (*subprocessPlugin[any, any])(nil)
	_ StreamPlugin     = (*subprocessPlugin[any, any])(nil)
	_ SchemaPlugin     = (*subprocessPlugin[any, any])(nil)
	_ HostUser         = (*subprocessPlugin[any, any])(nil)
)
