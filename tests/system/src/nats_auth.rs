//! NATS operator-mode credentials minted from the permission files shipped in
//! `k8s/nats/permissions`, and a real nats-server that trusts them.
//!
//! Every Countersign service authenticates with a `.creds` file (a user JWT and its NKey seed), so
//! NATS runs in operator mode: an operator signs the accounts, the COUNTERSIGN account signs one
//! user per service, and each user JWT carries that service's publish and subscribe permissions.
//! In a cluster `k8s/nats/credentials.sh` makes them with `nsc`; here [`Operator`] makes the same
//! JWTs (the NATS JWT v2 claims, Ed25519 signatures by NKeys) from the same files, so the
//! permissions under test are exactly the shipped ones.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use countersign_test_support::process::{PeerFailed, PeerProcess};
use countersign_test_support::{peers, ports, short_tempdir, wait};
use nkeys::KeyPair;
use serde_json::{Value, json};

use crate::{http, k8s_dir};

/// How long a nats-server may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The name of the account every service user belongs to.
pub const ACCOUNT_NAME: &str = "COUNTERSIGN";

/// `k8s/nats/permissions`.
pub fn permissions_dir() -> PathBuf {
    k8s_dir().join("nats/permissions")
}

/// Why a permission file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PermissionsError {
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: expected `pub|sub|deny-pub|deny-sub SUBJECT`", path.display())]
    Syntax { path: PathBuf, line: usize },
}

/// Why credentials could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("signing a JWT")]
    Sign(#[source] nkeys::error::Error),
    #[error("reading a key's seed")]
    Seed(#[source] nkeys::error::Error),
}

/// One user's permissions: the subjects it may and may not publish and subscribe to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    pub publish_allow: Vec<String>,
    pub publish_deny: Vec<String>,
    pub subscribe_allow: Vec<String>,
    pub subscribe_deny: Vec<String>,
}

impl Permissions {
    /// Reads `k8s/nats/permissions/<user>.txt`.
    pub fn shipped(user: &str) -> Result<Permissions, PermissionsError> {
        Permissions::load(&permissions_dir().join(format!("{user}.txt")))
    }

    /// Reads a permission file: one `pub|sub|deny-pub|deny-sub SUBJECT` a line, `#` comments.
    pub fn load(path: &Path) -> Result<Permissions, PermissionsError> {
        let text = std::fs::read_to_string(path).map_err(|source| PermissionsError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut permissions = Permissions::default();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let syntax = || PermissionsError::Syntax {
                path: path.to_owned(),
                line: index + 1,
            };
            let mut words = line.split_whitespace();
            let (Some(rule), Some(subject), None) = (words.next(), words.next(), words.next())
            else {
                return Err(syntax());
            };
            let list = match rule {
                "pub" => &mut permissions.publish_allow,
                "sub" => &mut permissions.subscribe_allow,
                "deny-pub" => &mut permissions.publish_deny,
                "deny-sub" => &mut permissions.subscribe_deny,
                _ => return Err(syntax()),
            };
            list.push(subject.to_owned());
        }
        Ok(permissions)
    }

    /// Everything allowed, for a test's own observer.
    pub fn everything() -> Permissions {
        Permissions {
            publish_allow: vec![">".to_owned()],
            subscribe_allow: vec![">".to_owned()],
            ..Permissions::default()
        }
    }

    fn claims(&self) -> Value {
        let list = |allow: &[String], deny: &[String]| {
            let mut map = serde_json::Map::new();
            if !allow.is_empty() {
                map.insert("allow".to_owned(), json!(allow));
            }
            if !deny.is_empty() {
                map.insert("deny".to_owned(), json!(deny));
            }
            Value::Object(map)
        };
        json!({
            "pub": list(&self.publish_allow, &self.publish_deny),
            "sub": list(&self.subscribe_allow, &self.subscribe_deny),
        })
    }
}

/// The names of the shipped permission files (`watcher`, `registrar`...), sorted.
pub fn shipped_users() -> Result<Vec<String>, PermissionsError> {
    let dir = permissions_dir();
    let entries = std::fs::read_dir(&dir).map_err(|source| PermissionsError::Read {
        path: dir.clone(),
        source,
    })?;
    let mut users: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            entry
                .file_name()
                .to_str()
                .and_then(|name| name.strip_suffix(".txt"))
                .map(str::to_owned)
        })
        .collect();
    users.sort();
    Ok(users)
}

