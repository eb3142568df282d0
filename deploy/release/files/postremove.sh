#!/bin/sh
# thinlab package: after removal. State (/var/lib/thinlab), the
# configuration and the thinlab-platform user stay: they hold the
# platform's database and the agent's clones.
set -e
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
