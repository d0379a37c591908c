//! The service skeleton: the fixed order every Countersign `main` runs in, and the in-process
//! [`run_service`] that tests drive with an already-bound listener.
//!
//! [`run_main`] does, in order: parse the command line (`--config PATH`, `--check-config`); load and
//! validate the config (exit 64 on error, before anything is bound); start the Tokio runtime; set
//! up telemetry; bind the admin server; install the SIGTERM/SIGINT handlers; then [`run_service`]:
//! serve `/livez`, `/readyz`, `/metrics`, run the service future with a [`Context`], and on a signal
//! turn unready, cancel the root token and drain within `[shutdown] grace_period`; finally flush
//! traces and exit with the code of the [`RunOutcome`].

use std::ffi::OsString;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::net::TcpListener;
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::admin::{AdminState, bind_admin, serve_admin};
use crate::config::{ConfigError, Environment, ServiceConfig, config_path, load_service_config};
use crate::health::{Latch, Readiness};
use crate::metrics::Metrics;
use crate::nats::{NatsConfig, NatsConnectError, connect};
use crate::retry::{Backoff, retry_transient};
use crate::shutdown::{Shutdown, ShutdownSignals};
use crate::telemetry::init_telemetry;

/// The error a service future may return: anything that converts into a boxed error
/// (`thiserror` enums, `anyhow::Error`, `Box<dyn Error>`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Exit codes, from BSD's `sysexits.h` where one fits.
pub mod exit_code {
    /// Drained within the grace period.
    pub const OK: u8 = 0;
    /// `EX_USAGE`: bad command line or invalid configuration (nothing was bound).
    pub const USAGE: u8 = 64;
    /// `EX_UNAVAILABLE`: the admin address could not be bound.
    pub const UNAVAILABLE: u8 = 69;
    /// `EX_SOFTWARE`: the service returned an error or panicked.
    pub const SOFTWARE: u8 = 70;
    /// `EX_OSERR`: the runtime or the signal handlers could not be set up.
    pub const OS_ERROR: u8 = 71;
    /// `EX_TEMPFAIL`: shutdown was requested but in-flight work did not finish within the grace
    /// period (it was abandoned and will be redelivered).
    pub const DRAIN_TIMED_OUT: u8 = 75;
}

/// What every service task gets: its config, the environment it was started with, metrics,
/// readiness and shutdown. Cheap to clone; clones share everything.
///
/// A service's `run(ctx)` reads the same in every service: take a readiness latch per start-up
/// step before the first `.await`, connect with [`Context::connect_nats`], run each further step
/// with [`Context::startup`] (retried while transient, its latch released when it succeeds),
/// spawn the workers on a `JoinSet`, and end with [`Context::run_until_shutdown`], which returns
/// only at shutdown, after the workers finished and NATS was drained.
#[derive(Debug)]
#[non_exhaustive]
pub struct Context<C> {
    /// The service's name (`registrar`), for logs, spans and client names.
    pub service_name: Arc<str>,
    /// The validated config.
    pub config: Arc<C>,
    /// The environment the process was started with, read once by [`run_main`] (empty in tests
    /// unless given with [`Context::with_environment`]): libraries never read `std::env`.
    pub env: Arc<Environment>,
    /// The metrics registry behind `/metrics`.
    pub metrics: Metrics,
    /// The readiness behind `/readyz`: take a latch per startup dependency.
    pub readiness: Readiness,
    /// The root of cancellation: spawn tasks with [`Shutdown::spawn`] so the drain waits for them.
    pub shutdown: Shutdown,
}

impl<C> Clone for Context<C> {
    fn clone(&self) -> Self {
        Context {
            service_name: Arc::clone(&self.service_name),
            config: Arc::clone(&self.config),
            env: Arc::clone(&self.env),
            metrics: self.metrics.clone(),
            readiness: self.readiness.clone(),
            shutdown: self.shutdown.clone(),
        }
    }
}

impl<C> Context<C> {
    /// A fresh context: new metrics registry (with the `process_*` metrics), an empty
    /// environment, readiness with no latches, shutdown not started. Tests build one with their
    /// own config.
    pub fn new(service_name: impl Into<Arc<str>>, config: C) -> Context<C> {
        Context {
            service_name: service_name.into(),
            config: Arc::new(config),
            env: Arc::new(Environment::new()),
            metrics: Metrics::new(),
            readiness: Readiness::new(),
            shutdown: Shutdown::new(),
        }
    }

