//! The attestor's configuration: a TOML file overlaid with `COUNTERSIGN_<SECTION>__<KEY>`
//! variables (see `countersign_runtime::config`), every key documented with its default in
//! `services/attestor/README.md`.
//!
//! `[spire]` is the section the attestor, registrar and watcher share (`countersign_identity::spire_config`, Tekton's
//! `config-spire` keys); the attestor reads `trust_domain`, `socket_path` (default:
//! `SPIFFE_ENDPOINT_SOCKET`, else `unix:///spiffe-workload-api/spire-agent.sock`),
//! `svid_timeout` and `clock_skew`.

use std::path::PathBuf;
use std::time::Duration;

use countersign_events::{BusConfig, ConsumerConfig, KvConfig};
use countersign_identity::spire_config::SpireConfig;
use countersign_runtime::config::{
    AdminConfig, ConfigError, ServiceConfig, ShutdownConfig, TelemetryConfig,
};
use countersign_runtime::nats::NatsConfig;
use serde::Deserialize;

use crate::lane::BacklogConfig;

/// The whole configuration of the attestor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestorConfig {
    /// `[admin]`: `/livez`, `/readyz`, `/metrics`.
    #[serde(default)]
    pub admin: AdminConfig,
    /// `[telemetry]`: logs and traces.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// `[shutdown]`: the drain's grace period.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// `[nats]`: the connection (the section every service shares, see
    /// `countersign_runtime::nats`).
    #[serde(default)]
    pub nats: NatsConfig,
    /// `[bus]`: the subject prefix and the stream limits (shared by every service).
    #[serde(default)]
    pub bus: BusConfig,
    /// `[consumer]`: the durable `attestor` consumer (ack wait, redeliveries, concurrency).
    #[serde(default)]
    pub consumer: ConsumerConfig,
    /// `[spire]`: the trust domain, the Workload API, the first SVID's timeout and the clock
    /// skew (the section the attestor, registrar and watcher share, see `countersign_identity::spire_config`).
    #[serde(default)]
    pub spire: SpireConfig,
    /// `[store]`: the KV buckets.
    #[serde(default)]
    pub store: StoreConfig,
    /// `[annotate]`: the optional TaskRun annotation.
    #[serde(default)]
    pub annotate: AnnotateConfig,
    /// `[backlog]`: the backlog lane (see [`crate::lane`]).
    #[serde(default)]
    pub backlog: BacklogConfig,
    /// `[timestamp]`: the optional RFC 3161 timestamp authority (see [`crate::timestamp`]).
    #[serde(default)]
    pub timestamp: TimestampConfig,
}

impl ServiceConfig for AttestorConfig {
    countersign_runtime::shared_sections!(nats);

    fn validate(&self) -> Result<(), ConfigError> {
        self.spire
            .validate()
            .map_err(|error| ConfigError::invalid(error.key, error.message))?;
        self.timestamp.validate()?;
        Ok(())
    }
}

// === [timestamp] ===

/// `[timestamp]`: an RFC 3161 timestamp authority that timestamps every attestation's signature.
/// Off unless `url` is set; then `certificate_chain` is required, and an attestation is never
/// published without its verified timestamp (a TSA that is down delays attestations).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimestampConfig {
    /// Where `TimeStampReq`s are posted, e.g. `http://tsa:3000/api/v1/timestamp` (sigstore's
    /// timestamp-authority). Default: none (no timestamps).
    #[serde(default)]
    pub url: Option<url::Url>,
    /// The TSA's certificate chain (PEM: the signer, intermediates, the root), as its
    /// `/api/v1/timestamp/certchain` serves it; responses are verified against its root.
    /// Required with `url`.
    #[serde(default)]
    pub certificate_chain: Option<PathBuf>,
    /// How long one request may take. Default `10s`.
    #[serde(default = "TimestampConfig::default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

impl TimestampConfig {
    /// Ten seconds.
    pub const fn default_timeout() -> Duration {
        Duration::from_secs(10)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        match (&self.url, &self.certificate_chain) {
            (Some(url), Some(_)) => {
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(ConfigError::invalid(
                        "timestamp.url",
                        "the timestamp authority's URL must be http:// or https://",
                    ));
                }
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "timestamp.certificate_chain",
                    "a timestamp authority needs its certificate chain to verify its timestamps",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "timestamp.url",
                    "a certificate chain is set but no timestamp authority URL",
                ));
            }
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::invalid(
                "timestamp.timeout",
                "the timeout must be more than zero",
            ));
        }
        Ok(())
    }
}

impl Default for TimestampConfig {
    fn default() -> Self {
        TimestampConfig {
            url: None,
            certificate_chain: None,
            timeout: TimestampConfig::default_timeout(),
        }
    }
}

