package goplugins

import (
	"fmt"
	"path"
	"slices"
	"time"
)

// Grant allows plugins to call host functions. Nothing is granted by
// default: a plugin may call a function only if a grant matches both its
// name and the function's, and, for a plugin loaded from a manifest, the
// manifest asks for the function (Manifest.HostFunctions). A call refused
// fails with ErrNotGranted in the plugin, is counted
// (PluginMetrics.HostCallsRefused), sent as EventHostCallRefused and
// logged with the plugin's name: as a warning the first time a plugin value
// is refused a function, at debug level after that.
type Grant struct {
	// Plugins is a path.Match pattern of plugin names: "billing",
	// "auth-*", or "*" for every plugin.
	Plugins string
	// Funcs are path.Match patterns of host function names: "kv.get",
	// "kv.*", or "*" for every function.
	Funcs []string
	// Background also allows the calls outside a request, from the
	// plugin's own background work. Subprocess and gRPC plugins say which
	// of their calls are; an in-process plugin shares the host's process,
	// and all its calls count as made within a request.
	Background bool
}

// HostCallLimits bounds the host calls of each plugin.
type HostCallLimits struct {
	// MaxConcurrent is how many host calls one plugin (all its
	// generations together) may have running; one more fails at once with
	// ErrOverloaded. Zero means 64.
	MaxConcurrent int
	// Timeout bounds each host call: its ctx ends this long after the call
	// began, and the call fails with ErrTimeout, unless the plugin's own
	// ctx ends sooner. Zero means 30s.
	Timeout time.Duration
}

func (l HostCallLimits) withDefaults() HostCallLimits {
	if l.MaxConcurrent <= 0 {
		l.MaxConcurrent = 64
	}
	if l.Timeout <= 0 {
		l.Timeout = 30 * time.Second
	}
	return l
}

// hostConfig is the host-call part of a manager's configuration.
type hostConfig struct {
	funcs       map[string]*HostFunc
	grants      []Grant
	limits      HostCallLimits
	interceptor Interceptor // the manager's chain; nil when there is none
}

// WithHostFuncs offers fns to the manager's plugins (see NewHostFunc and
// WithGrants). It may be given more than once; NewManager panics if two
// functions have the same name.
func WithHostFuncs(fns ...HostFunc) Option {
	return managerOption(func(c *managerConfig) {
		if c.host.funcs == nil {
			c.host.funcs = map[string]*HostFunc{}
		}
		for i := range fns {
			f := fns[i]
			if f.encoded == nil {
				panic("goplugins: WithHostFuncs: a HostFunc not made by NewHostFunc")
			}
			if c.host.funcs[f.name] != nil {
				panic(fmt.Sprintf("goplugins: WithHostFuncs: two host functions are named %q", f.name))
			}
			c.host.funcs[f.name] = &f
		}
	})
}

// WithGrants adds grants (see Grant); it may be given more than once, and a
// call is allowed when any grant allows it. It panics on a malformed or
// empty pattern (see path.Match) and on a grant without Funcs: programming
// errors.
func WithGrants(grants ...Grant) Option {
	for _, g := range grants {
		if len(g.Funcs) == 0 {
			panic(fmt.Sprintf("goplugins: WithGrants: the grant to %q has no Funcs; name the functions (\"*\" for all)", g.Plugins))
		}
		for _, p := range append([]string{g.Plugins}, g.Funcs...) {
			if p == "" {
				panic("goplugins: WithGrants: an empty pattern matches nothing; use \"*\" for all")
			}
			if _, err := path.Match(p, ""); err != nil {
				panic(fmt.Sprintf("goplugins: WithGrants: pattern %q: %v", p, err))
			}
		}
	}
	grants = slices.Clone(grants)
	return managerOption(func(c *managerConfig) { c.host.grants = append(c.host.grants, grants...) })
}

// WithHostCallLimits sets the bounds of host calls (see HostCallLimits).
func WithHostCallLimits(l HostCallLimits) Option {
	return managerOption(func(c *managerConfig) { c.host.limits = l.withDefaults() })
}

// withAskedHostFuncs is the Register option of a plugin loaded from a
// manifest: asked is its host_functions, and the plugin may call only
// those (of the functions granted to it).
func withAskedHostFuncs(asked []string) PluginOption {
	asked = nonNil(asked)
	return pluginOption(func(c *pluginConfig) { c.hostAsked = asked })
}

// withReaskedHostFuncs is withAskedHostFuncs for a Reload, with the next
// manifest's host_functions. Without it, the next value may call what the
// old one might.
func withReaskedHostFuncs(asked []string) ReloadOption {
	asked = nonNil(asked)
	return reloadOption(func(c *reloadConfig) { c.hostAsked, c.reasked = asked, true })
}

// nonNil returns s, or an empty slice for nil: a manifest that asks for
// nothing is not the same as no manifest.
func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// access is what a plugin may do with one host function.
type access uint8

const (
	accessNone       access = iota
	accessRequest           // within a request
	accessBackground        // within a request and outside
)

// grantFor returns what plugin may do with function fn. asked is the list
// of functions the plugin's manifest asks for; nil means the plugin has no
// manifest, and the grants alone decide.
func (c *hostConfig) grantFor(plugin, fn string, asked []string) access {
	if asked != nil && !slices.Contains(asked, fn) {
		return accessNone
	}
	a := accessNone
	for _, g := range c.grants {
		if ok, _ := path.Match(g.Plugins, plugin); !ok {
			continue
		}
		for _, p := range g.Funcs {
			if ok, _ := path.Match(p, fn); ok {
				a = max(a, accessRequest)
				if g.Background {
					return accessBackground
				}
			}
		}
	}
	return a
}
