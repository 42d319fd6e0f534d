# Dark Store Mesh node image: the two static binaries and nothing else (no shell, no libc, no
# package manager, no base image to pull or patch).
#
# The build context is the staging directory tests/docker/build.sh makes (target/docker-context:
# mesh-node, mesh-ctl, passwd, group, an empty data/), never the repository:
#
#   tests/docker/build.sh [IMAGE]
#
# Run it with the node's configuration in DSM_CONFIG (or DSM_* variables) so that both `run` and
# the HEALTHCHECK below find it; see README.md, "Container image".
FROM scratch

# A user and group database naming uid/gid 65532 ("mesh"; no shell, no password).
COPY --chown=0:0 passwd group /etc/
COPY --chown=0:0 mesh-node mesh-ctl /usr/local/bin/
# The only place the node writes (its fjall store and audit trail): mount a volume here.
COPY --chown=65532:65532 data /var/lib/dsm

USER 65532:65532
WORKDIR /var/lib/dsm
VOLUME ["/var/lib/dsm"]

# gateway (mTLS gRPC), peers (QUIC), ops (plaintext /healthz, /readyz, /metrics), as configured.
EXPOSE 7443/tcp 7444/udp 9090/tcp

# GET /readyz on the ops port named by DSM_OPS_LISTEN or the configuration in DSM_CONFIG.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["/usr/local/bin/mesh-node", "healthcheck"]

ENTRYPOINT ["/usr/local/bin/mesh-node"]
CMD ["run"]

# Last, so a new revision only changes metadata and every layer above stays cached.
ARG VERSION=dev
ARG REVISION=unknown

LABEL org.opencontainers.image.title="dark-store-mesh" \
      org.opencontainers.image.description="Dark Store Mesh node (mesh-node) and control binary (mesh-ctl), statically linked" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="Dark Store Mesh" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
