#!/usr/bin/env bash
# `make demo`: the whole product on one machine, on built-in defaults.
#
#   1. a sample source database (PostgreSQL 15, "shop"),
#   2. a snapshot and clone round trip with timings on a pool of every
#      copy-on-write backend that works on this host (loop files),
#   3. the platform with its own local PostgreSQL and a local IdP (Dex),
#   4. an agent on a btrfs pool on a loop file that enrolls into the
#      platform, retrieves the source (pg_dump | pg_restore) and snapshots
#      it, and a thin clone a user can psql into (and see in the browser).
#
# `make demo-stop` (or Ctrl-C when the demo runs in a terminal) stops every
# process it started and leaves nothing mounted or attached. Everything
# lives under .demo/ in the checkout; .demo/state lists what to undo.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
DEMO=$REPO/.demo
STATE=$DEMO/state
BIN=$REPO/bin
# The newest installed PostgreSQL (make deps installs 15).
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}

SOURCE_PORT=${DEMO_SOURCE_PORT:-55432}
AGENT_PORT=${DEMO_AGENT_PORT:-2345}
PLATFORM_PORT=${DEMO_PLATFORM_PORT:-8080}
DEX_PORT=${DEMO_DEX_PORT:-5556}
CLONE_PORTS_FROM=${DEMO_CLONE_PORTS_FROM:-6000}
# A fresh random token per run: the agent refuses tokens shorter than 32
# characters (head/od instead of openssl, which a minimal host may lack).
AGENT_TOKEN=${DEMO_AGENT_TOKEN:-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')}
SOURCE_PASSWORD=demo-source-Pa55word
CLONE_USER=demo
CLONE_PASSWORD=Demo-Clone-Pa55word-2026
DEX_USER=demo@thinlab.local
DEX_PASSWORD=demo-password

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }
record() { echo "$*" >>"$STATE"; }
as_postgres() { runuser -u postgres -- "$@"; }

# ---------------------------------------------------------------- stop ---

# stop undoes .demo/state from the last line to the first, so that clones
# stop before the agent, the agent before its pool is unmounted, and so on.
# Every step is best effort: a half-started demo must still stop cleanly.
stop() {
  [[ -f $STATE ]] || { echo "demo: nothing to stop"; return 0; }
  say "Stopping the demo"
  tac "$STATE" | while read -r kind arg1 arg2; do
    case $kind in
    pid)
      if kill -0 "$arg1" 2>/dev/null; then
        note "stopping $arg2 (pid $arg1)"
        kill -TERM "$arg1" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$arg1" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$arg1" 2>/dev/null || true
      fi
      ;;
    clones)
      # Clones' postgres processes outlive the agent by design (they are
      # found again on restart); the demo stops them by their data dirs.
      stop_postgres_under "$arg1"
      ;;
    pg)
      if [[ -f $arg1/postmaster.pid ]]; then
        note "stopping postgres in $arg1"
        as_postgres "$PGBIN/pg_ctl" -D "$arg1" -m fast -w stop >/dev/null 2>&1 || true
      fi
      ;;
    mount)
      if mountpoint -q "$arg1"; then
        note "unmounting $arg1"
        stop_postgres_under "$arg1"
        umount "$arg1" 2>/dev/null || umount -l "$arg1" || true
      fi
      ;;
    loop)
      for dev in $(losetup -j "$arg1" -O NAME -n 2>/dev/null); do
        note "detaching $dev"
        losetup -d "$dev" || true
      done
      ;;
    esac
  done
  # Keep the logs (they explain a failed start); everything else goes.
  find "$DEMO" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf {} +
  echo "demo: stopped; nothing is left mounted or running (logs kept in $DEMO/logs)"
}

# stop_postgres_under stops every postgres whose data directory is below
# dir (clones of the demo's pools).
stop_postgres_under() {
  local dir=$1 pid cmd
  for pid in $(pgrep -x postgres || true); do
    cmd=$( (tr '\0' ' ' <"/proc/$pid/cmdline") 2>/dev/null || true)
    [[ $cmd == *" -D $dir/"* ]] || continue
    # Only postmasters (their parent is not another postgres).
    [[ $(ps -o comm= -p "$(ps -o ppid= -p "$pid" | tr -d ' ')" 2>/dev/null) == postgres ]] && continue
    note "stopping clone postgres (pid $pid)"
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  done
}

if [[ ${1:-} == stop ]]; then
  stop
  exit 0
fi

# --------------------------------------------------------------- start ---

[[ $(id -u) == 0 ]] || die "run as root (it mounts loop files and runs postgres as the postgres user)"
[[ -x $BIN/thinlab ]] || die "bin/thinlab is missing: run make demo (it builds first)"
if [[ -f $STATE ]]; then
  echo "demo: a previous demo is still set up; stopping it first"
  stop
