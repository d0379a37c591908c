//! The registrar's configuration: a TOML file overlaid with `COUNTERSIGN_<SECTION>__<KEY>`
//! variables (see `countersign_runtime::config`), every key with a documented default, unknown keys
//! refused, and everything serde cannot check (trust domain, templates, prefixes, sizes) checked in
//! [`RegistrarConfig::validate`] before anything is bound.
//!
//! `[spire]` is the section the attestor, registrar and watcher share (`countersign_identity::spire_config`); the
//! keys Tekton's `config-spire` ConfigMap also has accept Tekton's spelling too:
//! `spire-trust-domain`, `spire-socket-path`, `spire-server-addr`, `spire-node-alias-prefix` (in
//! the file), or `COUNTERSIGN_SPIRE__TRUST_DOMAIN` and so on (in the environment).
//!
//! README.md lists every key with its default and meaning.

use std::time::Duration;

use countersign_events::{BusConfig, ConsumerConfig};
use countersign_identity::spire_config::SpireConfig;
use countersign_runtime::ServiceConfig;
use countersign_runtime::config::{AdminConfig, ConfigError, ShutdownConfig, TelemetryConfig};
use countersign_runtime::nats::NatsConfig;
use serde::Deserialize;

use crate::template::{Scope, Template};

/// The registrar's whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrarConfig {
    /// `[admin]`: `/livez`, `/readyz`, `/metrics`.
    #[serde(default)]
    pub admin: AdminConfig,
    /// `[telemetry]`: logs and traces.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// `[shutdown]`: the drain's grace period.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// `[nats]`: the NATS connection (the section every service shares, see
    /// `countersign_runtime::nats`).
    #[serde(default)]
    pub nats: NatsConfig,
    /// `[bus]`: the subject prefix and the streams' limits (shared by every service).
    #[serde(default)]
    pub bus: BusConfig,
    /// `[consumer]`: how the durable `registrar` consumer is read (ack wait, retries, concurrency).
    #[serde(default)]
    pub consumer: ConsumerConfig,
    /// `[spire]`: the SPIRE server and the identities (Tekton's `config-spire` keys; the section
    /// the attestor, registrar and watcher share, see `countersign_identity::spire_config`).
    #[serde(default)]
    pub spire: SpireConfig,
    /// `[entries]`: what the registration entries look like.
    #[serde(default)]
    pub entries: EntriesConfig,
    /// `[expiry]`: how long workload entries live in SPIRE.
    #[serde(default)]
    pub expiry: ExpiryConfig,
    /// `[node_alias]`: node alias lifetime and release.
    #[serde(default)]
    pub node_alias: NodeAliasConfig,
    /// `[batch]`: how creates and deletes are coalesced into batch calls.
    #[serde(default)]
    pub batch: BatchConfig,
    /// `[state]`: the KV bucket of per-TaskRun and per-node state.
    #[serde(default)]
    pub state: StateConfig,
    /// `[reconcile]`: the periodic comparison of SPIRE with the state.
    #[serde(default)]
    pub reconcile: ReconcileConfig,
    /// `[bundle_history]`: recording every trust bundle SPIRE publishes.
    #[serde(default)]
    pub bundle_history: crate::bundle_history::BundleHistoryConfig,
}

/// The default workload selector templates: Tekton's.
pub const DEFAULT_WORKLOAD_SELECTORS: [&str; 2] =
    ["k8s:pod-uid:{pod_uid}", "k8s:pod-name:{pod_name}"];

/// The default node alias selector templates: Tekton's (add `k8s_psat:cluster:{cluster}` to
/// pin the alias to one cluster).
pub const DEFAULT_NODE_ALIAS_SELECTORS: [&str; 2] = [
    "k8s_psat:agent_ns:{agent_namespace}",
    "k8s_psat:agent_node_name:{node_name}",
];

/// `[entries]`: ids, hint and selector templates.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EntriesConfig {
    /// The prefix of every entry id the registrar creates (`<prefix>pod.<pod uid>`,
    /// `<prefix>node.<node>`); entries without it are never touched. Characters
    /// `[A-Za-z0-9._-]`. Must differ from spire-controller-manager's `entryIDPrefix`.
    /// Default `countersign.`.
    pub id_prefix: String,
    /// The hint every entry carries, so reconciliation lists only ours (server-side filter).
    /// Workloads see it in their SVID response. Default `countersign`.
    pub hint: String,
    /// The selectors of a TaskRun pod's workload entry, as `type:value` templates. Default
    /// `["k8s:pod-uid:{pod_uid}", "k8s:pod-name:{pod_name}"]`.
    pub workload_selectors: Vec<String>,
    /// The selectors of a node alias entry, as templates (node placeholders only). Default
    /// `["k8s_psat:agent_ns:{agent_namespace}", "k8s_psat:agent_node_name:{node_name}"]`.
    pub node_alias_selectors: Vec<String>,
    /// The namespace the SPIRE agents run in (`{agent_namespace}`). Default `spire`.
    pub agent_namespace: String,
    /// The X509-SVID lifetime of workload entries. Default: unset (the server's default).
    #[serde(with = "humantime_serde")]
    pub x509_svid_ttl: Option<Duration>,
}

