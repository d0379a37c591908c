//! Verification of one step's signed result set, in a fixed order, failing closed with a reason.
//!
//! [`ResultsVerifier::verify_step`] reads top to bottom, one check after another:
//!
//! 1. the set carries signing material (else `unsigned_results`), an `SVID` (else
//!    `svid_missing`) that parses as a certificate (else `svid_invalid`);
//! 2. the SVID has exactly one URI SAN, a SPIFFE ID with a path (else `spiffe_id_invalid`),
//!    equal to the TaskRun's expected ID (else `spiffe_id_mismatch`);
//! 3. a trust bundle exists for that ID's trust domain (else `trust_domain_unknown`); the leaf
//!    chains to the bundle by RFC 5280 path validation, using any further PEM blocks in the
//!    `SVID` value as intermediates (else `chain_invalid`); the leaf has the X509-SVID leaf
//!    profile: not a CA, critical key usage with `digitalSignature` and without
//!    `keyCertSign`/`cRLSign` (else `svid_invalid`). webpki itself refuses a CA as the end
//!    entity while building the path; that refusal is reported as `svid_invalid` too;
//! 4. the SVID was valid when the results were written (the step's finish time; else
//!    `svid_not_valid_at_signing`) and was issued after the TaskRun was created, allowing
//!    SPIRE's 10 s backdate (else `svid_predates_taskrun`: results replayed from an earlier
//!    TaskRun of the same name). The chain of step 3 is validated at the signing time when the
//!    leaf was valid then, and otherwise at a time inside the leaf's validity, so that an expired
//!    SVID is reported by this step and not as a chain failure;
//! 5. `RESULT_MANIFEST` is present (else `manifest_missing`) with its `RESULT_MANIFEST.sig`
//!    (else `signature_missing`); every name it lists has an entry (else
//!    `manifest_incomplete`); no type-1 entry lies outside the manifest other than the signing
//!    keys (else `unsigned_result`; Tekton would only check such an entry's own signature);
//! 6. every signature is present (else `signature_missing`) and valid over `canonical(value)`
//!    (else `signature_invalid`), the manifest's first.
//!
//! On success the result is a [`VerifiedResults`], the only way to hold results we vouch for.

use std::collections::BTreeMap;

use base64::Engine as _;
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::canonical::canonical;
use super::{KEY_RESULT_MANIFEST, KEY_SVID, SIGNATURE_SUFFIX, is_signing_key};
use crate::crypto::Sha256Digest;
use crate::spiffe_id::{SpiffeId, SpiffeIdBuildError, TrustDomain, taskrun_spiffe_id};
use crate::svid::{
    ChainError, SPIRE_BACKDATE, SvidError, SvidLeaf, TrustBundleSet, ValidityError, pem_to_ders,
};

/// Default allowance for clock differences between the SPIRE server, the nodes and the
/// Kubernetes API server, applied to the validity and issuance checks.
pub const DEFAULT_CLOCK_SKEW: TimeDelta = TimeDelta::seconds(5);

// === ReasonCode ===

/// Every reason a signed result set or TaskRun is rejected: these are the event contract's
/// reason codes, one per check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    /// No `SVID` entry.
    SvidMissing,
    /// The `SVID` does not parse, or is not an X509-SVID leaf (CA, key usage, key type).
    SvidInvalid,
    /// Not exactly one URI SAN, or not a SPIFFE ID with a path.
    SpiffeIdInvalid,
    /// Not the TaskRun's SPIFFE ID.
    SpiffeIdMismatch,
    /// No trust bundle for the SVID's trust domain.
    TrustDomainUnknown,
    /// The SVID does not chain to its trust domain's bundle.
    ChainInvalid,
    /// The SVID was not valid when the results were written.
    SvidNotValidAtSigning,
    /// The SVID was issued before the TaskRun was created (replay).
    SvidPredatesTaskrun,
    /// No `RESULT_MANIFEST`.
    ManifestMissing,
    /// A manifest name has no entry.
    ManifestIncomplete,
    /// A type-1 entry outside the manifest.
    UnsignedResult,
    /// A required `.sig` is missing.
    SignatureMissing,
    /// A signature does not verify.
    SignatureInvalid,
    /// The merged `status.results` differ from what the steps signed.
    ResultsMismatch,
    /// Results without any signing material.
    UnsignedResults,
    /// The results cannot be read at all.
    MalformedResults,
    /// The TaskRun's `finished` event came without its results (over the bus's max payload).
    PayloadTooLarge,
}

