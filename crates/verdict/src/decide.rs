//! The one TaskRun rule: the TaskRun's verdict from its steps' verdicts (each step checked by
//! [`crate::steps::verify_step`], the attestor when the step completed, the command all at once),
//! its merged `status.results` and the results its Task declares:
//!
//! 1. the first rejected step (in step order) rejects the TaskRun with its reason;
//! 2. when no step signed anything: no merged results and no declared results (signing keys
//!    aside) is [`Decision::NoResults`]; otherwise the results are `unsigned_results`, also
//!    when the Task declared results that no step wrote or signed (an empty `status.results`
//!    does not make a TaskRun that should have produced results look like one with nothing to
//!    verify);
//! 3. every merged result (signing keys aside, which released Tekton shows as ordinary string
//!    results) must equal, canonically, what the last step that signed it signed
//!    (`results_mismatch` otherwise);
//! 4. otherwise the TaskRun is verified, with the results as their last signers signed them.

use std::collections::BTreeMap;

use countersign_identity::intoto::Verdict;
use countersign_identity::tekton::{
    Check, CheckOutcome, Freshness, Outcome, ReasonCode, ResultValue, VerifiedValue,
    checks_for_failure, is_signing_key,
};

use crate::snapshot::MergedResult;
use crate::steps::{StepOutcome, StepVerdict, VerifiedStep};

/// The TaskRun's verdict.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Every signing step verified and the merged results are what they signed.
    Verified(VerifiedDecision),
    /// Nothing declared, nothing written, nothing signed.
    NoResults,
    /// A check failed.
    Rejected(RejectedDecision),
}

/// A verified TaskRun.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedDecision {
    /// The results as their last signers signed them.
    pub results: BTreeMap<String, VerifiedValue>,
    /// The last step that signed (its SVID is the one the attestation names).
    pub signer_step: String,
    /// That step's verdict.
    pub signer: VerifiedStep,
    /// The trust bundle digest that step was checked against.
    pub trust_bundle_digest: String,
    /// The checks: each step check (skipped when any step skipped it), then `results_match`.
    pub checks: Vec<CheckOutcome>,
}

/// A rejected TaskRun.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedDecision {
    /// Why.
    pub reason: ReasonCode,
    /// What failed, for people.
    pub message: String,
    /// The step whose set failed, when one did.
    pub step: Option<String>,
    /// The SPIFFE ID of the SVID involved, when one was read.
    pub spiffe_id: Option<String>,
    /// Its fingerprint, when one was read.
    pub svid_fingerprint: Option<String>,
    /// The bundle digest the failing step was checked against, when a step failed.
    pub trust_bundle_digest: Option<String>,
    /// The checks and their outcomes.
    pub checks: Vec<CheckOutcome>,
}

impl Decision {
    /// The verdict.
    pub fn verdict(&self) -> Verdict {
        match self {
            Decision::Verified(_) => Verdict::Verified,
            Decision::NoResults => Verdict::NoResults,
            Decision::Rejected(_) => Verdict::Rejected,
        }
    }

    /// The reason, when rejected.
    pub fn reason(&self) -> Option<ReasonCode> {
        match self {
            Decision::Rejected(rejected) => Some(rejected.reason),
            Decision::Verified(_) | Decision::NoResults => None,
        }
    }

    /// The checks and their outcomes.
    pub fn checks(&self) -> &[CheckOutcome] {
        match self {
            Decision::Verified(verified) => &verified.checks,
            Decision::NoResults => &[],
            Decision::Rejected(rejected) => &rejected.checks,
        }
    }
}

/// Reads the merged results (`status.results` as the event carries them). A value that is not
/// a string, an array of strings or an object of strings makes the TaskRun `malformed_results`.
pub fn merged_results(
    results: &[countersign_events::data::TaskRunResult],
) -> Result<Vec<MergedResult>, Box<RejectedDecision>> {
    results
        .iter()
        .map(|result| {
            serde_json::from_value::<ResultValue>(result.value.clone())
                .map(|value| MergedResult {
                    name: result.name.clone(),
                    value,
                })
                .map_err(|error| {
                    Box::new(RejectedDecision {
                        reason: ReasonCode::MalformedResults,
                        message: format!("result {} has an unreadable value: {error}", result.name),
                        step: None,
                        spiffe_id: None,
                        svid_fingerprint: None,
                        trust_bundle_digest: None,
                        checks: Vec::new(),
                    })
                })
        })
        .collect()
}

