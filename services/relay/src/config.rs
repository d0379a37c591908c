//! The relay's configuration: the shared sections, the NATS connection, the bus, and the list of
//! sinks (`[[sinks]]`), each with its URL, headers, filter and retry rules. Everything has a
//! documented default except a sink's `name` and `url`; [`RelayConfig::validate`] refuses what
//! serde cannot (no sinks, duplicate names, an empty filter list, a header the binding owns).
//!
//! Header values can be secrets: a literal value is a [`Secret`], and `from_file` / `from_env`
//! name where the value lives without holding it, so no `Debug` print shows a token.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use countersign_events::{BusConfig, ConsumerConfig, EventType, Subjects};
use countersign_runtime::bounded_read::read_bounded;
use countersign_runtime::config::{
    AdminConfig, ConfigError, Environment, Secret, ServiceConfig, ShutdownConfig, TelemetryConfig,
};
use countersign_runtime::error_chain;
use countersign_runtime::http_client::TrustRoots;
use countersign_runtime::nats::NatsConfig;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use url::Url;

/// The whole relay configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// `[admin]`: `/livez`, `/readyz`, `/metrics`.
    #[serde(default)]
    pub admin: AdminConfig,
    /// `[telemetry]`: logs and traces.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// `[shutdown]`: the drain's grace period.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// `[nats]`: where the bus is (the section every service shares, see
    /// `countersign_runtime::nats`).
    #[serde(default)]
    pub nats: NatsConfig,
    /// `[bus]`: the subject prefix and the stream limits (shared with every service).
    #[serde(default)]
    pub bus: BusConfig,
    /// `[[sinks]]`: where attestation events are delivered. At least one.
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
}

/// The largest CA file or header file read (1 MiB): either is a few KiB.
pub const MAX_SINK_FILE_BYTES: u64 = 1024 * 1024;

impl ServiceConfig for RelayConfig {
    countersign_runtime::shared_sections!(nats);

    fn validate(&self) -> Result<(), ConfigError> {
        let subjects = Subjects::new(&self.bus.prefix)
            .map_err(|error| ConfigError::invalid("bus.prefix", error.to_string()))?;
        if self.sinks.is_empty() {
            return Err(ConfigError::invalid(
                "sinks",
                "at least one [[sinks]] entry is required",
            ));
        }
        let mut names = BTreeSet::new();
        for (index, sink) in self.sinks.iter().enumerate() {
            let key = format!("sinks[{index}]");
            sink.validate(&key, &subjects)?;
            if !names.insert(sink.name.as_str()) {
                return Err(ConfigError::invalid(
                    format!("{key}.name"),
                    format!("the sink name {:?} is used twice", sink.name),
                ));
            }
        }
        Ok(())
    }

    /// Every sink's `ca_file` is a readable PEM file with a certificate, every `from_file`
    /// header file is readable, and every `from_env` variable is set in `env`: what start-up
    /// would otherwise find missing only after binding.
    fn validate_environment(&self, env: &Environment) -> Result<(), ConfigError> {
        for (index, sink) in self.sinks.iter().enumerate() {
            let key = format!("sinks[{index}]");
            if let Some(path) = &sink.ca_file {
                let pem = read_bounded(path, MAX_SINK_FILE_BYTES).map_err(|error| {
                    ConfigError::invalid(format!("{key}.ca_file"), error_chain(&error))
                })?;
                TrustRoots::certificates_from_pem(&pem).map_err(|error| {
                    ConfigError::invalid(format!("{key}.ca_file"), error_chain(&error))
                })?;
            }
            for (name, header) in &sink.headers {
                match &header.source {
                    HeaderSource::Env(var) if env.get(var).is_none() => {
                        return Err(ConfigError::invalid(
                            format!("{key}.headers.{name}.from_env"),
                            format!("the environment variable {var} is not set"),
                        ));
                    }
                    HeaderSource::File(path) => {
                        read_bounded(path, MAX_SINK_FILE_BYTES).map_err(|error| {
                            ConfigError::invalid(
                                format!("{key}.headers.{name}.from_file"),
                                error_chain(&error),
                            )
                        })?;
                    }
                    HeaderSource::Env(_) | HeaderSource::Literal(_) => {}
                }
            }
        }
        Ok(())
    }
}

