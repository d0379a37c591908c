//! Compiles our own `.proto` descriptions of the SPIRE server APIs with `protox` (no system
//! `protoc`) and generates the prost messages and tonic clients from them.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "spire/api/types/types.proto",
    "spire/api/server/entry/v1/entry.proto",
    "spire/api/server/agent/v1/agent.proto",
    "spire/api/server/bundle/v1/bundle.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", proto_dir.join(proto).display());
    }
    let descriptors = protox::compile(PROTOS, [&proto_dir])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
