// Package shared holds what the hashicorp/go-plugin host and plugin of the
// comparison benchmarks share: the handshake and a gRPC echo service,
// written by hand around wrapperspb.BytesValue so no code generation is
// needed.
package shared

import (
	"context"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Handshake is the go-plugin handshake of the echo plugin.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "BENCH_ECHO_PLUGIN",
	MagicCookieValue: "echo",
}

// Echoer is the interface the plugin serves.
type Echoer interface {
	Echo(ctx context.Context, b []byte) ([]byte, error)
}

// EchoPlugin is the go-plugin gRPC plugin of an Echoer.
type EchoPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	Impl Echoer // set on the plugin side
}

// GRPCServer registers the echo service.
func (p *EchoPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	s.RegisterService(&echoDesc, p.Impl)
	return nil
}

// GRPCClient returns an Echoer that calls over conn.
func (p *EchoPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, conn *grpc.ClientConn) (any, error) {
	return &client{conn: conn}, nil
}

var echoDesc = grpc.ServiceDesc{
	ServiceName: "bench.Echo",
	HandlerType: (*Echoer)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Echo",
		Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			in := new(wrapperspb.BytesValue)
			if err := dec(in); err != nil {
				return nil, err
			}
			out, err := srv.(Echoer).Echo(ctx, in.Value)
			if err != nil {
				return nil, err
			}
			return wrapperspb.Bytes(out), nil
		},
	}},
	Metadata: "echo.proto",
}

type client struct{ conn *grpc.ClientConn }

func (c *client) Echo(ctx context.Context, b []byte) ([]byte, error) {
	out := new(wrapperspb.BytesValue)
	if err := c.conn.Invoke(ctx, "/bench.Echo/Echo", wrapperspb.Bytes(b), out); err != nil {
		return nil, err
	}
	return out.Value, nil
}