/// Decides the TaskRun's verdict (see the module docs). `steps` are in step order;
/// `freshness` says whether the issuance check ran (it is recorded as skipped otherwise).
pub fn decide(
    steps: &[StepVerdict],
    merged: &[MergedResult],
    declared: &[String],
    freshness: &Freshness,
) -> Decision {
    // 1. The first rejected step.
    for step in steps {
        if let StepOutcome::Rejected(rejected) = &step.outcome {
            return Decision::Rejected(RejectedDecision {
                reason: rejected.reason,
                message: format!("step {}: {}", step.step, rejected.message),
                step: Some(step.step.clone()),
                spiffe_id: rejected.spiffe_id.clone(),
                svid_fingerprint: rejected.svid_fingerprint.clone(),
                trust_bundle_digest: Some(step.trust_bundle_digest.clone()),
                checks: with_results_match(rejected.checks.clone(), Outcome::NotRun),
            });
        }
    }

    // 2. Nothing signed.
    let merged_results: Vec<&MergedResult> = merged
        .iter()
        .filter(|result| !is_signing_key(&result.name))
        .collect();
    let signing_steps: Vec<(&StepVerdict, &VerifiedStep)> = steps
        .iter()
        .filter_map(|step| match &step.outcome {
            StepOutcome::Verified(verified) => Some((step, verified)),
            StepOutcome::NoResults | StepOutcome::Rejected(_) => None,
        })
        .collect();
    let Some((last_step, last_verified)) = signing_steps.last() else {
        let declared: Vec<&String> = declared
            .iter()
            .filter(|name| !is_signing_key(name))
            .collect();
        if merged_results.is_empty() && declared.is_empty() {
            return Decision::NoResults;
        }
        let names: Vec<String> = if merged_results.is_empty() {
            declared.into_iter().cloned().collect()
        } else {
            merged_results
                .iter()
                .map(|result| result.name.clone())
                .collect()
        };
        return Decision::Rejected(RejectedDecision {
            reason: ReasonCode::UnsignedResults,
            message: format!("results {} carry no signing material", names.join(", ")),
            step: None,
            spiffe_id: None,
            svid_fingerprint: None,
            trust_bundle_digest: None,
            checks: with_results_match(
                checks_for_failure(Check::SvidPresent, freshness),
                Outcome::NotRun,
            ),
        });
    };

    // 3. The merged results against what the steps signed, the last signer winning.
    let mut last_signed: BTreeMap<String, VerifiedValue> = BTreeMap::new();
    for (_, verified) in &signing_steps {
        for (name, value) in &verified.results {
            last_signed.insert(name.clone(), value.clone());
        }
    }
    let step_checks = combined_step_checks(signing_steps.iter().map(|(_, verified)| *verified));
    for result in merged_results {
        let mismatch = match last_signed.get(&result.name) {
            None => Some("no step signed it"),
            Some(signed) if signed.canonical != result.value.canonical() => {
                Some("its value differs from what the step signed")
            }
            Some(_) => None,
        };
        if let Some(how) = mismatch {
            return Decision::Rejected(RejectedDecision {
                reason: ReasonCode::ResultsMismatch,
                message: format!("merged result {}: {how}", result.name),
                step: None,
                spiffe_id: Some(last_verified.spiffe_id.clone()),
                svid_fingerprint: Some(last_verified.svid_fingerprint.clone()),
                trust_bundle_digest: Some(last_step.trust_bundle_digest.clone()),
                checks: with_results_match(step_checks, Outcome::Failed),
            });
        }
    }

    // 4. Verified.
    Decision::Verified(VerifiedDecision {
        results: last_signed,
        signer_step: last_step.step.clone(),
        signer: (*last_verified).clone(),
        trust_bundle_digest: last_step.trust_bundle_digest.clone(),
        checks: with_results_match(step_checks, Outcome::Passed),
    })
}

