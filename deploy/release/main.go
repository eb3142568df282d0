// Command release builds what `make release` publishes: the thinlab binary
// for linux/amd64 and linux/arm64 with the version stamped, a .deb and an
// .rpm of each (with the systemd units of deploy/systemd), and SHA256SUMS
// over all of them.
//
// It is its own Go module so that nfpm (the package builder, used as a
// library) stays out of the main module's dependencies.
//
//	go run . -repo ../.. -version v0.3.0 -out ../../dist
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb" // registers the deb packager
	"github.com/goreleaser/nfpm/v2/files"
	_ "github.com/goreleaser/nfpm/v2/rpm" // registers the rpm packager
)

const versionVar = "github.com/thinlab/thinlab/internal/version.Version"

// Arches are the GOARCH values released; nfpm maps them to each package
// format's own names (amd64/x86_64, arm64/aarch64).
var Arches = []string{"amd64", "arm64"}

func main() {
	repo := flag.String("repo", "../..", "the thinlab checkout (main module root)")
	version := flag.String("version", "", "version to stamp, such as v0.3.0 or the output of git describe (required)")
	out := flag.String("out", "dist", "output directory; emptied first")
	arches := flag.String("arches", strings.Join(Arches, ","), "comma-separated GOARCH values")
	flag.Parse()
	if err := run(*repo, *version, *out, strings.Split(*arches, ",")); err != nil {
		fmt.Fprintln(os.Stderr, "release:", err)
		os.Exit(1)
	}
}

func run(repo, version, out string, arches []string) error {
	if version == "" {
		return errors.New("-version is required (make release passes git describe)")
	}
	repo, err := filepath.Abs(repo)
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(repo, "cmd", "thinlab")); err != nil {
		return fmt.Errorf("-repo %s is not the thinlab checkout (no cmd/thinlab): %w", repo, err)
	}
	out, err = filepath.Abs(out)
	if err != nil {
		return err
	}
	if err := os.RemoveAll(out); err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o755); err != nil { //nolint:gosec // G301: release artifacts are public
		return err
	}
	pkgVersion := PackageVersion(version)
	var made []string
	for _, arch := range arches {
		bin := filepath.Join(out, "thinlab-linux-"+arch)
		if err := buildBinary(repo, version, arch, bin); err != nil {
			return err
		}
		made = append(made, bin)
		for _, format := range []string{"deb", "rpm"} {
			p, err := buildPackage(repo, bin, pkgVersion, arch, format, out)
			if err != nil {
				return fmt.Errorf("%s %s: %w", format, arch, err)
			}
			made = append(made, p)
		}
	}
	if err := writeSums(out, made); err != nil {
		return err
	}
	for _, m := range made {
		fmt.Println(filepath.Join(filepath.Base(out), filepath.Base(m)))
	}
	fmt.Println(filepath.Join(filepath.Base(out), "SHA256SUMS"))
	return nil
}

// buildBinary cross-compiles cmd/thinlab statically (no cgo: the binary
// needs none, and a static binary runs in the distroless-style platform
// image and on any glibc).
func buildBinary(repo, version, arch, dst string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false", //nolint:gosec // G204: the version and arch of the release being built
		"-ldflags", "-s -w -X "+versionVar+"="+version,
		"-o", dst, "./cmd/thinlab")
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch, "GOFLAGS=-mod=readonly")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build linux/%s: %w", arch, err)
	}
	return nil
}

var semverish = regexp.MustCompile(`^v?[0-9]+\.[0-9]+\.[0-9]+`)

// PackageVersion turns the stamped version (git describe output) into one
// that dpkg and rpm order and accept: the leading v goes, a describe
// suffix becomes build metadata (v0.3.0-12-gabc1234-dirty ->
// 0.3.0+12.gabc1234.dirty), and a bare commit (no tag yet) becomes
// 0.0.0+g<commit>.
func PackageVersion(v string) string {
	if !semverish.MatchString(v) {
		return "0.0.0+g" + strings.ReplaceAll(v, "-", ".")
	}
	v = strings.TrimPrefix(v, "v")
	if i := strings.IndexByte(v, '-'); i >= 0 {
		v = v[:i] + "+" + strings.ReplaceAll(v[i+1:], "-", ".")
	}
	return v
}

