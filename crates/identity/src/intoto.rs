//! in-toto Statement v1 and our predicate, `https://countersign.dev/attestation/taskrun-results/v1`.
//!
//! A Statement is `{"_type": "https://in-toto.io/Statement/v1", "subject": [{name, digest:
//! {sha256}}], "predicateType": ..., "predicate": {...}}`. In a TaskRun-results attestation each
//! verified result is a subject named by the result name, with the SHA-256 of its canonical value
//! (the bytes the step signed). in-toto requires a non-empty subject list, so a verdict with no
//! verified results (rejected, or a TaskRun without results) has a single subject naming the
//! TaskRun, `taskrun/<namespace>/<name>`, with the SHA-256 of its UID.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::crypto::Sha256Digest;
use crate::tekton::{CheckOutcome, ReasonCode, VerifiedValue};

/// `_type` of an in-toto Statement v1.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";

/// Our predicate type.
pub const TASKRUN_RESULTS_PREDICATE_TYPE: &str =
    "https://countersign.dev/attestation/taskrun-results/v1";

/// A subject: a name and its digests (we always write `sha256`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// The subject's name.
    pub name: String,
    /// Algorithm → lower-case hex digest.
    pub digest: BTreeMap<String, String>,
}

impl Subject {
    /// A subject with a SHA-256 digest.
    pub fn sha256(name: impl Into<String>, digest: Sha256Digest) -> Self {
        Self {
            name: name.into(),
            digest: BTreeMap::from([("sha256".to_owned(), digest.to_hex())]),
        }
    }
}

/// An in-toto Statement v1 with predicate `P`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statement<P> {
    #[serde(rename = "_type")]
    statement_type: String,
    subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    predicate_type: String,
    predicate: P,
}

/// A Statement must name at least one subject.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
#[error("an in-toto statement needs at least one subject")]
pub struct NoSubjects;

impl<P> Statement<P> {
    /// A Statement v1. Refuses an empty subject list.
    pub fn new(
        subject: Vec<Subject>,
        predicate_type: impl Into<String>,
        predicate: P,
    ) -> Result<Self, NoSubjects> {
        if subject.is_empty() {
            return Err(NoSubjects);
        }
        Ok(Self {
            statement_type: STATEMENT_TYPE.to_owned(),
            subject,
            predicate_type: predicate_type.into(),
            predicate,
        })
    }

    /// `_type`.
    pub fn statement_type(&self) -> &str {
        &self.statement_type
    }

    /// The subjects.
    pub fn subjects(&self) -> &[Subject] {
        &self.subject
    }

    /// `predicateType`.
    pub fn predicate_type(&self) -> &str {
        &self.predicate_type
    }

    /// The predicate.
    pub fn predicate(&self) -> &P {
        &self.predicate
    }
}

/// The verdict an attestation records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every check passed.
    Verified,
    /// A check failed; `reasonCode` says which.
    Rejected,
    /// The TaskRun declared no results and carried no signing material.
    NoResults,
}

impl Verdict {
    /// Every verdict.
    pub const ALL: [Verdict; 3] = [Verdict::Verified, Verdict::Rejected, Verdict::NoResults];

    /// The wire name (`verified`, `rejected`, `no_results`): the predicate's, and every label
    /// (logs, metrics, the command's output and filters) written from a verdict.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Verified => "verified",
            Verdict::Rejected => "rejected",
            Verdict::NoResults => "no_results",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Which TaskRun.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskRunRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
}

/// When things happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PredicateTimes {
    /// TaskRun `creationTimestamp`.
    pub created: DateTime<Utc>,
    /// TaskRun `completionTime` (absent for a per-step verdict before the TaskRun finished).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<DateTime<Utc>>,
    /// When the verifier decided.
    pub verified: DateTime<Utc>,
}

