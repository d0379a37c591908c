//! Tekton's objects as Countersign reads them: the one place that knows the TaskRun's JSON shape.
//! Our own serde types hold only the fields Countersign uses: Tekton's `TaskRun` (`tekton.dev/v1`
//! from the API, and the v1beta1 form Tekton's CloudEvents carry, with `status.taskResults`) and
//! the TaskRun's `Pod`. The watcher lists and watches them; the verdict library reads a TaskRun
//! given offline (`countersign verify-results`) through the same types.
//!
//! Every field is optional or defaulted and unknown fields are ignored, so no TaskRun or Pod a
//! cluster may hold fails to parse (one object that failed would stop a whole list). Times are kept
//! as the API's RFC 3339 text and read with [`parse_time`]; a time that does not parse is treated
//! as absent.
//!
//! `metadata.managedFields` is skipped while parsing, never built: it is the largest part of a
//! listed object (a pod whose status the kubelet wrote carries every status field path in it) and
//! the watcher never reads it, so building it only to drop it would fill the heap at every list.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use serde::{Deserialize, Deserializer, Serialize};

/// The label Tekton puts on a TaskRun's pod: the TaskRun's name.
pub const TASKRUN_LABEL: &str = "tekton.dev/taskRun";
/// The label Tekton (v0.63+) puts on a TaskRun's pod: the TaskRun's UID.
pub const TASKRUN_UID_LABEL: &str = "tekton.dev/taskRunUID";
/// The prefix of a step's container name (`step-<name>`).
pub const STEP_CONTAINER_PREFIX: &str = "step-";
/// The type of the condition that says whether a TaskRun is done.
pub const SUCCEEDED_CONDITION: &str = "Succeeded";

/// A Tekton `TaskRun` (`tekton.dev/v1`): the fields Countersign uses.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskRun {
    /// The metadata (parsed without `managedFields`).
    #[serde(default, deserialize_with = "metadata_without_managed_fields")]
    pub metadata: ObjectMeta,
    /// The parts of `spec` Countersign uses.
    #[serde(default)]
    pub spec: TaskRunSpec,
    /// The parts of `status` Countersign uses, shared, so that a copy of the object (a
    /// tombstone, a store entry) costs a reference count, not a second status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Arc<TaskRunStatus>>,
}

impl kube_core::Resource for TaskRun {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("TaskRun")
    }

    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("tekton.dev")
    }

    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }

    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("taskruns")
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// `metadata` as the API sends it, less `managedFields` (skipped by the parser, unallocated).
/// Field by field, so a field of the wrong type is still reported with its path.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetadataWithoutManagedFields {
    annotations: Option<BTreeMap<String, String>>,
    creation_timestamp: Option<Time>,
    deletion_grace_period_seconds: Option<i64>,
    deletion_timestamp: Option<Time>,
    finalizers: Option<Vec<String>>,
    generate_name: Option<String>,
    generation: Option<i64>,
    labels: Option<BTreeMap<String, String>>,
    name: Option<String>,
    namespace: Option<String>,
    owner_references: Option<Vec<OwnerReference>>,
    resource_version: Option<String>,
    self_link: Option<String>,
    uid: Option<String>,
}

/// Reads `metadata` without building `managedFields`.
fn metadata_without_managed_fields<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<ObjectMeta, D::Error> {
    let metadata = MetadataWithoutManagedFields::deserialize(deserializer)?;
    Ok(ObjectMeta {
        annotations: metadata.annotations,
        creation_timestamp: metadata.creation_timestamp,
        deletion_grace_period_seconds: metadata.deletion_grace_period_seconds,
        deletion_timestamp: metadata.deletion_timestamp,
        finalizers: metadata.finalizers,
        generate_name: metadata.generate_name,
        generation: metadata.generation,
        labels: metadata.labels,
        managed_fields: None,
        name: metadata.name,
        namespace: metadata.namespace,
        owner_references: metadata.owner_references,
        resource_version: metadata.resource_version,
        self_link: metadata.self_link,
        uid: metadata.uid,
    })
}