impl ReasonCode {
    /// The wire form (`svid_missing`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SvidMissing => "svid_missing",
            Self::SvidInvalid => "svid_invalid",
            Self::SpiffeIdInvalid => "spiffe_id_invalid",
            Self::SpiffeIdMismatch => "spiffe_id_mismatch",
            Self::TrustDomainUnknown => "trust_domain_unknown",
            Self::ChainInvalid => "chain_invalid",
            Self::SvidNotValidAtSigning => "svid_not_valid_at_signing",
            Self::SvidPredatesTaskrun => "svid_predates_taskrun",
            Self::ManifestMissing => "manifest_missing",
            Self::ManifestIncomplete => "manifest_incomplete",
            Self::UnsignedResult => "unsigned_result",
            Self::SignatureMissing => "signature_missing",
            Self::SignatureInvalid => "signature_invalid",
            Self::ResultsMismatch => "results_mismatch",
            Self::UnsignedResults => "unsigned_results",
            Self::MalformedResults => "malformed_results",
            Self::PayloadTooLarge => "payload_too_large",
        }
    }

    /// Every code.
    pub const ALL: [ReasonCode; 17] = [
        Self::SvidMissing,
        Self::SvidInvalid,
        Self::SpiffeIdInvalid,
        Self::SpiffeIdMismatch,
        Self::TrustDomainUnknown,
        Self::ChainInvalid,
        Self::SvidNotValidAtSigning,
        Self::SvidPredatesTaskrun,
        Self::ManifestMissing,
        Self::ManifestIncomplete,
        Self::UnsignedResult,
        Self::SignatureMissing,
        Self::SignatureInvalid,
        Self::ResultsMismatch,
        Self::UnsignedResults,
        Self::MalformedResults,
        Self::PayloadTooLarge,
    ];
}

// === Check ===

/// The checks, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// Signing material and an `SVID` that parses.
    SvidPresent,
    /// One URI SAN, a valid SPIFFE ID.
    SpiffeIdValid,
    /// Equal to the TaskRun's ID.
    SpiffeIdMatches,
    /// A bundle for the trust domain.
    TrustDomainKnown,
    /// Chains to the bundle.
    ChainValid,
    /// X509-SVID leaf profile.
    SvidProfile,
    /// Valid at the signing time.
    ValidAtSigning,
    /// Issued after the TaskRun was created.
    IssuedAfterTaskrunCreated,
    /// Manifest and its signature present.
    ManifestPresent,
    /// Every manifest name present.
    ManifestComplete,
    /// Nothing outside the manifest.
    NoUnsignedResults,
    /// Every signature present and valid.
    SignaturesValid,
    /// (TaskRun level) merged results equal what the steps signed.
    ResultsMatch,
}

impl Check {
    /// The per-step checks in order.
    pub const STEP_CHECKS: [Check; 12] = [
        Self::SvidPresent,
        Self::SpiffeIdValid,
        Self::SpiffeIdMatches,
        Self::TrustDomainKnown,
        Self::ChainValid,
        Self::SvidProfile,
        Self::ValidAtSigning,
        Self::IssuedAfterTaskrunCreated,
        Self::ManifestPresent,
        Self::ManifestComplete,
        Self::NoUnsignedResults,
        Self::SignaturesValid,
    ];
}

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Ran and passed.
    Passed,
    /// Ran and failed (the verdict's reason).
    Failed,
    /// Deliberately not run (policy said so).
    Skipped,
    /// Not reached because an earlier check failed.
    NotRun,
}

