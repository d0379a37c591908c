//! One step's verdict: its signed result set checked by `countersign_identity`'s verifier with
//! the trust bundle current when the step completed, recorded so that the TaskRun's verdict can
//! be decided later from every step ([`crate::decide`]).
//!
//! A [`StepVerdict`] is what the attestor stores in its step-verdicts bucket (key: TaskRun UID,
//! pod UID, step name). It is attestor-internal JSON, not part of the event contract.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use countersign_error_report::error_chain;
use countersign_identity::crypto::Sha256Digest;
use countersign_identity::intoto::Verdict;
use countersign_identity::svid::{SvidLeaf, TrustBundleSet, pem_to_ders};

use crate::bundle_history::issuing_authority;
use countersign_identity::tekton::{
    Check, CheckOutcome, KEY_SVID, ReasonCode, ResultType, ResultsVerifier, TerminationEntry,
    TerminationMessage, VerifiedValue, canonical, checks_for_failure,
};
use serde::{Deserialize, Serialize};

/// The type-1 entries (TaskRun results and signing material) of a step's termination message,
/// key → raw value, the last entry winning for a repeated key (as Tekton de-duplicates).
pub fn task_run_entries(
    entries: &[countersign_events::data::TerminationEntry],
) -> BTreeMap<String, String> {
    TerminationMessage::from_entries(
        entries
            .iter()
            .map(|entry| TerminationEntry {
                key: entry.key.clone(),
                value: entry.value.clone(),
                result_type: ResultType::from_i64(i64::from(entry.r#type)),
            })
            .collect(),
    )
    .task_run_results()
}

/// SHA-256 (hex) of a step's type-1 entries: tells whether a recorded verdict was made over the
/// same entries a later event carries.
pub fn entries_digest(entries: &BTreeMap<String, String>) -> String {
    // A BTreeMap of strings always serializes, in key order.
    let json = serde_json::to_vec(entries).unwrap_or_default();
    Sha256Digest::of(&json).to_hex()
}

/// A step's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepVerdict {
    /// The step's name.
    pub step: String,
    /// [`entries_digest`] of the entries that were checked.
    pub entries_digest: String,
    /// SHA-256 (hex) of the trust bundle set the check used.
    pub trust_bundle_digest: String,
    /// When it was decided.
    pub decided_at: DateTime<Utc>,
    /// The outcome.
    pub outcome: StepOutcome,
}

/// How a step's check ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum StepOutcome {
    /// The step wrote no TaskRun results and no signing material.
    NoResults,
    /// Every check passed.
    Verified(VerifiedStep),
    /// A check failed.
    Rejected(RejectedStep),
}

/// A step whose signed set verified.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifiedStep {
    /// The signer's SPIFFE ID.
    pub spiffe_id: String,
    /// SHA-256 (hex) of the signing SVID leaf.
    pub svid_fingerprint: String,
    /// When the results were written (the step's finish time).
    pub signed_at: DateTime<Utc>,
    /// SHA-256 (hex) of the CA that issued the signing SVID (absent in verdicts recorded before
    /// it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuing_authority: Option<String>,
    /// The verified results by name.
    pub results: BTreeMap<String, VerifiedValue>,
    /// The checks, in order.
    pub checks: Vec<CheckOutcome>,
}

/// A step whose signed set was rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RejectedStep {
    /// Why.
    pub reason: ReasonCode,
    /// The check that failed.
    pub check: Check,
    /// What failed, for people.
    pub message: String,
    /// The SPIFFE ID of the `SVID` entry, when it parses.
    pub spiffe_id: Option<String>,
    /// SHA-256 (hex) of the `SVID` leaf, when it parses.
    pub svid_fingerprint: Option<String>,
    /// The checks, in order (earlier passed, this one failed, later not run).
    pub checks: Vec<CheckOutcome>,
}

impl StepVerdict {
    /// The reason, when rejected.
    pub fn reason(&self) -> Option<ReasonCode> {
        match &self.outcome {
            StepOutcome::Rejected(rejected) => Some(rejected.reason),
            StepOutcome::NoResults | StepOutcome::Verified(_) => None,
        }
    }

    /// The step's verdict.
    pub fn verdict(&self) -> Verdict {
        match self.outcome {
            StepOutcome::NoResults => Verdict::NoResults,
            StepOutcome::Verified(_) => Verdict::Verified,
            StepOutcome::Rejected(_) => Verdict::Rejected,
        }
    }
}

/// What one step wrote.
#[derive(Debug, Clone, Copy)]
pub struct StepInput<'a> {
    /// The step's name.
    pub name: &'a str,
    /// Its type-1 entries ([`task_run_entries`]).
    pub entries: &'a BTreeMap<String, String>,
    /// When its container terminated (the signing time).
    pub finished_at: Option<DateTime<Utc>>,
}

/// Checks one step's signed set with `verifier` (whose policy holds the TaskRun's SPIFFE ID and
/// creation time, and whose bundles are the current trust bundles).
pub fn verify_step(
    verifier: &ResultsVerifier<'_>,
    step: StepInput<'_>,
    decided_at: DateTime<Utc>,
) -> StepVerdict {
    let outcome = if step.entries.is_empty() {
        StepOutcome::NoResults
    } else {
        match step.finished_at {
            None => StepOutcome::Rejected(rejected_without_verifier(
                step.entries,
                ReasonCode::MalformedResults,
                Check::ValidAtSigning,
                "the step has no finish time, so the signing time is unknown".to_owned(),
                verifier.policy().freshness(),
            )),
            Some(finished_at) => match verifier.verify_step(step.entries, finished_at) {
                Ok(verified) => StepOutcome::Verified(VerifiedStep {
                    spiffe_id: verified.spiffe_id().to_string(),
                    svid_fingerprint: verified.svid_fingerprint().to_hex(),
                    signed_at: verified.signed_at(),
                    issuing_authority: results_authority(
                        verifier.bundles(),
                        step.entries,
                        verified.signed_at(),
                    ),
                    results: verified.results().clone(),
                    checks: verified.checks().to_vec(),
                }),
                Err(error) => StepOutcome::Rejected(rejected_without_verifier(
                    step.entries,
                    error.reason(),
                    error.check(),
                    error_chain(&error),
                    verifier.policy().freshness(),
                )),
            },
        }
    };
    StepVerdict {
        step: step.name.to_owned(),
        entries_digest: entries_digest(step.entries),
        trust_bundle_digest: verifier.bundles().digest().to_hex(),
        decided_at,
        outcome,
    }
}