/// The fields of a TaskRun's `spec` Countersign uses.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRunSpec {
    /// `spec.serviceAccountName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// `spec.taskRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_ref: Option<TaskRef>,
    /// `spec.timeout`: a Go duration (`1h0m0s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// `spec.taskRef`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskRef {
    /// The referenced Task's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The fields of a TaskRun's `status` Countersign uses.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRunStatus {
    /// `status.conditions`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// `status.podName` (`""` until the pod is created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// `status.startTime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// `status.completionTime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    /// `status.steps`.
    #[serde(default)]
    pub steps: Vec<StepState>,
    /// `status.results` (v1), or `status.taskResults` (v1beta1, in Tekton's CloudEvents).
    #[serde(default, alias = "taskResults")]
    pub results: Vec<ResultStatus>,
    /// `status.taskSpec`: the resolved Task spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_spec: Option<TaskSpecStatus>,
}

/// One of `status.conditions`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    /// `type` (`Succeeded`).
    #[serde(default, rename = "type")]
    pub condition_type: String,
    /// `True`, `False` or `Unknown`.
    #[serde(default)]
    pub status: String,
    /// The reason (`Running`, `Succeeded`, `StepFailed`, `TaskRunCancelled`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One of `status.steps`: a step's container state as Tekton reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    /// The step's name (`unnamed-<i>` for an unnamed step).
    #[serde(default)]
    pub name: String,
    /// The container's name (`step-<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Set once the container terminated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminated: Option<Terminated>,
}

/// A terminated container: `terminated` of a step in the TaskRun, or of a pod's container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Terminated {
    /// The exit code.
    #[serde(default)]
    pub exit_code: i32,
    /// The termination message (the step's result set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the container started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When the container terminated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

/// One of `status.results` (`{name, type, value}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResultStatus {
    /// The result's name.
    #[serde(default)]
    pub name: String,
    /// `string`, `array` or `object`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub result_type: Option<String>,
    /// The value: a JSON string, array of strings or object of strings.
    #[serde(default)]
    pub value: serde_json::Value,
}

/// The part of `status.taskSpec` Countersign uses.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskSpecStatus {
    /// The results the Task declares.
    #[serde(default)]
    pub results: Vec<DeclaredResult>,
}

/// A result a Task declares.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeclaredResult {
    /// Its name.
    #[serde(default)]
    pub name: String,
}

// === impl TaskRun ===

impl TaskRun {
    /// The `Succeeded` condition, when there is one.
    pub fn succeeded_condition(&self) -> Option<&Condition> {
        self.status
            .as_ref()?
            .conditions
            .iter()
            .find(|condition| condition.condition_type == SUCCEEDED_CONDITION)
    }

    /// `status.podName`, when it is set and not empty.
    pub fn pod_name(&self) -> Option<&str> {
        self.status
            .as_ref()
            .and_then(|status| status.pod_name.as_deref())
            .filter(|name| !name.is_empty())
    }

    /// The TaskRun's UID, when it has one.
    pub fn uid(&self) -> Option<&str> {
        self.metadata.uid.as_deref().filter(|uid| !uid.is_empty())
    }

    /// `metadata.creationTimestamp`, when it is set.
    pub fn created_at(&self) -> Option<DateTime<Utc>> {
        self.metadata.creation_timestamp.as_ref().and_then(|time| {
            DateTime::from_timestamp(
                time.0.as_second(),
                time.0.subsec_nanosecond().unsigned_abs(),
            )
        })
    }
}

/// A TaskRun's pod: the fields Countersign uses of a `v1` `Pod`.
///
/// Parsed through [`PodObject`]: of the metadata only the name, namespace, UID, creation time
/// and resource version are kept, and what ties the pod to its TaskRun (the two Tekton labels
/// and the TaskRun owner references) is kept as plain fields rather than as the label map and
/// owner list, which cost far more than the few strings the watcher reads from them.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(from = "PodObject")]
pub struct TaskRunPod {
    /// The pod's name, namespace, UID and creation time.
    pub metadata: ObjectMeta,
    /// Its `tekton.dev/taskRun` label: the name of the TaskRun it runs.
    pub taskrun_name: Option<String>,
    /// The TaskRun UIDs it is tied to: its `tekton.dev/taskRunUID` label and the UIDs of its
    /// `TaskRun` owner references.
    pub taskrun_uids: Vec<String>,
    /// The parts of `spec` the watcher uses.
    pub spec: Option<PodSpecView>,
    /// The parts of `status` the watcher uses, shared (see [`TaskRun::status`]).
    pub status: Option<Arc<PodStatusView>>,
}

/// A `v1` `Pod` as the API sends it, less what the watcher never reads.
#[derive(Deserialize)]
struct PodObject {
    #[serde(default, deserialize_with = "metadata_without_managed_fields")]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<PodSpecView>,
    #[serde(default)]
    status: Option<PodStatusView>,
}