/// One check and its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CheckOutcome {
    /// Which check.
    pub check: Check,
    /// How it ended.
    pub outcome: Outcome,
}

/// The step checks for a rejection at `failed`: earlier checks passed (or were skipped by
/// policy), `failed` failed, later ones did not run.
pub fn checks_for_failure(failed: Check, freshness: &Freshness) -> Vec<CheckOutcome> {
    let mut reached = false;
    Check::STEP_CHECKS
        .iter()
        .map(|&check| {
            let outcome = if check == failed {
                reached = true;
                Outcome::Failed
            } else if reached {
                Outcome::NotRun
            } else if check == Check::IssuedAfterTaskrunCreated
                && matches!(freshness, Freshness::NotChecked)
            {
                Outcome::Skipped
            } else {
                Outcome::Passed
            };
            CheckOutcome { check, outcome }
        })
        .collect()
}

// === Policy ===

/// Whether the SVID must have been issued after the TaskRun was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Reject an SVID whose `notBefore` (plus SPIRE's 10 s backdate and the clock skew) is
    /// before this creation time: it belonged to an earlier TaskRun of the same name.
    IssuedAfterTaskRunCreated(DateTime<Utc>),
    /// Do not check; the check is recorded as [`Outcome::Skipped`]. Only for callers that
    /// cannot know the creation time (e.g. a bare termination message checked offline).
    NotChecked,
}

/// What a TaskRun's signed results must satisfy. There is no default: the expected SPIFFE ID
/// and the freshness rule are always stated.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultsPolicy {
    expected_id: SpiffeId,
    freshness: Freshness,
    clock_skew: TimeDelta,
}

impl ResultsPolicy {
    /// A policy for `expected_id` (the TaskRun's SPIFFE ID).
    pub fn new(expected_id: SpiffeId, freshness: Freshness) -> Self {
        Self {
            expected_id,
            freshness,
            clock_skew: DEFAULT_CLOCK_SKEW,
        }
    }

    /// The policy for TaskRun `namespace/name` in `trust_domain`, created at `created_at`.
    pub fn for_taskrun(
        trust_domain: &TrustDomain,
        namespace: &str,
        name: &str,
        created_at: DateTime<Utc>,
    ) -> Result<Self, SpiffeIdBuildError> {
        Ok(Self::new(
            taskrun_spiffe_id(trust_domain, namespace, name)?,
            Freshness::IssuedAfterTaskRunCreated(created_at),
        ))
    }

    /// Replaces the clock-skew allowance (default [`DEFAULT_CLOCK_SKEW`]).
    pub fn with_clock_skew(mut self, clock_skew: TimeDelta) -> Self {
        self.clock_skew = clock_skew;
        self
    }

    /// The expected SPIFFE ID.
    pub fn expected_id(&self) -> &SpiffeId {
        &self.expected_id
    }

    /// The freshness rule.
    pub fn freshness(&self) -> &Freshness {
        &self.freshness
    }
}

// === Errors ===

