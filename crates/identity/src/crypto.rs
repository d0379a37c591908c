//! The one crypto stack of this crate: `ring` for SHA-256 digests and for signing and verifying
//! with the key types an X509-SVID can carry.
//!
//! Algorithms are closed enums, never strings. Signing supports ECDSA P-256 (SPIRE's default
//! workload key, `ec-p256`) and RSA PKCS#1 v1.5 with SHA-256 (`rsa-2048`); verification also
//! accepts ECDSA P-384 with SHA-256 (what Go produces when it signs a SHA-256 digest with a P-384
//! key). Ed25519 is refused both ways, as in Tekton: Go's Ed25519 signer rejects a pre-hashed
//! digest, so the entrypointer can never produce such a signature.

use std::fmt;

use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use x509_parser::der_parser::der::parse_der;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::x509::SubjectPublicKeyInfo;

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest([u8; 32]);

impl Sha256Digest {
    /// Digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, as in-toto digest sets and fingerprints are written.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({})", self.to_hex())
    }
}

/// The public-key algorithms an SVID may carry that we can verify with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PublicKeyAlgorithm {
    /// ECDSA on P-256; signatures are ASN.1 DER `ECDSA-Sig-Value` over SHA-256.
    EcdsaP256,
    /// ECDSA on P-384 over a SHA-256 digest (verification only).
    EcdsaP384,
    /// RSA, PKCS#1 v1.5 signatures with SHA-256 (2048 to 8192 bit moduli).
    RsaPkcs1Sha256,
}

impl PublicKeyAlgorithm {
    /// A stable name for logs and attestations.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ecdsa-p256-sha256",
            Self::EcdsaP384 => "ecdsa-p384-sha256",
            Self::RsaPkcs1Sha256 => "rsa-pkcs1v15-sha256",
        }
    }

    fn ring_algorithm(self) -> &'static dyn signature::VerificationAlgorithm {
        match self {
            Self::EcdsaP256 => &signature::ECDSA_P256_SHA256_ASN1,
            Self::EcdsaP384 => &signature::ECDSA_P384_SHA256_ASN1,
            Self::RsaPkcs1Sha256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        }
    }
}

/// Why a certificate's public key cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PublicKeyError {
    /// The key type is one we do not verify with (Ed25519, DSA, other curves...).
    #[error("unsupported public key type {algorithm}")]
    UnsupportedKeyType {
        /// Dotted OID of the key algorithm (and curve, for EC keys).
        algorithm: String,
    },
}

/// A public key taken from an SVID, ready to verify signatures.
#[derive(Clone, PartialEq, Eq)]
pub struct SvidPublicKey {
    algorithm: PublicKeyAlgorithm,
    /// For EC keys the uncompressed point; for RSA the DER `RSAPublicKey` (both are the
    /// contents of the SPKI BIT STRING, which is what `ring` expects).
    key: Vec<u8>,
}

impl fmt::Debug for SvidPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SvidPublicKey")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// A signature did not verify. Deliberately carries no detail (as `ring` gives none).
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
#[error("signature does not verify")]
pub struct BadSignature;

impl SvidPublicKey {
    /// Reads the key of a parsed certificate's SPKI.
    pub fn from_spki(spki: &SubjectPublicKeyInfo<'_>) -> Result<Self, PublicKeyError> {
        let algorithm_oid = &spki.algorithm.algorithm;
        let algorithm = if *algorithm_oid == OID_PKCS1_RSAENCRYPTION {
            PublicKeyAlgorithm::RsaPkcs1Sha256
        } else if *algorithm_oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|parameters| parameters.as_oid().ok());
            match curve {
                Some(curve) if curve == OID_EC_P256 => PublicKeyAlgorithm::EcdsaP256,
                Some(curve) if curve == OID_NIST_EC_P384 => PublicKeyAlgorithm::EcdsaP384,
                other => {
                    return Err(PublicKeyError::UnsupportedKeyType {
                        algorithm: format!(
                            "{algorithm_oid} ({})",
                            other.map_or_else(|| "no curve".to_owned(), |oid| oid.to_id_string())
                        ),
                    });
                }
            }
        } else {
            return Err(PublicKeyError::UnsupportedKeyType {
                algorithm: algorithm_oid.to_id_string(),
            });
        };
        Ok(Self {
            algorithm,
            key: spki.subject_public_key.data.to_vec(),
        })
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> PublicKeyAlgorithm {
        self.algorithm
    }

    /// The raw key bytes (EC point or DER `RSAPublicKey`).
    pub fn key_bytes(&self) -> &[u8] {
        &self.key
    }

    /// Verifies `signature` over `message` (the message is hashed with SHA-256 here, matching
    /// Go's `Sign(rand, sha256(message), crypto.SHA256)`).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), BadSignature> {
        signature::UnparsedPublicKey::new(self.algorithm.ring_algorithm(), &self.key)
            .verify(message, signature)
            .map_err(|_| BadSignature)
    }
}

/// Why a PKCS#8 private key cannot be used for signing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SigningKeyError {
    /// A well-formed key of a type we do not sign with (Ed25519, P-384, ...).
    #[error("unsupported key type {algorithm}: only ECDSA P-256 and RSA keys can sign")]
    UnsupportedKeyType {
        /// A short name of the key type that was found.
        algorithm: String,
    },
    /// Not a PKCS#8 key `ring` can read.
    #[error("malformed PKCS#8 private key: {reason}")]
    Malformed {
        /// What `ring` reported.
        reason: String,
    },
}

