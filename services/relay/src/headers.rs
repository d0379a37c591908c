//! A sink's configured request headers, resolved: literals and environment variables once at
//! start-up, files at every delivery (so a rotated token is used as soon as it is written).
//! Values are marked sensitive (`http` then hides them from `Debug`) and never logged.

use std::path::{Path, PathBuf};

use countersign_runtime::config::Environment;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{HeaderConfig, HeaderSource};

/// Why a header's value could not be had.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// The header name is not valid (configuration checks prevent it).
    #[error("{name:?} is not a valid header name")]
    InvalidName { name: String },
    /// The environment variable is not set.
    #[error("header {name}: the environment variable {var} is not set")]
    MissingEnv { name: String, var: String },
    /// The file could not be read.
    #[error("header {name}: reading {}", path.display())]
    ReadFile {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The value holds a byte a header cannot (a newline inside, a control character).
    #[error("header {name}: the value is not a valid header value")]
    InvalidValue { name: String },
}

/// Where a resolved header's value is read from.
#[derive(Debug, Clone)]
enum Value {
    /// Known since start-up.
    Fixed(HeaderValue),
    /// Read from the file at each delivery, with the prefix put in front.
    File { path: PathBuf, prefix: String },
}

/// One sink's headers.
#[derive(Debug, Clone, Default)]
pub struct SinkHeaders {
    headers: Vec<(HeaderName, Value)>,
}

impl SinkHeaders {
    /// Resolves the configured headers: literals and `from_env` now (from `env`), and each
    /// `from_file` read once to check that it is there and valid.
    pub async fn resolve<'a>(
        configured: impl IntoIterator<Item = (&'a String, &'a HeaderConfig)>,
        env: &Environment,
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
                    read_file_value(name, path, &config.prefix).await?;
                    Value::File {
                        path: path.clone(),
                        prefix: config.prefix.clone(),
                    }
                }
            };
            headers.push((header_name, value));
        }
        Ok(SinkHeaders { headers })
    }

    /// The headers for one delivery (files read now).
    pub async fn current(&self) -> Result<HeaderMap, HeaderError> {
        let mut map = HeaderMap::with_capacity(self.headers.len());
        for (name, value) in &self.headers {
            let value = match value {
                Value::Fixed(value) => value.clone(),
                Value::File { path, prefix } => {
                    read_file_value(name.as_str(), path, prefix).await?
                }
            };
            map.insert(name.clone(), value);
        }
        Ok(map)
    }
}

async fn read_file_value(
    name: &str,
    path: &Path,
    prefix: &str,
) -> Result<HeaderValue, HeaderError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| HeaderError::ReadFile {
            name: name.to_owned(),
            path: path.to_owned(),
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

    #[tokio::test]
    async fn literals_env_and_files_resolve_and_files_are_read_again() {
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

        std::fs::write(&token, "second").unwrap();
        let map = headers.current().await.unwrap();
        assert_eq!(
            map["authorization"], "Bearer second",
            "a rotated token is used"
        );

        std::fs::remove_file(&token).unwrap();
        assert!(matches!(
            headers.current().await,
            Err(HeaderError::ReadFile { .. })
        ));
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
