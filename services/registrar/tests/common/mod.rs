//! The registrar's test harness: a real nats-server and a real SPIRE (server + join-token agent
//! aliased as `spiffe://example.org/tekton-node/<node>`) per test, registrars run in-process on
//! the runtime skeleton (`run_service`), events published as the watcher would, and readers of
//! SPIRE, the state bucket and the streams.

#![allow(dead_code, reason = "each test binary uses a part of the harness")]

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::Utc;
use countersign_events::data::Outcome;
use countersign_events::data::{
    PodRef, TaskRunDeleted, TaskRunFinished, TaskRunRef, TaskRunScheduled,
};
use countersign_events::{
    Bus, BusConfig, DeadLetter, Event, EventMetrics, EventPayload, EventSource, Publisher,
    RegistrationEvent, StreamKind, decode, encode, schema,
};
use countersign_registrar::RegistrarConfig;
use countersign_runtime::config::{Environment, parse_config};
use countersign_runtime::{Context, RunOutcome, run_service};
use countersign_spire_api::{Entry, EntryFilter, SpiffeId, SpireServerClient};
use countersign_test_support::nats::NatsServer;
use countersign_test_support::spire::{Spire, SpireOptions};
use countersign_test_support::wait;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a condition may take in these tests.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The registrar's default prefix and hint.
pub const PREFIX: &str = "countersign.";
pub const HINT: &str = "countersign";

/// One test's peers.
pub struct Harness {
    pub nats: NatsServer,
    pub spire: Spire,
    pub bus: Bus,
    pub watcher: Publisher,
    pub admin: SpireServerClient,
    pub cluster: String,
}

impl Harness {
    /// Starts NATS and SPIRE (the agent stands for `node`).
    pub async fn start(node: &str) -> Harness {
        Harness::start_with(SpireOptions {
            node_name: node.to_owned(),
            ..SpireOptions::default()
        })
        .await
    }

    /// Starts NATS and a SPIRE started with `options`.
    pub async fn start_with(options: SpireOptions) -> Harness {
        let (nats, spire) = tokio::join!(NatsServer::start(), Spire::start(options));
        let nats = nats.expect("nats-server starts");
        let spire = spire.expect("SPIRE starts");
        let bus = Bus::new(
            nats.client().await,
            BusConfig::default(),
            EventMetrics::new(),
        )
        .expect("the default prefix is valid");
        bus.ensure_streams().await.expect("streams");
        let watcher = bus.publisher(EventSource::service("watcher"));
        let admin = SpireServerClient::connect_unix(spire.server_socket_path())
            .await
            .expect("the admin socket");
        Harness {
            nats,
            spire,
            bus,
            watcher,
            admin,
            cluster: "test-cluster".to_owned(),
        }
    }

    /// A configuration for a registrar on these peers: the admin socket, quick retries.
    pub fn config(&self) -> RegistrarConfig {
        let toml = format!(
            "[nats]\nurl = {url}\n\
             [spire]\ntrust_domain = {td}\nserver_socket_path = {socket}\n\
             [consumer]\nack_wait = \"10s\"\nmax_deliver = 1000\nnak_backoff = [\"100ms\", \"250ms\", \"500ms\"]\nconcurrency = 32\n",
            url = toml_string(&self.nats.url()),
            td = toml_string(self.spire.trust_domain()),
            socket = toml_string(&self.spire.server_socket_path().display().to_string()),
        );
        let config: RegistrarConfig =
            parse_config(&toml, &Environment::new()).expect("a valid test configuration");
        countersign_runtime::ServiceConfig::validate(&config).expect("valid");
        config
    }

    /// Starts a registrar in-process and waits until it is ready.
    pub async fn start_registrar(&self, config: RegistrarConfig) -> RunningRegistrar {
        let running = RunningRegistrar::spawn(config).await;
        running.ready().await;
        running
    }

    /// A `scheduled` event for TaskRun `name` on the agent's node.
    pub fn scheduled(&self, name: &str) -> TaskRunScheduled {
        TaskRunScheduled {
            taskrun: self.taskrun(name),
            taskrun_created_at: Utc::now(),
            pod: pod(name),
            node_name: self.spire.node_name().to_owned(),
            service_account: "default".to_owned(),
            spiffe_id: taskrun_spiffe_id(name),
            timeout_seconds: Some(600),
        }
    }