// === [[sinks]] ===

/// The longest sink name: its consumer (`relay-<name>`) and metric labels stay short.
pub const MAX_SINK_NAME_LEN: usize = 48;

/// One HTTP CloudEvents sink (`[[sinks]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// The sink's name: `[a-z0-9-]`, starting and ending with a letter or digit, at most 48
    /// characters. Its durable consumer is `relay-<name>`, and its dead letters go to
    /// `{prefix}.deadletter.relay-<name>`. Required.
    pub name: String,
    /// Where events are POSTed (`http` or `https`). Required.
    pub url: Url,
    /// The deadline of one delivery attempt (connect, send, response). Default `10s`.
    #[serde(default = "SinkConfig::default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Extra request headers by name, e.g. `Authorization`. A value is a string, or a table with
    /// exactly one of `value`, `from_file`, `from_env` and an optional `prefix`. Default: none.
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderConfig>,
    /// Which attestation events this sink gets. Default: all.
    #[serde(default)]
    pub filter: FilterConfig,
    /// Retries and the dead letter.
    #[serde(default)]
    pub retry: RetryConfig,
    /// How many deliveries to this sink one replica has in flight. Default 8.
    #[serde(default = "SinkConfig::default_concurrency")]
    pub concurrency: usize,
    /// A PEM file of extra certificate authorities to trust for `https` (besides the system's).
    /// Default: none.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl SinkConfig {
    /// 10 seconds.
    pub const fn default_timeout() -> Duration {
        Duration::from_secs(10)
    }

    /// 8.
    pub const fn default_concurrency() -> usize {
        8
    }

    /// The consumer configuration this sink's durable consumer is bound with.
    pub fn consumer_config(&self) -> ConsumerConfig {
        ConsumerConfig {
            max_deliver: Some(self.retry.max_attempts),
            nak_backoff: self.retry.nak_delays(),
            concurrency: self.concurrency,
            ..ConsumerConfig::default()
        }
    }

    fn validate(&self, key: &str, subjects: &Subjects) -> Result<(), ConfigError> {
        if !is_valid_sink_name(&self.name) {
            return Err(ConfigError::invalid(
                format!("{key}.name"),
                format!(
                    "{:?} is not a sink name: 1 to {MAX_SINK_NAME_LEN} characters of [a-z0-9-], \
                     starting and ending with a letter or digit",
                    self.name
                ),
            ));
        }
        if !matches!(self.url.scheme(), "http" | "https") {
            return Err(ConfigError::invalid(
                format!("{key}.url"),
                format!(
                    "the scheme must be http or https, not {}",
                    self.url.scheme()
                ),
            ));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::invalid(
                format!("{key}.timeout"),
                "must be more than zero",
            ));
        }
        if self.concurrency == 0 {
            return Err(ConfigError::invalid(
                format!("{key}.concurrency"),
                "must be at least 1",
            ));
        }
        let mut header_names = BTreeSet::new();
        for (name, header) in &self.headers {
            let header_key = format!("{key}.headers.{name}");
            validate_header_name(name)
                .map_err(|message| ConfigError::invalid(&header_key, message))?;
            if !header_names.insert(name.to_ascii_lowercase()) {
                return Err(ConfigError::invalid(
                    header_key,
                    "the header is given twice (names ignore case)",
                ));
            }
            header.validate(&header_key)?;
        }
        self.filter.validate(&format!("{key}.filter"), subjects)?;
        self.retry.validate(&format!("{key}.retry"))
    }
}

