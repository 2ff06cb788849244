package goplugins

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"slices"
	"time"

	"github.com/goplugins/goplugins/internal/wire"
)

// hostProtocols are the protocol versions the host offers in HELLO.
var hostProtocols = []int{wire.ProtocolV1, wire.ProtocolVersion}

// handshake sends HELLO and checks the WELCOME, within StartTimeout and
// ctx, then starts the connection's reader and writer.
func (s *subprocessPlugin[Req, Resp]) handshake(ctx context.Context, c *subConn) error {
	name := s.cfg.Name
	deadline := time.Now().Add(s.cfg.StartTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	hello, _ := json.Marshal(wire.Hello{ // a struct of ints and strings always encodes
		Protocols: hostProtocols, Codec: s.codec.Name(),
		MaxFrameSize: s.cfg.MaxFrameSize, Name: name,
	})
	f, err := c.hello(ctx, deadline, hello)
	if err != nil {
		return s.handshakeFailed(ctx, c, deadline, err)
	}
	w, err := s.welcome(f)
	if err != nil {
		return err
	}
	c.info = PluginInfo{Name: w.Name, Version: w.Version, Description: w.Description, Metadata: w.Metadata}
	for _, sf := range w.Surfaces {
		c.info.Surfaces = append(c.info.Surfaces, Surface(sf))
	}
	c.run(w.MaxFrameSize, w.Protocol)
	return nil
}

// welcome checks the plugin's answer to HELLO.
func (s *subprocessPlugin[Req, Resp]) welcome(f wire.Frame) (wire.Welcome, error) {
	name := s.cfg.Name
	var w wire.Welcome
	switch f.Type {
	case wire.TypeError:
		var rep wire.ErrorReply
		_ = json.Unmarshal(f.Payload, &rep)
		return w, newError(codeHandshake, name, "the plugin refused the handshake: %s: %s", rep.Code, rep.Message)
	case wire.TypeWelcome:
	default:
		return w, newError(codeHandshake, name, "the plugin answered HELLO with %s, not WELCOME", f.Type)
	}
	if err := json.Unmarshal(f.Payload, &w); err != nil {
		return w, wrapError(err, codeHandshake, name, "the plugin's WELCOME does not decode")
	}
	switch {
	case !slices.Contains(hostProtocols, w.Protocol):
		return w, newError(codeHandshake, name, "the plugin chose protocol version %d; the host offered %v: rebuild the plugin with a matching SDK", w.Protocol, hostProtocols)
	case w.Name != name:
		return w, newError(codeHandshake, name, "%s reports the name %q; the host expects %q: check SubprocessConfig.Path", s.cfg.Command, w.Name, name)
	case w.MaxFrameSize < wire.MinMaxFrameSize:
		return w, newError(codeHandshake, name, "the plugin's maximum frame size %d is below the minimum of %d bytes", w.MaxFrameSize, wire.MinMaxFrameSize)
	case w.MaxFrameSize > wire.MaxFrameSizeLimit:
		return w, newError(codeHandshake, name, "the plugin's maximum frame size %d is over the protocol's limit of %d bytes: fix the plugin's WELCOME", w.MaxFrameSize, wire.MaxFrameSizeLimit)
	}
	if _, err := parseVersion(name, w.Version); err != nil {
		return w, wrapError(err, codeHandshake, name, "the plugin reports a bad version")
	}
	if s.cfg.Version != "" && w.Version != s.cfg.Version {
		return w, wrapError(newError(codeIncompatibleVersion, name, "version %s, expected %s", w.Version, s.cfg.Version),
			codeHandshake, name, "%s is not the configured version", s.cfg.Command)
	}
	return w, nil
}

// handshakeFailed explains a handshake that broke off. It waits for the
// exit status of a child that closed its pipe for at most drainTimeout,
// and never past the handshake's deadline or ctx.
func (s *subprocessPlugin[Req, Resp]) handshakeFailed(ctx context.Context, c *subConn, deadline time.Time, err error) error {
	name := s.cfg.Name
	switch {
	case ctx.Err() != nil:
		return wrapError(ctx.Err(), codeHandshake, name, "the handshake with %s was abandoned", s.cfg.Command)
	case errors.Is(err, os.ErrDeadlineExceeded):
		return withStderr(newError(codeHandshake, name, "%s did not answer the handshake within %v: is it a goplugins plugin?", s.cfg.Command, s.cfg.StartTimeout), c.proc)
	case errors.Is(err, wire.ErrMalformed):
		return withStderr(wrapError(err, codeHandshake, name, "%s answered HELLO with bytes that are not a frame: is it a goplugins plugin?", s.cfg.Command), c.proc)
	}
	t := time.NewTimer(min(time.Until(deadline), drainTimeout))
	defer t.Stop()
	status := "still running"
	select {
	case <-c.proc.Done():
		status = c.proc.State().String()
	case <-t.C:
	case <-ctx.Done():
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, os.ErrClosed) {
		return withStderr(newError(codeHandshake, name, "%s closed the protocol pipe without a handshake (%s): is it a goplugins plugin built with the sdk?", s.cfg.Command, status), c.proc)
	}
	return withStderr(wrapError(err, codeHandshake, name, "%s broke off the handshake (%s)", s.cfg.Command, status), c.proc)
}

// hello writes HELLO with payload and reads the plugin's first frame, both
// bounded by deadline and ctx.
func (c *subConn) hello(ctx context.Context, deadline time.Time, payload []byte) (wire.Frame, error) {
	_ = c.toChild.SetWriteDeadline(deadline)
	_ = c.toHost.SetReadDeadline(deadline)
	cut := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = c.toChild.SetWriteDeadline(time.Unix(1, 0))
		_ = c.toHost.SetReadDeadline(time.Unix(1, 0))
		close(cut)
	})
	defer func() {
		if !stop() {
			<-cut
		}
		_ = c.toChild.SetWriteDeadline(time.Time{})
		_ = c.toHost.SetReadDeadline(time.Time{})
	}()
	if _, err := c.toChild.Write(wire.AppendFrame(nil, wire.TypeHello, 0, payload)); err != nil {
		return wire.Frame{}, err
	}
	f, err := c.r.Read()
	if err == nil && ctx.Err() != nil {
		err = ctx.Err()
	}
	return f, err
}
