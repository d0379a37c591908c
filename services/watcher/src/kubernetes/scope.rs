//! One scope of the Kubernetes source (all namespaces, or one): its TaskRun and pod stores, the
//! index from a TaskRun to its pods, and the TaskRuns put off until the scope's pods are listed.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

use super::lock;
use crate::store::{ObjectKey, ObjectStore};
use countersign_tekton::{TaskRun, TaskRunPod};

/// A TaskRun by namespace and name: the unit of work, and its key in the TaskRun store.
pub type TaskRunKey = ObjectKey;

impl ObjectKey {
    pub(super) fn of_taskrun(taskrun: &TaskRun) -> Option<TaskRunKey> {
        Some(TaskRunKey {
            namespace: taskrun.metadata.namespace.clone()?,
            name: taskrun.metadata.name.clone()?,
        })
    }

    pub(super) fn of_pod(pod: &TaskRunPod) -> Option<TaskRunKey> {
        Some(TaskRunKey {
            namespace: pod.metadata.namespace.clone()?,
            name: pod.taskrun_name()?.to_owned(),
        })
    }
}

/// The stores of one scope: all namespaces, or one.
#[derive(Debug)]
pub(super) struct Scope {
    pub(super) namespace: Option<String>,
    pub(super) taskruns: ObjectStore<TaskRun>,
    pub(super) pods: ObjectStore<TaskRunPod>,
    /// Set once the scope's TaskRuns have been listed: the pods are listed after them.
    pub(super) taskruns_listed: watch::Sender<bool>,
    /// Whether the pods have been listed once, and the TaskRuns put off until then.
    pub(super) pods_listing: Mutex<PodsListing>,
    /// `(namespace, TaskRun name)` to the names of the pods labelled with it (nearly always one:
    /// a list, not a set, for its size).
    pub(super) pod_index: Mutex<HashMap<TaskRunKey, Vec<String>>>,
}

impl Scope {
    pub(super) fn covers(&self, namespace: &str) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|scoped| scoped == namespace)
    }

    pub(super) fn pod_index(&self) -> MutexGuard<'_, HashMap<TaskRunKey, Vec<String>>> {
        self.pod_index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the scope's pods have been listed once.
    pub(super) fn pods_listed(&self) -> bool {
        lock(&self.pods_listing).listed
    }

    /// Puts `key` off until the scope's pods are listed when it `waits` for its pod (false once
    /// they are listed: nothing is put off then); a key that no longer waits is no longer put off.
    pub(super) fn defer_until_pods_listed(&self, key: &TaskRunKey, waits: bool) -> bool {
        let mut listing = lock(&self.pods_listing);
        if listing.listed {
            return false;
        }
        if waits {
            listing.deferred.insert(key.clone());
        } else {
            listing.deferred.remove(key);
        }
        waits
    }

    /// The pods are listed: returns the TaskRuns put off until then.
    pub(super) fn mark_pods_listed(&self) -> HashSet<TaskRunKey> {
        let mut listing = lock(&self.pods_listing);
        listing.listed = true;
        std::mem::take(&mut listing.deferred)
    }
}

/// Whether a scope's pods have been listed once, and what waits for it.
#[derive(Debug, Default)]
pub(super) struct PodsListing {
    pub(super) listed: bool,
    pub(super) deferred: HashSet<TaskRunKey>,
}

/// Removes pod `name` from the pods of TaskRun `key`.
pub(super) fn unindex_pod(
    index: &mut HashMap<TaskRunKey, Vec<String>>,
    key: &TaskRunKey,
    name: &str,
) {
    if let Some(names) = index.get_mut(key) {
        names.retain(|known| known != name);
        if names.is_empty() {
            index.remove(key);
        }
    }
}

/// Adds pod `name` to the pods of TaskRun `key`, once.
pub(super) fn index_pod(
    index: &mut HashMap<TaskRunKey, Vec<String>>,
    key: TaskRunKey,
    name: String,
) {
    let names = index.entry(key).or_default();
    if !names.contains(&name) {
        names.push(name);
    }
}
