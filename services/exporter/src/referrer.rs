//! What is pushed, as bytes: the referrer manifest of one Sigstore bundle, laid out as cosign v3
//! writes an attestation in the bundle format (`WriteAttestationNewBundleFormat` in cosign's
//! `pkg/oci/remote/write.go`), and the OCI tag-schema index that lists referrers on a registry
//! without the Referrers API.
//!
//! The referrer is an OCI image manifest:
//!
//! * `artifactType` and the config's `artifactType`: `application/vnd.dev.sigstore.bundle.v0.3+json`;
//! * `config`: the empty descriptor (`application/vnd.oci.empty.v1+json`, the 2 bytes `{}`);
//! * one layer: the bundle, media type `application/vnd.dev.sigstore.bundle.v0.3+json`
//!   (cosign's `GetBundles` takes exactly one layer whose type starts with
//!   `application/vnd.dev.sigstore.bundle`);
//! * `subject`: the image's descriptor;
//! * annotations `dev.sigstore.bundle.content` = `dsse-envelope`,
//!   `dev.sigstore.bundle.predicateType` = the statement's predicate type, and
//!   `org.opencontainers.image.created` = when the attestation was decided (not "now", as cosign
//!   does: so a retry pushes the same bytes, the same digest, and nothing twice).

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use countersign_identity::crypto::Sha256Digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The media type of a Sigstore bundle v0.3, also the referrer's artifact type.
pub use countersign_identity::sigstore_bundle::SIGSTORE_BUNDLE_V03_MEDIA_TYPE as BUNDLE_MEDIA_TYPE;
/// The OCI image manifest media type.
pub const OCI_MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The OCI image index media type (the tag-schema index, the Referrers API's answer).
pub const OCI_INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// The OCI empty descriptor's media type.
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// The empty blob, `{}`.
pub const EMPTY_BLOB: &[u8] = b"{}";
/// cosign's annotation naming what the bundle holds.
pub const BUNDLE_CONTENT_ANNOTATION: &str = "dev.sigstore.bundle.content";
/// cosign's annotation naming the attestation's predicate type.
pub const PREDICATE_TYPE_ANNOTATION: &str = "dev.sigstore.bundle.predicateType";
/// The OCI creation-time annotation.
pub const CREATED_ANNOTATION: &str = "org.opencontainers.image.created";

/// An OCI content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The content's media type.
    pub media_type: String,
    /// `alg:hex`.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// The artifact type (referrers and their index entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    /// The descriptor of `content`, whose digest is its SHA-256.
    pub fn of(media_type: &str, content: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.to_owned(),
            digest: sha256_digest(content),
            size: content.len() as u64,
            artifact_type: None,
            annotations: BTreeMap::new(),
        }
    }
}

