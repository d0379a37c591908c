//! Connecting to NATS with the `[nats]` settings (URL, credentials file or user and password),
//! shared by the attestor and the `countersign` command.

use crate::config::NatsConfig;

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The credentials file could not be read or parsed.
    #[error("reading the NATS credentials file {path}")]
    Credentials {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server could not be reached or refused the connection.
    #[error("connecting to NATS at {url}")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: async_nats::ConnectError,
    },
}

impl ConnectError {
    /// Whether trying again may help (the server is unreachable; not a bad credentials file).
    pub fn is_transient(&self) -> bool {
        match self {
            ConnectError::Credentials { .. } => false,
            ConnectError::Connect { source, .. } => !matches!(
                source.kind(),
                async_nats::ConnectErrorKind::AuthorizationViolation
                    | async_nats::ConnectErrorKind::Authentication
                    | async_nats::ConnectErrorKind::ServerParse
            ),
        }
    }
}

/// Connects once, as `client_name`.
pub async fn connect(
    config: &NatsConfig,
    client_name: &str,
) -> Result<async_nats::Client, ConnectError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(client_name)
        .connection_timeout(config.connect_timeout);
    if let Some(path) = &config.credentials_file {
        options =
            options
                .credentials_file(path)
                .await
                .map_err(|source| ConnectError::Credentials {
                    path: path.display().to_string(),
                    source,
                })?;
    }
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.expose().clone());
    }
    options
        .connect(config.url.as_str())
        .await
        .map_err(|source| ConnectError::Connect {
            url: config.url.clone(),
            source,
        })
}
