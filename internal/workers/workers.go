// Package workers runs functions on goroutines that park between them, so
// that a function starts on a goroutine whose stack has grown already
// rather than on a new one (which spends its first microseconds growing
// its stack).
package workers

import "sync/atomic"

// Pool runs functions on parked goroutines, starting one when none waits.
// At most Max goroutines park; the others exit when their function
// returns. The zero value is not usable: make one with New.
type Pool struct {
	work chan func()
	quit chan struct{}
	max  int32
	idle atomic.Int32
}

// New returns a pool that keeps at most max goroutines parked.
func New(max int) *Pool {
	return &Pool{work: make(chan func()), quit: make(chan struct{}), max: int32(max)}
}

// Go runs fn on a parked goroutine, or on a new one if none is parked. It
// never waits.
func (p *Pool) Go(fn func()) {
	select {
	case p.work <- fn: // a parked goroutine took it
	default:
		go p.run(fn)
	}
}

// Close makes the parked goroutines exit, and those running exit when
// their function returns. Go after Close still runs its function.
func (p *Pool) Close() { close(p.quit) }

func (p *Pool) run(fn func()) {
	for {
		fn()
		if p.idle.Add(1) > p.max {
			p.idle.Add(-1)
			return
		}
		select {
		case fn = <-p.work:
			p.idle.Add(-1)
		case <-p.quit:
			p.idle.Add(-1)
			return
		}
	}
}
