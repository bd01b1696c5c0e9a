# One image holds the four binaries; compose picks the command per service.
FROM rust:1-bookworm AS build
WORKDIR /src
# The etcd lock driver's client compiles etcd's protos with protoc.
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends protobuf-compiler libprotobuf-dev \
    && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked --bins

FROM golang:1-bookworm
RUN useradd --system --home-dir /var/lib/modmesh --create-home modmesh
COPY --from=build /src/target/release/gateway /src/target/release/storage-svc \
     /src/target/release/lock-svc /src/target/release/fetcher-svc /usr/local/bin/
USER modmesh
WORKDIR /var/lib/modmesh
EXPOSE 3000 50051 50052 50053
CMD ["gateway"]
