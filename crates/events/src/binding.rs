//! The CloudEvents 1.0 NATS binding, written over async-nats headers.
//!
//! Sent in **binary content mode**: every attribute is a `ce-<name>` header, its value
//! percent-encoded as the CloudEvents HTTP and NATS bindings require (space, `"`, `%` and every
//! byte outside printable ASCII; see [`percent_encode_value`]), `datacontenttype` is the
//! `content-type` header, and the body is the JSON data.
//!
//! Received in binary mode (header names matched case-insensitively, so a Go SDK publisher's
//! `Content-Type` works) or in **structured mode** (`content-type: application/cloudevents+json`,
//! the whole event as JSON in the body, read through the `cloudevents-sdk` event model). The
//! data is parsed once into the typed payload. Every way a message can be wrong is a
//! [`DecodeError`] with its own [`DecodeErrorKind`].
//!
//! The binary mode is read and written here directly rather than through the sdk's builder and
//! visitor: that path costs several allocations and a URL parse per attribute and kept the binding
//! well below raw JetStream throughput. The unit tests check both directions against the sdk's
//! own binary-mode model, so the two cannot drift.

use std::borrow::Cow;

use async_nats::HeaderMap;
use async_nats::header::{HeaderName, HeaderValue, NATS_MESSAGE_ID};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use cloudevents::AttributesReader as _;
use percent_encoding::{AsciiSet, CONTROLS};

use crate::event::{EncodeError, Event, JSON_CONTENT_TYPE};
use crate::event_type::EventType;
use crate::payload::EventPayload;

/// The prefix of CloudEvent attribute headers.
pub const ATTRIBUTE_HEADER_PREFIX: &str = "ce-";

/// The header carrying `datacontenttype` (binary mode) or the structured-mode media type.
pub const CONTENT_TYPE_HEADER: &str = "content-type";

/// The media type of a structured-mode CloudEvent.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";

/// The only CloudEvents version accepted.
pub const SPEC_VERSION: &str = "1.0";

/// What is percent-encoded in header values: controls, space, `"`, `%`, DEL; every non-ASCII
/// byte is always encoded.
const HEADER_VALUE_SET: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// Limits applied before anything is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// The largest body accepted, in bytes.
    pub max_payload_bytes: usize,
}

impl Default for DecodeLimits {
    /// 1 MiB, the default `max_payload` of nats-server.
    fn default() -> DecodeLimits {
        DecodeLimits {
            max_payload_bytes: 1024 * 1024,
        }
    }
}

/// Percent-encodes a header value as the CloudEvents bindings require.
pub fn percent_encode_value(value: &str) -> String {
    percent_encode_cow(value).into_owned()
}

fn percent_encode_cow(value: &str) -> Cow<'_, str> {
    Cow::from(percent_encoding::utf8_percent_encode(
        value,
        HEADER_VALUE_SET,
    ))
}

/// Decodes a percent-encoded header value. Strict: every `%` must start a `%HH` escape, and the
/// decoded bytes must be UTF-8.
pub fn percent_decode_value(value: &str) -> Option<String> {
    percent_decode_cow(value).map(Cow::into_owned)
}

fn percent_decode_cow(value: &str) -> Option<Cow<'_, str>> {
    if !value.contains('%') {
        return Some(Cow::Borrowed(value));
    }
    let bytes = value.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let high = bytes
                .get(index + 1)
                .and_then(|digit| char::from(*digit).to_digit(16))?;
            let low = bytes
                .get(index + 2)
                .and_then(|digit| char::from(*digit).to_digit(16))?;
            // Two hex digits make a value below 256.
            decoded.push(u8::try_from(high * 16 + low).ok()?);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(decoded).ok().map(Cow::Owned)
}

// === encoding ===

const CE_SPECVERSION: HeaderName = HeaderName::from_static("ce-specversion");
const CE_ID: HeaderName = HeaderName::from_static("ce-id");
const CE_SOURCE: HeaderName = HeaderName::from_static("ce-source");
const CE_TYPE: HeaderName = HeaderName::from_static("ce-type");
const CE_SUBJECT: HeaderName = HeaderName::from_static("ce-subject");
const CE_TIME: HeaderName = HeaderName::from_static("ce-time");
const CE_DATASCHEMA: HeaderName = HeaderName::from_static("ce-dataschema");
const CE_TRACEPARENT: HeaderName = HeaderName::from_static("ce-traceparent");
const CE_TRACESTATE: HeaderName = HeaderName::from_static("ce-tracestate");
const CONTENT_TYPE: HeaderName = HeaderName::from_static(CONTENT_TYPE_HEADER);

/// Encodes an event in binary content mode: the headers and the body.
pub fn encode<T: EventPayload>(event: &Event<T>) -> Result<(HeaderMap, Bytes), EncodeError> {
    let headers = encode_headers(&Attributes::of(event))?;
    let body = encode_body(&event.data, 0)?;
    Ok((headers, body))
}

/// The CloudEvent attributes of one outgoing message, borrowed from an [`Event`] or, when data is
/// published directly, from the data and the publisher.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attributes<'a> {
    pub id: &'a str,
    pub source: &'a str,
    pub event_type: EventType,
    pub subject: Option<&'a str>,
    pub time: &'a DateTime<Utc>,
    pub dataschema: Option<&'a str>,
    pub traceparent: Option<&'a str>,
    pub tracestate: Option<&'a str>,
}

