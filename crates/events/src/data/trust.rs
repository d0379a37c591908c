//! Trust bundle history events, published by the registrar on
//! `{p}.trust.bundle-rotated.{trust domain}`: every distinct X.509 trust bundle the SPIRE server
//! published, once recorded (create-if-absent) in the `{PREFIX}_TRUST_BUNDLES` bucket. Id:
//! `{trust domain}:{sequence number}:bundle-rotated`.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::event_type::EventType;
use crate::payload::EventData;
use crate::subject::{SubjectError, Subjects};

/// One CA of a bundle, by digest (the bundle history holds the certificates).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BundleAuthority {
    /// SHA-256 (hex) of the CA certificate's DER.
    pub sha256: String,
    /// Whether SPIRE marks it tainted (being rotated out after a compromise).
    pub tainted: bool,
}

/// `dev.countersign.trust.bundle-rotated.v1`: a trust bundle not seen before was recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "dev.countersign.trust.bundle-rotated.v1")]
pub struct TrustBundleRotated {
    /// The trust domain.
    pub trust_domain: String,
    /// SPIRE's bundle sequence number.
    pub sequence_number: u64,
    /// SHA-256 (hex) over the CAs' DER, sorted bytewise and de-duplicated.
    pub bundle_digest: String,
    /// The CAs, in SPIRE's order.
    pub authorities: Vec<BundleAuthority>,
    /// The sequence number of the bundle recorded before this one, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_sequence_number: Option<u64>,
    /// CAs of the previous bundle this one revokes (tainted now, or removed while still valid).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_authorities: Vec<String>,
    /// When the registrar first saw it.
    pub first_seen: DateTime<Utc>,
}

impl EventData for TrustBundleRotated {
    const TYPE: EventType = EventType::TrustBundleRotated;

    fn event_id(&self) -> String {
        format!(
            "{}:{}:bundle-rotated",
            self.trust_domain, self.sequence_number
        )
    }

    fn ce_subject(&self) -> String {
        format!("_trust/{}", self.trust_domain)
    }

    fn nats_subject(&self, subjects: &Subjects) -> Result<String, SubjectError> {
        subjects.for_trust_domain(Self::TYPE, &self.trust_domain)
    }
}
