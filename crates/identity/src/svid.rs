//! X509-SVID checks usable on their own, and the trust bundles they chain to.
//!
//! Parse-then-verify: [`SvidLeaf`] is a leaf certificate that parsed and carries exactly one URI
//! SAN that is a SPIFFE ID with a non-root path ([`SvidLeaf::from_der`]). Its X509-SVID profile
//! ([`SvidLeaf::check_profile`]: not a CA, key usage present with `digitalSignature` and without
//! `keyCertSign`/`cRLSign`), its chain ([`TrustBundleSet::verify_chain`]: RFC 5280 path
//! validation by `rustls-webpki` against the bundle of the leaf's **own** trust domain, so
//! federation with several trust domains works) and its validity at a given time
//! ([`SvidLeaf::check_valid_at`]) are separate checks, so callers can report which one failed.
//!
//! [`SigningSvid`] is the other direction: an SVID (chain + PKCS#8 key) that signs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use base64::Engine as _;
use chrono::{DateTime, TimeDelta, Utc};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::{EndEntityCert, KeyUsage, anchor_from_trusted_cert};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::crypto::{
    PublicKeyError, Sha256Digest, SigningFailed, SigningKey, SigningKeyError, SvidPublicKey,
};
use crate::spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};

/// How far SPIRE backdates an SVID's `notBefore` (`pkg/server/credtemplate/builder.go`).
pub const SPIRE_BACKDATE: TimeDelta = TimeDelta::seconds(10);

// === SvidLeaf ===

/// Why a certificate is not a usable X509-SVID leaf.
#[derive(Debug, thiserror::Error)]
pub enum SvidError {
    /// Not a DER X.509 certificate (or trailing data after it).
    #[error("not an X.509 certificate: {reason}")]
    NotACertificate {
        /// The parser's complaint.
        reason: String,
    },
    /// No PEM `CERTIFICATE` block where one was required.
    #[error("no PEM CERTIFICATE block found")]
    NoPemCertificate,
    /// The URI SANs are not exactly one (the X509-SVID spec requires exactly one).
    #[error("expected exactly one URI SAN, found {count}")]
    UriSanCount {
        /// How many URI SANs the certificate has.
        count: usize,
    },
    /// The single URI SAN is not a valid SPIFFE ID.
    #[error("URI SAN {uri:?} is not a valid SPIFFE ID")]
    InvalidSpiffeId {
        /// The SAN as written.
        uri: String,
        /// What the SPIFFE ID parser refused.
        #[source]
        source: SpiffeIdError,
    },
    /// A leaf SVID's SPIFFE ID must have a path (`spiffe://td` alone names a CA).
    #[error("leaf SPIFFE ID {id} has no path")]
    RootSpiffeId {
        /// The ID.
        id: SpiffeId,
    },
    /// An extension the profile depends on could not be parsed, or appears twice.
    #[error("unparseable {extension} extension")]
    BadExtension {
        /// Which extension.
        extension: &'static str,
    },
    /// `basicConstraints` says cA=true.
    #[error("leaf certificate is a CA")]
    LeafIsCa,
    /// No `keyUsage` extension, or it is not critical.
    #[error("leaf key usage extension missing or not critical")]
    KeyUsageMissing,
    /// `keyUsage` lacks `digitalSignature`.
    #[error("leaf key usage lacks digitalSignature")]
    MissingDigitalSignature,
    /// `keyUsage` has `keyCertSign` or `cRLSign`.
    #[error("leaf key usage allows certificate or CRL signing")]
    SigningKeyUsage,
    /// The public key is of a type we cannot verify with.
    #[error(transparent)]
    UnsupportedKey(#[from] PublicKeyError),
}

/// A parsed X509-SVID leaf with exactly one valid SPIFFE ID URI SAN.
#[derive(Clone)]
pub struct SvidLeaf {
    der: Vec<u8>,
    spiffe_id: SpiffeId,
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
    public_key: SvidPublicKey,
    fingerprint: Sha256Digest,
    is_ca: bool,
    key_usage: Option<KeyUsageBits>,
}

#[derive(Debug, Clone, Copy)]
struct KeyUsageBits {
    critical: bool,
    digital_signature: bool,
    key_cert_sign: bool,
    crl_sign: bool,
}

impl fmt::Debug for SvidLeaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SvidLeaf")
            .field("spiffe_id", &self.spiffe_id.to_string())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl TryFrom<&[u8]> for SvidLeaf {
    type Error = SvidError;

    fn try_from(der: &[u8]) -> Result<Self, Self::Error> {
        Self::from_der(der)
    }
}

impl SvidLeaf {
    /// Parses a DER certificate and its SPIFFE ID (exactly one URI SAN, a SPIFFE ID with a path).
    pub fn from_der(der: &[u8]) -> Result<Self, SvidError> {
        let (rest, certificate) =
            X509Certificate::from_der(der).map_err(|error| SvidError::NotACertificate {
                reason: error.to_string(),
            })?;
        if !rest.is_empty() {
            return Err(SvidError::NotACertificate {
                reason: "trailing data after the certificate".to_owned(),
            });
        }
        let spiffe_id = single_spiffe_id(&certificate)?;
        if spiffe_id.path().is_empty() {
            return Err(SvidError::RootSpiffeId { id: spiffe_id });
        }
        let is_ca = certificate
            .basic_constraints()
            .map_err(|_| SvidError::BadExtension {
                extension: "basicConstraints",
            })?
            .is_some_and(|extension| extension.value.ca);
        let key_usage = certificate
            .key_usage()
            .map_err(|_| SvidError::BadExtension {
                extension: "keyUsage",
            })?
            .map(|extension| KeyUsageBits {
                critical: extension.critical,
                digital_signature: extension.value.digital_signature(),
                key_cert_sign: extension.value.key_cert_sign(),
                crl_sign: extension.value.crl_sign(),
            });
        let validity = certificate.validity();
        let public_key = SvidPublicKey::from_spki(certificate.public_key())?;
        Ok(Self {
            der: der.to_vec(),
            spiffe_id,
            not_before: asn1_time_to_utc(validity.not_before.timestamp()),
            not_after: asn1_time_to_utc(validity.not_after.timestamp()),
            public_key,
            fingerprint: Sha256Digest::of(der),
            is_ca,
            key_usage,
        })
    }