impl<'a> Attributes<'a> {
    /// The attributes of an event, with its own trace context.
    pub(crate) fn of<T>(event: &'a Event<T>) -> Attributes<'a> {
        Attributes {
            id: &event.id,
            source: &event.source,
            event_type: event.event_type,
            subject: event.subject.as_deref(),
            time: &event.time,
            dataschema: event.dataschema.as_deref(),
            traceparent: event.traceparent.as_deref(),
            tracestate: event.tracestate.as_deref(),
        }
    }
}

/// The headers every event of one type from one source starts with, encoded once per publisher.
///
/// Cloning the template and filling in the per-event values gives exactly the headers
/// [`encode`] builds (plus `Nats-Msg-Id`), without percent-encoding the constants again or growing
/// and rehashing the map header by header: on the publish path that was as costly as sending.
#[derive(Debug, Clone)]
pub(crate) struct HeaderTemplate {
    event_type: EventType,
    source: String,
    dataschema: String,
    /// The constants, and empty placeholders for the headers every templated message sets
    /// (so the map is sized for them).
    headers: HeaderMap,
}

impl HeaderTemplate {
    /// The template of events of `event_type` from `source`, with the type's own dataschema.
    pub(crate) fn new(source: &str, event_type: EventType) -> HeaderTemplate {
        let dataschema = event_type.dataschema();
        let mut headers = HeaderMap::new();
        headers.insert(CE_SPECVERSION, header_value(SPEC_VERSION));
        headers.insert(CE_SOURCE, header_value(source));
        headers.insert(CE_TYPE, header_value(event_type.as_str()));
        headers.insert(CONTENT_TYPE, header_value(JSON_CONTENT_TYPE));
        headers.insert(CE_DATASCHEMA, header_value(&dataschema));
        for placeholder in [CE_ID, CE_TIME, CE_SUBJECT, NATS_MESSAGE_ID] {
            headers.insert(placeholder, HeaderValue::new());
        }
        HeaderTemplate {
            event_type,
            source: source.to_owned(),
            dataschema,
            headers,
        }
    }

    /// The dataschema of the template's type.
    pub(crate) fn dataschema(&self) -> &str {
        &self.dataschema
    }

    /// Whether a message with these attributes can start from the template: the same type,
    /// source and dataschema, and a subject to fill the placeholder.
    fn fits(&self, attributes: &Attributes<'_>) -> bool {
        attributes.event_type == self.event_type
            && attributes.source == self.source
            && attributes.dataschema == Some(self.dataschema.as_str())
            && attributes.subject.is_some()
    }
}

/// The headers of a message published to JetStream: the CloudEvent attributes (see [`encode`])
/// and the id as `Nats-Msg-Id`. Starts from `template` when it fits the attributes (an event
/// built by hand may carry another source, dataschema or no subject).
pub(crate) fn message_headers(
    attributes: &Attributes<'_>,
    template: &HeaderTemplate,
) -> Result<HeaderMap, EncodeError> {
    let id = header_value(attributes.id);
    let mut headers = if template.fits(attributes) {
        check_required(attributes)?;
        let mut headers = template.headers.clone();
        headers.insert(CE_ID, id.clone());
        headers.insert(CE_TIME, owned_header_value(format_time(attributes.time)));
        if let Some(subject) = attributes.subject {
            headers.insert(CE_SUBJECT, header_value(subject));
        }
        insert_trace(&mut headers, attributes);
        headers
    } else {
        // `encode_headers` checks the required attributes itself.
        encode_headers(attributes)?
    };
    headers.insert(NATS_MESSAGE_ID, id);
    Ok(headers)
}

fn check_required(attributes: &Attributes<'_>) -> Result<(), EncodeError> {
    for (name, value) in [("id", attributes.id), ("source", attributes.source)] {
        if value.is_empty() {
            return Err(EncodeError::EmptyAttribute { name });
        }
    }
    Ok(())
}

/// The binary-mode headers of the attributes (without `Nats-Msg-Id`).
fn encode_headers(attributes: &Attributes<'_>) -> Result<HeaderMap, EncodeError> {
    check_required(attributes)?;
    let mut headers = HeaderMap::new();
    headers.insert(CE_SPECVERSION, header_value(SPEC_VERSION));
    headers.insert(CE_ID, header_value(attributes.id));
    headers.insert(CE_SOURCE, header_value(attributes.source));
    headers.insert(CE_TYPE, header_value(attributes.event_type.as_str()));
    headers.insert(CE_TIME, owned_header_value(format_time(attributes.time)));
    headers.insert(CONTENT_TYPE, header_value(JSON_CONTENT_TYPE));
    if let Some(subject) = attributes.subject {
        headers.insert(CE_SUBJECT, header_value(subject));
    }
    if let Some(dataschema) = attributes.dataschema {
        headers.insert(CE_DATASCHEMA, header_value(dataschema));
    }
    insert_trace(&mut headers, attributes);
    Ok(headers)
}

fn insert_trace(headers: &mut HeaderMap, attributes: &Attributes<'_>) {
    if let Some(traceparent) = attributes.traceparent {
        headers.insert(CE_TRACEPARENT, header_value(traceparent));
    }
    if let Some(tracestate) = attributes.tracestate {
        headers.insert(CE_TRACESTATE, header_value(tracestate));
    }
}

/// A percent-encoded header value.
fn header_value(value: &str) -> HeaderValue {
    match percent_encode_cow(value) {
        Cow::Borrowed(value) => HeaderValue::from(value),
        Cow::Owned(encoded) => HeaderValue::from(encoded),
    }
}

/// A percent-encoded header value, reusing the string when nothing needs encoding.
fn owned_header_value(value: String) -> HeaderValue {
    match percent_encode_cow(&value) {
        Cow::Borrowed(_) => HeaderValue::from(value),
        Cow::Owned(encoded) => HeaderValue::from(encoded),
    }
}

/// The JSON body of `data`, written into a buffer of `size_hint` bytes (the size of the previous
/// body, say) so that it rarely has to grow.
pub(crate) fn encode_body<T: EventPayload>(
    data: &T,
    size_hint: usize,
) -> Result<Bytes, EncodeError> {
    let mut body = Vec::with_capacity(size_hint);
    data.write_json(&mut body).map_err(EncodeError::Data)?;
    Ok(Bytes::from(body))
}

/// RFC 3339 in UTC with `Z` and as many fraction digits as needed.
fn format_time(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

// === decoding ===

/// The kind of a [`DecodeError`]; its [`as_str`](DecodeErrorKind::as_str) is the dead-letter reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecodeErrorKind {
    /// The body is larger than the configured limit.
    PayloadTooLarge,
    /// A required attribute (or every `ce-` header) is missing.
    MissingAttribute,
    /// An attribute header appears more than once.
    DuplicateAttribute,
    /// An attribute header is not valid percent-encoded UTF-8.
    InvalidPercentEncoding,
    /// An attribute's value is invalid (a time that is not RFC 3339, a dataschema that is not a URI).
    InvalidAttribute,
    /// The `specversion` is not `1.0`.
    UnsupportedSpecVersion,
    /// The `datacontenttype` is not JSON.
    UnsupportedContentType,
    /// A structured-mode body is not a CloudEvent in JSON.
    MalformedStructured,
    /// The `type` is not one of Countersign's.
    UnknownType,
    /// The `type` is Countersign's but not one this consumer takes.
    UnexpectedType,
    /// The event has no data.
    MissingData,
    /// The data is not JSON.
    NotJson,
    /// The data is JSON but does not match the type's schema.
    DataMismatch,
}

impl DecodeErrorKind {
    /// The kind as a snake_case reason code.
    pub const fn as_str(self) -> &'static str {
        match self {
            DecodeErrorKind::PayloadTooLarge => "payload_too_large",
            DecodeErrorKind::MissingAttribute => "missing_attribute",
            DecodeErrorKind::DuplicateAttribute => "duplicate_attribute",
            DecodeErrorKind::InvalidPercentEncoding => "invalid_percent_encoding",
            DecodeErrorKind::InvalidAttribute => "invalid_attribute",
            DecodeErrorKind::UnsupportedSpecVersion => "unsupported_specversion",
            DecodeErrorKind::UnsupportedContentType => "unsupported_content_type",
            DecodeErrorKind::MalformedStructured => "malformed_structured",
            DecodeErrorKind::UnknownType => "unknown_type",
            DecodeErrorKind::UnexpectedType => "unexpected_type",
            DecodeErrorKind::MissingData => "missing_data",
            DecodeErrorKind::NotJson => "not_json",
            DecodeErrorKind::DataMismatch => "data_mismatch",
        }
    }
}

