package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/goplugins/goplugins/internal/proc"
	"github.com/goplugins/goplugins/internal/wire"
)

// target is the plugin program under test and how to start it.
type target struct {
	command string
	args    []string
	env     map[string]string
	dir     string
	sum     []byte // the manifest's checksum, verified before each start
	// name and version are what the manifest says, "" for a bare command.
	name, version string
	surfaces      []string // the manifest's surfaces
}

// session is one run of the plugin, driven over its protocol pipes as a
// host would, but frame by frame: every byte it sends is the check's.
type session struct {
	p          *proc.Process
	toPlugin   *os.File // the host's end of descriptor 3
	fromPlugin *os.File // the host's end of descriptor 4
	timeout    time.Duration

	frames chan frameOrErr // the reader's frames, then its final error
	quit   chan struct{}   // closed by close: the reader stops delivering

	mu     sync.Mutex
	stdout []string
	stderr []string

	nextID uint64

	// hostCalls are the HOST_CALLs (protocol 2) the plugin made; each was
	// answered with HOST_ERROR not_granted: the suite grants nothing.
	hostCalls []hostCallSeen
	// hostCancels counts the plugin's HOST_CANCEL frames.
	hostCancels int
}

// hostCallSeen is one HOST_CALL of the plugin: its id and payload, or why
// the payload does not decode.
type hostCallSeen struct {
	id  uint64
	hc  wire.HostCall
	err error
}

type frameOrErr struct {
	f   wire.Frame
	err error // io.EOF at the end of the stream
}

// hostMaxFrame is the maximum frame size the suite declares in HELLO.
const hostMaxFrame = wire.DefaultMaxFrameSize

// startSession starts the plugin with the protocol pipes as descriptors 3
// and 4, through internal/proc as the host does (its own process group,
// only those descriptors, the checksum verified). cookie says whether the
// environment holds the magic cookie.
func startSession(t *target, cookie bool, timeout time.Duration) (*session, error) {
	childIn, toPlugin, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	fromPlugin, childOut, err := os.Pipe()
	if err != nil {
		childIn.Close()
		toPlugin.Close()
		return nil, err
	}
	env := []string{}
	if path, ok := os.LookupEnv("PATH"); ok && t.env["PATH"] == "" {
		env = append(env, "PATH="+path)
	}
	for _, k := range slices.Sorted(maps.Keys(t.env)) {
		env = append(env, k+"="+t.env[k])
	}
	if cookie {
		env = append(env, wire.CookieKey+"="+wire.CookieValue)
	}
	s := &session{toPlugin: toPlugin, fromPlugin: fromPlugin, timeout: timeout,
		frames: make(chan frameOrErr, 64), quit: make(chan struct{})}
	s.p, err = proc.Start(proc.Config{
		Path: t.command, Args: t.args, Env: env, Dir: t.dir, SHA256: t.sum,
		ExtraFiles: []*os.File{childIn, childOut},
		Stdout:     s.lineTo(&s.stdout),
		Stderr:     s.lineTo(&s.stderr),
	})
	childIn.Close()
	childOut.Close()
	if err != nil {
		toPlugin.Close()
		fromPlugin.Close()
		return nil, err
	}
	go s.read()
	return s, nil
}

// maxLines bounds the lines of stdout, and of stderr, a session keeps: a
// plugin that floods its output costs the suite no more.
const maxLines = 1000

func (s *session) lineTo(dst *[]string) func([]byte) {
	return func(line []byte) {
		s.mu.Lock()
		if len(*dst) < maxLines {
			*dst = append(*dst, string(line))
		}
		s.mu.Unlock()
	}
}

// output returns the plugin's stdout and stderr lines so far (the first
// maxLines of each).
func (s *session) output() (stdout, stderr []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.stdout), slices.Clone(s.stderr)
}

