package sdk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"unicode/utf8"

	"github.com/goplugins/goplugins/internal/wire"
	"github.com/goplugins/goplugins/internal/workers"
)

// ErrNotLaunched is returned by Serve when the program was not started by a
// goplugins host (the magic cookie is missing from its environment).
var ErrNotLaunched = errors.New("sdk: this program is a goplugins plugin; it is started by a goplugins host and cannot be run by hand")

// Option configures Serve.
type Option func(*config)

type config struct {
	codecs     []Codec
	max        int
	background []func(ctx context.Context)
}

// WithCodec adds a codec the host may choose in the handshake.
func WithCodec(c Codec) Option { return func(cf *config) { cf.codecs = append(cf.codecs, c) } }

// WithMaxFrameSize sets the largest frame the plugin accepts (its length
// field, in bytes; at least 1 KiB, at most 1 GiB). A larger request is refused with the
// "frame_too_large" error code. The default is 4 MiB.
func WithMaxFrameSize(n int) Option { return func(cf *config) { cf.max = n } }

// Serve serves p to the host that started the program, over the protocol
// pipes on file descriptors 3 and 4, until the host sends shutdown (Serve
// waits for the requests in flight and for every answer queued to be
// written, then returns nil) or goes away (Serve cancels the requests in
// flight and returns nil); background work (WithBackground) is cancelled
// and waited for. A goroutine reads the host's pipe at all times: the one
// that reads a request hands reading on to a parked worker goroutine (a
// new one when none waits) and runs the request's handler itself, which
// writes the answer. So handlers run concurrently, a CANCEL reaches a
// handler that blocks, and an idle plugin wakes on no timer. A handler
// that panics answers with the "panic" error code and the plugin serves
// on. Whatever
// the program writes to stdout or stderr goes to the host's log, never
// into the protocol. Serve speaks protocol versions 1 and 2, the highest
// the host offers; with version 2 handlers may call the host (CallHost)
// and read the request's metadata (Metadata).
//
// Serve returns ErrNotLaunched when the program was run by hand; a typical
// main prints the error to stderr and exits with status 1.
func Serve[Req, Resp any](p Plugin[Req, Resp], info Info, opts ...Option) error {
	if os.Getenv(wire.CookieKey) != wire.CookieValue {
		return ErrNotLaunched
	}
	// Both pipes go through the runtime's poller: a reader waiting for the
	// host holds no thread, and a handler it starts runs on the thread that
	// read its request.
	_ = syscall.SetNonblock(wire.HostToPluginFD, true)
	_ = syscall.SetNonblock(wire.PluginToHostFD, true)
	in := os.NewFile(wire.HostToPluginFD, "goplugins-host-to-plugin")
	out := os.NewFile(wire.PluginToHostFD, "goplugins-plugin-to-host")
	for _, f := range []*os.File{in, out} {
		if _, err := f.Stat(); err != nil {
			return fmt.Errorf("sdk: protocol descriptor %s is not open (%v): start the plugin from a goplugins host", f.Name(), err)
		}
	}
	// Programs the plugin starts must not inherit the protocol pipes.
	syscall.CloseOnExec(wire.HostToPluginFD)
	syscall.CloseOnExec(wire.PluginToHostFD)
	defer out.Close()
	return serve(context.Background(), in, out, p, info, opts...)
}

// serve runs the protocol over in and out.
func serve[Req, Resp any](ctx context.Context, in io.Reader, out io.Writer, p Plugin[Req, Resp], info Info, opts ...Option) error {
	return newServer(ctx, in, out, p, info, opts...).run()
}

