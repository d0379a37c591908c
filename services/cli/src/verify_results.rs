//! `countersign verify-results`: a TaskRun's signed results checked offline, with the attestor's
//! own rule (`countersign_verdict::steps` per step, `countersign_verdict::decide` for the
//! TaskRun), so the command and the attestor always agree.

use std::io::Write;

use chrono::Utc;
use countersign_identity::spiffe_id::taskrun_spiffe_id;
use countersign_identity::tekton::{Freshness, ResultsPolicy, ResultsVerifier};
use countersign_runtime::error_chain;
use countersign_verdict::decide::{Decision, decide};
use countersign_verdict::snapshot::TaskRunSnapshot;
use countersign_verdict::steps::{StepInput, StepVerdict, verify_step};
use serde_json::json;

use crate::args::VerifyResultsArgs;
use crate::exit::{CliError, Outcome};
use crate::inputs::{read_bundle, read_json, trust_domain};
use crate::render::{checks_json, wire_name, write_checks};

/// The TaskRun object inside what was given: a TaskRun, Tekton's CloudEvent data
/// (`{"taskRun": ...}`, v1beta1) or a whole structured CloudEvent (`{"data": {"taskRun": ...}}`).
fn taskrun_object(document: serde_json::Value) -> serde_json::Value {
    let mut document = document;
    if let Some(data) = document.get_mut("data").map(serde_json::Value::take) {
        document = data;
    }
    match document.get_mut("taskRun").map(serde_json::Value::take) {
        Some(taskrun) => taskrun,
        None => document,
    }
}

/// Runs `verify-results`.
pub fn verify_results(args: &VerifyResultsArgs, out: &mut dyn Write) -> Result<Outcome, CliError> {
    let taskrun = taskrun_object(read_json(&args.taskrun, "a TaskRun")?);
    let snapshot = TaskRunSnapshot::from_json(taskrun).map_err(|error| CliError::BadInput {
        path: args.taskrun.clone(),
        expected: "a TaskRun",
        reason: error_chain(&error),
    })?;
    let given_trust_domain = args.trust_domain.as_deref().map(trust_domain).transpose()?;
    let bundles = read_bundle(&args.bundle, given_trust_domain.as_ref())?;
    let trust_domain = match given_trust_domain {
        Some(trust_domain) => trust_domain,
        None => {
            let domains: Vec<_> = bundles.trust_domains().cloned().collect();
            match domains.as_slice() {
                [only] => only.clone(),
                _ => {
                    return Err(CliError::Usage(format!(
                        "the bundle's CAs name {} trust domains; pass --trust-domain",
                        domains.len()
                    )));
                }
            }
        }
    };
    let expected =
        taskrun_spiffe_id(&trust_domain, &snapshot.namespace, &snapshot.name).map_err(|error| {
            CliError::BadInput {
                path: args.taskrun.clone(),
                expected: "a TaskRun",
                reason: error_chain(&error),
            }
        })?;
    let freshness = if args.skip_replay_check {
        Freshness::NotChecked
    } else {
        Freshness::IssuedAfterTaskRunCreated(snapshot.created_at)
    };
    let policy = ResultsPolicy::new(expected.clone(), freshness);
    let verifier = ResultsVerifier::new(&bundles, &policy);
    let now = Utc::now();
    let steps: Vec<StepVerdict> = snapshot
        .steps
        .iter()
        .map(|step| {
            verify_step(
                &verifier,
                StepInput {
                    name: &step.step_name,
                    entries: &step.results,
                    finished_at: Some(step.finished_at),
                },
                now,
            )
        })
        .collect();
    let decision = decide(
        &steps,
        &snapshot.results,
        &snapshot.declared_results,
        &freshness,
    );

    let (reason, step, message) = match &decision {
        Decision::Rejected(rejected) => (
            Some(rejected.reason.as_str()),
            rejected.step.clone(),
            Some(rejected.message.clone()),
        ),
        Decision::Verified(_) | Decision::NoResults => (None, None, None),
    };
    let results: Vec<(String, String)> = match &decision {
        Decision::Verified(verified) => verified
            .results
            .iter()
            .map(|(name, value)| (name.clone(), value.digest().to_hex()))
            .collect(),
        Decision::NoResults | Decision::Rejected(_) => Vec::new(),
    };
    if args.json {
        let document = json!({
            "taskrun": {
                "namespace": snapshot.namespace,
                "name": snapshot.name,
                "uid": snapshot.uid,
            },
            "spiffeId": expected.to_string(),
            "verdict": decision.verdict().as_str(),
            "reasonCode": reason,
            "step": step,
            "message": message,
            "replayCheck": if args.skip_replay_check { "skipped" } else { "checked" },
            "checks": checks_json(decision.checks()),
            "results": results
                .iter()
                .map(|(name, digest)| (name.clone(), serde_json::Value::from(digest.clone())))
                .collect::<serde_json::Map<_, _>>(),
        });
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&document).unwrap_or_default()
        )?;
    } else {
        writeln!(
            out,
            "TaskRun {}/{} (uid {})",
            snapshot.namespace, snapshot.name, snapshot.uid
        )?;
        writeln!(out, "identity: {expected}")?;
        writeln!(out, "verdict:  {}", decision.verdict())?;
        if let Some(reason) = reason {
            writeln!(out, "reason:   {reason}")?;
        }
        if let Some(step) = &step {
            writeln!(out, "step:     {step}")?;
        }
        if let Some(message) = &message {
            writeln!(out, "message:  {message}")?;
        }
        if args.skip_replay_check {
            writeln!(
                out,
                "note:     the replay check ({}) was skipped (--skip-replay-check)",
                wire_name(countersign_identity::tekton::Check::IssuedAfterTaskrunCreated)
            )?;
        }
        write_checks(out, decision.checks())?;
        if !results.is_empty() {
            writeln!(out, "results:")?;
            for (name, digest) in &results {
                writeln!(out, "  {name:<24} sha256:{digest}")?;
            }
        }
    }
    Ok(match decision {
        Decision::Rejected(_) => Outcome::Rejected,
        Decision::Verified(_) | Decision::NoResults => Outcome::Success,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_taskrun_is_found_in_cloudevents_too() {
        let taskrun = json!({"metadata": {"name": "x"}});
        assert_eq!(taskrun_object(taskrun.clone()), taskrun);
        assert_eq!(taskrun_object(json!({"taskRun": taskrun.clone()})), taskrun);
        assert_eq!(
            taskrun_object(json!({"specversion": "1.0", "data": {"taskRun": taskrun.clone()}})),
            taskrun
        );
    }
}
