package goplugins

import (
	"context"
	"maps"
	"slices"
)

// Plugin is the contract every plugin satisfies, whatever runs it: a Go value
// in the host's process, a child process, or a gRPC service.
//
// Execute may be called from many goroutines at once. Close is idempotent.
type Plugin[Req, Resp any] interface {
	// Info describes the plugin. It must return the same name for the
	// plugin's whole life and be cheap: the manager calls it on Register
	// and Reload, and caches the result (Plugins and Manager.Info return
	// the cached info).
	Info() PluginInfo
	// Execute handles one request. It should honour ctx: the manager
	// cancels ctx on the caller's behalf and at the plugin's timeout.
	Execute(ctx context.Context, req Req) (Resp, error)
	// Health reports whether the plugin can serve; nil means healthy. It
	// should honour ctx: the manager stops waiting at the health-check
	// timeout and counts the check as failed (ErrTimeout), and Close waits
	// for a running check no longer than its own ctx.
	Health(ctx context.Context) error
	// Close releases the plugin's resources. The manager calls it once the
	// plugin has no call in flight, except when it gives up waiting: a
	// Shutdown whose ctx ended, or a plugin that Unregister left to close
	// in the background when Shutdown's ctx ends; then Close runs while
	// calls may still be running and must tolerate them. Calling it again
	// returns nil.
	Close(ctx context.Context) error
}

// PluginInfo describes a plugin.
type PluginInfo struct {
	// Name identifies the plugin: 1 to 64 bytes of lowercase ASCII letters,
	// digits, ".", "_" and "-", starting with a letter or digit.
	Name string `json:"name"`
	// Version is the plugin's strict semantic version (e.g. "1.4.0").
	Version string `json:"version"`
	// Description is free text for people.
	Description string `json:"description,omitempty"`
	// Surfaces lists the reload surfaces the plugin has (see Surface).
	Surfaces []Surface `json:"surfaces,omitempty"`
	// Metadata is free-form key/value data.
	Metadata map[string]string `json:"metadata,omitempty"`
}

// clone returns a copy of i that shares no slice or map with it.
func (i PluginInfo) clone() PluginInfo {
	i.Surfaces = slices.Clone(i.Surfaces)
	i.Metadata = maps.Clone(i.Metadata)
	return i
}

// Has reports whether the plugin declares surface s.
func (i PluginInfo) Has(s Surface) bool { return slices.Contains(i.Surfaces, s) }

// Surface names a kind of state a plugin hands over when it is hot-swapped.
// A plugin declares its surfaces in PluginInfo; an in-process plugin also
// implements the matching optional interfaces.
type Surface string

// The built-in reload surfaces. Hosts may register more surfaces, each with
// a Handoff, with the ReloadDispatcher.
const (
	// SurfaceState: the old plugin's PersistState bytes are handed to the
	// new plugin's RestoreState (see StatefulPlugin).
	SurfaceState Surface = "state"
	// SurfaceStream: the old plugin stops at a Checkpoint and the new one
	// Resumes from it (see StreamPlugin).
	SurfaceStream Surface = "stream"
	// SurfaceSchema: the new plugin checks, before any traffic is touched,
	// that it can take over from the old one (see SchemaPlugin).
	SurfaceSchema Surface = "schema"
)

// StatefulPlugin is implemented by plugins with SurfaceState.
type StatefulPlugin interface {
	// PersistState returns the plugin's state as bytes. It must not change
	// the state: if the reload fails the plugin serves on with it.
	PersistState(ctx context.Context) ([]byte, error)
	// RestoreState loads state produced by PersistState of an older version.
	RestoreState(ctx context.Context, state []byte) error
}

// StreamPlugin is implemented by plugins with SurfaceStream.
type StreamPlugin interface {
	// Checkpoint stops the plugin's stream processing and returns the
	// position it reached.
	Checkpoint(ctx context.Context) ([]byte, error)
	// Resume starts stream processing from position. In a reload the new
	// plugin resumes from the old one's checkpoint, and on rollback the old
	// plugin resumes from its own; with WithStreamStart, Register calls it
	// for the first stream (a nil position: from the beginning).
	Resume(ctx context.Context, position []byte) error
}

// SchemaPlugin is implemented by plugins with SurfaceSchema.
type SchemaPlugin interface {
	// CheckCompat is called on the next plugin with the info of the plugin
	// it would replace. A non-nil error stops the reload before any traffic
	// is touched.
	CheckCompat(ctx context.Context, old PluginInfo) error
}

// maxNameLen is the longest plugin name allowed.
const maxNameLen = 64

// validateName checks a plugin name: 1 to 64 bytes of lowercase ASCII
// letters, digits, '.', '_' and '-', starting with a letter or digit.
// The error matches ErrInvalidPlugin.
func validateName(name string) error {
	if name == "" {
		return newError(codeInvalidPlugin, "", "plugin name is empty; use 1 to %d characters of [a-z0-9._-]", maxNameLen)
	}
	if len(name) > maxNameLen {
		return newError(codeInvalidPlugin, "", "plugin name %.20q... is %d bytes long; the limit is %d", name, len(name), maxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case (c == '.' || c == '_' || c == '-') && i > 0:
		default:
			return newError(codeInvalidPlugin, "", "plugin name %q has %q at byte %d; use [a-z0-9._-], starting with a letter or digit", name, c, i)
		}
	}
	return nil
}

// validateInfo checks a plugin's Info for Register and Reload.
func validateInfo(info PluginInfo) error {
	if err := validateName(info.Name); err != nil {
		return err
	}
	_, err := parseVersion(info.Name, info.Version)
	return err
}
