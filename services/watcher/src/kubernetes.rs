//! The Kubernetes source: kube-rs watchers on TaskRuns and on their pods feeding our stores, and
//! the workers that turn what they see into published transitions.
//!
//! - Scopes: one cluster-wide pair of watches, or one pair per configured namespace, each with the
//!   configured label selector (pods are also selected by `tekton.dev/taskRun`). Watches recover
//!   with kube's default backoff; errors and (re)lists are counted.
//! - Level-triggered processing: watch events update the [`ObjectStore`]s and queue the
//!   TaskRun's `(namespace, name)` on a [`WorkQueue`]; a worker reads the TaskRun and its pod from
//!   the stores as they are now, derives every transition ([`crate::derive`]) and hands them to
//!   the [`Emitter`], which publishes what is not yet published. Lists are applied in place, so
//!   workers process TaskRuns while they are being listed (see [`crate::store`]).
//! - Start-up order, per scope: the TaskRuns are listed first, then the pods. Until the scope's
//!   pods have been listed once, a TaskRun whose pod is not stored yet waits (deriving without
//!   the pod would publish `finished` without its steps); it is queued again when its pod arrives
//!   or when the pod list completes. So the backlog is published while the pods stream in, and
//!   the bulk of it (results and signed termination messages) is not all held at once. The
//!   watches stop reading while `QUEUE_LIMIT` (1,000) TaskRuns wait for a worker, so a list goes no
//!   faster than the workers.
//! - Settling: once a TaskRun's `finished` is published (or it is deleted), nothing but `deleted`
//!   is ever published for it, so the stored TaskRun and pod are replaced by copies without their
//!   results and termination messages ([`TaskRun::settled`]). An object that arrives already
//!   settled in the [`TransitionLog`](crate::state::TransitionLog) (after a restart) is stored
//!   settled at once.
//! - Deletions never hang on watch `Delete` events alone. A `Delete` leaves a tombstone (the last
//!   state, whose transitions are published first). After every (re)list, each live TaskRun of the
//!   [`TransitionLog`](crate::state::TransitionLog) in the scope that the list did not return is a
//!   suspect. For both, the worker asks the API for the TaskRun by name and publishes `deleted`
//!   when it is gone (or has another UID). Asking keeps a TaskRun that only the CloudEvents ingress
//!   has seen so far, or one that merely stopped matching the label selector, from being declared
//!   deleted.
//! - Readiness: the `reflectors synced` latch is released once every watch has completed its
//!   first list.
//!
//! The watcher only gets, lists and watches TaskRuns and pods; it never writes to the cluster.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use countersign_runtime::health::Latch;
use futures::future::BoxFuture;
use futures::{FutureExt as _, Stream, StreamExt as _};
use kube::api::Api;
use kube::core::{Selector, SelectorExt as _};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::derive::{DeriveSettings, derive_transitions};
use crate::emit::{EmitError, Emitter};
use crate::metrics::{Resource, Source, WatcherMetrics};
use crate::queue::WorkQueue;
use crate::store::{ObjectKey, ObjectStore};
use crate::tekton::{TASKRUN_LABEL, TaskRun, TaskRunPod, trim_pod, trim_taskrun};

/// How many objects one page of a (re)list holds. kube's default (500) makes a page of completed
/// pods several MiB of JSON, all parsed at once; smaller pages keep that transient peak (and the
/// heap fragmentation it leaves) small, for a few more requests per list.
const LIST_PAGE_SIZE: u32 = 100;

/// How many TaskRuns may wait in the work queue before the watches stop reading until the
/// workers catch up: a backlog of listed objects is then held in the stores a little at a time
/// rather than all at once (the workers settle what they have published).
const QUEUE_LIMIT: usize = 1_000;

/// A TaskRun by namespace and name: the unit of work, and its key in the TaskRun store.
pub type TaskRunKey = ObjectKey;

impl ObjectKey {
    fn of_taskrun(taskrun: &TaskRun) -> Option<TaskRunKey> {
        Some(TaskRunKey {
            namespace: taskrun.metadata.namespace.clone()?,
            name: taskrun.metadata.name.clone()?,
        })
    }

    fn of_pod(pod: &TaskRunPod) -> Option<TaskRunKey> {
        Some(TaskRunKey {
            namespace: pod.metadata.namespace.clone()?,
            name: pod.taskrun_name()?.to_owned(),
        })
    }
}

