package goplugins

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkDiscoveryScan1k scans and validates 1,000 plugin folders, each
// with a plugin.json. Budget: 20 ms/op.
func BenchmarkDiscoveryScan1k(b *testing.B) {
	root := b.TempDir()
	for i := range 1000 {
		dir := filepath.Join(root, fmt.Sprintf("plugin-%04d", i))
		if err := os.Mkdir(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		data := fmt.Sprintf(`{
  "name": "plugin-%04d",
  "version": "1.%d.0",
  "description": "benchmark plugin",
  "transport": "subprocess",
  "command": "./bin/plugin",
  "args": ["--serve"],
  "env": {"MODE": "bench"},
  "checksum": "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
  "requires": {"host": ">=1.2.0, <2.0.0", "protocol": 1},
  "dependencies": {"logging": "^1.0.0", "metrics": {"version": "~2.1", "optional": true}},
  "surfaces": ["state"],
  "timeout": "5s",
  "health": {"interval": "10s", "timeout": "2s"},
  "restart": {"max_attempts": 5, "backoff": "100ms", "max_backoff": "10s"}
}`, i, i%50)
		if err := os.WriteFile(filepath.Join(dir, "plugin.json"), []byte(data), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	e, err := NewDiscoveryEngine(DiscoveryConfig{Roots: []string{root}})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		res, err := e.Scan(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if len(res.Manifests) != 1000 || len(res.Invalid) != 0 {
			b.Fatalf("scan found %d valid and %d invalid manifests, want 1000 and 0", len(res.Manifests), len(res.Invalid))
		}
	}
}
