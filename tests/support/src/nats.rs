//! A real nats-server with JetStream, on free loopback ports, with its own store directory; and
//! a real JetStream cluster ([`NatsCluster`]): several nats-servers joined by routes on free
//! loopback ports, each with JetStream in its own store directory, where a node can be killed
//! and started again on its store.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::{PeerFailed, PeerProcess};
use crate::{peers, ports, short_tempdir, wait};

/// How long a start may take before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How many times a first start is tried on new ports when the chosen ones were taken.
const START_ATTEMPTS: u32 = 3;

/// Why one launch failed.
#[derive(Debug)]
enum Launch {
    /// Another process bound the port first; worth retrying on other ports.
    PortTaken(PeerFailed),
    Failed(PeerFailed),
}

impl Launch {
    fn into_failure(self) -> PeerFailed {
        match self {
            Launch::PortTaken(failure) | Launch::Failed(failure) => failure,
        }
    }
}

/// Extra configuration for a server.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// Text appended to the generated config file (accounts, authorization, limits...).
    pub extra_config: String,
    /// Whether the readiness probe may connect anonymously (false when `extra_config` requires
    /// credentials; then `probe_credentials` is used).
    pub probe_credentials: Option<(String, String)>,
}

/// A running nats-server. Dropping it stops the server and removes its store.
#[derive(Debug)]
pub struct NatsServer {
    process: Option<PeerProcess>,
    dir: tempfile::TempDir,
    port: u16,
    monitor_port: u16,
    options: NatsOptions,
}

impl NatsServer {
    /// Starts a server with JetStream.
    pub async fn start() -> Result<NatsServer, PeerFailed> {
        NatsServer::start_with(NatsOptions::default()).await
    }

    /// Starts a server with JetStream and extra configuration.
    pub async fn start_with(options: NatsOptions) -> Result<NatsServer, PeerFailed> {
        let dir = short_tempdir("cs-nats-");
        let mut server = NatsServer {
            process: None,
            dir,
            port: ports::free_port(),
            monitor_port: ports::free_port(),
            options,
        };
        // A port that was free when picked can be taken by another process before nats-server binds
        // it; then the server exits at once and we try again on new ports.
        let mut attempt = 1;
        loop {
            server.write_config();
            match server.launch().await {
                Ok(()) => return Ok(server),
                Err(Launch::PortTaken(failure)) if attempt < START_ATTEMPTS => {
                    tracing::warn!(attempt, error = %failure, "nats-server port taken; retrying on new ports");
                    attempt += 1;
                    server.port = ports::free_port();
                    server.monitor_port = ports::free_port();
                }
                Err(Launch::PortTaken(failure) | Launch::Failed(failure)) => return Err(failure),
            }
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("nats.conf")
    }

    /// The JetStream store directory.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn write_config(&self) {
        let config = format!(
            "listen: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor}\nserver_name: countersign-test\n\
             jetstream {{\n  store_dir: \"{store}\"\n  max_memory_store: 256MB\n  max_file_store: 8GB\n}}\n\
             max_payload: 1MB\n{extra}\n",
            port = self.port,
            monitor = self.monitor_port,
            store = self.store_dir().display(),
            extra = self.options.extra_config,
        );
        std::fs::write(self.config_path(), config).expect("writing nats.conf");
    }

    async fn launch(&mut self) -> Result<(), Launch> {
        let log = self.dir.path().join("nats-server.log");
        let args = vec!["-c".to_owned(), self.config_path().display().to_string()];
        let process =
            PeerProcess::spawn("nats-server", &peers().nats_server.path, &args, &[], &log)
                .await
                .map_err(|error| {
                    Launch::Failed(PeerFailed {
                        name: "nats-server".into(),
                        message: error.to_string(),
                        log_tail: crate::process::log_tail(&log),
                    })
                })?;
        let url = self.url();
        let credentials = self.options.probe_credentials.clone();
        let process_ref = &process;
        // Ready, or exited (no point waiting out the timeout for a server that is gone).
        let ready = wait::until(
            "nats-server with JetStream to be ready",
            START_TIMEOUT,
            || {
                let url = url.clone();
                let credentials = credentials.clone();
                async move {
                    if !process_ref.is_running() {
                        return Some(false);
                    }
                    probe_jetstream(&url, credentials).await.then_some(true)
                }
            },
        )
        .await;
        match ready {
            Ok(true) => {
                self.process = Some(process);
                Ok(())
            }
            Ok(false) => {
                let failure = PeerFailed::new(&process, "nats-server exited during start-up");
                if failure.log_tail.contains("address already in use") {
                    Err(Launch::PortTaken(failure))
                } else {
                    Err(Launch::Failed(failure))
                }
            }
            Err(error) => Err(Launch::Failed(PeerFailed::from_wait(&process, error))),
        }
    }

