// Command plugin is the quickstart's plugin, "wordcount": it counts the
// words it is sent. Its counts are its state (reload surface "state"), so a
// hot-swapped version carries on counting where the old one stopped.
//
// The quickstart builds it twice, the second time with
// -ldflags "-X main.version=2.0.0". It is started by a goplugins host; run
// by hand it says so and exits.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sync"

	"github.com/goplugins/goplugins/sdk"
)

// version is set at build time.
var version = "1.0.0"

// Request asks the plugin to count Word; an empty Word only reads the totals.
type Request struct {
	Word string `json:"word,omitempty"`
}

// Response reports how often Word was seen, how many words were counted in
// all (across versions), and which version answered.
type Response struct {
	Count    int    `json:"count"`
	Total    int    `json:"total"`
	Version  string `json:"version"`
	Restored string `json:"restored,omitempty"` // the version the state came from
}

// state is what PersistState hands to the next version.
type state struct {
	Counts map[string]int `json:"counts"`
	Total  int            `json:"total"`
	From   string         `json:"from"`
}

type wordcount struct {
	mu       sync.Mutex
	counts   map[string]int
	total    int
	restored string
}

func (w *wordcount) Execute(_ context.Context, req Request) (Response, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if req.Word != "" {
		w.counts[req.Word]++
		w.total++
	}
	return Response{Count: w.counts[req.Word], Total: w.total, Version: version, Restored: w.restored}, nil
}

// PersistState returns the counts without changing them.
func (w *wordcount) PersistState(context.Context) ([]byte, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return json.Marshal(state{Counts: w.counts, Total: w.total, From: version})
}

// RestoreState takes over the counts of an older version.
func (w *wordcount) RestoreState(_ context.Context, b []byte) error {
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return sdk.Errorf("bad_state", false, "wordcount %s cannot read the state handed over: %v", version, err)
	}
	if st.Counts == nil {
		st.Counts = make(map[string]int)
	}
	w.mu.Lock()
	w.counts, w.total, w.restored = st.Counts, st.Total, st.From
	w.mu.Unlock()
	return nil
}

func main() {
	w := &wordcount{counts: make(map[string]int)}
	info := sdk.Info{Name: "wordcount", Version: version, Description: "counts words; its counts survive a hot swap"}
	if err := sdk.Serve[Request, Response](w, info); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
