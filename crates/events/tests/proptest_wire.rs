//! Property tests of the parsers that read the bus: the CloudEvents NATS binding (binary and
//! structured mode, percent-encoded header values) and the subject token encoding. Whatever
//! arrives, nothing panics; what we encode decodes to the same value; the token encoding is
//! injective.

use async_nats::HeaderMap;
use countersign_events::binding::{percent_decode_value, percent_encode_value};
use countersign_events::data::{TaskRunDeleted, TaskRunRef};
use countersign_events::payload::LifecycleEvent;
use countersign_events::subject::{decode_token, encode_token};
use countersign_events::{DecodeLimits, Event, EventSource, decode, encode};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(256)
}

/// The header names the binding reads, and a few it does not.
fn header_name() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "ce-specversion",
        "ce-id",
        "ce-source",
        "ce-type",
        "ce-subject",
        "ce-time",
        "ce-dataschema",
        "ce-traceparent",
        "ce-tracestate",
        "content-type",
        "Content-Type",
        "Nats-Msg-Id",
        "x-other",
    ])
}

/// Header values: mostly plausible ones, some arbitrary text.
fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("1.0".to_owned()),
        Just("application/json".to_owned()),
        Just("application/cloudevents+json".to_owned()),
        Just("dev.countersign.taskrun.deleted.v1".to_owned()),
        Just("/countersign/watcher".to_owned()),
        Just("2026-01-01T00:00:00Z".to_owned()),
        "[ -~]{0,40}",
        "\\PC{0,20}",
    ]
}

fn taskrun_deleted() -> impl Strategy<Value = TaskRunDeleted> {
    ("[a-z0-9.-]{1,20}", "\\PC{1,30}", "\\PC{1,30}", "\\PC{1,40}").prop_map(
        |(cluster, namespace, name, uid)| TaskRunDeleted {
            taskrun: TaskRunRef {
                cluster,
                namespace,
                name,
                uid,
            },
            pod: None,
        },
    )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn binary_mode_never_panics(
        headers in prop::collection::vec((header_name(), header_value()), 0..12),
        payload in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut map = HeaderMap::new();
        for (name, value) in &headers {
            map.insert(*name, value.as_str());
        }
        let _ = decode::<LifecycleEvent>(Some(&map), &payload, &DecodeLimits::default());
        let _ = decode::<TaskRunDeleted>(Some(&map), &payload, &DecodeLimits::default());
        let _ = decode::<LifecycleEvent>(None, &payload, &DecodeLimits::default());
    }

    #[test]
    fn structured_mode_never_panics(
        payload in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..512),
            "\\{\"specversion\":\"1.0\",\"id\":\"\\PC{0,10}\",\"source\":\"\\PC{0,10}\",\"type\":\"\\PC{0,40}\",\"data\":\\{\\}\\}"
                .prop_map(String::into_bytes),
        ],
    ) {
        let mut map = HeaderMap::new();
        map.insert("content-type", "application/cloudevents+json; charset=utf-8");
        let _ = decode::<LifecycleEvent>(Some(&map), &payload, &DecodeLimits::default());
    }

    #[test]
    fn an_encoded_event_decodes_to_itself(data in taskrun_deleted()) {
        let event = Event::new(&EventSource::service("watcher"), data);
        // Some strings are refused by the encoder (the CloudEvents SDK's checks); those are not
        // the property's concern, only that what is encoded decodes back unchanged.
        if let Ok((headers, body)) = encode(&event) {
            let decoded: Event<TaskRunDeleted> =
                decode(Some(&headers), &body, &DecodeLimits::default())
                    .expect("what we encode decodes");
            prop_assert_eq!(decoded, event);
        }
    }

    #[test]
    fn percent_encoding_round_trips(value in "\\PC{0,60}") {
        let encoded = percent_encode_value(&value);
        prop_assert!(encoded.is_ascii());
        prop_assert_eq!(percent_decode_value(&encoded), Some(value));
    }

    #[test]
    fn percent_decoding_never_panics(value in "[%0-9A-Fa-f\\PC]{0,40}") {
        let _ = percent_decode_value(&value);
    }

    #[test]
    fn subject_tokens_round_trip(value in "\\PC{1,60}") {
        let token = encode_token(&value, "name").expect("non-empty");
        prop_assert!(
            token.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'~')),
            "{token}"
        );
        prop_assert_eq!(decode_token(&token).expect("our own token"), value);
    }

    #[test]
    fn subject_token_encoding_is_injective(a in "\\PC{1,12}", b in "\\PC{1,12}") {
        prop_assume!(a != b);
        prop_assert_ne!(
            encode_token(&a, "name").expect("non-empty"),
            encode_token(&b, "name").expect("non-empty")
        );
    }

    #[test]
    fn subject_token_decoding_never_panics(token in "[A-Za-z0-9_~.*> -]{0,40}") {
        if let Ok(decoded) = decode_token(&token) {
            // Only the canonical encoding decodes, so decoding is the exact inverse.
            prop_assert_eq!(encode_token(&decoded, "name").expect("non-empty"), token);
        }
    }
}
