package goplugins

import (
	"testing"

	"go.uber.org/goleak"
)

// leakOptions ignores the one goroutine that outlives every test by design:
// go-errors' time cache, started when that package is imported.
var leakOptions = []goleak.Option{
	goleak.IgnoreTopFunction("github.com/agilira/go-timecache.(*TimeCache).updateLoop"),
}

// verifyNoLeaks fails t if goroutines started during the test are still
// running when it ends. Call it first in a test: it registers a cleanup.
// Tests that use it must not run in parallel with others.
func verifyNoLeaks(t *testing.T) {
	t.Helper()
	t.Cleanup(func() { goleak.VerifyNone(t, leakOptions...) })
}
