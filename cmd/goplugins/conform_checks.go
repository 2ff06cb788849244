package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/Masterminds/semver/v3"

	"github.com/goplugins/goplugins/internal/wire"
)

// conformCheck is one named check of the suite. Checks run in the order of
// conformChecks, each on a plugin process of its own (unless it needs
// none), so that one failure does not spoil the next check.
type conformCheck struct {
	name  string
	about string
	// protocol is the lowest protocol version the check needs: a plugin
	// that chose a lower one in the handshake check skips it. 0 marks the
	// checks that run without the handshake check's WELCOME.
	protocol int
	run      func(c *conformRun) checkResult
}

// conformChecks is the suite, in order; "handshake" comes before every
// check that uses the WELCOME. Checks of a later protocol version are
// appended with their protocol set.
var conformChecks = []conformCheck{
	{"cookie", "started without the magic cookie, it does not speak the protocol and exits non-zero", 0, checkCookie},
	{"handshake", "HELLO is answered by a valid WELCOME", 0, checkHandshake},
	{"protocol-refusal", "HELLO offering no version it speaks gets ERROR protocol_version, then exit 1", 1, checkProtocolRefusal},
	{"codec-refusal", "HELLO with an unknown codec gets ERROR codec, then exit 1", 1, checkCodecRefusal},
	{"health", "HEALTH gets an empty RESULT", 1, checkHealth},
	{"call", "CALL gets one RESULT or ERROR with its id", 1, checkCall},
	{"concurrent-calls", "16 CALLs in flight at once each get one answer with their id", 1, checkConcurrent},
	{"cancel", "CANCEL (also of an unknown id) breaks nothing; the cancelled call gets at most one answer", 1, checkCancel},
	{"frame-too-large", "a CALL over the plugin's maximum frame size gets ERROR frame_too_large; the stream survives", 1, checkFrameTooLarge},
	{"undeclared-surfaces", "PERSIST, CHECKPOINT, CHECK_COMPAT for undeclared surfaces get ERROR unsupported", 1, checkUndeclared},
	{"state", "declared state: PERSIST returns bytes that RESTORE accepts", 1, checkState},
	{"stream", "declared stream: CHECKPOINT returns a position that RESUME accepts", 1, checkStream},
	{"schema", "declared schema: CHECK_COMPAT of its own info gets RESULT", 1, checkSchema},
	{"stdout", "stdout carries no protocol data and does not disturb it", 1, checkStdout},
	{"stderr", "stderr carries text lines (the host's log records)", 1, checkStderr},
	{"shutdown", "SHUTDOWN: the calls in flight are answered, then exit 0", 1, checkShutdown},
	{"eof", "end of file on descriptor 3: it exits", 1, checkEOF},
	{"metadata", "METADATA before a CALL breaks nothing; the CALL gets one answer", 2, checkMetadata},
	{"host-calls", "HOST_CALLs made during a CALL are well-formed (parent: the CALL's id or 0) and a not_granted answer leaves the CALL answered", 2, checkHostCalls},
	{"stray-host-answers", "HOST_RESULT and HOST_ERROR for ids the plugin never used are dropped; the stream survives", 2, checkStrayHostAnswers},
}

// checkResult is a check's outcome.
type checkResult struct {
	status string // "pass", "fail" or "skip"
	detail string
}

func pass(format string, args ...any) checkResult {
	return checkResult{"pass", fmt.Sprintf(format, args...)}
}
func fail(format string, args ...any) checkResult {
	return checkResult{"fail", fmt.Sprintf(format, args...)}
}
func skip(format string, args ...any) checkResult {
	return checkResult{"skip", fmt.Sprintf(format, args...)}
}

// session starts a plugin and completes the handshake; on failure it
// returns the failed result instead.
func (c *conformRun) session() (*session, checkResult, bool) {
	s, err := startSession(c.target, true, c.timeout)
	if err != nil {
		return nil, fail("the plugin does not start: %v", err), false
	}
	if _, err := s.handshake(c.target.name); err != nil {
		s.close()
		return nil, fail("no handshake: %v", err), false
	}
	return s, checkResult{}, true
}

