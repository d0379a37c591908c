//! Domain types for the SPIRE server APIs: registration entries, selectors, filters, agents, join
//! tokens and bundles, and their conversion to and from the generated wire messages.
//!
//! SPIFFE IDs and trust domains are the `spiffe` crate's [`SpiffeId`] and [`TrustDomain`], so
//! they are validated once and shared with the Workload API code.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use spiffe::{SpiffeId, TrustDomain};

use crate::pb::spire::api::types as wire;

/// A selector, written `type:value` (for example `k8s:pod-uid:1234` is type `k8s` and value
/// `pod-uid:1234`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    kind: String,
    value: String,
}

/// Why a selector is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("a selector is written `type:value`, and {0:?} has no `:`")]
    MissingColon(String),
    #[error("a selector's type must not be empty")]
    EmptyType,
    #[error("a selector's type must not contain `:` ({0:?})")]
    ColonInType(String),
    #[error("a selector's value must not be empty")]
    EmptyValue,
}

impl Selector {
    /// A selector of this type and value; SPIRE requires a non-empty type without `:` and a
    /// non-empty value.
    pub fn new(
        kind: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Selector, SelectorError> {
        let kind = kind.into();
        let value = value.into();
        if kind.is_empty() {
            return Err(SelectorError::EmptyType);
        }
        if kind.contains(':') {
            return Err(SelectorError::ColonInType(kind));
        }
        if value.is_empty() {
            return Err(SelectorError::EmptyValue);
        }
        Ok(Selector { kind, value })
    }

    /// The selector's type, such as `k8s` or `unix`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The selector's value, such as `pod-uid:1234`.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    /// Parses `type:value`, splitting at the first `:`.
    fn from_str(text: &str) -> Result<Selector, SelectorError> {
        let (kind, value) = text
            .split_once(':')
            .ok_or_else(|| SelectorError::MissingColon(text.to_owned()))?;
        Selector::new(kind, value)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// How a filter's set (of selectors or trust domains) is compared with an entry's set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Match {
    /// The entry's set equals the filter's set.
    Exact,
    /// Every element of the entry's set is in the filter's set.
    Subset,
    /// The entry's set contains every element of the filter's set (the CLI's default).
    #[default]
    Superset,
    /// The sets have at least one element in common.
    Any,
}

impl Match {
    fn to_wire(self) -> i32 {
        let behavior = match self {
            Match::Exact => wire::MatchBehavior::MatchExact,
            Match::Subset => wire::MatchBehavior::MatchSubset,
            Match::Superset => wire::MatchBehavior::MatchSuperset,
            Match::Any => wire::MatchBehavior::MatchAny,
        };
        behavior as i32
    }
}

/// A registration entry.
///
/// Only `spiffe_id`, `parent_id` and the selector set identify an entry to SPIRE ("similar"
/// entries, see [`Entry::has_same_key`]); the other fields are its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The entry id. Empty in a create request means "let the server choose" (a UUID); a chosen
    /// id has at most 255 characters from `[A-Za-z0-9._-]`.
    pub id: String,
    /// The identity this entry issues.
    pub spiffe_id: SpiffeId,
    /// The node (alias) or agent this entry's workloads run under.
    pub parent_id: SpiffeId,
    /// The selectors a workload must have; never empty. A set to SPIRE: entries read from the
    /// server have them sorted.
    pub selectors: Vec<Selector>,
    /// X509-SVID lifetime; `None` means the server's default. Sent in whole seconds.
    pub x509_svid_ttl: Option<Duration>,
    /// JWT-SVID lifetime; `None` means the server's default. Sent in whole seconds.
    pub jwt_svid_ttl: Option<Duration>,
    /// Trust domains whose bundles the workload also receives.
    pub federates_with: Vec<TrustDomain>,
    /// Whether the holder may call the server's admin APIs.
    pub admin: bool,
    /// Whether the holder is a downstream SPIRE server.
    pub downstream: bool,
    /// When the server prunes the entry; `None` means never. Sent in whole seconds.
    pub expires_at: Option<SystemTime>,
    /// DNS names put in the SVID.
    pub dns_names: Vec<String>,
    /// A hint delivered to the workload with the SVID; `None` means no hint.
    pub hint: Option<String>,
    /// Whether the SVID is stored by an SVIDStore plugin.
    pub store_svid: bool,
    /// Maintained by the server and bumped on every update; ignored on create.
    pub revision_number: i64,
    /// Set by the server; ignored on create and update.
    pub created_at: Option<SystemTime>,
}

impl Entry {
    /// An entry with these key fields, a server-chosen id and default settings.
    pub fn new(spiffe_id: SpiffeId, parent_id: SpiffeId, selectors: Vec<Selector>) -> Entry {
        Entry {
            id: String::new(),
            spiffe_id,
            parent_id,
            selectors,
            x509_svid_ttl: None,
            jwt_svid_ttl: None,
            federates_with: Vec::new(),
            admin: false,
            downstream: false,
            expires_at: None,
            dns_names: Vec::new(),
            hint: None,
            store_svid: false,
            revision_number: 0,
            created_at: None,
        }
    }

