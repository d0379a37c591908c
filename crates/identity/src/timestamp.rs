//! RFC 3161 timestamps from a timestamp authority (TSA): the request we send, and the fail-closed
//! verification of the response (or of a stored token) against the TSA's configured chain.
//!
//! A timestamp proves that some bytes existed at the TSA's `genTime`: the TSA signs a `TSTInfo`
//! holding the SHA-256 of those bytes. We timestamp the DSSE signature of an attestation (what
//! Sigstore bundles timestamp), so the signing time no longer rests on the attestor's clock alone.
//!
//! Verification is parse-then-check, each check with its own [`TimestampError`] variant, in this
//! order:
//!
//! 1. the response is at most [`MAX_TIMESTAMP_RESPONSE_BYTES`] and DER; its status is `granted`
//!    (or `grantedWithMods`) and it carries a token;
//! 2. the token is a CMS `SignedData` whose encapsulated content is a `TSTInfo`, with exactly one
//!    signer;
//! 3. the message imprint is the SHA-256 of the timestamped bytes;
//! 4. the nonce is the one we sent (for a response to our request; a stored token has none to
//!    compare with);
//! 5. the signer's certificate (from the token, else from the configured chain) carries the
//!    extended key usage `timeStamping`, alone and critical (RFC 3161 §2.3);
//! 6. the signed attributes' content type is `TSTInfo` and their message digest is the digest of
//!    the `TSTInfo`;
//! 7. the signature over the signed attributes verifies with the signer's key (`ring`: ECDSA P-256
//!    or P-384, RSA PKCS#1 v1.5; SHA-256, SHA-384 or SHA-512);
//! 8. `genTime` lies within the signer certificate's validity;
//! 9. the signer chains to a root of the configured chain at `genTime`, with `timeStamping`
//!    allowed along the path.
//!
//! What passes is a [`VerifiedTimestamp`]: the `genTime` and the response's DER (a
//! `TimeStampResp`, status and token), which is what an attestation carries and what a Sigstore
//! bundle's `signedTimestamp` holds (sigstore-go parses it as a `TimeStampResp`). A stored
//! response is checked again with [`verify_stored_response`], without the nonce.

use std::fmt;

use chrono::{DateTime, Utc};
use cmpv2::status::PkiStatus;
use cms::cert::CertificateChoices;
use cms::content_info::ContentInfo;
use cms::signed_data::{SignedData, SignerIdentifier, SignerInfo};
use der::asn1::{Int, OctetString};
use der::oid::ObjectIdentifier;
use der::{Any, Decode, Encode};
use ring::rand::SecureRandom as _;
use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::{EndEntityCert, KeyUsage, anchor_from_trusted_cert};
use x509_cert::Certificate;
use x509_cert::spki::AlgorithmIdentifierOwned;
use x509_tsp::{MessageImprint, TimeStampReq, TimeStampResp, TspVersion, TstInfo};

use crate::crypto::{PublicKeyAlgorithm, Sha256Digest, SvidPublicKey};
use crate::svid::pem_to_ders;

/// The largest response [`verify_response`] and [`verify_stored_response`] read (a TSA's
/// responses are a few KiB).
pub const MAX_TIMESTAMP_RESPONSE_BYTES: usize = 64 * 1024;

/// The media type of a request (`Content-Type` of the POST).
pub const TIMESTAMP_QUERY_MEDIA_TYPE: &str = "application/timestamp-query";

/// The media type of a response.
pub const TIMESTAMP_REPLY_MEDIA_TYPE: &str = "application/timestamp-reply";

/// The most certificates a configured chain may hold.
const MAX_CHAIN_CERTIFICATES: usize = 8;

const ID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
const ID_CT_TST_INFO: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.1.4");
const ID_CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
const ID_MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
const ID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const ID_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const ID_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const ECDSA_WITH_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.4");
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const SHA384_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const SHA512_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
/// `id-ce-extKeyUsage`.
const ID_CE_EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
/// `id-ce-subjectKeyIdentifier`.
const ID_CE_SUBJECT_KEY_IDENTIFIER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.14");
/// `id-kp-timeStamping` (1.3.6.1.5.5.7.3.8), the value bytes of its DER encoding, for webpki.
const EKU_TIME_STAMPING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x08];

// === TimestampRequest ===

