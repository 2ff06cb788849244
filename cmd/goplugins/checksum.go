package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/goplugins/goplugins"
)

func runChecksum(env *cli, args []string) int {
	fs := env.newFlags("checksum", "[flags] FILE | --write MANIFEST",
		"Prints the SHA-256 digest of FILE as a manifest's checksum field holds it (sha256:<hex>).\n"+
			"With --write, computes the digest of the program a manifest's command names and writes\n"+
			"it into the manifest's checksum field (added after command when missing); the rest of\n"+
			"the file, JSON or YAML, is kept byte for byte. Exit 1 if the manifest written is still\n"+
			"invalid for another reason (the problems go to stderr).")
	asJSON := fs.Bool("json", false, "print one JSON document")
	write := fs.Bool("write", false, "write the digest of the manifest's command into the manifest")
	pos, code, ok := parse(fs, args, false)
	if !ok {
		return code
	}
	if len(pos) != 1 {
		return env.usageError("checksum", "give one file")
	}
	if !*write {
		sum, err := fileChecksum(pos[0])
		if err != nil {
			return env.fail("checksum", exitCannot, err)
		}
		if *asJSON {
			env.writeJSON(map[string]string{"file": pos[0], "checksum": sum})
		} else {
			fmt.Fprintln(env.stdout, sum)
		}
		return exitOK
	}
	res, err := writeChecksum(pos[0])
	if err != nil {
		return env.fail("checksum", exitCannot, err)
	}
	if *asJSON {
		env.writeJSON(res)
	} else if res.Old == res.Checksum {
		fmt.Fprintf(env.stdout, "%s: checksum %s (unchanged)\n", res.Manifest, res.Checksum)
	} else {
		fmt.Fprintf(env.stdout, "%s: checksum %s written\n", res.Manifest, res.Checksum)
	}
	if _, err := goplugins.LoadManifest(res.Manifest); err != nil {
		fmt.Fprintf(env.stderr, "goplugins checksum: the manifest is still invalid: %s\n", oneLine(err.Error()))
		return exitProblems
	}
	return exitOK
}

// writeResult reports a checksum --write.
type writeResult struct {
	Manifest string `json:"manifest"`
	Command  string `json:"command"`
	Checksum string `json:"checksum"`
	Old      string `json:"old,omitempty"`
}

// manifestEdit locates, in a manifest's bytes, the command's value and
// where the checksum goes.
type manifestEdit struct {
	command string // the command field's value
	old     string // the checksum field's value, or ""
	// apply returns data with the checksum field set to sum.
	apply func(sum string) ([]byte, error)
}

// writeChecksum writes the digest of the manifest's command into it.
func writeChecksum(path string) (writeResult, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return writeResult{}, err
	}
	var edit manifestEdit
	switch ext := strings.ToLower(filepath.Ext(path)); ext {
	case ".json":
		edit, err = jsonEdit(data)
	case ".yaml", ".yml":
		edit, err = yamlEdit(data)
	default:
		return writeResult{}, fmt.Errorf("%s: unknown extension %q; a manifest is .json, .yaml or .yml", path, ext)
	}
	if err != nil {
		return writeResult{}, fmt.Errorf("%s: %w", path, err)
	}
	cmd := edit.command
	if !filepath.IsAbs(cmd) {
		cmd = filepath.Join(filepath.Dir(path), cmd)
	}
	sum, err := fileChecksum(cmd)
	if err != nil {
		return writeResult{}, fmt.Errorf("%s, field command: %w", path, err)
	}
	res := writeResult{Manifest: path, Command: cmd, Checksum: sum, Old: edit.old}
	if edit.old == sum {
		return res, nil
	}
	out, err := edit.apply(sum)
	if err == nil {
		err = sameExceptChecksum(path, data, out, sum)
	}
	if err != nil {
		return writeResult{}, fmt.Errorf("%s: %w; add checksum: %s by hand", path, err, sum)
	}
	return res, replaceFile(path, out)
}

// sameExceptChecksum checks an edit: out decodes to what data decodes
// to, but for a checksum field that holds sum.
func sameExceptChecksum(path string, data, out []byte, sum string) error {
	decode := json.Unmarshal
	if filepath.Ext(path) != ".json" {
		decode = yaml.Unmarshal
	}
	var before, after map[string]any
	if err := decode(data, &before); err != nil {
		return err
	}
	if err := decode(out, &after); err != nil {
		return fmt.Errorf("the edited manifest does not decode: %v", err)
	}
	if after["checksum"] != sum {
		return errors.New("the edited manifest does not hold the new checksum")
	}
	delete(before, "checksum")
	delete(after, "checksum")
	if !reflect.DeepEqual(before, after) {
		return errors.New("the edit would change other fields")
	}
	return nil
}

