package goplugins

import (
	"context"
	"errors"
	"sync/atomic"
)

// echo is an in-process plugin that returns its input.
type echo struct {
	name, version string
	closed        atomic.Int32
}

func newEcho(name, version string) *echo { return &echo{name: name, version: version} }

func (p *echo) Info() PluginInfo                                { return PluginInfo{Name: p.name, Version: p.version} }
func (p *echo) Execute(_ context.Context, req int) (int, error) { return req, nil }
func (p *echo) Health(context.Context) error                    { return nil }
func (p *echo) Close(context.Context) error                     { p.closed.Add(1); return nil }

// scripted is an in-process plugin whose behaviour a test sets per call.
type scripted struct {
	name, version string
	surfaces      []Surface
	exec          func(ctx context.Context, req int) (int, error)
	health        func(ctx context.Context) error
	closed        atomic.Int32
}

func (p *scripted) Info() PluginInfo {
	return PluginInfo{Name: p.name, Version: p.version, Surfaces: p.surfaces}
}
func (p *scripted) Execute(ctx context.Context, req int) (int, error) { return p.exec(ctx, req) }
func (p *scripted) Health(ctx context.Context) error {
	if p.health == nil {
		return nil
	}
	return p.health(ctx)
}
func (p *scripted) Close(context.Context) error { p.closed.Add(1); return nil }

// encodeInt and decodeInt are the state format of the test plugins.
func encodeInt(n int) []byte {
	b := make([]byte, 8)
	for i := range b {
		b[i] = byte(n >> (8 * i))
	}
	return b
}

func decodeInt(b []byte) (int, error) {
	if len(b) != 8 {
		return 0, errors.New("state must be 8 bytes")
	}
	n := 0
	for i := range b {
		n |= int(b[i]) << (8 * i)
	}
	return n, nil
}