    /// Sets the entry id (see [`Entry::id`]).
    pub fn with_id(mut self, id: impl Into<String>) -> Entry {
        self.id = id.into();
        self
    }

    /// Whether SPIRE would consider the two entries "similar": same SPIFFE ID, same parent and
    /// the same selector set (order and duplicates ignored). Creating an entry similar to an
    /// existing one gives [`crate::CreateOutcome::AlreadyExists`].
    pub fn has_same_key(&self, other: &Entry) -> bool {
        fn set(selectors: &[Selector]) -> std::collections::BTreeSet<&Selector> {
            selectors.iter().collect()
        }
        self.spiffe_id == other.spiffe_id
            && self.parent_id == other.parent_id
            && set(&self.selectors) == set(&other.selectors)
    }

    pub(crate) fn to_wire(&self) -> Result<wire::Entry, EntryError> {
        Ok(wire::Entry {
            id: self.id.clone(),
            spiffe_id: Some(spiffe_id_to_wire(&self.spiffe_id)),
            parent_id: Some(spiffe_id_to_wire(&self.parent_id)),
            selectors: self.selectors.iter().map(selector_to_wire).collect(),
            x509_svid_ttl: ttl_to_wire(self.x509_svid_ttl).ok_or(EntryError::TtlTooLong)?,
            federates_with: self
                .federates_with
                .iter()
                .map(|td| td.as_str().to_owned())
                .collect(),
            admin: self.admin,
            downstream: self.downstream,
            expires_at: match self.expires_at {
                None => 0,
                Some(time) => unix_seconds(time).ok_or(EntryError::ExpiryOutOfRange)?,
            },
            dns_names: self.dns_names.clone(),
            revision_number: self.revision_number,
            store_svid: self.store_svid,
            jwt_svid_ttl: ttl_to_wire(self.jwt_svid_ttl).ok_or(EntryError::TtlTooLong)?,
            hint: self.hint.clone().unwrap_or_default(),
            created_at: 0,
        })
    }

