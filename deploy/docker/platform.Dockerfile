# The Thinlab platform image: the static thinlab binary, non-root, with a
# health check, and an external PostgreSQL (database.url). Build from the
# checkout after `make release` (or any dist/thinlab-linux-<arch>):
#
#   docker build -f deploy/docker/platform.Dockerfile -t thinlab-platform .
#
# BASE_IMAGE only supplies the CA certificates (for https IdPs and TLS to
# the database) and the user entry; the final image is FROM scratch.
ARG BASE_IMAGE=docker.io/library/debian:12-slim
FROM ${BASE_IMAGE} AS base
RUN set -eu; \
    if [ ! -f /etc/ssl/certs/ca-certificates.crt ]; then \
      apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*; \
    fi; \
    mkdir -p /out/etc/ssl/certs /out/var/lib/thinlab/platform /out/tmp; \
    cp /etc/ssl/certs/ca-certificates.crt /out/etc/ssl/certs/; \
    echo 'thinlab-platform:x:65532:65532:Thinlab platform:/var/lib/thinlab/platform:/sbin/nologin' >/out/etc/passwd; \
    echo 'thinlab-platform:x:65532:' >/out/etc/group; \
    chown 65532:65532 /out/var/lib/thinlab/platform; chmod 0700 /out/var/lib/thinlab/platform; \
    chmod 1777 /out/tmp

FROM scratch
ARG TARGETARCH=amd64
COPY --from=base /out/ /
COPY dist/thinlab-linux-${TARGETARCH} /usr/bin/thinlab
USER 65532:65532
# Listen on every interface of the container; dataDir holds only what the
# platform writes besides its database (the bootstrap enrollment token).
ENV THINLAB_PLATFORM_LISTEN=0.0.0.0:8080 \
    THINLAB_PLATFORM_DATA_DIR=/var/lib/thinlab/platform \
    THINLAB_PLATFORM_HEALTH_URL=http://127.0.0.1:8080
EXPOSE 8080
# 200 only when the server answers and reaches its database (/healthz).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/usr/bin/thinlab", "platform", "health"]
ENTRYPOINT ["/usr/bin/thinlab", "platform", "serve"]
