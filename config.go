package goplugins

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"time"
)

// configMaxSize is the largest configuration file accepted: 4 MiB.
const configMaxSize = 4 << 20

// Config is a host's plugin configuration, read from a JSON or YAML file:
//
//	host_version: 1.4.0               # the host's plugin API version
//	defaults:                         # for every plugin
//	  timeout: 5s
//	  drain_timeout: 10s
//	  breaker: {consecutive_failures: 5, failure_rate: 0.5, min_calls: 20, window: 10s, open_timeout: 5s, half_open_probes: 1}
//	  health: {interval: 10s, timeout: 2s, unhealthy_after: 3}
//	  restart: {max_attempts: 5, backoff: 100ms, max_backoff: 10s, min_uptime: 1m}
//	discovery:                        # manifests on disk (see DiscoveryConfig)
//	  roots: [./plugins, "${PLUGIN_DIR:-/opt/plugins}"]
//	  max_depth: 2
//	  follow_symlinks: false
//	  poll_interval: 1s
//	plugins:                          # plugins named here
//	  - manifest: ./extra/auth/plugin.json    # a manifest file
//	  - name: metrics                         # or a manifest inline
//	    version: 1.0.0
//	    transport: subprocess
//	    command: ./bin/metrics
//
// Every string value may use ${VAR} and ${VAR:-default}; an unset variable
// without a default is an error, and $$ is a literal $. Relative paths
// resolve against the configuration file's folder; inline manifests' paths
// must stay inside it (referenced manifests follow the manifest rules of
// their own folder). Unknown fields are errors that name the field, so
// that a typo is not silently ignored.
type Config struct {
	// Path is the file's cleaned absolute path.
	Path string
	// HostVersion is the host's plugin API version, or "".
	HostVersion string
	// Defaults apply to every plugin.
	Defaults ConfigDefaults
	// Discovery holds the discovery settings, or nil when the file has none.
	Discovery *DiscoveryConfig
	// Plugins are the manifests the file names, sorted by name.
	Plugins []*Manifest
	// Hash is the SHA-256 of the file and of every manifest file it references.
	Hash [sha256.Size]byte
}

// ConfigDefaults are the per-plugin defaults of a Config. Zero values mean
// the library's defaults.
type ConfigDefaults struct {
	// Timeout bounds each call to a plugin (see WithTimeout); zero means
	// no timeout.
	Timeout time.Duration
	// DrainTimeout bounds how long a reload may pause a plugin's traffic
	// (see WithDrainTimeout).
	DrainTimeout time.Duration
	// Breaker configures each plugin's circuit breaker (see WithBreaker).
	Breaker BreakerConfig
	// Health configures each plugin's health checks (see WithHealthCheck).
	Health HealthConfig
	// Restart says how a crashed child process (subprocess or gRPC
	// plugin) is restarted.
	Restart RestartPolicy
}

// ManagerOptions returns the options that make a Manager follow the
// configuration: its defaults and, with a host version, its VersionPolicy.
func (c *Config) ManagerOptions() []Option {
	defaults := []PluginOption{
		WithBreaker(c.Defaults.Breaker),
		WithHealthCheck(c.Defaults.Health),
	}
	if c.Defaults.Timeout > 0 {
		defaults = append(defaults, WithTimeout(c.Defaults.Timeout))
	}
	if c.Defaults.DrainTimeout > 0 {
		defaults = append(defaults, WithDrainTimeout(c.Defaults.DrainTimeout))
	}
	opts := []Option{WithPluginDefaults(defaults...)}
	if p := c.versionPolicy(); p != nil {
		opts = append(opts, WithVersionPolicy(p))
	}
	return opts
}

// versionPolicy returns a policy for the configured host version, or nil
// when the file sets none.
func (c *Config) versionPolicy() *VersionPolicy {
	if c.HostVersion == "" {
		return nil
	}
	p, _ := NewVersionPolicy(c.HostVersion) // validated by ParseConfig
	return p
}

