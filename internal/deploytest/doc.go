// Package deploytest tests what Thinlab ships for installation, for real:
//
//   - the release (make release, deploy/release): binaries for linux/amd64
//     and linux/arm64, stamped and static, SHA256SUMS, and a .deb that
//     installs in a Debian 12 chroot (made by mmdebstrap) whose binary runs
//     and whose systemd units `systemd-analyze verify` finds clean; the .rpm
//     is inspected with rpm(8).
//   - the container images and docker-compose.yml (build tag compose,
//     `make test-compose`): both images built under podman on a Debian base
//     made here, the compose project up under podman-compose, a sign-in
//     through Dex in headless Chromium, the agent connected, a clone made,
//     and nothing left after `down`.
//
// No container registry is reachable on the project's machines, so every
// base image is built from Debian packages (ENVIRONMENT.md, "Containers").
// The package has only tests.
package deploytest
