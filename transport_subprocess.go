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
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goerrors "github.com/agilira/go-errors"

	"github.com/goplugins/goplugins/internal/proc"
	"github.com/goplugins/goplugins/internal/wire"
)

// Defaults of SubprocessConfig, as documented on its fields.
const (
	subprocessStartTimeout   = 10 * time.Second
	subprocessStopTimeout    = 5 * time.Second
	subprocessRestartBackoff = 100 * time.Millisecond
	subprocessMaxBackoff     = 10 * time.Second
	subprocessMaxRestarts    = 5
)

// SubprocessConfig describes a plugin that runs as a child process speaking
// the protocol of docs/PROTOCOL.md (for Go plugins: the sdk package).
type SubprocessConfig struct {
	// Name is the plugin's name; the child must report the same name.
	Name string
	// Version, when set, is the exact version the child must report.
	Version string
	// Path is the plugin binary.
	Path string
	// Args are the arguments, without the program name.
	Args []string
	// Env holds the child's environment variables. The child gets these,
	// the protocol's magic cookie and nothing else (not even PATH) unless
	// InheritEnv is set.
	Env map[string]string
	// InheritEnv passes the host's environment too (Env overrides it).
	InheritEnv bool
	// Dir is the child's working directory; "" for the host's.
	Dir string
	// Checksum, when set, is "sha256:<hex>" of the binary. It is checked
	// before every start (restarts included), and on Linux the child runs
	// from a sealed in-memory copy of the very bytes checked. For a script
	// ("#!") the script is checked, not its interpreter.
	Checksum string
	// Codec encodes requests and responses; nil means JSONCodec.
	Codec Codec
	// StartTimeout bounds the start and handshake (default 10s).
	StartTimeout time.Duration
	// CallTimeout, when > 0, bounds every call on top of the caller's ctx;
	// a call that reaches it fails with ErrTimeout.
	CallTimeout time.Duration
	// StallTimeout is how long the host waits for a child that takes no
	// byte of the requests written to it before it decides the child
	// stopped reading: the child is then killed, its calls fail with
	// ErrCrashed, and it is restarted (default 5s).
	StallTimeout time.Duration
	// StopTimeout is each grace period of Close: after the shutdown
	// message, then after SIGTERM (default 5s).
	StopTimeout time.Duration
	// Restart says how a crashed child is restarted.
	Restart RestartPolicy
	// MaxFrameSize is the largest frame the host accepts, in bytes
	// (wire default 4 MiB, at least 1 KiB, at most 1 GiB).
	MaxFrameSize int
	// Logger receives the child's stdout and stderr lines and the
	// transport's own records; nil means slog.Default().
	Logger *slog.Logger
	// OnRestart, when set, is called after every restart attempt with the
	// attempt number (1 for the first after a crash) and its error (nil
	// when the child is serving again). It runs on the supervising
	// goroutine: it must return promptly and must not call Close.
	OnRestart func(attempt int, err error)
}

// RestartPolicy bounds the restarts of a crashed plugin child process
// (subprocess or gRPC). The n-th consecutive attempt waits Backoff·2ⁿ⁻¹, at
// most MaxBackoff. The count starts again once a restarted child has
// answered a call.
type RestartPolicy struct {
	// MaxAttempts is how many consecutive attempts are made before the
	// plugin stays down: 0 means 5, < 0 never restart.
	MaxAttempts int
	// Backoff is the first wait (default 100ms).
	Backoff time.Duration
	// MaxBackoff caps the wait (default 10s, or Backoff if that is longer).
	MaxBackoff time.Duration
}

// withDefaults returns r with its zero fields set to their defaults.
func (r RestartPolicy) withDefaults() RestartPolicy {
	if r.MaxAttempts == 0 {
		r.MaxAttempts = subprocessMaxRestarts
	}
	if r.Backoff <= 0 {
		r.Backoff = subprocessRestartBackoff
	}
	if r.MaxBackoff <= 0 {
		r.MaxBackoff = max(subprocessMaxBackoff, r.Backoff)
	}
	return r
}

