//! SLSA Verification Summary Attestations (`https://slsa.dev/verification_summary/v1`), and the
//! artifact digests a TaskRun's results name through Tekton Chains' type hints.
//!
//! A VSA is an in-toto Statement v1 whose subject is what was verified (an artifact digest, or
//! the TaskRun) and whose predicate says who verified it ([`VsaVerifier::id`]), when, against
//! which policy, from which input attestations, with which result: `PASSED` only for a
//! [`Verdict::Verified`] TaskRun, `FAILED` (and `verifiedLevels: ["FAILED"]`) otherwise. It is
//! signed like every attestation: a DSSE envelope with the attestor's SVID ([`sign_vsa`]).
//!
//! Type hints ([`find_artifacts`]), as Tekton Chains reads output artifacts from results:
//!
//! * `<prefix>IMAGE_URL` with `<prefix>IMAGE_DIGEST`, and `<prefix>ARTIFACT_URI` with
//!   `<prefix>ARTIFACT_DIGEST` (string results, the same prefix, possibly empty);
//! * `IMAGES`: `ref@alg:hex` entries separated by commas or newlines;
//! * `<prefix>ARTIFACT_OUTPUTS` (and `ARTIFACT_OUTPUTS`): an object result
//!   `{"uri": ..., "digest": "alg:hex"}` (Chains' optional `isBuildArtifact` is allowed).
//!
//! `*ARTIFACT_INPUTS` and `CHAINS-GIT_*` name inputs, not outputs, and are not artifacts here.
//! Results are untrusted text even when signed (a step writes them), so every hint is checked:
//! a digest is `sha256`, `sha384` or `sha512` with exactly its length of lower-case hex; a URI
//! is non-empty, at most [`MAX_URI_BYTES`], without whitespace or control characters; a URL
//! without its digest (or the reverse) is refused; at most [`MAX_ARTIFACTS`] artifacts are
//! taken. A refused hint is reported with its reason ([`ArtifactScan::refused`]), never
//! silently dropped, and never stops the other hints from being read.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::attestation::{AttestationSignError, SignedAttestation};
use crate::dsse::{Envelope, IN_TOTO_PAYLOAD_TYPE};
use crate::intoto::{NoSubjects, Statement, Subject, Verdict};
use crate::svid::SigningSvid;
use crate::tekton::{VerifiedValue, canonical};

/// The VSA predicate type.
pub const VSA_PREDICATE_TYPE: &str = "https://slsa.dev/verification_summary/v1";

/// The SLSA version the VSA follows.
pub const SLSA_VERSION: &str = "1.0";

/// The `verifiedLevels` entry of a failed verification.
pub const FAILED_LEVEL: &str = "FAILED";

/// The most artifacts taken from one TaskRun's results.
pub const MAX_ARTIFACTS: usize = 64;

/// The longest artifact URI accepted.
pub const MAX_URI_BYTES: usize = 2048;

// === Artifacts from type hints ===

/// A digest algorithm an artifact digest may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DigestAlgorithm {
    /// SHA-256 (64 hex digits).
    Sha256,
    /// SHA-384 (96 hex digits).
    Sha384,
    /// SHA-512 (128 hex digits).
    Sha512,
}

impl DigestAlgorithm {
    /// The name in `alg:hex` and in in-toto digest sets.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Self::Sha256 => 64,
            Self::Sha384 => 96,
            Self::Sha512 => 128,
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "sha256" => Some(Self::Sha256),
            "sha384" => Some(Self::Sha384),
            "sha512" => Some(Self::Sha512),
            _ => None,
        }
    }
}

/// A checked artifact digest, `alg:hex`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ArtifactDigest {
    algorithm: DigestAlgorithm,
    hex: String,
}

impl ArtifactDigest {
    /// Parses `alg:hex` (see the module docs for what is accepted).
    pub fn parse(text: &str) -> Result<Self, HintError> {
        let (name, hex) = text.split_once(':').ok_or(HintError::DigestMalformed)?;
        let algorithm =
            DigestAlgorithm::from_name(name).ok_or(HintError::DigestAlgorithmUnsupported)?;
        if hex.len() != algorithm.hex_len()
            || !hex
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
        {
            return Err(HintError::DigestMalformed);
        }
        Ok(Self {
            algorithm,
            hex: hex.to_owned(),
        })
    }

