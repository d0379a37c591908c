//! `cargo xtask chaos [--taskruns N] [--seed S] [--short]`: the whole system under faults.
//!
//! Ensures the peers, then runs `countersign-chaos` of `tests/system` with `cargo run` (cargo's
//! progress shown while it builds): the demo's system, TaskRuns in waves through the API server
//! while every service, nats-server and spire-server are killed and started again; see that
//! binary for what it checks. Its last line reads `chaos: missing <n>, duplicated <n>, wrong
//! <n>, stale <n>, p99 finish->attestation <s> s`, and it exits non-zero when any count is not 0.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How many TaskRuns to play (default 1000; 60 with --short).
    #[arg(long)]
    taskruns: Option<usize>,
    /// The seed of every random choice (default: from the clock; printed first).
    #[arg(long)]
    seed: Option<u64>,
    /// The test suite's short plan: 60 TaskRuns in waves of 10.
    #[arg(long)]
    short: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
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
    eprintln!("chaos: building and running: {command:?}");
    Err(crate::cargo::exec(command))
}
