package workers

import (
	"bytes"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// running counts the goroutines of the pool.
func running() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return bytes.Count(buf, []byte("workers.(*Pool).run("))
}

// TestPoolReusesParkedGoroutines: a function given while a goroutine is
// parked runs on it; at most max park; Close ends them all.
func TestPoolReusesParkedGoroutines(t *testing.T) {
	defer goleak.VerifyNone(t)
	const max, burst = 4, 12
	p := New(max)
	release := make(chan struct{})
	var started, done sync.WaitGroup
	started.Add(burst)
	done.Add(burst)
	for range burst {
		p.Go(func() {
			defer done.Done()
			started.Done()
			<-release
		})
	}
	started.Wait()
	assert.Equal(t, burst, running(), "one goroutine a function while none is parked")
	close(release)
	done.Wait()
	require.Eventually(t, func() bool { return running() == max }, 5*time.Second, time.Millisecond, "parked after the burst: %d", running())

	during := make(chan int)
	p.Go(func() { during <- running() })
	assert.Equal(t, max, <-during, "a parked goroutine runs it: none is started")

	p.Close()
	require.Eventually(t, func() bool { return running() == 0 }, 5*time.Second, time.Millisecond)
}
