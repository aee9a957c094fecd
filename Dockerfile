# syntax=docker/dockerfile:1
# switchyard image: a stripped release binary on Debian slim, running as an
# unprivileged user with a writable state directory (/var/lib/switchyard, for
# discovery.snapshot_path) and a health check on the admin listener's /readyz.
#
#   docker build -t localhost/switchyard:dev .
#   docker run -p 8080:8080 -p 9901:9901 localhost/switchyard:dev
#
# The default config (deploy/switchyard.toml) listens on 0.0.0.0 and reads etcd
# at http://etcd:2379; mount your own over /etc/switchyard/switchyard.toml.
# Image names are fully qualified, so podman needs no registry search list.

FROM docker.io/library/rust:1.95-bookworm AS build
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends protobuf-compiler libprotobuf-dev \
    && rm -rf /var/lib/apt/lists/*
# Stripped, without debug info (issue 10 measured 9.7 MB against 62 MB with them).
ENV CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols
WORKDIR /src
# Dependency-caching layer: build the dependencies against empty sources, so a
# change to src/ rebuilds only switchyard itself.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked --bin switchyard \
    && rm -rf src target/release/switchyard target/release/deps/switchyard-* target/release/deps/libswitchyard-* \
       target/release/.fingerprint/switchyard-*
COPY src ./src
COPY config ./config
RUN cargo build --release --locked --bin switchyard

FROM docker.io/library/debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/switchyard --shell /usr/sbin/nologin switchyard \
    && mkdir -p /var/lib/switchyard /etc/switchyard \
    && chown switchyard:switchyard /var/lib/switchyard
COPY --from=build /src/target/release/switchyard /usr/local/bin/switchyard
COPY deploy/switchyard.toml /etc/switchyard/switchyard.toml
USER switchyard
# No transparent huge pages for the allocator's arena, also on hosts with THP
# `enabled=always` (docs/operations.md "Memory"): an idle connection then keeps only
# the pages it wrote.
ENV MIMALLOC_ALLOW_THP=0
WORKDIR /var/lib/switchyard
VOLUME ["/var/lib/switchyard"]
EXPOSE 8080 9901
# bash's /dev/tcp: the slim image has no curl. Healthy once the first table is live.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9901 && printf 'GET /readyz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/switchyard"]
CMD ["run", "--config", "/etc/switchyard/switchyard.toml"]