/// Each step check once: skipped when any verified step skipped it, passed otherwise.
fn combined_step_checks<'a>(
    verified: impl Iterator<Item = &'a VerifiedStep> + Clone,
) -> Vec<CheckOutcome> {
    Check::STEP_CHECKS
        .iter()
        .map(|&check| {
            let skipped = verified.clone().any(|step| {
                step.checks
                    .iter()
                    .any(|outcome| outcome.check == check && outcome.outcome == Outcome::Skipped)
            });
            CheckOutcome {
                check,
                outcome: if skipped {
                    Outcome::Skipped
                } else {
                    Outcome::Passed
                },
            }
        })
        .collect()
}

fn with_results_match(mut checks: Vec<CheckOutcome>, outcome: Outcome) -> Vec<CheckOutcome> {
    checks.push(CheckOutcome {
        check: Check::ResultsMatch,
        outcome,
    });
    checks
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::steps::RejectedStep;

    fn value(raw: &str) -> VerifiedValue {
        VerifiedValue {
            raw: raw.to_owned(),
            canonical: countersign_identity::tekton::canonical(raw),
        }
    }

    fn verified(name: &str, results: &[(&str, &str)]) -> StepVerdict {
        StepVerdict {
            step: name.to_owned(),
            entries_digest: String::new(),
            trust_bundle_digest: format!("bundle-{name}"),
            decided_at: Utc::now(),
            outcome: StepOutcome::Verified(VerifiedStep {
                spiffe_id: "spiffe://example.org/ns/default/taskrun/run".into(),
                svid_fingerprint: format!("fp-{name}"),
                signed_at: Utc::now(),
                issuing_authority: None,
                results: results
                    .iter()
                    .map(|(key, raw)| ((*key).to_owned(), value(raw)))
                    .collect(),
                checks: Check::STEP_CHECKS
                    .iter()
                    .map(|&check| CheckOutcome {
                        check,
                        outcome: Outcome::Passed,
                    })
                    .collect(),
            }),
        }
    }

    fn no_results(name: &str) -> StepVerdict {
        StepVerdict {
            step: name.to_owned(),
            entries_digest: String::new(),
            trust_bundle_digest: String::new(),
            decided_at: Utc::now(),
            outcome: StepOutcome::NoResults,
        }
    }

    fn merged(name: &str, value: ResultValue) -> MergedResult {
        MergedResult {
            name: name.to_owned(),
            value,
        }
    }

    const CHECKED: Freshness = Freshness::NotChecked;

    #[test]
    fn last_signer_wins_and_signing_keys_in_merged_results_are_ignored() {
        let steps = [
            verified("clone", &[("commit", "a")]),
            verified("build", &[("commit", "a"), ("tags", r#"["x","y"]"#)]),
        ];
        let merged_results = [
            merged("commit", ResultValue::String("a".into())),
            merged("tags", ResultValue::Array(vec!["x".into(), "y".into()])),
            merged("SVID", ResultValue::String("pem".into())),
            merged("commit.sig", ResultValue::String("sig".into())),
        ];
        let Decision::Verified(decision) = decide(&steps, &merged_results, &[], &CHECKED) else {
            panic!("verified expected");
        };
        assert_eq!(decision.signer_step, "build");
        assert_eq!(decision.trust_bundle_digest, "bundle-build");
        assert_eq!(decision.results.len(), 2);
        assert_eq!(
            decision
                .checks
                .last()
                .map(|check| (check.check, check.outcome)),
            Some((Check::ResultsMatch, Outcome::Passed))
        );
    }

    #[test]
    fn a_merged_value_that_differs_or_was_never_signed_is_a_mismatch() {
        let steps = [verified("build", &[("commit", "a")])];
        let differs = [merged("commit", ResultValue::String("b".into()))];
        assert_eq!(
            decide(&steps, &differs, &[], &CHECKED).reason(),
            Some(ReasonCode::ResultsMismatch)
        );
        let unsigned = [
            merged("commit", ResultValue::String("a".into())),
            merged("extra", ResultValue::String("x".into())),
        ];
        let decision = decide(&steps, &unsigned, &[], &CHECKED);
        assert_eq!(decision.reason(), Some(ReasonCode::ResultsMismatch));
        assert_eq!(
            decision.checks().last().map(|check| check.outcome),
            Some(Outcome::Failed)
        );
    }

    #[test]
    fn the_first_rejected_step_decides() {
        let rejected = StepVerdict {
            outcome: StepOutcome::Rejected(RejectedStep {
                reason: ReasonCode::SignatureInvalid,
                check: Check::SignaturesValid,
                message: "bad".into(),
                spiffe_id: Some("spiffe://example.org/x".into()),
                svid_fingerprint: None,
                checks: checks_for_failure(Check::SignaturesValid, &CHECKED),
            }),
            ..no_results("clone")
        };
        let steps = [rejected, verified("build", &[("commit", "a")])];
        let Decision::Rejected(decision) = decide(&steps, &[], &[], &CHECKED) else {
            panic!("rejected expected");
        };
        assert_eq!(decision.reason, ReasonCode::SignatureInvalid);
        assert_eq!(decision.step.as_deref(), Some("clone"));
    }

    #[test]
    fn nothing_declared_written_or_signed_is_no_results_and_unsigned_results_are_rejected() {
        assert_eq!(
            decide(&[no_results("build")], &[], &[], &CHECKED),
            Decision::NoResults
        );
        // Declaring only the signing keys (for the signer) is still declaring nothing.
        assert_eq!(
            decide(
                &[],
                &[],
                &["SVID".into(), "RESULT_MANIFEST".into()],
                &CHECKED
            ),
            Decision::NoResults
        );
        let merged_results = [merged("commit", ResultValue::String("a".into()))];
        assert_eq!(
            decide(&[no_results("build")], &merged_results, &[], &CHECKED).reason(),
            Some(ReasonCode::UnsignedResults)
        );
    }

    /// The rule kept from the two TaskRun verifiers there were: a Task that declares results
    /// whose steps wrote and signed none is rejected, not `no_results` (the deleted
    /// `ResultsVerifier::verify_taskrun` looked at the merged results only, so it called an empty
    /// `status.results` "nothing to verify" whatever the Task declared).
    #[test]
    fn a_taskrun_that_declared_results_and_signed_none_is_unsigned_results() {
        for steps in [vec![], vec![no_results("build")]] {
            let decision = decide(&steps, &[], &["commit".into()], &CHECKED);
            assert_eq!(decision.verdict(), Verdict::Rejected);
            assert_eq!(decision.reason(), Some(ReasonCode::UnsignedResults));
            let Decision::Rejected(rejected) = decision else {
                panic!("rejected expected");
            };
            assert_eq!(
                rejected
                    .checks
                    .iter()
                    .find(|check| check.check == Check::SvidPresent)
                    .map(|check| check.outcome),
                Some(Outcome::Failed)
            );
        }
    }

    #[test]
    fn each_decision_has_its_verdict() {
        assert_eq!(Decision::NoResults.verdict(), Verdict::NoResults);
        let steps = [verified("build", &[("commit", "a")])];
        let merged_results = [merged("commit", ResultValue::String("a".into()))];
        assert_eq!(
            decide(&steps, &merged_results, &[], &CHECKED).verdict(),
            Verdict::Verified
        );
    }

    #[test]
    fn unreadable_merged_values_are_malformed() {
        let results = [countersign_events::data::TaskRunResult {
            name: "n".into(),
            r#type: countersign_events::data::ResultType::Array,
            value: serde_json::json!([1, 2]),
        }];
        let error = merged_results(&results).unwrap_err();
        assert_eq!(error.reason, ReasonCode::MalformedResults);
    }
}
