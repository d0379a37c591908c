//! Dead letters: a message a consumer cannot handle, ever, is republished on
//! `{p}.deadletter.{consumer}` with its original headers and body plus headers saying why and
//! where it came from, and only then terminated. Nothing is silently dropped.
//!
//! The dead letter's `Nats-Msg-Id` is `{consumer}:{stream}:{sequence}`, so dead-lettering the same
//! delivery twice (the term was lost and the message came back) stores one dead letter. The
//! original's own `Nats-*` headers are not copied (they would steer the new publish); its
//! `Nats-Msg-Id` travels as [`ORIGINAL_MSG_ID`].

use async_nats::HeaderMap;
use async_nats::header::{HeaderValue, NATS_MESSAGE_ID};
use async_nats::jetstream::context::{Context, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;

use crate::binding::{DecodeErrorKind, find_header, percent_decode_value, percent_encode_value};
use crate::publish::PublishError;
use crate::subject::Subjects;

/// Header: why the message was dead-lettered ([`DeadLetterReason::as_str`]).
pub const REASON: &str = "Countersign-Deadletter-Reason";
/// Header: what went wrong, for people (percent-encoded).
pub const DETAIL: &str = "Countersign-Deadletter-Detail";
/// Header: the handler's own code for a rejection (percent-encoded).
pub const CODE: &str = "Countersign-Deadletter-Code";
/// Header: the durable consumer that gave up.
pub const CONSUMER: &str = "Countersign-Deadletter-Consumer";
/// Header: the stream the message came from.
pub const ORIGINAL_STREAM: &str = "Countersign-Original-Stream";
/// Header: the message's sequence in that stream.
pub const ORIGINAL_SEQUENCE: &str = "Countersign-Original-Sequence";
/// Header: the subject the message was published on.
pub const ORIGINAL_SUBJECT: &str = "Countersign-Original-Subject";
/// Header: the original `Nats-Msg-Id` (percent-encoded), when it had one.
pub const ORIGINAL_MSG_ID: &str = "Countersign-Original-Msg-Id";
/// Header: how many times the message had been delivered.
pub const DELIVERIES: &str = "Countersign-Deadletter-Deliveries";
/// Header: `true` when the original body was too large to carry and was left out.
pub const BODY_DROPPED: &str = "Countersign-Deadletter-Body-Dropped";

/// Why a message was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    /// The message is not a valid event of the consumer's types.
    Decode(DecodeErrorKind),
    /// The handler said the event can never be handled (poison).
    Rejected,
    /// The handler failed transiently on the last allowed delivery.
    RetriesExhausted,
}

impl DeadLetterReason {
    /// The reason as a snake_case code: a [`DecodeErrorKind`] code, `rejected` or `retries_exhausted`.
    pub const fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Decode(kind) => kind.as_str(),
            DeadLetterReason::Rejected => "rejected",
            DeadLetterReason::RetriesExhausted => "retries_exhausted",
        }
    }
}

/// Why a message is dead-lettered: the reason code, a message for people, and the handler's
/// own code for a rejection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterNote {
    /// The reason.
    pub reason: DeadLetterReason,
    /// What went wrong, for people.
    pub detail: String,
    /// The handler's code for a rejection.
    pub code: Option<String>,
}

/// Where a dead-lettered message came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin<'a> {
    pub consumer: &'a str,
    pub stream: &'a str,
    pub sequence: u64,
    pub subject: &'a str,
    pub deliveries: u64,
}