    /// The algorithm.
    pub fn algorithm(&self) -> DigestAlgorithm {
        self.algorithm
    }

    /// The lower-case hex value.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl std::fmt::Display for ArtifactDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

/// Which type hint named an artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HintKind {
    /// `<prefix>IMAGE_URL` + `<prefix>IMAGE_DIGEST`.
    ImageUrlAndDigest,
    /// `<prefix>ARTIFACT_URI` + `<prefix>ARTIFACT_DIGEST`.
    ArtifactUriAndDigest,
    /// An entry of `IMAGES`.
    Images,
    /// `<prefix>ARTIFACT_OUTPUTS`.
    ArtifactOutputs,
}

/// An output artifact a TaskRun's results name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Artifact {
    /// Where it is (an image reference without digest, a URL, a purl...).
    pub uri: String,
    /// Its digest.
    pub digest: ArtifactDigest,
    /// Which hint named it.
    pub hint: HintKind,
    /// The result (for pairs, the digest's result) that named it.
    pub result: String,
}

impl Artifact {
    /// The in-toto subject: the URI as name, the digest as digest set.
    pub fn subject(&self) -> Subject {
        Subject {
            name: self.uri.clone(),
            digest: BTreeMap::from([(
                self.digest.algorithm.as_str().to_owned(),
                self.digest.hex.clone(),
            )]),
        }
    }
}

/// Why a type hint was refused.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum HintError {
    /// The digest is not `alg:hex` with the algorithm's length of lower-case hex.
    #[error("digest is not alg:hex with lower-case hex of the algorithm's length")]
    DigestMalformed,
    /// The digest algorithm is not sha256, sha384 or sha512.
    #[error("digest algorithm is not sha256, sha384 or sha512")]
    DigestAlgorithmUnsupported,
    /// The URI is empty, too long, or has whitespace or control characters.
    #[error("uri is empty, longer than {MAX_URI_BYTES} bytes, or has whitespace")]
    UriInvalid,
    /// A URL result without its digest result, or the reverse.
    #[error("the matching URL or digest result is missing")]
    Unpaired,
    /// An `IMAGES` entry is not `ref@alg:hex`.
    #[error("IMAGES entry is not ref@alg:hex")]
    ImageEntryMalformed,
    /// An `ARTIFACT_OUTPUTS` value is not an object of strings with `uri` and `digest`.
    #[error("ARTIFACT_OUTPUTS value is not an object with uri and digest")]
    OutputObjectMalformed,
    /// More than [`MAX_ARTIFACTS`] artifacts.
    #[error("more than {MAX_ARTIFACTS} artifacts")]
    TooManyArtifacts,
}

/// A hint that was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedHint {
    /// The result's name.
    pub result: String,
    /// Why.
    pub reason: HintError,
}

/// What [`find_artifacts`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArtifactScan {
    /// The artifacts, each (uri, digest) once, in result-name order.
    pub artifacts: Vec<Artifact>,
    /// The hints that were refused.
    pub refused: Vec<RefusedHint>,
}

impl ArtifactScan {
    fn push(&mut self, artifact: Artifact) {
        if self
            .artifacts
            .iter()
            .any(|known| known.uri == artifact.uri && known.digest == artifact.digest)
        {
            return;
        }
        if self.artifacts.len() >= MAX_ARTIFACTS {
            if !self
                .refused
                .iter()
                .any(|refused| refused.reason == HintError::TooManyArtifacts)
            {
                self.refuse(&artifact.result, HintError::TooManyArtifacts);
            }
            return;
        }
        self.artifacts.push(artifact);
    }

    fn refuse(&mut self, result: &str, reason: HintError) {
        self.refused.push(RefusedHint {
            result: result.to_owned(),
            reason,
        });
    }
}

