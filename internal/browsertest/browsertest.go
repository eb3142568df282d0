// Package browsertest starts a headless Chromium (/usr/bin/chromium) for UI
// tests through chromedp, with the flags that work on the project's
// machines (Debian 12, tests run as root): no sandbox, no GPU, no
// background networking, no component updates, no sync, no first-run, no
// /dev/shm.
// Each browser gets a new empty profile; cleanup kills the browser.
package browsertest

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/thinlab/thinlab/internal/testenv"
)

// ExecPath is the Chromium binary (apt-get install chromium).
const ExecPath = "/usr/bin/chromium"

// Options are the exec allocator options for a fresh profile in dir.
func Options(userDataDir string) []chromedp.ExecAllocatorOption {
	return []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(ExecPath),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(userDataDir),
		chromedp.WindowSize(1280, 900),
	}
}

// New starts Chromium and returns a tab context that lives until the test
// ends. Use Step for per-step timeouts derived from it. The test fails
// (never skips) when Chromium is missing.
func New(t testing.TB) context.Context {
	t.Helper()
	testenv.NeedsSystem(t, "Chromium")
	if _, err := os.Stat(ExecPath); err != nil {
		t.Fatalf("%s is missing: run make deps (apt-get install chromium)", ExecPath)
	}
	dir, err := os.MkdirTemp("", "browsertest-profile-*")
	if err != nil {
		t.Fatal(err)
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), Options(dir)...)
	ctx, cancelTab := chromedp.NewContext(allocCtx, chromedp.WithLogf(t.Logf))
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc() // kills Chromium and waits for it
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	// Start the browser on the long-lived context first; a timeout context
	// here would kill the browser when it expires.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// Step runs actions with a timeout and fails the test on error, naming the
// step.
func Step(t testing.TB, ctx context.Context, name string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(sctx, actions...); err != nil {
		t.Fatalf("browser step %q: %v\n%s", name, err, Describe(ctx))
	}
}

// Describe returns where the browser is and what the page says, for
// failure messages.
func Describe(ctx context.Context) string {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	loc, _ := chromedp.Run(dctx, chromedp.Location())
	text, _ := chromedp.Run(dctx, chromedp.Text("body"))
	if len(text) > 2000 {
		text = text[:2000] + "..."
	}
	return "browser at " + loc + ", page text:\n" + text
}

// Get runs one action that returns a value with a timeout, failing the test
// on error.
func Get[T any](t testing.TB, ctx context.Context, name string, action chromedp.Action[T]) T {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(sctx, action)
	if err != nil {
		t.Fatalf("browser step %q: %v\n%s", name, err, Describe(ctx))
	}
	return v
}
