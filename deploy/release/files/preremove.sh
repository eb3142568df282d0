#!/bin/sh
# thinlab package: before removal (deb: remove; rpm: $1 = 0). An upgrade
# (deb: upgrade; rpm: $1 = 1) keeps the services running.
set -e
case "$1" in
  remove|0)
    if [ -d /run/systemd/system ]; then
      systemctl disable --now thinlab-agent.service thinlab-platform.service >/dev/null 2>&1 || true
    fi
    ;;
esac
exit 0
