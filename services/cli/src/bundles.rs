//! The trust bundle history in the command: `countersign bundles export` writes the history the
//! registrar records (`{PREFIX}_TRUST_BUNDLES`) to a file, and `countersign verify
//! --bundle-history FILE` checks an attestation at its signing time against the bundle
//! recorded for that time, offline, with no live SPIRE ([`verify_at_signing_time`]);
//! `--bundle-history-from-nats` reads the same history from the bucket instead
//! ([`read_history_from_bucket`]):
//!
//! 1. the history file reads and agrees with itself (a different CA set under one sequence
//!    number is `history_conflict`);
//! 2. the bundle recorded for the attestation's signing time (its signed `times.verified`, or
//!    the genTime of its verified RFC 3161 timestamp with `--timestamp-authority-chain`, and the
//!    signer bundle digest of its signing context when it has one) exists
//!    (`no_bundle_at_time`);
//! 3. the attestation verifies against that bundle (the checks of `verify`, with the same
//!    reason names), its SVID valid at the signing time;
//! 4. the attestor's chain verifies at the signing time against that bundle
//!    (`chain_invalid_at_time`), and the CA that issued it was never revoked — tainted, or
//!    removed while still valid — in any later bundle (`authority_revoked`).

use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Utc};
use countersign_events::kv::{Bucket, SnapshotValue};
use countersign_identity::attestation::{
    AttestationTime, AttestationVerifier, AttestationVerifyError, SignedAttestation, SignerPolicy,
    VerifiedAttestation,
};
use countersign_identity::intoto::Statement;
use countersign_identity::svid::{SvidLeaf, pem_to_ders};
use countersign_runtime::bounded_read::{ReadFileError, read_to_string_bounded};
use countersign_runtime::error_chain;
use countersign_verdict::bundle_history::{
    BUCKET, BundleHistory, BundleHistoryFile, BundleRecord, ChainAtTime, HistoryError,
    PointInTimeError,
};
use countersign_verdict::revocation::AUTHORITY_REVOKED;

use crate::args::{BundlesExportArgs, NatsArgs};
use crate::exit::{CliError, Outcome};

/// The largest history file read (64 MiB: tens of thousands of bundles).
pub const MAX_HISTORY_BYTES: u64 = 64 * 1024 * 1024;

/// What a point-in-time check found.
#[derive(Debug)]
pub struct VerifiedAtSigningTime {
    /// The attestation, verified against the bundle of its signing time.
    pub attestation: VerifiedAttestation,
    /// Which bundle and CA.
    pub chain: ChainAtTime,
}

/// Why an attestation was refused at its signing time: a reason name and a message.
#[derive(Debug)]
pub struct PointInTimeFailure {
    /// The snake_case reason (`--json`'s `error`).
    pub kind: &'static str,
    /// What happened.
    pub message: String,
}

impl PointInTimeFailure {
    fn new(kind: &'static str, error: &dyn std::error::Error) -> PointInTimeFailure {
        PointInTimeFailure {
            kind,
            message: error_chain(error),
        }
    }
}

/// Reads a history file: `Ok(Err(_))` when it reads but disagrees with itself (a refusal with
/// its own reason), `Err(_)` when it cannot be read or is malformed.
pub fn read_history(path: &Path) -> Result<Result<BundleHistory, PointInTimeFailure>, CliError> {
    const EXPECTED: &str = "a bundle history (countersign bundles export)";
    let bad = |reason: String| CliError::BadInput {
        path: path.to_owned(),
        expected: EXPECTED,
        reason,
    };
    let text = read_to_string_bounded(path, MAX_HISTORY_BYTES).map_err(|error| match error {
        ReadFileError::Io { source, .. } => CliError::Read {
            path: path.to_owned(),
            source,
        },
        other => bad(other.to_string()),
    })?;
    let file: BundleHistoryFile =
        serde_json::from_str(&text).map_err(|error| bad(error.to_string()))?;
    match BundleHistory::from_file(file) {
        Ok(history) => Ok(Ok(history)),
        Err(error @ HistoryError::Conflict { .. }) => {
            Ok(Err(PointInTimeFailure::new("history_conflict", &error)))
        }
        Err(error) => Err(bad(error_chain(&error))),
    }
}