    /// The context with `env` as its environment.
    pub fn with_environment(mut self, env: Environment) -> Context<C> {
        self.env = Arc::new(env);
        self
    }

    /// The NATS connection name of the service, unless configured: `countersign-<service>`.
    pub fn nats_client_name(&self) -> String {
        format!("countersign-{}", self.service_name)
    }

    /// Connects to NATS, waiting for the server as long as it takes, and releases `latch` once
    /// connected. `Ok(None)` when shutdown came first; an error only when retrying cannot help
    /// (the credentials file).
    pub async fn connect_nats(
        &self,
        config: &NatsConfig,
        latch: Latch,
    ) -> Result<Option<async_nats::Client>, NatsConnectError> {
        let token = self.shutdown.token();
        let Some(client) = connect(config, &self.nats_client_name(), &token).await? else {
            return Ok(None);
        };
        latch.release();
        tracing::info!(url = %config.url, "connected to NATS");
        Ok(Some(client))
    }

    /// Runs a start-up step until it succeeds (then releases `latch`), fails with an error
    /// `is_transient` says retrying cannot fix, or shutdown begins (`Ok(None)`). Transient
    /// failures are logged and retried after [`Backoff::startup`].
    pub async fn startup<T, E, F, Fut>(
        &self,
        latch: Latch,
        is_transient: impl Fn(&E) -> bool,
        step: F,
    ) -> Result<Option<T>, E>
    where
        E: std::error::Error + 'static,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let what = latch.name().to_owned();
        let done = self.startup_step(&what, is_transient, step).await?;
        if done.is_some() {
            latch.release();
        }
        Ok(done)
    }

    /// [`Context::startup`] for one of several steps behind one readiness latch, which the
    /// caller releases after the last: retries `step` until it succeeds, fails with an error
    /// `is_transient` says retrying cannot fix, or shutdown begins (`Ok(None)`). `what` names the
    /// step in the log lines of its retries.
    pub async fn startup_step<T, E, F, Fut>(
        &self,
        what: &str,
        is_transient: impl Fn(&E) -> bool,
        step: F,
    ) -> Result<Option<T>, E>
    where
        E: std::error::Error + 'static,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let token = self.shutdown.token();
        retry_transient(what, &token, Backoff::startup(), is_transient, step).await
    }

    /// Runs until shutdown, then returns after every task of `tasks` returned and `nats` was
    /// drained (the messages it buffered are flushed). A task that fails or panics starts the
    /// shutdown, and its error is returned; tasks that end early without failing are fine.
    pub async fn run_until_shutdown<E>(
        &self,
        nats: Option<&async_nats::Client>,
        mut tasks: JoinSet<Result<(), E>>,
    ) -> Result<(), E>
    where
        E: From<JoinError> + 'static,
    {
        let mut failure = None;
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                Some(joined) = tasks.join_next() => match joined {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        failure = Some(error);
                        break;
                    }
                    Err(join_error) => {
                        failure = Some(E::from(join_error));
                        break;
                    }
                },
            }
        }
        self.shutdown.cancel();
        while let Some(joined) = tasks.join_next().await {
            let error = match joined {
                Ok(Ok(())) => continue,
                Ok(Err(error)) => error,
                Err(join_error) => E::from(join_error),
            };
            failure.get_or_insert(error);
        }
        if let Some(nats) = nats
            && let Err(error) = nats.drain().await
        {
            tracing::warn!(%error, "draining the NATS connection");
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// How [`run_service`] ended.
#[derive(Debug)]
pub enum RunOutcome {
    /// Shutdown was requested and the service and its tasks finished within the grace period.
    Drained {
        /// How long the drain took.
        elapsed: Duration,
    },
    /// Shutdown was requested and the grace period ran out first.
    DrainTimedOut {
        /// The grace period.
        grace_period: Duration,
        /// Tracked tasks still running (the service future itself counts as one if it was).
        still_running: usize,
    },
    /// The service (or the admin server) failed or panicked.
    Failed(ServiceError),
}

impl RunOutcome {
    /// The process exit code for this outcome (see [`exit_code`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            RunOutcome::Drained { .. } => exit_code::OK,
            RunOutcome::DrainTimedOut { .. } => exit_code::DRAIN_TIMED_OUT,
            RunOutcome::Failed(_) => exit_code::SOFTWARE,
        }
    }
}

