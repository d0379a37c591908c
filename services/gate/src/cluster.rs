//! What the gate knows of the cluster, kept by watches and read from memory: PipelineRuns (their
//! Pipeline spec and child references), TaskRuns (UID and `status.results`, with an index of the
//! artifact digests their results name) and namespaces (the gate's mode, from a label).
//!
//! Each kind is a [`Cache`] fed by a `kube::runtime::watcher` (list, then watch, relisting after
//! a lost watch); an entry is trimmed to what the gate reads when it is stored. A request that
//! needs an object the cache does not have yet waits for the next change, up to a bound
//! ([`Cache::wait_for`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use countersign_identity::vsa::find_artifacts;
use countersign_tekton::TaskRun;
use futures::StreamExt as _;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::decide::signed_digest;
use crate::pipeline::{PipelineRunView, status_results};
use crate::substitution::ParamValue;

/// `(namespace, name)`; cluster-scoped objects have an empty namespace.
pub type ObjectKey = (String, String);

/// An entry a [`Cache`] keeps, made from the object when it is stored.
pub trait CacheEntry: Send + Sync + Sized + 'static {
    /// The entry of `object`, or `None` to keep nothing of it.
    fn from_object(object: &DynamicObject) -> Option<Self>;
    /// The keys this entry is indexed under (artifact digests for TaskRuns).
    fn index_keys(&self) -> Vec<String> {
        Vec::new()
    }
}

#[derive(Debug)]
struct Entries<T> {
    objects: HashMap<ObjectKey, Arc<T>>,
    index: HashMap<String, BTreeSet<ObjectKey>>,
    /// The keys seen during a relist (the rest is removed at its end).
    listing: Option<HashSet<ObjectKey>>,
}

/// A watched kind, in memory. Cheap to clone.
#[derive(Debug)]
pub struct Cache<T> {
    entries: Arc<Mutex<Entries<T>>>,
    changed: watch::Sender<u64>,
    synced: watch::Sender<bool>,
}

impl<T> Clone for Cache<T> {
    fn clone(&self) -> Self {
        Cache {
            entries: Arc::clone(&self.entries),
            changed: self.changed.clone(),
            synced: self.synced.clone(),
        }
    }
}

impl<T: CacheEntry> Default for Cache<T> {
    fn default() -> Self {
        Cache::new()
    }
}

fn key_of(object: &DynamicObject) -> Option<ObjectKey> {
    Some((
        object.metadata.namespace.clone().unwrap_or_default(),
        object.metadata.name.clone()?,
    ))
}

