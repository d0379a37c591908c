//! Registry credentials from a Docker config file, as `docker login`, `oras login` and a
//! `kubernetes.io/dockerconfigjson` Secret write it:
//!
//! ```json
//! {"auths": {"registry.example.org": {"auth": "<base64 of user:password>"}}}
//! ```
//!
//! An `auths` key may also be a URL (`https://registry.example.org/v1/`, Docker Hub's
//! `https://index.docker.io/v1/`): its host is what counts. `username`/`password` fields are
//! taken when `auth` is absent, and `identitytoken` is a refresh token for the token flow.
//! Credential helpers (`credsStore`, `credHelpers`) run programs and are not supported. The
//! file is bounded in size and a password is never printed (`Debug` hides it).

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use base64::Engine as _;
use countersign_runtime::bounded_read::{ReadFileError, read_bounded};
use serde::Deserialize;

use crate::reference::canonical_host;

/// The largest Docker config file read.
pub const MAX_DOCKER_CONFIG_BYTES: u64 = 1024 * 1024;

/// A user name and password (or, with an empty user name, an identity token).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or token (never printed).
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// The `Authorization: Basic …` value.
    pub fn basic_header(&self) -> String {
        let pair = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }
}

/// Why a Docker config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DockerConfigError {
    /// The file could not be read, or is too large.
    #[error("reading the Docker config file")]
    Read(#[from] ReadFileError),
    /// The file is not a Docker config.
    #[error("the Docker config file is not JSON with an `auths` object")]
    Parse(#[from] serde_json::Error),
    /// An `auth` value is not base64 of `user:password`.
    #[error("the `auth` of {host:?} is not base64 of `user:password`")]
    Auth { host: String },
}

/// The credentials of a Docker config file, by registry host.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct DockerConfig {
    by_host: BTreeMap<String, Credentials>,
}

impl fmt::Debug for DockerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DockerConfig")
            .field("hosts", &self.by_host.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

impl DockerConfig {
    /// Reads and parses the file at `path`.
    pub fn read(path: &Path) -> Result<DockerConfig, DockerConfigError> {
        let bytes = read_bounded(path, MAX_DOCKER_CONFIG_BYTES)?;
        DockerConfig::parse(&bytes)
    }

    /// Parses a Docker config document.
    pub fn parse(bytes: &[u8]) -> Result<DockerConfig, DockerConfigError> {
        // A struct would also deserialize from a JSON array (serde's sequence form): only an
        // object is a Docker config.
        let value: serde_json::Value = serde_json::from_slice(bytes)?;
        if !value.is_object() {
            return Err(DockerConfigError::Parse(serde::de::Error::custom(
                "a Docker config file is a JSON object",
            )));
        }
        let file = File::deserialize(value)?;
        let mut by_host = BTreeMap::new();
        for (key, entry) in file.auths {
            let host = host_of(&key);
            let credentials = match (&entry.auth, &entry.username, &entry.password) {
                (Some(auth), _, _) if !auth.is_empty() => decode_auth(auth)
                    .ok_or_else(|| DockerConfigError::Auth { host: host.clone() })?,
                (_, Some(username), Some(password)) => Credentials {
                    username: username.clone(),
                    password: password.clone(),
                },
                _ => match &entry.identitytoken {
                    Some(token) => Credentials {
                        username: String::new(),
                        password: token.clone(),
                    },
                    None => continue,
                },
            };
            by_host.insert(host, credentials);
        }
        Ok(DockerConfig { by_host })
    }

    /// The credentials for registry `host` (as references name it), if any.
    pub fn credentials(&self, host: &str) -> Option<&Credentials> {
        self.by_host.get(host)
    }
}

/// A Docker config file, read again only when it changes: a mounted Secret is rotated by
/// swapping in a new file, which changes its inode, size or modification time, so a stat per
/// event is all a steady file costs. The read runs on a blocking thread.
#[derive(Debug)]
pub struct DockerConfigFile {
    path: PathBuf,
    last: Mutex<Option<(FileStamp, Arc<DockerConfig>)>>,
}

/// What tells one version of a file from the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    inode: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl DockerConfigFile {
    /// The file at `path`, not read yet.
    pub fn new(path: PathBuf) -> DockerConfigFile {
        DockerConfigFile {
            path,
            last: Mutex::new(None),
        }
    }

    /// The file's credentials as it is now.
    pub async fn current(&self) -> Result<Arc<DockerConfig>, DockerConfigError> {
        let io_error = |source| {
            DockerConfigError::Read(ReadFileError::Io {
                path: self.path.clone(),
                source,
            })
        };
        // Stamped before it is read: a change after the stamp is seen by the next call.
        let metadata = tokio::fs::metadata(&self.path).await.map_err(io_error)?;
        let stamp = FileStamp {
            inode: metadata.ino(),
            len: metadata.len(),
            modified: metadata.modified().ok(),
        };
        if let Some((seen, config)) = &*self.last.lock().unwrap_or_else(PoisonError::into_inner)
            && *seen == stamp
        {
            return Ok(Arc::clone(config));
        }
        let path = self.path.clone();
        let config = tokio::task::spawn_blocking(move || DockerConfig::read(&path))
            .await
            .map_err(|join| io_error(std::io::Error::other(join)))??;
        let config = Arc::new(config);
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((stamp, Arc::clone(&config)));
        Ok(config)
    }
}

