//! Publishing: an event goes out in binary content mode on its subject, with its id as
//! `Nats-Msg-Id` and the current trace context, and the call returns once the stream has
//! acknowledged it (saying whether it was a duplicate).

use std::time::Instant;

use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::context::{Context, PublishError as NatsPublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;

use crate::binding::{encode, encode_with_trace, percent_encode_value};
use crate::event::{EncodeError, Event, EventSource};
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
}

impl Publisher {
    /// A publisher of events from `source`.
    pub fn new(
        jetstream: Context,
        subjects: Subjects,
        source: EventSource,
        metrics: EventMetrics,
    ) -> Publisher {
        Publisher {
            jetstream,
            subjects,
            source,
            metrics: metrics.for_publisher(),
        }
    }

    /// The source of the events.
    pub fn source(&self) -> &EventSource {
        &self.source
    }

    /// An event of `data` from this publisher's source, observed now.
    pub fn event<T: EventPayload>(&self, data: T) -> Event<T> {
        Event::new(&self.source, data)
    }

    /// Publishes `data` as an event observed now. See [`Publisher::publish`].
    pub async fn publish_data<T: EventPayload>(&self, data: T) -> Result<Published, PublishError> {
        self.publish(&self.event(data)).await
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
        let event_type = event.event_type;
        let result = self.send(event).await;
        let outcome = match &result {
            Ok(published) if published.duplicate => PublishOutcome::Duplicate,
            Ok(_) => PublishOutcome::Stored,
            Err(_) => PublishOutcome::Failed,
        };
        self.metrics
            .published(event_type, outcome, started.elapsed());
        result
    }

    async fn send<T: EventPayload>(&self, event: &Event<T>) -> Result<Published, PublishError> {
        let subject = event.data.nats_subject(&self.subjects)?;
        let (mut headers, body) = if event.traceparent.is_some() {
            encode(event)?
        } else {
            let (traceparent, tracestate) = current_trace_context();
            encode_with_trace(event, traceparent.as_deref(), tracestate.as_deref())?
        };
        headers.insert(NATS_MESSAGE_ID, percent_encode_value(&event.id));
        let message = PublishMessage::build().payload(body).headers(headers);
        let ack = self
            .jetstream
            .send_publish(subject.clone(), message)
            .await
            .map_err(|source| PublishError::Send {
                subject: subject.clone(),
                source,
            })?;
        let ack = ack
            .await
            .map_err(|source| PublishError::Ack { subject, source })?;
        Ok(Published {
            stream: ack.stream,
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }
}
