//! TaskRuns as the attestor's consumers meet them, for the tests of the attestor and of the
//! services and tools downstream of it: "pods" that sign their results with the real
//! `countersign-signer` binary as workloads of the real spire-agent ([`Pod`]), the watcher's
//! events built by hand ([`taskrun`], [`step`], [`merged`], [`finished`], [`step_completed`]) or
//! read from a Tekton TaskRun object ([`finished_from_taskrun`], [`resigned_released_fixture`]),
//! and the bus as the watcher and the attestation's subscribers see it ([`AttestorBus`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use countersign_events::data::{
    Outcome, PodRef, ResultType, StepCompleted, StepRecord, TaskRunFinished, TaskRunRef,
    TaskRunResult, TerminationEntry,
};
use countersign_events::{AttestationEvent, DecodeLimits, Event, Family, StreamKind};
use countersign_identity::tekton::{TerminationMessage, is_signing_key};
use countersign_verdict::store::AttestationStore;
use futures::StreamExt as _;

use crate::bus::{TIMEOUT, TestBus};
use crate::spire::{Spire, test_process_selectors};
use crate::wait;
use crate::workspace::{signer_binary, target_dir};

/// The attestor's SPIFFE ID in SPIRE's default trust domain (what `countersign verify` and cosign
/// check as the certificate identity).
pub const ATTESTOR_ID: &str = "spiffe://example.org/countersign/attestor";

/// The attestor's configuration text for a test: this NATS, this agent, quick retries, then
/// `extra` (more TOML).
pub fn attestor_config_text(nats_url: &str, agent_endpoint: &str, extra: &str) -> String {
    format!(
        "[nats]\nurl = \"{nats_url}\"\n\
         [spire]\nsocket_path = \"{agent_endpoint}\"\nsvid_timeout = \"5s\"\n\
         [consumer]\nack_wait = \"5s\"\nnak_backoff = [\"200ms\"]\n\
         [shutdown]\ngrace_period = \"10s\"\n{extra}\n"
    )
}

/// The results of the released-Tekton fixture ([`resigned_released_fixture`]), in declared order.
pub const FIXTURE_RESULTS: [(&str, &str); 4] = [
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

// === the bus, as the watcher and subscribers see it ===

/// The test's side of the bus (a [`TestBus`] publishing as the watcher), as the tests of the
/// attestor and of what reads its attestations use it: publishes the watcher's events, reads
/// attestations.
// Awaited in the tests' own tasks, never required to be `Send` by a caller: `async fn` reads best.
#[allow(async_fn_in_trait)]
pub trait AttestorBus {
    /// Publishes a finished event.
    async fn finished(&self, data: TaskRunFinished);

    /// Publishes a step-completed event.
    async fn step_completed(&self, data: StepCompleted);

    /// The attestations bucket (once the attestor has created it).
    async fn store(&self) -> AttestationStore;

    /// Waits for TaskRun `uid`'s attestation in the KV bucket.
    async fn attestation(&self, uid: &str) -> Event<AttestationEvent>;

    /// Every attestation event in the stream about `taskrun`, in order.
    async fn published(&self, taskrun: &TaskRunRef) -> Vec<Event<AttestationEvent>>;

    /// Waits until the stream holds `count` attestation events about `taskrun`, and returns them.
    async fn wait_published(
        &self,
        taskrun: &TaskRunRef,
        count: usize,
    ) -> Vec<Event<AttestationEvent>>;
}

impl AttestorBus for TestBus {
    async fn finished(&self, data: TaskRunFinished) {
        self.publisher
            .publish_data(data)
            .await
            .expect("publishing finished");
    }

    async fn step_completed(&self, data: StepCompleted) {
        self.publisher
            .publish_data(data)
            .await
            .expect("publishing step-completed");
    }

    async fn store(&self) -> AttestationStore {
        wait::until("the attestation buckets", TIMEOUT, || async {
            AttestationStore::open(self.bus.jetstream(), self.bus.subjects())
                .await
                .ok()
        })
        .await
        .expect("the attestation buckets exist")
    }

    async fn attestation(&self, uid: &str) -> Event<AttestationEvent> {
        let store = self.store().await;
        wait::until(&format!("the attestation of {uid}"), TIMEOUT, || async {
            store.get(uid).await.ok().flatten()
        })
        .await
        .expect("an attestation")
    }

    async fn published(&self, taskrun: &TaskRunRef) -> Vec<Event<AttestationEvent>> {
        let stream = self
            .bus
            .jetstream()
            .get_stream(self.bus.subjects().stream_name(StreamKind::Attestations))
            .await
            .expect("the attestation stream");
        let filter = self
            .bus
            .subjects()
            .family_events_for_taskrun(Family::Attestation, taskrun)
            .expect("a filter");
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                filter_subject: filter,
                ..Default::default()
            })
            .await
            .expect("an ordered consumer");
        let pending = consumer.cached_info().num_pending;
        let mut messages = consumer.messages().await.expect("messages");
        let mut events = Vec::new();
        for _ in 0..pending {
            let message = tokio::time::timeout(TIMEOUT, messages.next())
                .await
                .expect("a message in time")
                .expect("a message")
                .expect("a message");
            events.push(
                countersign_events::decode::<AttestationEvent>(
                    message.headers.as_ref(),
                    &message.payload,
                    &DecodeLimits::default(),
                )
                .expect("an attestation event"),
            );
        }
        events
    }

    async fn wait_published(
        &self,
        taskrun: &TaskRunRef,
        count: usize,
    ) -> Vec<Event<AttestationEvent>> {
        wait::until("the attestation events", TIMEOUT, || async {
            let events = self.published(taskrun).await;
            (events.len() >= count).then_some(events)
        })
        .await
        .expect("the attestation events")
    }
}

