//! The lifecycle transitions a TaskRun has gone through, derived from a snapshot of it and its
//! pod: a pure function shared by the Kubernetes source and the CloudEvents ingress, so both
//! produce the same events with the same ids.
//!
//! From a `(TaskRun, Option<Pod>)` pair, [`derive_transitions`] returns, in lifecycle order:
//!
//! 1. `created`, always;
//! 2. `scheduled`, once the pod has a UID and a node;
//! 3. `step-completed` for each step whose container terminated (pod known), in step order;
//! 4. `finished`, once the `Succeeded` condition is `True` or `False`.
//!
//! The derivation is cumulative (a later snapshot implies every earlier transition), so observing
//! only the last state of a TaskRun still yields all of its transitions; which of them were already
//! published is not its concern (see [`crate::emit`]).
//!
//! A step's result set is its termination message exactly as the step wrote it: the pod
//! container's message (`tknz:` compression decoded) when the pod is known and the container
//! terminated, else the TaskRun's `status.steps[].terminated.message` (which Tekton rewrites: keys
//! sorted, internal entries removed; the signed values are the same).

use countersign_events::LifecycleEvent;
use countersign_events::data::{
    Outcome, PodRef, ResultType, StepCompleted, StepRecord, TaskRunCreated, TaskRunDeleted,
    TaskRunFinished, TaskRunRef, TaskRunResult, TaskRunScheduled, TerminationEntry,
};
use countersign_identity::spiffe_id::{SpiffeIdBuildError, TrustDomain, taskrun_spiffe_id};
use countersign_identity::tekton::TerminationMessage;

use countersign_tekton::{
    STEP_CONTAINER_PREFIX, TaskRun, TaskRunPod, parse_go_duration, parse_time,
};

/// The key of the entrypoint's internal `StartedAt` entry.
const STARTED_AT_KEY: &str = "StartedAt";
/// The reason of a cancelled TaskRun.
const REASON_CANCELLED: &str = "TaskRunCancelled";
/// The reason of a TaskRun that timed out.
const REASON_TIMED_OUT: &str = "TaskRunTimeout";
/// The service account Kubernetes uses when none is named.
const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// What every derivation needs from the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct DeriveSettings {
    /// The cluster name that goes into every [`TaskRunRef`].
    pub cluster: String,
    /// The SPIRE trust domain of the TaskRun SPIFFE IDs (Tekton's `spire-trust-domain`).
    pub trust_domain: TrustDomain,
}

/// The transitions of one TaskRun snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Derived {
    /// The TaskRun.
    pub taskrun: TaskRunRef,
    /// Its pod, when known.
    pub pod: Option<PodRef>,
    /// Every transition the snapshot implies, in lifecycle order.
    pub transitions: Vec<LifecycleEvent>,
    /// The steps whose termination message could not be parsed (their result set is left empty).
    pub malformed_steps: Vec<String>,
}

/// Why a snapshot yields no transitions.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum DeriveError {
    /// A field every TaskRun has is missing.
    #[error("the TaskRun has no {field}")]
    MissingField {
        /// The field (`metadata.uid`...).
        field: &'static str,
    },
    /// `metadata.creationTimestamp` is missing.
    #[error("the TaskRun has no metadata.creationTimestamp")]
    MissingCreationTimestamp,
    /// The TaskRun's SPIFFE ID cannot be built from its namespace and name.
    #[error("the TaskRun's SPIFFE ID cannot be built")]
    SpiffeId(#[source] SpiffeIdBuildError),
}

/// The reference of a TaskRun in events, from its metadata.
pub fn taskrun_ref(
    settings: &DeriveSettings,
    taskrun: &TaskRun,
) -> Result<TaskRunRef, DeriveError> {
    let field = |value: Option<&String>, field: &'static str| {
        value
            .filter(|value| !value.is_empty())
            .cloned()
            .ok_or(DeriveError::MissingField { field })
    };
    Ok(TaskRunRef {
        cluster: settings.cluster.clone(),
        namespace: field(taskrun.metadata.namespace.as_ref(), "metadata.namespace")?,
        name: field(taskrun.metadata.name.as_ref(), "metadata.name")?,
        uid: field(taskrun.metadata.uid.as_ref(), "metadata.uid")?,
    })
}

