//! The `[nats]` config section every service shares, and connecting with it.
//!
//! Services start before NATS may be reachable (a rollout, an outage): [`connect`] keeps trying
//! until the first connection is made or shutdown begins, while the service's "nats connected"
//! readiness latch stays taken. A bad credentials file is not worth retrying and fails at once.
//! The command-line tool, which should fail fast, uses [`connect_once`].
//!
//! The keys, the same in every service (`COUNTERSIGN_NATS__<KEY>` in the environment):
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `url` | `nats://127.0.0.1:4222` | the server, or a comma-separated list of servers |
//! | `credentials_file` | none | a `.creds` file (user JWT and NKey seed), for operator mode |
//! | `user`, `password` | none | user and password; both or neither, and not with `credentials_file` |
//! | `name` | `countersign-<service>` | the connection name the server shows |
//! | `connect_timeout` | `5s` | how long one connection attempt may take |
//! | `request_timeout` | `5s` | how long a request may wait for its answer (a PubAck, a KV write; as nats.go's JetStream default). On a cluster, a request to a stream whose leader just died goes unanswered: this is how long the retry waits |

use std::path::PathBuf;
use std::time::Duration;

use async_nats::ServerAddr;
use async_nats::connection::State;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Secret};

/// How often [`connect`] checks whether the first connection has been made.
const CONNECT_POLL: Duration = Duration::from_millis(50);

/// How often [`connect`] logs that it is still waiting.
const STILL_WAITING_EVERY: Duration = Duration::from_secs(10);

/// Where NATS is and how to authenticate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// The server URL; several may be given, comma-separated. Default `nats://127.0.0.1:4222`.
    /// Checked when the config loads (every entry a `nats`, `tls`, `ws` or `wss` URL with a host).
    #[serde(
        default = "NatsConfig::default_url",
        deserialize_with = "deserialize_server_list"
    )]
    pub url: String,
    /// A NATS credentials file (`.creds`: user JWT and NKey seed), for servers in operator mode.
    /// Default: none.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// A user name, for servers with user/password authorization. Default: none.
    #[serde(default)]
    pub user: Option<String>,
    /// The password of `user`. Never printed.
    #[serde(default)]
    pub password: Option<Secret<String>>,
    /// The connection name the server shows (`nats server report connections`). Default: the
    /// service's name, e.g. `countersign-watcher`.
    #[serde(default)]
    pub name: Option<String>,
    /// How long one connection attempt may take. Default `5s`.
    #[serde(
        default = "NatsConfig::default_connect_timeout",
        with = "humantime_serde"
    )]
    pub connect_timeout: Duration,
    /// How long a request may wait for its answer (a PubAck, a KV write). Default `5s`.
    #[serde(
        default = "NatsConfig::default_request_timeout",
        with = "humantime_serde"
    )]
    pub request_timeout: Duration,
}

impl Default for NatsConfig {
    fn default() -> NatsConfig {
        NatsConfig {
            url: NatsConfig::default_url(),
            credentials_file: None,
            user: None,
            password: None,
            name: None,
            connect_timeout: NatsConfig::default_connect_timeout(),
            request_timeout: NatsConfig::default_request_timeout(),
        }
    }
}

impl NatsConfig {
    fn default_url() -> String {
        "nats://127.0.0.1:4222".to_owned()
    }

    const fn default_connect_timeout() -> Duration {
        Duration::from_secs(5)
    }

    const fn default_request_timeout() -> Duration {
        Duration::from_secs(5)
    }

    /// A config for `url` with every other key at its default.
    pub fn for_url(url: impl Into<String>) -> NatsConfig {
        NatsConfig {
            url: url.into(),
            ..NatsConfig::default()
        }
    }

    /// The servers of [`NatsConfig::url`], parsed.
    pub fn server_addrs(&self) -> Result<Vec<ServerAddr>, InvalidServerList> {
        parse_server_list(&self.url)
    }

