//! What the relay's integration tests share: a real HTTP CloudEvents receiver (axum on
//! `127.0.0.1`) whose answers a test scripts, the relay service run in-process on a real
//! nats-server (the shared `RunningService` and `TestBus` of `countersign-test-support`), and
//! attestation event fixtures.

// Shared by the test files of one test crate, which has no public API: `pub` here is for
// them, so `unreachable_pub` does not apply.
#![allow(unreachable_pub)]
#![allow(dead_code)] // Each test binary uses a different part.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::PullConsumer;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chrono::{TimeZone, Utc};
use countersign_events::data::{
    AttestationRejected, AttestationVerified, DsseEnvelope, DsseSignature, ReasonCode,
    ResultSubject, SignedAttestation, TaskRunRef, Verdict,
};
use countersign_events::{AttestationEvent, DeadLetter, Event, EventSource, Published, StreamKind};
use countersign_relay::{RelayConfig, run};
use countersign_runtime::Context;
use countersign_runtime::config::{Environment, ServiceConfig, parse_config};
use countersign_test_support::bus::TestBus;
use countersign_test_support::nats::NatsServer;
use countersign_test_support::service::RunningService;
use countersign_test_support::wait;
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

/// How long any one condition may take.
pub const TIMEOUT: Duration = Duration::from_secs(30);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// === the receiver ===

/// How the receiver answers one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: String,
    /// When set, the answer waits until this is notified.
    pub hold: Option<Arc<Notify>>,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            retry_after: None,
            body: String::new(),
            hold: None,
        }
    }

    pub fn body(mut self, body: &str) -> Reply {
        self.body = body.to_owned();
        self
    }

    pub fn retry_after(mut self, value: &str) -> Reply {
        self.retry_after = Some(value.to_owned());
        self
    }

    pub fn held_until(mut self, release: Arc<Notify>) -> Reply {
        self.hold = Some(release);
        self
    }
}

/// A request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// The `ce-id` header.
    pub fn ce_id(&self) -> String {
        self.header("ce-id").unwrap_or_default().to_owned()
    }
}

struct ReceiverState {
    requests: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<Reply>>,
    default: Mutex<Reply>,
}

/// A real HTTP server on `127.0.0.1` recording every request and answering as scripted (by
/// default `202 Accepted`). Stops when dropped.
pub struct Receiver {
    address: SocketAddr,
    state: Arc<ReceiverState>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Receiver {
    /// A receiver on a free port.
    pub async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the receiver");
        Receiver::serve(listener)
    }

    /// A receiver on `address` (a port chosen earlier, that nothing listened on until now).
    pub async fn start_on(address: SocketAddr) -> Receiver {
        let listener = wait::until("the receiver's port to be free", TIMEOUT, || async move {
            TcpListener::bind(address).await.ok()
        })
        .await
        .expect("binding the receiver's port");
        Receiver::serve(listener)
    }

    fn serve(listener: TcpListener) -> Receiver {
        let address = listener.local_addr().expect("the receiver's address");
        let state = Arc::new(ReceiverState {
            requests: Mutex::new(Vec::new()),
            script: Mutex::new(VecDeque::new()),
            default: Mutex::new(Reply::status(202)),
        });
        let router = Router::new().fallback(receive).with_state(state.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Receiver {
            address,
            state,
            stop: Some(stop),
            task,
        }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// The answers to the next requests, in order; then the default.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        lock(&self.state.script).extend(replies);
    }

    /// The answer once the script is used up.
    pub fn answer_by_default(&self, reply: Reply) {
        *lock(&self.state.default) = reply;
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Received> {
        lock(&self.state.requests).clone()
    }

    /// The requests to `path` so far.
    pub fn requests_to(&self, path: &str) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(|request| request.path == path)
            .collect()
    }

    /// Waits until at least `count` requests arrived, and returns them all.
    pub async fn wait_for(&self, count: usize) -> Vec<Received> {
        wait::until(
            &format!("{count} requests at the receiver"),
            TIMEOUT,
            || {
                let requests = self.requests();
                async move { (requests.len() >= count).then_some(requests) }
            },
        )
        .await
        .expect("the requests arrive")
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    lock(&state.requests).push(Received {
        method,
        path: uri.path().to_owned(),
        headers,
        body,
        at: Instant::now(),
    });
    let reply = lock(&state.script)
        .pop_front()
        .unwrap_or_else(|| lock(&state.default).clone());
    if let Some(hold) = &reply.hold {
        hold.notified().await;
    }
    let mut response_headers = HeaderMap::new();
    if let Some(retry_after) = &reply.retry_after {
        response_headers.insert(
            "retry-after",
            HeaderValue::from_str(retry_after).expect("a valid Retry-After"),
        );
    }
    let status = StatusCode::from_u16(reply.status).expect("a valid status");
    (status, response_headers, reply.body.clone()).into_response()
}

/// A loopback address nothing listens on (yet): connections to it are refused.
pub fn unused_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    listener.local_addr().expect("its address")
}

// === the bus ===

/// A nats-server, the streams, and a publisher of attestation events.
pub struct Bench {
    pub nats: NatsServer,
    pub bus: TestBus,
}

impl Bench {
    pub async fn start() -> Bench {
        let nats = NatsServer::start().await.expect("starting nats-server");
        let bus = TestBus::connect(&nats, "attestor").await;
        Bench { nats, bus }
    }

