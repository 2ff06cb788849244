//go:build !goplugins_callmetadata

package otelgoplugins_test

import (
	"context"

	"google.golang.org/grpc/metadata"
)

// sentTraceparent returns the traceparent values ctx sends to a plugin.
func sentTraceparent(ctx context.Context) []string {
	md, _ := metadata.FromOutgoingContext(ctx)
	return md.Get("traceparent")
}
