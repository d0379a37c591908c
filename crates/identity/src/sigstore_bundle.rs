//! Sigstore bundles (`application/vnd.dev.sigstore.bundle.v0.3+json`): a DSSE envelope plus the
//! signer's X.509 certificate, the form `cosign verify-blob-attestation --new-bundle-format`,
//! sigstore-go and policy-controller read; and the Sigstore trusted root that makes a SPIRE
//! trust bundle their trust anchor.
//!
//! Bundle JSON (protobuf JSON of `dev.sigstore.bundle.v1.Bundle`, bytes in base64):
//!
//! ```text
//! {"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
//!  "verificationMaterial": {"certificate": {"rawBytes": <leaf DER>}},
//!  "dsseEnvelope": {"payload": ..., "payloadType": ..., "signatures": [{"sig": ...}]}}
//! ```
//!
//! v0.3 carries one leaf `certificate`. When the signer's SVID chain has intermediates (SPIRE
//! under an upstream authority) the bundle carries `x509CertificateChain` instead (leaf, then the
//! intermediates, never a self-signed root), which sigstore-go accepts only when asked to
//! (`cosign … --allow-certificate-chain`). There are no transparency-log entries: the signer's
//! identity is its SPIFFE ID in the leaf's URI SAN, its trust the SPIRE bundle. Without a signed
//! timestamp, verifiers check the certificate at the current time (attestor SVIDs are short
//! lived, so an unmodified cosign accepts such a bundle only while its SVID is valid). When the
//! attestor has a timestamp authority, the bundle carries its RFC 3161 response (a DER
//! `TimeStampResp`, as sigstore-go reads it) over the envelope's signature in `verificationMaterial.timestampVerificationData.rfc3161Timestamps[].signedTimestamp`
//! (see [`crate::timestamp`]), and a verifier that trusts that authority checks the certificate at
//! the token's `genTime` instead.
//!
//! sigstore-go (inside cosign and policy-controller) also requires the code-signing extended key
//! usage of the signing certificate. SPIRE's X509-SVIDs carry server and client auth only, so
//! cosign refuses a bundle signed by a plain SPIRE SVID ("failed to verify leaf certificate");
//! the attestor's SVID needs code signing added (e.g. by a SPIRE credential composer) for
//! cosign to accept it. The bundle format itself is what cosign reads.
//!
//! Parsing is parse-then-check ([`SigstoreBundle::from_json`]): the size is bounded, the media
//! type must be v0.3, the content must be a DSSE envelope with exactly one signature, the
//! verification material must be certificates that parse, at most [`MAX_BUNDLE_TIMESTAMPS`]
//! RFC 3161 timestamps (DER `TimeStampResp`s) of at most
//! [`crate::timestamp::MAX_TIMESTAMP_RESPONSE_BYTES`] each are kept (unverified:
//! [`SigstoreBundle::timestamps`]), and evidence we cannot check (transparency-log
//! entries, a bare public key) is refused rather than ignored. A parsed bundle is not yet
//! verified: [`SigstoreBundle::to_attestation`] gives the form that
//! [`crate::attestation::AttestationVerifier`] checks, and
//! [`crate::timestamp::verify_stored_response`] checks a timestamp over
//! [`SigstoreBundle::signature_bytes`].

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::attestation::SignedAttestation;
use crate::dsse::Envelope;
use crate::spiffe_id::TrustDomain;
use crate::svid::{BundleError, TrustBundleSet, der_to_pem, pem_to_ders};
use crate::timestamp::TimestampAuthorityChain;

/// The media type of a Sigstore bundle v0.3 (JSON).
pub const SIGSTORE_BUNDLE_V03_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";

/// The media type of a Sigstore trusted root (JSON).
pub const SIGSTORE_TRUSTED_ROOT_MEDIA_TYPE: &str =
    "application/vnd.dev.sigstore.trustedroot+json;version=0.1";

/// The largest bundle [`SigstoreBundle::from_json`] reads.
pub const MAX_BUNDLE_BYTES: usize = 4 * 1024 * 1024;

/// The most certificates a bundle may carry (leaf and intermediates).
pub const MAX_BUNDLE_CERTIFICATES: usize = 8;

/// The most RFC 3161 timestamp tokens a bundle may carry.
pub const MAX_BUNDLE_TIMESTAMPS: usize = 4;

