package goplugins

import (
	"crypto/sha256"
	goerrors "github.com/agilira/go-errors"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/Masterminds/semver/v3"
)

// defaultManifestMaxSize is the largest manifest file accepted unless a
// limit is configured: 1 MiB.
const defaultManifestMaxSize = 1 << 20

// Manifest describes one plugin, as read from a plugin.json, plugin.yaml or
// plugin.yml file in the plugin's folder.
//
// The file format, JSON or YAML with the same field names:
//
//	name          required; see PluginInfo.Name
//	version       required; strict semantic version ("1.4.0")
//	description   free text
//	transport     required; "inprocess", "subprocess" or "grpc"
//	command       the program to start, relative to the plugin folder;
//	              required for "subprocess", for "grpc" either this or endpoint,
//	              refused for "inprocess"
//	args          arguments for command
//	env           environment variables for command ({"KEY": "value"})
//	checksum      "sha256:<64 hex digits>" of the command's file
//	requires      {"host": "<constraint on the host version>", "protocol": <int >= 1>}
//	dependencies  {"<plugin>": "<constraint>"} or
//	              {"<plugin>": {"version": "<constraint>", "optional": true}}
//	surfaces      reload surfaces, e.g. ["state", "stream"]
//	timeout       per-call timeout, a Go duration ("5s")
//	health        {"interval": "10s", "timeout": "2s"}
//	restart       {"max_attempts": 5, "backoff": "100ms", "max_backoff": "10s", "min_uptime": "1m"}
//	endpoint      "grpc" only: "host:port" of a remote service
//	tls           "grpc" with endpoint only: {"ca_file", "cert_file",
//	              "key_file", "server_name", "insecure"}; files relative to
//	              the plugin folder; cert_file and key_file together enable mTLS
//	host_functions the host functions the plugin asks to call, e.g.
//	              ["kv.get", "kv.put"]; it may call those the host also
//	              grants (see WithGrants), and no other
//
// Field names are case-sensitive. Unknown fields are errors that name the
// field, so that a misspelt field is never silently ignored. Durations must parse with time.ParseDuration and be
// positive. Paths (command, TLS files) are resolved against the manifest's
// folder and must stay inside it unless ManifestAllowOutside is set, also
// through symbolic links: a path that a link below the folder leads out of
// the folder's real location is refused (ErrInvalidManifest) when the manifest
// is parsed. Links can change after that; what is executed is pinned by the
// checksum, which the transports verify on the very bytes they execute.
//
// Treat a Manifest as read-only: the DiscoveryEngine hands the same value to
// every consumer.
type Manifest struct {
	// Name is the plugin's name.
	Name string
	// Version is the plugin's strict semantic version.
	Version string
	// Description is free text for people.
	Description string
	// Transport is "inprocess", "subprocess" or "grpc".
	Transport string
	// Command is the cleaned absolute path of the program to start, or "".
	Command string
	// Args are the command's arguments.
	Args []string
	// Env holds extra environment variables for the command.
	Env map[string]string
	// Checksum is "sha256:<64 lowercase hex digits>" or "".
	Checksum string
	// Requires holds what the plugin needs from its host.
	Requires ManifestRequires
	// Dependencies lists the plugins this one needs, sorted by name.
	Dependencies []Dependency
	// Surfaces lists the plugin's reload surfaces.
	Surfaces []Surface
	// Timeout is the per-call timeout; zero means the host's default.
	Timeout time.Duration
	// Health configures health checks; zero fields mean the host's defaults.
	Health ManifestHealth
	// Restart configures restarts of a child process; zero fields mean the
	// host's defaults.
	Restart RestartPolicy
	// Endpoint is the "host:port" of a remote gRPC service, or "".
	Endpoint string
	// TLS configures the connection to Endpoint; nil means plaintext.
	TLS *ManifestTLS
	// HostFunctions lists the host functions the plugin asks to call, in
	// the manifest's order; a DynamicLoader lets it call those of them the
	// host grants (see WithGrants), and no other.
	HostFunctions []string

	// Path is the cleaned absolute path of the manifest file.
	Path string
	// Dir is the plugin folder: the folder that holds the manifest.
	Dir string
	// Hash is the SHA-256 of the manifest file's bytes.
	Hash [sha256.Size]byte

	version *semver.Version
}

// ManifestRequires is the "requires" section of a manifest.
type ManifestRequires struct {
	// Host is a constraint on the host's plugin API version, or "".
	Host string
	// Protocol is the wire protocol version the plugin speaks; 0 if unset.
	Protocol int
}

// ManifestHealth is the "health" section of a manifest.
type ManifestHealth struct {
	// Interval between health checks.
	Interval time.Duration
	// Timeout of one health check; not longer than Interval.
	Timeout time.Duration
}

// ManifestTLS is the "tls" section of a gRPC manifest with an endpoint.
type ManifestTLS struct {
	// CAFile is the absolute path of the PEM bundle that verifies the
	// server, or "" for the system roots.
	CAFile string
	// CertFile and KeyFile are the absolute paths of the client certificate
	// and key for mutual TLS, or both "".
	CertFile string
	KeyFile  string
	// ServerName overrides the name checked in the server's certificate.
	ServerName string
}

// semVer returns the parsed Version.
func (m *Manifest) semVer() *semver.Version { return m.version }

