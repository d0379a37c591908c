//! A minimal service on the runtime: the reference shape of a service `main`, and the process the
//! integration tests in `tests/process.rs` start, signal and probe.
//!
//! It takes one readiness latch, `example ready`, released once `[example] ready_file` exists (at
//! once if unset), and keeps one unit of work in flight that finishes after shutdown starts, once
//! `[example] finish_file` exists (at once if unset). The files let a test decide exactly when each
//! step happens, without timing.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use countersign_runtime::Context;
use countersign_runtime::config::{AdminConfig, ServiceConfig, ShutdownConfig, TelemetryConfig};
use countersign_runtime::nats::NatsConfig;
use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;

/// The example's config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    admin: AdminConfig,
    #[serde(default)]
    telemetry: TelemetryConfig,
    #[serde(default)]
    shutdown: ShutdownConfig,
    /// Checked like every service's (the example does not connect).
    #[serde(default)]
    nats: NatsConfig,
    #[serde(default)]
    example: ExampleConfig,
}

/// `[example]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExampleConfig {
    /// The readiness latch is released once this file exists. Default: at once.
    #[serde(default)]
    ready_file: Option<PathBuf>,
    /// The in-flight work finishes, after shutdown starts, once this file exists. Default: at once.
    #[serde(default)]
    finish_file: Option<PathBuf>,
}

impl ServiceConfig for Config {
    countersign_runtime::shared_sections!(nats);
}

/// How often the example looks for its files.
const FILE_POLL: Duration = Duration::from_millis(20);

async fn wait_for_file(path: &Path) {
    let mut interval = tokio::time::interval(FILE_POLL);
    while !tokio::fs::try_exists(path).await.unwrap_or(false) {
        interval.tick().await;
    }
}

#[tracing::instrument(name = "run_example", skip_all)]
async fn run(ctx: Context<Config>) -> Result<(), Infallible> {
    let ready = ctx.readiness.latch("example ready");
    let finished_work: Counter = Counter::default();
    ctx.metrics.register(
        "example_work_finished",
        "Units of in-flight work finished",
        finished_work.clone(),
    );

    let finish_file = ctx.config.example.finish_file.clone();
    ctx.shutdown.spawn(move |token| async move {
        // One unit of work is in flight from the start; it completes only after shutdown starts.
        token.cancelled().await;
        tracing::info!("finishing the work in flight");
        if let Some(path) = finish_file {
            wait_for_file(&path).await;
        }
        finished_work.inc();
        tracing::info!("work in flight finished");
    });

    if let Some(path) = ctx.config.example.ready_file.clone() {
        let cancelled = ctx.shutdown.token();
        tokio::select! {
            () = wait_for_file(&path) => {}
            () = cancelled.cancelled() => return Ok(()),
        }
    }
    ready.release();
    tracing::info!("ready");
    Ok(())
}

fn main() -> ExitCode {
    countersign_runtime::run_main::<Config, _, _, _>("example", run)
}
