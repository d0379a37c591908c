//! `countersign-demo [--keep-running] [--traces]`: the whole system on one machine, end to end. What
//! `cargo xtask demo` runs (with `cargo run`, so cargo's progress shows while this crate and the
//! workspace build; xtask itself stays small to build).
//!
//! Builds the six binaries (cargo's progress shown), then runs the scenario of
//! `countersign_system_tests::demo` (the same code the system test `tests/system/tests/demo.rs`
//! runs): the real peers and every service as its own process, two TaskRuns played through the
//! API server, every event shown as it is published, `countersign verify` on the first
//! attestation. Exits 0 only when the first TaskRun is verified, the second (tampered) one is
//! rejected with `signature_invalid` and `countersign verify` accepts the first, so it doubles
//! as an end-to-end check. Everything is stopped and removed at the end, unless `--keep-running`,
//! which leaves it up until Ctrl-C. Ctrl-C at any point stops and removes everything.
//! `--traces` also starts Jaeger, has every service export its spans to it, and prints the first
//! TaskRun's trace as a tree of spans read back from Jaeger's query API.

use std::process::ExitCode;
use std::time::Instant;

use countersign_system_tests::demo::{Binaries, Demo, Origin, Reporter, binaries, error_lines};
use countersign_system_tests::traces::TraceStore;

/// The exit status after Ctrl-C interrupted the demo (128 + SIGINT).
const INTERRUPTED: u8 = 130;

/// The exit status of a bad command line (`EX_USAGE`).
const USAGE: u8 = 64;

fn main() -> ExitCode {
    let mut keep_running = false;
    let mut traces = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--keep-running" => keep_running = true,
            "--traces" => traces = true,
            "-h" | "--help" => {
                println!(
                    "usage: countersign-demo [--keep-running] [--traces]\n\n  --keep-running  keep \
                     everything running after the scenario, until Ctrl-C\n  --traces        export \
                     every service's spans to a Jaeger started for the demo and print the first \
                     TaskRun's trace"
                );
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("countersign-demo: unexpected argument {other:?} (try --help)");
                return ExitCode::from(USAGE);
            }
        }
    }
    let started = Instant::now();
    let root = countersign_test_support::repo_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!(
        "demo: building the services: cargo {}",
        binaries::build_args(None).join(" ")
    );
    let binaries = match Binaries::build(&cargo, &root, None) {
        Ok(binaries) => binaries,
        Err(error) => {
            eprintln!(
                "demo: building the services' binaries failed: {}",
                error_lines(&error)
            );
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("demo: starting the Tokio runtime failed: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run_demo(keep_running, traces, binaries));
    eprintln!("demo: finished in {:.1}s", started.elapsed().as_secs_f64());
    code
}

async fn run_demo(keep_running: bool, traces: bool, binaries: Binaries) -> ExitCode {
    let reporter = Reporter::stdout();
    let store = if traces {
        match TraceStore::start(&reporter).await {
            Ok(store) => Some(store),
            Err(error) => {
                report_error(&reporter, "the trace store did not start", &error);
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let otlp_endpoint = store.as_ref().map(TraceStore::otlp_endpoint);
    let demo = tokio::select! {
        started = Demo::start_exporting_to(binaries, reporter.clone(), otlp_endpoint) => match started {
            Ok(demo) => demo,
            Err(error) => {
                report_error(&reporter, "the system did not start", &error);
                reporter.line(Origin::Demo, "everything that had started was stopped and removed");
                return ExitCode::FAILURE;
            }
        },
        _ = tokio::signal::ctrl_c() => {
            reporter.line(Origin::Demo, "interrupted while starting; stopping what had started");
            return ExitCode::from(INTERRUPTED);
        }
    };

    let played = tokio::select! {
        played = demo.play() => Some(played),
        _ = tokio::signal::ctrl_c() => None,
    };
    let code = match &played {
        None => {
            reporter.line(Origin::Demo, "interrupted");
            ExitCode::from(INTERRUPTED)
        }
        Some(Err(error)) => {
            report_error(&reporter, "the scenario did not finish", error);
            ExitCode::FAILURE
        }
        Some(Ok(report)) => {
            let unexpected = report.unexpected();
            if unexpected.is_empty() {
                reporter.line(
                    Origin::Demo,
                    "PASSED: the honest TaskRun is verified, the tampered one rejected \
                     (signature_invalid), and countersign verify accepts the attestation",
                );
                match &store {
                    Some(store) => match store
                        .show_taskrun(&reporter, &report.honest.name, &report.honest.uid)
                        .await
                    {
                        Ok(()) => ExitCode::SUCCESS,
                        Err(error) => {
                            report_error(&reporter, "the first TaskRun's trace", &error);
                            ExitCode::FAILURE
                        }
                    },
                    None => ExitCode::SUCCESS,
                }
            } else {
                reporter.line(Origin::Demo, format!("FAILED:\n{}", unexpected.join("\n")));
                ExitCode::FAILURE
            }
        }
    };

    if keep_running && played.is_some() {
        demo.print_keep_running_help(countersign_system_tests::demo::scenario::HONEST.name);
        if tokio::signal::ctrl_c().await.is_err() {
            reporter.line(Origin::Demo, "cannot wait for Ctrl-C; stopping now");
        }
    }
    demo.shutdown().await;
    code
}

/// Prints an error and its causes, one per line (a peer's or service's log tail included).
fn report_error(reporter: &Reporter, what: &str, error: &dyn std::error::Error) {
    reporter.line(
        Origin::Demo,
        format!("FAILED: {what}: {}", error_lines(error)),
    );
}
