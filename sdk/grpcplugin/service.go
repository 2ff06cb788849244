package grpcplugin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"slices"
	"strconv"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/goplugins/goplugins/internal/pluginpb"
	"github.com/goplugins/goplugins/internal/protocodec"
	"github.com/goplugins/goplugins/sdk"
)

// Error codes the service itself answers with, in the Error status detail.
const (
	codeError       = "error"
	codeBadRequest  = "bad_request"
	codeCodec       = "codec"
	codePanic       = "panic"
	codeCanceled    = "canceled"
	codeUnsupported = "unsupported"
)

// payloadCodec decodes requests and encodes responses of one codec.
type payloadCodec[Req, Resp any] struct {
	name   string
	decode func([]byte) (Req, error)
	encode func(Resp) ([]byte, error)
}

// service implements goplugins.plugin.v1.Plugin for an sdk.Plugin.
type service[Req, Resp any] struct {
	pluginpb.UnimplementedPluginServer
	plugin sdk.Plugin[Req, Resp]
	info   *pluginpb.InfoResponse
	first  payloadCodec[Req, Resp] // the default codec, checked first
	codecs []payloadCodec[Req, Resp]
	// shutdown stops the server gracefully; nil when Shutdown is refused.
	shutdown func()

	// Host calls.
	links      hostLinks
	hostCodecs []sdk.Codec // the codecs the host may name for host calls
	background []func(context.Context)
	calls      inflight       // the unary calls being handled
	stopLinks  chan struct{}  // closed to end the HostCalls streams
	wg         sync.WaitGroup // the streams' readers and the background work
}

func newService[Req, Resp any](p sdk.Plugin[Req, Resp], info sdk.Info, cf config) (*service[Req, Resp], error) {
	if p == nil {
		return nil, errors.New("grpcplugin: the plugin is nil")
	}
	extra := cf.codecs
	var codecs []payloadCodec[Req, Resp]
	reqProto, isReqProto := protocodec.For[Req]()
	respProto, isRespProto := protocodec.For[Resp]()
	if isReqProto && isRespProto {
		codecs = append(codecs, payloadCodec[Req, Resp]{name: protocodec.Name, decode: reqProto.Unmarshal, encode: respProto.Marshal})
	} else {
		extra = append([]sdk.Codec{sdk.JSONCodec{}}, extra...)
	}
	for _, c := range extra {
		if slices.ContainsFunc(codecs, func(x payloadCodec[Req, Resp]) bool { return x.name == c.Name() }) {
			continue
		}
		codecs = append(codecs, payloadCodec[Req, Resp]{
			name: c.Name(),
			decode: func(b []byte) (Req, error) {
				var req Req
				err := c.Unmarshal(b, &req)
				return req, err
			},
			encode: func(resp Resp) ([]byte, error) { return c.Marshal(resp) },
		})
	}
	s := &service[Req, Resp]{plugin: p, first: codecs[0], codecs: codecs, info: infoMessage(p, info),
		hostCodecs: append([]sdk.Codec{sdk.JSONCodec{}}, cf.codecs...), background: cf.background,
		calls: inflight{idle: make(chan struct{}, 1)}, stopLinks: make(chan struct{}),
	}
	for _, c := range codecs {
		s.info.Codecs = append(s.info.Codecs, c.name)
	}
	return s, nil
}

// infoMessage converts info, adding the surfaces p implements.
func infoMessage(p any, info sdk.Info) *pluginpb.InfoResponse {
	m := &pluginpb.InfoResponse{
		Name: info.Name, Version: info.Version, Description: info.Description,
		Surfaces: slices.Clone(info.Surfaces), Metadata: info.Metadata,
	}
	add := func(s string) {
		if !slices.Contains(m.Surfaces, s) {
			m.Surfaces = append(m.Surfaces, s)
		}
	}
	if _, ok := p.(sdk.StatefulPlugin); ok {
		add("state")
	}
	if _, ok := p.(sdk.StreamPlugin); ok {
		add("stream")
	}
	if _, ok := p.(sdk.SchemaPlugin); ok {
		add("schema")
	}
	return m
}

// Info describes the plugin.
func (s *service[Req, Resp]) Info(context.Context, *pluginpb.InfoRequest) (*pluginpb.InfoResponse, error) {
	return s.info, nil
}