/// Why a message is not a valid event of the expected types.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The body is larger than the configured limit.
    #[error("the body has {size} bytes, more than the limit of {limit}")]
    PayloadTooLarge { size: usize, limit: usize },
    /// A required attribute is missing.
    #[error("the CloudEvent attribute {name:?} is missing")]
    MissingAttribute { name: String },
    /// An attribute header appears more than once.
    #[error("the CloudEvent attribute header {name:?} appears more than once")]
    DuplicateAttribute { name: String },
    /// An attribute header is not valid percent-encoded UTF-8.
    #[error("the header {header:?} is not valid percent-encoded UTF-8")]
    InvalidPercentEncoding { header: String },
    /// An attribute's value is invalid.
    #[error("the CloudEvent attribute {name:?} is invalid")]
    InvalidAttribute {
        name: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The `specversion` is not `1.0`.
    #[error("CloudEvents specversion {version:?} is not supported (1.0 is)")]
    UnsupportedSpecVersion { version: String },
    /// The `datacontenttype` is not JSON.
    #[error("datacontenttype {content_type:?} is not JSON")]
    UnsupportedContentType { content_type: String },
    /// A structured-mode body is not a CloudEvent in JSON.
    #[error("the structured-mode body is not a CloudEvent in JSON")]
    MalformedStructured {
        #[source]
        source: serde_json::Error,
    },
    /// The `type` is not one of Countersign's.
    #[error("unknown event type {event_type:?}")]
    UnknownType { event_type: String },
    /// The `type` is not one this consumer takes.
    #[error("event type {event_type} is not expected here")]
    UnexpectedType { event_type: EventType },
    /// The event has no data.
    #[error("the event has no data")]
    MissingData,
    /// The data is not JSON.
    #[error("the data is not JSON")]
    NotJson {
        #[source]
        source: serde_json::Error,
    },
    /// The data does not match the type's schema.
    #[error("the data does not match the schema of {event_type}")]
    DataMismatch {
        event_type: EventType,
        #[source]
        source: serde_json::Error,
    },
}

