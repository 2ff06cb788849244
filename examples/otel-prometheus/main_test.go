package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// TestServesMetricsToPrometheus runs the example, scrapes /metrics as
// Prometheus would, and checks the goplugins series.
func TestServesMetricsToPrometheus(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var out bytes.Buffer
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- run(ctx, lis, &out, func() { close(ready) }) }()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("run returned before serving: %v\n%s", err, out.String())
	}

	body := scrape(t, "http://"+lis.Addr().String()+"/metrics")
	cancel()
	require.NoError(t, <-done)
	assert.Equal(t, `call "Ada": "hello, Ada from 1.0.0" <nil>
call "Grace": "hello, Grace from 1.0.0" <nil>
call "": "" greeter: no name given
reloaded 1.0.0 -> 1.1.0
call "Linus": "hello, Linus from 1.1.0" <nil>
`, out.String())

	series := map[string]string{}
	for line := range strings.Lines(body) {
		if strings.HasPrefix(line, "goplugins_") {
			name, value, _ := strings.Cut(strings.TrimSpace(line), " ")
			series[stripScope(name)] = value
		}
	}
	t.Logf("scraped:\n%s", body)
	for name, want := range map[string]string{
		`goplugins_calls_total{goplugins_plugin_name="greeter"}`:                                       "4",
		`goplugins_call_errors_total{error_type="_OTHER",goplugins_plugin_name="greeter"}`:             "1",
		`goplugins_call_duration_seconds_count{goplugins_plugin_name="greeter"}`:                       "4",
		`goplugins_calls_in_flight{goplugins_plugin_name="greeter"}`:                                   "0",
		`goplugins_breaker_state{goplugins_plugin_name="greeter"}`:                                     "0",
		`goplugins_reload_pause_seconds_count{goplugins_outcome="ok",goplugins_plugin_name="greeter"}`: "1",
	} {
		assert.Equal(t, want, series[name], "%s", name)
	}
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(b)
}

// stripScope drops the otel_scope_* labels the exporter adds to every
// series, so that the test names only the goplugins labels.
func stripScope(series string) string {
	name, labels, ok := strings.Cut(series, "{")
	if !ok {
		return series
	}
	var keep []string
	for _, l := range strings.Split(strings.TrimSuffix(labels, "}"), ",") {
		if !strings.HasPrefix(l, "otel_scope_") {
			keep = append(keep, l)
		}
	}
	return name + "{" + strings.Join(keep, ",") + "}"
}
