// Command testreport reads `go test -json` on stdin and prints what a plain
// `go test` prints (the output of failed tests, one ok/FAIL line per
// package), and in addition fails the run when a test was skipped without
// being declared in the allowlist: under plain `go test` a skip counts as a
// pass and nobody sees it.
//
//	go test -json ./... | go run ./deploy/dev/testreport -allow deploy/dev/expected-skips.txt
//
// The allowlist has one test per line: the package import path, the test
// name (with subtest path, as go test prints it) and the reason, separated
// by spaces; blank lines and lines starting with # are ignored. A line
// without a reason is an error: a skip is expected only for a stated cause.
//
// With -short-ok (make test-unit), skips are counted and reported but do not
// fail the run: under -short the tests that need root or daemons skip on
// purpose.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"
)

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Time       time.Time
	Action     string
	Package    string
	Test       string
	Elapsed    float64
	Output     string
	ImportPath string // build-output / build-fail events
}

type testKey struct{ pkg, test string }

type testLine struct{ test, text string }

type pkgState struct {
	output  []string            // package-level output (no test)
	tests   map[string][]string // per-test output
	lines   []testLine          // all test output in arrival order
	order   []string            // tests in the order they started
	failed  map[string]bool
	skipped map[string]bool
	ended   map[string]bool
}

func main() {
	allowPath := flag.String("allow", "", "file listing the skips that are expected (package test reason)")
	shortOK := flag.Bool("short-ok", false, "report skips without failing (for -short runs)")
	flag.Parse()

	allowed := map[testKey]string{}
	if *allowPath != "" {
		var err error
		if allowed, err = readAllow(*allowPath); err != nil {
			fmt.Fprintf(os.Stderr, "testreport: %v\n", err)
			os.Exit(2)
		}
	}
	r := &report{out: os.Stdout, allowed: allowed, shortOK: *shortOK, pkgs: map[string]*pkgState{}}
	if err := r.read(os.Stdin); err != nil {
		fmt.Fprintf(os.Stderr, "testreport: %v\n", err)
		os.Exit(2)
	}
	code := r.finish()
	if r.writeErr != nil {
		fmt.Fprintf(os.Stderr, "testreport: write the report: %v\n", r.writeErr)
	}
	os.Exit(code)
}

type report struct {
	out     io.Writer
	allowed map[testKey]string
	shortOK bool
	pkgs    map[string]*pkgState

	failures   int
	unexpected []testKey // skips not in the allowlist
	expected   []testKey
	skippedAll int
	writeErr   error // the first failed write to out
}

// printf writes to the report's output and keeps the first write error,
// which makes the run fail: a truncated report must not read as a pass.
func (r *report) printf(format string, args ...any) {
	if _, err := fmt.Fprintf(r.out, format, args...); err != nil && r.writeErr == nil {
		r.writeErr = err
	}
}

func readAllow(path string) (map[testKey]string, error) {
	data, err := os.ReadFile(path) //nolint:gosec // G304: reading the allowlist the operator names with -allow is the point
	if err != nil {
		return nil, err
	}
	out := map[testKey]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 3 {
			return nil, fmt.Errorf("%s:%d: want `PACKAGE TEST REASON...`, got %q", path, n, line)
		}
		out[testKey{fields[0], fields[1]}] = strings.Join(fields[2:], " ")
	}
	return out, sc.Err()
}

func (r *report) pkg(name string) *pkgState {
	p := r.pkgs[name]
	if p == nil {
		p = &pkgState{tests: map[string][]string{}, failed: map[string]bool{}, skipped: map[string]bool{}, ended: map[string]bool{}}
		r.pkgs[name] = p
	}
	return p
}

func (r *report) read(in io.Reader) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var ev event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &ev) != nil {
			// Not an event (go vet or the go command itself): pass it on.
			r.printf("%s\n", line)
			continue
		}
		r.handle(ev)
	}
	return sc.Err()
}