/// Whether `name` is a valid sink name.
pub fn is_valid_sink_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let edge_ok =
        |byte: Option<&u8>| byte.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    !name.is_empty()
        && name.len() <= MAX_SINK_NAME_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && edge_ok(bytes.first())
        && edge_ok(bytes.last())
}

/// The header names the CloudEvents binding writes, which configuration may not set.
fn validate_header_name(name: &str) -> Result<(), String> {
    if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(format!("{name:?} is not a valid HTTP header name"));
    }
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("ce-") || lower == "content-type" || lower == "content-length" {
        return Err(format!(
            "{name:?} is written by the CloudEvents binding and cannot be configured"
        ));
    }
    Ok(())
}

// === headers ===

/// Where a header's value comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum HeaderSource {
    /// The value as written in the config (a secret: never printed).
    Literal(Secret<String>),
    /// The contents of a file, read again for every delivery so a rotated token is picked up
    /// (trailing whitespace is trimmed). A mounted Kubernetes Secret or a projected token.
    File(PathBuf),
    /// An environment variable of the relay process, read once at start-up.
    Env(String),
}

impl fmt::Debug for HeaderSource {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderSource::Literal(secret) => {
                formatter.debug_tuple("Literal").field(secret).finish()
            }
            HeaderSource::File(path) => formatter.debug_tuple("File").field(path).finish(),
            HeaderSource::Env(var) => formatter.debug_tuple("Env").field(var).finish(),
        }
    }
}

/// A configured header: its source and a prefix put before the value (`"Bearer "`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderConfig {
    /// Where the value comes from.
    pub source: HeaderSource,
    /// Text put before the value. Default: none.
    pub prefix: String,
}

impl HeaderConfig {
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        match &self.source {
            HeaderSource::Env(var) if var.is_empty() => Err(ConfigError::invalid(
                format!("{key}.from_env"),
                "the variable name is empty",
            )),
            HeaderSource::File(path) if path.as_os_str().is_empty() => Err(ConfigError::invalid(
                format!("{key}.from_file"),
                "the path is empty",
            )),
            _ => Ok(()),
        }
    }
}

/// The table form of a header.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderTable {
    #[serde(default)]
    value: Option<Secret<String>>,
    #[serde(default)]
    from_file: Option<PathBuf>,
    #[serde(default)]
    from_env: Option<String>,
    #[serde(default)]
    prefix: String,
}

impl<'de> Deserialize<'de> for HeaderConfig {
    /// A string (`X-Team = "builds"`) or a table (`Authorization = { from_file = "...",
    /// prefix = "Bearer " }`) with exactly one of `value`, `from_file`, `from_env`.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<HeaderConfig, D::Error> {
        struct HeaderVisitor;

        impl<'de> Visitor<'de> for HeaderVisitor {
            type Value = HeaderConfig;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(
                    "a header value, or a table with one of `value`, `from_file`, `from_env`",
                )
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<HeaderConfig, E> {
                Ok(HeaderConfig {
                    source: HeaderSource::Literal(Secret::new(value.to_owned())),
                    prefix: String::new(),
                })
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<HeaderConfig, A::Error> {
                let table = HeaderTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let source = match (table.value, table.from_file, table.from_env) {
                    (Some(value), None, None) => HeaderSource::Literal(value),
                    (None, Some(path), None) => HeaderSource::File(path),
                    (None, None, Some(var)) => HeaderSource::Env(var),
                    _ => {
                        return Err(de::Error::custom(
                            "give exactly one of `value`, `from_file`, `from_env`",
                        ));
                    }
                };
                Ok(HeaderConfig {
                    source,
                    prefix: table.prefix,
                })
            }
        }

        deserializer.deserialize_any(HeaderVisitor)
    }
}

// === filter ===

/// The kinds of attestation event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttestationKind {
    /// `dev.countersign.attestation.verified.v1`
    Verified,
    /// `dev.countersign.attestation.rejected.v1`
    Rejected,
    /// `dev.countersign.attestation.revoked.v1`: a stored attestation no longer verifies.
    Revoked,
}

