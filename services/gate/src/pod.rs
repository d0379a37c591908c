//! The Pod rule (optional per namespace): an image whose digest a TaskRun produced as a result
//! (Tekton Chains' type hints `*IMAGE_URL`/`*IMAGE_DIGEST`, `*ARTIFACT_URI`/`*ARTIFACT_DIGEST`,
//! `IMAGES`, `*ARTIFACT_OUTPUTS`, found by `countersign-identity`'s `vsa::find_artifacts`) is not run
//! when that TaskRun's verdict is `rejected`; and, in a namespace that requires it, an image runs
//! only when a verified TaskRun produced its digest with a signed result.
//!
//! The namespace label `countersign.dev/images` ([`POD_POLICY_LABEL`]) selects the policy:
//! `deny-rejected` or `require-verified`; without it (or `off`) Pods are not checked.

use countersign_identity::intoto::Verdict;
use countersign_identity::vsa::ArtifactDigest;
use serde::Serialize;

/// The namespace label selecting the Pod policy.
pub const POD_POLICY_LABEL: &str = "countersign.dev/images";

/// What a namespace asks of its Pods' images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodPolicy {
    /// Pods are not checked.
    Off,
    /// Deny an image a rejected TaskRun produced.
    DenyRejected,
    /// Also deny an image no verified TaskRun produced (and an image not pinned by digest).
    RequireVerified,
}

impl PodPolicy {
    /// The policy a label value names; anything else is `Off`.
    pub fn parse(value: Option<&str>) -> PodPolicy {
        match value {
            Some("deny-rejected") => PodPolicy::DenyRejected,
            Some("require-verified") => PodPolicy::RequireVerified,
            _ => PodPolicy::Off,
        }
    }
}

/// Why a Pod is denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PodDenyCode {
    /// A TaskRun Countersign rejected produced the image's digest.
    ImageFromRejectedTaskrun,
    /// No verified TaskRun produced the image's digest with a signed result.
    ImageNotVerified,
    /// The image is not pinned by a digest (`require-verified` only).
    ImageNotPinned,
}

impl PodDenyCode {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            PodDenyCode::ImageFromRejectedTaskrun => "image_from_rejected_taskrun",
            PodDenyCode::ImageNotVerified => "image_not_verified",
            PodDenyCode::ImageNotPinned => "image_not_pinned",
        }
    }
}

/// One reason to deny a Pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodDenial {
    /// Which check.
    pub code: PodDenyCode,
    /// The image.
    pub image: String,
    /// For people.
    pub message: String,
}

/// A TaskRun whose results name a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Producer {
    /// `namespace/name`.
    pub taskrun: String,
    /// Its verdict, if one arrived.
    pub verdict: Option<Verdict>,
    /// Whether the naming result still holds the value the attestation signs.
    pub result_signed: bool,
}

/// The `alg:hex` digest an image reference is pinned to, if it is (`name@sha256:<hex>`).
pub fn image_digest(image: &str) -> Option<String> {
    let (_, digest) = image.rsplit_once('@')?;
    ArtifactDigest::parse(digest)
        .ok()
        .map(|digest| digest.to_string())
}

/// Every container image of a Pod (`containers`, `initContainers`, `ephemeralContainers`).
pub fn pod_images(pod: &serde_json::Value) -> Vec<String> {
    ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .filter_map(|field| pod.pointer(&format!("/spec/{field}"))?.as_array())
        .flatten()
        .filter_map(|container| container.get("image")?.as_str().map(str::to_owned))
        .collect()
}

