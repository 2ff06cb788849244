// Package benchmarks compares the goplugins subprocess transport with a raw
// pipe round trip and with hashicorp/go-plugin over gRPC, in one run:
//
//	cd benchmarks && go test -run '^$' -bench . -benchtime 3s
//
// BenchmarkRoundTrip64Interleaved gives the ratios that matter on a busy
// machine: the three round trips share every iteration.
package benchmarks

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"

	"github.com/goplugins/goplugins"
	"github.com/goplugins/goplugins/benchmarks/shared"
)

var bins struct {
	once sync.Once
	dir  string
	err  error
}

// TestMain removes the plugin binaries built for the benchmarks.
func TestMain(m *testing.M) {
	code := m.Run()
	if bins.dir != "" {
		os.RemoveAll(bins.dir)
	}
	os.Exit(code)
}

// binary builds the three plugins once and returns the path of one.
func binary(b *testing.B, name string) string {
	b.Helper()
	bins.once.Do(func() {
		if bins.dir, bins.err = os.MkdirTemp("", "goplugins-bench-"); bins.err != nil {
			return
		}
		for _, cmd := range []string{"gpecho", "hcecho", "pipeecho"} {
			out, err := exec.Command("go", "build", "-o", filepath.Join(bins.dir, cmd), "./cmd/"+cmd).CombinedOutput()
			if err != nil {
				bins.err = &buildError{cmd, string(out)}
				return
			}
		}
	})
	if bins.err != nil {
		b.Fatal(bins.err)
	}
	return filepath.Join(bins.dir, name)
}

type buildError struct{ cmd, out string }

func (e *buildError) Error() string { return "go build ./cmd/" + e.cmd + ":\n" + e.out }

var msg64 = strings.Repeat("x", 64)

// BenchmarkRoundTrip64 sends a 64-byte message to a child process and reads
// it back, three ways.
func BenchmarkRoundTrip64(b *testing.B) {
	b.Run("RawPipe", func(b *testing.B) {
		p := startPipeEcho(b)
		buf := []byte(msg64)
		for b.Loop() {
			if err := p.roundTrip(buf); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, bc := range []struct {
		name string
		env  map[string]string
	}{
		{"Goplugins", nil},
		// The same with the plugin's runtime on one thread: no idle
		// processor for the Go scheduler to wake on every request.
		{"GopluginsPluginGOMAXPROCS1", map[string]string{"GOMAXPROCS": "1"}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			m, closeAll := startGoplugins(b, bc.env)
			defer closeAll()
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if resp, err := m.Execute(ctx, "echo", msg64); err != nil || len(resp) != 64 {
					b.Fatal(resp, err)
				}
			}
		})
	}
	b.Run("GoPluginGRPC", func(b *testing.B) {
		echo, kill := startGoPlugin(b)
		defer kill()
		ctx := context.Background()
		payload := []byte(msg64)
		b.ReportAllocs()
		for b.Loop() {
			if resp, err := echo.Echo(ctx, payload); err != nil || !bytes.Equal(resp, payload) {
				b.Fatal(resp, err)
			}
		}
	})
}

// BenchmarkRoundTrip64Interleaved runs the three round trips of
// BenchmarkRoundTrip64 in alternating blocks of interleaveBlock calls, so
// that all three see the same load on a shared machine while each stays
// warm, and reports each one's mean (raw-ns, goplugins-ns,
// goplugin-grpc-ns) and the ratios the budgets are about: goplugins/raw
// (x-raw, budget ≤ 2) and goplugins/go-plugin (x-goplugin, budget ≤ 0.33).
// One op is one round trip of each kind.
func BenchmarkRoundTrip64Interleaved(b *testing.B) {
	raw := startPipeEcho(b)
	m, closeAll := startGoplugins(b, nil)
	defer closeAll()
	echo, kill := startGoPlugin(b)
	defer kill()
	ctx := context.Background()
	buf, payload := []byte(msg64), []byte(msg64)
	var tRaw, tOurs, tGRPC time.Duration
	timed := func(total *time.Duration, n int, call func() error) {
		start := time.Now()
		for range n {
			if err := call(); err != nil {
				b.Fatal(err)
			}
		}
		*total += time.Since(start)
	}
	b.ResetTimer()
	for done := 0; done < b.N; done += interleaveBlock {
		n := min(interleaveBlock, b.N-done)
		timed(&tRaw, n, func() error { return raw.roundTrip(buf) })
		timed(&tOurs, n, func() error {
			_, err := m.Execute(ctx, "echo", msg64)
			return err
		})
		timed(&tGRPC, n, func() error {
			_, err := echo.Echo(ctx, payload)
			return err
		})
	}
	n := float64(b.N)
	b.ReportMetric(float64(tRaw.Nanoseconds())/n, "raw-ns")
	b.ReportMetric(float64(tOurs.Nanoseconds())/n, "goplugins-ns")
	b.ReportMetric(float64(tGRPC.Nanoseconds())/n, "goplugin-grpc-ns")
	b.ReportMetric(float64(tOurs)/float64(tRaw), "x-raw")
	b.ReportMetric(float64(tOurs)/float64(tGRPC), "x-goplugin")
}

// interleaveBlock is how many round trips of one kind run in a row.
const interleaveBlock = 200

// pipeEcho is the raw pipe baseline: a child that echoes 64-byte messages.
type pipeEcho struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out io.Reader
}

