# syntax=docker/dockerfile:1
# The meterflow image the Helm chart (helm/meterflow) deploys as `image.repository`
# meterflow/meterflow, tag = the chart's appVersion unless `image.tag` says otherwise:
#
#   docker build -t meterflow/meterflow:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" .
#
# Both binaries (meterflow, meterflow-sim) in /usr/local/bin, uid/gid 10001 (the chart's
# podSecurityContext), ports 1883 (MQTT), 8883 (MQTT over TLS) and 8080 (HTTP), the store
# at /var/lib/meterflow (the chart's store.persistence.mountPath, mounted over it).
#
# The runtime image is distroless (glibc, libgcc, CA certificates, tzdata; no shell, no
# package manager). It has no `sh` or `cat`, so it cannot be the chart's render-config
# init container: that stays the chart's separate `configRender.image` (busybox).
# The chart runs it with a read-only root filesystem and mounts writable volumes on the
# data dir and /tmp.
#
# Not built by scripts/test: this machine reaches no container registry, so no base
# image can be pulled; scripts/dockerfile-check lints this file instead.

# ---- build ---------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The registry and the target dir are BuildKit cache mounts: the binaries are copied out
# of the cached target dir within the same RUN. The `kafka` feature (distributed mode)
# builds librdkafka from its bundled sources: cmake and libcurl's headers.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    apt-get update -qq && apt-get install -y -qq --no-install-recommends cmake libcurl4-openssl-dev \
    && cargo build --release --locked --features meterflow-ingest/kafka --bin meterflow --bin meterflow-sim \
    && install -D -m 0755 target/release/meterflow /out/usr/local/bin/meterflow \
    && install -D -m 0755 target/release/meterflow-sim /out/usr/local/bin/meterflow-sim \
    && install -d -m 0750 /out/var/lib/meterflow

# ---- runtime -------------------------------------------------------------------------
# Same Debian release (bookworm, glibc 2.36) as the builder.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
# The repository the image is built from: pass it at build time (--build-arg SOURCE=…).
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="meterflow" \
      org.opencontainers.image.description="Water-meter telemetry over MQTT: durable ingest, hot caches, acks with the durable watermark" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build /out/usr/local/bin/ /usr/local/bin/
# The data dir, owned by the runtime user (no shell here to mkdir/chown: copied in).
COPY --from=build --chown=10001:10001 /out/var/lib/meterflow /var/lib/meterflow
WORKDIR /var/lib/meterflow
USER 10001:10001
EXPOSE 1883 8883 8080
# Without a config meterflow listens on 127.0.0.1 only (and serves the demo tenant): the
# chart always passes `run --config /run/meterflow/meterflow.toml`; elsewhere mount a
# config that listens on 0.0.0.0 with real tenants.
ENTRYPOINT ["meterflow"]
CMD ["run"]
