//! The NATS permissions shipped in `k8s/nats/permissions` (used by Kubernetes and Compose alike),
//! minted into operator-mode user credentials and loaded into a real nats-server:
//!
//! - the streams and consumers are created as NACK would, from the NACK objects of the dev
//!   overlay, by the `admin` user; each service's user then runs the set-up its service runs at
//!   start-up (`Bus::ensure_stream`, `ensure_consumer`, `ensure_kv`) and finds every stream exactly
//!   as declared, so the NACK objects match what the services declare;
//! - each service's user publishes and consumes its own subjects;
//! - one forbidden publish per user is refused by the server (the watcher publishing an
//!   attestation, the attestor publishing a lifecycle event...) and never reaches a subscriber,
//!   and a forbidden subscription is refused too.

use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use async_nats::{Client, ConnectOptions, Event, ServerError};
use countersign_events::{
    Bus, BusConfig, ConsumerConfig, ConsumerSpec, EventMetrics, KvConfig, KvSpec, StreamKind,
    StreamSetup,
};
use countersign_system_tests::nack::{nack_consumer, provision};
use countersign_system_tests::nats_auth::{Operator, OperatorNats, Permissions, shipped_users};
use countersign_system_tests::render::{self, Rendered};
use futures::StreamExt as _;
use tokio::sync::mpsc;

/// How long an answer (a PubAck, a server error, a delivered message) may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection as one user, with the server's errors collected.
struct Session {
    client: Client,
    server_errors: mpsc::UnboundedReceiver<String>,
}

async fn connect(nats: &OperatorNats, credentials: &str) -> Session {
    let (sender, server_errors) = mpsc::unbounded_channel();
    let client = ConnectOptions::with_credentials(credentials)
        .expect("parsing the minted credentials")
        .event_callback(move |event| {
            let sender = sender.clone();
            async move {
                if let Event::ServerError(ServerError::Other(message)) = event {
                    let _ = sender.send(message);
                }
            }
        })
        .connect(nats.url())
        .await
        .unwrap_or_else(|error| panic!("connecting: {error}\n{}", nats.log_tail()));
    Session {
        client,
        server_errors,
    }
}

struct Setup {
    operator: Operator,
    nats: OperatorNats,
    dev: Rendered,
}

async fn user(setup: &Setup, name: &str) -> Session {
    let permissions =
        Permissions::shipped(name).unwrap_or_else(|error| panic!("{name}'s permissions: {error}"));
    let credentials = setup
        .operator
        .user_credentials(name, &permissions)
        .expect("minting credentials");
    connect(&setup.nats, &credentials).await
}

async fn observer(setup: &Setup) -> Session {
    let credentials = setup
        .operator
        .user_credentials("test-observer", &Permissions::everything())
        .expect("minting credentials");
    connect(&setup.nats, &credentials).await
}

/// A server with the streams and consumers of the dev overlay's NACK objects, created by the
/// shipped `admin` user.
async fn set_up() -> Setup {
    let operator = Operator::generate().expect("minting the operator");
    let nats = OperatorNats::start(&operator)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let dev = render::render("overlays/dev").unwrap_or_else(|error| panic!("{error}"));
    let setup = Setup {
        operator,
        nats,
        dev,
    };
    let admin = user(&setup, "admin").await;
    provision(&admin.client, &setup.dev)
        .await
        .unwrap_or_else(|error| panic!("the admin provisioning the NACK objects: {error}"));
    setup
}

/// The bus as the services make it, on `session`'s connection.
fn bus(session: &Session) -> Bus {
    Bus::new(
        session.client.clone(),
        BusConfig::default(),
        EventMetrics::new(),
    )
    .expect("the default bus")
}

/// Every stream is found exactly as the services declare it: nothing to create or update (and
/// the services' users could not).
async fn assert_streams_as_declared(name: &str, bus: &Bus) {
    for kind in StreamKind::ALL {
        let setup = bus
            .ensure_stream(kind)
            .await
            .unwrap_or_else(|error| panic!("{name}: ensure_stream({kind}): {error:?}"));
        assert_eq!(
            setup,
            StreamSetup::Unchanged,
            "{name}: stream {kind} differs from what the services declare"
        );
    }
}

