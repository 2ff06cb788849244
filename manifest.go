package goplugins

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf16"
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
// Field names are case-sensitive. Unknown fields are errors that name the
// field, so that a misspelt field is never silently ignored. Durations must parse with time.ParseDuration and be
// positive. Paths (command, TLS files) are resolved against the manifest's
// folder and must stay inside it unless ManifestAllowOutside is set, also
// through symbolic links: a path that a link below the folder leads out of
// the folder's real location is refused (ErrPathEscape) when the manifest
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
	data, err := readSmallFile(path, o.maxSize, "manifest", CodeInvalidManifest)
	if err != nil {
		return nil, err
	}
	return parseManifest(path, data, o)
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

// decodeJSONManifest decodes a JSON manifest into raw. It is a strict
// decoder for this one schema, several times faster than encoding/json
// with reflection (discovery parses thousands of manifests): keys match
// exactly, unknown keys are errors that name the field, every value must
// have the field's type, null leaves a field empty, and a string's invalid
// UTF-8 becomes U+FFFD as with encoding/json.
func decodeJSONManifest(data []byte, raw *rawManifest) error {
	d := jsonDecoder{data: data}
	d.space()
	if d.null() {
		// Like encoding/json: a null manifest decodes to the zero value.
	} else if err := d.object("", raw.field); err != nil {
		return err
	}
	d.space()
	if d.pos < len(d.data) {
		return errors.New("data after the top-level object; a manifest holds one JSON object")
	}
	return nil
}

// field decodes the value of the top-level key k.
func (raw *rawManifest) field(d *jsonDecoder, k []byte) error {
	switch string(k) {
	case "name":
		return d.str("name", &raw.Name)
	case "version":
		return d.str("version", &raw.Version)
	case "description":
		return d.str("description", &raw.Description)
	case "transport":
		return d.str("transport", &raw.Transport)
	case "command":
		return d.str("command", &raw.Command)
	case "args":
		return d.strs("args", &raw.Args)
	case "env":
		if d.null() {
			raw.Env = nil
			return nil
		}
		if raw.Env == nil {
			raw.Env = make(map[string]string)
		}
		return d.object("env", func(d *jsonDecoder, name []byte) error {
			var v string
			err := d.str("env", &v)
			raw.Env[string(name)] = v
			return err
		})
	case "checksum":
		return d.str("checksum", &raw.Checksum)
	case "requires":
		return d.object("requires", func(d *jsonDecoder, f []byte) error {
			switch string(f) {
			case "host":
				return d.str("requires.host", &raw.Requires.Host)
			case "protocol":
				return d.int("requires.protocol", &raw.Requires.Protocol)
			}
			return unknownJSONField("requires", f)
		})
	case "dependencies":
		if d.null() {
			raw.Dependencies = nil
			return nil
		}
		if raw.Dependencies == nil {
			raw.Dependencies = make(map[string]rawDependency)
		}
		return d.object("dependencies", func(d *jsonDecoder, name []byte) error {
			var dep rawDependency
			var err error
			switch d.peek() {
			case '"':
				err = d.str("dependencies", &dep.Version)
			case '{':
				err = d.object("dependencies", func(d *jsonDecoder, f []byte) error {
					switch string(f) {
					case "version":
						return d.str("dependencies", &dep.Version)
					case "optional":
						return d.bool("dependencies", &dep.Optional)
					}
					return unknownJSONField("dependencies."+string(name), f)
				})
			default:
				err = errors.New(`a dependency is a constraint string or {"version": "...", "optional": true}`)
			}
			raw.Dependencies[string(name)] = dep
			if err != nil {
				return fmt.Errorf("dependency %q: %w", name, err)
			}
			return nil
		})
	case "surfaces":
		return d.strs("surfaces", &raw.Surfaces)
	case "timeout":
		return d.str("timeout", &raw.Timeout)
	case "health":
		return d.object("health", func(d *jsonDecoder, f []byte) error {
			switch string(f) {
			case "interval":
				return d.str("health.interval", &raw.Health.Interval)
			case "timeout":
				return d.str("health.timeout", &raw.Health.Timeout)
			}
			return unknownJSONField("health", f)
		})
	case "restart":
		return d.object("restart", func(d *jsonDecoder, f []byte) error {
			switch string(f) {
			case "max_attempts":
				return d.int("restart.max_attempts", &raw.Restart.MaxAttempts)
			case "backoff":
				return d.str("restart.backoff", &raw.Restart.Backoff)
			case "max_backoff":
				return d.str("restart.max_backoff", &raw.Restart.MaxBackoff)
			}
			return unknownJSONField("restart", f)
		})
	case "endpoint":
		return d.str("endpoint", &raw.Endpoint)
	case "tls":
		if d.null() {
			raw.TLS = nil
			return nil
		}
		if raw.TLS == nil {
			raw.TLS = new(rawTLS)
		}
		t := raw.TLS
		return d.object("tls", func(d *jsonDecoder, f []byte) error {
			switch string(f) {
			case "ca_file":
				return d.str("tls.ca_file", &t.CAFile)
			case "cert_file":
				return d.str("tls.cert_file", &t.CertFile)
			case "key_file":
				return d.str("tls.key_file", &t.KeyFile)
			case "server_name":
				return d.str("tls.server_name", &t.ServerName)
			case "insecure":
				return d.bool("tls.insecure", &t.Insecure)
			}
			return unknownJSONField("tls", f)
		})
	}
	return unknownJSONField("", k)
}

