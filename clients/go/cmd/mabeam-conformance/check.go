// The expectations of a scenario step: variable substitution, result paths, matching.

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/mabeam/mabeam/clients/go/mabeam"
)

type failure struct{ msg string }

func (f failure) Error() string { return f.msg }

func fail(format string, args ...any) error { return failure{fmt.Sprintf(format, args...)} }

var varRE = regexp.MustCompile(`\$\{([A-Za-z0-9_]+)\}`)

func substitute(v any, vars map[string]any) any {
	switch t := v.(type) {
	case string:
		if m := varRE.FindStringSubmatch(t); m != nil && m[0] == t {
			return vars[m[1]]
		}
		return varRE.ReplaceAllStringFunc(t, func(s string) string { return fmt.Sprint(vars[s[2:len(s)-1]]) })
	case []any:
		out := make([]any, len(t))
		for i, x := range t {
			out[i] = substitute(x, vars)
		}
		return out
	case map[string]any:
		out := map[string]any{}
		for k, x := range t {
			out[k] = substitute(x, vars)
		}
		return out
	}
	return v
}

// normal turns any value into its JSON form (maps of any, float64 numbers) so results compare alike.
func normal(v any) any {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	var out any
	_ = json.Unmarshal(data, &out)
	return out
}

func lookupPath(result any, path string) (any, error) {
	value := result
	for _, part := range strings.Split(path, ".") {
		switch t := value.(type) {
		case []any:
			if part == "#" {
				value = float64(len(t))
				continue
			}
			i, err := strconv.Atoi(part)
			if err != nil || i >= len(t) {
				return nil, fail("result has no %q", path)
			}
			value = t[i]
		case map[string]any:
			x, ok := t[part]
			if !ok {
				return nil, fail("result has no %q: %s", path, show(result))
			}
			value = x
		default:
			return nil, fail("result has no %q: %s", path, show(result))
		}
	}
	return value, nil
}

func show(v any) string {
	data, _ := json.Marshal(v)
	return string(data)
}

func matches(actual, expected any) bool {
	if m, ok := expected.(map[string]any); ok && len(m) == 1 {
		for op, bound := range m {
			a, okA := actual.(float64)
			b, okB := bound.(float64)
			if op == "lt" {
				return okA && okB && a < b
			}
			if op == "gt" {
				return okA && okB && a > b
			}
		}
	}
	switch e := expected.(type) {
	case []any:
		a, ok := actual.([]any)
		if !ok || len(a) != len(e) {
			return false
		}
		for i := range e {
			if !matches(a[i], e[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		a, ok := actual.(map[string]any)
		if !ok || len(a) != len(e) {
			return false
		}
		for k, v := range e {
			if !matches(a[k], v) {
				return false
			}
		}
		return true
	}
	return actual == expected
}

func check(s step, result any, err error) error {
	if s.Error != nil {
		if err == nil {
			return fail("expected %v, got a result: %s", s.Error["code"], show(result))
		}
		var merr *mabeam.Error
		if !errors.As(err, &merr) {
			return fail("expected %v, got %v", s.Error["code"], err)
		}
		if mabeam.CodeName(merr.Code) != s.Error["code"] {
			return fail("expected %v, got %s: %s", s.Error["code"], mabeam.CodeName(merr.Code), merr.Message)
		}
		if r, ok := s.Error["reason"]; ok && merr.Reason != r {
			return fail("expected reason %v, got %q: %s", r, merr.Reason, merr.Message)
		}
		if f, ok := s.Error["field"].(string); ok {
			if _, has := merr.FieldViolations[f]; !has {
				return fail("expected a violation of %q, got %v", f, merr.FieldViolations)
			}
		}
		return nil
	}
	if err != nil {
		return fail("%v", err)
	}
	for path, expected := range s.Expect {
		actual, perr := lookupPath(result, path)
		if perr != nil {
			return perr
		}
		if !matches(actual, normal(expected)) {
			return fail("%s: expected %s, got %s", path, show(expected), show(actual))
		}
	}
	return nil
}