// LoadConfig reads and validates a configuration file (see Config).
func LoadConfig(path string) (*Config, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, newError(codeInvalidConfig, "", "configuration %s: %v", path, err)
	}
	data, err := readSmallFile(abs, configMaxSize, "configuration", codeInvalidConfig)
	if err != nil {
		return nil, err
	}
	return ParseConfig(abs, data)
}

// ParseConfig parses and validates configuration data; path (the file's
// path) picks the format by extension (.json, .yaml, .yml) and is the base
// of relative paths. Referenced manifest files are read. Errors match
// ErrInvalidConfig (or ErrInvalidManifest for a plugin) and name the file
// and the field.
func ParseConfig(path string, data []byte) (*Config, error) {
	path, err := filepath.Abs(path)
	if err != nil {
		return nil, newError(codeInvalidConfig, "", "configuration %s: %v", path, err)
	}
	fail := func(format string, args ...any) error {
		return newError(codeInvalidConfig, "", "configuration %s: %s", path, fmt.Sprintf(format, args...))
	}
	raw, err := decodeConfig(path, data)
	if err != nil {
		return nil, fail("%v", err)
	}
	c := &Config{Path: path, HostVersion: raw.HostVersion}
	if raw.HostVersion != "" {
		if _, err := NewVersionPolicy(raw.HostVersion); err != nil {
			return nil, fail("host_version: %v", err)
		}
	}
	var cv configValidator
	c.Defaults = cv.defaults(raw.Defaults)
	c.Discovery = cv.discovery(raw.Discovery, filepath.Dir(path))
	if len(cv.problems) > 0 {
		return nil, fail("%s", strings.Join(cv.problems, "; "))
	}
	if err := c.addPlugins(raw.Plugins, data, configBinder(path)); err != nil {
		return nil, err
	}
	return c, nil
}

// decodeConfig decodes the file, of the format its extension names,
// expands its ${VAR}s and binds it to a rawConfig.
func decodeConfig(path string, data []byte) (*rawConfig, error) {
	ext := strings.ToLower(filepath.Ext(path))
	if ext != ".json" && ext != ".yaml" && ext != ".yml" {
		return nil, fmt.Errorf("unknown extension %q; name the file .json, .yaml or .yml", ext)
	}
	b := configBinder(path)
	tree, err := configTree(data, b.yaml)
	if err != nil {
		return nil, err
	}
	if tree, err = expandEnv(tree, ""); err != nil {
		return nil, err
	}
	var raw rawConfig
	if err := b.bind(tree, reflect.ValueOf(&raw).Elem(), ""); err != nil {
		return nil, err
	}
	return &raw, nil
}

// configBinder binds the trees of the configuration file at path.
func configBinder(path string) binder {
	return binder{yaml: strings.ToLower(filepath.Ext(path)) != ".json"}
}

// configValidator collects the problems of a configuration's settings,
// each naming its field.
type configValidator struct{ problems []string }

func (v *configValidator) dur(field, s string) time.Duration {
	if s == "" {
		return 0
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		v.problems = append(v.problems, fmt.Sprintf("%s: %q is not a positive duration such as \"5s\"", field, s))
	}
	return d
}

func (v *configValidator) defaults(d rawConfigDefaults) ConfigDefaults {
	if r := d.Breaker.FailureRate; r < 0 || r > 1 {
		v.problems = append(v.problems, fmt.Sprintf("defaults.breaker.failure_rate: %v is not between 0 and 1", r))
	}
	return ConfigDefaults{
		Timeout:      v.dur("defaults.timeout", d.Timeout),
		DrainTimeout: v.dur("defaults.drain_timeout", d.DrainTimeout),
		Breaker: BreakerConfig{
			ConsecutiveFailures: d.Breaker.ConsecutiveFailures,
			FailureRate:         d.Breaker.FailureRate,
			MinCalls:            d.Breaker.MinCalls,
			Window:              v.dur("defaults.breaker.window", d.Breaker.Window),
			OpenTimeout:         v.dur("defaults.breaker.open_timeout", d.Breaker.OpenTimeout),
			HalfOpenProbes:      d.Breaker.HalfOpenProbes,
			Disabled:            d.Breaker.Disabled,
		},
		Health: HealthConfig{
			Interval:       v.dur("defaults.health.interval", d.Health.Interval),
			Timeout:        v.dur("defaults.health.timeout", d.Health.Timeout),
			UnhealthyAfter: d.Health.UnhealthyAfter,
		},
		Restart: RestartPolicy{
			MaxAttempts: d.Restart.MaxAttempts,
			Backoff:     v.dur("defaults.restart.backoff", d.Restart.Backoff),
			MaxBackoff:  v.dur("defaults.restart.max_backoff", d.Restart.MaxBackoff),
			MinUptime:   v.dur("defaults.restart.min_uptime", d.Restart.MinUptime),
		},
	}
}

