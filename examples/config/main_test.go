package main

import (
	"bytes"
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRun(t *testing.T) {
	t.Setenv("GREETING", "") // empty: the file's default applies
	var out bytes.Buffer
	err := run(context.Background(), &out)
	require.NoError(t, err, out.String())
	for _, want := range []string{
		`hello says "Hello, world! (hello 1.0.0)"`,
		`hello says "Good day, world! (hello 1.1.0)"`,
		`bye says "Goodbye, world! (bye 1.0.0)"`,
		"refused, the last good configuration keeps serving",
		"unloaded bye: [hello@1.1.0]",
	} {
		assert.Contains(t, out.String(), want, "output lacks %q", want)
	}
}
