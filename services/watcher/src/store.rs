//! What the watches last saw of each TaskRun and pod, by namespace and name.
//!
//! kube's reflector store is not used, for two things the watcher needs that it does not do:
//!
//! - **Lists applied in place.** kube's store collects a (re)list aside and swaps it in when the
//!   list completes, so nothing listed can be processed before every object has arrived, and
//!   every object is held in full until then. Here a listed object replaces its entry at once;
//!   when the list completes, the entries it did not return are removed
//!   ([`ObjectStore::end_list`]). Every entry is always some version the API returned, which is
//!   all level-triggered processing needs, and the workers can process TaskRuns while their pods
//!   are being listed.
//! - **Settling.** Once a TaskRun's `finished` is published nothing but `deleted` is published
//!   for it, so its results and termination messages are no longer needed. The worker replaces
//!   the stored objects with settled copies ([`ObjectStore::replace_if_current`]), and only if
//!   the entry is still the version it read, so a newer version is never lost.
//!
//! The memory policy lives here too: what is kept of an object when it is stored
//! ([`trim_taskrun`], [`trim_pod`]: only what the watcher reads) and once it is settled
//! ([`TaskRun::settled`], [`TaskRunPod::settled`]: only its identity).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use countersign_tekton::{SUCCEEDED_CONDITION, TaskRun, TaskRunPod};

