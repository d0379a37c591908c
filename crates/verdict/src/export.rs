//! A stored attestation in the formats other tools read: its Sigstore bundle v0.3 (what
//! `cosign verify-blob-attestation` and policy-controller take), and one SLSA VSA
//! (`https://slsa.dev/verification_summary/v1`) for the TaskRun and one per artifact digest its
//! attested results name (Tekton Chains' type hints), each signed by the attestor and wrapped as a
//! Sigstore bundle too. `verificationResult` is `PASSED` only for a `verified` TaskRun.
//!
//! Everything is built from the stored attestation event (the one the attestor published) and
//! the `finished` event's results, so a replica that retries builds the same export:
//!
//! * the results bundle is the stored attestation's envelope and chain, unchanged, with its
//!   RFC 3161 timestamps when it has any;
//! * every VSA says `timeVerified` = the attestation's `attestedAt`, `inputAttestations` = the
//!   results attestation (by the SHA-256 of its DSSE payload), `policy` = [`POLICY_URI`];
//! * the TaskRun's VSA has the results attestation's subjects (the verified results by digest, or
//!   the TaskRun itself when there are none) and the resource URI [`taskrun_resource_uri`];
//! * an artifact VSA is made only for a `verified` TaskRun, and only from a result whose value's
//!   digest is one the attestation names: the `finished` event is a hint, the attestation is the
//!   source. A rejected TaskRun's results are unverified text, and a `FAILED` VSA for whatever
//!   digest they name would let any TaskRun mark any image; such a TaskRun gets only its own
//!   (`FAILED`) VSA.

use std::collections::BTreeMap;

use countersign_events::data::{
    AttestationVerified, ExportStored, ExportedArtifact, ExportedVerdict, ExportedVsa, TaskRunRef,
    TaskRunResult, VsaResult,
};
use countersign_events::{AttestationEvent, Event};
use countersign_identity::attestation::AttestationSignError;
use countersign_identity::crypto::Sha256Digest;
use countersign_identity::intoto::{Statement, Subject, Verdict};
use countersign_identity::sigstore_bundle::{BundleBuildError, SigstoreBundle};
use countersign_identity::svid::SigningSvid;
use countersign_identity::tekton::canonical;
use countersign_identity::vsa::{
    ArtifactScan, ResourceRef, VerificationResult, VerificationSummary, VsaBuildError, VsaFacts,
    VsaVerifier, artifact_vsa, find_artifacts, sign_vsa, vsa_statement,
};

use crate::attestation::{AttestationEventExt as _, FromEventError, event_timestamps};
use crate::export_store::{bundle_key, vsa_key};

/// The policy every VSA names: Countersign's TaskRun-results rule.
pub const POLICY_URI: &str = "https://countersign.dev/policy/taskrun-results/v1";

/// The level a `PASSED` VSA claims: every result was signed by the TaskRun's own SVID.
pub const RESULTS_VERIFIED_LEVEL: &str = "COUNTERSIGN_RESULTS_VERIFIED";

/// The component name in the VSA's `verifier.version`.
pub const VERIFIER_COMPONENT: &str = "countersign";

/// An export, built: the event that announces it and the bundles it names, by key.
#[derive(Debug, Clone)]
pub struct BuiltExport {
    /// The announcement (also stored as the export's manifest).
    pub event: ExportStored,
    /// `(key, Sigstore bundle)` of the results attestation, with its timestamps.
    pub results_bundle: (String, SigstoreBundle),
    /// `(key, Sigstore bundle)` of each VSA, in the event's order, without a timestamp: each is
    /// a signature of its own, which the caller timestamps when it has an authority
    /// ([`SigstoreBundle::signature_bytes`], [`SigstoreBundle::with_timestamps`]).
    pub vsa_bundles: Vec<(String, SigstoreBundle)>,
    /// The type hints that were refused (logged by the caller; never stops the export).
    pub artifacts: ArtifactScan,
}