    pub(crate) fn from_wire(entry: wire::Entry) -> Result<Entry, MalformedResponse> {
        let malformed = |field: &'static str, reason: String| MalformedResponse {
            what: "entry",
            field,
            reason,
        };
        let spiffe_id = spiffe_id_from_wire(entry.spiffe_id.as_ref())
            .map_err(|reason| malformed("spiffe_id", reason))?;
        let parent_id = spiffe_id_from_wire(entry.parent_id.as_ref())
            .map_err(|reason| malformed("parent_id", reason))?;
        let mut selectors = entry
            .selectors
            .into_iter()
            .map(selector_from_wire)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| malformed("selectors", error.to_string()))?;
        // The server stores a set and returns it in its own order; sorting makes entries read
        // back from any call compare equal.
        selectors.sort();
        let federates_with = entry
            .federates_with
            .iter()
            .map(TrustDomain::new)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| malformed("federates_with", error.to_string()))?;
        Ok(Entry {
            id: entry.id,
            spiffe_id,
            parent_id,
            selectors,
            x509_svid_ttl: ttl_from_wire(entry.x509_svid_ttl),
            jwt_svid_ttl: ttl_from_wire(entry.jwt_svid_ttl),
            federates_with,
            admin: entry.admin,
            downstream: entry.downstream,
            expires_at: time_from_wire(entry.expires_at),
            dns_names: entry.dns_names,
            hint: Some(entry.hint).filter(|hint| !hint.is_empty()),
            store_svid: entry.store_svid,
            revision_number: entry.revision_number,
            created_at: time_from_wire(entry.created_at),
        })
    }
}

/// Why an entry cannot be put on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("an SVID lifetime must fit in an int32 number of seconds")]
    TtlTooLong,
    #[error("an entry's expiry must be after 1970 and fit in an int64 number of seconds")]
    ExpiryOutOfRange,
}

/// A selector condition of a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorFilter {
    pub selectors: Vec<Selector>,
    pub match_behavior: Match,
}

/// A trust-domain condition of an entry filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatesWithFilter {
    pub trust_domains: Vec<TrustDomain>,
    pub match_behavior: Match,
}

/// Which entries to count or list. Every set condition must hold (they are ANDed); the default
/// matches every entry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EntryFilter {
    pub spiffe_id: Option<SpiffeId>,
    pub parent_id: Option<SpiffeId>,
    /// The server rejects an empty selector list with `INVALID_ARGUMENT`.
    pub selectors: Option<SelectorFilter>,
    pub federates_with: Option<FederatesWithFilter>,
    pub hint: Option<String>,
    pub downstream: Option<bool>,
}

impl EntryFilter {
    /// A filter that matches every entry.
    pub fn all() -> EntryFilter {
        EntryFilter::default()
    }

    /// Only entries with this SPIFFE ID.
    pub fn by_spiffe_id(mut self, spiffe_id: SpiffeId) -> EntryFilter {
        self.spiffe_id = Some(spiffe_id);
        self
    }

    /// Only entries with this parent.
    pub fn by_parent_id(mut self, parent_id: SpiffeId) -> EntryFilter {
        self.parent_id = Some(parent_id);
        self
    }

    /// Only entries whose selectors compare with these as `match_behavior` says.
    pub fn by_selectors(mut self, selectors: Vec<Selector>, match_behavior: Match) -> EntryFilter {
        self.selectors = Some(SelectorFilter {
            selectors,
            match_behavior,
        });
        self
    }

    /// Only entries whose federated trust domains compare with these as `match_behavior` says.
    pub fn by_federates_with(
        mut self,
        trust_domains: Vec<TrustDomain>,
        match_behavior: Match,
    ) -> EntryFilter {
        self.federates_with = Some(FederatesWithFilter {
            trust_domains,
            match_behavior,
        });
        self
    }

    /// Only entries with exactly this hint.
    pub fn by_hint(mut self, hint: impl Into<String>) -> EntryFilter {
        self.hint = Some(hint.into());
        self
    }

    /// Only entries whose `downstream` flag is this.
    pub fn by_downstream(mut self, downstream: bool) -> EntryFilter {
        self.downstream = Some(downstream);
        self
    }

    pub(crate) fn to_wire(&self) -> crate::pb::spire::api::server::entry::v1::EntryFilter {
        crate::pb::spire::api::server::entry::v1::EntryFilter {
            by_spiffe_id: self.spiffe_id.as_ref().map(spiffe_id_to_wire),
            by_parent_id: self.parent_id.as_ref().map(spiffe_id_to_wire),
            by_selectors: self.selectors.as_ref().map(selector_filter_to_wire),
            by_federates_with: self.federates_with.as_ref().map(|filter| {
                wire::FederatesWithMatch {
                    trust_domains: filter
                        .trust_domains
                        .iter()
                        .map(|td| td.as_str().to_owned())
                        .collect(),
                    r#match: filter.match_behavior.to_wire(),
                }
            }),
            by_hint: self.hint.clone(),
            by_downstream: self.downstream,
        }
    }
}

