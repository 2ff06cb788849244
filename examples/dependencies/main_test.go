package main

import (
	"bytes"
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// TestDependencies runs the example: the load order respects every
// dependency, api waits as pending until cache appears and then loads by
// itself, and unloading logging is refused while its dependents are loaded.
func TestDependencies(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), &out), out.String())
	require.Equal(t, `graph check: [PLUGIN_DEPENDENCY_MISSING]: plugin "api": required dependency "cache" (^1.0.0) is not known; add a plugin "cache" whose version satisfies "^1.0.0", or mark the dependency optional
load order without api: logging -> metrics -> auth
registered, each after its dependencies: logging, metrics, auth
api is pending: missing dependency: true
installed cache 1.0.2
loaded cache 1.0.2
loaded api 3.0.0
level 0: logging
level 1: cache metrics
level 2: auth
level 3: api
api 3.0.0 handled GET /orders
unload logging refused: dependents loaded
a cascade would unload, in order: api, auth, cache, metrics then logging
`, out.String())
}
