//! The CloudEvent `type` of every event on the bus, and the families they form.
//!
//! A type name is `dev.countersign.<family>.<transition>.v<major>`. The major version is part of
//! the name: a breaking change to an event's data is a new type, published next to the old one
//! until every subscriber has moved.

use std::fmt;
use std::str::FromStr;

/// Where the JSON Schemas of the event data are published: `{base}{type}.json`. The same
/// URI is each schema's `$id` and each event's `dataschema`.
pub const SCHEMA_BASE_URI: &str =
    "https://raw.githubusercontent.com/countersign-dev/countersign/main/schemas/";

/// Every event type Countersign publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    /// `dev.countersign.taskrun.created.v1`: a TaskRun was seen for the first time.
    TaskRunCreated,
    /// `dev.countersign.taskrun.scheduled.v1`: the TaskRun's pod has a UID and a node.
    TaskRunScheduled,
    /// `dev.countersign.taskrun.step-completed.v1`: one step's container terminated.
    StepCompleted,
    /// `dev.countersign.taskrun.finished.v1`: the TaskRun's `Succeeded` condition is final.
    TaskRunFinished,
    /// `dev.countersign.taskrun.deleted.v1`: the TaskRun object is gone.
    TaskRunDeleted,
    /// `dev.countersign.registration.registered.v1`: a SPIRE entry was created.
    EntryRegistered,
    /// `dev.countersign.registration.released.v1`: a SPIRE entry was deleted.
    EntryReleased,
    /// `dev.countersign.attestation.verified.v1`: a TaskRun's results were verified (or it has none).
    AttestationVerified,
    /// `dev.countersign.attestation.rejected.v1`: a TaskRun's results failed verification.
    AttestationRejected,
    /// `dev.countersign.export.stored.v1`: a TaskRun's attestation is stored as a Sigstore
    /// bundle, with its SLSA VSAs.
    ExportStored,
    /// `dev.countersign.trust.bundle-rotated.v1`: the SPIRE server published a trust bundle not
    /// seen before (recorded in the bundle history).
    TrustBundleRotated,
    /// `dev.countersign.gate.allowed.v1`: the gate admitted an object it checked.
    GateAllowed,
    /// `dev.countersign.gate.denied.v1`: the gate denied an object (`enforce`).
    GateDenied,
    /// `dev.countersign.gate.warned.v1`: the gate admitted an object with warnings (`warn`).
    GateWarned,
    /// `dev.countersign.attestation.revoked.v1`: a stored attestation's signing chain was issued
    /// under a CA that SPIRE revoked since; it no longer verifies.
    AttestationRevoked,
}

/// The families of event types; each has its own stream and subject root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// TaskRun lifecycle transitions, published by the watcher.
    TaskRun,
    /// SPIRE registration audit events, published by the registrar.
    Registration,
    /// Verification outcomes, published by the attestor.
    Attestation,
    /// The attestations in other tools' formats, published by the attestor (kept in the
    /// attestations stream, under their own subject root).
    Export,
    /// Trust bundle history, published by the registrar.
    Trust,
    /// `gate`: admission decisions, published by the gate.
    Gate,
}

impl EventType {
    /// Every type, in a stable order.
    pub const ALL: [EventType; 15] = [
        EventType::TaskRunCreated,
        EventType::TaskRunScheduled,
        EventType::StepCompleted,
        EventType::TaskRunFinished,
        EventType::TaskRunDeleted,
        EventType::EntryRegistered,
        EventType::EntryReleased,
        EventType::AttestationVerified,
        EventType::AttestationRejected,
        EventType::ExportStored,
        EventType::TrustBundleRotated,
        EventType::GateAllowed,
        EventType::GateDenied,
        EventType::GateWarned,
        EventType::AttestationRevoked,
    ];

    /// The type's position in [`EventType::ALL`].
    pub const fn index(self) -> usize {
        // The variants are declared in the order of `ALL` (checked by a test).
        self as usize
    }

