//! The `[spire]` configuration section the services that talk to SPIRE share (the attestor, the
//! registrar and the watcher), modelled on Tekton's `config-spire` ConfigMap: one section they all
//! read, each using the keys it needs (the table below, and
//! the README's). The keys Tekton's ConfigMap also has accept Tekton's spelling too
//! (`spire-trust-domain`, `spire-socket-path`, `spire-server-addr`, `spire-node-alias-prefix`),
//! with Tekton's defaults.
//!
//! | key | default | read by |
//! |---|---|---|
//! | `trust_domain` | `example.org` | attestor, registrar, watcher |
//! | `socket_path` | `SPIFFE_ENDPOINT_SOCKET`, else `unix:///spiffe-workload-api/spire-agent.sock` | attestor, registrar (TCP mode) |
//! | `server_addr` | `spire-server.spire.svc.cluster.local:8081` | registrar |
//! | `node_alias_prefix` | `/tekton-node/` | registrar |
//! | `server_socket_path` | unset | registrar |
//! | `svid_timeout` (also `first_svid_timeout`) | `30s` | attestor, registrar (TCP mode) |
//! | `clock_skew` | `5s` | attestor |
//!
//! Each of the three accepts every key (it refuses only keys none of them knows), and
//! [`SpireConfig::validate`] checks the values serde cannot, naming the key.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::spiffe_id::{ConfiguredTrustDomain, DEFAULT_NODE_ALIAS_PREFIX, NodeAliasPrefix};
use crate::workload::{EndpointConfigError, TEKTON_DEFAULT_SOCKET, WorkloadEndpoint};

/// The registrar's default `server_addr`.
pub const DEFAULT_SERVER_ADDR: &str = "spire-server.spire.svc.cluster.local:8081";

/// `[spire]`: the trust domain, the SPIRE agent's Workload API and the SPIRE server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpireConfig {
    /// The trust domain of every SPIFFE ID (TaskRuns', nodes', the services' own), checked when
    /// the config loads: Tekton's `spire-trust-domain` (also accepted as that key). Unset means
    /// `example.org`, Tekton's default (see [`SpireConfig::trust_domain`]). Read by all three.
    #[serde(alias = "spire-trust-domain")]
    pub trust_domain: Option<ConfiguredTrustDomain>,
    /// The SPIRE agent's Workload API address, where a service gets its own SVID and the trust
    /// bundles: Tekton's `spire-socket-path` (also accepted as that key). Unset means the
    /// `SPIFFE_ENDPOINT_SOCKET` variable, else `unix:///spiffe-workload-api/spire-agent.sock`
    /// (see [`SpireConfig::endpoint`]). Read by the attestor, and by the registrar in TCP mode.
    #[serde(alias = "spire-socket-path")]
    pub socket_path: Option<String>,
    /// The SPIRE server's TCP address (`host:port`), reached with mTLS when
    /// `server_socket_path` is unset: Tekton's `spire-server-addr` (also accepted as that key).
    /// Default `spire-server.spire.svc.cluster.local:8081`. Read by the registrar only.
    #[serde(alias = "spire-server-addr")]
    pub server_addr: String,
    /// The path prefix of node alias SPIFFE IDs; must start with `/`: Tekton's
    /// `spire-node-alias-prefix` (also accepted as that key). Default `/tekton-node/`. Read by
    /// the registrar only (checked by all three).
    #[serde(alias = "spire-node-alias-prefix")]
    pub node_alias_prefix: String,
    /// The SPIRE server's admin Unix socket. When set, the registrar runs as a sidecar of the
    /// server and calls it over this socket (no TLS, no SVID) instead of `server_addr`.
    /// Default: unset. Read by the registrar only.
    pub server_socket_path: Option<PathBuf>,
    /// How long one attempt to get the service's own first SVID (and the bundles) from the
    /// Workload API may take before it is retried. Also accepted as `first_svid_timeout` (the
    /// attestor's former key). Default `30s`. Read by the attestor, and by the registrar in TCP
    /// mode.
    #[serde(alias = "first_svid_timeout", with = "humantime_serde")]
    pub svid_timeout: Duration,
    /// Allowance for clock differences between SPIRE, the nodes and the API server, applied to
    /// the validity and issuance checks. Default `5s`. Read by the attestor.
    #[serde(with = "humantime_serde")]
    pub clock_skew: Duration,
}

