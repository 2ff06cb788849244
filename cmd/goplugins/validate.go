package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/goplugins/goplugins"
)

// problem is one thing wrong with a file: the field it is about ("" when
// it is about the whole file) and why.
type problem struct {
	Field  string `json:"field"`
	Reason string `json:"reason"`
}

// fileReport is what validate says about one manifest file.
type fileReport struct {
	File      string    `json:"file"`
	Name      string    `json:"name,omitempty"`
	Version   string    `json:"version,omitempty"`
	Transport string    `json:"transport,omitempty"`
	Valid     bool      `json:"valid"`
	Problems  []problem `json:"problems"`
}

type validateReport struct {
	Roots   []string     `json:"roots"`
	Files   []fileReport `json:"files"`
	Valid   int          `json:"valid"`
	Invalid int          `json:"invalid"`
}

// scanFlags are the discovery settings validate and graph share.
type scanFlags struct {
	depth          int
	followSymlinks bool
	allowOutside   bool
}

func (s *scanFlags) add(fs *flag.FlagSet) {
	fs.IntVar(&s.depth, "depth", 2, "how many folder levels below a root are searched for manifests")
	fs.BoolVar(&s.followSymlinks, "follow-symlinks", false, "follow symbolic links that stay inside the root")
	fs.BoolVar(&s.allowOutside, "allow-outside", false, "let command and TLS paths leave their plugin folder")
}

// scan runs one discovery scan of roots.
func (s *scanFlags) scan(roots []string) (goplugins.ScanResult, error) {
	e, err := goplugins.NewDiscoveryEngine(goplugins.DiscoveryConfig{
		Roots: roots, MaxDepth: s.depth, FollowSymlinks: s.followSymlinks, AllowOutside: s.allowOutside,
	})
	if err != nil {
		return goplugins.ScanResult{}, err
	}
	defer e.Close()
	return e.Scan(context.Background())
}

func runValidate(env *cli, args []string) int {
	fs := env.newFlags("validate", "[flags] DIR...",
		"Checks every plugin manifest (plugin.json, plugin.yaml, plugin.yml) under the folders and\n"+
			"prints each problem as file, field and reason: the library's validation, plus the\n"+
			"command's file (present, executable, matching its checksum). Exit 1 if a manifest is\n"+
			"invalid or no manifest is found.")
	asJSON := fs.Bool("json", false, "print one JSON document")
	var sf scanFlags
	sf.add(fs)
	roots, code, ok := parse(fs, args, false)
	if !ok {
		return code
	}
	if len(roots) == 0 {
		return env.usageError("validate", "give at least one folder")
	}
	res, err := sf.scan(roots)
	if err != nil {
		return env.fail("validate", exitCannot, err)
	}
	rep := validateReport{Roots: roots, Files: []fileReport{}}
	for _, m := range res.Manifests {
		f := fileReport{File: m.Path, Name: m.Name, Version: m.Version, Transport: m.Transport, Problems: commandProblems(m)}
		rep.Files = append(rep.Files, f)
	}
	for _, p := range res.Invalid {
		rep.Files = append(rep.Files, fileReport{File: p.Path, Name: p.Name, Problems: manifestProblems(p.Err, p.Path)})
	}
	slices.SortFunc(rep.Files, func(a, b fileReport) int { return strings.Compare(a.File, b.File) })
	for i := range rep.Files {
		if rep.Files[i].Problems == nil {
			rep.Files[i].Problems = []problem{}
		}
		if rep.Files[i].Valid = len(rep.Files[i].Problems) == 0; rep.Files[i].Valid {
			rep.Valid++
		} else {
			rep.Invalid++
		}
	}
	if *asJSON {
		env.writeJSON(rep)
	} else {
		printValidate(env.stdout, rep)
	}
	if rep.Invalid > 0 || len(rep.Files) == 0 {
		return exitProblems
	}
	return exitOK
}

func printValidate(w io.Writer, rep validateReport) {
	for _, f := range rep.Files {
		if f.Valid {
			fmt.Fprintf(w, "%s: ok (%s %s, %s)\n", f.File, f.Name, f.Version, f.Transport)
			continue
		}
		for _, p := range f.Problems {
			if p.Field == "" {
				fmt.Fprintf(w, "%s: %s\n", f.File, p.Reason)
			} else {
				fmt.Fprintf(w, "%s: %s: %s\n", f.File, p.Field, p.Reason)
			}
		}
	}
	if len(rep.Files) == 0 {
		fmt.Fprintf(w, "no manifest found under %s\n", strings.Join(rep.Roots, ", "))
		return
	}
	fmt.Fprintf(w, "%d valid, %d invalid\n", rep.Valid, rep.Invalid)
}

// manifestProblems returns the problems of the manifest file at path that
// err reports, each with its field (see goplugins.ManifestProblems); the
// file's own name is left out of a reason, as the report names it.
func manifestProblems(err error, path string) []problem {
	ps := goplugins.ManifestProblems(err)
	if ps == nil {
		ps = []goplugins.ManifestProblem{{Reason: err.Error()}}
	}
	out := make([]problem, len(ps))
	for i, p := range ps {
		reason := p.Reason
		for _, head := range []string{"manifest " + path + ": ", "manifest " + path + " does not parse: "} {
			if rest, ok := strings.CutPrefix(reason, head); ok {
				reason = rest
				break
			}
		}
		out[i] = problem{Field: p.Field, Reason: reason}
	}
	return out
}

// commandProblems checks the file a valid manifest's command names: that
// it is there, is an executable regular file and, when the manifest has a
// checksum, has that digest. These are what a host would find when it
// starts the plugin.
func commandProblems(m *goplugins.Manifest) []problem {
	if m.Command == "" {
		return nil
	}
	fi, err := os.Stat(m.Command)
	switch {
	case err != nil:
		return []problem{{"command", fmt.Sprintf("%s cannot be used: %v; build or install the plugin program there", m.Command, errors.Unwrap(err))}}
	case !fi.Mode().IsRegular():
		return []problem{{"command", fmt.Sprintf("%s is not a regular file", m.Command)}}
	case fi.Mode().Perm()&0o111 == 0:
		return []problem{{"command", fmt.Sprintf("%s is not executable; chmod +x it", m.Command)}}
	}
	if m.Checksum == "" {
		return nil
	}
	sum, err := fileChecksum(m.Command)
	if err != nil {
		return []problem{{"checksum", err.Error()}}
	}
	if sum != m.Checksum {
		return []problem{{"checksum", fmt.Sprintf("%s has %s, not %s; rebuild the program or run goplugins checksum --write %s", m.Command, sum, m.Checksum, m.Path)}}
	}
	return nil
}

// fileChecksum returns "sha256:<hex>" of the file at path, the format of
// a manifest's checksum field.
func fileChecksum(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("reading %s: %w", path, err)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}
