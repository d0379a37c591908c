//! SPIFFE IDs of TaskRuns, node aliases and the SPIRE server, built exactly as Tekton's
//! `pkg/spire/controller.go` builds them.
//!
//! Parsing and validation are the `spiffe` crate's ([`SpiffeId`], [`TrustDomain`]), which follow
//! the SPIFFE-ID specification: lower-cased trust domain of `[a-z0-9._-]`, path segments of
//! `[a-zA-Z0-9._-]`, no empty, `.` or `..` segments, no trailing `/`, no query, fragment, port or
//! user info. Kubernetes namespaces, names and node names fit these rules; anything that does not
//! is refused here rather than producing an ID SPIRE would reject.

pub use spiffe::{SpiffeId, SpiffeIdError, TrustDomain};

/// Tekton's default `spire-node-alias-prefix`.
pub const DEFAULT_NODE_ALIAS_PREFIX: &str = "/tekton-node/";

/// Why an ID could not be built.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpiffeIdBuildError {
    /// The node-alias prefix does not start with `/` (Tekton validates the same).
    #[error("node alias prefix {prefix:?} must start with '/'")]
    PrefixWithoutLeadingSlash {
        /// The refused prefix.
        prefix: String,
    },
    /// The resulting ID is not a valid SPIFFE ID (for example a name with a character outside
    /// `[a-zA-Z0-9._-]`).
    #[error("invalid SPIFFE ID {id:?}")]
    Invalid {
        /// The ID that was built.
        id: String,
        /// What the SPIFFE ID parser refused.
        #[source]
        source: SpiffeIdError,
    },
}

/// A validated `spire-node-alias-prefix` (starts with `/`; default `/tekton-node/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAliasPrefix(String);

impl NodeAliasPrefix {
    /// Validates a prefix. Like Tekton, the node name is appended as is, so `/tekton-node/`
    /// gives `/tekton-node/<node>` and `/nodes` would give `/nodes<node>`.
    pub fn new(prefix: impl Into<String>) -> Result<Self, SpiffeIdBuildError> {
        let prefix = prefix.into();
        if !prefix.starts_with('/') {
            return Err(SpiffeIdBuildError::PrefixWithoutLeadingSlash { prefix });
        }
        Ok(Self(prefix))
    }

    /// The prefix text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for NodeAliasPrefix {
    fn default() -> Self {
        Self(DEFAULT_NODE_ALIAS_PREFIX.to_owned())
    }
}

fn build(trust_domain: &TrustDomain, path: &str) -> Result<SpiffeId, SpiffeIdBuildError> {
    let id = format!("{}{path}", trust_domain.id_string());
    SpiffeId::new(&id).map_err(|source| SpiffeIdBuildError::Invalid { id, source })
}

/// `spiffe://<td>/ns/<namespace>/taskrun/<name>`: the identity of a TaskRun's pod.
pub fn taskrun_spiffe_id(
    trust_domain: &TrustDomain,
    namespace: &str,
    name: &str,
) -> Result<SpiffeId, SpiffeIdBuildError> {
    SpiffeId::from_segments(trust_domain.clone(), &["ns", namespace, "taskrun", name]).map_err(
        |source| SpiffeIdBuildError::Invalid {
            id: format!("{}/ns/{namespace}/taskrun/{name}", trust_domain.id_string()),
            source,
        },
    )
}

/// `spiffe://<td><prefix><node>`: the node alias every agent on `node` holds.
pub fn node_alias_spiffe_id(
    trust_domain: &TrustDomain,
    prefix: &NodeAliasPrefix,
    node_name: &str,
) -> Result<SpiffeId, SpiffeIdBuildError> {
    build(trust_domain, &format!("{}{node_name}", prefix.as_str()))
}

/// `spiffe://<td>/spire/server`: the parent of node-alias entries.
pub fn spire_server_spiffe_id(trust_domain: &TrustDomain) -> SpiffeId {
    // Cannot fail: both segments are fixed, valid path segments.
    SpiffeId::from_segments(trust_domain.clone(), &["spire", "server"])
        .unwrap_or_else(|_| unreachable!("fixed path segments are valid"))
}

/// The `(namespace, name)` of a TaskRun SPIFFE ID, or `None` if the path is not
/// `/ns/<namespace>/taskrun/<name>`.
pub fn parse_taskrun_spiffe_id(id: &SpiffeId) -> Option<(&str, &str)> {
    let mut segments = id.path().strip_prefix('/')?.split('/');
    match (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) {
        (Some("ns"), Some(namespace), Some("taskrun"), Some(name), None) => Some((namespace, name)),
        _ => None,
    }
}