// === [store] ===

/// `[store]`: the three KV buckets.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `{PREFIX}_ATTESTATIONS`: one attestation per TaskRun UID. Default: kept for ever,
    /// 256 MiB.
    #[serde(default)]
    pub attestations: KvConfig,
    /// `{PREFIX}_ATTESTATION_INDEX`: `{namespace}.{name}` → the latest TaskRun UID. Default:
    /// kept for ever, 256 MiB.
    #[serde(default)]
    pub index: KvConfig,
    /// `{PREFIX}_EXPORTS`: each attestation as a Sigstore bundle, and its SLSA VSAs. Default:
    /// kept for ever, 256 MiB.
    #[serde(default)]
    pub exports: KvConfig,
    /// `{PREFIX}_STEP_VERDICTS`: per-step verdicts, needed only until the TaskRun finishes.
    /// Default: kept one day, 256 MiB. A `[store.step_verdicts]` table changes only the keys it
    /// names: the one-day `max_age` stays unless the table sets another.
    #[serde(
        default = "StoreConfig::default_step_verdicts",
        deserialize_with = "step_verdicts"
    )]
    pub step_verdicts: KvConfig,
}

/// The keys of a `[store.step_verdicts]` table, each optional, laid over
/// [`StoreConfig::default_step_verdicts`] (whose `max_age` differs from [`KvConfig`]'s own
/// default, so `#[serde(default)]` on `KvConfig` would reset it).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KvOverrides {
    history: Option<i64>,
    #[serde(default, with = "humantime_serde")]
    max_age: Option<Duration>,
    max_bytes: Option<i64>,
    replicas: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    limit_markers: Option<Duration>,
}

fn step_verdicts<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<KvConfig, D::Error> {
    let overrides = KvOverrides::deserialize(deserializer)?;
    let defaults = StoreConfig::default_step_verdicts();
    Ok(KvConfig {
        history: overrides.history.unwrap_or(defaults.history),
        max_age: overrides.max_age.unwrap_or(defaults.max_age),
        max_bytes: overrides.max_bytes.unwrap_or(defaults.max_bytes),
        replicas: overrides.replicas.unwrap_or(defaults.replicas),
        limit_markers: overrides.limit_markers.or(defaults.limit_markers),
    })
}

impl StoreConfig {
    /// One day, otherwise the KV defaults.
    pub fn default_step_verdicts() -> KvConfig {
        KvConfig {
            max_age: Duration::from_secs(24 * 60 * 60),
            ..KvConfig::default()
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            attestations: KvConfig::default(),
            index: KvConfig::default(),
            exports: KvConfig::default(),
            step_verdicts: StoreConfig::default_step_verdicts(),
        }
    }
}

// === [annotate] ===