// Execute decodes the request with the codec it names, runs the plugin and
// encodes its answer with the same codec.
func (s *service[Req, Resp]) Execute(ctx context.Context, r *pluginpb.ExecuteRequest) (_ *pluginpb.ExecuteResponse, err error) {
	defer recoverInto("Execute", &err)
	c := &s.first
	if r.Codec != c.name {
		if c = s.codec(r.Codec); c == nil {
			return nil, errorStatus(codes.FailedPrecondition, &sdk.Error{Code: codeCodec,
				Message: fmt.Sprintf("the host encodes with codec %q, which the plugin lacks (it has %v): configure the same codec on both sides", r.Codec, s.info.Codecs)})
		}
	}
	req, err := c.decode(r.Payload)
	if err != nil {
		return nil, errorStatus(codes.InvalidArgument, &sdk.Error{Code: codeBadRequest,
			Message: fmt.Sprintf("the request does not decode with codec %q: %v", c.name, err)})
	}
	if r.Link != 0 { // the host relays host calls
		ctx = context.WithValue(ctx, requestKey{}, hostRequest{links: &s.links, link: r.Link, parent: r.RequestId})
	}
	resp, err := s.plugin.Execute(ctx, req)
	if err != nil {
		return nil, handlerStatus(err)
	}
	b, err := c.encode(resp)
	if err != nil {
		return nil, errorStatus(codes.Internal, &sdk.Error{Code: codeError,
			Message: fmt.Sprintf("the response does not encode with codec %q: %v", c.name, err)})
	}
	return &pluginpb.ExecuteResponse{Payload: b}, nil
}

func (s *service[Req, Resp]) codec(name string) *payloadCodec[Req, Resp] {
	for i := range s.codecs {
		if s.codecs[i].name == name {
			return &s.codecs[i]
		}
	}
	return nil
}

// PersistState forwards to the plugin's sdk.StatefulPlugin.
func (s *service[Req, Resp]) PersistState(ctx context.Context, _ *pluginpb.PersistStateRequest) (_ *pluginpb.PersistStateResponse, err error) {
	defer recoverInto("PersistState", &err)
	sp, ok := s.plugin.(sdk.StatefulPlugin)
	if !ok {
		return nil, unsupported("PersistState", "state")
	}
	state, err := sp.PersistState(ctx)
	if err != nil {
		return nil, handlerStatus(err)
	}
	return &pluginpb.PersistStateResponse{State: state}, nil
}

// RestoreState forwards to the plugin's sdk.StatefulPlugin.
func (s *service[Req, Resp]) RestoreState(ctx context.Context, r *pluginpb.RestoreStateRequest) (_ *pluginpb.RestoreStateResponse, err error) {
	defer recoverInto("RestoreState", &err)
	sp, ok := s.plugin.(sdk.StatefulPlugin)
	if !ok {
		return nil, unsupported("RestoreState", "state")
	}
	if err := sp.RestoreState(ctx, r.State); err != nil {
		return nil, handlerStatus(err)
	}
	return &pluginpb.RestoreStateResponse{}, nil
}

// Checkpoint forwards to the plugin's sdk.StreamPlugin.
func (s *service[Req, Resp]) Checkpoint(ctx context.Context, _ *pluginpb.CheckpointRequest) (_ *pluginpb.CheckpointResponse, err error) {
	defer recoverInto("Checkpoint", &err)
	sp, ok := s.plugin.(sdk.StreamPlugin)
	if !ok {
		return nil, unsupported("Checkpoint", "stream")
	}
	pos, err := sp.Checkpoint(ctx)
	if err != nil {
		return nil, handlerStatus(err)
	}
	return &pluginpb.CheckpointResponse{Position: pos}, nil
}

// Resume forwards to the plugin's sdk.StreamPlugin.
func (s *service[Req, Resp]) Resume(ctx context.Context, r *pluginpb.ResumeRequest) (_ *pluginpb.ResumeResponse, err error) {
	defer recoverInto("Resume", &err)
	sp, ok := s.plugin.(sdk.StreamPlugin)
	if !ok {
		return nil, unsupported("Resume", "stream")
	}
	if err := sp.Resume(ctx, r.Position); err != nil {
		return nil, handlerStatus(err)
	}
	return &pluginpb.ResumeResponse{}, nil
}