    /// The CloudEvent `type` attribute.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::TaskRunCreated => "dev.countersign.taskrun.created.v1",
            EventType::TaskRunScheduled => "dev.countersign.taskrun.scheduled.v1",
            EventType::StepCompleted => "dev.countersign.taskrun.step-completed.v1",
            EventType::TaskRunFinished => "dev.countersign.taskrun.finished.v1",
            EventType::TaskRunDeleted => "dev.countersign.taskrun.deleted.v1",
            EventType::EntryRegistered => "dev.countersign.registration.registered.v1",
            EventType::EntryReleased => "dev.countersign.registration.released.v1",
            EventType::AttestationVerified => "dev.countersign.attestation.verified.v1",
            EventType::AttestationRejected => "dev.countersign.attestation.rejected.v1",
            EventType::ExportStored => "dev.countersign.export.stored.v1",
            EventType::TrustBundleRotated => "dev.countersign.trust.bundle-rotated.v1",
            EventType::GateAllowed => "dev.countersign.gate.allowed.v1",
            EventType::GateDenied => "dev.countersign.gate.denied.v1",
            EventType::GateWarned => "dev.countersign.gate.warned.v1",
            EventType::AttestationRevoked => "dev.countersign.attestation.revoked.v1",
        }
    }

    /// The family the type belongs to.
    pub const fn family(self) -> Family {
        match self {
            EventType::TaskRunCreated
            | EventType::TaskRunScheduled
            | EventType::StepCompleted
            | EventType::TaskRunFinished
            | EventType::TaskRunDeleted => Family::TaskRun,
            EventType::EntryRegistered | EventType::EntryReleased => Family::Registration,
            EventType::AttestationVerified
            | EventType::AttestationRejected
            | EventType::AttestationRevoked => Family::Attestation,
            EventType::ExportStored => Family::Export,
            EventType::TrustBundleRotated => Family::Trust,
            EventType::GateAllowed | EventType::GateDenied | EventType::GateWarned => Family::Gate,
        }
    }

    /// The transition token used in subjects (`created`, `step-completed`, `verified`...).
    pub const fn transition(self) -> &'static str {
        match self {
            EventType::TaskRunCreated => "created",
            EventType::TaskRunScheduled => "scheduled",
            EventType::StepCompleted => "step-completed",
            EventType::TaskRunFinished => "finished",
            EventType::TaskRunDeleted => "deleted",
            EventType::EntryRegistered => "registered",
            EventType::EntryReleased => "released",
            EventType::AttestationVerified => "verified",
            EventType::AttestationRejected => "rejected",
            EventType::ExportStored => "stored",
            EventType::TrustBundleRotated => "bundle-rotated",
            EventType::GateAllowed => "allowed",
            EventType::GateDenied => "denied",
            EventType::GateWarned => "warned",
            EventType::AttestationRevoked => "revoked",
        }
    }

    /// The type of `family` whose subject token is `transition`.
    pub fn from_transition(family: Family, transition: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|event_type| {
            event_type.family() == family && event_type.transition() == transition
        })
    }

    /// The file name of the type's JSON Schema under `schemas/`.
    pub fn schema_file_name(self) -> String {
        format!("{}.json", self.as_str())
    }

    /// The URI naming the JSON Schema of the type's data (the CloudEvent `dataschema`).
    pub fn dataschema(self) -> String {
        format!("{SCHEMA_BASE_URI}{}", self.schema_file_name())
    }
}

impl Family {
    /// Every family, in a stable order.
    pub const ALL: [Family; 6] = [
        Family::TaskRun,
        Family::Registration,
        Family::Attestation,
        Family::Export,
        Family::Trust,
        Family::Gate,
    ];

    /// The family's subject token (`taskrun`, `registration`, `attestation`, `trust`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Family::TaskRun => "taskrun",
            Family::Registration => "registration",
            Family::Attestation => "attestation",
            Family::Export => "export",
            Family::Trust => "trust",
            Family::Gate => "gate",
        }
    }

    /// The types of the family.
    pub fn event_types(self) -> impl Iterator<Item = EventType> {
        EventType::ALL
            .into_iter()
            .filter(move |event_type| event_type.family() == self)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A CloudEvent `type` that is not one of Countersign's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event type {0:?}")]
pub struct UnknownEventType(pub String);

impl FromStr for EventType {
    type Err = UnknownEventType;

    fn from_str(text: &str) -> Result<EventType, UnknownEventType> {
        EventType::ALL
            .into_iter()
            .find(|event_type| event_type.as_str() == text)
            .ok_or_else(|| UnknownEventType(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_distinct() {
        let mut seen = std::collections::BTreeSet::new();
        for (index, event_type) in EventType::ALL.into_iter().enumerate() {
            assert_eq!(event_type.index(), index);
            assert_eq!(event_type.as_str().parse::<EventType>(), Ok(event_type));
            assert!(seen.insert(event_type.as_str()));
            assert_eq!(
                EventType::from_transition(event_type.family(), event_type.transition()),
                Some(event_type)
            );
            let expected = format!(
                "dev.countersign.{}.{}.v1",
                event_type.family().as_str(),
                event_type.transition()
            );
            assert_eq!(event_type.as_str(), expected);
        }
    }

    #[test]
    fn unknown_names_are_rejected() {
        assert!(
            "dev.tekton.event.taskrun.successful.v1"
                .parse::<EventType>()
                .is_err()
        );
        assert!(
            "dev.countersign.taskrun.created.v2"
                .parse::<EventType>()
                .is_err()
        );
        assert_eq!(
            EventType::from_transition(Family::Attestation, "created"),
            None
        );
    }
}
