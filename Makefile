# Thinlab. `make demo` and `make test` work on a fresh Debian 12 machine as root.
SHELL := /bin/bash
export PATH := $(CURDIR)/bin:/usr/local/go/bin:$(PATH)
GO ?= go
BENCH ?= .
TESTFLAGS ?=
# The version stamped into the binary (thinlab version, the agent's
# /healthz, the platform's /api/v1/version).
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/thinlab/thinlab/internal/version.Version=$(VERSION)

.PHONY: all deps build generate lint test test-unit test-helm test-terraform test-compose fuzz bench demo demo-stop clean release

all: build

deps:
	@deploy/dev/deps.sh

# templ's output is committed; a templ error stops the build with its message.
generate: deps
	@templ generate -path ui >/dev/null 2>bin/templ.err || { cat bin/templ.err >&2; echo "make generate: templ failed" >&2; exit 1; }

build: generate
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/thinlab ./cmd/thinlab

# Generated files must be what templ makes from the .templ sources;
# golangci-lint (pinned in tools/go.mod, built by deps) reads .golangci.yml.
lint: deps generate
	@out=$$(git status --porcelain -- ui/); if [ -n "$$out" ]; then echo "$$out"; git diff --stat -- ui/; echo "lint: ui/ differs from git after templ generate: commit the .templ sources with their regenerated _templ.go files" >&2; exit 1; fi
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '_templ.go$$')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags lvmvm ./agent/storage/lvm/
	golangci-lint run ./...
	golangci-lint run --build-tags lvmvm ./agent/storage/lvm/
	golangci-lint run --build-tags compose ./internal/deploytest/
	cd deploy/release && golangci-lint run ./...
	cd deploy/helm/charttest && golangci-lint run ./...

# Tests need root (mounts, loop devices, the postgres OS user). Packages run
# two at a time; each test cleans up its own mounts, loop devices and daemons.
# The engine, API, CLI and platform packages run under the race detector
# (about a minute more); storage backends and the VM test run without it.
# -count=1: results depend on the host (mounts, daemons), so never cached.
# Output goes through deploy/dev/testreport, which prints what plain go
# test prints and fails the run on a skip not listed, with its reason, in
# deploy/dev/expected-skips.txt (a skip would otherwise pass unseen).
RACE_PKGS := ^github.com/thinlab/thinlab/(agent|cli|platform|sdk|agent/(api|clone|snapshot|config|retrieval)|platform/.*|sdk/.*|cli/.*)$$
TESTREPORT = bin/testreport -allow deploy/dev/expected-skips.txt
test: deps build lint bin/testreport
	set -o pipefail; $(GO) test -json -count=1 -p 2 -timeout 20m -race $(TESTFLAGS) $$($(GO) list ./... | grep -E '$(RACE_PKGS)') | $(TESTREPORT)
	set -o pipefail; $(GO) test -json -count=1 -p 2 -timeout 40m $(TESTFLAGS) $$($(GO) list ./... | grep -vE '$(RACE_PKGS)') | $(TESTREPORT)
	FUZZTIME=10s deploy/dev/fuzz.sh
	$(MAKE) --no-print-directory test-helm test-terraform test-compose

# The Helm chart's tests live in their own module (deploy/helm/charttest) so
# that the thinlab binary never links Helm or the Kubernetes libraries.
test-helm: bin/testreport
	set -o pipefail; $(GO) -C deploy/helm/charttest test -json -count=1 $(TESTFLAGS) ./... | $(TESTREPORT)

# The Terraform provider is its own module (terraform/provider) so that the
# thinlab binary never links the plugin framework. Its acceptance test runs
# a real platform and drives the provider through OpenTofu (bin/tofu, built
# by make deps).
test-terraform: deps bin/testreport
	set -o pipefail; $(GO) -C terraform/provider test -json -count=1 -timeout 10m $(TESTFLAGS) ./... | $(TESTREPORT)

# Container images and docker-compose.yml under podman, a sign-in through
# Dex in Chromium and a clone (internal/deploytest, build tag compose).
# Separate because it takes minutes (measured on a loaded 2-core machine):
# 1m50s-2m45s with podman's layer cache and the day's Debian base; a fresh
# machine adds mmdebstrap (1-10 min, the mirror decides) and the agent
# image's apt layer (about 2.5 min), then both are cached.
test-compose: deps bin/testreport
	set -o pipefail; $(GO) test -json -tags compose -count=1 -timeout 60m -run TestCompose $(TESTFLAGS) ./internal/deploytest/ | $(TESTREPORT)

# Every native fuzz target for FUZZTIME (60s) each; prints BENCH fuzz_execs
# and fuzz_crashes (BENCHMARKS.md). make test runs them for 10s each.
FUZZTIME ?= 60s
fuzz:
	FUZZTIME=$(FUZZTIME) deploy/dev/fuzz.sh

# The quick loop: tests that need neither root nor daemons. Under -short
# the tests that need them (pools, PostgreSQL, Dex, the VM) skip; those
# skips are counted, not failures. Not a substitute for make test.
test-unit: bin/testreport
	set -o pipefail; $(GO) test -json -short -count=1 $(TESTFLAGS) ./... | bin/testreport -short-ok

bin/testreport: deploy/dev/testreport/main.go
	@mkdir -p bin
	$(GO) build -o $@ ./deploy/dev/testreport

# Benchmarks print `BENCH <name> <value> <unit>` lines; results go to
# BENCHMARKS.md with the command that produced them.
bench: deps build
	set -o pipefail; $(GO) test -p 1 -run '^$$' -bench '$(BENCH)' -benchtime 1x -timeout 120m ./... | tee bench.out | grep -E '^(BENCH|ok|FAIL|---)'

demo: deps build
	@$(GO) build -o bin/thinlab-demo-roundtrip ./deploy/demo/roundtrip
	@deploy/demo/demo.sh

demo-stop:
	@deploy/demo/demo.sh stop

# Release artifacts in dist/: thinlab for linux/amd64 and linux/arm64
# (static, version stamped), a .deb and an .rpm of each with the systemd
# units (deploy/systemd), and SHA256SUMS. The packaging tool is its own
# module (deploy/release, nfpm as a library) so the main module stays lean.
release: generate
	cd deploy/release && $(GO) run . -repo $(CURDIR) -version $(VERSION) -out $(CURDIR)/dist

clean:
	rm -rf bin bench.out dist
