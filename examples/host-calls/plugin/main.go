// Command plugin is the "notes" plugin of examples/host-calls: it keeps
// nothing itself and stores its notes in the host's key-value store
// through host calls (sdk.CallHost).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/goplugins/goplugins/sdk"
)

// Request and Response mirror the host's types.
type Request struct {
	Op    string `json:"op"` // "put", "get" or "reset"
	Key   string `json:"key,omitempty"`
	Value string `json:"value,omitempty"`
}

type Response struct {
	Value string `json:"value,omitempty"`
}

// entry is the request of the host function kv.put.
type entry struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

type notes struct{}

func (notes) Execute(ctx context.Context, req Request) (Response, error) {
	switch req.Op {
	case "put":
		_, err := sdk.CallHost[entry, struct{}](ctx, "kv.put", entry{Key: req.Key, Value: req.Value})
		return Response{}, err
	case "get":
		v, err := sdk.CallHost[string, string](ctx, "kv.get", req.Key)
		return Response{Value: v}, err
	case "reset":
		// The host offers admin.reset but did not grant it to this plugin.
		_, err := sdk.CallHost[struct{}, struct{}](ctx, "admin.reset", struct{}{})
		if errors.Is(err, sdk.ErrNotGranted) {
			return Response{}, sdk.Errorf("refused", false, "the host refused admin.reset: %v", err)
		}
		return Response{}, err
	}
	return Response{}, sdk.Errorf("bad_op", false, "unknown op %q", req.Op)
}

func main() {
	if err := sdk.Serve[Request, Response](notes{}, sdk.Info{Name: "notes", Version: "1.0.0"}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