// newServer prepares serving p over in and out; run serves.
func newServer[Req, Resp any](ctx context.Context, in io.Reader, out io.Writer, p Plugin[Req, Resp], info Info, opts ...Option) *server {
	cf := config{codecs: []Codec{JSONCodec{}}, max: wire.DefaultMaxFrameSize}
	for _, o := range opts {
		o(&cf)
	}
	cf.max = min(max(cf.max, wire.MinMaxFrameSize), wire.MaxFrameSizeLimit)
	ctx, cancel := context.WithCancel(ctx)
	s := &server{
		plugin:     p,
		info:       withSurfaces(p, info),
		codecs:     cf.codecs,
		in:         wire.NewReader(in, cf.max),
		out:        wire.NewWriter(out, wire.DefaultMaxFrameSize),
		max:        cf.max,
		ctx:        ctx,
		cancel:     cancel,
		cancels:    make(map[uint64]context.CancelFunc),
		hostCalls:  make(map[uint64]chan wire.Frame),
		end:        make(chan error, 1),
		workers:    workers.New(maxIdleWorkers),
		background: cf.background,
	}
	s.execute = func(ctx context.Context, payload []byte) ([]byte, error) {
		var req Req
		if err := s.codec.Unmarshal(payload, &req); err != nil {
			return nil, &Error{Code: wire.CodeBadRequest, Message: fmt.Sprintf("request does not decode with codec %q: %v", s.codec.Name(), err)}
		}
		resp, err := p.Execute(ctx, req)
		if err != nil {
			return nil, err
		}
		return s.codec.Marshal(resp)
	}
	return s
}

// run answers the handshake and serves until shutdown or the end of the
// stream.
func (s *server) run() error {
	defer s.cancel()
	codec, err := s.handshake(s.codecs)
	if err != nil {
		return err
	}
	s.codec = codec
	var bg sync.WaitGroup
	for _, fn := range s.background {
		bg.Go(func() { fn(&scope{Context: s.ctx, s: s}) })
	}
	err = s.loop()
	s.cancel()
	bg.Wait()
	return err
}

// withSurfaces adds the surfaces p implements to info.Surfaces.
func withSurfaces(p any, info Info) Info {
	add := func(s string) {
		if !slices.Contains(info.Surfaces, s) {
			info.Surfaces = append(info.Surfaces, s)
		}
	}
	info.Surfaces = slices.Clone(info.Surfaces)
	if _, ok := p.(StatefulPlugin); ok {
		add("state")
	}
	if _, ok := p.(StreamPlugin); ok {
		add("stream")
	}
	if _, ok := p.(SchemaPlugin); ok {
		add("schema")
	}
	return info
}

type server struct {
	plugin  any
	info    Info
	codecs  []Codec // the codecs the host may choose
	codec   Codec   // the codec chosen; set before requests are served
	in      *wire.Reader
	out     *wire.Writer
	max     int
	execute func(ctx context.Context, payload []byte) ([]byte, error)

	protocol   int                         // the version chosen in the handshake
	background []func(ctx context.Context) // run after the handshake
	hostID     atomic.Uint64               // the last host-call id used
	hostCalls  map[uint64]chan wire.Frame  // host calls waiting for their answer, under mu
	meta       map[string]string           // the last METADATA read, for the request metaID; reader-owned
	metaID     uint64

	ctx          context.Context
	cancel       context.CancelFunc // cancels ctx: run returned
	mu           sync.Mutex
	cancels      map[uint64]context.CancelFunc
	requests     sync.WaitGroup // the requests being served
	end          chan error     // how serving ends: nil or why it failed
	shuttingDown bool           // SHUTDOWN was read; touched by the reading goroutine only
	workers      *workers.Pool  // the goroutines that take the reading seat in turn
}

