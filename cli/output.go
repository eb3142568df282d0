package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/thinlab/thinlab/sdk/agentapi"
)

// Output formats of the client commands: tables for people, JSON (the SDK
// types, unchanged) for scripts.
const (
	outputTable = "table"
	outputJSON  = "json"
)

// addOutputFlag registers -o/--output on cmd.
func addOutputFlag(cmd *cobra.Command, dst *string) {
	cmd.Flags().StringVarP(dst, "output", "o", outputTable, "output format: table or json")
}

// checkOutput validates the -o value as a usage error.
func checkOutput(format string) error {
	switch format {
	case outputTable, outputJSON:
		return nil
	}
	return usageErrorf("--output %q: use table or json", format)
}

// writeJSON prints v as indented JSON followed by a newline.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// newTable returns a tabwriter for aligned columns; call Flush when done.
// render writes v as JSON with -o json, else as text.
func render[T any](cmd *cobra.Command, output string, v T, text func(io.Writer, T, time.Time) error) error {
	if output == outputJSON {
		return writeJSON(cmd.OutOrStdout(), v)
	}
	return text(cmd.OutOrStdout(), v, time.Now())
}

// renderList is render for a list, which is [] rather than null in JSON
// when empty.
func renderList[T any](cmd *cobra.Command, output string, items []T, text func(io.Writer, []T, time.Time) error) error {
	if items == nil {
		items = []T{}
	}
	return render(cmd, output, items, text)
}

func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
}

// row writes one tab-separated table row.
func row(tw *tabwriter.Writer, cols ...string) {
	// A tabwriter buffers until Flush, which reports any write error.
	_, _ = fmt.Fprintln(tw, strings.Join(cols, "\t"))
}

// orDash shows "-" for empty table cells so columns stay readable.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// formatBytes renders a byte count in IEC units, like DLE's CLI.
func formatBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// formatAge renders how long ago t was, coarse enough for a table.
func formatAge(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	default:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	}
}

// isTerminal reports whether w is a terminal (only *os.File can be one).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// progress shows that the CLI is waiting: on a terminal a spinner with the
// elapsed time redrawn in place; otherwise (CI logs, pipes) one plain line
// per state change, so logs stay readable.
type progress struct {
	w     io.Writer
	tty   bool
	start time.Time
	now   func() time.Time

	mu     sync.Mutex
	label  string
	state  string
	done   chan struct{}
	wg     sync.WaitGroup
	closed bool
}

var spinnerFrames = []string{"⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"}

// startProgress begins reporting "label" on w (normally stderr).
func startProgress(w io.Writer, label string) *progress {
	p := &progress{w: w, tty: isTerminal(w), start: time.Now(), now: time.Now, label: label, done: make(chan struct{})}
	if p.tty {
		p.wg.Add(1)
		go p.spin()
	} else {
		p.print("%s...\n", label)
	}
	return p
}

// print writes a progress line. Progress is best effort: a stderr that
// cannot be written must not fail the command whose result goes to stdout.
func (p *progress) print(format string, args ...any) {
	_, _ = fmt.Fprintf(p.w, format, args...)
}

func (p *progress) elapsed() time.Duration {
	return p.now().Sub(p.start).Round(time.Second)
}

func (p *progress) spin() {
	defer p.wg.Done()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for i := 0; ; i++ {
		p.mu.Lock()
		line := fmt.Sprintf("\r\033[K%s %s", spinnerFrames[i%len(spinnerFrames)], p.label)
		if p.state != "" {
			line += " (" + p.state + ")"
		}
		line += " " + p.elapsed().String()
		p.print("%s", line)
		p.mu.Unlock()
		select {
		case <-p.done:
			return
		case <-t.C:
		}
	}
}

// Update records the current state; without a terminal a changed state
// is printed as a line.
func (p *progress) Update(state string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if state == p.state {
		return
	}
	p.state = state
	if !p.tty {
		p.print("%s: %s (%s)\n", p.label, state, p.elapsed())
	}
}

// Stop ends the report with a final line such as "done" or "failed".
func (p *progress) Stop(final string) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	close(p.done)
	p.mu.Unlock()
	p.wg.Wait()
	if p.tty {
		p.print("\r\033[K%s: %s in %s\n", p.label, final, p.elapsed())
	} else {
		p.print("%s: %s in %s\n", p.label, final, p.elapsed())
	}
}

// warn writes a prompt, hint or warning to stderr. It is best effort: a
// stderr that cannot be written must not fail a command that did its work.
func warn(cmd *cobra.Command, format string, args ...any) {
	_, _ = fmt.Fprintf(cmd.ErrOrStderr(), format, args...)
}

// formatProgress renders a running retrieval's progress as one line: a
// bar and percentage when the total is known, the amount done, the rate
// and the ETA, then the phase and pool.
func formatProgress(j *agentapi.RetrievalJob) string {
	amount := func(n int64) string {
		if j.Unit == "bytes" {
			return formatBytes(uint64(max(n, 0)))
		}
		return fmt.Sprintf("%d %s", n, j.Unit)
	}
	var b strings.Builder
	if j.Total > 0 {
		frac := min(max(float64(j.Done)/float64(j.Total), 0), 1)
		const width = 20
		filled := int(frac * width)
		fmt.Fprintf(&b, "[%s%s] %3.0f%% %s of %s", strings.Repeat("#", filled), strings.Repeat("-", width-filled), frac*100, amount(j.Done), amount(j.Total))
	} else {
		fmt.Fprintf(&b, "%s done", amount(j.Done))
	}
	if j.RatePerSecond > 0 {
		if j.Unit == "bytes" {
			fmt.Fprintf(&b, ", %s/s", formatBytes(uint64(j.RatePerSecond)))
		} else {
			fmt.Fprintf(&b, ", %.1f/s", j.RatePerSecond)
		}
	}
	if j.ETASeconds > 0 {
		fmt.Fprintf(&b, ", ETA %s", (time.Duration(j.ETASeconds) * time.Second).String())
	}
	fmt.Fprintf(&b, " (%s, pool %s)", orDash(j.Phase), orDash(j.Pool))
	return b.String()
}