/// Why signing failed (only a random-number-generator failure inside `ring`).
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
#[error("signing failed")]
pub struct SigningFailed;

/// A private key that signs as Go's `crypto.Signer` does for an SVID key: ECDSA P-256 with
/// SHA-256 and an ASN.1 DER signature, or RSA PKCS#1 v1.5 with SHA-256.
pub struct SigningKey {
    kind: SigningKeyKind,
    rng: SystemRandom,
}

enum SigningKeyKind {
    EcdsaP256(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("SigningKey")
            .field("algorithm", &self.algorithm())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Reads an unencrypted PKCS#8 DER key (the Workload API's `x509_svid_key`).
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, SigningKeyError> {
        let rng = SystemRandom::new();
        let (algorithm, curve) =
            pkcs8_algorithm(pkcs8).ok_or_else(|| SigningKeyError::Malformed {
                reason: "not a PKCS#8 PrivateKeyInfo".to_owned(),
            })?;
        let kind = if algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY.to_id_string() {
            if curve.as_deref() != Some(OID_EC_P256.to_id_string().as_str()) {
                return Err(SigningKeyError::UnsupportedKeyType {
                    algorithm: format!("EC key on curve {}", curve.unwrap_or_default()),
                });
            }
            let pair =
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8, &rng)
                    .map_err(|error| SigningKeyError::Malformed {
                    reason: error.to_string(),
                })?;
            SigningKeyKind::EcdsaP256(pair)
        } else if algorithm == OID_PKCS1_RSAENCRYPTION.to_id_string() {
            let pair =
                RsaKeyPair::from_pkcs8(pkcs8).map_err(|error| SigningKeyError::Malformed {
                    reason: error.to_string(),
                })?;
            SigningKeyKind::Rsa(pair)
        } else if algorithm == OID_SIG_ED25519.to_id_string() {
            return Err(SigningKeyError::UnsupportedKeyType {
                algorithm: "Ed25519".to_owned(),
            });
        } else {
            return Err(SigningKeyError::UnsupportedKeyType { algorithm });
        };
        Ok(Self { kind, rng })
    }

    /// The algorithm signatures are made with.
    pub fn algorithm(&self) -> PublicKeyAlgorithm {
        match self.kind {
            SigningKeyKind::EcdsaP256(_) => PublicKeyAlgorithm::EcdsaP256,
            SigningKeyKind::Rsa(_) => PublicKeyAlgorithm::RsaPkcs1Sha256,
        }
    }

    /// The public half, in the same encoding as [`SvidPublicKey::key_bytes`].
    pub fn public_key_bytes(&self) -> &[u8] {
        match &self.kind {
            SigningKeyKind::EcdsaP256(pair) => pair.public_key().as_ref(),
            SigningKeyKind::Rsa(pair) => pair.public_key().as_ref(),
        }
    }

    /// Signs `message` (SHA-256 is applied here). ECDSA signatures are randomized.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SigningFailed> {
        match &self.kind {
            SigningKeyKind::EcdsaP256(pair) => pair
                .sign(&self.rng, message)
                .map(|signature| signature.as_ref().to_vec())
                .map_err(|_| SigningFailed),
            SigningKeyKind::Rsa(pair) => {
                let mut signature = vec![0u8; pair.public().modulus_len()];
                pair.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &self.rng,
                    message,
                    &mut signature,
                )
                .map_err(|_| SigningFailed)?;
                Ok(signature)
            }
        }
    }
}

/// The key algorithm OID (and, for EC keys, the curve OID) of a PKCS#8 `PrivateKeyInfo`, as
/// dotted strings.
fn pkcs8_algorithm(pkcs8: &[u8]) -> Option<(String, Option<String>)> {
    let (_, info) = parse_der(pkcs8).ok()?;
    let fields = info.as_sequence().ok()?;
    let algorithm_identifier = fields.get(1)?.as_sequence().ok()?;
    let algorithm = algorithm_identifier.first()?.as_oid().ok()?.to_id_string();
    let curve = algorithm_identifier
        .get(1)
        .and_then(|parameters| parameters.as_oid().ok())
        .map(|oid| oid.to_id_string());
    Some((algorithm, curve))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_empty_input_is_the_known_digest() {
        assert_eq!(
            Sha256Digest::of(b"").to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn p256_key_signs_and_its_public_half_verifies() {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = SigningKey::from_pkcs8(&pair.serialize_der()).unwrap();
        assert_eq!(key.algorithm(), PublicKeyAlgorithm::EcdsaP256);
        let signature = key.sign(b"hello").unwrap();
        let public = SvidPublicKey {
            algorithm: PublicKeyAlgorithm::EcdsaP256,
            key: key.public_key_bytes().to_vec(),
        };
        assert_eq!(public.verify(b"hello", &signature), Ok(()));
        assert_eq!(public.verify(b"hellO", &signature), Err(BadSignature));
    }

    #[test]
    fn ed25519_and_p384_keys_are_refused_for_signing_with_a_typed_error() {
        for algorithm in [&rcgen::PKCS_ED25519, &rcgen::PKCS_ECDSA_P384_SHA384] {
            let pair = rcgen::KeyPair::generate_for(algorithm).unwrap();
            assert!(matches!(
                SigningKey::from_pkcs8(&pair.serialize_der()),
                Err(SigningKeyError::UnsupportedKeyType { .. })
            ));
        }
    }

    #[test]
    fn garbage_is_a_malformed_key() {
        assert!(matches!(
            SigningKey::from_pkcs8(b"not a key"),
            Err(SigningKeyError::Malformed { .. })
        ));
    }
}