impl DecodeError {
    /// The kind of error, to branch on and to report.
    pub fn kind(&self) -> DecodeErrorKind {
        match self {
            DecodeError::PayloadTooLarge { .. } => DecodeErrorKind::PayloadTooLarge,
            DecodeError::MissingAttribute { .. } => DecodeErrorKind::MissingAttribute,
            DecodeError::DuplicateAttribute { .. } => DecodeErrorKind::DuplicateAttribute,
            DecodeError::InvalidPercentEncoding { .. } => DecodeErrorKind::InvalidPercentEncoding,
            DecodeError::InvalidAttribute { .. } => DecodeErrorKind::InvalidAttribute,
            DecodeError::UnsupportedSpecVersion { .. } => DecodeErrorKind::UnsupportedSpecVersion,
            DecodeError::UnsupportedContentType { .. } => DecodeErrorKind::UnsupportedContentType,
            DecodeError::MalformedStructured { .. } => DecodeErrorKind::MalformedStructured,
            DecodeError::UnknownType { .. } => DecodeErrorKind::UnknownType,
            DecodeError::UnexpectedType { .. } => DecodeErrorKind::UnexpectedType,
            DecodeError::MissingData => DecodeErrorKind::MissingData,
            DecodeError::NotJson { .. } => DecodeErrorKind::NotJson,
            DecodeError::DataMismatch { .. } => DecodeErrorKind::DataMismatch,
        }
    }
}

/// Finds a header by name, ignoring ASCII case.
pub fn find_header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a HeaderValue> {
    headers
        .iter()
        .find(|(candidate, _)| AsRef::<str>::as_ref(*candidate).eq_ignore_ascii_case(name))
        .and_then(|(_, values)| values.last())
}

/// Decodes a message into a typed event, in binary or structured mode.
pub fn decode<T: EventPayload>(
    headers: Option<&HeaderMap>,
    payload: &[u8],
    limits: &DecodeLimits,
) -> Result<Event<T>, DecodeError> {
    if payload.len() > limits.max_payload_bytes {
        return Err(DecodeError::PayloadTooLarge {
            size: payload.len(),
            limit: limits.max_payload_bytes,
        });
    }
    let empty = HeaderMap::new();
    let headers = headers.unwrap_or(&empty);
    let content_type = find_header(headers, CONTENT_TYPE_HEADER).map(HeaderValue::as_str);
    if content_type.is_some_and(|content_type| media_type(content_type) == STRUCTURED_CONTENT_TYPE)
    {
        decode_structured(payload)
    } else {
        decode_binary(headers, payload)
    }
}

/// The media type of a content type, without parameters, lower-cased.
fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

fn is_json(content_type: &str) -> bool {
    let media_type = media_type(content_type);
    media_type == JSON_CONTENT_TYPE || media_type.ends_with("+json")
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// The attributes of a binary-mode message, percent-decoded (borrowed when nothing was encoded).
#[derive(Default)]
struct BinaryAttributes<'a> {
    specversion: Option<Cow<'a, str>>,
    id: Option<Cow<'a, str>>,
    source: Option<Cow<'a, str>>,
    event_type: Option<Cow<'a, str>>,
    subject: Option<Cow<'a, str>>,
    time: Option<Cow<'a, str>>,
    dataschema: Option<Cow<'a, str>>,
    traceparent: Option<Cow<'a, str>>,
    tracestate: Option<Cow<'a, str>>,
    content_type: Option<&'a str>,
}

impl<'a> BinaryAttributes<'a> {
    /// Reads every `ce-` header (names in any case) and the content type. Extensions other than
    /// the trace context are checked for valid encoding and otherwise ignored.
    fn read(headers: &'a HeaderMap) -> Result<BinaryAttributes<'a>, DecodeError> {
        let mut attributes = BinaryAttributes::default();
        for (name, values) in headers.iter() {
            let name: &str = name.as_ref();
            if name.eq_ignore_ascii_case(CONTENT_TYPE_HEADER) {
                attributes.content_type = values.last().map(|value| value.as_str().trim());
                continue;
            }
            let Some(attribute) = strip_prefix_ignore_case(name, ATTRIBUTE_HEADER_PREFIX) else {
                continue;
            };
            let duplicate = || DecodeError::DuplicateAttribute {
                name: attribute.to_ascii_lowercase(),
            };
            let [value] = values.as_slice() else {
                return Err(duplicate());
            };
            let decoded = percent_decode_cow(value.as_str()).ok_or_else(|| {
                DecodeError::InvalidPercentEncoding {
                    header: name.to_owned(),
                }
            })?;
            let Some(slot) = attributes.slot(attribute) else {
                continue;
            };
            if slot.is_some() {
                return Err(duplicate());
            }
            *slot = Some(decoded);
        }
        Ok(attributes)
    }

    fn slot(&mut self, attribute: &str) -> Option<&mut Option<Cow<'a, str>>> {
        let is = |name: &str| attribute.eq_ignore_ascii_case(name);
        Some(if is("specversion") {
            &mut self.specversion
        } else if is("id") {
            &mut self.id
        } else if is("source") {
            &mut self.source
        } else if is("type") {
            &mut self.event_type
        } else if is("subject") {
            &mut self.subject
        } else if is("time") {
            &mut self.time
        } else if is("dataschema") {
            &mut self.dataschema
        } else if is("traceparent") {
            &mut self.traceparent
        } else if is("tracestate") {
            &mut self.tracestate
        } else {
            return None;
        })
    }
}

