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
/// 100 ms on the next event (see [`Retries`] for a desync and a refused connection).
///
/// Not kube's `default_backoff` (client-go's 800 ms doubling up to 30 s, kind to an API server
/// that thousands of clients hammer): after an API server restart it left the watcher blind for
/// seconds after the server was back (a kill of kube-apiserver and etcd is back in 3–5 s; the
/// 800 ms, 1.6 s, 3.2 s, 6.4 s attempts and their jitter found it up to 4 s later), and every
/// TaskRun that finished meanwhile waited for it. The watcher runs two watches per scope and
/// replica, so a retry every 2 s at most is no load an API server notices.
const WATCH_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));

/// How long one request may go unanswered while the API server comes back after refusing
/// connections, before it is abandoned and the watch lists again.
///
/// A starting kube-apiserver accepts connections seconds before it serves, and holds what it
/// accepted meanwhile until well after it is ready. Measured against the test kube-apiserver
/// (1.37) killed with its etcd and started again: a list sent 1.2 s after the kill was answered
/// at 7.8 s and a resumed watch sent then at 8.8 s (with 410), while lists sent again every
/// 0.5 s were answered from 4.2 s on, before the server even reported ready. A page of 100 objects
/// normally takes well under this.
const RECOVERY_ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// How many requests in a row may be abandoned that way; after them the watch waits as long as
/// the server takes (a server that is up but slow is not listed at again and again).
const RECOVERY_ATTEMPTS: u32 = 15;

/// When and how a watch tries again: the backoff between failures, and whether it is recovering
/// from an API server that refused connections.
///
/// A refused connection means nothing listens where the API server was: it is down or starting
/// again. Its successor's watch cache starts at the current resource version, so resuming the
/// watch from an older one ends in a 410 and a list anyway, and only once that cache is built.
/// The watch lists at once instead, and while the server comes back each request waits at most
/// [`RECOVERY_ANSWER_TIMEOUT`] before it is sent again, [`RECOVERY_ATTEMPTS`] times at most;
/// the first answer ends the recovery.
#[derive(Debug, Clone)]
struct Retries {
    backoff: Backoff,
    /// How many more requests may be abandoned; 0 when not recovering.
    recovering: u32,
}

/// What a watch does next after an error or an unanswered request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Retry {
    /// How long to wait first.
    delay: Duration,
    /// Whether to start a new watch (which lists first) rather than let kube's resume.
    relist: bool,
}

impl Retries {
    fn new() -> Retries {
        Retries {
            backoff: WATCH_BACKOFF,
            recovering: 0,
        }
    }

    /// An event arrived. `Init` is announced by kube's watcher before it sends the list, so it
    /// changes nothing (a new watch after a refused connection must not reset the backoff while
    /// the server is still down); every other event is an answer from the server, which resets
    /// the backoff and ends a recovery.
    fn event(&mut self, answered: bool) {
        if answered {
            self.backoff.reset();
            self.recovering = 0;
        }
    }

    /// How long the next request may go unanswered: bounded only while recovering.
    fn answer_timeout(&self) -> Option<Duration> {
        (self.recovering > 0).then_some(RECOVERY_ANSWER_TIMEOUT)
    }

    /// After `error`: the next step of the backoff (a desync, 410, resets it first: it is an
    /// answer from a server that is up, and kube lists again after it); a refused connection
    /// starts a recovery and a new watch.
    fn failed(&mut self, error: &watcher::Error) -> Retry {
        if matches!(error, watcher::Error::WatchError(status) if status.code == 410) {
            self.backoff.reset();
        }
        let refused = connection_refused(error);
        if refused {
            self.recovering = RECOVERY_ATTEMPTS;
        }
        Retry {
            delay: self.backoff.next_delay(),
            relist: refused,
        }
    }

    /// A request went unanswered for [`RECOVERY_ANSWER_TIMEOUT`] while recovering: sent again
    /// at once, as a new watch.
    fn unanswered(&mut self) -> Retry {
        self.recovering = self.recovering.saturating_sub(1);
        Retry {
            delay: Duration::ZERO,
            relist: true,
        }
    }
}