/// Why a step's signed results were rejected. [`VerifyError::reason_code`] gives the event
/// contract's reason code.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Type-1 results but no signing material at all.
    #[error("results {names:?} carry no signing material")]
    UnsignedResults {
        /// The result names.
        names: Vec<String>,
    },
    /// No `SVID` entry.
    #[error("no SVID in the signed results")]
    SvidMissing,
    /// The `SVID` is not a usable X509-SVID leaf.
    #[error("invalid SVID")]
    SvidInvalid(#[source] SvidError),
    /// The SVID's URI SANs are not exactly one valid SPIFFE ID with a path.
    #[error("SVID does not carry exactly one valid SPIFFE ID")]
    SpiffeIdInvalid(#[source] SvidError),
    /// Another identity signed.
    #[error("SVID is {found}, expected {expected}")]
    SpiffeIdMismatch {
        /// The TaskRun's ID.
        expected: SpiffeId,
        /// The SVID's ID.
        found: SpiffeId,
    },
    /// No bundle for the SVID's trust domain.
    #[error("no trust bundle for trust domain {trust_domain}")]
    TrustDomainUnknown {
        /// The SVID's trust domain.
        trust_domain: TrustDomain,
    },
    /// The SVID does not chain to its trust domain's bundle.
    #[error("SVID does not chain to the trust bundle")]
    ChainInvalid(#[source] ChainError),
    /// The SVID was not valid when the step finished.
    #[error("SVID was not valid when the results were written")]
    SvidNotValidAtSigning(#[source] ValidityError),
    /// The SVID was issued before the TaskRun existed.
    #[error("SVID issued at {not_before} predates the TaskRun created at {taskrun_created}")]
    SvidPredatesTaskRun {
        /// The SVID's `notBefore`.
        not_before: DateTime<Utc>,
        /// The TaskRun's creation time.
        taskrun_created: DateTime<Utc>,
    },
    /// No `RESULT_MANIFEST`.
    #[error("no RESULT_MANIFEST")]
    ManifestMissing,
    /// A name listed in the manifest has no entry.
    #[error("manifest lists {name} but there is no such result")]
    ManifestIncomplete {
        /// The missing name.
        name: String,
    },
    /// A type-1 entry that the manifest does not cover.
    #[error("result {name} is not in the manifest")]
    UnsignedResult {
        /// The entry's key.
        name: String,
    },
    /// `<name>.sig` is missing (`name` may be `RESULT_MANIFEST`).
    #[error("no signature for {name}")]
    SignatureMissing {
        /// The signed entry's name.
        name: String,
    },
    /// `<name>.sig` does not verify (or is not base64).
    #[error("invalid signature for {name}")]
    SignatureInvalid {
        /// The signed entry's name.
        name: String,
    },
    /// The set cannot be interpreted (for example a manifest naming a signing key).
    #[error("malformed results: {reason}")]
    MalformedResults {
        /// What is wrong.
        reason: String,
    },
}

impl VerifyError {
    /// The closed reason.
    pub fn reason(&self) -> ReasonCode {
        match self {
            Self::UnsignedResults { .. } => ReasonCode::UnsignedResults,
            Self::SvidMissing => ReasonCode::SvidMissing,
            Self::SvidInvalid(_) => ReasonCode::SvidInvalid,
            Self::SpiffeIdInvalid(_) => ReasonCode::SpiffeIdInvalid,
            Self::SpiffeIdMismatch { .. } => ReasonCode::SpiffeIdMismatch,
            Self::TrustDomainUnknown { .. } => ReasonCode::TrustDomainUnknown,
            Self::ChainInvalid(_) => ReasonCode::ChainInvalid,
            Self::SvidNotValidAtSigning(_) => ReasonCode::SvidNotValidAtSigning,
            Self::SvidPredatesTaskRun { .. } => ReasonCode::SvidPredatesTaskrun,
            Self::ManifestMissing => ReasonCode::ManifestMissing,
            Self::ManifestIncomplete { .. } => ReasonCode::ManifestIncomplete,
            Self::UnsignedResult { .. } => ReasonCode::UnsignedResult,
            Self::SignatureMissing { .. } => ReasonCode::SignatureMissing,
            Self::SignatureInvalid { .. } => ReasonCode::SignatureInvalid,
            Self::MalformedResults { .. } => ReasonCode::MalformedResults,
        }
    }

    /// The event contract's reason code (`svid_missing`, `chain_invalid`, ...).
    pub fn reason_code(&self) -> &'static str {
        self.reason().as_str()
    }

    /// The check that failed.
    pub fn check(&self) -> Check {
        match self {
            Self::UnsignedResults { .. } | Self::SvidMissing => Check::SvidPresent,
            Self::SvidInvalid(SvidError::LeafIsCa)
            | Self::SvidInvalid(SvidError::KeyUsageMissing)
            | Self::SvidInvalid(SvidError::MissingDigitalSignature)
            | Self::SvidInvalid(SvidError::SigningKeyUsage) => Check::SvidProfile,
            Self::SvidInvalid(_) => Check::SvidPresent,
            Self::SpiffeIdInvalid(_) => Check::SpiffeIdValid,
            Self::SpiffeIdMismatch { .. } => Check::SpiffeIdMatches,
            Self::TrustDomainUnknown { .. } => Check::TrustDomainKnown,
            Self::ChainInvalid(_) => Check::ChainValid,
            Self::SvidNotValidAtSigning(_) => Check::ValidAtSigning,
            Self::SvidPredatesTaskRun { .. } => Check::IssuedAfterTaskrunCreated,
            Self::ManifestMissing => Check::ManifestPresent,
            Self::SignatureMissing { name } if name == KEY_RESULT_MANIFEST => {
                Check::ManifestPresent
            }
            Self::ManifestIncomplete { .. } | Self::MalformedResults { .. } => {
                Check::ManifestComplete
            }
            Self::UnsignedResult { .. } => Check::NoUnsignedResults,
            Self::SignatureMissing { .. } | Self::SignatureInvalid { .. } => Check::SignaturesValid,
        }
    }
}

// === VerifiedResults ===

/// A verified result value: the raw text and the canonical bytes its signature covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedValue {
    /// The raw value text as written by the step.
    pub raw: String,
    /// `canonical(raw)`: what was signed.
    pub canonical: String,
}

impl VerifiedValue {
    /// SHA-256 of the canonical value: the in-toto subject digest of the result.
    pub fn digest(&self) -> Sha256Digest {
        Sha256Digest::of(self.canonical.as_bytes())
    }
}

/// A step's signed results that passed every check. Only [`ResultsVerifier::verify_step`]
/// makes one.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedResults {
    spiffe_id: SpiffeId,
    svid_fingerprint: Sha256Digest,
    svid_not_before: DateTime<Utc>,
    svid_not_after: DateTime<Utc>,
    signed_at: DateTime<Utc>,
    manifest: Vec<String>,
    results: BTreeMap<String, VerifiedValue>,
    checks: Vec<CheckOutcome>,
}

