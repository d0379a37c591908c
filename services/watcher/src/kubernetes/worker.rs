//! The workers of the Kubernetes source: each takes a TaskRun off the work queue, publishes the
//! last state of its deleted objects and asks the API whether they (and any suspect) are gone,
//! then derives the current snapshot's transitions and hands them to the emitter; once nothing
//! but `deleted` can follow, it settles the stored objects ([`crate::store`]'s memory policy).

use std::sync::Arc;

use countersign_runtime::error_chain;
use kube::api::Api;
use tokio_util::sync::CancellationToken;

use super::scope::TaskRunKey;
use super::{KubernetesSource, ProcessError, lock};
use crate::derive::derive_transitions;
use crate::emit::EmitError;
use crate::identifiers::check_taskrun_identifiers;
use crate::metrics::Source;
use crate::store::{ObjectKey, Settle as _};
use countersign_tekton::{TaskRun, TaskRunPod};

impl KubernetesSource {
    pub(super) async fn work(self: Arc<Self>, token: CancellationToken) {
        while let Some(key) = self.queue.next(&token).await {
            match self.process(&key).await {
                Ok(()) => self.queue.done(&key),
                Err(error) if error.is_transient() => {
                    self.metrics.processing_error("transient");
                    let delay = self.queue.retry_later(&key, &token);
                    tracing::warn!(
                        namespace = %key.namespace,
                        name = %key.name,
                        error = %error_chain(&error),
                        retry_in = ?delay,
                        "processing a TaskRun failed; retrying"
                    );
                }
                Err(error) => {
                    self.metrics.processing_error("permanent");
                    tracing::error!(
                        namespace = %key.namespace,
                        name = %key.name,
                        error = %error_chain(&error),
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
        // The API server only stores identifiers Kubernetes allows; one that is not would make
        // subjects and keys nats-server refuses (and drop the connection), so it is skipped.
        if let Err(error) = check_taskrun_identifiers(
            taskrun.metadata.namespace.as_deref().unwrap_or_default(),
            taskrun.metadata.name.as_deref().unwrap_or_default(),
            taskrun.uid().unwrap_or_default(),
        ) {
            self.metrics.processing_error("invalid_taskrun");
            tracing::warn!(error = %error, "skipping a TaskRun whose identifiers Kubernetes does not allow");
            return Ok(());
        }
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
                tracing::warn!(error = %error_chain(&error), "skipping a TaskRun the watcher cannot describe");
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
