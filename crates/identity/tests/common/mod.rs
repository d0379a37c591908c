//! Test PKI: SPIRE-like CAs and X509-SVIDs generated with rcgen at test time, plus the vendored
//! Tekton fixtures.

// Shared by the test files of one test crate, which has no public API: `pub` here is for
// them, so `unreachable_pub` does not apply.
#![allow(unreachable_pub)]
#![allow(dead_code)]

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use countersign_identity::spiffe_id::TrustDomain;
use countersign_identity::svid::{SigningSvid, TrustBundleSet};
use countersign_identity::tekton::{TerminationEntry, signed_step_entries};
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

pub const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../fixtures/tekton/spire/generated"
);

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap()
}

pub fn fixture_json(name: &str) -> serde_json::Value {
    serde_json::from_str(&fixture(name)).unwrap()
}

pub fn time(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339).unwrap().to_utc()
}

pub fn trust_domain(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

/// The fixture bundle (example.org).
pub fn fixture_bundles() -> TrustBundleSet {
    let mut bundles = TrustBundleSet::new();
    bundles
        .add_pem(trust_domain("example.org"), &fixture("trust-bundle.pem"))
        .unwrap();
    bundles
}

/// A SPIRE-like self-signed CA for `trust_domain`.
pub struct TestCa {
    pub trust_domain: TrustDomain,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(trust_domain_name: &str) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CountryName, "US");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "SPIFFE");
        params.subject_alt_names = vec![SanType::URI(
            Ia5String::try_from(format!("spiffe://{trust_domain_name}")).unwrap(),
        )];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = rcgen::date_time_ymd(2026, 1, 1);
        params.not_after = rcgen::date_time_ymd(2027, 1, 1);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        Self {
            trust_domain: trust_domain(trust_domain_name),
            issuer: CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A bundle set holding only this CA.
    pub fn bundles(&self) -> TrustBundleSet {
        let mut bundles = TrustBundleSet::new();
        self.add_to(&mut bundles);
        bundles
    }

    pub fn add_to(&self, bundles: &mut TrustBundleSet) {
        bundles
            .add_pem(self.trust_domain.clone(), &self.pem())
            .unwrap();
    }

    /// Issues an SVID described by `spec`, ready to sign.
    pub fn issue(&self, spec: &SvidSpec) -> SigningSvid {
        let (certificate_pem, key_pem) = self.issue_raw(spec);
        SigningSvid::from_pem(&certificate_pem, &key_pem).unwrap()
    }

    /// Issues a certificate described by `spec` (which may break the SVID rules) and returns
    /// its PEM and its PKCS#8 key PEM.
    pub fn issue_raw(&self, spec: &SvidSpec) -> (String, String) {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CountryName, "US");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "SPIRE");
        params.subject_alt_names = spec
            .uris
            .iter()
            .map(|uri| SanType::URI(Ia5String::try_from(uri.as_str()).unwrap()))
            .collect();
        params.is_ca = if spec.is_ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        params.key_usages = spec.key_usages.clone();
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before =
            rcgen::date_time_ymd(spec.not_before.0, spec.not_before.1, spec.not_before.2);
        params.not_after =
            rcgen::date_time_ymd(spec.not_after.0, spec.not_after.1, spec.not_after.2);
        let (key, key_pem) = match &spec.rsa_key_pem {
            Some(pem) => (
                KeyPair::from_pkcs8_pem_and_sign_algo(pem, &rcgen::PKCS_RSA_SHA256).unwrap(),
                pem.clone(),
            ),
            None => {
                let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
                let pem = key.serialize_pem();
                (key, pem)
            }
        };
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        (certificate.pem(), key_pem)
    }
}

/// What an SVID should look like. Defaults: SPIRE's workload profile, valid 2026-08-21 to
/// 2026-08-22 (one day, so dates are enough).
#[derive(Clone)]
pub struct SvidSpec {
    pub uris: Vec<String>,
    pub is_ca: bool,
    pub key_usages: Vec<KeyUsagePurpose>,
    pub not_before: (i32, u8, u8),
    pub not_after: (i32, u8, u8),
    pub rsa_key_pem: Option<String>,
}

pub const TASKRUN_ID: &str = "spiffe://example.org/ns/default/taskrun/build-push-run-x7k2p";

impl SvidSpec {
    pub fn workload(uri: &str) -> Self {
        Self {
            uris: vec![uri.to_owned()],
            is_ca: false,
            key_usages: vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
                KeyUsagePurpose::KeyAgreement,
            ],
            not_before: (2026, 8, 21),
            not_after: (2026, 8, 22),
            rsa_key_pem: None,
        }
    }
}

/// Inside the default SVID validity.
pub fn signing_time() -> DateTime<Utc> {
    time("2026-08-21T10:00:00Z")
}

/// Shortly before the default SVID was issued (within the 10 s backdate).
pub fn taskrun_created() -> DateTime<Utc> {
    time("2026-08-21T00:00:05Z")
}

/// The fixture's four results, in declared order.
pub fn fixture_results() -> Vec<(String, String)> {
    let json = fixture_json("signed-results.json");
    let files = json["resultFiles"].as_object().unwrap();
    json["declaredResultOrder"]
        .as_array()
        .unwrap()
        .iter()
        .map(|name| {
            let name = name.as_str().unwrap();
            (name.to_owned(), files[name].as_str().unwrap().to_owned())
        })
        .collect()
}

/// Signs `results` with `svid` and returns the step's type-1 map.
pub fn signed_map(results: &[(String, String)], svid: &SigningSvid) -> BTreeMap<String, String> {
    entries_to_map(signed_step_entries(results, svid).unwrap())
}

pub fn entries_to_map(entries: Vec<TerminationEntry>) -> BTreeMap<String, String> {
    entries
        .into_iter()
        .map(|entry| (entry.key, entry.value))
        .collect()
}

/// Signs `results` the way the entrypointer does, by hand (independently of the crate's
/// signer, which refuses malformed SVIDs), with `certificate_pem` as the `SVID` entry.
pub fn hand_signed_map(
    results: &[(String, String)],
    certificate_pem: &str,
    key_pem: &str,
) -> BTreeMap<String, String> {
    use base64::Engine as _;
    use rustls_pki_types::pem::PemObject as _;
    let key_der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let key =
        countersign_identity::crypto::SigningKey::from_pkcs8(key_der.secret_pkcs8_der()).unwrap();
    let sign = |text: &str| {
        base64::engine::general_purpose::STANDARD.encode(key.sign(text.as_bytes()).unwrap())
    };
    let mut map = BTreeMap::new();
    map.insert("SVID".to_owned(), certificate_pem.to_owned());
    for (name, value) in results {
        map.insert(name.clone(), value.clone());
        map.insert(
            format!("{name}.sig"),
            sign(&countersign_identity::tekton::canonical(value)),
        );
    }
    let manifest = results
        .iter()
        .map(|(name, _)| name.as_str())
        .collect::<Vec<_>>()
        .join(",");
    map.insert("RESULT_MANIFEST.sig".to_owned(), sign(&manifest));
    map.insert("RESULT_MANIFEST".to_owned(), manifest);
    map
}
