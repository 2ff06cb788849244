package main

import (
	"bytes"
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// TestInprocess runs the example and checks each step it reports.
func TestInprocess(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), &out), out.String())
	require.Equal(t, `registered flaky 0.3.1
registered greeter 1.0.0
hello, Ada (greeting #1 from 1.0.0)
hello, Grace (greeting #2 from 1.0.0)
panic recovered: true
flaky call 1: backend unreachable
flaky call 2: backend unreachable
flaky call 3: backend unreachable
flaky call 4: breaker open, failed fast
reloaded greeter 1.0.0 -> 2.0.0, handed over [state] (1 bytes)
good day, Linus (greeting #3 from 2.0.0)
greeter: 4 calls, 1 errors, 1 panics, generation 2
`, out.String())
}
