//! `countersign verify`: a signed attestation checked offline against a trust bundle (or, with
//! `--bundle-history`, at its signing time against the bundle history: [`crate::bundles`]) and the
//! attestor's SPIFFE ID, by `countersign_identity`'s `AttestationVerifier`. With
//! `--bundle-history-from-nats` the history comes from the bucket instead, and an attestation the
//! attestor marked revoked is refused (`authority_revoked`); an `attestation.revoked` event given
//! as input is refused the same way. The signer policy is
//! never empty: `--attestor-id`, or the default `spiffe://<--trust-domain>/countersign/attestor`.
//!
//! When the input is an attestation event (its data, or the whole CloudEvent), the event's own
//! fields (TaskRun, verdict, reason, subjects) must also match the signed statement: they are
//! not signed themselves, so a subscriber must not trust them otherwise.
//!
//! A Sigstore bundle (`countersign export`'s `attestation.sigstore.json`, or one `cosign` reads)
//! is read as one too: its envelope and certificates are checked exactly as an event's.
//!
//! With `--timestamp-authority-chain`, the attestation must carry an RFC 3161 timestamp over its
//! signature (an event's `rfc3161Timestamps`, a bundle's `signedTimestamp`) from that authority:
//! every token it carries is verified (`countersign_identity::timestamp`), none is
//! `timestamp_missing`, a bad one `timestamp_invalid`, and the first token's genTime becomes the
//! signing time (of the SVID's validity, and of the bundle history's point-in-time check). Without
//! the flag, tokens are not read: unauthenticated, they change nothing, and the signing time is
//! the attestor's signed claim as before.

use std::io::Write;

use chrono::{DateTime, Utc};
use countersign_events::data::{
    AttestationRevoked, SignedAttestation as EventAttestation, Verdict as EventVerdict,
};
use countersign_events::{AttestationEvent, Event, EventPayload as _, EventType};
use countersign_identity::attestation::{
    AttestationTime, AttestationVerifier, AttestationVerifyError, SignedAttestation, SignerPolicy,
    VerifiedAttestation,
};
use countersign_identity::crypto::Sha256Digest;
use countersign_identity::dsse::Envelope;
use countersign_identity::intoto::Statement;
use countersign_identity::sigstore_bundle::SigstoreBundle;
use countersign_identity::spiffe_id::SpiffeId;
use countersign_identity::timestamp::{
    TimestampAuthorityChain, VerifiedTimestamp, verify_stored_response,
};
use countersign_runtime::error_chain;
use countersign_verdict::Verdict;
use countersign_verdict::attestation::{
    AttestationEventExt as _, event_timestamps, from_event_attestation,
};
use countersign_verdict::bundle_history::BundleHistory;
use countersign_verdict::reason::VerifierReasonExt as _;
use countersign_verdict::revocation::AUTHORITY_REVOKED;
use countersign_verdict::store::{AttestationStore, StoreErrorKind};
use serde_json::json;

use crate::args::{NatsArgs, VerifyArgs};
use crate::bundles;
use crate::exit::{CliError, Outcome};
use crate::inputs::{read_bundle, read_json, read_timestamp_authority_chain, trust_domain};
use crate::render::{checks_json, write_checks};

/// What the file held.
struct Input {
    /// The attestation, in the verifier's form.
    attestation: SignedAttestation,
    /// The event's data, when the file was an event.
    event: Option<AttestationEvent>,
    /// The RFC 3161 timestamp tokens it carries (DER), unverified.
    timestamps: Vec<Vec<u8>>,
}

fn bad_input(args: &VerifyArgs, reason: impl Into<String>) -> CliError {
    CliError::BadInput {
        path: args.attestation.clone(),
        expected: "a signed attestation",
        reason: reason.into(),
    }
}