/// The consumer the service binds keeps the configuration of its NACK object.
async fn assert_consumer_as_declared(
    setup: &Setup,
    bus: &Bus,
    spec: &ConsumerSpec,
    config: &ConsumerConfig,
) {
    let consumer = bus
        .ensure_consumer(spec, config)
        .await
        .unwrap_or_else(|error| panic!("ensure_consumer({}): {error:?}", spec.name));
    drop(consumer);
    let declared = setup
        .dev
        .of_kind("Consumer")
        .find(|object| object["spec"]["durableName"] == spec.name.as_str())
        .unwrap_or_else(|| panic!("no NACK Consumer for {}", spec.name));
    let declared = nack_consumer(&declared["spec"]);
    assert_eq!(
        declared.filter_subjects, spec.filter_subjects,
        "{}",
        spec.name
    );
    assert_eq!(
        declared.description.as_deref(),
        Some(spec.description.as_str())
    );
    assert_eq!(declared.ack_wait, config.ack_wait, "{}", spec.name);
    assert_eq!(
        declared.max_deliver,
        config.max_deliver.map_or(-1, |max| i64::from(max) + 1),
        "{}",
        spec.name
    );
    assert_eq!(
        declared.max_ack_pending, config.max_ack_pending,
        "{}",
        spec.name
    );
}

/// Publishes through JetStream and waits for the PubAck.
async fn publish_stored(session: &Session, subject: &str) {
    let jetstream = async_nats::jetstream::new(session.client.clone());
    let ack = jetstream
        .publish(subject.to_owned(), "{}".into())
        .await
        .unwrap_or_else(|error| panic!("publishing {subject}: {error}"));
    tokio::time::timeout(ANSWER_TIMEOUT, ack)
        .await
        .unwrap_or_else(|_| panic!("no PubAck for {subject}"))
        .unwrap_or_else(|error| panic!("PubAck for {subject}: {error}"));
}

/// Sets a key in a bucket the service owns, as the service would create it, and reads it back.
async fn use_bucket(bus: &Bus, bucket: &str) {
    let store = bus
        .ensure_kv(&KvSpec {
            name: bucket.to_owned(),
            description: format!("test {bucket}"),
            config: KvConfig::default(),
        })
        .await
        .unwrap_or_else(|error| panic!("ensure_kv({bucket}): {error:?}"));
    store
        .put("key", "value".into())
        .await
        .unwrap_or_else(|error| panic!("put in {bucket}: {error}"));
    let value = store
        .get("key")
        .await
        .unwrap_or_else(|error| panic!("get from {bucket}: {error}"));
    assert_eq!(value.as_deref(), Some(&b"value"[..]));
}

