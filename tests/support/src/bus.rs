//! The test's own side of the bus: a [`Bus`] on a test's nats-server with the streams created (as
//! the first service would at start-up), a [`Publisher`] speaking as one service, and readers of
//! what the services leave on the bus: the messages of a stream, the dead letters, whether a
//! durable consumer has settled. Every event published through it is first checked against its
//! committed schema, as the services' own tests require of the events they feed in.

use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::message::StreamMessage;
use countersign_events::{
    Bus, BusConfig, DeadLetter, Event, EventMetrics, EventPayload, EventSource, Published,
    Publisher, StreamKind, Subjects, schema,
};

use crate::nats::NatsServer;
use crate::wait;

/// How long a reader waits for what it expects.
pub const TIMEOUT: Duration = Duration::from_secs(90);

/// A bus with its streams, and a publisher speaking as one service.
pub struct TestBus {
    /// The bus (its JetStream context and subjects).
    pub bus: Bus,
    /// Publishes as the service named at [`TestBus::connect`] (`/countersign/<service>`).
    pub publisher: Publisher,
}

impl std::fmt::Debug for TestBus {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TestBus")
            .field("prefix", &self.subjects().prefix())
            .finish_non_exhaustive()
    }
}

impl TestBus {
    /// Connects to `nats` with the default bus configuration, creates the streams and publishes
    /// as `service` (`watcher`, `attestor`).
    pub async fn connect(nats: &NatsServer, service: &str) -> TestBus {
        TestBus::connect_with(nats, BusConfig::default(), service).await
    }

    /// Like [`TestBus::connect`], with `config` (another prefix, other stream limits).
    pub async fn connect_with(nats: &NatsServer, config: BusConfig, service: &str) -> TestBus {
        let bus = Bus::new(nats.client().await, config, EventMetrics::new())
            .expect("a valid bus configuration");
        bus.ensure_streams().await.expect("creating the streams");
        let publisher = bus.publisher(EventSource::service(service));
        TestBus { bus, publisher }
    }

    /// The bus's subjects.
    pub fn subjects(&self) -> &Subjects {
        self.bus.subjects()
    }

    /// Publishes `data` as an event of the publisher's service, checked against its schema.
    pub async fn publish<T: EventPayload>(&self, data: T) -> Published {
        self.publish_event(&self.publisher.event(data)).await
    }

    /// Publishes `event`, checked against its schema.
    pub async fn publish_event<T: EventPayload>(&self, event: &Event<T>) -> Published {
        publish_checked(&self.publisher, event).await
    }

    /// How many messages stream `kind` stores.
    pub async fn message_count(&self, kind: StreamKind) -> u64 {
        message_count(&self.bus, kind).await
    }

    /// Every message stream `kind` stores, in order.
    pub async fn stream_messages(&self, kind: StreamKind) -> Vec<StreamMessage> {
        stream_messages(&self.bus, kind).await
    }

    /// Every dead letter stored so far, in order.
    pub async fn dead_letters(&self) -> Vec<DeadLetter> {
        dead_letters(&self.bus).await
    }

    /// Waits until at least `count` dead letters are stored, and returns them all, in order.
    pub async fn wait_dead_letters(&self, count: u64) -> Vec<DeadLetter> {
        wait_dead_letters(&self.bus, count).await
    }

    /// Waits until durable consumer `consumer` of stream `kind` has nothing pending or
    /// unacknowledged and its ack floor is at `last_sequence` (the last message it takes).
    pub async fn wait_consumer_settled(
        &self,
        kind: StreamKind,
        consumer: &str,
        last_sequence: u64,
    ) {
        wait_consumer_settled(&self.bus, kind, consumer, last_sequence).await;
    }
}

// The same readers for a test that builds its own `Bus` (its own metrics or configuration).

/// Publishes `event` with `publisher`, checked against its committed schema first.
pub async fn publish_checked<T: EventPayload>(
    publisher: &Publisher,
    event: &Event<T>,
) -> Published {
    schema::validate_event(event).expect("the event matches its committed schema");
    publisher.publish(event).await.expect("publishing")
}

/// How many messages stream `kind` of `bus` stores.
pub async fn message_count(bus: &Bus, kind: StreamKind) -> u64 {
    let mut stream = bus
        .jetstream()
        .get_stream(bus.subjects().stream_name(kind))
        .await
        .expect("the stream");
    stream.info().await.expect("stream info").state.messages
}

/// Every message stream `kind` of `bus` stores, in order.
pub async fn stream_messages(bus: &Bus, kind: StreamKind) -> Vec<StreamMessage> {
    let mut stream = bus
        .jetstream()
        .get_stream(bus.subjects().stream_name(kind))
        .await
        .expect("the stream");
    let state = stream.info().await.expect("stream info").state.clone();
    let mut messages = Vec::new();
    if state.messages == 0 {
        return messages;
    }
    for sequence in state.first_sequence..=state.last_sequence {
        // A gap is a deleted message.
        if let Ok(message) = stream.get_raw_message(sequence).await {
            messages.push(message);
        }
    }
    messages
}

/// Every dead letter `bus` stores so far, in order.
pub async fn dead_letters(bus: &Bus) -> Vec<DeadLetter> {
    stream_messages(bus, StreamKind::DeadLetter)
        .await
        .into_iter()
        .map(|message| {
            DeadLetter::from_parts(&message.headers, message.payload)
                .expect("a dead letter's headers")
        })
        .collect()
}

/// Waits until `bus` stores at least `count` dead letters, and returns them all, in order.
pub async fn wait_dead_letters(bus: &Bus, count: u64) -> Vec<DeadLetter> {
    wait::until_true(&format!("{count} dead letters"), TIMEOUT, || async {
        message_count(bus, StreamKind::DeadLetter).await >= count
    })
    .await
    .expect("the dead letters arrive");
    dead_letters(bus).await
}

/// Waits until durable consumer `consumer` of stream `kind` has nothing pending or unacknowledged
/// and its ack floor is at `last_sequence` (the last message it takes).
pub async fn wait_consumer_settled(
    bus: &Bus,
    kind: StreamKind,
    consumer: &str,
    last_sequence: u64,
) {
    let stream_name = bus.subjects().stream_name(kind);
    wait::until_true(
        &format!("consumer {consumer} to settle up to {last_sequence}"),
        TIMEOUT,
        || async {
            let Ok(stream) = bus.jetstream().get_stream(&stream_name).await else {
                return false;
            };
            let Ok(mut durable) = stream.get_consumer::<pull::Config>(consumer).await else {
                return false;
            };
            let Ok(info) = durable.info().await else {
                return false;
            };
            info.num_pending == 0
                && info.num_ack_pending == 0
                && info.ack_floor.stream_sequence >= last_sequence
        },
    )
    .await
    .expect("the consumer settles");
}
