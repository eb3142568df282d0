package labels

import (
	"reflect"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	good := map[string]string{"team": "data", "acme.example/owner": "ada", "ticket-1": "", "a": strings.Repeat("v", MaxValueLen)}
	if err := Validate("labels", good); err != nil {
		t.Fatal(err)
	}
	for name, bad := range map[string]map[string]string{
		"empty key":     {"": "x"},
		"space in key":  {"my key": "x"},
		"leading dash":  {"-x": "x"},
		"trailing dot":  {"x.": "x"},
		"long key":      {strings.Repeat("k", MaxKeyLen+1): "x"},
		"long value":    {"k": strings.Repeat("v", MaxValueLen+1)},
		"control":       {"k": "a\nb"},
		"invalid utf-8": {"k": "\xff"},
	} {
		err := Validate("labels", bad)
		if err == nil || !strings.HasPrefix(err.Error(), "labels: ") {
			t.Errorf("%s: %v, want an error naming the field", name, err)
		}
	}
	many := map[string]string{}
	for i := range MaxLabels + 1 {
		many[strings.Repeat("k", i+1)] = ""
	}
	if err := Validate("labels", many); err == nil || !strings.Contains(err.Error(), "at most 32") {
		t.Errorf("too many labels: %v", err)
	}
}

func TestParseChangesAndApply(t *testing.T) {
	set, remove, err := ParseChanges([]string{"team=data", "note=a=b", "old-"})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(set, map[string]string{"team": "data", "note": "a=b"}) || !reflect.DeepEqual(remove, []string{"old"}) {
		t.Fatalf("set %v remove %v", set, remove)
	}
	old := map[string]string{"old": "1", "team": "web", "keep": "yes"}
	got := Apply(old, set, remove)
	if !reflect.DeepEqual(got, map[string]string{"team": "data", "note": "a=b", "keep": "yes"}) || old["team"] != "web" {
		t.Fatalf("apply: %v (old %v)", got, old)
	}
	for _, bad := range []string{"justakey", "bad key=v", "-"} {
		if _, _, err := ParseChanges([]string{bad}); err == nil {
			t.Errorf("ParseChanges(%q) accepted", bad)
		}
	}
}

func TestSelector(t *testing.T) {
	s, err := ParseSelector([]string{"team=data", "ci"})
	if err != nil {
		t.Fatal(err)
	}
	for set, want := range map[string]bool{
		"team=data,ci=yes": true,
		"team=data,ci=":    true,
		"team=data":        false,
		"team=web,ci=yes":  false,
	} {
		m := map[string]string{}
		for kv := range strings.SplitSeq(set, ",") {
			k, v, _ := strings.Cut(kv, "=")
			m[k] = v
		}
		if got := s.Matches(m); got != want {
			t.Errorf("%s: %v, want %v", set, got, want)
		}
	}
	if !Selector(nil).Matches(nil) {
		t.Error("an empty selector must match everything")
	}
	if _, err := ParseSelector([]string{"bad key"}); err == nil {
		t.Error("a bad filter key was accepted")
	}
	if String(map[string]string{"b": "2", "a": "1"}) != "a=1, b=2" {
		t.Error("String is not sorted")
	}
}