/// An RFC 3161 `TimeStampReq` over the SHA-256 of some bytes, with a random nonce and `certReq`
/// set (so the token carries the TSA's signing certificate).
#[derive(Clone)]
pub struct TimestampRequest {
    digest: Sha256Digest,
    nonce: Vec<u8>,
    der: Vec<u8>,
}

impl fmt::Debug for TimestampRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimestampRequest")
            .field("digest", &self.digest)
            .field("nonce", &hex::encode(&self.nonce))
            .finish_non_exhaustive()
    }
}

/// Why a request could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TimestampRequestError {
    /// The system random-number generator failed.
    #[error("no random nonce: the system random-number generator failed")]
    Random,
    /// DER encoding failed.
    #[error("encoding the TimeStampReq")]
    Encode(#[source] der::Error),
}

impl TimestampRequest {
    /// A request timestamping `message` (its SHA-256 is what the TSA sees).
    pub fn new(message: &[u8]) -> Result<Self, TimestampRequestError> {
        let mut nonce = [0u8; 16];
        ring::rand::SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| TimestampRequestError::Random)?;
        // A positive INTEGER in minimal encoding: the top bit clear, the next one set.
        nonce[0] = (nonce[0] & 0x7f) | 0x40;
        Self::with_nonce(message, &nonce)
    }

    fn with_nonce(message: &[u8], nonce: &[u8]) -> Result<Self, TimestampRequestError> {
        let digest = Sha256Digest::of(message);
        let request = TimeStampReq {
            version: TspVersion::V1,
            message_imprint: MessageImprint {
                hash_algorithm: AlgorithmIdentifierOwned {
                    oid: ID_SHA256,
                    parameters: Some(Any::null()),
                },
                hashed_message: OctetString::new(digest.as_bytes().to_vec())
                    .map_err(TimestampRequestError::Encode)?,
            },
            req_policy: None,
            nonce: Some(Int::new(nonce).map_err(TimestampRequestError::Encode)?),
            cert_req: true,
            extensions: None,
        };
        let der = request.to_der().map_err(TimestampRequestError::Encode)?;
        Ok(Self {
            digest,
            nonce: nonce.to_vec(),
            der,
        })
    }

    /// The DER `TimeStampReq`, the body of a POST with [`TIMESTAMP_QUERY_MEDIA_TYPE`].
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The SHA-256 of the timestamped bytes.
    pub fn digest(&self) -> Sha256Digest {
        self.digest
    }
}

// === TimestampAuthorityChain ===

/// Why a TSA chain could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TimestampChainError {
    /// Not PEM certificates.
    #[error("the timestamp authority chain is not PEM certificates")]
    Pem(#[source] crate::svid::BundleError),
    /// A certificate does not parse.
    #[error("certificate {index} of the timestamp authority chain is not an X.509 certificate")]
    CertificateInvalid {
        /// Its position in the file.
        index: usize,
    },
    /// More certificates than [`MAX_CHAIN_CERTIFICATES`].
    #[error("the timestamp authority chain holds {found} certificates, at most 8 are read")]
    TooManyCertificates {
        /// How many there are.
        found: usize,
    },
    /// No self-signed certificate: nothing to anchor trust in (a chain of a leaf alone would
    /// trust whatever signed it).
    #[error("the timestamp authority chain has no root (self-signed) certificate")]
    NoRoot,
}

/// The configured trust in a timestamp authority: its chain as `/api/v1/timestamp/certchain`
/// serves it (leaf, intermediates, root). Self-signed certificates are the roots; the others
/// are candidate signers and intermediates.
#[derive(Clone, PartialEq, Eq)]
pub struct TimestampAuthorityChain {
    roots: Vec<Vec<u8>>,
    others: Vec<Vec<u8>>,
    /// Every certificate, in the order read.
    certificates: Vec<Vec<u8>>,
}

impl fmt::Debug for TimestampAuthorityChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimestampAuthorityChain")
            .field("roots", &self.roots.len())
            .field("others", &self.others.len())
            .finish()
    }
}

