package goplugins

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/Masterminds/semver/v3"
	goerrors "github.com/agilira/go-errors"
	"go.yaml.in/yaml/v3"
)

// DefaultManifestMaxSize is the largest manifest file accepted unless a
// limit is configured: 1 MiB.
const DefaultManifestMaxSize = 1 << 20

// Manifest describes one plugin, as read from a plugin.json, plugin.yaml or
// plugin.yml file in the plugin's folder.
//
// The file format, JSON or YAML with the same field names:
//
//	name          required; see ValidateName
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
//	restart       {"max_attempts": 5, "backoff": "100ms", "max_backoff": "10s"}
//	endpoint      "grpc" only: "host:port" of a remote service
//	tls           "grpc" with endpoint only: {"ca_file", "cert_file",
//	              "key_file", "server_name", "insecure"}; files relative to
//	              the plugin folder; cert_file and key_file together enable mTLS
//
// Unknown fields are errors that name the field, so that a misspelt field is
// never silently ignored. Durations must parse with time.ParseDuration and be
// positive. Paths (command, TLS files) are resolved against the manifest's
// folder and must stay inside it unless ManifestAllowOutside is set; the
// check is lexical (symbolic links inside the folder are the transport's to
// check when it opens the file, together with the checksum).
//
// A Manifest is immutable once returned; share it freely.
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
	Dependencies []ManifestDependency
	// Surfaces lists the plugin's reload surfaces.
	Surfaces []Surface
	// Timeout is the per-call timeout; zero means the host's default.
	Timeout time.Duration
	// Health configures health checks; zero fields mean the host's defaults.
	Health ManifestHealth
	// Restart configures restarts of a child process; zero fields mean the
	// host's defaults.
	Restart ManifestRestart
	// Endpoint is the "host:port" of a remote gRPC service, or "".
	Endpoint string
	// TLS configures the connection to Endpoint; nil means plaintext.
	TLS *ManifestTLS

	// Path is the cleaned absolute path of the manifest file.
	Path string
	// Dir is the plugin folder: the folder that holds the manifest.
	Dir string
	// Hash is the SHA-256 of the manifest file's bytes.
	Hash [sha256.Size]byte

	version *semver.Version
	host    *semver.Constraints
	deps    map[string]*semver.Constraints
}

// ManifestRequires is the "requires" section of a manifest.
type ManifestRequires struct {
	// Host is a constraint on the host's plugin API version, or "".
	Host string
	// Protocol is the wire protocol version the plugin speaks; 0 if unset.
	Protocol int
}

// ManifestDependency is one entry of a manifest's "dependencies". Its fields
// match the dependency graph's Dependency, so Dependency(d) converts it.
type ManifestDependency struct {
	// Name is the plugin depended on.
	Name string
	// Constraint is the version constraint the dependency must satisfy.
	Constraint string
	// Optional dependencies may be absent; when present they must satisfy
	// Constraint.
	Optional bool
}

// ManifestHealth is the "health" section of a manifest.
type ManifestHealth struct {
	// Interval between health checks.
	Interval time.Duration
	// Timeout of one health check; not longer than Interval.
	Timeout time.Duration
}

// ManifestRestart is the "restart" section of a manifest.
type ManifestRestart struct {
	// MaxAttempts is how many restarts are tried in a row; 0 means the
	// host's default.
	MaxAttempts int
	// Backoff is the first delay between restarts.
	Backoff time.Duration
	// MaxBackoff caps the growing delay; not shorter than Backoff.
	MaxBackoff time.Duration
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
	// Insecure skips verification of the server's certificate. It is
	// refused together with CAFile.
	Insecure bool
}

// SemVer returns the parsed Version.
func (m *Manifest) SemVer() *semver.Version { return m.version }

// HostConstraint returns the parsed Requires.Host, or nil if it is empty.
func (m *Manifest) HostConstraint() *semver.Constraints { return m.host }

// DependencyConstraint returns the parsed constraint on dependency name, or
// nil if the manifest does not depend on name.
func (m *Manifest) DependencyConstraint(name string) *semver.Constraints { return m.deps[name] }

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
// keeps DefaultManifestMaxSize.
func ManifestMaxSize(n int64) ManifestOption {
	return func(o *manifestOptions) {
		if n > 0 {
			o.maxSize = n
		}
	}
}

