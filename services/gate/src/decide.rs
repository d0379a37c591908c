//! The TaskRun rule: a TaskRun a PipelineRun creates is admitted only if every upstream result
//! its params read was signed, verified by Countersign, and is the value being passed.
//!
//! In two steps, so the service can gather what the second needs (waiting for verdicts still on
//! their way) between them:
//!
//! 1. [`plan`]: from the PipelineRun's Pipeline spec, the TaskRun's pipeline task and its param
//!    templates, with the PipelineRun's params and context applied as Tekton applies them, and
//!    the upstream results they read (`$(tasks.<task>.results.<name>...)`), each upstream
//!    pipeline task mapped to its TaskRun by `status.childReferences`.
//! 2. [`Plan::decide`]: given each upstream's state ([`Upstream`]), checks in order, per upstream:
//!    it exists ([`DenyCode::UpstreamMissing`]); its verdict arrived
//!    ([`DenyCode::VerdictMissing`]); it is not `rejected` ([`DenyCode::UpstreamRejected`]); each
//!    result read was signed ([`DenyCode::ResultNotSigned`]) and the upstream's status still holds
//!    the signed value ([`DenyCode::ValueDiffers`]); then, per param, the value passed is the
//!    template with those signed values substituted the way Tekton does
//!    ([`DenyCode::ValueDiffers`]). Every failure is reported, each with its own code and a
//!    message naming the upstream TaskRun, the result and the reason.
//!
//! What a signed result is: the attestation's in-toto subject of that name, whose SHA-256 is of the
//! result's canonical value (`countersign_identity::tekton::canonical`), the bytes the step signed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use countersign_identity::crypto::Sha256Digest;
use countersign_identity::intoto::Verdict;
use countersign_identity::tekton::ResultValue;
use serde::Serialize;

use crate::expression::result_refs;
use crate::pipeline::{PipelineRunView, TaskRunAdmission};
use crate::substitution::{Expected, ParamValue, Replacements, substitute};

/// How many matcher steps one admission may take (a template with several unknown variables
/// around long values is quadratic at worst).
pub const MATCH_BUDGET: u64 = 4_000_000;

/// Why a TaskRun is denied: one code per check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyCode {
    /// The owning PipelineRun, its Pipeline spec, or the TaskRun's pipeline task in it is unknown.
    PipelineUnknown,
    /// The upstream pipeline task has no TaskRun (no child reference), or that TaskRun is gone.
    UpstreamMissing,
    /// The upstream TaskRun's verdict did not arrive within the wait bound.
    VerdictMissing,
    /// Countersign rejected the upstream TaskRun's results.
    UpstreamRejected,
    /// The upstream's attestation does not sign the result read (not among its subjects).
    ResultNotSigned,
    /// The value passed is not the value the upstream signed.
    ValueDiffers,
    /// The gate cannot tell what is passed (a matrix fanning out results, a template too costly
    /// to match).
    Unverifiable,
}

impl DenyCode {
    /// Every code.
    pub const ALL: [DenyCode; 7] = [
        DenyCode::PipelineUnknown,
        DenyCode::UpstreamMissing,
        DenyCode::VerdictMissing,
        DenyCode::UpstreamRejected,
        DenyCode::ResultNotSigned,
        DenyCode::ValueDiffers,
        DenyCode::Unverifiable,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            DenyCode::PipelineUnknown => "pipeline_unknown",
            DenyCode::UpstreamMissing => "upstream_missing",
            DenyCode::VerdictMissing => "verdict_missing",
            DenyCode::UpstreamRejected => "upstream_rejected",
            DenyCode::ResultNotSigned => "result_not_signed",
            DenyCode::ValueDiffers => "value_differs",
            DenyCode::Unverifiable => "unverifiable",
        }
    }
}

impl fmt::Display for DenyCode {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// One reason to deny.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Denial {
    /// Which check.
    pub code: DenyCode,
    /// The upstream pipeline task, when one is concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_task: Option<String>,
    /// The upstream TaskRun, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_taskrun: Option<String>,
    /// The result, when one is concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// The param, when one is concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    /// For people: names the upstream TaskRun, the result and the reason.
    pub message: String,
}

impl Denial {
    fn new(code: DenyCode, message: String) -> Denial {
        Denial {
            code,
            upstream_task: None,
            upstream_taskrun: None,
            result: None,
            param: None,
            message,
        }
    }
}