/// An agent the server has attested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// The agent's SPIFFE ID, e.g. `spiffe://<td>/spire/agent/join_token/<token>`.
    pub id: SpiffeId,
    /// The node attestor that attested it (`join_token`, `k8s_psat`, ...).
    pub attestation_type: String,
    pub x509svid_serial_number: String,
    pub x509svid_expires_at: Option<SystemTime>,
    /// The node selectors attestation produced.
    pub selectors: Vec<Selector>,
    pub banned: bool,
    pub can_reattest: bool,
}

impl Agent {
    pub(crate) fn from_wire(agent: wire::Agent) -> Result<Agent, MalformedResponse> {
        let malformed = |field: &'static str, reason: String| MalformedResponse {
            what: "agent",
            field,
            reason,
        };
        Ok(Agent {
            id: spiffe_id_from_wire(agent.id.as_ref()).map_err(|reason| malformed("id", reason))?,
            attestation_type: agent.attestation_type,
            x509svid_serial_number: agent.x509svid_serial_number,
            x509svid_expires_at: time_from_wire(agent.x509svid_expires_at),
            selectors: agent
                .selectors
                .into_iter()
                .map(selector_from_wire)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| malformed("selectors", error.to_string()))?,
            banned: agent.banned,
            can_reattest: agent.can_reattest,
        })
    }
}

/// Which agents to list; the default matches every agent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AgentFilter {
    /// Only agents attested by this node attestor.
    pub attestation_type: Option<String>,
    /// Only agents whose node selectors compare with these (for example
    /// `k8s_psat:agent_node_name:<node>` with [`Match::Superset`]).
    pub selectors: Option<SelectorFilter>,
    pub banned: Option<bool>,
    pub can_reattest: Option<bool>,
}

impl AgentFilter {
    pub(crate) fn to_wire(&self) -> crate::pb::spire::api::server::agent::v1::AgentFilter {
        crate::pb::spire::api::server::agent::v1::AgentFilter {
            by_attestation_type: self.attestation_type.clone().unwrap_or_default(),
            by_selector_match: self.selectors.as_ref().map(selector_filter_to_wire),
            by_banned: self.banned,
            by_can_reattest: self.can_reattest,
            by_expires_before: String::new(),
        }
    }
}

/// A join token the server created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The secret an agent presents (`spire-agent run -joinToken <value>`).
    pub value: String,
    pub expires_at: Option<SystemTime>,
}

/// The trust bundle of one trust domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub trust_domain: TrustDomain,
    pub x509_authorities: Vec<X509Authority>,
    pub jwt_authorities: Vec<JwtAuthority>,
    /// How often consumers should refresh the bundle; `None` if the server gives no hint.
    pub refresh_hint: Option<Duration>,
    pub sequence_number: u64,
}

/// A CA certificate of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X509Authority {
    /// The certificate, DER encoded.
    pub der: Vec<u8>,
    /// Whether the server is rotating this authority out.
    pub tainted: bool,
}

/// A JWT signing key of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtAuthority {
    /// The public key, PKIX (SubjectPublicKeyInfo) DER.
    pub public_key: Vec<u8>,
    pub key_id: String,
    pub expires_at: Option<SystemTime>,
    pub tainted: bool,
}

