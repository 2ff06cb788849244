package otelgoplugins_test

import (
	"context"
	"log/slog"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/goplugins/goplugins"
)

// endedSpans sends each span of the given name when it ends.
type endedSpans struct {
	sdktrace.SpanProcessor // the no-op methods
	name                   string
	ch                     chan sdktrace.ReadOnlySpan
}

func (e *endedSpans) OnEnd(s sdktrace.ReadOnlySpan) {
	if s.Name() == e.name {
		e.ch <- s
	}
}

type echoReq struct {
	Op   string `json:"op,omitempty"`
	Data string `json:"data,omitempty"`
}

type echoResp struct {
	Data string `json:"data,omitempty"`
}

// TestRestartSpanFromARealCrash: a child process that crashes is restarted
// by the supervisor, and Observe records the restart as a span from the
// crash to the new child, and counts both.
func TestRestartSpanFromARealCrash(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "echo")
	build := exec.Command("go", "build", "-o", bin, "./testdata/plugins/echo")
	build.Dir = ".." // the goplugins module's test plugin
	out, err := build.CombinedOutput()
	require.NoError(t, err, "go build ./testdata/plugins/echo:\n%s", out)

	tel := newTelemetry(t)
	restarts := &endedSpans{SpanProcessor: sdktrace.NewSimpleSpanProcessor(nil), name: "goplugins.restart", ch: make(chan sdktrace.ReadOnlySpan, 1)}
	tel.tp.RegisterSpanProcessor(restarts)
	ctx := context.Background()
	p, err := goplugins.NewSubprocess[echoReq, echoResp](ctx, goplugins.SubprocessConfig{Name: "echo", Command: bin,
		Logger: slog.New(slog.DiscardHandler), Restart: goplugins.RestartPolicy{Backoff: time.Millisecond}})
	require.NoError(t, err)
	m := goplugins.NewManager[echoReq, echoResp](goplugins.WithInterceptors(tel.inst.Interceptor()))
	defer func() { require.NoError(t, m.Shutdown(context.Background())) }()
	stop, err := tel.inst.Observe(m)
	require.NoError(t, err)
	defer stop()
	require.NoError(t, m.Register(p))

	_, err = m.Execute(ctx, "echo", echoReq{Op: "crash", Data: "for the test"})
	require.ErrorIs(t, err, goplugins.ErrCrashed)
	var span sdktrace.ReadOnlySpan
	select {
	case span = <-restarts.ch:
	case <-time.After(30 * time.Second):
		t.Fatal("no restart span within 30s")
	}
	assert.Equal(t, "echo", attrs(span)["goplugins.plugin.name"].AsString())
	assert.Equal(t, codes.Unset, span.Status().Code, "restarted")
	require.NotEmpty(t, span.Events())
	assert.Equal(t, "crashed", span.Events()[0].Name)

	_, err = m.Execute(ctx, "echo", echoReq{Data: "after"})
	require.NoError(t, err, "the new child serves")
	rm := tel.collect(t)
	assert.Equal(t, int64(1), sumOf(t, rm, "goplugins.crashes", "goplugins.plugin.name", "echo"))
	assert.Equal(t, int64(1), sumOf(t, rm, "goplugins.restarts", "goplugins.plugin.name", "echo", "goplugins.outcome", "ok"))
}