/// What the gate knows about one upstream pipeline task's TaskRun.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// No TaskRun: no child reference, or the TaskRun does not exist.
    Missing,
    /// The TaskRun exists; its verdict has not arrived.
    Pending,
    /// Attested.
    Attested(AttestedUpstream),
}

/// An upstream TaskRun and its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestedUpstream {
    /// The verdict.
    pub verdict: Verdict,
    /// Why it was rejected (the attestation's reason code), when it was.
    pub reason: Option<String>,
    /// The signed results: name → lower-case hex SHA-256 of the canonical value.
    pub signed: BTreeMap<String, String>,
    /// The TaskRun's `status.results`: what Tekton substitutes.
    pub results: BTreeMap<String, ParamValue>,
}

/// An upstream pipeline task the TaskRun reads results of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRef {
    /// Its TaskRun (`status.childReferences`), if it has one.
    pub taskrun: Option<String>,
    /// The results read.
    pub results: BTreeSet<String>,
}

/// One param that reads upstream results.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ParamCheck {
    name: String,
    /// The template with the PipelineRun's params and context applied.
    template: ParamValue,
    /// The (task, result) pairs it reads.
    reads: BTreeSet<(String, String)>,
}

/// What must be checked for one TaskRun.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    namespace: String,
    pipeline_run: String,
    checks: Vec<ParamCheck>,
    upstreams: BTreeMap<String, UpstreamRef>,
}

/// What [`plan`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Planned {
    /// No param reads an upstream result: nothing to check.
    NothingToCheck,
    /// These upstreams must be looked at.
    Check(Plan),
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Admit; the upstream TaskRuns whose signed values were checked.
    Allowed {
        /// `(pipeline task, TaskRun)` of each upstream checked.
        upstreams: Vec<(String, String)>,
    },
    /// Deny, for these reasons (at least one).
    Denied(Vec<Denial>),
}

/// The replacements Tekton applies before results: the PipelineRun's params (declared defaults,
/// overridden by `spec.params`) and its context variables.
fn pipeline_run_replacements(
    pipeline_run: &PipelineRunView,
    pipeline_name: Option<&str>,
) -> (Replacements, Replacements) {
    let mut params = Replacements::default();
    if let Some(spec) = &pipeline_run.spec {
        for declared in &spec.params {
            if let Some(default) = &declared.default {
                params.add_param(&declared.name, default);
            }
        }
    }
    for param in &pipeline_run.params {
        params.add_param(&param.name, &param.value);
    }
    let mut context = Replacements::default();
    for (target, value) in [
        ("context.pipelineRun.name", pipeline_run.name.as_str()),
        (
            "context.pipeline.name",
            pipeline_name.unwrap_or(pipeline_run.name.as_str()),
        ),
        ("context.pipelineRun.namespace", &pipeline_run.namespace),
        ("context.pipelineRun.uid", &pipeline_run.uid),
    ] {
        context.strings.insert(target.to_owned(), value.to_owned());
    }
    (params, context)
}

