# countersign-signer, run as a non-root user on distroless `cc-debian12` (glibc and CA certificates,
# nothing else). Two ways to get the binary; both end on the same last stage:
#
#   docker build -f compose/docker/signer.Dockerfile .
#       from source, in the `rust` image (build context: the repository root);
#   docker build -f compose/docker/signer.Dockerfile --build-arg BINARIES=prebuilt <dir>
#       a binary built beforehand: <dir> holds `countersign-signer`, built on a glibc no newer than
#       Debian 12's (what `cargo xtask images` does, with cargo on the build machine).
#
# The stage not chosen is skipped (BuildKit, podman/buildah).
ARG BINARIES=source

FROM docker.io/library/rust:1.89-bookworm AS source
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p countersign-signer \
    && mkdir /out && cp target/release/countersign-signer /out/

FROM scratch AS prebuilt
COPY countersign-signer /out/

FROM ${BINARIES} AS binaries

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=binaries /out/countersign-signer /usr/local/bin/countersign-signer
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/countersign-signer"]
