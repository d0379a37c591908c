//! How verdicts, checks and attestation events are printed for people.

use std::io::Write;

use countersign_events::{AttestationEvent, Event};
use countersign_identity::tekton::CheckOutcome;
use countersign_verdict::attestation::{AttestationEventExt as _, envelope_digest};
use serde::Serialize;

/// The wire name of a serde enum value (`svid_present`, `passed`, ...).
pub fn wire_name(value: impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        Ok(other) => other.to_string(),
        Err(_) => String::from("?"),
    }
}

/// The checks as JSON objects `{"check", "outcome"}`.
pub fn checks_json(checks: &[CheckOutcome]) -> serde_json::Value {
    serde_json::Value::Array(
        checks
            .iter()
            .map(|check| {
                serde_json::json!({
                    "check": wire_name(check.check),
                    "outcome": wire_name(check.outcome),
                })
            })
            .collect(),
    )
}

/// The checks, one per line.
pub fn write_checks(out: &mut dyn Write, checks: &[CheckOutcome]) -> std::io::Result<()> {
    if checks.is_empty() {
        return Ok(());
    }
    writeln!(out, "checks:")?;
    for check in checks {
        writeln!(
            out,
            "  {:<30} {}",
            wire_name(check.check),
            wire_name(check.outcome)
        )?;
    }
    Ok(())
}

/// One line for an attestation event (for `tail`).
pub fn event_line(event: &Event<AttestationEvent>) -> String {
    let taskrun = event.data.taskrun();
    let head = format!(
        "{}  {:<10}  {}/{}  uid={}",
        event
            .data
            .attested_at()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        event.data.verdict().as_str(),
        taskrun.namespace,
        taskrun.name,
        taskrun.uid
    );
    match &event.data {
        AttestationEvent::Verified(verified) => format!(
            "{head}  results={}{}",
            verified.subjects.len(),
            verified
                .spiffe_id
                .as_deref()
                .map(|id| format!("  signer={id}"))
                .unwrap_or_default()
        ),
        AttestationEvent::Rejected(rejected) => format!(
            "{head}  reason={}{}  {}",
            rejected.reason.as_str(),
            rejected
                .step
                .as_deref()
                .map(|step| format!(" step={step}"))
                .unwrap_or_default(),
            rejected.message
        ),
        AttestationEvent::Revoked(revoked) => format!(
            "{head}  revoked: CA sha256:{} {} (bundle {})",
            revoked.authority,
            revocation_kind(revoked.how),
            revoked.sequence_number
        ),
    }
}

/// How a CA was revoked, in words.
fn revocation_kind(how: countersign_events::data::RevocationKind) -> &'static str {
    match how {
        countersign_events::data::RevocationKind::Tainted => "tainted",
        countersign_events::data::RevocationKind::Removed => "removed",
    }
}

/// The revocation of a stored attestation (for `get`, after [`write_event`]).
pub fn write_revocation(
    out: &mut dyn Write,
    revoked: &Event<AttestationEvent>,
) -> std::io::Result<()> {
    if let Some(revocation) = revoked.data.revocation() {
        writeln!(
            out,
            "REVOKED (authority_revoked): the CA sha256:{} of {} was {} in bundle {}, at {}",
            revocation.authority,
            revocation.trust_domain,
            revocation_kind(revocation.how),
            revocation.sequence_number,
            revocation
                .revoked_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )?;
    }
    Ok(())
}

/// A readable summary of an attestation event (for `get`).
pub fn write_event(out: &mut dyn Write, event: &Event<AttestationEvent>) -> std::io::Result<()> {
    let taskrun = event.data.taskrun();
    writeln!(
        out,
        "TaskRun {}/{} (uid {}, cluster {})",
        taskrun.namespace, taskrun.name, taskrun.uid, taskrun.cluster
    )?;
    writeln!(out, "verdict:     {}", event.data.verdict())?;
    writeln!(
        out,
        "attested at: {}",
        event
            .data
            .attested_at()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )?;
    writeln!(out, "event:       {} ({})", event.id, event.event_type)?;
    match &event.data {
        AttestationEvent::Verified(verified) => {
            if let Some(id) = &verified.spiffe_id {
                writeln!(out, "signed by:   {id}")?;
            }
            if let Some(fingerprint) = &verified.svid_fingerprint {
                writeln!(out, "svid:        sha256:{fingerprint}")?;
            }
            if !verified.subjects.is_empty() {
                writeln!(out, "results:")?;
                for subject in &verified.subjects {
                    writeln!(out, "  {:<24} sha256:{}", subject.name, subject.sha256)?;
                }
            }
        }
        AttestationEvent::Rejected(rejected) => {
            writeln!(out, "reason:      {}", rejected.reason.as_str())?;
            if let Some(step) = &rejected.step {
                writeln!(out, "step:        {step}")?;
            }
            if let Some(id) = &rejected.spiffe_id {
                writeln!(out, "svid id:     {id}")?;
            }
            writeln!(out, "message:     {}", rejected.message)?;
        }
        AttestationEvent::Revoked(revoked) => {
            writeln!(
                out,
                "revoked:     CA sha256:{} {} (bundle {})",
                revoked.authority,
                revocation_kind(revoked.how),
                revoked.sequence_number
            )?;
        }
    }
    let digest = envelope_digest(&event.data.attestation().envelope);
    writeln!(out, "envelope:    sha256:{}", digest.to_hex())?;
    Ok(())
}