// delay returns the wait before the given consecutive attempt (from 1) of
// a policy with defaults set.
func (r RestartPolicy) delay(attempt int) time.Duration {
	wait := r.Backoff << min(attempt-1, 32)
	if wait <= 0 || wait > r.MaxBackoff {
		wait = r.MaxBackoff
	}
	return wait
}

// Subprocess is a plugin running as a supervised child process. It
// implements Plugin, StatefulPlugin, StreamPlugin and SchemaPlugin by
// forwarding over the wire; the surfaces the child reports in its handshake
// (PluginInfo.Surfaces) say which of them the child really has.
//
// Calls are multiplexed over one child. If the child crashes, calls in
// flight fail with ErrCrashed (with the exit status and the tail of its
// stderr), the child is restarted with backoff, and meanwhile calls and
// Health fail fast with a retryable ErrCrashed.
type Subprocess[Req, Resp any] struct {
	cfg   SubprocessConfig
	sum   []byte
	codec Codec
	log   *slog.Logger

	conn     atomic.Pointer[subConn] // nil while down
	info     atomic.Pointer[PluginInfo]
	restarts atomic.Int64

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // the supervisor

	mu     sync.Mutex
	closed bool
	down   error // set when restarts were given up
}

// NewSubprocess starts the plugin described by cfg and completes the
// handshake. Errors match ErrInvalidConfig (bad cfg), ErrChecksumMismatch
// (nothing ran), ErrHandshake (not a plugin, or the name or version is not
// the expected one) or ErrProtocolVersion.
func NewSubprocess[Req, Resp any](ctx context.Context, cfg SubprocessConfig) (*Subprocess[Req, Resp], error) {
	s := &Subprocess[Req, Resp]{cfg: cfg, codec: cfg.Codec, log: cfg.Logger}
	if err := s.validate(); err != nil {
		return nil, err
	}
	c, err := s.start(ctx)
	if err != nil {
		return nil, err
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.conn.Store(c)
	s.info.Store(&c.info)
	s.wg.Add(1)
	go s.supervise(c)
	return s, nil
}

// validate checks cfg and fills in defaults.
func (s *Subprocess[Req, Resp]) validate() error {
	cfg := &s.cfg
	if err := ValidateName(cfg.Name); err != nil {
		return wrapError(err, CodeInvalidConfig, cfg.Name, "SubprocessConfig.Name")
	}
	if cfg.Version != "" {
		if _, err := ParseVersion(cfg.Name, cfg.Version); err != nil {
			return wrapError(err, CodeInvalidConfig, cfg.Name, "SubprocessConfig.Version")
		}
	}
	if cfg.Path == "" {
		return newError(CodeInvalidConfig, cfg.Name, "SubprocessConfig.Path is empty; set it to the plugin binary")
	}
	if cfg.Checksum != "" {
		sum, err := proc.ParseChecksum(cfg.Checksum)
		if err != nil {
			return wrapError(err, CodeInvalidConfig, cfg.Name, "SubprocessConfig.Checksum")
		}
		s.sum = sum
	}
	for k := range cfg.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return newError(CodeInvalidConfig, cfg.Name, "SubprocessConfig.Env has the invalid variable name %q", k)
		}
	}
	switch {
	case cfg.MaxFrameSize == 0:
		cfg.MaxFrameSize = wire.DefaultMaxFrameSize
	case cfg.MaxFrameSize < wire.MinMaxFrameSize:
		return newError(CodeInvalidConfig, cfg.Name, "SubprocessConfig.MaxFrameSize %d is below the minimum of %d bytes", cfg.MaxFrameSize, wire.MinMaxFrameSize)
	case cfg.MaxFrameSize > wire.MaxFrameSizeLimit:
		return newError(CodeInvalidConfig, cfg.Name, "SubprocessConfig.MaxFrameSize %d is over the protocol's limit of %d bytes", cfg.MaxFrameSize, wire.MaxFrameSizeLimit)
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = subprocessStartTimeout
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = subprocessStopTimeout
	}
	cfg.Restart = cfg.Restart.withDefaults()
	if s.codec == nil {
		s.codec = JSONCodec
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.log = s.log.With(slog.String("plugin", cfg.Name))
	return nil
}