/// Whether `text` starts with a URI scheme (`[A-Za-z][A-Za-z0-9+.-]*:`), as an absolute URI does.
fn is_absolute_uri(text: &str) -> bool {
    let Some((scheme, _)) = text.split_once(':') else {
        return false;
    };
    let mut characters = scheme.chars();
    characters
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic())
        && characters
            .all(|character| character.is_ascii_alphanumeric() || "+.-".contains(character))
}

fn decode_binary<T: EventPayload>(
    headers: &HeaderMap,
    payload: &[u8],
) -> Result<Event<T>, DecodeError> {
    let attributes = BinaryAttributes::read(headers)?;
    match attributes.specversion.as_deref() {
        None => {
            return Err(DecodeError::MissingAttribute {
                name: "specversion".into(),
            });
        }
        Some(SPEC_VERSION) => {}
        Some(version) => {
            return Err(DecodeError::UnsupportedSpecVersion {
                version: version.to_owned(),
            });
        }
    }
    let required = |value: Option<Cow<'_, str>>, name: &str| {
        value
            .filter(|value| !value.is_empty())
            .map(Cow::into_owned)
            .ok_or_else(|| DecodeError::MissingAttribute {
                name: name.to_owned(),
            })
    };
    let id = required(attributes.id, "id")?;
    let source = required(attributes.source, "source")?;
    let type_name = required(attributes.event_type, "type")?;
    let event_type: EventType = type_name.parse().map_err(|_| DecodeError::UnknownType {
        event_type: type_name.clone(),
    })?;
    if !T::accepts(event_type) {
        return Err(DecodeError::UnexpectedType { event_type });
    }
    let time = required(attributes.time, "time")?;
    let time = DateTime::parse_from_rfc3339(&time)
        .map_err(|error| DecodeError::InvalidAttribute {
            name: "time".into(),
            source: Box::new(error),
        })?
        .with_timezone(&Utc);
    if let Some(dataschema) = &attributes.dataschema
        && !is_absolute_uri(dataschema)
    {
        return Err(DecodeError::InvalidAttribute {
            name: "dataschema".into(),
            source: "not an absolute URI".into(),
        });
    }
    if let Some(content_type) = attributes.content_type
        && !is_json(content_type)
    {
        return Err(DecodeError::UnsupportedContentType {
            content_type: content_type.to_owned(),
        });
    }
    if payload.is_empty() {
        return Err(DecodeError::MissingData);
    }
    let data = parse_data(event_type, payload)?;
    Ok(Event {
        id,
        source,
        event_type,
        subject: attributes.subject.map(Cow::into_owned),
        time,
        dataschema: attributes.dataschema.map(Cow::into_owned),
        traceparent: attributes.traceparent.map(Cow::into_owned),
        tracestate: attributes.tracestate.map(Cow::into_owned),
        data,
    })
}

fn decode_structured<T: EventPayload>(payload: &[u8]) -> Result<Event<T>, DecodeError> {
    let value: serde_json::Value = serde_json::from_slice(payload)
        .map_err(|source| DecodeError::MalformedStructured { source })?;
    match value.get("specversion") {
        None => {
            return Err(DecodeError::MissingAttribute {
                name: "specversion".into(),
            });
        }
        Some(serde_json::Value::String(version)) if version == SPEC_VERSION => {}
        Some(other) => {
            let version = other
                .as_str()
                .map_or_else(|| other.to_string(), str::to_owned);
            return Err(DecodeError::UnsupportedSpecVersion { version });
        }
    }
    let cloudevent: cloudevents::Event = serde_json::from_value(value)
        .map_err(|source| DecodeError::MalformedStructured { source })?;
    Event::from_cloudevent(cloudevent)
}

/// Reads the attributes of an sdk event that the typed event keeps. Shared by the binary and
/// structured decoders.
struct SdkAttributes {
    id: String,
    source: String,
    event_type: String,
    subject: Option<String>,
    time: Option<DateTime<Utc>>,
    datacontenttype: Option<String>,
    dataschema: Option<String>,
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl SdkAttributes {
    fn read(event: &cloudevents::Event) -> SdkAttributes {
        let extension = |name: &str| event.extension(name).map(|value| value.to_string());
        SdkAttributes {
            id: event.id().to_owned(),
            source: event.source().to_string(),
            event_type: event.ty().to_owned(),
            subject: event.subject().map(str::to_owned),
            time: event.time().copied(),
            datacontenttype: event.datacontenttype().map(str::to_owned),
            dataschema: event.dataschema().map(|uri| uri.as_str().to_owned()),
            traceparent: extension("traceparent"),
            tracestate: extension("tracestate"),
        }
    }
}

impl<T: EventPayload> Event<T> {
    /// Converts from the `cloudevents-sdk` model (an event received over another transport),
    /// with the same checks as [`decode`]. Defined here, not in `event.rs`, so that the binding
    /// depends on the event model and not the other way round.
    pub fn from_cloudevent(mut cloudevent: cloudevents::Event) -> Result<Event<T>, DecodeError> {
        let attributes = SdkAttributes::read(&cloudevent);
        if attributes.id.is_empty() {
            return Err(DecodeError::MissingAttribute { name: "id".into() });
        }
        let event_type: EventType =
            attributes
                .event_type
                .parse()
                .map_err(|_| DecodeError::UnknownType {
                    event_type: attributes.event_type.clone(),
                })?;
        if !T::accepts(event_type) {
            return Err(DecodeError::UnexpectedType { event_type });
        }
        let time = attributes
            .time
            .ok_or_else(|| DecodeError::MissingAttribute {
                name: "time".into(),
            })?;
        if let Some(content_type) = &attributes.datacontenttype
            && !is_json(content_type)
        {
            return Err(DecodeError::UnsupportedContentType {
                content_type: content_type.clone(),
            });
        }
        let (_, _, data) = cloudevent.take_data();
        let data = match data {
            None => return Err(DecodeError::MissingData),
            Some(cloudevents::Data::Json(value)) => T::from_value(event_type, value)
                .map_err(|source| DecodeError::DataMismatch { event_type, source })?,
            Some(cloudevents::Data::Binary(bytes)) => parse_data(event_type, &bytes)?,
            Some(cloudevents::Data::String(text)) => parse_data(event_type, text.as_bytes())?,
        };
        Ok(Event {
            id: attributes.id,
            source: attributes.source,
            event_type,
            subject: attributes.subject,
            time,
            dataschema: attributes.dataschema,
            traceparent: attributes.traceparent,
            tracestate: attributes.tracestate,
            data,
        })
    }
}

fn parse_data<T: EventPayload>(event_type: EventType, bytes: &[u8]) -> Result<T, DecodeError> {
    T::from_json(event_type, bytes).map_err(|source| match source.classify() {
        serde_json::error::Category::Data => DecodeError::DataMismatch { event_type, source },
        _ => DecodeError::NotJson { source },
    })
}

#[cfg(test)]
mod tests {
    use cloudevents::AttributesReader as _;
    use cloudevents::event::SpecVersion;
    use cloudevents::message::{BinaryDeserializer, BinarySerializer, MessageAttributeValue};

