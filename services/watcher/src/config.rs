//! The watcher's configuration: a TOML file overlaid with `COUNTERSIGN_<SECTION>__<KEY>`
//! variables (see `countersign_runtime::config`), every key documented with its default, unknown
//! keys refused, and cross-field checks run at start-up (exit 64 before anything is bound).
//!
//! ```toml
//! [cluster]
//! name = "prod-eu"                  # COUNTERSIGN_CLUSTER__NAME
//!
//! [spire]                           # shared with the attestor and registrar; the watcher reads trust_domain
//! trust_domain = "example.org"      # COUNTERSIGN_SPIRE__TRUST_DOMAIN; also `spire-trust-domain`
//!
//! [kubernetes]
//! namespaces = ["ci", "release"]    # empty (default): all namespaces
//! label_selector = "app.kubernetes.io/managed-by=tekton-pipelines"
//!
//! [ingress]
//! listen = "0.0.0.0:8080"
//!
//! [nats]
//! url = "nats://nats.nats.svc:4222"
//! ```

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use countersign_events::{BusConfig, KvConfig, Subjects};
use countersign_identity::spiffe_id::{ConfiguredTrustDomain, TrustDomain};
use countersign_identity::spire_config::SpireConfig;
use countersign_runtime::config::{
    AdminConfig, ConfigError, ServiceConfig, ShutdownConfig, TelemetryConfig,
};
use countersign_runtime::nats::NatsConfig;
use kube::core::Selector;
use serde::Deserialize;

use crate::selector::parse_selector;

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatcherConfig {
    /// `[admin]`: `/livez`, `/readyz`, `/metrics` (default `0.0.0.0:9090`).
    #[serde(default)]
    pub admin: AdminConfig,
    /// `[telemetry]`: logs and traces.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// `[shutdown]`: the drain's grace period (default `25s`).
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// `[cluster]`: what events say about where TaskRuns run.
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// `[spire]`: the section the attestor, registrar and watcher share (see `countersign_identity::spire_config`);
    /// the watcher reads only `trust_domain`, the trust domain of TaskRun identities.
    #[serde(default)]
    pub spire: SpireConfig,
    /// `[kubernetes]`: what is watched, and how.
    #[serde(default)]
    pub kubernetes: KubernetesConfig,
    /// `[ingress]`: the HTTP endpoint for Tekton's CloudEvents.
    #[serde(default)]
    pub ingress: IngressConfig,
    /// `[nats]`: the connection (the section every service shares, see
    /// `countersign_runtime::nats`).
    #[serde(default)]
    pub nats: NatsConfig,
    /// `[bus]`: the subject prefix and the stream limits (see `countersign_events::BusConfig`).
    #[serde(default)]
    pub bus: BusConfig,
    /// `[state]`: the KV bucket of published transitions.
    #[serde(default)]
    pub state: StateConfig,
}

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The cluster's name in every event (`taskrun.cluster`) and in subjects: dot-separated
    /// segments of `[A-Za-z0-9_-]`. Default `default`. Give every cluster sharing a bus its own.
    #[serde(default = "ClusterConfig::default_name")]
    pub name: String,
    /// Deprecated spelling of `spire.trust_domain` (also `spire-trust-domain` here), still read:
    /// used when `spire.trust_domain` is unset, refused when it differs from it.
    #[serde(default, alias = "spire-trust-domain")]
    pub spire_trust_domain: Option<ConfiguredTrustDomain>,
}

impl ClusterConfig {
    fn default_name() -> String {
        "default".to_owned()
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            name: ClusterConfig::default_name(),
            spire_trust_domain: None,
        }
    }
}

