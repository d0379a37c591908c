//! Sigstore bundle v0.3: the JSON we write, reading it back, and each way a bundle is refused
//! when read; the trusted root made from a trust bundle.

mod interop;

use base64::Engine as _;
use countersign_identity::attestation::SignedAttestation;
use countersign_identity::dsse::{Envelope, IN_TOTO_PAYLOAD_TYPE};
use countersign_identity::sigstore_bundle::{
    BundleBuildError, BundleParseError, MAX_BUNDLE_BYTES, SIGSTORE_BUNDLE_V03_MEDIA_TYPE,
    SIGSTORE_TRUSTED_ROOT_MEDIA_TYPE, SigstoreBundle, TrustedRootError, trusted_root_json,
};
use countersign_identity::spiffe_id::TrustDomain;
use interop::*;
use serde_json::{Value, json};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn bundle() -> (NowCa, SigstoreBundle) {
    let ca = NowCa::new();
    let svid = ca.issue(ATTESTOR_ID, &SPIRE_EXTENDED_KEY_USAGES);
    let envelope = Envelope::sign(IN_TOTO_PAYLOAD_TYPE, b"{}".to_vec(), &svid).unwrap();
    let attestation = SignedAttestation {
        envelope,
        certificates: svid.chain_pem(),
    };
    (ca, SigstoreBundle::from_attestation(&attestation).unwrap())
}

fn json_of(bundle: &SigstoreBundle) -> Value {
    serde_json::from_slice(&bundle.to_json()).unwrap()
}

fn parse(json: &Value) -> Result<SigstoreBundle, BundleParseError> {
    SigstoreBundle::from_json(&serde_json::to_vec(json).unwrap())
}

#[test]
fn bundle_json_shape() {
    let (_, bundle) = bundle();
    let json = json_of(&bundle);
    assert_eq!(
        json,
        json!({
            "mediaType": SIGSTORE_BUNDLE_V03_MEDIA_TYPE,
            "verificationMaterial": {"certificate": {"rawBytes": b64(bundle.leaf_der())}},
            "dsseEnvelope": {
                "payloadType": "application/vnd.in-toto+json",
                "payload": "e30=",
                "signatures": [{"sig": b64(&bundle.envelope().signatures()[0].sig)}]
            }
        })
    );
    assert_eq!(parse(&json).unwrap(), bundle);
}

#[test]
fn a_root_in_the_attestation_chain_is_left_out() {
    let ca = NowCa::new();
    let svid = ca.issue(ATTESTOR_ID, &SPIRE_EXTENDED_KEY_USAGES);
    let envelope = Envelope::sign(IN_TOTO_PAYLOAD_TYPE, b"{}".to_vec(), &svid).unwrap();
    let with_root = SignedAttestation {
        envelope,
        certificates: format!(
            "{}{}",
            svid.chain_pem(),
            countersign_identity::svid::der_to_pem(&ca.der())
        ),
    };
    let bundle = SigstoreBundle::from_attestation(&with_root).unwrap();
    assert!(bundle.intermediates_der().is_empty());
    assert_eq!(bundle.to_attestation().certificates, svid.chain_pem());
}

#[test]
fn a_chain_is_written_as_a_certificate_chain_and_a_root_in_it_is_refused() {
    let (ca, bundle) = bundle();
    let mut json = json_of(&bundle);
    let leaf = json["verificationMaterial"]["certificate"].take();
    json["verificationMaterial"] = json!({
        "x509CertificateChain": {"certificates": [leaf, {"rawBytes": b64(&ca.der())}]}
    });
    assert!(matches!(
        parse(&json),
        Err(BundleParseError::Content(BundleBuildError::RootInChain {
            index: 1
        }))
    ));
    json["verificationMaterial"]["x509CertificateChain"]["certificates"]
        .as_array_mut()
        .unwrap()
        .truncate(1);
    assert_eq!(parse(&json).unwrap(), bundle);
}

