//! Attestor: verifies signed TaskRun results and publishes signed attestations.
//!
//! It consumes the watcher's `step-completed` and `finished` events from the shared durable
//! consumer `attestor`, checks each step's results as Tekton's entrypointer (or our `signer`)
//! signed them with the pod's SVID, decides the TaskRun's verdict, and turns every verdict into
//! an in-toto Statement in a DSSE envelope signed with the attestor's own SVID. The attestation
//! is stored once per TaskRun (KV, create-if-absent) and published as a `verified` or
//! `rejected` event that anyone holding the trust bundle can check offline.
//!
//! The map:
//!
//! - [`config`]: the configuration (`[nats]`, shared through `countersign_runtime::nats`,
//!   `[bus]`, `[consumer]`, `[spire]`, `[store]`, `[annotate]`, `[timestamp]`).
//! - [`service`]: [`run`], start-up in order behind readiness latches, then the consumer.
//! - [`handler`]: [`Attestor`], what each event does, and the ack rule's inputs.
//! - [`lane`]: live runs first: the live and the throttled backlog consumer, and which
//!   events each takes.
//! - [`material`]: the attestor's SVID and the trust bundles, kept current.
//! - [`store`]: its own KV bucket, the step verdicts.
//! - [`revocation`]: re-verification when SPIRE revokes a CA: the stored attestations signed
//!   under it get an `attestation.revoked` event and a `{uid}.revoked` record, once each.
//!
//! The rule itself (one step's verdict, the TaskRun's from its steps), signing the attestation
//! and the public KV layout of attestations (attestations by UID, the name index) are
//! `countersign_verdict`'s, shared with the `countersign` command and the gate.
//! - [`annotate`]: the optional `countersign.dev/*` TaskRun annotations.
//! - [`timestamp`]: the optional RFC 3161 timestamp of each attestation from a timestamp
//!   authority (`[timestamp]`), verified before the attestation is stored.
//! - [`metrics`] holds `countersign_attestor_*`, and [`latency`] the end-to-end
//!   `countersign_attestation_latency_seconds`.
//!
//! Invariant: exactly one attestation per TaskRun UID. The KV record is written with
//! create-if-absent and the event id is `{uid}:attestation`, so redeliveries and replicas
//! converge on the first stored attestation, and the event published is always that one.

pub mod annotate;
pub mod config;
pub mod handler;
pub mod lane;
pub mod latency;
pub mod material;
pub mod metrics;
pub mod revocation;
pub mod service;
pub mod store;
pub mod timestamp;

pub use config::AttestorConfig;
pub use handler::{AttestError, Attestor, AttestorParts};
pub use service::{RunError, SERVICE_NAME, run};