func (r *report) handle(ev event) {
	switch ev.Action {
	case "build-output":
		r.printf("%s", ev.Output)
		return
	case "build-fail":
		r.failures++
		return
	}
	if ev.Package == "" {
		return
	}
	p := r.pkg(ev.Package)
	if ev.Test == "" {
		switch ev.Action {
		case "output":
			p.output = append(p.output, ev.Output)
		case "pass", "fail", "skip":
			r.endPackage(ev, p)
		}
		return
	}
	switch ev.Action {
	case "run":
		p.order = append(p.order, ev.Test)
	case "output":
		p.tests[ev.Test] = append(p.tests[ev.Test], ev.Output)
		p.lines = append(p.lines, testLine{ev.Test, ev.Output})
	case "fail":
		p.failed[ev.Test] = true
	case "skip":
		p.skipped[ev.Test] = true
	}
	switch ev.Action {
	case "pass", "fail", "skip":
		p.ended[ev.Test] = true
	}
}

// noise are the -v lines plain go test does not print.
func noise(line string) bool {
	for _, prefix := range []string{"=== RUN", "=== PAUSE", "=== CONT", "=== NAME", "--- PASS", "PASS\n", "FAIL\n", "FAIL\t", "ok  \t"} {
		if strings.HasPrefix(strings.TrimLeft(line, " "), prefix) {
			return true
		}
	}
	return false
}

func (r *report) endPackage(ev event, p *pkgState) {
	var unexpectedHere []string
	for _, name := range p.order {
		if !p.skipped[name] {
			continue
		}
		r.skippedAll++
		k := testKey{ev.Package, name}
		if _, ok := r.allowed[k]; ok {
			r.expected = append(r.expected, k)
			continue
		}
		if !r.shortOK {
			r.unexpected = append(r.unexpected, k)
			unexpectedHere = append(unexpectedHere, name)
		}
	}
	switch ev.Action {
	case "fail":
		r.failures++
		for _, l := range p.lines {
			// A test without a result was running when the binary died
			// (a panic or the -timeout): its output says where.
			if (p.failed[l.test] || !p.ended[l.test]) && (!noise(l.text) || strings.Contains(l.text, "--- FAIL")) {
				r.printf("%s", l.text)
			}
		}
		for _, l := range p.output {
			if !noise(l) {
				r.printf("%s", l)
			}
		}
		r.printf("FAIL\t%s\t%.3fs\n", ev.Package, ev.Elapsed)
	case "skip":
		r.printf("?   \t%s\t[no test files]\n", ev.Package)
	default:
		r.printf("ok  \t%s\t%.3fs\n", ev.Package, ev.Elapsed)
	}
	for _, name := range unexpectedHere {
		r.printf("--- UNEXPECTED SKIP: %s\n", name)
		for _, l := range p.tests[name] {
			if !noise(l) && !strings.HasPrefix(strings.TrimSpace(l), "--- SKIP") {
				r.printf("%s", l)
			}
		}
	}
	delete(r.pkgs, ev.Package)
}

// finish prints the summary and returns the exit code: 2 when the
// report could not be written.
func (r *report) finish() int {
	// Packages that never ended (the go command or a test binary died).
	for _, name := range slices.Sorted(maps.Keys(r.pkgs)) {
		p := r.pkgs[name]
		if len(p.order) == 0 && len(p.output) == 0 {
			continue
		}
		r.failures++
		r.printf("FAIL\t%s\t(no result: the test binary did not finish)\n", name)
		for _, l := range p.output {
			r.printf("%s", l)
		}
	}
	if len(r.expected) > 0 {
		r.printf("testreport: %d expected skip(s) (listed in the allowlist)\n", len(r.expected))
	}
	if r.shortOK && r.skippedAll > 0 {
		r.printf("testreport: %d test(s) skipped under -short (they need root or daemons: run make test)\n", r.skippedAll)
	}
	code := 0
	if len(r.unexpected) > 0 {
		r.printf("testreport: %d test(s) skipped without being declared expected; fix the precondition, or list them with a reason in the allowlist:\n", len(r.unexpected))
		for _, k := range r.unexpected {
			r.printf("  %s %s\n", k.pkg, k.test)
		}
		code = 1
	}
	if r.failures > 0 {
		code = 1
	}
	if r.writeErr != nil {
		// A report cut short (a closed pipe, a full disk) must not pass.
		code = 2
	}
	return code
}
