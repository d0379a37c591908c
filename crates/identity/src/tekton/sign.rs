//! Signing results exactly as Tekton's entrypointer does (`pkg/spire/sign.go`, v1.15.0), for
//! the `signer` that runs in TaskRun pods whose entrypointer does not sign.
//!
//! Given the results in declared order (only those whose file existed) and the pod's SVID, the
//! entries are, in this order and all of type 1: `SVID` (PEM of the leaf only, trailing
//! newline), `<name>.sig` per result (base64 standard alphabet with padding of the signature
//! over `canonical(value)`), `RESULT_MANIFEST` (the names joined with `,`, no spaces; empty when
//! there are no results) and `RESULT_MANIFEST.sig` (over the manifest text itself).
//!
//! Keys: SPIRE's default workload key is EC P-256, which signs ECDSA with SHA-256 and an ASN.1
//! DER signature. RSA keys (`workload_x509_svid_key_type = "rsa-2048"`) sign PKCS#1 v1.5 with
//! SHA-256, as Go does. Any other key type (Ed25519, P-384) is refused with
//! [`SigningKeyError::UnsupportedKeyType`](crate::crypto::SigningKeyError) when the
//! [`SigningSvid`] is built; Tekton cannot sign with Ed25519 either.

use std::collections::BTreeSet;

use base64::Engine as _;

use super::canonical::canonical;
use super::termination::TerminationEntry;
use super::{KEY_RESULT_MANIFEST, KEY_SVID, SIGNATURE_SUFFIX, is_signing_key};
use crate::crypto::SigningFailed;
use crate::svid::SigningSvid;

/// Why results could not be signed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignResultsError {
    /// A result is named like a signing key (`SVID`, `RESULT_MANIFEST`, `*.sig`): signing it
    /// would make the set ambiguous.
    #[error("result name {name:?} is reserved for signing material")]
    ReservedName {
        /// The name.
        name: String,
    },
    /// A result name appears twice, or contains a `,` (which would break the manifest).
    #[error("result name {name:?} is duplicated or contains ','")]
    BadName {
        /// The name.
        name: String,
    },
    /// The key failed to sign.
    #[error(transparent)]
    Signing(#[from] SigningFailed),
}

/// The signing entries Tekton's `Sign` returns for `results` (name, raw value) in declared
/// order: `SVID`, each `<name>.sig`, `RESULT_MANIFEST`, `RESULT_MANIFEST.sig`. The entrypointer
/// writes the results themselves first, then these; see [`signed_step_entries`].
pub fn sign_results(
    results: &[(String, String)],
    svid: &SigningSvid,
) -> Result<Vec<TerminationEntry>, SignResultsError> {
    let mut seen = BTreeSet::new();
    for (name, _) in results {
        if is_signing_key(name) {
            return Err(SignResultsError::ReservedName { name: name.clone() });
        }
        if name.contains(',') || !seen.insert(name.as_str()) {
            return Err(SignResultsError::BadName { name: name.clone() });
        }
    }
    let encode = |signature: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(signature);
    let mut entries = Vec::with_capacity(results.len() + 3);
    entries.push(TerminationEntry::task_run_result(
        KEY_SVID,
        svid.leaf().to_pem(),
    ));
    for (name, value) in results {
        let signature = svid.sign(canonical(value).as_bytes())?;
        entries.push(TerminationEntry::task_run_result(
            format!("{name}{SIGNATURE_SUFFIX}"),
            encode(signature),
        ));
    }
    let manifest = results
        .iter()
        .map(|(name, _)| name.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let manifest_signature = svid.sign(manifest.as_bytes())?;
    entries.push(TerminationEntry::task_run_result(
        KEY_RESULT_MANIFEST,
        manifest,
    ));
    entries.push(TerminationEntry::task_run_result(
        format!("{KEY_RESULT_MANIFEST}{SIGNATURE_SUFFIX}"),
        encode(manifest_signature),
    ));
    Ok(entries)
}

/// A step's whole signed output: the results (type 1, in order) followed by
/// [`sign_results`]' entries, as the entrypointer writes them to the termination message.
pub fn signed_step_entries(
    results: &[(String, String)],
    svid: &SigningSvid,
) -> Result<Vec<TerminationEntry>, SignResultsError> {
    let signing = sign_results(results, svid)?;
    Ok(results
        .iter()
        .map(|(name, value)| TerminationEntry::task_run_result(name, value))
        .chain(signing)
        .collect())
}
