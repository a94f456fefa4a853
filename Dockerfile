# chat-node image: `docker build -t chat-node:local .` (needs the rust and debian base images).
# Where no image can be pulled, scripts/docker-image builds an equivalent image from a local
# build. docker/compose.yaml runs three of them; docs/operations.md, "Docker", has the rest.

FROM rust:1-bookworm AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends librocksdb-dev libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Link Debian's RocksDB statically (as .cargo/config.toml does) on whatever architecture
# builds this; the runtime image keeps only the compression libraries it calls.
RUN ROCKSDB_LIB_DIR="/usr/lib/$(gcc -print-multiarch)" \
    cargo build --release --locked --bin chat-node \
 && cp target/release/chat-node /usr/local/bin/chat-node

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
        libsnappy1v5 liblz4-1 libzstd1 libbz2-1.0 zlib1g libstdc++6 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 chat \
 && useradd --system --uid 10001 --gid chat --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin chat \
 && mkdir /data && chown chat:chat /data
COPY --from=builder /usr/local/bin/chat-node /usr/local/bin/chat-node
USER 10001:10001
# Container logs are not a terminal: no ANSI colours.
ENV NO_COLOR=1
WORKDIR /data
VOLUME /data
# 8080: clients (HTTP and WebSocket); 9080: other nodes.
EXPOSE 8080 9080
# No HEALTHCHECK: the image has no HTTP client. Probe GET /healthz (liveness) and
# GET /readyz (readiness) from the orchestrator instead.
ENTRYPOINT ["/usr/local/bin/chat-node", "--data-dir", "/data", \
            "--http-addr", "0.0.0.0:8080", "--peer-addr", "0.0.0.0:9080"]
