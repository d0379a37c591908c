//! The TaskRun verdict, as one library: the attestor decides and signs with it, the
//! `countersign` command checks offline and reads with it, and the gate reads with it. So every
//! party applies the same rule and reads the same layout.
//!
//! The map:
//!
//! - [`snapshot`]: what the rule needs from a TaskRun object (its steps' signed entries, its
//!   merged `status.results`), read from Tekton's JSON.
//! - [`steps`]: one step's verdict ([`steps::verify_step`], `countersign_identity`'s verifier
//!   over the step's signed set).
//! - [`decide`]: the one TaskRun rule: the TaskRun's [`decide::Decision`] from its steps'
//!   verdicts, its merged results and the results its Task declares.
//! - [`Verdict`]: the one verdict enum (`verified`, `rejected`, `no_results`) every label comes
//!   from.
//! - [`reason`]: the verifier's reason codes as the event contract's, and back.
//! - [`attestation`]: a decision signed as an attestation event, and an event's attestation read
//!   back for an offline check.
//! - [`bundle_history`]: the trust bundle history (every bundle SPIRE published, by sequence
//!   number) and the point-in-time check of a chain at its signing time against it.
//! - [`revocation`]: which stored attestations a revoked CA reaches (by the CAs their signing
//!   context names), and the `attestation.revoked` event that says so.
//! - [`store`]: the public KV layout of attestations (attestations by TaskRun UID, the name
//!   index): keys, reading, and the attestor's create-if-absent write.
//! - [`export`]: a stored attestation in the formats other tools read (its Sigstore bundle, and
//!   SLSA VSAs for the TaskRun and the artifacts its results name).
//! - [`export_store`]: the public KV layout of those exports.

pub mod attestation;
pub mod bundle_history;
pub mod decide;
pub mod export;
pub mod export_store;
pub mod reason;
pub mod revocation;
pub mod snapshot;
pub mod steps;
pub mod store;

pub use attestation::AttestationEventExt;
pub use countersign_identity::intoto::Verdict;
pub use decide::{Decision, decide};
pub use reason::{EventReasonExt, VerifierReasonExt};
