//! Reading the input files: JSON documents, trust bundles, a timestamp authority's chain. Each is read up to a size limit, so a
//! path to `/dev/zero`, a FIFO or a huge file is refused instead of filling memory.

use std::path::Path;

use countersign_runtime::bounded_read::{ReadFileError, read_to_string_bounded};

use countersign_identity::spiffe_id::TrustDomain;
use countersign_identity::svid::{BundleError, TrustBundleSet};
use countersign_identity::timestamp::TimestampAuthorityChain;

use crate::exit::CliError;

/// The largest JSON input read (16 MiB): a TaskRun is at most 1.5 MiB in etcd, and an attestation
/// is smaller than the TaskRun it is about.
pub const MAX_JSON_BYTES: u64 = 16 * 1024 * 1024;

/// The largest trust bundle read (1 MiB): a bundle is a few CA certificates.
pub const MAX_BUNDLE_BYTES: u64 = 1024 * 1024;

/// Reads a text file of at most `limit` bytes; a larger or non-UTF-8 one is not `expected`.
fn read_text(path: &Path, limit: u64, expected: &'static str) -> Result<String, CliError> {
    read_to_string_bounded(path, limit).map_err(|error| match error {
        ReadFileError::Io { source, .. } => CliError::Read {
            path: path.to_owned(),
            source,
        },
        other => CliError::BadInput {
            path: path.to_owned(),
            expected,
            reason: other.to_string(),
        },
    })
}

/// Reads a JSON file.
pub fn read_json(path: &Path, expected: &'static str) -> Result<serde_json::Value, CliError> {
    let text = read_text(path, MAX_JSON_BYTES, expected)?;
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
    let pem = read_text(path, MAX_BUNDLE_BYTES, "a PEM trust bundle")?;
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

/// The largest timestamp authority chain read (1 MiB).
pub const MAX_CHAIN_BYTES: u64 = 1024 * 1024;

/// Reads a timestamp authority's PEM certificate chain (as its `/api/v1/timestamp/certchain`
/// serves it).
pub fn read_timestamp_authority_chain(path: &Path) -> Result<TimestampAuthorityChain, CliError> {
    const EXPECTED: &str = "a timestamp authority's PEM certificate chain";
    let pem = read_text(path, MAX_CHAIN_BYTES, EXPECTED)?;
    TimestampAuthorityChain::from_pem(&pem).map_err(|error| CliError::BadInput {
        path: path.to_owned(),
        expected: EXPECTED,
        reason: countersign_runtime::error_chain(&error),
    })
}