impl Default for EntriesConfig {
    fn default() -> EntriesConfig {
        EntriesConfig {
            id_prefix: "countersign.".to_owned(),
            hint: "countersign".to_owned(),
            workload_selectors: DEFAULT_WORKLOAD_SELECTORS.map(str::to_owned).to_vec(),
            node_alias_selectors: DEFAULT_NODE_ALIAS_SELECTORS.map(str::to_owned).to_vec(),
            agent_namespace: "spire".to_owned(),
            x509_svid_ttl: None,
        }
    }
}

/// The longest id prefix accepted, so `<prefix>pod.<uid>` stays well under SPIRE's 255.
pub const MAX_ID_PREFIX_LEN: usize = 128;

/// The longest hint SPIRE accepts.
pub const MAX_HINT_LEN: usize = 1024;

/// `[expiry]`: `expires_at = now + (TaskRun timeout or default_timeout) + margin`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExpiryConfig {
    /// The timeout assumed when a TaskRun has none (or `0`, "no timeout"). Default `1h`
    /// (Tekton's `default-timeout-minutes`).
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
    /// Added to the timeout. Default `10m`.
    #[serde(with = "humantime_serde")]
    pub margin: Duration,
}

impl Default for ExpiryConfig {
    fn default() -> ExpiryConfig {
        ExpiryConfig {
            default_timeout: Duration::from_secs(60 * 60),
            margin: Duration::from_secs(10 * 60),
        }
    }
}

/// `[node_alias]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeAliasConfig {
    /// A node alias is released once no TaskRun pod on its node has needed it for this long
    /// (checked by the reconciler). Default `10m`.
    #[serde(with = "humantime_serde")]
    pub idle_release: Duration,
    /// A node alias expires this long after the latest workload entry parented on it, so it is
    /// updated at most about once per this period while its node is busy. Default `1h`.
    #[serde(with = "humantime_serde")]
    pub expiry_headroom: Duration,
}

impl Default for NodeAliasConfig {
    fn default() -> NodeAliasConfig {
        NodeAliasConfig {
            idle_release: Duration::from_secs(10 * 60),
            expiry_headroom: Duration::from_secs(60 * 60),
        }
    }
}

/// `[batch]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// The most entries in one `BatchCreateEntry` call. Default 50.
    pub max_creates: usize,
    /// The most ids in one `BatchDeleteEntry` call. Default 200.
    pub max_deletes: usize,
    /// How long the first request of a batch waits for others. Default `5ms`.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// How many batch calls may be in flight at once; while all are busy, batches keep growing
    /// up to their maximum. Default 2.
    pub max_in_flight: usize,
}

impl Default for BatchConfig {
    fn default() -> BatchConfig {
        BatchConfig {
            max_creates: 50,
            max_deletes: 200,
            linger: Duration::from_millis(5),
            max_in_flight: 2,
        }
    }
}

/// `[state]`: the `{PREFIX}_REGISTRAR` KV bucket.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// How long tombstones (and released node records) are kept: the bucket's `max_age`. Live
    /// records are rewritten by the reconciler before they get this old. Default `24h`.
    #[serde(with = "humantime_serde")]
    pub tombstone_ttl: Duration,
    /// The bucket's replicas in a JetStream cluster. Default 1.
    pub replicas: usize,
    /// The most bytes the bucket holds. Default 256 MiB.
    pub max_bytes: i64,
}