func checkCookie(c *conformRun) checkResult {
	s, err := startSession(c.target, false, c.timeout)
	if err != nil {
		return fail("the plugin does not start: %v", err)
	}
	defer s.close()
	hello, _ := json.Marshal(defaultHello(c.target.name))
	_ = s.send(wire.TypeHello, 0, hello) // it may have closed descriptor 3 already
	code := s.exit()
	var frames []wire.Frame
	if code == -1 {
		frames = s.received()
	} else {
		frames, _ = s.eof()
	}
	_, stderr := s.output()
	switch {
	case len(frames) > 0:
		return fail("it answered HELLO with %s without the cookie", frames[0].Type)
	case code == -1:
		return fail("still running %v after it was started without the cookie", c.timeout)
	case code == 0:
		return fail("it exited 0 without the cookie; exit non-zero")
	}
	if len(stderr) == 0 {
		return pass("exit status %d, nothing on stderr (a line saying why would help)", code)
	}
	return pass("exit status %d; stderr: %q", code, stderr[0])
}

// nameRule is PluginInfo.Name's rule.
var nameRule = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

func checkHandshake(c *conformRun) checkResult {
	s, err := startSession(c.target, true, c.timeout)
	if err != nil {
		return fail("the plugin does not start: %v", err)
	}
	defer s.close()
	f, err := s.hello(defaultHello(c.target.name))
	if err != nil {
		return fail("%v", err)
	}
	if f.Type != wire.TypeWelcome || f.ID != 0 {
		return fail("HELLO was answered by %s id %d%s, not WELCOME id 0", f.Type, f.ID, errorText(f))
	}
	var w wire.Welcome
	if err := json.Unmarshal(f.Payload, &w); err != nil {
		return fail("the WELCOME does not decode: %v", err)
	}
	problems := welcomeProblems(w, c.target)
	if len(problems) > 0 {
		return fail("%s", strings.Join(problems, "; "))
	}
	c.welcome = &w
	surfaces := "no surfaces"
	if len(w.Surfaces) > 0 {
		surfaces = "surfaces " + strings.Join(w.Surfaces, ",")
	}
	return pass("%s %s, protocol %d, max frame %d bytes, %s", w.Name, w.Version, w.Protocol, w.MaxFrameSize, surfaces)
}

// welcomeProblems checks a WELCOME against the protocol's rules and the
// manifest, if any.
func welcomeProblems(w wire.Welcome, t *target) []string {
	var problems []string
	if !slices.Contains(defaultHello("").Protocols, w.Protocol) {
		problems = append(problems, fmt.Sprintf("it chose protocol %d, which was not offered", w.Protocol))
	}
	if w.MaxFrameSize < wire.MinMaxFrameSize || w.MaxFrameSize > wire.MaxFrameSizeLimit {
		problems = append(problems, fmt.Sprintf("max_frame_size %d is outside %d..%d", w.MaxFrameSize, wire.MinMaxFrameSize, wire.MaxFrameSizeLimit))
	}
	if !nameRule.MatchString(w.Name) {
		problems = append(problems, fmt.Sprintf("name %q breaks the rule [a-z0-9][a-z0-9._-]{0,63}", w.Name))
	}
	if _, err := semver.StrictNewVersion(w.Version); err != nil {
		problems = append(problems, fmt.Sprintf("version %q is not strict semantic versioning", w.Version))
	}
	if t.name != "" && w.Name != t.name {
		problems = append(problems, fmt.Sprintf("name %q, but the manifest says %q", w.Name, t.name))
	}
	if t.version != "" && w.Version != t.version {
		problems = append(problems, fmt.Sprintf("version %q, but the manifest says %q", w.Version, t.version))
	}
	for _, sf := range t.surfaces {
		if !slices.Contains(w.Surfaces, sf) {
			problems = append(problems, fmt.Sprintf("the manifest lists surface %q, the WELCOME does not", sf))
		}
	}
	return problems
}

