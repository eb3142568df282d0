// Package labels holds the key=value labels of clones, snapshots and
// branches: their rules (shared by the agent, which enforces them, and the
// CLI, which checks them before sending), the CLI's "k=v" / "k-" syntax,
// and the selectors list filters take ("k=v" matches that value, "k" any
// value).
package labels

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"unicode"
)

// Limits keep labels small: they travel in every listing.
const (
	MaxLabels   = 32
	MaxKeyLen   = 63
	MaxValueLen = 255
)

// keyRE: letters, digits, '.', '_', '-' and '/' (a "team.example/" style
// prefix), starting and ending with a letter or digit.
var keyRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?$`)

// Validate checks a whole set; field names the request field ("labels")
// in the error.
func Validate(field string, set map[string]string) error {
	if len(set) > MaxLabels {
		return fmt.Errorf("%s: %d labels, at most %d are allowed: remove some", field, len(set), MaxLabels)
	}
	for _, k := range slices.Sorted(maps.Keys(set)) {
		if err := ValidateKey(k); err != nil {
			return fmt.Errorf("%s: %w", field, err)
		}
		if err := validateValue(k, set[k]); err != nil {
			return fmt.Errorf("%s: %w", field, err)
		}
	}
	return nil
}

// ValidateKey checks one key.
func ValidateKey(k string) error {
	if len(k) > MaxKeyLen || !keyRE.MatchString(k) {
		return fmt.Errorf("label key %q is invalid: use 1-%d letters, digits, '.', '_', '-' or '/', starting and ending with a letter or digit", k, MaxKeyLen)
	}
	return nil
}

func validateValue(k, v string) error {
	if len(v) > MaxValueLen {
		return fmt.Errorf("label %q: the value is %d bytes, at most %d are allowed", k, len(v), MaxValueLen)
	}
	if strings.IndexFunc(v, func(r rune) bool { return unicode.IsControl(r) || r == unicode.ReplacementChar }) >= 0 {
		return fmt.Errorf("label %q: the value holds control characters or invalid UTF-8; use printable text", k)
	}
	return nil
}

// ParseChanges reads the CLI's arguments: "k=v" sets k, "k-" removes it.
func ParseChanges(args []string) (set map[string]string, remove []string, err error) {
	set = map[string]string{}
	for _, a := range args {
		if k, v, ok := strings.Cut(a, "="); ok {
			if err := ValidateKey(k); err != nil {
				return nil, nil, err
			}
			if err := validateValue(k, v); err != nil {
				return nil, nil, err
			}
			set[k] = v
			continue
		}
		if k, ok := strings.CutSuffix(a, "-"); ok {
			if err := ValidateKey(k); err != nil {
				return nil, nil, err
			}
			remove = append(remove, k)
			continue
		}
		return nil, nil, fmt.Errorf("label %q: write key=value to set a label or key- to remove one", a)
	}
	return set, remove, nil
}

// Apply returns old with set and remove applied (old is not changed).
func Apply(old, set map[string]string, remove []string) map[string]string {
	out := maps.Clone(old)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, set)
	for _, k := range remove {
		delete(out, k)
	}
	return out
}

// Selector is a list filter: every term must match.
type Selector []term

type term struct {
	key, value string
	anyValue   bool
}

// ParseSelector reads filter terms ("k=v" or "k"), as given in repeated
// ?label= query parameters or --label flags.
func ParseSelector(terms []string) (Selector, error) {
	var s Selector
	for _, t := range terms {
		k, v, hasValue := strings.Cut(t, "=")
		if err := ValidateKey(k); err != nil {
			return nil, fmt.Errorf("label filter %q: %w", t, err)
		}
		s = append(s, term{key: k, value: v, anyValue: !hasValue})
	}
	return s, nil
}

// Matches reports whether set has every term of s.
func (s Selector) Matches(set map[string]string) bool {
	for _, t := range s {
		v, ok := set[t.key]
		if !ok || (!t.anyValue && v != t.value) {
			return false
		}
	}
	return true
}

// String is the set as "k=v, k2=v2", sorted by key (for tables).
func String(set map[string]string) string {
	parts := make([]string, 0, len(set))
	for _, k := range slices.Sorted(maps.Keys(set)) {
		parts = append(parts, k+"="+set[k])
	}
	return strings.Join(parts, ", ")
}
