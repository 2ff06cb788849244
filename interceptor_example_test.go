package goplugins_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/goplugins/goplugins"
)

type userKey struct{}

// Two interceptors: the first (outermost) logs every operation with its
// outcome, the second refuses calls without a user in the ctx before they
// reach the plugin.
func ExampleWithInterceptors() {
	logCalls := func(ctx context.Context, c *goplugins.Call, next goplugins.Handler) error {
		err := next(ctx)
		if rep, ok := c.Response.(goplugins.ReloadReport); ok {
			fmt.Printf("%s %s %s -> %s (generation %d): error %v\n", c.Kind, c.Plugin, rep.From, rep.To, c.Generation, err)
			return err
		}
		fmt.Printf("%s %s v%s (generation %d): response %v, error %v\n", c.Kind, c.Plugin, c.Version, c.Generation, c.Response, err)
		return err
	}
	errNoUser := errors.New("no user in the request's ctx")
	requireUser := func(ctx context.Context, c *goplugins.Call, next goplugins.Handler) error {
		if c.Kind == goplugins.CallExecute && ctx.Value(userKey{}) == nil {
			return errNoUser
		}
		return next(ctx)
	}
	m := goplugins.NewManager[string, string](goplugins.WithInterceptors(logCalls, requireUser))
	defer m.Shutdown(context.Background())
	if err := m.Register(upper{version: "1.0.0"}); err != nil {
		fmt.Println(err)
		return
	}

	_, _ = m.Execute(context.Background(), "upper", "anonymous")
	_, _ = m.Execute(context.WithValue(context.Background(), userKey{}, "ada"), "upper", "hello")
	_, _ = m.Reload(context.Background(), "upper", upper{version: "1.1.0"})
	// Output:
	// execute upper v1.0.0 (generation 1): response <nil>, error no user in the request's ctx
	// execute upper v1.0.0 (generation 1): response HELLO, error <nil>
	// reload upper 1.0.0 -> 1.1.0 (generation 2): error <nil>
}