const IMAGE_URL: &str = "IMAGE_URL";
const IMAGE_DIGEST: &str = "IMAGE_DIGEST";
const ARTIFACT_URI: &str = "ARTIFACT_URI";
const ARTIFACT_DIGEST: &str = "ARTIFACT_DIGEST";
const IMAGES: &str = "IMAGES";
const ARTIFACT_OUTPUTS: &str = "ARTIFACT_OUTPUTS";

/// The output artifacts that `results` (name → raw value text, as the step wrote it) name by
/// type hints; see the module docs.
pub fn find_artifacts<'a>(results: impl IntoIterator<Item = (&'a str, &'a str)>) -> ArtifactScan {
    let results: BTreeMap<&str, &str> = results.into_iter().collect();
    let mut scan = ArtifactScan::default();
    for (&name, &raw) in &results {
        let pairs = [
            (IMAGE_DIGEST, IMAGE_URL, HintKind::ImageUrlAndDigest),
            (
                ARTIFACT_DIGEST,
                ARTIFACT_URI,
                HintKind::ArtifactUriAndDigest,
            ),
        ];
        if let Some((prefix, url_suffix, hint)) = pairs.iter().find_map(|(digest, url, hint)| {
            name.strip_suffix(digest)
                .map(|prefix| (prefix, *url, *hint))
        }) {
            let url_name = format!("{prefix}{url_suffix}");
            let Some(url) = results.get(url_name.as_str()) else {
                scan.refuse(name, HintError::Unpaired);
                continue;
            };
            match paired_artifact(url, raw, hint, name) {
                Ok(artifact) => scan.push(artifact),
                Err(reason) => scan.refuse(name, reason),
            }
        } else if let Some(prefix) = [IMAGE_URL, ARTIFACT_URI]
            .iter()
            .find_map(|url| name.strip_suffix(url).map(|prefix| (prefix, *url)))
        {
            let digest_suffix = if prefix.1 == IMAGE_URL {
                IMAGE_DIGEST
            } else {
                ARTIFACT_DIGEST
            };
            if !results.contains_key(format!("{}{digest_suffix}", prefix.0).as_str()) {
                scan.refuse(name, HintError::Unpaired);
            }
        } else if name == IMAGES {
            for entry in string_value(raw)
                .split([',', '\n'])
                .map(str::trim)
                .filter(|entry| !entry.is_empty())
            {
                match image_entry(entry, name) {
                    Ok(artifact) => scan.push(artifact),
                    Err(reason) => scan.refuse(name, reason),
                }
            }
        } else if name.ends_with(ARTIFACT_OUTPUTS) {
            match output_object(raw, name) {
                Ok(artifact) => scan.push(artifact),
                Err(reason) => scan.refuse(name, reason),
            }
        }
    }
    scan
}

/// [`find_artifacts`] over verified results (their raw text, as signed).
pub fn find_artifacts_in_verified(results: &BTreeMap<String, VerifiedValue>) -> ArtifactScan {
    find_artifacts(
        results
            .iter()
            .map(|(name, value)| (name.as_str(), value.raw.as_str())),
    )
}

/// A string result's text: what Tekton signed for it (a JSON string literal unquoted, an array
/// joined with commas), trimmed.
fn string_value(raw: &str) -> String {
    canonical(raw).trim().to_owned()
}

fn checked_uri(uri: &str) -> Result<String, HintError> {
    if uri.is_empty()
        || uri.len() > MAX_URI_BYTES
        || uri
            .chars()
            .any(|character| character.is_whitespace() || character.is_control())
    {
        return Err(HintError::UriInvalid);
    }
    Ok(uri.to_owned())
}

fn paired_artifact(
    url_raw: &str,
    digest_raw: &str,
    hint: HintKind,
    result: &str,
) -> Result<Artifact, HintError> {
    let digest = ArtifactDigest::parse(&string_value(digest_raw))?;
    let uri = checked_uri(&string_value(url_raw))?;
    Ok(Artifact {
        uri,
        digest,
        hint,
        result: result.to_owned(),
    })
}

fn image_entry(entry: &str, result: &str) -> Result<Artifact, HintError> {
    let (uri, digest) = entry
        .rsplit_once('@')
        .ok_or(HintError::ImageEntryMalformed)?;
    Ok(Artifact {
        uri: checked_uri(uri)?,
        digest: ArtifactDigest::parse(digest)?,
        hint: HintKind::Images,
        result: result.to_owned(),
    })
}