impl Bundle {
    pub(crate) fn from_wire(bundle: wire::Bundle) -> Result<Bundle, MalformedResponse> {
        Ok(Bundle {
            trust_domain: TrustDomain::new(&bundle.trust_domain).map_err(|error| {
                MalformedResponse {
                    what: "bundle",
                    field: "trust_domain",
                    reason: error.to_string(),
                }
            })?,
            x509_authorities: bundle
                .x509_authorities
                .into_iter()
                .map(|authority| X509Authority {
                    der: authority.asn1,
                    tainted: authority.tainted,
                })
                .collect(),
            jwt_authorities: bundle
                .jwt_authorities
                .into_iter()
                .map(|key| JwtAuthority {
                    public_key: key.public_key,
                    key_id: key.key_id,
                    expires_at: time_from_wire(key.expires_at),
                    tainted: key.tainted,
                })
                .collect(),
            refresh_hint: u64::try_from(bundle.refresh_hint)
                .ok()
                .filter(|seconds| *seconds > 0)
                .map(Duration::from_secs),
            sequence_number: bundle.sequence_number,
        })
    }
}

/// The server sent something this client cannot represent (it never should).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the SPIRE server sent a malformed {what}: field {field}: {reason}")]
pub struct MalformedResponse {
    pub what: &'static str,
    pub field: &'static str,
    pub reason: String,
}

pub(crate) fn spiffe_id_to_wire(id: &SpiffeId) -> wire::Spiffeid {
    wire::Spiffeid {
        trust_domain: id.trust_domain().as_str().to_owned(),
        path: id.path().to_owned(),
    }
}

fn spiffe_id_from_wire(id: Option<&wire::Spiffeid>) -> Result<SpiffeId, String> {
    let id = id.ok_or_else(|| "missing".to_owned())?;
    SpiffeId::new(format!("spiffe://{}{}", id.trust_domain, id.path)).map_err(|e| e.to_string())
}

fn selector_to_wire(selector: &Selector) -> wire::Selector {
    wire::Selector {
        r#type: selector.kind.clone(),
        value: selector.value.clone(),
    }
}

fn selector_from_wire(selector: wire::Selector) -> Result<Selector, SelectorError> {
    Selector::new(selector.r#type, selector.value)
}

fn selector_filter_to_wire(filter: &SelectorFilter) -> wire::SelectorMatch {
    wire::SelectorMatch {
        selectors: filter.selectors.iter().map(selector_to_wire).collect(),
        r#match: filter.match_behavior.to_wire(),
    }
}

/// `None` → 0 (server default); `None` from the conversion means it does not fit.
fn ttl_to_wire(ttl: Option<Duration>) -> Option<i32> {
    match ttl {
        None => Some(0),
        Some(ttl) => i32::try_from(ttl.as_secs()).ok(),
    }
}

fn ttl_from_wire(seconds: i32) -> Option<Duration> {
    u64::try_from(seconds)
        .ok()
        .filter(|seconds| *seconds > 0)
        .map(Duration::from_secs)
}

pub(crate) fn unix_seconds(time: SystemTime) -> Option<i64> {
    time.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|since| i64::try_from(since.as_secs()).ok())
}

