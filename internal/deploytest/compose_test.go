//go:build compose

package deploytest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/internal/browsertest"
	"github.com/thinlab/thinlab/internal/testenv"
)

// The images the test builds; fixed tags so that podman's layer cache
// makes the next run's builds cheap (the apt layers stay).
const (
	platformImage = "localhost/thinlab-test-platform:latest"
	agentImage    = "localhost/thinlab-test-agent:latest"
	dexImage      = "localhost/thinlab-test-dex:latest"
	clonePassword = "Compose-Clone-Pa55word-2026"
)

// podmanFlags are what podman needs on the project's machines
// (ENVIRONMENT.md, "Containers"); podman-compose gets them through
// containers.conf.
var podmanFlags = []string{"--runtime", "runc", "--cgroup-manager=cgroupfs"}

const containersConf = `[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
`

// TestComposeUpSignInCloneDown: both images build under podman on a
// Debian 12 base made here by mmdebstrap (the platform's is non-root with
// a health check); docker-compose.yml comes up under podman-compose; the
// platform's health check passes; in headless Chromium the demo user
// signs in through Dex and finds the agent, which enrolled itself with the
// bootstrap token, connected; a clone made on the Clones page answers on
// its published port with the demo data; `down -v` leaves no container,
// volume, mount or loop device.
func TestComposeUpSignInCloneDown(t *testing.T) {
	testenv.NeedsRoot(t, "podman, loop devices")
	for _, tool := range []string{"podman", "podman-compose", "runc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing: run make deps", tool)
		}
	}
	// The compose file publishes fixed ports on 127.0.0.1 (the issuer URL
	// and the redirect URL name them).
	for _, port := range []int{8080, 5556, 6000, 6009} {
		if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err != nil {
			t.Fatalf("port %d is taken (is make demo running? make demo-stop): the compose file publishes it: %v", port, err)
		} else {
			_ = l.Close()
		}
	}
	root := repoRoot(t)
	conf := filepath.Join(t.TempDir(), "containers.conf")
	if err := os.WriteFile(conf, []byte(containersConf), 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{"CONTAINERS_CONF=" + conf}
	// Not t.Context(): that is canceled before the cleanup, which needs
	// podman most.
	podman := func(args ...string) (string, error) {
		return runErr(context.Background(), root, env, "podman", append(append([]string{}, podmanFlags...), args...)...)
	}
	// logs are a container's stdout and stderr together.
	logs := func(container string, tail int) string {
		args := append(append([]string{}, podmanFlags...), "logs", "--tail", fmt.Sprint(tail), container)
		out, err := exec.Command("podman", args...).CombinedOutput()
		if err != nil {
			return fmt.Sprintf("podman logs %s: %v %s", container, err, out)
		}
		return string(out)
	}

	start := time.Now()
	base := importBase(t, podman)
	t.Logf("base image %s: %s", base, time.Since(start).Round(time.Second))

	start = time.Now()
	buildImages(t, root, base, podman)
	t.Logf("images built: %s", time.Since(start).Round(time.Second))
	if user, _ := podman("image", "inspect", "--format", "{{.Config.User}}", platformImage); strings.TrimSpace(user) != "65532:65532" {
		t.Errorf("the platform image runs as %q, want the non-root 65532:65532", user)
	}
	if hc, _ := podman("image", "inspect", "--format", "{{json .Config.Healthcheck}}", platformImage); !strings.Contains(hc, "platform") || !strings.Contains(hc, "health") {
		t.Errorf("the platform image's health check: %s", hc)
	}

	project := fmt.Sprintf("thinlabtest%d", os.Getpid())
	composeEnv := append(append([]string{}, env...),
		"THINLAB_PLATFORM_IMAGE="+platformImage, "THINLAB_AGENT_IMAGE="+agentImage, "THINLAB_DEX_IMAGE="+dexImage)
	compose := func(ctx context.Context, args ...string) (string, error) {
		return runErr(ctx, root, composeEnv, "podman-compose", append([]string{"-p", project, "-f", filepath.Join(root, "docker-compose.yml")}, args...)...)
	}
	var loopDev string
	t.Cleanup(func() { composeDown(t, project, compose, podman, logs, loopDev) })
	start = time.Now()
	if _, err := compose(t.Context(), "up", "-d", "--no-build"); err != nil {
		t.Fatal(err)
	}
	waitHTTP(t, "the platform's /healthz", "http://127.0.0.1:8080/healthz", 5*time.Minute, func() string {
		return "platform:\n" + logs(project+"_platform_1", 30) + "\ndb:\n" + logs(project+"_db_1", 20)
	})
	t.Logf("compose up to a healthy platform: %s", time.Since(start).Round(time.Second))
	if out, err := podman("healthcheck", "run", project+"_platform_1"); err != nil {
		t.Errorf("the platform container's health check: %v %s", err, out)
	}

	// The agent made its pool on a loop device: remember which, to prove
	// it is gone after down.
	waitFor(t, "the agent's pool", 3*time.Minute, func() (bool, string) {
		l := logs(project+"_agent_1", 200)
		if m := regexp.MustCompile(`pool /srv/thinlab/pool \(btrfs on (/dev/loop\d+)\)`).FindStringSubmatch(l); m != nil {
			loopDev = m[1]
			return true, ""
		}
		return false, l
	})

	ctx := browsertest.New(t)
	const base8080 = "http://localhost:8080"
	browsertest.Step(t, ctx, "sign in through Dex",
		chromedp.Navigate(base8080+"/"),
		chromedp.WaitVisible(`a[href^="/auth/login/sso"]`),
		chromedp.Click(`a[href^="/auth/login/sso"]`),
		chromedp.WaitVisible("#login"),
		chromedp.SendKeys("#login", "demo@thinlab.local"),
		chromedp.SendKeys("#password", "demo-password"),
		chromedp.Submit("#password"),
		chromedp.WaitVisible("#my-role"),
	)
	agentLogs := func() string { return logs(project+"_agent_1", 40) }
	waitPage(t, ctx, "the agent connected on the Agents page", base8080+"/o/demo/agents", "body", 3*time.Minute, agentLogs,
		func(text string) bool {
			return strings.Contains(text, "compose-agent") && strings.Contains(text, "connected") && !strings.Contains(text, "disconnected")
		})
	// The first snapshot: the agent retrieved the demo database.
	clonesURL := base8080 + "/o/demo/clones"
	waitPage(t, ctx, "a snapshot on the Clones page", clonesURL, "#snapshots", 5*time.Minute, agentLogs,
		func(string) bool {
			n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("#snapshots tbody tr[data-snapshot]").length`))
			return err == nil && n > 0
		})
	browsertest.Step(t, ctx, "create a clone",
		chromedp.WaitVisible("#clone-form"),
		chromedp.SendKeys("#clone-id", "compose-clone"),
		chromedp.SendKeys("#clone-username", "dev"),
		chromedp.SendKeys("#clone-password", clonePassword),
		chromedp.Submit("#clone-username"),
		chromedp.WaitVisible("#clone-state"),
	)
	// The clone's page reloads itself until the clone is ready.
	waitFor(t, "the clone's connection string", 3*time.Minute, func() (bool, string) {
		n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("#clone-connstr").length`))
		return err == nil && n > 0, browsertest.Describe(ctx) + "\n" + agentLogs()
	})
	connStr := browsertest.Get(t, ctx, "connection string", chromedp.Text("#clone-connstr"))
	port := regexp.MustCompile(`port=(\d+)`).FindStringSubmatch(connStr)
	if port == nil || !strings.Contains(connStr, "user=dev") {
		t.Fatalf("connection string %q: want a port and user dev", connStr)
	}
	// Published by the compose file on 127.0.0.1: the clone of shop answers.
	cc, err := pgx.ParseConfig("host=127.0.0.1 port=" + port[1] + " user=dev dbname=shop sslmode=disable connect_timeout=10")
	if err != nil {
		t.Fatal(err)
	}
	cc.Password = clonePassword
	qctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	conn, err := pgx.ConnectConfig(qctx, cc)
	if err != nil {
		t.Fatalf("connect to the clone on its published port %s: %v", port[1], err)
	}
	var customers int
	err = conn.QueryRow(qctx, "SELECT count(*) FROM customers").Scan(&customers)
	_ = conn.Close(qctx)
	if err != nil || customers == 0 {
		t.Fatalf("the clone's customers: %d %v", customers, err)
	}
	t.Logf("clone compose-clone on port %s has %d customers", port[1], customers)
}

