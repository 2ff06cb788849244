package grpcplugin

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/goplugins/goplugins/internal/pluginpb"
	"github.com/goplugins/goplugins/sdk"
)

type req struct {
	Op string `json:"op"`
}

type resp struct {
	Op string `json:"op"`
}

// testPlugin panics on "panic", fails on "fail", and has the state surface.
type testPlugin struct{}

func (testPlugin) Execute(_ context.Context, r req) (resp, error) {
	switch r.Op {
	case "panic":
		panic("boom")
	case "fail":
		return resp{}, errors.New("plain failure")
	}
	return resp(r), nil
}

func (testPlugin) PersistState(context.Context) ([]byte, error) { return []byte("state"), nil }
func (testPlugin) RestoreState(context.Context, []byte) error   { return nil }

// serveTest serves p on a unix socket and returns a client of it.
func serveTest[Req, Resp any](t *testing.T, p sdk.Plugin[Req, Resp]) pluginpb.PluginClient {
	t.Helper()
	t.Cleanup(func() {
		goleak.VerifyNone(t, goleak.IgnoreTopFunction("github.com/agilira/go-timecache.(*TimeCache).updateLoop"))
	})
	dir, err := os.MkdirTemp("", "gps-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	lis, err := net.Listen("unix", filepath.Join(dir, "s.sock"))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeListener(ctx, lis, p, sdk.Info{Name: "test", Version: "1.0.0"}) }()
	conn, err := grpc.NewClient("unix://"+lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() {
		conn.Close()
		cancel()
		require.NoError(t, <-done)
	})
	return pluginpb.NewPluginClient(conn)
}

// detail returns err's status code and its Error detail.
func detail(t *testing.T, err error) (codes.Code, *pluginpb.Error) {
	t.Helper()
	require.Error(t, err)
	st := status.Convert(err)
	var e *pluginpb.Error
	for _, d := range st.Details() {
		if de, ok := d.(*pluginpb.Error); ok {
			e = de
			break
		}
	}
	require.NotNil(t, e, "status %v has no Error detail", st)
	return st.Code(), e
}

func TestServiceAnswers(t *testing.T) {
	c := serveTest[req, resp](t, testPlugin{})
	ctx := context.Background()

	info, err := c.Info(ctx, &pluginpb.InfoRequest{})
	require.NoError(t, err)
	assert.Equal(t, "test", info.Name)
	assert.Equal(t, []string{"state"}, info.Surfaces, "surfaces are detected from the optional interfaces")
	assert.Equal(t, []string{"json"}, info.Codecs)

	r, err := c.Execute(ctx, &pluginpb.ExecuteRequest{Codec: "json", Payload: []byte(`{"op":"echo"}`)})
	require.NoError(t, err)
	assert.JSONEq(t, `{"op":"echo"}`, string(r.Payload))

	errorCases := []struct {
		name     string
		call     func() error
		wantCode codes.Code
		wantErr  string
	}{
		{"codec mismatch", func() error {
			_, err := c.Execute(ctx, &pluginpb.ExecuteRequest{Codec: "proto", Payload: []byte(`{}`)})
			return err
		}, codes.FailedPrecondition, codeCodec},
		{"undecodable request", func() error {
			_, err := c.Execute(ctx, &pluginpb.ExecuteRequest{Codec: "json", Payload: []byte(`{`)})
			return err
		}, codes.InvalidArgument, codeBadRequest},
		{"handler panic", func() error {
			_, err := c.Execute(ctx, &pluginpb.ExecuteRequest{Codec: "json", Payload: []byte(`{"op":"panic"}`)})
			return err
		}, codes.Internal, codePanic},
		{"plain handler error", func() error {
			_, err := c.Execute(ctx, &pluginpb.ExecuteRequest{Codec: "json", Payload: []byte(`{"op":"fail"}`)})
			return err
		}, codes.Unknown, codeError},
		{"surface the plugin lacks", func() error {
			_, err := c.Checkpoint(ctx, &pluginpb.CheckpointRequest{})
			return err
		}, codes.Unimplemented, codeUnsupported},
	}
	for _, tc := range errorCases {
		t.Run(tc.name, func(t *testing.T) {
			code, e := detail(t, tc.call())
			assert.Equal(t, tc.wantCode, code)
			assert.Equal(t, tc.wantErr, e.Code)
			assert.False(t, e.Retryable)
		})
	}

	_, err = c.Shutdown(ctx, &pluginpb.ShutdownRequest{})
	assert.Equal(t, codes.PermissionDenied, status.Code(err), "a remote service refuses Shutdown")
	_, err = c.Execute(ctx, &pluginpb.ExecuteRequest{Codec: "json", Payload: []byte(`{"op":"after"}`)})
	require.NoError(t, err, "the service serves on after a panic and a refused Shutdown")
}

type protoEcho struct{}

func (protoEcho) Execute(_ context.Context, r *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
	return wrapperspb.String("echo: " + r.Value), nil
}

func TestServiceProtoCodec(t *testing.T) {
	c := serveTest[*wrapperspb.StringValue, *wrapperspb.StringValue](t, protoEcho{})
	ctx := context.Background()
	info, err := c.Info(ctx, &pluginpb.InfoRequest{})
	require.NoError(t, err)
	assert.Equal(t, []string{"proto"}, info.Codecs, "protobuf message types use the proto codec")

	payload, err := proto.Marshal(wrapperspb.String("hi"))
	require.NoError(t, err)
	r, err := c.Execute(ctx, &pluginpb.ExecuteRequest{Codec: "proto", Payload: payload})
	require.NoError(t, err)
	var out wrapperspb.StringValue
	require.NoError(t, proto.Unmarshal(r.Payload, &out))
	assert.Equal(t, "echo: hi", out.Value)
}

func TestServeNotLaunched(t *testing.T) {
	t.Setenv(pluginpb.EnvCookie, "")
	err := Serve[req, resp](testPlugin{}, sdk.Info{Name: "test", Version: "1.0.0"})
	require.ErrorIs(t, err, ErrNotLaunched)
}