    /// Parses the first PEM `CERTIFICATE` block of `pem` (text before it is ignored, as Go's
    /// `pem.Decode` does).
    pub fn from_pem(pem: &str) -> Result<Self, SvidError> {
        let first = CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .ok_or(SvidError::NoPemCertificate)?
            .map_err(|_| SvidError::NoPemCertificate)?;
        Self::from_der(first.as_ref())
    }

    /// The X509-SVID leaf profile: not a CA; `keyUsage` present and critical, with
    /// `digitalSignature` and without `keyCertSign` or `cRLSign`.
    pub fn check_profile(&self) -> Result<(), SvidError> {
        if self.is_ca {
            return Err(SvidError::LeafIsCa);
        }
        let key_usage = match self.key_usage {
            Some(key_usage) if key_usage.critical => key_usage,
            _ => return Err(SvidError::KeyUsageMissing),
        };
        if !key_usage.digital_signature {
            return Err(SvidError::MissingDigitalSignature);
        }
        if key_usage.key_cert_sign || key_usage.crl_sign {
            return Err(SvidError::SigningKeyUsage);
        }
        Ok(())
    }

    /// Whether `at` lies within `[notBefore, notAfter]`, widened by `clock_skew` on both sides.
    pub fn check_valid_at(
        &self,
        at: DateTime<Utc>,
        clock_skew: TimeDelta,
    ) -> Result<(), ValidityError> {
        if at + clock_skew < self.not_before {
            return Err(ValidityError::NotYetValid {
                at,
                not_before: self.not_before,
            });
        }
        if at - clock_skew > self.not_after {
            return Err(ValidityError::Expired {
                at,
                not_after: self.not_after,
            });
        }
        Ok(())
    }

    /// The DER bytes.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The SPIFFE ID of the single URI SAN.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// `notBefore`.
    pub fn not_before(&self) -> DateTime<Utc> {
        self.not_before
    }

    /// `notAfter`.
    pub fn not_after(&self) -> DateTime<Utc> {
        self.not_after
    }

    /// The subject public key.
    pub fn public_key(&self) -> &SvidPublicKey {
        &self.public_key
    }