#[test]
fn each_refusal_has_its_reason() {
    let (_, bundle) = bundle();
    let good = json_of(&bundle);
    let edit = |change: &dyn Fn(&mut Value)| {
        let mut json = good.clone();
        change(&mut json);
        parse(&json)
    };

    assert!(matches!(
        SigstoreBundle::from_json(b"not json"),
        Err(BundleParseError::Malformed(_))
    ));
    assert!(matches!(
        SigstoreBundle::from_json(&vec![b' '; MAX_BUNDLE_BYTES + 1]),
        Err(BundleParseError::TooLarge { .. })
    ));
    assert!(matches!(
        edit(&|json| json["extra"] = json!(1)),
        Err(BundleParseError::Malformed(_))
    ));
    for media_type in [
        "application/vnd.dev.sigstore.bundle+json;version=0.2",
        "application/vnd.dev.sigstore.bundle.v0.4+json",
        "application/json",
    ] {
        assert!(matches!(
            edit(&|json| json["mediaType"] = json!(media_type)),
            Err(BundleParseError::UnsupportedMediaType { found }) if found == media_type
        ));
    }
    assert!(matches!(
        edit(&|json| {
            json.as_object_mut().unwrap().remove("dsseEnvelope");
            json["messageSignature"] = json!({"signature": "AA=="});
        }),
        Err(BundleParseError::NotDsse)
    ));
    assert!(matches!(
        edit(&|json| json["messageSignature"] = json!({"signature": "AA=="})),
        Err(BundleParseError::NotDsse)
    ));
    assert!(matches!(
        edit(&|json| json["verificationMaterial"] = json!({"publicKey": {"hint": "k"}})),
        Err(BundleParseError::UnsupportedVerificationMaterial)
    ));
    assert!(matches!(
        edit(&|json| json["verificationMaterial"] = json!({})),
        Err(BundleParseError::UnsupportedVerificationMaterial)
    ));
    assert!(matches!(
        edit(&|json| json["verificationMaterial"]["tlogEntries"] = json!([{"logIndex": "1"}])),
        Err(BundleParseError::UnsupportedEvidence)
    ));
    // RFC 3161 timestamps are kept (unverified: checking them needs the TSA's chain), within
    // their bounds.
    let stamped = edit(&|json| {
        json["verificationMaterial"]["timestampVerificationData"] =
            json!({"rfc3161Timestamps": [{"signedTimestamp": "AAEC"}]})
    })
    .unwrap();
    assert_eq!(stamped.timestamps(), [vec![0u8, 1, 2]]);
    assert_eq!(
        json_of(&stamped)["verificationMaterial"]["timestampVerificationData"],
        json!({"rfc3161Timestamps": [{"signedTimestamp": "AAEC"}]})
    );
    assert!(matches!(
        edit(
            &|json| json["verificationMaterial"]["timestampVerificationData"] =
                json!({"rfc3161Timestamps": vec![json!({"signedTimestamp": "AA=="}); 5]})
        ),
        Err(BundleParseError::Content(BundleBuildError::Timestamps {
            found: 5
        }))
    ));
    assert!(matches!(
        edit(
            &|json| json["verificationMaterial"]["timestampVerificationData"] =
                json!({"rfc3161Timestamps": [{"signedTimestamp": "AA==", "other": 1}]})
        ),
        Err(BundleParseError::Malformed(_))
    ));
    // Empty evidence lists, as protobuf JSON writers may emit them, are fine.
    assert!(
        edit(&|json| {
            json["verificationMaterial"]["tlogEntries"] = json!([]);
            json["verificationMaterial"]["timestampVerificationData"] = json!({});
        })
        .is_ok()
    );
    assert!(matches!(
        edit(&|json| json["verificationMaterial"]["certificate"]["rawBytes"] = json!("AAAA")),
        Err(BundleParseError::Content(
            BundleBuildError::CertificateInvalid { index: 0 }
        ))
    ));
    assert!(matches!(
        edit(&|json| json["dsseEnvelope"]["signatures"] = json!([])),
        Err(BundleParseError::Content(
            BundleBuildError::SignatureCount { found: 0 }
        ))
    ));
    assert!(matches!(
        edit(&|json| {
            let signature = json["dsseEnvelope"]["signatures"][0].clone();
            json["dsseEnvelope"]["signatures"] = json!([signature.clone(), signature]);
        }),
        Err(BundleParseError::Content(
            BundleBuildError::SignatureCount { found: 2 }
        ))
    ));
    let leaf = good["verificationMaterial"]["certificate"].clone();
    assert!(matches!(
        edit(&|json| json["verificationMaterial"] =
            json!({"x509CertificateChain": {"certificates": vec![leaf.clone(); 9]}})),
        Err(BundleParseError::Content(
            BundleBuildError::TooManyCertificates { found: 9 }
        ))
    ));
}

#[test]
fn trusted_root_holds_the_trust_domain_authorities() {
    let ca = NowCa::new();
    let bundles = ca.bundles();
    let root: Value = serde_json::from_slice(
        &trusted_root_json(&bundles, &TrustDomain::new(TRUST_DOMAIN).unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(root["mediaType"], SIGSTORE_TRUSTED_ROOT_MEDIA_TYPE);
    assert_eq!(root["tlogs"], json!([]));
    assert_eq!(root["ctlogs"], json!([]));
    assert_eq!(root["timestampAuthorities"], json!([]));
    let authority = &root["certificateAuthorities"][0];
    assert_eq!(authority["uri"], "spiffe://example.org");
    assert_eq!(authority["subject"]["organization"], "SPIFFE");
    assert_eq!(
        authority["certChain"]["certificates"],
        json!([{"rawBytes": b64(&ca.der())}])
    );
    assert!(
        authority["validFor"]["start"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );

    assert!(matches!(
        trusted_root_json(&bundles, &TrustDomain::new("other.org").unwrap()),
        Err(TrustedRootError::TrustDomainUnknown { .. })
    ));
}