impl<T: CacheEntry> Cache<T> {
    /// An empty cache, not synced.
    pub fn new() -> Cache<T> {
        Cache {
            entries: Arc::new(Mutex::new(Entries {
                objects: HashMap::new(),
                index: HashMap::new(),
                listing: None,
            })),
            changed: watch::channel(0).0,
            synced: watch::channel(false).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Entries<T>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The entry of `namespace/name`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<T>> {
        self.lock()
            .objects
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// The entries indexed under `key`.
    pub fn indexed(&self, key: &str) -> Vec<(ObjectKey, Arc<T>)> {
        let entries = self.lock();
        entries
            .index
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|object_key| {
                entries
                    .objects
                    .get(object_key)
                    .map(|entry| (object_key.clone(), Arc::clone(entry)))
            })
            .collect()
    }

    /// Whether the first list completed.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Waits until the first list completed.
    pub async fn wait_synced(&self) {
        let mut synced = self.synced.subscribe();
        let _ = synced.wait_for(|synced| *synced).await;
    }

    /// The first entry of `namespace/name` that `accept` takes, waiting up to `bound` for the
    /// watch to bring one.
    pub async fn wait_for(
        &self,
        namespace: &str,
        name: &str,
        bound: Duration,
        accept: impl Fn(&T) -> bool,
    ) -> Option<Arc<T>> {
        let mut changed = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            if let Some(entry) = self.get(namespace, name)
                && accept(&entry)
            {
                return Some(entry);
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => continue,
                _ => return self.get(namespace, name).filter(|entry| accept(entry)),
            }
        }
    }

    /// Stores or replaces `object`'s entry.
    pub fn apply(&self, object: &DynamicObject) {
        let Some(key) = key_of(object) else { return };
        let entry = T::from_object(object).map(Arc::new);
        let mut entries = self.lock();
        if let Some(listing) = entries.listing.as_mut() {
            listing.insert(key.clone());
        }
        remove_locked(&mut entries, &key);
        if let Some(entry) = entry {
            for index_key in entry.index_keys() {
                entries
                    .index
                    .entry(index_key)
                    .or_default()
                    .insert(key.clone());
            }
            entries.objects.insert(key, entry);
        }
        drop(entries);
        self.changed.send_modify(|generation| *generation += 1);
    }

    /// Removes `object`'s entry.
    pub fn delete(&self, object: &DynamicObject) {
        let Some(key) = key_of(object) else { return };
        remove_locked(&mut self.lock(), &key);
        self.changed.send_modify(|generation| *generation += 1);
    }

    fn begin_list(&self) {
        self.lock().listing = Some(HashSet::new());
    }

    fn end_list(&self) {
        let mut entries = self.lock();
        if let Some(listed) = entries.listing.take() {
            let gone: Vec<ObjectKey> = entries
                .objects
                .keys()
                .filter(|key| !listed.contains(*key))
                .cloned()
                .collect();
            for key in gone {
                remove_locked(&mut entries, &key);
            }
        }
        drop(entries);
        self.synced.send_replace(true);
        self.changed.send_modify(|generation| *generation += 1);
    }

    /// Feeds the cache from a watch on `api` until `token` is cancelled.
    pub async fn run(&self, api: Api<DynamicObject>, kind: &'static str, token: CancellationToken) {
        let stream =
            watcher::watcher(api, watcher::Config::default().page_size(500)).default_backoff();
        let mut stream = std::pin::pin!(stream);
        loop {
            let event = tokio::select! {
                () = token.cancelled() => return,
                event = stream.next() => event,
            };
            match event {
                None => return,
                Some(Ok(Event::Init)) => self.begin_list(),
                Some(Ok(Event::InitApply(object) | Event::Apply(object))) => self.apply(&object),
                Some(Ok(Event::InitDone)) => self.end_list(),
                Some(Ok(Event::Delete(object))) => self.delete(&object),
                Some(Err(error)) => {
                    tracing::warn!(kind, error = %countersign_runtime::error_chain(&error), "watch failed; retrying");
                }
            }
        }
    }
}

fn remove_locked<T: CacheEntry>(entries: &mut Entries<T>, key: &ObjectKey) {
    if let Some(old) = entries.objects.remove(key) {
        for index_key in old.index_keys() {
            if let Some(keys) = entries.index.get_mut(&index_key) {
                keys.remove(key);
                if keys.is_empty() {
                    entries.index.remove(&index_key);
                }
            }
        }
    }
}

// === the kinds ===

/// `tekton.dev/v1` PipelineRuns.
pub fn pipelinerun_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("tekton.dev", "v1", "PipelineRun"),
        "pipelineruns",
    )
}

/// `tekton.dev/v1` TaskRuns.
pub fn taskrun_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("tekton.dev", "v1", "TaskRun"),
        "taskruns",
    )
}

/// Namespaces.
pub fn namespace_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "Namespace"), "namespaces")
}

impl CacheEntry for PipelineRunView {
    fn from_object(object: &DynamicObject) -> Option<Self> {
        let value = serde_json::to_value(object).ok()?;
        match PipelineRunView::from_json(&value) {
            Ok(view) => Some(view),
            Err(error) => {
                tracing::warn!(error = %countersign_runtime::error_chain(&error), "PipelineRun skipped");
                None
            }
        }
    }
}

/// An artifact a TaskRun's results name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducedArtifact {
    /// `alg:hex`.
    pub digest: String,
    /// Where it is.
    pub uri: String,
    /// The result that names the digest.
    pub result: String,
}

/// What the gate keeps of a TaskRun.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRunEntry {
    /// Its UID.
    pub uid: String,
    /// `status.results`.
    pub results: BTreeMap<String, ParamValue>,
    /// The artifacts its results name by Tekton Chains' type hints.
    pub artifacts: Vec<ProducedArtifact>,
}

impl TaskRunEntry {
    /// The SHA-256 (hex) of each result's canonical value.
    pub fn result_digest(&self, result: &str) -> Option<String> {
        self.results.get(result).map(signed_digest)
    }
}