    /// SHA-256 of the DER: the SVID fingerprint recorded in attestations.
    pub fn fingerprint(&self) -> Sha256Digest {
        self.fingerprint
    }

    /// PEM of this certificate alone, Go-style (64-column base64, trailing newline): exactly
    /// what Tekton writes as the `SVID` result.
    pub fn to_pem(&self) -> String {
        der_to_pem(&self.der)
    }
}

/// Why a certificate was not valid at a time.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValidityError {
    /// `at` is before `notBefore`.
    #[error("not valid before {not_before} (checked at {at})")]
    NotYetValid {
        /// Time checked.
        at: DateTime<Utc>,
        /// The certificate's `notBefore`.
        not_before: DateTime<Utc>,
    },
    /// `at` is after `notAfter`.
    #[error("expired at {not_after} (checked at {at})")]
    Expired {
        /// Time checked.
        at: DateTime<Utc>,
        /// The certificate's `notAfter`.
        not_after: DateTime<Utc>,
    },
}

fn asn1_time_to_utc(timestamp: i64) -> DateTime<Utc> {
    // Out-of-range years (beyond chrono's ±262 143) are clamped; X.509 times are 4-digit years.
    DateTime::from_timestamp(timestamp, 0).unwrap_or(if timestamp < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

fn single_spiffe_id(certificate: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    let uris: Vec<&str> = certificate
        .subject_alternative_name()
        .map_err(|_| SvidError::BadExtension {
            extension: "subjectAltName",
        })?
        .map(|extension| {
            extension
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    match uris.as_slice() {
        [uri] => SpiffeId::new(uri).map_err(|source| SvidError::InvalidSpiffeId {
            uri: (*uri).to_owned(),
            source,
        }),
        other => Err(SvidError::UriSanCount { count: other.len() }),
    }
}

/// PEM-encodes one DER certificate the way Go's `pem.EncodeToMemory` does.
pub fn der_to_pem(der: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::with_capacity(encoded.len() + encoded.len() / 64 + 60);
    pem.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in encoded.as_bytes().chunks(64) {
        // base64 output is ASCII, so every 64-byte chunk is valid UTF-8.
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// Every `CERTIFICATE` block of a PEM text, as DER, in order.
pub fn pem_to_ders(pem: &str) -> Result<Vec<Vec<u8>>, BundleError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|item| {
            item.map(|der| der.as_ref().to_vec())
                .map_err(|error| BundleError::Pem {
                    reason: error.to_string(),
                })
        })
        .collect()
}

// === TrustBundleSet ===

/// Why a trust bundle could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A file could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// PEM text could not be decoded.
    #[error("bad PEM: {reason}")]
    Pem {
        /// Decoder complaint.
        reason: String,
    },
    /// No CA certificate was found.
    #[error("no certificates in bundle")]
    Empty,
    /// A CA certificate is not a trust anchor webpki can use.
    #[error("certificate {index} is not a usable trust anchor: {reason}")]
    BadAuthority {
        /// Position in the input.
        index: usize,
        /// Why.
        reason: String,
    },
    /// The trust domain of a CA could not be told from its URI SAN.
    #[error("certificate {index} names no SPIFFE trust domain in a URI SAN")]
    NoTrustDomain {
        /// Position in the input.
        index: usize,
    },
}

/// Trust bundles by trust domain: trust domain → CA certificates (DER). Several trust domains
/// are supported (federation); a leaf is only ever checked against its own trust domain's CAs.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TrustBundleSet {
    bundles: BTreeMap<TrustDomain, Vec<Vec<u8>>>,
}

impl fmt::Debug for TrustBundleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.bundles
                    .iter()
                    .map(|(domain, cas)| (domain.as_str(), cas.len())),
            )
            .finish()
    }
}

impl TrustBundleSet {
    /// An empty set: every chain check fails with an unknown trust domain.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds CA certificates (DER) to the bundle of `trust_domain`. Each must be usable as a
    /// webpki trust anchor. Duplicates are kept once.
    pub fn add_der(
        &mut self,
        trust_domain: TrustDomain,
        authorities: impl IntoIterator<Item = Vec<u8>>,
    ) -> Result<(), BundleError> {
        let authorities: Vec<Vec<u8>> = authorities.into_iter().collect();
        if authorities.is_empty() {
            return Err(BundleError::Empty);
        }
        for (index, der) in authorities.iter().enumerate() {
            let certificate = CertificateDer::from(der.as_slice());
            anchor_from_trusted_cert(&certificate).map_err(|error| BundleError::BadAuthority {
                index,
                reason: error.to_string(),
            })?;
        }
        let bundle = self.bundles.entry(trust_domain).or_default();
        for der in authorities {
            if !bundle.contains(&der) {
                bundle.push(der);
            }
        }
        Ok(())
    }

