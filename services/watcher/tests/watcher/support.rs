//! What the watcher tests share: a harness with its own nats-server, a namespace of the shared
//! kube-apiserver and a unique bus prefix; the real `countersign-watcher` binary as a process; the
//! events on the bus, decoded and checked against their schemas; TaskRuns and pods driven through
//! the API the way Tekton and the kubelet would.

// Shared by the test files of one test crate, which has no public API: `pub` here is for
// them, so `unreachable_pub` does not apply.
#![allow(unreachable_pub)]

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use countersign_events::{
    DecodeLimits, Event, EventPayload, LifecycleEvent, ParsedSubject, StreamKind, Subjects, schema,
};
use countersign_runtime::http_client::{HttpClientOptions, http_client};
use countersign_test_support::kube::{
    KubeApiserver, container_status, signed_termination_message, taskrun_fixture, taskrun_resource,
    terminated_state,
};
use countersign_test_support::nats::NatsServer;
use countersign_test_support::{fixtures_dir, unique_name, wait};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

/// The binary under test.
pub const BINARY: &str = env!("CARGO_BIN_EXE_countersign-watcher");
/// How long anything may take on a busy 2-core machine.
pub const TIMEOUT: Duration = Duration::from_secs(90);
/// The cluster name the tests configure (with a dot, to exercise subject tokens).
pub const CLUSTER: &str = "test.cluster";
/// The node the test pods are bound to.
pub const NODE: &str = "kind-worker";

/// A nats-server, a namespace and a bus prefix of the test's own.
pub struct Harness {
    pub nats: NatsServer,
    pub kube: &'static KubeApiserver,
    pub namespace: String,
    pub prefix: String,
    /// Extra `COUNTERSIGN_*` variables for the watcher.
    pub env: Vec<(String, String)>,
}

/// An event read back from the stream.
#[derive(Debug, Clone)]
pub struct Received {
    pub subject: String,
    pub event: Event<LifecycleEvent>,
}

impl Received {
    /// The transition: the event id without the TaskRun UID (`created`, `scheduled:<pod>`...).
    pub fn transition(&self) -> String {
        let uid = self.uid();
        self.event
            .id
            .strip_prefix(&format!("{uid}:"))
            .unwrap_or(&self.event.id)
            .to_owned()
    }

    /// The TaskRun's UID.
    pub fn uid(&self) -> String {
        taskrun_of(&self.event.data).uid.clone()
    }

    /// The TaskRun's name.
    pub fn name(&self) -> String {
        taskrun_of(&self.event.data).name.clone()
    }
}

/// The TaskRun reference of any lifecycle event.
pub fn taskrun_of(data: &LifecycleEvent) -> &countersign_events::data::TaskRunRef {
    match data {
        LifecycleEvent::Created(data) => &data.taskrun,
        LifecycleEvent::Scheduled(data) => &data.taskrun,
        LifecycleEvent::StepCompleted(data) => &data.taskrun,
        LifecycleEvent::Finished(data) => &data.taskrun,
        LifecycleEvent::Deleted(data) => &data.taskrun,
    }
}

impl Harness {
    /// A harness named after the test.
    pub async fn start(test: &str) -> Harness {
        let kube = KubeApiserver::shared().await;
        let nats = NatsServer::start().await.expect("starting nats-server");
        let namespace = kube
            .unique_namespace(test)
            .await
            .expect("creating the test namespace");
        let prefix = unique_name("w").replace('-', "_");
        Harness {
            nats,
            kube,
            namespace,
            prefix,
            env: Vec::new(),
        }
    }