// handshake answers the host's HELLO and returns the chosen codec.
func (s *server) handshake(codecs []Codec) (Codec, error) {
	f, err := s.in.Read()
	if err != nil {
		return nil, fmt.Errorf("sdk: reading the host's HELLO: %w", err)
	}
	var h wire.Hello
	if f.Type != wire.TypeHello {
		return nil, fmt.Errorf("sdk: the host's first frame is %s, want HELLO", f.Type)
	}
	if err := json.Unmarshal(f.Payload, &h); err != nil {
		return nil, fmt.Errorf("sdk: the host's HELLO does not decode: %w", err)
	}
	switch {
	case slices.Contains(h.Protocols, wire.ProtocolVersion):
		s.protocol = wire.ProtocolVersion
	case slices.Contains(h.Protocols, wire.ProtocolV1):
		s.protocol = wire.ProtocolV1
	default:
		err := fmt.Errorf("the plugin speaks protocol versions %d to %d, the host offers %v: rebuild the plugin with a matching goplugins/sdk", wire.ProtocolV1, wire.ProtocolVersion, h.Protocols)
		s.replyError(0, &Error{Code: wire.CodeProtocolVersion, Message: err.Error()})
		return nil, fmt.Errorf("sdk: %w", err)
	}
	i := slices.IndexFunc(codecs, func(c Codec) bool { return c.Name() == h.Codec })
	if i < 0 {
		err := fmt.Errorf("the host asks for codec %q, which the plugin lacks: pass it to sdk.Serve with sdk.WithCodec", h.Codec)
		s.replyError(0, &Error{Code: wire.CodeCodec, Message: err.Error()})
		return nil, fmt.Errorf("sdk: %w", err)
	}
	if h.MaxFrameSize >= wire.MinMaxFrameSize {
		s.out.SetMax(h.MaxFrameSize)
	}
	w := wire.Welcome{
		Protocol:     s.protocol,
		MaxFrameSize: s.max,
		Info: wire.Info{
			Name: s.info.Name, Version: s.info.Version, Description: s.info.Description,
			Surfaces: s.info.Surfaces, Metadata: s.info.Metadata,
		},
	}
	payload, err := json.Marshal(w)
	if err != nil {
		return nil, fmt.Errorf("sdk: encoding WELCOME: %w", err)
	}
	if err := s.out.Write(wire.TypeWelcome, 0, payload); err != nil {
		return nil, fmt.Errorf("sdk: writing WELCOME: %w", err)
	}
	return codecs[i], nil
}

// loop serves until shutdown or the end of the stream.
//
// One goroutine at a time holds the reading seat: it reads frames until it
// reads a request, hands the seat on to a worker of s.workers, and serves
// the request itself, so that a request reaches its handler without a
// goroutine switch while reading goes on. The workers park between
// requests (at most maxIdleWorkers of them), so a handler runs on a
// goroutine whose stack has grown already.
func (s *server) loop() error {
	defer s.workers.Close()
	s.workers.Go(s.work)
	err := <-s.end
	// Answers queued behind another goroutine's write are written before
	// Serve returns and the plugin exits.
	_ = s.out.Flush()
	s.cancelAll()
	return err
}

// maxIdleWorkers bounds the workers parked for the reading seat.
const maxIdleWorkers = 16

// work holds the reading seat until it has read a request, which it
// serves once it handed the seat on; it returns at the end of the stream.
func (s *server) work() {
	r, ok := s.read()
	if !ok {
		return
	}
	s.workers.Go(s.work)
	s.serve(r)
}

// request is a request read and registered, to be served.
type request struct {
	f      wire.Frame
	ctx    *scope
	cancel context.CancelFunc
}

// read reads frames until it reads a request, which it returns registered
// (a CANCEL read after it finds its cancel func), or the stream ends (it
// then reports on s.end and returns false).
func (s *server) read() (request, bool) {
	for {
		f, err := s.in.Read()
		var tl *wire.FrameTooLargeError
		switch {
		case errors.As(err, &tl):
			s.tooLarge(tl)
			continue
		case err == io.EOF:
			s.finish(nil) // the host went away: cancel everything and exit
			return request{}, false
		case err != nil:
			s.finish(fmt.Errorf("sdk: reading from the host: %w", err))
			return request{}, false
		}
		if f.Type == wire.TypeMetadata && s.protocol >= 2 {
			s.readMetadata(f)
			continue
		}
		md := s.takeMetadata(f.ID)
		if s.frame(f) {
			ctx, cancel := context.WithCancel(s.ctx)
			s.mu.Lock()
			s.cancels[f.ID] = cancel
			s.mu.Unlock()
			return request{f, &scope{Context: ctx, s: s, id: f.ID, md: md}, cancel}, true
		}
	}
}

