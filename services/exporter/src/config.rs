//! The exporter's configuration: a TOML file overlaid with `COUNTERSIGN_<SECTION>__<KEY>`
//! variables (see `countersign_runtime::config`), every key documented with its default in
//! `services/exporter/README.md`.
//!
//! `[[registries]]` is the allow-list: the only registries the exporter pushes to. It may not be
//! empty (an empty list would not mean "anywhere"), and a host is named once.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use countersign_events::{BusConfig, ConsumerConfig, Subjects};
use countersign_runtime::bounded_read::read_bounded;
use countersign_runtime::config::{
    AdminConfig, ConfigError, Environment, ServiceConfig, ShutdownConfig, TelemetryConfig,
};
use countersign_runtime::error_chain;
use countersign_runtime::http_client::TrustRoots;
use countersign_runtime::nats::NatsConfig;
use serde::Deserialize;

use crate::credentials::DockerConfig;
use crate::reference::is_valid_registry_host;

/// The whole configuration of the exporter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExporterConfig {
    /// `[admin]`: `/livez`, `/readyz`, `/metrics`.
    #[serde(default)]
    pub admin: AdminConfig,
    /// `[telemetry]`: logs and traces.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// `[shutdown]`: the drain's grace period.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// `[nats]`: the connection (the section every service shares).
    #[serde(default)]
    pub nats: NatsConfig,
    /// `[bus]`: the subject prefix and the stream limits (shared by every service).
    #[serde(default)]
    pub bus: BusConfig,
    /// `[consumer]`: the durable `exporter` consumer (ack wait, redeliveries, concurrency).
    #[serde(default)]
    pub consumer: ConsumerConfig,
    /// `[push]`: how the registries are talked to.
    #[serde(default)]
    pub push: PushConfig,
    /// `[[registries]]`: the registries pushed to, and only these. At least one.
    #[serde(default)]
    pub registries: Vec<RegistryConfig>,
}

/// The largest CA file read.
pub const MAX_CA_FILE_BYTES: u64 = 1024 * 1024;

impl ServiceConfig for ExporterConfig {
    countersign_runtime::shared_sections!(nats);

    fn validate(&self) -> Result<(), ConfigError> {
        Subjects::new(&self.bus.prefix)
            .map_err(|error| ConfigError::invalid("bus.prefix", error.to_string()))?;
        if self.registries.is_empty() {
            return Err(ConfigError::invalid(
                "registries",
                "at least one [[registries]] entry is required: the exporter pushes only to the \
                 registries listed",
            ));
        }
        let mut hosts = BTreeSet::new();
        for (index, registry) in self.registries.iter().enumerate() {
            let key = format!("registries[{index}].host");
            if !is_valid_registry_host(&registry.host) {
                return Err(ConfigError::invalid(
                    key,
                    format!(
                        "{:?} is not a registry host (`name[:port]`, lower case)",
                        registry.host
                    ),
                ));
            }
            if !hosts.insert(crate::reference::canonical_host(&registry.host)) {
                return Err(ConfigError::invalid(
                    key,
                    format!("the host {:?} is listed twice", registry.host),
                ));
            }
        }
        if self.push.timeout.is_zero() {
            return Err(ConfigError::invalid(
                "push.timeout",
                "must be more than zero",
            ));
        }
        if self.push.max_index_bytes == 0 {
            return Err(ConfigError::invalid(
                "push.max_index_bytes",
                "must be more than zero",
            ));
        }
        Ok(())
    }

    /// The Docker config file reads and parses, and the CA file holds a certificate.
    fn validate_environment(&self, _env: &Environment) -> Result<(), ConfigError> {
        if let Some(path) = &self.push.docker_config {
            DockerConfig::read(path)
                .map_err(|error| ConfigError::invalid("push.docker_config", error_chain(&error)))?;
        }
        self.push
            .trust_roots()
            .map_err(|message| ConfigError::invalid("push.ca_file", message))?;
        Ok(())
    }
}

impl ExporterConfig {
    /// The allow-list entry of `host` (as references name it), if it is on the list. An entry
    /// may name Docker Hub by any of its names (`docker.io`, `index.docker.io`,
    /// `registry-1.docker.io`).
    pub fn registry(&self, host: &str) -> Option<&RegistryConfig> {
        self.registries
            .iter()
            .find(|registry| crate::reference::canonical_host(&registry.host) == host)
    }
}