    /// `nats://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`, the monitoring endpoint.
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// A new client connection.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connecting to the test nats-server")
    }

    /// A JetStream context on a new connection.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client().await)
    }

    /// Stops the server, keeping its store, as an outage would.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop(Duration::from_secs(10));
        }
    }

    /// Starts the server again on the same port with the same store.
    pub async fn restart(&mut self) -> Result<(), PeerFailed> {
        self.stop();
        self.launch().await.map_err(Launch::into_failure)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// The name of the test cluster (`cluster.name` of every node).
const CLUSTER_NAME: &str = "countersign-test";

/// One node of a [`NatsCluster`].
#[derive(Debug)]
struct ClusterNode {
    name: String,
    process: Option<PeerProcess>,
    port: u16,
    route_port: u16,
    monitor_port: u16,
}

/// A running JetStream cluster of nats-servers on loopback, every node a route to every other.
/// Streams created with `num_replicas` up to its size are replicated across the nodes. Dropping
/// it stops every node and removes their stores.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<ClusterNode>,
    dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `size` nodes (at least 1) and waits until each answers JetStream requests (a
    /// meta leader was elected).
    pub async fn start(size: usize) -> Result<NatsCluster, PeerFailed> {
        let dir = short_tempdir("cs-natsc-");
        let nodes = (0..size.max(1))
            .map(|index| ClusterNode {
                name: format!("n{index}"),
                process: None,
                port: ports::free_port(),
                route_port: ports::free_port(),
                monitor_port: ports::free_port(),
            })
            .collect();
        let mut cluster = NatsCluster { nodes, dir };
        for index in 0..cluster.nodes.len() {
            cluster.write_config(index)?;
        }
        // Every node first (a meta leader needs a quorum), then each awaited.
        for index in 0..cluster.nodes.len() {
            cluster.spawn(index).await?;
        }
        for index in 0..cluster.nodes.len() {
            cluster.wait_ready(index).await?;
        }
        Ok(cluster)
    }

    /// How many nodes the cluster has.
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// Every node's client URL, comma-separated (what a service's `nats.url` takes).
    pub fn urls(&self) -> String {
        (0..self.nodes.len())
            .map(|index| self.url(index))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `nats://127.0.0.1:<port>` of node `index`.
    ///
    /// # Panics
    /// When there is no node `index`.
    pub fn url(&self, index: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[index].port)
    }

    /// The directory of node `index` (its config, log and store).
    pub fn node_dir(&self, index: usize) -> PathBuf {
        self.dir.path().join(&self.nodes[index].name)
    }

    /// The log file of node `index`.
    pub fn log_path(&self, index: usize) -> PathBuf {
        self.node_dir(index).join("nats-server.log")
    }

    /// Whether node `index` runs.
    pub fn is_running(&self, index: usize) -> bool {
        self.nodes[index]
            .process
            .as_ref()
            .is_some_and(PeerProcess::is_running)
    }

    /// A client connected to any node (it fails over to the others).
    pub async fn client(&self) -> Result<async_nats::Client, async_nats::ConnectError> {
        let servers: Vec<async_nats::ServerAddr> = (0..self.nodes.len())
            .filter_map(|index| self.url(index).parse().ok())
            .collect();
        async_nats::connect(servers).await
    }

    /// Kills node `index` with SIGKILL, as a crash would; its store stays.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut process) = self.nodes[index].process.take() {
            process.kill();
        }
    }

    /// Starts node `index` again on the same ports and store (it rejoins the cluster and
    /// catches its streams up from the others), and waits until it answers JetStream requests.
    pub async fn restart(&mut self, index: usize) -> Result<(), PeerFailed> {
        self.kill(index);
        self.spawn(index).await?;
        self.wait_ready(index).await
    }

    fn write_config(&self, index: usize) -> Result<(), PeerFailed> {
        let node = &self.nodes[index];
        let dir = self.node_dir(index);
        let routes: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(other, _)| *other != index)
            .map(|(_, other)| format!("\"nats-route://127.0.0.1:{}\"", other.route_port))
            .collect();
        let config = format!(
            "listen: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor}\nserver_name: {name}\n\
             jetstream {{\n  store_dir: \"{store}\"\n  max_memory_store: 256MB\n  max_file_store: 8GB\n}}\n\
             max_payload: 1MB\n\
             cluster {{\n  name: {CLUSTER_NAME}\n  listen: 127.0.0.1:{route}\n  routes: [{routes}]\n}}\n",
            port = node.port,
            monitor = node.monitor_port,
            name = node.name,
            store = dir.join("store").display(),
            route = node.route_port,
            routes = routes.join(", "),
        );
        let failed = |error: std::io::Error| PeerFailed {
            name: format!("nats-server {}", node.name),
            message: format!("writing its config in {}: {error}", dir.display()),
            log_tail: String::new(),
        };
        std::fs::create_dir_all(&dir).map_err(failed)?;
        std::fs::write(dir.join("nats.conf"), config).map_err(failed)
    }

    async fn spawn(&mut self, index: usize) -> Result<(), PeerFailed> {
        let name = format!("nats-server {}", self.nodes[index].name);
        let log = self.log_path(index);
        let args = vec![
            "-c".to_owned(),
            self.node_dir(index).join("nats.conf").display().to_string(),
        ];
        let process = PeerProcess::spawn(&name, &peers().nats_server.path, &args, &[], &log)
            .await
            .map_err(|error| PeerFailed {
                name: name.clone(),
                message: error.to_string(),
                log_tail: crate::process::log_tail(&log),
            })?;
        self.nodes[index].process = Some(process);
        Ok(())
    }

    async fn wait_ready(&self, index: usize) -> Result<(), PeerFailed> {
        let Some(process) = self.nodes[index].process.as_ref() else {
            return Err(PeerFailed {
                name: format!("nats-server {}", self.nodes[index].name),
                message: "not started".to_owned(),
                log_tail: String::new(),
            });
        };
        let url = self.url(index);
        let ready = wait::until(
            "a clustered nats-server with JetStream to be ready",
            CLUSTER_START_TIMEOUT,
            || {
                let url = url.clone();
                async move {
                    if !process.is_running() {
                        return Some(false);
                    }
                    probe_jetstream(&url, None).await.then_some(true)
                }
            },
        )
        .await;
        match ready {
            Ok(true) => Ok(()),
            Ok(false) => Err(PeerFailed::new(
                process,
                "nats-server exited during start-up",
            )),
            Err(error) => Err(PeerFailed::from_wait(process, error)),
        }
    }
}

/// How long a cluster node may take to answer JetStream requests (a meta leader is elected
/// first).
const CLUSTER_START_TIMEOUT: Duration = Duration::from_secs(60);

/// Connects and asks for the JetStream account info: true once JetStream answers.
async fn probe_jetstream(url: &str, credentials: Option<(String, String)>) -> bool {
    let mut options = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_millis(500))
        .max_reconnects(Some(0));
    if let Some((user, password)) = credentials {
        options = options.user_and_password(user, password);
    }
    let Ok(client) = options.connect(url).await else {
        return false;
    };
    let context = async_nats::jetstream::new(client);
    tokio::time::timeout(Duration::from_secs(2), context.query_account())
        .await
        .is_ok_and(|answer| answer.is_ok())
}
