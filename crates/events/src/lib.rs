//! The event contract: typed CloudEvents on NATS JetStream, subjects, streams and consumers.
//!
//! The bus is Countersign's public API (Tekton Chains, policy engines and the CLI build on it), so
//! everything about it lives here, in one place:
//!
//! - [`data`]: the data of every event type, one struct per CloudEvent `type`;
//!   [`event_type`]: the type names and families; [`payload`]: how data maps to ids, subjects
//!   and types, and the family enums ([`LifecycleEvent`]...) that let one consumer take several.
//! - [`event`]: [`Event<T>`], a CloudEvent parsed once with typed data.
//! - [`subject`]: every subject, stream and bucket name, built by functions, with an injective
//!   token encoding for Kubernetes names, filters with wildcards, and parsing.
//! - [`binding`]: the CloudEvents NATS binding (binary mode out; binary or structured in), with
//!   typed decode errors.
//! - [`publish`]: [`Publisher`], which waits for the PubAck and sends the id as `Nats-Msg-Id`.
//! - [`consume`]: [`run_durable`] (a durable consumer until shutdown, bound again when the server
//!   lost it), [`run_consumer`], the [`Handler`] trait, and the one ack rule ([`disposition`]);
//!   [`deadletter`]: dead letters and their headers.
//! - [`kv`]: keys built with the subjects' token encoding, and [`kv::Bucket`], a typed JSON
//!   bucket (get, create-if-absent, update at a revision, `modify`, snapshot).
//! - [`topology`]: [`Bus`], which creates or updates the streams, durable consumers and KV
//!   buckets at start-up; [`config`]: their serde configuration.
//! - [`trace`]: W3C trace context in the CloudEvents distributed-tracing extension.
//! - [`metrics`]: Prometheus metrics, registered in a registry the service owns.
//! - [`schema`]: the JSON Schemas and AsyncAPI document under `schemas/`, and validation
//!   against them for tests.
//!
//! ```no_run
//! use countersign_events::{
//!     Bus, BusConfig, ConsumerConfig, ConsumerSpec, Delivery, Event, EventMetrics, EventSource,
//!     HandlerError, LifecycleEvent, run_consumer,
//! };
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn example(client: async_nats::Client) -> Result<(), Box<dyn std::error::Error>> {
//! let bus = Bus::new(client, BusConfig::default(), EventMetrics::new())?;
//! bus.ensure_streams().await?;
//! let consumer = bus.ensure_consumer(&ConsumerSpec::registrar(bus.subjects()), &ConsumerConfig::default()).await?;
//! let shutdown = CancellationToken::new();
//! run_consumer(&consumer, |event: Event<LifecycleEvent>, _delivery: Delivery| async move {
//!     match event.data {
//!         LifecycleEvent::Scheduled(_scheduled) => Ok(()), // register the pod's entry
//!         _ => Err(HandlerError::transient("not yet")),
//!     }
//! }, shutdown).await?;
//! # Ok(())
//! # }
//! ```

pub mod binding;
pub mod config;
pub mod consume;
pub mod data;
pub mod deadletter;
pub mod event;
pub mod event_type;
pub mod kv;
pub mod metrics;
pub mod payload;
pub mod publish;
pub mod schema;
pub mod subject;
pub mod topology;
pub mod trace;

pub use binding::{DecodeError, DecodeErrorKind, DecodeLimits, decode, encode};
pub use config::{BusConfig, ConsumerConfig, KvConfig, StreamLimits, StreamsConfig};
pub use consume::{
    BoxError, Classify, ConsumeError, Delivery, Disposition, DurableConsumer, DurableError,
    Handler, HandlerError, Processed, RetryPolicy, disposition, progress_interval, run_consumer,
    run_durable,
};
pub use deadletter::{DeadLetter, DeadLetterNote, DeadLetterReason};
pub use event::{EncodeError, Event, EventSource};
pub use event_type::{EventType, Family};
pub use metrics::{ConsumeOutcome, EventMetrics, PublishOutcome};
pub use payload::{
    AnyEvent, AttestationEvent, EventData, EventPayload, GateDecisionEvent, LifecycleEvent,
    RegistrationEvent,
};
pub use publish::{PublishError, Published, Publisher};
pub use subject::{ParsedSubject, RegistrationAction, StreamKind, SubjectError, Subjects};
pub use topology::{Bus, ConsumerSpec, KvSpec, SetupError, StreamSetup};