fn output_object(raw: &str, result: &str) -> Result<Artifact, HintError> {
    let object: BTreeMap<String, String> =
        serde_json::from_str(raw).map_err(|_| HintError::OutputObjectMalformed)?;
    if object
        .keys()
        .any(|key| !matches!(key.as_str(), "uri" | "digest" | "isBuildArtifact"))
    {
        return Err(HintError::OutputObjectMalformed);
    }
    let (Some(uri), Some(digest)) = (object.get("uri"), object.get("digest")) else {
        return Err(HintError::OutputObjectMalformed);
    };
    Ok(Artifact {
        uri: checked_uri(uri.trim())?,
        digest: ArtifactDigest::parse(digest.trim())?,
        hint: HintKind::ArtifactOutputs,
        result: result.to_owned(),
    })
}

// === The VSA predicate ===

/// `verificationResult`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VerificationResult {
    /// The subject passed verification.
    Passed,
    /// It did not.
    Failed,
}

impl VerificationResult {
    /// `PASSED` for a verified TaskRun only; rejected and no-results TaskRuns fail.
    pub fn for_verdict(verdict: Verdict) -> Self {
        match verdict {
            Verdict::Verified => Self::Passed,
            Verdict::Rejected | Verdict::NoResults => Self::Failed,
        }
    }
}

/// `verifier`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsaVerifier {
    /// Who verified (a URI; ours is the attestor's SPIFFE ID).
    pub id: String,
    /// Component → version.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub version: BTreeMap<String, String>,
}

/// An in-toto ResourceDescriptor with a URI and an optional digest set (`policy`,
/// `inputAttestations[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceRef {
    /// Where it is.
    pub uri: String,
    /// Algorithm → lower-case hex.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub digest: BTreeMap<String, String>,
}

/// The predicate of a VSA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VerificationSummary {
    /// Who verified.
    pub verifier: VsaVerifier,
    /// When.
    pub time_verified: DateTime<Utc>,
    /// What was verified (the artifact's URI, or the TaskRun's).
    pub resource_uri: String,
    /// The policy it was verified against.
    pub policy: ResourceRef,
    /// The attestations the verification used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub input_attestations: Vec<ResourceRef>,
    /// `PASSED` or `FAILED`.
    pub verification_result: VerificationResult,
    /// The levels verified, or `["FAILED"]`.
    pub verified_levels: Vec<String>,
    /// The SLSA version of the levels.
    pub slsa_version: String,
}

/// Why a VSA could not be built.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum VsaBuildError {
    /// A passed verification must name at least one level.
    #[error("a passed verification needs at least one verified level")]
    NoLevels,
    /// A level is not upper-case letters, digits and `_`, or is `FAILED`.
    #[error("verified level {level:?} is not an upper-case name (or is FAILED)")]
    LevelInvalid {
        /// The level.
        level: String,
    },
    /// The resource URI is not acceptable (see [`MAX_URI_BYTES`]).
    #[error("resource uri is empty, too long or has whitespace")]
    ResourceUriInvalid,
    /// No subject.
    #[error(transparent)]
    NoSubjects(#[from] NoSubjects),
}

/// What a VSA says besides its subject and resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsaFacts {
    /// Who verified.
    pub verifier: VsaVerifier,
    /// When.
    pub time_verified: DateTime<Utc>,
    /// The policy.
    pub policy: ResourceRef,
    /// The attestations used (e.g. the TaskRun-results attestation, by payload digest).
    pub input_attestations: Vec<ResourceRef>,
    /// The TaskRun's verdict.
    pub verdict: Verdict,
    /// The levels a passed verification claims (ignored when it failed).
    pub verified_levels: Vec<String>,
}

