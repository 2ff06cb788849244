// Command hostcall is the test plugin of transport_subprocess_hostcall_test.go:
// an sdk plugin (protocol version 2) whose requests call the host.
//
//	call  calls host function Func with Data within the request
//	bg    has its background goroutine (sdk.WithBackground) call Func
//	      with Data outside any request
//	wait  calls Func within the request and, when that call fails, prints
//	      "host call returned: <code> ctx=<whether the error matches
//	      context.Canceled or DeadlineExceeded>" to stderr
//	meta  returns the request's metadata under Key
//
// A failed host call is answered with Response{Code, Is}: the error's code
// and the sdk sentinels it matches. HOSTCALL_MAX_FRAME sets the plugin's
// maximum frame size.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"

	"github.com/goplugins/goplugins/sdk"
)

type Request struct {
	Op   string `json:"op"`
	Func string `json:"func,omitempty"`
	Data string `json:"data,omitempty"`
	Key  string `json:"key,omitempty"`
}

type Response struct {
	Data string   `json:"data,omitempty"`
	Code string   `json:"code,omitempty"`
	Is   []string `json:"is,omitempty"`
}

var sentinels = []struct {
	name string
	err  error
}{
	{"ErrNotGranted", sdk.ErrNotGranted}, {"ErrOverloaded", sdk.ErrOverloaded},
	{"ErrTimeout", sdk.ErrTimeout}, {"ErrCanceled", sdk.ErrCanceled}, {"ErrPanic", sdk.ErrPanic},
	{"ErrShuttingDown", sdk.ErrShuttingDown}, {"ErrBadRequest", sdk.ErrBadRequest},
	{"ErrFrameTooLarge", sdk.ErrFrameTooLarge}, {"ErrUnsupported", sdk.ErrUnsupported},
	{"ErrHostFunc", sdk.ErrHostFunc},
}

// failed describes a host call's error.
func failed(err error) Response {
	var r Response
	var e *sdk.Error
	if errors.As(err, &e) {
		r.Code = e.Code
	}
	for _, s := range sentinels {
		if errors.Is(err, s.err) {
			r.Is = append(r.Is, s.name)
		}
	}
	return r
}

type job struct {
	req   Request
	reply chan Response
}

type plugin struct{ jobs chan job }

func (p plugin) Execute(ctx context.Context, req Request) (Response, error) {
	switch req.Op {
	case "call", "wait":
		out, err := sdk.CallHost[string, string](ctx, req.Func, req.Data)
		if err != nil {
			if req.Op == "wait" {
				fmt.Fprintf(os.Stderr, "host call returned: %s ctx=%v\n", failed(err).Code, errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded))
			}
			return failed(err), nil
		}
		return Response{Data: out}, nil
	case "bg":
		j := job{req: req, reply: make(chan Response, 1)}
		p.jobs <- j
		return <-j.reply, nil
	case "meta":
		return Response{Data: sdk.Metadata(ctx)[req.Key]}, nil
	}
	return Response{}, sdk.Errorf("bad_op", false, "unknown op %q", req.Op)
}

// background serves the "bg" jobs with the background ctx.
func (p plugin) background(ctx context.Context) {
	for {
		select {
		case j := <-p.jobs:
			out, err := sdk.CallHost[string, string](ctx, j.req.Func, j.req.Data)
			if err != nil {
				j.reply <- failed(err)
				continue
			}
			j.reply <- Response{Data: out}
		case <-ctx.Done():
			return
		}
	}
}

func main() {
	p := plugin{jobs: make(chan job)}
	opts := []sdk.Option{sdk.WithBackground(p.background)}
	if n, err := strconv.Atoi(os.Getenv("HOSTCALL_MAX_FRAME")); err == nil {
		opts = append(opts, sdk.WithMaxFrameSize(n))
	}
	if err := sdk.Serve[Request, Response](p, sdk.Info{Name: "hostcall", Version: "1.0.0"}, opts...); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