fi
rm -rf "$DEMO/logs"
mkdir -p "$DEMO/logs" "$DEMO/run"
chmod 755 "$DEMO"
chown postgres: "$DEMO/run"
: >"$STATE"
# A failed start undoes what it did; the logs stay.
trap 'rc=$?; if ((rc != 0)); then echo "demo: failed (logs in $DEMO/logs); cleaning up" >&2; stop >&2; fi' EXIT

# wait_for retries a silent check; a check that knows waiting is useless
# writes why to $DEMO/run/failed.
wait_for() { # description, seconds, command...
  local what=$1 secs=$2
  shift 2
  for _ in $(seq 1 $((secs * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    [[ -s $DEMO/run/failed ]] && die "$(cat "$DEMO/run/failed")"
    sleep 0.2
  done
  die "$what did not come up within ${secs}s (logs in $DEMO/logs)"
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }
since() { local ms=$(($(now_ms) - $1)); printf '%d.%03ds' $((ms / 1000)) $((ms % 1000)); }
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$SOURCE_PORT" "$AGENT_PORT" "$PLATFORM_PORT" "$DEX_PORT"; do
  port_free "$p" || die "port $p is in use: stop what uses it, or set the DEMO_*_PORT variables (see deploy/demo/demo.sh)"
done

# 1. The sample source database.
[[ -x $PGBIN/initdb ]] || die "no PostgreSQL server under /usr/lib/postgresql: run make deps (or set PGBIN)"
say "1/4 Sample source database (PostgreSQL $("$PGBIN/postgres" -V | awk '{print $3}') on port $SOURCE_PORT)"
mkdir -p "$DEMO/source"
chown postgres: "$DEMO/source"
pwfile=$DEMO/run/pw
echo "$SOURCE_PASSWORD" >"$pwfile"
chown postgres: "$pwfile"
as_postgres "$PGBIN/initdb" -D "$DEMO/source/pgdata" -U postgres --auth-local=trust --auth-host=scram-sha-256 --pwfile="$pwfile" >"$DEMO/logs/source-initdb.log"
rm -f "$pwfile"
record pg "$DEMO/source/pgdata"
as_postgres "$PGBIN/pg_ctl" -D "$DEMO/source/pgdata" -l "$DEMO/source/postgres.log" -w \
  -o "-p $SOURCE_PORT -k $DEMO/run -c listen_addresses=127.0.0.1" start >/dev/null
psql_source() { as_postgres psql -X -q -v ON_ERROR_STOP=1 -h "$DEMO/run" -p "$SOURCE_PORT" -U postgres "$@"; }
psql_source -d postgres -c "CREATE ROLE app LOGIN PASSWORD '$SOURCE_PASSWORD'" -c "CREATE DATABASE shop OWNER app"
psql_source -d shop -c "SET ROLE app" -f "$REPO/deploy/demo/shop.sql" >/dev/null
note "database shop: $(psql_source -d shop -Atc "select count(*) from customers") customers, $(psql_source -d shop -Atc "select count(*) from orders") orders ($(psql_source -d shop -Atc "select pg_size_pretty(pg_database_size('shop'))"))"

# 2. A round trip on every backend that works here.
say "2/4 Snapshot and clone round trip on every copy-on-write backend"
"$BIN/thinlab-demo-roundtrip" -dir "$DEMO/roundtrip" -source-host "$DEMO/run" -source-port "$SOURCE_PORT" \
  2>"$DEMO/logs/roundtrip.log" || die "round trip failed (see $DEMO/logs/roundtrip.log)"

# 3. The platform with its own PostgreSQL and Dex.
say "3/4 Platform on http://127.0.0.1:$PLATFORM_PORT with a local IdP (Dex)"
"$REPO/deploy/demo/platform.sh" "$DEMO" "$PLATFORM_PORT" "$DEX_PORT" "$DEX_USER" "$DEX_PASSWORD" "$STATE"
ENROLL_TOKEN=$(cat "$DEMO/platform/enroll-token")

# 4. The agent on a btrfs pool that enrolls and retrieves the source.
say "4/4 Agent on a btrfs pool (loop file), enrolled into the platform, retrieving the source with pg_dump | pg_restore"
mkdir -p "$DEMO/pool"
truncate -s 4G "$DEMO/pool.img"
record loop "$DEMO/pool.img"
mkfs.btrfs -q -f "$DEMO/pool.img" >/dev/null
mount -o loop "$DEMO/pool.img" "$DEMO/pool"
record mount "$DEMO/pool"
# The config holds the token: readable by root only.
(umask 077; cat >"$DEMO/agent.yaml") <<EOF
server:
  host: 127.0.0.1
  port: $AGENT_PORT
  verificationToken: $AGENT_TOKEN
pools:
  - name: demo
    mode: btrfs
    path: $DEMO/pool
provision:
  portPool: {from: $CLONE_PORTS_FROM, to: $((CLONE_PORTS_FROM + 99))}
  cloneDefaults: {dbName: shop}
cloning:
  maxIdleMinutes: 0
retrieval:
  mode: logical
  refreshOnStart: true
  source:
    host: 127.0.0.1
    port: $SOURCE_PORT
    dbname: shop
    username: app
    passwordEnv: DEMO_SOURCE_PASSWORD
stateDir: $DEMO/agent-state
platform:
  url: http://127.0.0.1:$PLATFORM_PORT
  name: demo-agent
  enrollToken: $ENROLL_TOKEN
EOF
chmod 600 "$DEMO/agent.yaml"
record clones "$DEMO/pool"
DEMO_SOURCE_PASSWORD=$SOURCE_PASSWORD setsid "$BIN/thinlab" agent run --config "$DEMO/agent.yaml" \
  >"$DEMO/logs/agent.log" 2>&1 </dev/null &
record pid $! agent
export THINLAB_URL=http://127.0.0.1:$AGENT_PORT THINLAB_TOKEN=$AGENT_TOKEN
wait_for "the agent's API" 30 curl -fsS "$THINLAB_URL/healthz"
wait_for "the agent's tunnel to the platform" 30 grep -q "platform tunnel: connected" "$DEMO/logs/agent.log"
note "enrolled into the platform as demo-agent (organization demo) and connected over its tunnel"
retrieval_failed() { curl -fsS -H "Verification-Token: $AGENT_TOKEN" "$THINLAB_URL/instance/retrieval" | grep -q '"status": *"failed"'; }
has_snapshot() {
  if retrieval_failed; then
    echo "retrieval failed: $(grep -m1 'refresh failed' "$DEMO/logs/agent.log")" >"$DEMO/run/failed"
    return 1
  fi
  [[ $("$BIN/thinlab" snapshot list -o json) == *'"id"'* ]]
}
start=$(now_ms)
wait_for "the first snapshot (retrieval)" 300 has_snapshot
note "retrieved and snapshotted in $(since "$start"):"
"$BIN/thinlab" snapshot list | sed 's/^/    /'
start=$(now_ms)
THINLAB_CLONE_PASSWORD=$CLONE_PASSWORD "$BIN/thinlab" clone create --id demo-clone --username "$CLONE_USER" \
  >/dev/null 2>"$DEMO/logs/clone-create.log" || die "clone create failed: $(tail -3 "$DEMO/logs/clone-create.log")"
note "clone demo-clone ready in $(since "$start") (create call to the clone's user running a query):"
"$BIN/thinlab" clone list | sed 's/^/    /'
clone_port=$("$BIN/thinlab" clone status demo-clone -o json | sed -n 's/.*"port": *"\{0,1\}\([0-9]*\).*/\1/p' | head -1)


cat <<EOF

$(say "Thinlab is running")
  Your clone (a full, writable copy of "shop", made in well under a second):
    export THINLAB_URL=$THINLAB_URL THINLAB_TOKEN=$AGENT_TOKEN
    bin/thinlab connect demo-clone          (password saved by clone create: $CLONE_PASSWORD)
    PGPASSWORD='$CLONE_PASSWORD' psql -h 127.0.0.1 -p $clone_port -U $CLONE_USER shop

  More clones:   bin/thinlab clone create --id mine --username me      (asks for a password)
  Agent API:     curl -H 'Verification-Token: $AGENT_TOKEN' $THINLAB_URL/status
  Platform:      http://127.0.0.1:$PLATFORM_PORT   sign in as $DEX_USER / $DEX_PASSWORD
  In the browser (sign in first):
    your clone:  http://127.0.0.1:$PLATFORM_PORT/o/demo/agents/demo-agent/clones/demo-clone
    your agent:  http://127.0.0.1:$PLATFORM_PORT/o/demo/agents   (demo-agent, connected over its tunnel)
  Logs:          $DEMO/logs/
  Stop:          make demo-stop
EOF

# In a terminal the demo stays in the foreground until Ctrl-C, then stops
# everything; from a script it returns and `make demo-stop` cleans up.
trap - EXIT
if [[ -t 0 && -t 1 ]]; then
  trap 'echo; stop; exit 0' INT TERM
  echo "  (Ctrl-C stops the demo)"
  while true; do sleep 3600; done
fi
