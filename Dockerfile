# Builds fleet, fleet-worker and the demo agent into one small image.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates git curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/fleet /src/target/release/fleet-worker \
    /src/target/release/fleet-demo-agent /usr/local/bin/
WORKDIR /app
COPY agents ./agents
COPY config ./config
ENV FLEET_SANDBOX__LOCAL__ROOT=/data/sandboxes
ENTRYPOINT ["fleet-worker"]