/// An operator, its system account and the COUNTERSIGN account, with their JWTs.
#[derive(Debug)]
pub struct Operator {
    operator_jwt: String,
    system: KeyPair,
    system_jwt: String,
    account: KeyPair,
    account_jwt: String,
}

impl Operator {
    /// New keys and JWTs. The COUNTERSIGN account has JetStream without limits.
    pub fn generate() -> Result<Operator, MintError> {
        let operator = KeyPair::new_operator();
        let system = KeyPair::new_account();
        let account = KeyPair::new_account();
        let operator_jwt = sign_jwt(
            &operator,
            &operator.public_key(),
            "countersign-operator",
            json!({
                "system_account": system.public_key(),
                "type": "operator",
                "version": 2,
            }),
        )?;
        let system_jwt = sign_jwt(
            &operator,
            &system.public_key(),
            "SYS",
            json!({
                "limits": unlimited_account_limits(false),
                "type": "account",
                "version": 2,
            }),
        )?;
        let account_jwt = sign_jwt(
            &operator,
            &account.public_key(),
            ACCOUNT_NAME,
            json!({
                "limits": unlimited_account_limits(true),
                "type": "account",
                "version": 2,
            }),
        )?;
        Ok(Operator {
            operator_jwt,
            system,
            system_jwt,
            account,
            account_jwt,
        })
    }

    /// The COUNTERSIGN account's public key (what KEDA's trigger calls the `account`).
    pub fn account_public_key(&self) -> String {
        self.account.public_key()
    }

    /// The nats-server configuration that trusts this operator: its JWT, the system account and
    /// both account JWTs preloaded into a memory resolver, and a protocol line long enough for the
    /// CONNECT of the user with the most permissions (the attestor's JWT is over the default 4 KiB).
    pub fn server_config(&self) -> String {
        format!(
            "max_control_line: 16384\noperator: \"{operator}\"\nsystem_account: \"{system}\"\nresolver: MEMORY\n\
             resolver_preload: {{\n  {system}: \"{system_jwt}\"\n  {account}: \"{account_jwt}\"\n}}\n",
            operator = self.operator_jwt,
            system = self.system.public_key(),
            system_jwt = self.system_jwt,
            account = self.account.public_key(),
            account_jwt = self.account_jwt,
        )
    }

    /// A `.creds` file (user JWT and NKey seed) for user `name` of the COUNTERSIGN account.
    pub fn user_credentials(
        &self,
        name: &str,
        permissions: &Permissions,
    ) -> Result<String, MintError> {
        let user = KeyPair::new_user();
        let mut nats = permissions.claims();
        if let Value::Object(fields) = &mut nats {
            fields.insert("subs".to_owned(), json!(-1));
            fields.insert("data".to_owned(), json!(-1));
            fields.insert("payload".to_owned(), json!(-1));
            fields.insert("type".to_owned(), json!("user"));
            fields.insert("version".to_owned(), json!(2));
        }
        let jwt = sign_jwt(&self.account, &user.public_key(), name, nats)?;
        let seed = user.seed().map_err(MintError::Seed)?;
        Ok(format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\
             NKEYs are sensitive and should be treated as secrets.\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
             *************************************************************\n"
        ))
    }
}

/// Account limits with everything unlimited; JetStream on or off.
fn unlimited_account_limits(jetstream: bool) -> Value {
    let storage = if jetstream { -1 } else { 0 };
    json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
        "mem_storage": storage, "disk_storage": storage, "streams": storage, "consumer": storage,
        "max_ack_pending": -1, "mem_max_stream_bytes": -1, "disk_max_stream_bytes": -1,
        "max_bytes_required": false,
    })
}

