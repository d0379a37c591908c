//! `cargo xtask bench [case] [-- options]`: build the benchmark binary (`tests/bench`) in release
//! (cargo's progress shown), run one case or all of them against real peers, and write the
//! report (markdown and JSON) under `target/bench/`. Each case prints its headline as
//! `<case>: ratio <number>`. The `system` case runs every service as its own process, so their
//! release binaries are built first (next to the benchmark binary, where it finds them).

use std::process::ExitCode;

use anyhow::Context as _;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The case to run (`events`, ...); all cases when absent.
    case: Option<String>,
    /// Options for the benchmark binary, e.g. `-- --events 5000`.
    #[arg(last = true)]
    options: Vec<String>,
}

/// The services the `system` case runs as processes.
const SERVICE_PACKAGES: [&str; 4] = [
    "countersign-watcher",
    "countersign-registrar",
    "countersign-attestor",
    "countersign-relay",
];

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    crate::peers::ensure()?;
    if args.case.as_deref().is_none_or(|case| case == "system") {
        let mut build = crate::cargo::command(&["build", "--release", "--bins"])?;
        for package in SERVICE_PACKAGES {
            build.args(["--package", package]);
        }
        let status = build.status().context("building the services")?;
        if !status.success() {
            anyhow::bail!("building the services failed ({status})");
        }
    }
    let report_dir = crate::cargo::repo_root()?.join("target").join("bench");
    let mut command =
        crate::cargo::command(&["run", "--release", "--package", "countersign-bench", "--"])?;
    command
        .args(args.case.iter())
        .arg("--report-dir")
        .arg(&report_dir)
        .args(&args.options);
    let status = command.status().context("running the benchmarks")?;
    if !status.success() {
        anyhow::bail!("the benchmarks failed ({status})");
    }
    eprintln!("bench: report in {}", report_dir.display());
    Ok(ExitCode::SUCCESS)
}
