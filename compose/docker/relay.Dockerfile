# countersign-relay: built from the workspace (build context: the repository root), run as a
# non-root user on a distroless image with only glibc and CA certificates.
FROM docker.io/library/rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p countersign-relay \
    && cp target/release/countersign-relay /countersign-relay

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /countersign-relay /usr/local/bin/countersign-relay
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/countersign-relay"]