// ManifestAllowOutside lets command and TLS paths leave the plugin folder
// (absolute paths and "../" are then accepted).
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
		return ParseConstraint("", s)
	}
	c.mu.RLock()
	pc := c.m[s]
	c.mu.RUnlock()
	if pc != nil {
		return pc, nil
	}
	pc, err := ParseConstraint("", s)
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
	o := manifestOptions{maxSize: DefaultManifestMaxSize}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// LoadManifest reads and validates the manifest file at path. Errors match
// ErrInvalidManifest (and ErrPathEscape for paths that leave the plugin
// folder) and name the file and the field.
func LoadManifest(path string, opts ...ManifestOption) (*Manifest, error) {
	o := newManifestOptions(opts)
	data, err := readManifestFile(path, o.maxSize)
	if err != nil {
		return nil, err
	}
	return parseManifest(path, data, o)
}

// readManifestFile reads at most maxSize bytes of the regular file at path.
func readManifestFile(path string, maxSize int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, wrapError(err, CodeInvalidManifest, "", "manifest %s cannot be opened", path)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, wrapError(err, CodeInvalidManifest, "", "manifest %s cannot be read", path)
	}
	return readManifest(path, f, fi, maxSize)
}

// checkManifestStat refuses a manifest that is not a regular file or is
// larger than maxSize.
func checkManifestStat(path string, fi os.FileInfo, maxSize int64) error {
	if !fi.Mode().IsRegular() {
		return newError(CodeInvalidManifest, "", "manifest %s is not a regular file (%s)", path, fi.Mode().Type())
	}
	if fi.Size() > maxSize {
		return newError(CodeInvalidManifest, "", "manifest %s is %d bytes; the limit is %d: shrink it or raise the limit", path, fi.Size(), maxSize)
	}
	return nil
}

// readManifest reads the open manifest f, whose stat is fi, refusing
// non-regular files and files larger than maxSize.
func readManifest(path string, f *os.File, fi os.FileInfo, maxSize int64) ([]byte, error) {
	if err := checkManifestStat(path, fi, maxSize); err != nil {
		return nil, err
	}
	// The file may grow while it is read: read one byte past the limit.
	data := make([]byte, 0, fi.Size()+1)
	for {
		n, err := f.Read(data[len(data):cap(data)])
		data = data[:len(data)+n]
		if int64(len(data)) > maxSize {
			return nil, newError(CodeInvalidManifest, "", "manifest %s is larger than the limit of %d bytes: shrink it or raise the limit", path, maxSize)
		}
		if err == io.EOF {
			return data, nil
		}
		if err != nil {
			return nil, wrapError(err, CodeInvalidManifest, "", "manifest %s cannot be read", path)
		}
		if len(data) == cap(data) {
			data = slices.Grow(data, 512)
		}
	}
}

// ParseManifest parses and validates a manifest held in data. path is the
// manifest file's path: its extension (.json, .yaml or .yml) picks the
// format, its folder is the plugin folder that command and TLS paths are
// resolved against, and errors name it. Errors match ErrInvalidManifest (and
// ErrPathEscape for paths that leave the plugin folder).
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
		return nil, "", wrapError(err, CodeInvalidManifest, "", "manifest %s: cannot make the path absolute", path)
	}
	if int64(len(data)) > o.maxSize {
		return nil, "", newError(CodeInvalidManifest, "", "manifest %s is %d bytes; the limit is %d: shrink it or raise the limit", abs, len(data), o.maxSize)
	}
	var raw rawManifest
	switch ext := strings.ToLower(filepath.Ext(abs)); ext {
	case ".json":
		err = decodeJSONManifest(data, &raw)
	case ".yaml", ".yml":
		err = decodeYAMLManifest(data, &raw)
	default:
		return nil, "", newError(CodeInvalidManifest, "", "manifest %s: unknown extension %q; name the file .json, .yaml or .yml", abs, ext)
	}
	name := raw.Name
	if !validName(name) {
		name = ""
	}
	if err != nil {
		return nil, name, wrapError(err, CodeInvalidManifest, name, "manifest %s does not parse", abs)
	}
	v := manifestValidator{path: abs, dir: filepath.Dir(abs), opts: o}
	m := v.validate(&raw)
	if err := v.err(name); err != nil {
		return nil, name, err
	}
	m.Hash = sha256.Sum256(data)
	return m, name, nil
}