/// `sha256:<hex>` of `content`.
pub fn sha256_digest(content: &[u8]) -> String {
    format!("sha256:{}", Sha256Digest::of(content))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReferrerManifest<'a> {
    schema_version: u32,
    media_type: &'static str,
    artifact_type: &'static str,
    config: &'a Descriptor,
    layers: [&'a Descriptor; 1],
    subject: &'a Descriptor,
    annotations: &'a BTreeMap<String, String>,
}

/// A referrer manifest, built: its bytes and what the push needs to know about it.
#[derive(Debug, Clone)]
pub struct Referrer {
    /// The manifest's bytes (pushed as they are: its digest is theirs).
    pub manifest: Bytes,
    /// The manifest's descriptor, as an index entry lists it (artifact type, annotations).
    pub descriptor: Descriptor,
    /// The config blob's descriptor (the empty blob).
    pub config: Descriptor,
    /// The bundle blob's descriptor.
    pub layer: Descriptor,
}

/// The referrer manifest attaching `bundle` (a Sigstore bundle v0.3 of a DSSE envelope whose
/// statement has `predicate_type`) to `subject`, created at `created`.
pub fn referrer_manifest(
    subject: &Descriptor,
    bundle: &[u8],
    predicate_type: &str,
    created: DateTime<Utc>,
) -> Referrer {
    let mut config = Descriptor::of(EMPTY_MEDIA_TYPE, EMPTY_BLOB);
    config.artifact_type = Some(BUNDLE_MEDIA_TYPE.to_owned());
    let layer = Descriptor::of(BUNDLE_MEDIA_TYPE, bundle);
    let annotations = BTreeMap::from([
        (
            CREATED_ANNOTATION.to_owned(),
            created.to_rfc3339_opts(SecondsFormat::Secs, true),
        ),
        (
            BUNDLE_CONTENT_ANNOTATION.to_owned(),
            "dsse-envelope".to_owned(),
        ),
        (
            PREDICATE_TYPE_ANNOTATION.to_owned(),
            predicate_type.to_owned(),
        ),
    ]);
    let subject = Descriptor {
        artifact_type: None,
        annotations: BTreeMap::new(),
        ..subject.clone()
    };
    let manifest = ReferrerManifest {
        schema_version: 2,
        media_type: OCI_MANIFEST_MEDIA_TYPE,
        artifact_type: BUNDLE_MEDIA_TYPE,
        config: &config,
        layers: [&layer],
        subject: &subject,
        annotations: &annotations,
    };
    // Serialising plain structs of strings and maps of strings cannot fail.
    let manifest = Bytes::from(serde_json::to_vec(&manifest).unwrap_or_default());
    let mut descriptor = Descriptor::of(OCI_MANIFEST_MEDIA_TYPE, &manifest);
    descriptor.artifact_type = Some(BUNDLE_MEDIA_TYPE.to_owned());
    descriptor.annotations = annotations;
    Referrer {
        manifest,
        descriptor,
        config,
        layer,
    }
}

/// An OCI image index: the tag-schema index of referrers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    /// 2.
    pub schema_version: u32,
    /// [`OCI_INDEX_MEDIA_TYPE`].
    #[serde(default)]
    pub media_type: Option<String>,
    /// The referrers.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

impl ImageIndex {
    /// An index with no entries.
    pub fn empty() -> ImageIndex {
        ImageIndex {
            schema_version: 2,
            media_type: Some(OCI_INDEX_MEDIA_TYPE.to_owned()),
            manifests: Vec::new(),
        }
    }

    /// Whether the index lists `digest`.
    pub fn lists(&self, digest: &str) -> bool {
        self.manifests.iter().any(|entry| entry.digest == digest)
    }

    /// The index with `entry` added (unless it is listed already: then `None`).
    pub fn with(&self, entry: &Descriptor) -> Option<ImageIndex> {
        if self.lists(&entry.digest) {
            return None;
        }
        let mut updated = self.clone();
        updated.media_type = Some(OCI_INDEX_MEDIA_TYPE.to_owned());
        updated.manifests.push(entry.clone());
        Some(updated)
    }

    /// The index's bytes.
    pub fn to_bytes(&self) -> Bytes {
        // Plain structs of strings cannot fail to serialise.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;

    use super::*;

    fn subject() -> Descriptor {
        Descriptor::of(OCI_MANIFEST_MEDIA_TYPE, b"an image manifest")
    }

    #[test]
    fn the_referrer_is_laid_out_as_cosign_writes_it() {
        let created = Utc.with_ymd_and_hms(2026, 12, 7, 4, 0, 0).unwrap();
        let referrer = referrer_manifest(
            &subject(),
            b"{\"bundle\":1}",
            "https://slsa.dev/verification_summary/v1",
            created,
        );
        let manifest: serde_json::Value = serde_json::from_slice(&referrer.manifest).unwrap();
        assert_eq!(manifest["schemaVersion"], 2);
        assert_eq!(manifest["mediaType"], OCI_MANIFEST_MEDIA_TYPE);
        assert_eq!(manifest["artifactType"], BUNDLE_MEDIA_TYPE);
        assert_eq!(manifest["config"]["mediaType"], EMPTY_MEDIA_TYPE);
        assert_eq!(manifest["config"]["artifactType"], BUNDLE_MEDIA_TYPE);
        assert_eq!(
            manifest["config"]["digest"],
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert_eq!(manifest["config"]["size"], 2);
        assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
        assert_eq!(manifest["layers"][0]["mediaType"], BUNDLE_MEDIA_TYPE);
        assert_eq!(
            manifest["layers"][0]["digest"],
            sha256_digest(b"{\"bundle\":1}")
        );
        assert_eq!(manifest["subject"]["digest"], subject().digest);
        assert_eq!(
            manifest["annotations"][BUNDLE_CONTENT_ANNOTATION],
            "dsse-envelope"
        );
        assert_eq!(
            manifest["annotations"][PREDICATE_TYPE_ANNOTATION],
            "https://slsa.dev/verification_summary/v1"
        );
        assert_eq!(
            manifest["annotations"][CREATED_ANNOTATION],
            "2026-12-07T04:00:00Z"
        );
        assert_eq!(
            referrer.descriptor.digest,
            sha256_digest(&referrer.manifest)
        );
        assert_eq!(referrer.descriptor.size, referrer.manifest.len() as u64);

        // The same inputs give the same bytes: a retry pushes nothing new.
        let again = referrer_manifest(
            &subject(),
            b"{\"bundle\":1}",
            "https://slsa.dev/verification_summary/v1",
            created,
        );
        assert_eq!(again.manifest, referrer.manifest);
    }

    #[test]
    fn the_fallback_index_lists_each_referrer_once() {
        let created = Utc.with_ymd_and_hms(2026, 12, 7, 4, 0, 0).unwrap();
        let one = referrer_manifest(&subject(), b"1", "p", created).descriptor;
        let two = referrer_manifest(&subject(), b"2", "p", created).descriptor;
        let index = ImageIndex::empty().with(&one).unwrap();
        assert!(index.with(&one).is_none());
        let index = index.with(&two).unwrap();
        assert_eq!(index.manifests.len(), 2);
        let parsed: ImageIndex = serde_json::from_slice(&index.to_bytes()).unwrap();
        assert_eq!(parsed, index);
        assert_eq!(
            parsed.manifests[0].artifact_type.as_deref(),
            Some(BUNDLE_MEDIA_TYPE)
        );
    }
}