/// The denials of a Pod running `images` under `policy`, `producers` giving the TaskRuns that
/// produced a digest.
pub fn decide_pod(
    images: &[String],
    policy: PodPolicy,
    producers: impl Fn(&str) -> Vec<Producer>,
) -> Vec<PodDenial> {
    let mut denials = Vec::new();
    if policy == PodPolicy::Off {
        return denials;
    }
    for image in images {
        let Some(digest) = image_digest(image) else {
            if policy == PodPolicy::RequireVerified {
                denials.push(PodDenial {
                    code: PodDenyCode::ImageNotPinned,
                    image: image.clone(),
                    message: format!("image {image} is not pinned by a digest, so no verified TaskRun can vouch for it"),
                });
            }
            continue;
        };
        let producers = producers(&digest);
        if let Some(rejected) = producers
            .iter()
            .find(|producer| producer.verdict == Some(Verdict::Rejected))
        {
            denials.push(PodDenial {
                code: PodDenyCode::ImageFromRejectedTaskrun,
                image: image.clone(),
                message: format!(
                    "image {image} was produced by TaskRun {}, which Countersign rejected",
                    rejected.taskrun
                ),
            });
            continue;
        }
        if policy == PodPolicy::RequireVerified
            && !producers.iter().any(|producer| {
                producer.verdict == Some(Verdict::Verified) && producer.result_signed
            })
        {
            denials.push(PodDenial {
                code: PodDenyCode::ImageNotVerified,
                image: image.clone(),
                message: format!(
                    "no TaskRun Countersign verified produced image {image} ({digest})"
                ),
            });
        }
    }
    denials
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const DIGEST: &str = "sha256:5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c";

    fn producer(verdict: Option<Verdict>, result_signed: bool) -> Producer {
        Producer {
            taskrun: "ci/build".into(),
            verdict,
            result_signed,
        }
    }

    fn codes(images: &[&str], policy: PodPolicy, producers: Vec<Producer>) -> Vec<PodDenyCode> {
        let images: Vec<String> = images.iter().map(|image| image.to_string()).collect();
        decide_pod(&images, policy, |digest| {
            if digest == DIGEST {
                producers.clone()
            } else {
                vec![]
            }
        })
        .into_iter()
        .map(|denial| denial.code)
        .collect()
    }

    #[test]
    fn an_image_a_rejected_taskrun_produced_is_denied() {
        let image = format!("r.example/app@{DIGEST}");
        let rejected = vec![producer(Some(Verdict::Rejected), false)];
        assert_eq!(
            codes(&[&image], PodPolicy::DenyRejected, rejected.clone()),
            vec![PodDenyCode::ImageFromRejectedTaskrun]
        );
        assert_eq!(
            codes(&[&image], PodPolicy::RequireVerified, rejected.clone()),
            vec![PodDenyCode::ImageFromRejectedTaskrun]
        );
        assert!(codes(&[&image], PodPolicy::Off, rejected).is_empty());
    }

    #[test]
    fn require_verified_needs_a_verified_producer_with_a_signed_result() {
        let image = format!("r.example/app@{DIGEST}");
        assert!(
            codes(
                &[&image],
                PodPolicy::RequireVerified,
                vec![producer(Some(Verdict::Verified), true)]
            )
            .is_empty()
        );
        for producers in [
            vec![],
            vec![producer(None, false)],
            vec![producer(Some(Verdict::Verified), false)],
            vec![producer(Some(Verdict::NoResults), true)],
        ] {
            assert_eq!(
                codes(&[&image], PodPolicy::RequireVerified, producers.clone()),
                vec![PodDenyCode::ImageNotVerified]
            );
            assert!(codes(&[&image], PodPolicy::DenyRejected, producers).is_empty());
        }
    }

    #[test]
    fn an_unpinned_image_is_denied_only_where_verification_is_required() {
        assert_eq!(
            codes(&["busybox:1.36"], PodPolicy::RequireVerified, vec![]),
            vec![PodDenyCode::ImageNotPinned]
        );
        assert!(codes(&["busybox:1.36"], PodPolicy::DenyRejected, vec![]).is_empty());
        assert_eq!(
            codes(
                &["r.example/app@sha256:short"],
                PodPolicy::RequireVerified,
                vec![]
            ),
            vec![PodDenyCode::ImageNotPinned]
        );
    }

    #[test]
    fn every_container_kind_is_checked() {
        let pod = json!({"spec": {
            "initContainers": [{"name": "i", "image": "a"}],
            "containers": [{"name": "c", "image": "b"}],
            "ephemeralContainers": [{"name": "e", "image": "c"}]
        }});
        let mut images = pod_images(&pod);
        images.sort();
        assert_eq!(images, vec!["a", "b", "c"]);
    }

    #[test]
    fn policies_parse_from_their_label_values() {
        assert_eq!(
            PodPolicy::parse(Some("deny-rejected")),
            PodPolicy::DenyRejected
        );
        assert_eq!(
            PodPolicy::parse(Some("require-verified")),
            PodPolicy::RequireVerified
        );
        assert_eq!(PodPolicy::parse(Some("yes")), PodPolicy::Off);
        assert_eq!(PodPolicy::parse(None), PodPolicy::Off);
    }
}