// environ returns the child's environment.
func (s *Subprocess[Req, Resp]) environ() []string {
	var env []string
	if s.cfg.InheritEnv {
		env = slices.DeleteFunc(os.Environ(), func(kv string) bool {
			k, _, _ := strings.Cut(kv, "=")
			_, override := s.cfg.Env[k]
			return override || k == wire.CookieKey
		})
	}
	for k, v := range s.cfg.Env {
		env = append(env, k+"="+v)
	}
	slices.Sort(env[len(env)-len(s.cfg.Env):])
	return append(env, wire.CookieKey+"="+wire.CookieValue)
}

// start starts a child and completes the handshake.
func (s *Subprocess[Req, Resp]) start(ctx context.Context) (*subConn, error) {
	name := s.cfg.Name
	childIn, toChild, err := os.Pipe()
	if err != nil {
		return nil, wrapError(err, CodeTransport, name, "creating the protocol pipe")
	}
	toHost, childOut, err := os.Pipe()
	if err != nil {
		childIn.Close()
		toChild.Close()
		return nil, wrapError(err, CodeTransport, name, "creating the protocol pipe")
	}
	p, err := proc.Start(proc.Config{
		Path:       s.cfg.Path,
		Args:       s.cfg.Args,
		Env:        s.environ(),
		Dir:        s.cfg.Dir,
		SHA256:     s.sum,
		ExtraFiles: []*os.File{childIn, childOut},
		Stdout:     s.logLine("stdout"),
		Stderr:     s.logLine("stderr"),
	})
	childIn.Close()
	childOut.Close()
	if err != nil {
		toChild.Close()
		toHost.Close()
		if errors.Is(err, proc.ErrChecksum) {
			return nil, wrapError(err, CodeChecksumMismatch, name, "refusing to run %s: replace the binary or update the checksum", s.cfg.Path)
		}
		return nil, wrapError(err, CodeTransport, name, "starting %s", s.cfg.Path)
	}
	c := newSubConn(name, p, toChild, toHost, subLimits{readMax: s.cfg.MaxFrameSize, grace: s.cfg.StopTimeout, stall: s.cfg.StallTimeout})
	if err := s.handshake(ctx, c); err != nil {
		c.kill()
		return nil, err
	}
	s.log.Debug("plugin started", slog.Int("pid", p.Pid()), slog.String("version", c.info.Version))
	return c, nil
}

// logLine returns the callback that forwards one output stream's lines.
func (s *Subprocess[Req, Resp]) logLine(stream string) func([]byte) {
	return func(line []byte) {
		level, msg, attrs := parseLogLine(line)
		attrs = append(attrs, slog.String("stream", stream))
		s.log.LogAttrs(context.Background(), level, msg, attrs...)
	}
}