// replaceFile writes data to path atomically, keeping its mode.
func replaceFile(path string, data []byte) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".checksum-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(fi.Mode().Perm()); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// jsonEdit finds the top-level command and checksum members of a JSON
// manifest.
func jsonEdit(data []byte) (manifestEdit, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return manifestEdit{}, errors.New("not a JSON object")
	}
	type member struct{ keyStart, keyEnd, valStart, valEnd int }
	var cmd, sum *member
	var edit manifestEdit
	for dec.More() {
		prev := int(dec.InputOffset())
		t, err := dec.Token()
		if err != nil {
			return manifestEdit{}, err
		}
		key, _ := t.(string)
		m := &member{keyEnd: int(dec.InputOffset())}
		m.keyStart = prev + bytes.IndexByte(data[prev:], '"')
		m.valStart = m.keyEnd + bytes.IndexByte(data[m.keyEnd:], ':') + 1
		for m.valStart < len(data) && strings.IndexByte(" \t\r\n", data[m.valStart]) >= 0 {
			m.valStart++
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return manifestEdit{}, err
		}
		m.valEnd = int(dec.InputOffset())
		switch key {
		case "command":
			if err := json.Unmarshal(raw, &edit.command); err != nil {
				return manifestEdit{}, errors.New("field command is not a string")
			}
			cmd = m
		case "checksum":
			_ = json.Unmarshal(raw, &edit.old)
			sum = m
		}
	}
	if cmd == nil || edit.command == "" {
		return manifestEdit{}, errors.New("the manifest has no command; only a plugin program has a checksum")
	}
	edit.apply = func(s string) ([]byte, error) {
		quoted, _ := json.Marshal(s)
		if sum != nil {
			return splice(data, sum.valStart, sum.valEnd, string(quoted)), nil
		}
		// After command, as command is written: same indentation, same colon.
		ws := cmd.keyStart
		for ws > 0 && strings.IndexByte(" \t\r\n", data[ws-1]) >= 0 {
			ws--
		}
		text := "," + string(data[ws:cmd.keyStart]) + `"checksum"` + string(data[cmd.keyEnd:cmd.valStart]) + string(quoted)
		return splice(data, cmd.valEnd, cmd.valEnd, text), nil
	}
	return edit, nil
}

// yamlEdit finds the top-level command and checksum entries of a YAML
// manifest written in block style.
func yamlEdit(data []byte) (manifestEdit, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return manifestEdit{}, err
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 || doc.Content[0].Kind != yaml.MappingNode {
		return manifestEdit{}, errors.New("not a YAML mapping")
	}
	top := doc.Content[0]
	if top.Style&yaml.FlowStyle != 0 {
		return manifestEdit{}, errors.New("the mapping is in flow style ({...}), which this edit keeps out of")
	}
	var edit manifestEdit
	var cmdKey, cmdVal, sumVal *yaml.Node
	for i := 0; i+1 < len(top.Content); i += 2 {
		k, v := top.Content[i], top.Content[i+1]
		switch k.Value {
		case "command":
			cmdKey, cmdVal, edit.command = k, v, v.Value
		case "checksum":
			sumVal, edit.old = v, v.Value
		}
	}
	if cmdVal == nil || cmdVal.Kind != yaml.ScalarNode || edit.command == "" {
		return manifestEdit{}, errors.New("the manifest has no command; only a plugin program has a checksum")
	}
	lines := strings.SplitAfter(string(data), "\n")
	edit.apply = func(s string) ([]byte, error) {
		if sumVal != nil {
			return replaceScalar(lines, sumVal, s)
		}
		if cmdVal.Line != cmdKey.Line || cmdVal.Style&(yaml.LiteralStyle|yaml.FoldedStyle) != 0 {
			return nil, errors.New("command's value does not sit on its key's line")
		}
		eol := "\n" // as the file's lines end
		if i := bytes.IndexByte(data, '\n'); i > 0 && data[i-1] == '\r' {
			eol = "\r\n"
		}
		if !strings.HasSuffix(lines[cmdKey.Line-1], "\n") {
			lines[cmdKey.Line-1] += eol // the last line had no end
		}
		entry := strings.Repeat(" ", cmdKey.Column-1) + "checksum: " + s + eol
		out := slices.Insert(lines, cmdKey.Line, entry)
		return []byte(strings.Join(out, "")), nil
	}
	return edit, nil
}

// replaceScalar replaces the one-line scalar v in lines with s, in the
// same quoting style.
func replaceScalar(lines []string, v *yaml.Node, s string) ([]byte, error) {
	if v.Kind != yaml.ScalarNode || v.Style&(yaml.LiteralStyle|yaml.FoldedStyle) != 0 || v.Line < 1 || v.Line > len(lines) {
		return nil, errors.New("the checksum value is not a one-line scalar")
	}
	line := lines[v.Line-1]
	r := []rune(line)
	if v.Column-1 >= len(r) {
		return nil, errors.New("the checksum value is not where the parser says")
	}
	start := len(string(r[:v.Column-1]))
	end := start
	var repl string
	switch v.Style {
	case yaml.DoubleQuotedStyle, yaml.SingleQuotedStyle:
		q := line[start]
		i := strings.IndexByte(line[start+1:], q)
		if i < 0 {
			return nil, errors.New("the checksum value spans lines")
		}
		end = start + 1 + i + 1
		repl = string(q) + s + string(q)
	default:
		for end < len(line) && strings.IndexByte(" \t\r\n", line[end]) < 0 {
			end++
		}
		repl = s
	}
	lines[v.Line-1] = line[:start] + repl + line[end:]
	return []byte(strings.Join(lines, "")), nil
}

// splice returns data with data[from:to] replaced by s.
func splice(data []byte, from, to int, s string) []byte {
	out := make([]byte, 0, len(data)+len(s))
	out = append(out, data[:from]...)
	out = append(out, s...)
	return append(out, data[to:]...)
}
