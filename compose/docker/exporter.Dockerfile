# countersign-exporter: built from the workspace (build context: the repository root), run as a
# non-root user on a distroless image with only glibc and CA certificates.
FROM docker.io/library/rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p countersign-exporter \
    && cp target/release/countersign-exporter /countersign-exporter

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /countersign-exporter /usr/local/bin/countersign-exporter
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/countersign-exporter"]
