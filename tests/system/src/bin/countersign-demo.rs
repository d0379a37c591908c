//! `countersign-demo [--simulated] [--keep-running] [--traces]`: the whole system on one machine,
//! end to end. What `cargo xtask demo` runs (with `cargo run`, so cargo's progress shows while
//! this crate and the workspace build; xtask itself stays small to build).
//!
//! Builds the six binaries (cargo's progress shown), then, by default, runs the scenario of
//! `countersign_system_tests::demo::tekton` (the same code as the system test
//! `tests/system/tests/tekton.rs`): a real node (containerd, runc, the kubelet), Tekton's own
//! controller and entrypointer, SPIRE with the SPIFFE CSI driver, every service as its own
//! process; a TaskRun and a PipelineRun verified, and a TaskRun whose result was changed after it
//! finished rejected with `results_mismatch`. Exits 0 only when all of that holds.
//!
//! A real node needs root (namespaces, mounts, cgroups) and a container runtime. Where none can
//! run, or with `--simulated`, it says why and runs the simulated scenario of
//! `countersign_system_tests::demo` instead (`tests/system/tests/demo.rs`): our code plays
//! Tekton's controller and the kubelet through the API server, the pods' results signed by
//! `countersign-signer`; `countersign verify` runs on the first attestation; the tampered TaskRun
//! is rejected with `signature_invalid`. `--traces` (which uses the simulated scenario) also
//! starts Jaeger, has every service export its spans to it, and prints the first TaskRun's trace.
//! Everything is stopped and removed at the end, unless `--keep-running`, which leaves it up
//! until Ctrl-C. Ctrl-C at any point stops and removes everything.

use std::process::ExitCode;
use std::time::Instant;

use countersign_system_tests::demo::tekton::{TektonDemo, TektonStartError};
use countersign_system_tests::demo::{Binaries, Demo, Origin, Reporter, binaries, error_lines};
use countersign_system_tests::traces::TraceStore;
use countersign_test_support::node::NodeError;

/// The exit status after Ctrl-C interrupted the demo (128 + SIGINT).
const INTERRUPTED: u8 = 130;

/// The exit status of a bad command line (`EX_USAGE`).
const USAGE: u8 = 64;

fn main() -> ExitCode {
    let mut keep_running = false;
    let mut traces = false;
    let mut simulated = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--keep-running" => keep_running = true,
            "--traces" => traces = true,
            "--simulated" => simulated = true,
            "-h" | "--help" => {
                println!(
                    "usage: countersign-demo [--simulated] [--keep-running] [--traces]\n\n  \
                     --simulated     play Tekton and the kubelet with our own code instead of \
                     running them on a real node\n  --keep-running  keep \
                     everything running after the scenario, until Ctrl-C\n  --traces        export \
                     every service's spans to a Jaeger started for the demo and print the first \
                     TaskRun's trace (simulated scenario)"
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
    let real_node = if simulated {
        eprintln!("demo: --simulated: our code plays Tekton's controller and the kubelet");
        false
    } else if traces {
        eprintln!(
            "demo: --traces runs the simulated scenario (our code plays Tekton and the kubelet)"
        );
        false
    } else if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "demo: a real node needs root (namespaces, mounts, cgroups), and this runs as uid {}: \
             running the simulated scenario instead (our code plays Tekton's controller and the kubelet)",
            nix::unistd::geteuid()
        );
        false
    } else {
        true
    };
    if real_node {
        // The node moves its thread into a network namespace: a current-thread runtime.
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                eprintln!("demo: starting the Tokio runtime failed: {error}");
                return ExitCode::FAILURE;
            }
        };
        match runtime.block_on(run_on_node(keep_running, binaries.clone())) {
            Some(code) => {
                eprintln!("demo: finished in {:.1}s", started.elapsed().as_secs_f64());
                return code;
            }
            None => eprintln!(
                "demo: running the simulated scenario instead (our code plays Tekton's controller and the kubelet)"
            ),
        }
    }
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

/// The scenario on a real node with real Tekton; `None` when no container runtime can run here
/// (after saying why), so the simulated one runs instead.
async fn run_on_node(keep_running: bool, binaries: Binaries) -> Option<ExitCode> {
    let reporter = Reporter::stdout();
    let mut demo = tokio::select! {
        started = TektonDemo::start(binaries, reporter.clone()) => match started {
            Ok(demo) => demo,
            Err(TektonStartError::Node(error @ (NodeError::Runtime(_) | NodeError::NotRoot { .. }))) => {
                report_error(&reporter, "a real node cannot run here", &error);
                return None;
            }
            Err(error) => {
                report_error(&reporter, "the system did not start", &error);
                reporter.line(Origin::Demo, "everything that had started was stopped and removed");
                return Some(ExitCode::FAILURE);
            }
        },
        _ = tokio::signal::ctrl_c() => {
            reporter.line(Origin::Demo, "interrupted while starting; stopping what had started");
            return Some(ExitCode::from(INTERRUPTED));
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
                    format!(
                        "PASSED: Tekton {}'s TaskRun and PipelineRun are verified, the result changed \
                         after the run is rejected (results_mismatch)",
                        report.tekton_version
                    ),
                );
                ExitCode::SUCCESS
            } else {
                reporter.line(Origin::Demo, format!("FAILED:\n{}", unexpected.join("\n")));
                ExitCode::FAILURE
            }
        }
    };
    if keep_running && played.is_some() {
        reporter.plain(format!(
            "\n== The system keeps running ==\nEverything listens inside the node's network namespace; in another terminal:\n\n  \
             nsenter -t {} -n kubectl --kubeconfig {} get taskruns,pods -A\n\nPress Ctrl-C to stop everything and clean up.\n",
            demo.node().namespace_pid().unwrap_or_default(),
            demo.node().kube().kubeconfig_path().display()
        ));
        if tokio::signal::ctrl_c().await.is_err() {
            reporter.line(Origin::Demo, "cannot wait for Ctrl-C; stopping now");
        }
    }
    demo.shutdown().await;
    Some(code)
}

/// Prints an error and its causes, one per line (a peer's or service's log tail included).
fn report_error(reporter: &Reporter, what: &str, error: &dyn std::error::Error) {
    reporter.line(
        Origin::Demo,
        format!("FAILED: {what}: {}", error_lines(error)),
    );
}
