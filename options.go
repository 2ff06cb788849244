package goplugins

import (
	"log/slog"
	"time"
)

// Option configures a Manager (see NewManager).
type Option interface{ applyManager(*managerConfig) }

// PluginOption configures one plugin at Register (see Manager.Register);
// WithPluginDefaults makes them the defaults of every plugin of a manager.
type PluginOption interface{ applyPlugin(*pluginConfig) }

type managerConfig struct {
	// interceptors, first outermost (WithInterceptors)
	interceptors []Interceptor

	logger      *slog.Logger
	policy      *VersionPolicy
	eventBuffer int
	sampleMask  uint64
	plugin      pluginConfig
	dispatcher  *ReloadDispatcher
	host        hostConfig
}

type pluginConfig struct {
	streamStart bool // WithStreamStart
	streamPos   []byte
	timeout     time.Duration
	drain       time.Duration
	breaker     BreakerConfig
	retry       RetryPolicy
	health      HealthConfig
	hostAsked   []string // the manifest's host_functions; nil: no manifest
}

func defaultManagerConfig() managerConfig {
	return managerConfig{
		logger:      slog.New(slog.DiscardHandler),
		eventBuffer: 256,
		sampleMask:  63,
		dispatcher:  NewReloadDispatcher(),
		host:        hostConfig{limits: HostCallLimits{}.withDefaults()},
		plugin: pluginConfig{
			drain:   10 * time.Second,
			breaker: BreakerConfig{}.withDefaults(),
			retry:   RetryPolicy{}.withDefaults(),
			health:  HealthConfig{}.withDefaults(),
		},
	}
}

type pluginOption func(*pluginConfig)

func (f pluginOption) applyPlugin(c *pluginConfig) { f(c) }

type managerOption func(*managerConfig)

func (f managerOption) applyManager(c *managerConfig) { f(c) }

// WithPluginDefaults makes opts the defaults of every plugin registered
// with the manager: they apply in order, after those of an earlier
// WithPluginDefaults, and the options given to Register apply after them.
func WithPluginDefaults(opts ...PluginOption) Option {
	return managerOption(func(c *managerConfig) {
		for _, o := range opts {
			o.applyPlugin(&c.plugin)
		}
	})
}

// WithStreamStart makes Register start the plugin's first stream: it calls
// Resume(position) on the plugin (a StreamPlugin declaring SurfaceStream),
// bounded by the health-check timeout, before the plugin serves. position
// is where the stream starts; nil means from the beginning, as the plugin
// defines it. If Resume fails, Register fails with ErrInvalidPlugin.
// Without it a plugin starts its first stream on its own; reloads hand the
// stream over with Checkpoint and Resume either way.
func WithStreamStart(position []byte) PluginOption {
	return pluginOption(func(c *pluginConfig) { c.streamStart, c.streamPos = true, position })
}

// WithTimeout bounds each call to a plugin. Zero (the default) means no
// timeout beyond the caller's ctx.
//
// With a timeout set, the call runs on its own goroutine so that a plugin
// that ignores ctx still returns ErrTimeout to the caller on time; the
// manager keeps counting the abandoned call as in flight until it returns,
// so a reload or Unregister still waits for it. This costs a goroutine and
// a few allocations per call; without a timeout, Execute calls the plugin
// directly and allocates nothing.
func WithTimeout(d time.Duration) PluginOption {
	return pluginOption(func(c *pluginConfig) { c.timeout = max(d, 0) })
}

// WithBreaker configures the circuit breaker. Zero fields take their
// defaults (see BreakerConfig).
func WithBreaker(cfg BreakerConfig) PluginOption {
	return pluginOption(func(c *pluginConfig) { c.breaker = cfg.withDefaults() })
}

// WithRetry configures retries of calls that fail with a retryable error
// (see IsRetryable). Zero fields take their defaults (see RetryPolicy).
func WithRetry(p RetryPolicy) PluginOption {
	return pluginOption(func(c *pluginConfig) { c.retry = p.withDefaults() })
}

// WithHealthCheck configures periodic health checks. Zero fields take their
// defaults; a negative Interval turns periodic checks off.
func WithHealthCheck(cfg HealthConfig) PluginOption {
	return pluginOption(func(c *pluginConfig) { c.health = cfg.withDefaults() })
}

// WithDrainTimeout bounds how long a reload of the plugin may pause its
// traffic: the wait for calls in flight plus the handoffs. Parked calls wait
// at most this long, or until their own ctx ends, even when a handoff
// ignores its ctx. Past it the reload fails with ErrDrainTimeout. Zero or
// less means the default, 10s.
func WithDrainTimeout(d time.Duration) PluginOption {
	if d <= 0 {
		d = 10 * time.Second
	}
	return pluginOption(func(c *pluginConfig) { c.drain = d })
}

// WithLogger sets the logger for the manager's own records. By default
// nothing is logged.
func WithLogger(l *slog.Logger) Option {
	return managerOption(func(c *managerConfig) {
		if l != nil {
			c.logger = l
		}
	})
}

// WithVersionPolicy makes Register and Reload check every plugin's version
// against p's per-plugin rules, and a DynamicLoader of the manager also
// check each manifest's "requires.host" against p's host version. Without
// it, neither is checked.
func WithVersionPolicy(p *VersionPolicy) Option {
	return managerOption(func(c *managerConfig) { c.policy = p })
}

// WithEventBuffer sets how many events may wait for each subscriber before
// further events to it are dropped (and counted in Metrics). Default 256.
func WithEventBuffer(n int) Option {
	return managerOption(func(c *managerConfig) { c.eventBuffer = max(n, 1) })
}

// WithLatencySampling makes the latency histogram time one call in every n
// (rounded up to a power of two; default 64, 1 times every call). Reading
// the clock costs more than the rest of Execute.
func WithLatencySampling(n int) Option {
	return managerOption(func(c *managerConfig) {
		p := uint64(1)
		for p < uint64(max(n, 1)) {
			p <<= 1
		}
		c.sampleMask = p - 1
	})
}

// RetryPolicy retries calls that fail with a retryable error.
type RetryPolicy struct {
	// MaxAttempts is the number of attempts in all, the first included.
	// Default 1: no retry.
	MaxAttempts int
	// Backoff is the wait before the first retry; it doubles after each
	// retry up to MaxBackoff. Defaults 10ms and 1s.
	Backoff, MaxBackoff time.Duration
}

func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.MaxAttempts < 1 {
		p.MaxAttempts = 1
	}
	if p.Backoff <= 0 {
		p.Backoff = 10 * time.Millisecond
	}
	if p.MaxBackoff <= 0 {
		p.MaxBackoff = time.Second
	}
	p.MaxBackoff = max(p.MaxBackoff, p.Backoff)
	return p
}