impl TimestampAuthorityChain {
    /// Reads a PEM chain; refuses one without a root.
    pub fn from_pem(pem: &str) -> Result<Self, TimestampChainError> {
        let ders = pem_to_ders(pem).map_err(TimestampChainError::Pem)?;
        if ders.len() > MAX_CHAIN_CERTIFICATES {
            return Err(TimestampChainError::TooManyCertificates { found: ders.len() });
        }
        let mut roots = Vec::new();
        let mut others = Vec::new();
        let certificates = ders.clone();
        for (index, der) in ders.into_iter().enumerate() {
            let (rest, certificate) = x509_parser::parse_x509_certificate(&der)
                .map_err(|_| TimestampChainError::CertificateInvalid { index })?;
            if !rest.is_empty() {
                return Err(TimestampChainError::CertificateInvalid { index });
            }
            if certificate.subject().as_raw() == certificate.issuer().as_raw() {
                roots.push(der);
            } else {
                others.push(der);
            }
        }
        if roots.is_empty() {
            return Err(TimestampChainError::NoRoot);
        }
        Ok(Self {
            roots,
            others,
            certificates,
        })
    }

    /// Every certificate (DER), in the order the PEM held them (as served: the signer first,
    /// the root last).
    pub fn certificates_der(&self) -> &[Vec<u8>] {
        &self.certificates
    }

    /// The SHA-256 of the roots (sorted), to name the configured TSA in logs.
    pub fn roots_digest(&self) -> Sha256Digest {
        let mut roots: Vec<&Vec<u8>> = self.roots.iter().collect();
        roots.sort();
        Sha256Digest::of(&roots.into_iter().flatten().copied().collect::<Vec<u8>>())
    }
}

// === Verification ===

/// A timestamp that passed every check of the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedTimestamp {
    gen_time: DateTime<Utc>,
    response: Vec<u8>,
}

impl VerifiedTimestamp {
    /// When the TSA says the bytes existed.
    pub fn gen_time(&self) -> DateTime<Utc> {
        self.gen_time
    }

    /// The response (DER `TimeStampResp`: status and token), what is stored and carried.
    pub fn response_der(&self) -> &[u8] {
        &self.response
    }

    /// The response, taken.
    pub fn into_response_der(self) -> Vec<u8> {
        self.response
    }
}

/// Why a timestamp was refused. One variant per check of the module docs.
#[derive(Debug, thiserror::Error)]
pub enum TimestampError {
    /// Larger than the bound.
    #[error("timestamp response is {size} bytes, more than {limit}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The bound.
        limit: usize,
    },
    /// Not a DER `TimeStampResp`.
    #[error("not a DER TimeStampResp")]
    MalformedResponse(#[source] der::Error),
    /// The TSA did not grant the request.
    #[error("the timestamp authority did not grant the request (status {status})")]
    NotGranted {
        /// The PKIStatus value.
        status: u8,
    },
    /// Granted, but no token.
    #[error("the timestamp response carries no token")]
    NoToken,
    /// The token is not a CMS `SignedData`.
    #[error("the timestamp token is not a CMS SignedData")]
    NotSignedData,
    /// The encapsulated content is missing or is not a `TSTInfo`.
    #[error("the timestamp token does not hold a TSTInfo")]
    NotTstInfo,
    /// Not exactly one `SignerInfo`.
    #[error("the timestamp token has {found} signers, not one")]
    SignerCount {
        /// How many.
        found: usize,
    },
    /// The message imprint's hash algorithm is not SHA-256.
    #[error("the message imprint is not a SHA-256 digest")]
    ImprintAlgorithm,
    /// The message imprint is not the digest of the timestamped bytes.
    #[error("the timestamp is over other bytes (message imprint mismatch)")]
    ImprintMismatch,
    /// The nonce is missing or is not the one sent.
    #[error("the timestamp's nonce is not the request's")]
    NonceMismatch,
    /// No certificate matches the signer identifier, in the token or in the configured chain.
    #[error(
        "the timestamp's signer certificate is neither in the token nor in the configured chain"
    )]
    SignerCertificateNotFound,
    /// The signer certificate does not parse.
    #[error("the timestamp's signer certificate is not an X.509 certificate")]
    SignerCertificateInvalid,
    /// The signer certificate's extended key usage is not `timeStamping` alone and critical.
    #[error(
        "the timestamp's signer certificate lacks the critical timeStamping extended key usage"
    )]
    NotTimestampingCertificate,
    /// The signed attributes are missing, or their content type is not `TSTInfo`.
    #[error("the timestamp's signed attributes are missing or name another content type")]
    SignedAttributes,
    /// The signed message digest is not the digest of the `TSTInfo`.
    #[error("the timestamp's signed message digest does not match its TSTInfo")]
    MessageDigestMismatch,
    /// A digest or signature algorithm (or key type) we do not verify.
    #[error("unsupported timestamp algorithm {algorithm}")]
    UnsupportedAlgorithm {
        /// Dotted OID (or key type).
        algorithm: String,
    },
    /// The signature over the signed attributes does not verify.
    #[error("the timestamp's signature does not verify")]
    BadSignature,
    /// `genTime` is outside the signer certificate's validity.
    #[error("the timestamp's genTime {gen_time} is outside its signer certificate's validity")]
    OutsideSignerValidity {
        /// The `genTime`.
        gen_time: DateTime<Utc>,
    },
    /// The signer does not chain to the configured roots.
    #[error("the timestamp's signer does not chain to the configured timestamp authority")]
    Untrusted(#[source] webpki::Error),
}

