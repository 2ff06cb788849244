package goplugins

// The manifest decoders: JSON and YAML into rawManifest, the file format.
//
// The JSON decoder is written by hand for this one schema, and that is why
// this file exists: with encoding/json, BenchmarkDiscoveryScan1k (1,000
// manifests) goes over its 20 ms budget, and encoding/json keeps the last
// of a key given twice where YAML refuses it. The decoder is strict: keys
// match exactly, a key given twice or unknown is an error naming the field,
// every value must have the field's type. FuzzManifest checks that it
// accepts nothing encoding/json refuses and decodes what it accepts the
// same way.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// rawManifest is the file format; see Manifest.
type rawManifest struct {
	Name          string                   `json:"name" yaml:"name"`
	Version       string                   `json:"version" yaml:"version"`
	Description   string                   `json:"description" yaml:"description"`
	Transport     string                   `json:"transport" yaml:"transport"`
	Command       string                   `json:"command" yaml:"command"`
	Args          []string                 `json:"args" yaml:"args"`
	Env           map[string]string        `json:"env" yaml:"env"`
	Checksum      string                   `json:"checksum" yaml:"checksum"`
	Requires      rawRequires              `json:"requires" yaml:"requires"`
	Dependencies  map[string]rawDependency `json:"dependencies" yaml:"dependencies"`
	Surfaces      []string                 `json:"surfaces" yaml:"surfaces"`
	Timeout       string                   `json:"timeout" yaml:"timeout"`
	Health        rawHealth                `json:"health" yaml:"health"`
	Restart       rawRestart               `json:"restart" yaml:"restart"`
	Endpoint      string                   `json:"endpoint" yaml:"endpoint"`
	TLS           *rawTLS                  `json:"tls" yaml:"tls"`
	HostFunctions []string                 `json:"host_functions" yaml:"host_functions"`
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
	MinUptime   string `json:"min_uptime" yaml:"min_uptime"`
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
		return raw.envField(d)
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
		return raw.dependenciesField(d)
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
			case "min_uptime":
				return d.str("restart.min_uptime", &raw.Restart.MinUptime)
			}
			return unknownJSONField("restart", f)
		})
	case "endpoint":
		return d.str("endpoint", &raw.Endpoint)
	case "tls":
		return raw.tlsField(d)
	case "host_functions":
		return d.strs("host_functions", &raw.HostFunctions)
	}
	return unknownJSONField("", k)
}

// envField decodes "env": an object of strings.
func (raw *rawManifest) envField(d *jsonDecoder) error {
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
}

// dependenciesField decodes "dependencies": an object whose values are a
// constraint string or {"version": ..., "optional": ...}.
func (raw *rawManifest) dependenciesField(d *jsonDecoder) error {
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
}

// tlsField decodes "tls".
func (raw *rawManifest) tlsField(d *jsonDecoder) error {
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

// unknownJSONField reports key, a key of the object at path ("" for the
// top level), as unknown.
func unknownJSONField(path string, key []byte) error {
	name := string(key)
	if path != "" {
		name = path + "." + name
	}
	return fieldProblem(name, "unknown field %q (remove it or fix its spelling)", name)
}

// decodeProblems are the problems of a manifest that does not decode,
// each naming its field where the decoder knows it; Reason is the whole
// message.
type decodeProblems []ManifestProblem

func (d decodeProblems) Error() string {
	msgs := make([]string, len(d))
	for i, p := range d {
		msgs[i] = p.Reason
	}
	return strings.Join(msgs, "; ")
}

// fieldProblem is the decoding problem of one field.
func fieldProblem(field, format string, args ...any) error {
	return decodeProblems{{Field: field, Reason: fmt.Sprintf(format, args...)}}
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
		return fieldProblem(field, "field %q: got a JSON %s, want %s", field, got, want)
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
		return fieldProblem(field, "field %q: number at byte %d has a leading zero", field, start)
	case d.pos < len(d.data) && (d.data[d.pos] == '.' || d.data[d.pos] == 'e' || d.data[d.pos] == 'E'):
		return fieldProblem(field, "field %q: want an integer, got a fraction or exponent at byte %d", field, d.pos)
	}
	v, err := strconv.Atoi(string(d.data[start:d.pos]))
	if err != nil {
		return fieldProblem(field, "field %q: %s is out of range", field, d.data[start:d.pos])
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
		return fieldProblem(string(key), "field %q is given twice; give each field once", key)
	}
	return fieldProblem(field, "field %q: key %q is given twice; give each key once", field, key)
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
			return yamlTypeErrors(te)
		}
		return err
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err != io.EOF {
		return errors.New("more than one YAML document; a manifest holds one")
	}
	return nil
}

// yamlTypeErrors turns yaml's errors into problems, rewriting "field x not
// found in type goplugins.raw…" into `unknown field "x"`, which names the
// field without internal types.
func yamlTypeErrors(te *yaml.TypeError) decodeProblems {
	errs := te.Errors
	if len(errs) > maxProblems {
		errs = errs[:maxProblems]
	}
	ps := make(decodeProblems, len(errs), len(errs)+1)
	for i, e := range errs {
		ps[i].Reason = e
		if j := strings.Index(e, ": field "); j >= 0 {
			if k := strings.Index(e[j:], " not found in type "); k >= 0 {
				ps[i].Field = e[j+len(": field ") : j+k]
				ps[i].Reason = fmt.Sprintf("%s: unknown field %q (remove it or fix its spelling)", e[:j], ps[i].Field)
			}
		}
	}
	if n := len(te.Errors) - len(errs); n > 0 {
		ps = append(ps, ManifestProblem{Reason: fmt.Sprintf("and %d more problems", n)})
	}
	return ps
}
