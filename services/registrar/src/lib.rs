//! Registrar: a SPIRE registration entry for every TaskRun pod, and none left behind.
//!
//! It consumes the `scheduled`, `finished` and `deleted` TaskRun events (one shared durable
//! consumer, so N replicas split the work), creates each pod's workload entry and its node's
//! alias entry through the SPIRE server's Entry API, releases them when the TaskRun ends, keeps
//! per-TaskRun state in a JetStream KV bucket with compare-and-set so the order of events does not
//! matter, and reconciles SPIRE with that state periodically. Entries are Tekton-compatible, so
//! Tekton's entrypointer (`enforce-nonfalsifiability: spire`) and our signer get their SVIDs.
//!
//! The map:
//!
//! - [`config`]: [`RegistrarConfig`], every key with its default (Tekton's `config-spire` names
//!   accepted); [`template`]: selector templates with placeholders.
//! - [`entries`]: [`EntryPlanner`]: the entries' ids, SPIFFE IDs, parents, selectors and expiry,
//!   built from an event and checked (bad input is poison).
//! - [`state`]: the KV records (`active`, `tombstone`; node alias `registered`, `releasing`,
//!   `released`) and compare-and-set.
//! - [`batch`]: [`EntryBatcher`], which coalesces creates and deletes into batch calls.
//! - [`register`]: [`Registrar`], the event handling and the error → ack/nak/dead-letter mapping.
//! - [`reconcile`]: the periodic pass that deletes orphans, re-creates missing entries and
//!   releases idle node aliases.
//! - [`audit`]: the `registered` / `released` audit events.
//! - [`bundle_history`]: the trust bundle history: every bundle SPIRE publishes, recorded
//!   append-only and announced on `{p}.trust.bundle-rotated`.
//! - [`connect`]: SPIRE over the admin socket or TCP with mTLS (NATS: `countersign_runtime::nats`).
//! - [`metrics`]: the `countersign_registrar_*` metrics; [`latency`]: the end-to-end
//!   `countersign_registration_latency_seconds` (pod scheduled → entry created).
//! - [`service`]: [`run`], the service on the runtime skeleton (`main.rs` is one call).

pub mod audit;
pub mod batch;
pub mod bundle_history;
pub mod config;
pub mod connect;
pub mod entries;
pub mod latency;
pub mod metrics;
pub mod reconcile;
pub mod register;
pub mod service;
pub mod state;
pub mod template;

pub use batch::{BatchError, EntryBatcher};
pub use config::RegistrarConfig;
pub use entries::{EntryPlanner, InvalidEvent, OwnedEntryId};
pub use metrics::RegistrarMetrics;
pub use reconcile::{ReconcileError, ReconcileReport};
pub use register::{ErrorKind, RegisterError, Registrar};
pub use service::{SERVICE_NAME, StartError, bind_topology, build_registrar, run, state_bucket};