// === TaskRun pods that sign with the real signer ===

/// A "pod": its own copy of the signer binary (so the agent's `unix:path` selector tells it
/// apart), registered on the agent under a TaskRun's SPIFFE ID.
#[derive(Debug)]
pub struct Pod {
    dir: tempfile::TempDir,
    binary: PathBuf,
    /// The TaskRun's SPIFFE ID the pod is registered under.
    pub spiffe_id: String,
    endpoint: String,
}

impl Pod {
    /// Registers a pod for `spiffe_id` on `spire`'s agent.
    pub async fn register(spire: &Spire, spiffe_id: &str) -> Pod {
        // Under `<target>/tmp` (what cargo gives integration tests as `CARGO_TARGET_TMPDIR`), on
        // the signer's file system, so the copy is a hard link.
        let pods = target_dir().join("tmp");
        std::fs::create_dir_all(&pods).expect("the target's tmp directory");
        let dir = tempfile::Builder::new()
            .prefix("pod-")
            .tempdir_in(&pods)
            .expect("a pod directory");
        let binary = dir.path().join("countersign-signer");
        let signer = signer_binary();
        if std::fs::hard_link(&signer, &binary).is_err() {
            std::fs::copy(&signer, &binary).expect("copying the signer");
        }
        let uid = test_process_selectors().remove(0);
        let path = format!("unix:path:{}", binary.canonicalize().unwrap().display());
        spire
            .register_workload(spiffe_id, &[&uid, &path], &spire.node_alias_id(), false)
            .await
            .expect("registering the pod");
        Pod {
            dir,
            binary,
            spiffe_id: spiffe_id.to_owned(),
            endpoint: spire.agent_endpoint(),
        }
    }