// unknownJSONField reports key, a key of the object at path ("" for the
// top level), as unknown.
func unknownJSONField(path string, key []byte) error {
	name := string(key)
	if path != "" {
		name = path + "." + name
	}
	return fmt.Errorf("unknown field %q (remove it or fix its spelling)", name)
}

// jsonDecoder reads JSON values from data (RFC 8259).
type jsonDecoder struct {
	data []byte
	pos  int
}

func (d *jsonDecoder) space() {
	for d.pos < len(d.data) {
		switch d.data[d.pos] {
		case ' ', '\t', '\n', '\r':
			d.pos++
		default:
			return
		}
	}
}

// peek returns the next byte after white space, or 0 at the end.
func (d *jsonDecoder) peek() byte {
	d.space()
	if d.pos < len(d.data) {
		return d.data[d.pos]
	}
	return 0
}

func (d *jsonDecoder) syntax(what string) error {
	if d.pos >= len(d.data) {
		return fmt.Errorf("unexpected end of JSON input, want %s", what)
	}
	return fmt.Errorf("invalid character %q at byte %d, want %s", d.data[d.pos], d.pos, what)
}

// literal consumes word (true, false, null) if it comes next.
func (d *jsonDecoder) literal(word string) bool {
	if d.peek() != word[0] || !bytes.HasPrefix(d.data[d.pos:], []byte(word)) {
		return false
	}
	end := d.pos + len(word)
	if end < len(d.data) && isJSONWordByte(d.data[end]) {
		return false
	}
	d.pos = end
	return true
}

func isJSONWordByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_'
}

func (d *jsonDecoder) null() bool { return d.literal("null") }

// kind names the JSON value that comes next, for type errors.
func (d *jsonDecoder) kind() string {
	switch c := d.peek(); {
	case c == '"':
		return "string"
	case c == '{':
		return "object"
	case c == '[':
		return "array"
	case c == 't' || c == 'f':
		return "boolean"
	case c == '-' || c >= '0' && c <= '9':
		return "number"
	}
	return "value"
}

func (d *jsonDecoder) typeError(field, want string) error {
	if got := d.kind(); got != "value" {
		return fmt.Errorf("field %q: got a JSON %s, want %s", field, got, want)
	}
	return d.syntax("a JSON value")
}

// object reads an object, calling fn for each key with the decoder at the
// key's value; fn must consume the value. null is an empty object.
func (d *jsonDecoder) object(field string, fn func(d *jsonDecoder, key []byte) error) error {
	if d.null() {
		return nil
	}
	if d.peek() != '{' {
		if field == "" {
			return d.syntax("a JSON object")
		}
		return d.typeError(field, "object")
	}
	d.pos++
	if d.peek() == '}' {
		d.pos++
		return nil
	}
	var seen keySet
	for {
		if d.peek() != '"' {
			return d.syntax("a string key")
		}
		key, err := d.key()
		if err != nil {
			return err
		}
		if seen.add(key) {
			return duplicateJSONKey(field, key)
		}
		if d.peek() != ':' {
			return d.syntax("':' after a key")
		}
		d.pos++
		d.space()
		if err := fn(d, key); err != nil {
			return err
		}
		switch d.peek() {
		case ',':
			d.pos++
		case '}':
			d.pos++
			return nil
		default:
			return d.syntax("',' or '}'")
		}
	}
}

