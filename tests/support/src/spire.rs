//! A real SPIRE for tests: a spire-server (sqlite datastore, `join_token` node attestor, short
//! cache reload) and a spire-agent attested with a join token (the `unix` workload attestor with
//! `discover_workload_path`, short sync interval), each on free loopback ports in one short
//! temporary directory.
//!
//! The join token is generated with `-spiffeID spiffe://<td>/tekton-node/<node>`, so the agent
//! also holds that node alias: workloads registered with it as their parent are served by this
//! agent. The agent bootstraps from the server's bundle (`trust_bundle_path`), not insecurely.
//!
//! Registration helpers use the `spire-server entry create` CLI (so test support does not depend
//! on our own API client), and [`Spire::wait_for_svid`] asks the real agent through the `spiffe`
//! crate until it serves the identity. [`Spire::stop_server`] and [`Spire::start_server`] make an
//! outage on the same port, data directory and datastore; [`Spire::restart_agent`] a crash of the
//! agent, which resumes on its data directory. A second, independent SPIRE (another
//! trust domain) is just another [`Spire::start`].

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use spiffe::{WorkloadApiClient, X509Svid};

use crate::process::{PeerFailed, PeerProcess};
use crate::wait::{self, WaitError};
use crate::{peers, ports, short_tempdir};

/// How long a server or agent may take to become healthy.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one CLI command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a stopped peer gets to exit before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The path prefix of node aliases, as Tekton's `spire-node-alias-prefix` default.
pub const NODE_ALIAS_PREFIX: &str = "/tekton-node/";

/// How the server keeps its CA keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServerKeyManager {
    /// `KeyManager "disk"`: keys survive a restart, so the CA does too.
    #[default]
    Disk,
    /// `KeyManager "memory"`: a restart makes a new CA (the old one stays in the bundle).
    Memory,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct SpireOptions {
    /// The trust domain (default `example.org`).
    pub trust_domain: String,
    /// The node name the agent stands for; its alias is
    /// `spiffe://<td>/tekton-node/<node_name>` (default `node-1`).
    pub node_name: String,
    /// `ca_ttl` (server default 24 h).
    pub ca_ttl: Option<Duration>,
    /// `default_x509_svid_ttl` (server default 1 h; keep it ≤ ca_ttl / 6).
    pub default_x509_svid_ttl: Option<Duration>,
    /// `admin_ids`: SPIFFE IDs that may call the admin APIs over TCP without an admin entry.
    pub admin_ids: Vec<String>,
    pub server_key_manager: ServerKeyManager,
    /// SPIFFE IDs whose X509-SVIDs get the code-signing extended key usage, from our
    /// CredentialComposer plugin (`tests/peers/spire-code-signing`); none (the default) runs
    /// no plugin.
    pub code_signing_ids: Vec<String>,
    /// Also attest workloads with the `k8s` workload attestor against this kubelet (a real node's
    /// pods); the agent's socket is then `<dir>/workload-api/spire-agent.sock`, the name pods
    /// expect, alone in a directory that can be mounted into them.
    pub kubelet: Option<KubeletAccess>,
}

/// How the agent's `k8s` workload attestor reaches the kubelet.
#[derive(Debug, Clone)]
pub struct KubeletAccess {
    /// The kubelet's address (its node IP: the attestor dials `https://<address>:<port>`).
    pub address: String,
    pub port: u16,
    /// A client certificate the kubelet accepts, and its key.
    pub certificate_path: PathBuf,
    pub private_key_path: PathBuf,
}

impl Default for SpireOptions {
    fn default() -> SpireOptions {
        SpireOptions {
            trust_domain: "example.org".to_owned(),
            node_name: "node-1".to_owned(),
            ca_ttl: None,
            default_x509_svid_ttl: None,
            admin_ids: Vec::new(),
            server_key_manager: ServerKeyManager::default(),
            kubelet: None,
            code_signing_ids: Vec::new(),
        }
    }
}

/// A running spire-server and spire-agent. Dropping it stops both and removes their directory.
#[derive(Debug)]
pub struct Spire {
    // Dropped in this order: the agent, the server, then the directory.
    agent: Option<PeerProcess>,
    server: Option<PeerProcess>,
    options: SpireOptions,
    server_port: u16,
    bundle_pem: String,
    dir: tempfile::TempDir,
}