fn read_input(args: &VerifyArgs) -> Result<Input, CliError> {
    let mut document = read_json(&args.attestation, "a signed attestation")?;
    if is_sigstore_bundle(&document) {
        let bundle = read_sigstore_bundle(args, &document)?;
        return Ok(Input {
            attestation: bundle.to_attestation(),
            event: None,
            timestamps: bundle.timestamps().to_vec(),
        });
    }
    // A whole structured CloudEvent: its type and data.
    let mut event_type = None;
    if document.get("specversion").is_some() {
        event_type = document
            .get("type")
            .and_then(serde_json::Value::as_str)
            .map(str::parse::<EventType>)
            .transpose()
            .map_err(|error| bad_input(args, error.to_string()))?;
        document = document
            .get_mut("data")
            .map(serde_json::Value::take)
            .ok_or_else(|| bad_input(args, "a CloudEvent without data"))?;
    }
    if document.get("attestation").is_some() {
        let event = match event_type {
            Some(event_type) => AttestationEvent::from_value(event_type, document),
            None => serde_json::from_value(document.clone())
                .map(AttestationEvent::Verified)
                .or_else(|_| serde_json::from_value(document).map(AttestationEvent::Rejected)),
        }
        .map_err(|error| bad_input(args, format!("not attestation event data: {error}")))?;
        let attestation = event
            .signed_attestation()
            .map_err(|error| bad_input(args, error.to_string()))?;
        let timestamps = event_timestamps(event.attestation())
            .map_err(|error| bad_input(args, error.to_string()))?;
        return Ok(Input {
            attestation,
            event: Some(event),
            timestamps,
        });
    }
    // A bare SignedAttestation: certificates as a list (the event contract) or one PEM text.
    let (attestation, timestamps) = if document
        .get("certificates")
        .is_some_and(serde_json::Value::is_array)
    {
        let event: EventAttestation =
            serde_json::from_value(document).map_err(|error| bad_input(args, error.to_string()))?;
        (
            from_event_attestation(&event).map_err(|error| bad_input(args, error.to_string()))?,
            event_timestamps(&event).map_err(|error| bad_input(args, error.to_string()))?,
        )
    } else {
        (
            serde_json::from_value(document).map_err(|error| bad_input(args, error.to_string()))?,
            Vec::new(),
        )
    };
    Ok(Input {
        attestation,
        event: None,
        timestamps,
    })
}

/// Every token `input` carries, verified over its signature with `chain`; the first one's
/// genTime. Refused as `timestamp_missing` or `timestamp_invalid` (kind, message).
fn verified_timestamp(
    input: &Input,
    chain: &TimestampAuthorityChain,
) -> Result<VerifiedTimestamp, (&'static str, String)> {
    let signature = timestamped_signature(&input.attestation.envelope)?;
    if input.timestamps.is_empty() {
        return Err((
            "timestamp_missing",
            "the attestation carries no RFC 3161 timestamp, and --timestamp-authority-chain \
             requires one"
                .to_owned(),
        ));
    }
    // Every token must verify; the first one's time is the signing time.
    let mut verified = input
        .timestamps
        .iter()
        .map(|token| verify_stored_response(token, signature, chain))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| ("timestamp_invalid", error_chain(&error)))?;
    Ok(verified.swap_remove(0))
}

/// The one signature a timestamp covers. An envelope with more is refused: the DSSE check
/// accepts it when any signature verifies, so a token over one (an old, genuine signature)
/// could otherwise date an envelope that verifies by another.
fn timestamped_signature(envelope: &Envelope) -> Result<&[u8], (&'static str, String)> {
    match envelope.signatures() {
        [only] => Ok(only.sig.as_slice()),
        [] => Err((
            "timestamp_missing",
            "the attestation has no signature".to_owned(),
        )),
        more => Err((
            "timestamp_invalid",
            format!(
                "the envelope has {} signatures; a timestamp covers one, so a timestamped \
                 attestation must have exactly one",
                more.len()
            ),
        )),
    }
}

/// Whether a JSON document is a Sigstore bundle (by its media type).
fn is_sigstore_bundle(document: &serde_json::Value) -> bool {
    document
        .get("mediaType")
        .and_then(serde_json::Value::as_str)
        .is_some_and(|media_type| media_type.starts_with(SIGSTORE_BUNDLE_MEDIA_TYPE_PREFIX))
}

