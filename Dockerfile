# syntax=docker/dockerfile:1
#
# statemirror container image: one statically linked binary in an otherwise empty
# (`FROM scratch`) image, running as the non-root user statemirror (uid/gid 10001).
#
#   docker build -t statemirror:0.1.0 .
#   docker run --rm statemirror:0.1.0 check-config --config /etc/statemirror/statemirror.toml
#
# The image ships config/redis.toml as /etc/statemirror/statemirror.toml, for reference only:
# mount your own config there (deploy/kubernetes/ has a Kubernetes sidecar example). Inside a
# pod, `listen = "127.0.0.1:6379"` is what NiFi's `localhost:6379` reaches; the admin API must
# listen on 0.0.0.0 (with a token) for kubelet probes and Prometheus to reach it.
#
# There is no shell, libc or NSS in the image: statemirror resolves backend host names itself
# from /etc/hosts and /etc/resolv.conf, which Kubernetes mounts into every container (run
# elsewhere, mount them or use IP addresses). `kubectl exec … statemirror …` works, `sh` does not.
#
# scripts/build-image.sh builds the same layout offline from a prebuilt binary
# (deploy/image/Containerfile, `podman build`) and proves it: static, --version and
# check-config from the exported filesystem, run as uid 10001 in a chroot.

# --- build ---------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
# Only what the build needs (the manifest names benches/redis_proxy.rs, so it must exist).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
# The same build as scripts/build-image.sh: static glibc (`+crt-static`; the explicit --target
# keeps build scripts and proc macros dynamic), getrandom's linux_getrandom backend (it calls
# getrandom(2) directly; the default looks it up with dlsym, which fails in a static binary,
# and falls back to /dev/urandom), no debug info (symbol names stay). The registry and target
# caches speed up rebuilds (BuildKit); the binary is copied out of the cached target directory
# in the same step, and the step fails if the binary still wants a dynamic loader.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    triple="$(rustc -vV | sed -n 's/^host: //p')" \
    && RUSTFLAGS='-C target-feature=+crt-static --cfg getrandom_backend="linux_getrandom"' \
       CARGO_PROFILE_RELEASE_DEBUG=0 \
       cargo build --release --locked --bin statemirror --target "$triple" \
    && install -D -m 0755 "target/$triple/release/statemirror" /out/statemirror \
    && strip --strip-debug /out/statemirror \
    && if readelf -l /out/statemirror | grep -q INTERP; then \
         echo "statemirror is not static" >&2; exit 1; \
       fi

# --- runtime -------------------------------------------------------------------------------
FROM scratch

LABEL org.opencontainers.image.title="statemirror" \
      org.opencontainers.image.description="Sidecar proxy that mirrors Redis / ZooKeeper coordination state to a second region" \
      org.opencontainers.image.licenses="Apache-2.0"

# /etc/passwd and /etc/group with the user statemirror, a fixed numeric uid/gid 10001 so
# Kubernetes `runAsNonRoot` can verify it (shared with deploy/image/Containerfile).
COPY deploy/image/rootfs/ /
COPY --from=builder /out/statemirror /usr/local/bin/statemirror
COPY config/redis.toml /etc/statemirror/statemirror.toml

USER 10001:10001
# No shell sets a PATH in an empty image: `kubectl exec POD -- statemirror …` needs one.
ENV PATH=/usr/local/bin
# 6379: the Redis protocol (clients); 9480: the admin API (/healthz /readyz /status /metrics).
EXPOSE 6379 9480
# SIGTERM (the default stop signal): stop accepting, give the mirror up to
# maintenance.drain_timeout_ms to drain, exit 0.
ENTRYPOINT ["/usr/local/bin/statemirror"]
CMD ["run", "--config", "/etc/statemirror/statemirror.toml"]