// frame acts on one frame read from the host and reports whether it is a
// request to serve (registered in s.requests).
func (s *server) frame(f wire.Frame) bool {
	switch f.Type {
	case wire.TypeCancel:
		s.mu.Lock()
		cancel := s.cancels[f.ID]
		s.mu.Unlock()
		if cancel != nil {
			cancel()
		}
	case wire.TypeShutdown:
		// Finish the requests in flight, reading on meanwhile: the end of
		// the stream still ends everything at once.
		if !s.shuttingDown {
			s.shuttingDown = true
			go func() {
				s.requests.Wait()
				s.finish(nil)
			}()
		}
	case wire.TypeHostResult, wire.TypeHostError:
		if s.protocol < 2 {
			s.replyError(f.ID, &Error{Code: wire.CodeUnsupported, Message: fmt.Sprintf("the plugin does not accept %s frames in protocol version 1", f.Type)})
			break
		}
		s.hostAnswered(f)
	case wire.TypeCall, wire.TypeHealth, wire.TypePersist, wire.TypeRestore,
		wire.TypeCheckpoint, wire.TypeResume, wire.TypeCheckCompat:
		if s.shuttingDown {
			s.replyError(f.ID, &Error{Code: wire.CodeShuttingDown, Message: fmt.Sprintf("%s refused: the plugin is shutting down", f.Type)})
			return false
		}
		s.requests.Add(1)
		return true
	default:
		s.replyError(f.ID, &Error{Code: wire.CodeUnsupported, Message: fmt.Sprintf("the plugin does not accept %s frames", f.Type)})
	}
	return false
}

// tooLarge answers a frame over the plugin's maximum frame size, which the
// reader skipped: a request is refused, a host call's answer fails the
// call, a METADATA is dropped.
func (s *server) tooLarge(tl *wire.FrameTooLargeError) {
	msg := fmt.Sprintf("%s of %d bytes is over the plugin's maximum frame size of %d bytes", tl.Type, tl.Size, tl.Max)
	switch {
	case tl.Type == wire.TypeMetadata && s.protocol >= 2:
	case (tl.Type == wire.TypeHostResult || tl.Type == wire.TypeHostError) && s.protocol >= 2:
		payload, _ := json.Marshal(wire.ErrorReply{Code: wire.CodeFrameTooLarge, Message: msg}) // strings always encode
		s.hostAnswered(wire.Frame{Type: wire.TypeHostError, ID: tl.ID, Payload: payload})
	default:
		s.replyError(tl.ID, &Error{Code: wire.CodeFrameTooLarge, Message: msg})
	}
}

// finish ends Serve with err, unless it is ending already.
func (s *server) finish(err error) {
	select {
	case s.end <- err:
	default:
	}
}

func (s *server) cancelAll() {
	s.mu.Lock()
	for _, cancel := range s.cancels {
		cancel()
	}
	s.mu.Unlock()
}

// serve runs the handler of request r and sends its answer.
func (s *server) serve(r request) {
	defer s.requests.Done()
	f, cancel := r.f, r.cancel
	resp, err := s.dispatch(r.ctx, f)
	s.mu.Lock()
	delete(s.cancels, f.ID)
	s.mu.Unlock()
	cancel()
	if err != nil {
		s.replyError(f.ID, err)
		return
	}
	if err := s.out.Write(wire.TypeResult, f.ID, resp); errors.Is(err, wire.ErrFrameTooLarge) {
		s.replyError(f.ID, &Error{Code: wire.CodeFrameTooLarge, Message: fmt.Sprintf("the answer of %d bytes is over the host's maximum frame size of %d bytes", len(resp)+wire.MinFrameSize, s.out.Max())})
	}
}

