# One image, one binary: `agentwire gateway|relay|create-topics|demo`.
FROM rust:1.88-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --package agentwire && cp target/release/agentwire /agentwire

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/*
COPY --from=build /agentwire /usr/local/bin/agentwire
USER nobody
ENTRYPOINT ["/usr/local/bin/agentwire"]