// discovery returns the discovery settings, roots resolved against dir,
// or nil when the file has none.
func (v *configValidator) discovery(rd *rawConfigDiscovery, dir string) *DiscoveryConfig {
	if rd == nil {
		return nil
	}
	if len(rd.Roots) == 0 {
		v.problems = append(v.problems, "discovery.roots: name at least one folder")
	}
	dc := &DiscoveryConfig{
		MaxDepth:       rd.MaxDepth,
		ManifestNames:  rd.ManifestNames,
		FollowSymlinks: rd.FollowSymlinks,
		PollInterval:   v.dur("discovery.poll_interval", rd.PollInterval),
		AllowOutside:   rd.AllowOutside,
	}
	for _, r := range rd.Roots {
		dc.Roots = append(dc.Roots, resolvePath(dir, r))
	}
	return dc
}

// addPlugins reads the plugins section into c.Plugins, sorted by name, and
// sets c.Hash over data and every plugin's manifest.
func (c *Config) addPlugins(entries []map[string]any, data []byte, b binder) error {
	h := sha256.New()
	h.Write(data)
	seen := map[string]string{}
	for i, entry := range entries {
		where := fmt.Sprintf("plugins[%d]", i)
		mf, err := configPlugin(c.Path, where, entry, b)
		if err != nil {
			return err
		}
		if prev, ok := seen[mf.Name]; ok {
			return newError(codeInvalidConfig, "", "configuration %s: %s: plugin %q is named already by %s; name each plugin once", c.Path, where, mf.Name, prev)
		}
		seen[mf.Name] = where
		h.Write(mf.Hash[:])
		c.Plugins = append(c.Plugins, mf)
	}
	slices.SortFunc(c.Plugins, func(a, b *Manifest) int { return strings.Compare(a.Name, b.Name) })
	h.Sum(c.Hash[:0])
	return nil
}

// configPlugin reads one entry of "plugins": a reference or an inline
// manifest, whose fields are checked for their kinds in the file's terms
// before the manifest is validated.
func configPlugin(path, where string, entry map[string]any, b binder) (*Manifest, error) {
	dir := filepath.Dir(path)
	if ref, ok := entry["manifest"]; ok {
		if len(entry) != 1 {
			return nil, newError(codeInvalidConfig, "", "configuration %s: %s: an entry with \"manifest\" takes no other field", path, where)
		}
		file, ok := ref.(string)
		if !ok || file == "" {
			return nil, newError(codeInvalidConfig, "", "configuration %s: %s.manifest: want the path of a manifest file", path, where)
		}
		mf, err := LoadManifest(resolvePath(dir, file))
		if err != nil {
			return nil, wrapError(err, codeInvalidManifest, "", "configuration %s: %s.manifest", path, where)
		}
		return mf, nil
	}
	var raw rawManifest
	if err := b.bind(entry, reflect.ValueOf(&raw).Elem(), where); err != nil {
		return nil, newError(codeInvalidManifest, "", "configuration %s: %v", path, err)
	}
	data, err := json.Marshal(entry)
	if err != nil {
		return nil, newError(codeInvalidConfig, "", "configuration %s: %s: %v", path, where, err)
	}
	// The manifest's "file" is virtual: it names the entry in errors and
	// puts the plugin folder at the configuration's folder.
	virtual := filepath.Join(dir, filepath.Base(path)+"#"+where+".json")
	return ParseManifest(virtual, data)
}