/// An object's namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl ObjectKey {
    /// The key of `name` in `namespace`.
    pub fn new(namespace: &str, name: &str) -> ObjectKey {
        ObjectKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

#[derive(Debug)]
struct Inner<K> {
    objects: HashMap<ObjectKey, Arc<K>>,
    /// While a (re)list runs: the keys it returned so far.
    listing: Option<HashSet<ObjectKey>>,
}

/// The objects of one kind in one scope.
#[derive(Debug)]
pub struct ObjectStore<K> {
    inner: Mutex<Inner<K>>,
}

impl<K> Default for ObjectStore<K> {
    fn default() -> Self {
        ObjectStore {
            inner: Mutex::new(Inner {
                objects: HashMap::new(),
                listing: None,
            }),
        }
    }
}

impl<K> ObjectStore<K> {
    fn lock(&self) -> MutexGuard<'_, Inner<K>> {
        // Every critical section leaves the map consistent, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The object under `key`.
    pub fn get(&self, key: &ObjectKey) -> Option<Arc<K>> {
        self.lock().objects.get(key).cloned()
    }

    /// A (re)list starts: from now until [`end_list`](Self::end_list) the listed keys are noted.
    pub fn begin_list(&self) {
        self.lock().listing = Some(HashSet::new());
    }

    /// Stores `object` (listed, added or modified) under `key`.
    pub fn apply(&self, key: ObjectKey, object: Arc<K>) {
        let mut inner = self.lock();
        if let Some(listing) = inner.listing.as_mut() {
            listing.insert(key.clone());
        }
        inner.objects.insert(key, object);
    }

    /// Removes the object under `key` (deleted).
    pub fn remove(&self, key: &ObjectKey) -> Option<Arc<K>> {
        self.lock().objects.remove(key)
    }

    /// The (re)list is complete: removes and returns the objects it did not return.
    pub fn end_list(&self) -> Vec<(ObjectKey, Arc<K>)> {
        let mut inner = self.lock();
        let Some(listed) = inner.listing.take() else {
            return Vec::new();
        };
        let vanished: Vec<ObjectKey> = inner
            .objects
            .keys()
            .filter(|key| !listed.contains(*key))
            .cloned()
            .collect();
        vanished
            .into_iter()
            .filter_map(|key| {
                let object = inner.objects.remove(&key)?;
                Some((key, object))
            })
            .collect()
    }

    /// Replaces the object under `key` with `replacement` if it is still `current` (the same
    /// allocation); returns whether it did.
    pub fn replace_if_current(&self, key: &ObjectKey, current: &Arc<K>, replacement: K) -> bool {
        let mut inner = self.lock();
        match inner.objects.get_mut(key) {
            Some(stored) if Arc::ptr_eq(stored, current) => {
                *stored = Arc::new(replacement);
                true
            }
            _ => false,
        }
    }
}

// === the memory policy ===

/// The copy the store keeps of an object nothing but `deleted` can be published for any more.
pub trait Settle: Sized {
    /// Whether a settled copy would drop nothing ([`Settle::settled`]).
    fn is_settled(&self) -> bool;

    /// The copy kept once the object's TaskRun is settled.
    fn settled(&self) -> Self;
}

impl Settle for TaskRun {
    fn is_settled(&self) -> bool {
        self.status.is_none()
    }

    /// The copy kept of a TaskRun whose `finished` is published (or that is deleted): nothing but
    /// `deleted` can be published for it any more, which needs only its identity. So the copy is
    /// its namespace, name, UID, creation time and spec, without the status (results, step
    /// states, termination messages: the bulk of it). Deriving from it gives `created` alone,
    /// which is published already.
    fn settled(&self) -> TaskRun {
        TaskRun {
            metadata: ObjectMeta {
                name: self.metadata.name.clone(),
                namespace: self.metadata.namespace.clone(),
                uid: self.metadata.uid.clone(),
                creation_timestamp: self.metadata.creation_timestamp.clone(),
                ..ObjectMeta::default()
            },
            spec: self.spec.clone(),
            status: None,
        }
    }
}

impl Settle for TaskRunPod {
    fn is_settled(&self) -> bool {
        self.spec.is_none() && self.status.is_none()
    }

    /// The copy kept of a pod whose TaskRun is settled: its identity and what ties it to its
    /// TaskRun, without spec and status (container states and termination messages).
    fn settled(&self) -> TaskRunPod {
        TaskRunPod {
            metadata: self.metadata.clone(),
            taskrun_name: self.taskrun_name.clone(),
            taskrun_uids: self.taskrun_uids.clone(),
            spec: None,
            status: None,
        }
    }
}

/// Drops what the watcher never reads of a TaskRun's metadata (labels, annotations, owners, the
/// resource version...), so the store stays small: the watch already applied the label
/// selector, and has taken the resource version it resumes from before the object gets here.
pub fn trim_taskrun(taskrun: &mut TaskRun) {
    let metadata = &mut taskrun.metadata;
    metadata.managed_fields = None;
    metadata.annotations = None;
    metadata.labels = None;
    metadata.finalizers = None;
    metadata.generate_name = None;
    metadata.owner_references = None;
    metadata.resource_version = None;
    metadata.self_link = None;
    // Fresh from the parser the status is not shared yet. Only the `Succeeded` condition is read,
    // and the parser leaves room to grow in every list.
    if let Some(status) = taskrun.status.as_mut().and_then(Arc::get_mut) {
        status
            .conditions
            .retain(|condition| condition.condition_type == SUCCEEDED_CONDITION);
        status.conditions.shrink_to_fit();
        status.steps.shrink_to_fit();
        status.results.shrink_to_fit();
    }
}

/// Drops the resource version of a pod, once the watch has taken it (the store never reads it),
/// and the room the parser left to grow in its lists.
pub fn trim_pod(pod: &mut TaskRunPod) {
    pod.metadata.resource_version = None;
    if let Some(spec) = pod.spec.as_mut() {
        spec.containers.shrink_to_fit();
    }
    if let Some(status) = pod.status.as_mut().and_then(Arc::get_mut) {
        status.container_statuses.shrink_to_fit();
    }
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
    fn trimming_a_taskrun_keeps_what_the_watcher_reads() {
        let mut taskrun: TaskRun =
            serde_json::from_value(fixture("taskrun/taskrun-03-succeeded.json")).unwrap();
        let before = taskrun.clone();
        trim_taskrun(&mut taskrun);
        assert!(taskrun.metadata.labels.is_none());
        assert!(taskrun.metadata.resource_version.is_none());
        assert_eq!(taskrun.uid(), before.uid());
        assert_eq!(
            taskrun.metadata.creation_timestamp,
            before.metadata.creation_timestamp
        );
        assert_eq!(taskrun.status, before.status);
        assert_eq!(taskrun.spec, before.spec);
    }

    #[test]
    fn trimming_keeps_only_the_succeeded_condition() {
        let mut value = fixture("taskrun/taskrun-03-succeeded.json");
        value["status"]["conditions"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "TrustedResourcesVerified", "status": "True"}));
        let mut taskrun: TaskRun = serde_json::from_value(value).unwrap();
        assert_eq!(taskrun.status.as_ref().unwrap().conditions.len(), 2);
        trim_taskrun(&mut taskrun);
        let status = taskrun.status.as_ref().unwrap();
        assert_eq!(status.conditions.len(), 1);
        assert_eq!(taskrun.succeeded_condition().unwrap().status, "True");
        assert_eq!(status.steps.len(), 2);
        assert_eq!(status.results.len(), 4);
    }

    #[test]
    fn trimming_a_pod_drops_the_resource_version_the_watch_took() {
        let mut value = fixture("pod/taskrun-pod-spire-trimmed.json");
        value["metadata"]["resourceVersion"] = "42".into();
        let mut pod: TaskRunPod = serde_json::from_value(value).unwrap();
        trim_pod(&mut pod);
        assert!(pod.metadata.resource_version.is_none());
        assert!(pod.belongs_to("6f1c2b8e-4d3a-4e7f-9a51-2c8d0e7b3f14"));
    }

    fn count<K>(store: &ObjectStore<K>) -> usize {
        store.lock().objects.len()
    }

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new("ns", name)
    }

    #[test]
    fn a_relist_applies_in_place_and_removes_what_it_did_not_return() {
        let store = ObjectStore::default();
        store.apply(key("a"), Arc::new(1));
        store.apply(key("b"), Arc::new(2));

        store.begin_list();
        store.apply(key("a"), Arc::new(10));
        assert_eq!(
            store.get(&key("a")).as_deref(),
            Some(&10),
            "a listed object is visible at once"
        );
        assert_eq!(
            store.get(&key("b")).as_deref(),
            Some(&2),
            "an object not listed yet stays until the list completes"
        );
        store.apply(key("c"), Arc::new(3));
        let vanished = store.end_list();
        assert_eq!(vanished.len(), 1);
        assert_eq!(vanished[0].0, key("b"));
        assert_eq!(*vanished[0].1, 2);
        assert_eq!(count(&store), 2);
        assert!(store.get(&key("b")).is_none());

        assert!(
            store.end_list().is_empty(),
            "outside a list nothing is removed"
        );
        store.apply(key("d"), Arc::new(4));
        assert_eq!(count(&store), 3);
    }

    #[test]
    fn only_the_version_read_is_replaced() {
        let store = ObjectStore::default();
        let read = Arc::new(1);
        store.apply(key("a"), Arc::clone(&read));
        assert!(store.replace_if_current(&key("a"), &read, 2));
        assert_eq!(store.get(&key("a")).as_deref(), Some(&2));

        // A newer version arrived after the read: it stays.
        let newer = Arc::new(3);
        store.apply(key("a"), Arc::clone(&newer));
        assert!(!store.replace_if_current(&key("a"), &read, 4));
        assert_eq!(store.get(&key("a")).as_deref(), Some(&3));

        // Deleted meanwhile: nothing comes back.
        store.remove(&key("a"));
        assert!(!store.replace_if_current(&key("a"), &newer, 5));
        assert_eq!(count(&store), 0);
    }
}