    /// Adds a `COUNTERSIGN_*` variable for the watchers started after.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.env.push((name.to_owned(), value.into()));
    }

    fn watcher_env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("COUNTERSIGN_NATS__URL", self.nats.url()),
            (
                "COUNTERSIGN_KUBERNETES__KUBECONFIG",
                self.kube.kubeconfig_path().display().to_string(),
            ),
            (
                "COUNTERSIGN_KUBERNETES__NAMESPACES",
                format!("[\"{}\"]", self.namespace),
            ),
            ("COUNTERSIGN_BUS__PREFIX", self.prefix.clone()),
            ("COUNTERSIGN_CLUSTER__NAME", CLUSTER.to_owned()),
            ("COUNTERSIGN_ADMIN__LISTEN", "127.0.0.1:0".to_owned()),
            ("COUNTERSIGN_INGRESS__LISTEN", "127.0.0.1:0".to_owned()),
            ("COUNTERSIGN_TELEMETRY__LOG_FORMAT", "json".to_owned()),
            ("COUNTERSIGN_SHUTDOWN__GRACE_PERIOD", "10s".to_owned()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
        // Later entries win: the test's own settings override the defaults above.
        env.extend(self.env.iter().cloned());
        env
    }

    /// Starts the real watcher binary and waits until it is ready.
    pub async fn start_watcher(&self) -> Watcher {
        let watcher = Watcher::spawn(&self.watcher_env()).await;
        watcher.wait_ready().await;
        watcher
    }

    /// The subjects of the test's bus.
    pub fn subjects(&self) -> Subjects {
        Subjects::new(&self.prefix).expect("a valid prefix")
    }

    /// Every event on the TaskRun stream, in stream order, each validated against its schema.
    pub async fn events(&self) -> Vec<Received> {
        let jetstream = self.nats.jetstream().await;
        let subjects = self.subjects();
        let Ok(stream) = jetstream
            .get_stream(subjects.stream_name(StreamKind::TaskRuns))
            .await
        else {
            return Vec::new();
        };
        let consumer = stream
            .create_consumer(pull::OrderedConfig::default())
            .await
            .expect("an ordered consumer");
        let count = consumer.cached_info().num_pending;
        let mut messages = consumer.messages().await.expect("messages");
        let mut received = Vec::new();
        for _ in 0..count {
            let message = tokio::time::timeout(TIMEOUT, messages.next())
                .await
                .expect("the stream delivers")
                .expect("the stream is open")
                .expect("a message");
            let event: Event<LifecycleEvent> = countersign_events::decode(
                message.headers.as_ref(),
                &message.payload,
                &DecodeLimits::default(),
            )
            .expect("a lifecycle event");
            schema::validate_event(&event).expect("the event matches its schema");
            let subject = message.subject.to_string();
            check_subject(&subjects, &subject, &event);
            received.push(Received { subject, event });
        }
        received
    }

    /// Waits until the stream holds at least `count` events, and returns them all.
    pub async fn wait_for_events(&self, count: usize) -> Vec<Received> {
        let last = std::sync::atomic::AtomicUsize::new(0);
        let found = wait::until(&format!("{count} events on the bus"), TIMEOUT, || {
            let events = self.events();
            let last = &last;
            async move {
                let events = events.await;
                last.store(events.len(), std::sync::atomic::Ordering::Relaxed);
                (events.len() >= count).then_some(events)
            }
        })
        .await;
        found.unwrap_or_else(|error| {
            panic!(
                "{error} (saw {})",
                last.load(std::sync::atomic::Ordering::Relaxed)
            )
        })
    }

    /// Waits until the stream holds at least `count` events of TaskRun `name`, and returns those.
    pub async fn wait_for_taskrun_events(&self, name: &str, count: usize) -> Vec<Received> {
        let found = wait::until(&format!("{count} events of {name}"), TIMEOUT, || {
            let events = self.events();
            async move {
                let events: Vec<Received> = events
                    .await
                    .into_iter()
                    .filter(|received| received.name() == name)
                    .collect();
                (events.len() >= count).then_some(events)
            }
        })
        .await;
        found.unwrap_or_else(|error| panic!("{error}"))
    }

    /// Waits until the state bucket records at least `count` published transitions of TaskRun
    /// `uid` (the watcher writes the record right after the PubAcks).
    pub async fn wait_for_record(&self, uid: &str, count: usize) {
        let bucket = self
            .subjects()
            .kv_bucket_name("watcher")
            .expect("a valid bucket name");
        let key = format!("{CLUSTER}.{uid}");
        let jetstream = self.nats.jetstream().await;
        let recorded = wait::until_true(
            &format!("{count} transitions of {uid} recorded"),
            TIMEOUT,
            || async {
                let Ok(store) = jetstream.get_key_value(&bucket).await else {
                    return false;
                };
                let Ok(Some(value)) = store.get(&key).await else {
                    return false;
                };
                serde_json::from_slice::<Value>(&value).is_ok_and(|record| {
                    record["published"]
                        .as_array()
                        .is_some_and(|published| published.len() >= count)
                })
            },
        )
        .await;
        recorded.unwrap_or_else(|error| panic!("{error}"));
    }

    // === the API, as Tekton and the kubelet use it ===

    /// TaskRuns in the test namespace.
    pub fn taskruns(&self) -> Api<DynamicObject> {
        Api::namespaced_with(self.kube.client(), &self.namespace, &taskrun_resource())
    }

    /// Pods in the test namespace.
    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.kube.client(), &self.namespace)
    }

    /// Creates TaskRun `name` from the pending fixture's spec (no status) and returns its UID.
    pub async fn create_taskrun(&self, name: &str) -> String {
        let mut fixture =
            taskrun_fixture("taskrun-01-pending.json", &self.namespace).expect("the fixture");
        fixture.object.metadata.name = Some(name.to_owned());
        fixture.object.metadata.generate_name = None;
        let created = self
            .taskruns()
            .create(&PostParams::default(), &fixture.object)
            .await
            .expect("creating the TaskRun");
        created.metadata.uid.expect("a UID")
    }

    /// Sets the TaskRun's status to the fixture's (`taskrun-0N-*.json`), naming `pod`.
    pub async fn set_taskrun_status(&self, name: &str, fixture: &str, pod: &str) {
        let status = taskrun_status(fixture, pod);
        self.taskruns()
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .expect("patching the TaskRun status");
    }

    /// Creates the TaskRun's pod, bound to [`NODE`], owned by the TaskRun (as Tekton does).
    pub async fn create_pod(&self, taskrun: &str, uid: &str, pod: &str) -> String {
        let object: Pod =
            serde_json::from_value(pod_object(&self.namespace, taskrun, uid, pod)).expect("a pod");
        let created = self
            .pods()
            .create(&PostParams::default(), &object)
            .await
            .expect("creating the pod");
        created.metadata.uid.expect("a pod UID")
    }

    /// Sets the pod's container statuses: each `(container, message)` terminated with exit
    /// code 0 and that termination message, the others running.
    pub async fn set_pod_containers(&self, pod: &str, terminated: &[(&str, &str)]) {
        let statuses: Vec<Value> = STEP_CONTAINERS
            .iter()
            .map(|(container, image)| {
                let state = match terminated.iter().find(|(name, _)| name == container) {
                    Some((_, message)) => terminated_state(container, Some(message)),
                    None => json!({ "running": { "startedAt": "2026-08-20T10:00:05Z" } }),
                };
                container_status(container, image, state)
            })
            .collect();
        self.pods()
            .patch_status(
                pod,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({ "status": { "phase": "Running", "containerStatuses": statuses } }),
                ),
            )
            .await
            .expect("patching the pod status");
    }

    /// Deletes TaskRun `name`.
    pub async fn delete_taskrun(&self, name: &str) {
        self.taskruns()
            .delete(name, &DeleteParams::default())
            .await
            .expect("deleting the TaskRun");
    }
}

