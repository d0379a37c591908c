//! Tekton and the kubelet, played through the real API server: the TaskRun (from the fixture
//! `fixtures/tekton/taskrun/taskrun-01-pending.json`) and its Pod (from
//! `fixtures/tekton/pod/taskrun-pod-spire-trimmed.json`) are created, then their statuses are
//! patched step by step as Tekton's reconciler and the kubelet would write them: pending, running,
//! each step's container terminated with its termination message, the TaskRun succeeded with its
//! merged `status.results`.
//!
//! The status documents are built by pure functions ([`taskrun_status`], [`pod_status`],
//! [`merged_results`], [`taskrun_message`]), so their shape is tested without a server.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use countersign_test_support::fixtures_dir;
use countersign_test_support::kube::{FixtureError, taskrun_fixture, taskrun_resource};

/// The TaskRun fixture the demo's TaskRuns are made from.
pub const TASKRUN_FIXTURE: &str = "taskrun-01-pending.json";

/// The Pod fixture the demo's pods are made from (under `fixtures/tekton/`).
pub const POD_FIXTURE: &str = "pod/taskrun-pod-spire-trimmed.json";

/// The type of Tekton's internal `StartedAt` entry in a termination message.
pub const INTERNAL_ENTRY_TYPE: u8 = 3;

/// The type of a TaskRun result entry in a termination message.
pub const RESULT_ENTRY_TYPE: u8 = 1;

/// One entry of a termination message, in Tekton's field order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageEntry {
    pub key: String,
    pub value: String,
    #[serde(rename = "type")]
    pub entry_type: u8,
}

/// A result the Task declares, with its type (`string`, `array`, `object`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredResult {
    pub name: String,
    pub result_type: String,
}

/// A step of the Task, and its container in the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepSpec {
    pub name: String,
    pub container: String,
    pub image: String,
}

/// Where a step is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepState {
    /// The pod is initializing.
    Waiting,
    /// The step's container runs.
    Running { started_at: String },
    /// The step's container terminated.
    Terminated(Terminated),
}

/// A terminated step container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminated {
    pub started_at: String,
    pub finished_at: String,
    pub container_id: String,
    /// The termination message as the step wrote it (what the pod shows).
    pub pod_message: String,
    /// Tekton's rewrite of it (what the TaskRun shows).
    pub taskrun_message: String,
}

/// The TaskRun's `Succeeded` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
}

/// A TaskRun and its pod as created in the API server.
#[derive(Debug, Clone)]
pub struct CreatedTaskRun {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The Task's results in declared order.
    pub declared: Vec<DeclaredResult>,
    /// The Task's steps in order.
    pub steps: Vec<StepSpec>,
    /// `status.taskSpec` and `status.provenance` of the fixture, which Tekton stores once.
    pub status_template: Value,
}

/// A pod as created in the API server.
#[derive(Debug, Clone)]
pub struct CreatedPod {
    pub name: String,
    pub uid: String,
}

