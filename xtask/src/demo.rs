//! `cargo xtask demo [--simulated] [--keep-running] [--traces]`: the whole system on one machine,
//! end to end: by default on a real node beside Tekton's own controller and entrypointer, or, with
//! `--simulated` (or where no container runtime can run), with our code playing Tekton and the
//! kubelet.
//!
//! Ensures the peers, then runs the demo binary `countersign-demo` of `tests/system` with
//! `cargo run` (cargo's progress shown while it builds), which builds the six binaries and plays
//! the scenario of `countersign_system_tests::demo` (see that binary for what it shows and when
//! it exits 0). Ctrl-C at any point stops and removes everything.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Keep everything running after the scenario (and print how to look at it) until Ctrl-C.
    #[arg(long)]
    keep_running: bool,
    /// Export every service's spans to a Jaeger started for the demo, and print the first
    /// TaskRun's trace as a tree of spans read back from Jaeger's query API.
    #[arg(long)]
    traces: bool,
    /// Play Tekton's controller and the kubelet with our own code instead of running them on a
    /// real node.
    #[arg(long)]
    simulated: bool,
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let peers = crate::peers::ensure()?;
    for binary in peers.iter() {
        eprintln!(
            "peers: {} {} at {}",
            binary.peer,
            binary.version,
            binary.path.display()
        );
    }
    let mut command = crate::cargo::command(&[
        "run",
        "--package",
        "countersign-system-tests",
        "--bin",
        "countersign-demo",
        "--",
    ])?;
    if args.keep_running {
        command.arg("--keep-running");
    }
    if args.traces {
        command.arg("--traces");
    }
    if args.simulated {
        command.arg("--simulated");
    }
    eprintln!("demo: building and running the demo: {command:?}");
    Err(crate::cargo::exec(command))
}
