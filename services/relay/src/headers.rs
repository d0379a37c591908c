//! A sink's configured request headers, resolved: literals and environment variables once at
//! start-up; files read at start-up and again at most once per refresh interval
//! ([`FILE_REFRESH_INTERVAL`]), so a rotated token is used soon after it is written without a
//! read per delivery. Every file read is bounded ([`MAX_SINK_FILE_BYTES`]): a header file that is
//! replaced by something endless (`/dev/zero`, a FIFO) is refused instead of read until memory
//! runs out. Values are marked sensitive (`http` then hides them from `Debug`) and never logged.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use countersign_runtime::bounded_read::{ReadFileError, read_to_string_bounded};
use countersign_runtime::config::Environment;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::{HeaderConfig, HeaderSource, MAX_SINK_FILE_BYTES};

/// How long a value read from a `from_file` header is used before the file is read again.
pub const FILE_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// Why a header's value could not be had.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// The header name is not valid (configuration checks prevent it).
    #[error("{name:?} is not a valid header name")]
    InvalidName { name: String },
    /// The environment variable is not set.
    #[error("header {name}: the environment variable {var} is not set")]
    MissingEnv { name: String, var: String },
    /// The file could not be read, or holds more than [`MAX_SINK_FILE_BYTES`].
    #[error("header {name}: reading its file")]
    ReadFile {
        name: String,
        #[source]
        source: ReadFileError,
    },
    /// The value holds a byte a header cannot (a newline inside, a control character).
    #[error("header {name}: the value is not a valid header value")]
    InvalidValue { name: String },
    /// The task reading the file ended without an answer (the runtime is shutting down).
    #[error("header {name}: the file read was cancelled")]
    ReadCancelled { name: String },
}

/// Where a resolved header's value is read from.
#[derive(Debug, Clone)]
enum Value {
    /// Known since start-up.
    Fixed(HeaderValue),
    /// Read from a file, cached for the refresh interval.
    File(Arc<FileValue>),
}

/// A `from_file` header: where it is read from and the value last read.
#[derive(Debug)]
struct FileValue {
    name: String,
    path: PathBuf,
    prefix: String,
    refresh: Duration,
    last_read: Mutex<LastRead>,
}

/// The value last read from a header file, and when.
#[derive(Debug)]
struct LastRead {
    value: HeaderValue,
    at: Instant,
}

impl FileValue {
    /// The cached value, or the file's current one once the cache is older than the refresh
    /// interval. A failed read is not cached: the delivery fails (retryably) and the next one
    /// reads the file again.
    async fn current(&self) -> Result<HeaderValue, HeaderError> {
        let mut last_read = self.last_read.lock().await;
        if last_read.at.elapsed() >= self.refresh {
            let value = read_file_value(&self.name, &self.path, &self.prefix).await?;
            *last_read = LastRead {
                value,
                at: Instant::now(),
            };
        }
        Ok(last_read.value.clone())
    }
}

/// One sink's headers.
#[derive(Debug, Clone, Default)]
pub struct SinkHeaders {
    headers: Vec<(HeaderName, Value)>,
}

impl SinkHeaders {
    /// Resolves the configured headers: literals and `from_env` now (from `env`), and each
    /// `from_file` read now (bounded), then again every [`FILE_REFRESH_INTERVAL`].
    pub async fn resolve<'a>(
        configured: impl IntoIterator<Item = (&'a String, &'a HeaderConfig)>,
        env: &Environment,
    ) -> Result<SinkHeaders, HeaderError> {
        SinkHeaders::resolve_refreshing_every(configured, env, FILE_REFRESH_INTERVAL).await
    }

    /// [`SinkHeaders::resolve`] with header files read again every `refresh`.
    pub async fn resolve_refreshing_every<'a>(
        configured: impl IntoIterator<Item = (&'a String, &'a HeaderConfig)>,
        env: &Environment,
        refresh: Duration,
    ) -> Result<SinkHeaders, HeaderError> {
        let mut headers = Vec::new();
        for (name, config) in configured {
            let header_name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| HeaderError::InvalidName { name: name.clone() })?;
            let value = match &config.source {
                HeaderSource::Literal(value) => {
                    Value::Fixed(header_value(name, &config.prefix, value.expose())?)
                }
                HeaderSource::Env(var) => {
                    let value = env.get(var).ok_or_else(|| HeaderError::MissingEnv {
                        name: name.clone(),
                        var: var.clone(),
                    })?;
                    Value::Fixed(header_value(name, &config.prefix, value)?)
                }
                HeaderSource::File(path) => {
                    let value = read_file_value(name, path, &config.prefix).await?;
                    Value::File(Arc::new(FileValue {
                        name: name.clone(),
                        path: path.clone(),
                        prefix: config.prefix.clone(),
                        refresh,
                        last_read: Mutex::new(LastRead {
                            value,
                            at: Instant::now(),
                        }),
                    }))
                }
            };
            headers.push((header_name, value));
        }
        Ok(SinkHeaders { headers })
    }

    /// The headers for one delivery (a file read again only when its value is older than the
    /// refresh interval).
    pub async fn current(&self) -> Result<HeaderMap, HeaderError> {
        let mut map = HeaderMap::with_capacity(self.headers.len());
        for (name, value) in &self.headers {
            let value = match value {
                Value::Fixed(value) => value.clone(),
                Value::File(file) => file.current().await?,
            };
            map.insert(name.clone(), value);
        }
        Ok(map)
    }
}

