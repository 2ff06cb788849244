//go:build goplugins_callmetadata

// This file needs goplugins.ContextWithMetadata, which subprocess protocol
// version 2 adds; until that is in the goplugins module it is built only
// with the goplugins_callmetadata tag. Remove the constraint once it is.

package otelgoplugins

import (
	"context"

	"go.opentelemetry.io/otel/propagation"

	"github.com/goplugins/goplugins"
)

func init() { carriers = append(carriers, withCallMetadata) }

// withCallMetadata passes the carrier as the call metadata of subprocess
// protocol version 2: the plugin reads it with sdk.Metadata(ctx) and
// extracts the trace context with a propagator (propagation.MapCarrier).
func withCallMetadata(ctx context.Context, carrier propagation.MapCarrier) context.Context {
	return goplugins.ContextWithMetadata(ctx, map[string]string(carrier))
}