/// Reads the history from the `{PREFIX}_TRUST_BUNDLES` bucket (what `bundles export` writes to
/// a file), with the same outcomes as [`read_history`].
pub async fn read_history_from_bucket(
    jetstream: &async_nats::jetstream::Context,
    subjects: &countersign_events::Subjects,
) -> Result<Result<BundleHistory, PointInTimeFailure>, CliError> {
    let records = read_records(jetstream, subjects).await?;
    match BundleHistory::new(records) {
        Ok(history) => Ok(Ok(history)),
        Err(error @ HistoryError::Conflict { .. }) => {
            Ok(Err(PointInTimeFailure::new("history_conflict", &error)))
        }
        Err(error) => Err(CliError::Stream {
            stream: subjects
                .kv_bucket_name(BUCKET)
                .unwrap_or_else(|_| BUCKET.to_owned()),
            source: Box::new(error),
        }),
    }
}

/// Every record of the `{PREFIX}_TRUST_BUNDLES` bucket.
async fn read_records(
    jetstream: &async_nats::jetstream::Context,
    subjects: &countersign_events::Subjects,
) -> Result<Vec<BundleRecord>, CliError> {
    let name = subjects
        .kv_bucket_name(BUCKET)
        .map_err(|error| CliError::Usage(error.to_string()))?;
    let unavailable = |source: Box<dyn std::error::Error + Send + Sync>| CliError::Stream {
        stream: name.clone(),
        source,
    };
    let bucket: Bucket<BundleRecord> = Bucket::open(jetstream, &name)
        .await
        .map_err(|error| unavailable(Box::new(error)))?;
    Ok(bucket
        .snapshot(None)
        .await
        .map_err(|error| unavailable(Box::new(error)))?
        .into_iter()
        .filter_map(|entry| match entry.value {
            SnapshotValue::Value(record) => Some(record),
            SnapshotValue::Deleted | SnapshotValue::Corrupt(_) => None,
        })
        .collect())
}