/// A `[spire]` value [`SpireConfig::validate`] refused: the key (`spire.socket_path`) and why.
/// Services turn it into their configuration error naming the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct InvalidSpireValue {
    /// The full key, e.g. `spire.socket_path`.
    pub key: &'static str,
    /// Why the value is refused.
    pub message: String,
}

impl SpireConfig {
    /// Thirty seconds.
    pub const fn default_svid_timeout() -> Duration {
        Duration::from_secs(30)
    }

    /// Five seconds.
    pub const fn default_clock_skew() -> Duration {
        Duration::from_secs(5)
    }

    /// The trust domain: the configured one, else `example.org` (Tekton's default).
    pub fn trust_domain(&self) -> ConfiguredTrustDomain {
        self.trust_domain.clone().unwrap_or_default()
    }

    /// The Workload API address: the configured `socket_path`, else `spiffe_endpoint_socket`
    /// (the `SPIFFE_ENDPOINT_SOCKET` variable of the service's environment), else Tekton's
    /// default. Empty values count as unset.
    pub fn endpoint(
        &self,
        spiffe_endpoint_socket: Option<&str>,
    ) -> Result<WorkloadEndpoint, EndpointConfigError> {
        WorkloadEndpoint::from_config(self.socket_path.as_deref(), |_| {
            spiffe_endpoint_socket.map(str::to_owned)
        })
        .or_else(|error| match error {
            EndpointConfigError::NotConfigured => WorkloadEndpoint::new(TEKTON_DEFAULT_SOCKET),
            other => Err(other),
        })
    }

    /// The node alias prefix, parsed (key `spire.node_alias_prefix`).
    pub fn node_alias_prefix(&self) -> Result<NodeAliasPrefix, InvalidSpireValue> {
        NodeAliasPrefix::new(self.node_alias_prefix.clone()).map_err(|error| InvalidSpireValue {
            key: "spire.node_alias_prefix",
            message: error.to_string(),
        })
    }

    /// Checks `socket_path`, when set, is a Workload API address (key `spire.socket_path`).
    pub fn validate_socket_path(&self) -> Result<(), InvalidSpireValue> {
        match self.socket_path.as_deref() {
            Some(socket) if !socket.is_empty() => {
                WorkloadEndpoint::new(socket)
                    .map(drop)
                    .map_err(|error| InvalidSpireValue {
                        key: "spire.socket_path",
                        message: error.to_string(),
                    })
            }
            _ => Ok(()),
        }
    }

    /// Checks what serde cannot: `socket_path` ([`SpireConfig::validate_socket_path`]) and
    /// `node_alias_prefix` ([`SpireConfig::node_alias_prefix`]). The trust domain is checked when
    /// it deserializes.
    pub fn validate(&self) -> Result<(), InvalidSpireValue> {
        self.validate_socket_path()?;
        self.node_alias_prefix()?;
        Ok(())
    }
}

