//! The attestation in the formats other tools read, published by the attestor on
//! `{p}.export.stored.…` once they are stored (id `{taskrun uid}:export`): the Sigstore bundle
//! of the TaskRun's results attestation and one SLSA VSA per TaskRun and per artifact digest its
//! attested results name, each a Sigstore bundle in the `{P}_EXPORTS` KV bucket under the key
//! the event gives. The event carries the keys and what each VSA is about, not the bundles, so
//! it stays small however many artifacts a TaskRun names.
//!
//! The subject root is `export`, not `attestation`: consumers of `{p}.attestation.>` (the relay,
//! `countersign tail`) never see these events. They are kept in the attestations stream.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::TaskRunRef;
use super::lifecycle::ce_subject_of;
use crate::event_type::EventType;
use crate::payload::EventData;
use crate::subject::{SubjectError, Subjects};

/// The verdict of the attestation the export is made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExportedVerdict {
    /// The results were verified.
    Verified,
    /// The TaskRun had no results.
    NoResults,
    /// The results were rejected.
    Rejected,
}

/// A VSA's `verificationResult`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VsaResult {
    /// Only for a `verified` TaskRun.
    Passed,
    /// Every other verdict.
    Failed,
}

/// An artifact a VSA is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExportedArtifact {
    /// Where it is (for an image: the reference without digest).
    pub uri: String,
    /// Its digest, `alg:hex`.
    pub digest: String,
}

/// One stored VSA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExportedVsa {
    /// Its key in `{P}_EXPORTS` (a Sigstore bundle v0.3, JSON).
    pub key: String,
    /// The artifact it is about; absent for the TaskRun's own VSA.
    pub artifact: Option<ExportedArtifact>,
    /// The VSA's `resourceUri`.
    pub resource_uri: String,
    /// The VSA's `verificationResult`.
    pub verification_result: VsaResult,
}

/// `dev.countersign.export.stored.v1`: a TaskRun's attestation is stored in the formats other
/// tools read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "dev.countersign.export.stored.v1")]
pub struct ExportStored {
    /// The TaskRun.
    pub taskrun: TaskRunRef,
    /// The verdict of its attestation.
    pub verdict: ExportedVerdict,
    /// The key in `{P}_EXPORTS` of the results attestation as a Sigstore bundle v0.3.
    pub bundle_key: String,
    /// The VSAs: the TaskRun's first, then one per artifact.
    pub vsas: Vec<ExportedVsa>,
    /// When the attestation was decided (also every VSA's `timeVerified`).
    pub attested_at: DateTime<Utc>,
}

impl EventData for ExportStored {
    const TYPE: EventType = EventType::ExportStored;

    fn event_id(&self) -> String {
        format!("{}:export", self.taskrun.uid)
    }

    fn ce_subject(&self) -> String {
        ce_subject_of(&self.taskrun)
    }

    fn nats_subject(&self, subjects: &Subjects) -> Result<String, SubjectError> {
        subjects.for_taskrun(Self::TYPE, &self.taskrun)
    }
}
