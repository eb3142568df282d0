#!/bin/sh
# Entrypoint of the Thinlab agent image: optionally makes a copy-on-write
# pool on a loop file, reads an enrollment token from a file, runs
# `thinlab agent run`, and on stop undoes what it did (clones' postgres
# servers, the mount, the loop device), so that `docker compose down`
# leaves nothing attached on the host.
#
# Environment:
#   THINLAB_AGENT_CONFIG       config file (default /etc/thinlab/agent.yaml)
#   THINLAB_LOOP_POOL_SIZE     make a pool on a loop file of this size (4G);
#                              unset: the pool is the operator's (a mounted
#                              host filesystem or ZFS dataset)
#   THINLAB_LOOP_POOL_FS       btrfs (default) or xfs
#   THINLAB_LOOP_POOL_FILE     default /var/lib/thinlab/pool.img
#   THINLAB_LOOP_POOL_DIR      mountpoint, default /srv/thinlab/pool (not under
#                              the state directory: that is root-only, and
#                              the clones' postgres must reach the pool)
#   THINLAB_ENROLL_TOKEN_FILE  wait (up to 5 minutes) for this file and
#                              enroll with its token, unless the agent has
#                              its credential already (stateDir)
#   THINLAB_STATE_DIR          the config's stateDir (default /var/lib/thinlab)
#   THINLAB_VERIFICATION_TOKEN_FILE  keep a random agent API token in this
#                              file (made once, mode 0600) and put it where
#                              the config says ${THINLAB_VERIFICATION_TOKEN};
#                              the config used is then a copy in /run
set -eu

config=${THINLAB_AGENT_CONFIG:-/etc/thinlab/agent.yaml}
state=${THINLAB_STATE_DIR:-/var/lib/thinlab}
pool_file=${THINLAB_LOOP_POOL_FILE:-/var/lib/thinlab/pool.img}
pool_dir=${THINLAB_LOOP_POOL_DIR:-/srv/thinlab/pool}
mounted=""

log() { echo "thinlab-agent-entrypoint: $*" >&2; }

# stop_clones stops every postgres postmaster in this container (the clones;
# this container's PID namespace holds nothing else), gently first.
stop_clones() {
  pids=""
  for p in $(pgrep -x postgres 2>/dev/null || true); do
    parent=$(ps -o comm= -p "$(ps -o ppid= -p "$p" | tr -d ' ')" 2>/dev/null || true)
    [ "$parent" = postgres ] || pids="$pids $p"
  done
  [ -n "$(echo "$pids" | tr -d ' ')" ] || return 0
  log "stopping clone servers:$pids"
  kill -INT $pids 2>/dev/null || true
  i=0
  while [ $i -lt 100 ] && kill -0 $pids 2>/dev/null; do sleep 0.2; i=$((i + 1)); done
  kill -KILL $pids 2>/dev/null || true
}

cleanup() {
  stop_clones
  if [ -n "$mounted" ] && mountpoint -q "$pool_dir"; then
    # Clones' own mounts (overlay, bind) below the pool go first.
    for m in $(awk -v d="$pool_dir/" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r); do
      umount "$m" 2>/dev/null || umount -l "$m" || true
    done
    log "unmounting $pool_dir"
    # The loop device was attached by mount with autoclear: it detaches
    # with the last unmount.
    umount "$pool_dir" || umount -l "$pool_dir" || true
  fi
}

make_pool() {
  fs=${THINLAB_LOOP_POOL_FS:-btrfs}
  mkdir -p "$pool_dir" "$(dirname "$pool_file")"
  if [ ! -f "$pool_file" ]; then
    log "making a $fs pool of $THINLAB_LOOP_POOL_SIZE on $pool_file"
    truncate -s "$THINLAB_LOOP_POOL_SIZE" "$pool_file"
    case $fs in
    btrfs) mkfs.btrfs -q -f "$pool_file" >/dev/null ;;
    xfs) mkfs.xfs -q -m reflink=1 "$pool_file" ;;
    *) log "THINLAB_LOOP_POOL_FS=$fs: use btrfs or xfs"; exit 2 ;;
    esac
  fi
  # A privileged container sees the host's /dev as it was at its start: a
  # loop device the host adds later has no node here, so make it. Another
  # container may take the same free device meanwhile: try again.
  i=0
  while :; do
    dev=$(losetup -f)
    [ -b "$dev" ] || mknod "$dev" b 7 "${dev#/dev/loop}"
    if mount -o "loop=$dev" "$pool_file" "$pool_dir" 2>/tmp/mount.err; then break; fi
    i=$((i + 1))
    if [ $i -ge 5 ]; then
      log "mount $pool_file on $pool_dir: $(cat /tmp/mount.err)"
      exit 1
    fi
    sleep 1
  done
  mounted=yes
  log "pool $pool_dir ($fs on $dev)"
}

trap 'cleanup' EXIT
trap 'exit 143' TERM INT

[ -z "${THINLAB_LOOP_POOL_SIZE:-}" ] || make_pool

if [ -n "${THINLAB_ENROLL_TOKEN_FILE:-}" ] && [ -z "${THINLAB_ENROLL_TOKEN:-}" ] && [ ! -f "$state/platform-credential.json" ]; then
  i=0
  while [ ! -s "$THINLAB_ENROLL_TOKEN_FILE" ]; do
    if [ $i -ge 300 ]; then
      log "no enrollment token in $THINLAB_ENROLL_TOKEN_FILE after 5 minutes (is the platform up with bootstrap.enrollmentTokenFile?)"
      exit 1
    fi
    [ $((i % 15)) -ne 0 ] || log "waiting for the enrollment token in $THINLAB_ENROLL_TOKEN_FILE"
    sleep 1
    i=$((i + 1))
  done
  THINLAB_ENROLL_TOKEN=$(cat "$THINLAB_ENROLL_TOKEN_FILE")
  export THINLAB_ENROLL_TOKEN
fi

if [ -n "${THINLAB_VERIFICATION_TOKEN_FILE:-}" ]; then
  if [ ! -s "$THINLAB_VERIFICATION_TOKEN_FILE" ]; then
    (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$THINLAB_VERIFICATION_TOKEN_FILE")
  fi
  token=$(cat "$THINLAB_VERIFICATION_TOKEN_FILE")
  (umask 077; sed "s/\${THINLAB_VERIFICATION_TOKEN}/$token/g" "$config" >/run/thinlab-agent.yaml)
  config=/run/thinlab-agent.yaml
fi

# The agent runs as a child so that the traps above run at stop: sh defers
# a trapped signal until `wait` returns, so wait until the agent is gone.
thinlab agent run --config "$config" "$@" &
agent=$!
trap 'kill -TERM "$agent" 2>/dev/null || true' TERM INT
status=0
while kill -0 "$agent" 2>/dev/null; do
  wait "$agent" || status=$?
done
exit "$status"
