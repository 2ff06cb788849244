package main

import (
	"bytes"
	"context"
	"testing"
)

func TestRun(t *testing.T) {
	t.Setenv("GREETING", "") // empty: the file's default applies
	var out bytes.Buffer
	if err := run(context.Background(), &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{
		`hello says "Hello, world! (hello 1.0.0)"`,
		`hello says "Good day, world! (hello 1.1.0)"`,
		`bye says "Goodbye, world! (bye 1.0.0)"`,
		"refused, the last good configuration keeps serving",
		"unloaded bye: [hello@1.1.0]",
	} {
		if !bytes.Contains(out.Bytes(), []byte(want)) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