func buildPackage(repo, bin, version, arch, format, out string) (string, error) {
	unitDir := "/lib/systemd/system" // Debian 12 still ships units there
	if format == "rpm" {
		unitDir = "/usr/lib/systemd/system"
	}
	rel := func(p string) string { return filepath.Join(repo, p) }
	info := &nfpm.Info{
		Name:          "thinlab",
		Arch:          arch,
		Platform:      "linux",
		Version:       version,
		VersionSchema: "semver",
		Release:       "1",
		Section:       "database",
		Priority:      "optional",
		Maintainer:    "Thinlab <thinlab@example.com>",
		Vendor:        "Thinlab",
		Homepage:      "https://github.com/thinlab/thinlab",
		License:       "Apache-2.0",
		Description: "Thin clones of PostgreSQL: agent and platform\n" +
			"One binary: `thinlab agent run` makes copy-on-write clones of PostgreSQL\n" +
			"databases (ZFS, btrfs, XFS, overlayfs, LVM); `thinlab platform serve` is\n" +
			"the multi-tenant control plane. systemd units: thinlab-agent, thinlab-platform.",
		Overridables: nfpm.Overridables{
			// The clones' and the embedded database's servers, and the
			// copy-on-write tools; none is needed to install the binary.
			Recommends: []string{"postgresql-15"},
			Suggests:   []string{"btrfs-progs", "xfsprogs", "zfs-fuse", "lvm2"},
			Contents: files.Contents{
				{Source: bin, Destination: "/usr/bin/thinlab", FileInfo: &files.ContentFileInfo{Mode: 0o755}},
				{Source: rel("deploy/systemd/thinlab-agent.service"), Destination: unitDir + "/thinlab-agent.service", FileInfo: &files.ContentFileInfo{Mode: 0o644}},
				{Source: rel("deploy/systemd/thinlab-platform.service"), Destination: unitDir + "/thinlab-platform.service", FileInfo: &files.ContentFileInfo{Mode: 0o644}},
				{Source: rel("deploy/release/files/platform.yaml"), Destination: "/etc/thinlab/platform.yaml", Type: files.TypeConfigNoReplace, FileInfo: &files.ContentFileInfo{Mode: 0o640}},
				{Source: rel("deploy/release/files/agent.yaml"), Destination: "/usr/share/doc/thinlab/examples/agent.yaml", FileInfo: &files.ContentFileInfo{Mode: 0o644}},
				{Source: rel("docs/install.md"), Destination: "/usr/share/doc/thinlab/install.md", FileInfo: &files.ContentFileInfo{Mode: 0o644}},
				{Destination: "/etc/thinlab", Type: files.TypeDir, FileInfo: &files.ContentFileInfo{Mode: 0o755}},
			},
			Scripts: nfpm.Scripts{
				PostInstall: rel("deploy/release/files/postinstall.sh"),
				PreRemove:   rel("deploy/release/files/preremove.sh"),
				PostRemove:  rel("deploy/release/files/postremove.sh"),
			},
		},
	}
	info = nfpm.WithDefaults(info)
	if err := nfpm.PrepareForPackager(info, format); err != nil {
		return "", err
	}
	packager, err := nfpm.Get(format)
	if err != nil {
		return "", err
	}
	path := filepath.Join(out, packager.ConventionalFileName(info))
	f, err := os.Create(path) //nolint:gosec // G304: the package in the output directory
	if err != nil {
		return "", err
	}
	if err := packager.Package(info, f); err != nil {
		_ = f.Close()
		return "", err
	}
	return path, f.Close()
}

// writeSums writes SHA256SUMS in the format `sha256sum -c` reads.
func writeSums(out string, paths []string) error {
	sort.Strings(paths)
	var b strings.Builder
	for _, p := range paths {
		f, err := os.Open(p) //nolint:gosec // G304: an artifact this tool just wrote
		if err != nil {
			return err
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		_ = f.Close()
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s  %s\n", hex.EncodeToString(h.Sum(nil)), filepath.Base(p))
	}
	return os.WriteFile(filepath.Join(out, "SHA256SUMS"), []byte(b.String()), 0o644) //nolint:gosec // G306: published with the artifacts
}