impl TimestampError {
    /// Every refusal is final: the same bytes fail the same way again.
    pub fn is_transient(&self) -> bool {
        false
    }
}

/// Verifies a TSA's response to `request` (every check of the module docs, the nonce
/// included) and returns the verified timestamp.
pub fn verify_response(
    response: &[u8],
    request: &TimestampRequest,
    chain: &TimestampAuthorityChain,
) -> Result<VerifiedTimestamp, TimestampError> {
    verify_response_der(response, request.digest, Some(&request.nonce), chain)
}

/// Verifies a stored response (DER `TimeStampResp`, as [`VerifiedTimestamp::response_der`]
/// gives it and a Sigstore bundle's `signedTimestamp` holds it) over `message`: every check of
/// the module docs but the nonce, which only the requester knew.
pub fn verify_stored_response(
    response: &[u8],
    message: &[u8],
    chain: &TimestampAuthorityChain,
) -> Result<VerifiedTimestamp, TimestampError> {
    verify_response_der(response, Sha256Digest::of(message), None, chain)
}

fn verify_response_der(
    response_der: &[u8],
    digest: Sha256Digest,
    nonce: Option<&[u8]>,
    chain: &TimestampAuthorityChain,
) -> Result<VerifiedTimestamp, TimestampError> {
    // 1. Bounded, DER, granted, with a token.
    if response_der.len() > MAX_TIMESTAMP_RESPONSE_BYTES {
        return Err(TimestampError::TooLarge {
            size: response_der.len(),
            limit: MAX_TIMESTAMP_RESPONSE_BYTES,
        });
    }
    let response =
        TimeStampResp::from_der(response_der).map_err(TimestampError::MalformedResponse)?;
    match response.status.status {
        PkiStatus::Accepted | PkiStatus::GrantedWithMods => {}
        other => {
            return Err(TimestampError::NotGranted {
                status: other as u8,
            });
        }
    }
    let token = response.time_stamp_token.ok_or(TimestampError::NoToken)?;
    let gen_time = verify_token(&token, digest, nonce, chain)?;
    Ok(VerifiedTimestamp {
        gen_time,
        response: response_der.to_vec(),
    })
}

