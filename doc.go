// Package goplugins runs plugins inside a host service: in-process Go
// values, child processes, or gRPC services, behind one contract, Plugin.
// Plugins are discovered from manifests on disk, checked against
// semantic-version rules, loaded in dependency order, and hot-swapped
// without dropping a call or losing their state.
//
// # The flow
//
//	manifest files --DiscoveryEngine--> events --DynamicLoader--> version and dependency checks
//	   --> Factory (transport) --> Plugin[Req, Resp] --> Manager.Register / Manager.Reload
//	Manager.Execute(ctx, name, req) --> interceptors --> registry snapshot --> breaker --> plugin.Execute
//	plugin --CallHost / sdk.CallHost / grpcplugin.CallHost--> grants, limits --> host function
//	Manager.Reload: preflight --> drain (park new calls, wait in-flight) --> dispatch (each
//	   surface's Handoff: stop, move, start, each step with an undo) --> commit (atomic swap,
//	   release parked calls); on any failure: rollback (undo in reverse, old plugin keeps
//	   serving, parked calls go to it)
//
// A plugin's folder holds its manifest, plugin.json or plugin.yaml (see
// Manifest for the fields: name, version, transport, command, checksum,
// requires, dependencies, surfaces, timeouts, restart policy, endpoint and
// TLS). A DiscoveryEngine finds the manifests under its roots, validates
// them and, once started, watches them, reporting each change as a
// DiscoveryEvent. A ConfigWatcher offers the plugins of a configuration file
// (see Config) the same way; both are a ManifestSource.
//
// A DynamicLoader consumes a ManifestSource. It checks each manifest's host
// constraint against the manager's VersionPolicy and its dependency constraints against
// the versions known, orders the plugins by their dependencies, makes each
// plugin with the Factory registered for its transport, and registers it
// with a Manager. A plugin whose dependency is missing waits as pending and
// loads once the dependency appears; an updated manifest becomes a
// Manager.Reload; a removed one an unload, dependents first.
//
// A Manager owns the registered plugins and runs requests through them.
// Execute is lock-free and allocates nothing on its success path; each
// plugin has a timeout, a circuit breaker, retries for errors it marks
// retryable, panic recovery, health checks, metrics (Manager.Metrics) and
// events (Manager.Subscribe). A caller whose ctx ends before the plugin
// answers gets an error matching ErrCanceled and ctx's error, on every
// transport; ErrTimeout is only the plugin's own timeout.
//
// Plugins call the host back through host functions (NewHostFunc,
// WithHostFuncs): nothing is granted by default (WithGrants), a manifest
// asks for what it needs (host_functions), each call is bounded
// (HostCallLimits), and a host function learns which plugin value calls
// (Caller). Interceptors (WithInterceptors) wrap every Execute, Reload and
// host call; package otelgoplugins, a module of its own, builds
// OpenTelemetry traces and metrics on them.
//
// Reload hot-swaps a plugin without dropping a call: new calls are parked
// while the calls in flight finish, the plugin's state moves to the new
// version through the surfaces it declares (state, stream, schema, or
// surfaces the host registers a Handoff for; see ReloadDispatcher), and one
// atomic swap commits.
// Any failure rolls back and the old version serves on; the ReloadReport
// says how long calls were parked and what was handed over.
//
// # Transports
//
//   - In-process: any Go value that implements Plugin (and, for its reload
//     surfaces, StatefulPlugin, StreamPlugin or SchemaPlugin). Register it
//     with Manager.Register, or make it in a Factory registered for the
//     "inprocess" transport.
//   - Subprocess: a child process speaking the language-neutral protocol of
//     docs/PROTOCOL.md over two pipes; Go plugins call sdk.Serve (package
//     github.com/goplugins/goplugins/sdk). NewSubprocess starts one;
//     SubprocessFactory makes one from a manifest. Crashed children are
//     restarted with backoff; a child never outlives the host.
//   - gRPC: the goplugins.plugin.v1.Plugin service of docs/GRPC.md, served
//     by package github.com/goplugins/goplugins/sdk/grpcplugin, either as a
//     child the host starts (with automatic mTLS if asked for) or as a
//     remote service reached over TLS or mTLS. NewGRPCPlugin connects to
//     one; GRPCFactory makes one from a manifest.
//
// # Where to start
//
// Run the quickstart, which builds a plugin, discovers, loads and hot-swaps
// it under load:
//
//	go run ./examples/quickstart
//
// Then see the examples of NewManager, Manager.Reload, NewDynamicLoader and
// NewDiscoveryEngine, and the programs under examples/ (in-process plugins,
// dependencies, subprocess, Python, gRPC with mTLS, configuration file).
//
// # Errors
//
// Every error the package reports matches one of the Err sentinels with
// errors.Is, e.g. errors.Is(err, ErrNotFound); ErrorCode reports its code
// string (such as "PLUGIN_NOT_FOUND") for logs and metrics. Messages are one
// line that names the plugin (or the file and field) and says what to do. A
// plugin's own errors pass through Execute unchanged.
//
// # Options
//
// Each receiver has one option type: Option for NewManager, PluginOption
// for one plugin at Manager.Register (WithPluginDefaults makes them the
// defaults of every plugin), ReloadOption for one Manager.Reload,
// LoaderOption for NewDynamicLoader and ManifestOption for LoadManifest and
// ParseManifest. Structs configure what has many fields: DiscoveryConfig,
// SubprocessConfig, GRPCConfig, BreakerConfig, HealthConfig, RetryPolicy,
// RestartPolicy.
//
// # The types, in the order a host meets them
//
//   - Plugin, PluginInfo and the capability interfaces StatefulPlugin,
//     StreamPlugin and SchemaPlugin: what a plugin is.
//   - Manager (NewManager, Register, Execute, Reload, Unregister,
//     Shutdown), with Metrics, HealthReport and Event (Subscribe).
//   - Manifest, read by LoadManifest or found by a DiscoveryEngine or a
//     ConfigWatcher (Config), both a ManifestSource.
//   - DynamicLoader, with a Factory per transport: SubprocessFactory,
//     GRPCFactory, or the host's own.
//   - NewSubprocess and NewGRPCPlugin, the out-of-process transports, with
//     their SubprocessConfig and GRPCConfig, and Codec.
//   - ReloadDispatcher and Handoff, for surfaces of the host's own.
//   - HostFunc (NewHostFunc), Grant, HostCallLimits, Host, HostUser and
//     CallHost: the functions plugins call on the host.
//   - Interceptor and Call (WithInterceptors), and ContextWithMetadata.
package goplugins
