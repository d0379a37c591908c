//! [`Event<T>`]: a CloudEvent parsed once at the boundary, with typed data, and its conversion
//! to and from the `cloudevents-sdk` model (which validates the attributes).

use chrono::{DateTime, Utc};
use cloudevents::{EventBuilder, EventBuilderV10};

use crate::event_type::EventType;
use crate::payload::EventPayload;

/// The `datacontenttype` of every Countersign event.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// The CloudEvent `source` of the events a service publishes: `/countersign/{service}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSource(String);

impl EventSource {
    /// The source of a Countersign service (`watcher`, `registrar`, `attestor`...). Characters
    /// that a URI path segment cannot hold are percent-encoded.
    pub fn service(name: &str) -> EventSource {
        const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
            .remove(b'-')
            .remove(b'_')
            .remove(b'.')
            .remove(b'~');
        EventSource(format!(
            "/countersign/{}",
            percent_encoding::utf8_percent_encode(name, SEGMENT)
        ))
    }

    /// The source as a URI-reference.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A CloudEvent with typed data. Built with [`Event::new`] by publishers, decoded by
/// [`decode`](crate::decode) for consumers.
#[derive(Debug, Clone, PartialEq)]
pub struct Event<T> {
    /// `id`: deterministic, from the TaskRun UID (or entry id) and the transition.
    pub id: String,
    /// `source`: a URI-reference naming the publisher.
    pub source: String,
    /// `type`.
    pub event_type: EventType,
    /// `subject`: `{namespace}/{name}` of the TaskRun (or `_node/{node}`).
    pub subject: Option<String>,
    /// `time`: when the publisher observed the transition.
    pub time: DateTime<Utc>,
    /// `dataschema`: the URI of the JSON Schema of `data`.
    pub dataschema: Option<String>,
    /// The W3C `traceparent` (CloudEvents distributed-tracing extension).
    pub traceparent: Option<String>,
    /// The W3C `tracestate`.
    pub tracestate: Option<String>,
    /// `data`.
    pub data: T,
}

impl<T: EventPayload> Event<T> {
    /// An event of `data` from `source`, observed now: id, type, subject and dataschema are
    /// derived from the data. The trace context is filled from the current span when the event
    /// is published, unless set here.
    pub fn new(source: &EventSource, data: T) -> Event<T> {
        Event::observed_at(source, Utc::now(), data)
    }

    /// Like [`Event::new`], with the observation time given.
    pub fn observed_at(source: &EventSource, time: DateTime<Utc>, data: T) -> Event<T> {
        let event_type = data.event_type();
        Event {
            id: data.event_id(),
            source: source.as_str().to_owned(),
            event_type,
            subject: Some(data.ce_subject()),
            time,
            dataschema: Some(event_type.dataschema()),
            traceparent: None,
            tracestate: None,
            data,
        }
    }

    /// Converts to the `cloudevents-sdk` model (which checks the attributes: a non-empty
    /// source, a dataschema that is a URI).
    pub fn to_cloudevent(&self) -> Result<cloudevents::Event, EncodeError> {
        let data = self.data.to_json().map_err(EncodeError::Data)?;
        let data: serde_json::Value = serde_json::from_slice(&data).map_err(EncodeError::Data)?;
        let mut builder = EventBuilderV10::new()
            .id(self.id.as_str())
            .source(self.source.as_str())
            .ty(self.event_type.as_str())
            .time(self.time);
        if let Some(subject) = &self.subject {
            builder = builder.subject(subject.as_str());
        }
        builder = match &self.dataschema {
            Some(schema) => builder.data_with_schema(JSON_CONTENT_TYPE, schema.as_str(), data),
            None => builder.data(JSON_CONTENT_TYPE, data),
        };
        if let Some(traceparent) = &self.traceparent {
            builder = builder.extension("traceparent", traceparent.as_str());
        }
        if let Some(tracestate) = &self.tracestate {
            builder = builder.extension("tracestate", tracestate.as_str());
        }
        builder.build().map_err(EncodeError::Attributes)
    }
}

/// Why an event could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The data did not serialize to JSON.
    #[error("serializing the event data")]
    Data(#[source] serde_json::Error),
    /// An attribute is invalid (an empty source, a dataschema that is not a URI).
    #[error("invalid CloudEvent attributes")]
    Attributes(#[source] cloudevents::event::EventBuilderError),
    /// A required attribute (`id`, `source`) is empty.
    #[error("the CloudEvent attribute {name:?} is empty")]
    EmptyAttribute { name: &'static str },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_uri_references_under_countersign() {
        assert_eq!(
            EventSource::service("watcher").as_str(),
            "/countersign/watcher"
        );
        assert_eq!(
            EventSource::service("a b/c").as_str(),
            "/countersign/a%20b%2Fc"
        );
    }
}
