//! `cargo xtask chaos [--taskruns N] [--seed S] [--short] [--replicas N] [--cluster]`: the whole
//! system under faults (`--cluster`: on a 3-node JetStream cluster with R3 streams and buckets,
//! losing a node at a time).
//!
//! Ensures the peers, then runs `countersign-chaos` of `tests/system` with `cargo run` (cargo's
//! progress shown while it builds): the demo's system, TaskRuns in waves through the API server
//! while every service (one replica of it, with `--replicas`), nats-server, spire-server,
//! spire-agent and kube-apiserver with etcd are killed and started again; see that
//! binary for what it checks. Its last line reads `chaos: missing <n>, duplicated <n>, wrong
//! <n>, stale <n>, p99 finish->attestation <s> s`, and it exits non-zero when any count is not 0.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// How many TaskRuns to play (default 1000; 60 with --short).
    #[arg(long)]
    taskruns: Option<usize>,
    /// The seed of every random choice (default: from the clock; printed first).
    #[arg(long)]
    seed: Option<u64>,
    /// The test suite's short plan: 60 TaskRuns in waves of 10, 2 replicas.
    #[arg(long)]
    short: bool,
    /// Processes of each service (default 1; 2 with --short); a kill hits one of them.
    #[arg(long)]
    replicas: Option<usize>,
    /// A 3-node JetStream cluster (every stream and bucket R3) instead of one nats-server; its
    /// nats-server kills hit one node.
    #[arg(long)]
    cluster: bool,
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    crate::peers::ensure()?;
    let mut command = crate::cargo::command(&[
        "run",
        "--package",
        "countersign-system-tests",
        "--bin",
        "countersign-chaos",
        "--",
    ])?;
    if let Some(taskruns) = args.taskruns {
        command.args(["--taskruns", &taskruns.to_string()]);
    }
    if let Some(seed) = args.seed {
        command.args(["--seed", &seed.to_string()]);
    }
    if args.short {
        command.arg("--short");
    }
    if let Some(replicas) = args.replicas {
        command.args(["--replicas", &replicas.to_string()]);
    }
    if args.cluster {
        command.arg("--cluster");
    }
    eprintln!("chaos: building and running: {command:?}");
    Err(crate::cargo::exec(command))
}