/// Why a service ended in failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The service future returned an error.
    #[error("the service failed: {0}")]
    Returned(#[source] BoxError),
    /// The service future panicked.
    #[error("the service panicked: {0}")]
    Panicked(#[source] JoinError),
    /// The admin server stopped serving.
    #[error(transparent)]
    Admin(#[from] crate::admin::ServeError),
}

/// How long the admin server may take to finish its open requests after the drain.
const ADMIN_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs a service in-process on an already-bound admin listener until `shutdown_requested`
/// resolves or the context's shutdown is cancelled (or the service fails), then drains within
/// `grace_period`. `main` passes the signal future; tests pass a channel.
///
/// The service future may run until its token is cancelled, or set things up, spawn its workers
/// with `ctx.shutdown.spawn` and return `Ok` at once: either way the service runs until shutdown.
/// An `Err` (or a panic) from it starts the drain at once and ends in [`RunOutcome::Failed`].
///
/// Order on shutdown: `/readyz` turns 503 (draining), the root token is cancelled, the service
/// future and every task spawned with `ctx.shutdown.spawn` get `grace_period` to return, then the
/// admin server stops.
/// The latch [`run_service`] holds until the service future has been polled once.
pub const STARTING_LATCH: &str = "service starting";

/// Polls `future`, releasing `latch` once its first poll has returned. A service takes its readiness
/// latches before its first `.await`, so by then they exist and readiness depends on them.
async fn release_after_first_poll<F: Future>(future: F, latch: Latch) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut latch = Some(latch);
    std::future::poll_fn(move |cx| {
        let poll = future.as_mut().poll(cx);
        if let Some(latch) = latch.take() {
            latch.release();
        }
        poll
    })
    .await
}

pub async fn run_service<C, F, Fut, E>(
    context: Context<C>,
    admin_listener: TcpListener,
    grace_period: Duration,
    shutdown_requested: impl Future<Output = ()>,
    service: F,
) -> RunOutcome
where
    C: Send + Sync + 'static,
    F: FnOnce(Context<C>) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError> + Send + 'static,
{
    let admin_stop = CancellationToken::new();
    let admin_state = AdminState {
        readiness: context.readiness.clone(),
        metrics: context.metrics.clone(),
    };
    // Held until the service has been polled once, so `/readyz` cannot answer 200 in the moment
    // between the admin server starting and the service taking its own latches.
    let starting = context.readiness.latch(STARTING_LATCH);
    let mut admin = tokio::spawn(serve_admin(admin_listener, admin_state, admin_stop.clone()));
    let mut service_task =
        tokio::spawn(release_after_first_poll(service(context.clone()), starting));
    let mut shutdown_requested = std::pin::pin!(shutdown_requested);

    // Phase 1: run until asked to stop, or until the service or the admin server fails. The
    // service future may return `Ok` early, leaving its tracked tasks to run.
    let mut service_finished = false;
    let failure = loop {
        tokio::select! {
            () = &mut shutdown_requested => {
                tracing::info!("shutdown requested; draining");
                break None;
            }
            () = context.shutdown.cancelled() => {
                tracing::info!("shutdown started by the service; draining");
                break None;
            }
            result = &mut service_task, if !service_finished => {
                service_finished = true;
                if let Err(error) = service_result(result) {
                    break Some(error);
                }
            }
            result = &mut admin => break match result {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(ServiceError::Admin(error)),
                Err(join_error) => Some(ServiceError::Panicked(join_error)),
            },
        }
    };

    // Phase 2: unready, cancel, drain.
    context.readiness.start_draining();
    context.shutdown.cancel();
    let drain_started = tokio::time::Instant::now();
    let drain = async {
        let result = if service_finished {
            Ok(())
        } else {
            service_result((&mut service_task).await)
        };
        context.shutdown.wait_for_tasks().await;
        result
    };
    let drained = tokio::time::timeout(grace_period, drain).await;
    admin_stop.cancel();
    let outcome = match (failure, drained) {
        (Some(error), _) | (None, Ok(Err(error))) => RunOutcome::Failed(error),
        (None, Ok(Ok(()))) => RunOutcome::Drained {
            elapsed: drain_started.elapsed(),
        },
        (None, Err(_elapsed)) => {
            let service_still_running = usize::from(!service_task.is_finished());
            service_task.abort();
            RunOutcome::DrainTimedOut {
                grace_period,
                still_running: context.shutdown.running_tasks() + service_still_running,
            }
        }
    };
    if !admin.is_finished() {
        // The admin server finishes the requests it has open and stops (a failure now changes
        // nothing); a client that keeps a request open cannot hold up the exit for long.
        if tokio::time::timeout(ADMIN_STOP_TIMEOUT, &mut admin)
            .await
            .is_err()
        {
            admin.abort();
        }
    }
    outcome
}

fn service_result<E: Into<BoxError>>(
    result: Result<Result<(), E>, JoinError>,
) -> Result<(), ServiceError> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(ServiceError::Returned(error.into())),
        Err(join_error) => Err(ServiceError::Panicked(join_error)),
    }
}