    /// Adds every certificate of a PEM text to the bundle of `trust_domain`.
    pub fn add_pem(&mut self, trust_domain: TrustDomain, pem: &str) -> Result<(), BundleError> {
        self.add_der(trust_domain, pem_to_ders(pem)?)
    }

    /// Adds a PEM text whose CAs each name their trust domain in a URI SAN
    /// (`spiffe://example.org`, as SPIRE's CAs do); `spire-server bundle show` output works.
    pub fn add_pem_detecting_trust_domains(&mut self, pem: &str) -> Result<(), BundleError> {
        let ders = pem_to_ders(pem)?;
        if ders.is_empty() {
            return Err(BundleError::Empty);
        }
        for (index, der) in ders.into_iter().enumerate() {
            let trust_domain = ca_trust_domain(&der).ok_or(BundleError::NoTrustDomain { index })?;
            self.add_der(trust_domain, [der])?;
        }
        Ok(())
    }

    /// Reads a PEM file into the bundle of `trust_domain`.
    pub fn add_pem_file(
        &mut self,
        trust_domain: TrustDomain,
        path: &Path,
    ) -> Result<(), BundleError> {
        let pem = std::fs::read_to_string(path).map_err(|source| BundleError::Read {
            path: path.display().to_string(),
            source,
        })?;
        self.add_pem(trust_domain, &pem)
    }

    /// Reads a PEM file whose CAs name their trust domains (see
    /// [`Self::add_pem_detecting_trust_domains`]).
    pub fn from_pem_file_detecting_trust_domains(path: &Path) -> Result<Self, BundleError> {
        let pem = std::fs::read_to_string(path).map_err(|source| BundleError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut set = Self::new();
        set.add_pem_detecting_trust_domains(&pem)?;
        Ok(set)
    }

    /// Copies the `spiffe` crate's bundle set (what the Workload API delivers). A bundle with no
    /// authorities is kept out, so its trust domain is unknown ("distrust everything").
    pub fn from_x509_bundle_set(set: &spiffe::X509BundleSet) -> Result<Self, BundleError> {
        let mut bundles = Self::new();
        for (trust_domain, bundle) in set.iter() {
            let authorities: Vec<Vec<u8>> = bundle
                .authorities()
                .iter()
                .map(|certificate| certificate.as_bytes().to_vec())
                .collect();
            if authorities.is_empty() {
                continue;
            }
            bundles.add_der(trust_domain.clone(), authorities)?;
        }
        Ok(bundles)
    }

    /// The CAs of one trust domain.
    pub fn authorities(&self, trust_domain: &TrustDomain) -> Option<&[Vec<u8>]> {
        self.bundles.get(trust_domain).map(Vec::as_slice)
    }

    /// The trust domains present.
    pub fn trust_domains(&self) -> impl Iterator<Item = &TrustDomain> {
        self.bundles.keys()
    }

    /// Whether no trust domain is present.
    pub fn is_empty(&self) -> bool {
        self.bundles.is_empty()
    }

    /// SHA-256 over the concatenated DER of every CA of every trust domain, sorted bytewise and
    /// de-duplicated: the same CAs give the same digest whatever order SPIRE sent them in.
    pub fn digest(&self) -> Sha256Digest {
        let sorted: BTreeSet<&[u8]> = self.bundles.values().flatten().map(Vec::as_slice).collect();
        Sha256Digest::of(&sorted.into_iter().flatten().copied().collect::<Vec<u8>>())
    }

    /// RFC 5280 path validation of `leaf` (with `intermediates` as candidate issuers) against
    /// the bundle of the leaf's own trust domain, at time `at`. Extended key usage is checked
    /// only when present (then it must allow client authentication, as SPIRE's SVIDs do).
    pub fn verify_chain(
        &self,
        leaf: &SvidLeaf,
        intermediates: &[Vec<u8>],
        at: DateTime<Utc>,
    ) -> Result<(), ChainError> {
        let trust_domain = leaf.spiffe_id().trust_domain();
        let authorities =
            self.bundles
                .get(trust_domain)
                .ok_or_else(|| ChainError::UnknownTrustDomain {
                    trust_domain: trust_domain.clone(),
                })?;
        let authority_ders: Vec<CertificateDer<'_>> = authorities
            .iter()
            .map(|der| CertificateDer::from(der.as_slice()))
            .collect();
        let anchors = authority_ders
            .iter()
            .map(anchor_from_trusted_cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(ChainError::Untrusted)?;
        let intermediate_ders: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .map(|der| CertificateDer::from(der.as_slice()))
            .collect();
        let leaf_der = CertificateDer::from(leaf.der());
        let end_entity = EndEntityCert::try_from(&leaf_der).map_err(ChainError::Untrusted)?;
        let seconds = u64::try_from(at.timestamp()).map_err(|_| ChainError::TimeOutOfRange)?;
        end_entity
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &anchors,
                &intermediate_ders,
                UnixTime::since_unix_epoch(std::time::Duration::from_secs(seconds)),
                KeyUsage::client_auth(),
                None,
                None,
            )
            .map_err(ChainError::Untrusted)?;
        Ok(())
    }
}

/// The trust domain named by a CA certificate's `spiffe://<td>` URI SAN.
fn ca_trust_domain(der: &[u8]) -> Option<TrustDomain> {
    let (_, certificate) = X509Certificate::from_der(der).ok()?;
    let san = certificate.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) if uri.starts_with("spiffe://") => TrustDomain::new(uri).ok(),
        _ => None,
    })
}