    /// Runs the signer over `results` (name, raw value, in declared order) and returns the
    /// termination message entries it prints (results, then signing material).
    pub async fn sign(&self, results: &[(&str, &str)]) -> Vec<TerminationEntry> {
        let results_dir = tempfile::tempdir_in(self.dir.path()).expect("a results directory");
        for (name, value) in results {
            std::fs::write(results_dir.path().join(name), value).expect("a result file");
        }
        let names: Vec<&str> = results.iter().map(|(name, _)| *name).collect();
        let output = tokio::process::Command::new(&self.binary)
            .arg("--results-dir")
            .arg(results_dir.path())
            .args(["--results", &names.join(",")])
            .args(["--socket", &self.endpoint, "--timeout", "90s"])
            .args(["--print-termination-message", "--no-write"])
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .kill_on_drop(true)
            .output()
            .await
            .expect("running the signer");
        assert!(
            output.status.success(),
            "the signer failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let message = TerminationMessage::parse(String::from_utf8_lossy(&output.stdout).trim())
            .expect("a termination message");
        message
            .entries()
            .iter()
            .map(|entry| TerminationEntry {
                key: entry.key.clone(),
                value: entry.value.clone(),
                r#type: 1,
            })
            .collect()
    }
}

/// The SVID (PEM) among signed entries.
pub fn svid_of(entries: &[TerminationEntry]) -> String {
    entries
        .iter()
        .find(|entry| entry.key == "SVID")
        .map(|entry| entry.value.clone())
        .expect("an SVID entry")
}

// === the watcher's events ===

/// A TaskRun in namespace `default` of cluster `test`, with a fresh UID.
pub fn taskrun(name: &str) -> TaskRunRef {
    TaskRunRef {
        cluster: "test".into(),
        namespace: "default".into(),
        name: name.into(),
        uid: crate::unique_name("uid"),
    }
}

/// `spiffe://example.org/ns/default/taskrun/<name>`.
pub fn taskrun_id(name: &str) -> String {
    format!("spiffe://example.org/ns/default/taskrun/{name}")
}

/// A terminated step that wrote `entries`.
pub fn step(name: &str, entries: Vec<TerminationEntry>, finished_at: DateTime<Utc>) -> StepRecord {
    StepRecord {
        name: name.into(),
        container: format!("step-{name}"),
        exit_code: 0,
        started_at: Some(finished_at - chrono::TimeDelta::seconds(1)),
        finished_at: Some(finished_at),
        results: entries,
    }
}

/// The merged `status.results` Tekton shows for these type-1 entries (the last value of each
/// key winning): signing material as strings, results typed from their text.
pub fn merged(entries: &[TerminationEntry]) -> Vec<TaskRunResult> {
    let mut latest: BTreeMap<&str, &str> = BTreeMap::new();
    for entry in entries {
        latest.insert(&entry.key, &entry.value);
    }
    latest
        .into_iter()
        .map(|(name, raw)| typed_result(name, raw))
        .collect()
}

/// A result as Tekton types it in `status.results`.
pub fn typed_result(name: &str, raw: &str) -> TaskRunResult {
    if !is_signing_key(name) {
        if let Ok(array) = serde_json::from_str::<Vec<String>>(raw) {
            return TaskRunResult {
                name: name.into(),
                r#type: ResultType::Array,
                value: serde_json::json!(array),
            };
        }
        if let Ok(object) = serde_json::from_str::<BTreeMap<String, String>>(raw) {
            return TaskRunResult {
                name: name.into(),
                r#type: ResultType::Object,
                value: serde_json::json!(object),
            };
        }
    }
    TaskRunResult {
        name: name.into(),
        r#type: ResultType::String,
        value: serde_json::Value::String(raw.into()),
    }
}

/// A finished event: one pod, these steps and merged results, these declared results.
pub fn finished(
    taskrun: &TaskRunRef,
    created_at: DateTime<Utc>,
    spiffe_id: Option<String>,
    steps: Vec<StepRecord>,
    results: Vec<TaskRunResult>,
    declared: &[&str],
) -> TaskRunFinished {
    let completed = steps
        .iter()
        .filter_map(|step| step.finished_at)
        .max()
        .unwrap_or(created_at);
    TaskRunFinished {
        taskrun: taskrun.clone(),
        taskrun_created_at: created_at,
        pod: Some(pod_of(taskrun)),
        spiffe_id,
        outcome: Outcome::Succeeded,
        reason: "Succeeded".into(),
        message: "All Steps have completed executing".into(),
        started_at: Some(created_at),
        completed_at: Some(completed),
        results,
        steps,
        oversized: None,
        declared_results: declared.iter().map(|name| (*name).to_owned()).collect(),
    }
}

/// A step-completed event for one step of `finished`.
pub fn step_completed(finished: &TaskRunFinished, step: &StepRecord) -> StepCompleted {
    StepCompleted {
        taskrun: finished.taskrun.clone(),
        taskrun_created_at: finished.taskrun_created_at,
        pod: finished.pod.clone().expect("a pod"),
        spiffe_id: finished
            .spiffe_id
            .clone()
            .expect("a SPIFFE ID in the finished event"),
        step: step.clone(),
    }
}

/// The TaskRun's pod.
pub fn pod_of(taskrun: &TaskRunRef) -> PodRef {
    PodRef {
        name: format!("{}-pod", taskrun.name),
        uid: format!("pod-{}", taskrun.uid),
    }
}

/// Reads a Tekton TaskRun object (v1) as the watcher would publish its finished event.
pub fn finished_from_taskrun(taskrun: &serde_json::Value, cluster: &str) -> TaskRunFinished {
    let metadata = &taskrun["metadata"];
    let status = &taskrun["status"];
    let time = |value: &serde_json::Value| {
        value
            .as_str()
            .map(|text| DateTime::parse_from_rfc3339(text).unwrap().to_utc())
    };
    let reference = TaskRunRef {
        cluster: cluster.into(),
        namespace: metadata["namespace"].as_str().unwrap().into(),
        name: metadata["name"].as_str().unwrap().into(),
        uid: metadata["uid"].as_str().unwrap().into(),
    };
    let steps = status["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| {
            let terminated = &step["terminated"];
            let message = TerminationMessage::parse(terminated["message"].as_str().unwrap_or(""))
                .expect("a termination message");
            StepRecord {
                name: step["name"].as_str().unwrap().into(),
                container: step["container"].as_str().unwrap().into(),
                exit_code: terminated["exitCode"].as_i64().unwrap_or(0) as i32,
                started_at: time(&terminated["startedAt"]),
                finished_at: time(&terminated["finishedAt"]),
                results: message
                    .entries()
                    .iter()
                    .map(|entry| TerminationEntry {
                        key: entry.key.clone(),
                        value: entry.value.clone(),
                        r#type: entry.result_type.as_i64() as u8,
                    })
                    .collect(),
            }
        })
        .collect();
    let results = status["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|result| TaskRunResult {
            name: result["name"].as_str().unwrap().into(),
            r#type: match result["type"].as_str() {
                Some("array") => ResultType::Array,
                Some("object") => ResultType::Object,
                _ => ResultType::String,
            },
            value: result["value"].clone(),
        })
        .collect();
    let declared = status["taskSpec"]["results"]
        .as_array()
        .map(|results| {
            results
                .iter()
                .map(|result| result["name"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default();
    let created_at = time(&metadata["creationTimestamp"]).unwrap();
    TaskRunFinished {
        spiffe_id: Some(format!(
            "spiffe://example.org/ns/{}/taskrun/{}",
            reference.namespace, reference.name
        )),
        pod: Some(PodRef {
            name: status["podName"].as_str().unwrap_or_default().into(),
            uid: format!("pod-{}", reference.uid),
        }),
        taskrun: reference,
        taskrun_created_at: created_at,
        outcome: Outcome::Succeeded,
        reason: "Succeeded".into(),
        message: "All Steps have completed executing".into(),
        started_at: time(&status["startTime"]),
        completed_at: time(&status["completionTime"]),
        results,
        steps,
        oversized: None,
        declared_results: declared,
    }
}

/// The released-Tekton fixture, re-signed for real: its TaskRun created now, each step's
/// results signed by `pod` (the TaskRun's identity), the step messages and the merged results
/// (signing keys as ordinary string results) replaced in place, keeping the exact shape.
pub async fn resigned_released_fixture(pod: &Pod, uid: &str) -> serde_json::Value {
    let path =
        crate::fixtures_dir().join("tekton/spire/generated/taskrun-succeeded-spire-v1.15.json");
    let mut taskrun: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let created = Utc::now() - chrono::TimeDelta::seconds(2);
    let rfc3339 = |time: DateTime<Utc>| time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    taskrun["metadata"]["creationTimestamp"] = rfc3339(created).into();
    taskrun["metadata"]["uid"] = uid.into();
    taskrun["status"]["startTime"] = rfc3339(created).into();
    let steps = taskrun["status"]["steps"].as_array().unwrap().clone();
    let mut last_signed: BTreeMap<String, String> = BTreeMap::new();
    let mut new_steps = Vec::new();
    for (index, mut step) in steps.into_iter().enumerate() {
        let message =
            TerminationMessage::parse(step["terminated"]["message"].as_str().unwrap()).unwrap();
        // The step's own results in the declared order (the fixture's Task declares this order).
        let own: Vec<(String, String)> = ["commit", "IMAGE_DIGEST", "image", "tags"]
            .iter()
            .filter_map(|name| {
                message
                    .task_run_results()
                    .get(*name)
                    .map(|value| ((*name).to_owned(), value.clone()))
            })
            .collect();
        let borrowed: Vec<(&str, &str)> = own
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let signed = pod.sign(&borrowed).await;
        // Tekton rewrites a step's message to its entries sorted by key.
        let mut sorted = signed.clone();
        sorted.sort_by(|left, right| left.key.cmp(&right.key));
        let text = TerminationMessage::from_entries(
            sorted
                .iter()
                .map(|entry| {
                    countersign_identity::tekton::TerminationEntry::task_run_result(
                        &entry.key,
                        &entry.value,
                    )
                })
                .collect(),
        )
        .to_json();
        let finished_at = created + chrono::TimeDelta::seconds(3 + index as i64);
        step["terminated"]["message"] = text.into();
        step["terminated"]["startedAt"] =
            rfc3339(finished_at - chrono::TimeDelta::seconds(1)).into();
        step["terminated"]["finishedAt"] = rfc3339(finished_at).into();
        for entry in signed {
            last_signed.insert(entry.key, entry.value);
        }
        new_steps.push(step);
    }
    taskrun["status"]["steps"] = new_steps.into();
    taskrun["status"]["completionTime"] = rfc3339(created + chrono::TimeDelta::seconds(10)).into();
    for result in taskrun["status"]["results"].as_array_mut().unwrap() {
        let name = result["name"].as_str().unwrap().to_owned();
        if is_signing_key(&name)
            && let Some(value) = last_signed.get(&name)
        {
            result["value"] = value.clone().into();
        }
    }
    taskrun
}