/// The command line every service accepts.
#[derive(Debug, Clone, Parser)]
#[command(about = None, long_about = None)]
pub struct StartupArgs {
    /// The config file (TOML). Default: `$COUNTERSIGN_CONFIG`, else defaults and the environment only.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Load and validate the config, print whether it is valid, and exit.
    #[arg(long)]
    pub check_config: bool,
}

/// Why the process could not get as far as running the service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartupError {
    /// The command line is wrong.
    #[error(transparent)]
    Arguments(#[from] clap::Error),
    /// The config is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
}

impl StartupError {
    /// The exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartupError::Arguments(error) if !error.use_stderr() => exit_code::OK,
            StartupError::Arguments(_) | StartupError::Config(_) => exit_code::USAGE,
        }
    }
}

/// Parses the command line and loads and validates the config: the first two steps of `main`,
/// apart so they can be tested with literal arguments and environment.
pub fn load_startup<C: ServiceConfig>(
    args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
    env: &Environment,
) -> Result<(StartupArgs, C), StartupError> {
    let args = StartupArgs::try_parse_from(args)?;
    let path = config_path(args.config.as_deref(), env);
    let config = load_service_config(path.as_deref(), env)?;
    Ok((args, config))
}

/// A whole service `main`: see the module docs for the order. `service_name` names the service in
/// logs and traces; `service` is the service's own `run(ctx)`.
///
/// ```no_run
/// # #[derive(Debug, serde::Deserialize)]
/// # struct Config { #[serde(default)] admin: countersign_runtime::config::AdminConfig,
/// #   #[serde(default)] telemetry: countersign_runtime::config::TelemetryConfig,
/// #   #[serde(default)] shutdown: countersign_runtime::config::ShutdownConfig }
/// # impl countersign_runtime::config::ServiceConfig for Config {
/// #   fn admin(&self) -> &countersign_runtime::config::AdminConfig { &self.admin }
/// #   fn telemetry(&self) -> &countersign_runtime::config::TelemetryConfig { &self.telemetry }
/// #   fn shutdown(&self) -> &countersign_runtime::config::ShutdownConfig { &self.shutdown } }
/// # async fn run(_ctx: countersign_runtime::Context<Config>) -> Result<(), std::io::Error> { Ok(()) }
/// fn main() -> std::process::ExitCode {
///     countersign_runtime::run_main::<Config, _, _, _>("registrar", run)
/// }
/// ```
pub fn run_main<C, F, Fut, E>(service_name: &'static str, service: F) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(Context<C>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError> + Send + 'static,
{
    let env = Environment::from_process();
    let (args, config) = match load_startup::<C>(std::env::args_os(), &env) {
        Ok(loaded) => loaded,
        Err(StartupError::Arguments(error)) => {
            // Prints help and version to stdout, usage errors to stderr.
            let _ = error.print();
            return ExitCode::from(StartupError::Arguments(error).exit_code());
        }
        Err(error) => {
            eprintln!("{service_name}: {error}");
            return ExitCode::from(error.exit_code());
        }
    };
    if args.check_config {
        println!("{service_name}: configuration is valid");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{service_name}: starting the Tokio runtime: {error}");
            return ExitCode::from(exit_code::OS_ERROR);
        }
    };
    let code = runtime.block_on(serve(service_name, config, env, service));
    // Tasks that outlived the grace period are dropped here; do not wait on them.
    runtime.shutdown_background();
    ExitCode::from(code)
}