// checkRefusal sends h and expects ERROR id 0 with code, then exit 1.
func checkRefusal(c *conformRun, h wire.Hello, code string) checkResult {
	s, err := startSession(c.target, true, c.timeout)
	if err != nil {
		return fail("the plugin does not start: %v", err)
	}
	defer s.close()
	f, err := s.hello(h)
	if err != nil {
		return fail("%v", err)
	}
	if f.Type != wire.TypeError || f.ID != 0 {
		return fail("answered by %s id %d, not ERROR id 0", f.Type, f.ID)
	}
	rep, err := decodeError(f)
	if err != nil {
		return fail("%v", err)
	}
	if rep.Code != code {
		return fail("ERROR code %q, not %q", rep.Code, code)
	}
	switch st := s.exit(); st {
	case 1:
		return pass("ERROR %s: %s; exit status 1", rep.Code, rep.Message)
	case -1:
		return fail("ERROR %s, but still running after %v; exit 1", rep.Code, c.timeout)
	default:
		return fail("ERROR %s, then exit status %d; exit 1", rep.Code, st)
	}
}

func checkProtocolRefusal(c *conformRun) checkResult {
	h := defaultHello(c.target.name)
	h.Protocols = []int{999}
	return checkRefusal(c, h, wire.CodeProtocolVersion)
}

func checkCodecRefusal(c *conformRun) checkResult {
	h := defaultHello(c.target.name)
	h.Codec = "goplugins-conform-no-such-codec"
	return checkRefusal(c, h, wire.CodeCodec)
}

// expectResult checks that f is a RESULT, with an empty payload if empty.
func expectResult(what string, f wire.Frame, empty bool) (checkResult, bool) {
	if f.Type != wire.TypeResult {
		return fail("%s was answered by %s%s, not RESULT", what, f.Type, errorText(f)), false
	}
	if empty && len(f.Payload) > 0 {
		return fail("%s got a RESULT of %d bytes, not an empty one", what, len(f.Payload)), false
	}
	return checkResult{}, true
}

// expectAnswer checks that f is a RESULT or a well-formed ERROR.
func expectAnswer(f wire.Frame) (string, error) {
	switch f.Type {
	case wire.TypeResult:
		return "RESULT of " + count(len(f.Payload), "byte"), nil
	case wire.TypeError:
		rep, err := decodeError(f)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("ERROR %s: %s", rep.Code, rep.Message), nil
	}
	return "", fmt.Errorf("answered by %s, not RESULT or ERROR", f.Type)
}

func checkHealth(c *conformRun) checkResult {
	s, r, ok := c.session()
	if !ok {
		return r
	}
	defer s.close()
	f, _, err := s.request(wire.TypeHealth, nil)
	if err != nil {
		return fail("%v", err)
	}
	if r, ok := expectResult("HEALTH", f, true); !ok {
		return r
	}
	return pass("healthy")
}

func checkCall(c *conformRun) checkResult {
	s, r, ok := c.session()
	if !ok {
		return r
	}
	defer s.close()
	_, what, err := s.call(c.request)
	if err != nil {
		return fail("%v", err)
	}
	return pass("%s to %s", what, c.request)
}

func checkConcurrent(c *conformRun) checkResult {
	s, r, ok := c.session()
	if !ok {
		return r
	}
	defer s.close()
	const n = 16
	var batch []byte
	for id := uint64(1); id <= n; id++ {
		batch = wire.AppendFrame(batch, wire.TypeCall, id, c.request)
	}
	if err := s.write(batch); err != nil {
		return fail("writing %d CALLs: %v", n, err)
	}
	seen := map[uint64]int{}
	var order []uint64
	for len(order) < n {
		f, err := s.next()
		if err != nil {
			return fail("%d of %d answers, then: %v", len(order), n, err)
		}
		if f.ID < 1 || f.ID > n {
			return fail("an answer with id %d, which was never sent", f.ID)
		}
		if seen[f.ID]++; seen[f.ID] > 1 {
			return fail("request %d was answered twice", f.ID)
		}
		if _, err := expectAnswer(f); err != nil {
			return fail("request %d: %v", f.ID, err)
		}
		order = append(order, f.ID)
	}
	if slices.IsSorted(order) {
		return pass("%d answers, in request order", n)
	}
	return pass("%d answers, out of request order (served concurrently)", n)
}