/// The step containers of the test pods, with their images.
pub const STEP_CONTAINERS: [(&str, &str); 2] = [
    ("step-clone", "docker.io/alpine/git:2.45.2"),
    ("step-build", "gcr.io/kaniko-project/executor:v1.23.2-debug"),
];

/// A pod as Tekton creates it for TaskRun `taskrun`.
pub fn pod_object(namespace: &str, taskrun: &str, uid: &str, pod: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/managed-by": "tekton-pipelines",
                "tekton.dev/task": "build-push",
                "tekton.dev/taskRun": taskrun,
                "tekton.dev/taskRunUID": uid,
            },
            "ownerReferences": [{
                "apiVersion": "tekton.dev/v1",
                "kind": "TaskRun",
                "name": taskrun,
                "uid": uid,
                "controller": true,
            }],
        },
        "spec": {
            "nodeName": NODE,
            "serviceAccountName": "default",
            "restartPolicy": "Never",
            "containers": STEP_CONTAINERS
                .iter()
                .map(|(name, image)| json!({ "name": name, "image": image }))
                .collect::<Vec<_>>(),
        },
    })
}

/// The `status` of a TaskRun fixture, naming `pod` as its pod.
pub fn taskrun_status(fixture: &str, pod: &str) -> Value {
    let path = fixtures_dir().join("tekton/taskrun").join(fixture);
    let mut taskrun: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the fixture")).expect("JSON");
    let mut status = taskrun["status"].take();
    status["podName"] = Value::from(pod);
    status
}