async fn serve<C, F, Fut, E>(
    service_name: &'static str,
    config: C,
    env: Environment,
    service: F,
) -> u8
where
    C: ServiceConfig,
    F: FnOnce(Context<C>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError> + Send + 'static,
{
    let telemetry = match init_telemetry(service_name, config.telemetry()) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("{service_name}: {error}");
            return exit_code::USAGE;
        }
    };
    let grace_period = config.shutdown().grace_period;
    let listener = match bind_admin(config.admin().listen).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "cannot bind the admin server");
            telemetry.shutdown().await;
            return exit_code::UNAVAILABLE;
        }
    };
    let mut signals = match ShutdownSignals::register() {
        Ok(signals) => signals,
        Err(error) => {
            tracing::error!(%error, "cannot install signal handlers");
            telemetry.shutdown().await;
            return exit_code::OS_ERROR;
        }
    };
    let admin_address = listener
        .local_addr()
        .map(|address| address.to_string())
        .unwrap_or_default();
    tracing::info!(
        service = service_name,
        version = env!("CARGO_PKG_VERSION"),
        admin = %admin_address,
        otlp_export = telemetry.is_exporting(),
        "starting"
    );
    let shutdown_requested = async move {
        let signal = signals.recv().await;
        tracing::info!(%signal, "signal received");
    };
    let context = Context::new(service_name, config).with_environment(env);
    let outcome = run_service(context, listener, grace_period, shutdown_requested, service).await;
    log_outcome(&outcome);
    telemetry.shutdown().await;
    outcome.exit_code()
}

fn log_outcome(outcome: &RunOutcome) {
    match outcome {
        RunOutcome::Drained { elapsed } => {
            tracing::info!(elapsed = %Seconds(*elapsed), "drain completed; exiting");
        }
        RunOutcome::DrainTimedOut {
            grace_period,
            still_running,
        } => tracing::warn!(
            grace_period = %Seconds(*grace_period),
            still_running,
            "drain timed out; abandoning in-flight work"
        ),
        RunOutcome::Failed(error) => tracing::error!(%error, "service failed"),
    }
}

/// A duration shown as `1.234s` in logs.
struct Seconds(Duration);

impl fmt::Display for Seconds {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{:.3}s", self.0.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use crate::health::ReadinessStatus;
    use serde::Deserialize;

    use super::*;
    use crate::config::{AdminConfig, ConfigErrorKind, ShutdownConfig, TelemetryConfig};

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Config {
        #[serde(default)]
        admin: AdminConfig,
        #[serde(default)]
        telemetry: TelemetryConfig,
        #[serde(default)]
        shutdown: ShutdownConfig,
        #[serde(default)]
        workers: u16,
    }

    impl ServiceConfig for Config {
        fn admin(&self) -> &AdminConfig {
            &self.admin
        }
        fn telemetry(&self) -> &TelemetryConfig {
            &self.telemetry
        }
        fn shutdown(&self) -> &ShutdownConfig {
            &self.shutdown
        }
        fn validate(&self) -> Result<(), ConfigError> {
            if self.workers > 64 {
                return Err(ConfigError::invalid("workers", "at most 64"));
            }
            Ok(())
        }
    }

