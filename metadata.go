package goplugins

import (
	"context"
	"maps"
)

type metadataKey struct{}

// ContextWithMetadata returns a copy of ctx that carries md: key/value
// pairs sent along with the calls made with it to plugins out of process
// (a METADATA frame in subprocess protocol version 2, gRPC metadata for
// gRPC plugins), where the plugin reads them (sdk.Metadata,
// grpcplugin.Metadata). Tracing uses it for trace context. Pairs of an
// outer ctx are kept unless md sets the same key. An in-process plugin
// reads them with MetadataFromContext.
func ContextWithMetadata(ctx context.Context, md map[string]string) context.Context {
	if outer, ok := ctx.Value(metadataKey{}).(map[string]string); ok {
		merged := maps.Clone(outer)
		maps.Copy(merged, md)
		md = merged
	} else {
		md = maps.Clone(md)
	}
	return context.WithValue(ctx, metadataKey{}, md)
}

// MetadataFromContext returns the pairs ctx carries (see
// ContextWithMetadata), or nil. The map must not be modified.
func MetadataFromContext(ctx context.Context) map[string]string {
	md, _ := ctx.Value(metadataKey{}).(map[string]string)
	return md
}
