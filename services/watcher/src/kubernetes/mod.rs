//! The Kubernetes source: kube-rs watchers on TaskRuns and on their pods feeding our stores, and
//! the workers that turn what they see into published transitions.
//!
//! - Scopes: one cluster-wide pair of watches, or one pair per configured namespace, each with the
//!   configured label selector (pods are also selected by `tekton.dev/taskRun`). Watches recover
//!   after 100 ms doubling to 2 s, a relist after a desync after 100 ms; after a refused
//!   connection they list anew, sending again what a starting API server leaves unanswered for
//!   1 s (`watch::Retries`); errors and (re)lists are counted.
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
//!
//! The parts: [`scope`] (a scope's stores, its pod index and what waits for its pods), [`watch`]
//! (the watches feeding the stores, and what a relist did not return), [`worker`] (the workers:
//! derive, publish, settle, confirm deletions). This module holds the source itself and the
//! lookups the CloudEvents ingress makes.

mod scope;
mod watch;
mod worker;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use countersign_runtime::health::Latch;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use kube::api::Api;
use kube::core::{Selector, SelectorExt as _};
use tokio::sync::watch as watch_channel;
use tokio_util::sync::CancellationToken;

use crate::derive::DeriveSettings;
use crate::emit::{EmitError, Emitter};
use crate::metrics::WatcherMetrics;
use crate::queue::WorkQueue;
use crate::store::{ObjectKey, ObjectStore, trim_taskrun};
use countersign_tekton::{TaskRun, TaskRunPod};

pub use scope::TaskRunKey;
use scope::{PodsListing, Scope};

/// What the API server says of a TaskRun a CloudEvent is about.
#[derive(Debug)]
pub enum LiveTaskRun {
    /// The TaskRun, as the API server (or the watcher's current store) has it.
    Live(Arc<TaskRun>),
    /// The API server does not have it: no TaskRun of that name, or one with another UID.
    Unknown,
    /// It exists, outside the watched namespaces or label selector.
    OutOfScope,
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
    synced: watch_channel::Sender<bool>,
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
                taskruns_listed: watch_channel::channel(false).0,
                pods_listing: Mutex::new(PodsListing::default()),
                pod_index: Mutex::new(HashMap::new()),
            })
            .collect();
        let (synced, _) = watch_channel::channel(false);
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

    /// Whether the watcher watches `namespace` (the label selector aside).
    pub fn watches_namespace(&self, namespace: &str) -> bool {
        self.scope_for(namespace).is_some()
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

    /// What the API server says of TaskRun `namespace/name` with UID `uid`, for the CloudEvents
    /// ingress (whose event is only a hint). The stored copy when it is current: stored with that
    /// UID and settled (its `finished` recorded, so nothing but `deleted` can follow and the store
    /// cannot lag behind anything the event could say); else a GET. A TaskRun the API does not
    /// have, or has under another UID, is [`LiveTaskRun::Unknown`]; one whose live labels the
    /// selector does not match is [`LiveTaskRun::OutOfScope`].
    pub async fn live_taskrun(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Result<LiveTaskRun, kube::Error> {
        let Some(scope) = self.scope_for(namespace) else {
            return Ok(LiveTaskRun::OutOfScope);
        };
        if let Some(stored) = scope.taskruns.get(&ObjectKey::new(namespace, name))
            && stored.uid() == Some(uid)
            && self.emitter.log().is_settled(uid)
        {
            return Ok(LiveTaskRun::Live(stored));
        }
        let api: Api<TaskRun> = Api::namespaced(self.client.clone(), namespace);
        let Some(live) = api.get_opt(name).await? else {
            return Ok(LiveTaskRun::Unknown);
        };
        if live.uid() != Some(uid) {
            return Ok(LiveTaskRun::Unknown);
        }
        let labels = live.metadata.labels.clone().unwrap_or_default();
        if !self.selector.matches(&labels) {
            return Ok(LiveTaskRun::OutOfScope);
        }
        let mut live = live;
        trim_taskrun(&mut live);
        Ok(LiveTaskRun::Live(Arc::new(live)))
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
}
