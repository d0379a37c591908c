//! TaskRun lifecycle events, published by the watcher on `{p}.taskrun.<transition>.…`.
//!
//! Ids are deterministic, so a transition observed twice (a watch restart, Tekton's own
//! CloudEvent and the watch both seeing it) is one event: `{uid}:created`,
//! `{uid}:scheduled:{pod uid}`, `{uid}:step-completed:{pod uid}:{step}`, `{uid}:finished`,
//! `{uid}:deleted`.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Outcome, PodRef, StepRecord, TaskRunRef, TaskRunResult};
use crate::event_type::EventType;
use crate::payload::EventData;
use crate::subject::{SubjectError, Subjects};

/// `dev.countersign.taskrun.created.v1`: a TaskRun was seen for the first time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "dev.countersign.taskrun.created.v1")]
pub struct TaskRunCreated {
    /// The TaskRun.
    pub taskrun: TaskRunRef,
    /// The TaskRun's `metadata.creationTimestamp`.
    pub created_at: DateTime<Utc>,
    /// `spec.serviceAccountName`, when set.
    pub service_account: Option<String>,
    /// `spec.timeout` in seconds, when set.
    pub timeout_seconds: Option<u64>,
    /// The referenced Task's name (`spec.taskRef.name`), when the TaskRun references one.
    pub task_name: Option<String>,
}

/// `dev.countersign.taskrun.scheduled.v1`: the TaskRun's pod has a UID and a node, so its
/// workload identity can be registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "dev.countersign.taskrun.scheduled.v1")]
pub struct TaskRunScheduled {
    /// The TaskRun.
    pub taskrun: TaskRunRef,
    /// The TaskRun's `metadata.creationTimestamp`.
    pub taskrun_created_at: DateTime<Utc>,
    /// The pod running the TaskRun.
    pub pod: PodRef,
    /// The node the pod is bound to (`spec.nodeName`).
    pub node_name: String,
    /// The pod's service account.
    pub service_account: String,
    /// The SPIFFE ID the pod's steps will hold: `spiffe://<td>/ns/<namespace>/taskrun/<name>`.
    pub spiffe_id: String,
    /// `spec.timeout` of the TaskRun in seconds, when set (bounds the entry's lifetime).
    pub timeout_seconds: Option<u64>,
}

/// `dev.countersign.taskrun.step-completed.v1`: one step's container terminated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "dev.countersign.taskrun.step-completed.v1")]
pub struct StepCompleted {
    /// The TaskRun.
    pub taskrun: TaskRunRef,
    /// The TaskRun's `metadata.creationTimestamp`.
    pub taskrun_created_at: DateTime<Utc>,
    /// The pod the step ran in.
    pub pod: PodRef,
    /// The SPIFFE ID the step's SVID should carry.
    pub spiffe_id: String,
    /// The step and the result set it wrote.
    pub step: StepRecord,
}

/// `dev.countersign.taskrun.finished.v1`: the TaskRun's `Succeeded` condition is final.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "dev.countersign.taskrun.finished.v1")]
pub struct TaskRunFinished {
    /// The TaskRun.
    pub taskrun: TaskRunRef,
    /// The TaskRun's `metadata.creationTimestamp`.
    pub taskrun_created_at: DateTime<Utc>,
    /// The pod that ran the TaskRun; absent when no pod was ever created.
    pub pod: Option<PodRef>,
    /// The SPIFFE ID the TaskRun's steps should have signed with; absent when it never ran.
    pub spiffe_id: Option<String>,
    /// How the TaskRun ended.
    pub outcome: Outcome,
    /// The `Succeeded` condition's reason (`Succeeded`, `StepFailed`, `TaskRunTimeout`...).
    pub reason: String,
    /// The `Succeeded` condition's message.
    pub message: String,
    /// `status.startTime`.
    pub started_at: Option<DateTime<Utc>>,
    /// `status.completionTime`.
    pub completed_at: Option<DateTime<Utc>>,
    /// `status.results`, including Tekton's signing keys (`SVID`, `RESULT_MANIFEST`, `*.sig`).
    pub results: Vec<TaskRunResult>,
    /// Every step that terminated, with the result set it wrote.
    pub steps: Vec<StepRecord>,
    /// The result names the Task declares (`status.taskSpec.results[].name`); empty when it
    /// declares none, so "no results to verify" is knowable.
    pub declared_results: Vec<String>,
    /// Present when the event in full did not fit the bus's max payload: `results` is then
    /// empty and every step's `results` too, and the TaskRun cannot be verified from this event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oversized: Option<Oversized>,
}