/// The media types of Sigstore bundles start with this; only v0.3 is read, others are refused
/// by name.
const SIGSTORE_BUNDLE_MEDIA_TYPE_PREFIX: &str = "application/vnd.dev.sigstore.bundle";

fn read_sigstore_bundle(
    args: &VerifyArgs,
    document: &serde_json::Value,
) -> Result<SigstoreBundle, CliError> {
    let json = serde_json::to_vec(document).map_err(|error| bad_input(args, error.to_string()))?;
    SigstoreBundle::from_json(&json).map_err(|error| bad_input(args, error_chain(&error)))
}

fn signer_policy(args: &VerifyArgs) -> Result<SignerPolicy, CliError> {
    if !args.attestor_ids.is_empty() {
        let ids = args
            .attestor_ids
            .iter()
            .map(|id| {
                SpiffeId::new(id)
                    .map_err(|error| CliError::Usage(format!("--attestor-id {id:?}: {error}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        return SignerPolicy::any_of(ids).map_err(|error| CliError::Usage(error.to_string()));
    }
    match &args.trust_domain {
        Some(text) => {
            let trust_domain = trust_domain(text)?;
            let id = SpiffeId::from_segments(trust_domain, &["countersign", "attestor"])
                .map_err(|error| CliError::Usage(error.to_string()))?;
            Ok(SignerPolicy::exact(id))
        }
        None => Err(CliError::Usage(
            "say which attestor to trust: --attestor-id ID, or --trust-domain TD for \
             spiffe://TD/countersign/attestor"
                .to_owned(),
        )),
    }
}

fn attestation_time(args: &VerifyArgs) -> Result<AttestationTime, CliError> {
    match args.at.as_str() {
        "claimed" => Ok(AttestationTime::ClaimedVerificationTime),
        "now" => Ok(AttestationTime::At(Utc::now())),
        text => DateTime::parse_from_rfc3339(text)
            .map(|time| AttestationTime::At(time.to_utc()))
            .map_err(|error| {
                CliError::Usage(format!(
                    "--at {text:?}: not `claimed`, `now` or an RFC 3339 time: {error}"
                ))
            }),
    }
}

/// The snake_case name of why an attestation is not valid.
fn failure_kind(error: &AttestationVerifyError) -> &'static str {
    match error {
        AttestationVerifyError::Certificates(_) => "certificates_invalid",
        AttestationVerifyError::SignerSvidInvalid(_) => "signer_svid_invalid",
        AttestationVerifyError::SignerNotAllowed { .. } => "signer_not_allowed",
        AttestationVerifyError::TrustDomainUnknown { .. } => "trust_domain_unknown",
        AttestationVerifyError::ChainInvalid(_) => "chain_invalid",
        AttestationVerifyError::SignatureInvalid(_) => "signature_invalid",
        AttestationVerifyError::WrongPayloadType { .. } => "wrong_payload_type",
        AttestationVerifyError::NotAStatement(_) => "not_a_statement",
        AttestationVerifyError::WrongPredicateType { .. } => "wrong_predicate_type",
        AttestationVerifyError::PredicateInvalid(_) => "predicate_invalid",
        AttestationVerifyError::NotValidAtTime(_) => "not_valid_at_time",
    }
}

/// Where the event's unsigned fields differ from the signed statement, if they do.
fn event_mismatch(event: &AttestationEvent, verified: &VerifiedAttestation) -> Option<String> {
    let predicate = verified.predicate();
    let taskrun = event.taskrun();
    if taskrun.namespace != predicate.taskrun.namespace
        || taskrun.name != predicate.taskrun.name
        || taskrun.uid != predicate.taskrun.uid
        || taskrun.cluster != predicate.cluster
    {
        return Some("the event names another TaskRun".to_owned());
    }
    let claimed = event.verdict();
    if predicate.verdict != claimed {
        return Some(format!(
            "the event says {claimed}, the statement {}",
            predicate.verdict
        ));
    }
    match event {
        AttestationEvent::Verified(data) => {
            if data.verdict == EventVerdict::Verified {
                let mut signed: Vec<(&str, &str)> = verified
                    .statement()
                    .subjects()
                    .iter()
                    .map(|subject| {
                        (
                            subject.name.as_str(),
                            subject
                                .digest
                                .get("sha256")
                                .map(String::as_str)
                                .unwrap_or(""),
                        )
                    })
                    .collect();
                let mut claimed: Vec<(&str, &str)> = data
                    .subjects
                    .iter()
                    .map(|subject| (subject.name.as_str(), subject.sha256.as_str()))
                    .collect();
                signed.sort_unstable();
                claimed.sort_unstable();
                if signed != claimed {
                    return Some("the event's subjects are not the statement's".to_owned());
                }
            }
            None
        }
        AttestationEvent::Rejected(data) => {
            if predicate.reason_code.map(|reason| reason.to_event_reason()) != Some(data.reason) {
                return Some("the event's reason is not the statement's".to_owned());
            }
            None
        }
        // A revocation never verifies.
        AttestationEvent::Revoked(revoked) => Some(format!(
            "the attestation was revoked: {}",
            revocation_cause(revoked)
        )),
    }
}

/// Runs `verify` offline: against `--bundle` or `--bundle-history FILE`.
pub fn verify(args: &VerifyArgs, out: &mut dyn Write) -> Result<Outcome, CliError> {
    let history = args
        .bundle_history
        .as_deref()
        .map(bundles::read_history)
        .transpose()?;
    if history.is_none() && args.bundle.is_none() {
        return Err(no_trust_bundle());
    }
    let input = read_input(args)?;
    verify_with(args, input, history, None, out)
}

/// Runs `verify --bundle-history-from-nats`: the history from the `{PREFIX}_TRUST_BUNDLES`
/// bucket, and the attestor's revocation mark of the attestation's TaskRun, if any, from the
/// attestations bucket (a verified attestation that is marked is refused, `authority_revoked`).
pub async fn verify_from_nats(
    nats: &NatsArgs,
    args: &VerifyArgs,
    out: &mut dyn Write,
) -> Result<Outcome, CliError> {
    let (jetstream, subjects) = crate::nats::jetstream(nats).await?;
    let history = bundles::read_history_from_bucket(&jetstream, &subjects).await?;
    let input = read_input(args)?;
    // The TaskRun the attestation claims, unverified: only to look its mark up; the mark counts
    // only if it names the payload that then verifies.
    let revocation = match claimed_taskrun_uid(&input.attestation) {
        Some(uid) => match AttestationStore::open(&jetstream, &subjects).await {
            Ok(store) => store.revocation(&uid).await?,
            // No attestations bucket: nothing was attested here, so nothing was revoked.
            Err(error) if error.kind() == StoreErrorKind::MissingBucket => None,
            Err(error) => return Err(error.into()),
        },
        None => None,
    };
    verify_with(args, input, Some(history), revocation, out)
}

fn no_trust_bundle() -> CliError {
    CliError::Usage(
        "give the trust bundle: --bundle FILE, --bundle-history FILE or \
         --bundle-history-from-nats"
            .to_owned(),
    )
}

/// Writes the refusal of an attestation (`kind`, `message`), as JSON or as one line.
fn reject(
    args: &VerifyArgs,
    kind: &str,
    message: &str,
    out: &mut dyn Write,
) -> Result<Outcome, CliError> {
    if args.json {
        let document = json!({"valid": false, "error": kind, "message": message});
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&document).unwrap_or_default()
        )?;
    } else {
        writeln!(out, "attestation INVALID ({kind}): {message}")?;
    }
    Ok(Outcome::Rejected)
}

/// The TaskRun UID an attestation's statement names, read without checking the signature.
fn claimed_taskrun_uid(attestation: &SignedAttestation) -> Option<String> {
    let statement: Statement<serde_json::Value> =
        serde_json::from_slice(attestation.envelope.unverified_payload()).ok()?;
    statement
        .predicate()
        .pointer("/taskrun/uid")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
}

/// Why an attestation was revoked, in words: which CA, in which bundle.
fn revocation_cause(revoked: &AttestationRevoked) -> String {
    format!(
        "the CA sha256:{} that issued its signing chain was revoked in bundle {}",
        revoked.authority, revoked.sequence_number
    )
}

/// Whether `revocation` (a stored `attestation.revoked` event) revokes `verified`: it names
/// the same TaskRun and carries the same signed payload.
fn revokes(revocation: &Event<AttestationEvent>, verified: &VerifiedAttestation) -> bool {
    let Some(revoked) = revocation.data.revocation() else {
        return false;
    };
    revoked.taskrun.uid == verified.predicate().taskrun.uid
        && from_event_attestation(&revoked.attestation).is_ok_and(|attestation| {
            Sha256Digest::of(attestation.envelope.unverified_payload()) == verified.payload_digest()
        })
}

fn verify_with(
    args: &VerifyArgs,
    input: Input,
    history: Option<Result<BundleHistory, bundles::PointInTimeFailure>>,
    revocation: Option<Event<AttestationEvent>>,
    out: &mut dyn Write,
) -> Result<Outcome, CliError> {
    let policy = signer_policy(args)?;
    let time = attestation_time(args)?;
    let given_trust_domain = args.trust_domain.as_deref().map(trust_domain).transpose()?;
    let authority = args
        .timestamp_authority_chain
        .as_deref()
        .map(read_timestamp_authority_chain)
        .transpose()?;
    // The timestamp, when an authority is given: checked first, as its genTime is the time the
    // rest is checked at. Refused like any other check (not an input error).
    let timestamp = |input: &Input| match &authority {
        Some(chain) => verified_timestamp(input, chain).map(Some),
        None => Ok(None),
    };
    let mut timestamped = None;
    let (checked, signing_time) = match (history, &args.bundle) {
        (Some(history), _) => {
            let checked = timestamp(&input).and_then(|stamp| {
                let timestamped_at = stamp.as_ref().map(VerifiedTimestamp::gen_time);
                timestamped = stamp;
                history
                    .and_then(|history| {
                        bundles::verify_at_signing_time(
                            &history,
                            &input.attestation,
                            timestamped_at,
                            &policy,
                            failure_kind,
                        )
                    })
                    .map_err(|failure| (failure.kind, failure.message))
            });
            match checked {
                Ok(verified) => (
                    Ok((verified.attestation, input.event)),
                    Some(verified.chain),
                ),
                Err(failure) => (Err(failure), None),
            }
        }
        (None, Some(path)) => {
            let bundles = read_bundle(path, given_trust_domain.as_ref())?;
            let result = timestamp(&input).and_then(|stamp| {
                // The timestamp's genTime replaces the attestor's claimed time; an explicit
                // `--at` still wins.
                let time = match (&stamp, args.at.as_str()) {
                    (Some(stamp), "claimed") => AttestationTime::At(stamp.gen_time()),
                    _ => time,
                };
                timestamped = stamp;
                AttestationVerifier::new(&bundles, &policy)
                    .verify(&input.attestation, time)
                    .map(|verified| (verified, input.event))
                    .map_err(|error| (failure_kind(&error), error_chain(&error)))
            });
            (result, None)
        }
        (None, None) => return Err(no_trust_bundle()),
    };
    let (verified, event) = match checked {
        Ok(verified) => verified,
        Err((kind, message)) => return reject(args, kind, &message, out),
    };
    if let Some(mismatch) = event
        .as_ref()
        .and_then(|event| event_mismatch(event, &verified))
    {
        // An `attestation.revoked` event: its attestation was signed under a CA revoked since.
        let kind = if event
            .as_ref()
            .is_some_and(|event| event.revocation().is_some())
        {
            AUTHORITY_REVOKED
        } else {
            "event_mismatch"
        };
        return reject(args, kind, &mismatch, out);
    }

    if let Some(revocation) = revocation.filter(|revocation| revokes(revocation, &verified)) {
        let message = revocation
            .data
            .revocation()
            .map(|revoked| format!("the attestor revoked it: {}", revocation_cause(revoked)))
            .unwrap_or_default();
        return reject(args, AUTHORITY_REVOKED, &message, out);
    }

    let predicate = verified.predicate();
    let verdict = predicate.verdict.as_str();
    if args.json {
        let document = json!({
            "valid": true,
            "signer": verified.signer().to_string(),
            "signerFingerprint": verified.signer_fingerprint().to_hex(),
            "payloadSha256": verified.payload_digest().to_hex(),
            "taskrun": {
                "cluster": predicate.cluster,
                "namespace": predicate.taskrun.namespace,
                "name": predicate.taskrun.name,
                "uid": predicate.taskrun.uid,
            },
            "verdict": verdict,
            "reasonCode": predicate.reason_code.map(|reason| reason.as_str()),
            "spiffeId": predicate.spiffe_id,
            "svidFingerprint": predicate.svid_fingerprint,
            "trustBundleDigest": predicate.trust_bundle_digest,
            "times": predicate.times,
            "checks": checks_json(&predicate.checks),
            "subjects": verified.statement().subjects(),
            "signing": predicate.signing,
            "timestamp": timestamped.as_ref().map(|stamp| json!({
                "genTime": stamp.gen_time(),
            })),
            "signingBundle": signing_time.as_ref().map(|chain| json!({
                "sequenceNumber": chain.sequence_number,
                "bundleDigest": chain.bundle_digest,
                "authority": chain.authority,
            })),
        });
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&document).unwrap_or_default()
        )?;
    } else {
        writeln!(out, "attestation valid, signed by {}", verified.signer())?;
        writeln!(
            out,
            "TaskRun {}/{} (uid {}, cluster {})",
            predicate.taskrun.namespace,
            predicate.taskrun.name,
            predicate.taskrun.uid,
            predicate.cluster
        )?;
        writeln!(out, "verdict:      {verdict}")?;
        if let Some(reason) = predicate.reason_code {
            writeln!(out, "reason:       {}", reason.as_str())?;
        }
        if let Some(id) = &predicate.spiffe_id {
            writeln!(out, "results by:   {id}")?;
        }
        writeln!(
            out,
            "decided at:   {}",
            predicate
                .times
                .verified
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )?;
        writeln!(
            out,
            "payload:      sha256:{}",
            verified.payload_digest().to_hex()
        )?;
        if let Some(stamp) = &timestamped {
            writeln!(
                out,
                "timestamped:  {} (RFC 3161, by the given timestamp authority)",
                stamp
                    .gen_time()
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            )?;
        }
        if let Some(chain) = &signing_time {
            writeln!(
                out,
                "signed under: bundle {} (sha256:{}), CA sha256:{}",
                chain.sequence_number, chain.bundle_digest, chain.authority
            )?;
        }
        write_checks(out, &predicate.checks)?;
        writeln!(out, "subjects:")?;
        for subject in verified.statement().subjects() {
            let digest = subject
                .digest
                .get("sha256")
                .map(String::as_str)
                .unwrap_or("");
            writeln!(out, "  {:<24} sha256:{digest}", subject.name)?;
        }
    }
    if args.require_verified && predicate.verdict != Verdict::Verified {
        return Ok(Outcome::Rejected);
    }
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use countersign_identity::dsse::EnvelopeSignature;

    use super::*;

    fn envelope(signatures: usize) -> Envelope {
        Envelope::from_parts(
            "application/vnd.in-toto+json",
            b"{}".to_vec(),
            (0..signatures)
                .map(|index| EnvelopeSignature {
                    keyid: String::new(),
                    sig: vec![index as u8; 64],
                })
                .collect(),
        )
    }

    #[test]
    fn a_timestamp_covers_the_one_signature_and_no_envelope_with_more() {
        assert_eq!(
            timestamped_signature(&envelope(1)).map(<[u8]>::to_vec),
            Ok(vec![0; 64])
        );
        assert_eq!(
            timestamped_signature(&envelope(0)).unwrap_err().0,
            "timestamp_missing"
        );
        assert_eq!(
            timestamped_signature(&envelope(2)).unwrap_err().0,
            "timestamp_invalid"
        );
    }
}