// rawManifest is the file format; see Manifest.
type rawManifest struct {
	Name         string                   `json:"name" yaml:"name"`
	Version      string                   `json:"version" yaml:"version"`
	Description  string                   `json:"description" yaml:"description"`
	Transport    string                   `json:"transport" yaml:"transport"`
	Command      string                   `json:"command" yaml:"command"`
	Args         []string                 `json:"args" yaml:"args"`
	Env          map[string]string        `json:"env" yaml:"env"`
	Checksum     string                   `json:"checksum" yaml:"checksum"`
	Requires     rawRequires              `json:"requires" yaml:"requires"`
	Dependencies map[string]rawDependency `json:"dependencies" yaml:"dependencies"`
	Surfaces     []string                 `json:"surfaces" yaml:"surfaces"`
	Timeout      string                   `json:"timeout" yaml:"timeout"`
	Health       rawHealth                `json:"health" yaml:"health"`
	Restart      rawRestart               `json:"restart" yaml:"restart"`
	Endpoint     string                   `json:"endpoint" yaml:"endpoint"`
	TLS          *rawTLS                  `json:"tls" yaml:"tls"`
}

type rawRequires struct {
	Host     string `json:"host" yaml:"host"`
	Protocol int    `json:"protocol" yaml:"protocol"`
}

type rawHealth struct {
	Interval string `json:"interval" yaml:"interval"`
	Timeout  string `json:"timeout" yaml:"timeout"`
}

type rawRestart struct {
	MaxAttempts int    `json:"max_attempts" yaml:"max_attempts"`
	Backoff     string `json:"backoff" yaml:"backoff"`
	MaxBackoff  string `json:"max_backoff" yaml:"max_backoff"`
}

type rawTLS struct {
	CAFile     string `json:"ca_file" yaml:"ca_file"`
	CertFile   string `json:"cert_file" yaml:"cert_file"`
	KeyFile    string `json:"key_file" yaml:"key_file"`
	ServerName string `json:"server_name" yaml:"server_name"`
	Insecure   bool   `json:"insecure" yaml:"insecure"`
}

// rawDependency is a dependency's value: a constraint string or
// {"version": constraint, "optional": bool}.
type rawDependency struct {
	Version  string `json:"version"`
	Optional bool   `json:"optional"`
}

// UnmarshalJSON accepts the string and the object form.
func (d *rawDependency) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	switch {
	case len(b) > 0 && b[0] == '"':
		return json.Unmarshal(b, &d.Version)
	case len(b) > 0 && b[0] == '{':
		type plain rawDependency
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		return dec.Decode((*plain)(d))
	}
	return errors.New(`a dependency is a constraint string or {"version": "...", "optional": true}`)
}

// UnmarshalYAML accepts the string and the mapping form, and refuses
// unknown keys in the mapping.
func (d *rawDependency) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		return n.Decode(&d.Version)
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			var err error
			switch k.Value {
			case "version":
				err = val.Decode(&d.Version)
			case "optional":
				err = val.Decode(&d.Optional)
			default:
				err = fmt.Errorf("line %d: unknown field %q in a dependency; use version and optional", k.Line, k.Value)
			}
			if err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("line %d: a dependency is a constraint string or {version: ..., optional: true}", n.Line)
}

func decodeJSONManifest(data []byte, raw *rawManifest) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(raw); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return fmt.Errorf("field %q: got a JSON %s, want %s", te.Field, te.Value, jsonKind(te.Type.Kind()))
		}
		if strings.Contains(err.Error(), "unknown field") {
			return fmt.Errorf("%w (remove it or fix its spelling)", err)
		}
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("data after the top-level object; a manifest holds one JSON object")
	}
	return nil
}

// jsonKind names a Go kind the way a manifest author knows it.
func jsonKind(k reflect.Kind) string {
	switch k {
	case reflect.String:
		return "string"
	case reflect.Int, reflect.Int64:
		return "integer"
	case reflect.Bool:
		return "boolean"
	case reflect.Slice:
		return "array"
	default:
		return "object"
	}
}

func decodeYAMLManifest(data []byte, raw *rawManifest) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(raw); err != nil {
		if err == io.EOF {
			return errors.New("the file is empty")
		}
		var te *yaml.TypeError
		if errors.As(err, &te) {
			return errors.New(yamlTypeErrors(te))
		}
		return err
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err != io.EOF {
		return errors.New("more than one YAML document; a manifest holds one")
	}
	return nil
}

