//! The load generators. Each TaskRun's results are signed, as the entrypointer would, with an
//! X509-SVID minted by the real SPIRE server for its name ([`SignedName`]); names are a pool
//! minted once and reused.
//!
//! - [`BusDriver`] publishes what the watcher would (`scheduled`, then after the run time
//!   `step-completed` and `finished`) straight onto the bus: the services alone.
//! - [`ApiDriver`] plays Tekton and the kubelet through the real kube-apiserver, as the demo
//!   does: the TaskRun and its pod bound to the node are created, after the run time the pod's
//!   status gets its terminated steps (the last one's termination message carries the signed
//!   set) and the TaskRun's status `Succeeded` with its results; the watcher does the rest. Once
//!   attested, the TaskRun and its pod are deleted (as Tekton's pruner would) and the name goes
//!   back to the pool.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use countersign_events::data::{
    Outcome, PodRef, ResultType, StepCompleted, StepRecord, TaskRunFinished, TaskRunRef,
    TaskRunResult, TaskRunScheduled, TerminationEntry,
};
use countersign_events::{Bus, BusConfig, EventMetrics, EventSource, Publisher};
use countersign_identity::tekton::signed_step_entries;
use countersign_test_support::kube::taskrun_resource;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, DynamicObject, PropagationPolicy};
use tokio::sync::Mutex;

use super::LoadError;
use super::measure::{Lane, Tracker};
use super::system::{CLUSTER, LoadSystem};
use crate::demo::cluster::{
    Cluster, INTERNAL_ENTRY_TYPE, MessageEntry, Phase, RESULT_ENTRY_TYPE, StepState, Terminated,
    pod_status, taskrun_message, taskrun_status,
};
use crate::demo::{NAMESPACE, NODE_NAME, TRUST_DOMAIN};

