// Command otel-prometheus serves a goplugins manager's metrics to
// Prometheus through OpenTelemetry: otelgoplugins records the calls,
// reloads and events as OTel instruments, the OTel Prometheus exporter
// turns them into a registry, and /metrics serves it. It makes a few calls
// (one fails), reloads the plugin, then serves until interrupted.
//
//	go run . -addr 127.0.0.1:9464
//	curl -s 127.0.0.1:9464/metrics | grep goplugins_
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/goplugins/goplugins"
	"github.com/goplugins/goplugins/otelgoplugins"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9464", "where to serve /metrics")
	flag.Parse()
	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "otel-prometheus:", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ready := func() { fmt.Printf("serving http://%s/metrics; Ctrl-C stops\n", lis.Addr()) }
	if err := run(ctx, lis, os.Stdout, ready); err != nil {
		fmt.Fprintln(os.Stderr, "otel-prometheus:", err)
		os.Exit(1)
	}
}

// greeter greets by name; an empty name is an error.
type greeter struct{ version string }

func (g greeter) Info() goplugins.PluginInfo {
	return goplugins.PluginInfo{Name: "greeter", Version: g.version}
}

func (g greeter) Execute(_ context.Context, name string) (string, error) {
	if name == "" {
		return "", errors.New("greeter: no name given")
	}
	return "hello, " + name + " from " + g.version, nil
}

func (greeter) Health(context.Context) error { return nil }
func (greeter) Close(context.Context) error  { return nil }

// run sets up the telemetry and the manager, makes the calls, calls ready
// and serves the metrics on lis until ctx ends.
func run(ctx context.Context, lis net.Listener, out io.Writer, ready func()) error {
	reg := prometheus.NewRegistry()
	exporter, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return err
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter))
	tp := sdktrace.NewTracerProvider() // spans go nowhere here; add an exporter to see them
	defer shutdown(mp.Shutdown, tp.Shutdown)

	inst, err := otelgoplugins.New(otelgoplugins.WithMeterProvider(mp), otelgoplugins.WithTracerProvider(tp))
	if err != nil {
		return err
	}
	m := goplugins.NewManager[string, string](goplugins.WithInterceptors(inst.Interceptor()))
	defer shutdown(m.Shutdown)
	stopObserving, err := inst.Observe(m)
	if err != nil {
		return err
	}
	defer stopObserving()

	if err := m.Register(greeter{version: "1.0.0"}); err != nil {
		return err
	}
	for _, name := range []string{"Ada", "Grace", ""} {
		resp, err := m.Execute(ctx, "greeter", name)
		fmt.Fprintf(out, "call %q: %q %v\n", name, resp, err)
	}
	rep, err := m.Reload(ctx, "greeter", greeter{version: "1.1.0"})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "reloaded %s -> %s\n", rep.From, rep.To)
	resp, err := m.Execute(ctx, "greeter", "Linus")
	fmt.Fprintf(out, "call %q: %q %v\n", "Linus", resp, err)

	srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	ready()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return err
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// shutdown runs each stop with a bounded ctx, in order, printing failures.
func shutdown(stops ...func(context.Context) error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var errs []string
	for _, stop := range stops {
		if err := stop(ctx); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		fmt.Fprintln(os.Stderr, "otel-prometheus: shutdown:", strings.Join(errs, "; "))
	}
}