/// Step 1: what `taskrun`, created by `pipeline_run`, reads of upstream results.
pub fn plan(
    taskrun: &TaskRunAdmission,
    pipeline_run: &PipelineRunView,
) -> Result<Planned, Box<Denial>> {
    let unknown = |message: String| Box::new(Denial::new(DenyCode::PipelineUnknown, message));
    let pipeline_run_name = format!("{}/{}", pipeline_run.namespace, pipeline_run.name);
    let Some(spec) = &pipeline_run.spec else {
        return Err(unknown(format!(
            "PipelineRun {pipeline_run_name} has no Pipeline spec (neither status.pipelineSpec nor spec.pipelineSpec)"
        )));
    };
    let Some(task_name) = &taskrun.pipeline_task else {
        return Err(unknown(format!(
            "TaskRun {}/{} of PipelineRun {pipeline_run_name} has no tekton.dev/pipelineTask label",
            taskrun.namespace, taskrun.name
        )));
    };
    let Some(task) = spec.task(task_name) else {
        return Err(unknown(format!(
            "PipelineRun {pipeline_run_name} has no pipeline task {task_name}"
        )));
    };
    let (params, context) =
        pipeline_run_replacements(pipeline_run, taskrun.pipeline_name.as_deref());
    let mut checks = Vec::new();
    let mut upstreams: BTreeMap<String, UpstreamRef> = BTreeMap::new();
    for param in &task.params {
        let applied = substitute(&substitute(&param.value, &params).render(), &context).render();
        let reads: BTreeSet<(String, String)> = applied
            .strings()
            .into_iter()
            .flat_map(result_refs)
            .map(|reference| (reference.task, reference.result))
            .collect();
        if reads.is_empty() {
            continue;
        }
        for (upstream_task, result) in &reads {
            upstreams
                .entry(upstream_task.clone())
                .or_insert_with(|| UpstreamRef {
                    taskrun: pipeline_run.children.get(upstream_task).cloned(),
                    results: BTreeSet::new(),
                })
                .results
                .insert(result.clone());
        }
        checks.push(ParamCheck {
            name: param.name.clone(),
            template: applied,
            reads,
        });
    }
    if let Some(fanned_out) = upstreams
        .keys()
        .find(|upstream| pipeline_run.fanned_out.contains(*upstream))
    {
        return Err(Box::new(Denial::new(
            DenyCode::Unverifiable,
            format!(
                "pipeline task {task_name} of PipelineRun {pipeline_run_name} reads results of pipeline task {fanned_out}, which a matrix fans out into several TaskRuns; the gate does not check aggregated results"
            ),
        )));
    }
    if let Some(matrix) = &task.matrix
        && !result_refs(&matrix.to_string()).is_empty()
    {
        return Err(Box::new(Denial::new(
            DenyCode::Unverifiable,
            format!(
                "pipeline task {task_name} of PipelineRun {pipeline_run_name} fans upstream results out with a matrix, which the gate does not check"
            ),
        )));
    }
    if checks.is_empty() {
        return Ok(Planned::NothingToCheck);
    }
    Ok(Planned::Check(Plan {
        namespace: pipeline_run.namespace.clone(),
        pipeline_run: pipeline_run.name.clone(),
        checks,
        upstreams,
    }))
}

/// The SHA-256 (hex) of the bytes a step signs for `value`.
pub fn signed_digest(value: &ParamValue) -> String {
    let value = match value {
        ParamValue::String(text) => ResultValue::String(text.clone()),
        ParamValue::Array(elements) => ResultValue::Array(elements.clone()),
        ParamValue::Object(object) => ResultValue::Object(object.clone()),
    };
    Sha256Digest::of(value.canonical().as_bytes()).to_hex()
}

impl Plan {
    /// The upstream pipeline tasks to look at.
    pub fn upstreams(&self) -> &BTreeMap<String, UpstreamRef> {
        &self.upstreams
    }

