package goplugins

import (
	"os/exec"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestExamplesBuild builds every program under examples/ (and the plugins
// they build at run time), so that a change to the library that breaks an
// example fails here. Each example's own main_test.go runs it.
func TestExamplesBuild(t *testing.T) {
	out, err := exec.Command("go", "build", "./examples/...").CombinedOutput()
	require.NoError(t, err, "go build ./examples/...\n%s", out)
}