/// A Sigstore bundle v0.3 holding a DSSE envelope and the signer's certificates; parsed and
/// shape-checked, not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigstoreBundle {
    envelope: Envelope,
    leaf: Vec<u8>,
    intermediates: Vec<Vec<u8>>,
    /// RFC 3161 timestamps (DER `TimeStampResp`) over the envelope's signature; not verified
    /// here.
    timestamps: Vec<Vec<u8>>,
}

/// Why a bundle could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BundleBuildError {
    /// The attestation's certificates do not parse.
    #[error("attestation certificates do not parse")]
    Certificates(#[source] BundleError),
    /// The attestation carries no certificate.
    #[error("attestation carries no certificate")]
    NoCertificate,
    /// More certificates than a bundle may carry.
    #[error("{found} certificates, at most {MAX_BUNDLE_CERTIFICATES} fit in a bundle")]
    TooManyCertificates {
        /// How many there are.
        found: usize,
    },
    /// A certificate is not X.509 DER.
    #[error("certificate {index} is not an X.509 certificate")]
    CertificateInvalid {
        /// Its position, leaf first.
        index: usize,
    },
    /// A self-signed certificate after the leaf: a bundle that carries a root asks the
    /// verifier to trust what the bundle brought itself.
    #[error("certificate {index} of the chain is self-signed")]
    RootInChain {
        /// Its position, leaf first.
        index: usize,
    },
    /// The envelope does not have exactly one signature.
    #[error("a bundle's envelope needs exactly one signature, found {found}")]
    SignatureCount {
        /// How many there are.
        found: usize,
    },
    /// More than [`MAX_BUNDLE_TIMESTAMPS`] timestamps, or one larger than a token may be.
    #[error(
        "{found} timestamps (at most {MAX_BUNDLE_TIMESTAMPS}), or one over the token size bound"
    )]
    Timestamps {
        /// How many there are.
        found: usize,
    },
}

