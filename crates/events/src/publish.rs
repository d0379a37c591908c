//! Publishing: an event goes out in binary content mode on its subject, with its id as
//! `Nats-Msg-Id` and the current trace context, and the call returns once the stream has
//! acknowledged it (saying whether it was a duplicate).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use async_nats::Subject;
use async_nats::jetstream::context::{Context, PublishError as NatsPublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use chrono::Utc;

use crate::binding::{Attributes, HeaderTemplate, encode_body, message_headers};
use crate::event::{EncodeError, Event, EventSource};
use crate::event_type::EventType;
use crate::metrics::{EventMetrics, PublishOutcome, PublisherMetrics};
use crate::payload::EventPayload;
use crate::subject::{SubjectError, Subjects};
use crate::trace::current_trace_context;

/// What the stream said about a published event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The stream that stored it.
    pub stream: String,
    /// Its sequence in the stream (the earlier message's, for a duplicate).
    pub sequence: u64,
    /// Whether the stream dropped it as a duplicate of an earlier event with the same id.
    pub duplicate: bool,
}

/// Why an event was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The event's subject could not be built from its data.
    #[error("building the subject")]
    Subject(#[from] SubjectError),
    /// The event could not be encoded.
    #[error("encoding the event")]
    Encode(#[from] EncodeError),
    /// The message could not be sent.
    #[error("sending to {subject}")]
    Send {
        subject: String,
        #[source]
        source: NatsPublishError,
    },
    /// The stream did not acknowledge the message.
    #[error("waiting for the stream's acknowledgement of {subject}")]
    Ack {
        subject: String,
        #[source]
        source: NatsPublishError,
    },
}

impl PublishError {
    /// Whether trying again later may succeed (NATS unreachable, a timeout, no stream yet).
    pub fn is_transient(&self) -> bool {
        match self {
            PublishError::Subject(_) | PublishError::Encode(_) => false,
            PublishError::Send { source, .. } | PublishError::Ack { source, .. } => {
                is_transient_kind(source.kind())
            }
        }
    }

    /// Whether the message (headers and data) is larger than the server's max payload.
    pub fn exceeds_max_payload(&self) -> bool {
        match self {
            PublishError::Subject(_) | PublishError::Encode(_) => false,
            PublishError::Send { source, .. } | PublishError::Ack { source, .. } => {
                source.kind() == PublishErrorKind::MaxPayloadExceeded
            }
        }
    }
}

pub(crate) fn is_transient_kind(kind: PublishErrorKind) -> bool {
    match kind {
        PublishErrorKind::StreamNotFound
        | PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::MaxAckPending
        | PublishErrorKind::Other => true,
        PublishErrorKind::WrongLastMessageId
        | PublishErrorKind::WrongLastSequence
        | PublishErrorKind::MaxPayloadExceeded => false,
    }
}

/// Publishes a service's events.
#[derive(Debug, Clone)]
pub struct Publisher {
    jetstream: Context,
    subjects: Subjects,
    source: EventSource,
    metrics: PublisherMetrics,
    /// The headers of each event type from this source, indexed by [`EventType::index`].
    templates: Arc<[HeaderTemplate; EventType::ALL.len()]>,
    /// The size of the last body, the capacity of the next one's buffer.
    body_size: Arc<AtomicUsize>,
}

impl Publisher {
    /// A publisher of events from `source`.
    pub fn new(
        jetstream: Context,
        subjects: Subjects,
        source: EventSource,
        metrics: EventMetrics,
    ) -> Publisher {
        let templates = Arc::new(
            EventType::ALL.map(|event_type| HeaderTemplate::new(source.as_str(), event_type)),
        );
        Publisher {
            jetstream,
            subjects,
            source,
            metrics: metrics.for_publisher(),
            templates,
            body_size: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The source of the events.
    pub fn source(&self) -> &EventSource {
        &self.source
    }

    /// The server's max payload in bytes (headers and data of one message), as it announced it.
    pub fn max_payload(&self) -> usize {
        self.jetstream.client().max_payload()
    }

    /// An event of `data` from this publisher's source, observed now.
    pub fn event<T: EventPayload>(&self, data: T) -> Event<T> {
        Event::new(&self.source, data)
    }

    /// Publishes `data` as an event observed now, exactly as `publish(&self.event(data))` would
    /// (without building the intermediate [`Event`]). See [`Publisher::publish`].
    pub async fn publish_data<T: EventPayload>(&self, data: T) -> Result<Published, PublishError> {
        let started = Instant::now();
        let event_type = data.event_type();
        let result = self.send_data(&data).await;
        self.record(event_type, &result, started);
        result
    }

    /// Publishes an event and waits for the stream's acknowledgement. The id goes out as
    /// `Nats-Msg-Id` too, so the stream drops a second event with the same id inside its
    /// duplicate window (`Published::duplicate`). When the event carries no trace context,
    /// the current span's is sent.
    pub async fn publish<T: EventPayload>(
        &self,
        event: &Event<T>,
    ) -> Result<Published, PublishError> {
        let started = Instant::now();
        let result = self.send_event(event).await;
        self.record(event.event_type, &result, started);
        result
    }

    fn record(
        &self,
        event_type: EventType,
        result: &Result<Published, PublishError>,
        started: Instant,
    ) {
        let outcome = match result {
            Ok(published) if published.duplicate => PublishOutcome::Duplicate,
            Ok(_) => PublishOutcome::Stored,
            Err(_) => PublishOutcome::Failed,
        };
        self.metrics
            .published(event_type, outcome, started.elapsed());
    }

    fn template(&self, event_type: EventType) -> &HeaderTemplate {
        // In bounds: `index` is the type's position in `EventType::ALL`.
        &self.templates[event_type.index()]
    }

    async fn send_data<T: EventPayload>(&self, data: &T) -> Result<Published, PublishError> {
        let event_type = data.event_type();
        let template = self.template(event_type);
        let id = data.event_id();
        let subject = data.ce_subject();
        let time = Utc::now();
        let (traceparent, tracestate) = current_trace_context();
        let attributes = Attributes {
            id: &id,
            source: self.source.as_str(),
            event_type,
            subject: Some(&subject),
            time: &time,
            dataschema: Some(template.dataschema()),
            traceparent: traceparent.as_deref(),
            tracestate: tracestate.as_deref(),
        };
        self.send(data, &attributes, template).await
    }

    async fn send_event<T: EventPayload>(
        &self,
        event: &Event<T>,
    ) -> Result<Published, PublishError> {
        let mut attributes = Attributes::of(event);
        let current;
        if event.traceparent.is_none() {
            current = current_trace_context();
            attributes.traceparent = current.0.as_deref();
            attributes.tracestate = current.1.as_deref();
        }
        self.send(&event.data, &attributes, self.template(event.event_type))
            .await
    }

    async fn send<T: EventPayload>(
        &self,
        data: &T,
        attributes: &Attributes<'_>,
        template: &HeaderTemplate,
    ) -> Result<Published, PublishError> {
        let subject = Subject::from(data.nats_subject(&self.subjects)?);
        let headers = message_headers(attributes, template)?;
        let body = encode_body(data, self.body_size.load(Ordering::Relaxed))?;
        self.body_size.store(body.len(), Ordering::Relaxed);
        let message = PublishMessage::build().payload(body).headers(headers);
        let ack = self
            .jetstream
            .send_publish(subject.clone(), message)
            .await
            .map_err(|source| PublishError::Send {
                subject: subject.to_string(),
                source,
            })?;
        let ack = ack.await.map_err(|source| PublishError::Ack {
            subject: subject.to_string(),
            source,
        })?;
        Ok(Published {
            stream: ack.stream,
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }
}
