# Thinlab. `make demo` and `make test` work on a fresh Debian 12 machine as root.
SHELL := /bin/bash
export PATH := $(CURDIR)/bin:/usr/local/go/bin:$(PATH)
GO ?= go
BENCH ?= .
TESTFLAGS ?=

.PHONY: all deps build generate lint test bench demo demo-stop clean

all: build

deps:
	@deploy/dev/deps.sh

generate: deps
	@templ generate -path ui >/dev/null 2>&1 || true

build: generate
	$(GO) build -o bin/thinlab ./cmd/thinlab

# golangci-lint (pinned in tools/go.mod, built by deps) reads .golangci.yml.
lint: deps
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '_templ.go$$')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	golangci-lint run ./...

# Tests need root (mounts, loop devices, the postgres OS user). Packages run
# two at a time; each test cleans up its own mounts, loop devices and daemons.
# The engine, API, CLI and platform packages run under the race detector
# (about a minute more); storage backends and the VM test run without it.
# -count=1: results depend on the host (mounts, daemons), so never cached.
RACE_PKGS := ^github.com/thinlab/thinlab/(agent|cli|platform|sdk|agent/(api|clone|snapshot|config|retrieval)|platform/.*|sdk/.*|cli/.*)$$
test: deps build lint
	$(GO) test -count=1 -p 2 -timeout 20m -race $(TESTFLAGS) $$($(GO) list ./... | grep -E '$(RACE_PKGS)')
	$(GO) test -count=1 -p 2 -timeout 40m $(TESTFLAGS) $$($(GO) list ./... | grep -vE '$(RACE_PKGS)')

# Benchmarks print `BENCH <name> <value> <unit>` lines; results go to
# BENCHMARKS.md with the command that produced them.
bench: deps build
	set -o pipefail; $(GO) test -p 1 -run '^$$' -bench '$(BENCH)' -benchtime 1x -timeout 120m ./... | tee bench.out | grep -E '^(BENCH|ok|FAIL|---)'

demo: deps build
	@$(GO) build -o bin/thinlab-demo-roundtrip ./deploy/demo/roundtrip
	@deploy/demo/demo.sh

demo-stop:
	@deploy/demo/demo.sh stop

clean:
	rm -rf bin bench.out