/// An X509-SVID the server minted ([`Spire::mint_x509`]).
#[derive(Debug, Clone)]
pub struct MintedSvid {
    /// The chain, leaf first (DER).
    pub chain: Vec<Vec<u8>>,
    /// The PKCS#8 private key (DER).
    pub private_key: Vec<u8>,
}

/// A spire CLI command failed.
#[derive(Debug, thiserror::Error)]
#[error("`{command}` failed: {reason}\nstdout: {stdout}\nstderr: {stderr}")]
pub struct CommandFailed {
    pub command: String,
    pub reason: String,
    pub stdout: String,
    pub stderr: String,
}

/// Registering an entry failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error(transparent)]
    Command(#[from] CommandFailed),
    #[error("the server refused the entry for {spiffe_id}: code {code}: {message}")]
    Rejected {
        spiffe_id: String,
        code: i64,
        message: String,
    },
    #[error("unexpected output of `spire-server entry create`: {output}")]
    Output { output: String },
}

/// The agent did not serve an SVID in time.
#[derive(Debug, thiserror::Error)]
#[error(
    "the agent did not serve an X509-SVID for {spiffe_id}: {wait}; last answer: {last_answer}\n\
     ---- spire-agent log tail ----\n{agent_log_tail}\n---- spire-server log tail ----\n{server_log_tail}"
)]
pub struct SvidWaitError {
    pub spiffe_id: String,
    #[source]
    pub wait: WaitError,
    pub last_answer: String,
    pub agent_log_tail: String,
    pub server_log_tail: String,
}

impl Spire {
    /// Starts a server, generates a join token for the node alias, and starts an agent with it;
    /// returns once both are healthy.
    pub async fn start(options: SpireOptions) -> Result<Spire, PeerFailed> {
        let dir = short_tempdir("cs-spire-");
        let mut spire = Spire {
            agent: None,
            server: None,
            options,
            server_port: ports::free_port(),
            bundle_pem: String::new(),
            dir,
        };
        for directory in [
            spire.server_data_dir(),
            spire.agent_data_dir(),
            spire.workload_api_dir(),
        ] {
            std::fs::create_dir_all(&directory).map_err(|error| PeerFailed {
                name: "spire".into(),
                message: format!("creating {}: {error}", directory.display()),
                log_tail: String::new(),
            })?;
        }
        std::fs::write(spire.server_config_path(), spire.server_config()).map_err(|error| {
            PeerFailed {
                name: "spire-server".into(),
                message: format!("writing its config: {error}"),
                log_tail: String::new(),
            }
        })?;
        spire.start_server().await?;
        spire.bootstrap_agent().await?;
        Ok(spire)
    }

