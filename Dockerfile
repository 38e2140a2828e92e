# syntax=docker/dockerfile:1
#
# Pitwall images (BuildKit required; Docker 23+ uses it by default).
#   docker compose up --build                        # builds both targets
#   docker build --target server -t pitwall-server .
#   docker build --target cli    -t pitwall-cli .
#
# Stages: builder (compiles both binaries), server, cli.
# librdkafka is built from source by rdkafka-sys (C/C++ toolchain, make,
# python3, zlib). No protoc: the proto crate uses a pure-Rust compiler.

FROM rust:1.95-bookworm AS builder

RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        build-essential pkg-config python3 zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY Cargo.toml Cargo.lock ./
COPY proto/ proto/
COPY server/ server/
COPY client-cli/ client-cli/
COPY vendor/ vendor/
COPY queries/ queries/
COPY data/ data/

# target/ lives in a cache mount, so copy the binaries out in the same RUN.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/app/target,sharing=locked \
    cargo build --release --locked -p pitwall-server -p pitwall-cli \
 && install -m 0755 target/release/pitwall-server target/release/pitwall /usr/local/bin/


FROM debian:bookworm-slim AS server

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates zlib1g curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin pitwall \
 && mkdir -p /app /data \
 && chown pitwall /app /data

COPY --from=builder /usr/local/bin/pitwall-server /usr/local/bin/pitwall-server
COPY --from=builder /app/queries /app/queries
# The bundled race (GPL-3.0 data) beside the binary, not in it: found in ../share/pitwall/.
COPY --from=builder /app/data /usr/local/share/pitwall
COPY LICENSE /usr/local/share/doc/pitwall/LICENSE

WORKDIR /app
USER pitwall
EXPOSE 50051 8080
ENTRYPOINT ["pitwall-server"]


FROM debian:bookworm-slim AS cli

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin pitwall \
 && mkdir -p /app \
 && chown pitwall /app

COPY --from=builder /usr/local/bin/pitwall /usr/local/bin/pitwall
COPY --from=builder /app/data /usr/local/share/pitwall
COPY LICENSE /usr/local/share/doc/pitwall/LICENSE

WORKDIR /app
USER pitwall
ENTRYPOINT ["pitwall"]
