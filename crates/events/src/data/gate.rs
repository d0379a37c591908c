//! Admission decisions, published by the gate on `{p}.gate.<decision>.{cluster}.{namespace}.{name}`:
//! one event per object the gate checked (a TaskRun a PipelineRun creates, a Pod in a namespace
//! that asks for the image rule), id `{admission request uid}:gate`. Objects the gate does not
//! check (mode `off`, nothing read from an upstream) publish nothing. They are an audit trail:
//! the gate publishes them after it has answered, and drops them (counted) when the bus is slow.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::event_type::EventType;
use crate::payload::EventData;
use crate::subject::{SubjectError, Subjects};

/// The kind of object admitted or denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AdmittedKind {
    /// A Tekton TaskRun (`tekton.dev/v1`).
    TaskRun,
    /// A Pod (its images).
    Pod,
}

/// The namespace's gate mode when the decision was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GateModeSnapshot {
    /// Denials deny.
    Enforce,
    /// Denials are admission warnings.
    Warn,
}

/// One reason the object failed the gate's rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GateDenial {
    /// The gate's deny code (`upstream_rejected`, `value_differs`, `verdict_missing`,
    /// `image_not_verified`, ...).
    pub code: String,
    /// The message the API server showed (names the upstream TaskRun, the result and the reason).
    pub message: String,
    /// The upstream TaskRun (`{namespace}/{name}`), when the denial is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_taskrun: Option<String>,
    /// The upstream result read, when the denial is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
}

/// Defines one decision type: the same fields, its own CloudEvent type and subject.
macro_rules! gate_decision {
    ($(#[$meta:meta])* $name:ident, $title:literal, $event_type:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        #[schemars(title = $title)]
        pub struct $name {
            /// The cluster's name (the gate's `cluster.name`).
            pub cluster: String,
            /// What was admitted or denied.
            pub kind: AdmittedKind,
            /// Its namespace.
            pub namespace: String,
            /// Its name (the admission request's UID when it had none yet: `generateName`).
            pub name: String,
            /// The AdmissionReview request's UID.
            pub request_uid: String,
            /// The namespace's mode.
            pub mode: GateModeSnapshot,
            /// Why it failed the rule (empty when allowed).
            #[serde(default)]
            pub denials: Vec<GateDenial>,
            /// When the gate answered.
            pub decided_at: DateTime<Utc>,
        }

        impl EventData for $name {
            const TYPE: EventType = $event_type;

            fn event_id(&self) -> String {
                format!("{}:gate", self.request_uid)
            }

            fn ce_subject(&self) -> String {
                format!("{}/{}", self.namespace, self.name)
            }

            fn nats_subject(&self, subjects: &Subjects) -> Result<String, SubjectError> {
                subjects.for_gate_decision(Self::TYPE, &self.cluster, &self.namespace, &self.name)
            }
        }
    };
}

gate_decision!(
    /// `dev.countersign.gate.allowed.v1`: the gate checked the object and admitted it.
    GateAllowed,
    "dev.countersign.gate.allowed.v1",
    EventType::GateAllowed
);

gate_decision!(
    /// `dev.countersign.gate.denied.v1`: the gate denied the object (mode `enforce`).
    GateDenied,
    "dev.countersign.gate.denied.v1",
    EventType::GateDenied
);

gate_decision!(
    /// `dev.countersign.gate.warned.v1`: the object failed the rule and was admitted with
    /// warnings (mode `warn`).
    GateWarned,
    "dev.countersign.gate.warned.v1",
    EventType::GateWarned
);
