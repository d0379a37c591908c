//! Types shared by several events: references to a TaskRun and its pod, a step's record, results.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Identifies a TaskRun across clusters. The UID tells apart two TaskRuns that had the same name
/// at different times.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskRunRef {
    /// The name of the cluster the TaskRun runs in, as configured for the watcher.
    pub cluster: String,
    /// The TaskRun's namespace.
    pub namespace: String,
    /// The TaskRun's name.
    pub name: String,
    /// The TaskRun's `metadata.uid`.
    pub uid: String,
}

/// Identifies the pod that runs a TaskRun.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodRef {
    /// The pod's name (`status.podName` of the TaskRun).
    pub name: String,
    /// The pod's `metadata.uid`: the value of the `k8s:pod-uid` SPIRE selector.
    pub uid: String,
}

/// How a finished TaskRun ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The `Succeeded` condition is `True`.
    Succeeded,
    /// The `Succeeded` condition is `False` for any reason other than cancellation or timeout.
    Failed,
    /// The `Succeeded` condition is `False` with reason `TaskRunCancelled`.
    Cancelled,
    /// The `Succeeded` condition is `False` with reason `TaskRunTimeout`.
    TimedOut,
}

/// One entry of a step's termination message, exactly as the step wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TerminationEntry {
    /// The entry's key: a result name, `SVID`, `RESULT_MANIFEST`, `<name>.sig`, `StartedAt`...
    pub key: String,
    /// The entry's value, byte for byte (signatures cover these bytes).
    pub value: String,
    /// Tekton's result type number: 1 TaskRun result, 3 internal, 4 step result, 5 step
    /// artifacts, 6 TaskRun artifacts.
    pub r#type: u8,
}

/// A step whose container terminated, with the result set it wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StepRecord {
    /// The step's name (`unnamed-<i>` when the Task leaves it unnamed).
    pub name: String,
    /// The step's container name (`step-<name>`).
    pub container: String,
    /// The container's exit code.
    pub exit_code: i32,
    /// When the step started (the entrypoint's `StartedAt` when present).
    pub started_at: Option<DateTime<Utc>>,
    /// When the step's container terminated.
    pub finished_at: Option<DateTime<Utc>>,
    /// The step's termination message entries, in the order the step wrote them. Empty when
    /// the step wrote no termination message.
    pub results: Vec<TerminationEntry>,
}

/// The type a Task declares for a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResultType {
    /// A string.
    String,
    /// An array of strings.
    Array,
    /// An object with string values.
    Object,
}

/// A result in the TaskRun's `status.results`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskRunResult {
    /// The result's name.
    pub name: String,
    /// The result's type.
    pub r#type: ResultType,
    /// The value as Tekton reports it: a JSON string, array of strings or object of strings.
    pub value: serde_json::Value,
}
