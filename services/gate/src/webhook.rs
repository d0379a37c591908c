//! The validating admission webhook: `AdmissionReview` (`admission.k8s.io/v1`) in, the same
//! out, for TaskRun CREATE.
//!
//! A review is read only up to `webhook.max_body_bytes` and must be a v1 `AdmissionReview` with a
//! request (else 400, which the API server counts as a webhook failure: with
//! `failurePolicy: Fail`, denied). The namespace's mode comes from its label, read from the
//! namespace cache ([`crate::cluster`]): `off` admits without looking; otherwise the TaskRun is
//! judged by [`crate::decide`], with every object and verdict read from memory (waiting, up to
//! `policy.verdict_wait` in all, for what has not arrived yet). `enforce` denies with a 403 whose
//! message lists each denial (`<code>: <message>`); `warn` admits with one admission warning per
//! denial.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use countersign_events::data::{AdmittedKind, GateDenial, GateModeSnapshot};
use countersign_identity::intoto::Verdict;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::cluster::{Cache, GateMode, NamespaceEntry, TaskRunEntry};
use crate::decide::{AttestedUpstream, Decision, Denial, DenyCode, Planned, Upstream, plan};
use crate::decisions::{CheckedAdmission, DecisionEvents};
use crate::metrics::GateMetrics;
use crate::pipeline::{PipelineRunView, TaskRunAdmission};
use crate::pod::{POD_POLICY_LABEL, PodPolicy, Producer, decide_pod, pod_images};
use crate::replica::Replica;

/// The path the ValidatingWebhookConfiguration calls for TaskRuns.
pub const TASKRUNS_PATH: &str = "/validate/taskruns";
/// The path the ValidatingWebhookConfiguration calls for Pods.
pub const PODS_PATH: &str = "/validate/pods";

/// What the webhook reads from.
#[derive(Debug, Clone)]
pub struct Gate {
    /// Attestations by UID.
    pub replica: Replica,
    /// PipelineRuns.
    pub pipeline_runs: Cache<PipelineRunView>,
    /// TaskRuns.
    pub taskruns: Cache<TaskRunEntry>,
    /// Namespaces.
    pub namespaces: Cache<NamespaceEntry>,
    /// The bound on waiting.
    pub verdict_wait: Duration,
    /// The namespace label naming the mode.
    pub mode_label: Arc<str>,
    /// The mode of an unlabelled namespace.
    pub default_mode: GateMode,
    /// Metrics.
    pub metrics: GateMetrics,
    /// Where each checked decision goes (the bus, through a bounded queue).
    pub decisions: DecisionEvents,
}

/// The part of an `AdmissionReview` the gate reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdmissionReview {
    api_version: String,
    kind: String,
    request: Option<AdmissionRequest>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdmissionRequest {
    uid: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    operation: String,
    #[serde(default)]
    object: Option<Value>,
}

/// What the gate answers one review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Admit.
    Allow,
    /// Admit, with warnings.
    AllowWithWarnings(Vec<String>),
    /// Deny, with this message.
    Deny(String),
}

/// How an admission ended, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to check (not a PipelineRun's TaskRun, no result read, mode `off`, not CREATE).
    Skipped,
    /// Every read result checked and admitted.
    Admitted,
    /// Denied (`enforce`).
    Denied,
    /// Admitted with warnings (`warn`).
    Warned,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Skipped => "skipped",
            Outcome::Admitted => "admitted",
            Outcome::Denied => "denied",
            Outcome::Warned => "warned",
        }
    }
}

/// The webhook's router.
pub fn router(gate: Arc<Gate>, max_body_bytes: usize) -> Router {
    Router::new()
        .route(TASKRUNS_PATH, post(review_taskrun))
        .route(PODS_PATH, post(review_pod))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(gate)
}