/// The predicate of a TaskRun-results attestation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskRunResultsPredicate {
    /// The TaskRun.
    pub taskrun: TaskRunRef,
    /// The cluster it ran in (the attestor's configured name).
    pub cluster: String,
    /// The SPIFFE ID that signed the results, when the SVID could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// SHA-256 (hex) of the signing SVID leaf's DER, when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub svid_fingerprint: Option<String>,
    /// SHA-256 (hex) of the trust bundle set used ([`crate::svid::TrustBundleSet::digest`]).
    pub trust_bundle_digest: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Why, when rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_code: Option<ReasonCode>,
    /// The checks and their outcomes, in order.
    pub checks: Vec<CheckOutcome>,
    /// Times.
    pub times: PredicateTimes,
    /// What an attestation needs to be verified long after its signer's SVID and CA are gone:
    /// absent from attestations made before it existed (they still verify).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<SigningContext>,
}

/// The signing context of an attestation: which trust bundles it was made under, and when, so
/// a verifier can pick the bundle recorded for that time from the trust bundle history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SigningContext {
    /// SHA-256 (hex) of the trust bundle set that verified the results (as
    /// `trustBundleDigest`).
    pub results_bundle_digest: String,
    /// SHA-256 (hex) of the bundle of the attestor's own trust domain, the one that verifies
    /// its SVID: its CAs' DER sorted bytewise, de-duplicated and concatenated (a bundle
    /// history's record digest).
    pub signer_bundle_digest: String,
    /// When the attestation was signed, by the attestor's clock (as `times.verified`).
    pub signed_at: DateTime<Utc>,
    /// SHA-256 (hex) of the CA that issued the results' SVID, when results were verified: what
    /// a revocation of that CA is matched against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results_authority: Option<String>,
    /// SHA-256 (hex) of the CA that issued the attestor's own SVID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer_authority: Option<String>,
}

/// The subjects of a TaskRun-results statement: one per verified result (name, SHA-256 of the
/// canonical value), or the single `taskrun/<ns>/<name>` subject (SHA-256 of the UID) when
/// there are none.
pub fn taskrun_subjects(
    taskrun: &TaskRunRef,
    results: &BTreeMap<String, VerifiedValue>,
) -> Vec<Subject> {
    if results.is_empty() {
        return vec![Subject::sha256(
            format!("taskrun/{}/{}", taskrun.namespace, taskrun.name),
            Sha256Digest::of(taskrun.uid.as_bytes()),
        )];
    }
    results
        .iter()
        .map(|(name, value)| Subject::sha256(name, value.digest()))
        .collect()
}

/// The Statement for a TaskRun verdict: subjects from [`taskrun_subjects`], our predicate type.
pub fn taskrun_statement(
    predicate: TaskRunResultsPredicate,
    results: &BTreeMap<String, VerifiedValue>,
) -> Statement<TaskRunResultsPredicate> {
    let subjects = taskrun_subjects(&predicate.taskrun, results);
    Statement {
        statement_type: STATEMENT_TYPE.to_owned(),
        subject: subjects,
        predicate_type: TASKRUN_RESULTS_PREDICATE_TYPE.to_owned(),
        predicate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_verdict_label_is_its_wire_name() {
        for verdict in Verdict::ALL {
            assert_eq!(
                serde_json::to_value(verdict).unwrap(),
                serde_json::Value::String(verdict.as_str().to_owned())
            );
        }
    }

    #[test]
    fn empty_subjects_are_refused() {
        assert_eq!(
            Statement::new(vec![], "x", serde_json::Value::Null).unwrap_err(),
            NoSubjects
        );
    }

    #[test]
    fn no_results_gives_the_taskrun_subject() {
        let taskrun = TaskRunRef {
            namespace: "default".into(),
            name: "run".into(),
            uid: "uid-1".into(),
        };
        let subjects = taskrun_subjects(&taskrun, &BTreeMap::new());
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0].name, "taskrun/default/run");
        assert_eq!(
            subjects[0].digest["sha256"],
            Sha256Digest::of(b"uid-1").to_hex()
        );
    }

    #[test]
    fn statement_json_shape() {
        let statement = Statement::new(
            vec![Subject::sha256("commit", Sha256Digest::of(b"abc"))],
            TASKRUN_RESULTS_PREDICATE_TYPE,
            serde_json::json!({}),
        )
        .unwrap();
        let json = serde_json::to_value(&statement).unwrap();
        assert_eq!(json["_type"], STATEMENT_TYPE);
        assert_eq!(json["predicateType"], TASKRUN_RESULTS_PREDICATE_TYPE);
        assert_eq!(
            json["subject"][0]["digest"]["sha256"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
