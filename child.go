package goplugins

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	goerrors "github.com/agilira/go-errors"

	"github.com/goplugins/goplugins/internal/proc"
	"github.com/goplugins/goplugins/internal/supervise"
)

// Defaults of the child-process settings both transports share.
const (
	defaultStartTimeout   = 10 * time.Second
	defaultStopGrace      = 5 * time.Second
	defaultRestartBackoff = 100 * time.Millisecond
	defaultMaxBackoff     = 10 * time.Second
	defaultMinUptime      = time.Minute
)

// RestartPolicy says how a crashed plugin child process (subprocess or
// gRPC) is restarted, like Kubernetes' CrashLoopBackOff: the n-th
// consecutive attempt waits Backoff·2ⁿ⁻¹, at most MaxBackoff, and a child
// that stayed up for MinUptime (whether or not it served a call) starts
// the count again.
type RestartPolicy struct {
	// MaxAttempts is how many consecutive attempts are made before the
	// plugin is left down: 0 means no limit (the default: a plugin is never
	// left down for good), < 0 never restart.
	MaxAttempts int
	// Backoff is the first wait (default 100ms).
	Backoff time.Duration
	// MaxBackoff caps the wait (default 10s, or Backoff if that is longer).
	MaxBackoff time.Duration
	// MinUptime is how long a child must stay up for its crash not to count
	// as consecutive with the ones before (default 1m).
	MinUptime time.Duration
}

// policy returns r with its defaults set, for the supervisor.
func (r RestartPolicy) policy() supervise.Policy {
	p := supervise.Policy{MaxAttempts: r.MaxAttempts, Backoff: r.Backoff, MaxBackoff: r.MaxBackoff, MinUptime: r.MinUptime}
	if p.Backoff <= 0 {
		p.Backoff = defaultRestartBackoff
	}
	if p.MaxBackoff <= 0 {
		p.MaxBackoff = max(defaultMaxBackoff, p.Backoff)
	}
	if p.MinUptime <= 0 {
		p.MinUptime = defaultMinUptime
	}
	return p
}

// downError is the fast failure of a call while no child serves, the same
// on both transports: ErrClosed after Close; once restarts were given up,
// the error that said so; with restarts disabled a non-retryable
// ErrCrashed; while a restart is pending a retryable one.
func downError(plugin string, closed bool, down error, r RestartPolicy) error {
	switch {
	case closed:
		return newError(codeClosed, plugin, "the plugin is closed; create a new one to use it again")
	case down != nil:
		return down
	case r.MaxAttempts < 0:
		return newError(codeCrashed, plugin, "the plugin process is down and restarts are disabled (RestartPolicy.MaxAttempts < 0)")
	}
	return retryable(newError(codeCrashed, plugin, "the plugin process is down and being restarted; retry later"))
}

// leftDownError is the error calls get once the supervisor gave up; it is
// not retryable, whatever the last failure was.
func leftDownError(plugin string, r RestartPolicy, last error) error {
	return newError(codeCrashed, plugin, "the plugin crashed and is not restarted (RestartPolicy.MaxAttempts %d); reload it to start it again; the last failure: %v", r.MaxAttempts, last)
}

// childEnviron returns a child's environment: with inherit, the host's
// whole environment; otherwise only the host's PATH (so that a
// "#!/usr/bin/env" script finds its interpreter). env overrides these, and
// launch, the transport's own "KEY=value" variables, override everything.
// Variables are sorted by name, launch last.
func childEnviron(env map[string]string, inherit bool, launch ...string) []string {
	vars := map[string]string{}
	if inherit {
		for _, kv := range os.Environ() {
			if k, v, ok := strings.Cut(kv, "="); ok {
				vars[k] = v
			}
		}
	} else if path, ok := os.LookupEnv("PATH"); ok {
		vars["PATH"] = path
	}
	for k, v := range env {
		vars[k] = v
	}
	for _, kv := range launch {
		k, _, _ := strings.Cut(kv, "=")
		delete(vars, k)
	}
	out := make([]string, 0, len(vars)+len(launch))
	for k, v := range vars {
		out = append(out, k+"="+v)
	}
	slices.Sort(out)
	return append(out, launch...)
}

// startError is the error of a child that could not be started: the
// checksum did not match, the OS has no child processes, or, with code,
// anything else.
func startError(err error, plugin, command, config string, code goerrors.ErrorCode) error {
	switch {
	case errors.Is(err, proc.ErrChecksum):
		return wrapError(err, codeChecksumMismatch, plugin, "refusing to run %s: replace the program or update %s.Checksum", command, config)
	case errors.Is(err, errors.ErrUnsupported):
		return wrapError(err, codeTransport, plugin, "cannot start %s: this OS (%s) lacks what plugin child processes need; run the plugin as a remote gRPC endpoint instead", command, runtime.GOOS)
	}
	return wrapError(err, code, plugin, "starting %s", command)
}

// withStderr attaches the tail of p's stderr to err, a fresh coded error,
// under the context key "stderr_tail": error messages stay one line and
// the tail is there for whoever logs or inspects the error.
func withStderr(err error, p *proc.Process) error {
	var e *goerrors.Error
	if tail := strings.TrimSpace(p.StderrTail()); tail != "" && errors.As(err, &e) {
		e.WithContext("stderr_tail", tail)
	}
	return err
}

// envVarName reports whether k can be an environment variable's name.
func envVarName(k string) bool { return k != "" && !strings.ContainsAny(k, "=\x00") }

// lineLogger logs each line a child writes to stream, one record a line;
// a JSON log line keeps its level, message and fields (see parseLogLine).
func lineLogger(l *slog.Logger, stream string) func([]byte) {
	return func(line []byte) {
		level, msg, attrs := parseLogLine(line)
		l.LogAttrs(context.Background(), level, msg, append(attrs, slog.String("stream", stream))...)
	}
}