/// Why processing a TaskRun failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Publishing or recording failed.
    #[error(transparent)]
    Emit(#[from] EmitError),
    /// The API could not confirm whether a TaskRun still exists.
    #[error("asking the API whether {namespace}/{name} still exists")]
    Confirm {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl ProcessError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ProcessError::Emit(error) => error.is_transient(),
            ProcessError::Confirm { .. } => true,
        }
    }
}

/// The stores of one scope: all namespaces, or one.
#[derive(Debug)]
struct Scope {
    namespace: Option<String>,
    taskruns: ObjectStore<TaskRun>,
    pods: ObjectStore<TaskRunPod>,
    /// Set once the scope's TaskRuns have been listed: the pods are listed after them.
    taskruns_listed: watch::Sender<bool>,
    /// Whether the pods have been listed once, and the TaskRuns put off until then.
    pods_listing: Mutex<PodsListing>,
    /// `(namespace, TaskRun name)` to the names of the pods labelled with it (nearly always one:
    /// a list, not a set, for its size).
    pod_index: Mutex<HashMap<TaskRunKey, Vec<String>>>,
}

impl Scope {
    fn covers(&self, namespace: &str) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|scoped| scoped == namespace)
    }

    fn pod_index(&self) -> MutexGuard<'_, HashMap<TaskRunKey, Vec<String>>> {
        self.pod_index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the scope's pods have been listed once.
    fn pods_listed(&self) -> bool {
        lock(&self.pods_listing).listed
    }

    /// Puts `key` off until the scope's pods are listed when it `waits` for its pod (false once
    /// they are listed: nothing is put off then); a key that no longer waits is no longer put off.
    fn defer_until_pods_listed(&self, key: &TaskRunKey, waits: bool) -> bool {
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
    fn mark_pods_listed(&self) -> HashSet<TaskRunKey> {
        let mut listing = lock(&self.pods_listing);
        listing.listed = true;
        std::mem::take(&mut listing.deferred)
    }
}

/// Whether a scope's pods have been listed once, and what waits for it.
#[derive(Debug, Default)]
struct PodsListing {
    listed: bool,
    deferred: HashSet<TaskRunKey>,
}

/// The Kubernetes source: stores, queue and what the workers need.
pub struct KubernetesSource {
    client: kube::Client,
    scopes: Vec<Scope>,
    selector: Selector,
    queue: WorkQueue<TaskRunKey>,
    /// The last state of TaskRuns the watch saw deleted, until processed.
    tombstones: Mutex<HashMap<TaskRunKey, Vec<Arc<TaskRun>>>>,
    /// UIDs of live records a relist did not return, until confirmed.
    suspects: Mutex<HashMap<TaskRunKey, BTreeSet<String>>>,
    emitter: Arc<Emitter>,
    settings: Arc<DeriveSettings>,
    metrics: WatcherMetrics,
    synced: watch::Sender<bool>,
    concurrency: usize,
}