/// The results every TaskRun writes (the fixture's Task declares these four).
pub const RESULTS: [(&str, &str); 4] = [
    ("commit", "9f3e2c1a7b4d5e6f8091a2b3c4d5e6f708192a3b"),
    (
        "IMAGE_DIGEST",
        "sha256:5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c",
    ),
    (
        "image",
        r#"{"url":"registry.example.com/team/app","digest":"sha256:5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c"}"#,
    ),
    ("tags", r#"["latest","v1.4.2"]"#),
];

/// A TaskRun name with its step's signed set.
#[derive(Debug, Clone)]
pub struct SignedName {
    pub name: String,
    /// When its SVID became valid (a backlog TaskRun finished a second later) (bus-mode TaskRuns are created then, so the issuance check
    /// holds without any clock-skew allowance).
    pub valid_from: DateTime<Utc>,
    /// The result entries and the signing material, in the step's termination message.
    pub entries: Vec<(String, String)>,
}

/// Mints `count` names `{prefix}-{index}`, each with its signed set.
pub async fn signed_names(
    system: &LoadSystem,
    prefix: &str,
    count: usize,
) -> Result<Vec<SignedName>, LoadError> {
    let results: Vec<(String, String)> = RESULTS
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    let mut names = Vec::with_capacity(count);
    for index in 0..count {
        let name = format!("{prefix}-{index}");
        let svid = system
            .mint(&format!(
                "spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/taskrun/{name}"
            ))
            .await?;
        let entries = signed_step_entries(&results, &svid)
            .map_err(|source| LoadError::drive("signing the results", source))?
            .into_iter()
            .map(|entry| (entry.key, entry.value))
            .collect();
        names.push(SignedName {
            name,
            valid_from: svid.leaf().not_before(),
            entries,
        });
    }
    Ok(names)
}

fn merged_results() -> Vec<TaskRunResult> {
    RESULTS
        .iter()
        .map(|(name, raw)| {
            let (r#type, value) = match *name {
                "image" => (
                    ResultType::Object,
                    serde_json::from_str(raw).unwrap_or_default(),
                ),
                "tags" => (
                    ResultType::Array,
                    serde_json::from_str(raw).unwrap_or_default(),
                ),
                _ => (
                    ResultType::String,
                    serde_json::Value::String((*raw).to_owned()),
                ),
            };
            TaskRunResult {
                name: (*name).to_owned(),
                r#type,
                value,
            }
        })
        .collect()
}

/// Publishes lifecycle events straight onto the bus, as the watcher would.
#[derive(Debug, Clone)]
pub struct BusDriver {
    publisher: Publisher,
    tracker: Tracker,
    names: Arc<Vec<SignedName>>,
    run_time: Duration,
}

impl BusDriver {
    pub async fn new(
        system: &LoadSystem,
        names: Vec<SignedName>,
        run_time: Duration,
    ) -> Result<BusDriver, LoadError> {
        let client = async_nats::connect(system.nats_url())
            .await
            .map_err(|source| LoadError::drive("connecting to NATS", source))?;
        let bus = Bus::new(client, BusConfig::default(), EventMetrics::new())
            .map_err(|source| LoadError::drive("the bus", source))?;
        Ok(BusDriver {
            publisher: bus.publisher(EventSource::service("watcher")),
            tracker: system.tracker().clone(),
            names: Arc::new(names),
            run_time,
        })
    }

    /// Plays TaskRun number `index` (UID `{run}-{index}`): scheduled now, finished after the run
    /// time; for the backlog lane only `finished`, at once, of a TaskRun that finished long ago
    /// (as a watcher relisting after a restart publishes it).
    pub async fn play(&self, run: &str, index: usize, lane: Lane) -> Result<(), LoadError> {
        let signed = &self.names[index % self.names.len()];
        let uid = format!("{run}-{index:08}");
        let taskrun = TaskRunRef {
            cluster: CLUSTER.into(),
            namespace: NAMESPACE.into(),
            name: signed.name.clone(),
            uid: uid.clone(),
        };
        let pod = PodRef {
            name: format!("{}-pod", signed.name),
            uid: format!("pod-{uid}"),
        };
        let spiffe_id = format!(
            "spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/taskrun/{}",
            signed.name
        );
        let publish = |result: Result<_, countersign_events::PublishError>| {
            result.map_err(|source| LoadError::drive("publishing a lifecycle event", source))
        };
        if lane == Lane::Live {
            self.tracker.scheduled(&uid, &pod.uid, lane);
            publish(
                self.publisher
                    .publish_data(TaskRunScheduled {
                        taskrun: taskrun.clone(),
                        taskrun_created_at: signed.valid_from,
                        pod: pod.clone(),
                        node_name: NODE_NAME.into(),
                        service_account: "default".into(),
                        spiffe_id: spiffe_id.clone(),
                        timeout_seconds: Some(600),
                    })
                    .await,
            )?;
            tokio::time::sleep(self.run_time).await;
        }
        // A backlog TaskRun finished just after its name's SVID was minted, at the start of
        // the run: long before the watcher (here, this driver) published it.
        let now = match lane {
            Lane::Live => Utc::now(),
            Lane::Backlog => signed.valid_from + chrono::TimeDelta::seconds(1),
        };
        let step = StepRecord {
            name: "build".into(),
            container: "step-build".into(),
            exit_code: 0,
            started_at: Some(signed.valid_from),
            finished_at: Some(now),
            results: signed
                .entries
                .iter()
                .map(|(key, value)| TerminationEntry {
                    key: key.clone(),
                    value: value.clone(),
                    r#type: 1,
                })
                .collect(),
        };
        if lane == Lane::Live {
            publish(
                self.publisher
                    .publish_data(StepCompleted {
                        taskrun: taskrun.clone(),
                        taskrun_created_at: signed.valid_from,
                        pod: pod.clone(),
                        spiffe_id: spiffe_id.clone(),
                        step: step.clone(),
                    })
                    .await,
            )?;
        }
        let finished_at = Instant::now();
        self.tracker.finished(&uid, lane, finished_at);
        publish(
            self.publisher
                .publish_data(TaskRunFinished {
                    taskrun,
                    taskrun_created_at: signed.valid_from,
                    pod: Some(pod),
                    spiffe_id: Some(spiffe_id),
                    outcome: Outcome::Succeeded,
                    reason: "Succeeded".into(),
                    message: "All Steps have completed executing".into(),
                    started_at: Some(signed.valid_from),
                    completed_at: Some(now),
                    results: merged_results(),
                    steps: vec![step],
                    oversized: None,
                    declared_results: RESULTS.iter().map(|(name, _)| (*name).to_owned()).collect(),
                })
                .await,
        )?;
        Ok(())
    }
}

/// Plays TaskRuns through the API server.
#[derive(Clone)]
pub struct ApiDriver {
    cluster: Cluster,
    client: kube::Client,
    tracker: Tracker,
    pool: Arc<Mutex<Vec<SignedName>>>,
    run_time: Duration,
}

impl std::fmt::Debug for ApiDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiDriver")
            .field("cluster", &self.cluster)
            .field("run_time", &self.run_time)
            .finish_non_exhaustive()
    }
}