// yamlTypeErrors rewrites yaml's "field x not found in type goplugins.raw…"
// into `unknown field "x"`, which names the field without internal types.
func yamlTypeErrors(te *yaml.TypeError) string {
	errs := te.Errors
	if len(errs) > maxProblems {
		errs = errs[:maxProblems]
	}
	msgs := make([]string, len(errs), len(errs)+1)
	for i, e := range errs {
		if j := strings.Index(e, ": field "); j >= 0 {
			if k := strings.Index(e[j:], " not found in type "); k >= 0 {
				e = fmt.Sprintf("%s: unknown field %q (remove it or fix its spelling)", e[:j], e[j+len(": field "):j+k])
			}
		}
		msgs[i] = e
	}
	if n := len(te.Errors) - len(errs); n > 0 {
		msgs = append(msgs, fmt.Sprintf("and %d more problems", n))
	}
	return strings.Join(msgs, "; ")
}

// manifestValidator collects every problem of one manifest, each naming the
// field, so that one edit can fix them all.
type manifestValidator struct {
	path, dir string
	opts      manifestOptions
	problems  []string
	more      int   // problems beyond maxProblems
	cause     error // the first cause; a path escape takes precedence
}

// Limits on what an error lists, so that a hostile manifest cannot make a
// megabyte-long error.
const (
	maxProblems   = 16
	maxProblemLen = 320
)

func (v *manifestValidator) fail(field, format string, args ...any) {
	if len(v.problems) == maxProblems {
		v.more++
		return
	}
	msg := fmt.Sprintf("field %q: ", field) + fmt.Sprintf(format, args...)
	if len(msg) > maxProblemLen {
		cut := maxProblemLen
		for cut > 0 && !utf8.RuneStart(msg[cut]) {
			cut--
		}
		msg = msg[:cut] + "..."
	}
	v.problems = append(v.problems, msg)
}

func (v *manifestValidator) failCause(field string, cause error, format string, args ...any) {
	v.fail(field, format, args...)
	if v.cause == nil || (errors.Is(cause, ErrPathEscape) && !errors.Is(v.cause, ErrPathEscape)) {
		v.cause = cause
	}
}

func (v *manifestValidator) err(name string) error {
	if len(v.problems) == 0 {
		return nil
	}
	if v.more > 0 {
		v.problems = append(v.problems, fmt.Sprintf("and %d more problems", v.more))
	}
	if v.cause == nil {
		return newError(CodeInvalidManifest, name, "manifest %s: %s", v.path, strings.Join(v.problems, "; "))
	}
	// The problems already describe the cause: wrap it for errors.Is
	// without repeating its text.
	msg := fmt.Sprintf("manifest %s: %s", v.path, strings.Join(v.problems, "; "))
	if name != "" {
		msg = fmt.Sprintf("plugin %q: %s", name, msg)
	}
	e := goerrors.Wrap(v.cause, CodeInvalidManifest, msg)
	if name != "" {
		e.WithContext("plugin", name)
	}
	return e
}

func validName(name string) bool { return ValidateName(name) == nil }