/// A NATS JWT (v2): `{"typ":"JWT","alg":"ed25519-nkey"}`, the claims, an Ed25519 signature by
/// the issuer, each part base64url without padding.
fn sign_jwt(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> Result<String, MintError> {
    let issued_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or_default();
    let mut claims = json!({
        "iat": issued_at,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let digest = ring::digest::digest(&ring::digest::SHA256, claims.to_string().as_bytes());
    let jti: String = digest.as_ref()[..20]
        .iter()
        .map(|byte| format!("{byte:02X}"))
        .collect();
    if let Value::Object(fields) = &mut claims {
        fields.insert("jti".to_owned(), json!(jti));
    }
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{body}");
    let signature = issuer
        .sign(signing_input.as_bytes())
        .map_err(MintError::Sign)?;
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    ))
}

/// A real nats-server with JetStream in operator mode, trusting an [`Operator`]. Dropping it
/// stops the server and removes its directory.
#[derive(Debug)]
pub struct OperatorNats {
    // Field order is drop order: the process stops before its directory goes.
    process: PeerProcess,
    port: u16,
    monitor_port: u16,
    dir: tempfile::TempDir,
}

impl OperatorNats {
    /// Starts a server on free loopback ports and waits until JetStream is healthy.
    pub async fn start(operator: &Operator) -> Result<OperatorNats, PeerFailed> {
        let dir = short_tempdir("cs-natsop-");
        let port = ports::free_port();
        let monitor_port = ports::free_port();
        let config_path = dir.path().join("nats.conf");
        let config = format!(
            "listen: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor_port}\nserver_name: countersign-operator-test\n\
             jetstream {{\n  store_dir: \"{store}\"\n  max_memory_store: 64MB\n  max_file_store: 16GB\n}}\n{auth}",
            store = dir.path().join("store").display(),
            auth = operator.server_config(),
        );
        std::fs::write(&config_path, config).map_err(|error| PeerFailed {
            name: "nats-server".to_owned(),
            message: format!("writing {}: {error}", config_path.display()),
            log_tail: String::new(),
        })?;
        let log = dir.path().join("nats-server.log");
        let args = vec!["-c".to_owned(), config_path.display().to_string()];
        let process =
            PeerProcess::spawn("nats-server", &peers().nats_server.path, &args, &[], &log)
                .await
                .map_err(|error| PeerFailed {
                    name: "nats-server".to_owned(),
                    message: error.to_string(),
                    log_tail: countersign_test_support::process::log_tail(&log),
                })?;
        let monitor = format!("127.0.0.1:{monitor_port}");
        let healthy = wait::until("nats-server to be healthy", START_TIMEOUT, || {
            let monitor = monitor.clone();
            let running = process.is_running();
            async move {
                if !running {
                    return Some(false);
                }
                let answer = http::get(&monitor, "/healthz?js-enabled-only=true").await?;
                (answer.status == 200).then_some(true)
            }
        })
        .await;
        match healthy {
            Ok(true) => Ok(OperatorNats {
                process,
                port,
                monitor_port,
                dir,
            }),
            Ok(false) => Err(PeerFailed::new(
                &process,
                "nats-server exited during start-up",
            )),
            Err(error) => Err(PeerFailed::from_wait(&process, error)),
        }
    }

    /// `nats://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:<port>` of the monitoring endpoint.
    pub fn monitor_address(&self) -> String {
        format!("127.0.0.1:{}", self.monitor_port)
    }

    /// Writes `credentials` into the server's directory as `<name>.creds` and returns the path.
    pub fn write_credentials(&self, name: &str, credentials: &str) -> std::io::Result<PathBuf> {
        let path = self.dir.path().join(format!("{name}.creds"));
        std::fs::write(&path, credentials)?;
        Ok(path)
    }

    /// The last few KiB of the server's log.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_lines_are_parsed_and_bad_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.txt");
        std::fs::write(&path, "# c\n\npub a.>\nsub _INBOX.>\ndeny-pub a.b\n").unwrap();
        let permissions = Permissions::load(&path).unwrap();
        assert_eq!(permissions.publish_allow, ["a.>"]);
        assert_eq!(permissions.subscribe_allow, ["_INBOX.>"]);
        assert_eq!(permissions.publish_deny, ["a.b"]);
        std::fs::write(&path, "publish a\n").unwrap();
        assert!(matches!(
            Permissions::load(&path),
            Err(PermissionsError::Syntax { line: 1, .. })
        ));
    }

    #[test]
    fn jwts_verify_with_the_issuers_key() {
        let operator = Operator::generate().unwrap();
        let creds = operator
            .user_credentials("watcher", &Permissions::everything())
            .unwrap();
        let jwt = creds.lines().nth(1).unwrap();
        let (signing_input, signature) = jwt.rsplit_once('.').unwrap();
        let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
        let account = KeyPair::from_public_key(&operator.account_public_key()).unwrap();
        account
            .verify(signing_input.as_bytes(), &signature)
            .unwrap();
        let claims: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(signing_input.split_once('.').unwrap().1)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["iss"], operator.account_public_key());
        assert_eq!(claims["nats"]["pub"]["allow"], json!([">"]));
    }
}
