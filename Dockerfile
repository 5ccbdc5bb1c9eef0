# syntax=docker/dockerfile:1
# One image for every service: `riskstream <subcommand>`. Two stages: the build (a Rust
# toolchain, with BuildKit cache mounts for the crate registry and target/, so a rebuild after a
# source change recompiles riskstream's crates only, not its dependencies), then a slim runtime.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p riskstream \
    && cp target/release/riskstream /usr/local/bin/riskstream

FROM debian:bookworm-slim
# libssl3 and ca-certificates: TLS to Kafka (librdkafka with OpenSSL) and https ClickHouse URLs.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl libssl3 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/riskstream /usr/local/bin/riskstream
COPY config /app/config
WORKDIR /app
ENTRYPOINT ["riskstream"]