/// `session` publishes `forbidden` and then `allowed` (core NATS). The server reports a
/// permissions violation for `forbidden`, and an observer subscribed to both sees `allowed` but
/// never `forbidden`: the server handles one connection's messages in order, so the second
/// arriving alone proves the first was dropped.
async fn assert_publish_refused(
    setup: &Setup,
    session: &mut Session,
    forbidden: &str,
    allowed: &str,
) {
    let observer = observer(setup).await;
    let mut seen_forbidden = observer
        .client
        .subscribe(forbidden.to_owned())
        .await
        .expect("observer subscription");
    let mut seen_allowed = observer
        .client
        .subscribe(allowed.to_owned())
        .await
        .expect("observer subscription");
    round_trip(&observer.client, "$JS.API.INFO").await;

    session
        .client
        .publish(forbidden.to_owned(), "forged".into())
        .await
        .expect("queueing the forbidden publish");
    session
        .client
        .publish(allowed.to_owned(), "marker".into())
        .await
        .expect("queueing the allowed publish");
    session.client.flush().await.expect("flush");

    let violation = format!("Permissions Violation for Publish to \"{forbidden}\"");
    tokio::time::timeout(ANSWER_TIMEOUT, async {
        while let Some(message) = session.server_errors.recv().await {
            if message.contains(&violation) {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the server did not refuse the publish to {forbidden}"));
    if tokio::time::timeout(ANSWER_TIMEOUT, seen_allowed.next())
        .await
        .is_err()
    {
        let mut errors = Vec::new();
        while let Ok(error) = session.server_errors.try_recv() {
            errors.push(error);
        }
        panic!("the allowed publish to {allowed} never arrived; server errors: {errors:?}");
    }
    assert!(
        futures::FutureExt::now_or_never(seen_forbidden.next()).is_none(),
        "the forbidden publish to {forbidden} reached a subscriber"
    );
}

/// A request answered by the server: once it is answered, every subscription the connection
/// made before it is registered (`flush` only writes them out).
async fn round_trip(client: &Client, subject: &str) {
    tokio::time::timeout(
        ANSWER_TIMEOUT,
        client.request(subject.to_owned(), "".into()),
    )
    .await
    .unwrap_or_else(|_| panic!("no answer on {subject}"))
    .unwrap_or_else(|error| panic!("request on {subject}: {error}"));
}

async fn assert_subscribe_refused(session: &mut Session, subject: &str) {
    let _subscription = session
        .client
        .subscribe(subject.to_owned())
        .await
        .expect("queueing the subscription");
    session.client.flush().await.expect("flush");
    let violation = format!("Permissions Violation for Subscription to \"{subject}\"");
    tokio::time::timeout(ANSWER_TIMEOUT, async {
        while let Some(message) = session.server_errors.recv().await {
            if message.contains(&violation) {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the server did not refuse the subscription to {subject}"));
}

#[test]
fn every_service_has_a_permission_file() {
    let users = shipped_users().expect("listing the permission files");
    assert_eq!(
        users,
        [
            "admin",
            "attestor",
            "exporter",
            "gate",
            "reader",
            "registrar",
            "relay",
            "watcher"
        ]
    );
}

#[tokio::test]
async fn watcher_publishes_lifecycle_events_and_cannot_publish_attestations() {
    let setup = set_up().await;
    let mut watcher = user(&setup, "watcher").await;
    let bus = bus(&watcher);
    assert_streams_as_declared("watcher", &bus).await;
    use_bucket(&bus, "watcher").await;
    publish_stored(&watcher, "countersign.taskrun.created.prod.ci.build-1").await;
    assert_publish_refused(
        &setup,
        &mut watcher,
        "countersign.attestation.verified.prod.ci.build-1",
        "countersign.taskrun.finished.prod.ci.build-1",
    )
    .await;
    assert_subscribe_refused(&mut watcher, "countersign.attestation.>").await;
}

#[tokio::test]
async fn registrar_consumes_lifecycle_events_and_cannot_publish_attestations() {
    let setup = set_up().await;
    let mut registrar = user(&setup, "registrar").await;
    let bus = bus(&registrar);
    assert_streams_as_declared("registrar", &bus).await;
    assert_consumer_as_declared(
        &setup,
        &bus,
        &ConsumerSpec::registrar(bus.subjects()),
        &ConsumerConfig::default(),
    )
    .await;
    use_bucket(&bus, "registrar").await;
    consume_one(
        &setup,
        &registrar,
        "COUNTERSIGN_TASKRUNS",
        "registrar",
        "countersign.taskrun.scheduled.prod.ci.build-2",
    )
    .await;
    publish_stored(
        &registrar,
        "countersign.registration.registered.prod.ci.build-2",
    )
    .await;
    publish_stored(&registrar, "countersign.deadletter.registrar").await;
    assert_publish_refused(
        &setup,
        &mut registrar,
        "countersign.attestation.verified.prod.ci.build-2",
        "countersign.registration.released.prod.ci.build-2",
    )
    .await;
}

#[tokio::test]
async fn attestor_alone_publishes_attestations_and_cannot_forge_lifecycle_events() {
    let setup = set_up().await;
    let mut attestor = user(&setup, "attestor").await;
    let bus = bus(&attestor);
    assert_streams_as_declared("attestor", &bus).await;
    assert_consumer_as_declared(
        &setup,
        &bus,
        &ConsumerSpec::attestor(bus.subjects()),
        &ConsumerConfig::default(),
    )
    .await;
    for bucket in ["attestations", "attestation_index", "step_verdicts"] {
        use_bucket(&bus, bucket).await;
    }
    consume_one(
        &setup,
        &attestor,
        "COUNTERSIGN_TASKRUNS",
        "attestor",
        "countersign.taskrun.finished.prod.ci.build-3",
    )
    .await;
    publish_stored(
        &attestor,
        "countersign.attestation.verified.prod.ci.build-3",
    )
    .await;
    publish_stored(&attestor, "countersign.deadletter.attestor").await;
    assert_publish_refused(
        &setup,
        &mut attestor,
        "countersign.taskrun.finished.prod.ci.forged",
        "countersign.attestation.rejected.prod.ci.build-3",
    )
    .await;
}

#[tokio::test]
async fn relay_consumes_attestations_and_cannot_publish_them() {
    let setup = set_up().await;
    let mut relay = user(&setup, "relay").await;
    let bus = bus(&relay);
    assert_streams_as_declared("relay", &bus).await;
    let spec = ConsumerSpec {
        name: "relay-default".to_owned(),
        description: "delivers attestation events to the HTTP sink default".to_owned(),
        ..ConsumerSpec::relay(bus.subjects())
    };
    assert_consumer_as_declared(&setup, &bus, &spec, &ConsumerConfig::default()).await;
    consume_one(
        &setup,
        &relay,
        "COUNTERSIGN_ATTESTATIONS",
        "relay-default",
        "countersign.attestation.verified.prod.ci.build-4",
    )
    .await;
    publish_stored(&relay, "countersign.deadletter.relay-default").await;
    assert_publish_refused(
        &setup,
        &mut relay,
        "countersign.attestation.verified.prod.ci.forged",
        "countersign.deadletter.relay-default",
    )
    .await;
}

#[tokio::test]
async fn exporter_consumes_exports_reads_bundles_and_publishes_nothing_else() {
    let setup = set_up().await;
    let attestor = user(&setup, "attestor").await;
    use_bucket(&bus(&attestor), "exports").await;
    let mut exporter = user(&setup, "exporter").await;
    let bus = bus(&exporter);
    assert_streams_as_declared("exporter", &bus).await;
    let spec = countersign_events::ConsumerSpec::exporter(bus.subjects());
    assert_consumer_as_declared(&setup, &bus, &spec, &ConsumerConfig::default()).await;
    consume_one(
        &setup,
        &exporter,
        "COUNTERSIGN_ATTESTATIONS",
        "exporter",
        "countersign.export.stored.prod.ci.build-5",
    )
    .await;
    let store =
        countersign_verdict::export_store::ExportStore::open(bus.jetstream(), bus.subjects())
            .await
            .expect("the exporter opens the exports bucket");
    assert_eq!(
        store
            .bundle("key")
            .await
            .expect("the exporter reads a bundle")
            .as_deref(),
        Some(&b"value"[..])
    );
    publish_stored(&exporter, "countersign.deadletter.exporter").await;
    assert_publish_refused(
        &setup,
        &mut exporter,
        "countersign.export.stored.prod.ci.forged",
        "countersign.deadletter.exporter",
    )
    .await;
    assert_publish_refused(
        &setup,
        &mut exporter,
        "$KV.COUNTERSIGN_EXPORTS.forged",
        "countersign.deadletter.exporter",
    )
    .await;
}

#[tokio::test]
async fn gate_watches_the_attestations_bucket_and_writes_nothing() {
    let setup = set_up().await;
    let attestor = user(&setup, "attestor").await;
    use_bucket(&bus(&attestor), "attestations").await;
    let mut gate = user(&setup, "gate").await;
    let jetstream = async_nats::jetstream::new(gate.client.clone());
    let store = jetstream
        .get_key_value("COUNTERSIGN_ATTESTATIONS")
        .await
        .expect("the gate opens the attestations bucket");
    store
        .status()
        .await
        .expect("the gate reads the bucket's status");
    let mut watch = store
        .watch_with_history(">")
        .await
        .expect("the gate watches the bucket");
    let entry = tokio::time::timeout(ANSWER_TIMEOUT, watch.next())
        .await
        .expect("the stored attestation arrives in time")
        .expect("the watch goes on")
        .expect("a readable entry");
    assert_eq!(entry.key, "key");
    assert_publish_refused(
        &setup,
        &mut gate,
        "$KV.COUNTERSIGN_ATTESTATIONS.forged",
        "$JS.API.STREAM.INFO.KV_COUNTERSIGN_ATTESTATIONS",
    )
    .await;
    assert_publish_refused(
        &setup,
        &mut gate,
        "countersign.attestation.verified.prod.ci.forged",
        "$JS.API.STREAM.INFO.KV_COUNTERSIGN_ATTESTATIONS",
    )
    .await;
}

#[tokio::test]
async fn reader_reads_attestations_and_publishes_nothing() {
    let setup = set_up().await;
    let mut reader = user(&setup, "reader").await;
    let mut live = reader
        .client
        .subscribe("countersign.attestation.>".to_owned())
        .await
        .expect("subscribing");
    round_trip(
        &reader.client,
        "$JS.API.STREAM.INFO.COUNTERSIGN_ATTESTATIONS",
    )
    .await;
    let attestor = user(&setup, "attestor").await;
    publish_stored(
        &attestor,
        "countersign.attestation.verified.prod.ci.build-5",
    )
    .await;
    tokio::time::timeout(ANSWER_TIMEOUT, live.next())
        .await
        .expect("the reader sees attestations live");
    assert_publish_refused(
        &setup,
        &mut reader,
        "countersign.attestation.verified.prod.ci.forged",
        "$JS.API.STREAM.INFO.COUNTERSIGN_ATTESTATIONS",
    )
    .await;
    assert_subscribe_refused(&mut reader, "countersign.taskrun.>").await;
}

#[tokio::test]
async fn admin_manages_streams_but_publishes_no_event() {
    let setup = set_up().await;
    let mut admin = user(&setup, "admin").await;
    assert_publish_refused(
        &setup,
        &mut admin,
        "countersign.attestation.verified.prod.ci.forged",
        "$JS.API.INFO",
    )
    .await;
}

/// The watcher's user can look the streams up but not change them: an update of the
/// attestation stream (which could republish onto any subject) is refused.
#[tokio::test]
async fn services_cannot_change_the_streams() {
    let setup = set_up().await;
    for name in ["watcher", "registrar", "relay", "attestor", "exporter"] {
        let mut session = user(&setup, name).await;
        assert_publish_refused(
            &setup,
            &mut session,
            "$JS.API.STREAM.UPDATE.COUNTERSIGN_ATTESTATIONS",
            "$JS.API.STREAM.INFO.COUNTERSIGN_ATTESTATIONS",
        )
        .await;
    }
}

/// An observer publishes one event on `subject`; `session` pulls it through its durable
/// consumer and acks it, and the server records the ack.
async fn consume_one(
    setup: &Setup,
    session: &Session,
    stream: &str,
    consumer: &str,
    subject: &str,
) {
    let observer = observer(setup).await;
    publish_stored(&observer, subject).await;
    let jetstream = async_nats::jetstream::new(session.client.clone());
    let stream = jetstream
        .get_stream(stream)
        .await
        .unwrap_or_else(|error| panic!("{stream}: {error}"));
    let mut pull: async_nats::jetstream::consumer::Consumer<pull::Config> = stream
        .get_consumer(consumer)
        .await
        .unwrap_or_else(|error| panic!("consumer {consumer}: {error}"));
    let mut messages = pull
        .fetch()
        .max_messages(10)
        .expires(ANSWER_TIMEOUT)
        .messages()
        .await
        .unwrap_or_else(|error| panic!("fetching from {consumer}: {error}"));
    let mut found = false;
    while let Some(message) = messages.next().await {
        let message = message.unwrap_or_else(|error| panic!("{consumer}: {error}"));
        if message.subject.as_str() == subject {
            found = true;
        }
        message
            .double_ack()
            .await
            .unwrap_or_else(|error| panic!("acking on {consumer}: {error}"));
    }
    assert!(found, "{consumer} did not get {subject}");
    let info = pull.info().await.expect("consumer info");
    assert_eq!(info.num_ack_pending, 0, "{consumer} left messages unacked");
}