impl VerifiedResults {
    /// The signer's SPIFFE ID (equal to the expected TaskRun ID).
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// The signer's trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        self.spiffe_id.trust_domain()
    }

    /// SHA-256 of the SVID leaf's DER.
    pub fn svid_fingerprint(&self) -> Sha256Digest {
        self.svid_fingerprint
    }

    /// The SVID's `notBefore`.
    pub fn svid_not_before(&self) -> DateTime<Utc> {
        self.svid_not_before
    }

    /// The SVID's `notAfter`.
    pub fn svid_not_after(&self) -> DateTime<Utc> {
        self.svid_not_after
    }

    /// The time the results were taken to be written (the step's finish time).
    pub fn signed_at(&self) -> DateTime<Utc> {
        self.signed_at
    }

    /// The manifest's names in order.
    pub fn manifest(&self) -> &[String] {
        &self.manifest
    }

    /// The verified results by name (the manifest's names, signing keys excluded).
    pub fn results(&self) -> &BTreeMap<String, VerifiedValue> {
        &self.results
    }

    /// The checks that ran, in order, with outcomes (all passed, or skipped by policy).
    pub fn checks(&self) -> &[CheckOutcome] {
        &self.checks
    }
}

// === ResultsVerifier ===

/// Verifies signed result sets against trust bundles and a [`ResultsPolicy`].
#[derive(Debug, Clone, Copy)]
pub struct ResultsVerifier<'a> {
    bundles: &'a TrustBundleSet,
    policy: &'a ResultsPolicy,
}

impl<'a> ResultsVerifier<'a> {
    /// A verifier trusting `bundles` and enforcing `policy`.
    pub fn new(bundles: &'a TrustBundleSet, policy: &'a ResultsPolicy) -> Self {
        Self { bundles, policy }
    }

    /// The policy.
    pub fn policy(&self) -> &ResultsPolicy {
        self.policy
    }

    /// The bundles.
    pub fn bundles(&self) -> &TrustBundleSet {
        self.bundles
    }

