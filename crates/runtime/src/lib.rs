//! What every Countersign service binary shares: typed config, telemetry, metrics, health and
//! readiness, graceful shutdown, and the skeleton that puts them in a fixed order.
//!
//! - [`config`]: a service's `#[serde(deny_unknown_fields)]` config from a TOML file overlaid with
//!   `COUNTERSIGN_<SECTION>__<KEY>` variables; errors name the key. The shared sections
//!   ([`config::AdminConfig`], [`config::TelemetryConfig`], [`config::ShutdownConfig`], and
//!   [`nats::NatsConfig`]), handed out by [`shared_sections!`] and checked by the loader for every
//!   service, and [`config::Secret`].
//! - [`telemetry`]: `tracing` (text or JSON), OpenTelemetry with optional OTLP/gRPC export, the
//!   W3C TraceContext propagator. The one process-wide piece, set up once by [`run_main`].
//! - [`metrics`]: a `prometheus-client` registry owned by a [`metrics::Metrics`] value.
//! - [`bounded_read`]: reading a whole file up to a size limit (config files, the CLI's inputs).
//! - [`nats`]: the `[nats]` section every service shares, and connecting with it (waiting for the
//!   server at start-up).
//! - [`retry`]: retrying a start-up step with a [`retry::Backoff`] until it succeeds, fails for
//!   good, or shutdown begins.
//! - [`error_chain`]: an error and its sources on one line, for logs and stderr (re-exported
//!   from `countersign-error-report`, the one formatter).
//! - [`health`]: [`health::Readiness`] and its named [`health::Latch`]es.
//! - [`admin`]: the admin server: `/livez`, `/readyz`, `/metrics`.
//! - [`shutdown`]: the root `CancellationToken`, tracked tasks and the drain; SIGTERM/SIGINT.
//! - [`service`]: [`Context`], [`run_service`] (in-process, on a bound listener) and [`run_main`].
//! - [`http_client`]: a `reqwest::Client` on rustls with ring.
//! - [`http_server`]: serving a router with header-read and whole-request time limits (the admin
//!   server, the watcher's ingress).
//!
//! # A service
//!
//! The service's library holds its config and its `run(ctx)`; `main.rs` is one call.
//!
//! ```no_run
//! use countersign_runtime::config::{AdminConfig, ServiceConfig, ShutdownConfig, TelemetryConfig};
//! use countersign_runtime::Context;
//!
//! #[derive(Debug, serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! pub struct Config {
//!     #[serde(default)] pub admin: AdminConfig,
//!     #[serde(default)] pub telemetry: TelemetryConfig,
//!     #[serde(default)] pub shutdown: ShutdownConfig,
//!     pub nats_url: url::Url, // `nats_url = "..."` in the file; a section in a real service
//! }
//!
//! impl ServiceConfig for Config {
//!     countersign_runtime::shared_sections!();
//! }
//!
//! /// The service: take latches, connect, spawn workers with child tokens, return when cancelled.
//! pub async fn run(ctx: Context<Config>) -> Result<(), std::io::Error> {
//!     let connected = ctx.readiness.latch("nats connected");
//!     // let client = connect(&ctx.config.nats_url).await?;
//!     connected.release();
//!     ctx.shutdown.spawn(|token| async move {
//!         // loop { select! { _ = token.cancelled() => break, message = next() => handle(message) } }
//!         token.cancelled().await;
//!     });
//!     Ok(())
//! }
//!
//! // main.rs
//! fn main() -> std::process::ExitCode {
//!     countersign_runtime::run_main::<Config, _, _, _>("registrar", run)
//! }
//! ```
//!
//! # The same service in a test, in-process
//!
//! ```no_run
//! # use countersign_runtime::config::{AdminConfig, ServiceConfig, ShutdownConfig, TelemetryConfig};
//! # #[derive(Debug, serde::Deserialize)]
//! # struct Config { #[serde(default)] admin: AdminConfig, #[serde(default)] telemetry: TelemetryConfig,
//! #   #[serde(default)] shutdown: ShutdownConfig }
//! # impl ServiceConfig for Config {
//! #   fn admin(&self) -> &AdminConfig { &self.admin }
//! #   fn telemetry(&self) -> &TelemetryConfig { &self.telemetry }
//! #   fn shutdown(&self) -> &ShutdownConfig { &self.shutdown } }
//! # async fn run(ctx: countersign_runtime::Context<Config>) -> Result<(), std::io::Error> { Ok(()) }
//! use std::time::Duration;
//! use countersign_runtime::config::{parse_config, Environment};
//! use countersign_runtime::{run_service, Context, RunOutcome};
//!
//! #[tokio::test]
//! async fn drains_on_shutdown() {
//!     let config: Config = parse_config("", &Environment::new()).unwrap();
//!     let ctx = Context::new("registrar", config);
//!     let readiness = ctx.readiness.clone();
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//!     let admin = listener.local_addr().unwrap(); // GET http://{admin}/readyz
//!     let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//!     let running = tokio::spawn(run_service(ctx, listener, Duration::from_secs(5),
//!         async { let _ = stopped.await; }, run));
//!     readiness.wait_ready().await;
//!     stop.send(()).unwrap();
//!     assert!(matches!(running.await.unwrap(), RunOutcome::Drained { .. }));
//! }
//! ```

pub mod admin;
pub mod bounded_read;
pub mod config;
pub mod health;
pub mod http_client;
pub mod http_server;
pub mod metrics;
pub mod nats;
pub mod retry;
pub mod service;
pub mod shutdown;
pub mod telemetry;

pub use crate::config::ServiceConfig;
pub use crate::service::{BoxError, Context, RunOutcome, run_main, run_service};
pub use countersign_error_report::error_chain;