// CheckCompat forwards to the plugin's sdk.SchemaPlugin.
func (s *service[Req, Resp]) CheckCompat(ctx context.Context, r *pluginpb.CheckCompatRequest) (_ *pluginpb.CheckCompatResponse, err error) {
	defer recoverInto("CheckCompat", &err)
	sp, ok := s.plugin.(sdk.SchemaPlugin)
	if !ok {
		return nil, unsupported("CheckCompat", "schema")
	}
	old := r.GetOld()
	info := sdk.Info{Name: old.GetName(), Version: old.GetVersion(), Description: old.GetDescription(),
		Surfaces: old.GetSurfaces(), Metadata: old.GetMetadata()}
	if err := sp.CheckCompat(ctx, info); err != nil {
		return nil, handlerStatus(err)
	}
	return &pluginpb.CheckCompatResponse{}, nil
}

// Shutdown stops a host-started plugin gracefully after answering.
func (s *service[Req, Resp]) Shutdown(context.Context, *pluginpb.ShutdownRequest) (*pluginpb.ShutdownResponse, error) {
	if s.shutdown == nil {
		return nil, status.Error(codes.PermissionDenied, "this plugin runs as a remote service and is stopped by its operator, not by a host")
	}
	s.shutdown()
	return &pluginpb.ShutdownResponse{}, nil
}

// countCalls is a unary server interceptor that counts the calls being
// handled (see inflight) and gives the handlers of calls other than
// Execute, which has fields of its own, the request the host tagged them
// with for host calls (metadata pluginpb.MDLink and MDRequest).
func (s *service[Req, Resp]) countCalls(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	s.calls.begin()
	defer s.calls.end()
	if info.FullMethod != pluginpb.Plugin_Execute_FullMethodName {
		md, _ := metadata.FromIncomingContext(ctx)
		link, _ := strconv.ParseUint(last(md.Get(pluginpb.MDLink)), 10, 64)
		id, _ := strconv.ParseUint(last(md.Get(pluginpb.MDRequest)), 10, 64)
		if link != 0 && id != 0 {
			ctx = context.WithValue(ctx, requestKey{}, hostRequest{links: &s.links, link: link, parent: id})
		}
	}
	return handler(ctx, req)
}

// drain waits for the unary calls being handled, whose handlers may call
// the host, then ends the HostCalls streams and the background work.
func (s *service[Req, Resp]) drain() {
	s.calls.wait()
	close(s.stopLinks)
}

// recoverInto turns a handler panic into a "panic" error status.
func recoverInto(method string, err *error) {
	if r := recover(); r != nil {
		fmt.Fprintf(os.Stderr, "goplugins/grpcplugin: %s handler panicked: %v\n%s", method, r, debug.Stack())
		*err = errorStatus(codes.Internal, &sdk.Error{Code: codePanic, Message: fmt.Sprintf("%s handler panicked: %v", method, r)})
	}
}

func unsupported(method, surface string) error {
	return errorStatus(codes.Unimplemented, &sdk.Error{Code: codeUnsupported,
		Message: fmt.Sprintf("the plugin has no %q surface, so it cannot answer %s", surface, method)})
}

// handlerStatus turns a handler's error into a status with the error's
// code, message and retryable flag in an Error detail, as the subprocess
// protocol's ERROR reply carries them: an error wrapping context.Canceled
// has the code "canceled" (and the gRPC code CANCELLED), one wrapping
// context.DeadlineExceeded the gRPC code DEADLINE_EXCEEDED, everything else
// UNKNOWN. The detail tells the host that the handler answered: the
// connection was not lost.
func handlerStatus(err error) error {
	var e *sdk.Error
	switch {
	case errors.As(err, &e):
		return errorStatus(codes.Unknown, e)
	case errors.Is(err, context.Canceled):
		return errorStatus(codes.Canceled, &sdk.Error{Code: codeCanceled, Message: err.Error()})
	case errors.Is(err, context.DeadlineExceeded):
		return errorStatus(codes.DeadlineExceeded, &sdk.Error{Code: codeError, Message: err.Error()})
	default:
		return errorStatus(codes.Unknown, &sdk.Error{Code: codeError, Message: err.Error()})
	}
}

// errorStatus returns a status with code c and e as its Error detail.
func errorStatus(c codes.Code, e *sdk.Error) error {
	st := status.New(c, e.Code+": "+e.Message)
	withDetail, err := st.WithDetails(&pluginpb.Error{Code: e.Code, Message: e.Message, Retryable: e.Retryable})
	if err != nil {
		return st.Err() // the detail always marshals; keep the message anyway
	}
	return withDetail.Err()
}