/// The raw text of a result as a step wrote it, for the type-hint finder.
fn raw_text(value: &ParamValue) -> String {
    match value {
        ParamValue::String(text) => text.clone(),
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

impl CacheEntry for TaskRunEntry {
    fn from_object(object: &DynamicObject) -> Option<Self> {
        let uid = object.metadata.uid.clone()?;
        let taskrun: TaskRun = serde_json::to_value(object)
            .and_then(serde_json::from_value)
            .ok()?;
        let results = status_results(&taskrun);
        let raw: Vec<(String, String)> = results
            .iter()
            .map(|(name, value)| (name.clone(), raw_text(value)))
            .collect();
        let artifacts = find_artifacts(
            raw.iter()
                .map(|(name, text)| (name.as_str(), text.as_str())),
        )
        .artifacts
        .into_iter()
        .map(|artifact| ProducedArtifact {
            digest: artifact.digest.to_string(),
            uri: artifact.uri,
            result: artifact.result,
        })
        .collect();
        Some(TaskRunEntry {
            uid,
            results,
            artifacts,
        })
    }

    fn index_keys(&self) -> Vec<String> {
        self.artifacts
            .iter()
            .map(|artifact| artifact.digest.clone())
            .collect()
    }
}

/// What the gate does in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GateMode {
    /// Deny what fails the rule.
    Enforce,
    /// Admit, with an admission warning per failure (and a `warned` decision).
    Warn,
    /// Admit everything, check nothing.
    Off,
}

impl GateMode {
    /// The label value (`enforce`, `warn`, `off`).
    pub fn as_str(self) -> &'static str {
        match self {
            GateMode::Enforce => "enforce",
            GateMode::Warn => "warn",
            GateMode::Off => "off",
        }
    }

    /// The mode a label value names.
    pub fn parse(text: &str) -> Option<GateMode> {
        match text {
            "enforce" => Some(GateMode::Enforce),
            "warn" => Some(GateMode::Warn),
            "off" => Some(GateMode::Off),
            _ => None,
        }
    }
}

/// A namespace's labels that matter: the gate's label values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceEntry {
    /// The labels.
    pub labels: BTreeMap<String, String>,
}

impl CacheEntry for NamespaceEntry {
    fn from_object(object: &DynamicObject) -> Option<Self> {
        Some(NamespaceEntry {
            labels: object.metadata.labels.clone().unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn taskrun(name: &str, uid: &str, digest: &str) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "tekton.dev/v1", "kind": "TaskRun",
            "metadata": {"name": name, "namespace": "ci", "uid": uid},
            "status": {"results": [
                {"name": "IMAGE_URL", "type": "string", "value": "r.example/app"},
                {"name": "IMAGE_DIGEST", "type": "string", "value": digest}
            ]}
        }))
        .unwrap()
    }

    const DIGEST_A: &str =
        "sha256:5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c";
    const DIGEST_B: &str =
        "sha256:0bad0bad0bad0bad0bad0bad0bad0bad0bad0bad0bad0bad0bad0bad0bad0bad";

    #[test]
    fn the_digest_index_follows_updates_deletes_and_relists() {
        let cache: Cache<TaskRunEntry> = Cache::new();
        cache.apply(&taskrun("build", "u1", DIGEST_A));
        assert_eq!(cache.indexed(DIGEST_A).len(), 1);
        cache.apply(&taskrun("build", "u1", DIGEST_B));
        assert!(cache.indexed(DIGEST_A).is_empty());
        assert_eq!(
            cache.indexed(DIGEST_B)[0].1.artifacts[0].result,
            "IMAGE_DIGEST"
        );
        cache.delete(&taskrun("build", "u1", DIGEST_B));
        assert!(cache.indexed(DIGEST_B).is_empty());
        cache.apply(&taskrun("old", "u2", DIGEST_A));
        cache.begin_list();
        cache.apply(&taskrun("new", "u3", DIGEST_B));
        cache.end_list();
        assert!(cache.get("ci", "old").is_none());
        assert!(cache.get("ci", "new").is_some());
        assert!(cache.is_synced());
    }

    #[tokio::test]
    async fn a_request_waits_for_the_object_to_arrive() {
        let cache: Cache<TaskRunEntry> = Cache::new();
        let waiter = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .wait_for("ci", "build", Duration::from_secs(30), |_| true)
                    .await
            })
        };
        tokio::task::yield_now().await;
        cache.apply(&taskrun("build", "u1", DIGEST_A));
        assert_eq!(waiter.await.unwrap().unwrap().uid, "u1");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_stops_waiting_at_the_bound() {
        let cache: Cache<TaskRunEntry> = Cache::new();
        assert!(
            cache
                .wait_for("ci", "build", Duration::from_secs(2), |_| true)
                .await
                .is_none()
        );
    }

    #[test]
    fn modes_parse_from_their_label_values() {
        for mode in [GateMode::Enforce, GateMode::Warn, GateMode::Off] {
            assert_eq!(GateMode::parse(mode.as_str()), Some(mode));
        }
        assert_eq!(GateMode::parse("Enforce"), None);
    }
}