/// Why a leaf does not chain to its trust domain's bundle.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// No bundle for the leaf's trust domain.
    #[error("no trust bundle for trust domain {trust_domain}")]
    UnknownTrustDomain {
        /// The leaf's trust domain.
        trust_domain: TrustDomain,
    },
    /// Path validation failed.
    #[error("certificate does not chain to the trust bundle: {0:?}")]
    Untrusted(webpki::Error),
    /// The verification time is before 1970.
    #[error("verification time out of range")]
    TimeOutOfRange,
}

// === SigningSvid ===

/// Why an SVID cannot be used to sign.
#[derive(Debug, thiserror::Error)]
pub enum SigningSvidError {
    /// The chain was empty.
    #[error("SVID has no certificates")]
    EmptyChain,
    /// The leaf is not an X509-SVID.
    #[error("SVID leaf is invalid")]
    Leaf(#[source] SvidError),
    /// The private key is unusable or of an unsupported type.
    #[error(transparent)]
    Key(#[from] SigningKeyError),
    /// The private key is not the leaf's key.
    #[error("private key does not match the SVID leaf")]
    KeyMismatch,
}

/// An X509-SVID that signs: its certificate chain (DER, leaf first) and private key.
#[derive(Debug)]
pub struct SigningSvid {
    leaf: SvidLeaf,
    chain: Vec<Vec<u8>>,
    key: SigningKey,
}

impl SigningSvid {
    /// From the Workload API's encoding: DER certificates (leaf first) and a PKCS#8 DER key.
    /// The key must belong to the leaf.
    pub fn new(chain: Vec<Vec<u8>>, pkcs8_key: &[u8]) -> Result<Self, SigningSvidError> {
        let leaf_der = chain.first().ok_or(SigningSvidError::EmptyChain)?;
        let leaf = SvidLeaf::from_der(leaf_der).map_err(SigningSvidError::Leaf)?;
        let key = SigningKey::from_pkcs8(pkcs8_key)?;
        if key.public_key_bytes() != leaf.public_key().key_bytes() {
            return Err(SigningSvidError::KeyMismatch);
        }
        Ok(Self { leaf, chain, key })
    }

    /// From PEM texts: certificates (leaf first) and a PKCS#8 `PRIVATE KEY`.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Self, SigningSvidError> {
        let chain = pem_to_ders(chain_pem).map_err(|_| {
            SigningSvidError::Leaf(SvidError::NotACertificate {
                reason: "bad PEM".to_owned(),
            })
        })?;
        let key = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|error| {
                SigningSvidError::Key(SigningKeyError::Malformed {
                    reason: error.to_string(),
                })
            })?;
        Self::new(chain, key.secret_pkcs8_der())
    }