/// Publishes a dead letter and waits for the stream's acknowledgement.
pub(crate) async fn publish_dead_letter(
    jetstream: &Context,
    subjects: &Subjects,
    origin: &Origin<'_>,
    original_headers: Option<&HeaderMap>,
    original_body: &Bytes,
    note: &DeadLetterNote,
) -> Result<(), PublishError> {
    let subject = subjects.deadletter(origin.consumer)?;
    let mut headers = HeaderMap::new();
    if let Some(original) = original_headers {
        for (name, values) in original.iter() {
            let text: &str = name.as_ref();
            if text.len() >= 5 && text[..5].eq_ignore_ascii_case("nats-") {
                continue;
            }
            for value in values {
                headers.append(name.clone(), value.clone());
            }
        }
        if let Some(id) = find_header(original, NATS_MESSAGE_ID.as_ref()) {
            headers.insert(ORIGINAL_MSG_ID, percent_encode_value(id.as_str()));
        }
    }
    headers.insert(REASON, note.reason.as_str());
    headers.insert(DETAIL, percent_encode_value(&note.detail));
    if let Some(code) = &note.code {
        headers.insert(CODE, percent_encode_value(code));
    }
    headers.insert(CONSUMER, percent_encode_value(origin.consumer));
    headers.insert(ORIGINAL_STREAM, origin.stream);
    headers.insert(ORIGINAL_SEQUENCE, origin.sequence.to_string());
    headers.insert(ORIGINAL_SUBJECT, origin.subject);
    headers.insert(DELIVERIES, origin.deliveries.to_string());
    let message_id = format!("{}:{}:{}", origin.consumer, origin.stream, origin.sequence);
    headers.insert(NATS_MESSAGE_ID, percent_encode_value(&message_id));

    let attempt = |headers: HeaderMap, body: Bytes| {
        let subject = subject.clone();
        async move {
            let message = PublishMessage::build().payload(body).headers(headers);
            let ack = jetstream
                .send_publish(subject.clone(), message)
                .await
                .map_err(|source| PublishError::Send {
                    subject: subject.clone(),
                    source,
                })?;
            ack.await
                .map_err(|source| PublishError::Ack { subject, source })
        }
    };
    match attempt(headers.clone(), original_body.clone()).await {
        Ok(_) => Ok(()),
        Err(PublishError::Send { source, .. })
            if source.kind() == PublishErrorKind::MaxPayloadExceeded =>
        {
            headers.insert(BODY_DROPPED, "true");
            attempt(headers, Bytes::new()).await.map(|_| ())
        }
        Err(other) => Err(other),
    }
}

/// A dead letter read back from the dead-letter stream (for tools and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// [`REASON`]
    pub reason: String,
    /// [`DETAIL`], decoded.
    pub detail: String,
    /// [`CODE`], decoded.
    pub code: Option<String>,
    /// [`CONSUMER`], decoded.
    pub consumer: String,
    /// [`ORIGINAL_STREAM`]
    pub original_stream: String,
    /// [`ORIGINAL_SEQUENCE`]
    pub original_sequence: u64,
    /// [`ORIGINAL_SUBJECT`]
    pub original_subject: String,
    /// [`ORIGINAL_MSG_ID`], decoded.
    pub original_msg_id: Option<String>,
    /// [`DELIVERIES`]
    pub deliveries: u64,
    /// Whether the body was left out.
    pub body_dropped: bool,
    /// The headers of the dead letter (the original's plus the ones above).
    pub headers: HeaderMap,
    /// The original body.
    pub body: Bytes,
}

impl DeadLetter {
    /// Reads a dead letter from a message's headers and body. `None` when the reason header is
    /// missing (not a dead letter).
    pub fn from_parts(headers: &HeaderMap, body: Bytes) -> Option<DeadLetter> {
        let text = |name: &str| {
            find_header(headers, name)
                .map(HeaderValue::as_str)
                .map(str::to_owned)
        };
        let decoded =
            |name: &str| text(name).map(|value| percent_decode_value(&value).unwrap_or(value));
        let number = |name: &str| {
            text(name)
                .and_then(|value| value.parse().ok())
                .unwrap_or_default()
        };
        Some(DeadLetter {
            reason: text(REASON)?,
            detail: decoded(DETAIL).unwrap_or_default(),
            code: decoded(CODE),
            consumer: decoded(CONSUMER).unwrap_or_default(),
            original_stream: text(ORIGINAL_STREAM).unwrap_or_default(),
            original_sequence: number(ORIGINAL_SEQUENCE),
            original_subject: text(ORIGINAL_SUBJECT).unwrap_or_default(),
            original_msg_id: decoded(ORIGINAL_MSG_ID),
            deliveries: number(DELIVERIES),
            body_dropped: text(BODY_DROPPED).as_deref() == Some("true"),
            headers: headers.clone(),
            body,
        })
    }

    /// The value of one of the original headers (ignoring case).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name).map(HeaderValue::as_str)
    }
}

#[cfg(test)]
mod tests {
    use async_nats::header::HeaderName;

    use super::*;

    #[test]
    fn header_names_are_valid() {
        for name in [
            REASON,
            DETAIL,
            CODE,
            CONSUMER,
            ORIGINAL_STREAM,
            ORIGINAL_SEQUENCE,
            ORIGINAL_SUBJECT,
            ORIGINAL_MSG_ID,
            DELIVERIES,
            BODY_DROPPED,
        ] {
            assert!(name.parse::<HeaderName>().is_ok(), "{name}");
        }
    }

    #[test]
    fn reasons_have_stable_codes() {
        assert_eq!(
            DeadLetterReason::Decode(DecodeErrorKind::NotJson).as_str(),
            "not_json"
        );
        assert_eq!(DeadLetterReason::Rejected.as_str(), "rejected");
        assert_eq!(
            DeadLetterReason::RetriesExhausted.as_str(),
            "retries_exhausted"
        );
    }
}
