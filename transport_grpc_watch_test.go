package goplugins

import (
	"context"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/goplugins/goplugins/internal/pluginpb"
)

// flakyHealth is a health service whose first watches end Unavailable, as
// when the connection breaks while a child starts, and whose next one
// reports SERVING.
type flakyHealth struct {
	healthpb.UnimplementedHealthServer
	breaks  atomic.Int32
	watches atomic.Int32
}

func (h *flakyHealth) Watch(req *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	if h.watches.Add(1) <= h.breaks.Load() {
		return status.Error(codes.Unavailable, "use of closed network connection")
	}
	return stream.Send(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING})
}

// TestGRPCAwaitServingWatchesAgainWhenUnavailable: a health watch that
// ends Unavailable during the start is made again, as the health protocol
// asks; any other failure ends the wait.
func TestGRPCAwaitServingWatchesAgainWhenUnavailable(t *testing.T) {
	verifyNoLeaks(t)
	lis, err := net.Listen("unix", filepath.Join(t.TempDir(), "h.sock"))
	require.NoError(t, err)
	h := &flakyHealth{}
	h.breaks.Store(2)
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, h)
	go srv.Serve(lis)
	defer srv.Stop()
	conn, err := grpc.NewClient("unix://"+lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	l := &grpcLink{conn: conn, client: pluginpb.NewPluginClient(conn), health: healthpb.NewHealthClient(conn)}
	p := &grpcPlugin[string, string]{name: "flaky"}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, p.watchServing(ctx, l))
	assert.EqualValues(t, 3, h.watches.Load(), "two broken watches, then SERVING")

	h.watches.Store(0)
	h.breaks.Store(1 << 30) // never serves: the wait ends with ctx
	short, cancelShort := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancelShort()
	assert.Error(t, p.watchServing(short, l), "a watch broken for good ends with ctx")
}