/// Why talking to the API server (or reading a fixture) failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("reading the TaskRun fixture")]
    TaskRunFixture(#[source] FixtureError),
    #[error("reading {}", path.display())]
    ReadPodFixture {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {}", path.display())]
    ParsePodFixture {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the fixture has no {what}")]
    FixtureShape { what: &'static str },
    #[error("{action}")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("the API server returned {what} without a uid")]
    NoUid { what: String },
}

/// The API server, as Tekton's controller and the kubelet use it.
#[derive(Clone)]
pub struct Cluster {
    client: kube::Client,
    namespace: String,
    node: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("namespace", &self.namespace)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    pub fn new(client: kube::Client, namespace: &str, node: &str) -> Cluster {
        Cluster {
            client,
            namespace: namespace.to_owned(),
            node: node.to_owned(),
        }
    }

    fn taskruns(&self) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.namespace, &taskrun_resource())
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Creates TaskRun `name` from the fixture (without a status, as a user would).
    pub async fn create_taskrun(&self, name: &str) -> Result<CreatedTaskRun, ClusterError> {
        let fixture = taskrun_fixture(TASKRUN_FIXTURE, &self.namespace)
            .map_err(ClusterError::TaskRunFixture)?;
        let task_spec =
            fixture
                .status
                .get("taskSpec")
                .cloned()
                .ok_or(ClusterError::FixtureShape {
                    what: "status.taskSpec",
                })?;
        let declared = declared_results(&task_spec);
        let steps = step_specs(&task_spec);
        if steps.is_empty() {
            return Err(ClusterError::FixtureShape {
                what: "steps in status.taskSpec",
            });
        }
        let mut object = fixture.object;
        object.metadata.name = Some(name.to_owned());
        object.metadata.generate_name = None;
        let created = self
            .taskruns()
            .create(&PostParams::default(), &object)
            .await
            .map_err(|source| ClusterError::Api {
                action: format!("creating TaskRun {}/{name}", self.namespace),
                source,
            })?;
        let uid = created.metadata.uid.ok_or_else(|| ClusterError::NoUid {
            what: format!("TaskRun {name}"),
        })?;
        Ok(CreatedTaskRun {
            namespace: self.namespace.clone(),
            name: name.to_owned(),
            uid,
            declared,
            steps,
            status_template: json!({
                "taskSpec": task_spec,
                "provenance": fixture.status.get("provenance").cloned().unwrap_or(Value::Null),
            }),
        })
    }

    /// Creates the TaskRun's pod, bound to this cluster's node, from the Pod fixture: Tekton's
    /// labels (`tekton.dev/taskRun`, `tekton.dev/taskRunUID`), an owner reference to the TaskRun,
    /// one container per step.
    pub async fn create_pod(&self, taskrun: &CreatedTaskRun) -> Result<CreatedPod, ClusterError> {
        let path = fixtures_dir().join("tekton").join(POD_FIXTURE);
        let text =
            std::fs::read_to_string(&path).map_err(|source| ClusterError::ReadPodFixture {
                path: path.clone(),
                source,
            })?;
        let fixture: Value =
            serde_json::from_str(&text).map_err(|source| ClusterError::ParsePodFixture {
                path: path.clone(),
                source,
            })?;
        let document = pod_document(&fixture, taskrun, &pod_name(&taskrun.name), &self.node);
        let pod: Pod =
            serde_json::from_value(document).map_err(|source| ClusterError::ParsePodFixture {
                path: path.clone(),
                source,
            })?;
        let name = pod_name(&taskrun.name);
        let created = self
            .pods()
            .create(&PostParams::default(), &pod)
            .await
            .map_err(|source| ClusterError::Api {
                action: format!("creating Pod {}/{name}", self.namespace),
                source,
            })?;
        let uid = created.metadata.uid.ok_or_else(|| ClusterError::NoUid {
            what: format!("Pod {name}"),
        })?;
        Ok(CreatedPod { name, uid })
    }

    /// Replaces what `status` names in the TaskRun's status (a JSON merge patch of the status
    /// subresource, as Tekton's reconciler updates it).
    pub async fn patch_taskrun_status(
        &self,
        name: &str,
        status: Value,
    ) -> Result<(), ClusterError> {
        self.taskruns()
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .map(|_| ())
            .map_err(|source| ClusterError::Api {
                action: format!("updating the status of TaskRun {}/{name}", self.namespace),
                source,
            })
    }

    /// Replaces what `status` names in the pod's status, as the kubelet does.
    pub async fn patch_pod_status(&self, name: &str, status: Value) -> Result<(), ClusterError> {
        self.pods()
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .map(|_| ())
            .map_err(|source| ClusterError::Api {
                action: format!("updating the status of Pod {}/{name}", self.namespace),
                source,
            })
    }

    /// Deletes TaskRun `name` and then its pod `pod` (what the garbage collector would do for
    /// the pod's owner reference; this cluster has no controller-manager). Either already gone
    /// is no error.
    pub async fn delete_taskrun_and_pod(&self, name: &str, pod: &str) -> Result<(), ClusterError> {
        let gone = |result: Result<(), kube::Error>, action: String| match result {
            Ok(()) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(source) => Err(ClusterError::Api { action, source }),
        };
        gone(
            self.taskruns()
                .delete(name, &DeleteParams::default())
                .await
                .map(|_| ()),
            format!("deleting TaskRun {}/{name}", self.namespace),
        )?;
        gone(
            self.pods()
                .delete(pod, &DeleteParams::default())
                .await
                .map(|_| ()),
            format!("deleting Pod {}/{pod}", self.namespace),
        )
    }

    /// The value of annotation `key` on TaskRun `name`, if it has it.
    pub async fn taskrun_annotation(
        &self,
        name: &str,
        key: &str,
    ) -> Result<Option<String>, ClusterError> {
        let taskrun = self
            .taskruns()
            .get(name)
            .await
            .map_err(|source| ClusterError::Api {
                action: format!("reading TaskRun {}/{name}", self.namespace),
                source,
            })?;
        Ok(taskrun
            .metadata
            .annotations
            .and_then(|annotations| annotations.get(key).cloned()))
    }

    /// The node the pods are bound to.
    pub fn node(&self) -> &str {
        &self.node
    }
}

/// Tekton's pod name for a TaskRun.
pub fn pod_name(taskrun: &str) -> String {
    format!("{taskrun}-pod")
}

/// The results `taskSpec` declares, in order.
pub fn declared_results(task_spec: &Value) -> Vec<DeclaredResult> {
    task_spec
        .get("results")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|result| {
            Some(DeclaredResult {
                name: result.get("name")?.as_str()?.to_owned(),
                result_type: result
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("string")
                    .to_owned(),
            })
        })
        .collect()
}

/// The steps `taskSpec` declares, in order, with Tekton's container names.
pub fn step_specs(task_spec: &Value) -> Vec<StepSpec> {
    task_spec
        .get("steps")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|step| {
            let name = step.get("name")?.as_str()?.to_owned();
            Some(StepSpec {
                container: format!("step-{name}"),
                image: step
                    .get("image")
                    .and_then(Value::as_str)
                    .unwrap_or("busybox")
                    .to_owned(),
                name,
            })
        })
        .collect()
}