    #[test]
    fn startup_reads_the_config_named_on_the_command_line() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("service.toml");
        std::fs::write(&path, "workers = 3\n").expect("writing the config");
        let (args, config) = load_startup::<Config>(
            ["svc", "--config", path.to_str().expect("a UTF-8 path")],
            &Environment::new(),
        )
        .expect("a valid startup");
        assert_eq!(args.config.as_deref(), Some(path.as_path()));
        assert_eq!(config.workers, 3);
    }

    #[test]
    fn startup_runs_the_service_validation() {
        let env = Environment::new().with("COUNTERSIGN_WORKERS__X", "1");
        let error = load_startup::<Config>(["svc"], &env).expect_err("unknown key");
        assert_eq!(error.exit_code(), exit_code::USAGE);

        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("service.toml");
        std::fs::write(&path, "workers = 65\n").expect("writing the config");
        let env =
            Environment::new().with("COUNTERSIGN_CONFIG", path.to_str().expect("a UTF-8 path"));
        match load_startup::<Config>(["svc"], &env) {
            Err(StartupError::Config(error)) => {
                assert_eq!(error.kind(), ConfigErrorKind::InvalidValue);
                assert_eq!(error.key(), Some("workers"));
            }
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn bad_arguments_are_a_usage_error_and_help_is_not() {
        let error = load_startup::<Config>(["svc", "--bogus"], &Environment::new())
            .expect_err("unknown flag");
        assert_eq!(error.exit_code(), exit_code::USAGE);
        let help =
            load_startup::<Config>(["svc", "--help"], &Environment::new()).expect_err("help exits");
        assert_eq!(help.exit_code(), exit_code::OK);
    }

    #[derive(Debug, thiserror::Error)]
    enum TaskError {
        #[error("the task failed")]
        Failed,
        #[error("not yet")]
        NotYet,
        #[error("a task panicked")]
        Panicked(#[from] JoinError),
    }

    #[tokio::test]
    async fn run_until_shutdown_returns_at_shutdown_after_its_tasks() {
        let ctx = Context::new("test", ());
        let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks: JoinSet<Result<(), TaskError>> = JoinSet::new();
        let token = ctx.shutdown.token();
        let flag = Arc::clone(&finished);
        tasks.spawn(async move {
            token.cancelled().await;
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        });
        // A task that ends early without failing changes nothing.
        tasks.spawn(async { Ok(()) });
        let running = tokio::spawn({
            let ctx = ctx.clone();
            async move { ctx.run_until_shutdown(None, tasks).await }
        });
        ctx.shutdown.cancel();
        let outcome = tokio::time::timeout(Duration::from_secs(5), running)
            .await
            .expect("returns at shutdown")
            .expect("no panic");
        assert!(outcome.is_ok());
        assert!(finished.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_failing_task_starts_the_shutdown_and_its_error_is_returned() {
        let ctx = Context::new("test", ());
        let mut tasks: JoinSet<Result<(), TaskError>> = JoinSet::new();
        let token = ctx.shutdown.token();
        tasks.spawn(async move {
            token.cancelled().await;
            Ok(())
        });
        tasks.spawn(async { Err(TaskError::Failed) });
        let outcome =
            tokio::time::timeout(Duration::from_secs(5), ctx.run_until_shutdown(None, tasks))
                .await
                .expect("the failure stops the others");
        assert!(matches!(outcome, Err(TaskError::Failed)));
        assert!(ctx.shutdown.is_cancelled());

        let ctx = Context::new("test", ());
        let mut tasks: JoinSet<Result<(), TaskError>> = JoinSet::new();
        tasks.spawn(async { panic!("a bug") });
        let outcome = ctx.run_until_shutdown(None, tasks).await;
        assert!(matches!(outcome, Err(TaskError::Panicked(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_startup_step_releases_its_latch_only_when_it_succeeds() {
        let ctx = Context::new("test", ()).with_environment(Environment::new().with("A", "1"));
        assert_eq!(ctx.env.get("A"), Some("1"));
        assert_eq!(ctx.nats_client_name(), "countersign-test");
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let latch = ctx.readiness.latch("step done");
        let done = ctx
            .startup(
                latch,
                |error| matches!(error, TaskError::NotYet),
                || async {
                    match attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                        0 => Err(TaskError::NotYet),
                        _ => Ok(7),
                    }
                },
            )
            .await;
        assert!(matches!(done, Ok(Some(7))));
        assert!(ctx.readiness.status().is_ready());

        let latch = ctx.readiness.latch("never done");
        let failed = ctx
            .startup(
                latch,
                |error| matches!(error, TaskError::NotYet),
                || async { Err::<(), _>(TaskError::Failed) },
            )
            .await;
        assert!(matches!(failed, Err(TaskError::Failed)));
        assert!(!ctx.readiness.status().is_ready());
    }

    #[tokio::test]
    async fn readiness_waits_for_the_first_poll_of_the_service() {
        let readiness = Readiness::new();
        let starting = readiness.latch(STARTING_LATCH);
        let service_latch = {
            let readiness = readiness.clone();
            async move {
                // Taken before the first await, as services do.
                let _connected = readiness.latch("nats connected");
                std::future::pending::<()>().await;
            }
        };
        assert!(matches!(readiness.status(), ReadinessStatus::Pending(_)));
        let task = tokio::spawn(release_after_first_poll(service_latch, starting));
        // Once polled, only the service's own latch is pending: never `Ready` in between.
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match readiness.status() {
                    ReadinessStatus::Pending(names) if names == ["nats connected"] => break,
                    ReadinessStatus::Pending(_) => tokio::task::yield_now().await,
                    other => panic!("readiness went {other:?} before the service's latch released"),
                }
            }
        })
        .await
        .expect("the starting latch is released after the first poll");
        task.abort();
    }
}