    /// From the `spiffe` crate's SVID.
    pub fn from_x509_svid(svid: &spiffe::X509Svid) -> Result<Self, SigningSvidError> {
        let chain = svid
            .cert_chain()
            .iter()
            .map(|certificate| certificate.as_bytes().to_vec())
            .collect();
        Self::new(chain, svid.private_key().as_bytes())
    }

    /// The leaf.
    pub fn leaf(&self) -> &SvidLeaf {
        &self.leaf
    }

    /// The chain, DER, leaf first.
    pub fn chain(&self) -> &[Vec<u8>] {
        &self.chain
    }

    /// The chain as one PEM text, leaf first.
    pub fn chain_pem(&self) -> String {
        self.chain.iter().map(|der| der_to_pem(der)).collect()
    }

    /// The SPIFFE ID.
    pub fn spiffe_id(&self) -> &SpiffeId {
        self.leaf.spiffe_id()
    }

    /// The signing key.
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// Signs `message` with the SVID's key (SHA-256; ECDSA DER or RSA PKCS#1 v1.5).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SigningFailed> {
        self.key.sign(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/tekton/spire/generated"
    );

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap()
    }

    #[test]
    fn fixture_svid_parses_and_has_the_spire_profile() {
        let leaf = SvidLeaf::from_pem(&fixture("taskrun-svid.pem")).unwrap();
        assert_eq!(
            leaf.spiffe_id().to_string(),
            "spiffe://example.org/ns/default/taskrun/build-push-run-x7k2p"
        );
        leaf.check_profile().unwrap();
        // Round trip through our PEM writer is byte-identical to Go's.
        assert_eq!(leaf.to_pem(), fixture("taskrun-svid.pem"));
    }

    #[test]
    fn fixture_svid_chains_to_fixture_bundle_by_detected_trust_domain() {
        let mut bundles = TrustBundleSet::new();
        bundles
            .add_pem_detecting_trust_domains(&fixture("trust-bundle.pem"))
            .unwrap();
        let example = TrustDomain::new("example.org").unwrap();
        assert_eq!(bundles.trust_domains().collect::<Vec<_>>(), vec![&example]);
        let leaf = SvidLeaf::from_pem(&fixture("taskrun-svid.pem")).unwrap();
        let at = DateTime::parse_from_rfc3339("2026-08-20T10:01:13Z")
            .unwrap()
            .to_utc();
        bundles.verify_chain(&leaf, &[], at).unwrap();
        leaf.check_valid_at(at, TimeDelta::zero()).unwrap();
    }

    #[test]
    fn bundle_digest_ignores_order_and_duplicates() {
        let pem = fixture("trust-bundle.pem");
        let other = fixture("controller-svid.pem");
        let example = TrustDomain::new("example.org").unwrap();
        let other_domain = TrustDomain::new("other.org").unwrap();
        let mut a = TrustBundleSet::new();
        a.add_pem(example.clone(), &pem).unwrap();
        let digest_one = a.digest();
        a.add_pem(example.clone(), &pem).unwrap();
        assert_eq!(a.digest(), digest_one);
        // webpki accepts any certificate as a trust anchor (it only takes subject and key), so a
        // leaf serves as a second, distinct CA here.
        a.add_pem(other_domain.clone(), &other).unwrap();
        let mut b = TrustBundleSet::new();
        b.add_pem(other_domain, &other).unwrap();
        b.add_pem(example, &pem).unwrap();
        assert_eq!(a.digest(), b.digest());
        assert_ne!(a.digest(), digest_one);
    }

    #[test]
    fn signing_svid_refuses_a_key_of_another_leaf() {
        let error = SigningSvid::from_pem(
            &fixture("taskrun-svid.pem"),
            &fixture("other-taskrun-svid.TEST-ONLY.key.pem"),
        )
        .unwrap_err();
        assert!(matches!(error, SigningSvidError::KeyMismatch));
        SigningSvid::from_pem(
            &fixture("taskrun-svid.pem"),
            &fixture("taskrun-svid.TEST-ONLY.key.pem"),
        )
        .unwrap();
    }
}
