//! The watches of the Kubernetes source: kube-rs watchers on a scope's TaskRuns and pods,
//! applied to the scope's stores as they arrive (TaskRuns listed first, then pods), each change
//! queueing its TaskRun; after every (re)list, the live records the list did not return become
//! suspects for the workers to confirm.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use countersign_runtime::error_chain;
use countersign_runtime::retry::Backoff;
use futures::{Stream, StreamExt as _};
use kube::api::Api;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use tokio_util::sync::CancellationToken;

use super::scope::{TaskRunKey, index_pod, unindex_pod};
use super::{KubernetesSource, lock};
use crate::metrics::Resource;
use crate::store::{ObjectKey, Settle as _, trim_pod, trim_taskrun};
use countersign_tekton::{TASKRUN_LABEL, TaskRun, TaskRunPod};

/// How many objects one page of a (re)list holds. kube's default (500) makes a page of completed
/// pods several MiB of JSON, all parsed at once; smaller pages keep that transient peak (and the
/// heap fragmentation it leaves) small, for a few more requests per list.
const LIST_PAGE_SIZE: u32 = 100;

/// The wait before a failed watch (or list) is tried again: 100 ms doubling up to 2 s, back to
/// 100 ms on the next event (see [`delay_after`] for a desync).
///
/// Not kube's `default_backoff` (client-go's 800 ms doubling up to 30 s, kind to an API server
/// that thousands of clients hammer): after an API server restart it left the watcher blind for
/// seconds after the server was back (a kill of kube-apiserver and etcd is back in 3–5 s; the
/// 800 ms, 1.6 s, 3.2 s, 6.4 s attempts and their jitter found it up to 4 s later), and every
/// TaskRun that finished meanwhile waited for it. The watcher runs two watches per scope and
/// replica, so a retry every 2 s at most is no load an API server notices.
const WATCH_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));

/// How long a watch waits after `error` before it tries again, from `backoff` (which the next
/// event resets).
///
/// A desync (410 Gone: the resource version it would resume from is older than the API server
/// keeps) is an answer from a server that is up, and kube's watcher lists again after it: that
/// relist waits only the first step, not the delay the outage before it built up. After an API
/// server restart the watch typically resumes with exactly this (seen in `cargo xtask chaos`:
/// refused connections for the restart, then "too old resource version"; kube's own stream
/// backoff then held the relist 2 s more, and every TaskRun finished meanwhile with it). This
/// waits no less than a relist that succeeds did already: its events reset the backoff too.
fn delay_after(backoff: &mut Backoff, error: &watcher::Error) -> Duration {
    if matches!(error, watcher::Error::WatchError(status) if status.code == 410) {
        backoff.reset();
    }
    backoff.next_delay()
}

/// How many TaskRuns may wait in the work queue before the watches stop reading until the
/// workers catch up: a backlog of listed objects is then held in the stores a little at a time
/// rather than all at once (the workers settle what they have published).
const QUEUE_LIMIT: usize = 1_000;

impl KubernetesSource {
    pub(super) async fn watch_taskruns(
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
        let stream = watcher::watcher(api, config).modify(trim_taskrun);
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

    pub(super) async fn watch_pods(
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
        let stream = watcher::watcher(api, config).modify(trim_pod);
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

    /// Runs one watch until `token` is cancelled, counting errors and (re)lists; after an error
    /// it waits as [`delay_after`] says.
    async fn drive<K>(
        &self,
        stream: impl Stream<Item = Result<Event<K>, watcher::Error>>,
        resource: Resource,
        token: &CancellationToken,
        mut handle: impl FnMut(Event<K>),
    ) {
        let mut stream = std::pin::pin!(stream);
        let mut backoff = WATCH_BACKOFF;
        loop {
            self.queue.wait_below(QUEUE_LIMIT, token).await;
            let item = tokio::select! {
                () = token.cancelled() => break,
                item = stream.next() => item,
            };
            match item {
                None => break,
                Some(Ok(event)) => {
                    backoff.reset();
                    if matches!(event, Event::Init) {
                        self.metrics.watch_restart(resource);
                    }
                    handle(event);
                }
                Some(Err(error)) => {
                    self.metrics.watch_error(resource);
                    let delay = delay_after(&mut backoff, &error);
                    tracing::warn!(
                        resource = resource.as_str(),
                        error = %error_chain(&error),
                        retry_in = ?delay,
                        "watch failed; retrying"
                    );
                    tokio::select! {
                        () = token.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn refused() -> watcher::Error {
        watcher::Error::WatchFailed(kube::Error::Api(Box::new(
            Status::failure("connection refused", "ServiceUnavailable").with_code(503),
        )))
    }

    fn gone() -> watcher::Error {
        watcher::Error::WatchError(Box::new(
            Status::failure("too old resource version: 11066 (11225)", "Expired").with_code(410),
        ))
    }

    #[test]
    fn a_failed_watch_is_retried_within_two_seconds_and_quickly_again_after_an_event() {
        let mut backoff = WATCH_BACKOFF;
        let delays: Vec<Duration> = (0..7)
            .map(|_| delay_after(&mut backoff, &refused()))
            .collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1_600, 2_000, 2_000].map(Duration::from_millis)
        );
        backoff.reset();
        assert_eq!(
            delay_after(&mut backoff, &refused()),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn a_desync_after_an_outage_relists_after_the_first_step() {
        let mut backoff = WATCH_BACKOFF;
        for _ in 0..6 {
            delay_after(&mut backoff, &refused());
        }
        assert_eq!(
            delay_after(&mut backoff, &gone()),
            Duration::from_millis(100)
        );
        // A desync resets the backoff, and the next error then takes its second step.
        assert_eq!(
            delay_after(&mut backoff, &refused()),
            Duration::from_millis(200)
        );
    }
}