/// Whether the API server refused the connection (somewhere in the error's causes).
fn connection_refused(error: &watcher::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if current
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        cause = current.source();
    }
    false
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
        let watch = || watcher::watcher(api.clone(), config.clone()).modify(trim_taskrun);
        let store = &self.scopes[scope].taskruns;
        let mut first_list = true;
        self.drive(watch, Resource::TaskRuns, &token, |event| match event {
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
        let watch = || watcher::watcher(api.clone(), config.clone()).modify(trim_pod);
        let store = &self.scopes[scope].pods;
        let mut first_list = true;
        self.drive(watch, Resource::Pods, &token, |event| match event {
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

    /// Runs one watch (made by `watch`, again whenever [`Retries`] says to list anew) until
    /// `token` is cancelled, counting errors and (re)lists.
    async fn drive<K, S>(
        &self,
        watch: impl Fn() -> S,
        resource: Resource,
        token: &CancellationToken,
        mut handle: impl FnMut(Event<K>),
    ) where
        S: Stream<Item = Result<Event<K>, watcher::Error>>,
    {
        let mut stream = Box::pin(watch());
        let mut retries = Retries::new();
        loop {
            self.queue.wait_below(QUEUE_LIMIT, token).await;
            let timeout = retries.answer_timeout();
            let next = async {
                match timeout {
                    Some(timeout) => tokio::time::timeout(timeout, stream.next()).await.ok(),
                    None => Some(stream.next().await),
                }
            };
            // `None`: unanswered within the recovery's bound; `Some(None)`: the stream ended.
            let item = tokio::select! {
                () = token.cancelled() => break,
                item = next => item,
            };
            let retry = match item {
                Some(None) => break,
                Some(Some(Ok(event))) => {
                    let init = matches!(event, Event::Init);
                    retries.event(!init);
                    if init {
                        self.metrics.watch_restart(resource);
                    }
                    handle(event);
                    continue;
                }
                Some(Some(Err(error))) => {
                    self.metrics.watch_error(resource);
                    let retry = retries.failed(&error);
                    tracing::warn!(
                        resource = resource.as_str(),
                        error = %error_chain(&error),
                        retry_in = ?retry.delay,
                        relist = retry.relist,
                        "watch failed; retrying"
                    );
                    retry
                }
                None => {
                    self.metrics.watch_error(resource);
                    let retry = retries.unanswered();
                    tracing::warn!(
                        resource = resource.as_str(),
                        waited = ?timeout.unwrap_or_default(),
                        "the API server did not answer while coming back; listing again"
                    );
                    retry
                }
            };
            tokio::select! {
                () = token.cancelled() => break,
                () = tokio::time::sleep(retry.delay) => {}
            }
            if retry.relist {
                stream = Box::pin(watch());
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

    /// What kube's client returns when nothing listens at the API server's address.
    fn refused() -> watcher::Error {
        watcher::Error::WatchStartFailed(kube::Error::Service(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        ))))
    }

    /// An error answered by a server that is up.
    fn unavailable() -> watcher::Error {
        watcher::Error::WatchFailed(kube::Error::Api(Box::new(
            Status::failure(
                "the server is currently unable to handle the request",
                "ServiceUnavailable",
            )
            .with_code(503),
        )))
    }

    fn gone() -> watcher::Error {
        watcher::Error::WatchError(Box::new(
            Status::failure("too old resource version: 11066 (11225)", "Expired").with_code(410),
        ))
    }

    fn delays(retries: &mut Retries, error: &watcher::Error, times: usize) -> Vec<Duration> {
        (0..times).map(|_| retries.failed(error).delay).collect()
    }

    #[test]
    fn a_failed_watch_is_retried_within_two_seconds_and_quickly_again_after_an_event() {
        let mut retries = Retries::new();
        assert_eq!(
            delays(&mut retries, &unavailable(), 7),
            [100, 200, 400, 800, 1_600, 2_000, 2_000].map(Duration::from_millis)
        );
        retries.event(true);
        assert_eq!(
            retries.failed(&unavailable()).delay,
            Duration::from_millis(100)
        );
    }

    #[test]
    fn a_desync_after_an_outage_relists_after_the_first_step() {
        let mut retries = Retries::new();
        delays(&mut retries, &refused(), 6);
        let retry = retries.failed(&gone());
        assert_eq!(retry.delay, Duration::from_millis(100));
        assert!(
            !retry.relist,
            "kube's watcher lists again after a 410 itself"
        );
        // A desync resets the backoff, and the next error then takes its second step.
        assert_eq!(
            retries.failed(&unavailable()).delay,
            Duration::from_millis(200)
        );
    }

    #[test]
    fn only_a_refused_connection_starts_a_recovery() {
        assert!(connection_refused(&refused()));
        for error in [unavailable(), gone()] {
            assert!(!connection_refused(&error), "{error}");
            let mut retries = Retries::new();
            assert!(!retries.failed(&error).relist);
            assert_eq!(
                retries.answer_timeout(),
                None,
                "{error}: waits as long as it takes"
            );
        }
    }

    #[test]
    fn after_a_refused_connection_the_watch_lists_anew_and_abandons_requests_left_unanswered() {
        let mut retries = Retries::new();
        let retry = retries.failed(&refused());
        assert_eq!(
            retry,
            Retry {
                delay: Duration::from_millis(100),
                relist: true
            }
        );
        // `Init` comes from kube before the list is sent: not an answer, and while the server
        // still refuses, the backoff goes on growing.
        retries.event(false);
        assert_eq!(retries.answer_timeout(), Some(RECOVERY_ANSWER_TIMEOUT));
        assert_eq!(retries.failed(&refused()).delay, Duration::from_millis(200));
        retries.event(false);
        assert_eq!(
            retries.unanswered(),
            Retry {
                delay: Duration::ZERO,
                relist: true
            }
        );
        assert_eq!(retries.answer_timeout(), Some(RECOVERY_ANSWER_TIMEOUT));
        // The first answer ends the recovery: from then on a request waits as long as it takes.
        retries.event(true);
        assert_eq!(retries.answer_timeout(), None);
    }

    #[test]
    fn a_server_that_stays_slow_is_waited_for_after_the_recovery_attempts() {
        let mut retries = Retries::new();
        retries.failed(&refused());
        for _ in 0..RECOVERY_ATTEMPTS {
            assert_eq!(retries.answer_timeout(), Some(RECOVERY_ANSWER_TIMEOUT));
            retries.unanswered();
        }
        assert_eq!(retries.answer_timeout(), None);
        // Refused again (the server went away again): a new recovery.
        retries.failed(&refused());
        assert_eq!(retries.answer_timeout(), Some(RECOVERY_ANSWER_TIMEOUT));
    }
}