/// Why a bundle was refused when read.
#[derive(Debug, thiserror::Error)]
pub enum BundleParseError {
    /// Larger than [`MAX_BUNDLE_BYTES`].
    #[error("bundle is {size} bytes, more than {MAX_BUNDLE_BYTES}")]
    TooLarge {
        /// Its size.
        size: usize,
    },
    /// Not bundle JSON (or a field we do not know).
    #[error("not a Sigstore bundle")]
    Malformed(#[source] serde_json::Error),
    /// Another media type than v0.3.
    #[error("media type {found:?} is not {SIGSTORE_BUNDLE_V03_MEDIA_TYPE}")]
    UnsupportedMediaType {
        /// What the bundle says.
        found: String,
    },
    /// The bundle holds a message signature, or nothing, instead of a DSSE envelope.
    #[error("bundle content is not a DSSE envelope")]
    NotDsse,
    /// The verification material is a public key, or both a certificate and a chain.
    #[error("verification material is not one certificate or one certificate chain")]
    UnsupportedVerificationMaterial,
    /// Transparency-log entries, which we do not check.
    #[error("bundle carries transparency-log entries, which are not checked here")]
    UnsupportedEvidence,
    /// The bundle's certificates are unusable.
    #[error(transparent)]
    Content(#[from] BundleBuildError),
}

impl SigstoreBundle {
    /// A bundle from an envelope with one signature and the signer's chain (DER, leaf first,
    /// then intermediates; no self-signed root: a verifier takes roots from its trusted root
    /// only).
    pub fn new(envelope: Envelope, chain: Vec<Vec<u8>>) -> Result<Self, BundleBuildError> {
        if envelope.signatures().len() != 1 {
            return Err(BundleBuildError::SignatureCount {
                found: envelope.signatures().len(),
            });
        }
        if chain.len() > MAX_BUNDLE_CERTIFICATES {
            return Err(BundleBuildError::TooManyCertificates { found: chain.len() });
        }
        let mut certificates = chain.into_iter().enumerate();
        let (_, leaf) = certificates.next().ok_or(BundleBuildError::NoCertificate)?;
        is_self_signed(0, &leaf)?;
        let mut intermediates = Vec::new();
        for (index, der) in certificates {
            if is_self_signed(index, &der)? {
                return Err(BundleBuildError::RootInChain { index });
            }
            intermediates.push(der);
        }
        Ok(Self {
            envelope,
            leaf,
            intermediates,
            timestamps: Vec::new(),
        })
    }

    /// The same bundle carrying `tokens`: RFC 3161 timestamps (DER `TimeStampResp`) over the
    /// envelope's signature.
    pub fn with_timestamps(mut self, tokens: Vec<Vec<u8>>) -> Result<Self, BundleBuildError> {
        if tokens.len() > MAX_BUNDLE_TIMESTAMPS
            || tokens
                .iter()
                .any(|token| token.len() > crate::timestamp::MAX_TIMESTAMP_RESPONSE_BYTES)
        {
            return Err(BundleBuildError::Timestamps {
                found: tokens.len(),
            });
        }
        self.timestamps = tokens;
        Ok(self)
    }

    /// The bundle form of a signed attestation: its envelope and its chain, less any
    /// self-signed CA certificate after the leaf.
    pub fn from_attestation(attestation: &SignedAttestation) -> Result<Self, BundleBuildError> {
        let chain =
            pem_to_ders(&attestation.certificates).map_err(BundleBuildError::Certificates)?;
        let mut kept = Vec::with_capacity(chain.len());
        for (index, der) in chain.into_iter().enumerate() {
            if index == 0 || !is_self_signed(index, &der)? {
                kept.push(der);
            }
        }
        Self::new(attestation.envelope.clone(), kept)
    }

    /// Reads a bundle, with every check of the module docs.
    pub fn from_json(json: &[u8]) -> Result<Self, BundleParseError> {
        if json.len() > MAX_BUNDLE_BYTES {
            return Err(BundleParseError::TooLarge { size: json.len() });
        }
        let wire: wire::Bundle =
            serde_json::from_slice(json).map_err(BundleParseError::Malformed)?;
        if wire.media_type != SIGSTORE_BUNDLE_V03_MEDIA_TYPE {
            return Err(BundleParseError::UnsupportedMediaType {
                found: wire.media_type,
            });
        }
        let envelope = match (wire.dsse_envelope, wire.message_signature) {
            (Some(envelope), None) => envelope,
            _ => return Err(BundleParseError::NotDsse),
        };
        let material = wire.verification_material;
        if !material.tlog_entries.is_empty() {
            return Err(BundleParseError::UnsupportedEvidence);
        }
        let timestamps: Vec<Vec<u8>> = material
            .timestamp_verification_data
            .map(|data| {
                data.rfc3161_timestamps
                    .into_iter()
                    .map(|timestamp| timestamp.signed_timestamp)
                    .collect()
            })
            .unwrap_or_default();
        let chain = match (
            material.certificate,
            material.x509_certificate_chain,
            material.public_key,
        ) {
            (Some(certificate), None, None) => vec![certificate.raw_bytes],
            (None, Some(chain), None) => chain
                .certificates
                .into_iter()
                .map(|certificate| certificate.raw_bytes)
                .collect(),
            _ => return Err(BundleParseError::UnsupportedVerificationMaterial),
        };
        Ok(Self::new(envelope, chain)?.with_timestamps(timestamps)?)
    }

    /// The bundle JSON.
    pub fn to_json(&self) -> Vec<u8> {
        let certificate = |der: &Vec<u8>| wire::Certificate {
            raw_bytes: der.clone(),
        };
        let (certificate_field, chain_field) = if self.intermediates.is_empty() {
            (Some(certificate(&self.leaf)), None)
        } else {
            let certificates = std::iter::once(&self.leaf)
                .chain(&self.intermediates)
                .map(certificate)
                .collect();
            (None, Some(wire::CertificateChain { certificates }))
        };
        let bundle = wire::Bundle {
            media_type: SIGSTORE_BUNDLE_V03_MEDIA_TYPE.to_owned(),
            verification_material: wire::VerificationMaterial {
                certificate: certificate_field,
                x509_certificate_chain: chain_field,
                public_key: None,
                tlog_entries: Vec::new(),
                timestamp_verification_data: (!self.timestamps.is_empty()).then(|| {
                    wire::TimestampVerificationData {
                        rfc3161_timestamps: self
                            .timestamps
                            .iter()
                            .map(|token| wire::Rfc3161Timestamp {
                                signed_timestamp: token.clone(),
                            })
                            .collect(),
                    }
                }),
            },
            dsse_envelope: Some(self.envelope.clone()),
            message_signature: None,
        };
        // Serialising plain structs of strings and byte vectors cannot fail.
        serde_json::to_vec(&bundle).unwrap_or_default()
    }

    /// The envelope (its payload is unauthenticated until verified).
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The signer's leaf certificate (DER).
    pub fn leaf_der(&self) -> &[u8] {
        &self.leaf
    }

    /// Intermediate CA certificates (DER), leaf side first; usually none.
    pub fn intermediates_der(&self) -> &[Vec<u8>] {
        &self.intermediates
    }

    /// The RFC 3161 timestamps (DER `TimeStampResp`) the bundle carries, unverified.
    pub fn timestamps(&self) -> &[Vec<u8>] {
        &self.timestamps
    }

    /// The bytes a timestamp covers: the envelope's one signature (what Sigstore timestamps).
    pub fn signature_bytes(&self) -> &[u8] {
        // `new` checked there is exactly one signature.
        self.envelope
            .signatures()
            .first()
            .map(|signature| signature.sig.as_slice())
            .unwrap_or_default()
    }

    /// The attestation form, for [`crate::attestation::AttestationVerifier`].
    pub fn to_attestation(&self) -> SignedAttestation {
        SignedAttestation {
            envelope: self.envelope.clone(),
            certificates: std::iter::once(&self.leaf)
                .chain(&self.intermediates)
                .map(|der| der_to_pem(der))
                .collect(),
        }
    }
}

/// Checks that `der` (at `index` in a chain) is an X.509 certificate; returns whether it is
/// self-issued (subject = issuer: a root).
fn is_self_signed(index: usize, der: &[u8]) -> Result<bool, BundleBuildError> {
    let (rest, certificate) = x509_parser::parse_x509_certificate(der)
        .map_err(|_| BundleBuildError::CertificateInvalid { index })?;
    if !rest.is_empty() {
        return Err(BundleBuildError::CertificateInvalid { index });
    }
    Ok(certificate.subject().as_raw() == certificate.issuer().as_raw())
}

// === TrustedRoot ===

/// Why a trusted root could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TrustedRootError {
    /// The trust bundle set has no bundle for the trust domain.
    #[error("no trust bundle for trust domain {trust_domain}")]
    TrustDomainUnknown {
        /// The trust domain.
        trust_domain: TrustDomain,
    },
    /// A CA certificate does not parse.
    #[error("CA certificate {index} is not an X.509 certificate")]
    CertificateInvalid {
        /// Its position in the bundle.
        index: usize,
    },
}

/// The Sigstore trusted root (`--trusted-root` of cosign, sigstore-go's `TrustedRoot`) whose
/// certificate authorities are the X.509 authorities of one SPIFFE trust domain's bundle: one
/// authority per CA certificate, valid from the certificate's `notBefore`. No transparency
/// logs, CT logs or timestamp authorities.
pub fn trusted_root_json(
    bundles: &TrustBundleSet,
    trust_domain: &TrustDomain,
) -> Result<Vec<u8>, TrustedRootError> {
    trusted_root(bundles, trust_domain, None)
}

/// As [`trusted_root_json`], with one timestamp authority: the RFC 3161 TSA whose chain is
/// `timestamp_authority` (signer first, root last, as it serves it), so that `cosign …
/// --use-signed-timestamps` checks a bundle's signed timestamp and the signing certificate at
/// its time.
pub fn trusted_root_json_with_timestamp_authority(
    bundles: &TrustBundleSet,
    trust_domain: &TrustDomain,
    timestamp_authority: &TimestampAuthorityChain,
) -> Result<Vec<u8>, TrustedRootError> {
    trusted_root(bundles, trust_domain, Some(timestamp_authority))
}

fn trusted_root(
    bundles: &TrustBundleSet,
    trust_domain: &TrustDomain,
    timestamp_authority: Option<&TimestampAuthorityChain>,
) -> Result<Vec<u8>, TrustedRootError> {
    let authorities =
        bundles
            .authorities(trust_domain)
            .ok_or_else(|| TrustedRootError::TrustDomainUnknown {
                trust_domain: trust_domain.clone(),
            })?;
    let uri = format!("spiffe://{}", trust_domain.as_str());
    let certificate_authorities = authorities
        .iter()
        .enumerate()
        .map(|(index, der)| authority_entry(index, std::slice::from_ref(der), &uri))
        .collect::<Result<Vec<_>, TrustedRootError>>()?;
    let timestamp_authorities = timestamp_authority
        .map(|chain| {
            authority_entry(
                0,
                chain.certificates_der(),
                "countersign:timestamp-authority",
            )
        })
        .transpose()?
        .into_iter()
        .collect();
    let root = wire::TrustedRoot {
        media_type: SIGSTORE_TRUSTED_ROOT_MEDIA_TYPE.to_owned(),
        tlogs: Vec::new(),
        certificate_authorities,
        ctlogs: Vec::new(),
        timestamp_authorities,
    };
    // Serialising plain structs of strings and byte vectors cannot fail.
    Ok(serde_json::to_vec_pretty(&root).unwrap_or_default())
}

/// One authority of a trusted root: `chain` (its first certificate names it and starts its
/// validity), at `uri`.
fn authority_entry(
    index: usize,
    chain: &[Vec<u8>],
    uri: &str,
) -> Result<wire::CertificateAuthority, TrustedRootError> {
    let first = chain
        .first()
        .ok_or(TrustedRootError::CertificateInvalid { index })?;
    let (_, certificate) = x509_parser::parse_x509_certificate(first)
        .map_err(|_| TrustedRootError::CertificateInvalid { index })?;
    let not_before =
        DateTime::<Utc>::from_timestamp(certificate.validity().not_before.timestamp(), 0)
            .ok_or(TrustedRootError::CertificateInvalid { index })?;
    let common_name = certificate
        .subject()
        .iter_common_name()
        .next()
        .and_then(|name| name.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    let organization = certificate
        .subject()
        .iter_organization()
        .next()
        .and_then(|name| name.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok(wire::CertificateAuthority {
        subject: wire::DistinguishedName {
            organization,
            common_name,
        },
        uri: uri.to_owned(),
        cert_chain: wire::CertificateChain {
            certificates: chain
                .iter()
                .map(|der| wire::Certificate {
                    raw_bytes: der.clone(),
                })
                .collect(),
        },
        valid_for: wire::TimeRange {
            start: not_before.to_rfc3339_opts(SecondsFormat::Secs, true),
        },
    })
}

/// The JSON shapes (protobuf JSON: camelCase names, bytes as standard base64).
mod wire {
    use super::*;

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub(super) struct Bundle {
        pub media_type: String,
        pub verification_material: VerificationMaterial,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub dsse_envelope: Option<Envelope>,
        /// Only read, to refuse it by name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub message_signature: Option<serde_json::Value>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub(super) struct VerificationMaterial {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub certificate: Option<Certificate>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub x509_certificate_chain: Option<CertificateChain>,
        /// Only read, to refuse it by name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub public_key: Option<serde_json::Value>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub tlog_entries: Vec<serde_json::Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub timestamp_verification_data: Option<TimestampVerificationData>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub(super) struct TimestampVerificationData {
        #[serde(default)]
        pub rfc3161_timestamps: Vec<Rfc3161Timestamp>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub(super) struct Rfc3161Timestamp {
        #[serde(with = "base64_bytes")]
        pub signed_timestamp: Vec<u8>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub(super) struct Certificate {
        #[serde(with = "base64_bytes")]
        pub raw_bytes: Vec<u8>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub(super) struct CertificateChain {
        #[serde(default)]
        pub certificates: Vec<Certificate>,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub(super) struct TrustedRoot {
        pub media_type: String,
        pub tlogs: Vec<serde_json::Value>,
        pub certificate_authorities: Vec<CertificateAuthority>,
        pub ctlogs: Vec<serde_json::Value>,
        pub timestamp_authorities: Vec<CertificateAuthority>,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub(super) struct CertificateAuthority {
        pub subject: DistinguishedName,
        pub uri: String,
        pub cert_chain: CertificateChain,
        pub valid_for: TimeRange,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub(super) struct DistinguishedName {
        pub organization: String,
        pub common_name: String,
    }

    #[derive(Serialize)]
    pub(super) struct TimeRange {
        pub start: String,
    }

    mod base64_bytes {
        use super::*;

        pub(crate) fn serialize<S: Serializer>(
            bytes: &[u8],
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Vec<u8>, D::Error> {
            let text = String::deserialize(deserializer)?;
            base64::engine::general_purpose::STANDARD
                .decode(&text)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(&text))
                .map_err(serde::de::Error::custom)
        }
    }
}
