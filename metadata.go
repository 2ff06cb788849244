package goplugins

import (
	"context"
	"maps"
	"strings"
)

type metadataKey struct{}

// ContextWithMetadata returns a copy of ctx that carries md: key/value
// pairs sent along with the calls made with it to plugins out of process
// (a METADATA frame in subprocess protocol version 2, gRPC metadata for
// gRPC plugins), where the plugin reads them (sdk.Metadata,
// grpcplugin.Metadata). Tracing uses it for trace context. Keys are
// lowercased, as gRPC metadata requires, so that a plugin reads the same
// keys on every transport. Pairs of an outer ctx are kept unless md sets
// the same key; an empty md returns ctx itself. md is copied: changing it
// later changes nothing. An in-process plugin reads the pairs with
// MetadataFromContext.
func ContextWithMetadata(ctx context.Context, md map[string]string) context.Context {
	if len(md) == 0 {
		return ctx
	}
	merged := make(map[string]string, len(md))
	if outer, ok := ctx.Value(metadataKey{}).(map[string]string); ok {
		maps.Copy(merged, outer)
	}
	for k, v := range md {
		merged[strings.ToLower(k)] = v
	}
	return context.WithValue(ctx, metadataKey{}, merged)
}

// MetadataFromContext returns the pairs ctx carries (see
// ContextWithMetadata), or nil. The map must not be modified.
func MetadataFromContext(ctx context.Context) map[string]string {
	md, _ := ctx.Value(metadataKey{}).(map[string]string)
	return md
}