// importBase imports the cached Debian root filesystem as the image the
// Dockerfiles take as BASE_IMAGE (no registry is reachable here).
func importBase(t *testing.T, podman func(...string) (string, error)) string {
	t.Helper()
	tarball := debianRootfs(t)
	tag := "localhost/thinlab-test-debian:" + strings.TrimSuffix(filepath.Base(tarball), ".tar")
	if _, err := podman("image", "exists", tag); err == nil {
		return tag
	}
	if _, err := podman("import", tarball, tag); err != nil {
		t.Fatal(err)
	}
	return tag
}

// buildImages builds the platform and agent images from deploy/docker with
// a freshly built static binary, and a Dex image (the compose file's
// default is Dex's own image from ghcr.io) from the pinned bin/dex.
func buildImages(t *testing.T, root, base string, podman func(...string) (string, error)) {
	t.Helper()
	bctx := t.TempDir()
	if err := os.MkdirAll(filepath.Join(bctx, "dist"), 0o755); err != nil {
		t.Fatal(err)
	}
	// What make release builds (deploy/release), for this machine's arch.
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X github.com/thinlab/thinlab/internal/version.Version=compose-test",
		"-o", filepath.Join(bctx, "dist", "thinlab-linux-amd64"), "./cmd/thinlab")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	run(t, "", "cp", "-r", filepath.Join(root, "deploy", "docker"), filepath.Join(bctx, "deploy-docker"))
	if err := os.MkdirAll(filepath.Join(bctx, "deploy"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(bctx, "deploy-docker"), filepath.Join(bctx, "deploy", "docker")); err != nil {
		t.Fatal(err)
	}
	for image, dockerfile := range map[string]string{platformImage: "platform.Dockerfile", agentImage: "agent.Dockerfile"} {
		old, _ := podman("image", "inspect", "--format", "{{.Id}}", image)
		start := time.Now()
		// Docker format: OCI images have no HEALTHCHECK.
		if _, err := podman("build", "--format", "docker", "--build-arg", "BASE_IMAGE="+base,
			"-f", filepath.Join(bctx, "deploy", "docker", dockerfile), "-t", image, bctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %s", image, time.Since(start).Round(time.Second))
		removeReplaced(podman, image, old)
	}
	dexDir := t.TempDir()
	dex, err := filepath.EvalSymlinks(filepath.Join(root, "bin", "dex"))
	if err != nil {
		t.Fatalf("bin/dex: %v (run make deps)", err)
	}
	run(t, "", "cp", dex, filepath.Join(dexDir, "dex"))
	dockerfile := "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY dex /usr/local/bin/dex\nUSER 65532:65532\n"
	if err := os.WriteFile(filepath.Join(dexDir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		t.Fatal(err)
	}
	old, _ := podman("image", "inspect", "--format", "{{.Id}}", dexImage)
	if _, err := podman("build", "--build-arg", "BASE_IMAGE="+base, "-t", dexImage, dexDir); err != nil {
		t.Fatal(err)
	}
	removeReplaced(podman, dexImage, old)
}

// removeReplaced removes the image a rebuild untagged, so that runs do not
// pile up images; the new layers keep the cache.
func removeReplaced(podman func(...string) (string, error), image, oldID string) {
	oldID = strings.TrimSpace(oldID)
	if oldID == "" {
		return
	}
	if now, _ := podman("image", "inspect", "--format", "{{.Id}}", image); strings.TrimSpace(now) != oldID {
		_, _ = podman("rmi", oldID)
	}
}

// composeDown brings the project down with its volumes and fails the test
// for anything left: containers, volumes, the network, the pool's mount
// and loop device.
func composeDown(t *testing.T, project string, compose func(context.Context, ...string) (string, error), podman func(...string) (string, error), logs func(string, int) string, loopDev string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if t.Failed() {
		for _, svc := range []string{"platform", "agent", "db", "dex.localhost"} {
			t.Logf("%s logs:\n%s", svc, logs(project+"_"+svc+"_1", 30))
		}
	}
	start := time.Now()
	// A minute to stop: the agent's entrypoint stops the clones and
	// unmounts the pool (podman-compose's default is 1 s).
	if out, err := compose(ctx, "down", "-t", "60", "-v"); err != nil {
		t.Errorf("compose down: %v\n%s", err, out)
	}
	// podman-compose 1.0.3 leaves the project's network (docs/install.md).
	if out, err := podman("network", "rm", project+"_default"); err != nil && !strings.Contains(err.Error(), "no such network") {
		t.Errorf("network rm: %v %s", err, out)
	}
	t.Logf("compose down: %s", time.Since(start).Round(time.Second))
	if out, err := podman("ps", "-a", "--format", "{{.Names}}"); err != nil || strings.Contains(out, project) {
		t.Errorf("containers left after down:\n%s", out)
	}
	if out, err := podman("volume", "ls", "--format", "{{.Name}}"); err != nil || strings.Contains(out, project) {
		t.Errorf("volumes left after down:\n%s", out)
	}
	if out, err := podman("network", "ls", "--format", "{{.Name}}"); err != nil || strings.Contains(out, project) {
		t.Errorf("networks left after down:\n%s", out)
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	for line := range strings.SplitSeq(string(mounts), "\n") {
		// Not by loop device name: another test may have the (detached
		// and reused) device mounted by now; backing_file tells below.
		if strings.Contains(line, project) || strings.Contains(line, "/srv/thinlab/pool") {
			t.Errorf("mount left after down: %s", line)
		}
	}
	if loopDev != "" {
		backing, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(loopDev), "loop", "backing_file"))
		if err == nil && (strings.Contains(string(backing), project) || strings.Contains(string(backing), "/var/lib/thinlab/pool.img")) {
			t.Errorf("loop device %s still attached to %s", loopDev, backing)
		}
	}
}

func waitHTTP(t *testing.T, what, url string, limit time.Duration, explain func() string) {
	t.Helper()
	waitFor(t, what, limit, func() (bool, string) {
		resp, err := http.Get(url) //nolint:gosec,noctx // the test's own URL
		if err != nil {
			return false, err.Error() + "\n" + explain()
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status + " " + string(body) + "\n" + explain()
	})
}

// waitPage loads url until the text of sel satisfies ok.
func waitPage(t *testing.T, ctx context.Context, what, url, sel string, limit time.Duration, explain func() string, ok func(string) bool) {
	t.Helper()
	waitFor(t, what, limit, func() (bool, string) {
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := chromedp.Do(sctx, chromedp.Navigate(url)); err != nil {
			return false, err.Error()
		}
		text, err := chromedp.Run(sctx, chromedp.Text(sel))
		if err != nil {
			return false, err.Error()
		}
		return ok(text), text + "\n" + explain()
	})
}

// waitFor polls check every 2 s until it reports true; after limit the
// test fails with what check said last.
func waitFor(t *testing.T, what string, limit time.Duration, check func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ok, last := check()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s; last:\n%s", what, limit, last)
		}
		time.Sleep(2 * time.Second)
	}
}