    use super::*;
    use crate::data::{TaskRunDeleted, TaskRunRef};
    use crate::event::EventSource;
    use crate::payload::{AttestationEvent, LifecycleEvent};

    fn deleted() -> Event<TaskRunDeleted> {
        let data = TaskRunDeleted {
            taskrun: TaskRunRef {
                cluster: "prod".into(),
                namespace: "team a".into(),
                name: "build.1".into(),
                uid: "uid-1".into(),
            },
            pod: None,
        };
        let mut event = Event::new(&EventSource::service("watcher"), data);
        event.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        event.tracestate = Some("vendor=a b,\"quoted\"=%".into());
        event
    }

    fn header(headers: &HeaderMap, name: &str) -> String {
        find_header(headers, name)
            .map(|value| value.as_str().to_owned())
            .unwrap_or_default()
    }

    #[test]
    fn binary_mode_round_trip_with_percent_encoding() {
        let event = deleted();
        let (headers, body) = encode(&event).unwrap();
        assert_eq!(header(&headers, "ce-specversion"), "1.0");
        assert_eq!(header(&headers, "ce-id"), "uid-1:deleted");
        assert_eq!(
            header(&headers, "ce-type"),
            "dev.countersign.taskrun.deleted.v1"
        );
        assert_eq!(header(&headers, "ce-source"), "/countersign/watcher");
        assert_eq!(header(&headers, "ce-subject"), "team%20a/build.1");
        assert_eq!(
            header(&headers, "ce-tracestate"),
            "vendor=a%20b,%22quoted%22=%25"
        );
        assert_eq!(header(&headers, "content-type"), "application/json");
        assert!(
            header(&headers, "ce-dataschema").ends_with("/dev.countersign.taskrun.deleted.v1.json")
        );
        let decoded: Event<TaskRunDeleted> =
            decode(Some(&headers), &body, &DecodeLimits::default()).unwrap();
        assert_eq!(decoded, event);
        let family: Event<LifecycleEvent> =
            decode(Some(&headers), &body, &DecodeLimits::default()).unwrap();
        assert_eq!(family.data, LifecycleEvent::Deleted(event.data.clone()));
    }

    #[test]
    fn templated_headers_are_the_plain_ones_plus_the_message_id() {
        let mut event = deleted();
        let template = HeaderTemplate::new(&event.source, event.event_type);
        let with_id = |mut headers: HeaderMap| {
            headers.insert(NATS_MESSAGE_ID, "uid-1:deleted");
            headers
        };
        let (plain, _) = encode(&event).unwrap();
        let templated = message_headers(&Attributes::of(&event), &template).unwrap();
        assert_eq!(templated, with_id(plain));
        // Without trace context or subject, and with another source or type: the same too
        // (those that do not fit the template are encoded plainly).
        event.traceparent = None;
        event.tracestate = None;
        event.subject = None;
        let (plain, _) = encode(&event).unwrap();
        assert_eq!(
            message_headers(&Attributes::of(&event), &template).unwrap(),
            with_id(plain)
        );
        event.subject = Some("team a/build.1".into());
        event.source = "/countersign/other".into();
        let (plain, _) = encode(&event).unwrap();
        assert_eq!(
            message_headers(&Attributes::of(&event), &template).unwrap(),
            with_id(plain)
        );
        let other_type = HeaderTemplate::new(&event.source, EventType::TaskRunCreated);
        let (plain, _) = encode(&event).unwrap();
        assert_eq!(
            message_headers(&Attributes::of(&event), &other_type).unwrap(),
            with_id(plain)
        );
    }