    /// Fetches the bundle, generates the join token and starts the agent.
    async fn bootstrap_agent(&mut self) -> Result<(), PeerFailed> {
        let server_failed = |spire: &Spire, message: String| PeerFailed {
            name: "spire-server".into(),
            message,
            log_tail: spire.server_log_tail(),
        };
        let socket = self.server_socket_path().display().to_string();
        let bundle = run_command(
            &peers().spire_server.path,
            &["bundle", "show", "-socketPath", &socket, "-format", "pem"],
        )
        .await
        .map_err(|error| server_failed(self, error.to_string()))?;
        self.bundle_pem = String::from_utf8_lossy(&bundle.stdout).into_owned();
        std::fs::write(self.agent_bundle_path(), &self.bundle_pem)
            .map_err(|error| server_failed(self, format!("writing the agent's bundle: {error}")))?;

        let alias = self.node_alias_id();
        let token_output = run_command(
            &peers().spire_server.path,
            &[
                "token",
                "generate",
                "-socketPath",
                &socket,
                "-spiffeID",
                &alias,
                "-ttl",
                "600",
            ],
        )
        .await
        .map_err(|error| server_failed(self, error.to_string()))?;
        let token_text = String::from_utf8_lossy(&token_output.stdout).into_owned();
        let token = token_text
            .lines()
            .find_map(|line| line.trim().strip_prefix("Token:"))
            .map(|token| token.trim().to_owned())
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                server_failed(
                    self,
                    format!("no token in `token generate` output: {token_text}"),
                )
            })?;

        std::fs::write(self.agent_config_path(), self.agent_config()).map_err(|error| {
            PeerFailed {
                name: "spire-agent".into(),
                message: format!("writing its config: {error}"),
                log_tail: String::new(),
            }
        })?;
        let args = vec![
            "run".to_owned(),
            "-config".to_owned(),
            self.agent_config_path().display().to_string(),
            "-joinToken".to_owned(),
            token,
        ];
        let agent = spawn(
            "spire-agent",
            &peers().spire_agent.path,
            &args,
            &self.agent_log_path(),
        )
        .await?;
        let agent_socket = self.agent_socket_path().display().to_string();
        wait_healthy(&agent, &peers().spire_agent.path, &agent_socket).await?;
        self.agent = Some(agent);
        Ok(())
    }

    /// Starts the server (again): same port, data directory, datastore and keys. Does nothing if
    /// it is running.
    pub async fn start_server(&mut self) -> Result<(), PeerFailed> {
        if self.server.as_ref().is_some_and(PeerProcess::is_running) {
            return Ok(());
        }
        let args = vec![
            "run".to_owned(),
            "-config".to_owned(),
            self.server_config_path().display().to_string(),
        ];
        let server = spawn(
            "spire-server",
            &peers().spire_server.path,
            &args,
            &self.server_log_path(),
        )
        .await?;
        let socket = self.server_socket_path().display().to_string();
        wait_healthy(&server, &peers().spire_server.path, &socket).await?;
        self.server = Some(server);
        Ok(())
    }

    /// Stops the server (SIGTERM, then SIGKILL after a grace period), keeping its data, as an
    /// outage would. The agent keeps running and retries.
    pub fn stop_server(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.stop(STOP_GRACE);
        }
    }

    /// Kills the agent with SIGKILL, as a crash would, and starts it again on its data directory
    /// and the same Workload API socket. Its key (disk key manager) and its SVID are kept there,
    /// so it resumes as the same node without a new join token. Returns once it is healthy; the
    /// workloads it serves must fetch their SVIDs again (their streams broke).
    pub async fn restart_agent(&mut self) -> Result<(), PeerFailed> {
        if let Some(mut agent) = self.agent.take() {
            agent.kill();
        }
        let args = vec![
            "run".to_owned(),
            "-config".to_owned(),
            self.agent_config_path().display().to_string(),
        ];
        let agent = spawn(
            "spire-agent",
            &peers().spire_agent.path,
            &args,
            &self.agent_log_path(),
        )
        .await?;
        let agent_socket = self.agent_socket_path().display().to_string();
        wait_healthy(&agent, &peers().spire_agent.path, &agent_socket).await?;
        self.agent = Some(agent);
        Ok(())
    }

    /// Whether the agent process is running.
    pub fn is_agent_running(&self) -> bool {
        self.agent.as_ref().is_some_and(PeerProcess::is_running)
    }

    /// Whether the server process is running.
    pub fn is_server_running(&self) -> bool {
        self.server.as_ref().is_some_and(PeerProcess::is_running)
    }

    /// Registers a workload entry with the `spire-server entry create` CLI and returns its id.
    /// `selectors` are written `type:value`; `admin` lets the holder call the admin APIs.
    pub async fn register_workload(
        &self,
        spiffe_id: &str,
        selectors: &[&str],
        parent_id: &str,
        admin: bool,
    ) -> Result<String, RegisterError> {
        let socket = self.server_socket_path().display().to_string();
        let mut args = vec![
            "entry",
            "create",
            "-socketPath",
            &socket,
            "-spiffeID",
            spiffe_id,
            "-parentID",
            parent_id,
            "-output",
            "json",
        ];
        for selector in selectors {
            args.extend(["-selector", selector]);
        }
        if admin {
            args.push("-admin");
        }
        let output = run_command(&peers().spire_server.path, &args).await?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        parse_created_entry(spiffe_id, &text)
    }

    /// Runs the server's own CLI as an operator would, `spire-server <args> -socketPath <this
    /// server's socket> -output json`, and returns what it printed.
    pub async fn server_cli(&self, args: &[&str]) -> Result<serde_json::Value, CommandFailed> {
        let socket = self.server_socket_path().display().to_string();
        let mut full = args.to_vec();
        full.extend(["-socketPath", &socket, "-output", "json"]);
        let output = run_command(&peers().spire_server.path, &full).await?;
        serde_json::from_slice(&output.stdout).map_err(|error| CommandFailed {
            command: format!("spire-server {}", full.join(" ")),
            reason: format!("its output is not JSON: {error}"),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// An X509-SVID for `spiffe_id` minted by the server under its active CA
    /// (`spire-server x509 mint`): the chain, leaf first, and the PKCS#8 private key, DER.
    pub async fn mint_x509(&self, spiffe_id: &str) -> Result<MintedSvid, CommandFailed> {
        let minted = self
            .server_cli(&["x509", "mint", "-spiffeID", spiffe_id])
            .await?;
        let unusable = |reason: &str| CommandFailed {
            command: format!("spire-server x509 mint -spiffeID {spiffe_id}"),
            reason: reason.to_owned(),
            stdout: minted.to_string(),
            stderr: String::new(),
        };
        let decode = |text: &serde_json::Value| {
            text.as_str().and_then(|text| {
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, text).ok()
            })
        };
        let chain = minted[0]["x509_svid"]
            .as_array()
            .ok_or_else(|| unusable("no x509_svid chain"))?
            .iter()
            .map(|certificate| {
                decode(certificate).ok_or_else(|| unusable("a certificate is not base64"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let private_key = decode(&minted[0]["private_key"])
            .ok_or_else(|| unusable("the private key is not base64"))?;
        Ok(MintedSvid { chain, private_key })
    }

    /// Registers `spiffe_id` for this test process (its uid and executable path, see
    /// [`Spire::test_process_selectors`]), parented on the node alias; returns the entry id.
    pub async fn register_test_process(
        &self,
        spiffe_id: &str,
        admin: bool,
    ) -> Result<String, RegisterError> {
        let selectors = test_process_selectors();
        let selectors: Vec<&str> = selectors.iter().map(String::as_str).collect();
        self.register_workload(spiffe_id, &selectors, &self.node_alias_id(), admin)
            .await
    }

    /// Asks the agent's Workload API until it serves an X509-SVID for `spiffe_id` to this
    /// process, and returns it.
    pub async fn wait_for_svid(
        &self,
        spiffe_id: &str,
        timeout: Duration,
    ) -> Result<X509Svid, SvidWaitError> {
        let endpoint = self.agent_endpoint();
        let last_answer = std::sync::Mutex::new(String::from("(none)"));
        let result = wait::until(&format!("an X509-SVID for {spiffe_id}"), timeout, || {
            let endpoint = endpoint.clone();
            let last_answer = &last_answer;
            async move {
                let answer = fetch_svid(&endpoint, spiffe_id).await;
                match answer {
                    Ok(svid) => Some(svid),
                    Err(text) => {
                        if let Ok(mut last) = last_answer.lock() {
                            *last = text;
                        }
                        None
                    }
                }
            }
        })
        .await;
        result.map_err(|wait| SvidWaitError {
            spiffe_id: spiffe_id.to_owned(),
            wait,
            last_answer: last_answer
                .lock()
                .map(|text| text.clone())
                .unwrap_or_default(),
            agent_log_tail: self.agent_log_tail(),
            server_log_tail: self.server_log_tail(),
        })
    }

    /// The trust domain name, e.g. `example.org`.
    pub fn trust_domain(&self) -> &str {
        &self.options.trust_domain
    }

    /// The node name the agent stands for.
    pub fn node_name(&self) -> &str {
        &self.options.node_name
    }

    /// `spiffe://<td>/tekton-node/<node name>`: the agent's node alias, the parent of workloads.
    pub fn node_alias_id(&self) -> String {
        format!(
            "spiffe://{}{NODE_ALIAS_PREFIX}{}",
            self.options.trust_domain, self.options.node_name
        )
    }

    /// `spiffe://<td>/spire/server`: the identity the server presents on TCP.
    pub fn server_id(&self) -> String {
        format!("spiffe://{}/spire/server", self.options.trust_domain)
    }

    /// The server's admin Unix socket (local callers are administrators).
    pub fn server_socket_path(&self) -> PathBuf {
        self.dir.path().join("server").join("api.sock")
    }

    /// `127.0.0.1:<port>`: the server's TCP (mTLS) address.
    pub fn server_address(&self) -> String {
        format!("127.0.0.1:{}", self.server_port)
    }

    pub fn server_port(&self) -> u16 {
        self.server_port
    }

    /// The agent's Workload API socket.
    pub fn agent_socket_path(&self) -> PathBuf {
        match self.options.kubelet {
            Some(_) => self.workload_api_dir().join("spire-agent.sock"),
            None => self.dir.path().join("agent").join("api.sock"),
        }
    }

    /// The directory holding only the agent's socket (what the SPIFFE CSI driver mounts into
    /// pods) when the `k8s` attestor is on.
    pub fn workload_api_dir(&self) -> PathBuf {
        self.dir.path().join("workload-api")
    }

    /// `unix:///<agent socket>`: the Workload API endpoint, as `SPIFFE_ENDPOINT_SOCKET` writes it.
    pub fn agent_endpoint(&self) -> String {
        format!("unix://{}", self.agent_socket_path().display())
    }

    /// The server's trust bundle (its CA certificates), PEM, as fetched at start.
    pub fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// The server's trust bundle as DER certificates.
    pub fn bundle_der(&self) -> Vec<Vec<u8>> {
        CertificateDer::pem_slice_iter(self.bundle_pem.as_bytes())
            .filter_map(Result::ok)
            .map(|certificate| certificate.as_ref().to_vec())
            .collect()
    }

    /// The directory holding everything of this SPIRE.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's `data_dir` (datastore, keys).
    pub fn server_data_dir(&self) -> PathBuf {
        self.dir.path().join("server").join("data")
    }

    /// The agent's `data_dir` (its SVID and keys).
    pub fn agent_data_dir(&self) -> PathBuf {
        self.dir.path().join("agent").join("data")
    }

    pub fn server_log_path(&self) -> PathBuf {
        self.dir.path().join("spire-server.log")
    }

    pub fn agent_log_path(&self) -> PathBuf {
        self.dir.path().join("spire-agent.log")
    }

    pub fn server_log_tail(&self) -> String {
        crate::process::log_tail(&self.server_log_path())
    }

    pub fn agent_log_tail(&self) -> String {
        crate::process::log_tail(&self.agent_log_path())
    }

    fn server_config_path(&self) -> PathBuf {
        self.dir.path().join("server").join("server.conf")
    }

    fn agent_config_path(&self) -> PathBuf {
        self.dir.path().join("agent").join("agent.conf")
    }

    fn agent_bundle_path(&self) -> PathBuf {
        self.dir.path().join("agent").join("bundle.pem")
    }

    fn server_config(&self) -> String {
        let data = self.server_data_dir();
        let mut server = vec![
            "bind_address = \"127.0.0.1\"".to_owned(),
            format!("bind_port = \"{}\"", self.server_port),
            format!(
                "socket_path = {}",
                hcl_string(&self.server_socket_path().display().to_string())
            ),
            format!("trust_domain = {}", hcl_string(&self.options.trust_domain)),
            format!("data_dir = {}", hcl_string(&data.display().to_string())),
            "log_level = \"DEBUG\"".to_owned(),
        ];
        if let Some(ttl) = self.options.ca_ttl {
            server.push(format!("ca_ttl = \"{}s\"", ttl.as_secs()));
        }
        if let Some(ttl) = self.options.default_x509_svid_ttl {
            server.push(format!("default_x509_svid_ttl = \"{}s\"", ttl.as_secs()));
        }
        if !self.options.admin_ids.is_empty() {
            let ids: Vec<String> = self
                .options
                .admin_ids
                .iter()
                .map(|id| hcl_string(id))
                .collect();
            server.push(format!("admin_ids = [{}]", ids.join(", ")));
        }
        server.push("experimental {\n    cache_reload_interval = \"1s\"\n  }".to_owned());
        let key_manager = match self.options.server_key_manager {
            ServerKeyManager::Disk => format!(
                "KeyManager \"disk\" {{\n    plugin_data {{\n      keys_path = {}\n    }}\n  }}",
                hcl_string(&data.join("keys.json").display().to_string())
            ),
            ServerKeyManager::Memory => {
                "KeyManager \"memory\" {\n    plugin_data {}\n  }".to_owned()
            }
        };
        let credential_composer = if self.options.code_signing_ids.is_empty() {
            String::new()
        } else {
            let ids: Vec<String> = self
                .options
                .code_signing_ids
                .iter()
                .map(|id| hcl_string(id))
                .collect();
            format!(
                "\n  CredentialComposer \"countersign_code_signing\" {{\n    plugin_cmd = {cmd}\n    \
                 plugin_data {{\n      code_signing_ids = [{ids}]\n    }}\n  }}",
                cmd = hcl_string(&peers().spire_code_signing.path.display().to_string()),
                ids = ids.join(", "),
            )
        };
        format!(
            "server {{\n  {server}\n}}\n\nplugins {{\n  DataStore \"sql\" {{\n    plugin_data {{\n      \
             database_type = \"sqlite3\"\n      connection_string = {datastore}\n    }}\n  }}\n  \
             {key_manager}\n  NodeAttestor \"join_token\" {{\n    plugin_data {{}}\n  }}{credential_composer}\n}}\n",
            server = server.join("\n  "),
            datastore = hcl_string(&data.join("datastore.sqlite3").display().to_string()),
        )
    }

    fn agent_config(&self) -> String {
        let data = self.agent_data_dir().display().to_string();
        let k8s_attestor = match &self.options.kubelet {
            Some(kubelet) => format!(
                "  WorkloadAttestor \"k8s\" {{\n    plugin_data {{\n      node_name = {address}\n      \
                 kubelet_secure_port = {port}\n      skip_kubelet_verification = true\n      \
                 certificate_path = {certificate}\n      private_key_path = {key}\n      \
                 poll_retry_interval = \"200ms\"\n    }}\n  }}\n",
                address = hcl_string(&kubelet.address),
                port = kubelet.port,
                certificate = hcl_string(&kubelet.certificate_path.display().to_string()),
                key = hcl_string(&kubelet.private_key_path.display().to_string()),
            ),
            None => String::new(),
        };
        // With the k8s attestor, timestamps in nanoseconds: when an SVID was served to a pod
        // ("Fetched X.509 SVID") is read back from the log.
        let log_format = if self.options.kubelet.is_some() {
            "\n  log_format = \"text\""
        } else {
            ""
        };
        format!(
            "agent {{\n  data_dir = {data}\n  log_level = \"DEBUG\"{log_format}\n  server_address = \"127.0.0.1\"\n  \
             server_port = \"{port}\"\n  socket_path = {socket}\n  trust_bundle_path = {bundle}\n  \
             trust_domain = {td}\n  experimental {{\n    sync_interval = \"1s\"\n  }}\n}}\n\n\
             plugins {{\n  NodeAttestor \"join_token\" {{\n    plugin_data {{}}\n  }}\n  \
             KeyManager \"disk\" {{\n    plugin_data {{\n      directory = {data}\n    }}\n  }}\n  \
             WorkloadAttestor \"unix\" {{\n    plugin_data {{\n      discover_workload_path = true\n      \
             workload_size_limit = -1\n    }}\n  }}\n{k8s_attestor}}}\n",
            data = hcl_string(&data),
            port = self.server_port,
            socket = hcl_string(&self.agent_socket_path().display().to_string()),
            bundle = hcl_string(&self.agent_bundle_path().display().to_string()),
            td = hcl_string(&self.options.trust_domain),
        )
    }
}

/// The selectors the agent's `unix` attestor gives this process: its uid and, so that other
/// processes of the same user do not match, its executable's path.
pub fn test_process_selectors() -> Vec<String> {
    let uid = nix::unistd::getuid();
    let mut selectors = vec![format!("unix:uid:{uid}")];
    // The agent reads the same /proc/<pid>/exe link that `current_exe` reads.
    if let Ok(exe) = std::env::current_exe() {
        selectors.push(format!("unix:path:{}", exe.display()));
    }
    selectors
}

/// One attempt: the SVID for `spiffe_id` among those the agent serves this process, or why not.
async fn fetch_svid(endpoint: &str, spiffe_id: &str) -> Result<X509Svid, String> {
    let client = WorkloadApiClient::connect_to(endpoint)
        .await
        .map_err(|error| error.to_string())?;
    let svids = client
        .fetch_all_x509_svids()
        .await
        .map_err(|error| error.to_string())?;
    let served: Vec<String> = svids
        .iter()
        .map(|svid| svid.spiffe_id().to_string())
        .collect();
    svids
        .into_iter()
        .find(|svid| svid.spiffe_id().to_string() == spiffe_id)
        .ok_or_else(|| format!("served {served:?}"))
}

/// Reads the created entry's id from `entry create -output json`.
fn parse_created_entry(spiffe_id: &str, text: &str) -> Result<String, RegisterError> {
    let output = || RegisterError::Output {
        output: text.to_owned(),
    };
    let value: serde_json::Value = serde_json::from_str(text).map_err(|_| output())?;
    let result = value
        .get("results")
        .and_then(|results| results.get(0))
        .ok_or_else(output)?;
    let code = result
        .pointer("/status/code")
        .and_then(serde_json::Value::as_i64)
        .unwrap_or(0);
    if code != 0 {
        let message = result
            .pointer("/status/message")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned();
        return Err(RegisterError::Rejected {
            spiffe_id: spiffe_id.to_owned(),
            code,
            message,
        });
    }
    result
        .pointer("/entry/id")
        .and_then(serde_json::Value::as_str)
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .ok_or_else(output)
}

/// An HCL string literal.
fn hcl_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

async fn spawn(
    name: &str,
    program: &Path,
    args: &[String],
    log: &Path,
) -> Result<PeerProcess, PeerFailed> {
    PeerProcess::spawn(name, program, args, &[], log)
        .await
        .map_err(|error| PeerFailed {
            name: name.to_owned(),
            message: error.to_string(),
            log_tail: crate::process::log_tail(log),
        })
}

/// Waits until `<program> healthcheck -socketPath <socket>` passes, failing early if the
/// process exits.
async fn wait_healthy(
    process: &PeerProcess,
    program: &Path,
    socket: &str,
) -> Result<(), PeerFailed> {
    let healthy = wait::until(
        &format!("{} to be healthy", process.name()),
        START_TIMEOUT,
        || {
            let running = process.is_running();
            async move {
                if !running {
                    return Some(false);
                }
                run_command(program, &["healthcheck", "-socketPath", socket])
                    .await
                    .is_ok()
                    .then_some(true)
            }
        },
    )
    .await
    .map_err(|error| PeerFailed::from_wait(process, error))?;
    if healthy {
        Ok(())
    } else {
        Err(PeerFailed::new(process, "exited before it became healthy"))
    }
}

/// Runs a CLI command under a timeout; a non-zero exit is an error.
async fn run_command(program: &Path, args: &[&str]) -> Result<Output, CommandFailed> {
    let command_line = format!(
        "{} {}",
        program
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default(),
        args.join(" ")
    );
    let failed = |reason: String, output: Option<&Output>| CommandFailed {
        command: command_line.clone(),
        reason,
        stdout: output
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default(),
        stderr: output
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .unwrap_or_default(),
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    let output = tokio::time::timeout(COMMAND_TIMEOUT, command.output())
        .await
        .map_err(|_| failed(format!("no answer within {COMMAND_TIMEOUT:?}"), None))?
        .map_err(|error| failed(error.to_string(), None))?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(failed(
            format!("exited with {}", output.status),
            Some(&output),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_entry_id_is_read_from_the_json_output() {
        let text = r#"{"results":[{"status":{"code":0,"message":"OK"},"entry":{"id":"abc"}}]}"#;
        assert_eq!(
            parse_created_entry("spiffe://x/y", text).expect("created"),
            "abc"
        );
    }

    #[test]
    fn a_refused_entry_is_rejected_with_its_code() {
        let text = r#"{"results":[{"status":{"code":6,"message":"similar entry already exists"},"entry":{"id":""}}]}"#;
        assert!(matches!(
            parse_created_entry("spiffe://x/y", text),
            Err(RegisterError::Rejected { code: 6, .. })
        ));
    }

    #[test]
    fn hcl_strings_are_escaped() {
        assert_eq!(hcl_string(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