/// Checks 2 to 9 of the module docs on a token; returns its genTime.
fn verify_token(
    content_info: &ContentInfo,
    digest: Sha256Digest,
    nonce: Option<&[u8]>,
    chain: &TimestampAuthorityChain,
) -> Result<DateTime<Utc>, TimestampError> {
    // 2. A SignedData holding a TSTInfo, with one signer.
    if content_info.content_type != ID_SIGNED_DATA {
        return Err(TimestampError::NotSignedData);
    }
    let signed_data = content_info
        .content
        .decode_as::<SignedData>()
        .map_err(|_| TimestampError::NotSignedData)?;
    let encapsulated = &signed_data.encap_content_info;
    if encapsulated.econtent_type != ID_CT_TST_INFO {
        return Err(TimestampError::NotTstInfo);
    }
    let tst_info_der = encapsulated
        .econtent
        .as_ref()
        .and_then(|content| content.decode_as::<OctetString>().ok())
        .ok_or(TimestampError::NotTstInfo)?;
    let tst_info =
        TstInfo::from_der(tst_info_der.as_bytes()).map_err(|_| TimestampError::NotTstInfo)?;
    let signer_infos = signed_data.signer_infos.0.as_slice();
    let [signer_info] = signer_infos else {
        return Err(TimestampError::SignerCount {
            found: signer_infos.len(),
        });
    };

    // 3. The imprint is the SHA-256 of our bytes.
    if tst_info.message_imprint.hash_algorithm.oid != ID_SHA256 {
        return Err(TimestampError::ImprintAlgorithm);
    }
    if tst_info.message_imprint.hashed_message.as_bytes() != digest.as_bytes() {
        return Err(TimestampError::ImprintMismatch);
    }

    // 4. The nonce we sent.
    if let Some(nonce) = nonce
        && tst_info.nonce.as_ref().map(|sent| sent.as_bytes()) != Some(nonce)
    {
        return Err(TimestampError::NonceMismatch);
    }

    // 5. The signer's certificate, with the timestamping EKU.
    let signer_der = find_signer_certificate(&signed_data, signer_info, chain)?;
    let (_, signer) = x509_parser::parse_x509_certificate(&signer_der)
        .map_err(|_| TimestampError::SignerCertificateInvalid)?;
    check_timestamping_usage(&signer)?;

    // 6. The signed attributes bind the TSTInfo.
    check_signed_attributes(signer_info, tst_info_der.as_bytes())?;

    // 7. The signature over the signed attributes.
    verify_signer_signature(signer_info, &signer)?;

    // 8. genTime within the signer's validity.
    let gen_time =
        DateTime::<Utc>::from(std::time::UNIX_EPOCH + tst_info.gen_time.to_unix_duration());
    check_within_validity(&signer, gen_time)?;

    // 9. The signer chains to the configured roots at genTime.
    let carried = token_certificates(&signed_data);
    verify_signer_chain(&signer_der, &carried, chain, gen_time)?;

    tracing::debug!(%gen_time, "timestamp verified");
    Ok(gen_time)
}

/// The DER of every X.509 certificate the token carries.
fn token_certificates(signed_data: &SignedData) -> Vec<Vec<u8>> {
    signed_data
        .certificates
        .iter()
        .flat_map(|set| set.0.iter())
        .filter_map(|choice| match choice {
            CertificateChoices::Certificate(certificate) => certificate.to_der().ok(),
            CertificateChoices::Other(_) => None,
        })
        .collect()
}

/// The certificate the signer identifier names: the token's own first, then the configured
/// chain's.
fn find_signer_certificate(
    signed_data: &SignedData,
    signer_info: &SignerInfo,
    chain: &TimestampAuthorityChain,
) -> Result<Vec<u8>, TimestampError> {
    let candidates = token_certificates(signed_data)
        .into_iter()
        .chain(chain.others.iter().cloned());
    for der in candidates {
        let Ok(certificate) = Certificate::from_der(&der) else {
            continue;
        };
        if signer_matches(&signer_info.sid, &certificate) {
            return Ok(der);
        }
    }
    Err(TimestampError::SignerCertificateNotFound)
}

fn signer_matches(signer: &SignerIdentifier, certificate: &Certificate) -> bool {
    let tbs = &certificate.tbs_certificate;
    match signer {
        SignerIdentifier::IssuerAndSerialNumber(issuer_and_serial) => {
            issuer_and_serial.issuer == tbs.issuer
                && issuer_and_serial.serial_number == tbs.serial_number
        }
        SignerIdentifier::SubjectKeyIdentifier(key_identifier) => tbs
            .extensions
            .iter()
            .flatten()
            .filter(|extension| extension.extn_id == ID_CE_SUBJECT_KEY_IDENTIFIER)
            .any(|extension| {
                OctetString::from_der(extension.extn_value.as_bytes())
                    .is_ok_and(|value| value.as_bytes() == key_identifier.0.as_bytes())
            }),
    }
}

