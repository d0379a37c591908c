//! The config sections every service embeds as named fields (`admin`, `telemetry`, `shutdown`),
//! their defaults, and [`Secret`] for passwords and tokens.
//!
//! Every field has a default, so a service embeds a section with `#[serde(default)]` and an empty
//! config file is valid.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use tracing_subscriber::EnvFilter;
use url::Url;

/// `[admin]`: the admin HTTP server (`/livez`, `/readyz`, `/metrics`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// The address to listen on. Default `0.0.0.0:9090`. Tests use `127.0.0.1:0` (any free port).
    #[serde(default = "AdminConfig::default_listen")]
    pub listen: SocketAddr,
}

impl AdminConfig {
    /// `0.0.0.0:9090`.
    pub const fn default_listen() -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 9090))
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: AdminConfig::default_listen(),
        }
    }
}

/// `[telemetry]`: logs and traces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `text` (default, for people) or `json` (one object per line, for log collectors).
    #[serde(default)]
    pub log_format: LogFormat,
    /// Which spans and events to log, in `tracing_subscriber::EnvFilter` syntax
    /// (`info`, `countersign_registrar=debug,info`). Default `info`. Checked when the config loads.
    #[serde(default)]
    pub log_filter: LogFilter,
    /// Where to export traces with OTLP over gRPC (`http://otel-collector:4317`). Default: unset,
    /// and no traces are exported (trace context is still propagated).
    #[serde(default)]
    pub otlp_endpoint: Option<Url>,
    /// The `service.name` traces carry. Default: the service's own name (`registrar`, ...).
    #[serde(default)]
    pub service_name: Option<String>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// A log filter directive that has been checked to parse (`EnvFilter` syntax).
#[derive(Clone, PartialEq, Eq)]
pub struct LogFilter(String);

impl LogFilter {
    /// The default directive: `info`.
    pub const DEFAULT: &'static str = "info";

    /// The directive as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The filter this directive describes.
    pub fn to_env_filter(&self) -> EnvFilter {
        // Cannot fail: the directive was parsed when the `LogFilter` was made.
        EnvFilter::try_new(&self.0).unwrap_or_else(|_| EnvFilter::new(LogFilter::DEFAULT))
    }
}

impl Default for LogFilter {
    fn default() -> Self {
        LogFilter(LogFilter::DEFAULT.to_owned())
    }
}

impl fmt::Debug for LogFilter {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, formatter)
    }
}

impl fmt::Display for LogFilter {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// Why a log filter directive was refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid log filter: {0}")]
pub struct LogFilterError(#[source] tracing_subscriber::filter::ParseError);

impl FromStr for LogFilter {
    type Err = LogFilterError;

    fn from_str(directive: &str) -> Result<Self, Self::Err> {
        EnvFilter::try_new(directive).map_err(LogFilterError)?;
        Ok(LogFilter(directive.to_owned()))
    }
}

impl<'de> Deserialize<'de> for LogFilter {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let directive = String::deserialize(deserializer)?;
        directive.parse().map_err(serde::de::Error::custom)
    }
}

/// `[shutdown]`: how a service stops.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long in-flight work may take to finish after SIGTERM, as a humantime string (`25s`,
    /// `1m 30s`). Default `25s`: under Kubernetes' default 30 s `terminationGracePeriodSeconds`, so
    /// the drain ends before the kubelet sends SIGKILL.
    #[serde(
        default = "ShutdownConfig::default_grace_period",
        with = "humantime_serde"
    )]
    pub grace_period: Duration,
}

impl ShutdownConfig {
    /// 25 seconds.
    pub const fn default_grace_period() -> Duration {
        Duration::from_secs(25)
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace_period: ShutdownConfig::default_grace_period(),
        }
    }
}

/// A secret (password, token): its `Debug` never shows the value, and it has no `Display` or
/// `Serialize`, so it cannot end up in a log line or an event by accident. Read it with
/// [`Secret::expose`] where it is used.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a value.
    pub const fn new(value: T) -> Self {
        Secret(value)
    }

    /// The secret value.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Secret(value)
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_is_redacted() {
        let secret = Secret::new("hunter2".to_owned());
        let debug = format!("{secret:?} {:?}", Some(&secret));
        assert!(!debug.contains("hunter2"));
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn log_filter_parses_or_refuses() {
        assert!("countersign=debug,info".parse::<LogFilter>().is_ok());
        assert!("info,[[".parse::<LogFilter>().is_err());
    }
}
