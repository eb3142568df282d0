#!/usr/bin/env bash
# Installs what Thinlab needs on a Debian 12 machine, only what is missing,
# quietly when everything is there. Called by `make deps` (and so by `make
# test`, `make demo` and CI).
set -euo pipefail
cd "$(dirname "$0")/../.."

packages=(
  postgresql-15 postgresql-contrib postgresql-15-hypopg   # clones, sources, platform DB
  zfs-fuse btrfs-progs xfsprogs util-linux                # copy-on-write pools on loop files
  qemu-system-x86 linux-image-amd64 lvm2 thin-provisioning-tools busybox-static cpio  # LVM thin tests in a VM
  chromium chromium-driver                                # UI tests in a real browser
  pgbackrest barman rsync                                 # physical retrieval from backup tools
  ca-certificates git make gcc curl procps jq            # the demo script; jq: the OpenTofu build
  podman podman-compose runc golang-github-containernetworking-plugin-dnsname  # container images and docker-compose.yml (make test-compose)
  mmdebstrap rpm                                          # Debian base images and chroots; .rpm inspection (internal/deploytest)
)
missing=()
for p in "${packages[@]}"; do
  [[ "$p" == \#* ]] && continue
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v go >/dev/null; then
  export PATH=$PATH:/usr/local/go/bin
fi
command -v go >/dev/null || { echo "deps: Go 1.26 is required (install it to /usr/local/go)" >&2; exit 1; }

# Go tools pinned in tools/go.mod, built once into bin/.
# Pinned tools are built once per tools/go.mod+go.sum into a cache outside
# the checkout (keyed by their hash), so a fresh clone links them instead of
# rebuilding; bin/NAME is a symlink into the cache.
mkdir -p bin
tools_key=$(cat tools/go.mod tools/go.sum | sha256sum | cut -c1-16)
tools_cache=${THINLAB_TOOLS_CACHE:-/var/cache/thinlab/tools}/$tools_key
mkdir -p "$tools_cache"
build_tool() { # name package
  local name=$1 pkg=$2
  if [[ ! -x $tools_cache/$name ]]; then
    echo "deps: building $name into $tools_cache"
    (cd tools && CGO_ENABLED=0 go build -o "$tools_cache/$name.tmp" "$pkg")
    mv "$tools_cache/$name.tmp" "$tools_cache/$name"
  fi
  ln -sfn "$tools_cache/$name" "bin/$name"
}
build_tool templ github.com/a-h/templ/cmd/templ
build_tool dex github.com/dexidp/dex/cmd/dex
build_tool stripe-mock github.com/stripe/stripe-mock
build_tool golangci-lint github.com/golangci/golangci-lint/v2/cmd/golangci-lint   # make lint
build_tool oapi-codegen github.com/oapi-codegen/oapi-codegen/v2/cmd/oapi-codegen  # the OpenAPI client compile tests

# Pinned programs that cannot share tools/go.mod: WAL-G (cgo, its own
# wrapper module tools/walg) and MinIO (a large dependency graph), both for
# the physical retrieval tests. Built once per version into the same cache,
# linked into bin/.
build_pinned() { # name key build-command (gets the output path as $1)
  local name=$1 key=$2 build=$3
  local dir=${THINLAB_TOOLS_CACHE:-/var/cache/thinlab/tools}/$name-$key
  if [[ ! -x $dir/$name ]]; then
    echo "deps: building $name ($key) into $dir, once"
    mkdir -p "$dir"
    bash -c "$build" _ "$dir/$name.tmp"
    mv "$dir/$name.tmp" "$dir/$name"
  fi
  ln -sfn "$dir/$name" "bin/$name"
}
walg_key=v0.2.20-$(cat tools/walg/go.mod tools/walg/go.sum | sha256sum | cut -c1-12)
build_pinned wal-g "$walg_key" 'cd tools/walg && GONOSUMDB=github.com/wal-g CGO_ENABLED=1 go build -o "$1" github.com/wal-g/wal-g/main/pg'
minio_version=v0.0.0-20260212201848-7aac2a2c5b7c
build_pinned minio "$minio_version" 'd=$(mktemp -d) && GOBIN=$d CGO_ENABLED=0 go install github.com/minio/minio@'"$minio_version"' && mv "$d/minio" "$1" && rmdir "$d"'
# Mailpit: a real SMTP server with an HTTP API, for the notification tests
# (platform/notify). Its own module (SQLite, a large graph), like MinIO.
mailpit_version=v1.33.1
build_pinned mailpit "$mailpit_version" 'd=$(mktemp -d) && GOBIN=$d CGO_ENABLED=0 go install github.com/axllent/mailpit@'"$mailpit_version"' && mv "$d/mailpit" "$1" && rmdir "$d"'
# OpenTofu: runs the Terraform provider's acceptance test (terraform/provider,
# make test-terraform). Its go.mod has replace directives, so `go install
# ...@version` is refused; it is built as the main module from a writable
# copy of the module download.
tofu_version=v1.10.6
build_pinned tofu "$tofu_version" 'd=$(go mod download -json github.com/opentofu/opentofu@'"$tofu_version"' | jq -r .Dir) && w=$(mktemp -d) && cp -r "$d/." "$w" && chmod -R u+w "$w" && (cd "$w" && CGO_ENABLED=0 go build -o "$1" ./cmd/tofu) && rm -rf "$w"'
