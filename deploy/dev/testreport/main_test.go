package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

// events is `go test -json` for a package with a passing, a skipped and a
// failing test (with a subtest).
const events = `{"Action":"start","Package":"x"}
{"Action":"run","Package":"x","Test":"TestPass"}
{"Action":"output","Package":"x","Test":"TestPass","Output":"=== RUN   TestPass\n"}
{"Action":"output","Package":"x","Test":"TestPass","Output":"    x_test.go:3: quiet\n"}
{"Action":"output","Package":"x","Test":"TestPass","Output":"--- PASS: TestPass (0.00s)\n"}
{"Action":"pass","Package":"x","Test":"TestPass"}
{"Action":"run","Package":"x","Test":"TestSkip"}
{"Action":"output","Package":"x","Test":"TestSkip","Output":"    x_test.go:4: no cgroups here\n"}
{"Action":"output","Package":"x","Test":"TestSkip","Output":"--- SKIP: TestSkip (0.00s)\n"}
{"Action":"skip","Package":"x","Test":"TestSkip"}
` + failing + `{"Action":"output","Package":"x","Output":"FAIL\n"}
{"Action":"fail","Package":"x","Elapsed":0.01}
`

const failing = `{"Action":"run","Package":"x","Test":"TestFail"}
{"Action":"run","Package":"x","Test":"TestFail/sub"}
{"Action":"output","Package":"x","Test":"TestFail/sub","Output":"    x_test.go:5: boom\n"}
{"Action":"output","Package":"x","Test":"TestFail/sub","Output":"    --- FAIL: TestFail/sub (0.00s)\n"}
{"Action":"fail","Package":"x","Test":"TestFail/sub"}
{"Action":"output","Package":"x","Test":"TestFail","Output":"--- FAIL: TestFail (0.00s)\n"}
{"Action":"fail","Package":"x","Test":"TestFail"}
`

func run(t *testing.T, in string, allowed map[testKey]string, shortOK bool) (string, int) {
	t.Helper()
	var out bytes.Buffer
	r := &report{out: &out, allowed: allowed, shortOK: shortOK, pkgs: map[string]*pkgState{}}
	if err := r.read(strings.NewReader(in)); err != nil {
		t.Fatal(err)
	}
	code := r.finish()
	return out.String(), code
}

func TestReport(t *testing.T) {
	passingOnly := strings.Replace(events, failing, "", 1)
	passingOnly = strings.Replace(passingOnly, `{"Action":"output","Package":"x","Output":"FAIL\n"}
{"Action":"fail","Package":"x","Elapsed":0.01}`, `{"Action":"pass","Package":"x","Elapsed":0.01}`, 1)
	allowSkip := map[testKey]string{{"x", "TestSkip"}: "no cgroups on CI"}
	for _, tc := range []struct {
		name     string
		in       string
		allowed  map[testKey]string
		shortOK  bool
		wantCode int
		want     []string // in the output
		notWant  []string
	}{
		{"failure and undeclared skip", events, nil, false, 1,
			[]string{"boom", "--- FAIL: TestFail", "FAIL\tx", "UNEXPECTED SKIP: TestSkip", "no cgroups here"}, []string{"quiet", "=== RUN"}},
		{"undeclared skip alone fails", passingOnly, nil, false, 1,
			[]string{"ok  \tx", "UNEXPECTED SKIP: TestSkip"}, []string{"quiet"}},
		{"declared skip passes", passingOnly, allowSkip, false, 0,
			[]string{"ok  \tx", "1 expected skip"}, []string{"UNEXPECTED"}},
		{"skips under -short are counted", passingOnly, nil, true, 0,
			[]string{"ok  \tx", "1 test(s) skipped under -short"}, []string{"UNEXPECTED"}},
		{"a binary that never finished fails", `{"Action":"run","Package":"y","Test":"TestHang"}
{"Action":"output","Package":"y","Output":"panic: test timed out after 1s\n"}
`, nil, false, 1, []string{"FAIL\ty", "did not finish", "panic: test timed out"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, code := run(t, tc.in, tc.allowed, tc.shortOK)
			if code != tc.wantCode {
				t.Errorf("exit code %d, want %d; output:\n%s", code, tc.wantCode, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(out, w) {
					t.Errorf("output has %q, which plain go test does not print:\n%s", w, out)
				}
			}
		})
	}
}

func TestReadAllowNeedsReason(t *testing.T) {
	path := t.TempDir() + "/allow"
	if err := writeFile(path, "# comment\n\nx TestSkip\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := readAllow(path); err == nil || !strings.Contains(err.Error(), ":3:") {
		t.Fatalf("readAllow of a line without a reason = %v, want an error naming line 3", err)
	}
	if err := writeFile(path, "x TestSkip no cgroups on CI\n"); err != nil {
		t.Fatal(err)
	}
	got, err := readAllow(path)
	if err != nil || got[testKey{"x", "TestSkip"}] != "no cgroups on CI" {
		t.Fatalf("readAllow = %v, %v; want x TestSkip with its reason", got, err)
	}
}

func writeFile(path, content string) error { return os.WriteFile(path, []byte(content), 0o644) }

// failAfter accepts n writes, then fails every write as a closed pipe does.
type failAfter struct {
	n      int
	writes int
}

func (w *failAfter) Write(p []byte) (int, error) {
	w.writes++
	if w.writes > w.n {
		return 0, os.ErrClosed
	}
	return len(p), nil
}

// TestWriteErrorFails: a passing run whose report cannot be written exits
// 2, not 0, and keeps the first error.
func TestWriteErrorFails(t *testing.T) {
	in := `{"Action":"run","Package":"x","Test":"TestPass"}
{"Action":"pass","Package":"x","Test":"TestPass"}
{"Action":"pass","Package":"x","Elapsed":0.01}
{"Action":"pass","Package":"y","Elapsed":0.01}
`
	w := &failAfter{n: 1}
	r := &report{out: w, pkgs: map[string]*pkgState{}}
	if err := r.read(strings.NewReader(in)); err != nil {
		t.Fatal(err)
	}
	if code := r.finish(); code != 2 {
		t.Errorf("finish() = %d after a failed write, want 2", code)
	}
	if r.writeErr != os.ErrClosed {
		t.Errorf("writeErr = %v, want the first write error %v", r.writeErr, os.ErrClosed)
	}
	if w.writes != 2 {
		t.Errorf("%d writes, want 2 (ok x, then the failing ok y)", w.writes)
	}
}