// str reads a string into *s; null leaves *s unchanged.
func (d *jsonDecoder) str(field string, s *string) error {
	if d.null() {
		return nil
	}
	if d.peek() != '"' {
		return d.typeError(field, "string")
	}
	v, err := d.rawString()
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// strs reads an array of strings; null gives nil.
func (d *jsonDecoder) strs(field string, out *[]string) error {
	if d.null() {
		*out = nil
		return nil
	}
	if d.peek() != '[' {
		return d.typeError(field, "array")
	}
	d.pos++
	list := []string{}
	if d.peek() == ']' {
		d.pos++
		*out = list
		return nil
	}
	for {
		var s string
		if err := d.str(field, &s); err != nil {
			return err
		}
		list = append(list, s)
		switch d.peek() {
		case ',':
			d.pos++
		case ']':
			d.pos++
			*out = list
			return nil
		default:
			return d.syntax("',' or ']'")
		}
	}
}

// bool reads true or false; null leaves *b unchanged.
func (d *jsonDecoder) bool(field string, b *bool) error {
	switch {
	case d.null():
	case d.literal("true"):
		*b = true
	case d.literal("false"):
		*b = false
	default:
		return d.typeError(field, "boolean")
	}
	return nil
}

// int reads an integer number; null leaves *n unchanged.
func (d *jsonDecoder) int(field string, n *int) error {
	if d.null() {
		return nil
	}
	c := d.peek()
	if c != '-' && (c < '0' || c > '9') {
		return d.typeError(field, "integer")
	}
	start := d.pos
	if c == '-' {
		d.pos++
	}
	digits := d.pos
	for d.pos < len(d.data) && d.data[d.pos] >= '0' && d.data[d.pos] <= '9' {
		d.pos++
	}
	switch {
	case d.pos == digits:
		return d.syntax("a digit")
	case d.data[digits] == '0' && d.pos-digits > 1:
		return fmt.Errorf("field %q: number at byte %d has a leading zero", field, start)
	case d.pos < len(d.data) && (d.data[d.pos] == '.' || d.data[d.pos] == 'e' || d.data[d.pos] == 'E'):
		return fmt.Errorf("field %q: want an integer, got a fraction or exponent at byte %d", field, d.pos)
	}
	v, err := strconv.Atoi(string(d.data[start:d.pos]))
	if err != nil {
		return fmt.Errorf("field %q: %s is out of range", field, d.data[start:d.pos])
	}
	*n = v
	return nil
}

// keySet is the keys of one JSON object seen so far: a list while the
// object is small, as manifests' objects are, a map beyond.
type keySet struct {
	few  [16][]byte
	n    int
	many map[string]struct{}
}

// add adds key and reports whether it was there already.
func (s *keySet) add(key []byte) bool {
	if s.many != nil {
		if _, ok := s.many[string(key)]; ok {
			return true
		}
		s.many[string(key)] = struct{}{}
		return false
	}
	for _, k := range s.few[:s.n] {
		if bytes.Equal(k, key) {
			return true
		}
	}
	if s.n < len(s.few) {
		s.few[s.n] = key
		s.n++
		return false
	}
	s.many = make(map[string]struct{}, 2*len(s.few))
	for _, k := range s.few {
		s.many[string(k)] = struct{}{}
	}
	s.many[string(key)] = struct{}{}
	return false
}

// duplicateJSONKey is the error for a key given twice in one object, as
// YAML refuses it: encoding/json would keep the last one quietly.
func duplicateJSONKey(field string, key []byte) error {
	if field == "" {
		return fmt.Errorf("field %q is given twice; give each field once", key)
	}
	return fmt.Errorf("field %q: key %q is given twice; give each key once", field, key)
}

// key reads an object key at d.pos, which holds '"'. Without escapes it is
// a view of the input, so matching known keys allocates nothing.
func (d *jsonDecoder) key() ([]byte, error) {
	start := d.pos + 1
	for i := start; i < len(d.data); i++ {
		c := d.data[i]
		if c == '"' {
			d.pos = i + 1
			return d.data[start:i], nil
		}
		if c == '\\' || c < 0x20 || c >= utf8.RuneSelf {
			break
		}
	}
	s, err := d.rawString()
	return []byte(s), err
}

// rawString reads a string at d.pos, which holds '"'.
func (d *jsonDecoder) rawString() (string, error) {
	start := d.pos + 1
	// Fast path: printable ASCII without escapes.
	for i := start; i < len(d.data); i++ {
		c := d.data[i]
		if c == '"' {
			d.pos = i + 1
			return string(d.data[start:i]), nil
		}
		if c == '\\' || c < 0x20 || c >= utf8.RuneSelf {
			break
		}
	}
	var b []byte
	i := start
	for i < len(d.data) {
		c := d.data[i]
		switch {
		case c == '"':
			d.pos = i + 1
			return string(b), nil
		case c < 0x20:
			d.pos = i
			return "", d.syntax("no control characters in a string")
		case c == '\\':
			if i+1 >= len(d.data) {
				d.pos = len(d.data)
				return "", d.syntax("an escape")
			}
			i++
			switch e := d.data[i]; e {
			case '"', '\\', '/':
				b = append(b, e)
			case 'b':
				b = append(b, '\b')
			case 'f':
				b = append(b, '\f')
			case 'n':
				b = append(b, '\n')
			case 'r':
				b = append(b, '\r')
			case 't':
				b = append(b, '\t')
			case 'u':
				r, n := d.unicodeEscape(i - 1)
				if n == 0 {
					d.pos = i
					return "", d.syntax(`four hex digits after \u`)
				}
				b = utf8.AppendRune(b, r)
				i += n - 2
			default:
				d.pos = i
				return "", d.syntax("a valid escape")
			}
			i++
		case c < utf8.RuneSelf:
			b = append(b, c)
			i++
		default:
			r, n := utf8.DecodeRune(d.data[i:])
			b = utf8.AppendRune(b, r) // invalid UTF-8 becomes U+FFFD
			i += n
		}
	}
	d.pos = len(d.data)
	return "", d.syntax(`'"' to end a string`)
}

// unicodeEscape decodes the \uXXXX escape at data[i:] (and a following low
// surrogate). It returns the rune and the bytes consumed, or 0 bytes when
// the escape is malformed. Unpaired surrogates become U+FFFD.
func (d *jsonDecoder) unicodeEscape(i int) (rune, int) {
	r := hex4(d.data[i:])
	if r < 0 {
		return 0, 0
	}
	if !utf16.IsSurrogate(r) {
		return r, 6
	}
	if r2 := hex4(d.data[i+6:]); r2 >= 0 {
		if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
			return dec, 12
		}
	}
	return utf8.RuneError, 6
}

