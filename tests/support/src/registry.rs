//! A real OCI registry on a free loopback port, plain HTTP, with its own storage directory, of one
//! of two kinds ([`RegistryKind`]):
//!
//! * CNCF Distribution v3 (`tests/peers/registry`), optionally with htpasswd authentication (a
//!   user and password the test picks, hashed with bcrypt by our `registry-htpasswd`). It serves
//!   no Referrers API: referrers are found through the OCI tag-schema fallback;
//! * go-containerregistry's registry with its OCI 1.1 Referrers API on
//!   (`tests/peers/referrers-registry`), without authentication. It keeps manifests in memory.
//!
//! [`Registry::stop`] and [`Registry::start_again`] make an outage: same port, same storage
//! (for the Referrers API registry, the blobs only).
//! [`Registry::docker_config`] writes the Docker config file (`auths`) that the exporter, `oras`
//! (`--registry-config`) and `cosign` (`DOCKER_CONFIG`) read.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use countersign_runtime::http_client::{HttpClientOptions, http_client};

use crate::process::{PeerFailed, PeerProcess};
use crate::{peers, ports, short_tempdir, wait};

/// How long a start may take before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Which registry program.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RegistryKind {
    /// CNCF Distribution: no Referrers API (the tag-schema fallback); htpasswd on request.
    #[default]
    Distribution,
    /// go-containerregistry's registry, serving the OCI 1.1 Referrers API; no authentication.
    ReferrersApi,
}

/// What the registry is started with.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Which registry program.
    pub kind: RegistryKind,
    /// `(user, password)`: require htpasswd (Basic) authentication (Distribution only).
    pub htpasswd: Option<(String, String)>,
}

/// A running registry. Dropping it stops it and removes its storage.
#[derive(Debug)]
pub struct Registry {
    process: Option<PeerProcess>,
    dir: tempfile::TempDir,
    port: u16,
    options: RegistryOptions,
}

impl Registry {
    /// Starts a registry.
    pub async fn start(options: RegistryOptions) -> Result<Registry, PeerFailed> {
        assert!(
            options.kind == RegistryKind::Distribution || options.htpasswd.is_none(),
            "only the Distribution registry takes htpasswd authentication"
        );
        let dir = short_tempdir("cs-registry-");
        let mut registry = Registry {
            process: None,
            dir,
            port: ports::free_port(),
            options,
        };
        registry.write_config()?;
        registry.launch().await?;
        Ok(registry)
    }

    /// `127.0.0.1:<port>`: the host image references name.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// The registry's directory (config, storage, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a Docker config file with this registry's credentials (when it has some) under
    /// `dir/config.json`, and returns its path. `cosign` reads it from `DOCKER_CONFIG=dir`.
    pub fn docker_config(&self, dir: &Path) -> PathBuf {
        let auths = match &self.options.htpasswd {
            Some((user, password)) => {
                let auth =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                serde_json::json!({ self.host(): { "auth": auth } })
            }
            None => serde_json::json!({}),
        };
        let path = dir.join("config.json");
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(&serde_json::json!({ "auths": auths }))
                .expect("a JSON document"),
        )
        .expect("writing the Docker config file");
        path
    }

    fn write_config(&self) -> Result<(), PeerFailed> {
        if self.options.kind == RegistryKind::ReferrersApi {
            // Configured by its command line.
            return Ok(());
        }
        let storage = self.dir.path().join("storage");
        let auth = match &self.options.htpasswd {
            Some((user, password)) => {
                let output = std::process::Command::new(&peers().registry_htpasswd.path)
                    .args([user, password])
                    .output()
                    .map_err(|error| PeerFailed {
                        name: "registry-htpasswd".into(),
                        message: error.to_string(),
                        log_tail: String::new(),
                    })?;
                let htpasswd = self.dir.path().join("htpasswd");
                std::fs::write(&htpasswd, &output.stdout).expect("writing htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: countersign-test\n    path: {}\n",
                    htpasswd.display()
                )
            }
            None => String::new(),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: countersign-test-secret\n{auth}",
            storage = storage.display(),
            port = self.port,
        );
        std::fs::write(self.dir.path().join("config.yml"), config).expect("writing config.yml");
        Ok(())
    }

    async fn launch(&mut self) -> Result<(), PeerFailed> {
        let log = self.log_path();
        let (program, args) = match self.options.kind {
            RegistryKind::Distribution => (
                &peers().registry.path,
                vec![
                    "serve".to_owned(),
                    self.dir.path().join("config.yml").display().to_string(),
                ],
            ),
            RegistryKind::ReferrersApi => (
                &peers().referrers_registry.path,
                vec![
                    "--address".to_owned(),
                    self.host(),
                    "--disk".to_owned(),
                    self.dir.path().join("blobs").display().to_string(),
                ],
            ),
        };
        // No trace exporter: Distribution v3 would otherwise send OTLP to localhost.
        let envs = [("OTEL_TRACES_EXPORTER".to_owned(), "none".to_owned())];
        let process = PeerProcess::spawn("registry", program, &args, &envs, &log)
            .await
            .map_err(|error| PeerFailed {
                name: "registry".into(),
                message: error.to_string(),
                log_tail: crate::process::log_tail(&log),
            })?;
        let url = format!("{}/v2/", self.url());
        let http = http_client(HttpClientOptions::new().timeout(Duration::from_secs(2))).map_err(
            |error| PeerFailed::new(&process, format!("building an HTTP client: {error}")),
        )?;
        let http = &http;
        let process_ref = &process;
        let ready = wait::until("the registry to serve /v2/", START_TIMEOUT, || {
            let url = url.clone();
            async move {
                if !process_ref.is_running() {
                    return Some(false);
                }
                let status = http.get(&url).send().await.ok()?.status();
                // 401: up, and asking for the credentials it was configured with.
                (status.is_success() || status == reqwest::StatusCode::UNAUTHORIZED).then_some(true)
            }
        })
        .await;
        match ready {
            Ok(true) => {
                self.process = Some(process);
                Ok(())
            }
            Ok(false) => Err(PeerFailed::new(
                &process,
                "the registry exited during start-up",
            )),
            Err(error) => Err(PeerFailed::from_wait(&process, error)),
        }
    }

    /// Stops the registry, keeping its storage, as an outage would.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop(Duration::from_secs(10));
        }
    }

    /// Starts the registry again on the same port with the same storage.
    pub async fn start_again(&mut self) -> Result<(), PeerFailed> {
        self.stop();
        self.launch().await
    }

    /// The registry's log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }
}