/// RFC 3161 §2.3: the extended key usage extension is critical and holds `timeStamping` only.
fn check_timestamping_usage(
    signer: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<(), TimestampError> {
    let eku_oid = x509_parser::oid_registry::Oid::new(std::borrow::Cow::Borrowed(
        ID_CE_EXT_KEY_USAGE.as_bytes(),
    ));
    let extension = signer
        .extensions()
        .iter()
        .find(|extension| extension.oid == eku_oid)
        .ok_or(TimestampError::NotTimestampingCertificate)?;
    let usage = match extension.parsed_extension() {
        x509_parser::extensions::ParsedExtension::ExtendedKeyUsage(usage) => usage,
        _ => return Err(TimestampError::NotTimestampingCertificate),
    };
    let only_timestamping = usage.time_stamping
        && !usage.any
        && !usage.server_auth
        && !usage.client_auth
        && !usage.code_signing
        && !usage.email_protection
        && !usage.ocsp_signing
        && usage.other.is_empty();
    if extension.critical && only_timestamping {
        Ok(())
    } else {
        Err(TimestampError::NotTimestampingCertificate)
    }
}

/// The signed attributes name `TSTInfo` as content type and hold its digest.
fn check_signed_attributes(
    signer_info: &SignerInfo,
    tst_info_der: &[u8],
) -> Result<(), TimestampError> {
    let attributes = signer_info
        .signed_attrs
        .as_ref()
        .ok_or(TimestampError::SignedAttributes)?;
    let single_value = |oid: ObjectIdentifier| {
        let mut matching = attributes.iter().filter(|attribute| attribute.oid == oid);
        let attribute = matching.next()?;
        if matching.next().is_some() {
            return None;
        }
        let values = attribute.values.as_slice();
        match values {
            [value] => Some(value.clone()),
            _ => None,
        }
    };
    let content_type = single_value(ID_CONTENT_TYPE)
        .and_then(|value| value.decode_as::<ObjectIdentifier>().ok())
        .ok_or(TimestampError::SignedAttributes)?;
    if content_type != ID_CT_TST_INFO {
        return Err(TimestampError::SignedAttributes);
    }
    let message_digest = single_value(ID_MESSAGE_DIGEST)
        .and_then(|value| value.decode_as::<OctetString>().ok())
        .ok_or(TimestampError::MessageDigestMismatch)?;
    let algorithm = digest_algorithm(&signer_info.digest_alg.oid)?;
    let expected = ring::digest::digest(algorithm, tst_info_der);
    if message_digest.as_bytes() == expected.as_ref() {
        Ok(())
    } else {
        Err(TimestampError::MessageDigestMismatch)
    }
}

fn digest_algorithm(
    oid: &ObjectIdentifier,
) -> Result<&'static ring::digest::Algorithm, TimestampError> {
    match *oid {
        ID_SHA256 => Ok(&ring::digest::SHA256),
        ID_SHA384 => Ok(&ring::digest::SHA384),
        ID_SHA512 => Ok(&ring::digest::SHA512),
        other => Err(TimestampError::UnsupportedAlgorithm {
            algorithm: other.to_string(),
        }),
    }
}

/// Which SHA-2 a signature is made with.
#[derive(Clone, Copy)]
enum SignatureHash {
    Sha256,
    Sha384,
    Sha512,
}