/// How far a `finished` event went over the bus's max payload (see [`TaskRunFinished::oversized`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Oversized {
    /// The size in bytes of the event's data in full.
    pub bytes: u64,
    /// The bus's max payload in bytes (headers and data), as the server announced it.
    pub limit: u64,
}

impl TaskRunFinished {
    /// The event without what can make it large (the merged results and every step's result
    /// set), marked `oversized` with `bytes` (the full data's size) and `limit`.
    pub fn trimmed(&self, bytes: u64, limit: u64) -> TaskRunFinished {
        TaskRunFinished {
            results: Vec::new(),
            steps: self
                .steps
                .iter()
                .map(|step| StepRecord {
                    results: Vec::new(),
                    ..step.clone()
                })
                .collect(),
            oversized: Some(Oversized { bytes, limit }),
            ..self.clone()
        }
    }
}

/// `dev.countersign.taskrun.deleted.v1`: the TaskRun object is gone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "dev.countersign.taskrun.deleted.v1")]
pub struct TaskRunDeleted {
    /// The TaskRun.
    pub taskrun: TaskRunRef,
    /// Its pod, when one was known.
    pub pod: Option<PodRef>,
}

fn taskrun_subject(taskrun: &TaskRunRef) -> String {
    format!("{}/{}", taskrun.namespace, taskrun.name)
}

impl EventData for TaskRunCreated {
    const TYPE: EventType = EventType::TaskRunCreated;

    fn event_id(&self) -> String {
        format!("{}:created", self.taskrun.uid)
    }

    fn ce_subject(&self) -> String {
        taskrun_subject(&self.taskrun)
    }

    fn nats_subject(&self, subjects: &Subjects) -> Result<String, SubjectError> {
        subjects.for_taskrun(Self::TYPE, &self.taskrun)
    }
}

impl EventData for TaskRunScheduled {
    const TYPE: EventType = EventType::TaskRunScheduled;

    fn event_id(&self) -> String {
        format!("{}:scheduled:{}", self.taskrun.uid, self.pod.uid)
    }

    fn ce_subject(&self) -> String {
        taskrun_subject(&self.taskrun)
    }

    fn nats_subject(&self, subjects: &Subjects) -> Result<String, SubjectError> {
        subjects.for_taskrun(Self::TYPE, &self.taskrun)
    }
}

impl EventData for StepCompleted {
    const TYPE: EventType = EventType::StepCompleted;

    fn event_id(&self) -> String {
        format!(
            "{}:step-completed:{}:{}",
            self.taskrun.uid, self.pod.uid, self.step.name
        )
    }

    fn ce_subject(&self) -> String {
        taskrun_subject(&self.taskrun)
    }

    fn nats_subject(&self, subjects: &Subjects) -> Result<String, SubjectError> {
        subjects.for_taskrun(Self::TYPE, &self.taskrun)
    }
}

impl EventData for TaskRunFinished {
    const TYPE: EventType = EventType::TaskRunFinished;

    fn event_id(&self) -> String {
        format!("{}:finished", self.taskrun.uid)
    }

    fn ce_subject(&self) -> String {
        taskrun_subject(&self.taskrun)
    }

    fn nats_subject(&self, subjects: &Subjects) -> Result<String, SubjectError> {
        subjects.for_taskrun(Self::TYPE, &self.taskrun)
    }
}

impl EventData for TaskRunDeleted {
    const TYPE: EventType = EventType::TaskRunDeleted;

    fn event_id(&self) -> String {
        format!("{}:deleted", self.taskrun.uid)
    }

    fn ce_subject(&self) -> String {
        taskrun_subject(&self.taskrun)
    }

    fn nats_subject(&self, subjects: &Subjects) -> Result<String, SubjectError> {
        subjects.for_taskrun(Self::TYPE, &self.taskrun)
    }
}

pub(crate) fn ce_subject_of(taskrun: &TaskRunRef) -> String {
    taskrun_subject(taskrun)
}