    /// Checks what serde cannot: the servers (for a config built in code), one way of
    /// authenticating, and a user with its password. `section` names the section in errors
    /// (usually `nats`). [`crate::config::load_service_config`] runs it for every service.
    pub fn validate(&self, section: &str) -> Result<(), ConfigError> {
        self.server_addrs()
            .map_err(|error| ConfigError::invalid(format!("{section}.url"), error.to_string()))?;
        match (&self.user, &self.password) {
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    format!("{section}.password"),
                    "is required when `user` is set",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    format!("{section}.user"),
                    "is required when `password` is set",
                ));
            }
            _ => {}
        }
        if self.credentials_file.is_some() && self.user.is_some() {
            return Err(ConfigError::invalid(
                format!("{section}.credentials_file"),
                "cannot be combined with `user`/`password`: choose one way to authenticate",
            ));
        }
        Ok(())
    }

    fn servers(&self) -> Result<Vec<ServerAddr>, NatsConnectError> {
        self.server_addrs()
            .map_err(|source| NatsConnectError::Servers {
                url: self.url.clone(),
                source,
            })
    }

    async fn options(
        &self,
        default_name: &str,
    ) -> Result<async_nats::ConnectOptions, NatsConnectError> {
        let mut options = match &self.credentials_file {
            Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|source| NatsConnectError::Credentials {
                    path: path.clone(),
                    source,
                })?,
            None => async_nats::ConnectOptions::new(),
        };
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.expose().clone());
        }
        Ok(options
            .name(self.name.as_deref().unwrap_or(default_name))
            .connection_timeout(self.connect_timeout)
            .request_timeout(Some(self.request_timeout)))
    }
}

/// Why `nats.url` is not a list of NATS servers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidServerList {
    /// No server at all (an empty string, or only commas).
    #[error("no NATS server given")]
    Empty,
    /// One entry is not a URL, or has a scheme other than `nats`, `tls`, `ws`, `wss`.
    #[error("{entry:?} is not a NATS server URL: {reason}")]
    NotAServerUrl { entry: String, reason: String },
    /// One entry has no host (`nats://:4222`).
    #[error("{entry:?} names no host")]
    NoHost { entry: String },
}

/// Parses a comma-separated list of NATS server URLs (a URL without a scheme is `nats://`, as the
/// client reads it).
pub fn parse_server_list(text: &str) -> Result<Vec<ServerAddr>, InvalidServerList> {
    let mut servers = Vec::new();
    for entry in text
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
    {
        let server: ServerAddr =
            entry
                .parse()
                .map_err(|error: std::io::Error| InvalidServerList::NotAServerUrl {
                    entry: entry.to_owned(),
                    reason: error.to_string(),
                })?;
        if server.host().is_empty() {
            return Err(InvalidServerList::NoHost {
                entry: entry.to_owned(),
            });
        }
        servers.push(server);
    }
    if servers.is_empty() {
        return Err(InvalidServerList::Empty);
    }
    Ok(servers)
}

fn deserialize_server_list<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<String, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_server_list(&text).map_err(serde::de::Error::custom)?;
    Ok(text)
}

/// Why a NATS connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NatsConnectError {
    /// `nats.url` is not a list of NATS servers (a config built in code; a loaded one was checked).
    #[error("{url:?} is not a list of NATS servers")]
    Servers {
        url: String,
        #[source]
        source: InvalidServerList,
    },
    /// The credentials file could not be read or parsed: retrying will not help.
    #[error("reading the NATS credentials file {}", path.display())]
    Credentials {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The server could not be reached, or refused us.
    #[error("connecting to NATS at {url}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
}

impl NatsConnectError {
    /// Whether trying again may help: an unreachable server, not bad credentials.
    pub fn is_transient(&self) -> bool {
        match self {
            NatsConnectError::Credentials { .. } | NatsConnectError::Servers { .. } => false,
            NatsConnectError::Connect { source, .. } => !matches!(
                source.kind(),
                async_nats::ConnectErrorKind::AuthorizationViolation
                    | async_nats::ConnectErrorKind::Authentication
                    | async_nats::ConnectErrorKind::ServerParse
            ),
        }
    }
}