// parseLogLine reads a JSON log line ({"level": ..., "msg": ...}) as a
// record with that level and message and its other fields as attributes;
// any other line is an Info record with the line as message.
func parseLogLine(line []byte) (slog.Level, string, []slog.Attr) {
	if len(line) == 0 || line[0] != '{' {
		return slog.LevelInfo, string(line), nil
	}
	var fields map[string]any
	if json.Unmarshal(line, &fields) != nil {
		return slog.LevelInfo, string(line), nil
	}
	lv, ok := fields["level"].(string)
	var level slog.Level
	if !ok || level.UnmarshalText([]byte(strings.ToUpper(strings.Replace(lv, "warning", "warn", 1)))) != nil {
		return slog.LevelInfo, string(line), nil
	}
	msg, _ := fields["msg"].(string)
	if m, ok := fields["message"].(string); ok && msg == "" {
		msg = m
	}
	keys := make([]string, 0, len(fields))
	for k := range fields {
		switch k {
		case "level", "msg", "message", "time":
		default:
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	attrs := make([]slog.Attr, 0, len(keys)+1)
	for _, k := range keys {
		attrs = append(attrs, slog.Any(k, fields[k]))
	}
	return level, msg, attrs
}

// supervise restarts the child each time it dies, until Close.
func (s *Subprocess[Req, Resp]) supervise(c *subConn) {
	defer s.wg.Done()
	attempt := 0
	for {
		select {
		case <-c.dead:
		case <-c.proc.Done(): // crashed while no call was reading
			c.ended(io.EOF)
		case <-s.ctx.Done():
			return
		}
		if s.conn.CompareAndSwap(c, nil) {
			c.release()
		}
		if c.served.Load() {
			attempt = 0
		}
		s.log.Warn("plugin process ended", slog.Any("error", c.err))
		for {
			attempt++
			if s.cfg.Restart.MaxAttempts < 0 || attempt > s.cfg.Restart.MaxAttempts {
				s.mu.Lock()
				s.down = newError(CodeCrashed, s.cfg.Name, "the plugin crashed and is not restarted (%d attempts made, RestartPolicy.MaxAttempts %d); last exit: %v", attempt-1, s.cfg.Restart.MaxAttempts, c.err)
				s.mu.Unlock()
				s.log.Error("plugin left down", slog.Int("attempts", attempt-1))
				return
			}
			t := time.NewTimer(s.cfg.Restart.delay(attempt))
			select {
			case <-t.C:
			case <-s.ctx.Done():
				t.Stop()
				return
			}
			nc, err := s.start(s.ctx)
			s.restarts.Add(1)
			if err == nil {
				s.mu.Lock()
				if s.closed {
					s.mu.Unlock()
					nc.kill()
					return
				}
				s.conn.Store(nc)
				s.info.Store(&nc.info)
				s.mu.Unlock()
				c = nc
			}
			s.log.Info("plugin restart", slog.Int("attempt", attempt), slog.Int64("restarts", s.restarts.Load()), slog.Any("error", err))
			if s.cfg.OnRestart != nil {
				s.cfg.OnRestart(attempt, err)
			}
			if err == nil {
				break
			}
		}
	}
}

// live returns the serving child, or the error explaining why none is.
func (s *Subprocess[Req, Resp]) live() (*subConn, error) {
	if c := s.conn.Load(); c != nil && !c.isDead() {
		return c, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return nil, newError(CodeClosed, s.cfg.Name, "the plugin is closed")
	case s.down != nil:
		return nil, s.down
	case s.cfg.Restart.MaxAttempts < 0:
		return nil, newError(CodeCrashed, s.cfg.Name, "the plugin process is down and restarts are disabled (RestartPolicy.MaxAttempts < 0)")
	}
	err := newError(CodeCrashed, s.cfg.Name, "the plugin process is down and being restarted; retry later")
	var e *goerrors.Error
	if errors.As(err, &e) {
		e.AsRetryable()
	}
	return nil, err
}

// Info returns the info the child reported in its handshake (a copy: the
// caller may modify it).
func (s *Subprocess[Req, Resp]) Info() PluginInfo {
	info := *s.info.Load()
	info.Surfaces = slices.Clone(info.Surfaces)
	info.Metadata = maps.Clone(info.Metadata)
	return info
}

// Restarts returns how many restart attempts were made so far.
func (s *Subprocess[Req, Resp]) Restarts() int { return int(s.restarts.Load()) }

// Execute sends req to the child and returns its answer. When ctx ends
// first the call is abandoned (a request already sent is cancelled in the
// child, one not yet sent is dropped) and the error matches ErrCanceled and
// ctx's error; past CallTimeout it matches ErrTimeout.
func (s *Subprocess[Req, Resp]) Execute(ctx context.Context, req Req) (Resp, error) {
	var zero Resp
	c, err := s.live()
	if err != nil {
		return zero, err
	}
	payload, err := s.codec.Marshal(req)
	if err != nil {
		return zero, wrapError(err, CodeTransport, s.cfg.Name, "encoding the request with codec %q", s.codec.Name())
	}
	out, err := c.call(ctx, wire.TypeCall, payload, s.cfg.CallTimeout)
	if err != nil {
		return zero, err
	}
	var resp Resp
	if err := s.codec.Unmarshal(out, &resp); err != nil {
		return zero, wrapError(err, CodeTransport, s.cfg.Name, "the plugin's answer does not decode with codec %q", s.codec.Name())
	}
	c.served.Store(true)
	return resp, nil
}

// Health pings the child; it fails while the child is down.
func (s *Subprocess[Req, Resp]) Health(ctx context.Context) error {
	_, err := s.control(ctx, wire.TypeHealth, "", nil)
	return err
}

// PersistState asks the child for its state (surface "state").
func (s *Subprocess[Req, Resp]) PersistState(ctx context.Context) ([]byte, error) {
	return s.control(ctx, wire.TypePersist, SurfaceState, nil)
}

// RestoreState hands state to the child (surface "state").
func (s *Subprocess[Req, Resp]) RestoreState(ctx context.Context, state []byte) error {
	_, err := s.control(ctx, wire.TypeRestore, SurfaceState, state)
	return err
}

// Checkpoint stops the child's stream and returns its position (surface
// "stream").
func (s *Subprocess[Req, Resp]) Checkpoint(ctx context.Context) ([]byte, error) {
	return s.control(ctx, wire.TypeCheckpoint, SurfaceStream, nil)
}

// Resume restarts the child's stream from position (surface "stream").
func (s *Subprocess[Req, Resp]) Resume(ctx context.Context, position []byte) error {
	_, err := s.control(ctx, wire.TypeResume, SurfaceStream, position)
	return err
}

// CheckCompat asks the child whether it can replace old (surface "schema").
// A refusal matches ErrSchemaIncompatible.
func (s *Subprocess[Req, Resp]) CheckCompat(ctx context.Context, old PluginInfo) error {
	payload, err := json.Marshal(old)
	if err != nil {
		return wrapError(err, CodeInvalidPlugin, s.cfg.Name, "encoding the old plugin's info")
	}
	_, err = s.control(ctx, wire.TypeCheckCompat, SurfaceSchema, payload)
	if errors.Is(err, ErrRemote) {
		return wrapError(err, CodeSchemaIncompatible, s.cfg.Name, "the plugin cannot replace %s %s", old.Name, old.Version)
	}
	return err
}

// control sends a control request that needs surface (none when "").
func (s *Subprocess[Req, Resp]) control(ctx context.Context, t wire.Type, surface Surface, payload []byte) ([]byte, error) {
	if surface != "" && !s.Info().Has(surface) {
		return nil, newError(CodeInvalidPlugin, s.cfg.Name, "the plugin does not declare the %q surface, so it cannot answer %s", surface, t)
	}
	c, err := s.live()
	if err != nil {
		return nil, err
	}
	return c.call(ctx, t, payload, s.cfg.CallTimeout)
}

// Close stops the child: the shutdown message, then after StopTimeout
// SIGTERM to its process group, then after StopTimeout again SIGKILL (at
// once when ctx ends). It returns when the child is reaped and every
// goroutine and descriptor of the plugin is released. Calling Close again
// returns nil.
func (s *Subprocess[Req, Resp]) Close(ctx context.Context) error {
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
	if c == nil {
		return nil
	}
	if sig := c.stop(ctx, s.cfg.StopTimeout); sig != 0 {
		s.log.Warn("plugin did not exit on shutdown", slog.String("signal", sig.String()))
	}
	return nil
}

// Compile-time checks of the interfaces Subprocess implements.
var (
	_ Plugin[any, any] = (*Subprocess[any, any])(nil)
	_ StatefulPlugin   = (*Subprocess[any, any])(nil)
	_ StreamPlugin     = (*Subprocess[any, any])(nil)
	_ SchemaPlugin     = (*Subprocess[any, any])(nil)
)