/// The point-in-time check of the module docs (steps 2 to 4), then the results' CA (step 5: not
/// revoked then or since, as far as the history knows it). `timestamped_at` is the genTime of
/// the attestation's verified timestamp, when it has one: the signing time then, instead of the
/// attestor's own claim.
pub fn verify_at_signing_time(
    history: &BundleHistory,
    attestation: &SignedAttestation,
    timestamped_at: Option<DateTime<Utc>>,
    policy: &SignerPolicy,
    failure_kind: fn(&AttestationVerifyError) -> &'static str,
) -> Result<VerifiedAtSigningTime, PointInTimeFailure> {
    let refused =
        |error: AttestationVerifyError| PointInTimeFailure::new(failure_kind(&error), &error);
    // The signer's chain and the claimed signing time, unauthenticated until step 3 passes.
    let mut certificates = pem_to_ders(&attestation.certificates)
        .map_err(|error| refused(AttestationVerifyError::Certificates(error)))?
        .into_iter();
    let leaf_der = certificates.next().ok_or_else(|| {
        refused(AttestationVerifyError::Certificates(
            countersign_identity::svid::BundleError::Empty,
        ))
    })?;
    let intermediates: Vec<Vec<u8>> = certificates.collect();
    let leaf = SvidLeaf::from_der(&leaf_der)
        .map_err(|error| refused(AttestationVerifyError::SignerSvidInvalid(error)))?;
    let (claimed_at, claimed_digest) = claimed_signing_context(attestation)
        .ok_or_else(|| refused(AttestationVerifyError::NotAStatement(None)))?;
    let signed_at = timestamped_at.unwrap_or(claimed_at);
    let verification_time = match timestamped_at {
        Some(time) => AttestationTime::At(time),
        None => AttestationTime::ClaimedVerificationTime,
    };

    // 2. The bundle recorded for the signing time.
    let (_, bundle) = history
        .bundle_for(
            leaf.spiffe_id().trust_domain(),
            signed_at,
            claimed_digest.as_deref(),
        )
        .map_err(|error| PointInTimeFailure::new("no_bundle_at_time", &error))?;

    // 3. The attestation against it (this authenticates the signing time). A chain that does
    //    not verify against the bundle of its time is refused as such.
    let verified = AttestationVerifier::new(bundle, policy)
        .verify(attestation, verification_time)
        .map_err(|error| match error {
            AttestationVerifyError::ChainInvalid(_) => {
                PointInTimeFailure::new("chain_invalid_at_time", &error)
            }
            other => refused(other),
        })?;

    // 4. The chain at the signing time, its CA never revoked.
    let chain = history
        .verify_chain_at(&leaf, &intermediates, signed_at, claimed_digest.as_deref())
        .map_err(|error| {
            let kind = match &error {
                PointInTimeError::NoBundleAtTime { .. } => "no_bundle_at_time",
                PointInTimeError::ChainInvalidAtTime { .. } => "chain_invalid_at_time",
                PointInTimeError::AuthorityRevoked { .. } => AUTHORITY_REVOKED,
            };
            PointInTimeFailure::new(kind, &error)
        })?;

    // 5. The CA that issued the results' SVID, as the signed signing context names it, not
    //    revoked then or since: the attestor's verdict rested on that chain.
    let results_authority = verified
        .predicate()
        .signing
        .as_ref()
        .and_then(|signing| signing.results_authority.as_deref());
    if let Some(authority) = results_authority
        && let Some((sequence_number, how)) = history.revocation_since(authority, signed_at)
    {
        let error = PointInTimeError::AuthorityRevoked {
            authority: authority.to_owned(),
            sequence_number,
            how,
        };
        return Err(PointInTimeFailure::new(AUTHORITY_REVOKED, &error));
    }
    Ok(VerifiedAtSigningTime {
        attestation: verified,
        chain,
    })
}

/// The predicate's `times.verified` and `signing.signerBundleDigest`, read without checking
/// the signature (a hint to pick the bundle; the verifier checks the signature over them).
fn claimed_signing_context(
    attestation: &SignedAttestation,
) -> Option<(DateTime<Utc>, Option<String>)> {
    let statement: Statement<serde_json::Value> =
        serde_json::from_slice(attestation.envelope.unverified_payload()).ok()?;
    let predicate = statement.predicate();
    let signed_at = predicate
        .pointer("/times/verified")
        .and_then(serde_json::Value::as_str)
        .and_then(|text| DateTime::parse_from_rfc3339(text).ok())?
        .to_utc();
    let digest = predicate
        .pointer("/signing/signerBundleDigest")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned);
    Some((signed_at, digest))
}

/// Runs `bundles export`: every recorded bundle, to `--output` (or standard output).
pub async fn export(
    nats: &NatsArgs,
    args: &BundlesExportArgs,
    out: &mut dyn Write,
) -> Result<Outcome, CliError> {
    let (jetstream, subjects) = crate::nats::jetstream(nats).await?;
    let records = read_records(&jetstream, &subjects).await?;
    let count = records.len();
    let file = BundleHistoryFile::new(records);
    let json = serde_json::to_string_pretty(&file).map_err(std::io::Error::other)?;
    match &args.output {
        Some(path) => write_file(path, &json)?,
        None => writeln!(out, "{json}")?,
    }
    if args.output.is_some() {
        writeln!(out, "exported {count} trust bundles")?;
    }
    Ok(Outcome::Success)
}

fn write_file(path: &Path, json: &str) -> Result<(), CliError> {
    std::fs::write(path, format!("{json}\n")).map_err(CliError::Output)
}