func checkCancel(c *conformRun) checkResult {
	s, r, ok := c.session()
	if !ok {
		return r
	}
	defer s.close()
	const call, unknown, health = 1, 1 << 40, 2
	batch := wire.AppendFrame(nil, wire.TypeCall, call, c.request)
	batch = wire.AppendFrame(batch, wire.TypeCancel, call, nil)
	batch = wire.AppendFrame(batch, wire.TypeCancel, unknown, nil)
	batch = wire.AppendFrame(batch, wire.TypeHealth, health, nil)
	if err := s.write(batch); err != nil {
		return fail("writing CALL, CANCEL, CANCEL, HEALTH: %v", err)
	}
	answers := 0
	var what string
	for {
		f, err := s.next()
		if err != nil {
			return fail("waiting for the HEALTH sent after the CANCELs: %v", err)
		}
		switch f.ID {
		case call:
			if answers++; answers > 1 {
				return fail("the cancelled call was answered twice")
			}
			if what, err = expectAnswer(f); err != nil {
				return fail("the cancelled call: %v", err)
			}
			continue
		case health:
			if r, ok := expectResult("the HEALTH after the CANCELs", f, true); !ok {
				return r
			}
		default:
			return fail("an answer with id %d, which was never sent", f.ID)
		}
		break
	}
	if answers == 0 {
		return pass("the stream serves on; the cancelled call was not answered before the next request")
	}
	return pass("the stream serves on; the cancelled call was answered (%s)", what)
}

// frameTooLargeMax is the largest maximum frame size the suite tests by
// sending a frame over it.
const frameTooLargeMax = 64 << 20

func checkFrameTooLarge(c *conformRun) checkResult {
	limit := c.welcome.MaxFrameSize
	if limit > frameTooLargeMax {
		return skip("the plugin accepts frames of %d bytes; the suite sends at most %d", limit, frameTooLargeMax+1)
	}
	s, r, ok := c.session()
	if !ok {
		return r
	}
	defer s.close()
	payload := make([]byte, limit-wire.MinFrameSize+1) // length field limit+1
	for i := range payload {
		payload[i] = 'x'
	}
	f, _, err := s.request(wire.TypeCall, payload)
	if err != nil {
		return fail("a CALL of %d bytes: %v", limit+1, err)
	}
	if f.Type != wire.TypeError {
		return fail("a CALL of %d bytes (limit %d) was answered by %s, not ERROR frame_too_large", limit+1, limit, f.Type)
	}
	rep, err := decodeError(f)
	if err != nil {
		return fail("%v", err)
	}
	if rep.Code != wire.CodeFrameTooLarge {
		return fail("a CALL over the limit got ERROR %q, not %q", rep.Code, wire.CodeFrameTooLarge)
	}
	f, _, err = s.request(wire.TypeHealth, nil)
	if err != nil {
		return fail("after frame_too_large the stream is broken: %v", err)
	}
	if r, ok := expectResult("the HEALTH after it", f, true); !ok {
		return r
	}
	return pass("ERROR frame_too_large for %d bytes; the stream serves on", limit+1)
}

// surfaceRequests are the requests of each reload surface.
var surfaceRequests = []struct {
	surface string
	t       wire.Type
}{{"state", wire.TypePersist}, {"stream", wire.TypeCheckpoint}, {"schema", wire.TypeCheckCompat}}

func checkUndeclared(c *conformRun) checkResult {
	var todo []int
	for i, sr := range surfaceRequests {
		if !slices.Contains(c.welcome.Surfaces, sr.surface) {
			todo = append(todo, i)
		}
	}
	if len(todo) == 0 {
		return skip("the plugin declares every surface")
	}
	s, r, ok := c.session()
	if !ok {
		return r
	}
	defer s.close()
	var done []string
	for _, i := range todo {
		sr := surfaceRequests[i]
		payload := []byte(nil)
		if sr.t == wire.TypeCheckCompat {
			payload, _ = json.Marshal(c.welcome.Info)
		}
		f, _, err := s.request(sr.t, payload)
		if err != nil {
			return fail("%s: %v", sr.t, err)
		}
		rep, err := decodeError(f)
		if f.Type != wire.TypeError || err != nil || rep.Code != wire.CodeUnsupported {
			return fail("%s without surface %q was answered by %s%s, not ERROR unsupported", sr.t, sr.surface, f.Type, errorText(f))
		}
		done = append(done, sr.t.String())
	}
	return pass("%s refused with unsupported", strings.Join(done, ", "))
}