impl From<PodObject> for TaskRunPod {
    fn from(pod: PodObject) -> TaskRunPod {
        let PodObject {
            metadata,
            spec,
            status,
        } = pod;
        let mut labels = metadata.labels.unwrap_or_default();
        let taskrun_name = labels.remove(TASKRUN_LABEL);
        let owners = metadata.owner_references.unwrap_or_default();
        let mut taskrun_uids: Vec<String> = labels.remove(TASKRUN_UID_LABEL).into_iter().collect();
        for owner in owners {
            if owner.kind == "TaskRun" && !taskrun_uids.contains(&owner.uid) {
                taskrun_uids.push(owner.uid);
            }
        }
        TaskRunPod {
            metadata: ObjectMeta {
                name: metadata.name,
                namespace: metadata.namespace,
                uid: metadata.uid,
                creation_timestamp: metadata.creation_timestamp,
                // The watch reads it to resume; the watcher's store drops it once the watch has.
                resource_version: metadata.resource_version,
                ..ObjectMeta::default()
            },
            taskrun_name,
            taskrun_uids,
            spec,
            status: status.map(Arc::new),
        }
    }
}

/// The parts of a pod's `spec` the watcher uses.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpecView {
    /// The node the pod is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The pod's service account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// The containers, in order (only their names are kept).
    #[serde(default)]
    pub containers: Vec<ContainerName>,
}

/// A container of a pod's spec, by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerName {
    /// The container's name.
    #[serde(default)]
    pub name: String,
}

/// The parts of a pod's `status` the watcher uses.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatusView {
    /// The statuses of the (non-init) containers.
    #[serde(default)]
    pub container_statuses: Vec<ContainerStatusView>,
}

/// One of a pod's `status.containerStatuses`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerStatusView {
    /// The container's name.
    #[serde(default)]
    pub name: String,
    /// Its current state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ContainerStateView>,
}

/// A container's state; only `terminated` matters to the watcher.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerStateView {
    /// Set once the container terminated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminated: Option<Terminated>,
}

impl kube_core::Resource for TaskRunPod {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("Pod")
    }

    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }

    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }

    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("pods")
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

// === impl TaskRunPod ===

impl TaskRunPod {
    /// The pod's UID, when it has one.
    pub fn uid(&self) -> Option<&str> {
        self.metadata.uid.as_deref().filter(|uid| !uid.is_empty())
    }

    /// The node the pod is bound to, once scheduled.
    pub fn node_name(&self) -> Option<&str> {
        self.spec
            .as_ref()
            .and_then(|spec| spec.node_name.as_deref())
            .filter(|node| !node.is_empty())
    }

    /// The name of the TaskRun this pod runs (its `tekton.dev/taskRun` label).
    pub fn taskrun_name(&self) -> Option<&str> {
        self.taskrun_name.as_deref()
    }

    /// Whether the pod runs the TaskRun with UID `taskrun_uid`: a `TaskRun` owner reference to
    /// it, or Tekton's `tekton.dev/taskRunUID` label with its UID.
    pub fn belongs_to(&self, taskrun_uid: &str) -> bool {
        self.taskrun_uids.iter().any(|uid| uid == taskrun_uid)
    }

    /// The terminated state of container `name`, when it terminated.
    pub fn terminated_container(&self, name: &str) -> Option<&Terminated> {
        self.status
            .as_ref()?
            .container_statuses
            .iter()
            .find(|status| status.name == name)?
            .state
            .as_ref()?
            .terminated
            .as_ref()
    }

    /// The names of the step containers, in the pod spec's order.
    pub fn step_containers(&self) -> impl Iterator<Item = &str> {
        self.spec
            .iter()
            .flat_map(|spec| spec.containers.iter())
            .map(|container| container.name.as_str())
            .filter(|name| name.starts_with(STEP_CONTAINER_PREFIX))
    }
}

/// Reads an RFC 3339 time as the API writes it; `None` when it does not parse.
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|time| time.with_timezone(&Utc))
}

