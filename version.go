package goplugins

import (
	"strings"
	"sync"

	"github.com/Masterminds/semver/v3"
)

// parseVersion parses a strict semantic version (SemVer 2.0.0: "1.4.0",
// "2.0.0-rc.1+build.5"; no "v" prefix, no missing parts, no leading zeros).
// plugin names the plugin the version belongs to, for the error message.
// A malformed version yields an error matching ErrInvalidVersion.
func parseVersion(plugin, version string) (*semver.Version, error) {
	v, err := semver.StrictNewVersion(version)
	if err != nil {
		return nil, newError(codeInvalidVersion, plugin,
			"version %q is not a strict semantic version (want MAJOR.MINOR.PATCH, e.g. 1.4.0): %v", version, err)
	}
	return v, nil
}

// parseConstraint parses a version constraint in Masterminds syntax
// (">=1.2.0, <2.0.0", "^1.4", "~2.1", "1.x", "1.0 - 2.0", "a || b").
// A malformed constraint yields an error matching ErrInvalidVersion.
func parseConstraint(plugin, constraint string) (*semver.Constraints, error) {
	if strings.TrimSpace(constraint) == "" {
		return nil, newError(codeInvalidVersion, plugin, "version constraint is empty; use \"*\" to accept any version")
	}
	c, err := semver.NewConstraint(constraint)
	if err != nil {
		return nil, newError(codeInvalidVersion, plugin, "version constraint %q does not parse: %v", constraint, err)
	}
	return c, nil
}

// checkConstraint reports whether v satisfies c. On failure the error matches
// ErrIncompatibleVersion, names the plugin and what was checked (subject, such
// as "host version" or "dependency \"auth\""), and lists semver's reasons.
func checkConstraint(plugin, subject string, v *semver.Version, c *semver.Constraints) error {
	ok, reasons := c.Validate(v)
	if ok {
		return nil
	}
	return newError(codeIncompatibleVersion, plugin, "%s %s does not satisfy %q: %s",
		subject, v, c, joinReasons(reasons))
}

func joinReasons(errs []error) string {
	if len(errs) == 0 {
		return "no matching version"
	}
	parts := make([]string, len(errs))
	for i, e := range errs {
		parts[i] = e.Error()
	}
	return strings.Join(parts, "; ")
}

// VersionPolicy holds the version rules that plugins are checked against:
// the host's plugin API version, which a plugin's "requires.host" constraint
// must accept, and per-plugin compatibility rules that a plugin's own version
// must satisfy. A VersionPolicy is safe for concurrent use.
type VersionPolicy struct {
	host *semver.Version

	mu    sync.RWMutex
	rules map[string]*semver.Constraints
}

// NewVersionPolicy returns a policy for a host whose plugin API version is
// host (strict semver).
func NewVersionPolicy(host string) (*VersionPolicy, error) {
	v, err := semver.StrictNewVersion(host)
	if err != nil {
		return nil, newError(codeInvalidVersion, "", "host version %q is not a strict semantic version: %v", host, err)
	}
	return &VersionPolicy{host: v, rules: make(map[string]*semver.Constraints)}, nil
}

// hostVersion returns the host's plugin API version.
func (p *VersionPolicy) hostVersion() *semver.Version { return p.host }

// SetRule makes every version of plugin name that is loaded or reloaded
// satisfy constraint. An empty constraint removes the rule.
func (p *VersionPolicy) SetRule(name, constraint string) error {
	if constraint == "" {
		p.mu.Lock()
		delete(p.rules, name)
		p.mu.Unlock()
		return nil
	}
	c, err := parseConstraint(name, constraint)
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.rules[name] = c
	p.mu.Unlock()
	return nil
}

// checkHost checks a plugin's "requires.host" constraint against the host
// version. An empty constraint accepts any host.
func (p *VersionPolicy) checkHost(name, requires string) error {
	if requires == "" {
		return nil
	}
	c, err := parseConstraint(name, requires)
	if err != nil {
		return err
	}
	if ok, reasons := c.Validate(p.host); !ok {
		return newError(codeIncompatibleVersion, name,
			"the plugin requires host %q but this host is %s (%s); use a build of the plugin made for this host",
			requires, p.host, joinReasons(reasons))
	}
	return nil
}

// checkPlugin checks a plugin's own version against the rule set for it, if any.
func (p *VersionPolicy) checkPlugin(name, version string) error {
	v, err := parseVersion(name, version)
	if err != nil {
		return err
	}
	p.mu.RLock()
	c := p.rules[name]
	p.mu.RUnlock()
	if c == nil {
		return nil
	}
	return checkConstraint(name, "plugin version", v, c)
}

// checkDependency checks that dependency dep, found at version found, meets
// the constraint plugin declares on it.
func checkDependency(plugin, dep, constraint, found string) error {
	c, err := parseConstraint(plugin, constraint)
	if err != nil {
		return err
	}
	v, err := parseVersion(dep, found)
	if err != nil {
		return err
	}
	return checkConstraint(plugin, "dependency \""+dep+"\" version", v, c)
}