impl ApiDriver {
    pub fn new(
        system: &LoadSystem,
        names: Vec<SignedName>,
        run_time: Duration,
    ) -> Result<ApiDriver, LoadError> {
        let client = system.kube_client().ok_or(LoadError::NoApiServer)?;
        Ok(ApiDriver {
            cluster: Cluster::new(client.clone(), NAMESPACE, NODE_NAME),
            client,
            tracker: system.tracker().clone(),
            pool: Arc::new(Mutex::new(names)),
            run_time,
        })
    }

    /// Plays one TaskRun with a free name from the pool, until it is attested and deleted.
    /// `Ok(false)` when every name is in use (the pool is the ceiling of TaskRuns in flight).
    pub async fn play(&self) -> Result<bool, LoadError> {
        let Some(signed) = self.pool.lock().await.pop() else {
            return Ok(false);
        };
        let played = self.play_named(&signed).await;
        self.pool.lock().await.push(signed);
        played.map(|()| true)
    }

    async fn play_named(&self, signed: &SignedName) -> Result<(), LoadError> {
        let api = |action: &'static str| {
            move |source: crate::demo::cluster::ClusterError| LoadError::drive(action, source)
        };
        let taskrun = self
            .cluster
            .create_taskrun(&signed.name)
            .await
            .map_err(api("creating a TaskRun"))?;
        let pod = self
            .cluster
            .create_pod(&taskrun)
            .await
            .map_err(api("creating a pod"))?;
        self.tracker.scheduled(&taskrun.uid, &pod.uid, Lane::Live);
        let start_time = seconds(Utc::now());
        tokio::time::sleep(self.run_time).await;

        let last = taskrun.steps.len().saturating_sub(1);
        let steps: Vec<_> = taskrun
            .steps
            .iter()
            .enumerate()
            .map(|(index, spec)| {
                let mut entries: Vec<MessageEntry> = if index == last {
                    signed
                        .entries
                        .iter()
                        .map(|(key, value)| MessageEntry {
                            key: key.clone(),
                            value: value.clone(),
                            entry_type: RESULT_ENTRY_TYPE,
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                entries.push(MessageEntry {
                    key: "StartedAt".into(),
                    value: Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
                    entry_type: INTERNAL_ENTRY_TYPE,
                });
                let pod_message = serde_json::to_string(&entries).unwrap_or_default();
                let state = StepState::Terminated(Terminated {
                    started_at: start_time.clone(),
                    finished_at: seconds(Utc::now()),
                    container_id: format!("containerd://{}-{}", pod.uid, spec.container),
                    taskrun_message: taskrun_message(&entries),
                    pod_message,
                });
                (spec.clone(), state)
            })
            .collect();
        self.cluster
            .patch_pod_status(&pod.name, pod_status("Succeeded", &start_time, &steps))
            .await
            .map_err(api("updating a pod's status"))?;
        let finished_at = Instant::now();
        self.tracker.finished(&taskrun.uid, Lane::Live, finished_at);
        self.cluster
            .patch_taskrun_status(
                &taskrun.name,
                taskrun_status(
                    &taskrun,
                    &pod.name,
                    &start_time,
                    Phase::Succeeded,
                    &steps,
                    &seconds(Utc::now()),
                ),
            )
            .await
            .map_err(api("updating a TaskRun's status"))?;

        // Attested (or given up on after a minute, which the run reports), then pruned.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.tracker.is_attested(&taskrun.uid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let taskruns: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), NAMESPACE, &taskrun_resource());
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), NAMESPACE);
        // No kubelet confirms a pod's end here, and no garbage collector follows owners: both
        // go at once.
        let background = DeleteParams {
            grace_period_seconds: Some(0),
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        taskruns
            .delete(&taskrun.name, &background)
            .await
            .map_err(|source| LoadError::drive("deleting a TaskRun", source))?;
        pods.delete(&pod.name, &background)
            .await
            .map_err(|source| LoadError::drive("deleting a pod", source))?;
        // The name is free once the API server has neither.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let taskrun_left = taskruns.get_opt(&taskrun.name).await.ok().flatten();
            let pod_left = pods.get_opt(&pod.name).await.ok().flatten();
            if taskrun_left.is_none() && pod_left.is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// A time as Kubernetes writes it (whole seconds).
fn seconds(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}
