# syntax=docker/dockerfile:1
#
# statemirror container image.
#
#   docker build -t statemirror:0.1.0 .
#   docker run --rm statemirror:0.1.0 check-config --config /etc/statemirror/statemirror.toml
#
# The image ships config/redis.toml as /etc/statemirror/statemirror.toml, for reference only:
# mount your own config there (deploy/kubernetes/ has a Kubernetes sidecar example). Inside a
# pod, `listen = "127.0.0.1:6379"` is what NiFi's `localhost:6379` reaches; the admin API must
# listen on 0.0.0.0 (with a token) for kubelet probes and Prometheus to reach it.

# --- build ---------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
# Only what the build needs (the manifest names benches/redis_proxy.rs, so it must exist).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
# The registry and target caches speed up rebuilds (BuildKit); the binary is copied out of
# the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin statemirror \
    && install -D -m 0755 target/release/statemirror /out/statemirror

# --- runtime -------------------------------------------------------------------------------
FROM debian:bookworm-slim

LABEL org.opencontainers.image.title="statemirror" \
      org.opencontainers.image.description="Sidecar proxy that mirrors Redis coordination state to a second region" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric uid/gid so Kubernetes `runAsNonRoot` can verify it.
RUN groupadd --system --gid 10001 statemirror \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin statemirror

COPY --from=builder /out/statemirror /usr/local/bin/statemirror
COPY config/redis.toml /etc/statemirror/statemirror.toml

USER 10001:10001
# 6379: the Redis protocol (clients); 9480: the admin API (/healthz /readyz /status /metrics).
EXPOSE 6379 9480
# SIGTERM (the default stop signal): stop accepting, give the mirror up to
# maintenance.drain_timeout_ms to drain, exit 0.
ENTRYPOINT ["statemirror"]
CMD ["run", "--config", "/etc/statemirror/statemirror.toml"]