// Info returns the PluginInfo the manifest declares.
func (m *Manifest) Info() PluginInfo {
	return PluginInfo{
		Name:        m.Name,
		Version:     m.Version,
		Description: m.Description,
		Surfaces:    slices.Clone(m.Surfaces),
	}
}

// ManifestOption configures ParseManifest and LoadManifest.
type ManifestOption func(*manifestOptions)

// ManifestMaxSize sets the largest manifest file accepted, in bytes; n <= 0
// keeps the default, 1 MiB.
func ManifestMaxSize(n int64) ManifestOption {
	return func(o *manifestOptions) {
		if n > 0 {
			o.maxSize = n
		}
	}
}

// ManifestAllowOutside lets command and TLS paths leave the plugin folder
// (absolute paths, "../" and symbolic links that lead out of the folder are
// then accepted).
func ManifestAllowOutside(allow bool) ManifestOption {
	return func(o *manifestOptions) { o.allowOutside = allow }
}

type manifestOptions struct {
	maxSize      int64
	allowOutside bool
	constraints  *constraintCache // nil: parse every constraint
}

// constraintCache shares parsed constraints between manifests: parsing one
// costs microseconds of regular expressions, and plugins of one host tend
// to repeat the same few. A parsed *semver.Constraints is never modified,
// so sharing it is safe. The cache stops growing at maxConstraintCache.
type constraintCache struct {
	mu sync.RWMutex
	m  map[string]*semver.Constraints
}

const maxConstraintCache = 1024

func newConstraintCache() *constraintCache {
	return &constraintCache{m: make(map[string]*semver.Constraints)}
}

// parse returns the parsed constraint s, from the cache when c is not nil.
func (c *constraintCache) parse(s string) (*semver.Constraints, error) {
	if c == nil {
		return parseConstraint("", s)
	}
	c.mu.RLock()
	pc := c.m[s]
	c.mu.RUnlock()
	if pc != nil {
		return pc, nil
	}
	pc, err := parseConstraint("", s)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if len(c.m) < maxConstraintCache {
		c.m[s] = pc
	}
	c.mu.Unlock()
	return pc, nil
}

func newManifestOptions(opts []ManifestOption) manifestOptions {
	o := manifestOptions{maxSize: defaultManifestMaxSize}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// LoadManifest reads and validates the manifest file at path. Errors match
// ErrInvalidManifest (also for paths that leave the plugin folder) and name the file and the field.
func LoadManifest(path string, opts ...ManifestOption) (*Manifest, error) {
	o := newManifestOptions(opts)
	data, err := readSmallFile(path, o.maxSize, "manifest", codeInvalidManifest)
	if err != nil {
		return nil, err
	}
	return parseManifest(path, data, o)
}

// ParseManifest parses and validates a manifest held in data. path is the
// manifest file's path: its extension (.json, .yaml or .yml) picks the
// format, its folder is the plugin folder that command and TLS paths are
// resolved against, and errors name it. Errors match ErrInvalidManifest (also
// for paths that leave the plugin folder).
func ParseManifest(path string, data []byte, opts ...ManifestOption) (*Manifest, error) {
	return parseManifest(path, data, newManifestOptions(opts))
}

func parseManifest(path string, data []byte, o manifestOptions) (*Manifest, error) {
	m, _, err := parseManifestNamed(path, data, o)
	return m, err
}

// parseManifestNamed is parseManifest that also returns the name the
// manifest declares, when it is a valid name, even if the manifest is not.
func parseManifestNamed(path string, data []byte, o manifestOptions) (*Manifest, string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, "", wrapError(err, codeInvalidManifest, "", "manifest %s: cannot make the path absolute", path)
	}
	if int64(len(data)) > o.maxSize {
		return nil, "", newError(codeInvalidManifest, "", "manifest %s is %d bytes; the limit is %d: shrink it or raise the limit", abs, len(data), o.maxSize)
	}
	var raw rawManifest
	switch ext := strings.ToLower(filepath.Ext(abs)); ext {
	case ".json":
		err = decodeJSONManifest(data, &raw)
	case ".yaml", ".yml":
		err = decodeYAMLManifest(data, &raw)
	default:
		return nil, "", newError(codeInvalidManifest, "", "manifest %s: unknown extension %q; name the file .json, .yaml or .yml", abs, ext)
	}
	name := raw.Name
	if !validName(name) {
		name = ""
	}
	if err != nil {
		return nil, name, parseError(err, name, abs)
	}
	v := manifestValidator{path: abs, dir: filepath.Dir(abs), opts: o}
	m := v.validate(&raw)
	if err := v.err(name); err != nil {
		return nil, name, err
	}
	m.Hash = sha256.Sum256(data)
	return m, name, nil
}

// parseError is the error of a manifest that does not decode: its problems
// (see ManifestProblems) are the decoder's, each naming its field where the
// decoder knows it.
func parseError(err error, name, path string) error {
	ps, ok := err.(decodeProblems)
	if !ok {
		ps = decodeProblems{{Reason: err.Error()}}
	}
	e := wrapError(err, codeInvalidManifest, name, "manifest %s does not parse", path).(*goerrors.Error)
	e.WithContext(problemsKey, []ManifestProblem(ps))
	return e
}
