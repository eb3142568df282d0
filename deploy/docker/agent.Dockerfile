# The Thinlab agent image: the thinlab binary, the PostgreSQL server of
# every supported major version Debian 12 carries (15), and the
# copy-on-write filesystem tools (btrfs-progs, xfsprogs, zfs-fuse; Debian's
# OpenZFS is in contrib and needs the host's kernel module: mount a host
# ZFS pool instead). Runs privileged (mounts, loop devices). Build from the
# checkout after `make release`:
#
#   docker build -f deploy/docker/agent.Dockerfile -t thinlab-agent .
ARG BASE_IMAGE=docker.io/library/debian:12-slim
FROM ${BASE_IMAGE}
ARG TARGETARCH=amd64
ARG PG_MAJORS="15"
# No cluster of Debian's own: clones are the agent's. policy-rc.d keeps
# package scripts from starting daemons during the build.
RUN set -eu; \
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; \
    mkdir -p /etc/postgresql-common/createcluster.d; \
    echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.d/thinlab.conf; \
    pkgs=""; for m in $PG_MAJORS; do pkgs="$pkgs postgresql-$m"; done; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $pkgs \
      btrfs-progs xfsprogs zfs-fuse util-linux mount e2fsprogs procps ca-certificates; \
    rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d
COPY dist/thinlab-linux-${TARGETARCH} /usr/bin/thinlab
COPY deploy/docker/agent-entrypoint.sh /usr/local/bin/thinlab-agent-entrypoint
ENV THINLAB_AGENT_CONFIG=/etc/thinlab/agent.yaml
ENTRYPOINT ["/usr/local/bin/thinlab-agent-entrypoint"]