    /// Verifies one step's type-1 entries (key → raw value; see
    /// [`TerminationMessage::task_run_results`](super::TerminationMessage::task_run_results)),
    /// written at `signed_at` (the step's `terminated.finishedAt`).
    pub fn verify_step(
        &self,
        results: &BTreeMap<String, String>,
        signed_at: DateTime<Utc>,
    ) -> Result<VerifiedResults, VerifyError> {
        let policy = self.policy;

        // 1. Signing material and an SVID that parses.
        let has_signing_material = results.keys().any(|key| is_signing_key(key));
        if !results.is_empty() && !has_signing_material {
            return Err(VerifyError::UnsignedResults {
                names: results.keys().cloned().collect(),
            });
        }
        let svid_value = results.get(KEY_SVID).ok_or(VerifyError::SvidMissing)?;
        let mut certificates = pem_to_ders(&canonical(svid_value))
            .map_err(|_| VerifyError::SvidInvalid(SvidError::NoPemCertificate))?
            .into_iter();
        let leaf_der = certificates
            .next()
            .ok_or(VerifyError::SvidInvalid(SvidError::NoPemCertificate))?;
        let intermediates: Vec<Vec<u8>> = certificates.collect();

        // 2. Exactly one valid SPIFFE ID, the TaskRun's.
        let leaf = SvidLeaf::from_der(&leaf_der).map_err(|error| match error {
            SvidError::UriSanCount { .. }
            | SvidError::InvalidSpiffeId { .. }
            | SvidError::RootSpiffeId { .. } => VerifyError::SpiffeIdInvalid(error),
            other => VerifyError::SvidInvalid(other),
        })?;
        if leaf.spiffe_id() != policy.expected_id() {
            return Err(VerifyError::SpiffeIdMismatch {
                expected: policy.expected_id().clone(),
                found: leaf.spiffe_id().clone(),
            });
        }

        // 3. A bundle for the trust domain, the leaf profile, the chain.
        let trust_domain = leaf.spiffe_id().trust_domain();
        if self.bundles.authorities(trust_domain).is_none() {
            return Err(VerifyError::TrustDomainUnknown {
                trust_domain: trust_domain.clone(),
            });
        }
        let chain_time = signed_at.clamp(leaf.not_before(), leaf.not_after());
        self.bundles
            .verify_chain(&leaf, &intermediates, chain_time)
            .map_err(|error| match error {
                // webpki refuses a CA as end entity while building the path: that is the leaf
                // profile failing, not the chain.
                ChainError::Untrusted(webpki::Error::CaUsedAsEndEntity) => {
                    VerifyError::SvidInvalid(SvidError::LeafIsCa)
                }
                other => VerifyError::ChainInvalid(other),
            })?;
        leaf.check_profile().map_err(VerifyError::SvidInvalid)?;

        // 4. Valid when written; issued after the TaskRun was created.
        leaf.check_valid_at(signed_at, policy.clock_skew)
            .map_err(VerifyError::SvidNotValidAtSigning)?;
        if let Freshness::IssuedAfterTaskRunCreated(taskrun_created) = policy.freshness
            && leaf.not_before() + SPIRE_BACKDATE + policy.clock_skew < taskrun_created
        {
            return Err(VerifyError::SvidPredatesTaskRun {
                not_before: leaf.not_before(),
                taskrun_created,
            });
        }

        // 5. The manifest: present and signed, complete, covering everything.
        let manifest_value = results
            .get(KEY_RESULT_MANIFEST)
            .ok_or(VerifyError::ManifestMissing)?;
        let manifest_signature_key = format!("{KEY_RESULT_MANIFEST}{SIGNATURE_SUFFIX}");
        if !results.contains_key(&manifest_signature_key) {
            return Err(VerifyError::SignatureMissing {
                name: KEY_RESULT_MANIFEST.to_owned(),
            });
        }
        let manifest: Vec<String> = canonical(manifest_value)
            .split(',')
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .collect();
        for name in &manifest {
            if is_signing_key(name) {
                return Err(VerifyError::MalformedResults {
                    reason: format!("manifest lists the signing key {name}"),
                });
            }
            if !results.contains_key(name) {
                return Err(VerifyError::ManifestIncomplete { name: name.clone() });
            }
        }
        let covered = |key: &str| {
            key == KEY_SVID
                || key == KEY_RESULT_MANIFEST
                || key == manifest_signature_key
                || manifest.iter().any(|name| {
                    key == name
                        || key
                            .strip_suffix(SIGNATURE_SUFFIX)
                            .is_some_and(|signed| signed == name)
                })
        };
        if let Some(name) = results.keys().find(|key| !covered(key)) {
            return Err(VerifyError::UnsignedResult { name: name.clone() });
        }

        // 6. Every signature, the manifest's first.
        let verify_signature = |name: &str| -> Result<(), VerifyError> {
            let signature_text = results
                .get(&format!("{name}{SIGNATURE_SUFFIX}"))
                .ok_or_else(|| VerifyError::SignatureMissing {
                    name: name.to_owned(),
                })?;
            let invalid = || VerifyError::SignatureInvalid {
                name: name.to_owned(),
            };
            let signature = decode_go_base64(&canonical(signature_text)).ok_or_else(invalid)?;
            let value = results.get(name).map(String::as_str).unwrap_or_default();
            leaf.public_key()
                .verify(canonical(value).as_bytes(), &signature)
                .map_err(|_| invalid())
        };
        verify_signature(KEY_RESULT_MANIFEST)?;
        let mut verified = BTreeMap::new();
        for name in &manifest {
            verify_signature(name)?;
            let raw = results.get(name).cloned().unwrap_or_default();
            let canonical = canonical(&raw);
            verified.insert(name.clone(), VerifiedValue { raw, canonical });
        }

        Ok(VerifiedResults {
            spiffe_id: leaf.spiffe_id().clone(),
            svid_fingerprint: leaf.fingerprint(),
            svid_not_before: leaf.not_before(),
            svid_not_after: leaf.not_after(),
            signed_at,
            manifest,
            results: verified,
            checks: Check::STEP_CHECKS
                .iter()
                .map(|&check| CheckOutcome {
                    check,
                    outcome: if check == Check::IssuedAfterTaskrunCreated
                        && policy.freshness == Freshness::NotChecked
                    {
                        Outcome::Skipped
                    } else {
                        Outcome::Passed
                    },
                })
                .collect(),
        })
    }
}