impl Default for SpireConfig {
    fn default() -> Self {
        SpireConfig {
            trust_domain: None,
            socket_path: None,
            server_addr: DEFAULT_SERVER_ADDR.to_owned(),
            node_alias_prefix: DEFAULT_NODE_ALIAS_PREFIX.to_owned(),
            server_socket_path: None,
            svid_timeout: SpireConfig::default_svid_timeout(),
            clock_skew: SpireConfig::default_clock_skew(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `text` as the body of a `[spire]` section of a TOML file.
    fn parse(text: &str) -> Result<SpireConfig, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            #[serde(default)]
            spire: SpireConfig,
        }
        let file: File =
            toml::from_str(&format!("[spire]\n{text}\n")).map_err(|e| e.to_string())?;
        Ok(file.spire)
    }

    #[test]
    fn defaults_are_tektons() {
        let config = parse("").unwrap();
        assert_eq!(config, SpireConfig::default());
        assert_eq!(config.trust_domain, None);
        assert_eq!(config.trust_domain().as_str(), "example.org");
        assert_eq!(config.socket_path, None);
        assert_eq!(
            config.server_addr,
            "spire-server.spire.svc.cluster.local:8081"
        );
        assert_eq!(config.node_alias_prefix, "/tekton-node/");
        assert_eq!(
            config.node_alias_prefix().unwrap().as_str(),
            "/tekton-node/"
        );
        assert_eq!(config.server_socket_path, None);
        assert_eq!(config.svid_timeout, Duration::from_secs(30));
        assert_eq!(config.clock_skew, Duration::from_secs(5));
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn tekton_spellings_are_accepted() {
        let config = parse(
            r#"
            spire-trust-domain = "prod.example"
            spire-socket-path = "unix:///run/spire/agent.sock"
            spire-server-addr = "spire:8081"
            spire-node-alias-prefix = "/nodes/"
            "#,
        )
        .unwrap();
        assert_eq!(config.trust_domain().as_str(), "prod.example");
        assert_eq!(
            config.socket_path.as_deref(),
            Some("unix:///run/spire/agent.sock")
        );
        assert_eq!(config.server_addr, "spire:8081");
        assert_eq!(config.node_alias_prefix, "/nodes/");
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn our_spellings_and_the_durations() {
        let config = parse(
            r#"
            trust_domain = "corp.example"
            socket_path = "tcp://127.0.0.1:8082"
            server_socket_path = "/run/spire/api.sock"
            svid_timeout = "2m"
            clock_skew = "1s"
            "#,
        )
        .unwrap();
        assert_eq!(config.trust_domain, Some("corp.example".parse().unwrap()));
        assert_eq!(
            config.server_socket_path,
            Some(PathBuf::from("/run/spire/api.sock"))
        );
        assert_eq!(config.svid_timeout, Duration::from_secs(120));
        assert_eq!(config.clock_skew, Duration::from_secs(1));
    }

    #[test]
    fn first_svid_timeout_is_the_attestors_former_key() {
        let config = parse("first_svid_timeout = \"5s\"").unwrap();
        assert_eq!(config.svid_timeout, Duration::from_secs(5));
    }

    #[test]
    fn endpoint_is_configured_then_environment_then_tektons_default() {
        let unset = SpireConfig::default();
        assert_eq!(
            unset.endpoint(None).unwrap().as_str(),
            TEKTON_DEFAULT_SOCKET
        );
        assert_eq!(
            unset.endpoint(Some("")).unwrap().as_str(),
            TEKTON_DEFAULT_SOCKET
        );
        assert_eq!(
            unset
                .endpoint(Some("unix:///from/env.sock"))
                .unwrap()
                .as_str(),
            "unix:///from/env.sock"
        );
        let configured = SpireConfig {
            socket_path: Some("unix:///configured.sock".to_owned()),
            ..SpireConfig::default()
        };
        assert_eq!(
            configured
                .endpoint(Some("unix:///from/env.sock"))
                .unwrap()
                .as_str(),
            "unix:///configured.sock"
        );
        let empty = SpireConfig {
            socket_path: Some(String::new()),
            ..SpireConfig::default()
        };
        assert_eq!(
            empty
                .endpoint(Some("unix:///from/env.sock"))
                .unwrap()
                .as_str(),
            "unix:///from/env.sock"
        );
        assert!(unset.endpoint(Some("http://agent")).is_err());
    }

    #[test]
    fn validation_names_the_key() {
        let config = parse("socket_path = \"http://agent\"").unwrap();
        let error = config.validate().unwrap_err();
        assert_eq!(error.key, "spire.socket_path");
        assert_eq!(
            config.validate_socket_path().unwrap_err().key,
            "spire.socket_path"
        );

        let config = parse("node_alias_prefix = \"nodes/\"").unwrap();
        let error = config.validate().unwrap_err();
        assert_eq!(error.key, "spire.node_alias_prefix");
        assert_eq!(
            config.node_alias_prefix().unwrap_err().key,
            "spire.node_alias_prefix"
        );
        assert_eq!(config.validate_socket_path(), Ok(()));
    }

    #[test]
    fn a_bad_trust_domain_is_refused_when_it_loads() {
        let error = parse("trust_domain = \"Not A Domain\"").unwrap_err();
        assert!(error.contains("not a SPIFFE trust domain"), "{error}");
    }

    #[test]
    fn an_unknown_key_is_refused() {
        let error = parse("socket = \"unix:///a.sock\"").unwrap_err();
        assert!(error.contains("unknown field"), "{error}");
    }
}
