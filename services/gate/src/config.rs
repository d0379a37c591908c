//! The gate's configuration: the shared sections, the bus (for the bucket names), the webhook's
//! HTTPS listener and serving certificate, the verdict API's listener, the rule's wait bound, the
//! namespace policy label, and where the Kubernetes API is.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use countersign_events::BusConfig;
use countersign_runtime::config::{
    AdminConfig, ConfigError, Environment, ServiceConfig, ShutdownConfig, TelemetryConfig,
};
use countersign_runtime::nats::NatsConfig;
use serde::Deserialize;

use crate::cluster::GateMode;

/// The whole gate configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// `[admin]`: `/livez`, `/readyz`, `/metrics`.
    #[serde(default)]
    pub admin: AdminConfig,
    /// `[telemetry]`.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// `[shutdown]`.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// `[nats]`.
    #[serde(default)]
    pub nats: NatsConfig,
    /// `[bus]`: the prefix of the attestations bucket's name.
    #[serde(default)]
    pub bus: BusConfig,
    /// `[webhook]`: the admission webhook's HTTPS server.
    #[serde(default)]
    pub webhook: WebhookConfig,
    /// `[api]`: the verdict API.
    #[serde(default)]
    pub api: ApiConfig,
    /// `[policy]`: the rule's bounds and the namespace policy.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// `[kubernetes]`: where the API server is.
    #[serde(default)]
    pub kubernetes: KubernetesConfig,
    /// `[cluster]`: the cluster's name in decision events and their subjects.
    #[serde(default)]
    pub cluster: ClusterConfig,
}

/// `[cluster]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The cluster's name, as the watcher's `cluster.name`. Default `default`.
    pub name: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            name: "default".to_owned(),
        }
    }
}

/// `[webhook]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// HTTPS listen address. Default `0.0.0.0:8443`.
    pub listen: SocketAddr,
    /// PEM certificate chain, leaf first. Default `/etc/countersign/tls/tls.crt`.
    pub cert_file: PathBuf,
    /// PEM private key. Default `/etc/countersign/tls/tls.key`.
    pub key_file: PathBuf,
    /// How often the two files are checked for a new pair. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// The largest AdmissionReview body accepted. Default 3 MiB (the API server's own object
    /// limit is 1.5 MiB, and the review carries the object once, plus little).
    pub max_body_bytes: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            listen: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8443)),
            cert_file: PathBuf::from("/etc/countersign/tls/tls.crt"),
            key_file: PathBuf::from("/etc/countersign/tls/tls.key"),
            reload_interval: Duration::from_secs(10),
            max_body_bytes: 3 * 1024 * 1024,
        }
    }
}

/// `[api]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Plain HTTP listen address of the verdict API. Default `0.0.0.0:8080`.
    pub listen: SocketAddr,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8080)),
        }
    }
}

/// `[policy]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// How long a request waits for an upstream verdict (and for the watches to bring the
    /// objects it needs) before denying. Default `2s`; keep it under the webhook's
    /// `timeoutSeconds` (at most 3).
    #[serde(with = "humantime_serde")]
    pub verdict_wait: Duration,
    /// The namespace label that selects the mode. Default `countersign.dev/gate`.
    pub mode_label: String,
    /// The mode of a namespace without the label (or with an unknown value). Default `enforce`
    /// (the ValidatingWebhookConfiguration's `namespaceSelector` decides which namespaces are
    /// sent at all).
    pub default_mode: GateMode,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            verdict_wait: Duration::from_secs(2),
            mode_label: "countersign.dev/gate".to_owned(),
            default_mode: GateMode::Enforce,
        }
    }
}

/// `[kubernetes]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// A kubeconfig instead of the in-cluster service account (else `$KUBECONFIG` or
    /// `~/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
}

/// The longest wait the webhook's `timeoutSeconds` (3 at most here) leaves room for.
pub const MAX_VERDICT_WAIT: Duration = Duration::from_millis(2_500);

impl ServiceConfig for GateConfig {
    countersign_runtime::shared_sections!(nats);

    fn validate(&self) -> Result<(), ConfigError> {
        if self.policy.verdict_wait > MAX_VERDICT_WAIT {
            return Err(ConfigError::invalid(
                "policy.verdict_wait",
                format!(
                    "at most {} so that a denial is sent before the webhook's 3 s timeout",
                    humantime::format_duration(MAX_VERDICT_WAIT)
                ),
            ));
        }
        if self.policy.mode_label.is_empty() {
            return Err(ConfigError::invalid(
                "policy.mode_label",
                "must not be empty",
            ));
        }
        if self.webhook.max_body_bytes < 4096 {
            return Err(ConfigError::invalid(
                "webhook.max_body_bytes",
                "at least 4096",
            ));
        }
        if self.cluster.name.is_empty() || self.cluster.name.len() > 253 {
            return Err(ConfigError::invalid("cluster.name", "1 to 253 bytes"));
        }
        if self.webhook.reload_interval.is_zero() {
            return Err(ConfigError::invalid(
                "webhook.reload_interval",
                "must be more than zero",
            ));
        }
        Ok(())
    }

    fn validate_environment(&self, _env: &Environment) -> Result<(), ConfigError> {
        for (key, path) in [
            ("webhook.cert_file", &self.webhook.cert_file),
            ("webhook.key_file", &self.webhook.key_file),
        ] {
            if !path.is_file() {
                return Err(ConfigError::invalid(
                    key,
                    format!("{} is not a readable file", path.display()),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<GateConfig, ConfigError> {
        let config: GateConfig =
            countersign_runtime::config::parse_config(text, &Environment::new())?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn defaults_are_documented_values() {
        let config = parse("").unwrap();
        assert_eq!(config.policy.verdict_wait, Duration::from_secs(2));
        assert_eq!(config.policy.default_mode, GateMode::Enforce);
        assert_eq!(config.webhook.listen.port(), 8443);
        assert_eq!(config.api.listen.port(), 8080);
    }

    #[test]
    fn a_wait_past_the_webhook_timeout_is_refused() {
        let error = parse("[policy]\nverdict_wait = \"3s\"\n").unwrap_err();
        assert_eq!(error.key(), Some("policy.verdict_wait"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(parse("[policy]\nwait = \"1s\"\n").is_err());
    }
}