/// Every transition the snapshot `(taskrun, pod)` implies, in lifecycle order. A pod that does
/// not belong to the TaskRun is ignored.
pub fn derive_transitions(
    settings: &DeriveSettings,
    taskrun: &TaskRun,
    pod: Option<&TaskRunPod>,
) -> Result<Derived, DeriveError> {
    let reference = taskrun_ref(settings, taskrun)?;
    let created_at = taskrun
        .created_at()
        .ok_or(DeriveError::MissingCreationTimestamp)?;
    let spiffe_id = taskrun_spiffe_id(
        &settings.trust_domain,
        &reference.namespace,
        &reference.name,
    )
    .map_err(DeriveError::SpiffeId)?
    .to_string();
    let timeout_seconds = taskrun
        .spec
        .timeout
        .as_deref()
        .and_then(parse_go_duration)
        .map(|timeout| timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0));
    let pod = pod.filter(|pod| pod.belongs_to(&reference.uid));
    let pod_ref = pod.and_then(|pod| {
        Some(PodRef {
            name: pod.metadata.name.clone()?,
            uid: pod.uid()?.to_owned(),
        })
    });

    let mut transitions = vec![LifecycleEvent::Created(TaskRunCreated {
        taskrun: reference.clone(),
        created_at,
        service_account: taskrun.spec.service_account_name.clone(),
        timeout_seconds,
        task_name: taskrun
            .spec
            .task_ref
            .as_ref()
            .and_then(|task_ref| task_ref.name.clone()),
    })];

    if let (Some(pod), Some(pod_ref)) = (pod, &pod_ref)
        && let Some(node_name) = pod.node_name()
    {
        let service_account = pod
            .spec
            .as_ref()
            .and_then(|spec| spec.service_account_name.clone())
            .or_else(|| taskrun.spec.service_account_name.clone())
            .unwrap_or_else(|| DEFAULT_SERVICE_ACCOUNT.to_owned());
        transitions.push(LifecycleEvent::Scheduled(TaskRunScheduled {
            taskrun: reference.clone(),
            taskrun_created_at: created_at,
            pod: pod_ref.clone(),
            node_name: node_name.to_owned(),
            service_account,
            spiffe_id: spiffe_id.clone(),
            timeout_seconds,
        }));
    }

    let (steps, malformed_steps) = step_records(taskrun, pod);
    if let Some(pod_ref) = &pod_ref {
        transitions.extend(steps.iter().map(|step| {
            LifecycleEvent::StepCompleted(StepCompleted {
                taskrun: reference.clone(),
                taskrun_created_at: created_at,
                pod: pod_ref.clone(),
                spiffe_id: spiffe_id.clone(),
                step: step.clone(),
            })
        }));
    }

    if let Some(outcome) = outcome_of(taskrun) {
        let condition = taskrun.succeeded_condition();
        let status = taskrun.status.as_ref();
        transitions.push(LifecycleEvent::Finished(TaskRunFinished {
            taskrun: reference.clone(),
            taskrun_created_at: created_at,
            pod: pod_ref.clone(),
            spiffe_id: taskrun.pod_name().map(|_| spiffe_id.clone()),
            outcome,
            reason: condition
                .and_then(|condition| condition.reason.clone())
                .unwrap_or_default(),
            message: condition
                .and_then(|condition| condition.message.clone())
                .unwrap_or_default(),
            started_at: status
                .and_then(|status| status.start_time.as_deref())
                .and_then(parse_time),
            completed_at: status
                .and_then(|status| status.completion_time.as_deref())
                .and_then(parse_time),
            results: status
                .map(|status| status.results.iter().map(taskrun_result).collect())
                .unwrap_or_default(),
            steps,
            oversized: None,
            declared_results: status
                .and_then(|status| status.task_spec.as_ref())
                .map(|spec| {
                    spec.results
                        .iter()
                        .map(|result| result.name.clone())
                        .collect()
                })
                .unwrap_or_default(),
        }));
    }

    Ok(Derived {
        taskrun: reference,
        pod: pod_ref,
        transitions,
        malformed_steps,
    })
}

/// The `deleted` transition of a TaskRun.
pub fn deleted_transition(taskrun: TaskRunRef, pod: Option<PodRef>) -> LifecycleEvent {
    LifecycleEvent::Deleted(TaskRunDeleted { taskrun, pod })
}