// hex4 decodes `\uXXXX` at the start of b, or returns -1.
func hex4(b []byte) rune {
	if len(b) < 6 || b[0] != '\\' || b[1] != 'u' {
		return -1
	}
	var r rune
	for _, c := range b[2:6] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			c = c - 'A' + 10
		default:
			return -1
		}
		r = r<<4 | rune(c)
	}
	return r
}

func decodeYAMLManifest(data []byte, raw *rawManifest) (err error) {
	defer func() {
		// The YAML library is third-party code fed untrusted bytes.
		if r := recover(); r != nil {
			err = fmt.Errorf("the YAML parser failed: %v", r)
		}
	}()
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
	if escape := v.linkEscape(abs); escape != "" {
		v.failCause(field, newError(CodePathEscape, "", "%s %s", p, escape),
			"%q %s; keep it inside or allow paths outside", p, escape)
		return ""
	}
	return abs
}

// linkEscape says how abs, a path lexically inside the plugin folder,
// leaves the folder's real location through a symbolic link below the
// folder, or returns "" when it stays inside. Only the part of abs that
// exists is resolved: the rest holds no link yet. A link that cannot be
// resolved (a dangling one, say) counts as leaving, since nothing shows
// where it will lead. The common path, with no link below the folder,
// costs one Lstat a path element.
func (v *manifestValidator) linkEscape(abs string) string {
	link := ""
	for end := len(v.dir) + 1; end < len(abs) && link == ""; end++ {
		if i := strings.IndexByte(abs[end:], filepath.Separator); i >= 0 {
			end += i
		} else {
			end = len(abs)
		}
		fi, err := os.Lstat(abs[:end])
		if err != nil {
			return "" // nothing below exists
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			link = abs[:end]
		}
	}
	if link == "" {
		return ""
	}
	unresolvable := fmt.Sprintf("leads through the symbolic link %s, which does not resolve, so it may leave the plugin folder %s", link, v.dir)
	dir, err := filepath.EvalSymlinks(v.dir)
	if err != nil {
		return unresolvable
	}
	// Resolve the longest part of abs that exists, from the link down.
	real, rest := "", ""
	for p := abs; real == ""; p = filepath.Dir(p) {
		resolved, err := filepath.EvalSymlinks(p)
		switch {
		case err == nil:
			real = filepath.Join(resolved, rest)
		case !errors.Is(err, fs.ErrNotExist):
			return unresolvable
		default:
			if fi, err := os.Lstat(p); err == nil && fi.Mode()&os.ModeSymlink != 0 {
				return unresolvable // a dangling link
			}
			rest = filepath.Join(filepath.Base(p), rest)
		}
	}
	if strings.HasPrefix(real, dir+string(filepath.Separator)) && len(real) > len(dir)+1 {
		return ""
	}
	return fmt.Sprintf("leads through the symbolic link %s to %s, outside the plugin folder %s", link, real, v.dir)
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
