# One image for every service: `riskstream <subcommand>`.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p riskstream && cp target/release/riskstream /usr/local/bin/riskstream

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/riskstream /usr/local/bin/riskstream
COPY config /app/config
WORKDIR /app
ENTRYPOINT ["riskstream"]
