//! What ties a data struct to its event type, id and subject ([`EventData`]), and what lets one
//! consumer take several types ([`EventPayload`], implemented by every data struct and by the
//! family enums [`LifecycleEvent`], [`RegistrationEvent`], [`AttestationEvent`] and [`AnyEvent`]).
//!
//! Decoding is by the CloudEvent `type`: a payload says which types it accepts, and is built from
//! the JSON data of one of them.

use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::data::{
    AttestationRejected, AttestationRevoked, AttestationVerified, EntryRegistered, EntryReleased,
    ExportStored, GateAllowed, GateDenied, GateWarned, StepCompleted, TaskRunCreated,
    TaskRunDeleted, TaskRunFinished, TaskRunScheduled, TrustBundleRotated,
};
use crate::event_type::EventType;
use crate::subject::{SubjectError, Subjects};

/// The data of one event type.
pub trait EventData: Serialize + DeserializeOwned + JsonSchema + Send + Sync + 'static {
    /// The CloudEvent `type` of this data.
    const TYPE: EventType;

    /// The deterministic CloudEvent id (also the `Nats-Msg-Id`), e.g. `{taskrun uid}:created`.
    fn event_id(&self) -> String;

    /// The CloudEvent `subject`: `{namespace}/{name}` of the TaskRun, or `_node/{node}`.
    fn ce_subject(&self) -> String;

    /// The NATS subject the event is published on.
    fn nats_subject(&self, subjects: &Subjects) -> Result<String, SubjectError>;
}

/// A value that can be the data of an [`Event`](crate::Event): one data struct, or an enum over
/// several, decoded by the CloudEvent `type`.
pub trait EventPayload: Sized + Send + Sync + 'static {
    /// Whether data of `event_type` decodes into this payload.
    fn accepts(event_type: EventType) -> bool;

    /// The type of this value.
    fn event_type(&self) -> EventType;

    /// See [`EventData::event_id`].
    fn event_id(&self) -> String;

    /// See [`EventData::ce_subject`].
    fn ce_subject(&self) -> String;

    /// See [`EventData::nats_subject`].
    fn nats_subject(&self, subjects: &Subjects) -> Result<String, SubjectError>;

    /// The data as JSON bytes.
    fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut json = Vec::new();
        self.write_json(&mut json)?;
        Ok(json)
    }

    /// Appends the data as JSON to `out`.
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error>;

    /// Decodes the JSON data of an event of `event_type` (which [`accepts`](Self::accepts) accepted).
    fn from_json(event_type: EventType, data: &[u8]) -> Result<Self, serde_json::Error>;

    /// Decodes already-parsed JSON data (structured mode).
    fn from_value(
        event_type: EventType,
        data: serde_json::Value,
    ) -> Result<Self, serde_json::Error>;
}

impl<T: EventData> EventPayload for T {
    fn accepts(event_type: EventType) -> bool {
        event_type == T::TYPE
    }

    fn event_type(&self) -> EventType {
        T::TYPE
    }

    fn event_id(&self) -> String {
        EventData::event_id(self)
    }

    fn ce_subject(&self) -> String {
        EventData::ce_subject(self)
    }

    fn nats_subject(&self, subjects: &Subjects) -> Result<String, SubjectError> {
        EventData::nats_subject(self, subjects)
    }

    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        serde_json::to_writer(out, self)
    }

    fn from_json(_event_type: EventType, data: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(data)
    }

    fn from_value(
        _event_type: EventType,
        data: serde_json::Value,
    ) -> Result<Self, serde_json::Error> {
        serde_json::from_value(data)
    }
}

