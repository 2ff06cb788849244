// Command hcecho is the hashicorp/go-plugin gRPC echo plugin of the
// comparison benchmarks.
package main

import (
	"context"

	"github.com/hashicorp/go-plugin"

	"github.com/goplugins/goplugins/benchmarks/shared"
)

type echo struct{}

func (echo) Echo(_ context.Context, b []byte) ([]byte, error) { return b, nil }

func main() {
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: shared.Handshake,
		Plugins:         plugin.PluginSet{"echo": &shared.EchoPlugin{Impl: echo{}}},
		GRPCServer:      plugin.DefaultGRPCServer,
	})
}
