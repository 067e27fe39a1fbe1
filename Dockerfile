# One image, one binary: `agentwire gateway|relay|create-topics|demo`.
#
# Dependencies build in a layer of their own (cargo-chef): `prepare` reduces the workspace to a
# recipe (manifests and the lock file), `cook` builds every dependency from it. The recipe only
# changes when dependencies do, so a code change rebuilds agentwire's crates, not rdkafka.
FROM rust:1.88-bookworm AS chef
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --version 0.1.78 --locked
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
# The same profile and package as the build below, so the cooked dependencies are the ones it uses.
RUN cargo chef cook --release --package agentwire --recipe-path recipe.json
COPY . .
RUN cargo build --release --package agentwire && cp target/release/agentwire /agentwire

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/*
COPY --from=build /agentwire /usr/local/bin/agentwire
USER nobody
ENTRYPOINT ["/usr/local/bin/agentwire"]