/// The pod fixture turned into this TaskRun's pod: its name, labels, owner and node; the
/// fixture's step containers kept, its init containers (which name no image) and status dropped.
pub fn pod_document(fixture: &Value, taskrun: &CreatedTaskRun, name: &str, node: &str) -> Value {
    let mut pod = fixture.clone();
    let mut labels = fixture
        .pointer("/metadata/labels")
        .cloned()
        .unwrap_or_else(|| json!({}));
    labels["tekton.dev/taskRun"] = json!(taskrun.name);
    labels["tekton.dev/taskRunUID"] = json!(taskrun.uid);
    pod["metadata"] = json!({
        "name": name,
        "namespace": taskrun.namespace,
        "labels": labels,
        "annotations": fixture.pointer("/metadata/annotations").cloned().unwrap_or_else(|| json!({})),
        "ownerReferences": [{
            "apiVersion": "tekton.dev/v1",
            "kind": "TaskRun",
            "name": taskrun.name,
            "uid": taskrun.uid,
            "controller": true,
            "blockOwnerDeletion": true,
        }],
    });
    if let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("initContainers");
        spec.insert("nodeName".to_owned(), json!(node));
    }
    if let Some(object) = pod.as_object_mut() {
        object.remove("status");
    }
    pod
}

/// The TaskRun's status at `phase`, with its steps where they are. `results` is set once it
/// succeeded (Tekton adds results only when the TaskRun is done).
pub fn taskrun_status(
    taskrun: &CreatedTaskRun,
    pod_name: &str,
    start_time: &str,
    phase: Phase,
    steps: &[(StepSpec, StepState)],
    now: &str,
) -> Value {
    let (status, reason, message) = match phase {
        Phase::Pending => (
            "Unknown",
            "Pending",
            "pod status \"Initialized\":\"False\"; message: \"containers with incomplete status: [prepare place-scripts]\"",
        ),
        Phase::Running => (
            "Unknown",
            "Running",
            "Not all Steps in the Task have finished executing",
        ),
        Phase::Succeeded => ("True", "Succeeded", "All Steps have completed executing"),
    };
    let mut document = json!({
        "podName": pod_name,
        "startTime": start_time,
        "conditions": [{
            "type": "Succeeded",
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now,
        }],
        "steps": steps.iter().map(|(spec, state)| taskrun_step(spec, state)).collect::<Vec<_>>(),
        "taskSpec": taskrun.status_template["taskSpec"],
        "provenance": taskrun.status_template["provenance"],
    });
    if phase == Phase::Succeeded {
        let messages: Vec<Vec<MessageEntry>> = steps
            .iter()
            .filter_map(|(_, state)| match state {
                StepState::Terminated(terminated) => {
                    serde_json::from_str(&terminated.pod_message).ok()
                }
                StepState::Waiting | StepState::Running { .. } => None,
            })
            .collect();
        document["completionTime"] = json!(now);
        document["results"] = Value::Array(merged_results(&taskrun.declared, &messages));
        document["artifacts"] = json!({});
    }
    document
}

fn taskrun_step(spec: &StepSpec, state: &StepState) -> Value {
    let mut step = json!({ "name": spec.name, "container": spec.container });
    match state {
        StepState::Waiting => step["waiting"] = json!({ "reason": "PodInitializing" }),
        StepState::Running { started_at } => step["running"] = json!({ "startedAt": started_at }),
        StepState::Terminated(terminated) => {
            step["terminated"] = json!({
                "exitCode": 0,
                "reason": "Completed",
                "message": terminated.taskrun_message,
                "startedAt": terminated.started_at,
                "finishedAt": terminated.finished_at,
                "containerID": terminated.container_id,
            });
            step["terminationReason"] = json!("Completed");
        }
    }
    step
}

