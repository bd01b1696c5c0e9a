# One image holds the four binaries; compose picks the command per service.
FROM rust:1-bookworm AS build
WORKDIR /src
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