/// Go's `base64.StdEncoding.DecodeString`: standard alphabet, padding required, CR/LF skipped.
fn decode_go_base64(text: &str) -> Option<Vec<u8>> {
    let cleaned: String = text
        .chars()
        .filter(|character| *character != '\r' && *character != '\n')
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(cleaned)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_for_failure_marks_earlier_passed_later_not_run() {
        let checks = checks_for_failure(Check::ManifestPresent, &Freshness::NotChecked);
        let outcome = |check: Check| {
            checks
                .iter()
                .find(|outcome| outcome.check == check)
                .map(|outcome| outcome.outcome)
        };
        assert_eq!(outcome(Check::SvidPresent), Some(Outcome::Passed));
        assert_eq!(
            outcome(Check::IssuedAfterTaskrunCreated),
            Some(Outcome::Skipped)
        );
        assert_eq!(outcome(Check::ManifestPresent), Some(Outcome::Failed));
        assert_eq!(outcome(Check::SignaturesValid), Some(Outcome::NotRun));
        assert_eq!(checks.len(), Check::STEP_CHECKS.len());
    }

    #[test]
    fn every_error_maps_to_a_step_check() {
        let missing_manifest_signature = VerifyError::SignatureMissing {
            name: KEY_RESULT_MANIFEST.to_owned(),
        };
        assert_eq!(missing_manifest_signature.check(), Check::ManifestPresent);
        assert_eq!(
            missing_manifest_signature.reason_code(),
            "signature_missing"
        );
        assert_eq!(
            VerifyError::SvidInvalid(SvidError::LeafIsCa).check(),
            Check::SvidProfile
        );
        assert!(Check::STEP_CHECKS.contains(&VerifyError::SvidMissing.check()));
    }
}