/// The pod's status: `phase`, and each step container where its step is.
pub fn pod_status(phase: &str, start_time: &str, steps: &[(StepSpec, StepState)]) -> Value {
    let statuses: Vec<Value> = steps
        .iter()
        .map(|(spec, state)| {
            let (state, ready, started, container_id) = match state {
                StepState::Waiting => (
                    json!({ "waiting": { "reason": "PodInitializing" } }),
                    false,
                    false,
                    None,
                ),
                StepState::Running { started_at } => (
                    json!({ "running": { "startedAt": started_at } }),
                    true,
                    true,
                    Some(format!("containerd://{}", spec.container)),
                ),
                StepState::Terminated(terminated) => (
                    json!({ "terminated": {
                        "exitCode": 0,
                        "reason": "Completed",
                        "message": terminated.pod_message,
                        "startedAt": terminated.started_at,
                        "finishedAt": terminated.finished_at,
                        "containerID": terminated.container_id,
                    }}),
                    false,
                    false,
                    Some(terminated.container_id.clone()),
                ),
            };
            let mut status = json!({
                "name": spec.container,
                "image": spec.image,
                "imageID": "",
                "ready": ready,
                "started": started,
                "restartCount": 0,
                "state": state,
            });
            if let Some(container_id) = container_id {
                status["containerID"] = json!(container_id);
            }
            status
        })
        .collect();
    json!({
        "phase": phase,
        "startTime": start_time,
        "containerStatuses": statuses,
    })
}

/// Tekton's `status.results` from the steps' termination messages: every type-1 entry (signing
/// material included, as released Tekton shows it), in first-seen order, the latest value
/// winning; a declared `array` or `object` result parsed from its JSON text, everything else a
/// string.
pub fn merged_results(declared: &[DeclaredResult], messages: &[Vec<MessageEntry>]) -> Vec<Value> {
    let mut order: Vec<&str> = Vec::new();
    let mut latest: BTreeMap<&str, &str> = BTreeMap::new();
    for entry in messages.iter().flatten() {
        if entry.entry_type != RESULT_ENTRY_TYPE {
            continue;
        }
        if !latest.contains_key(entry.key.as_str()) {
            order.push(&entry.key);
        }
        latest.insert(&entry.key, &entry.value);
    }
    order
        .into_iter()
        .map(|name| {
            let raw = latest.get(name).copied().unwrap_or_default();
            let declared_type = declared
                .iter()
                .find(|result| result.name == name)
                .map(|result| result.result_type.as_str());
            let parsed = match declared_type {
                Some("array") => serde_json::from_str::<Vec<String>>(raw)
                    .ok()
                    .map(|array| ("array", json!(array))),
                Some("object") => serde_json::from_str::<BTreeMap<String, String>>(raw)
                    .ok()
                    .map(|object| ("object", json!(object))),
                _ => None,
            };
            let (result_type, value) = parsed.unwrap_or(("string", json!(raw)));
            json!({ "name": name, "type": result_type, "value": value })
        })
        .collect()
}