// === [push] ===

/// `[push]`: credentials, TLS and limits of the registry client.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// A Docker config file (`{"auths": {"<host>": {"auth": "<base64 user:password>"}}}`, as
    /// `docker login`, `oras login` and a `kubernetes.io/dockerconfigjson` Secret write it), read
    /// again when it changes (checked on every event) so a rotated Secret is picked up. Default:
    /// none (anonymous).
    #[serde(default)]
    pub docker_config: Option<PathBuf>,
    /// A PEM file of extra certificate authorities for `https` registries (besides the
    /// system's). Default: none.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The deadline of one registry request. Default `30s`.
    #[serde(default = "PushConfig::default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// The largest tag-schema index or subject manifest read back from a registry. Default
    /// 4 MiB (the OCI distribution spec's manifest limit).
    #[serde(default = "PushConfig::default_max_index_bytes")]
    pub max_index_bytes: usize,
}

impl PushConfig {
    /// Thirty seconds.
    pub const fn default_timeout() -> Duration {
        Duration::from_secs(30)
    }

    /// 4 MiB.
    pub const fn default_max_index_bytes() -> usize {
        4 * 1024 * 1024
    }

    /// The certificate authorities trusted for `https`.
    pub fn trust_roots(&self) -> Result<TrustRoots, String> {
        match &self.ca_file {
            None => Ok(TrustRoots::Native),
            Some(path) => {
                let pem = read_bounded(path, MAX_CA_FILE_BYTES).map_err(|e| error_chain(&e))?;
                let certificates =
                    TrustRoots::certificates_from_pem(&pem).map_err(|e| error_chain(&e))?;
                Ok(TrustRoots::NativeAnd(certificates))
            }
        }
    }
}

impl Default for PushConfig {
    fn default() -> PushConfig {
        PushConfig {
            docker_config: None,
            ca_file: None,
            timeout: PushConfig::default_timeout(),
            max_index_bytes: PushConfig::default_max_index_bytes(),
        }
    }
}

// === [[registries]] ===

/// One registry the exporter may push to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// The registry as image references name it: `registry.example.org`, `localhost:5000`,
    /// `docker.io` (pushed to through `registry-1.docker.io`). Required.
    pub host: String,
    /// Talk plain HTTP instead of HTTPS (a registry on the cluster network without TLS).
    /// Default `false`.
    #[serde(default)]
    pub plain_http: bool,
}

#[cfg(test)]
mod tests {
    use countersign_runtime::config::parse_config;

    use super::*;

    fn parse(text: &str) -> Result<ExporterConfig, ConfigError> {
        let config: ExporterConfig = parse_config(text, &Environment::new())?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn an_allow_list_entry_is_required() {
        let error = parse("").unwrap_err();
        assert_eq!(error.key(), Some("registries"));
    }

    #[test]
    fn registries_are_checked_and_found_by_host() {
        let config = parse(
            "[[registries]]\nhost = \"localhost:5000\"\nplain_http = true\n\
             [[registries]]\nhost = \"registry.example.org\"\n",
        )
        .unwrap();
        assert!(config.registry("localhost:5000").unwrap().plain_http);
        assert!(!config.registry("registry.example.org").unwrap().plain_http);
        assert!(config.registry("evil.example.org").is_none());
        assert_eq!(config.push.timeout, Duration::from_secs(30));

        let twice =
            parse("[[registries]]\nhost = \"a.example\"\n[[registries]]\nhost = \"a.example\"\n");
        assert_eq!(twice.unwrap_err().key(), Some("registries[1].host"));
        let bad = parse("[[registries]]\nhost = \"https://a.example\"\n");
        assert_eq!(bad.unwrap_err().key(), Some("registries[0].host"));

        // Docker Hub by any of its names.
        let hub = parse("[[registries]]\nhost = \"registry-1.docker.io\"\n").unwrap();
        assert!(hub.registry("docker.io").is_some());
        let hub_twice = parse(
            "[[registries]]\nhost = \"docker.io\"\n[[registries]]\nhost = \"index.docker.io\"\n",
        );
        assert_eq!(hub_twice.unwrap_err().key(), Some("registries[1].host"));
    }
}