/// Reads a Go duration (`1h0m0s`, `90s`, `1.5h`, `300ms`) as Tekton writes `spec.timeout`.
/// `None` for anything else, negative durations included.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.is_empty() {
        return None;
    }
    let mut nanos: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|character: char| !(character.is_ascii_digit() || character == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        if number.is_empty() || number == "." {
            return None;
        }
        let value: f64 = number.parse().ok()?;
        let unit_len = after
            .find(|character: char| character.is_ascii_digit() || character == '.')
            .unwrap_or(after.len());
        let (unit, remaining) = after.split_at(unit_len);
        let scale = match unit {
            "ns" => 1.0,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        nanos += value * scale;
        rest = remaining;
    }
    if !nanos.is_finite() || nanos < 0.0 || nanos > u64::MAX as f64 {
        return None;
    }
    // Rounded to whole nanoseconds; the range was checked above.
    Some(Duration::from_nanos(nanos.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(path: &str) -> serde_json::Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/tekton")
            .join(path);
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn an_object_with_only_a_status_parses() {
        let taskrun: TaskRun = serde_json::from_value(serde_json::json!({
            "status": {"results": [{"name": "IMAGE_DIGEST", "type": "string", "value": "sha256:aa"}]}
        }))
        .expect("every field is optional");
        assert_eq!(taskrun.spec, TaskRunSpec::default());
        assert_eq!(taskrun.uid(), None);
        assert_eq!(
            taskrun.status.as_ref().map(|status| status.results.len()),
            Some(1)
        );
    }

    #[test]
    fn reads_the_v1_taskrun_fixtures() {
        let taskrun: TaskRun =
            serde_json::from_value(fixture("taskrun/taskrun-03-succeeded.json")).unwrap();
        assert_eq!(taskrun.uid(), Some("6f1c2b8e-4d3a-4e7f-9a51-2c8d0e7b3f14"));
        assert_eq!(taskrun.pod_name(), Some("build-push-run-x7k2p-pod"));
        assert_eq!(taskrun.succeeded_condition().unwrap().status, "True");
        let status = taskrun.status.as_ref().unwrap();
        assert_eq!(status.steps.len(), 2);
        assert_eq!(status.results.len(), 4);
        assert_eq!(status.task_spec.as_ref().unwrap().results.len(), 4);
        assert_eq!(
            taskrun.spec.task_ref.as_ref().unwrap().name.as_deref(),
            Some("build-push")
        );
    }

    #[test]
    fn reads_the_v1beta1_payload_of_tekton_cloudevents() {
        let event = fixture("cloudevents/ce-taskrun-05-successful.json");
        let taskrun: TaskRun = serde_json::from_value(event["data"]["taskRun"].clone()).unwrap();
        let status = taskrun.status.as_ref().unwrap();
        assert_eq!(
            status.results.len(),
            4,
            "taskResults is read as the results"
        );
        assert_eq!(status.results[2].result_type.as_deref(), Some("object"));

        let queued = fixture("cloudevents/ce-taskrun-01-queued.json");
        let taskrun: TaskRun = serde_json::from_value(queued["data"]["taskRun"].clone()).unwrap();
        assert_eq!(taskrun.pod_name(), None, "an empty podName is no pod");
        assert!(taskrun.succeeded_condition().is_none());
    }

    #[test]
    fn reads_the_pod_fixture() {
        let pod: TaskRunPod =
            serde_json::from_value(fixture("pod/taskrun-pod-spire-trimmed.json")).unwrap();
        assert_eq!(pod.uid(), Some("b3e9a0d2-7c41-4f6b-8e25-9d1a6c0f4e83"));
        assert_eq!(pod.node_name(), Some("kind-worker"));
        assert_eq!(pod.taskrun_name(), Some("build-push-run-x7k2p"));
        assert!(pod.belongs_to("6f1c2b8e-4d3a-4e7f-9a51-2c8d0e7b3f14"));
        assert!(!pod.belongs_to("another-uid"));
        assert_eq!(
            pod.step_containers().collect::<Vec<_>>(),
            vec!["step-clone", "step-build"]
        );
    }

    #[test]
    fn a_pod_keeps_only_what_ties_it_to_its_taskrun() {
        let mut value = fixture("pod/taskrun-pod-spire-trimmed.json");
        let pod: TaskRunPod = serde_json::from_value(value.clone()).unwrap();
        assert!(pod.metadata.labels.is_none());
        assert!(pod.metadata.annotations.is_none());
        assert!(pod.metadata.owner_references.is_none());
        assert_eq!(pod.taskrun_name(), Some("build-push-run-x7k2p"));
        assert_eq!(
            pod.taskrun_uids,
            ["6f1c2b8e-4d3a-4e7f-9a51-2c8d0e7b3f14"],
            "the label and the owner reference name the same TaskRun once"
        );

        // Either tie alone is enough; a non-TaskRun owner is not one.
        let uid = "6f1c2b8e-4d3a-4e7f-9a51-2c8d0e7b3f14";
        let mut by_owner = value.clone();
        by_owner["metadata"]["labels"]
            .as_object_mut()
            .unwrap()
            .remove(TASKRUN_UID_LABEL);
        let pod: TaskRunPod = serde_json::from_value(by_owner).unwrap();
        assert!(pod.belongs_to(uid));
        let mut by_label = value.clone();
        by_label["metadata"]["ownerReferences"][0]["kind"] = "ReplicaSet".into();
        let pod: TaskRunPod = serde_json::from_value(by_label.clone()).unwrap();
        assert!(pod.belongs_to(uid), "the taskRunUID label");
        by_label["metadata"]["labels"]
            .as_object_mut()
            .unwrap()
            .remove(TASKRUN_UID_LABEL);
        let pod: TaskRunPod = serde_json::from_value(by_label).unwrap();
        assert!(
            !pod.belongs_to(uid),
            "a ReplicaSet owner with the same UID is not the TaskRun"
        );

        // The watch needs the resource version (the store drops it: `store::trim_pod`).
        value["metadata"]["resourceVersion"] = "42".into();
        let pod: TaskRunPod = serde_json::from_value(value).unwrap();
        assert_eq!(pod.metadata.resource_version.as_deref(), Some("42"));
    }

    #[test]
    fn a_copy_shares_the_status() {
        let taskrun: TaskRun =
            serde_json::from_value(fixture("taskrun/taskrun-03-succeeded.json")).unwrap();
        let copy = taskrun.clone();
        assert!(Arc::ptr_eq(
            taskrun.status.as_ref().unwrap(),
            copy.status.as_ref().unwrap()
        ));
        let pod: TaskRunPod =
            serde_json::from_value(fixture("pod/taskrun-pod-spire-trimmed.json")).unwrap();
        let copy = pod.clone();
        assert!(Arc::ptr_eq(
            pod.status.as_ref().unwrap(),
            copy.status.as_ref().unwrap()
        ));
    }

    #[test]
    fn managed_fields_are_skipped_and_the_rest_of_the_metadata_kept() {
        let managed = serde_json::json!([{
            "manager": "kubelet",
            "operation": "Update",
            "apiVersion": "v1",
            "time": "2026-08-20T10:01:14Z",
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:status": {"f:phase": {}, "f:containerStatuses": {}}},
            "subresource": "status",
        }]);
        let mut value = fixture("pod/taskrun-pod-spire-trimmed.json");
        let plain: TaskRunPod = serde_json::from_value(value.clone()).unwrap();
        value["metadata"]["managedFields"] = managed.clone();
        let pod: TaskRunPod = serde_json::from_value(value).unwrap();
        assert!(pod.metadata.managed_fields.is_none());
        assert_eq!(pod, plain, "nothing else changes");

        let mut value = fixture("taskrun/taskrun-03-succeeded.json");
        let plain: TaskRun = serde_json::from_value(value.clone()).unwrap();
        value["metadata"]["managedFields"] = managed;
        let taskrun: TaskRun = serde_json::from_value(value).unwrap();
        assert!(taskrun.metadata.managed_fields.is_none());
        assert_eq!(taskrun, plain);
        assert_eq!(
            taskrun.metadata.generate_name.as_deref(),
            Some("build-push-run-")
        );
        assert!(taskrun.metadata.creation_timestamp.is_some());
        assert_eq!(taskrun.metadata.labels.as_ref().unwrap().len(), 2);
    }

    #[test]
    fn the_taskrun_is_tekton_dev_v1() {
        use kube_core::Resource as _;
        assert_eq!(TaskRun::api_version(&()), "tekton.dev/v1");
        assert_eq!(TaskRun::kind(&()), "TaskRun");
        assert_eq!(TaskRun::plural(&()), "taskruns");
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1h0m0s"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("300ms"), Some(Duration::from_millis(300)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("0s"), Some(Duration::ZERO));
        assert_eq!(
            parse_go_duration("2\u{b5}s"),
            Some(Duration::from_micros(2))
        );
        for bad in ["", "-1h", "1", "h", "1x", "1h-5m", ".s", "1..5s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn times() {
        assert!(parse_time("2026-08-20T10:00:00Z").is_some());
        assert!(parse_time("2026-08-20T10:00:09.402Z").is_some());
        assert!(parse_time("yesterday").is_none());
    }
}