impl std::fmt::Debug for KubernetesSource {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("KubernetesSource")
            .field("scopes", &self.scopes)
            .field("selector", &self.selector)
            .field("queued", &self.queue.len())
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

/// Removes pod `name` from the pods of TaskRun `key`.
fn unindex_pod(index: &mut HashMap<TaskRunKey, Vec<String>>, key: &TaskRunKey, name: &str) {
    if let Some(names) = index.get_mut(key) {
        names.retain(|known| known != name);
        if names.is_empty() {
            index.remove(key);
        }
    }
}

/// Adds pod `name` to the pods of TaskRun `key`, once.
fn index_pod(index: &mut HashMap<TaskRunKey, Vec<String>>, key: TaskRunKey, name: String) {
    let names = index.entry(key).or_default();
    if !names.contains(&name) {
        names.push(name);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves the data consistent, so a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl KubernetesSource {
    /// A source over `namespaces` (empty: all), selecting TaskRuns (and pods) with `selector`.
    pub fn new(
        client: kube::Client,
        namespaces: &[String],
        selector: Selector,
        concurrency: usize,
        emitter: Arc<Emitter>,
        settings: Arc<DeriveSettings>,
        metrics: WatcherMetrics,
    ) -> Arc<KubernetesSource> {
        let namespaces: Vec<Option<String>> = if namespaces.is_empty() {
            vec![None]
        } else {
            namespaces.iter().cloned().map(Some).collect()
        };
        let scopes = namespaces
            .into_iter()
            .map(|namespace| Scope {
                namespace,
                taskruns: ObjectStore::default(),
                pods: ObjectStore::default(),
                taskruns_listed: watch::channel(false).0,
                pods_listing: Mutex::new(PodsListing::default()),
                pod_index: Mutex::new(HashMap::new()),
            })
            .collect();
        let (synced, _) = watch::channel(false);
        Arc::new(KubernetesSource {
            client,
            scopes,
            selector,
            queue: WorkQueue::new(),
            tombstones: Mutex::new(HashMap::new()),
            suspects: Mutex::new(HashMap::new()),
            emitter,
            settings,
            metrics,
            synced,
            concurrency: concurrency.max(1),
        })
    }

    /// The watches and the workers, to spawn; they return when `token` is cancelled. `synced`
    /// is released once every watch has listed.
    pub fn tasks(
        self: &Arc<Self>,
        token: &CancellationToken,
        synced: Latch,
    ) -> Vec<BoxFuture<'static, ()>> {
        let mut tasks: Vec<BoxFuture<'static, ()>> = Vec::new();
        let remaining = Arc::new(AtomicUsize::new(self.scopes.len() * 2));
        for scope in 0..self.scopes.len() {
            tasks.push(
                Arc::clone(self)
                    .watch_taskruns(scope, token.clone(), Arc::clone(&remaining))
                    .boxed(),
            );
            tasks.push(
                Arc::clone(self)
                    .watch_pods(scope, token.clone(), Arc::clone(&remaining))
                    .boxed(),
            );
        }
        let mut synced_rx = self.synced.subscribe();
        let latch_token = token.clone();
        tasks.push(
            async move {
                tokio::select! {
                    () = latch_token.cancelled() => {}
                    result = synced_rx.wait_for(|synced| *synced) => {
                        if result.is_ok() {
                            tracing::info!("every watch has listed; processing TaskRuns");
                            synced.release();
                        }
                    }
                }
            }
            .boxed(),
        );
        for _ in 0..self.concurrency {
            tasks.push(Arc::clone(self).work(token.clone()).boxed());
        }
        tasks
    }

    /// Whether TaskRuns in `namespace` with `labels` are in this watcher's scope.
    pub fn in_scope(
        &self,
        namespace: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> bool {
        self.scope_for(namespace).is_some() && self.selector.matches(labels)
    }

    fn scope_for(&self, namespace: &str) -> Option<&Scope> {
        self.scopes.iter().find(|scope| scope.covers(namespace))
    }

    /// The pod of `taskrun` from the stores: `status.podName` when set; before that, the newest
    /// pod labelled with the TaskRun's name that belongs to it.
    pub fn pod_from_store(&self, taskrun: &TaskRun) -> Option<Arc<TaskRunPod>> {
        let namespace = taskrun.metadata.namespace.as_deref()?;
        let uid = taskrun.uid()?;
        let scope = self.scope_for(namespace)?;
        if let Some(pod_name) = taskrun.pod_name() {
            return scope
                .pods
                .get(&ObjectKey::new(namespace, pod_name))
                .filter(|pod| pod.belongs_to(uid));
        }
        let key = TaskRunKey::of_taskrun(taskrun)?;
        let names = scope.pod_index().get(&key).cloned().unwrap_or_default();
        names
            .iter()
            .filter_map(|name| scope.pods.get(&ObjectKey::new(namespace, name)))
            .filter(|pod| pod.belongs_to(uid))
            .max_by_key(|pod| {
                (
                    pod.metadata
                        .creation_timestamp
                        .as_ref()
                        .map(|time| time.0.as_second()),
                    pod.metadata.name.clone(),
                )
            })
    }

    /// The pod of `taskrun` for the CloudEvents ingress: from the stores, else (when the
    /// TaskRun names its pod) from the API.
    pub async fn lookup_pod(
        &self,
        taskrun: &TaskRun,
    ) -> Result<Option<Arc<TaskRunPod>>, kube::Error> {
        if let Some(pod) = self.pod_from_store(taskrun) {
            return Ok(Some(pod));
        }
        let (Some(namespace), Some(uid), Some(pod_name)) = (
            taskrun.metadata.namespace.as_deref(),
            taskrun.uid(),
            taskrun.pod_name(),
        ) else {
            return Ok(None);
        };
        let pods: Api<TaskRunPod> = Api::namespaced(self.client.clone(), namespace);
        let pod = pods.get_opt(pod_name).await?;
        Ok(pod.filter(|pod| pod.belongs_to(uid)).map(Arc::new))
    }

    // === watches ===

    async fn watch_taskruns(
        self: Arc<Self>,
        scope: usize,
        token: CancellationToken,
        remaining: Arc<AtomicUsize>,
    ) {
        let api: Api<TaskRun> = match &self.scopes[scope].namespace {
            Some(namespace) => Api::namespaced(self.client.clone(), namespace),
            None => Api::all(self.client.clone()),
        };
        let mut config = watcher::Config::default().page_size(LIST_PAGE_SIZE);
        if !self.selector.selects_all() {
            config = config.labels_from(&self.selector);
        }
        let stream = watcher::watcher(api, config)
            .default_backoff()
            .modify(trim_taskrun);
        let store = &self.scopes[scope].taskruns;
        let mut first_list = true;
        self.drive(stream, Resource::TaskRuns, &token, |event| match event {
            Event::Init => store.begin_list(),
            Event::InitApply(taskrun) | Event::Apply(taskrun) => self.store_taskrun(scope, taskrun),
            Event::InitDone => {
                store.end_list();
                self.suspect_vanished(scope);
                if std::mem::take(&mut first_list) {
                    self.scopes[scope].taskruns_listed.send_replace(true);
                    self.watch_listed(&remaining);
                }
            }
            Event::Delete(taskrun) => {
                if let Some(key) = TaskRunKey::of_taskrun(&taskrun) {
                    store.remove(&key);
                    if taskrun.uid().is_some() {
                        lock(&self.tombstones)
                            .entry(key.clone())
                            .or_default()
                            .push(Arc::new(taskrun));
                        self.queue.add(key);
                    }
                }
            }
        })
        .await;
    }

    /// Stores a listed, added or modified TaskRun (settled when the log says it is) and queues it.
    fn store_taskrun(&self, scope: usize, taskrun: TaskRun) {
        let Some(key) = TaskRunKey::of_taskrun(&taskrun) else {
            return;
        };
        let settled = taskrun
            .uid()
            .is_some_and(|uid| self.emitter.log().is_settled(uid));
        let taskrun = if settled { taskrun.settled() } else { taskrun };
        self.scopes[scope]
            .taskruns
            .apply(key.clone(), Arc::new(taskrun));
        self.queue.add(key);
    }

    async fn watch_pods(
        self: Arc<Self>,
        scope: usize,
        token: CancellationToken,
        remaining: Arc<AtomicUsize>,
    ) {
        // The pods are listed once the TaskRuns are, so that each listed pod finds its TaskRun.
        let mut taskruns_listed = self.scopes[scope].taskruns_listed.subscribe();
        tokio::select! {
            () = token.cancelled() => return,
            result = taskruns_listed.wait_for(|listed| *listed) => if result.is_err() { return },
        }
        let api: Api<TaskRunPod> = match &self.scopes[scope].namespace {
            Some(namespace) => Api::namespaced(self.client.clone(), namespace),
            None => Api::all(self.client.clone()),
        };
        let mut selector = self.selector.clone();
        selector.extend([kube::core::Expression::Exists(TASKRUN_LABEL.to_owned())]);
        let config = watcher::Config::default()
            .page_size(LIST_PAGE_SIZE)
            .labels_from(&selector);
        let stream = watcher::watcher(api, config)
            .default_backoff()
            .modify(trim_pod);
        let store = &self.scopes[scope].pods;
        let mut first_list = true;
        self.drive(stream, Resource::Pods, &token, |event| match event {
            Event::Init => store.begin_list(),
            Event::InitApply(pod) | Event::Apply(pod) => self.store_pod(scope, pod),
            Event::InitDone => {
                // The index follows the store: only what the relist removed leaves it.
                let vanished = store.end_list();
                let mut index = self.scopes[scope].pod_index();
                for (_, pod) in vanished {
                    if let (Some(key), Some(name)) = (TaskRunKey::of_pod(&pod), &pod.metadata.name)
                    {
                        unindex_pod(&mut index, &key, name);
                    }
                }
                drop(index);
                if std::mem::take(&mut first_list) {
                    for key in self.scopes[scope].mark_pods_listed() {
                        self.queue.add(key);
                    }
                    self.watch_listed(&remaining);
                }
            }
            Event::Delete(pod) => {
                if let (Some(key), Some(name)) = (TaskRunKey::of_pod(&pod), pod.metadata.name) {
                    store.remove(&ObjectKey::new(&key.namespace, &name));
                    unindex_pod(&mut self.scopes[scope].pod_index(), &key, &name);
                    self.queue.add(key);
                }
            }
        })
        .await;
    }

    /// Stores a listed, added or modified pod (settled when the log says its TaskRun is),
    /// indexes it under its TaskRun and queues the TaskRun.
    fn store_pod(&self, scope: usize, pod: TaskRunPod) {
        let (Some(key), Some(name)) = (TaskRunKey::of_pod(&pod), pod.metadata.name.clone()) else {
            return;
        };
        let log = self.emitter.log();
        let settled = pod.taskrun_uids.iter().any(|uid| log.is_settled(uid));
        let pod = if settled { pod.settled() } else { pod };
        let scope = &self.scopes[scope];
        scope
            .pods
            .apply(ObjectKey::new(&key.namespace, &name), Arc::new(pod));
        index_pod(&mut scope.pod_index(), key.clone(), name);
        self.queue.add(key);
    }

    /// Runs one watch until `token` is cancelled, counting errors and (re)lists.
    async fn drive<K>(
        &self,
        stream: impl Stream<Item = Result<Event<K>, watcher::Error>>,
        resource: Resource,
        token: &CancellationToken,
        mut handle: impl FnMut(Event<K>),
    ) {
        let mut stream = std::pin::pin!(stream);
        loop {
            self.queue.wait_below(QUEUE_LIMIT, token).await;
            let item = tokio::select! {
                () = token.cancelled() => break,
                item = stream.next() => item,
            };
            match item {
                None => break,
                Some(Ok(event)) => {
                    if matches!(event, Event::Init) {
                        self.metrics.watch_restart(resource);
                    }
                    handle(event);
                }
                Some(Err(error)) => {
                    self.metrics.watch_error(resource);
                    tracing::warn!(
                        resource = resource.as_str(),
                        error = %error,
                        "watch failed; retrying with backoff"
                    );
                }
            }
        }
    }

    fn watch_listed(&self, remaining: &AtomicUsize) {
        if remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.synced.send_replace(true);
        }
    }

    /// After a list: every live record of the scope whose TaskRun the list did not return is a
    /// suspect, queued for confirmation.
    fn suspect_vanished(&self, scope: usize) {
        let scope = &self.scopes[scope];
        let records = self
            .emitter
            .log()
            .live_records(|namespace| scope.covers(namespace));
        let mut suspects = lock(&self.suspects);
        for (uid, record) in records {
            let key = TaskRunKey {
                namespace: record.namespace,
                name: record.name,
            };
            let listed = scope
                .taskruns
                .get(&key)
                .is_some_and(|taskrun| taskrun.uid() == Some(uid.as_str()));
            if !listed {
                suspects.entry(key.clone()).or_default().insert(uid);
                self.queue.add(key);
            }
        }
    }

    // === workers ===

    async fn work(self: Arc<Self>, token: CancellationToken) {
        while let Some(key) = self.queue.next(&token).await {
            match self.process(&key).await {
                Ok(()) => self.queue.done(&key),
                Err(error) if error.is_transient() => {
                    self.metrics.processing_error("transient");
                    let delay = self.queue.retry_later(&key, &token);
                    tracing::warn!(
                        namespace = %key.namespace,
                        name = %key.name,
                        error = %error,
                        retry_in = ?delay,
                        "processing a TaskRun failed; retrying"
                    );
                }
                Err(error) => {
                    self.metrics.processing_error("permanent");
                    tracing::error!(
                        namespace = %key.namespace,
                        name = %key.name,
                        error = %error,
                        "processing a TaskRun failed for good"
                    );
                    self.queue.done(&key);
                }
            }
        }
    }

    /// Publishes what the watch saw of TaskRun `key`: the last state and `deleted` of deleted
    /// objects, `deleted` of confirmed suspects, then the transitions of the current object.
    #[tracing::instrument(name = "reconcile_taskrun", skip_all, fields(namespace = %key.namespace, name = %key.name))]
    async fn process(&self, key: &TaskRunKey) -> Result<(), ProcessError> {
        let scope = self.scope_for(&key.namespace);
        let current = scope.and_then(|scope| scope.taskruns.get(key));
        // Until the pods are listed, a TaskRun whose pod is not stored yet waits for it (once they
        // are, nothing is looked up here: `defer_until_pods_listed` checks again under its lock).
        if let Some(scope) = scope.filter(|scope| !scope.pods_listed()) {
            let waits = current
                .as_ref()
                .is_none_or(|taskrun| self.pod_from_store(taskrun).is_none());
            if scope.defer_until_pods_listed(key, waits) {
                return Ok(());
            }
        }

        // The last state of deleted objects first: their transitions, then the question whether
        // they are really gone (a watch with a label selector also reports an object that merely
        // stopped matching it as deleted).
        let tombstones = lock(&self.tombstones).get(key).cloned().unwrap_or_default();
        let mut to_confirm = lock(&self.suspects).get(key).cloned().unwrap_or_default();
        for taskrun in &tombstones {
            self.emit_snapshot(taskrun, false).await?;
            to_confirm.extend(taskrun.uid().map(str::to_owned));
        }
        if !to_confirm.is_empty() {
            let api: Api<TaskRun> = Api::namespaced(self.client.clone(), &key.namespace);
            let current = api
                .get_opt(&key.name)
                .await
                .map_err(|source| ProcessError::Confirm {
                    namespace: key.namespace.clone(),
                    name: key.name.clone(),
                    source,
                })?;
            let current_uid = current.as_ref().and_then(TaskRun::uid);
            for uid in &to_confirm {
                if current_uid != Some(uid.as_str()) {
                    self.emitter.emit_deleted(Source::Kubernetes, uid).await?;
                }
                self.forget_confirmed(key, uid);
            }
        }

        if let Some(taskrun) = current {
            self.emit_snapshot(&taskrun, true).await?;
        }
        Ok(())
    }

    /// Derives and publishes the transitions of `taskrun` with its stored pod; when `stored`
    /// (the TaskRun is the store's, not a tombstone) and nothing but `deleted` can follow,
    /// settles both in the stores.
    async fn emit_snapshot(&self, taskrun: &Arc<TaskRun>, stored: bool) -> Result<(), EmitError> {
        let pod = self.pod_from_store(taskrun);
        match derive_transitions(&self.settings, taskrun, pod.as_deref()) {
            Ok(derived) => {
                for step in &derived.malformed_steps {
                    self.metrics.malformed_message();
                    tracing::warn!(step = %step, "a step's termination message does not parse; its result set is empty");
                }
                let emitted = self.emitter.emit(Source::Kubernetes, &derived).await?;
                if stored && emitted.settled {
                    self.settle(taskrun, pod.as_ref());
                }
            }
            Err(error) => {
                self.metrics.processing_error("invalid_taskrun");
                tracing::warn!(error = %error, "skipping a TaskRun the watcher cannot describe");
            }
        }
        Ok(())
    }

    /// Replaces the stored `taskrun` and `pod`, if still the versions stored, by settled copies.
    fn settle(&self, taskrun: &Arc<TaskRun>, pod: Option<&Arc<TaskRunPod>>) {
        let Some(key) = TaskRunKey::of_taskrun(taskrun) else {
            return;
        };
        let Some(scope) = self.scope_for(&key.namespace) else {
            return;
        };
        if !taskrun.is_settled() {
            scope
                .taskruns
                .replace_if_current(&key, taskrun, taskrun.settled());
        }
        if let Some(pod) = pod.filter(|pod| !pod.is_settled())
            && let Some(pod_name) = pod.metadata.name.as_deref()
        {
            scope.pods.replace_if_current(
                &ObjectKey::new(&key.namespace, pod_name),
                pod,
                pod.settled(),
            );
        }
    }

    /// Drops the tombstones and the suspicion of `uid` at `key`: it was confirmed gone, or present.
    fn forget_confirmed(&self, key: &TaskRunKey, uid: &str) {
        let mut tombstones = lock(&self.tombstones);
        if let Some(list) = tombstones.get_mut(key) {
            list.retain(|taskrun| taskrun.uid() != Some(uid));
            if list.is_empty() {
                tombstones.remove(key);
            }
        }
        drop(tombstones);
        let mut suspects = lock(&self.suspects);
        if let Some(uids) = suspects.get_mut(key) {
            uids.remove(uid);
            if uids.is_empty() {
                suspects.remove(key);
            }
        }
    }
}
