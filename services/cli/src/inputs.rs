//! Reading the input files: JSON documents, trust bundles.

use std::path::Path;

use countersign_identity::spiffe_id::TrustDomain;
use countersign_identity::svid::{BundleError, TrustBundleSet};

use crate::exit::CliError;

/// Reads a JSON file.
pub fn read_json(path: &Path, expected: &'static str) -> Result<serde_json::Value, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|error| CliError::BadInput {
        path: path.to_owned(),
        expected,
        reason: error.to_string(),
    })
}

/// A trust domain given on the command line.
pub fn trust_domain(text: &str) -> Result<TrustDomain, CliError> {
    TrustDomain::new(text)
        .map_err(|error| CliError::Usage(format!("--trust-domain {text:?}: {error}")))
}

/// Reads a PEM trust bundle: every CA into `trust_domain` when given, else each CA into the
/// trust domain its `spiffe://` URI SAN names (as SPIRE's CAs do).
pub fn read_bundle(
    path: &Path,
    trust_domain: Option<&TrustDomain>,
) -> Result<TrustBundleSet, CliError> {
    let pem = std::fs::read_to_string(path).map_err(|source| CliError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut bundles = TrustBundleSet::new();
    let added = match trust_domain {
        Some(trust_domain) => bundles.add_pem(trust_domain.clone(), &pem),
        None => bundles.add_pem_detecting_trust_domains(&pem),
    };
    added.map_err(|error| CliError::BadInput {
        path: path.to_owned(),
        expected: "a PEM trust bundle",
        reason: match error {
            BundleError::NoTrustDomain { index } => {
                format!("CA {index} names no spiffe:// trust domain; pass --trust-domain")
            }
            other => other.to_string(),
        },
    })?;
    Ok(bundles)
}
