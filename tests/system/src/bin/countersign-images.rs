//! `countersign-images [--debug | --from-source]`: builds every image the manifests and the
//! Compose file name and loads it into podman or docker, whichever answers (what
//! `cargo xtask images` runs).
//!
//! By default, without a registry: builds the services with cargo (`--release` unless
//! `--debug`), locates (or builds) the peers for NATS, nats-box and SPIRE, then builds the
//! services' images from `compose/docker/*.Dockerfile` with their binaries
//! (`BINARIES=prebuilt`) on a distroless base made of this machine's Debian packages, and writes
//! and loads the others; see `countersign_system_tests::images` for what each holds and why no
//! image is pulled. With `--from-source`, where a registry is reachable: the services' images
//! from the same Dockerfiles, built from source in the `rust` image (NATS and SPIRE are then
//! pulled by Compose).

use std::process::ExitCode;
use std::time::Instant;

use countersign_system_tests::demo::{Binaries, binaries};
use countersign_system_tests::images::{self, BUSYBOX, Programs};
use countersign_test_support::error_lines;
use countersign_test_support::images::ContainerCli;

/// The exit status of a bad command line (`EX_USAGE`).
const USAGE: u8 = 64;

fn main() -> ExitCode {
    let mut release = true;
    let mut from_source = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--debug" => release = false,
            "--from-source" => from_source = true,
            "-h" | "--help" => {
                println!(
                    "usage: countersign-images [--debug | --from-source]\n\n  --debug        \
                     build the services in cargo's dev profile (faster to build, larger images)\n  \
                     --from-source  build the services from source in their Dockerfiles' rust stage \
                     (needs a registry)"
                );
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("countersign-images: unexpected argument {other:?} (try --help)");
                return ExitCode::from(USAGE);
            }
        }
    }
    let result = if from_source {
        run_from_source()
    } else {
        run(release)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("countersign-images: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run_from_source() -> Result<(), String> {
    let started = Instant::now();
    let cli = ContainerCli::detect().map_err(|error| error.to_string())?;
    eprintln!(
        "images: building the services from source in their Dockerfiles with {}",
        cli.program.display()
    );
    images::build_from_source(&cli, &countersign_test_support::repo_root(), &mut |name| {
        println!("{name}");
    })
    .map_err(|error| error_lines(&error))?;
    eprintln!("images: built in {:.0}s", started.elapsed().as_secs_f64());
    Ok(())
}

fn run(release: bool) -> Result<(), String> {
    let started = Instant::now();
    let cli = ContainerCli::detect().map_err(|error| error.to_string())?;
    eprintln!("images: loading into {}", cli.program.display());
    let root = countersign_test_support::repo_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut args = binaries::build_args(None);
    if release {
        args.push("--release".into());
    }
    eprintln!("images: building the services: cargo {}", args.join(" "));
    let built = if release {
        Binaries::build_release(&cargo, &root, None)
    } else {
        Binaries::build(&cargo, &root, None)
    }
    .map_err(|error| format!("{error}"))?;
    let peers = countersign_test_support::peers();
    let programs = Programs {
        services: vec![
            ("watcher", built.watcher),
            ("registrar", built.registrar),
            ("attestor", built.attestor),
            ("relay", built.relay),
            ("gate", built.gate),
            ("exporter", built.exporter),
            ("signer", built.signer),
        ],
        nats_server: (
            peers.nats_server.version.clone(),
            peers.nats_server.path.clone(),
        ),
        nats_cli: peers.nats_cli.path.clone(),
        spire_server: (
            peers.spire_server.version.clone(),
            peers.spire_server.path.clone(),
        ),
        spire_agent: (
            peers.spire_agent.version.clone(),
            peers.spire_agent.path.clone(),
        ),
        busybox: BUSYBOX.into(),
    };
    let dir = tempfile::tempdir().map_err(|error| format!("a temporary directory: {error}"))?;
    let names = images::build_all(&programs, &cli, &root, dir.path(), &mut |name| {
        println!("{name}");
    })
    .map_err(|error| error_lines(&error))?;
    eprintln!(
        "images: {} images built into {} in {:.0}s",
        names.len(),
        cli.program.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
