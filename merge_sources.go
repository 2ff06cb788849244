package goplugins

import (
	"slices"
	"strings"
	"sync"
)

// MergeSources combines manifest sources (say, a DiscoveryEngine and a
// ConfigWatcher) into one for a DynamicLoader. When two sources offer the
// same plugin name the earlier source in the list wins; the later one is
// reported as DiscoveryInvalid (matching ErrInvalidManifest) while it is
// shadowed, and takes over if the earlier one removes the plugin. Events
// keep each source's order; the merged channel is closed once every
// source's channel is closed. Start the sources before merging them: the
// merge takes their Manifests as they are then.
func MergeSources(sources ...ManifestSource) ManifestSource {
	ms := &mergedSource{
		sources: sources,
		offered: make([]map[string]*Manifest, len(sources)),
		owner:   map[string]int{},
		out:     make(chan DiscoveryEvent),
	}
	for i, s := range sources {
		ms.offered[i] = map[string]*Manifest{}
		for _, mf := range s.Manifests() {
			ms.offered[i][mf.Name] = mf
			if _, ok := ms.owner[mf.Name]; !ok {
				ms.owner[mf.Name] = i
			}
		}
	}
	in := make(chan sourced)
	var wg sync.WaitGroup
	for i, s := range sources {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ev := range s.Events() {
				in <- sourced{i, ev}
			}
		}()
	}
	go func() {
		wg.Wait()
		close(in)
	}()
	go ms.run(in)
	return ms
}

type sourced struct {
	src int
	ev  DiscoveryEvent
}

type mergedSource struct {
	sources []ManifestSource
	out     chan DiscoveryEvent

	mu      sync.Mutex
	offered []map[string]*Manifest // what each source offers now
	owner   map[string]int         // which source a name is taken from
}

func (ms *mergedSource) Events() <-chan DiscoveryEvent { return ms.out }

func (ms *mergedSource) Manifests() []*Manifest {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	out := make([]*Manifest, 0, len(ms.owner))
	for name, i := range ms.owner {
		out = append(out, ms.offered[i][name])
	}
	slices.SortFunc(out, func(a, b *Manifest) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// run forwards translated events; a queue keeps sources from waiting on a
// slow consumer more than on each other.
func (ms *mergedSource) run(in <-chan sourced) {
	defer close(ms.out)
	var queue []DiscoveryEvent
	for in != nil || len(queue) > 0 {
		var out chan DiscoveryEvent
		var next DiscoveryEvent
		if len(queue) > 0 {
			out, next = ms.out, queue[0]
		}
		select {
		case s, ok := <-in:
			if !ok {
				in = nil
				continue
			}
			queue = append(queue, ms.translate(s.src, s.ev)...)
		case out <- next:
			queue = queue[1:]
		}
	}
}

// translate applies one source's event and returns the merged events.
func (ms *mergedSource) translate(src int, ev DiscoveryEvent) []DiscoveryEvent {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	name := ev.Name
	switch ev.Kind {
	case DiscoveryAdded, DiscoveryUpdated:
		ms.offered[src][name] = ev.Manifest
		owner, taken := ms.owner[name]
		switch {
		case !taken:
			ms.owner[name] = src
			return []DiscoveryEvent{{Kind: DiscoveryAdded, Name: name, Path: ev.Path, Manifest: ev.Manifest}}
		case owner == src:
			return []DiscoveryEvent{ev}
		case src < owner:
			ms.owner[name] = src
			return []DiscoveryEvent{{Kind: DiscoveryUpdated, Name: name, Path: ev.Path, Manifest: ev.Manifest},
				ms.shadowed(owner, name)}
		default:
			return []DiscoveryEvent{ms.shadowed(src, name)}
		}
	case DiscoveryRemoved:
		delete(ms.offered[src], name)
		if owner, ok := ms.owner[name]; !ok || owner != src {
			return nil
		}
		if takeover, ok := ms.release(name); ok {
			return []DiscoveryEvent{takeover}
		}
		return []DiscoveryEvent{ev}
	default:
		if ev.Kind != DiscoveryInvalid || ev.Manifest == nil {
			return []DiscoveryEvent{ev}
		}
		// The source dropped a plugin that turned invalid; another source
		// offering it takes over.
		delete(ms.offered[src], name)
		if owner, ok := ms.owner[name]; !ok || owner != src {
			return []DiscoveryEvent{ev}
		}
		if takeover, ok := ms.release(name); ok {
			return []DiscoveryEvent{ev, takeover}
		}
		return []DiscoveryEvent{ev}
	}
}

// release gives up the current owner's claim on name; the first other
// source offering it takes over, reported as an update.
func (ms *mergedSource) release(name string) (DiscoveryEvent, bool) {
	delete(ms.owner, name)
	for i := range ms.offered {
		if mf, ok := ms.offered[i][name]; ok {
			ms.owner[name] = i
			return DiscoveryEvent{Kind: DiscoveryUpdated, Name: name, Path: mf.Path, Manifest: mf}, true
		}
	}
	return DiscoveryEvent{}, false
}

// shadowed reports source src's manifest for name as not in use.
func (ms *mergedSource) shadowed(src int, name string) DiscoveryEvent {
	mf := ms.offered[src][name]
	winner := ms.offered[ms.owner[name]][name]
	return DiscoveryEvent{Kind: DiscoveryInvalid, Name: name, Path: mf.Path,
		Err: newError(codeInvalidManifest, name, "manifest %s is not used: %s offers the same plugin and comes first", mf.Path, winner.Path)}
}
