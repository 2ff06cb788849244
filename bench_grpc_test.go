package goplugins

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
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
// same payload over the same kind of socket. Compare the two in one run
// (BenchmarkGRPCRoundTrip/ratio reports x-raw):
//
//	go test -run '^$' -bench GRPC -benchmem .

var benchPayload = bytes.Repeat([]byte("x"), 64)

// benchEcho echoes its request; a request that starts with 'h' makes the
// round trip through the host function "echo" first.
type benchEcho struct{}

func (benchEcho) Execute(ctx context.Context, r *wrapperspb.BytesValue) (*wrapperspb.BytesValue, error) {
	if len(r.Value) > 0 && r.Value[0] == 'h' {
		v, err := grpcplugin.CallHost[[]byte, []byte](ctx, "echo", r.Value)
		return wrapperspb.Bytes(v), err
	}
	return r, nil
}

// benchHostOptions offer the plugin "echo" the host function "echo",
// which echoes.
var benchHostOptions = []Option{
	WithHostFuncs(NewHostFunc("echo", func(_ context.Context, _ Caller, b []byte) ([]byte, error) { return b, nil })),
	WithGrants(Grant{Plugins: "echo", Funcs: []string{"echo"}}),
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
// returns a call through Manager.Execute and a GRPCPlugin with a host
// handle (so its requests are tagged for host calls), and the same call
// making one host call while it is handled.
func benchManagerPath(b *testing.B) (call, hostCall func()) {
	lis, target := benchSocket(b)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- grpcplugin.ServeListener[*wrapperspb.BytesValue, *wrapperspb.BytesValue](ctx, lis, benchEcho{}, sdk.Info{Name: "echo", Version: "1.0.0"})
	}()
	b.Cleanup(func() { cancel(); <-done })
	p, err := newGRPCPlugin[*wrapperspb.BytesValue, *wrapperspb.BytesValue](context.Background(), GRPCConfig{Name: "echo", Endpoint: target})
	if err != nil {
		b.Fatal(err)
	}
	m := NewManager[*wrapperspb.BytesValue, *wrapperspb.BytesValue](benchHostOptions...)
	b.Cleanup(func() { m.Shutdown(context.Background()) })
	if err := m.Register(p); err != nil {
		b.Fatal(err)
	}
	execute := func(req *wrapperspb.BytesValue) func() {
		return func() {
			resp, err := m.Execute(context.Background(), "echo", req)
			if err != nil || len(resp.Value) != len(benchPayload) {
				b.Fatalf("Execute = %v, %v", resp, err)
			}
		}
	}
	return execute(wrapperspb.Bytes(benchPayload)), execute(wrapperspb.Bytes(append([]byte("h"), benchPayload[1:]...)))
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

// BenchmarkGRPCRoundTrip measures a 64-byte echo through Manager.Execute
// and a GRPCPlugin over a unix socket ("manager"), a raw grpc-go unary call
// with the same payload over the same kind of socket ("raw"), and both
// alternately, call by call, so that the load of a shared machine weighs on
// both alike ("ratio": the median time of each, and x-raw, the ratio of the
// medians, whose budget is 1.2).
func BenchmarkGRPCRoundTrip(b *testing.B) {
	managed, _ := benchManagerPath(b)
	benchRatio(b, managed, benchRawPath(b), "manager", "raw")
}

// BenchmarkGRPCHostCallRoundTrip measures the 64-byte echo of
// BenchmarkGRPCRoundTrip's manager path ("plain") and the same echo making
// one host call of the echoed bytes while it is handled (plugin -> host ->
// plugin, "host-call"), alternately in "ratio" (x-plain).
func BenchmarkGRPCHostCallRoundTrip(b *testing.B) {
	plain, hostCall := benchManagerPath(b)
	benchRatio(b, hostCall, plain, "host-call", "plain")
}

// benchRatio runs a and c on their own, then alternately, call by call,
// reporting the median of each and their ratio, x-<cName>.
func benchRatio(b *testing.B, a, c func(), aName, cName string) {
	managed, raw := a, c
	b.Run(aName, func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			managed()
		}
	})
	b.Run(cName, func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			raw()
		}
	})
	b.Run("ratio", func(b *testing.B) {
		m, r := make([]time.Duration, b.N), make([]time.Duration, b.N)
		b.ResetTimer()
		for i := range b.N {
			first, second, fd, sd := managed, raw, &m[i], &r[i]
			if i%2 == 1 {
				first, second, fd, sd = raw, managed, &r[i], &m[i]
			}
			start := time.Now()
			first()
			mid := time.Now()
			second()
			*fd, *sd = mid.Sub(start), time.Since(mid)
		}
		b.StopTimer()
		mm, rm := median(m), median(r)
		b.ReportMetric(float64(mm.Nanoseconds()), aName+"-ns/op")
		b.ReportMetric(float64(rm.Nanoseconds()), cName+"-ns/op")
		b.ReportMetric(float64(mm)/float64(rm), "x-"+cName)
	})
}

func median(d []time.Duration) time.Duration {
	slices.Sort(d)
	return d[len(d)/2]
}
