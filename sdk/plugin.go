// Package sdk is the plugin side of the goplugins subprocess transport: a
// plugin binary calls Serve, and the host that started it (a goplugins
// Subprocess) calls the plugin over the protocol of docs/PROTOCOL.md.
//
// The package does not import the goplugins root package, so plugin
// binaries stay small and start fast. Its optional interfaces have the same
// method sets as the root package's StatefulPlugin, StreamPlugin and Health;
// Serve detects them on the value it is given and declares the matching
// reload surfaces in the handshake.
//
// With a host that speaks protocol version 2, a handler may call the
// functions the host offers and grants it (CallHost, with the handler's
// ctx), background work may too (WithBackground), and a handler reads the
// metadata the host sent with its request (Metadata).
package sdk

import "context"

// Plugin is what a plugin binary serves. Execute is called from many
// goroutines at once, one per request in flight; ctx is cancelled when the
// host cancels the request, the host goes away, or the plugin shuts down.
type Plugin[Req, Resp any] interface {
	Execute(ctx context.Context, req Req) (Resp, error)
}

// Info describes the plugin to the host in the handshake.
type Info struct {
	// Name must equal the name the host expects.
	Name string
	// Version is the plugin's strict semantic version (e.g. "1.2.0").
	Version string
	// Description is free text for people.
	Description string
	// Surfaces lists reload surfaces beyond those Serve detects from the
	// optional interfaces ("state", "stream", "schema").
	Surfaces []string
	// Metadata is free-form key/value data.
	Metadata map[string]string
}

// HealthChecker is implemented by plugins that answer health pings
// themselves; without it a ping succeeds while the plugin serves.
type HealthChecker interface {
	Health(ctx context.Context) error
}

// StatefulPlugin is implemented by plugins with the "state" reload surface.
type StatefulPlugin interface {
	// PersistState returns the state without changing it.
	PersistState(ctx context.Context) ([]byte, error)
	// RestoreState loads state produced by PersistState of an older version.
	RestoreState(ctx context.Context, state []byte) error
}

// StreamPlugin is implemented by plugins with the "stream" reload surface.
type StreamPlugin interface {
	// Checkpoint stops stream processing and returns the position reached.
	Checkpoint(ctx context.Context) ([]byte, error)
	// Resume restarts stream processing from position.
	Resume(ctx context.Context, position []byte) error
}

// SchemaPlugin is implemented by plugins with the "schema" reload surface.
type SchemaPlugin interface {
	// CheckCompat is called on the next plugin with the info of the plugin
	// it would replace; an error stops the host's reload.
	CheckCompat(ctx context.Context, old Info) error
}