    /// Step 2: the decision, given each upstream's state (keyed by pipeline task; an absent key
    /// is [`Upstream::Missing`]), for the params `taskrun` is given.
    pub fn decide(
        &self,
        taskrun: &TaskRunAdmission,
        states: &BTreeMap<String, Upstream>,
    ) -> Decision {
        let mut denials = Vec::new();
        let mut replacements = Replacements::default();
        let mut checked = Vec::new();
        for (task, upstream) in &self.upstreams {
            let taskrun_label = match &upstream.taskrun {
                Some(name) => format!("{}/{name}", self.namespace),
                None => format!("(none) of pipeline task {task}"),
            };
            let results = upstream
                .results
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            let deny = |code: DenyCode, result: Option<&str>, message: String| Denial {
                code,
                upstream_task: Some(task.clone()),
                upstream_taskrun: upstream.taskrun.clone(),
                result: result.map(str::to_owned),
                param: None,
                message,
            };
            let state = match (&upstream.taskrun, states.get(task)) {
                (None, _) | (_, None | Some(Upstream::Missing)) => {
                    denials.push(deny(
                        DenyCode::UpstreamMissing,
                        upstream.results.first().map(String::as_str),
                        format!(
                            "upstream TaskRun {taskrun_label} (pipeline task {task} of PipelineRun {}/{}), whose result(s) {results} are read, does not exist",
                            self.namespace, self.pipeline_run
                        ),
                    ));
                    continue;
                }
                (Some(_), Some(Upstream::Pending)) => {
                    denials.push(deny(
                        DenyCode::VerdictMissing,
                        upstream.results.first().map(String::as_str),
                        format!(
                            "upstream TaskRun {taskrun_label}: no Countersign verdict arrived in time for result(s) {results}"
                        ),
                    ));
                    continue;
                }
                (Some(_), Some(Upstream::Attested(attested))) => attested,
            };
            if state.verdict == Verdict::Rejected {
                denials.push(deny(
                    DenyCode::UpstreamRejected,
                    upstream.results.first().map(String::as_str),
                    format!(
                        "upstream TaskRun {taskrun_label} was rejected by Countersign ({}): result(s) {results} are not trusted",
                        state.reason.as_deref().unwrap_or("no reason given")
                    ),
                ));
                continue;
            }
            let mut upstream_ok = true;
            for result in &upstream.results {
                let Some(signed) = state.signed.get(result) else {
                    denials.push(deny(
                        DenyCode::ResultNotSigned,
                        Some(result),
                        format!(
                            "result {result} of upstream TaskRun {taskrun_label} is not among the results its attestation signs (verdict {})",
                            state.verdict
                        ),
                    ));
                    upstream_ok = false;
                    continue;
                };
                match state.results.get(result) {
                    Some(value) if signed_digest(value) == *signed => {
                        replacements.add_result(task, result, value);
                    }
                    Some(_) => {
                        denials.push(deny(
                            DenyCode::ValueDiffers,
                            Some(result),
                            format!(
                                "result {result} of upstream TaskRun {taskrun_label} differs from the value it signed (sha256 {signed})"
                            ),
                        ));
                        upstream_ok = false;
                    }
                    None => {
                        denials.push(deny(
                            DenyCode::ValueDiffers,
                            Some(result),
                            format!(
                                "result {result} of upstream TaskRun {taskrun_label} is signed but absent from its status"
                            ),
                        ));
                        upstream_ok = false;
                    }
                }
            }
            if upstream_ok && let Some(name) = &upstream.taskrun {
                checked.push((task.clone(), name.clone()));
            }
        }
        if !denials.is_empty() {
            return Decision::Denied(denials);
        }
        let mut budget = MATCH_BUDGET;
        for check in &self.checks {
            let expected: Expected = substitute(&check.template, &replacements);
            let reads = check
                .reads
                .iter()
                .map(|(task, result)| {
                    let taskrun = self.upstreams[task].taskrun.as_deref().unwrap_or("?");
                    format!("{result} of upstream TaskRun {}/{taskrun}", self.namespace)
                })
                .collect::<Vec<_>>()
                .join(", ");
            let (first_task, first_result) = check.reads.first().cloned().unwrap_or_default();
            let denial = |code: DenyCode, message: String| Denial {
                code,
                upstream_task: Some(first_task.clone()),
                upstream_taskrun: self
                    .upstreams
                    .get(&first_task)
                    .and_then(|upstream| upstream.taskrun.clone()),
                result: Some(first_result.clone()),
                param: Some(check.name.clone()),
                message,
            };
            let Some(actual) = taskrun.params.iter().find(|param| param.name == check.name) else {
                denials.push(denial(
                    DenyCode::ValueDiffers,
                    format!(
                        "param {} is missing, but should carry the signed value of result {reads}",
                        check.name
                    ),
                ));
                continue;
            };
            match expected.matches(&actual.value, &mut budget) {
                Some(true) => {}
                Some(false) => denials.push(denial(
                    DenyCode::ValueDiffers,
                    format!(
                        "param {} differs from the signed value of result {reads}",
                        check.name
                    ),
                )),
                None => denials.push(denial(
                    DenyCode::Unverifiable,
                    format!(
                        "param {} is too costly to compare with the signed value of result {reads}",
                        check.name
                    ),
                )),
            }
        }
        if denials.is_empty() {
            Decision::Allowed { upstreams: checked }
        } else {
            Decision::Denied(denials)
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn pipeline_run(task_params: serde_json::Value) -> PipelineRunView {
        PipelineRunView::from_json(&json!({
            "metadata": {"name": "release", "namespace": "ci", "uid": "pr-uid"},
            "spec": {"params": [{"name": "registry", "value": "r.example"}]},
            "status": {
                "pipelineSpec": {
                    "params": [{"name": "registry"}, {"name": "suffix", "default": "-x"}],
                    "tasks": [
                        {"name": "build", "params": []},
                        {"name": "deploy", "params": task_params}
                    ]
                },
                "childReferences": [{"kind": "TaskRun", "name": "release-build", "pipelineTaskName": "build"}]
            }
        }))
        .unwrap()
    }

    fn taskrun(params: serde_json::Value) -> TaskRunAdmission {
        TaskRunAdmission::from_json(&json!({
            "metadata": {
                "name": "release-deploy", "namespace": "ci",
                "labels": {"tekton.dev/pipelineTask": "deploy"},
                "ownerReferences": [{"kind": "PipelineRun", "name": "release", "uid": "pr-uid", "controller": true}]
            },
            "spec": {"params": params}
        }))
        .unwrap()
    }

    fn attested(results: &[(&str, ParamValue)]) -> Upstream {
        Upstream::Attested(AttestedUpstream {
            verdict: Verdict::Verified,
            reason: None,
            signed: results
                .iter()
                .map(|(name, value)| ((*name).to_owned(), signed_digest(value)))
                .collect(),
            results: results
                .iter()
                .map(|(name, value)| ((*name).to_owned(), value.clone()))
                .collect(),
        })
    }

    fn string(text: &str) -> ParamValue {
        ParamValue::String(text.into())
    }

    const DIGEST: &str = "sha256:5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c";

    fn decide(
        pipeline_run: &PipelineRunView,
        taskrun: &TaskRunAdmission,
        build: Upstream,
    ) -> Decision {
        match plan(taskrun, pipeline_run).unwrap() {
            Planned::NothingToCheck => Decision::Allowed { upstreams: vec![] },
            Planned::Check(plan) => {
                plan.decide(taskrun, &BTreeMap::from([("build".to_owned(), build)]))
            }
        }
    }

    fn codes(decision: &Decision) -> Vec<DenyCode> {
        match decision {
            Decision::Allowed { .. } => vec![],
            Decision::Denied(denials) => denials.iter().map(|denial| denial.code).collect(),
        }
    }

    fn image_pipeline() -> PipelineRunView {
        pipeline_run(json!([
            {"name": "image", "value": "$(params.registry)/app@$(tasks.build.results.IMAGE_DIGEST)"},
            {"name": "plain", "value": "$(params.suffix)"}
        ]))
    }

    #[test]
    fn the_signed_value_passed_is_admitted() {
        let decision = decide(
            &image_pipeline(),
            &taskrun(
                json!([{"name": "image", "value": format!("r.example/app@{DIGEST}")}, {"name": "plain", "value": "-x"}]),
            ),
            attested(&[("IMAGE_DIGEST", string(DIGEST))]),
        );
        assert_eq!(
            decision,
            Decision::Allowed {
                upstreams: vec![("build".into(), "release-build".into())]
            }
        );
    }

    #[test]
    fn a_taskrun_reading_no_result_needs_nothing() {
        let pipeline_run = pipeline_run(json!([{"name": "plain", "value": "$(params.suffix)"}]));
        assert_eq!(
            plan(
                &taskrun(json!([{"name": "plain", "value": "-x"}])),
                &pipeline_run
            )
            .unwrap(),
            Planned::NothingToCheck
        );
    }

    #[test]
    fn a_param_differing_from_the_signed_value_is_denied() {
        let decision = decide(
            &image_pipeline(),
            &taskrun(json!([{"name": "image", "value": "r.example/app@sha256:0bad"}])),
            attested(&[("IMAGE_DIGEST", string(DIGEST))]),
        );
        assert_eq!(codes(&decision), vec![DenyCode::ValueDiffers]);
        let Decision::Denied(denials) = decision else {
            unreachable!()
        };
        assert_eq!(denials[0].param.as_deref(), Some("image"));
        assert_eq!(
            denials[0].upstream_taskrun.as_deref(),
            Some("release-build")
        );
        assert!(denials[0].message.contains("ci/release-build"));
        assert!(denials[0].message.contains("IMAGE_DIGEST"));
    }

    #[test]
    fn an_upstream_status_changed_after_signing_is_denied() {
        let Upstream::Attested(mut upstream) = attested(&[("IMAGE_DIGEST", string(DIGEST))]) else {
            unreachable!()
        };
        upstream
            .results
            .insert("IMAGE_DIGEST".into(), string("sha256:0bad"));
        let decision = decide(
            &image_pipeline(),
            &taskrun(json!([{"name": "image", "value": "r.example/app@sha256:0bad"}])),
            Upstream::Attested(upstream),
        );
        assert_eq!(codes(&decision), vec![DenyCode::ValueDiffers]);
    }

    #[test]
    fn a_rejected_upstream_is_denied_with_its_reason() {
        let Upstream::Attested(mut upstream) = attested(&[]) else {
            unreachable!()
        };
        upstream.verdict = Verdict::Rejected;
        upstream.reason = Some("signature_invalid".into());
        let decision = decide(
            &image_pipeline(),
            &taskrun(json!([{"name": "image", "value": format!("r.example/app@{DIGEST}")}])),
            Upstream::Attested(upstream),
        );
        assert_eq!(codes(&decision), vec![DenyCode::UpstreamRejected]);
        let Decision::Denied(denials) = decision else {
            unreachable!()
        };
        assert!(denials[0].message.contains("signature_invalid"));
    }

    #[test]
    fn a_pending_verdict_is_denied_as_missing() {
        let decision = decide(
            &image_pipeline(),
            &taskrun(json!([{"name": "image", "value": format!("r.example/app@{DIGEST}")}])),
            Upstream::Pending,
        );
        assert_eq!(codes(&decision), vec![DenyCode::VerdictMissing]);
    }

    #[test]
    fn a_missing_upstream_is_denied() {
        let decision = decide(
            &image_pipeline(),
            &taskrun(json!([{"name": "image", "value": format!("r.example/app@{DIGEST}")}])),
            Upstream::Missing,
        );
        assert_eq!(codes(&decision), vec![DenyCode::UpstreamMissing]);
        // A pipeline task without a child reference is missing whatever the caller says.
        let pipeline_run =
            pipeline_run(json!([{"name": "x", "value": "$(tasks.lint.results.ok)"}]));
        let taskrun = taskrun(json!([{"name": "x", "value": "yes"}]));
        let Planned::Check(plan) = plan(&taskrun, &pipeline_run).unwrap() else {
            unreachable!()
        };
        let decision = plan.decide(
            &taskrun,
            &BTreeMap::from([("lint".to_owned(), Upstream::Pending)]),
        );
        assert_eq!(codes(&decision), vec![DenyCode::UpstreamMissing]);
    }

    #[test]
    fn a_result_the_attestation_does_not_sign_is_denied() {
        let Upstream::Attested(mut upstream) = attested(&[("IMAGE_DIGEST", string(DIGEST))]) else {
            unreachable!()
        };
        upstream.signed.clear();
        upstream.verdict = Verdict::NoResults;
        let decision = decide(
            &image_pipeline(),
            &taskrun(json!([{"name": "image", "value": format!("r.example/app@{DIGEST}")}])),
            Upstream::Attested(upstream),
        );
        assert_eq!(codes(&decision), vec![DenyCode::ResultNotSigned]);
    }

    #[test]
    fn an_unknown_pipeline_task_or_spec_is_denied() {
        let mut pipeline_run = image_pipeline();
        let mut other = taskrun(json!([]));
        other.pipeline_task = Some("nope".into());
        assert_eq!(
            plan(&other, &pipeline_run).unwrap_err().code,
            DenyCode::PipelineUnknown
        );
        pipeline_run.spec = None;
        assert_eq!(
            plan(&taskrun(json!([])), &pipeline_run).unwrap_err().code,
            DenyCode::PipelineUnknown
        );
    }

    #[test]
    fn a_matrix_over_results_is_unverifiable() {
        let mut pipeline_run = image_pipeline();
        let spec = pipeline_run.spec.as_mut().unwrap();
        spec.tasks[1].matrix =
            Some(json!({"params": [{"name": "p", "value": "$(tasks.build.results.list[*])"}]}));
        assert_eq!(
            plan(&taskrun(json!([])), &pipeline_run).unwrap_err().code,
            DenyCode::Unverifiable
        );
    }

    #[test]
    fn results_of_an_upstream_fanned_out_by_a_matrix_are_unverifiable() {
        let mut document = json!({
            "metadata": {"name": "release", "namespace": "ci", "uid": "pr-uid"},
            "status": {
                "pipelineSpec": {"tasks": [
                    {"name": "build", "matrix": {"params": [{"name": "arch", "value": ["amd64", "arm64"]}]}},
                    {"name": "deploy", "params": [{"name": "digests", "value": "$(tasks.build.results.digest[*])"}]}
                ]},
                "childReferences": [
                    {"kind": "TaskRun", "name": "release-build-0", "pipelineTaskName": "build"},
                    {"kind": "TaskRun", "name": "release-build-1", "pipelineTaskName": "build"}
                ]
            }
        });
        let fanned = PipelineRunView::from_json(&document).unwrap();
        assert_eq!(fanned.fanned_out, BTreeSet::from(["build".to_owned()]));
        let denial = plan(&taskrun(json!([])), &fanned).unwrap_err();
        assert_eq!(denial.code, DenyCode::Unverifiable);
        assert!(denial.message.contains("build"), "{}", denial.message);

        // One TaskRun for the task: an ordinary upstream.
        document["status"]["childReferences"]
            .as_array_mut()
            .unwrap()
            .truncate(1);
        let single = PipelineRunView::from_json(&document).unwrap();
        assert!(single.fanned_out.is_empty());
        assert!(matches!(
            plan(&taskrun(json!([])), &single),
            Ok(Planned::Check(_))
        ));
    }

    #[test]
    fn arrays_objects_indexes_and_keys_are_checked() {
        let tags = ParamValue::Array(vec!["v1".into(), "latest".into()]);
        let image = ParamValue::Object(BTreeMap::from([
            ("url".to_owned(), "r/app".to_owned()),
            ("digest".to_owned(), DIGEST.to_owned()),
        ]));
        let pipeline_run = pipeline_run(json!([
            {"name": "tags", "value": ["first", "$(tasks.build.results.tags[*])"]},
            {"name": "tag", "value": "$(tasks.build.results.tags[1])"},
            {"name": "ref", "value": "$(tasks.build.results.image.url)@$(tasks.build.results.image.digest)"},
            {"name": "image", "value": "$(tasks.build.results.image[*])"}
        ]));
        let upstream = attested(&[("tags", tags), ("image", image)]);
        let honest = taskrun(json!([
            {"name": "tags", "value": ["first", "v1", "latest"]},
            {"name": "tag", "value": "latest"},
            {"name": "ref", "value": format!("r/app@{DIGEST}")},
            {"name": "image", "value": {"url": "r/app", "digest": DIGEST}}
        ]));
        assert!(matches!(
            decide(&pipeline_run, &honest, upstream.clone()),
            Decision::Allowed { .. }
        ));
        let forged = taskrun(json!([
            {"name": "tags", "value": ["first", "v1", "evil"]},
            {"name": "tag", "value": "latest"},
            {"name": "ref", "value": "r/app@sha256:0bad"},
            {"name": "image", "value": {"url": "r/app", "digest": DIGEST}}
        ]));
        let decision = decide(&pipeline_run, &forged, upstream);
        assert_eq!(
            codes(&decision),
            vec![DenyCode::ValueDiffers, DenyCode::ValueDiffers]
        );
    }

    #[test]
    fn a_pipeline_param_carrying_a_result_reference_is_followed() {
        let pipeline_run = PipelineRunView::from_json(&json!({
            "metadata": {"name": "release", "namespace": "ci", "uid": "pr-uid"},
            "spec": {"params": [{"name": "source", "value": "$(tasks.build.results.IMAGE_DIGEST)"}]},
            "status": {
                "pipelineSpec": {"tasks": [{"name": "deploy", "params": [{"name": "d", "value": "$(params.source)"}]}]},
                "childReferences": [{"kind": "TaskRun", "name": "release-build", "pipelineTaskName": "build"}]
            }
        }))
        .unwrap();
        let forged = taskrun(json!([{"name": "d", "value": "sha256:0bad"}]));
        let decision = decide(
            &pipeline_run,
            &forged,
            attested(&[("IMAGE_DIGEST", string(DIGEST))]),
        );
        assert_eq!(codes(&decision), vec![DenyCode::ValueDiffers]);
    }

    #[test]
    fn every_code_has_a_distinct_wire_name() {
        let names: BTreeSet<&str> = DenyCode::ALL.iter().map(|code| code.as_str()).collect();
        assert_eq!(names.len(), DenyCode::ALL.len());
        for code in DenyCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), json!(code.as_str()));
        }
    }

    proptest! {
        #[test]
        fn only_the_signed_value_is_admitted(
            signed in "[ -~]{0,64}",
            passed in "[ -~]{0,64}",
            prefix in "[a-z/]{0,8}",
        ) {
            let pipeline_run = pipeline_run(json!([{"name": "v", "value": format!("{prefix}$(tasks.build.results.out)")}]));
            let taskrun = taskrun(json!([{"name": "v", "value": format!("{prefix}{passed}")}]));
            let decision = decide(&pipeline_run, &taskrun, attested(&[("out", string(&signed))]));
            prop_assert_eq!(matches!(decision, Decision::Allowed { .. }), passed == signed);
        }
    }
}