/// The raw termination message the entrypointer writes for `step` (`step-clone`,
/// `step-build`), signed, from the fixtures.
pub fn signed_message(step: &str) -> String {
    signed_termination_message(step).expect("the signed-results fixture")
}

/// A Tekton CloudEvent fixture (`ce-taskrun-0N-*.json`), about TaskRun `name` (UID `uid`, pod
/// `pod`) in `namespace`.
pub fn cloudevent_fixture(file: &str, namespace: &str, name: &str, uid: &str, pod: &str) -> Value {
    let path = fixtures_dir().join("tekton/cloudevents").join(file);
    let mut event: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the fixture")).expect("JSON");
    event["subject"] = Value::from(name);
    event["source"] = Value::from(format!("/apis///namespaces/{namespace}//{name}"));
    let taskrun = &mut event["data"]["taskRun"];
    taskrun["metadata"]["name"] = Value::from(name);
    taskrun["metadata"]["namespace"] = Value::from(namespace);
    taskrun["metadata"]["uid"] = Value::from(uid);
    if taskrun["status"]["podName"]
        .as_str()
        .is_some_and(|name| !name.is_empty())
    {
        taskrun["status"]["podName"] = Value::from(pod);
    }
    event
}

/// The v1beta1 payload Tekton would send for a TaskRun read from the API.
pub fn v1beta1_event(taskrun: &DynamicObject, event_type: &str) -> Value {
    let mut object = serde_json::to_value(taskrun).expect("a TaskRun serializes");
    if let Some(fields) = object.as_object_mut() {
        fields.remove("apiVersion");
        fields.remove("kind");
    }
    if let Some(status) = object.get_mut("status").and_then(Value::as_object_mut)
        && let Some(results) = status.remove("results")
    {
        status.insert("taskResults".into(), results);
    }
    let name = taskrun.metadata.name.clone().unwrap_or_default();
    json!({
        "specversion": "1.0",
        "id": unique_name("ce"),
        "source": format!("/apis///namespaces/{}//{name}", taskrun.metadata.namespace.clone().unwrap_or_default()),
        "type": event_type,
        "subject": name,
        "datacontenttype": "application/json",
        "time": "2026-08-20T10:00:00Z",
        "data": { "taskRun": object },
    })
}

fn check_subject(subjects: &Subjects, subject: &str, event: &Event<LifecycleEvent>) {
    let parsed = subjects.parse(subject).expect("a Countersign subject");
    let taskrun = taskrun_of(&event.data);
    assert_eq!(
        parsed,
        ParsedSubject::TaskRun {
            event_type: event.event_type,
            cluster: taskrun.cluster.clone(),
            namespace: taskrun.namespace.clone(),
            name: taskrun.name.clone(),
        },
        "the subject names the event's TaskRun"
    );
    assert_eq!(event.id, event.data.event_id());
    assert_eq!(event.source, "/countersign/watcher");
}

/// The real watcher binary, as a child process.
pub struct Watcher {
    child: Child,
    admin: String,
    ingress: String,
    log: Arc<Mutex<Vec<String>>>,
    http: reqwest::Client,
}

impl Watcher {
    /// Starts the binary with `env` and reads the admin and ingress addresses from its log.
    pub async fn spawn(env: &[(String, String)]) -> Watcher {
        let mut child = Command::new(BINARY)
            .env_clear()
            .envs(
                env.iter()
                    .map(|(name, value)| (name.as_str(), value.as_str())),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting countersign-watcher");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addresses_tx, addresses_rx) = tokio::sync::oneshot::channel();
        tokio::spawn({
            let log = Arc::clone(&log);
            async move {
                let mut addresses_tx = Some(addresses_tx);
                let mut admin = None;
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Ok(value) = serde_json::from_str::<Value>(&line) {
                        match value.get("message").and_then(Value::as_str) {
                            Some("starting") => {
                                admin = value
                                    .get("admin")
                                    .and_then(Value::as_str)
                                    .map(str::to_owned);
                            }
                            Some("serving the CloudEvents ingress") => {
                                let ingress = value
                                    .get("address")
                                    .and_then(Value::as_str)
                                    .map(str::to_owned);
                                if let (Some(admin), Some(ingress), Some(tx)) =
                                    (admin.clone(), ingress, addresses_tx.take())
                                {
                                    let _ = tx.send((admin, ingress));
                                }
                            }
                            _ => {}
                        }
                    }
                    log.lock().expect("log lock").push(line);
                }
            }
        });
        let (admin, ingress) = tokio::time::timeout(TIMEOUT, addresses_rx)
            .await
            .unwrap_or_else(|_| panic!("the watcher did not start; log:\n{}", log_text(&log)))
            .unwrap_or_else(|_| panic!("the watcher exited; log:\n{}", log_text(&log)));
        let http = http_client(HttpClientOptions::new().timeout(Duration::from_secs(30)))
            .expect("an HTTP client");
        Watcher {
            child,
            admin,
            ingress,
            log,
            http,
        }
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let url = format!("http://{}/readyz", self.admin);
        let ready = wait::until_true("the watcher to be ready", TIMEOUT, || {
            let request = self.http.get(&url).send();
            async move { request.await.is_ok_and(|response| response.status() == 200) }
        })
        .await;
        if let Err(error) = ready {
            panic!("{error}; log:\n{}", self.log());
        }
    }