pub(crate) fn time_from_wire(seconds: i64) -> Option<SystemTime> {
    u64::try_from(seconds)
        .ok()
        .filter(|seconds| *seconds > 0)
        .and_then(|seconds| UNIX_EPOCH.checked_add(Duration::from_secs(seconds)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> SpiffeId {
        SpiffeId::new(text).expect("a valid SPIFFE ID")
    }

    #[test]
    fn selector_parses_at_the_first_colon() {
        let selector: Selector = "k8s:pod-uid:1234".parse().expect("valid");
        assert_eq!(selector.kind(), "k8s");
        assert_eq!(selector.value(), "pod-uid:1234");
        assert_eq!(selector.to_string(), "k8s:pod-uid:1234");
    }

    #[test]
    fn selector_rejects_what_spire_rejects() {
        assert!(matches!(
            "k8s".parse::<Selector>(),
            Err(SelectorError::MissingColon(_))
        ));
        assert_eq!(":x".parse::<Selector>(), Err(SelectorError::EmptyType));
        assert_eq!("unix:".parse::<Selector>(), Err(SelectorError::EmptyValue));
        assert!(matches!(
            Selector::new("a:b", "c"),
            Err(SelectorError::ColonInType(_))
        ));
    }

    #[test]
    fn entry_round_trips_through_the_wire_form() {
        let mut entry = Entry::new(
            id("spiffe://example.org/ns/default/taskrun/build"),
            id("spiffe://example.org/tekton-node/node-1"),
            vec![
                "k8s:pod-uid:1".parse().expect("valid"),
                "k8s:pod-name:p".parse().expect("valid"),
            ],
        )
        .with_id("countersign.abc");
        entry.selectors.sort();
        entry.x509_svid_ttl = Some(Duration::from_secs(600));
        entry.expires_at = Some(UNIX_EPOCH + Duration::from_secs(1_900_000_000));
        entry.hint = Some("taskrun".into());
        entry.federates_with = vec![TrustDomain::new("other.org").expect("valid")];
        entry.dns_names = vec!["build.default".into()];
        entry.admin = true;
        let wire = entry.to_wire().expect("fits on the wire");
        assert_eq!(wire.x509_svid_ttl, 600);
        assert_eq!(wire.jwt_svid_ttl, 0);
        assert_eq!(wire.expires_at, 1_900_000_000);
        assert_eq!(
            wire.spiffe_id
                .as_ref()
                .map(|id| (id.trust_domain.as_str(), id.path.as_str())),
            Some(("example.org", "/ns/default/taskrun/build"))
        );
        assert_eq!(Entry::from_wire(wire).expect("well formed"), entry);
    }

    #[test]
    fn entry_with_an_oversized_ttl_is_refused_before_sending() {
        let mut entry = Entry::new(
            id("spiffe://example.org/a"),
            id("spiffe://example.org/b"),
            vec!["unix:uid:0".parse().expect("valid")],
        );
        entry.x509_svid_ttl = Some(Duration::from_secs(u64::from(u32::MAX)));
        assert_eq!(entry.to_wire(), Err(EntryError::TtlTooLong));
    }

    #[test]
    fn entry_from_the_wire_without_a_spiffe_id_is_malformed() {
        let wire = wire::Entry {
            id: "x".into(),
            ..Default::default()
        };
        let error = Entry::from_wire(wire).expect_err("no SPIFFE ID");
        assert_eq!(error.field, "spiffe_id");
    }

    #[test]
    fn same_key_ignores_selector_order_and_settings() {
        let a = Entry::new(
            id("spiffe://example.org/a"),
            id("spiffe://example.org/p"),
            vec![
                "k8s:pod-uid:1".parse().expect("valid"),
                "k8s:pod-name:x".parse().expect("valid"),
            ],
        );
        let mut b = a.clone().with_id("other");
        b.selectors.reverse();
        b.hint = Some("h".into());
        assert!(a.has_same_key(&b));
        let mut c = a.clone();
        c.selectors.pop();
        assert!(!a.has_same_key(&c));
        let mut d = a.clone();
        d.parent_id = id("spiffe://example.org/q");
        assert!(!a.has_same_key(&d));
    }

    #[test]
    fn filter_maps_each_condition() {
        let filter = EntryFilter::all()
            .by_parent_id(id("spiffe://example.org/p"))
            .by_selectors(vec!["unix:uid:0".parse().expect("valid")], Match::Exact)
            .by_hint("h")
            .by_downstream(false);
        let wire = filter.to_wire();
        assert!(wire.by_spiffe_id.is_none());
        assert_eq!(wire.by_parent_id.map(|id| id.path), Some("/p".to_owned()));
        let selectors = wire.by_selectors.expect("a selector condition");
        assert_eq!(selectors.r#match, wire::MatchBehavior::MatchExact as i32);
        assert_eq!(selectors.selectors.len(), 1);
        assert_eq!(wire.by_hint.as_deref(), Some("h"));
        assert_eq!(wire.by_downstream, Some(false));
    }
}
