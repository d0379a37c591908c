//! Registration audit events: `registered` when an entry of ours exists, `released` when it is
//! gone, on `{p}.registration.{registered|released}.…`, so an auditor can replay who could hold
//! which identity when.
//!
//! Publishing is at least once: an event is published after its effect is durable in SPIRE and
//! before the TaskRun's state moves on, so a crash in between publishes it again on redelivery.
//! Its id (`{entry id}:registered`, `{entry id}:released`) makes the stream drop the repeat
//! within its duplicate window.

use countersign_events::data::{
    EntryKind, EntryRegistered, EntryReleased, RegistrationEntry, ReleaseReason, TaskRunRef,
};
use countersign_events::{PublishError, Publisher};

use crate::state::{NodeAliasRegistration, PodRegistration};

/// Publishes the registrar's audit events.
#[derive(Debug, Clone)]
pub struct Audit {
    publisher: Publisher,
}

impl Audit {
    /// Audit events through `publisher` (source `/countersign/registrar`).
    pub fn new(publisher: Publisher) -> Audit {
        Audit { publisher }
    }

    /// A workload entry of `taskrun`'s pod exists.
    pub async fn workload_registered(
        &self,
        taskrun: &TaskRunRef,
        pod: &PodRegistration,
    ) -> Result<(), PublishError> {
        self.publisher
            .publish_data(EntryRegistered {
                entry: workload_entry(taskrun, pod),
            })
            .await
            .map(drop)
    }

    /// A workload entry of `taskrun`'s pod is gone.
    pub async fn workload_released(
        &self,
        taskrun: &TaskRunRef,
        pod: &PodRegistration,
        reason: ReleaseReason,
    ) -> Result<(), PublishError> {
        self.publisher
            .publish_data(EntryReleased {
                entry: workload_entry(taskrun, pod),
                release_reason: reason,
            })
            .await
            .map(drop)
    }

    /// A node alias entry exists.
    pub async fn node_alias_registered(
        &self,
        alias: &NodeAliasRegistration,
    ) -> Result<(), PublishError> {
        self.publisher
            .publish_data(EntryRegistered {
                entry: node_alias_entry(alias),
            })
            .await
            .map(drop)
    }

    /// A node alias entry is gone.
    pub async fn node_alias_released(
        &self,
        alias: &NodeAliasRegistration,
        reason: ReleaseReason,
    ) -> Result<(), PublishError> {
        self.publisher
            .publish_data(EntryReleased {
                entry: node_alias_entry(alias),
                release_reason: reason,
            })
            .await
            .map(drop)
    }
}

fn workload_entry(taskrun: &TaskRunRef, pod: &PodRegistration) -> RegistrationEntry {
    RegistrationEntry {
        entry_id: pod.entry_id.clone(),
        spiffe_id: pod.spiffe_id.clone(),
        parent_id: pod.parent_id.clone(),
        selectors: pod.selectors.clone(),
        kind: EntryKind::Workload,
        cluster: taskrun.cluster.clone(),
        taskrun: Some(taskrun.clone()),
        node_name: Some(pod.node_name.clone()),
        expires_at: Some(pod.expires_at),
    }
}

fn node_alias_entry(alias: &NodeAliasRegistration) -> RegistrationEntry {
    RegistrationEntry {
        entry_id: alias.entry_id.clone(),
        spiffe_id: alias.spiffe_id.clone(),
        parent_id: alias.parent_id.clone(),
        selectors: alias.selectors.clone(),
        kind: EntryKind::NodeAlias,
        cluster: alias.cluster.clone(),
        taskrun: None,
        node_name: Some(alias.node_name.clone()),
        expires_at: Some(alias.expires_at),
    }
}