/// `[kubernetes]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// A kubeconfig file to use. Default: unset, and the client is inferred (in-cluster service
    /// account, else `$KUBECONFIG` or `~/.kube/config`).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The namespaces to watch. Default: empty, meaning all namespaces (one cluster-wide watch
    /// each for TaskRuns and pods).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// A label selector TaskRuns must match (`key=value,other in (a,b)`); their pods are
    /// selected with it too (Tekton copies TaskRun labels to pods). Default: empty, every TaskRun.
    #[serde(default)]
    pub label_selector: String,
    /// How many TaskRuns are processed at once. Default 64: a worker mostly waits for PubAcks
    /// and KV writes, so more of them keep the bus busy while a backlog is listed.
    #[serde(default = "KubernetesConfig::default_concurrency")]
    pub concurrency: usize,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            kubeconfig: None,
            namespaces: Vec::new(),
            label_selector: String::new(),
            concurrency: KubernetesConfig::default_concurrency(),
        }
    }
}

impl KubernetesConfig {
    const fn default_concurrency() -> usize {
        64
    }

    /// The parsed label selector (checked by [`WatcherConfig::validate`]).
    pub fn selector(&self) -> Result<Selector, ConfigError> {
        parse_selector(&self.label_selector)
            .map_err(|error| ConfigError::invalid("kubernetes.label_selector", error.to_string()))
    }
}

/// `[ingress]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressConfig {
    /// Whether to serve the CloudEvents ingress. Default `true`.
    #[serde(default = "IngressConfig::default_enabled")]
    pub enabled: bool,
    /// Where to listen. Default `0.0.0.0:8080`.
    #[serde(default = "IngressConfig::default_listen")]
    pub listen: SocketAddr,
    /// The largest request body accepted; larger ones get 413. Default 2 MiB (a TaskRun object
    /// is at most 1.5 MiB in etcd).
    #[serde(default = "IngressConfig::default_max_body_bytes")]
    pub max_body_bytes: usize,
}

impl IngressConfig {
    const fn default_enabled() -> bool {
        true
    }

    const fn default_listen() -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8080))
    }

    const fn default_max_body_bytes() -> usize {
        2 * 1024 * 1024
    }
}

impl Default for IngressConfig {
    fn default() -> Self {
        IngressConfig {
            enabled: IngressConfig::default_enabled(),
            listen: IngressConfig::default_listen(),
            max_body_bytes: IngressConfig::default_max_body_bytes(),
        }
    }
}

/// `[state]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// The KV bucket's name after the bus prefix (`watcher` gives `COUNTERSIGN_WATCHER`).
    /// Default `watcher`. Replicas of one cluster share it; clusters may too (keys are per
    /// cluster).
    #[serde(default = "StateConfig::default_bucket")]
    pub bucket: String,
    /// How long a deleted TaskRun's marker stays, so late CloudEvents about it are ignored.
    /// Default `1day`.
    #[serde(
        default = "StateConfig::default_deleted_retention",
        with = "humantime_serde"
    )]
    pub deleted_retention: Duration,
    /// The bucket's limits (`history`, `max_bytes`, `replicas`). `max_age` must stay zero (a
    /// record that expired would let a relist publish its TaskRun's transitions again), and
    /// `limit_markers` unset (the watcher sets it to `deleted_retention`).
    #[serde(default)]
    pub kv: KvConfig,
}

impl StateConfig {
    fn default_bucket() -> String {
        "watcher".to_owned()
    }

    const fn default_deleted_retention() -> Duration {
        Duration::from_secs(24 * 60 * 60)
    }
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            bucket: StateConfig::default_bucket(),
            deleted_retention: StateConfig::default_deleted_retention(),
            kv: KvConfig::default(),
        }
    }
}

/// Whether `name` is dot-separated segments of `[A-Za-z0-9_-]` (a KV key prefix and a subject
/// token source).
fn is_cluster_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|segment| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
        })
}

/// Whether `name` is a Kubernetes namespace name (a DNS-1123 label).
fn is_namespace_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes
            .iter()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || *byte == b'-')
}

