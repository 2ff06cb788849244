//go:build goplugins_callmetadata

// This file needs goplugins.ContextWithMetadata (call metadata: subprocess
// protocol version 2, gRPC metadata for gRPC plugins); until that is in the
// goplugins module it is built only with the goplugins_callmetadata tag.
// Once it is, remove the constraint and carrier_grpc.go.

package otelgoplugins

import (
	"context"

	"go.opentelemetry.io/otel/propagation"

	"github.com/goplugins/goplugins"
)

func init() { carriers = append(carriers, withCallMetadata) }

// withCallMetadata passes the carrier as the call's metadata: a subprocess
// plugin reads it with sdk.Metadata(ctx), a gRPC plugin as gRPC metadata,
// and extracts the trace context with its propagator
// (propagation.MapCarrier(sdk.Metadata(ctx)) for a subprocess plugin).
func withCallMetadata(ctx context.Context, carrier propagation.MapCarrier) context.Context {
	return goplugins.ContextWithMetadata(ctx, map[string]string(carrier))
}