/// `[annotate]`: write the verdict onto the TaskRun (`countersign.dev/verdict`,
/// `countersign.dev/attestation-digest`). Needs `patch` on `taskruns.tekton.dev`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnotateConfig {
    /// Whether to annotate. Default `false`.
    #[serde(default)]
    pub enabled: bool,
    /// A kubeconfig file to use instead of the in-cluster service account. Default: none
    /// (in-cluster config, else `KUBECONFIG`/`~/.kube/config`).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use countersign_runtime::config::{
        ConfigErrorKind, Environment, parse_config, validate_service_config,
    };

    use countersign_identity::workload::TEKTON_DEFAULT_SOCKET;

    use super::*;

    fn parse(text: &str) -> Result<AttestorConfig, ConfigError> {
        let config: AttestorConfig = parse_config(text, &Environment::new())?;
        validate_service_config(&config, &Environment::new())?;
        Ok(config)
    }

    #[test]
    fn defaults_are_tektons() {
        let config = parse("").unwrap();
        assert_eq!(config.spire.trust_domain().as_str(), "example.org");
        assert_eq!(
            config.spire.endpoint(None).unwrap().as_str(),
            TEKTON_DEFAULT_SOCKET
        );
        assert_eq!(
            config
                .spire
                .endpoint(Some("unix:///from/env.sock"))
                .unwrap()
                .as_str(),
            "unix:///from/env.sock"
        );
        assert!(!config.annotate.enabled);
        assert_eq!(config.bus.prefix, "countersign");
        assert_eq!(
            config.store.step_verdicts.max_age,
            Duration::from_secs(86_400)
        );
    }

    #[test]
    fn a_step_verdicts_table_keeps_the_one_day_max_age_unless_it_sets_one() {
        let config = parse("[store.step_verdicts]\nmax_bytes = 1024\n").unwrap();
        assert_eq!(config.store.step_verdicts.max_bytes, 1024);
        assert_eq!(
            config.store.step_verdicts.max_age,
            Duration::from_secs(86_400)
        );

        let config = parse("[store.step_verdicts]\nmax_age = \"2h\"\nhistory = 3\n").unwrap();
        assert_eq!(
            config.store.step_verdicts.max_age,
            Duration::from_secs(7200)
        );
        assert_eq!(config.store.step_verdicts.history, 3);
        assert_eq!(config.store.step_verdicts.max_bytes, 256 * 1024 * 1024);

        let env = Environment::from_iter([(
            "COUNTERSIGN_STORE__STEP_VERDICTS__REPLICAS".to_owned(),
            "3".to_owned(),
        )]);
        let config: AttestorConfig = parse_config("", &env).unwrap();
        assert_eq!(config.store.step_verdicts.replicas, 3);
        assert_eq!(
            config.store.step_verdicts.max_age,
            Duration::from_secs(86_400)
        );

        let error = parse("[store.step_verdicts]\nmax_agee = \"2h\"\n").unwrap_err();
        assert!(
            matches!(error.kind(), ConfigErrorKind::UnknownKey),
            "{error}"
        );
    }

    #[test]
    fn configured_socket_beats_the_environment() {
        let config = parse("[spire]\nsocket_path = \"unix:///configured.sock\"\n").unwrap();
        assert_eq!(
            config
                .spire
                .endpoint(Some("unix:///from/env.sock"))
                .unwrap()
                .as_str(),
            "unix:///configured.sock"
        );
    }

    #[test]
    fn invalid_values_name_their_key() {
        let error = parse("[spire]\ntrust_domain = \"Not A Domain\"\n").unwrap_err();
        assert_eq!(error.kind(), ConfigErrorKind::InvalidValue);
        assert_eq!(error.key(), Some("spire.trust_domain"));
        let error = parse("[spire]\nsocket_path = \"http://agent\"\n").unwrap_err();
        assert_eq!(error.key(), Some("spire.socket_path"));
        let error = parse("[bus]\nprefix = \"a.b\"\n").unwrap_err();
        assert_eq!(error.key(), Some("bus.prefix"));
        let error = parse("[annotate]\nenable = true\n").unwrap_err();
        assert_eq!(error.kind(), ConfigErrorKind::UnknownKey);
        let error = parse("[nats]\nuser = \"attestor\"\n").unwrap_err();
        assert_eq!(error.key(), Some("nats.password"));
        for (text, key) in [
            ("[nats]\nurl = \"not a url\"\n", "nats.url"),
            ("[consumer]\nconcurrency = 0\n", "consumer.concurrency"),
            (
                "[consumer]\nmax_payload_bytes = 0\n",
                "consumer.max_payload_bytes",
            ),
        ] {
            let error = parse(text).unwrap_err();
            assert_eq!(error.kind(), ConfigErrorKind::InvalidValue, "{text}");
            assert_eq!(error.key(), Some(key), "{text}");
        }
        let tekton = parse("[spire]\nspire-trust-domain = \"prod.example\"\n").unwrap();
        assert_eq!(tekton.spire.trust_domain().as_str(), "prod.example");
    }

    #[test]
    fn a_timestamp_authority_needs_its_chain_and_an_http_url() {
        let config = parse("").unwrap();
        assert_eq!(config.timestamp, TimestampConfig::default());
        let config = parse(
            "[timestamp]\nurl = \"http://127.0.0.1:3000/api/v1/timestamp\"\ncertificate_chain = \"/etc/tsa/chain.pem\"\ntimeout = \"3s\"\n",
        )
        .unwrap();
        assert_eq!(config.timestamp.timeout, Duration::from_secs(3));
        for (text, key) in [
            (
                "[timestamp]\nurl = \"http://tsa/api/v1/timestamp\"\n",
                "timestamp.certificate_chain",
            ),
            (
                "[timestamp]\ncertificate_chain = \"/c.pem\"\n",
                "timestamp.url",
            ),
            (
                "[timestamp]\nurl = \"ftp://tsa/\"\ncertificate_chain = \"/c.pem\"\n",
                "timestamp.url",
            ),
            (
                "[timestamp]\nurl = \"http://tsa/\"\ncertificate_chain = \"/c.pem\"\ntimeout = \"0s\"\n",
                "timestamp.timeout",
            ),
        ] {
            let error = parse(text).unwrap_err();
            assert_eq!(error.kind(), ConfigErrorKind::InvalidValue, "{text}");
            assert_eq!(error.key(), Some(key), "{text}");
        }
    }
}
