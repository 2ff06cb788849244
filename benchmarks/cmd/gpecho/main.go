// Command gpecho is the goplugins echo plugin of the comparison benchmarks.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/goplugins/goplugins/sdk"
)

type echo struct{}

func (echo) Execute(_ context.Context, s string) (string, error) { return s, nil }

func main() {
	if err := sdk.Serve[string, string](echo{}, sdk.Info{Name: "echo", Version: "1.0.0"}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