impl AttestationKind {
    /// Every kind.
    pub const ALL: [AttestationKind; 3] = [
        AttestationKind::Verified,
        AttestationKind::Rejected,
        AttestationKind::Revoked,
    ];

    /// The event type of this kind.
    pub const fn event_type(self) -> EventType {
        match self {
            AttestationKind::Verified => EventType::AttestationVerified,
            AttestationKind::Rejected => EventType::AttestationRejected,
            AttestationKind::Revoked => EventType::AttestationRevoked,
        }
    }
}

/// `[sinks.filter]`: which attestation events a sink gets. Both conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// Any of `"verified"`, `"rejected"`, `"revoked"`. Absent: all three. An empty list is
    /// refused.
    #[serde(default)]
    pub kinds: Option<Vec<AttestationKind>>,
    /// The TaskRun namespaces whose events are delivered. Absent: every namespace. An empty list
    /// is refused (it would deliver nothing).
    #[serde(default)]
    pub namespaces: Option<Vec<String>>,
}

impl FilterConfig {
    fn validate(&self, key: &str, subjects: &Subjects) -> Result<(), ConfigError> {
        if self.kinds.as_ref().is_some_and(Vec::is_empty) {
            return Err(ConfigError::invalid(
                format!("{key}.kinds"),
                "an empty list would deliver nothing; leave `kinds` out for every kind",
            ));
        }
        if let Some(namespaces) = &self.namespaces {
            if namespaces.is_empty() {
                return Err(ConfigError::invalid(
                    format!("{key}.namespaces"),
                    "an empty list would deliver nothing; leave `namespaces` out for every namespace",
                ));
            }
            for namespace in namespaces {
                subjects
                    .attestations_in_namespace(namespace)
                    .map_err(|error| {
                        ConfigError::invalid(format!("{key}.namespaces"), error.to_string())
                    })?;
            }
        }
        Ok(())
    }
}

// === retry ===

/// `[sinks.retry]`: how failed deliveries are retried and when they are dead-lettered.
///
/// Connection errors, timeouts and the statuses 408, 425, 429 and 5xx are retried: the message
/// is nakked with a delay that starts at `initial_backoff` and doubles up to `max_backoff`; a
/// `Retry-After` from the sink lengthens the wait (up to `max_backoff`). After `max_attempts`
/// deliveries the message is dead-lettered as `retries_exhausted`.
///
/// The consumers' `[consumer]` spelling is accepted too, so one retry vocabulary works in every
/// service: `max_deliver` for `max_attempts`, and `nak_backoff` (the list of delays, the last
/// repeating) instead of `initial_backoff`/`max_backoff`. Setting both spellings of the backoff
/// is refused rather than guessed between.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// How many times a message is delivered to the sink before it is dead-lettered. Default
    /// 20 (with the default backoff, about an hour of outage). Alias: `max_deliver`.
    #[serde(default = "RetryConfig::default_max_attempts", alias = "max_deliver")]
    pub max_attempts: u32,
    /// The wait after the first failed attempt. Default `1s`.
    #[serde(default, with = "humantime_serde")]
    pub initial_backoff: Option<Duration>,
    /// The longest wait between attempts, and the most a `Retry-After` is honoured. Default `5m`.
    #[serde(default, with = "humantime_serde")]
    pub max_backoff: Option<Duration>,
    /// The delays after the 1st, 2nd... failed attempt, the last repeating (the consumers'
    /// spelling); the longest is also the most a `Retry-After` is honoured. Default: none, the
    /// delays come from `initial_backoff` and `max_backoff`.
    #[serde(default)]
    nak_backoff: Vec<humantime_serde::Serde<Duration>>,
}

impl RetryConfig {
    /// 20.
    pub const fn default_max_attempts() -> u32 {
        20
    }

    /// 1 second.
    pub const fn default_initial_backoff() -> Duration {
        Duration::from_secs(1)
    }