    #[test]
    fn percent_decoding_is_strict() {
        assert_eq!(percent_decode_value("a%20b").as_deref(), Some("a b"));
        assert_eq!(percent_decode_value("%C3%A9").as_deref(), Some("é"));
        assert_eq!(percent_decode_value("%c3%a9").as_deref(), Some("é"));
        for bad in ["%", "%2", "%zz", "a%2x", "%FF"] {
            assert_eq!(percent_decode_value(bad), None, "{bad:?}");
        }
        for text in ["plain", "a b", "\"q\"", "100%", "é\u{1F600}", "tab\there"] {
            let encoded = percent_encode_value(text);
            assert!(
                encoded
                    .bytes()
                    .all(|byte| (0x21..0x7f).contains(&byte) && byte != b'"')
            );
            assert_eq!(percent_decode_value(&encoded).as_deref(), Some(text));
        }
    }

    #[test]
    fn decode_errors_have_their_kinds() {
        let event = deleted();
        let (headers, body) = encode(&event).unwrap();
        let limits = DecodeLimits::default();
        let kind = |headers: &HeaderMap, body: &[u8]| {
            decode::<TaskRunDeleted>(Some(headers), body, &limits)
                .map(|_| ())
                .map_err(|error| error.kind())
        };
        let edit = |name: &str, value: Option<&str>| {
            let mut edited = HeaderMap::new();
            for (key, values) in headers.iter() {
                if !AsRef::<str>::as_ref(key).eq_ignore_ascii_case(name) {
                    for value in values {
                        edited.append(key.clone(), value.clone());
                    }
                }
            }
            if let Some(value) = value {
                edited.insert(name, value);
            }
            edited
        };
        assert_eq!(kind(&headers, &body), Ok(()));
        assert_eq!(
            kind(&edit("ce-id", None), &body),
            Err(DecodeErrorKind::MissingAttribute)
        );
        assert_eq!(
            kind(&edit("ce-time", None), &body),
            Err(DecodeErrorKind::MissingAttribute)
        );
        assert_eq!(
            kind(&edit("ce-specversion", None), &body),
            Err(DecodeErrorKind::MissingAttribute)
        );
        assert_eq!(
            kind(&edit("ce-specversion", Some("0.3")), &body),
            Err(DecodeErrorKind::UnsupportedSpecVersion)
        );
        assert_eq!(
            kind(&edit("ce-time", Some("yesterday")), &body),
            Err(DecodeErrorKind::InvalidAttribute)
        );
        assert_eq!(
            kind(&edit("ce-subject", Some("bad%zz")), &body),
            Err(DecodeErrorKind::InvalidPercentEncoding)
        );
        assert_eq!(
            kind(&edit("ce-type", Some("com.example.other")), &body),
            Err(DecodeErrorKind::UnknownType)
        );
        assert_eq!(
            kind(
                &edit("ce-type", Some("dev.countersign.taskrun.created.v1")),
                &body
            ),
            Err(DecodeErrorKind::UnexpectedType)
        );
        assert_eq!(
            decode::<LifecycleEvent>(
                Some(&edit("ce-type", Some("dev.countersign.taskrun.created.v1"))),
                &body,
                &limits
            )
            .map(|_| ())
            .map_err(|error| error.kind()),
            Err(DecodeErrorKind::DataMismatch)
        );
        assert_eq!(
            kind(&edit("content-type", Some("text/plain")), &body),
            Err(DecodeErrorKind::UnsupportedContentType)
        );
        assert_eq!(kind(&headers, b"{not json"), Err(DecodeErrorKind::NotJson));
        assert_eq!(
            kind(&headers, b"{\"unexpected\": 1}"),
            Err(DecodeErrorKind::DataMismatch)
        );
        assert_eq!(kind(&headers, b""), Err(DecodeErrorKind::MissingData));
        assert_eq!(
            kind(&HeaderMap::new(), &body),
            Err(DecodeErrorKind::MissingAttribute)
        );
        let mut duplicated = headers.clone();
        duplicated.append("ce-id", "other");
        assert_eq!(
            kind(&duplicated, &body),
            Err(DecodeErrorKind::DuplicateAttribute)
        );
        let small = DecodeLimits {
            max_payload_bytes: 8,
        };
        assert_eq!(
            decode::<TaskRunDeleted>(Some(&headers), &body, &small)
                .map(|_| ())
                .map_err(|error| error.kind()),
            Err(DecodeErrorKind::PayloadTooLarge)
        );
        assert_eq!(
            decode::<AttestationEvent>(Some(&headers), &body, &limits)
                .map(|_| ())
                .map_err(|error| error.kind()),
            Err(DecodeErrorKind::UnexpectedType)
        );
    }

    #[test]
    fn header_names_are_matched_ignoring_case() {
        let event = deleted();
        let (headers, body) = encode(&event).unwrap();
        let mut shouted = HeaderMap::new();
        for (key, values) in headers.iter() {
            let name: &str = key.as_ref();
            let name = if name == "content-type" {
                "Content-Type".to_owned()
            } else {
                name.to_ascii_uppercase()
            };
            shouted.insert(name.as_str(), values[0].clone());
        }
        let decoded: Event<TaskRunDeleted> =
            decode(Some(&shouted), &body, &DecodeLimits::default()).unwrap();
        assert_eq!(decoded, event);
    }

