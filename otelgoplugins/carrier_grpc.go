//go:build !goplugins_callmetadata

// Until goplugins.ContextWithMetadata is in the goplugins module, the
// trace context reaches gRPC plugins as gRPC metadata set here; with it,
// carrier_metadata.go carries it to both transports and this file goes.

package otelgoplugins

import (
	"context"

	"go.opentelemetry.io/otel/propagation"
	"google.golang.org/grpc/metadata"
)

func init() { carriers = append(carriers, withGRPCMetadata) }

// withGRPCMetadata adds the carrier's fields to the ctx's outgoing gRPC
// metadata: the gRPC transport sends them with the call, and a plugin
// served with otelgrpc's server handler (or any propagator reading gRPC
// metadata) continues the trace. Other transports ignore them.
func withGRPCMetadata(ctx context.Context, carrier propagation.MapCarrier) context.Context {
	kv := make([]string, 0, 2*len(carrier))
	for k, v := range carrier {
		kv = append(kv, k, v)
	}
	return metadata.AppendToOutgoingContext(ctx, kv...)
}