    /// A `finished` event for TaskRun `name`.
    pub fn finished(&self, name: &str) -> TaskRunFinished {
        TaskRunFinished {
            taskrun: self.taskrun(name),
            taskrun_created_at: Utc::now(),
            pod: Some(pod(name)),
            spiffe_id: Some(taskrun_spiffe_id(name)),
            outcome: Outcome::Succeeded,
            reason: "Succeeded".to_owned(),
            message: "All Steps have completed executing".to_owned(),
            started_at: Some(Utc::now()),
            completed_at: Some(Utc::now()),
            results: Vec::new(),
            steps: Vec::new(),
            oversized: None,
            declared_results: Vec::new(),
        }
    }

    /// A `deleted` event for TaskRun `name`.
    pub fn deleted(&self, name: &str) -> TaskRunDeleted {
        TaskRunDeleted {
            taskrun: self.taskrun(name),
            pod: Some(pod(name)),
        }
    }

    pub fn taskrun(&self, name: &str) -> TaskRunRef {
        TaskRunRef {
            cluster: self.cluster.clone(),
            namespace: "team-a".to_owned(),
            name: name.to_owned(),
            uid: taskrun_uid(name),
        }
    }

    /// Publishes an event as the watcher does (checked against its schema, deduplicated by id).
    pub async fn publish<T: EventPayload>(&self, data: T) -> u64 {
        let event = self.watcher.event(data);
        schema::validate_event(&event).expect("the event matches its schema");
        self.watcher
            .publish(&event)
            .await
            .expect("published")
            .sequence
    }

    /// Publishes an event again without `Nats-Msg-Id`, so the stream keeps the repeat: what a
    /// redelivery or a second observation past the duplicate window looks like.
    pub async fn publish_again<T: EventPayload>(&self, data: T) -> u64 {
        let event = self.watcher.event(data);
        let subject = event
            .data
            .nats_subject(self.bus.subjects())
            .expect("a subject");
        let (headers, body) = encode(&event).expect("encoded");
        self.bus
            .jetstream()
            .publish_with_headers(subject, headers, body)
            .await
            .expect("sent")
            .await
            .expect("stored")
            .sequence
    }

    /// Every entry of ours (our hint and prefix).
    pub async fn our_entries(&self) -> Vec<Entry> {
        self.admin
            .list_entries(&EntryFilter::all().by_hint(HINT), 500)
            .await
            .expect("ListEntries")
            .into_iter()
            .filter(|entry| entry.id.starts_with(PREFIX))
            .collect()
    }

    /// The ids of our entries.
    pub async fn our_entry_ids(&self) -> BTreeSet<String> {
        self.our_entries()
            .await
            .into_iter()
            .map(|entry| entry.id)
            .collect()
    }

    /// Every entry (ours or not) with TaskRun `name`'s SPIFFE ID.
    pub async fn entries_of(&self, name: &str) -> Vec<Entry> {
        let spiffe_id = SpiffeId::new(taskrun_spiffe_id(name)).expect("valid");
        self.admin
            .list_entries(&EntryFilter::all().by_spiffe_id(spiffe_id), 100)
            .await
            .expect("ListEntries")
    }

    /// Waits until the registrar consumer has every message up to `sequence` settled and nothing
    /// pending or waiting for redelivery.
    pub async fn wait_consumed(&self, sequence: u64) {
        let stream = self.bus.subjects().stream_name(StreamKind::TaskRuns);
        wait::until_true("the registrar to settle every event", TIMEOUT * 2, || {
            let jetstream = self.bus.jetstream().clone();
            let stream = stream.clone();
            async move {
                let Ok(stream) = jetstream.get_stream(&stream).await else {
                    return false;
                };
                let Ok(mut consumer) = stream
                    .get_consumer::<async_nats::jetstream::consumer::pull::Config>("registrar")
                    .await
                else {
                    return false;
                };
                let Ok(info) = consumer.info().await else {
                    return false;
                };
                info.num_pending == 0
                    && info.num_ack_pending == 0
                    && info.ack_floor.stream_sequence >= sequence
            }
        })
        .await
        .expect("every event is settled");
    }

