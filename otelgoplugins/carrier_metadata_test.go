package otelgoplugins_test

import (
	"context"

	"github.com/goplugins/goplugins"
)

// sentTraceparent returns the traceparent values ctx sends to a plugin.
func sentTraceparent(ctx context.Context) []string {
	if v, ok := goplugins.MetadataFromContext(ctx)["traceparent"]; ok {
		return []string{v}
	}
	return nil
}