// parseLogLine reads a JSON object line as a record: its "level" (matched
// case-insensitively: trace and debug; info, information and notice; warn
// and warning; error, err, critical, crit, fatal, panic, alert and emerg)
// gives the record's level, Info when it is missing or unknown (an unknown
// one is kept as a field); its "msg" or "message" the message; its other
// fields but "time" become attributes, numbers as int64 where they are
// integers. Any other line is an Info record with the line as message.
func parseLogLine(line []byte) (slog.Level, string, []slog.Attr) {
	if len(line) == 0 || line[0] != '{' {
		return slog.LevelInfo, string(line), nil
	}
	var fields map[string]any
	d := json.NewDecoder(bytes.NewReader(line))
	d.UseNumber()
	if d.Decode(&fields) != nil || d.More() {
		return slog.LevelInfo, string(line), nil
	}
	level := slog.LevelInfo
	if lv, ok := fields["level"].(string); ok {
		if l, known := logLevels[strings.ToLower(lv)]; known {
			level = l
			delete(fields, "level")
		}
	}
	msg, _ := fields["msg"].(string)
	if m, ok := fields["message"].(string); ok && msg == "" {
		msg = m
	}
	keys := make([]string, 0, len(fields))
	for k := range fields {
		switch k {
		case "msg", "message", "time":
		default:
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	attrs := make([]slog.Attr, 0, len(keys)+1)
	for _, k := range keys {
		attrs = append(attrs, logAttr(k, fields[k]))
	}
	return level, msg, attrs
}

var logLevels = map[string]slog.Level{
	"trace": slog.LevelDebug, "debug": slog.LevelDebug,
	"info": slog.LevelInfo, "information": slog.LevelInfo, "notice": slog.LevelInfo,
	"warn": slog.LevelWarn, "warning": slog.LevelWarn,
	"error": slog.LevelError, "err": slog.LevelError, "critical": slog.LevelError, "crit": slog.LevelError,
	"fatal": slog.LevelError, "panic": slog.LevelError, "alert": slog.LevelError, "emerg": slog.LevelError,
}

// logAttr is the attribute of a decoded JSON field: integers stay
// integers, other numbers become float64.
func logAttr(k string, v any) slog.Attr {
	n, ok := v.(json.Number)
	if !ok {
		return slog.Any(k, v)
	}
	if i, err := n.Int64(); err == nil {
		return slog.Int64(k, i)
	}
	if f, err := n.Float64(); err == nil {
		return slog.Float64(k, f)
	}
	return slog.String(k, n.String())
}

// lifecycle reports a transport's child-process lifecycle: to the
// Manager's subscribers (set by Register through setEvents), to the
// configured OnRestart callback and to the log.
type lifecycle struct {
	plugin    string
	log       *slog.Logger
	onRestart func(plugin string, attempt int, err error)
	events    atomic.Pointer[func(Event)]
	pid       atomic.Int64          // the serving child's, 0 while down
	restarts  atomic.Int64          // attempts made
	down      atomic.Pointer[error] // see leftDown
}

// setEvents makes fn receive the lifecycle events; the Manager calls it
// when the plugin is registered.
func (l *lifecycle) setEvents(fn func(Event)) { l.events.Store(&fn) }

// event reports a supervisor event.
func (l *lifecycle) event(ev supervise.Event) {
	kind := map[supervise.Kind]EventKind{
		supervise.Crashed: EventCrashed, supervise.Restarted: EventRestarted,
		supervise.RestartFailed: EventRestartFailed, supervise.LeftDown: EventLeftDown,
	}[ev.Kind]
	switch ev.Kind {
	case supervise.Crashed:
		l.log.Warn("goplugins: plugin process ended", slog.Any("error", ev.Err))
	case supervise.LeftDown:
		l.log.Error("goplugins: plugin left down", slog.Int("attempts", ev.Attempt), slog.Any("error", ev.Err))
	default:
		l.restarts.Add(1)
		l.log.Info("goplugins: plugin restart", slog.Int("attempt", ev.Attempt), slog.Any("error", ev.Err))
		if l.onRestart != nil {
			l.onRestart(l.plugin, ev.Attempt, ev.Err)
		}
	}
	if fn := l.events.Load(); fn != nil {
		(*fn)(Event{Kind: kind, Plugin: l.plugin, Attempt: ev.Attempt, Err: ev.Err})
	}
}

// supervise runs the supervisor over the serving child first, with start
// making each new one, until ctx ends or policy leaves the plugin down.
// When it does, leftDown reports the error calls then fail with, set before
// EventLeftDown is sent.
func (l *lifecycle) supervise(ctx context.Context, policy RestartPolicy, start func(context.Context) (supervise.Child, error), first supervise.Child) {
	event := func(ev supervise.Event) {
		if ev.Kind == supervise.LeftDown {
			err := leftDownError(l.plugin, policy, ev.Err)
			l.down.Store(&err)
		}
		l.event(ev)
	}
	supervise.Run(ctx, supervise.Config{Policy: policy.policy(), Start: start, Event: event}, first)
}

// leftDown returns the error calls fail with once the supervisor gave up,
// nil before.
func (l *lifecycle) leftDown() error {
	if err := l.down.Load(); err != nil {
		return *err
	}
	return nil
}

// watchLifecycle hands emit to a plugin that reports its own lifecycle
// events (the transports do); Register and Reload call it.
func watchLifecycle(p any, emit func(Event)) {
	if s, ok := p.(interface{ setEvents(func(Event)) }); ok {
		s.setEvents(emit)
	}
}
