//! Property tests of the parsers of the attestation formats that arrive from outside: Sigstore
//! bundles (a file handed to `countersign verify`, a bundle read back from a registry) and
//! RFC 3161 timestamp responses (from a timestamp authority, or stored in a bundle). Whatever
//! arrives, nothing panics; a bundle we write is read back as written.

use base64::Engine as _;
use countersign_identity::dsse::{Envelope, EnvelopeSignature};
use countersign_identity::sigstore_bundle::{SIGSTORE_BUNDLE_V03_MEDIA_TYPE, SigstoreBundle};
use countersign_identity::timestamp::{
    MAX_TIMESTAMP_RESPONSE_BYTES, TimestampAuthorityChain, verify_stored_response,
};
use proptest::prelude::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(256)
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A CA and a leaf it issued (DER): a chain a bundle may carry.
fn ca_and_leaf() -> (rcgen::Certificate, Vec<u8>) {
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut leaf_params = CertificateParams::new(vec!["leaf.example".to_owned()]).unwrap();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "leaf");
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    (ca, leaf.der().to_vec())
}

/// Bytes that are base64 of anything, or not base64 at all.
fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..120).prop_map(|bytes| base64(&bytes)),
        "\\PC{0,40}",
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_bytes_are_read_as_a_bundle_or_refused_without_panicking(
        bytes in prop::collection::vec(any::<u8>(), 0..400),
    ) {
        let _ = SigstoreBundle::from_json(&bytes);
    }

    #[test]
    fn a_bundle_shaped_document_with_any_contents_is_read_or_refused_without_panicking(
        certificates in prop::collection::vec(field(), 0..10),
        as_chain in any::<bool>(),
        timestamps in prop::collection::vec(field(), 0..6),
        payload in field(),
        payload_type in "\\PC{0,30}",
        signatures in prop::collection::vec((field(), "\\PC{0,10}"), 0..3),
        tlog in any::<bool>(),
        real_leaf in any::<bool>(),
    ) {
        // With a real leaf first, the checks after the certificates' are reached too.
        let leaf = real_leaf.then(|| base64(&ca_and_leaf().1));
        let certificates: Vec<serde_json::Value> = leaf
            .iter()
            .chain(&certificates)
            .map(|raw| serde_json::json!({"rawBytes": raw}))
            .collect();
        let mut material = if as_chain {
            serde_json::json!({"x509CertificateChain": {"certificates": certificates}})
        } else {
            serde_json::json!({"certificate": certificates.first().cloned()})
        };
        material["timestampVerificationData"] = serde_json::json!({
            "rfc3161Timestamps": timestamps
                .iter()
                .map(|raw| serde_json::json!({"signedTimestamp": raw}))
                .collect::<Vec<_>>(),
        });
        if tlog {
            material["tlogEntries"] = serde_json::json!([{"logIndex": "1"}]);
        }
        let document = serde_json::json!({
            "mediaType": SIGSTORE_BUNDLE_V03_MEDIA_TYPE,
            "verificationMaterial": material,
            "dsseEnvelope": {
                "payload": payload,
                "payloadType": payload_type,
                "signatures": signatures
                    .iter()
                    .map(|(sig, keyid)| serde_json::json!({"sig": sig, "keyid": keyid}))
                    .collect::<Vec<_>>(),
            },
        });
        let bytes = serde_json::to_vec(&document).unwrap();
        let read = SigstoreBundle::from_json(&bytes);
        // Transparency-log entries are refused, and so is a leaf that is not a certificate.
        if tlog || !real_leaf {
            prop_assert!(read.is_err());
        }
    }

    #[test]
    fn a_bundle_we_write_is_read_back_as_written(
        payload in prop::collection::vec(any::<u8>(), 0..300),
        sig in prop::collection::vec(any::<u8>(), 1..100),
        timestamps in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..200), 0..4),
        with_intermediate in any::<bool>(),
    ) {
        let (ca, leaf) = ca_and_leaf();
        let mut chain = vec![leaf];
        if with_intermediate {
            // Not self-signed, as an intermediate must be: a second leaf of the same CA stands
            // in for one (the bundle checks shape, not path).
            chain.push(ca_and_leaf().1);
        }
        drop(ca);
        let envelope = Envelope::from_parts(
            "application/vnd.in-toto+json",
            payload,
            vec![EnvelopeSignature { keyid: String::new(), sig }],
        );
        let bundle = SigstoreBundle::new(envelope, chain)
            .unwrap()
            .with_timestamps(timestamps)
            .unwrap();
        let read = SigstoreBundle::from_json(&bundle.to_json()).unwrap();
        prop_assert_eq!(read, bundle);
    }

    #[test]
    fn any_bytes_are_refused_as_a_timestamp_response_without_panicking(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        sequence_header in any::<bool>(),
        message in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let (ca, _) = ca_and_leaf();
        let chain = TimestampAuthorityChain::from_pem(&ca.pem()).unwrap();
        // A DER SEQUENCE header of the right length takes the bytes past the outermost check.
        let response = if sequence_header && bytes.len() < 0x80 {
            let mut framed = vec![0x30, bytes.len() as u8];
            framed.extend_from_slice(&bytes);
            framed
        } else {
            bytes
        };
        prop_assert!(response.len() <= MAX_TIMESTAMP_RESPONSE_BYTES);
        prop_assert!(verify_stored_response(&response, &message, &chain).is_err());
    }
}
