//! What the interoperability tests share: a CA valid around the current time (cosign checks
//! certificates at the current time), SVIDs with chosen extended key usages, the public-key PEM
//! the generic verifiers take, and running a real verifier and reading its verdict.

// Shared by the test files of one test crate, which has no public API: `pub` here is for
// them, so `unreachable_pub` does not apply.
#![allow(unreachable_pub)]
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

use base64::Engine as _;
use chrono::{Datelike, Utc};
use countersign_identity::spiffe_id::TrustDomain;
use countersign_identity::svid::{SigningSvid, TrustBundleSet};
use countersign_peers::Peer;
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

pub const TRUST_DOMAIN: &str = "example.org";
pub const ATTESTOR_ID: &str = "spiffe://example.org/countersign/attestor";
pub const TASKRUN_ID: &str = "spiffe://example.org/ns/default/taskrun/build-push-run-x7k2p";

/// A SPIRE-like CA (self-signed, SPIFFE URI SAN, `O=SPIFFE`) valid from yesterday to the day
/// after tomorrow.
pub struct NowCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// PEM of this CA and the intermediates above it, when it is an intermediate.
    chain_above: String,
}

/// Today plus `offset_days`, as (year, month, day).
fn day(offset_days: i64) -> (i32, u8, u8) {
    let date = Utc::now().date_naive() + chrono::TimeDelta::days(offset_days);
    (date.year(), date.month() as u8, date.day() as u8)
}

fn set_validity(params: &mut CertificateParams, from: (i32, u8, u8), to: (i32, u8, u8)) {
    params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
    params.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
}

impl NowCa {
    pub fn new() -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CountryName, "US");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "SPIFFE");
        params.subject_alt_names = vec![SanType::URI(
            Ia5String::try_from(format!("spiffe://{TRUST_DOMAIN}")).unwrap(),
        )];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, day(-2), day(3));
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        Self {
            issuer: CertifiedIssuer::self_signed(params, key).unwrap(),
            chain_above: String::new(),
        }
    }

    /// An intermediate CA signed by this one (as SPIRE's own CA under an upstream authority).
    pub fn intermediate(&self) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CountryName, "US");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "SPIRE intermediate");
        params.subject_alt_names = vec![SanType::URI(
            Ia5String::try_from(format!("spiffe://{TRUST_DOMAIN}")).unwrap(),
        )];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, day(-2), day(3));
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let issuer = CertifiedIssuer::signed_by(params, key, &self.issuer).unwrap();
        let chain_above = format!("{}{}", issuer.pem(), self.chain_above);
        Self {
            issuer,
            chain_above,
        }
    }

    pub fn der(&self) -> Vec<u8> {
        self.issuer.der().to_vec()
    }

    pub fn bundles(&self) -> TrustBundleSet {
        let mut bundles = TrustBundleSet::new();
        bundles
            .add_pem(TrustDomain::new(TRUST_DOMAIN).unwrap(), &self.issuer.pem())
            .unwrap();
        bundles
    }

    /// An X509-SVID (P-256, SPIRE's key usages) for `spiffe_id` with these extended key usages.
    pub fn issue(
        &self,
        spiffe_id: &str,
        extended_key_usages: &[ExtendedKeyUsagePurpose],
    ) -> SigningSvid {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CountryName, "US");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "SPIRE");
        params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(spiffe_id).unwrap())];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyAgreement,
        ];
        params.extended_key_usages = extended_key_usages.to_vec();
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, day(-1), day(2));
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        let chain = format!("{}{}", certificate.pem(), self.chain_above);
        SigningSvid::from_pem(&chain, &key.serialize_pem()).unwrap()
    }
}

/// What SPIRE puts in every X509-SVID.
pub const SPIRE_EXTENDED_KEY_USAGES: [ExtendedKeyUsagePurpose; 2] = [
    ExtendedKeyUsagePurpose::ServerAuth,
    ExtendedKeyUsagePurpose::ClientAuth,
];

/// SPIRE's, plus code signing (which sigstore-go requires of a signing certificate).
pub const CODE_SIGNING_EXTENDED_KEY_USAGES: [ExtendedKeyUsagePurpose; 3] = [
    ExtendedKeyUsagePurpose::ServerAuth,
    ExtendedKeyUsagePurpose::ClientAuth,
    ExtendedKeyUsagePurpose::CodeSigning,
];

/// The `PUBLIC KEY` PEM (SubjectPublicKeyInfo) of a certificate.
pub fn public_key_pem(certificate_der: &[u8]) -> String {
    let (_, certificate) = x509_parser::parse_x509_certificate(certificate_der).unwrap();
    let encoded = base64::engine::general_purpose::STANDARD.encode(certificate.public_key().raw);
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap());
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    pem
}

/// The built program of `peer`.
pub fn peer_path(peer: Peer) -> &'static Path {
    &countersign_test_support::peers().get(peer).path
}

/// What a verifier said.
pub struct Verdict {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Verdict {
    /// The first line of stderr that starts with `prefix`.
    pub fn stderr_line(&self, prefix: &str) -> Option<&str> {
        self.stderr.lines().find(|line| line.starts_with(prefix))
    }
}

impl std::fmt::Debug for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `peer` with `args` and returns its verdict (and prints it, for the test log).
pub fn run(peer: Peer, args: &[&str]) -> Verdict {
    let output: Output = Command::new(peer_path(peer))
        .args(args)
        .env("HOME", std::env::temp_dir())
        .output()
        .unwrap();
    let verdict = Verdict {
        success: output.status.success(),
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    eprintln!("$ {peer} {}\n{verdict:?}", args.join(" "));
    verdict
}
