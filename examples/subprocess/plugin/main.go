// Command plugin is the subprocess example's plugin, "hasher": it answers
// with the SHA-256 of the text it is sent, logs to stderr (the lines reach
// the host's logger), and exits on request to show the host restarting it.
// It is started by a goplugins host; run by hand it says so and exits.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"

	"github.com/goplugins/goplugins/sdk"
)

// Request carries the text to hash; Crash makes the process exit instead.
type Request struct {
	Text  string `json:"text"`
	Crash bool   `json:"crash,omitempty"`
}

// Response is the hash, with the process id that computed it.
type Response struct {
	SHA256 string `json:"sha256"`
	PID    int    `json:"pid"`
}

type hasher struct{ log *slog.Logger }

func (h hasher) Execute(_ context.Context, req Request) (Response, error) {
	if req.Crash {
		h.log.Error("crashing on request")
		os.Exit(3)
	}
	if req.Text == "" {
		return Response{}, sdk.Errorf("empty", false, "nothing to hash: send a non-empty text")
	}
	sum := sha256.Sum256([]byte(req.Text))
	return Response{SHA256: hex.EncodeToString(sum[:]), PID: os.Getpid()}, nil
}

func main() {
	// JSON lines on stderr keep their level in the host's log.
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	log.Info("hasher starting", "pid", os.Getpid())
	if err := sdk.Serve[Request, Response](hasher{log: log}, sdk.Info{Name: "hasher", Version: "1.0.0"}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