    /// Validates the event against its committed schema and publishes it.
    pub async fn publish(&self, event: &Event<AttestationEvent>) -> Published {
        self.bus.publish_event(event).await
    }

    /// The durable consumer of a sink.
    pub async fn consumer(&self, sink: &str) -> PullConsumer {
        let stream = self
            .bus
            .bus
            .jetstream()
            .get_stream(self.bus.subjects().stream_name(StreamKind::Attestations))
            .await
            .expect("the attestation stream");
        stream
            .get_consumer(&format!("relay-{sink}"))
            .await
            .expect("the sink's consumer")
    }

    /// Waits until the sink's consumer has nothing pending or unacknowledged, and its ack floor
    /// is at `last_sequence` (the last message its filter subjects take).
    pub async fn settled(&self, sink: &str, last_sequence: u64) {
        self.bus
            .wait_consumer_settled(
                StreamKind::Attestations,
                &format!("relay-{sink}"),
                last_sequence,
            )
            .await;
    }

    /// How many dead letters are stored.
    pub async fn dead_letter_count(&self) -> u64 {
        self.bus.message_count(StreamKind::DeadLetter).await
    }

    /// Waits for `count` dead letters and returns them in order.
    pub async fn dead_letters(&self, count: u64) -> Vec<DeadLetter> {
        self.bus.wait_dead_letters(count).await
    }
}

// === the relay ===

/// The relay service, running in-process on a real admin listener.
pub type Relay = RunningService<RelayConfig>;

/// Starts the relay on `nats` with `sinks` (TOML `[[sinks]]` tables) and waits until ready.
pub async fn start_relay(nats: &NatsServer, sinks: &str) -> Relay {
    start_relay_with_env(nats, sinks, Environment::new()).await
}

/// Like [`start_relay`], with `env` for headers configured `from_env`.
pub async fn start_relay_with_env(nats: &NatsServer, sinks: &str, env: Environment) -> Relay {
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[shutdown]\ngrace_period = \"20s\"\n[nats]\nurl = \"{}\"\n{sinks}",
        nats.url()
    );
    let config: RelayConfig = parse_config(&text, &Environment::new()).expect("a valid config");
    config.validate().expect("a valid config");
    let grace_period = config.shutdown.grace_period;
    let context = Context::new("relay", config).with_environment(env);
    let relay = RunningService::start(context, grace_period, run).await;
    relay.wait_ready().await;
    relay
}

/// `countersign_relay_deliveries_total{sink="<sink>",outcome="<outcome>"}`.
pub fn deliveries(sink: &str, outcome: &str) -> String {
    format!("countersign_relay_deliveries_total{{sink=\"{sink}\",outcome=\"{outcome}\"}}")
}

/// A `[[sinks]]` table with quick retries: 50 ms doubling to 200 ms.
pub fn quick_sink(name: &str, url: &str, max_attempts: u32) -> String {
    format!(
        "[[sinks]]\nname = \"{name}\"\nurl = \"{url}\"\n[sinks.retry]\nmax_attempts = {max_attempts}\n\
         initial_backoff = \"50ms\"\nmax_backoff = \"200ms\"\n"
    )
}

// === events ===

fn taskrun(namespace: &str, name: &str) -> TaskRunRef {
    TaskRunRef {
        cluster: "prod-eu".into(),
        namespace: namespace.into(),
        name: name.into(),
        uid: format!("uid-{namespace}-{name}"),
    }
}

fn signed() -> SignedAttestation {
    SignedAttestation {
        envelope: DsseEnvelope {
            payload_type: "application/vnd.in-toto+json".into(),
            payload: "eyJfdHlwZSI6Imh0dHBzOi8vaW4tdG90by5pby9TdGF0ZW1lbnQvdjEifQ==".into(),
            signatures: vec![DsseSignature {
                keyid: "spiffe://example.org/countersign/attestor".into(),
                sig: "MEQCIA==".into(),
            }],
        },
        certificates: vec!["-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into()],
        rfc3161_timestamps: Vec::new(),
    }
}

fn attested_at() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 8, 20, 10, 0, 30)
        .single()
        .expect("a valid time")
}

/// A verified attestation of TaskRun `namespace/name` (its own uid, so its own event id).
pub fn verified(namespace: &str, name: &str) -> Event<AttestationEvent> {
    Event::new(
        &EventSource::service("attestor"),
        AttestationEvent::Verified(AttestationVerified {
            taskrun: taskrun(namespace, name),
            verdict: Verdict::Verified,
            spiffe_id: Some(format!(
                "spiffe://example.org/ns/{namespace}/taskrun/{name}"
            )),
            svid_fingerprint: Some("ab".repeat(32)),
            subjects: vec![ResultSubject {
                name: "commit".into(),
                sha256: "cd".repeat(32),
            }],
            attestation: signed(),
            attested_at: attested_at(),
        }),
    )
}

/// A rejected attestation of TaskRun `namespace/name`.
pub fn rejected(namespace: &str, name: &str) -> Event<AttestationEvent> {
    Event::new(
        &EventSource::service("attestor"),
        AttestationEvent::Rejected(AttestationRejected {
            taskrun: taskrun(namespace, name),
            reason: ReasonCode::SignatureInvalid,
            message: "the signature of result \"commit\" does not verify — tampered?".into(),
            step: Some("build".into()),
            spiffe_id: Some(format!(
                "spiffe://example.org/ns/{namespace}/taskrun/{name}"
            )),
            attestation: signed(),
            attested_at: attested_at(),
        }),
    )
}