// read delivers the plugin's frames until the stream ends or breaks. A
// frame over the suite's limit is reported and the stream read on.
func (s *session) read() {
	r := wire.NewReader(s.fromPlugin, hostMaxFrame)
	for {
		f, err := r.Read()
		var tooBig *wire.FrameTooLargeError
		select {
		case s.frames <- frameOrErr{f, err}:
		case <-s.quit:
			return
		}
		if err != nil && !errors.As(err, &tooBig) {
			return
		}
	}
}

// send writes one frame whole, within the session's timeout. The frame
// may be over the plugin's limit: the suite writes what it is told.
func (s *session) send(t wire.Type, id uint64, payload []byte) error {
	return s.write(wire.AppendFrame(nil, t, id, payload))
}

// write writes raw bytes to descriptor 3 within the session's timeout.
func (s *session) write(b []byte) error {
	_ = s.toPlugin.SetWriteDeadline(time.Now().Add(s.timeout))
	_, err := s.toPlugin.Write(b)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("the plugin took no bytes of a %d-byte write for %v: it stopped reading descriptor 3", len(b), s.timeout)
	}
	return err
}

// next returns the plugin's next frame, waiting at most the session's
// timeout. The plugin's host calls (protocol 2) are answered here, with
// HOST_ERROR not_granted, and recorded (see hostCalls): they are never
// returned.
func (s *session) next() (wire.Frame, error) {
	t := time.NewTimer(s.timeout)
	defer t.Stop()
	for {
		select {
		case fe := <-s.frames:
			if fe.err == io.EOF {
				return wire.Frame{}, errEnded
			}
			if fe.err == nil && s.hostFrame(fe.f) {
				continue
			}
			return fe.f, fe.err
		case <-t.C:
			return wire.Frame{}, fmt.Errorf("no frame from the plugin within %v", s.timeout)
		}
	}
}

// notGranted is the suite's answer to every host call.
var notGranted, _ = json.Marshal(wire.ErrorReply{Code: wire.CodeNotGranted, Message: "goplugins conform grants no host function"})

// hostFrame records and answers f if it is a host call or its cancel.
func (s *session) hostFrame(f wire.Frame) bool {
	switch f.Type {
	case wire.TypeHostCall:
		hc, err := wire.ParseHostCall(f.Payload)
		s.hostCalls = append(s.hostCalls, hostCallSeen{f.ID, hc, err})
		_ = s.send(wire.TypeHostError, f.ID, notGranted) // a write error shows on the next request
		return true
	case wire.TypeHostCancel:
		s.hostCancels++
		return true
	}
	return false
}

// errEnded is next's error at the end of the plugin's stream.
var errEnded = errors.New("the plugin closed descriptor 4 (or exited)")

// hello sends HELLO and returns the plugin's first frame.
func (s *session) hello(h wire.Hello) (wire.Frame, error) {
	b, _ := json.Marshal(h) // ints and strings: always encodes
	if err := s.send(wire.TypeHello, 0, b); err != nil {
		return wire.Frame{}, fmt.Errorf("writing HELLO: %w", err)
	}
	return s.next()
}

// defaultHello is the HELLO a Go host sends.
func defaultHello(name string) wire.Hello {
	protocols := make([]int, 0, wire.ProtocolVersion)
	for v := 1; v <= wire.ProtocolVersion; v++ {
		protocols = append(protocols, v)
	}
	return wire.Hello{Protocols: protocols, Codec: "json", MaxFrameSize: hostMaxFrame, Name: name}
}

// handshake completes the default handshake and returns the WELCOME.
func (s *session) handshake(name string) (wire.Welcome, error) {
	f, err := s.hello(defaultHello(name))
	if err != nil {
		return wire.Welcome{}, err
	}
	var w wire.Welcome
	if f.Type != wire.TypeWelcome {
		return w, fmt.Errorf("the plugin answered HELLO with %s%s, not WELCOME", f.Type, errorText(f))
	}
	if err := json.Unmarshal(f.Payload, &w); err != nil {
		return w, fmt.Errorf("the WELCOME does not decode: %v", err)
	}
	return w, nil
}

