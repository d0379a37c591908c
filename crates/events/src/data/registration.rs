//! Registration audit events, published by the registrar on `{p}.registration.<action>.…`:
//! every SPIRE entry it creates or deletes, so an auditor can replay who could hold which identity
//! when. Ids: `{entry id}:registered`, `{entry id}:released`.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::TaskRunRef;
use super::lifecycle::ce_subject_of;
use crate::event_type::EventType;
use crate::payload::EventData;
use crate::subject::{NODE_TOKEN, RegistrationAction, SubjectError, Subjects};

/// What a SPIRE entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// The entry of a TaskRun pod's workload identity.
    Workload,
    /// A node alias entry: the parent of the workload entries of the pods on one node.
    NodeAlias,
}

/// Why an entry was deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseReason {
    /// The TaskRun finished.
    Finished,
    /// The TaskRun was deleted.
    Deleted,
    /// Garbage collection found no TaskRun (or pod) for the entry.
    Orphan,
    /// The node alias had no workload entries left on its node.
    NodeIdle,
}

/// A SPIRE registration entry, as the registrar created it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistrationEntry {
    /// The entry's id in SPIRE (it carries the registrar's own id prefix).
    pub entry_id: String,
    /// The SPIFFE ID the entry grants.
    pub spiffe_id: String,
    /// The entry's parent SPIFFE ID.
    pub parent_id: String,
    /// The entry's selectors as `type:value` (e.g. `k8s:pod-uid:…`).
    pub selectors: Vec<String>,
    /// What the entry is for.
    pub kind: EntryKind,
    /// The cluster the entry belongs to.
    pub cluster: String,
    /// The TaskRun of a workload entry; absent for a node alias.
    pub taskrun: Option<TaskRunRef>,
    /// The node of a node alias entry (and of a workload entry, when known).
    pub node_name: Option<String>,
    /// When SPIRE itself drops the entry.
    pub expires_at: Option<DateTime<Utc>>,
}

/// `dev.countersign.registration.registered.v1`: an entry was created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "dev.countersign.registration.registered.v1")]
pub struct EntryRegistered {
    /// The entry.
    pub entry: RegistrationEntry,
}

/// `dev.countersign.registration.released.v1`: an entry was deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "dev.countersign.registration.released.v1")]
pub struct EntryReleased {
    /// The entry, as it was.
    pub entry: RegistrationEntry,
    /// Why it was deleted.
    pub release_reason: ReleaseReason,
}

impl RegistrationEntry {
    /// `{namespace}/{name}` of a workload entry's TaskRun, `_node/{node}` of a node alias.
    fn ce_subject(&self) -> String {
        match (&self.taskrun, &self.node_name) {
            (Some(taskrun), _) if self.kind == EntryKind::Workload => ce_subject_of(taskrun),
            (_, Some(node)) => format!("{NODE_TOKEN}/{node}"),
            (_, None) => format!("{NODE_TOKEN}/"),
        }
    }

    fn nats_subject(
        &self,
        action: RegistrationAction,
        subjects: &Subjects,
    ) -> Result<String, SubjectError> {
        match self.kind {
            EntryKind::Workload => {
                let taskrun = self
                    .taskrun
                    .as_ref()
                    .ok_or(SubjectError::MissingField { field: "taskrun" })?;
                let event_type = match action {
                    RegistrationAction::Registered => EventType::EntryRegistered,
                    RegistrationAction::Released => EventType::EntryReleased,
                };
                subjects.for_taskrun(event_type, taskrun)
            }
            EntryKind::NodeAlias => {
                let node = self
                    .node_name
                    .as_deref()
                    .ok_or(SubjectError::MissingField { field: "nodeName" })?;
                subjects.for_node(action, &self.cluster, node)
            }
        }
    }
}

impl EventData for EntryRegistered {
    const TYPE: EventType = EventType::EntryRegistered;

    fn event_id(&self) -> String {
        format!("{}:registered", self.entry.entry_id)
    }

    fn ce_subject(&self) -> String {
        self.entry.ce_subject()
    }

    fn nats_subject(&self, subjects: &Subjects) -> Result<String, SubjectError> {
        self.entry
            .nats_subject(RegistrationAction::Registered, subjects)
    }
}

impl EventData for EntryReleased {
    const TYPE: EventType = EventType::EntryReleased;

    fn event_id(&self) -> String {
        format!("{}:released", self.entry.entry_id)
    }

    fn ce_subject(&self) -> String {
        self.entry.ce_subject()
    }

    fn nats_subject(&self, subjects: &Subjects) -> Result<String, SubjectError> {
        self.entry
            .nats_subject(RegistrationAction::Released, subjects)
    }
}