/// How the TaskRun ended, once its `Succeeded` condition is final: `True` is succeeded; `False`
/// is cancelled (`TaskRunCancelled`), timed out (`TaskRunTimeout`) or failed (any other reason).
pub fn outcome_of(taskrun: &TaskRun) -> Option<Outcome> {
    let condition = taskrun.succeeded_condition()?;
    match condition.status.as_str() {
        "True" => Some(Outcome::Succeeded),
        "False" => Some(match condition.reason.as_deref() {
            Some(REASON_CANCELLED) => Outcome::Cancelled,
            Some(REASON_TIMED_OUT) => Outcome::TimedOut,
            _ => Outcome::Failed,
        }),
        _ => None,
    }
}

fn taskrun_result(result: &countersign_tekton::ResultStatus) -> TaskRunResult {
    let declared = match result.result_type.as_deref() {
        Some("string") => Some(ResultType::String),
        Some("array") => Some(ResultType::Array),
        Some("object") => Some(ResultType::Object),
        _ => None,
    };
    let inferred = match &result.value {
        serde_json::Value::Array(_) => ResultType::Array,
        serde_json::Value::Object(_) => ResultType::Object,
        _ => ResultType::String,
    };
    TaskRunResult {
        name: result.name.clone(),
        r#type: declared.unwrap_or(inferred),
        value: result.value.clone(),
    }
}

