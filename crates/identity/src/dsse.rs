//! DSSE (Dead Simple Signing Envelope) v1: the envelope JSON and its pre-authentication
//! encoding (PAE), signed with an SVID's key and verified against a leaf certificate's key.
//!
//! Envelope JSON: `{"payloadType": ..., "payload": <base64>, "signatures": [{"keyid": ...,
//! "sig": <base64>}]}`, base64 with the standard alphabet and padding (the URL-safe alphabet is
//! accepted when reading, as the DSSE spec asks). The signature covers
//! `PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, lengths in ASCII
//! decimal.
//!
//! `keyid` is absent from what we write. The DSSE protocol makes it an optional, unauthenticated
//! hint that "MUST NOT be used for security decisions", and the common verifiers use it only to
//! skip keys: go-securesystemslib's envelope verifier (under in-toto-golang, cosign and
//! slsa-verifier) skips a signature whose keyid is set and differs from its own id of the key (a
//! hash it computes its own way), so any keyid of ours would make those verifiers refuse the
//! envelope, while an absent one verifies everywhere. Envelopes written before this carry the
//! signer's SVID fingerprint as keyid; we still read them, and [`Envelope::verify`] never looks
//! at a keyid: the key is always the caller's.

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::crypto::{SigningFailed, SvidPublicKey};
use crate::svid::SigningSvid;

/// The in-toto payload type.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// `PAE(payload_type, payload)`.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut encoded = Vec::with_capacity(payload_type.len() + payload.len() + 32);
    encoded.extend_from_slice(b"DSSEv1 ");
    encoded.extend_from_slice(payload_type.len().to_string().as_bytes());
    encoded.push(b' ');
    encoded.extend_from_slice(payload_type.as_bytes());
    encoded.push(b' ');
    encoded.extend_from_slice(payload.len().to_string().as_bytes());
    encoded.push(b' ');
    encoded.extend_from_slice(payload);
    encoded
}

/// A DSSE envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Envelope {
    payload_type: String,
    #[serde(with = "base64_bytes")]
    payload: Vec<u8>,
    signatures: Vec<EnvelopeSignature>,
}

/// One signature of an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeSignature {
    /// Unauthenticated key hint: empty in what we sign (then absent from the JSON), read from
    /// older envelopes, never used to pick or trust a key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub keyid: String,
    /// The signature bytes.
    #[serde(with = "base64_bytes")]
    pub sig: Vec<u8>,
}

/// Why an envelope did not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DsseVerifyError {
    /// The envelope has no signatures.
    #[error("envelope has no signatures")]
    NoSignatures,
    /// No signature verifies with the key.
    #[error("no envelope signature verifies with the signer's key")]
    BadSignature,
}

impl Envelope {
    /// Signs `payload` of `payload_type` with the SVID's key. The signature has no keyid (see
    /// the module docs).
    pub fn sign(
        payload_type: &str,
        payload: Vec<u8>,
        svid: &SigningSvid,
    ) -> Result<Self, SigningFailed> {
        let sig = svid.sign(&pae(payload_type, &payload))?;
        Ok(Self {
            payload_type: payload_type.to_owned(),
            payload,
            signatures: vec![EnvelopeSignature {
                keyid: String::new(),
                sig,
            }],
        })
    }

    /// Checks that at least one signature verifies over the PAE with `key`, and returns the
    /// payload that is now authenticated. Every signature is tried with `key` whatever its
    /// keyid says.
    pub fn verify(&self, key: &SvidPublicKey) -> Result<&[u8], DsseVerifyError> {
        if self.signatures.is_empty() {
            return Err(DsseVerifyError::NoSignatures);
        }
        let message = pae(&self.payload_type, &self.payload);
        if self
            .signatures
            .iter()
            .any(|signature| key.verify(&message, &signature.sig).is_ok())
        {
            Ok(&self.payload)
        } else {
            Err(DsseVerifyError::BadSignature)
        }
    }

    /// The payload type (authenticated only after [`Self::verify`]).
    pub fn payload_type(&self) -> &str {
        &self.payload_type
    }

    /// The payload bytes, **unauthenticated**; use [`Self::verify`].
    pub fn unverified_payload(&self) -> &[u8] {
        &self.payload
    }

    /// The signatures.
    pub fn signatures(&self) -> &[EnvelopeSignature] {
        &self.signatures
    }

    /// Builds an envelope from parts (for tests and tools that re-wrap a payload; an envelope
    /// built this way verifies only if its signatures are genuine).
    pub fn from_parts(
        payload_type: impl Into<String>,
        payload: Vec<u8>,
        signatures: Vec<EnvelopeSignature>,
    ) -> Self {
        Self {
            payload_type: payload_type.into(),
            payload,
            signatures,
        }
    }
}

mod base64_bytes {
    use super::*;

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        base64::engine::general_purpose::STANDARD
            .decode(&text)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(&text))
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(&text))
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&text))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_of_the_spec_example() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
    }

    #[test]
    fn envelope_json_shape() {
        let envelope = Envelope::from_parts(
            IN_TOTO_PAYLOAD_TYPE,
            b"{}".to_vec(),
            vec![EnvelopeSignature {
                keyid: String::new(),
                sig: vec![1, 2, 3],
            }],
        );
        let json = serde_json::to_value(&envelope).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "payloadType": "application/vnd.in-toto+json",
                "payload": "e30=",
                "signatures": [{"sig": "AQID"}],
            })
        );
        let back: Envelope = serde_json::from_value(json).unwrap();
        assert_eq!(back, envelope);
    }
}
