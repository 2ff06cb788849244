// Command grpc-mtls shows a plugin deployed as a remote gRPC service and
// reached over mutual TLS. At start it generates a CA and key pairs, serves
// the plugin with grpcplugin on a loopback port (server certificate, client
// certificates required), and connects the host with NewGRPCPlugin and
// TLSFiles. A host whose certificate another CA signed is refused.
//
// In a real deployment the service is its own program (serving with
// grpcplugin.ListenAndServe) on another machine; here it runs on a goroutine
// so that the example is self-contained.
//
//	go run ./examples/grpc-mtls
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/goplugins/goplugins"
	"github.com/goplugins/goplugins/sdk"
	"github.com/goplugins/goplugins/sdk/grpcplugin"
)

// Request and Response are the plugin's messages (JSON over gRPC).
type Request struct {
	Text string `json:"text"`
}

type Response struct {
	Words int    `json:"words"`
	Upper string `json:"upper"`
}

// wordService is the plugin: it runs in the service, not in the host.
type wordService struct{}

func (wordService) Execute(_ context.Context, req Request) (Response, error) {
	if req.Text == "" {
		return Response{}, sdk.Errorf("empty", false, "send a non-empty text")
	}
	return Response{Words: len(strings.Fields(req.Text)), Upper: strings.ToUpper(req.Text)}, nil
}

func main() {
	if err := run(context.Background(), os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "grpc-mtls failed:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out io.Writer) (err error) {
	dir, err := os.MkdirTemp("", "goplugins-grpc-mtls-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	certs, err := makePKI(dir)
	if err != nil {
		return fmt.Errorf("generating certificates: %w", err)
	}
	fmt.Fprintln(out, "generated a CA, a server certificate and two client certificates")

	// The plugin service: TLS with its certificate, client certificates
	// signed by the CA required.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srvCtx, stopService := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() {
		served <- grpcplugin.ServeListener[Request, Response](srvCtx, lis, wordService{},
			sdk.Info{Name: "words", Version: "1.3.0", Description: "counts words, remotely"},
			grpcplugin.WithTLS(certs.ServerCert, certs.ServerKey, certs.CA))
	}()
	defer func() {
		stopService()
		if serr := <-served; serr != nil && err == nil {
			err = fmt.Errorf("the plugin service: %w", serr)
		}
	}()
	addr := lis.Addr().String()
	fmt.Fprintln(out, "plugin service listening with mTLS on 127.0.0.1")

	// The host: verifies the service with the CA, presents its certificate.
	p, err := goplugins.NewGRPCPlugin[Request, Response](ctx, goplugins.GRPCConfig{
		Name:     "words",
		Endpoint: addr,
		TLS:      &goplugins.TLSFiles{CAFile: certs.CA, CertFile: certs.HostCert, KeyFile: certs.HostKey},
	})
	if err != nil {
		return err
	}
	m := goplugins.NewManager[Request, Response]()
	defer func() {
		if serr := m.Shutdown(context.WithoutCancel(ctx)); serr != nil && err == nil {
			err = serr
		}
	}()
	if err := m.Register(p); err != nil {
		p.Close(ctx)
		return err
	}
	info := p.Info()
	fmt.Fprintf(out, "host connected to %s %s (%s)\n", info.Name, info.Version, info.Description)
	resp, err := m.Execute(ctx, "words", Request{Text: "mutual tls both ways"})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "%d words: %s\n", resp.Words, resp.Upper)
	_, err = m.Execute(ctx, "words", Request{})
	if !errors.Is(err, goplugins.ErrRemote) {
		return fmt.Errorf("an empty text returned %v, want ErrRemote", err)
	}
	fmt.Fprintln(out, "the plugin's own error arrives as ErrRemote")

	// A host with a certificate from another CA is refused by the service.
	_, err = goplugins.NewGRPCPlugin[Request, Response](ctx, goplugins.GRPCConfig{
		Name:         "words",
		Endpoint:     addr,
		TLS:          &goplugins.TLSFiles{CAFile: certs.CA, CertFile: certs.RogueCert, KeyFile: certs.RogueKey},
		StartTimeout: 2 * time.Second,
	})
	if err == nil {
		return errors.New("a host with a certificate from another CA was let in")
	}
	fmt.Fprintf(out, "a host with a certificate from another CA is refused (ErrTransport: %v)\n", errors.Is(err, goplugins.ErrTransport))
	return nil
}