func resolvePath(dir, p string) string {
	if filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	return filepath.Join(dir, p)
}

// expandEnv expands ${VAR} and ${VAR:-default} in every string of a
// decoded JSON/YAML tree. at names the position for errors.
func expandEnv(v any, at string) (any, error) {
	switch t := v.(type) {
	case string:
		s, err := expandString(t)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", strings.TrimPrefix(at, "."), err)
		}
		return s, nil
	case map[string]any:
		for k, x := range t {
			e, err := expandEnv(x, at+"."+k)
			if err != nil {
				return nil, err
			}
			t[k] = e
		}
	case []any:
		for i, x := range t {
			e, err := expandEnv(x, fmt.Sprintf("%s[%d]", at, i))
			if err != nil {
				return nil, err
			}
			t[i] = e
		}
	}
	return v, nil
}

// expandString expands ${VAR}, ${VAR:-default} and $$ in s.
func expandString(s string) (string, error) {
	if !strings.Contains(s, "$") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' {
			b.WriteByte(s[i])
			continue
		}
		switch {
		case strings.HasPrefix(s[i:], "$$"):
			b.WriteByte('$')
			i++
		case strings.HasPrefix(s[i:], "${"):
			end := strings.IndexByte(s[i:], '}')
			if end < 0 {
				return "", fmt.Errorf("unclosed ${ in %q", s)
			}
			expr := s[i+2 : i+end]
			name, def, hasDef := strings.Cut(expr, ":-")
			if !validEnvName(name) {
				return "", fmt.Errorf("${%s}: %q is not a variable name", expr, name)
			}
			val, ok := os.LookupEnv(name)
			switch {
			case ok && (val != "" || !hasDef):
				b.WriteString(val)
			case hasDef:
				b.WriteString(def)
			default:
				return "", fmt.Errorf("environment variable %s is not set; set it or write ${%s:-default}", name, name)
			}
			i += end
		default:
			b.WriteByte('$')
		}
	}
	return b.String(), nil
}

func validEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		if c != '_' && !(c >= 'A' && c <= 'Z') && !(c >= 'a' && c <= 'z') && !(i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

type rawConfig struct {
	HostVersion string              `json:"host_version"`
	Defaults    rawConfigDefaults   `json:"defaults"`
	Discovery   *rawConfigDiscovery `json:"discovery"`
	Plugins     []map[string]any    `json:"plugins"`
}

type rawConfigDefaults struct {
	Timeout      string `json:"timeout"`
	DrainTimeout string `json:"drain_timeout"`
	Breaker      struct {
		Disabled            bool    `json:"disabled"`
		ConsecutiveFailures int     `json:"consecutive_failures"`
		FailureRate         float64 `json:"failure_rate"`
		MinCalls            int     `json:"min_calls"`
		Window              string  `json:"window"`
		OpenTimeout         string  `json:"open_timeout"`
		HalfOpenProbes      int     `json:"half_open_probes"`
	} `json:"breaker"`
	Health struct {
		Interval       string `json:"interval"`
		Timeout        string `json:"timeout"`
		UnhealthyAfter int    `json:"unhealthy_after"`
	} `json:"health"`
	Restart struct {
		MaxAttempts int    `json:"max_attempts"`
		Backoff     string `json:"backoff"`
		MaxBackoff  string `json:"max_backoff"`
		MinUptime   string `json:"min_uptime"`
	} `json:"restart"`
}

type rawConfigDiscovery struct {
	Roots          []string `json:"roots"`
	MaxDepth       int      `json:"max_depth"`
	ManifestNames  []string `json:"manifest_names"`
	FollowSymlinks bool     `json:"follow_symlinks"`
	PollInterval   string   `json:"poll_interval"`
	AllowOutside   bool     `json:"allow_outside"`
}
