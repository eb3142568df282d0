#!/bin/sh
# thinlab package: after install or upgrade (deb: configure; rpm: $1 = 1 or 2).
set -e
# The platform's system user: thinlab platform serve runs as it, and so
# does its embedded PostgreSQL (database.osUser's default).
if ! getent passwd thinlab-platform >/dev/null 2>&1; then
  nologin=$(command -v nologin 2>/dev/null || echo /bin/false)
  useradd --system --user-group --no-create-home --home-dir /var/lib/thinlab/platform \
    --shell "$nologin" --comment "Thinlab platform" thinlab-platform
fi
# The platform's config may hold secrets: readable by root and the platform.
if [ -f /etc/thinlab/platform.yaml ]; then
  chown root:thinlab-platform /etc/thinlab/platform.yaml
  chmod 0640 /etc/thinlab/platform.yaml
fi
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
  # An upgrade restarts the services that run (a fresh install enables
  # nothing: see docs/install.md).
  for unit in thinlab-agent.service thinlab-platform.service; do
    systemctl try-restart "$unit" >/dev/null 2>&1 || true
  done
fi
exit 0