/// Connects, waiting for the server as long as it takes: `Ok(None)` if `shutdown` is cancelled
/// first. The client reconnects by itself after later outages.
pub async fn connect(
    config: &NatsConfig,
    default_name: &str,
    shutdown: &CancellationToken,
) -> Result<Option<async_nats::Client>, NatsConnectError> {
    let servers = config.servers()?;
    let options = config
        .options(default_name)
        .await?
        .retry_on_initial_connect();
    let client = options
        .connect(servers)
        .await
        .map_err(|source| NatsConnectError::Connect {
            url: config.url.clone(),
            source,
        })?;
    let started = tokio::time::Instant::now();
    let mut next_report = started + STILL_WAITING_EVERY;
    while client.connection_state() != State::Connected {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            () = tokio::time::sleep(CONNECT_POLL) => {}
        }
        if tokio::time::Instant::now() >= next_report {
            tracing::warn!(url = %config.url, waited_s = started.elapsed().as_secs(), "still waiting for NATS");
            next_report += STILL_WAITING_EVERY;
        }
    }
    Ok(Some(client))
}

/// Connects once, failing at once if the server cannot be reached (for the command-line tool).
pub async fn connect_once(
    config: &NatsConfig,
    default_name: &str,
) -> Result<async_nats::Client, NatsConnectError> {
    let servers = config.servers()?;
    config
        .options(default_name)
        .await?
        .connect(servers)
        .await
        .map_err(|source| NatsConnectError::Connect {
            url: config.url.clone(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigErrorKind, Environment, parse_config};

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct WithNats {
        #[serde(default)]
        nats: NatsConfig,
    }

    fn parse(text: &str) -> Result<NatsConfig, ConfigError> {
        parse_config::<WithNats>(text, &Environment::new()).map(|c| c.nats)
    }

    #[test]
    fn defaults_apply_to_an_empty_section() {
        let nats = parse("").unwrap();
        assert_eq!(nats.url, "nats://127.0.0.1:4222");
        assert_eq!(nats.connect_timeout, Duration::from_secs(5));
        assert_eq!(nats.request_timeout, Duration::from_secs(5));
        assert!(nats.validate("nats").is_ok());
    }

    #[test]
    fn unknown_keys_are_named() {
        let error = parse("[nats]\nurll = \"nats://x\"\n").unwrap_err();
        assert_eq!(error.kind(), ConfigErrorKind::UnknownKey);
        assert_eq!(error.key(), Some("nats.urll"));
    }

    #[test]
    fn a_user_needs_its_password_and_excludes_a_credentials_file() {
        let user_only = parse("[nats]\nuser = \"watcher\"\n").unwrap();
        assert_eq!(
            user_only.validate("nats").unwrap_err().key(),
            Some("nats.password")
        );
        let both = parse(
            "[nats]\nuser = \"watcher\"\npassword = \"s3cret\"\ncredentials_file = \"/x.creds\"\n",
        )
        .unwrap();
        assert_eq!(
            both.validate("nats").unwrap_err().key(),
            Some("nats.credentials_file")
        );
        assert!(!format!("{both:?}").contains("s3cret"));
    }

    #[tokio::test]
    async fn a_missing_credentials_file_is_not_transient() {
        let config = NatsConfig {
            credentials_file: Some("/nonexistent/countersign.creds".into()),
            ..NatsConfig::default()
        };
        let error = connect_once(&config, "test").await.unwrap_err();
        assert!(matches!(error, NatsConnectError::Credentials { .. }));
        assert!(!error.is_transient());
    }

    #[tokio::test]
    async fn connect_returns_none_when_shut_down_while_waiting() {
        // Nothing listens on this port (bound and released by the test).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = NatsConfig::for_url(format!("nats://127.0.0.1:{port}"));
        let shutdown = CancellationToken::new();
        let waiting = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { connect(&config, "test", &shutdown).await }
        });
        shutdown.cancel();
        let outcome = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(outcome, Ok(None)));
    }
}
