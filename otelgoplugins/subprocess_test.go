package otelgoplugins_test

import (
	"context"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goplugins/goplugins"
)

// TestSubprocessPluginSpanIsChildOfHostSpan: through a real child process
// speaking subprocess protocol version 2, the plugin's own span (started
// from the trace context in the call metadata) has the host's call span as
// its parent, in the same trace.
func TestSubprocessPluginSpanIsChildOfHostSpan(t *testing.T) {
	tel := newTelemetry(t)
	bin := filepath.Join(t.TempDir(), "subtraced")
	out, err := exec.Command("go", "build", "-o", bin, "./internal/subtraced").CombinedOutput()
	require.NoError(t, err, "go build ./internal/subtraced:\n%s", out)
	ctx := context.Background()
	p, err := goplugins.NewSubprocess[string, tracedSpan](ctx, goplugins.SubprocessConfig{Name: "subtraced", Command: bin})
	require.NoError(t, err)
	m := goplugins.NewManager[string, tracedSpan](goplugins.WithInterceptors(tel.inst.Interceptor()))
	defer func() { require.NoError(t, m.Shutdown(context.Background())) }()
	require.NoError(t, m.Register(p))

	got, err := m.Execute(ctx, "subtraced", "hello")
	require.NoError(t, err)
	spans := tel.ended("goplugins.execute")
	require.Len(t, spans, 1)
	host := spans[0].SpanContext()
	assert.True(t, got.Recording, "the plugin's span records")
	assert.Equal(t, host.TraceID().String(), got.TraceID, "one trace")
	assert.Equal(t, host.SpanID().String(), got.ParentSpanID, "the plugin-side span's parent is the host's span")
	assert.True(t, got.ParentRemote)
}
