// Package goplugins runs plugins inside a host service: in-process Go
// values, child processes, or gRPC services, behind one contract, Plugin.
//
// The flow:
//
//	manifest files --DiscoveryEngine--> events --DynamicLoader--> version checks + DependencyGraph
//	   --> Factory (transport) --> Plugin[Req, Resp] --> Manager.Register / Manager.Reload
//	Manager.Execute(ctx, name, req) --> registry snapshot --> breaker --> plugin.Execute
//	Manager.Reload: preflight --> drain (park new calls, wait in-flight) --> ReloadDispatcher
//	   (per-kind handoffs, each with an undo) --> commit (atomic swap, release parked calls)
//	   on any failure: undo in reverse, old plugin keeps serving, parked calls go to it
//
// A Manager owns registered plugins. Execute is lock-free and allocates
// nothing on its success path; each plugin has a timeout, a circuit
// breaker, retries for errors it marks retryable, panic recovery, health
// checks, metrics and events.
//
// Reload hot-swaps a plugin without dropping a call: new calls are parked
// while the calls in flight finish, the plugin's state moves to the new
// version through the surfaces it declares (see ReloadDispatcher), and one
// atomic swap commits; any failure rolls back and the old version serves on.
//
// Every error the package reports carries a code (see errors.go) and
// matches its sentinel with errors.Is, e.g. errors.Is(err, ErrNotFound).
package goplugins