func startPipeEcho(b *testing.B) *pipeEcho {
	b.Helper()
	cmd := exec.Command(binary(b, "pipeecho"))
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	p := &pipeEcho{cmd: cmd, in: in, out: out}
	b.Cleanup(func() { in.Close(); cmd.Wait() })
	return p
}

func (p *pipeEcho) roundTrip(buf []byte) error {
	if _, err := p.in.Write(buf); err != nil {
		return err
	}
	_, err := io.ReadFull(p.out, buf)
	return err
}

// BenchmarkColdStart starts a plugin, makes the first call and stops it.
func BenchmarkColdStart(b *testing.B) {
	b.Run("Goplugins", func(b *testing.B) {
		for b.Loop() {
			m, closeAll := startGoplugins(b, nil)
			if _, err := m.Execute(context.Background(), "echo", msg64); err != nil {
				b.Fatal(err)
			}
			closeAll()
		}
	})
	b.Run("GoPluginGRPC", func(b *testing.B) {
		for b.Loop() {
			echo, kill := startGoPlugin(b)
			if _, err := echo.Echo(context.Background(), []byte(msg64)); err != nil {
				b.Fatal(err)
			}
			kill()
		}
	})
}

func startGoplugins(b *testing.B, env map[string]string) (*goplugins.Manager[string, string], func()) {
	b.Helper()
	ctx := context.Background()
	p, err := goplugins.NewSubprocess[string, string](ctx, goplugins.SubprocessConfig{
		Name: "echo", Command: binary(b, "gpecho"), Logger: slog.New(slog.DiscardHandler), Env: env,
	})
	if err != nil {
		b.Fatal(err)
	}
	m := goplugins.NewManager[string, string](goplugins.WithPluginDefaults(goplugins.WithHealthCheck(goplugins.HealthConfig{Interval: -1})))
	if err := m.Register(p); err != nil {
		b.Fatal(err)
	}
	return m, func() { m.Shutdown(ctx) }
}

func startGoPlugin(b *testing.B) (shared.Echoer, func()) {
	b.Helper()
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  shared.Handshake,
		Plugins:          plugin.PluginSet{"echo": &shared.EchoPlugin{}},
		Cmd:              exec.Command(binary(b, "hcecho")),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           hclog.NewNullLogger(),
	})
	rpc, err := client.Client()
	if err != nil {
		client.Kill()
		b.Fatal(err)
	}
	raw, err := rpc.Dispense("echo")
	if err != nil {
		client.Kill()
		b.Fatal(err)
	}
	return raw.(shared.Echoer), client.Kill
}
