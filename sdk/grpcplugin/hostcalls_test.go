package grpcplugin

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/metadata"

	"github.com/goplugins/goplugins/sdk"
)

func TestMetadataLeavesOutTheTransportsHeaders(t *testing.T) {
	assert.Nil(t, Metadata(context.Background()), "no incoming metadata")
	md := metadata.MD{
		":authority": {"x"}, "content-type": {"application/grpc"}, "user-agent": {"grpc-go"},
		"grpc-accept-encoding": {"gzip"}, "goplugins-link": {"5"},
	}
	assert.Nil(t, Metadata(metadata.NewIncomingContext(context.Background(), md)), "only the transports' headers")
	md["traceparent"] = []string{"00-a-b-01"}
	md["tenant"] = []string{"first", "last"}
	md["empty"] = nil
	assert.Equal(t, map[string]string{"traceparent": "00-a-b-01", "tenant": "last"},
		Metadata(metadata.NewIncomingContext(context.Background(), md)), "the host's pairs; the last of several values")
}

func TestCallHostOutsideAHandler(t *testing.T) {
	_, err := CallHost[string, string](context.Background(), "kv.get", "k")
	var e *sdk.Error
	require.True(t, errors.As(err, &e))
	assert.Equal(t, codeUnsupported, e.Code)
}
