#!/usr/bin/env bash
# Step 3 of `make demo`: a local IdP (Dex, in memory, one user) and the
# platform with its embedded PostgreSQL, signing in through that Dex.
# Called by demo.sh with: DEMO_DIR PLATFORM_PORT DEX_PORT USER_EMAIL USER_PASSWORD STATE_FILE
set -euo pipefail
cd "$(dirname "$0")/../.."
DEMO=$1 PLATFORM_PORT=$2 DEX_PORT=$3 DEX_USER=$4 DEX_PASSWORD=$5 STATE=$6
BIN=$PWD/bin
CLIENT_SECRET=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')

# The bcrypt hash (cost 10, Dex refuses less) of the demo password
# "demo-password"; a demo secret, not a real one.
[[ $DEX_PASSWORD == demo-password ]] || { echo "platform.sh: the demo's Dex hash is for demo-password only" >&2; exit 1; }
HASH='$2a$10$OQhD.bN1Vw1TNbynbtAmpu9XY6BrKXNK4n/R8XpbFehw1RlpFiXUS'

mkdir -p "$DEMO/dex"
cat >"$DEMO/dex/config.yaml" <<YAML
issuer: http://127.0.0.1:$DEX_PORT/dex
storage: {type: memory}
web: {http: 127.0.0.1:$DEX_PORT}
oauth2: {skipApprovalScreen: true}
enablePasswordDB: true
staticPasswords:
  - email: $DEX_USER
    hash: '$HASH'
    username: demo
    userID: 0b3e1c6a-demo
staticClients:
  - id: thinlab
    secret: $CLIENT_SECRET
    name: Thinlab
    redirectURIs: [http://127.0.0.1:$PLATFORM_PORT/auth/callback/sso]
YAML
chmod 600 "$DEMO/dex/config.yaml"
setsid "$BIN/dex" serve "$DEMO/dex/config.yaml" >"$DEMO/logs/dex.log" 2>&1 </dev/null &
echo "pid $! dex" >>"$STATE"

mkdir -p "$DEMO/platform"
chmod 755 "$DEMO/platform"
# Stopped by the platform itself on SIGTERM; listed so that demo-stop
# also stops it after a crash of the platform.
echo "pg $DEMO/platform/pg/data" >>"$STATE"
# The demo organization and its first enrollment token are made at start
# (bootstrap), so the demo agent enrolls before anyone signs in; the Dex
# user becomes its owner at the first sign-in (emailRoles).
cat >"$DEMO/platform.yaml" <<YAML
listen: 127.0.0.1:$PLATFORM_PORT
publicURL: http://127.0.0.1:$PLATFORM_PORT
dataDir: $DEMO/platform
auth:
  providers:
    - name: sso
      displayName: Dex (demo)
      issuer: http://127.0.0.1:$DEX_PORT/dex
      clientID: thinlab
      clientSecretEnv: DEMO_OIDC_CLIENT_SECRET
      emailRoles: [{email: $DEX_USER, org: demo, role: owner}]
bootstrap:
  organization: demo
  enrollmentTokenFile: $DEMO/platform/enroll-token
YAML
DEMO_OIDC_CLIENT_SECRET=$CLIENT_SECRET setsid "$BIN/thinlab" platform serve --config "$DEMO/platform.yaml" \
  >"$DEMO/logs/platform.log" 2>&1 </dev/null &
echo "pid $! platform" >>"$STATE"

for what in "Dex|http://127.0.0.1:$DEX_PORT/dex/.well-known/openid-configuration" "the platform|http://127.0.0.1:$PLATFORM_PORT/healthz"; do
  url=${what#*|}
  for i in $(seq 1 150); do
    curl -fsS "$url" >/dev/null 2>&1 && break
    if ((i == 150)); then echo "demo: ${what%%|*} did not come up within 30s (see $DEMO/logs)" >&2; exit 1; fi
    sleep 0.2
  done
done
echo "    Dex at http://127.0.0.1:$DEX_PORT/dex, platform at http://127.0.0.1:$PLATFORM_PORT (embedded PostgreSQL in $DEMO/platform)"
