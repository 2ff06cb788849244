package goplugins_test

import (
	"context"
	"fmt"

	"github.com/goplugins/goplugins"
)

// A plugin the host starts as a child, secured with per-child mutual TLS,
// registered with a manager. The plugin binary serves with
// grpcplugin.Serve (package github.com/goplugins/goplugins/sdk/grpcplugin).
func ExampleNewGRPCPlugin_child() {
	ctx := context.Background()
	p, err := goplugins.NewGRPCPlugin[map[string]string, map[string]string](ctx, goplugins.GRPCConfig{
		Name:     "auth",
		Command:  "./plugins/auth",
		AutoMTLS: true,
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	m := goplugins.NewManager[map[string]string, map[string]string]()
	defer m.Shutdown(ctx)
	if err := m.Register(p); err != nil {
		fmt.Println(err)
		return
	}
	resp, err := m.Execute(ctx, "auth", map[string]string{"user": "ada"})
	fmt.Println(resp, err)
}

// A plugin deployed as a remote service behind a gRPC-aware load balancer,
// reached over mutual TLS. The service serves with grpcplugin.ListenAndServe.
func ExampleNewGRPCPlugin_remote() {
	ctx := context.Background()
	p, err := goplugins.NewGRPCPlugin[map[string]string, map[string]string](ctx, goplugins.GRPCConfig{
		Name:     "auth",
		Endpoint: "dns:///auth-plugin.internal:7443",
		TLS: &goplugins.TLSFiles{
			CAFile:   "/etc/goplugins/ca.pem",
			CertFile: "/etc/goplugins/host.pem",
			KeyFile:  "/etc/goplugins/host-key.pem",
		},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer p.Close(ctx)
	fmt.Println(p.Info().Version)
}