// checkPair runs a surface's pair of requests: first returns bytes that
// second must accept.
func checkPair(c *conformRun, surface string, first, second wire.Type) checkResult {
	if !slices.Contains(c.welcome.Surfaces, surface) {
		return skip("the plugin does not declare %q", surface)
	}
	s, r, ok := c.session()
	if !ok {
		return r
	}
	defer s.close()
	f, _, err := s.request(first, nil)
	if err != nil {
		return fail("%s: %v", first, err)
	}
	if r, ok := expectResult(first.String(), f, false); !ok {
		return r
	}
	data := f.Payload
	f, _, err = s.request(second, data)
	if err != nil {
		return fail("%s: %v", second, err)
	}
	if r, ok := expectResult(second.String()+" of the bytes "+first.String()+" returned", f, true); !ok {
		return r
	}
	return pass("%s returned %s, which %s accepted", first, count(len(data), "byte"), second)
}

func checkState(c *conformRun) checkResult {
	return checkPair(c, "state", wire.TypePersist, wire.TypeRestore)
}

func checkStream(c *conformRun) checkResult {
	return checkPair(c, "stream", wire.TypeCheckpoint, wire.TypeResume)
}

func checkSchema(c *conformRun) checkResult {
	if !slices.Contains(c.welcome.Surfaces, "schema") {
		return skip("the plugin does not declare \"schema\"")
	}
	s, r, ok := c.session()
	if !ok {
		return r
	}
	defer s.close()
	info, _ := json.Marshal(c.welcome.Info)
	f, _, err := s.request(wire.TypeCheckCompat, info)
	if err != nil {
		return fail("%v", err)
	}
	if r, ok := expectResult("CHECK_COMPAT of its own info", f, true); !ok {
		return r
	}
	return pass("it can replace its own version")
}

// served runs a session through a call and a health check and shuts it
// down, so that its output is complete.
func (c *conformRun) served() (stdout, stderr []string, r checkResult, ok bool) {
	s, r, ok := c.session()
	if !ok {
		return nil, nil, r, false
	}
	defer s.close()
	if _, _, err := s.request(wire.TypeCall, c.request); err != nil {
		return nil, nil, fail("CALL: %v", err), false
	}
	if _, _, err := s.request(wire.TypeHealth, nil); err != nil {
		return nil, nil, fail("HEALTH: %v", err), false
	}
	_ = s.send(wire.TypeShutdown, 0, nil)
	s.exit()
	stdout, stderr = s.output()
	return stdout, stderr, checkResult{}, true
}

// binary reports whether line holds control bytes other than tabs: frame
// headers do (their length fields start with zero bytes), text does not.
func binary(line string) bool {
	for i := 0; i < len(line); i++ {
		if b := line[i]; b < 0x20 && b != '\t' && b != '\r' || b == 0x7f {
			return true
		}
	}
	return !utf8.ValidString(line)
}

func checkStdout(c *conformRun) checkResult {
	stdout, _, r, ok := c.served()
	if !ok {
		return r
	}
	for i, line := range stdout {
		if binary(line) {
			return fail("stdout line %d holds binary data (frames belong on descriptor 4): %q", i+1, cut(line, 40))
		}
	}
	return pass("%s on stdout, no protocol data; the protocol ran beside it", count(len(stdout), "line"))
}

// hostLevels are the JSON "level" values the host understands.
var hostLevels = []string{"trace", "debug", "info", "information", "notice", "warn", "warning",
	"error", "err", "critical", "crit", "fatal", "panic", "alert", "emerg"}

func checkStderr(c *conformRun) checkResult {
	_, stderr, r, ok := c.served()
	if !ok {
		return r
	}
	records, levels := 0, map[string]bool{}
	for i, line := range stderr {
		if binary(line) {
			return fail("stderr line %d is not text: %q", i+1, cut(line, 40))
		}
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil {
			continue
		}
		records++
		if lv, ok := rec["level"].(string); ok && slices.Contains(hostLevels, strings.ToLower(lv)) {
			levels[strings.ToLower(lv)] = true
		}
	}
	if len(stderr) == 0 {
		return pass("nothing on stderr")
	}
	detail := fmt.Sprintf("%s, %d of them JSON records", count(len(stderr), "line"), records)
	if len(levels) > 0 {
		detail += " with levels " + strings.Join(slices.Sorted(maps.Keys(levels)), ",")
	}
	return pass("%s", detail)
}