/// Tekton's rewrite of a step's termination message for `status.steps[].terminated.message`:
/// internal entries removed, sorted by key.
pub fn taskrun_message(entries: &[MessageEntry]) -> String {
    let mut kept: Vec<&MessageEntry> = entries
        .iter()
        .filter(|entry| entry.entry_type != INTERNAL_ENTRY_TYPE)
        .collect();
    kept.sort_by(|a, b| a.key.cmp(&b.key));
    // Serializing plain strings and integers cannot fail.
    serde_json::to_string(&kept).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, value: &str, entry_type: u8) -> MessageEntry {
        MessageEntry {
            key: key.into(),
            value: value.into(),
            entry_type,
        }
    }

    fn declared() -> Vec<DeclaredResult> {
        [("commit", "string"), ("image", "object"), ("tags", "array")]
            .into_iter()
            .map(|(name, result_type)| DeclaredResult {
                name: name.into(),
                result_type: result_type.into(),
            })
            .collect()
    }

    #[test]
    fn merged_results_type_declared_results_and_keep_signing_material_as_strings() {
        let clone = vec![
            entry("commit", "abc", 1),
            entry("SVID", "pem-1", 1),
            entry("StartedAt", "2026-01-01T00:00:00.000Z", 3),
        ];
        let build = vec![
            entry("commit", "def", 1),
            entry("image", r#"{"url":"r/a","digest":"sha256:1"}"#, 1),
            entry("tags", r#"["latest"]"#, 1),
            entry("SVID", "pem-2", 1),
        ];
        let merged = merged_results(&declared(), &[clone, build]);
        let names: Vec<&str> = merged
            .iter()
            .map(|result| result["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["commit", "SVID", "image", "tags"]);
        assert_eq!(merged[0]["value"], "def");
        assert_eq!(
            merged[1],
            json!({"name": "SVID", "type": "string", "value": "pem-2"})
        );
        assert_eq!(
            merged[2],
            json!({"name": "image", "type": "object", "value": {"digest": "sha256:1", "url": "r/a"}})
        );
        assert_eq!(merged[3]["value"], json!(["latest"]));
    }

    #[test]
    fn the_taskrun_message_is_sorted_without_internal_entries() {
        let message = taskrun_message(&[
            entry("tags", "t", 1),
            entry("StartedAt", "x", 3),
            entry("IMAGE_DIGEST", "d", 1),
        ]);
        assert_eq!(
            message,
            r#"[{"key":"IMAGE_DIGEST","value":"d","type":1},{"key":"tags","value":"t","type":1}]"#
        );
    }

    fn created() -> CreatedTaskRun {
        let fixture = taskrun_fixture(TASKRUN_FIXTURE, "default").unwrap();
        let task_spec = fixture.status["taskSpec"].clone();
        CreatedTaskRun {
            namespace: "default".into(),
            name: "run-1".into(),
            uid: "uid-1".into(),
            declared: declared_results(&task_spec),
            steps: step_specs(&task_spec),
            status_template: json!({ "taskSpec": task_spec, "provenance": {} }),
        }
    }

    #[test]
    fn the_fixture_declares_four_results_and_two_steps() {
        let taskrun = created();
        let names: Vec<&str> = taskrun.declared.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["commit", "IMAGE_DIGEST", "image", "tags"]);
        let steps: Vec<&str> = taskrun.steps.iter().map(|s| s.container.as_str()).collect();
        assert_eq!(steps, ["step-clone", "step-build"]);
    }

    #[test]
    fn the_pod_names_its_taskrun_and_node_and_keeps_only_step_containers() {
        let path = fixtures_dir().join("tekton").join(POD_FIXTURE);
        let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let pod = pod_document(&fixture, &created(), "run-1-pod", "worker-1");
        assert_eq!(pod["metadata"]["labels"]["tekton.dev/taskRun"], "run-1");
        assert_eq!(pod["metadata"]["labels"]["tekton.dev/taskRunUID"], "uid-1");
        assert_eq!(pod["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(pod["spec"]["nodeName"], "worker-1");
        assert!(pod["spec"].get("initContainers").is_none());
        assert!(pod.get("status").is_none());
        assert!(pod["metadata"].get("uid").is_none());
        let _: Pod = serde_json::from_value(pod).expect("a Pod");
    }

    #[test]
    fn a_succeeded_status_has_results_and_the_rewritten_messages() {
        let taskrun = created();
        let message = vec![
            entry("commit", "abc", 1),
            entry("StartedAt", "2026-01-01T00:00:00.000Z", 3),
        ];
        let terminated = Terminated {
            started_at: "s".into(),
            finished_at: "f".into(),
            container_id: "containerd://c".into(),
            pod_message: serde_json::to_string(&message).unwrap(),
            taskrun_message: taskrun_message(&message),
        };
        let steps = vec![(
            taskrun.steps[0].clone(),
            StepState::Terminated(terminated.clone()),
        )];
        let status = taskrun_status(&taskrun, "run-1-pod", "t0", Phase::Succeeded, &steps, "t1");
        assert_eq!(status["conditions"][0]["status"], "True");
        assert_eq!(status["completionTime"], "t1");
        assert_eq!(
            status["results"],
            json!([{"name": "commit", "type": "string", "value": "abc"}])
        );
        assert_eq!(
            status["steps"][0]["terminated"]["message"],
            terminated.taskrun_message
        );
        let pod = pod_status("Succeeded", "t0", &steps);
        assert_eq!(
            pod["containerStatuses"][0]["state"]["terminated"]["message"],
            terminated.pod_message
        );

        let running = taskrun_status(&taskrun, "run-1-pod", "t0", Phase::Running, &[], "t1");
        assert_eq!(running["conditions"][0]["reason"], "Running");
        assert!(running.get("results").is_none());
    }
}
