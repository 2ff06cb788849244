package goplugins

import (
	"bytes"
	"log/slog"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// EventKind says what an Event reports.
type EventKind int

// Event kinds.
const (
	// EventRegistered: Register added the plugin.
	EventRegistered EventKind = iota + 1
	// EventUnregistered: the plugin was removed (by Unregister or
	// Shutdown) and closed; Err is Close's error, if any.
	EventUnregistered
	// EventBreakerOpened: the circuit breaker opened; calls are rejected.
	EventBreakerOpened
	// EventBreakerHalfOpen: the breaker's open timeout passed; probes run.
	EventBreakerHalfOpen
	// EventBreakerClosed: the probes succeeded; calls flow again.
	EventBreakerClosed
	// EventHealthChanged: the plugin's health status changed (see Health).
	EventHealthChanged
	// EventReloaded: a Reload committed; Reload carries its report.
	EventReloaded
	// EventReloadFailed: a Reload failed and the old plugin serves on;
	// Err is the *ReloadError and Reload its report.
	EventReloadFailed
	// EventPending: the DynamicLoader is waiting for a plugin's dependency.
	EventPending
	// EventLoadFailed: the DynamicLoader could not load a plugin.
	EventLoadFailed
	// EventCrashed: the plugin's child process ended unexpectedly; Err says
	// how. It is restarted as its RestartPolicy says.
	EventCrashed
	// EventRestarted: a new child process serves; Attempt is its number.
	EventRestarted
	// EventRestartFailed: a restart attempt failed; Err says why.
	EventRestartFailed
	// EventLeftDown: the RestartPolicy allows no more attempts; the plugin
	// stays down until it is reloaded or unregistered.
	EventLeftDown
	// EventHostCallRefused: the plugin called a host function it may not
	// call (see WithGrants); HostFunc names it and Err says why.
	EventHostCallRefused
)

var eventKindNames = [...]string{
	EventRegistered:      "registered",
	EventUnregistered:    "unregistered",
	EventBreakerOpened:   "breaker-opened",
	EventBreakerHalfOpen: "breaker-half-open",
	EventBreakerClosed:   "breaker-closed",
	EventHealthChanged:   "health-changed",
	EventReloaded:        "reloaded",
	EventReloadFailed:    "reload-failed",
	EventPending:         "pending",
	EventLoadFailed:      "load-failed",
	EventCrashed:         "crashed",
	EventRestarted:       "restarted",
	EventRestartFailed:   "restart-failed",
	EventLeftDown:        "left-down",
	EventHostCallRefused: "host-call-refused",
}

// String returns the kind's name, such as "breaker-opened".
func (k EventKind) String() string {
	if k > 0 && int(k) < len(eventKindNames) {
		return eventKindNames[k]
	}
	return "unknown"
}

// Event reports something that happened to a plugin.
type Event struct {
	// Kind says what happened.
	Kind EventKind
	// Plugin is the name of the plugin it happened to.
	Plugin string
	// Time is when it happened.
	Time time.Time
	// Seq numbers the manager's events from 1 in the order of the changes
	// they report; every subscriber receives them in that order (with gaps
	// where its buffer was full).
	Seq uint64
	// Version is the plugin's version, for registered, unregistered and
	// reload events (the new version after a reload).
	Version string
	// Health is the new status, for EventHealthChanged.
	Health HealthStatus
	// Err is the cause, for failed health checks, failed reloads, crashes,
	// failed restarts and EventLeftDown.
	Err error
	// Attempt is the consecutive restart attempt (from 1) of
	// EventRestarted and EventRestartFailed, and the number of attempts
	// made for EventCrashed and EventLeftDown.
	Attempt int
	// Reload is the report of EventReloaded and EventReloadFailed.
	Reload *ReloadReport
	// HostFunc is the host function of EventHostCallRefused.
	HostFunc string
}

// subscriber delivers events to one callback from its own goroutine, so a
// slow callback delays only itself.
type subscriber struct {
	fn        func(Event)
	queue     chan Event
	gid       atomic.Uint64 // the delivering goroutine, for Shutdown from fn
	cancelled atomic.Bool   // cancel was called: queued events are dropped
	doneOnce  sync.Once
	done      chan struct{} // delivery ended, or fn called Shutdown
}

func (s *subscriber) run(log *slog.Logger) {
	defer s.finish()
	s.gid.Store(goroutineID())
	for ev := range s.queue {
		if s.cancelled.Load() {
			return
		}
		s.deliver(ev, log)
	}
}

func (s *subscriber) finish() { s.doneOnce.Do(func() { close(s.done) }) }

// stopped is closed once the subscriber delivered what was queued, or its
// callback called Shutdown (which then must not wait for it).
func (s *subscriber) stopped() <-chan struct{} { return s.done }

func (s *subscriber) deliver(ev Event, log *slog.Logger) {
	defer func() {
		if r := recover(); r != nil {
			log.Error("goplugins: event subscriber panicked", "event", ev.Kind.String(), "plugin", ev.Plugin, "panic", r)
		}
	}()
	s.fn(ev)
}

// eventBus fans events out to subscribers without ever blocking the sender.
// emit holds mu while it queues, and numbers the event: every subscriber
// sees the events in one order, the order of the emits. A sender that emits
// while holding the lock that orders its change makes the events follow
// the changes.
type eventBus struct {
	log     *slog.Logger
	buffer  int
	dropped atomic.Uint64

	mu     sync.Mutex
	seq    uint64
	subs   map[*subscriber]struct{}
	closed []*subscriber // the subscribers when close ran; nil before
	isDone bool
}

func (b *eventBus) subscribe(fn func(Event)) (cancel func()) {
	s := &subscriber{fn: fn, queue: make(chan Event, b.buffer), done: make(chan struct{})}
	b.mu.Lock()
	if b.isDone {
		b.mu.Unlock()
		return func() {}
	}
	if b.subs == nil {
		b.subs = make(map[*subscriber]struct{})
	}
	b.subs[s] = struct{}{}
	b.mu.Unlock()
	go s.run(b.log)
	var once sync.Once
	return func() {
		once.Do(func() {
			s.cancelled.Store(true)
			b.mu.Lock()
			_, ok := b.subs[s]
			delete(b.subs, s)
			b.mu.Unlock()
			if ok {
				close(s.queue)
			}
		})
	}
}

func (b *eventBus) emit(ev Event) {
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seq++
	ev.Seq = b.seq
	for s := range b.subs {
		select {
		case s.queue <- ev:
		default:
			b.dropped.Add(1)
		}
	}
}

// close stops accepting events and returns the subscribers, each stopped
// once it has delivered what was queued. Later calls return the same.
func (b *eventBus) close() []*subscriber {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.isDone {
		b.isDone = true
		for s := range b.subs {
			close(s.queue)
			b.closed = append(b.closed, s)
		}
		b.subs = nil
	}
	return b.closed
}

// reentered returns the subscriber whose callback runs on goroutine gid
// (a callback calling Shutdown), marked stopped; nil if there is none.
func (b *eventBus) reentered(gid uint64) *subscriber {
	b.mu.Lock()
	defer b.mu.Unlock()
	for s := range b.subs {
		if s.gid.Load() == gid {
			s.finish()
			return s
		}
	}
	for _, s := range b.closed {
		if s.gid.Load() == gid {
			s.finish()
			return s
		}
	}
	return nil
}

// goroutineID returns the running goroutine's number, read from its stack
// header ("goroutine 42 [running]:"). Only Shutdown and a subscriber's start
// call it.
func goroutineID() uint64 {
	var buf [64]byte
	b := buf[:runtime.Stack(buf[:], false)]
	b = bytes.TrimPrefix(b, []byte("goroutine "))
	if i := bytes.IndexByte(b, ' '); i > 0 {
		b = b[:i]
	}
	id, _ := strconv.ParseUint(string(b), 10, 64)
	return id
}