func (v *manifestValidator) validate(r *rawManifest) *Manifest {
	m := &Manifest{
		Name:        r.Name,
		Version:     r.Version,
		Description: r.Description,
		Transport:   r.Transport,
		Endpoint:    r.Endpoint,
		Path:        v.path,
		Dir:         v.dir,
	}
	if err := ValidateName(r.Name); err != nil {
		v.failCause("name", err, "%q is not a valid plugin name: use 1 to %d characters of [a-z0-9._-], starting with a letter or digit", r.Name, MaxNameLen)
	}
	if r.Version == "" {
		v.fail("version", "missing; give a strict semantic version such as \"1.0.0\"")
	} else if ver, err := semver.StrictNewVersion(r.Version); err != nil {
		v.failCause("version", newError(CodeInvalidVersion, "", "%v", err), "%q is not a strict semantic version (want MAJOR.MINOR.PATCH, e.g. 1.4.0): %v", r.Version, err)
	} else {
		m.version = ver
	}
	v.validateTransport(r, m)
	if len(r.Args) > 0 {
		m.Args = r.Args
	}
	if len(r.Env) > 0 {
		m.Env = r.Env
	}
	for i, a := range r.Args {
		if strings.IndexByte(a, 0) >= 0 {
			v.fail("args", "argument %d contains a NUL byte", i)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(r.Env)) {
		val := r.Env[k]
		if k == "" || strings.ContainsAny(k, "=\x00") {
			v.fail("env", "variable name %q is empty or contains '=' or NUL", k)
		}
		if strings.IndexByte(val, 0) >= 0 {
			v.fail("env", "value of %q contains a NUL byte", k)
		}
	}
	if r.Checksum != "" {
		m.Checksum = v.checksum(r.Checksum)
	}
	m.Requires = ManifestRequires{Host: r.Requires.Host, Protocol: r.Requires.Protocol}
	if r.Requires.Host != "" {
		m.host = v.constraint("requires.host", r.Requires.Host)
	}
	if r.Requires.Protocol < 0 {
		v.fail("requires.protocol", "%d is negative; protocol versions start at 1", r.Requires.Protocol)
	}
	v.validateDependencies(r, m)
	v.validateSurfaces(r, m)
	m.Timeout = v.duration("timeout", r.Timeout)
	m.Health.Interval = v.duration("health.interval", r.Health.Interval)
	m.Health.Timeout = v.duration("health.timeout", r.Health.Timeout)
	if m.Health.Interval > 0 && m.Health.Timeout > m.Health.Interval {
		v.fail("health.timeout", "%s is longer than health.interval %s", m.Health.Timeout, m.Health.Interval)
	}
	m.Restart.MaxAttempts = r.Restart.MaxAttempts
	if r.Restart.MaxAttempts < 0 {
		v.fail("restart.max_attempts", "%d is negative", r.Restart.MaxAttempts)
	}
	m.Restart.Backoff = v.duration("restart.backoff", r.Restart.Backoff)
	m.Restart.MaxBackoff = v.duration("restart.max_backoff", r.Restart.MaxBackoff)
	if m.Restart.MaxBackoff > 0 && m.Restart.Backoff > m.Restart.MaxBackoff {
		v.fail("restart.max_backoff", "%s is shorter than restart.backoff %s", m.Restart.MaxBackoff, m.Restart.Backoff)
	}
	return m
}

// manifestTransports lists the known transports.
var manifestTransports = []string{"inprocess", "subprocess", "grpc"}

func (v *manifestValidator) validateTransport(r *rawManifest, m *Manifest) {
	if r.Command != "" {
		m.Command = v.resolvePath("command", r.Command)
	}
	switch r.Transport {
	case "inprocess":
		unused := []struct {
			field string
			set   bool
		}{
			{"command", r.Command != ""}, {"args", len(r.Args) > 0}, {"env", len(r.Env) > 0},
			{"checksum", r.Checksum != ""}, {"endpoint", r.Endpoint != ""}, {"tls", r.TLS != nil},
		}
		for _, u := range unused {
			if u.set {
				v.fail(u.field, "not used by transport \"inprocess\"; remove it")
			}
		}
	case "subprocess":
		if r.Command == "" {
			v.fail("command", "missing; transport \"subprocess\" needs the program to start")
		}
		if r.Endpoint != "" {
			v.fail("endpoint", "not used by transport \"subprocess\"; use transport \"grpc\" for a remote service")
		}
		if r.TLS != nil {
			v.fail("tls", "not used by transport \"subprocess\"")
		}
	case "grpc":
		switch {
		case r.Command == "" && r.Endpoint == "":
			v.fail("command", "transport \"grpc\" needs command (a local child) or endpoint (a remote service)")
		case r.Command != "" && r.Endpoint != "":
			v.fail("endpoint", "give either command or endpoint, not both")
		case r.Endpoint != "":
			v.endpoint(r.Endpoint)
			if len(r.Args) > 0 || len(r.Env) > 0 || r.Checksum != "" {
				v.fail("endpoint", "args, env and checksum apply to command only; remove them")
			}
			if r.TLS != nil {
				m.TLS = v.tls(r.TLS)
			}
		case r.TLS != nil:
			v.fail("tls", "applies to endpoint only; a child started from command is reached locally")
		}
	case "":
		v.fail("transport", "missing; use one of %s", strings.Join(manifestTransports, ", "))
	default:
		v.fail("transport", "%q is unknown; use one of %s", r.Transport, strings.Join(manifestTransports, ", "))
	}
}

// resolvePath resolves p against the plugin folder and checks that it stays inside.
func (v *manifestValidator) resolvePath(field, p string) string {
	if strings.IndexByte(p, 0) >= 0 {
		v.fail(field, "contains a NUL byte")
		return ""
	}
	var abs string
	if filepath.IsAbs(p) {
		abs = filepath.Clean(p)
	} else {
		abs = filepath.Join(v.dir, p)
	}
	if v.opts.allowOutside {
		return abs
	}
	if !strings.HasPrefix(abs, v.dir+string(filepath.Separator)) || len(abs) == len(v.dir)+1 {
		v.failCause(field, newError(CodePathEscape, "", "%s resolves to %s, outside the plugin folder %s", p, abs, v.dir),
			"%q resolves to %s, outside the plugin folder %s; keep it inside or allow paths outside", p, abs, v.dir)
		return ""
	}
	return abs
}

func (v *manifestValidator) endpoint(ep string) {
	host, port, err := net.SplitHostPort(ep)
	if err != nil {
		v.fail("endpoint", "%q is not host:port: %v", ep, err)
		return
	}
	if host == "" {
		v.fail("endpoint", "%q has no host", ep)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		v.fail("endpoint", "%q has port %q; use 1 to 65535", ep, port)
	}
}

func (v *manifestValidator) tls(r *rawTLS) *ManifestTLS {
	t := &ManifestTLS{ServerName: r.ServerName, Insecure: r.Insecure}
	if r.CAFile != "" {
		t.CAFile = v.resolvePath("tls.ca_file", r.CAFile)
		if r.Insecure {
			v.fail("tls.insecure", "true skips verification, which contradicts tls.ca_file; remove one")
		}
	}
	if (r.CertFile == "") != (r.KeyFile == "") {
		v.fail("tls.cert_file", "cert_file and key_file go together (mutual TLS); give both or neither")
	}
	if r.CertFile != "" {
		t.CertFile = v.resolvePath("tls.cert_file", r.CertFile)
	}
	if r.KeyFile != "" {
		t.KeyFile = v.resolvePath("tls.key_file", r.KeyFile)
	}
	return t
}

func (v *manifestValidator) checksum(s string) string {
	hexPart, ok := strings.CutPrefix(s, "sha256:")
	if !ok {
		v.fail("checksum", "%q must start with \"sha256:\"", s)
		return ""
	}
	if len(hexPart) != 2*sha256.Size {
		v.fail("checksum", "has %d hex digits after \"sha256:\"; a SHA-256 has %d", len(hexPart), 2*sha256.Size)
		return ""
	}
	if _, err := hex.DecodeString(hexPart); err != nil {
		v.fail("checksum", "%q is not hexadecimal", hexPart)
		return ""
	}
	return "sha256:" + strings.ToLower(hexPart)
}

func (v *manifestValidator) constraint(field, s string) *semver.Constraints {
	c, err := v.opts.constraints.parse(s)
	if err != nil {
		v.failCause(field, err, "%q is not a version constraint (e.g. \">=1.2.0, <2.0.0\" or \"^1.4\")", s)
		return nil
	}
	return c
}

func (v *manifestValidator) duration(field, s string) time.Duration {
	if s == "" {
		return 0
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		v.fail(field, "%q is not a duration; write it like \"5s\" or \"250ms\"", s)
		return 0
	}
	if d <= 0 {
		v.fail(field, "%q is not positive", s)
		return 0
	}
	return d
}

func (v *manifestValidator) validateDependencies(r *rawManifest, m *Manifest) {
	if len(r.Dependencies) == 0 {
		return
	}
	m.Dependencies = make([]ManifestDependency, 0, len(r.Dependencies))
	m.deps = make(map[string]*semver.Constraints, len(r.Dependencies))
	for _, name := range slices.Sorted(maps.Keys(r.Dependencies)) {
		d := r.Dependencies[name]
		field := "dependencies." + name
		if !validName(name) {
			v.fail("dependencies", "%q is not a valid plugin name", name)
			continue
		}
		if name == r.Name {
			v.fail(field, "a plugin cannot depend on itself")
			continue
		}
		c := v.constraint(field, d.Version)
		if c == nil {
			continue
		}
		m.deps[name] = c
		m.Dependencies = append(m.Dependencies, ManifestDependency{Name: name, Constraint: d.Version, Optional: d.Optional})
	}
}

func (v *manifestValidator) validateSurfaces(r *rawManifest, m *Manifest) {
	if len(r.Surfaces) == 0 {
		return
	}
	m.Surfaces = make([]Surface, 0, len(r.Surfaces))
	seen := make(map[string]bool, len(r.Surfaces))
	for _, s := range r.Surfaces {
		if !validName(s) {
			v.fail("surfaces", "%q is not a surface name; use [a-z0-9._-] such as \"state\"", s)
			continue
		}
		if seen[s] {
			v.fail("surfaces", "%q is listed twice", s)
			continue
		}
		seen[s] = true
		m.Surfaces = append(m.Surfaces, Surface(s))
	}
}