    /// 5 minutes.
    pub const fn default_max_backoff() -> Duration {
        Duration::from_secs(5 * 60)
    }

    /// A policy in the doubling spelling.
    pub fn doubling(max_attempts: u32, initial_backoff: Duration, max_backoff: Duration) -> Self {
        RetryConfig {
            max_attempts,
            initial_backoff: Some(initial_backoff),
            max_backoff: Some(max_backoff),
            nak_backoff: Vec::new(),
        }
    }

    /// The nak delays after the 1st, 2nd... failed attempt (the consumer repeats the last
    /// entry): `nak_backoff` when given, else `initial_backoff` doubling up to `max_backoff`.
    pub fn nak_delays(&self) -> Vec<Duration> {
        if !self.nak_backoff.is_empty() {
            return self.nak_backoff.iter().map(|delay| **delay).collect();
        }
        let (initial_backoff, max_backoff) = self.doubling_bounds();
        let mut delays = Vec::new();
        let mut delay = initial_backoff.min(max_backoff);
        loop {
            delays.push(delay);
            if delay >= max_backoff || delay.is_zero() {
                return delays;
            }
            delay = delay.saturating_mul(2).min(max_backoff);
        }
    }

    /// `initial_backoff` and `max_backoff`, each its default when unset.
    fn doubling_bounds(&self) -> (Duration, Duration) {
        (
            self.initial_backoff
                .unwrap_or(Self::default_initial_backoff()),
            self.max_backoff.unwrap_or(Self::default_max_backoff()),
        )
    }

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.max_attempts == 0 {
            return Err(ConfigError::invalid(
                format!("{key}.max_attempts"),
                "must be at least 1",
            ));
        }
        if !self.nak_backoff.is_empty() {
            if self.initial_backoff.is_some() || self.max_backoff.is_some() {
                return Err(ConfigError::invalid(
                    format!("{key}.nak_backoff"),
                    "set either `nak_backoff` or `initial_backoff`/`max_backoff`, not both",
                ));
            }
            if self.nak_backoff.iter().any(|delay| delay.is_zero()) {
                return Err(ConfigError::invalid(
                    format!("{key}.nak_backoff"),
                    "every delay must be more than zero",
                ));
            }
            return Ok(());
        }
        if self.initial_backoff.is_some_and(|delay| delay.is_zero()) {
            return Err(ConfigError::invalid(
                format!("{key}.initial_backoff"),
                "must be more than zero",
            ));
        }
        let (initial_backoff, max_backoff) = self.doubling_bounds();
        if max_backoff < initial_backoff {
            return Err(ConfigError::invalid(
                format!("{key}.max_backoff"),
                "must not be shorter than `initial_backoff`",
            ));
        }
        Ok(())
    }
}

