//! Watcher: TaskRun lifecycle events from Kubernetes and from Tekton's CloudEvents.
//!
//! Every TaskRun enters Countersign here. The watcher observes TaskRuns and their pods through
//! the Kubernetes API, and receives Tekton's own CloudEvents over HTTP; from either it derives the
//! lifecycle transitions of the event contract (`created`, `scheduled`, `step-completed`,
//! `finished`, `deleted`) and publishes each one once, with a deterministic id, to JetStream. It
//! never writes to the cluster: it gets, lists and watches TaskRuns and pods, nothing else.
//!
//! The map:
//!
//! - [`config`]: the configuration (`[cluster]`, `[kubernetes]`, `[ingress]`, `[nats]`, `[bus]`,
//!   `[state]`) with documented defaults; [`selector`]: label selectors as text.
//! - The TaskRun and Pod types come from `countersign-tekton` (the one reader of their JSON).
//! - [`derive`]: the pure function `(TaskRun, Option<Pod>) -> transitions`, shared by both sources.
//! - [`state`]: the JetStream KV record of what was published per TaskRun.
//! - [`emit`]: publishing exactly the transitions not yet published, in order, then recording them.
//! - [`kubernetes`]: watches into [`store`]s (lists applied in place; settled copies of finished
//!   TaskRuns), a level-triggered work queue ([`queue`]) and its workers, deletion detection that
//!   never hangs on watch `Delete` events alone.
//! - [`ingress`]: the CloudEvents HTTP endpoint (axum); an event is a hint, the TaskRun is read
//!   from the API server. [`identifiers`]: namespace, name and UID checked against what
//!   Kubernetes allows; [`refusals`]: refusals logged at warn, rate-limited.
//! - [`metrics`]: the `countersign_watcher_*` metrics.
//! - [`service`]: [`run`], the order things start and stop in.
//!
//! # Exactly once, as far as subscribers can tell
//!
//! Replicas need no leader election. Every transition has a deterministic event id
//! (`{taskrun uid}:created`, `…:scheduled:{pod uid}`, `…:step-completed:{pod uid}:{step}`,
//! `…:finished`, `…:deleted`) sent as `Nats-Msg-Id`, so JetStream drops a second publish inside
//! the stream's duplicate window; and each published transition is recorded in the KV bucket
//! after its PubAck and skipped when recorded, so a restart or relist long after the window does
//! not publish it again. Consumers stay idempotent past both.
//!
//! ```no_run
//! // main.rs
//! fn main() -> std::process::ExitCode {
//!     countersign_runtime::run_main::<countersign_watcher::WatcherConfig, _, _, _>(
//!         countersign_watcher::SERVICE_NAME,
//!         countersign_watcher::run,
//!     )
//! }
//! ```

pub mod config;
pub mod derive;
pub mod emit;
pub mod identifiers;
pub mod ingress;
pub mod kubernetes;
pub mod metrics;
pub mod queue;
pub mod refusals;
pub mod selector;
pub mod service;
pub mod state;
pub mod store;

pub use config::WatcherConfig;
pub use service::{SERVICE_NAME, WatcherError, run, run_on};
