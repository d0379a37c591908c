//! The data of every event type: one Rust struct per CloudEvent `type`, serialized as JSON with
//! camelCase field names, unknown fields rejected, and a JSON Schema generated from the struct.
//!
//! - [`common`]: the types events share (TaskRun and pod references, steps, results).
//! - [`lifecycle`]: TaskRun lifecycle events, published by the watcher.
//! - [`registration`]: SPIRE registration audit events, published by the registrar.
//! - [`attestation`]: verification outcomes, published by the attestor.
//! - [`export`]: the attestation in the formats other tools read (Sigstore bundle, SLSA VSAs),
//!   announced by the attestor once stored.
//! - [`trust`]: the trust bundle history, published by the registrar.
//! - [`gate`]: admission decisions, published by the gate.

pub mod attestation;
pub mod common;
pub mod export;
pub mod gate;
pub mod lifecycle;
pub mod registration;
pub mod trust;

pub use attestation::{
    AttestationRejected, AttestationRevoked, AttestationVerified, DsseEnvelope, DsseSignature,
    ReasonCode, ResultSubject, RevocationKind, SignedAttestation, SigningChain, Verdict,
};
pub use common::{
    Outcome, PodRef, ResultType, StepRecord, TaskRunRef, TaskRunResult, TerminationEntry,
};
pub use export::{ExportStored, ExportedArtifact, ExportedVerdict, ExportedVsa, VsaResult};
pub use gate::{AdmittedKind, GateAllowed, GateDenial, GateDenied, GateModeSnapshot, GateWarned};
pub use lifecycle::{
    Oversized, StepCompleted, TaskRunCreated, TaskRunDeleted, TaskRunFinished, TaskRunScheduled,
};
pub use registration::{
    EntryKind, EntryRegistered, EntryReleased, RegistrationEntry, ReleaseReason,
};
pub use trust::{BundleAuthority, TrustBundleRotated};