impl Default for StateConfig {
    fn default() -> StateConfig {
        StateConfig {
            tombstone_ttl: Duration::from_secs(24 * 60 * 60),
            replicas: 1,
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

/// `[reconcile]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    /// Whether the periodic reconciler runs. Default `true`.
    pub enabled: bool,
    /// The time between passes (the first one runs one interval after start). Default `1m`.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// The page size of `ListEntries`. Default 500.
    pub page_size: u32,
}

impl Default for ReconcileConfig {
    fn default() -> ReconcileConfig {
        ReconcileConfig {
            enabled: true,
            interval: Duration::from_secs(60),
            page_size: 500,
        }
    }
}

impl ServiceConfig for RegistrarConfig {
    countersign_runtime::shared_sections!(nats);

    fn validate(&self) -> Result<(), ConfigError> {
        // The Workload API socket is used in TCP mode only (the admin socket needs no SVID).
        let spire = if self.spire.server_socket_path.is_none() {
            self.spire.validate()
        } else {
            self.spire.node_alias_prefix().map(drop)
        };
        spire.map_err(|error| ConfigError::invalid(error.key, error.message))?;
        self.bundle_history.validate()?;
        if self.spire.server_socket_path.is_none() && !self.spire.server_addr.contains(':') {
            return Err(ConfigError::invalid(
                "spire.server_addr",
                "expected host:port",
            ));
        }
        let prefix = &self.entries.id_prefix;
        if prefix.is_empty()
            || prefix.len() > MAX_ID_PREFIX_LEN
            || !prefix.bytes().all(is_entry_id_byte)
        {
            return Err(ConfigError::invalid(
                "entries.id_prefix",
                format!("1 to {MAX_ID_PREFIX_LEN} characters of [A-Za-z0-9._-] expected"),
            ));
        }
        if self.entries.hint.is_empty() || self.entries.hint.len() > MAX_HINT_LEN {
            return Err(ConfigError::invalid(
                "entries.hint",
                format!("1 to {MAX_HINT_LEN} bytes expected (reconciliation lists entries by it)"),
            ));
        }
        if self.entries.agent_namespace.is_empty() {
            return Err(ConfigError::invalid(
                "entries.agent_namespace",
                "must not be empty",
            ));
        }
        parse_templates(
            "entries.workload_selectors",
            &self.entries.workload_selectors,
            Scope::Workload,
        )?;
        parse_templates(
            "entries.node_alias_selectors",
            &self.entries.node_alias_selectors,
            Scope::Node,
        )?;
        if self.batch.max_creates == 0
            || self.batch.max_deletes == 0
            || self.batch.max_in_flight == 0
        {
            return Err(ConfigError::invalid(
                "batch",
                "max_creates, max_deletes and max_in_flight must be at least 1",
            ));
        }
        if self.reconcile.interval.is_zero() || self.reconcile.page_size == 0 {
            return Err(ConfigError::invalid(
                "reconcile",
                "interval and page_size must be positive",
            ));
        }
        // Live records are refreshed when older than half the TTL; a pass must come in between.
        if self.state.tombstone_ttl < self.reconcile.interval * 4 {
            return Err(ConfigError::invalid(
                "state.tombstone_ttl",
                "must be at least four reconcile intervals (live records are refreshed by the reconciler)",
            ));
        }
        Ok(())
    }
}

/// Whether a byte may appear in a SPIRE entry id.
pub(crate) fn is_entry_id_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-')
}

/// Parses a list of selector templates, naming the key and index of a bad one.
pub(crate) fn parse_templates(
    key: &str,
    texts: &[String],
    scope: Scope,
) -> Result<Vec<Template>, ConfigError> {
    if texts.is_empty() {
        return Err(ConfigError::invalid(key, "at least one selector is needed"));
    }
    texts
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let template = Template::parse(text).map_err(|error| {
                ConfigError::invalid(format!("{key}[{index}]"), error.to_string())
            })?;
            template.check_scope(scope).map_err(|error| {
                ConfigError::invalid(format!("{key}[{index}]"), error.to_string())
            })?;
            if !text.contains(':') {
                return Err(ConfigError::invalid(
                    format!("{key}[{index}]"),
                    "a selector is written type:value",
                ));
            }
            Ok(template)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use countersign_runtime::config::{
        ConfigErrorKind, Environment, parse_config, validate_service_config,
    };

    use std::path::PathBuf;

    use countersign_identity::workload::TEKTON_DEFAULT_SOCKET;

    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<RegistrarConfig, ConfigError> {
        let env: Environment = env.iter().copied().collect();
        let config: RegistrarConfig = parse_config(text, &env)?;
        validate_service_config(&config, &env)?;
        Ok(config)
    }

    #[test]
    fn an_empty_config_has_tekton_compatible_defaults() {
        let config = parse("", &[]).expect("defaults are valid");
        assert_eq!(config.spire.trust_domain().as_str(), "example.org");
        assert_eq!(config.spire.node_alias_prefix, "/tekton-node/");
        assert_eq!(
            config.spire.server_addr,
            "spire-server.spire.svc.cluster.local:8081"
        );
        assert_eq!(config.spire.socket_path, None);
        assert_eq!(
            config.spire.endpoint(None).unwrap().as_str(),
            TEKTON_DEFAULT_SOCKET
        );
        assert_eq!(config.spire.svid_timeout, Duration::from_secs(30));
        assert_eq!(config.entries.id_prefix, "countersign.");
        assert_eq!(config.entries.hint, "countersign");
        assert_eq!(
            config.entries.workload_selectors,
            ["k8s:pod-uid:{pod_uid}", "k8s:pod-name:{pod_name}"]
        );
        assert_eq!(config.expiry.margin, Duration::from_secs(600));
        assert_eq!(config.node_alias.idle_release, Duration::from_secs(600));
        assert_eq!(config.batch.max_creates, 50);
        assert_eq!(config.batch.max_deletes, 200);
        assert_eq!(config.batch.linger, Duration::from_millis(5));
        assert_eq!(config.state.tombstone_ttl, Duration::from_secs(86_400));
    }

    #[test]
    fn tekton_key_spellings_and_environment_variables_both_work() {
        let config = parse(
            r#"
            [spire]
            spire-trust-domain = "prod.example"
            spire-node-alias-prefix = "/nodes/"
            spire-server-addr = "spire:8081"
            spire-socket-path = "unix:///run/spire/agent.sock"
            "#,
            &[],
        )
        .expect("Tekton's spelling");
        assert_eq!(config.spire.trust_domain().as_str(), "prod.example");
        assert_eq!(config.spire.node_alias_prefix, "/nodes/");
        assert_eq!(config.spire.server_addr, "spire:8081");
        assert_eq!(
            config.spire.socket_path.as_deref(),
            Some("unix:///run/spire/agent.sock")
        );

        let config = parse(
            "",
            &[
                ("COUNTERSIGN_SPIRE__TRUST_DOMAIN", "env.example"),
                (
                    "COUNTERSIGN_SPIRE__SERVER_SOCKET_PATH",
                    "/run/spire/api.sock",
                ),
                ("COUNTERSIGN_ENTRIES__ID_PREFIX", "cs-"),
            ],
        )
        .expect("environment");
        assert_eq!(config.spire.trust_domain().as_str(), "env.example");
        assert_eq!(
            config.spire.server_socket_path,
            Some(PathBuf::from("/run/spire/api.sock"))
        );
        assert_eq!(config.entries.id_prefix, "cs-");
    }

    #[test]
    fn unknown_placeholders_and_pod_placeholders_in_node_templates_are_refused() {
        let error = parse(
            "[entries]\nworkload_selectors = [\"k8s:pod-uid:{pod_id}\"]\n",
            &[],
        )
        .expect_err("unknown placeholder");
        assert_eq!(error.kind(), ConfigErrorKind::InvalidValue);
        assert_eq!(error.key(), Some("entries.workload_selectors[0]"));

        let error = parse(
            "[entries]\nnode_alias_selectors = [\"k8s_psat:agent_node_name:{node_name}\", \"k8s:pod-uid:{pod_uid}\"]\n",
            &[],
        )
        .expect_err("a pod placeholder in a node alias template");
        assert_eq!(error.key(), Some("entries.node_alias_selectors[1]"));

        let error = parse("[entries]\nworkload_selectors = []\n", &[]).expect_err("empty");
        assert_eq!(error.key(), Some("entries.workload_selectors"));
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            (
                "[spire]\ntrust_domain = \"Not A Domain\"\n",
                "spire.trust_domain",
            ),
            (
                "[spire]\nnode_alias_prefix = \"nodes/\"\n",
                "spire.node_alias_prefix",
            ),
            (
                "[spire]\nsocket_path = \"http://agent\"\n",
                "spire.socket_path",
            ),
            (
                "[entries]\nid_prefix = \"bad prefix\"\n",
                "entries.id_prefix",
            ),
            ("[entries]\nhint = \"\"\n", "entries.hint"),
            ("[batch]\nmax_creates = 0\n", "batch"),
            ("[bus]\nprefix = \"a.b\"\n", "bus.prefix"),
            ("[nats]\nurl = \"http://nats:4222\"\n", "nats.url"),
            ("[consumer]\nconcurrency = 0\n", "consumer.concurrency"),
            (
                "[consumer]\nmax_payload_bytes = 0\n",
                "consumer.max_payload_bytes",
            ),
            (
                "[state]\ntombstone_ttl = \"1m\"\n[reconcile]\ninterval = \"1m\"\n",
                "state.tombstone_ttl",
            ),
        ] {
            let error = parse(text, &[]).expect_err(text);
            assert_eq!(error.key(), Some(key), "{text}");
        }
        let error = parse("[entries]\nprefix = \"x\"\n", &[]).expect_err("unknown key");
        assert_eq!(error.kind(), ConfigErrorKind::UnknownKey);
    }

    #[test]
    fn the_admin_socket_mode_does_not_need_a_workload_socket() {
        let config = parse(
            "[spire]\nserver_socket_path = \"/tmp/api.sock\"\nsocket_path = \"not-an-endpoint\"\n",
            &[],
        )
        .expect("the workload socket is unused with the admin socket");
        assert!(config.spire.server_socket_path.is_some());
    }
}