// request sends a request with a fresh id and returns its answer; frames
// for other ids met meanwhile are returned too.
func (s *session) request(t wire.Type, payload []byte) (answer wire.Frame, others []wire.Frame, err error) {
	s.nextID++
	id := s.nextID
	if err := s.send(t, id, payload); err != nil {
		return wire.Frame{}, nil, s.why(fmt.Errorf("writing %s: %w", t, err))
	}
	answer, others, err = s.await(id)
	return answer, others, s.why(err)
}

// why adds to err, when the plugin has exited, its exit status and its
// last stderr line.
func (s *session) why(err error) error {
	if err == nil {
		return nil
	}
	t := time.NewTimer(s.timeout)
	defer t.Stop()
	select {
	case <-s.p.Done():
	case <-t.C:
		return err
	}
	_, stderr := s.output()
	if len(stderr) == 0 {
		return fmt.Errorf("%w (the plugin exited with status %d)", err, s.p.State().ExitCode())
	}
	return fmt.Errorf("%w (the plugin exited with status %d; its last stderr line: %q)", err, s.p.State().ExitCode(), stderr[len(stderr)-1])
}

// await returns the answer to id, and the frames met before it.
func (s *session) await(id uint64) (wire.Frame, []wire.Frame, error) {
	var others []wire.Frame
	for {
		f, err := s.next()
		if err != nil {
			return wire.Frame{}, others, fmt.Errorf("waiting for the answer to request %d: %w", id, err)
		}
		if f.ID == id {
			return f, others, nil
		}
		others = append(others, f)
	}
}

// exit waits for the plugin to exit, at most the session's timeout, and
// returns its status, or -1 if it is still running.
func (s *session) exit() int {
	t := time.NewTimer(s.timeout)
	defer t.Stop()
	select {
	case <-s.p.Done():
		return s.p.State().ExitCode()
	case <-t.C:
		return -1
	}
}

// eof waits for the end of the plugin's stream, at most the session's
// timeout, and returns the frames that came before it.
func (s *session) eof() ([]wire.Frame, error) {
	var frames []wire.Frame
	for {
		f, err := s.next()
		var tooBig *wire.FrameTooLargeError
		switch {
		case err == nil:
			frames = append(frames, f)
		case errors.As(err, &tooBig):
			return frames, err
		case errors.Is(err, errEnded):
			return frames, nil
		default:
			return frames, err
		}
	}
}

// received returns the frames the plugin has sent that no one has read,
// without waiting.
func (s *session) received() []wire.Frame {
	var frames []wire.Frame
	for {
		select {
		case fe := <-s.frames:
			if fe.err == nil {
				frames = append(frames, fe.f)
			}
		default:
			return frames
		}
	}
}

// close ends the session: it closes descriptor 3 (the plugin must exit at
// once), escalates to SIGTERM and SIGKILL of the plugin's group if it does
// not, and waits until it is reaped and its output read.
func (s *session) close() {
	s.toPlugin.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s.p.Stop(ctx, time.Second)
	close(s.quit)
	s.fromPlugin.Close()
}

// errorText describes an ERROR frame's reply, "" for other frames.
func errorText(f wire.Frame) string {
	if f.Type != wire.TypeError {
		return ""
	}
	rep, err := decodeError(f)
	if err != nil {
		return " (" + err.Error() + ")"
	}
	return fmt.Sprintf(" (%s: %s)", rep.Code, rep.Message)
}

// decodeError decodes an ERROR frame's reply and checks it has a code.
func decodeError(f wire.Frame) (wire.ErrorReply, error) {
	var rep wire.ErrorReply
	if err := json.Unmarshal(f.Payload, &rep); err != nil {
		return rep, fmt.Errorf("the ERROR payload is not an ErrorReply: %v", err)
	}
	if rep.Code == "" {
		return rep, errors.New("the ERROR reply has no code")
	}
	return rep, nil
}