    /// The ingress's base URL.
    pub fn ingress_url(&self) -> String {
        format!("http://{}/", self.ingress)
    }

    /// The HTTP client.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The log so far.
    pub fn log(&self) -> String {
        log_text(&self.log)
    }

    /// `GET /metrics`.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .await
            .expect("scraping the metrics")
            .text()
            .await
            .expect("the metrics text")
    }

    /// The sum of the samples of `name` whose labels include `labels`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        countersign_test_support::metrics::sum(&self.metrics().await, name, labels)
    }

    /// Waits until metric `name` with `labels` is at least `value`.
    pub async fn wait_for_metric(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        let reached =
            wait::until_true(&format!("{name}{labels:?} >= {value}"), TIMEOUT, || async {
                self.metric(name, labels).await >= value
            })
            .await;
        if let Err(error) = reached {
            panic!("{error}; metrics:\n{}", self.metrics().await);
        }
    }

    /// Kills the process with SIGKILL, as a crash or an OOM kill would.
    pub async fn kill(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let _ = tokio::time::timeout(TIMEOUT, self.child.wait()).await;
    }

    /// Sends SIGTERM and waits for the exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        if let Some(pid) = self.child.id() {
            let _ = signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        tokio::time::timeout(TIMEOUT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the watcher did not exit; log:\n{}", self.log()))
            .expect("waiting for the watcher")
    }

    /// POSTs a CloudEvent in binary mode: attributes as `ce-*` headers, the data as the body.
    pub async fn post_binary(&self, event: &Value) -> (u16, Value) {
        let mut request = self
            .http
            .post(self.ingress_url())
            .header("content-type", "application/json");
        for attribute in ["specversion", "id", "source", "type", "subject", "time"] {
            if let Some(value) = event.get(attribute).and_then(Value::as_str) {
                request = request.header(format!("ce-{attribute}"), value);
            }
        }
        let body = serde_json::to_vec(&event["data"]).expect("the data serializes");
        response(request.body(body).send().await.expect("posting")).await
    }

    /// POSTs a CloudEvent in structured mode.
    pub async fn post_structured(&self, event: &Value) -> (u16, Value) {
        let request = self
            .http
            .post(self.ingress_url())
            .header("content-type", "application/cloudevents+json")
            .body(serde_json::to_vec(event).expect("the event serializes"));
        response(request.send().await.expect("posting")).await
    }

    /// POSTs raw bytes with the given headers.
    pub async fn post_raw(&self, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, Value) {
        let mut request = self.http.post(self.ingress_url());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        response(request.body(body).send().await.expect("posting")).await
    }
}

async fn response(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("a body");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn log_text(log: &Mutex<Vec<String>>) -> String {
    let lines = log.lock().expect("log lock");
    let start = lines.len().saturating_sub(80);
    lines[start..].join("\n")
}

/// The transitions of `events` in order, as `(taskrun name, transition)`.
pub fn transitions(events: &[Received]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|received| (received.name(), received.transition()))
        .collect()
}

/// Fails when two events share an id.
pub fn assert_unique_ids(events: &[Received]) {
    let mut seen = std::collections::BTreeSet::new();
    for received in events {
        assert!(
            seen.insert(received.event.id.clone()),
            "event {} is on the bus twice",
            received.event.id
        );
    }
}
