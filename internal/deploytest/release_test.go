package deploytest

import (
	"debug/elf"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/internal/testenv"
)

// TestReleaseBuildsStampedBinariesAndPackagesThatInstall runs the release
// tool as `make release` does, then checks what it made: SHA256SUMS
// verifies; both binaries are static ELF files of their architecture; the
// amd64 one reports the stamped version; the .deb installs with dpkg in a
// Debian 12 chroot with systemd (mmdebstrap), its binary runs there, the
// platform's system user and config file are made, the chroot's own
// systemd-analyze verify finds both units clean, and dpkg removes it
// again; the .rpm carries the same files (units under /usr/lib) and
// scripts.
func TestReleaseBuildsStampedBinariesAndPackagesThatInstall(t *testing.T) {
	testenv.NeedsRoot(t, "a chroot with dpkg")
	root := repoRoot(t)
	out := t.TempDir()
	const version = "v9.8.7-3-gabcdef0"
	const pkgVersion = "9.8.7+3.gabcdef0-1"
	start := time.Now()
	run(t, filepath.Join(root, "deploy", "release"), "go", "run", ".", "-repo", root, "-version", version, "-out", out)
	t.Logf("release tool: %s", time.Since(start).Round(time.Second))

	run(t, out, "sha256sum", "--strict", "-c", "SHA256SUMS")
	sums, err := os.ReadFile(filepath.Join(out, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	deb := "thinlab_" + pkgVersion + "_amd64.deb"
	for _, want := range []string{"thinlab-linux-amd64", "thinlab-linux-arm64", deb, "thinlab_" + pkgVersion + "_arm64.deb",
		"thinlab-" + pkgVersion + ".x86_64.rpm", "thinlab-" + pkgVersion + ".aarch64.rpm"} {
		if !strings.Contains(string(sums), "  "+want+"\n") {
			t.Errorf("SHA256SUMS does not list %s:\n%s", want, sums)
		}
	}
	for arch, machine := range map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64} {
		f, err := elf.Open(filepath.Join(out, "thinlab-linux-"+arch))
		if err != nil {
			t.Fatal(err)
		}
		if f.Machine != machine {
			t.Errorf("thinlab-linux-%s is for %s", arch, f.Machine)
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Errorf("thinlab-linux-%s is dynamically linked (has an interpreter): want CGO_ENABLED=0", arch)
			}
		}
		_ = f.Close()
	}
	if got := run(t, "", filepath.Join(out, "thinlab-linux-amd64"), "version"); got != "thinlab "+version+"\n" {
		t.Errorf("thinlab version printed %q, want the stamped %s", got, version)
	}

	// The .deb's control data and files.
	if got := run(t, "", "dpkg-deb", "-f", filepath.Join(out, deb), "Package", "Version", "Architecture"); got != "Package: thinlab\nVersion: "+pkgVersion+"\nArchitecture: amd64\n" {
		t.Errorf("dpkg-deb -f: %q", got)
	}

	// Install it on Debian 12 with systemd, as on a VM.
	dir := chroot(t, debianRootfs(t, "systemd"))
	data, err := os.ReadFile(filepath.Join(out, deb))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tmp", deb), data, 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "", "chroot", dir, "dpkg", "-i", "/tmp/"+deb)
	if got := run(t, "", "chroot", dir, "thinlab", "version"); got != "thinlab "+version+"\n" {
		t.Errorf("the installed thinlab version printed %q", got)
	}
	if got := run(t, "", "chroot", dir, "getent", "passwd", "thinlab-platform"); !strings.Contains(got, ":/var/lib/thinlab/platform:") {
		t.Errorf("the platform's user: %q", got)
	}
	if got := run(t, "", "chroot", dir, "stat", "-c", "%a %U:%G", "/etc/thinlab/platform.yaml"); got != "640 root:thinlab-platform\n" {
		t.Errorf("/etc/thinlab/platform.yaml is %q, want 640 root:thinlab-platform (it may hold secrets)", got)
	}
	units := []string{"/lib/systemd/system/thinlab-agent.service", "/lib/systemd/system/thinlab-platform.service"}
	// Clean means no output at all: verify prints warnings but may still
	// exit 0.
	verify, err := runErr(t.Context(), "", nil, "chroot", append([]string{dir, "sh", "-c", `systemd-analyze verify "$@" 2>&1`, "verify"}, units...)...)
	if err != nil || verify != "" {
		t.Errorf("systemd-analyze verify in the chroot: %v\n%s", err, verify)
	}
	agentUnit := readFile(t, filepath.Join(dir, units[0]))
	for _, want := range []string{"Delegate=yes", "NoNewPrivileges=yes", "StateDirectory=thinlab\n", "RuntimeDirectory=thinlab\n", "ExecStart=/usr/bin/thinlab agent run"} {
		if !strings.Contains(agentUnit, "\n"+want) {
			t.Errorf("thinlab-agent.service lacks %q", want)
		}
	}
	platformUnit := readFile(t, filepath.Join(dir, units[1]))
	for _, want := range []string{"User=thinlab-platform", "ProtectSystem=strict", "NoNewPrivileges=yes", "CapabilityBoundingSet=\n", "StateDirectory=thinlab/platform", "RuntimeDirectory=thinlab-platform"} {
		if !strings.Contains(platformUnit, "\n"+want) {
			t.Errorf("thinlab-platform.service lacks %q", want)
		}
	}
	run(t, "", "chroot", dir, "dpkg", "-r", "thinlab")
	if _, err := os.Stat(filepath.Join(dir, "usr", "bin", "thinlab")); !os.IsNotExist(err) {
		t.Errorf("after dpkg -r, /usr/bin/thinlab: %v", err)
	}

	// The .rpm: same version, the units where RPM systems keep them, the
	// scripts that make the user.
	rpmFile := filepath.Join(out, "thinlab-"+pkgVersion+".x86_64.rpm")
	if got := run(t, "", "rpm", "-qp", "--nosignature", "--qf", "%{NAME} %{VERSION}-%{RELEASE} %{ARCH}", rpmFile); got != "thinlab 9.8.7+3.gabcdef0-1 x86_64" {
		t.Errorf("rpm -qp: %q", got)
	}
	list := run(t, "", "rpm", "-qpl", "--nosignature", rpmFile)
	for _, want := range []string{"/usr/bin/thinlab", "/usr/lib/systemd/system/thinlab-agent.service", "/usr/lib/systemd/system/thinlab-platform.service", "/etc/thinlab/platform.yaml"} {
		if !strings.Contains(list, want+"\n") {
			t.Errorf("the rpm lacks %s:\n%s", want, list)
		}
	}
	if scripts := run(t, "", "rpm", "-qp", "--nosignature", "--scripts", rpmFile); !strings.Contains(scripts, "useradd --system") {
		t.Errorf("the rpm's scripts do not make the platform's user:\n%s", scripts)
	}
}

func readFile(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestBinaryLinksNoHelmOrPackaging: the chart's tests (Helm, the Kubernetes
// libraries) and the release tool (nfpm) are modules of their own, so the
// thinlab binary links none of them.
func TestBinaryLinksNoHelmOrPackaging(t *testing.T) {
	deps := run(t, repoRoot(t), "go", "list", "-deps", "./cmd/thinlab")
	for dep := range strings.SplitSeq(deps, "\n") {
		for _, banned := range []string{"helm.sh/", "k8s.io/", "sigs.k8s.io/", "github.com/goreleaser/"} {
			if strings.HasPrefix(dep, banned) {
				t.Errorf("cmd/thinlab depends on %s", dep)
			}
		}
	}
}