/// Why an export could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The stored attestation's envelope or certificates do not read.
    #[error("reading the stored attestation")]
    Attestation(#[from] FromEventError),
    /// A bundle could not be made from a signed attestation.
    #[error("making a Sigstore bundle")]
    Bundle(#[from] BundleBuildError),
    /// A VSA could not be made.
    #[error("making a VSA")]
    Vsa(#[from] VsaBuildError),
    /// A VSA could not be signed.
    #[error("signing a VSA")]
    Sign(#[from] AttestationSignError),
    /// A key could not be built.
    #[error("building a key")]
    Key(#[from] countersign_events::kv::KvError),
}

impl ExportError {
    /// Whether trying again may succeed (signing, which depends on the SVID of the moment).
    pub fn is_transient(&self) -> bool {
        matches!(self, ExportError::Sign(_))
    }
}

/// The VSA resource URI of a TaskRun: `countersign:taskrun/{cluster}/{namespace}/{name}/{uid}`.
pub fn taskrun_resource_uri(taskrun: &TaskRunRef) -> String {
    format!(
        "countersign:taskrun/{}/{}/{}/{}",
        taskrun.cluster, taskrun.namespace, taskrun.name, taskrun.uid
    )
}

/// Builds the export of `attestation` (see the module docs), signing its VSAs with `svid`.
/// `results` are the `finished` event's merged results.
pub fn build_export(
    attestation: &Event<AttestationEvent>,
    results: &[TaskRunResult],
    svid: &SigningSvid,
) -> Result<BuiltExport, ExportError> {
    let data = &attestation.data;
    let taskrun = data.taskrun();
    let verdict = data.verdict();
    let signed = data.signed_attestation()?;
    // The attestation's timestamps cover its signature, so they travel in its bundle (the
    // VSAs are signatures of their own: the caller timestamps them).
    let results_bundle = SigstoreBundle::from_attestation(&signed)?
        .with_timestamps(event_timestamps(data.attestation())?)?;
    let results_key = bundle_key(&taskrun.uid)?;
    let facts = VsaFacts {
        verifier: VsaVerifier {
            id: svid.spiffe_id().to_string(),
            version: BTreeMap::from([(
                VERIFIER_COMPONENT.to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
            )]),
        },
        time_verified: data.attested_at(),
        policy: ResourceRef {
            uri: POLICY_URI.to_owned(),
            digest: BTreeMap::new(),
        },
        input_attestations: vec![ResourceRef {
            uri: format!("countersign:attestation/{}", taskrun.uid),
            digest: BTreeMap::from([(
                "sha256".to_owned(),
                Sha256Digest::of(signed.envelope.unverified_payload()).to_hex(),
            )]),
        }],
        verdict,
        verified_levels: vec![RESULTS_VERIFIED_LEVEL.to_owned()],
    };

    let mut vsa_bundles = Vec::new();
    let mut vsas = Vec::new();
    let mut add = |statement: Statement<VerificationSummary>,
                   artifact: Option<ExportedArtifact>|
     -> Result<(), ExportError> {
        let key = vsa_key(&taskrun.uid, vsas.len())?;
        let summary = statement.predicate();
        vsas.push(ExportedVsa {
            key: key.clone(),
            artifact,
            resource_uri: summary.resource_uri.clone(),
            verification_result: match summary.verification_result {
                VerificationResult::Passed => VsaResult::Passed,
                VerificationResult::Failed => VsaResult::Failed,
            },
        });
        let signed = sign_vsa(&statement, svid)?;
        vsa_bundles.push((key, SigstoreBundle::from_attestation(&signed)?));
        Ok(())
    };

    add(
        vsa_statement(
            taskrun_subjects(attestation, taskrun),
            &taskrun_resource_uri(taskrun),
            &facts,
        )?,
        None,
    )?;
    let artifacts = match &attestation.data {
        AttestationEvent::Verified(verified) if verdict == Verdict::Verified => {
            find_artifacts_in_attested(verified, results)
        }
        _ => ArtifactScan::default(),
    };
    for artifact in &artifacts.artifacts {
        add(
            artifact_vsa(artifact, &facts)?,
            Some(ExportedArtifact {
                uri: artifact.uri.clone(),
                digest: artifact.digest.to_string(),
            }),
        )?;
    }

    Ok(BuiltExport {
        event: ExportStored {
            taskrun: taskrun.clone(),
            verdict: match verdict {
                Verdict::Verified => ExportedVerdict::Verified,
                Verdict::NoResults => ExportedVerdict::NoResults,
                Verdict::Rejected => ExportedVerdict::Rejected,
            },
            bundle_key: results_key.clone(),
            vsas,
            attested_at: data.attested_at(),
        },
        results_bundle: (results_key, results_bundle),
        vsa_bundles,
        artifacts,
    })
}

/// The subjects of the results attestation: the attested results by digest, else the TaskRun.
fn taskrun_subjects(attestation: &Event<AttestationEvent>, taskrun: &TaskRunRef) -> Vec<Subject> {
    let attested: Vec<Subject> = match &attestation.data {
        AttestationEvent::Verified(verified) => verified
            .subjects
            .iter()
            .map(|subject| Subject {
                name: subject.name.clone(),
                digest: BTreeMap::from([("sha256".to_owned(), subject.sha256.clone())]),
            })
            .collect(),
        AttestationEvent::Rejected(_) | AttestationEvent::Revoked(_) => Vec::new(),
    };
    if !attested.is_empty() {
        return attested;
    }
    vec![Subject::sha256(
        format!("taskrun/{}/{}", taskrun.namespace, taskrun.name),
        Sha256Digest::of(taskrun.uid.as_bytes()),
    )]
}

/// The artifacts named by those of `results` whose value is one the attestation names (same
/// result name, same SHA-256 of the canonical value).
fn find_artifacts_in_attested(
    verified: &AttestationVerified,
    results: &[TaskRunResult],
) -> ArtifactScan {
    let attested: BTreeMap<&str, &str> = verified
        .subjects
        .iter()
        .map(|subject| (subject.name.as_str(), subject.sha256.as_str()))
        .collect();
    let raw: Vec<(String, String)> = results
        .iter()
        .filter_map(|result| {
            let text = match &result.value {
                serde_json::Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            let digest = Sha256Digest::of(canonical(&text).as_bytes()).to_hex();
            (attested.get(result.name.as_str()) == Some(&digest.as_str()))
                .then(|| (result.name.clone(), text))
        })
        .collect();
    find_artifacts(
        raw.iter()
            .map(|(name, text)| (name.as_str(), text.as_str())),
    )
}
