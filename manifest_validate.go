package goplugins

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/Masterminds/semver/v3"
	goerrors "github.com/agilira/go-errors"
)

// manifestValidator collects every problem of one manifest, each naming the
// field, so that one edit can fix them all.
type manifestValidator struct {
	path, dir string
	opts      manifestOptions
	problems  []ManifestProblem
	more      int   // problems beyond maxProblems
	cause     error // the first cause
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
	reason := fmt.Sprintf(format, args...)
	if len(reason) > maxProblemLen {
		cut := maxProblemLen
		for cut > 0 && !utf8.RuneStart(reason[cut]) {
			cut--
		}
		reason = reason[:cut] + "..."
	}
	v.problems = append(v.problems, ManifestProblem{Field: field, Reason: reason})
}

func (v *manifestValidator) failCause(field string, cause error, format string, args ...any) {
	v.fail(field, format, args...)
	if v.cause == nil {
		v.cause = cause
	}
}

func (v *manifestValidator) err(name string) error {
	if len(v.problems) == 0 {
		return nil
	}
	if v.more > 0 {
		v.problems = append(v.problems, ManifestProblem{Reason: fmt.Sprintf("and %d more problems", v.more)})
	}
	parts := make([]string, len(v.problems))
	for i, p := range v.problems {
		parts[i] = p.String()
	}
	msg := fmt.Sprintf("manifest %s: %s", v.path, strings.Join(parts, "; "))
	var e *goerrors.Error
	if v.cause == nil {
		e = newError(codeInvalidManifest, name, "%s", msg).(*goerrors.Error)
	} else {
		// The problems already describe the cause: wrap it for errors.Is
		// without repeating its text.
		if name != "" {
			msg = fmt.Sprintf("plugin %q: %s", name, msg)
		}
		e = goerrors.Wrap(v.cause, codeInvalidManifest, msg)
		if name != "" {
			e.WithContext("plugin", name)
		}
	}
	e.WithContext(problemsKey, slices.Clone(v.problems))
	return e
}

// ManifestProblem is one problem found in a manifest file.
type ManifestProblem struct {
	// Field is the manifest field concerned, such as "requires.host";
	// empty for a problem of the whole file.
	Field string
	// Reason says what is wrong and what to do about it.
	Reason string
}

// String returns `field "F": reason`, or the reason alone.
func (p ManifestProblem) String() string {
	if p.Field == "" {
		return p.Reason
	}
	return fmt.Sprintf("field %q: %s", p.Field, p.Reason)
}

// problemsKey is the error context field that holds a manifest's problems.
const problemsKey = "manifest_problems"

// ManifestProblems returns the problems listed by err, an error matching
// ErrInvalidManifest (from LoadManifest, ParseManifest, a scan or the
// loader): every field problem of the file, each on its own, or one
// problem without a field for a file that does not parse, is too large or
// is declared twice. It returns nil for an error that does not match
// ErrInvalidManifest.
func ManifestProblems(err error) []ManifestProblem {
	if !errors.Is(err, ErrInvalidManifest) {
		return nil
	}
	var ge *goerrors.Error
	for e := err; errors.As(e, &ge); e = ge.Unwrap() {
		if ps, ok := ge.Context[problemsKey].([]ManifestProblem); ok {
			return slices.Clone(ps)
		}
	}
	if !errors.As(err, &ge) {
		return []ManifestProblem{{Reason: err.Error()}}
	}
	msg := ge.Message
	if plugin, ok := ge.Context["plugin"].(string); ok {
		msg = strings.TrimPrefix(msg, fmt.Sprintf("plugin %q: ", plugin))
	}
	return []ManifestProblem{{Reason: msg}}
}

func validName(name string) bool { return validateName(name) == nil }

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
	if err := validateName(r.Name); err != nil {
		v.failCause("name", err, "%q is not a valid plugin name: use 1 to %d characters of [a-z0-9._-], starting with a letter or digit", r.Name, maxNameLen)
	}
	if r.Version == "" {
		v.fail("version", "missing; give a strict semantic version such as \"1.0.0\"")
	} else if ver, err := semver.StrictNewVersion(r.Version); err != nil {
		v.failCause("version", newError(codeInvalidVersion, "", "%v", err), "%q is not a strict semantic version (want MAJOR.MINOR.PATCH, e.g. 1.4.0): %v", r.Version, err)
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
		v.constraint("requires.host", r.Requires.Host)
	}
	if r.Requires.Protocol < 0 {
		v.fail("requires.protocol", "%d is negative; protocol versions start at 1", r.Requires.Protocol)
	}
	v.validateDependencies(r, m)
	v.validateSurfaces(r, m)
	v.validateHostFunctions(r, m)
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
	m.Restart.MinUptime = v.duration("restart.min_uptime", r.Restart.MinUptime)
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
		v.fail(field, "%q resolves to %s, outside the plugin folder %s; keep it inside or allow paths outside", p, abs, v.dir)
		return ""
	}
	if escape := v.linkEscape(abs); escape != "" {
		v.fail(field, "%q %s; keep it inside or allow paths outside", p, escape)
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
	t := &ManifestTLS{ServerName: r.ServerName}
	if r.Insecure {
		v.fail("tls.insecure", "skipping the server's verification is not supported; give tls.ca_file to verify it")
	}
	if r.CAFile != "" {
		t.CAFile = v.resolvePath("tls.ca_file", r.CAFile)
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
	m.Dependencies = make([]Dependency, 0, len(r.Dependencies))
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
		if v.constraint(field, d.Version) == nil {
			continue
		}
		m.Dependencies = append(m.Dependencies, Dependency{Name: name, Constraint: d.Version, Optional: d.Optional})
	}
}

func (v *manifestValidator) validateSurfaces(r *rawManifest, m *Manifest) {
	for _, s := range v.nameList("surfaces", r.Surfaces, `a surface name; use [a-z0-9._-] such as "state"`) {
		m.Surfaces = append(m.Surfaces, Surface(s))
	}
}

func (v *manifestValidator) validateHostFunctions(r *rawManifest, m *Manifest) {
	m.HostFunctions = v.nameList("host_functions", r.HostFunctions,
		fmt.Sprintf(`a host function name: use 1 to %d characters of [a-z0-9._-], starting with a letter or digit, such as "kv.get"`, maxNameLen))
}

// nameList returns the valid names of list, field's value, each once; an
// invalid name fails as not being what, a repeated one as listed twice.
// It returns nil for an empty list.
func (v *manifestValidator) nameList(field string, list []string, what string) []string {
	if len(list) == 0 {
		return nil
	}
	out := make([]string, 0, len(list))
	seen := make(map[string]bool, len(list))
	for _, n := range list {
		if !validName(n) {
			v.fail(field, "%q is not %s", n, what)
			continue
		}
		if seen[n] {
			v.fail(field, "%q is listed twice", n)
			continue
		}
		seen[n] = true
		out = append(out, n)
	}
	return out
}
