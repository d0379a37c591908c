//! `countersign verify`: a signed attestation checked offline against a trust bundle (or, with
//! `--bundle-history`, at its signing time against the bundle history: [`crate::bundles`]) and the
//! attestor's SPIFFE ID, by `countersign_identity`'s `AttestationVerifier`. The signer policy is
//! never empty: `--attestor-id`, or the default `spiffe://<--trust-domain>/countersign/attestor`.
//!
//! When the input is an attestation event (its data, or the whole CloudEvent), the event's own
//! fields (TaskRun, verdict, reason, subjects) must also match the signed statement: they are
//! not signed themselves, so a subscriber must not trust them otherwise.
//!
//! A Sigstore bundle (`countersign export`'s `attestation.sigstore.json`, or one `cosign` reads)
//! is read as one too: its envelope and certificates are checked exactly as an event's.

use std::io::Write;

use chrono::{DateTime, Utc};
use countersign_events::data::{SignedAttestation as EventAttestation, Verdict as EventVerdict};
use countersign_events::{AttestationEvent, EventPayload as _, EventType};
use countersign_identity::attestation::{
    AttestationTime, AttestationVerifier, AttestationVerifyError, SignedAttestation, SignerPolicy,
    VerifiedAttestation,
};
use countersign_identity::sigstore_bundle::SigstoreBundle;
use countersign_identity::spiffe_id::SpiffeId;
use countersign_runtime::error_chain;
use countersign_verdict::Verdict;
use countersign_verdict::attestation::{AttestationEventExt as _, from_event_attestation};
use countersign_verdict::reason::VerifierReasonExt as _;
use serde_json::json;

use crate::args::VerifyArgs;
use crate::bundles;
use crate::exit::{CliError, Outcome};
use crate::inputs::{read_bundle, read_json, trust_domain};
use crate::render::{checks_json, write_checks};

/// What the file held.
struct Input {
    /// The attestation, in the verifier's form.
    attestation: SignedAttestation,
    /// The event's data, when the file was an event.
    event: Option<AttestationEvent>,
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
        return Ok(Input {
            attestation: read_sigstore_bundle(args, &document)?,
            event: None,
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
        return Ok(Input {
            attestation,
            event: Some(event),
        });
    }
    // A bare SignedAttestation: certificates as a list (the event contract) or one PEM text.
    let attestation = if document
        .get("certificates")
        .is_some_and(serde_json::Value::is_array)
    {
        let event: EventAttestation =
            serde_json::from_value(document).map_err(|error| bad_input(args, error.to_string()))?;
        from_event_attestation(&event).map_err(|error| bad_input(args, error.to_string()))?
    } else {
        serde_json::from_value(document).map_err(|error| bad_input(args, error.to_string()))?
    };
    Ok(Input {
        attestation,
        event: None,
    })
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
) -> Result<SignedAttestation, CliError> {
    let json = serde_json::to_vec(document).map_err(|error| bad_input(args, error.to_string()))?;
    SigstoreBundle::from_json(&json)
        .map(|bundle| bundle.to_attestation())
        .map_err(|error| bad_input(args, error_chain(&error)))
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
    }
}

/// Runs `verify`.
pub fn verify(args: &VerifyArgs, out: &mut dyn Write) -> Result<Outcome, CliError> {
    let policy = signer_policy(args)?;
    let time = attestation_time(args)?;
    let given_trust_domain = args.trust_domain.as_deref().map(trust_domain).transpose()?;
    let (checked, signing_time) = match (&args.bundle_history, &args.bundle) {
        (Some(path), _) => {
            let history = bundles::read_history(path)?;
            let input = read_input(args)?;
            let checked = history.and_then(|history| {
                bundles::verify_at_signing_time(&history, &input.attestation, &policy, failure_kind)
            });
            match checked {
                Ok(verified) => (
                    Ok((verified.attestation, input.event)),
                    Some(verified.chain),
                ),
                Err(failure) => (Err((failure.kind, failure.message)), None),
            }
        }
        (None, Some(path)) => {
            let bundles = read_bundle(path, given_trust_domain.as_ref())?;
            let input = read_input(args)?;
            let result = AttestationVerifier::new(&bundles, &policy)
                .verify(&input.attestation, time)
                .map(|verified| (verified, input.event))
                .map_err(|error| (failure_kind(&error), error_chain(&error)));
            (result, None)
        }
        (None, None) => {
            return Err(CliError::Usage(
                "give the trust bundle: --bundle FILE or --bundle-history FILE".to_owned(),
            ));
        }
    };
    let (verified, event) = match checked {
        Ok(verified) => verified,
        Err((kind, message)) => {
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
            return Ok(Outcome::Rejected);
        }
    };
    if let Some(mismatch) = event
        .as_ref()
        .and_then(|event| event_mismatch(event, &verified))
    {
        if args.json {
            let document = json!({"valid": false, "error": "event_mismatch", "message": mismatch});
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&document).unwrap_or_default()
            )?;
        } else {
            writeln!(out, "attestation INVALID (event_mismatch): {mismatch}")?;
        }
        return Ok(Outcome::Rejected);
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
