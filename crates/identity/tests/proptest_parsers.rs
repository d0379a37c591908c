//! Property tests of the parsers that read what a TaskRun pod wrote and what a client hands us:
//! termination messages (plain and `tknz:`), the canonical result encoding, DSSE envelopes and
//! configured trust domains. Whatever arrives, nothing panics; what is written is read back as
//! written.

use std::collections::BTreeMap;

use countersign_identity::dsse::{Envelope, EnvelopeSignature};
use countersign_identity::spiffe_id::ConfiguredTrustDomain;
use countersign_identity::tekton::termination::compress;
use countersign_identity::tekton::{
    ResultType, ResultValue, TerminationEntry, TerminationMessage, canonical,
};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(256)
}

fn result_type() -> impl Strategy<Value = ResultType> {
    prop_oneof![
        Just(ResultType::TaskRunResult),
        Just(ResultType::StepResult),
        any::<i64>().prop_map(ResultType::from_i64),
    ]
}

/// Entries a step could write: a non-empty key (an all-empty entry is dropped by the parser, as
/// Tekton's is), any value.
fn entry() -> impl Strategy<Value = TerminationEntry> {
    ("\\PC{1,20}", "\\PC{0,60}", result_type()).prop_map(|(key, value, result_type)| {
        TerminationEntry {
            key,
            value,
            result_type,
        }
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_termination_text_parses_or_fails_without_panicking(text in "\\PC{0,200}") {
        let _ = TerminationMessage::parse(&text);
        let _ = TerminationMessage::parse(&format!("tknz:{text}"));
    }

    #[test]
    fn any_compressed_bytes_parse_or_fail_without_panicking(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        // Valid base64 and valid DEFLATE of arbitrary bytes: the JSON step is what must refuse.
        let _ = TerminationMessage::parse(&compress(&bytes));
    }

    #[test]
    fn a_written_message_is_read_back_plain_and_compressed(
        entries in prop::collection::vec(entry(), 0..8),
    ) {
        let message = TerminationMessage::from_entries(entries);
        let plain = TerminationMessage::parse(&message.to_json()).expect("our own JSON");
        prop_assert_eq!(&plain, &message);
        let compressed =
            TerminationMessage::parse(&message.to_compressed()).expect("our own tknz:");
        prop_assert_eq!(&compressed, &message);
    }

    #[test]
    fn canonical_never_panics(value in "\\PC{0,120}") {
        let _ = canonical(&value);
    }

    #[test]
    fn canonical_of_a_json_array_or_object_is_the_typed_values(
        array in prop::collection::vec("\\PC{0,20}", 0..6),
        object in prop::collection::btree_map("\\PC{0,10}", "\\PC{0,20}", 0..6),
    ) {
        let array_text = serde_json::to_string(&array).expect("serializable");
        prop_assert_eq!(canonical(&array_text), ResultValue::Array(array).canonical());
        let object_text = serde_json::to_string(&object).expect("serializable");
        prop_assert_eq!(
            canonical(&object_text),
            ResultValue::Object(object.clone()).canonical()
        );
        let typed: ResultValue =
            serde_json::from_str(&object_text).expect("an object of strings");
        prop_assert_eq!(typed, ResultValue::Object(object));
    }

    #[test]
    fn a_json_string_is_canonicalized_to_its_text(text in "\\PC{0,60}") {
        prop_assume!(!text.starts_with('[') && !text.starts_with('{'));
        let quoted = serde_json::to_string(&text).expect("serializable");
        prop_assert_eq!(canonical(&quoted), text);
    }

    #[test]
    fn any_envelope_json_parses_or_fails_without_panicking(text in "\\PC{0,200}") {
        let _ = serde_json::from_str::<Envelope>(&text);
    }

    #[test]
    fn envelopes_round_trip_through_json(
        payload_type in "\\PC{0,40}",
        payload in prop::collection::vec(any::<u8>(), 0..200),
        signatures in prop::collection::vec(
            ("[ -~]{0,20}", prop::collection::vec(any::<u8>(), 0..80)),
            0..3,
        ),
    ) {
        let envelope = Envelope::from_parts(
            payload_type,
            payload,
            signatures
                .into_iter()
                .map(|(keyid, sig)| EnvelopeSignature { keyid, sig })
                .collect(),
        );
        let json = serde_json::to_string(&envelope).expect("serializable");
        let read: Envelope = serde_json::from_str(&json).expect("our own JSON");
        prop_assert_eq!(read, envelope);
    }

    #[test]
    fn configured_trust_domains_parse_or_fail_without_panicking(name in "\\PC{0,80}") {
        let text = serde_json::to_string(&name).expect("serializable");
        if let Ok(parsed) = serde_json::from_str::<ConfiguredTrustDomain>(&text) {
            // A trust domain names itself: reading its name again gives the same one.
            let again = serde_json::to_string(parsed.as_str()).expect("serializable");
            prop_assert_eq!(
                serde_json::from_str::<ConfiguredTrustDomain>(&again).expect("valid"),
                parsed
            );
        }
    }
}

#[test]
fn an_all_empty_entry_is_dropped_like_tektons() {
    let message =
        TerminationMessage::parse(r#"[{"key":"","value":""},{"key":"a","value":"b","type":1}]"#)
            .expect("valid");
    assert_eq!(
        message.entries(),
        [TerminationEntry::task_run_result("a", "b")]
    );
    let _: BTreeMap<String, String> = message.task_run_results();
}
