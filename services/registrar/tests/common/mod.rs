//! The registrar's test harness: a real nats-server and a real SPIRE (server + join-token agent
//! aliased as `spiffe://example.org/tekton-node/<node>`) per test, registrars run in-process (the
//! shared `RunningService`), events published as the watcher would (the shared `TestBus`), and
//! readers of SPIRE and the streams.

// Shared by the test files of one test crate, which has no public API: `pub` here is for
// them, so `unreachable_pub` does not apply.
#![allow(unreachable_pub)]
#![allow(dead_code, reason = "each test binary uses a part of the harness")]

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use countersign_events::data::Outcome;
use countersign_events::data::{
    PodRef, TaskRunDeleted, TaskRunFinished, TaskRunRef, TaskRunScheduled,
};
use countersign_events::{
    DeadLetter, Event, EventPayload, RegistrationEvent, StreamKind, decode, encode, schema,
};
use countersign_registrar::RegistrarConfig;
use countersign_runtime::Context;
use countersign_runtime::config::{Environment, parse_config};
use countersign_spire_api::{Entry, EntryFilter, SpiffeId, SpireServerClient};
use countersign_test_support::bus::TestBus;
use countersign_test_support::nats::NatsServer;
use countersign_test_support::service::RunningService;
use countersign_test_support::spire::{Spire, SpireOptions};

/// How long a condition may take in these tests.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The registrar's default prefix and hint.
pub const PREFIX: &str = "countersign.";
pub const HINT: &str = "countersign";

/// One test's peers.
pub struct Harness {
    pub nats: NatsServer,
    pub spire: Spire,
    /// The bus, publishing as the watcher.
    pub bus: TestBus,
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
        let bus = TestBus::connect(&nats, "watcher").await;
        let admin = SpireServerClient::connect_unix(spire.server_socket_path())
            .await
            .expect("the admin socket");
        Harness {
            nats,
            spire,
            bus,
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
        let running = RunningService::start(
            Context::new("registrar", config),
            Duration::from_secs(30),
            countersign_registrar::run,
        )
        .await;
        running.wait_ready().await;
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
        self.bus.publish(data).await.sequence
    }

    /// Publishes an event again without `Nats-Msg-Id`, so the stream keeps the repeat: what a
    /// redelivery or a second observation past the duplicate window looks like.
    pub async fn publish_again<T: EventPayload>(&self, data: T) -> u64 {
        let event = self.bus.publisher.event(data);
        let subject = event
            .data
            .nats_subject(self.bus.subjects())
            .expect("a subject");
        let (headers, body) = encode(&event).expect("encoded");
        self.bus
            .bus
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
        self.bus
            .wait_consumer_settled(StreamKind::TaskRuns, "registrar", sequence)
            .await;
    }

    /// Every registration audit event, decoded, each checked against its committed schema.
    pub async fn audit_events(&self) -> Vec<Event<RegistrationEvent>> {
        self.bus
            .stream_messages(StreamKind::Registrations)
            .await
            .into_iter()
            .map(|message| {
                let event: Event<RegistrationEvent> = decode(
                    Some(&message.headers),
                    &message.payload,
                    &Default::default(),
                )
                .expect("an audit event");
                schema::validate_event(&event).expect("the audit event matches its schema");
                event
            })
            .collect()
    }

    /// Every dead letter of the registrar.
    pub async fn dead_letters(&self) -> Vec<DeadLetter> {
        self.bus.dead_letters().await
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
pub type RunningRegistrar = RunningService<RegistrarConfig>;