/// The CA of `bundles` that issued the step's SVID (its `SVID` entry: the leaf, then any
/// intermediates), at `signed_at`.
fn results_authority(
    bundles: &TrustBundleSet,
    entries: &BTreeMap<String, String>,
    signed_at: DateTime<Utc>,
) -> Option<String> {
    let mut certificates = pem_to_ders(&canonical(entries.get(KEY_SVID)?))
        .ok()?
        .into_iter();
    let leaf = SvidLeaf::from_der(&certificates.next()?).ok()?;
    let intermediates: Vec<Vec<u8>> = certificates.collect();
    issuing_authority(bundles, &leaf, &intermediates, signed_at)
}

fn rejected_without_verifier(
    entries: &BTreeMap<String, String>,
    reason: ReasonCode,
    check: Check,
    message: String,
    freshness: &countersign_identity::tekton::Freshness,
) -> RejectedStep {
    let leaf = entries
        .get(KEY_SVID)
        .and_then(|pem| SvidLeaf::from_pem(&canonical(pem)).ok());
    RejectedStep {
        reason,
        check,
        message,
        spiffe_id: leaf.as_ref().map(|leaf| leaf.spiffe_id().to_string()),
        svid_fingerprint: leaf.as_ref().map(|leaf| leaf.fingerprint().to_hex()),
        checks: checks_for_failure(check, freshness),
    }
}

#[cfg(test)]
mod tests {
    use countersign_identity::spiffe_id::SpiffeId;
    use countersign_identity::tekton::{Freshness, Outcome, ResultsPolicy};

    use super::*;

    fn event_entry(
        key: &str,
        value: &str,
        r#type: u8,
    ) -> countersign_events::data::TerminationEntry {
        countersign_events::data::TerminationEntry {
            key: key.into(),
            value: value.into(),
            r#type,
        }
    }

    #[test]
    fn only_type_one_entries_count_and_the_last_wins() {
        let entries = task_run_entries(&[
            event_entry("commit", "a", 1),
            event_entry("StartedAt", "2026-08-20T10:00:00Z", 3),
            event_entry("commit", "b", 1),
            event_entry("step-result", "x", 4),
        ]);
        assert_eq!(
            entries,
            BTreeMap::from([("commit".to_owned(), "b".to_owned())])
        );
        assert_ne!(entries_digest(&entries), entries_digest(&BTreeMap::new()));
    }

    #[test]
    fn a_step_without_entries_has_no_results_and_one_without_svid_is_rejected() {
        let bundles = TrustBundleSet::new();
        let policy = ResultsPolicy::new(
            SpiffeId::new("spiffe://example.org/ns/default/taskrun/run").unwrap(),
            Freshness::NotChecked,
        );
        let verifier = ResultsVerifier::new(&bundles, &policy);
        let now = Utc::now();
        let empty = BTreeMap::new();
        let verdict = verify_step(
            &verifier,
            StepInput {
                name: "build",
                entries: &empty,
                finished_at: Some(now),
            },
            now,
        );
        assert_eq!(verdict.outcome, StepOutcome::NoResults);

        let unsigned = BTreeMap::from([("commit".to_owned(), "abc".to_owned())]);
        let verdict = verify_step(
            &verifier,
            StepInput {
                name: "build",
                entries: &unsigned,
                finished_at: Some(now),
            },
            now,
        );
        assert_eq!(verdict.reason(), Some(ReasonCode::UnsignedResults));
        let StepOutcome::Rejected(rejected) = &verdict.outcome else {
            panic!("rejected expected");
        };
        assert_eq!(rejected.checks[0].outcome, Outcome::Failed);
        assert_eq!(
            rejected
                .checks
                .iter()
                .find(|check| check.check == Check::IssuedAfterTaskrunCreated)
                .map(|check| check.outcome),
            Some(Outcome::NotRun)
        );

        let verdict = verify_step(
            &verifier,
            StepInput {
                name: "build",
                entries: &unsigned,
                finished_at: None,
            },
            now,
        );
        assert_eq!(verdict.reason(), Some(ReasonCode::MalformedResults));
    }

    #[test]
    fn verdicts_round_trip_as_json() {
        let verdict = StepVerdict {
            step: "build".into(),
            entries_digest: "d".into(),
            trust_bundle_digest: "t".into(),
            decided_at: Utc::now(),
            outcome: StepOutcome::Rejected(RejectedStep {
                reason: ReasonCode::ChainInvalid,
                check: Check::ChainValid,
                message: "no".into(),
                spiffe_id: None,
                svid_fingerprint: None,
                checks: checks_for_failure(Check::ChainValid, &Freshness::NotChecked),
            }),
        };
        let json = serde_json::to_vec(&verdict).unwrap();
        assert_eq!(
            serde_json::from_slice::<StepVerdict>(&json).unwrap(),
            verdict
        );
    }
}
