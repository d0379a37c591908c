//! The CloudEvents HTTP binding in **binary content mode**: each attribute is a `ce-<name>` header
//! (`ce-specversion`, `ce-id`, `ce-source`, `ce-type`, `ce-subject`, `ce-time`, `ce-dataschema`,
//! and the distributed-tracing extension's `ce-traceparent` and `ce-tracestate`), values
//! percent-encoded where the binding requires it, `datacontenttype` is `Content-Type:
//! application/json`, and the body is the event's data.
//!
//! The NATS binding of `countersign-events` writes exactly these headers with exactly this
//! encoding (the two bindings share their rules), so the request is made from
//! [`countersign_events::encode`] rather than written a second time: the attributes the sink sees
//! are the ones on the bus, the trace context included.

use bytes::Bytes;
use countersign_events::{EncodeError, Event, EventPayload, encode};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

/// Why an event could not be put into an HTTP request.
#[derive(Debug, thiserror::Error)]
pub enum BindingError {
    /// The event could not be encoded.
    #[error("encoding the event")]
    Encode(#[from] EncodeError),
    /// A header produced by the encoding is not a valid HTTP header (the encoding percent-encodes
    /// every byte that could make it one, so this is a defect).
    #[error("the header {name:?} is not a valid HTTP header")]
    InvalidHeader { name: String },
}

/// The headers and body of the binary-mode HTTP request carrying `event`.
pub fn binary_mode_request<T: EventPayload>(
    event: &Event<T>,
) -> Result<(HeaderMap, Bytes), BindingError> {
    let (nats_headers, body) = encode(event)?;
    let mut headers = HeaderMap::new();
    for (name, values) in nats_headers.iter() {
        let name: &str = name.as_ref();
        let invalid = || BindingError::InvalidHeader {
            name: name.to_owned(),
        };
        let header_name =
            HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).map_err(|_| invalid())?;
        for value in values {
            let value = HeaderValue::from_str(value.as_str()).map_err(|_| invalid())?;
            headers.append(header_name.clone(), value);
        }
    }
    Ok((headers, body))
}

#[cfg(test)]
mod tests {
    use countersign_events::binding::percent_decode_value;
    use countersign_events::data::{
        AttestationVerified, DsseEnvelope, SignedAttestation, TaskRunRef, Verdict,
    };
    use countersign_events::{AttestationEvent, EventSource};

    use super::*;

    fn event() -> Event<AttestationEvent> {
        let mut event = Event::new(
            &EventSource::service("attestor"),
            AttestationEvent::Verified(AttestationVerified {
                taskrun: TaskRunRef {
                    cluster: "prod".into(),
                    namespace: "team-a".into(),
                    name: "build.1".into(),
                    uid: "uid-1".into(),
                },
                verdict: Verdict::NoResults,
                spiffe_id: None,
                svid_fingerprint: None,
                subjects: Vec::new(),
                attestation: SignedAttestation {
                    envelope: DsseEnvelope {
                        payload_type: "application/vnd.in-toto+json".into(),
                        payload: "e30=".into(),
                        signatures: Vec::new(),
                    },
                    certificates: Vec::new(),
                    rfc3161_timestamps: Vec::new(),
                },
                attested_at: chrono::Utc::now(),
            }),
        );
        event.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        event.tracestate = Some("congo=t61rcWkgMzE, rojo=00f067aa0ba902b7".into());
        event
    }

    fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_else(|| panic!("header {name} missing"))
    }

    #[test]
    fn every_attribute_is_a_ce_header_and_the_body_is_the_data() {
        let event = event();
        let (headers, body) = binary_mode_request(&event).expect("encodable");
        assert_eq!(header(&headers, "ce-specversion"), "1.0");
        assert_eq!(header(&headers, "ce-id"), "uid-1:attestation");
        assert_eq!(header(&headers, "ce-source"), "/countersign/attestor");
        assert_eq!(
            header(&headers, "ce-type"),
            "dev.countersign.attestation.verified.v1"
        );
        assert_eq!(header(&headers, "ce-subject"), "team-a/build.1");
        assert_eq!(
            chrono::DateTime::parse_from_rfc3339(header(&headers, "ce-time")).unwrap(),
            event.time
        );
        assert_eq!(
            header(&headers, "ce-dataschema"),
            countersign_events::EventType::AttestationVerified.dataschema()
        );
        assert_eq!(
            header(&headers, "ce-traceparent"),
            event.traceparent.as_deref().unwrap()
        );
        let tracestate = header(&headers, "ce-tracestate");
        assert!(!tracestate.contains(' '), "spaces are percent-encoded");
        assert_eq!(
            percent_decode_value(tracestate).as_deref(),
            event.tracestate.as_deref()
        );
        assert_eq!(header(&headers, "content-type"), "application/json");
        assert_eq!(body, Bytes::from(event.data.to_json().unwrap()));
    }
}