/// Defines a family enum over data structs and implements [`EventPayload`] for it.
macro_rules! event_family {
    ($(#[$meta:meta])* $name:ident { $($(#[$variant_meta:meta])* $variant:ident($data:ty)),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub enum $name {
            $($(#[$variant_meta])* $variant($data),)+
        }

        impl EventPayload for $name {
            fn accepts(event_type: EventType) -> bool {
                $(event_type == <$data as EventData>::TYPE)||+
            }

            fn event_type(&self) -> EventType {
                match self {
                    $($name::$variant(_) => <$data as EventData>::TYPE,)+
                }
            }

            fn event_id(&self) -> String {
                match self {
                    $($name::$variant(data) => EventData::event_id(data),)+
                }
            }

            fn ce_subject(&self) -> String {
                match self {
                    $($name::$variant(data) => EventData::ce_subject(data),)+
                }
            }

            fn nats_subject(&self, subjects: &Subjects) -> Result<String, SubjectError> {
                match self {
                    $($name::$variant(data) => EventData::nats_subject(data, subjects),)+
                }
            }

            fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
                match self {
                    $($name::$variant(data) => serde_json::to_writer(out, data),)+
                }
            }

            fn from_json(event_type: EventType, data: &[u8]) -> Result<Self, serde_json::Error> {
                $(if event_type == <$data as EventData>::TYPE {
                    return serde_json::from_slice(data).map($name::$variant);
                })+
                Err(<serde_json::Error as serde::de::Error>::custom(format_args!(
                    "{event_type} is not a {}", stringify!($name)
                )))
            }

            fn from_value(event_type: EventType, data: serde_json::Value) -> Result<Self, serde_json::Error> {
                $(if event_type == <$data as EventData>::TYPE {
                    return serde_json::from_value(data).map($name::$variant);
                })+
                Err(<serde_json::Error as serde::de::Error>::custom(format_args!(
                    "{event_type} is not a {}", stringify!($name)
                )))
            }
        }

        $(impl From<$data> for $name {
            fn from(data: $data) -> $name {
                $name::$variant(data)
            }
        })+
    };
}

event_family! {
    /// Any TaskRun lifecycle event: what the registrar and the attestor consume.
    LifecycleEvent {
        /// `dev.countersign.taskrun.created.v1`
        Created(TaskRunCreated),
        /// `dev.countersign.taskrun.scheduled.v1`
        Scheduled(TaskRunScheduled),
        /// `dev.countersign.taskrun.step-completed.v1`
        StepCompleted(StepCompleted),
        /// `dev.countersign.taskrun.finished.v1`
        Finished(TaskRunFinished),
        /// `dev.countersign.taskrun.deleted.v1`
        Deleted(TaskRunDeleted),
    }
}

event_family! {
    /// Any registration audit event.
    RegistrationEvent {
        /// `dev.countersign.registration.registered.v1`
        Registered(EntryRegistered),
        /// `dev.countersign.registration.released.v1`
        Released(EntryReleased),
    }
}

event_family! {
    /// Any attestation event: what the relay and the CLI consume.
    AttestationEvent {
        /// `dev.countersign.attestation.verified.v1`
        Verified(AttestationVerified),
        /// `dev.countersign.attestation.rejected.v1`
        Rejected(AttestationRejected),
        /// `dev.countersign.attestation.revoked.v1`
        Revoked(AttestationRevoked),
    }
}

event_family! {
    /// Any Countersign event (for tools that tail the whole bus).
    AnyEvent {
        /// `dev.countersign.taskrun.created.v1`
        TaskRunCreated(TaskRunCreated),
        /// `dev.countersign.taskrun.scheduled.v1`
        TaskRunScheduled(TaskRunScheduled),
        /// `dev.countersign.taskrun.step-completed.v1`
        StepCompleted(StepCompleted),
        /// `dev.countersign.taskrun.finished.v1`
        TaskRunFinished(TaskRunFinished),
        /// `dev.countersign.taskrun.deleted.v1`
        TaskRunDeleted(TaskRunDeleted),
        /// `dev.countersign.registration.registered.v1`
        EntryRegistered(EntryRegistered),
        /// `dev.countersign.registration.released.v1`
        EntryReleased(EntryReleased),
        /// `dev.countersign.attestation.verified.v1`
        AttestationVerified(AttestationVerified),
        /// `dev.countersign.attestation.rejected.v1`
        AttestationRejected(AttestationRejected),
        /// `dev.countersign.export.stored.v1`
        ExportStored(ExportStored),
        /// `dev.countersign.trust.bundle-rotated.v1`
        TrustBundleRotated(TrustBundleRotated),
        /// `dev.countersign.gate.allowed.v1`
        GateAllowed(GateAllowed),
        /// `dev.countersign.gate.denied.v1`
        GateDenied(GateDenied),
        /// `dev.countersign.gate.warned.v1`
        GateWarned(GateWarned),
        /// `dev.countersign.attestation.revoked.v1`
        AttestationRevoked(AttestationRevoked),
    }
}

event_family! {
    /// Any gate decision.
    GateDecisionEvent {
        /// `dev.countersign.gate.allowed.v1`
        Allowed(GateAllowed),
        /// `dev.countersign.gate.denied.v1`
        Denied(GateDenied),
        /// `dev.countersign.gate.warned.v1`
        Warned(GateWarned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event_type::Family;

    #[test]
    fn families_accept_exactly_their_types() {
        for event_type in EventType::ALL {
            assert_eq!(
                LifecycleEvent::accepts(event_type),
                event_type.family() == Family::TaskRun
            );
            assert_eq!(
                RegistrationEvent::accepts(event_type),
                event_type.family() == Family::Registration
            );
            assert_eq!(
                AttestationEvent::accepts(event_type),
                event_type.family() == Family::Attestation
            );
            assert!(AnyEvent::accepts(event_type));
            assert_eq!(
                TaskRunCreated::accepts(event_type),
                event_type == EventType::TaskRunCreated
            );
        }
    }
}