func checkShutdown(c *conformRun) checkResult {
	s, r, ok := c.session()
	if !ok {
		return r
	}
	defer s.close()
	const n = 4
	var batch []byte
	for id := uint64(1); id <= n; id++ {
		batch = wire.AppendFrame(batch, wire.TypeCall, id, c.request)
	}
	batch = wire.AppendFrame(batch, wire.TypeShutdown, 0, nil)
	if err := s.write(batch); err != nil {
		return fail("writing %d CALLs and SHUTDOWN: %v", n, err)
	}
	frames, err := s.eof()
	if err != nil {
		return fail("after SHUTDOWN: %v", err)
	}
	answered := map[uint64]bool{}
	for _, f := range frames {
		answered[f.ID] = true
	}
	if len(answered) < n {
		return fail("%d of the %d calls in flight were answered before the plugin ended its stream", len(answered), n)
	}
	switch st := s.exit(); st {
	case 0:
		return pass("%d calls in flight answered, then exit status 0", n)
	case -1:
		return fail("the calls were answered, but it is still running %v after SHUTDOWN", c.timeout)
	default:
		return fail("the calls were answered, then exit status %d; exit 0", st)
	}
}

func checkEOF(c *conformRun) checkResult {
	s, r, ok := c.session()
	if !ok {
		return r
	}
	defer s.close()
	s.toPlugin.Close()
	if st := s.exit(); st != -1 {
		return pass("exit status %d", st)
	}
	return fail("still running %v after descriptor 3 reached its end", c.timeout)
}

// count says "1 line", "2 lines".
func count(n int, unit string) string {
	if n == 1 {
		return "1 " + unit
	}
	return fmt.Sprintf("%d %ss", n, unit)
}

func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

func checkMetadata(c *conformRun) checkResult {
	s, r, ok := c.session()
	if !ok {
		return r
	}
	defer s.close()
	md, _ := json.Marshal(map[string]string{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
	if err := s.send(wire.TypeMetadata, s.nextID+1, md); err != nil {
		return fail("writing METADATA: %v", err)
	}
	_, what, err := s.call(c.request)
	if err != nil {
		return fail("%v", err)
	}
	return pass("%s to the CALL after METADATA", what)
}

func checkHostCalls(c *conformRun) checkResult {
	s, r, ok := c.session()
	if !ok {
		return r
	}
	defer s.close()
	f, what, err := s.call(c.request)
	if err != nil {
		return fail("%v", err)
	}
	if len(s.hostCalls) == 0 {
		return pass("%s; the plugin made no host call for this request (give one with --request to check them)", what)
	}
	seen := map[uint64]bool{}
	for _, hc := range s.hostCalls {
		switch {
		case hc.err != nil:
			return fail("HOST_CALL %d: %v", hc.id, hc.err)
		case hc.id == 0:
			return fail("a HOST_CALL has id 0; host-call ids are nonzero")
		case seen[hc.id]:
			return fail("two HOST_CALLs in flight have id %d", hc.id)
		case hc.hc.Parent != 0 && hc.hc.Parent != f.ID:
			return fail("HOST_CALL %d names parent %d, not the CALL's id %d (or 0)", hc.id, hc.hc.Parent, f.ID)
		}
		seen[hc.id] = true
	}
	return pass("%s after %s, each answered not_granted", what, count(len(s.hostCalls), "host call"))
}

func checkStrayHostAnswers(c *conformRun) checkResult {
	s, r, ok := c.session()
	if !ok {
		return r
	}
	defer s.close()
	var batch []byte
	batch = wire.AppendFrame(batch, wire.TypeHostResult, 1<<62, []byte("{}"))
	batch = wire.AppendFrame(batch, wire.TypeHostError, 1<<62+1, notGranted)
	if err := s.write(batch); err != nil {
		return fail("writing HOST_RESULT and HOST_ERROR: %v", err)
	}
	_, what, err := s.call(c.request)
	if err != nil {
		return fail("after stray host answers: %v", err)
	}
	return pass("%s to the CALL after them", what)
}

// call sends a CALL with payload and checks that it gets one RESULT or
// ERROR, which what describes.
func (s *session) call(payload []byte) (f wire.Frame, what string, err error) {
	f, _, err = s.request(wire.TypeCall, payload)
	if err != nil {
		return f, "", err
	}
	what, err = expectAnswer(f)
	return f, what, err
}
