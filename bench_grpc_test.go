package goplugins

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/goplugins/goplugins/internal/pluginpb"
	"github.com/goplugins/goplugins/sdk"
	"github.com/goplugins/goplugins/sdk/grpcplugin"
)

// The gRPC budget: a 64-byte echo through Manager.Execute and a GRPCPlugin
// over a unix socket costs at most 1.2x a raw grpc-go unary call with the
// same payload over the same kind of socket. Compare the two in one run:
//
//	go test -run '^$' -bench GRPC -benchmem .

var benchPayload = bytes.Repeat([]byte("x"), 64)

// benchEcho echoes its request.
type benchEcho struct{}

func (benchEcho) Execute(_ context.Context, r *wrapperspb.BytesValue) (*wrapperspb.BytesValue, error) {
	return r, nil
}

// benchSocket returns a unix listener in a fresh short directory.
func benchSocket(b *testing.B) (net.Listener, string) {
	b.Helper()
	dir, err := os.MkdirTemp("", "gpb-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "s.sock")
	lis, err := net.Listen("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	return lis, "unix://" + path
}

// benchManagerPath serves benchEcho with grpcplugin on a unix socket and
// returns a call through Manager.Execute and a GRPCPlugin.
func benchManagerPath(b *testing.B) func() {
	lis, target := benchSocket(b)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- grpcplugin.ServeListener[*wrapperspb.BytesValue, *wrapperspb.BytesValue](ctx, lis, benchEcho{}, sdk.Info{Name: "echo", Version: "1.0.0"})
	}()
	b.Cleanup(func() { cancel(); <-done })
	p, err := NewGRPCPlugin[*wrapperspb.BytesValue, *wrapperspb.BytesValue](context.Background(), GRPCConfig{Name: "echo", Endpoint: target})
	if err != nil {
		b.Fatal(err)
	}
	m := NewManager[*wrapperspb.BytesValue, *wrapperspb.BytesValue]()
	b.Cleanup(func() { m.Shutdown(context.Background()) })
	if err := m.Register(p); err != nil {
		b.Fatal(err)
	}
	req := wrapperspb.Bytes(benchPayload)
	return func() {
		resp, err := m.Execute(context.Background(), "echo", req)
		if err != nil || len(resp.Value) != len(benchPayload) {
			b.Fatalf("Execute = %v, %v", resp, err)
		}
	}
}

// rawEcho is a bare goplugins.plugin.v1.Plugin server that echoes the
// payload: the raw grpc-go unary call the budget compares with.
type rawEcho struct {
	pluginpb.UnimplementedPluginServer
}

func (rawEcho) Execute(_ context.Context, r *pluginpb.ExecuteRequest) (*pluginpb.ExecuteResponse, error) {
	return &pluginpb.ExecuteResponse{Payload: r.Payload}, nil
}

// benchRawPath serves rawEcho with a plain grpc.Server on a unix socket
// and returns a raw unary call of it with the 64-byte payload.
func benchRawPath(b *testing.B) func() {
	lis, target := benchSocket(b)
	srv := grpc.NewServer()
	pluginpb.RegisterPluginServer(srv, rawEcho{})
	done := make(chan error, 1)
	go func() { done <- srv.Serve(lis) }()
	b.Cleanup(func() { srv.Stop(); <-done })
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	client := pluginpb.NewPluginClient(conn)
	return func() {
		resp, err := client.Execute(context.Background(), &pluginpb.ExecuteRequest{Payload: benchPayload})
		if err != nil || len(resp.Payload) != len(benchPayload) {
			b.Fatalf("Execute = %v, %v", resp, err)
		}
	}
}

// BenchmarkGRPCRoundTrip measures the Manager path (ns/op, B/op,
// allocs/op) and, interleaved in chunks so that the machine's load affects
// both alike, the raw call (raw-ns/op, untimed by the benchmark clock); x-raw
// is the ratio, whose budget is 1.2.
func BenchmarkGRPCRoundTrip(b *testing.B) {
	managed, raw := benchManagerPath(b), benchRawPath(b)
	managed()
	raw()
	const chunk = 50
	var rawTime time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; {
		n := min(chunk, b.N-done)
		for range n {
			managed()
		}
		b.StopTimer()
		start := time.Now()
		for range n {
			raw()
		}
		rawTime += time.Since(start)
		b.StartTimer()
		done += n
	}
	rawNs := float64(rawTime.Nanoseconds()) / float64(b.N)
	b.ReportMetric(rawNs, "raw-ns/op")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/rawNs, "x-raw")
}

// BenchmarkGRPCRawUnary is the raw grpc-go unary call alone.
func BenchmarkGRPCRawUnary(b *testing.B) {
	raw := benchRawPath(b)
	b.ReportAllocs()
	for b.Loop() {
		raw()
	}
}