/// Every step whose container terminated, in step order (the TaskRun's `status.steps`, then any
/// other step container of the pod), and the names of the steps whose message did not parse.
fn step_records(taskrun: &TaskRun, pod: Option<&TaskRunPod>) -> (Vec<StepRecord>, Vec<String>) {
    let taskrun_steps = taskrun
        .status
        .as_ref()
        .map(|status| status.steps.as_slice())
        .unwrap_or_default();
    let mut order: Vec<(String, String)> = taskrun_steps
        .iter()
        .map(|step| {
            let container = step
                .container
                .clone()
                .unwrap_or_else(|| format!("{STEP_CONTAINER_PREFIX}{}", step.name));
            (step.name.clone(), container)
        })
        .collect();
    if let Some(pod) = pod {
        for container in pod.step_containers() {
            if !order.iter().any(|(_, known)| known == container) {
                let name = container
                    .strip_prefix(STEP_CONTAINER_PREFIX)
                    .unwrap_or(container);
                order.push((name.to_owned(), container.to_owned()));
            }
        }
    }

    let mut records = Vec::new();
    let mut malformed = Vec::new();
    for (name, container) in order {
        let from_pod = pod.and_then(|pod| pod.terminated_container(&container));
        let from_taskrun = taskrun_steps
            .iter()
            .find(|step| step.name == name)
            .and_then(|step| step.terminated.as_ref());
        let Some(terminated) = from_pod.or(from_taskrun) else {
            continue;
        };
        // The pod's message is the one the step wrote; the TaskRun's is Tekton's rewrite of it.
        let parsed = [from_pod, from_taskrun]
            .into_iter()
            .flatten()
            .find_map(|candidate| parse_message(candidate.message.as_deref()));
        let entries = match parsed {
            Some(entries) => entries,
            None => {
                malformed.push(name.clone());
                Vec::new()
            }
        };
        let started_at = entries
            .iter()
            .find(|entry| entry.key == STARTED_AT_KEY && entry.r#type == 3)
            .and_then(|entry| parse_time(&entry.value))
            .or_else(|| terminated.started_at.as_deref().and_then(parse_time));
        records.push(StepRecord {
            name,
            container,
            exit_code: terminated.exit_code,
            started_at,
            finished_at: terminated.finished_at.as_deref().and_then(parse_time),
            results: entries,
        });
    }
    (records, malformed)
}

/// The entries of a termination message, `None` when it does not parse. An absent or empty
/// message is an empty result set.
fn parse_message(message: Option<&str>) -> Option<Vec<TerminationEntry>> {
    let message = TerminationMessage::parse(message.unwrap_or_default()).ok()?;
    message
        .entries()
        .iter()
        .map(|entry| {
            Some(TerminationEntry {
                key: entry.key.clone(),
                value: entry.value.clone(),
                r#type: u8::try_from(entry.result_type.as_i64()).ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use countersign_events::EventPayload;
    use countersign_identity::tekton::termination::compress;
    use countersign_tekton::{ContainerStateView, ContainerStatusView, PodStatusView, Terminated};

    use super::*;
    use crate::store::Settle as _;

    fn fixture(path: &str) -> serde_json::Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/tekton")
            .join(path);
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn taskrun(file: &str) -> TaskRun {
        serde_json::from_value(fixture(&format!("taskrun/{file}"))).unwrap()
    }

    fn cloudevent_taskrun(file: &str) -> TaskRun {
        serde_json::from_value(fixture(&format!("cloudevents/{file}"))["data"]["taskRun"].clone())
            .unwrap()
    }

    fn pod() -> TaskRunPod {
        serde_json::from_value(fixture("pod/taskrun-pod-spire-trimmed.json")).unwrap()
    }

    fn settings() -> DeriveSettings {
        DeriveSettings {
            cluster: "prod".into(),
            trust_domain: TrustDomain::new("example.org").unwrap(),
        }
    }

    /// The event ids of the transitions, without the TaskRun UID.
    fn ids(derived: &Derived) -> Vec<String> {
        derived
            .transitions
            .iter()
            .map(|transition| {
                transition
                    .event_id()
                    .trim_start_matches("6f1c2b8e-4d3a-4e7f-9a51-2c8d0e7b3f14:")
                    .to_owned()
            })
            .collect()
    }

    const POD_UID: &str = "b3e9a0d2-7c41-4f6b-8e25-9d1a6c0f4e83";

    fn validate(derived: &Derived) {
        for transition in &derived.transitions {
            let json: serde_json::Value =
                serde_json::from_slice(&transition.to_json().unwrap()).unwrap();
            countersign_events::schema::validate(transition.event_type(), &json).unwrap();
        }
    }

    #[test]
    fn a_pending_taskrun_without_its_pod_is_created() {
        let derived =
            derive_transitions(&settings(), &taskrun("taskrun-01-pending.json"), None).unwrap();
        assert_eq!(ids(&derived), ["created"]);
        let LifecycleEvent::Created(created) = &derived.transitions[0] else {
            panic!("created first");
        };
        assert_eq!(created.timeout_seconds, Some(3600));
        assert_eq!(created.task_name.as_deref(), Some("build-push"));
        assert_eq!(created.service_account.as_deref(), Some("default"));
        assert_eq!(created.taskrun.cluster, "prod");
        validate(&derived);
    }

    #[test]
    fn a_scheduled_pod_yields_scheduled_with_the_spiffe_id_and_node() {
        let derived = derive_transitions(
            &settings(),
            &taskrun("taskrun-01-pending.json"),
            Some(&pod()),
        )
        .unwrap();
        assert_eq!(ids(&derived), ["created", &format!("scheduled:{POD_UID}")]);
        let LifecycleEvent::Scheduled(scheduled) = &derived.transitions[1] else {
            panic!("scheduled second");
        };
        assert_eq!(scheduled.node_name, "kind-worker");
        assert_eq!(
            scheduled.spiffe_id,
            "spiffe://example.org/ns/default/taskrun/build-push-run-x7k2p"
        );
        assert_eq!(scheduled.pod.name, "build-push-run-x7k2p-pod");
        validate(&derived);
    }

    #[test]
    fn an_unscheduled_or_foreign_pod_yields_no_scheduled() {
        let mut unscheduled = pod();
        unscheduled.spec.as_mut().unwrap().node_name = None;
        let derived = derive_transitions(
            &settings(),
            &taskrun("taskrun-01-pending.json"),
            Some(&unscheduled),
        )
        .unwrap();
        assert_eq!(ids(&derived), ["created"]);

        let mut foreign = pod();
        foreign.taskrun_uids = vec!["another-taskrun".into()];
        let derived = derive_transitions(
            &settings(),
            &taskrun("taskrun-01-pending.json"),
            Some(&foreign),
        )
        .unwrap();
        assert_eq!(
            ids(&derived),
            ["created"],
            "a pod not owned by the TaskRun is ignored"
        );
    }

    #[test]
    fn a_running_taskrun_yields_its_terminated_steps() {
        let derived = derive_transitions(
            &settings(),
            &taskrun("taskrun-02-running.json"),
            Some(&pod()),
        )
        .unwrap();
        assert_eq!(
            ids(&derived),
            [
                "created".to_owned(),
                format!("scheduled:{POD_UID}"),
                format!("step-completed:{POD_UID}:clone"),
            ]
        );
        let LifecycleEvent::StepCompleted(step) = &derived.transitions[2] else {
            panic!("a step");
        };
        assert_eq!(step.step.container, "step-clone");
        assert_eq!(step.step.results.len(), 1);
        assert_eq!(step.step.results[0].key, "commit");
        assert_eq!(step.step.results[0].r#type, 1);
        validate(&derived);
    }

    #[test]
    fn a_succeeded_taskrun_is_finished_with_results_steps_and_declared_results() {
        let derived = derive_transitions(
            &settings(),
            &taskrun("taskrun-03-succeeded.json"),
            Some(&pod()),
        )
        .unwrap();
        assert_eq!(
            ids(&derived),
            [
                "created".to_owned(),
                format!("scheduled:{POD_UID}"),
                format!("step-completed:{POD_UID}:clone"),
                format!("step-completed:{POD_UID}:build"),
                "finished".to_owned(),
            ]
        );
        let LifecycleEvent::Finished(finished) = derived.transitions.last().unwrap() else {
            panic!("finished last");
        };
        assert_eq!(finished.outcome, Outcome::Succeeded);
        assert_eq!(finished.reason, "Succeeded");
        assert_eq!(finished.results.len(), 4);
        assert_eq!(finished.results[2].r#type, ResultType::Object);
        assert_eq!(finished.results[3].r#type, ResultType::Array);
        assert_eq!(finished.steps.len(), 2);
        assert_eq!(finished.steps[1].results.len(), 4);
        assert_eq!(
            finished.declared_results,
            ["commit", "IMAGE_DIGEST", "image", "tags"]
        );
        assert_eq!(finished.pod.as_ref().unwrap().uid, POD_UID);
        assert!(finished.spiffe_id.is_some());
        assert!(finished.completed_at.is_some());
        validate(&derived);
    }

    #[test]
    fn outcomes_follow_the_succeeded_condition_and_its_reason() {
        let failed = taskrun("taskrun-04-failed.json");
        assert_eq!(outcome_of(&failed), Some(Outcome::Failed));
        let mut cancelled = failed.clone();
        let condition =
            &mut std::sync::Arc::make_mut(cancelled.status.as_mut().unwrap()).conditions[0];
        condition.reason = Some("TaskRunCancelled".into());
        assert_eq!(outcome_of(&cancelled), Some(Outcome::Cancelled));
        let mut timed_out = failed.clone();
        std::sync::Arc::make_mut(timed_out.status.as_mut().unwrap()).conditions[0].reason =
            Some("TaskRunTimeout".into());
        assert_eq!(outcome_of(&timed_out), Some(Outcome::TimedOut));
        assert_eq!(outcome_of(&taskrun("taskrun-02-running.json")), None);
        assert_eq!(
            outcome_of(&taskrun("taskrun-03-succeeded.json")),
            Some(Outcome::Succeeded)
        );

        let derived = derive_transitions(&settings(), &failed, Some(&pod())).unwrap();
        let LifecycleEvent::Finished(finished) = derived.transitions.last().unwrap() else {
            panic!("finished last");
        };
        assert_eq!(finished.reason, "StepFailed");
        assert_eq!(finished.steps[1].exit_code, 1);
        assert_eq!(finished.results.len(), 1);
        validate(&derived);
    }

    #[test]
    fn the_pods_own_message_wins_and_tknz_is_decoded() {
        let raw = r#"[{"key":"commit","value":"abc","type":1},{"key":"SVID","value":"-----BEGIN CERTIFICATE-----\n","type":1},{"key":"StartedAt","value":"2026-08-20T10:00:05.123Z","type":3}]"#;
        let mut pod = pod();
        pod.status = Some(std::sync::Arc::new(PodStatusView {
            container_statuses: vec![ContainerStatusView {
                name: "step-clone".into(),
                state: Some(ContainerStateView {
                    terminated: Some(Terminated {
                        exit_code: 0,
                        message: Some(compress(raw.as_bytes())),
                        started_at: Some("2026-08-20T10:00:04Z".into()),
                        finished_at: Some("2026-08-20T10:00:09Z".into()),
                    }),
                }),
            }],
        }));
        let derived =
            derive_transitions(&settings(), &taskrun("taskrun-01-pending.json"), Some(&pod))
                .unwrap();
        let LifecycleEvent::StepCompleted(step) = &derived.transitions[2] else {
            panic!("a step from the pod alone");
        };
        let keys: Vec<&str> = step
            .step
            .results
            .iter()
            .map(|entry| entry.key.as_str())
            .collect();
        assert_eq!(
            keys,
            ["commit", "SVID", "StartedAt"],
            "written order, internal entry kept"
        );
        assert_eq!(
            step.step.started_at,
            parse_time("2026-08-20T10:00:05.123Z"),
            "the entrypoint's StartedAt"
        );
        validate(&derived);
    }

    #[test]
    fn a_malformed_message_falls_back_to_the_taskrun_and_is_reported() {
        let mut pod = pod();
        pod.status = Some(std::sync::Arc::new(PodStatusView {
            container_statuses: vec![ContainerStatusView {
                name: "step-clone".into(),
                state: Some(ContainerStateView {
                    terminated: Some(Terminated {
                        message: Some("[{\"key\":".into()),
                        ..Terminated::default()
                    }),
                }),
            }],
        }));
        let derived =
            derive_transitions(&settings(), &taskrun("taskrun-02-running.json"), Some(&pod))
                .unwrap();
        let LifecycleEvent::StepCompleted(step) = &derived.transitions[2] else {
            panic!("a step");
        };
        assert_eq!(step.step.results[0].key, "commit", "the TaskRun's message");
        assert!(derived.malformed_steps.is_empty());

        let derived =
            derive_transitions(&settings(), &taskrun("taskrun-01-pending.json"), Some(&pod))
                .unwrap();
        assert_eq!(derived.malformed_steps, ["clone"]);
    }

    #[test]
    fn both_sources_derive_the_same_transitions() {
        for (watched, received) in [
            ("taskrun-01-pending.json", "ce-taskrun-04-unknown.json"),
            ("taskrun-03-succeeded.json", "ce-taskrun-05-successful.json"),
            ("taskrun-04-failed.json", "ce-taskrun-06-failed.json"),
        ] {
            let from_watch =
                derive_transitions(&settings(), &taskrun(watched), Some(&pod())).unwrap();
            let from_event =
                derive_transitions(&settings(), &cloudevent_taskrun(received), Some(&pod()))
                    .unwrap();
            assert_eq!(from_watch, from_event, "{watched} and {received}");
        }
    }

    #[test]
    fn settled_copies_keep_what_ties_them_and_derive_nothing_new() {
        let full_taskrun = taskrun("taskrun-03-succeeded.json");
        let full_pod = pod();
        assert!(!full_taskrun.is_settled() && !full_pod.is_settled());
        let (settled_taskrun, settled_pod) = (full_taskrun.settled(), full_pod.settled());
        assert!(settled_taskrun.is_settled() && settled_pod.is_settled());
        assert_eq!(settled_taskrun.uid(), full_taskrun.uid());
        assert_eq!(settled_taskrun.metadata.name, full_taskrun.metadata.name);
        assert_eq!(settled_pod.taskrun_name(), full_pod.taskrun_name());
        assert!(settled_pod.belongs_to(full_taskrun.uid().unwrap()));

        let full = derive_transitions(&settings(), &full_taskrun, Some(&full_pod)).unwrap();
        let settled =
            derive_transitions(&settings(), &settled_taskrun, Some(&settled_pod)).unwrap();
        assert_eq!(
            ids(&settled),
            ["created"],
            "only what `finished` already follows"
        );
        assert_eq!(settled.transitions[0], full.transitions[0]);
        assert_eq!(settled.pod, full.pod, "the pod recorded stays the same");
        assert!(settled.malformed_steps.is_empty());
    }

    #[test]
    fn the_queued_cloudevent_is_created_only() {
        let derived = derive_transitions(
            &settings(),
            &cloudevent_taskrun("ce-taskrun-01-queued.json"),
            None,
        )
        .unwrap();
        assert_eq!(ids(&derived), ["created"]);
        validate(&derived);
    }

    #[test]
    fn a_taskrun_without_uid_or_creation_time_is_refused() {
        let mut taskrun = taskrun("taskrun-01-pending.json");
        taskrun.metadata.creation_timestamp = None;
        assert_eq!(
            derive_transitions(&settings(), &taskrun, None),
            Err(DeriveError::MissingCreationTimestamp)
        );
        taskrun.metadata.uid = None;
        assert_eq!(
            derive_transitions(&settings(), &taskrun, None),
            Err(DeriveError::MissingField {
                field: "metadata.uid"
            })
        );
    }
}