/// The VSA Statement for `subjects` (the artifact, or the TaskRun's subjects) verified as
/// `resource_uri`.
pub fn vsa_statement(
    subjects: Vec<Subject>,
    resource_uri: &str,
    facts: &VsaFacts,
) -> Result<Statement<VerificationSummary>, VsaBuildError> {
    checked_uri(resource_uri).map_err(|_| VsaBuildError::ResourceUriInvalid)?;
    let verification_result = VerificationResult::for_verdict(facts.verdict);
    let verified_levels = match verification_result {
        VerificationResult::Failed => vec![FAILED_LEVEL.to_owned()],
        VerificationResult::Passed => {
            if facts.verified_levels.is_empty() {
                return Err(VsaBuildError::NoLevels);
            }
            for level in &facts.verified_levels {
                let well_formed = !level.is_empty()
                    && level != FAILED_LEVEL
                    && level.bytes().all(|byte| {
                        byte.is_ascii_uppercase() || byte.is_ascii_digit() || byte == b'_'
                    });
                if !well_formed {
                    return Err(VsaBuildError::LevelInvalid {
                        level: level.clone(),
                    });
                }
            }
            facts.verified_levels.clone()
        }
    };
    let predicate = VerificationSummary {
        verifier: facts.verifier.clone(),
        time_verified: facts.time_verified,
        resource_uri: resource_uri.to_owned(),
        policy: facts.policy.clone(),
        input_attestations: facts.input_attestations.clone(),
        verification_result,
        verified_levels,
        slsa_version: SLSA_VERSION.to_owned(),
    };
    Ok(Statement::new(subjects, VSA_PREDICATE_TYPE, predicate)?)
}

/// The VSA of one artifact: its digest as subject, its URI as resource.
pub fn artifact_vsa(
    artifact: &Artifact,
    facts: &VsaFacts,
) -> Result<Statement<VerificationSummary>, VsaBuildError> {
    vsa_statement(vec![artifact.subject()], &artifact.uri, facts)
}