/// The registry host an `auths` key names: the host of a URL, Docker Hub for its legacy keys.
fn host_of(key: &str) -> String {
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = without_scheme
        .split('/')
        .next()
        .unwrap_or(without_scheme)
        .to_ascii_lowercase();
    canonical_host(&host).to_owned()
}

fn decode_auth(auth: &str) -> Option<Credentials> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (username, password) = text.split_once(':')?;
    Some(Credentials {
        username: username.to_owned(),
        password: password.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auths_are_read_by_host() {
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        let config = DockerConfig::parse(
            format!(
                r#"{{"auths": {{
                    "localhost:5000": {{"auth": "{auth}"}},
                    "https://index.docker.io/v1/": {{"username": "bob", "password": "pw"}},
                    "ghcr.io": {{"identitytoken": "refresh"}}
                }}, "credsStore": "desktop"}}"#
            )
            .as_bytes(),
        )
        .unwrap();
        let alice = config.credentials("localhost:5000").unwrap();
        assert_eq!(
            (alice.username.as_str(), alice.password.as_str()),
            ("alice", "s3cret")
        );
        assert_eq!(alice.basic_header(), format!("Basic {auth}"));
        assert_eq!(config.credentials("docker.io").unwrap().username, "bob");
        assert_eq!(config.credentials("ghcr.io").unwrap().password, "refresh");
        assert!(config.credentials("quay.io").is_none());
        assert!(!format!("{alice:?}").contains("s3cret"));
    }

    #[tokio::test]
    async fn a_config_file_is_read_again_when_it_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let write = |user: &str| {
            // A new file renamed into place, as a Secret volume rotates.
            let staged = dir.path().join("staged.json");
            let text = format!(
                r#"{{"auths": {{"r.example": {{"username": "{user}", "password": "p"}}}}}}"#
            );
            std::fs::write(&staged, text).unwrap();
            std::fs::rename(&staged, &path).unwrap();
        };
        let file = DockerConfigFile::new(path.clone());
        assert!(matches!(
            file.current().await,
            Err(DockerConfigError::Read(_))
        ));
        write("alice");
        let first = file.current().await.unwrap();
        assert_eq!(first.credentials("r.example").unwrap().username, "alice");
        assert!(Arc::ptr_eq(&first, &file.current().await.unwrap()));
        write("bob");
        let second = file.current().await.unwrap();
        assert_eq!(second.credentials("r.example").unwrap().username, "bob");
    }

    #[test]
    fn a_bad_auth_or_document_is_refused() {
        assert!(matches!(
            DockerConfig::parse(br#"{"auths": {"a.example": {"auth": "bm8tY29sb24="}}}"#),
            Err(DockerConfigError::Auth { .. })
        ));
        assert!(matches!(
            DockerConfig::parse(b"[]"),
            Err(DockerConfigError::Parse(_))
        ));
    }
}