impl Default for RetryConfig {
    fn default() -> RetryConfig {
        RetryConfig {
            max_attempts: RetryConfig::default_max_attempts(),
            initial_backoff: None,
            max_backoff: None,
            nak_backoff: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use countersign_runtime::config::{ConfigErrorKind, parse_config, validate_service_config};

    use super::*;

    fn parse(text: &str) -> Result<RelayConfig, ConfigError> {
        parse_with(text, &Environment::new())
    }

    fn parse_with(text: &str, env: &Environment) -> Result<RelayConfig, ConfigError> {
        let config: RelayConfig = parse_config(text, env)?;
        validate_service_config(&config, env)?;
        Ok(config)
    }

    fn invalid_key(text: &str) -> String {
        let error = parse(text).expect_err("an invalid config");
        assert_eq!(error.kind(), ConfigErrorKind::InvalidValue, "{error}");
        error.key().unwrap_or_default().to_owned()
    }

    const MINIMAL: &str =
        "[[sinks]]\nname = \"broker\"\nurl = \"http://broker.example/ns/default\"\n";

    #[test]
    fn a_minimal_sink_gets_every_default() {
        let config = parse(MINIMAL).expect("valid");
        assert_eq!(config.nats.url, "nats://127.0.0.1:4222");
        assert_eq!(config.bus, BusConfig::default());
        let sink = &config.sinks[0];
        assert_eq!(sink.name, "broker");
        assert_eq!(sink.timeout, Duration::from_secs(10));
        assert_eq!(sink.concurrency, 8);
        assert!(sink.headers.is_empty());
        assert_eq!(sink.filter, FilterConfig::default());
        assert_eq!(sink.retry, RetryConfig::default());
        let consumer = sink.consumer_config();
        assert_eq!(consumer.max_deliver, Some(20));
        assert_eq!(consumer.concurrency, 8);
        assert_eq!(consumer.nak_backoff.first(), Some(&Duration::from_secs(1)));
        assert_eq!(consumer.nak_backoff.last(), Some(&Duration::from_secs(300)));
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let retry =
            RetryConfig::doubling(5, Duration::from_millis(100), Duration::from_millis(700));
        assert_eq!(
            retry.nak_delays(),
            [100, 200, 400, 700]
                .into_iter()
                .map(Duration::from_millis)
                .collect::<Vec<_>>()
        );
        let flat = RetryConfig::doubling(5, Duration::from_secs(2), Duration::from_secs(2));
        assert_eq!(flat.nak_delays(), vec![Duration::from_secs(2)]);
    }

    #[test]
    fn the_consumers_retry_spelling_is_accepted() {
        let config = parse(&format!(
            "{MINIMAL}[sinks.retry]\nmax_deliver = 4\nnak_backoff = [\"100ms\", \"2s\"]\n"
        ))
        .expect("the consumers' spelling");
        let consumer = config.sinks[0].consumer_config();
        assert_eq!(consumer.max_deliver, Some(4));
        assert_eq!(
            consumer.nak_backoff,
            vec![Duration::from_millis(100), Duration::from_secs(2)]
        );
    }

    #[test]
    fn both_backoff_spellings_at_once_are_refused() {
        assert_eq!(
            invalid_key(&format!(
                "{MINIMAL}[sinks.retry]\nnak_backoff = [\"1s\"]\ninitial_backoff = \"2s\"\n"
            )),
            "sinks[0].retry.nak_backoff"
        );
        assert_eq!(
            invalid_key(&format!(
                "{MINIMAL}[sinks.retry]\nnak_backoff = [\"1s\", \"0s\"]\n"
            )),
            "sinks[0].retry.nak_backoff"
        );
    }

    #[test]
    fn headers_are_strings_or_one_source_tables_and_secrets_are_not_printed() {
        let config = parse_config::<RelayConfig>(
            r#"
            [[sinks]]
            name = "el"
            url = "https://el-countersign.tekton.svc:8080/"
            [sinks.headers]
            X-Team = "builds"
            Authorization = { from_file = "/var/run/secrets/el/token", prefix = "Bearer " }
            X-Api-Key = { from_env = "EL_API_KEY" }
            X-Literal = { value = "hunter2" }
            "#,
            &Environment::new(),
        )
        .expect("valid");
        let headers = &config.sinks[0].headers;
        assert_eq!(
            headers["Authorization"],
            HeaderConfig {
                source: HeaderSource::File("/var/run/secrets/el/token".into()),
                prefix: "Bearer ".into(),
            }
        );
        assert_eq!(
            headers["X-Api-Key"].source,
            HeaderSource::Env("EL_API_KEY".into())
        );
        match &headers["X-Team"].source {
            HeaderSource::Literal(value) => assert_eq!(value.expose(), "builds"),
            other => panic!("expected a literal, got {other:?}"),
        }
        let printed = format!("{config:?}");
        assert!(!printed.contains("hunter2"));
        assert!(!printed.contains("builds"));

        let two_sources = parse_config::<RelayConfig>(
            "[[sinks]]\nname = \"a\"\nurl = \"http://a/\"\n[sinks.headers]\nX-A = { value = \"v\", from_env = \"V\" }\n",
            &Environment::new(),
        )
        .expect_err("two sources");
        assert_eq!(two_sources.kind(), ConfigErrorKind::InvalidValue);
        let unknown = parse_config::<RelayConfig>(
            "[[sinks]]\nname = \"a\"\nurl = \"http://a/\"\n[sinks.headers]\nX-A = { valu = \"v\" }\n",
            &Environment::new(),
        )
        .expect_err("unknown key");
        assert_eq!(unknown.kind(), ConfigErrorKind::InvalidValue);
    }

    #[test]
    fn headers_the_binding_owns_are_refused() {
        for name in ["ce-id", "Ce-Type", "Content-Type", "content-length"] {
            let key = invalid_key(&format!("{MINIMAL}[sinks.headers]\n{name:?} = \"x\"\n"));
            assert_eq!(key, format!("sinks[0].headers.{name}"));
        }
        let key = invalid_key(&format!(
            "{MINIMAL}[sinks.headers]\n\"bad header\" = \"x\"\n"
        ));
        assert_eq!(key, "sinks[0].headers.bad header");
        let key = invalid_key(&format!(
            "{MINIMAL}[sinks.headers]\nX-A = \"1\"\nx-a = \"2\"\n"
        ));
        assert!(key.starts_with("sinks[0].headers."), "{key}");
    }

    #[test]
    fn sinks_are_required_named_uniquely_and_checked() {
        assert_eq!(invalid_key(""), "sinks");
        assert_eq!(invalid_key(&format!("{MINIMAL}{MINIMAL}")), "sinks[1].name");
        for bad in ["", "Broker", "a.b", "-a", "a-", "a b", &"x".repeat(49)] {
            assert_eq!(
                invalid_key(&format!("[[sinks]]\nname = {bad:?}\nurl = \"http://a/\"\n")),
                "sinks[0].name",
                "{bad:?}"
            );
        }
        assert!(is_valid_sink_name("knative-broker-2"));
        assert_eq!(
            invalid_key("[[sinks]]\nname = \"a\"\nurl = \"ftp://a/\"\n"),
            "sinks[0].url"
        );
        assert_eq!(
            invalid_key("[[sinks]]\nname = \"a\"\nurl = \"http://a/\"\ntimeout = \"0s\"\n"),
            "sinks[0].timeout"
        );
        assert_eq!(
            invalid_key("[[sinks]]\nname = \"a\"\nurl = \"http://a/\"\nconcurrency = 0\n"),
            "sinks[0].concurrency"
        );
        // Inside the `[[sinks]]` array the runtime reports a missing field as an invalid value.
        let missing = parse("[[sinks]]\nname = \"a\"\n").expect_err("no url");
        assert!(
            matches!(
                missing.kind(),
                ConfigErrorKind::MissingKey | ConfigErrorKind::InvalidValue
            ),
            "{missing:?}"
        );
        assert!(
            missing.key().unwrap_or_default().starts_with("sinks"),
            "{missing:?}"
        );
    }

    #[test]
    fn empty_filter_lists_and_bad_namespaces_are_refused() {
        assert_eq!(
            invalid_key(&format!("{MINIMAL}[sinks.filter]\nkinds = []\n")),
            "sinks[0].filter.kinds"
        );
        assert_eq!(
            invalid_key(&format!("{MINIMAL}[sinks.filter]\nnamespaces = []\n")),
            "sinks[0].filter.namespaces"
        );
        assert_eq!(
            invalid_key(&format!(
                "{MINIMAL}[sinks.filter]\nnamespaces = [\".hidden\"]\n"
            )),
            "sinks[0].filter.namespaces"
        );
        let config = parse(&format!(
            "{MINIMAL}[sinks.filter]\nkinds = [\"rejected\"]\nnamespaces = [\"team-a\"]\n"
        ))
        .expect("valid");
        assert_eq!(
            config.sinks[0].filter.kinds,
            Some(vec![AttestationKind::Rejected])
        );
        let error = parse_config::<RelayConfig>(
            &format!("{MINIMAL}[sinks.filter]\nkinds = [\"maybe\"]\n"),
            &Environment::new(),
        )
        .expect_err("unknown kind");
        assert_eq!(error.kind(), ConfigErrorKind::InvalidValue);
    }

    #[test]
    fn retry_limits_are_checked() {
        assert_eq!(
            invalid_key(&format!("{MINIMAL}[sinks.retry]\nmax_attempts = 0\n")),
            "sinks[0].retry.max_attempts"
        );
        assert_eq!(
            invalid_key(&format!(
                "{MINIMAL}[sinks.retry]\ninitial_backoff = \"0s\"\n"
            )),
            "sinks[0].retry.initial_backoff"
        );
        assert_eq!(
            invalid_key(&format!(
                "{MINIMAL}[sinks.retry]\ninitial_backoff = \"10s\"\nmax_backoff = \"1s\"\n"
            )),
            "sinks[0].retry.max_backoff"
        );
    }

    #[test]
    fn nats_credentials_go_together() {
        assert_eq!(
            invalid_key(&format!("[nats]\nuser = \"relay\"\n{MINIMAL}")),
            "nats.password"
        );
        assert_eq!(
            invalid_key(&format!(
                "[nats]\nuser = \"relay\"\npassword = \"p\"\ncredentials_file = \"/x.creds\"\n{MINIMAL}"
            )),
            "nats.credentials_file"
        );
        assert_eq!(
            invalid_key(&format!("[bus]\nprefix = \"a.b\"\n{MINIMAL}")),
            "bus.prefix"
        );
        assert_eq!(
            invalid_key(&format!("[nats]\nurl = \"nats://\"\n{MINIMAL}")),
            "nats.url"
        );
    }

    #[test]
    fn files_and_variables_the_sinks_name_must_be_there_at_load() {
        let missing_ca = format!("{MINIMAL}ca_file = \"/nonexistent/ca.pem\"\n");
        assert_eq!(invalid_key(&missing_ca), "sinks[0].ca_file");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello").expect("writing");
        assert_eq!(
            invalid_key(&format!("{MINIMAL}ca_file = {:?}\n", not_pem)),
            "sinks[0].ca_file"
        );
        assert_eq!(
            invalid_key(&format!("{MINIMAL}ca_file = \"/dev/zero\"\n")),
            "sinks[0].ca_file"
        );

        let from_env =
            format!("{MINIMAL}[sinks.headers]\nX-Key = {{ from_env = \"RELAY_KEY\" }}\n");
        assert_eq!(invalid_key(&from_env), "sinks[0].headers.X-Key.from_env");
        let env = Environment::new().with("RELAY_KEY", "k");
        assert!(parse_with(&from_env, &env).is_ok());

        let from_file = format!(
            "{MINIMAL}[sinks.headers]\nAuthorization = {{ from_file = \"/nonexistent/token\" }}\n"
        );
        assert_eq!(
            invalid_key(&from_file),
            "sinks[0].headers.Authorization.from_file"
        );
    }

    /// Every TOML example in the README is a valid configuration, so the README cannot drift.
    #[test]
    fn the_readme_examples_are_valid() {
        let readme = include_str!("../README.md");
        let mut examples = 0;
        let mut rest = readme;
        while let Some(start) = rest.find("```toml\n") {
            let after = &rest[start + "```toml\n".len()..];
            let end = after.find("```").expect("a closed code block");
            let example = &after[..end];
            // The files and variables the examples name exist only where the relay is deployed.
            let config = parse_config::<RelayConfig>(example, &Environment::new())
                .and_then(|config| config.validate().map(|()| config))
                .unwrap_or_else(|error| panic!("README example is invalid: {error}\n{example}"));
            assert!(!config.sinks.is_empty());
            examples += 1;
            rest = &after[end..];
        }
        assert!(examples >= 2, "the README shows its configuration");
    }
}