    #[test]
    fn structured_mode_is_accepted() {
        let event = deleted();
        let cloudevent = event.to_cloudevent().unwrap();
        let body = serde_json::to_vec(&cloudevent).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            "Content-Type",
            "application/cloudevents+json; charset=utf-8",
        );
        let decoded: Event<TaskRunDeleted> =
            decode(Some(&headers), &body, &DecodeLimits::default()).unwrap();
        assert_eq!(decoded, event);
        let mut value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        value["specversion"] = "0.3".into();
        let error = decode::<TaskRunDeleted>(
            Some(&headers),
            value.to_string().as_bytes(),
            &DecodeLimits::default(),
        )
        .map(|_| ())
        .unwrap_err();
        assert_eq!(error.kind(), DecodeErrorKind::UnsupportedSpecVersion);
        let error = decode::<TaskRunDeleted>(Some(&headers), b"[1,2", &DecodeLimits::default())
            .map(|_| ())
            .unwrap_err();
        assert_eq!(error.kind(), DecodeErrorKind::MalformedStructured);
    }

    /// The sdk's own binary-mode reader, fed with NATS headers: the oracle for [`encode`].
    struct SdkBinaryReader {
        attributes: Vec<(String, String)>,
        payload: Vec<u8>,
    }

    impl SdkBinaryReader {
        fn new(headers: &HeaderMap, payload: &[u8]) -> SdkBinaryReader {
            let attributes = headers
                .iter()
                .map(|(name, values)| {
                    let name: &str = name.as_ref();
                    let name = name
                        .strip_prefix(ATTRIBUTE_HEADER_PREFIX)
                        .unwrap_or("datacontenttype");
                    (
                        name.to_owned(),
                        percent_decode_value(values[0].as_str()).unwrap(),
                    )
                })
                .collect();
            SdkBinaryReader {
                attributes,
                payload: payload.to_vec(),
            }
        }
    }

    impl BinaryDeserializer for SdkBinaryReader {
        fn deserialize_binary<R: Sized, V: BinarySerializer<R>>(
            self,
            serializer: V,
        ) -> cloudevents::message::Result<R> {
            let mut serializer = serializer.set_spec_version(SpecVersion::V10)?;
            for (name, value) in self.attributes {
                let value = MessageAttributeValue::String(value);
                serializer = match name.as_str() {
                    "specversion" => continue,
                    "traceparent" | "tracestate" => serializer.set_extension(&name, value)?,
                    _ => serializer.set_attribute(&name, value)?,
                };
            }
            serializer.end_with_data(self.payload)
        }
    }

    /// The sdk's own binary-mode writer, producing NATS headers: the oracle for [`decode`].
    struct SdkHeaderWriter(HeaderMap);

    impl SdkHeaderWriter {
        fn set(mut self, name: &str, value: MessageAttributeValue) -> SdkHeaderWriter {
            let header = match name {
                "datacontenttype" => CONTENT_TYPE_HEADER.to_owned(),
                other => format!("{ATTRIBUTE_HEADER_PREFIX}{other}"),
            };
            self.0
                .insert(header.as_str(), percent_encode_value(&value.to_string()));
            self
        }
    }

    impl BinarySerializer<(HeaderMap, Bytes)> for SdkHeaderWriter {
        fn set_spec_version(mut self, version: SpecVersion) -> cloudevents::message::Result<Self> {
            self.0.insert("ce-specversion", version.to_string());
            Ok(self)
        }

        fn set_attribute(
            self,
            name: &str,
            value: MessageAttributeValue,
        ) -> cloudevents::message::Result<Self> {
            Ok(self.set(name, value))
        }

        fn set_extension(
            self,
            name: &str,
            value: MessageAttributeValue,
        ) -> cloudevents::message::Result<Self> {
            Ok(self.set(name, value))
        }

        fn end_with_data(self, bytes: Vec<u8>) -> cloudevents::message::Result<(HeaderMap, Bytes)> {
            Ok((self.0, Bytes::from(bytes)))
        }

        fn end(self) -> cloudevents::message::Result<(HeaderMap, Bytes)> {
            Ok((self.0, Bytes::new()))
        }
    }

    #[test]
    fn the_sdk_reads_what_we_write_and_we_read_what_the_sdk_writes() {
        let event = deleted();
        let expected = event.to_cloudevent().unwrap();

        let (headers, body) = encode(&event).unwrap();
        let read = BinaryDeserializer::into_event(SdkBinaryReader::new(&headers, &body)).unwrap();
        assert_eq!(read.id(), expected.id());
        assert_eq!(read.source(), expected.source());
        assert_eq!(read.ty(), expected.ty());
        assert_eq!(read.subject(), expected.subject());
        assert_eq!(read.time(), expected.time());
        assert_eq!(read.dataschema(), expected.dataschema());
        assert_eq!(read.datacontenttype(), expected.datacontenttype());
        for extension in ["traceparent", "tracestate"] {
            assert_eq!(
                read.extension(extension).map(ToString::to_string),
                expected.extension(extension).map(ToString::to_string)
            );
        }
        let data: serde_json::Value = match read.data() {
            Some(cloudevents::Data::Binary(bytes)) => serde_json::from_slice(bytes).unwrap(),
            other => panic!("unexpected data {other:?}"),
        };
        assert_eq!(Some(&cloudevents::Data::Json(data)), expected.data());

        let (sdk_headers, sdk_body) = expected
            .deserialize_binary(SdkHeaderWriter(HeaderMap::new()))
            .unwrap();
        let decoded: Event<TaskRunDeleted> =
            decode(Some(&sdk_headers), &sdk_body, &DecodeLimits::default()).unwrap();
        assert_eq!(decoded, event);
        let converted =
            Event::<TaskRunDeleted>::from_cloudevent(event.to_cloudevent().unwrap()).unwrap();
        assert_eq!(converted, event);
    }
}