/// The request of a v1 AdmissionReview, or the 400 answer to a body that is not one.
fn read_review(body: &[u8]) -> Result<AdmissionRequest, (StatusCode, String)> {
    let review: AdmissionReview = serde_json::from_slice(body).map_err(|error| {
        (
            StatusCode::BAD_REQUEST,
            format!("not an AdmissionReview: {error}"),
        )
    })?;
    if review.api_version != "admission.k8s.io/v1" || review.kind != "AdmissionReview" {
        return Err((
            StatusCode::BAD_REQUEST,
            "not an admission.k8s.io/v1 AdmissionReview".to_owned(),
        ));
    }
    review.request.ok_or_else(|| {
        (
            StatusCode::BAD_REQUEST,
            "the AdmissionReview has no request".to_owned(),
        )
    })
}

async fn review_pod(State(gate): State<Arc<Gate>>, body: axum::body::Bytes) -> Response {
    let started = Instant::now();
    let request = match read_review(&body) {
        Ok(request) => request,
        Err(refused) => return refused.into_response(),
    };
    let (outcome, answer, denials) = gate.judge_pod(&request);
    gate.metrics.observe(outcome, started.elapsed());
    let response = Json(response_json(&request.uid, &answer)).into_response();
    gate.record(AdmittedKind::Pod, &request, outcome, denials);
    response
}

async fn review_taskrun(State(gate): State<Arc<Gate>>, body: axum::body::Bytes) -> Response {
    let started = Instant::now();
    let request = match read_review(&body) {
        Ok(request) => request,
        Err(refused) => return refused.into_response(),
    };
    let (outcome, answer, denials) = gate.judge_taskrun(&request).await;
    gate.metrics.observe(outcome, started.elapsed());
    let response = Json(response_json(&request.uid, &answer)).into_response();
    gate.record(AdmittedKind::TaskRun, &request, outcome, denials);
    response
}

fn response_json(uid: &str, answer: &Answer) -> Value {
    let response = match answer {
        Answer::Allow => json!({"uid": uid, "allowed": true}),
        Answer::AllowWithWarnings(warnings) => {
            json!({"uid": uid, "allowed": true, "warnings": warnings})
        }
        Answer::Deny(message) => json!({
            "uid": uid,
            "allowed": false,
            "status": {"code": 403, "reason": "Forbidden", "message": message}
        }),
    };
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
}

/// The message of a denial, as the API server shows it.
pub fn denial_line(denial: &Denial) -> String {
    format!("countersign gate: {}: {}", denial.code, denial.message)
}

impl Gate {
    /// The mode of `namespace`.
    pub fn mode(&self, namespace: &str) -> GateMode {
        self.namespaces
            .get("", namespace)
            .and_then(|entry| {
                entry
                    .labels
                    .get(&*self.mode_label)
                    .and_then(|value| GateMode::parse(value))
            })
            .unwrap_or(self.default_mode)
    }

    /// The Pod policy of `namespace` (label `countersign.dev/images`).
    pub fn pod_policy(&self, namespace: &str) -> PodPolicy {
        let entry = self.namespaces.get("", namespace);
        PodPolicy::parse(
            entry
                .as_ref()
                .and_then(|entry| entry.labels.get(POD_POLICY_LABEL))
                .map(String::as_str),
        )
    }

