package goplugins

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"reflect"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// The configuration decoder: the file (JSON or YAML) becomes a tree of
// maps, lists and scalars, ${VAR}s are expanded in it, and the tree is
// bound to rawConfig. Binding is done here rather than by encoding/json so
// that an error names the field's path (defaults.timeout) and what was
// expected in the terms of the file's own format.

// configTree decodes data, JSON or YAML, into a tree. A key given twice in
// one object is refused in both formats.
func configTree(data []byte, yamlFile bool) (any, error) {
	var tree any
	if yamlFile {
		if err := yaml.Unmarshal(data, &tree); err != nil {
			return nil, fmt.Errorf("invalid YAML: %v", strings.TrimPrefix(err.Error(), "yaml: "))
		}
		return tree, nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	tree, err := jsonTree(dec, "")
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("invalid JSON: data after the top-level object")
	}
	return tree, nil
}

// jsonTree reads one JSON value from dec; at is its path, for errors.
func jsonTree(dec *json.Decoder, at string) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, fmt.Errorf("invalid JSON: %v", err)
	}
	switch tok {
	case json.Delim('{'):
		obj := map[string]any{}
		for dec.More() {
			k, err := dec.Token()
			if err != nil {
				return nil, fmt.Errorf("invalid JSON: %v", err)
			}
			key := k.(string)
			if _, dup := obj[key]; dup {
				return nil, fmt.Errorf("%s is given twice; give each field once", joinPath(at, key))
			}
			if obj[key], err = jsonTree(dec, joinPath(at, key)); err != nil {
				return nil, err
			}
		}
		_, err := dec.Token()
		return obj, err
	case json.Delim('['):
		list := []any{}
		for dec.More() {
			v, err := jsonTree(dec, fmt.Sprintf("%s[%d]", at, len(list)))
			if err != nil {
				return nil, err
			}
			list = append(list, v)
		}
		_, err := dec.Token()
		return list, err
	}
	return tok, nil
}

func joinPath(at, key string) string {
	if at == "" {
		return key
	}
	return at + "." + key
}

// treeBinder is a type that binds itself, for values of more than one form.
type treeBinder interface {
	bindTree(b binder, v any, at string) error
}

// bindTree accepts a dependency's two forms: a constraint string, or
// {version: constraint, optional: bool}.
func (d *rawDependency) bindTree(b binder, v any, at string) error {
	if s, ok := v.(string); ok {
		d.Version = s
		return nil
	}
	if _, ok := v.(map[string]any); !ok {
		return b.want(at, "a constraint string or {version: ..., optional: true}", v)
	}
	type plain rawDependency
	return b.bind(v, reflect.ValueOf((*plain)(d)).Elem(), at)
}

// binder binds a configuration tree to a Go value.
type binder struct{ yaml bool }

// bind sets dst from v, the tree at path at. Structs take the fields
// named by their json tags; any other key is an error listing the fields.
func (b binder) bind(v any, dst reflect.Value, at string) error {
	if v == nil {
		return nil // null or absent: the zero value
	}
	if tb, ok := dst.Addr().Interface().(treeBinder); ok {
		return tb.bindTree(b, v, at)
	}
	switch dst.Kind() {
	case reflect.Pointer:
		dst.Set(reflect.New(dst.Type().Elem()))
		return b.bind(v, dst.Elem(), at)
	case reflect.Struct:
		return b.bindStruct(v, dst, at)
	case reflect.Slice:
		list, ok := v.([]any)
		if !ok {
			return b.want(at, "a list", v)
		}
		dst.Set(reflect.MakeSlice(dst.Type(), len(list), len(list)))
		for i, x := range list {
			if err := b.bind(x, dst.Index(i), fmt.Sprintf("%s[%d]", at, i)); err != nil {
				return err
			}
		}
		return nil
	case reflect.Map:
		m, ok := v.(map[string]any)
		if !ok {
			return b.want(at, "a mapping", v)
		}
		if dst.Type().Elem().Kind() == reflect.Interface { // a plugin entry: kept as a tree
			dst.Set(reflect.ValueOf(m))
			return nil
		}
		out := reflect.MakeMapWithSize(dst.Type(), len(m))
		for _, k := range slices.Sorted(maps.Keys(m)) {
			e := reflect.New(dst.Type().Elem()).Elem()
			if err := b.bind(m[k], e, joinPath(at, k)); err != nil {
				return err
			}
			out.SetMapIndex(reflect.ValueOf(k), e)
		}
		dst.Set(out)
		return nil
	}
	return b.bindScalar(v, dst, at)
}

func (b binder) bindStruct(v any, dst reflect.Value, at string) error {
	m, ok := v.(map[string]any)
	if !ok {
		return b.want(at, "a mapping", v)
	}
	fields := map[string]int{}
	for i := range dst.NumField() {
		fields[strings.Split(dst.Type().Field(i).Tag.Get("json"), ",")[0]] = i
	}
	for _, k := range slices.Sorted(maps.Keys(m)) {
		i, ok := fields[k]
		if !ok {
			where := "at the top level"
			if at != "" {
				where = "in " + at
			}
			return fmt.Errorf("%s is not a field; the fields %s are %s", joinPath(at, k), where,
				strings.Join(slices.Sorted(maps.Keys(fields)), ", "))
		}
		if err := b.bind(m[k], dst.Field(i), joinPath(at, k)); err != nil {
			return err
		}
	}
	return nil
}

func (b binder) bindScalar(v any, dst reflect.Value, at string) error {
	switch dst.Kind() {
	case reflect.String:
		s, ok := v.(string)
		if !ok {
			if n, isNum := number(v); isNum && b.yaml {
				return fmt.Errorf("%s: want a string, got the number %v; quote it: \"%v\"", at, n, n)
			}
			return b.want(at, "a string", v)
		}
		dst.SetString(s)
	case reflect.Bool:
		t, ok := v.(bool)
		if !ok {
			return b.want(at, "true or false", v)
		}
		dst.SetBool(t)
	case reflect.Int:
		n, ok := number(v)
		if !ok || n != math.Trunc(n) {
			return b.want(at, "a whole number", v)
		}
		dst.SetInt(int64(n))
	case reflect.Float64:
		n, ok := number(v)
		if !ok {
			return b.want(at, "a number", v)
		}
		dst.SetFloat(n)
	default:
		return fmt.Errorf("%s: cannot be set (%s)", at, dst.Type()) // a field type bind does not know
	}
	return nil
}

// number returns v as a float64 if it is a number of either format.
func number(v any) (float64, bool) {
	switch n := v.(type) {
	case json.Number:
		f, err := n.Float64()
		return f, err == nil
	case int:
		return float64(n), true
	case int64:
		return float64(n), true
	case uint64:
		return float64(n), true
	case float64:
		return n, true
	}
	return 0, false
}

// want is the error for a value of the wrong kind, in the file's terms.
func (b binder) want(at, what string, v any) error {
	if at == "" {
		at = "the file"
	}
	return fmt.Errorf("%s: want %s, got %s", at, what, b.kind(v))
}

// kind names the kind of v in the file's terms.
func (b binder) kind(v any) string {
	switch x := v.(type) {
	case map[string]any:
		return map[bool]string{true: "a mapping", false: "an object"}[b.yaml]
	case []any:
		return map[bool]string{true: "a sequence", false: "an array"}[b.yaml]
	case string:
		return fmt.Sprintf("the string %q", x)
	case bool:
		return fmt.Sprintf("%v", x)
	}
	if n, ok := number(v); ok {
		return fmt.Sprintf("the number %v", n)
	}
	return fmt.Sprintf("%v", v)
}