/// Reads a header file (at most [`MAX_SINK_FILE_BYTES`], off the async threads), trims its
/// trailing whitespace and puts the prefix in front.
async fn read_file_value(
    name: &str,
    path: &Path,
    prefix: &str,
) -> Result<HeaderValue, HeaderError> {
    let owned_path = path.to_owned();
    let text = tokio::task::spawn_blocking(move || {
        read_to_string_bounded(&owned_path, MAX_SINK_FILE_BYTES)
    })
    .await
    .map_err(|_| HeaderError::ReadCancelled {
        name: name.to_owned(),
    })?
    .map_err(|source| HeaderError::ReadFile {
        name: name.to_owned(),
        source,
    })?;
    header_value(name, prefix, text.trim_end())
}

fn header_value(name: &str, prefix: &str, value: &str) -> Result<HeaderValue, HeaderError> {
    let mut value = HeaderValue::from_str(&format!("{prefix}{value}")).map_err(|_| {
        HeaderError::InvalidValue {
            name: name.to_owned(),
        }
    })?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use countersign_runtime::bounded_read::ReadFileErrorKind;
    use countersign_runtime::config::Secret;

    use super::*;

    fn configured(entries: &[(&str, HeaderSource, &str)]) -> BTreeMap<String, HeaderConfig> {
        entries
            .iter()
            .map(|(name, source, prefix)| {
                (
                    (*name).to_owned(),
                    HeaderConfig {
                        source: source.clone(),
                        prefix: (*prefix).to_owned(),
                    },
                )
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn literals_env_and_files_resolve_and_files_are_read_again_after_the_refresh() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "first\n").unwrap();
        let config = configured(&[
            (
                "Authorization",
                HeaderSource::File(token.clone()),
                "Bearer ",
            ),
            ("X-Key", HeaderSource::Env("RELAY_KEY".into()), ""),
            (
                "X-Team",
                HeaderSource::Literal(Secret::new("builds".into())),
                "",
            ),
        ]);
        let env = Environment::new().with("RELAY_KEY", "k-123");
        let headers = SinkHeaders::resolve(&config, &env)
            .await
            .expect("resolvable");
        let map = headers.current().await.unwrap();
        assert_eq!(map["authorization"], "Bearer first");
        assert_eq!(map["x-key"], "k-123");
        assert_eq!(map["x-team"], "builds");
        assert!(map["authorization"].is_sensitive());
        assert!(!format!("{headers:?}").contains("k-123"));
        assert!(!format!("{headers:?}").contains("first"));

        std::fs::write(&token, "second").unwrap();
        let map = headers.current().await.unwrap();
        assert_eq!(
            map["authorization"], "Bearer first",
            "not read again per delivery"
        );
        tokio::time::advance(FILE_REFRESH_INTERVAL).await;
        let map = headers.current().await.unwrap();
        assert_eq!(
            map["authorization"], "Bearer second",
            "a rotated token is used once the refresh interval passed"
        );

        std::fs::remove_file(&token).unwrap();
        tokio::time::advance(FILE_REFRESH_INTERVAL).await;
        assert!(matches!(
            headers.current().await,
            Err(HeaderError::ReadFile { .. })
        ));
        std::fs::write(&token, "third").unwrap();
        let map = headers.current().await.unwrap();
        assert_eq!(
            map["authorization"], "Bearer third",
            "a failed read is not cached"
        );
    }

    #[tokio::test]
    async fn header_files_are_read_up_to_the_limit_at_start_up_and_at_each_refresh() {
        let endless = configured(&[("X-Key", HeaderSource::File("/dev/zero".into()), "")]);
        match SinkHeaders::resolve(&endless, &Environment::new()).await {
            Err(HeaderError::ReadFile { source, .. }) => {
                assert_eq!(source.kind(), ReadFileErrorKind::TooLarge)
            }
            other => panic!("expected a file too large, got {other:?}"),
        }

        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "small").unwrap();
        let config = configured(&[("X-Key", HeaderSource::File(token.clone()), "")]);
        let headers =
            SinkHeaders::resolve_refreshing_every(&config, &Environment::new(), Duration::ZERO)
                .await
                .expect("resolvable");
        assert_eq!(headers.current().await.unwrap()["x-key"], "small");
        let too_large = vec![b'a'; usize::try_from(MAX_SINK_FILE_BYTES).unwrap() + 1];
        std::fs::write(&token, too_large).unwrap();
        match headers.current().await {
            Err(HeaderError::ReadFile { source, .. }) => {
                assert_eq!(source.kind(), ReadFileErrorKind::TooLarge)
            }
            other => panic!("expected a file too large, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn missing_and_invalid_values_are_errors() {
        let missing = configured(&[("X-Key", HeaderSource::Env("NOT_SET".into()), "")]);
        assert!(matches!(
            SinkHeaders::resolve(&missing, &Environment::new()).await,
            Err(HeaderError::MissingEnv { .. })
        ));
        let no_file = configured(&[(
            "X-Key",
            HeaderSource::File("/nonexistent/countersign/token".into()),
            "",
        )]);
        assert!(matches!(
            SinkHeaders::resolve(&no_file, &Environment::new()).await,
            Err(HeaderError::ReadFile { .. })
        ));
        let newline = configured(&[(
            "X-Key",
            HeaderSource::Literal(Secret::new("a\nb".into())),
            "",
        )]);
        assert!(matches!(
            SinkHeaders::resolve(&newline, &Environment::new()).await,
            Err(HeaderError::InvalidValue { .. })
        ));
    }
}