    /// Every message of a stream, in order.
    pub async fn stream_messages(&self, kind: StreamKind) -> Vec<(HeaderMap, Bytes)> {
        let mut stream = self
            .bus
            .jetstream()
            .get_stream(self.bus.subjects().stream_name(kind))
            .await
            .expect("the stream");
        let state = stream.info().await.expect("stream info").state.clone();
        let mut messages = Vec::new();
        if state.messages == 0 {
            return messages;
        }
        for sequence in state.first_sequence..=state.last_sequence {
            if let Ok(message) = stream.get_raw_message(sequence).await {
                messages.push((message.headers, message.payload));
            }
        }
        messages
    }

    /// Every registration audit event, decoded, each checked against its committed schema.
    pub async fn audit_events(&self) -> Vec<Event<RegistrationEvent>> {
        self.stream_messages(StreamKind::Registrations)
            .await
            .into_iter()
            .map(|(headers, body)| {
                let event: Event<RegistrationEvent> =
                    decode(Some(&headers), &body, &Default::default()).expect("an audit event");
                schema::validate_event(&event).expect("the audit event matches its schema");
                event
            })
            .collect()
    }

    /// Every dead letter of the registrar.
    pub async fn dead_letters(&self) -> Vec<DeadLetter> {
        self.stream_messages(StreamKind::DeadLetter)
            .await
            .into_iter()
            .filter_map(|(headers, body)| DeadLetter::from_parts(&headers, body))
            .collect()
    }
}

/// The pod of TaskRun `name`.
pub fn pod(name: &str) -> PodRef {
    PodRef {
        name: format!("{name}-pod"),
        uid: pod_uid(name),
    }
}

/// A UUID-shaped UID derived from a name (stable within a test).
fn uid_of(kind: &str, name: &str) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("{kind}/{name}").as_bytes(),
    )
    .to_string()
}

pub fn taskrun_uid(name: &str) -> String {
    uid_of("taskrun", name)
}

pub fn pod_uid(name: &str) -> String {
    uid_of("pod", name)
}

/// `countersign.pod.<pod uid>`.
pub fn workload_entry_id(name: &str) -> String {
    format!("{PREFIX}pod.{}", pod_uid(name))
}

pub fn taskrun_spiffe_id(name: &str) -> String {
    format!("spiffe://example.org/ns/team-a/taskrun/{name}")
}

/// A TOML basic string.
pub fn toml_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

/// A registrar running in-process.
pub struct RunningRegistrar {
    pub ctx: Context<RegistrarConfig>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<RunOutcome>>,
}

impl RunningRegistrar {
    /// Starts one (not waiting for readiness).
    pub async fn spawn(config: RegistrarConfig) -> RunningRegistrar {
        let ctx = Context::new("registrar", config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("an admin port");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run_service(
            ctx.clone(),
            listener,
            Duration::from_secs(30),
            async {
                let _ = stopped.await;
            },
            countersign_registrar::run,
        ));
        RunningRegistrar {
            ctx,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Waits until every readiness latch is released.
    pub async fn ready(&self) {
        tokio::time::timeout(TIMEOUT, self.ctx.readiness.wait_ready())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the registrar is not ready: {}",
                    self.ctx.readiness.status()
                )
            });
    }

    /// Stops it (as SIGTERM would) and returns how it ended.
    pub async fn stop(mut self) -> RunOutcome {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("running");
        tokio::time::timeout(TIMEOUT, task)
            .await
            .expect("the registrar stops in time")
            .expect("the registrar does not panic")
    }

    /// Stops it and asserts that the drain completed.
    pub async fn stop_drained(self) {
        let outcome = self.stop().await;
        assert!(
            matches!(outcome, RunOutcome::Drained { .. }),
            "the registrar did not drain: {outcome:?}"
        );
    }

    /// The value of a metric line (`name{labels}`), 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        let text = self.ctx.metrics.encode();
        text.lines()
            .find_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                (name == series).then(|| value.parse().ok()).flatten()
            })
            .unwrap_or(0.0)
    }
}

impl Drop for RunningRegistrar {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
