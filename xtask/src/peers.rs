//! `cargo xtask peers`: build what is missing, then print every peer's version and path.

use std::process::ExitCode;

use anyhow::Context as _;
use countersign_peers::Peers;

/// Builds missing peers, printing progress on stderr.
pub(crate) fn ensure() -> anyhow::Result<Peers> {
    countersign_peers::ensure(&mut |progress| eprintln!("peers: {progress}"))
        .context("the real test peers are not available")
}

pub(crate) fn run() -> anyhow::Result<ExitCode> {
    let go = countersign_peers::go_version().ok();
    let peers = ensure()?;
    println!("cache: {}", countersign_peers::cache_root()?.display());
    if let Some(go) = go {
        println!("go:    {go}");
    }
    for binary in peers.iter() {
        println!(
            "{:<24} {:<9} {}",
            binary.peer.binary_name(),
            binary.version,
            binary.path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