/// Tekton's default `spire-trust-domain`, and every service's default `spire.trust_domain`.
pub const DEFAULT_TRUST_DOMAIN: &str = "example.org";

/// The trust domain as configuration names it (`spire.trust_domain`, Tekton's
/// `spire-trust-domain`): a [`TrustDomain`] that deserializes from its name and is checked then,
/// so every service refuses a bad one at load, naming the key, with the same rule. Default
/// [`DEFAULT_TRUST_DOMAIN`].
#[derive(Clone, PartialEq, Eq)]
pub struct ConfiguredTrustDomain(TrustDomain);

impl ConfiguredTrustDomain {
    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.0
    }

    /// The trust domain, owned.
    pub fn into_trust_domain(self) -> TrustDomain {
        self.0
    }

    /// The trust domain's name (`example.org`).
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl Default for ConfiguredTrustDomain {
    fn default() -> Self {
        // Cannot fail: the literal is a valid trust domain (a test checks it).
        ConfiguredTrustDomain(
            TrustDomain::new(DEFAULT_TRUST_DOMAIN)
                .unwrap_or_else(|_| unreachable!("{DEFAULT_TRUST_DOMAIN} is a valid trust domain")),
        )
    }
}

impl From<TrustDomain> for ConfiguredTrustDomain {
    fn from(trust_domain: TrustDomain) -> Self {
        ConfiguredTrustDomain(trust_domain)
    }
}

impl std::str::FromStr for ConfiguredTrustDomain {
    type Err = SpiffeIdError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        TrustDomain::new(name).map(ConfiguredTrustDomain)
    }
}

impl std::fmt::Debug for ConfiguredTrustDomain {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.0.as_str(), formatter)
    }
}

impl std::fmt::Display for ConfiguredTrustDomain {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.0.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for ConfiguredTrustDomain {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(|error| {
            serde::de::Error::custom(format!("{name:?} is not a SPIFFE trust domain: {error}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    #[test]
    fn taskrun_id_matches_tekton() {
        let id = taskrun_spiffe_id(&example(), "default", "build-push-run-x7k2p").unwrap();
        assert_eq!(
            id.to_string(),
            "spiffe://example.org/ns/default/taskrun/build-push-run-x7k2p"
        );
        assert_eq!(
            parse_taskrun_spiffe_id(&id),
            Some(("default", "build-push-run-x7k2p"))
        );
    }

    #[test]
    fn node_alias_uses_prefix_verbatim() {
        let id =
            node_alias_spiffe_id(&example(), &NodeAliasPrefix::default(), "kind-worker").unwrap();
        assert_eq!(
            id.to_string(),
            "spiffe://example.org/tekton-node/kind-worker"
        );
        let custom = NodeAliasPrefix::new("/nodes/").unwrap();
        let id = node_alias_spiffe_id(&example(), &custom, "n1").unwrap();
        assert_eq!(id.to_string(), "spiffe://example.org/nodes/n1");
    }

    #[test]
    fn prefix_must_start_with_slash() {
        assert!(matches!(
            NodeAliasPrefix::new("tekton-node/"),
            Err(SpiffeIdBuildError::PrefixWithoutLeadingSlash { .. })
        ));
    }

    #[test]
    fn server_id() {
        assert_eq!(
            spire_server_spiffe_id(&example()).to_string(),
            "spiffe://example.org/spire/server"
        );
    }

    #[test]
    fn invalid_names_are_refused() {
        assert!(taskrun_spiffe_id(&example(), "default", "a/b").is_err());
        assert!(taskrun_spiffe_id(&example(), "", "x").is_err());
        assert!(node_alias_spiffe_id(&example(), &NodeAliasPrefix::default(), "n?1").is_err());
    }

    #[test]
    fn non_taskrun_paths_are_not_taskrun_ids() {
        for id in [
            "spiffe://example.org/spire/server",
            "spiffe://example.org/ns/default/taskrun/a/extra",
            "spiffe://example.org/ns/default/pod/a",
        ] {
            assert_eq!(parse_taskrun_spiffe_id(&SpiffeId::new(id).unwrap()), None);
        }
    }

    #[test]
    fn a_configured_trust_domain_is_checked_when_deserialized() {
        assert_eq!(
            ConfiguredTrustDomain::default().as_str(),
            DEFAULT_TRUST_DOMAIN
        );
        let parsed: ConfiguredTrustDomain =
            serde_json::from_str("\"prod.example\"").expect("a trust domain");
        assert_eq!(parsed.trust_domain().as_str(), "prod.example");
        assert!(serde_json::from_str::<ConfiguredTrustDomain>("\"Not A Domain\"").is_err());
        assert!(serde_json::from_str::<ConfiguredTrustDomain>("\"\"").is_err());
    }
}
