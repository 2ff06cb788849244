package goplugins

import (
	"context"
	"time"
)

// HealthStatus is a plugin's health as the manager last saw it.
type HealthStatus int32

// Health statuses.
const (
	// HealthUnknown: no check has run yet. Calls flow.
	HealthUnknown HealthStatus = iota
	// HealthHealthy: the last check passed.
	HealthHealthy
	// HealthDegraded: the last check failed, fewer than UnhealthyAfter in a
	// row. Calls flow.
	HealthDegraded
	// HealthUnhealthy: UnhealthyAfter checks in a row failed. Calls fail
	// fast with ErrUnhealthy until a check passes.
	HealthUnhealthy
)

// String returns "unknown", "healthy", "degraded" or "unhealthy".
func (s HealthStatus) String() string {
	switch s {
	case HealthHealthy:
		return "healthy"
	case HealthDegraded:
		return "degraded"
	case HealthUnhealthy:
		return "unhealthy"
	}
	return "unknown"
}

// HealthConfig configures a plugin's health checks.
type HealthConfig struct {
	// Interval between periodic checks. Default 10s; negative turns
	// periodic checks off (Manager.Health still checks on demand).
	Interval time.Duration
	// Timeout bounds one check. Default 2s.
	Timeout time.Duration
	// UnhealthyAfter is how many failed checks in a row make a plugin
	// Unhealthy. Default 3.
	UnhealthyAfter int
}

func (c HealthConfig) withDefaults() HealthConfig {
	if c.Interval == 0 {
		c.Interval = 10 * time.Second
	}
	if c.Timeout <= 0 {
		c.Timeout = 2 * time.Second
	}
	if c.UnhealthyAfter <= 0 {
		c.UnhealthyAfter = 3
	}
	return c
}

// HealthReport is the outcome of a plugin's latest health check.
type HealthReport struct {
	// Plugin is the plugin's name.
	Plugin string
	// Status is the plugin's health after the check.
	Status HealthStatus
	// Err is the error of the latest failed check; nil when healthy.
	Err error
	// Failures is the number of failed checks in a row.
	Failures int
	// Checked is when the latest check finished; zero before the first.
	Checked time.Time
}

// checkHealth runs one health check on the plugin's current generation and
// books the outcome. A check that ctx (the caller's) ended is not an
// outcome: it is not booked, and the report is the last one, with Err
// matching ErrCanceled. A check that passes the health timeout fails with
// ErrTimeout.
func (e *entry[Req, Resp]) checkHealth(ctx context.Context) HealthReport {
	g := e.gen.Load()
	if g == nil {
		return e.healthReport()
	}
	tctx, cancel := context.WithTimeout(ctx, e.cfg.health.Timeout)
	defer cancel()
	err := g.health(tctx, e.name)
	if err != nil && isCanceled(tctx, err) {
		if ctx.Err() != nil {
			r := e.healthReport()
			r.Err = canceledError(ctx, e.name)
			return r
		}
		err = wrapError(err, codeTimeout, e.name,
			"the health check did not return within its timeout of %v; the plugin's Health must honour its ctx", e.cfg.health.Timeout)
	}

	e.healthMu.Lock()
	defer e.healthMu.Unlock()
	if e.gen.Load() != g {
		// The plugin was swapped during the check: the result is the old
		// plugin's, not the one serving now. (The swap holds healthMu.)
		r := e.healthState
		r.Plugin = e.name
		return r
	}
	prev := e.healthState.Status
	r := HealthReport{Plugin: e.name, Checked: time.Now()}
	if err == nil {
		r.Status = HealthHealthy
	} else {
		r.Err = err
		r.Failures = e.healthState.Failures + 1
		r.Status = HealthDegraded
		if r.Failures >= e.cfg.health.UnhealthyAfter {
			r.Status = HealthUnhealthy
		}
	}
	e.healthState = r
	e.unhealthy.Store(r.Status == HealthUnhealthy)
	if r.Status != prev { // under healthMu: health events follow the changes
		e.m.emit(Event{Kind: EventHealthChanged, Plugin: e.name, Health: r.Status, Err: err})
	}
	return r
}

func (e *entry[Req, Resp]) healthReport() HealthReport {
	e.healthMu.Lock()
	defer e.healthMu.Unlock()
	r := e.healthState
	r.Plugin = e.name
	return r
}

// healthLoop checks the plugin every Interval until ctx is done.
func (e *entry[Req, Resp]) healthLoop(ctx context.Context) {
	t := time.NewTicker(e.cfg.health.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			e.checkHealth(ctx)
		}
	}
}
