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
// itself, unloading logging is refused while its dependents are loaded, and
// a cascade unloads the dependents first.
func TestDependencies(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), &out), out.String())
	require.Equal(t, `registered, each after its dependencies: logging, metrics, auth
api is pending: missing dependency: true
installed cache 1.0.2
loaded cache 1.0.2
loaded api 3.0.0
api 3.0.0 handled GET /orders
unload logging refused: dependents loaded
cascade unloaded, in order: api, auth, cache, metrics, logging
`, out.String())
}