/// The signature over the DER `SET OF` signed attributes verifies with the signer's key.
fn verify_signer_signature(
    signer_info: &SignerInfo,
    signer: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<(), TimestampError> {
    let key = SvidPublicKey::from_spki(signer.public_key()).map_err(|error| {
        TimestampError::UnsupportedAlgorithm {
            algorithm: error.to_string(),
        }
    })?;
    let hash = match signer_info.signature_algorithm.oid {
        ECDSA_WITH_SHA256 | SHA256_WITH_RSA => SignatureHash::Sha256,
        ECDSA_WITH_SHA384 | SHA384_WITH_RSA => SignatureHash::Sha384,
        ECDSA_WITH_SHA512 | SHA512_WITH_RSA => SignatureHash::Sha512,
        // A bare `rsaEncryption` takes its hash from the digest algorithm.
        RSA_ENCRYPTION => match signer_info.digest_alg.oid {
            ID_SHA256 => SignatureHash::Sha256,
            ID_SHA384 => SignatureHash::Sha384,
            ID_SHA512 => SignatureHash::Sha512,
            other => {
                return Err(TimestampError::UnsupportedAlgorithm {
                    algorithm: other.to_string(),
                });
            }
        },
        other => {
            return Err(TimestampError::UnsupportedAlgorithm {
                algorithm: other.to_string(),
            });
        }
    };
    let is_rsa_signature = matches!(
        signer_info.signature_algorithm.oid,
        RSA_ENCRYPTION | SHA256_WITH_RSA | SHA384_WITH_RSA | SHA512_WITH_RSA
    );
    use ring::signature as sig;
    let algorithm: &'static dyn sig::VerificationAlgorithm =
        match (key.algorithm(), hash, is_rsa_signature) {
            (PublicKeyAlgorithm::EcdsaP256, SignatureHash::Sha256, false) => {
                &sig::ECDSA_P256_SHA256_ASN1
            }
            (PublicKeyAlgorithm::EcdsaP256, SignatureHash::Sha384, false) => {
                &sig::ECDSA_P256_SHA384_ASN1
            }
            (PublicKeyAlgorithm::EcdsaP384, SignatureHash::Sha256, false) => {
                &sig::ECDSA_P384_SHA256_ASN1
            }
            (PublicKeyAlgorithm::EcdsaP384, SignatureHash::Sha384, false) => {
                &sig::ECDSA_P384_SHA384_ASN1
            }
            (PublicKeyAlgorithm::RsaPkcs1Sha256, SignatureHash::Sha256, true) => {
                &sig::RSA_PKCS1_2048_8192_SHA256
            }
            (PublicKeyAlgorithm::RsaPkcs1Sha256, SignatureHash::Sha384, true) => {
                &sig::RSA_PKCS1_2048_8192_SHA384
            }
            (PublicKeyAlgorithm::RsaPkcs1Sha256, SignatureHash::Sha512, true) => {
                &sig::RSA_PKCS1_2048_8192_SHA512
            }
            _ => {
                return Err(TimestampError::UnsupportedAlgorithm {
                    algorithm: format!(
                        "{} with {}",
                        key.algorithm().as_str(),
                        signer_info.signature_algorithm.oid
                    ),
                });
            }
        };
    // The signature covers the DER of the attributes as a SET OF (tag 0x31), not as the
    // [0] IMPLICIT field they are carried in.
    let signed_attributes = signer_info
        .signed_attrs
        .as_ref()
        .ok_or(TimestampError::SignedAttributes)?
        .to_der()
        .map_err(|_| TimestampError::SignedAttributes)?;
    sig::UnparsedPublicKey::new(algorithm, key.key_bytes())
        .verify(&signed_attributes, signer_info.signature.as_bytes())
        .map_err(|_| TimestampError::BadSignature)
}

fn check_within_validity(
    signer: &x509_parser::certificate::X509Certificate<'_>,
    gen_time: DateTime<Utc>,
) -> Result<(), TimestampError> {
    let validity = signer.validity();
    let seconds = gen_time.timestamp();
    if seconds < validity.not_before.timestamp() || seconds > validity.not_after.timestamp() {
        return Err(TimestampError::OutsideSignerValidity { gen_time });
    }
    Ok(())
}

fn verify_signer_chain(
    signer_der: &[u8],
    token_certificates: &[Vec<u8>],
    chain: &TimestampAuthorityChain,
    gen_time: DateTime<Utc>,
) -> Result<(), TimestampError> {
    let root_ders: Vec<CertificateDer<'_>> = chain
        .roots
        .iter()
        .map(|der| CertificateDer::from(der.as_slice()))
        .collect();
    let anchors = root_ders
        .iter()
        .map(anchor_from_trusted_cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(TimestampError::Untrusted)?;
    let intermediates: Vec<CertificateDer<'_>> = chain
        .others
        .iter()
        .chain(token_certificates)
        .filter(|der| der.as_slice() != signer_der)
        .map(|der| CertificateDer::from(der.as_slice()))
        .collect();
    let signer = CertificateDer::from(signer_der);
    let end_entity = EndEntityCert::try_from(&signer).map_err(TimestampError::Untrusted)?;
    let seconds = u64::try_from(gen_time.timestamp())
        .map_err(|_| TimestampError::OutsideSignerValidity { gen_time })?;
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(seconds)),
            KeyUsage::required(EKU_TIME_STAMPING),
            None,
            None,
        )
        .map_err(TimestampError::Untrusted)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_a_der_time_stamp_req_with_sha256_nonce_and_cert_req() {
        let request = TimestampRequest::new(b"signature bytes").unwrap();
        let decoded = TimeStampReq::from_der(request.der()).unwrap();
        assert_eq!(decoded.message_imprint.hash_algorithm.oid, ID_SHA256);
        assert_eq!(
            decoded.message_imprint.hashed_message.as_bytes(),
            Sha256Digest::of(b"signature bytes").as_bytes()
        );
        assert!(decoded.cert_req);
        assert_eq!(decoded.nonce.unwrap().as_bytes(), request.nonce.as_slice());
        let other = TimestampRequest::new(b"signature bytes").unwrap();
        assert_ne!(other.nonce, request.nonce, "nonces are random");
    }

    fn certificate_with(
        extended_key_usages: Vec<rcgen::ExtendedKeyUsagePurpose>,
        not_after: (i32, u8, u8),
    ) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.extended_key_usages = extended_key_usages;
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    /// A certificate whose only extended key usage is `timeStamping`, in a critical extension.
    fn critical_timestamping_certificate() -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        // SEQUENCE { OID 1.3.6.1.5.5.7.3.8 }
        let mut usage = rcgen::CustomExtension::from_oid_content(
            &[2, 5, 29, 37],
            vec![
                0x30, 0x0a, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x08,
            ],
        );
        usage.set_criticality(true);
        params.custom_extensions.push(usage);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_critical_timestamping_usage_alone_is_accepted() {
        let der = critical_timestamping_certificate();
        let (_, certificate) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(check_timestamping_usage(&certificate).is_ok());
    }

    #[test]
    fn a_signer_without_the_timestamping_usage_is_refused() {
        for usages in [
            vec![],
            vec![rcgen::ExtendedKeyUsagePurpose::CodeSigning],
            vec![
                rcgen::ExtendedKeyUsagePurpose::TimeStamping,
                rcgen::ExtendedKeyUsagePurpose::CodeSigning,
            ],
        ] {
            let der = certificate_with(usages, (2040, 1, 1));
            let (_, certificate) = x509_parser::parse_x509_certificate(&der).unwrap();
            assert!(matches!(
                check_timestamping_usage(&certificate),
                Err(TimestampError::NotTimestampingCertificate)
            ));
        }
    }

    #[test]
    fn a_non_critical_timestamping_usage_is_refused() {
        let der = certificate_with(
            vec![rcgen::ExtendedKeyUsagePurpose::TimeStamping],
            (2040, 1, 1),
        );
        let (_, certificate) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(matches!(
            check_timestamping_usage(&certificate),
            Err(TimestampError::NotTimestampingCertificate)
        ));
    }

    #[test]
    fn a_gen_time_outside_the_signer_validity_is_refused() {
        let der = certificate_with(
            vec![rcgen::ExtendedKeyUsagePurpose::TimeStamping],
            (2021, 1, 1),
        );
        let (_, certificate) = x509_parser::parse_x509_certificate(&der).unwrap();
        let inside = DateTime::parse_from_rfc3339("2020-06-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert!(check_within_validity(&certificate, inside).is_ok());
        for outside in ["2019-12-31T23:59:59Z", "2021-01-01T00:00:01Z"] {
            let outside = DateTime::parse_from_rfc3339(outside)
                .unwrap()
                .with_timezone(&Utc);
            assert!(matches!(
                check_within_validity(&certificate, outside),
                Err(TimestampError::OutsideSignerValidity { .. })
            ));
        }
    }

    #[test]
    fn a_chain_without_a_root_is_refused() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&key).unwrap();
        let issuer = rcgen::Issuer::from_params(&ca_params, &key);
        let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut leaf_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        leaf_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "leaf");
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        assert!(matches!(
            TimestampAuthorityChain::from_pem(&leaf.pem()),
            Err(TimestampChainError::NoRoot)
        ));
        assert!(TimestampAuthorityChain::from_pem(&(leaf.pem() + &ca.pem())).is_ok());
        assert!(matches!(
            TimestampAuthorityChain::from_pem("no pem here"),
            Err(TimestampChainError::Pem(_)) | Err(TimestampChainError::NoRoot)
        ));
    }

    #[test]
    fn an_oversized_response_is_refused_before_parsing() {
        let request = TimestampRequest::new(b"x").unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let root = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let chain = TimestampAuthorityChain::from_pem(&root.pem()).unwrap();
        let huge = vec![0u8; MAX_TIMESTAMP_RESPONSE_BYTES + 1];
        assert!(matches!(
            verify_response(&huge, &request, &chain),
            Err(TimestampError::TooLarge { .. })
        ));
        assert!(matches!(
            verify_response(b"\x30\x03\x02\x01", &request, &chain),
            Err(TimestampError::MalformedResponse(_))
        ));
    }
}