    /// The TaskRuns whose results name `digest`, with their verdicts.
    pub fn producers(&self, digest: &str) -> Vec<Producer> {
        self.taskruns
            .indexed(digest)
            .into_iter()
            .flat_map(|((namespace, name), entry)| {
                let record = self.replica.get(&entry.uid);
                entry
                    .artifacts
                    .iter()
                    .filter(|artifact| artifact.digest == digest)
                    .map(|artifact| Producer {
                        taskrun: format!("{namespace}/{name}"),
                        verdict: record.as_ref().map(|record| record.verdict),
                        result_signed: record.as_ref().is_some_and(|record| {
                            record.signed_results.get(&artifact.result)
                                == entry.result_digest(&artifact.result).as_ref()
                        }),
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn judge_pod(&self, request: &AdmissionRequest) -> (Outcome, Answer, Vec<GateDenial>) {
        let namespace = request.namespace.clone().unwrap_or_default();
        let policy = self.pod_policy(&namespace);
        let mode = self.mode(&namespace);
        if policy == PodPolicy::Off || mode == GateMode::Off || request.operation == "DELETE" {
            return (Outcome::Skipped, Answer::Allow, Vec::new());
        }
        let images = request.object.as_ref().map(pod_images).unwrap_or_default();
        let denials = decide_pod(&images, policy, |digest| self.producers(digest));
        if denials.is_empty() {
            return (Outcome::Admitted, Answer::Allow, Vec::new());
        }
        let events = denials
            .iter()
            .map(|denial| GateDenial {
                code: denial.code.as_str().to_owned(),
                message: denial.message.clone(),
                upstream_taskrun: None,
                result: None,
            })
            .collect();
        let lines: Vec<String> = denials
            .iter()
            .map(|denial| {
                format!(
                    "countersign gate: {}: {}",
                    denial.code.as_str(),
                    denial.message
                )
            })
            .collect();
        match mode {
            GateMode::Warn => (Outcome::Warned, Answer::AllowWithWarnings(lines), events),
            _ => (Outcome::Denied, Answer::Deny(lines.join("; ")), events),
        }
    }

    async fn judge_taskrun(
        &self,
        request: &AdmissionRequest,
    ) -> (Outcome, Answer, Vec<GateDenial>) {
        if request.operation != "CREATE" {
            return (Outcome::Skipped, Answer::Allow, Vec::new());
        }
        let namespace = request.namespace.clone().unwrap_or_default();
        let mode = self.mode(&namespace);
        if mode == GateMode::Off {
            return (Outcome::Skipped, Answer::Allow, Vec::new());
        }
        let decision = match request.object.as_ref().map(TaskRunAdmission::from_json) {
            Some(Ok(mut taskrun)) => {
                if taskrun.namespace.is_empty() {
                    taskrun.namespace = namespace.clone();
                }
                self.decide_taskrun(&taskrun).await
            }
            _ => Some(Decision::Denied(vec![Denial {
                code: DenyCode::Unverifiable,
                upstream_task: None,
                upstream_taskrun: None,
                result: None,
                param: None,
                message: "the admitted object is not a tekton.dev/v1 TaskRun".to_owned(),
            }])),
        };
        let events = |denials: &[Denial]| -> Vec<GateDenial> {
            denials
                .iter()
                .map(|denial| GateDenial {
                    code: denial.code.to_string(),
                    message: denial.message.clone(),
                    // `{namespace}/{name}`, as the event's contract says (an upstream TaskRun is
                    // always in the downstream's namespace).
                    upstream_taskrun: denial
                        .upstream_taskrun
                        .as_ref()
                        .map(|name| format!("{namespace}/{name}")),
                    result: denial.result.clone(),
                })
                .collect()
        };
        match (decision, mode) {
            (None, _) => (Outcome::Skipped, Answer::Allow, Vec::new()),
            (Some(Decision::Allowed { .. }), _) => (Outcome::Admitted, Answer::Allow, Vec::new()),
            (Some(Decision::Denied(denials)), GateMode::Warn) => (
                Outcome::Warned,
                Answer::AllowWithWarnings(denials.iter().map(denial_line).collect()),
                events(&denials),
            ),
            (Some(Decision::Denied(denials)), _) => {
                for denial in &denials {
                    tracing::info!(code = %denial.code, message = %denial.message, "TaskRun denied");
                }
                (
                    Outcome::Denied,
                    Answer::Deny(
                        denials
                            .iter()
                            .map(denial_line)
                            .collect::<Vec<_>>()
                            .join("; "),
                    ),
                    events(&denials),
                )
            }
        }
    }

    /// Queues the decision event of a checked review (nothing for a skipped one), without waiting.
    fn record(
        &self,
        kind: AdmittedKind,
        request: &AdmissionRequest,
        outcome: Outcome,
        denials: Vec<GateDenial>,
    ) {
        if outcome == Outcome::Skipped {
            return;
        }
        let namespace = request.namespace.clone().unwrap_or_default();
        let name = request
            .object
            .as_ref()
            .and_then(|object| object.pointer("/metadata/name"))
            .and_then(Value::as_str)
            .or(request.name.as_deref())
            .filter(|name| !name.is_empty())
            .unwrap_or(&request.uid)
            .to_owned();
        let mode = match self.mode(&namespace) {
            GateMode::Warn => GateModeSnapshot::Warn,
            _ => GateModeSnapshot::Enforce,
        };
        self.decisions.record(
            outcome,
            CheckedAdmission {
                kind,
                namespace,
                name,
                request_uid: request.uid.clone(),
                mode,
                denials,
            },
        );
    }

    /// The decision on `taskrun`; `None` when there is nothing to check.
    pub async fn decide_taskrun(&self, taskrun: &TaskRunAdmission) -> Option<Decision> {
        let (pipeline_run_name, pipeline_run_uid) = taskrun.pipeline_run.clone()?;
        let deadline = Instant::now() + self.verdict_wait;
        let Some(pipeline_run) = self
            .pipeline_runs
            .wait_for(
                &taskrun.namespace,
                &pipeline_run_name,
                self.verdict_wait,
                |view| view.uid == pipeline_run_uid && view.spec.is_some(),
            )
            .await
        else {
            return Some(Decision::Denied(vec![Denial {
                code: DenyCode::PipelineUnknown,
                upstream_task: None,
                upstream_taskrun: None,
                result: None,
                param: None,
                message: format!(
                    "PipelineRun {}/{pipeline_run_name} (uid {pipeline_run_uid}), which owns TaskRun {}, is unknown or has no Pipeline spec",
                    taskrun.namespace, taskrun.name
                ),
            }]));
        };
        let plan = match plan(taskrun, &pipeline_run) {
            Ok(Planned::NothingToCheck) => return None,
            Ok(Planned::Check(plan)) => plan,
            Err(denial) => return Some(Decision::Denied(vec![*denial])),
        };
        let lookups = plan.upstreams().iter().map(|(task, upstream)| {
            let namespace = taskrun.namespace.clone();
            async move {
                let state = match &upstream.taskrun {
                    None => Upstream::Missing,
                    Some(name) => {
                        self.upstream_state(&namespace, name, &upstream.results, deadline)
                            .await
                    }
                };
                (task.clone(), state)
            }
        });
        let states: BTreeMap<String, Upstream> = futures::future::join_all(lookups)
            .await
            .into_iter()
            .collect();
        Some(plan.decide(taskrun, &states))
    }

    async fn upstream_state(
        &self,
        namespace: &str,
        name: &str,
        results: &std::collections::BTreeSet<String>,
        deadline: Instant,
    ) -> Upstream {
        let remaining = || deadline.saturating_duration_since(Instant::now());
        let Some(entry) = self
            .taskruns
            .wait_for(namespace, name, remaining(), |_| true)
            .await
        else {
            return Upstream::Missing;
        };
        let Some(record) = self.replica.wait_for(&entry.uid, remaining()).await else {
            return Upstream::Pending;
        };
        // The verdict can land before the watch brings the finished TaskRun's results.
        let entry = if record.verdict != Verdict::Rejected
            && results.iter().any(|result| {
                record.signed_results.contains_key(result) && !entry.results.contains_key(result)
            }) {
            let uid = entry.uid.clone();
            self.taskruns
                .wait_for(namespace, name, remaining(), |candidate| {
                    candidate.uid == uid
                        && results.iter().all(|result| {
                            !record.signed_results.contains_key(result)
                                || candidate.results.contains_key(result)
                        })
                })
                .await
                .unwrap_or(entry)
        } else {
            entry
        };
        Upstream::Attested(AttestedUpstream {
            verdict: record.verdict,
            reason: record.reason.clone(),
            signed: record.signed_results.clone(),
            results: entry.results.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use proptest::prelude::*;
    use tower::ServiceExt as _;

    use super::*;

    proptest! {
        /// Whatever the API server (or anyone reaching the port) sends, the body is read as a
        /// review or answered 400; nothing panics.
        #[test]
        fn any_body_is_read_as_a_review_or_refused_with_400(
            bytes in prop::collection::vec(any::<u8>(), 0..300),
            uid in "\\PC{0,40}",
            kind in prop_oneof![Just("AdmissionReview".to_owned()), "\\PC{0,20}"],
            object in prop_oneof![
                Just(serde_json::Value::Null),
                "\\PC{0,40}".prop_map(serde_json::Value::String),
                any::<i64>().prop_map(serde_json::Value::from),
            ],
        ) {
            if let Err((status, _)) = read_review(&bytes) {
                prop_assert_eq!(status, StatusCode::BAD_REQUEST);
            }
            let shaped = serde_json::json!({
                "apiVersion": "admission.k8s.io/v1",
                "kind": kind,
                "request": {"uid": uid, "operation": "CREATE", "object": object},
            });
            if let Err((status, _)) = read_review(shaped.to_string().as_bytes()) {
                prop_assert_eq!(status, StatusCode::BAD_REQUEST);
            }
        }
    }

    fn gate(default_mode: GateMode) -> Arc<Gate> {
        Arc::new(Gate {
            replica: Replica::new(),
            pipeline_runs: Cache::new(),
            taskruns: Cache::new(),
            namespaces: Cache::new(),
            verdict_wait: Duration::from_millis(50),
            mode_label: Arc::from("countersign.dev/gate"),
            default_mode,
            metrics: GateMetrics::new(),
            decisions: DecisionEvents::disabled(GateMetrics::new()),
        })
    }

    async fn review(gate: Arc<Gate>, body: Value) -> (StatusCode, Value) {
        let response = router(gate, 64 * 1024)
            .oneshot(
                Request::post(TASKRUNS_PATH)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    fn admission_review(object: Value) -> Value {
        json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "req-1", "operation": "CREATE", "namespace": "ci",
                "kind": {"group": "tekton.dev", "version": "v1", "kind": "TaskRun"},
                "object": object
            }
        })
    }

    fn owned_taskrun() -> Value {
        json!({
            "apiVersion": "tekton.dev/v1", "kind": "TaskRun",
            "metadata": {
                "name": "release-deploy", "namespace": "ci",
                "labels": {"tekton.dev/pipelineTask": "deploy"},
                "ownerReferences": [{"kind": "PipelineRun", "name": "release", "uid": "u1", "controller": true}]
            },
            "spec": {"params": []}
        })
    }

    #[tokio::test]
    async fn a_taskrun_no_pipelinerun_owns_is_admitted_with_the_request_uid() {
        let (status, answer) = review(
            gate(GateMode::Enforce),
            admission_review(json!({"metadata": {"name": "t"}, "spec": {}})),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer["response"]["uid"], "req-1");
        assert_eq!(answer["response"]["allowed"], true);
        assert_eq!(answer["kind"], "AdmissionReview");
    }

    #[tokio::test]
    async fn an_unknown_pipelinerun_is_denied_in_enforce_and_warned_in_warn() {
        let (_, answer) = review(gate(GateMode::Enforce), admission_review(owned_taskrun())).await;
        assert_eq!(answer["response"]["allowed"], false);
        assert_eq!(answer["response"]["status"]["code"], 403);
        let message = answer["response"]["status"]["message"].as_str().unwrap();
        assert!(
            message.contains(DenyCode::PipelineUnknown.as_str()),
            "{message}"
        );

        let (_, answer) = review(gate(GateMode::Warn), admission_review(owned_taskrun())).await;
        assert_eq!(answer["response"]["allowed"], true);
        let warning = answer["response"]["warnings"][0].as_str().unwrap();
        assert!(
            warning.contains(DenyCode::PipelineUnknown.as_str()),
            "{warning}"
        );

        let (_, answer) = review(gate(GateMode::Off), admission_review(owned_taskrun())).await;
        assert_eq!(answer["response"]["allowed"], true);
        assert!(answer["response"].get("warnings").is_none());
    }

    #[tokio::test]
    async fn an_object_that_is_not_a_taskrun_is_denied() {
        let (_, answer) = review(
            gate(GateMode::Enforce),
            admission_review(
                json!({"metadata": {"name": "t"}, "spec": {"params": [{"name": "x", "value": 1}]}}),
            ),
        )
        .await;
        assert_eq!(answer["response"]["allowed"], false);
        let message = answer["response"]["status"]["message"].as_str().unwrap();
        assert!(
            message.contains(DenyCode::Unverifiable.as_str()),
            "{message}"
        );
    }

    #[tokio::test]
    async fn other_operations_are_admitted() {
        let mut body = admission_review(owned_taskrun());
        body["request"]["operation"] = json!("UPDATE");
        let (_, answer) = review(gate(GateMode::Enforce), body).await;
        assert_eq!(answer["response"]["allowed"], true);
    }

    #[tokio::test]
    async fn what_is_not_a_v1_review_or_is_too_large_is_refused() {
        let (status, _) = review(gate(GateMode::Enforce), json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {}})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = review(
            gate(GateMode::Enforce),
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let huge = admission_review(json!({"metadata": {"name": "x".repeat(70 * 1024)}}));
        let (status, _) = review(gate(GateMode::Enforce), huge).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn a_pod_running_an_image_a_rejected_taskrun_built_is_denied_where_the_namespace_asks() {
        const DIGEST: &str =
            "sha256:5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c";
        let gate = gate(GateMode::Enforce);
        let namespace: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "ci", "labels": {"countersign.dev/images": "deny-rejected"}}
        }))
        .unwrap();
        gate.namespaces.apply(&namespace);
        let taskrun: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "tekton.dev/v1", "kind": "TaskRun",
            "metadata": {"name": "build", "namespace": "ci", "uid": "u1"},
            "status": {"results": [
                {"name": "IMAGE_URL", "value": "r.example/app"},
                {"name": "IMAGE_DIGEST", "value": DIGEST}
            ]}
        }))
        .unwrap();
        gate.taskruns.apply(&taskrun);
        gate.replica.insert(crate::replica::VerdictRecord {
            namespace: "ci".into(),
            name: "build".into(),
            uid: "u1".into(),
            verdict: Verdict::Rejected,
            reason: Some("signature_invalid".into()),
            signed_results: BTreeMap::new(),
            attestation_digest: "sha256:00".into(),
            attested_at: chrono::Utc::now(),
        });
        let pod = |image: &str| {
            json!({
                "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": {
                    "uid": "req-2", "operation": "CREATE", "namespace": "ci",
                    "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "object": {"spec": {"containers": [{"name": "app", "image": image}]}}
                }
            })
        };
        let response = router(Arc::clone(&gate), 64 * 1024)
            .oneshot(
                Request::post(PODS_PATH)
                    .header("content-type", "application/json")
                    .body(Body::from(
                        serde_json::to_vec(&pod(&format!("r.example/app@{DIGEST}"))).unwrap(),
                    ))
                    .unwrap(),
            )
            .await
            .unwrap();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let answer: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(answer["response"]["allowed"], false);
        let message = answer["response"]["status"]["message"].as_str().unwrap();
        assert!(message.contains("image_from_rejected_taskrun"), "{message}");
        assert!(message.contains("ci/build"), "{message}");

        let response = router(gate, 64 * 1024)
            .oneshot(
                Request::post(PODS_PATH)
                    .header("content-type", "application/json")
                    .body(Body::from(
                        serde_json::to_vec(&pod("busybox:1.36")).unwrap(),
                    ))
                    .unwrap(),
            )
            .await
            .unwrap();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let answer: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(answer["response"]["allowed"], true);
    }

    #[test]
    fn a_namespace_label_selects_the_mode() {
        let gate = gate(GateMode::Enforce);
        let namespace: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "team", "labels": {"countersign.dev/gate": "warn"}}
        }))
        .unwrap();
        gate.namespaces.apply(&namespace);
        assert_eq!(gate.mode("team"), GateMode::Warn);
        assert_eq!(gate.mode("other"), GateMode::Enforce);
    }
}