/// Signs a VSA as every attestation is signed: DSSE (in-toto payload type, no keyid) with the
/// SVID, its chain attached.
pub fn sign_vsa(
    statement: &Statement<VerificationSummary>,
    svid: &SigningSvid,
) -> Result<SignedAttestation, AttestationSignError> {
    let payload = serde_json::to_vec(statement).map_err(AttestationSignError::Serialize)?;
    Ok(SignedAttestation {
        envelope: Envelope::sign(IN_TOTO_PAYLOAD_TYPE, payload, svid)?,
        certificates: svid.chain_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA256_A: &str = "586789aa031fafc7d78a5393cdc772e0b55107ea54bb8bcf3f2cdac6c6da51ee";
    const SHA256_B: &str = "05f95b26ed10668b7183c1e2da98610e91372fa9f510046d4ce5812addad86b5";

    fn scan(results: &[(&str, &str)]) -> ArtifactScan {
        find_artifacts(results.iter().copied())
    }

    fn only(scan: &ArtifactScan) -> &Artifact {
        assert!(scan.refused.is_empty(), "{:?}", scan.refused);
        assert_eq!(scan.artifacts.len(), 1, "{:?}", scan.artifacts);
        &scan.artifacts[0]
    }

    #[test]
    fn image_url_and_digest_pair() {
        let digest = format!("sha256:{SHA256_A}\n");
        let found = scan(&[("IMAGE_URL", "gcr.io/foo/bar\n"), ("IMAGE_DIGEST", &digest)]);
        let artifact = only(&found);
        assert_eq!(artifact.uri, "gcr.io/foo/bar");
        assert_eq!(artifact.digest.algorithm(), DigestAlgorithm::Sha256);
        assert_eq!(artifact.digest.hex(), SHA256_A);
        assert_eq!(artifact.hint, HintKind::ImageUrlAndDigest);
        assert_eq!(artifact.result, "IMAGE_DIGEST");
    }

    #[test]
    fn prefixed_pairs_match_by_prefix() {
        let a = format!("sha256:{SHA256_A}");
        let b = format!("sha256:{SHA256_B}");
        let found = scan(&[
            ("first-IMAGE_URL", "r/first"),
            ("first-IMAGE_DIGEST", &a),
            ("second-IMAGE_URL", "r/second"),
            ("second-IMAGE_DIGEST", &b),
        ]);
        assert!(found.refused.is_empty());
        let pairs: Vec<(&str, &str)> = found
            .artifacts
            .iter()
            .map(|artifact| (artifact.uri.as_str(), artifact.digest.hex()))
            .collect();
        assert_eq!(pairs, vec![("r/first", SHA256_A), ("r/second", SHA256_B)]);
    }

    #[test]
    fn artifact_uri_and_digest_pair() {
        let digest = format!("sha512:{}", "ab".repeat(64));
        let found = scan(&[
            ("bin_ARTIFACT_URI", "https://example.com/app.tar.gz"),
            ("bin_ARTIFACT_DIGEST", &digest),
        ]);
        let artifact = only(&found);
        assert_eq!(artifact.hint, HintKind::ArtifactUriAndDigest);
        assert_eq!(artifact.digest.algorithm(), DigestAlgorithm::Sha512);
    }

    #[test]
    fn images_list_by_commas_and_newlines() {
        let images =
            format!("img1@sha256:{SHA256_A}, img2@sha256:{SHA256_B}\nimg3@sha256:{SHA256_A}\n");
        let found = scan(&[("IMAGES", &images)]);
        assert!(found.refused.is_empty());
        let uris: Vec<&str> = found.artifacts.iter().map(|a| a.uri.as_str()).collect();
        assert_eq!(uris, vec!["img1", "img2", "img3"]);
        assert!(found.artifacts.iter().all(|a| a.hint == HintKind::Images));
    }

    #[test]
    fn images_as_an_array_result() {
        let images = format!(r#"["reg:5000/img@sha256:{SHA256_A}"]"#);
        let found = scan(&[("IMAGES", &images)]);
        assert_eq!(only(&found).uri, "reg:5000/img");
    }

    #[test]
    fn artifact_outputs_object() {
        let object = format!(
            r#"{{"uri":"gcr.io/foo/img2","digest":"sha256:{SHA256_B}","isBuildArtifact":"true"}}"#
        );
        let found = scan(&[("second-ARTIFACT_OUTPUTS", &object)]);
        let artifact = only(&found);
        assert_eq!(artifact.uri, "gcr.io/foo/img2");
        assert_eq!(artifact.hint, HintKind::ArtifactOutputs);
        let unprefixed = scan(&[("ARTIFACT_OUTPUTS", &object)]);
        assert_eq!(only(&unprefixed).uri, "gcr.io/foo/img2");
    }

    #[test]
    fn inputs_and_ordinary_results_are_not_artifacts() {
        let object = format!(r#"{{"uri":"https://github.com/x/y","digest":"sha256:{SHA256_A}"}}"#);
        let found = scan(&[
            ("source_ARTIFACT_INPUTS", &object),
            (
                "CHAINS-GIT_COMMIT",
                "7f2f46e1b97df36b2b82d1b1d87c81b8b3d21601",
            ),
            ("commit", "abc"),
        ]);
        assert_eq!(found, ArtifactScan::default());
    }

    #[test]
    fn the_same_artifact_twice_is_one() {
        let digest = format!("sha256:{SHA256_A}");
        let images = format!("gcr.io/foo/bar@{digest}");
        let found = scan(&[
            ("IMAGE_URL", "gcr.io/foo/bar"),
            ("IMAGE_DIGEST", &digest),
            ("IMAGES", &images),
        ]);
        assert_eq!(found.artifacts.len(), 1);
    }

    #[test]
    fn bad_digests_are_refused_with_their_reason() {
        let cases: Vec<(String, HintError)> = vec![
            ("sha256:ABC".into(), HintError::DigestMalformed),
            (
                format!("sha256:{}", SHA256_A.to_uppercase()),
                HintError::DigestMalformed,
            ),
            (
                format!("sha256:{}", &SHA256_A[1..]),
                HintError::DigestMalformed,
            ),
            (format!("sha256:{SHA256_A}00"), HintError::DigestMalformed),
            (
                format!("sha256:{}g", &SHA256_A[1..]),
                HintError::DigestMalformed,
            ),
            (SHA256_A.into(), HintError::DigestMalformed),
            (
                format!("md5:{}", &SHA256_A[..32]),
                HintError::DigestAlgorithmUnsupported,
            ),
            (
                format!("sha1:{}", &SHA256_A[..40]),
                HintError::DigestAlgorithmUnsupported,
            ),
            (
                format!("SHA256:{SHA256_A}"),
                HintError::DigestAlgorithmUnsupported,
            ),
            (String::new(), HintError::DigestMalformed),
        ];
        for (digest, reason) in cases {
            let found = scan(&[("IMAGE_URL", "r/app"), ("IMAGE_DIGEST", &digest)]);
            assert!(found.artifacts.is_empty(), "{digest}");
            assert_eq!(
                found.refused,
                vec![RefusedHint {
                    result: "IMAGE_DIGEST".into(),
                    reason
                }],
                "{digest}"
            );
        }
    }

    #[test]
    fn bad_uris_are_refused() {
        let digest = format!("sha256:{SHA256_A}");
        let long = "r/".repeat(MAX_URI_BYTES);
        for uri in ["", "  ", "r/app name", "r/app\u{0}x", long.as_str()] {
            let found = scan(&[("IMAGE_URL", uri), ("IMAGE_DIGEST", &digest)]);
            assert!(found.artifacts.is_empty(), "{uri:?}");
            assert_eq!(found.refused[0].reason, HintError::UriInvalid, "{uri:?}");
        }
    }

    #[test]
    fn unpaired_hints_are_refused() {
        let digest = format!("sha256:{SHA256_A}");
        let found = scan(&[("a-IMAGE_DIGEST", &digest), ("b-IMAGE_URL", "r/app")]);
        assert!(found.artifacts.is_empty());
        let reasons: Vec<(&str, HintError)> = found
            .refused
            .iter()
            .map(|refused| (refused.result.as_str(), refused.reason))
            .collect();
        assert_eq!(
            reasons,
            vec![
                ("a-IMAGE_DIGEST", HintError::Unpaired),
                ("b-IMAGE_URL", HintError::Unpaired)
            ]
        );
        // An IMAGE_URL does not pair with an ARTIFACT_DIGEST.
        let crossed = scan(&[("IMAGE_URL", "r/app"), ("ARTIFACT_DIGEST", &digest)]);
        assert!(crossed.artifacts.is_empty());
        assert_eq!(crossed.refused.len(), 2);
    }

    #[test]
    fn bad_images_entries_are_refused_one_by_one() {
        let images = format!("good@sha256:{SHA256_A},no-digest,bad@sha256:xyz");
        let found = scan(&[("IMAGES", &images)]);
        assert_eq!(found.artifacts.len(), 1);
        let reasons: Vec<HintError> = found.refused.iter().map(|r| r.reason).collect();
        assert_eq!(
            reasons,
            vec![HintError::ImageEntryMalformed, HintError::DigestMalformed]
        );
    }

    #[test]
    fn bad_output_objects_are_refused() {
        let digest = format!("sha256:{SHA256_A}");
        for raw in [
            "not json".to_owned(),
            r#"{"uri":"r/app"}"#.to_owned(),
            format!(r#"{{"digest":"{digest}"}}"#),
            format!(r#"{{"uri":"r/app","digest":"{digest}","extra":"x"}}"#),
            format!(r#"{{"uri":["r/app"],"digest":"{digest}"}}"#),
            format!(r#"["r/app","{digest}"]"#),
        ] {
            let found = scan(&[("x-ARTIFACT_OUTPUTS", &raw)]);
            assert!(found.artifacts.is_empty(), "{raw}");
            assert_eq!(
                found.refused[0].reason,
                HintError::OutputObjectMalformed,
                "{raw}"
            );
        }
    }

    #[test]
    fn artifact_count_is_bounded() {
        let images: Vec<String> = (0..MAX_ARTIFACTS + 10)
            .map(|index| format!("r/img{index}@sha256:{SHA256_A}"))
            .collect();
        let images = images.join(",");
        let found = scan(&[("IMAGES", &images)]);
        assert_eq!(found.artifacts.len(), MAX_ARTIFACTS);
        assert_eq!(
            found.refused,
            vec![RefusedHint {
                result: "IMAGES".into(),
                reason: HintError::TooManyArtifacts
            }]
        );
    }

    fn facts(verdict: Verdict) -> VsaFacts {
        VsaFacts {
            verifier: VsaVerifier {
                id: "spiffe://example.org/countersign/attestor".into(),
                version: BTreeMap::new(),
            },
            time_verified: "2026-08-21T10:00:01Z".parse().unwrap(),
            policy: ResourceRef {
                uri: "https://countersign.dev/policy/taskrun-results/v1".into(),
                digest: BTreeMap::new(),
            },
            input_attestations: vec![ResourceRef {
                uri: "countersign:attestation/uid-1".into(),
                digest: BTreeMap::from([("sha256".into(), SHA256_B.into())]),
            }],
            verdict,
            verified_levels: vec!["COUNTERSIGN_RESULTS_VERIFIED".into()],
        }
    }

    fn artifact() -> Artifact {
        let digest = format!("sha256:{SHA256_A}");
        let found = scan(&[("IMAGE_URL", "gcr.io/foo/bar"), ("IMAGE_DIGEST", &digest)]);
        found.artifacts[0].clone()
    }

    #[test]
    fn vsa_json_shape() {
        let statement = artifact_vsa(&artifact(), &facts(Verdict::Verified)).unwrap();
        let json = serde_json::to_value(&statement).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "_type": "https://in-toto.io/Statement/v1",
                "subject": [{"name": "gcr.io/foo/bar", "digest": {"sha256": SHA256_A}}],
                "predicateType": "https://slsa.dev/verification_summary/v1",
                "predicate": {
                    "verifier": {"id": "spiffe://example.org/countersign/attestor"},
                    "timeVerified": "2026-08-21T10:00:01Z",
                    "resourceUri": "gcr.io/foo/bar",
                    "policy": {"uri": "https://countersign.dev/policy/taskrun-results/v1"},
                    "inputAttestations": [{
                        "uri": "countersign:attestation/uid-1",
                        "digest": {"sha256": SHA256_B}
                    }],
                    "verificationResult": "PASSED",
                    "verifiedLevels": ["COUNTERSIGN_RESULTS_VERIFIED"],
                    "slsaVersion": "1.0"
                }
            })
        );
        let back: Statement<VerificationSummary> = serde_json::from_value(json).unwrap();
        assert_eq!(back, statement);
    }

    #[test]
    fn only_verified_passes() {
        for (verdict, result) in [
            (Verdict::Verified, VerificationResult::Passed),
            (Verdict::Rejected, VerificationResult::Failed),
            (Verdict::NoResults, VerificationResult::Failed),
        ] {
            let statement = artifact_vsa(&artifact(), &facts(verdict)).unwrap();
            assert_eq!(statement.predicate().verification_result, result);
            if result == VerificationResult::Failed {
                assert_eq!(statement.predicate().verified_levels, vec![FAILED_LEVEL]);
            }
        }
    }

    #[test]
    fn passed_needs_well_formed_levels() {
        let mut no_levels = facts(Verdict::Verified);
        no_levels.verified_levels.clear();
        assert_eq!(
            artifact_vsa(&artifact(), &no_levels).unwrap_err(),
            VsaBuildError::NoLevels
        );
        for level in ["FAILED", "", "slsa_build_level_1", "LEVEL 2"] {
            let mut bad = facts(Verdict::Verified);
            bad.verified_levels = vec![level.into()];
            assert_eq!(
                artifact_vsa(&artifact(), &bad).unwrap_err(),
                VsaBuildError::LevelInvalid {
                    level: level.into()
                }
            );
        }
    }

    #[test]
    fn resource_uri_and_subjects_are_checked() {
        assert_eq!(
            vsa_statement(vec![artifact().subject()], "", &facts(Verdict::Verified)).unwrap_err(),
            VsaBuildError::ResourceUriInvalid
        );
        assert_eq!(
            vsa_statement(vec![], "r/app", &facts(Verdict::Verified)).unwrap_err(),
            VsaBuildError::NoSubjects(NoSubjects)
        );
    }
}