impl WatcherConfig {
    /// The trust domain of TaskRun SPIFFE IDs: `spire.trust_domain`, else the deprecated
    /// `cluster.spire_trust_domain`, else `example.org`.
    pub fn trust_domain(&self) -> TrustDomain {
        self.spire
            .trust_domain
            .as_ref()
            .or(self.cluster.spire_trust_domain.as_ref())
            .cloned()
            .unwrap_or_default()
            .into_trust_domain()
    }
}

impl ServiceConfig for WatcherConfig {
    countersign_runtime::shared_sections!(nats);

    fn validate(&self) -> Result<(), ConfigError> {
        if !is_cluster_name(&self.cluster.name) {
            return Err(ConfigError::invalid(
                "cluster.name",
                "dot-separated segments of [A-Za-z0-9_-] expected",
            ));
        }
        if let (Some(deprecated), Some(current)) =
            (&self.cluster.spire_trust_domain, &self.spire.trust_domain)
            && deprecated != current
        {
            return Err(ConfigError::invalid(
                "cluster.spire_trust_domain",
                format!(
                    "deprecated, and differs from spire.trust_domain ({current}); set only spire.trust_domain"
                ),
            ));
        }
        self.spire
            .validate()
            .map_err(|error| ConfigError::invalid(error.key, error.message))?;
        for (index, namespace) in self.kubernetes.namespaces.iter().enumerate() {
            if !is_namespace_name(namespace) {
                return Err(ConfigError::invalid(
                    format!("kubernetes.namespaces[{index}]"),
                    format!("{namespace:?} is not a namespace name"),
                ));
            }
            if self.kubernetes.namespaces[..index].contains(namespace) {
                return Err(ConfigError::invalid(
                    format!("kubernetes.namespaces[{index}]"),
                    format!("{namespace:?} is listed twice"),
                ));
            }
        }
        self.kubernetes.selector()?;
        if self.kubernetes.concurrency == 0 {
            return Err(ConfigError::invalid("kubernetes.concurrency", "at least 1"));
        }
        if self.ingress.max_body_bytes == 0 {
            return Err(ConfigError::invalid("ingress.max_body_bytes", "at least 1"));
        }
        let subjects = Subjects::new(&self.bus.prefix)
            .map_err(|error| ConfigError::invalid("bus.prefix", error.to_string()))?;
        subjects
            .kv_bucket_name(&self.state.bucket)
            .map_err(|error| ConfigError::invalid("state.bucket", error.to_string()))?;
        if self.state.deleted_retention < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "state.deleted_retention",
                "at least one second",
            ));
        }
        if self.state.kv.limit_markers.is_some() {
            return Err(ConfigError::invalid(
                "state.kv.limit_markers",
                "set by state.deleted_retention; leave it unset",
            ));
        }
        if !self.state.kv.max_age.is_zero() {
            return Err(ConfigError::invalid(
                "state.kv.max_age",
                "must be zero: expired records would be published again",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use countersign_runtime::config::{
        ConfigErrorKind, Environment, parse_config, validate_service_config,
    };

    use super::*;

    fn load(toml: &str, env: &Environment) -> Result<WatcherConfig, ConfigError> {
        let config: WatcherConfig = parse_config(toml, env)?;
        validate_service_config(&config, env)?;
        Ok(config)
    }

    #[test]
    fn defaults() {
        let config = load("", &Environment::new()).unwrap();
        assert_eq!(config.cluster.name, "default");
        assert_eq!(config.trust_domain().as_str(), "example.org");
        assert!(config.kubernetes.namespaces.is_empty());
        assert!(config.kubernetes.selector().unwrap().selects_all());
        assert_eq!(config.kubernetes.concurrency, 64);
        assert!(config.ingress.enabled);
        assert_eq!(config.ingress.listen.port(), 8080);
        assert_eq!(config.ingress.max_body_bytes, 2 * 1024 * 1024);
        assert_eq!(config.nats.url, "nats://127.0.0.1:4222");
        assert_eq!(config.bus.prefix, "countersign");
        assert_eq!(config.state.bucket, "watcher");
        assert_eq!(config.state.deleted_retention, Duration::from_secs(86_400));
    }

    #[test]
    fn file_and_environment() {
        let env = Environment::new()
            .with("COUNTERSIGN_CLUSTER__NAME", "prod.eu")
            .with("COUNTERSIGN_KUBERNETES__NAMESPACES", r#"["ci", "release"]"#)
            .with("COUNTERSIGN_INGRESS__MAX_BODY_BYTES", "1024");
        let config = load(
            "[spire]\nspire-trust-domain = \"corp.example\"\n[kubernetes]\nlabel_selector = \"team=a\"\n",
            &env,
        )
        .unwrap();
        assert_eq!(config.cluster.name, "prod.eu");
        assert_eq!(config.trust_domain().as_str(), "corp.example");
        assert_eq!(config.kubernetes.namespaces, ["ci", "release"]);
        assert_eq!(config.ingress.max_body_bytes, 1024);
        assert!(!config.kubernetes.selector().unwrap().selects_all());
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("[cluster]\nname = \"a b\"\n", "cluster.name"),
            (
                "[cluster]\nspire_trust_domain = \"Not A Domain\"\n",
                "cluster.spire_trust_domain",
            ),
            (
                "[spire]\ntrust_domain = \"Not A Domain\"\n",
                "spire.trust_domain",
            ),
            (
                "[spire]\ntrust_domain = \"a.example\"\n[cluster]\nspire_trust_domain = \"b.example\"\n",
                "cluster.spire_trust_domain",
            ),
            ("[nats]\nurl = \"nats://a:4222,not a url\"\n", "nats.url"),
            ("[bus]\nprefix = \"a.b\"\n", "bus.prefix"),
            (
                "[kubernetes]\nnamespaces = [\"Bad_NS\"]\n",
                "kubernetes.namespaces[0]",
            ),
            (
                "[kubernetes]\nnamespaces = [\"a\", \"a\"]\n",
                "kubernetes.namespaces[1]",
            ),
            (
                "[kubernetes]\nlabel_selector = \"a in b\"\n",
                "kubernetes.label_selector",
            ),
            ("[kubernetes]\nconcurrency = 0\n", "kubernetes.concurrency"),
            ("[nats]\nurl = \" \"\n", "nats.url"),
            ("[state]\nbucket = \"a.b\"\n", "state.bucket"),
            ("[state.kv]\nmax_age = \"1day\"\n", "state.kv.max_age"),
            (
                "[state.kv]\nlimit_markers = \"1h\"\n",
                "state.kv.limit_markers",
            ),
            (
                "[state]\ndeleted_retention = \"10ms\"\n",
                "state.deleted_retention",
            ),
        ];
        for (toml, key) in cases {
            let error = load(toml, &Environment::new()).expect_err(toml);
            assert_eq!(error.kind(), ConfigErrorKind::InvalidValue, "{toml}");
            assert_eq!(error.key(), Some(key), "{toml}");
        }
        let error = load("[ingress]\nlisten_on = 1\n", &Environment::new()).unwrap_err();
        assert_eq!(error.kind(), ConfigErrorKind::UnknownKey);
    }

    #[test]
    fn the_deprecated_trust_domain_key_is_still_read() {
        let env = Environment::new().with("COUNTERSIGN_CLUSTER__SPIRE_TRUST_DOMAIN", "old.example");
        assert_eq!(
            load("", &env).unwrap().trust_domain().as_str(),
            "old.example"
        );
        let both_agree = load("[spire]\ntrust_domain = \"old.example\"\n", &env).unwrap();
        assert_eq!(both_agree.trust_domain().as_str(), "old.example");
        let env = Environment::new().with("COUNTERSIGN_SPIRE__TRUST_DOMAIN", "new.example");
        assert_eq!(
            load("", &env).unwrap().trust_domain().as_str(),
            "new.example"
        );
    }
}