// dispatch runs the handler for f, turning a panic into an error.
func (s *server) dispatch(ctx context.Context, f wire.Frame) (resp []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(os.Stderr, "goplugins/sdk: %s handler for request %d panicked: %v\n%s", f.Type, f.ID, r, debug.Stack())
			resp, err = nil, &Error{Code: wire.CodePanic, Message: fmt.Sprintf("%s handler panicked: %v", f.Type, r)}
		}
	}()
	switch f.Type {
	case wire.TypeCall:
		return s.execute(ctx, f.Payload)
	case wire.TypeHealth:
		if h, ok := s.plugin.(HealthChecker); ok {
			return nil, h.Health(ctx)
		}
		return nil, nil
	case wire.TypePersist, wire.TypeRestore:
		sp, ok := s.plugin.(StatefulPlugin)
		if !ok {
			return nil, unsupported(f.Type, "state")
		}
		if f.Type == wire.TypePersist {
			return sp.PersistState(ctx)
		}
		return nil, sp.RestoreState(ctx, f.Payload)
	case wire.TypeCheckpoint, wire.TypeResume:
		sp, ok := s.plugin.(StreamPlugin)
		if !ok {
			return nil, unsupported(f.Type, "stream")
		}
		if f.Type == wire.TypeCheckpoint {
			return sp.Checkpoint(ctx)
		}
		return nil, sp.Resume(ctx, f.Payload)
	default: // wire.TypeCheckCompat
		sp, ok := s.plugin.(SchemaPlugin)
		if !ok {
			return nil, unsupported(f.Type, "schema")
		}
		var old wire.Info
		if err := json.Unmarshal(f.Payload, &old); err != nil {
			return nil, &Error{Code: wire.CodeBadRequest, Message: fmt.Sprintf("CHECK_COMPAT payload does not decode: %v", err)}
		}
		return nil, sp.CheckCompat(ctx, Info{Name: old.Name, Version: old.Version, Description: old.Description, Surfaces: old.Surfaces, Metadata: old.Metadata})
	}
}

func unsupported(t wire.Type, surface string) error {
	return &Error{Code: wire.CodeUnsupported, Message: fmt.Sprintf("the plugin has no %q surface, so it cannot answer %s", surface, t)}
}

// replyError sends err as an ERROR frame for request id.
func (s *server) replyError(id uint64, err error) {
	r := wire.ErrorReply{Code: wire.CodeError, Message: err.Error()}
	var e *Error
	switch {
	case errors.As(err, &e):
		r = wire.ErrorReply{Code: e.Code, Message: e.Message, Retryable: e.Retryable}
	case errors.Is(err, context.Canceled):
		r.Code = wire.CodeCanceled
	}
	_ = s.out.Write(wire.TypeError, id, fitErrorReply(r, s.out.Max())) // a write error ends the loop's stream too
}

// errorReplyTooLarge is the message of the reply that replaces one whose
// code alone is over the host's maximum frame size.
const errorReplyTooLarge = "the plugin's error reply is over the host's maximum frame size"

// fitErrorReply encodes r so that its frame fits the host's limit (at
// least wire.MinMaxFrameSize): the message is cut to the longest prefix,
// on a character boundary and marked with "…", whose encoding fits; a reply
// whose code alone is too large becomes code "error" with a fixed message.
// Every request id is therefore answered.
func fitErrorReply(r wire.ErrorReply, limit int) []byte {
	encode := func(r wire.ErrorReply) ([]byte, bool) {
		b, _ := json.Marshal(r) // a struct of strings and a bool always encodes
		return b, len(b)+wire.MinFrameSize <= limit
	}
	if b, ok := encode(r); ok {
		return b
	}
	msg := r.Message
	cut := func(n int) wire.ErrorReply {
		for n > 0 && !utf8.RuneStart(msg[n]) {
			n--
		}
		return wire.ErrorReply{Code: r.Code, Message: msg[:n] + "…", Retryable: r.Retryable}
	}
	// Binary search for the longest prefix that fits: escaping makes the
	// encoded length of a prefix unknown until it is encoded.
	lo, hi := 0, len(msg)-1
	for lo < hi {
		mid := (lo + hi + 1) / 2
		if _, ok := encode(cut(mid)); ok {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	if b, ok := encode(cut(lo)); ok {
		return b
	}
	b, _ := encode(wire.ErrorReply{Code: wire.CodeError, Message: errorReplyTooLarge, Retryable: r.Retryable})
	return b
}
