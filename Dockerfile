# One image holds the five binaries (the four services and the `modmesh`
# CLI, which the healthchecks run); compose picks the command per service.
#
# By default the binaries are built from source here. `--build-arg
# BINARIES=prebuilt` instead takes them from `prebuilt/` in the build
# context (binaries built on the host for Debian 12; the compose test does
# this so CI does not compile Rust inside a container).
ARG BINARIES=source

FROM rust:1-bookworm AS source
WORKDIR /src
# The etcd lock driver's client compiles etcd's protos with protoc.
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends protobuf-compiler libprotobuf-dev \
    && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked --bins \
    && mkdir /out \
    && cp target/release/gateway target/release/storage-svc target/release/lock-svc \
          target/release/fetcher-svc target/release/modmesh /out/

FROM scratch AS prebuilt
COPY prebuilt/ /out/

FROM ${BINARIES} AS binaries

FROM golang:1-bookworm
# A pinned UID (volumes keep ownership across image rebuilds); the home is
# apart from the module store, which is a volume at /var/lib/modmesh.
RUN useradd --uid 10001 --user-group --home-dir /home/modmesh --create-home modmesh \
    && mkdir -p /var/lib/modmesh && chown modmesh:modmesh /var/lib/modmesh
COPY --from=binaries /out/ /usr/local/bin/
USER modmesh
WORKDIR /home/modmesh
EXPOSE 3000 50051 50052 50053
CMD ["gateway"]
