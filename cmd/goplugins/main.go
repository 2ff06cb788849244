// Command goplugins checks plugin manifests, dependency graphs and plugin
// programs from a shell, and writes new plugins:
//
//	goplugins validate DIR...                 check every manifest under the folders
//	goplugins graph [--dot] DIR...            load order, levels, pending plugins, cycles
//	goplugins checksum FILE                   the digest a manifest's "checksum" holds
//	goplugins checksum --write MANIFEST       write it into the manifest
//	goplugins probe MANIFEST|COMMAND [ARGS]   start a plugin, print its info, health, one call
//	goplugins conform MANIFEST|COMMAND [ARGS] the protocol conformance suite
//	goplugins init NAME --lang go|python      a new plugin folder
//
// Every subcommand takes -h. Those a script would read take --json: one
// JSON document on stdout. Exit status: 0 ok; 1 the check found problems;
// 2 usage error; 3 could not run (a file that does not read, a plugin that
// does not start). Long steps show progress on stderr when it is a
// terminal, and stay quiet otherwise.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

// Exit statuses.
const (
	exitOK       = 0 // done, nothing wrong
	exitProblems = 1 // the check found problems
	exitUsage    = 2 // bad command line
	exitCannot   = 3 // could not run: unreadable input, a plugin that does not start
)

// command is one subcommand.
type command struct {
	name    string
	summary string
	run     func(env *cli, args []string) int
}

var commands = []command{
	{"validate", "check every manifest under the folders", runValidate},
	{"graph", "the dependency graph: load order, levels, pending plugins, cycles", runGraph},
	{"checksum", "the SHA-256 digest of a file, or --write it into a manifest", runChecksum},
	{"probe", "start a plugin, print its info and surfaces, check its health, make one call", runProbe},
	{"conform", "run the protocol conformance suite against a subprocess plugin", runConform},
	{"init", "write a new plugin folder (manifest and source)", runInit},
}

// cli is what a subcommand runs with: its output streams.
type cli struct {
	stdout, stderr io.Writer
	// terminal reports whether stderr is a terminal: progress is shown only then.
	terminal bool
}

func main() {
	env := &cli{stdout: os.Stdout, stderr: os.Stderr, terminal: isTerminal(os.Stderr)}
	os.Exit(env.main(os.Args[1:]))
}

func (env *cli) main(args []string) int {
	if len(args) == 0 {
		env.usage(env.stderr)
		return exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		env.usage(env.stdout)
		return exitOK
	}
	for _, c := range commands {
		if c.name == args[0] {
			return c.run(env, args[1:])
		}
	}
	fmt.Fprintf(env.stderr, "goplugins: unknown command %q; run goplugins -h for the list\n", args[0])
	return exitUsage
}

func (env *cli) usage(w io.Writer) {
	fmt.Fprintln(w, "usage: goplugins COMMAND [flags] [arguments]; goplugins COMMAND -h for one command")
	fmt.Fprintln(w, "\ncommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nexit status: 0 ok; 1 problems found; 2 usage error; 3 could not run")
}

// newFlags returns the flag set of a subcommand; its -h prints usage, the
// synopsis and the flags on stdout.
func (env *cli) newFlags(name, synopsis, about string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	fs.Usage = func() {
		fs.SetOutput(env.stdout)
		fmt.Fprintf(env.stdout, "usage: goplugins %s %s\n\n%s\n\nflags:\n", name, synopsis, about)
		fs.PrintDefaults()
		fmt.Fprintln(env.stdout, "\nexit status: 0 ok; 1 problems found; 2 usage error; 3 could not run")
		fs.SetOutput(env.stderr)
	}
	return fs
}

// parse parses args with fs. Flags may come between the positional
// arguments (up to a "--") unless stopAtFirst is set, in which case
// everything from the first positional argument on is left as it is (the
// plugin's own arguments). It returns the positional arguments, or the
// exit status to return: exitOK after -h, exitUsage after a bad flag.
func parse(fs *flag.FlagSet, args []string, stopAtFirst bool) ([]string, int, bool) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, exitOK, false
			}
			return nil, exitUsage, false
		}
		rest := fs.Args()
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), 0, true // the flags ended at "--"
		}
		if len(rest) == 0 {
			return pos, 0, true
		}
		if stopAtFirst {
			return append(pos, rest...), 0, true
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// usageError prints a one-line usage problem and returns exitUsage.
func (env *cli) usageError(name, format string, args ...any) int {
	fmt.Fprintf(env.stderr, "goplugins %s: %s; run goplugins %s -h\n", name, fmt.Sprintf(format, args...), name)
	return exitUsage
}

// fail prints a one-line error and returns code.
func (env *cli) fail(name string, code int, err error) int {
	fmt.Fprintf(env.stderr, "goplugins %s: %s\n", name, oneLine(err.Error()))
	return code
}

// writeJSON writes v as indented JSON on stdout.
func (env *cli) writeJSON(v any) {
	enc := json.NewEncoder(env.stdout)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

// oneLine joins the lines of s (errors.Join'ed errors) with "; ".
func oneLine(s string) string {
	return strings.ReplaceAll(strings.TrimSpace(s), "\n", "; ")
}

// isTerminal reports whether f is a character device (a terminal).
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
