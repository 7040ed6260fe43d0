# syntax=docker/dockerfile:1
# One image with both binaries: gito-api (the default, via entrypoint.sh) and gito-bridge.

FROM rust:1.95-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /app

# Dependencies are built in their own layer, rebuilt only when Cargo.toml/Cargo.lock change.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --recipe-path recipe.json
COPY . .
# Queries are checked against the committed .sqlx data: no database at build time.
ENV SQLX_OFFLINE=true
RUN cargo build --release --locked --bin gito-api --bin gito-bridge

FROM debian:bookworm-slim AS runtime
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/gito gito \
    && mkdir -p /var/lib/gito-bridge/spool \
    && chown -R gito /var/lib/gito-bridge
COPY --from=builder /app/target/release/gito-api /app/target/release/gito-bridge /usr/local/bin/
COPY entrypoint.sh /usr/local/bin/entrypoint.sh
USER 10001
WORKDIR /var/lib/gito
EXPOSE 8000
# /health answers while the process is up; bash's /dev/tcp saves shipping curl.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8000 && printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q ' 200 ' <&3"]
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
