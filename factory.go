package goplugins

import (
	"context"
	"maps"

	"github.com/goplugins/goplugins/internal/wire"
)

// SubprocessFactory returns the Factory for "subprocess" manifests. The
// manifest gives the name, version, command, arguments, environment,
// checksum and restart policy (and a "requires.protocol" the host does
// not speak, 1 to wire.ProtocolVersion, is refused with ErrHandshake); base gives what manifests do not carry
// (Logger, Codec, InheritEnv, timeouts) and the defaults of the rest. The
// child runs in the manifest's folder unless base.Dir is set.
func SubprocessFactory[Req, Resp any](base SubprocessConfig) Factory[Req, Resp] {
	return func(ctx context.Context, m *Manifest) (Plugin[Req, Resp], error) {
		if p := m.Requires.Protocol; p != 0 && (p < wire.ProtocolV1 || p > wire.ProtocolVersion) {
			return nil, newError(codeHandshake, m.Name,
				"the manifest requires wire protocol %d but this host speaks %d to %d; use a plugin build for one of those",
				p, wire.ProtocolV1, wire.ProtocolVersion)
		}
		cfg := base
		cfg.Name, cfg.Version, cfg.Command, cfg.Checksum = m.Name, m.Version, m.Command, m.Checksum
		cfg.Args, cfg.Env, cfg.Dir, cfg.Restart = childSettings(m, base.Args, base.Env, base.Dir, base.Restart)
		p, err := NewSubprocess[Req, Resp](ctx, cfg)
		if err != nil {
			return nil, err
		}
		return p, nil
	}
}

// GRPCFactory returns the Factory for "grpc" manifests: a child the host
// starts (the manifest's command, restarted as its restart policy says) or
// a remote service (its endpoint, with its TLS files). base gives what
// manifests do not carry (Logger, Codec, DialOptions, AutoMTLS for
// children, TLS for endpoints) and the defaults of the rest. A folder may
// mix both kinds: AutoMTLS applies to the children, TLS to the endpoints
// whose manifests have no "tls" section.
func GRPCFactory[Req, Resp any](base GRPCConfig) Factory[Req, Resp] {
	return func(ctx context.Context, m *Manifest) (Plugin[Req, Resp], error) {
		cfg := base
		cfg.Name, cfg.Version = m.Name, m.Version
		if m.Endpoint != "" {
			cfg.Endpoint, cfg.Command, cfg.AutoMTLS = m.Endpoint, "", false
			if m.TLS != nil {
				cfg.TLS = &TLSFiles{CAFile: m.TLS.CAFile, CertFile: m.TLS.CertFile, KeyFile: m.TLS.KeyFile, ServerName: m.TLS.ServerName}
			}
		} else {
			cfg.Command, cfg.Checksum, cfg.Endpoint, cfg.TLS = m.Command, m.Checksum, "", nil
			cfg.Args, cfg.Env, cfg.Dir, cfg.Restart = childSettings(m, base.Args, base.Env, base.Dir, base.Restart)
		}
		p, err := NewGRPCPlugin[Req, Resp](ctx, cfg)
		if err != nil {
			return nil, err
		}
		return p, nil
	}
}

// childSettings combines a transport's base settings for a child process
// with the manifest's: its arguments follow the base ones, its environment
// overrides the base one, the child runs in the manifest's folder unless
// the base names one, and the manifest's restart fields override the base
// policy's.
func childSettings(m *Manifest, args []string, env map[string]string, dir string, restart RestartPolicy) ([]string, map[string]string, string, RestartPolicy) {
	if dir == "" {
		dir = m.Dir
	}
	return append(append([]string(nil), args...), m.Args...), mergeEnv(env, m.Env), dir, mergeRestart(restart, m.Restart)
}

// mergeRestart returns base overridden by the fields the manifest sets.
func mergeRestart(base RestartPolicy, m RestartPolicy) RestartPolicy {
	if m.MaxAttempts != 0 {
		base.MaxAttempts = m.MaxAttempts
	}
	if m.Backoff > 0 {
		base.Backoff = m.Backoff
	}
	if m.MaxBackoff > 0 {
		base.MaxBackoff = m.MaxBackoff
	}
	if m.MinUptime > 0 {
		base.MinUptime = m.MinUptime
	}
	return base
}

// mergeEnv returns base overridden by over, without changing either.
func mergeEnv(base, over map[string]string) map[string]string {
	if len(base) == 0 && len(over) == 0 {
		return nil
	}
	out := maps.Clone(base)
	if out == nil {
		out = make(map[string]string, len(over))
	}
	maps.Copy(out, over)
	return out
}
