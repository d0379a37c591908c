//! The whole system on one machine, end to end: what `cargo xtask demo` shows and what the
//! system test `tests/demo.rs` checks, the same code for both.
//!
//! [`Demo::start`] starts the real peers (nats-server with JetStream; spire-server and a
//! spire-agent attested as node `worker-1`; etcd and kube-apiserver with Tekton's TaskRun CRD)
//! and every service as its own process, the real binary with its own config file
//! ([`configs`]). [`Demo::play`] then plays two TaskRuns through the API server the way Tekton
//! and the kubelet would ([`cluster`]), with each pod's results signed by the real
//! `countersign-signer` run as that pod's workload of the agent, and shows as they happen the
//! lifecycle events, the SPIRE entries registered and released, the verdicts ([`bus`]) and
//! what the relay delivered ([`sink`]); it runs `countersign verify` on the first attestation.
//! The first TaskRun must be verified; the second, whose result was changed after it was
//! signed, rejected with `signature_invalid` ([`ScenarioReport::unexpected`]).
//!
//! - [`binaries`]: building the six binaries and finding them;
//! - [`report`]: the progress output;
//! - [`services`]: a service process and its readiness;
//! - [`scenario`]: the TaskRuns and what is expected of them;
//! - [`chaos`]: the same system under faults (`cargo xtask chaos`, `tests/chaos.rs`).

pub mod binaries;
pub mod bus;
pub mod chaos;
pub mod cluster;
pub mod configs;
pub mod report;
pub mod scenario;
pub mod services;
pub mod sink;
pub mod tekton;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use countersign_events::Subjects;
use countersign_test_support::kube::KubeApiserver;
use countersign_test_support::nats::{NatsCluster, NatsServer};
use countersign_test_support::ports::free_port;
use countersign_test_support::process::PeerFailed;
use countersign_test_support::spire::{RegisterError, Spire, SpireOptions};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::task::JoinHandle;

pub use binaries::{Binaries, BuildError};
pub use countersign_test_support::error_lines;
pub use report::{Captured, Origin, Reporter};
pub use scenario::{Attested, CliReport, ScenarioError, ScenarioReport, TaskRunReport};

use bus::Observer;
use cluster::Cluster;
use configs::{ServiceKind, Settings};
use services::ServiceProcess;
use sink::Sink;

/// The SPIRE trust domain of the demo.
pub const TRUST_DOMAIN: &str = "example.org";

/// The node the agent stands for and the pods are bound to.
pub const NODE_NAME: &str = "worker-1";

/// The namespace of the demo's TaskRuns.
pub const NAMESPACE: &str = "default";

/// The bus prefix (the services' default).
pub const PREFIX: &str = "countersign";

/// The attestor's SPIFFE ID: what `countersign verify --trust-domain example.org` expects.
pub fn attestor_id() -> String {
    format!("spiffe://{TRUST_DOMAIN}/countersign/attestor")
}

/// Why the system did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("preparing the demo's directory {}", path.display())]
    Directory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the bus prefix {PREFIX}")]
    Prefix(#[source] countersign_events::SubjectError),
    #[error("nats-server did not start")]
    Nats(#[source] PeerFailed),
    #[error("connecting to nats-server")]
    Connect(#[source] async_nats::ConnectError),
    #[error("subscribing to every event on the bus")]
    Subscribe(#[source] async_nats::SubscribeError),
    #[error("starting the demo's CloudEvents sink")]
    Sink(#[source] std::io::Error),
    #[error("spire-server and spire-agent did not start")]
    Spire(#[source] PeerFailed),
    #[error("etcd and kube-apiserver did not start")]
    Kube(#[source] countersign_test_support::kube::StartError),
    #[error("registering the attestor's identity {id}")]
    RegisterAttestor {
        id: String,
        #[source]
        source: RegisterError,
    },
    #[error("{name} did not start")]
    Service {
        name: &'static str,
        #[source]
        source: PeerFailed,
    },
}

/// The demo's NATS: one nats-server, or a JetStream cluster (the production shape).
#[derive(Debug)]
pub enum NatsPeer {
    Server(NatsServer),
    Cluster(NatsCluster),
}

impl NatsPeer {
    /// What the services' `nats.url` takes: the server's URL, or every node's, comma-separated.
    pub fn url(&self) -> String {
        match self {
            NatsPeer::Server(server) => server.url(),
            NatsPeer::Cluster(cluster) => cluster.urls(),
        }
    }

    /// A new client (on a cluster, to any node, failing over to the others).
    pub async fn connect(&self) -> Result<async_nats::Client, async_nats::ConnectError> {
        match self {
            NatsPeer::Server(server) => async_nats::connect(server.url()).await,
            NatsPeer::Cluster(cluster) => cluster.client().await,
        }
    }

    /// The server's log, or the cluster's first node's.
    pub fn log_path(&self) -> PathBuf {
        match self {
            NatsPeer::Server(server) => server.log_path(),
            NatsPeer::Cluster(cluster) => cluster.log_path(0),
        }
    }

    /// How many replicas each stream and bucket gets: 1, or the cluster's size.
    pub fn replicas(&self) -> usize {
        match self {
            NatsPeer::Server(_) => 1,
            NatsPeer::Cluster(cluster) => cluster.size(),
        }
    }
}

/// How many processes run what: each service's replicas, and NATS's nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Processes of each service (at least 1).
    pub replicas: usize,
    /// 1: one nats-server; more: a JetStream cluster of that many nodes, every stream and
    /// bucket replicated on each.
    pub nats_nodes: usize,
}

impl Default for Shape {
    fn default() -> Shape {
        Shape {
            replicas: 1,
            nats_nodes: 1,
        }
    }
}

/// A task aborted when its handle drops.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The running system. Dropping it stops everything (services first); [`Demo::shutdown`] does
/// the same and says so.
#[derive(Debug)]
pub struct Demo {
    // Dropped in declaration order: the services before the peers they use.
    services: Vec<ServiceProcess>,
    sink: Sink,
    bus_task: AbortOnDrop,
    kube: KubeApiserver,
    spire: Spire,
    nats: NatsPeer,
    observer: Observer,
    reporter: Reporter,
    binaries: Binaries,
    cluster: Cluster,
    settings: Settings,
    dir: tempfile::TempDir,
}

impl Demo {
    /// Starts the peers and the services, printing what starts and what is awaited.
    pub async fn start(binaries: Binaries, reporter: Reporter) -> Result<Demo, StartError> {
        Demo::start_exporting_to(binaries, reporter, None).await
    }

    /// [`Demo::start`] in `shape`: replicas of each service (each its own config file, admin
    /// port and log; a watcher replica past the first its own ingress port) and a JetStream
    /// cluster instead of one nats-server, as the chaos run's `--replicas` and `--cluster` ask.
    pub async fn start_shaped(
        binaries: Binaries,
        reporter: Reporter,
        shape: Shape,
    ) -> Result<Demo, StartError> {
        Demo::start_inner(binaries, reporter, None, shape).await
    }

    /// [`Demo::start`], with every service exporting its spans to `otlp_endpoint` when set.
    pub async fn start_exporting_to(
        binaries: Binaries,
        reporter: Reporter,
        otlp_endpoint: Option<String>,
    ) -> Result<Demo, StartError> {
        Demo::start_inner(binaries, reporter, otlp_endpoint, Shape::default()).await
    }

    async fn start_inner(
        binaries: Binaries,
        reporter: Reporter,
        otlp_endpoint: Option<String>,
        shape: Shape,
    ) -> Result<Demo, StartError> {
        reporter.heading("Starting Countersign on one machine, against the real peers");
        let dir = countersign_test_support::short_tempdir("cs-demo-");
        let dir_path = canonical(dir.path())?;
        let pods_dir = dir_path.join("pods");
        for directory in [
            pods_dir.clone(),
            dir_path.join("config"),
            dir_path.join("logs"),
            dir_path.join("attestations"),
        ] {
            std::fs::create_dir_all(&directory).map_err(|source| StartError::Directory {
                path: directory.clone(),
                source,
            })?;
        }
        reporter.line(
            Origin::Demo,
            format!(
                "working directory {} (configs, logs, pods)",
                dir_path.display()
            ),
        );

        let nats = if shape.nats_nodes > 1 {
            reporter.line(
                Origin::Demo,
                format!(
                    "starting a JetStream cluster of {} nats-servers ...",
                    shape.nats_nodes
                ),
            );
            NatsPeer::Cluster(
                NatsCluster::start(shape.nats_nodes)
                    .await
                    .map_err(StartError::Nats)?,
            )
        } else {
            reporter.line(Origin::Demo, "starting nats-server with JetStream ...");
            NatsPeer::Server(NatsServer::start().await.map_err(StartError::Nats)?)
        };
        reporter.line(
            Origin::Demo,
            format!(
                "NATS ready at {} (log {})",
                nats.url(),
                nats.log_path().display()
            ),
        );
        let client = nats.connect().await.map_err(StartError::Connect)?;
        let subjects = Subjects::new(PREFIX).map_err(StartError::Prefix)?;
        let subscriber = client
            .subscribe(format!("{PREFIX}.>"))
            .await
            .map_err(StartError::Subscribe)?;
        let observer = Observer::new();
        let bus_task = AbortOnDrop(tokio::spawn(bus::follow_bus(
            subscriber,
            subjects,
            observer.clone(),
            reporter.clone(),
        )));
        reporter.line(
            Origin::Demo,
            format!(
                "subscribed to {PREFIX}.> : every event on the bus is shown as it is published"
            ),
        );
        let sink = Sink::start(observer.clone(), reporter.clone())
            .await
            .map_err(StartError::Sink)?;
        reporter.line(
            Origin::Demo,
            format!(
                "a CloudEvents sink for the relay listens at {} (as a Knative broker would)",
                sink.url()
            ),
        );

        reporter.line(
            Origin::Demo,
            format!(
                "starting spire-server and spire-agent (trust domain {TRUST_DOMAIN}, node {NODE_NAME}) ..."
            ),
        );
        let spire = Spire::start(SpireOptions {
            trust_domain: TRUST_DOMAIN.to_owned(),
            node_name: NODE_NAME.to_owned(),
            ..SpireOptions::default()
        })
        .await
        .map_err(StartError::Spire)?;
        reporter.line(
            Origin::Demo,
            format!(
                "SPIRE ready: the agent attested with a join token that also makes it the node alias {}\n\
                 (logs {} and {})",
                spire.node_alias_id(),
                spire.server_log_path().display(),
                spire.agent_log_path().display()
            ),
        );

        reporter.line(
            Origin::Demo,
            "starting etcd and kube-apiserver, then installing Tekton's TaskRun CRD ...",
        );
        let kube = KubeApiserver::start().await.map_err(StartError::Kube)?;
        reporter.line(
            Origin::Demo,
            format!(
                "kube-apiserver ready at {} with the TaskRun CRD (kubeconfig {})",
                kube.url(),
                kube.kubeconfig_path().display()
            ),
        );

        let attestor_path = canonical(&binaries.attestor)?;
        let selectors = [
            format!("unix:uid:{}", nix::unistd::getuid()),
            format!("unix:path:{}", attestor_path.display()),
        ];
        let selector_refs: Vec<&str> = selectors.iter().map(String::as_str).collect();
        spire
            .register_workload(
                &attestor_id(),
                &selector_refs,
                &spire.node_alias_id(),
                false,
            )
            .await
            .map_err(|source| StartError::RegisterAttestor {
                id: attestor_id(),
                source,
            })?;
        reporter.line(
            Origin::Demo,
            format!(
                "registered the attestor's own identity {} for selectors {}",
                attestor_id(),
                selectors.join(" + ")
            ),
        );

        let settings = Settings {
            nats_url: nats.url(),
            trust_domain: TRUST_DOMAIN.to_owned(),
            kubeconfig: kube.kubeconfig_path().to_owned(),
            server_socket: spire.server_socket_path(),
            agent_endpoint: spire.agent_endpoint(),
            pods_dir,
            sink_url: sink.url(),
            ingress: loopback(free_port()),
            otlp_endpoint,
            workload_selectors: None,
        };
        let services = start_service_replicas(
            &binaries,
            &settings,
            &dir_path,
            &reporter,
            shape.replicas,
            nats.replicas(),
        )
        .await?;
        let cluster = Cluster::new(kube.client(), NAMESPACE, NODE_NAME);
        Ok(Demo {
            services,
            sink,
            bus_task,
            kube,
            spire,
            nats,
            observer,
            reporter,
            binaries,
            cluster,
            settings,
            dir,
        })
    }

    /// The demo's working directory (configs, logs, pods, attestations).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn nats_url(&self) -> String {
        self.nats.url()
    }

    /// Prints how to look at the running system, and how to stop it.
    pub fn print_keep_running_help(&self, first_taskrun: &str) {
        let countersign = self.binaries.countersign.display();
        let nats = self.nats.url();
        let mut text = String::from("\n== The system keeps running ==\nIn another terminal:\n\n");
        text.push_str(&format!(
            "  # follow attestations as they are published (all so far, then new ones)\n  \
             {countersign} tail --nats-url {nats} --from-start\n\n  \
             # one TaskRun's attestation\n  \
             {countersign} get {NAMESPACE}/{first_taskrun} --nats-url {nats}\n\n  \
             # every event on the bus, with the nats CLI if you have it\n  \
             nats sub '{PREFIX}.>' --server {nats}\n\n  \
             # the TaskRuns, with kubectl if you have it\n  \
             kubectl --kubeconfig {} get taskruns -A\n\n",
            self.kube.kubeconfig_path().display()
        ));
        text.push_str(&format!(
            "The watcher also takes Tekton's CloudEvents at http://{}/ .\n",
            self.settings.ingress
        ));
        text.push_str("Services (config, log, admin /readyz /metrics):\n");
        for service in &self.services {
            text.push_str(&format!(
                "  {:<22} {}  {}  http://{}/metrics\n",
                service.kind().binary_name(),
                service.config_path().display(),
                service.log_path().display(),
                service.admin()
            ));
        }
        text.push_str(&format!(
            "Peers: nats-server {}, spire-server {}, spire-agent {}, kube-apiserver {}\n",
            self.nats.log_path().display(),
            self.spire.server_log_path().display(),
            self.spire.agent_log_path().display(),
            self.kube.apiserver_log_path().display()
        ));
        text.push_str("\nPress Ctrl-C to stop everything and clean up.\n");
        self.reporter.plain(text);
    }

    /// Stops the services (each drains), then kube-apiserver and etcd, SPIRE and nats-server, and
    /// removes every directory.
    pub async fn shutdown(self) {
        let reporter = self.reporter.clone();
        reporter.line(
            Origin::Demo,
            "stopping the services, then kube-apiserver and etcd, SPIRE and nats-server ...",
        );
        let dir = self.dir.path().to_owned();
        let stopped = tokio::task::spawn_blocking(move || self.stop_everything()).await;
        if stopped.is_err() {
            reporter.line(Origin::Demo, "stopping did not finish cleanly");
        }
        reporter.line(
            Origin::Demo,
            format!(
                "everything stopped; removed {} and the peers' directories",
                dir.display()
            ),
        );
    }

    /// The blocking part of [`Demo::shutdown`].
    fn stop_everything(self) {
        let Demo {
            mut services,
            sink,
            bus_task,
            kube,
            spire,
            nats,
            dir,
            ..
        } = self;
        // Every service starts its drain at once; then each is awaited.
        for service in &services {
            if let Some(pid) = service.pid() {
                let _ = signal::kill(pid_of(pid), Signal::SIGTERM);
            }
        }
        for service in services.iter_mut().rev() {
            service.stop();
        }
        drop(services);
        drop(sink);
        drop(bus_task);
        // After a Ctrl-C the terminal's SIGINT also reached the peers' guards, which then no
        // longer escalate to SIGKILL; kube-apiserver does not finish its shutdown once etcd is
        // gone, so it is made sure of here.
        let (apiserver, etcd) = kube.pids();
        drop(kube);
        for pid in [apiserver, etcd].into_iter().flatten() {
            kill_if_still_running(pid);
        }
        drop(spire);
        drop(nats);
        let _ = dir.close();
    }
}

/// Starts the four services, each its own process with its own config file, and waits until
/// each is ready.
pub(crate) async fn start_services(
    binaries: &Binaries,
    settings: &Settings,
    dir: &Path,
    reporter: &Reporter,
) -> Result<Vec<ServiceProcess>, StartError> {
    start_service_replicas(binaries, settings, dir, reporter, 1, 1).await
}

/// [`start_services`] with `replicas` processes of each service; past the first, each replica's
/// files are named `<service>-<replica>` and a watcher replica listens on its own ingress port.
/// Every stream and bucket gets `bus_replicas` replicas (a JetStream cluster's size).
pub(crate) async fn start_service_replicas(
    binaries: &Binaries,
    settings: &Settings,
    dir: &Path,
    reporter: &Reporter,
    replicas: usize,
    bus_replicas: usize,
) -> Result<Vec<ServiceProcess>, StartError> {
    reporter.line(
        Origin::Demo,
        "starting the services, each its own process with its own config file ...",
    );
    let mut services = Vec::new();
    for (kind, replica) in ServiceKind::ALL
        .into_iter()
        .flat_map(|kind| (1..=replicas.max(1)).map(move |replica| (kind, replica)))
    {
        let name = kind.binary_name();
        let file_name = if replica == 1 {
            name.to_owned()
        } else {
            format!("{name}-{replica}")
        };
        // Two watchers cannot listen on one ingress address.
        let replica_settings = (replica > 1 && kind == ServiceKind::Watcher).then(|| Settings {
            ingress: loopback(free_port()),
            ..settings.clone()
        });
        let settings = replica_settings.as_ref().unwrap_or(settings);
        let admin = loopback(free_port());
        let config = dir.join("config").join(format!("{file_name}.toml"));
        let failed = |message: String| StartError::Service {
            name,
            source: PeerFailed {
                name: name.to_owned(),
                message,
                log_tail: String::new(),
            },
        };
        let text = format!(
            "{}{}",
            configs::config_text(kind, settings, admin),
            configs::replication_text(kind, bus_replicas)
        );
        std::fs::write(&config, text)
            .map_err(|error| failed(format!("writing {}: {error}", config.display())))?;
        let program = match kind {
            ServiceKind::Watcher => &binaries.watcher,
            ServiceKind::Registrar => &binaries.registrar,
            ServiceKind::Attestor => &binaries.attestor,
            ServiceKind::Relay => &binaries.relay,
        };
        let log = dir.join("logs").join(format!("{file_name}.log"));
        let service = ServiceProcess::spawn(kind, program, &config, admin, &log)
            .await
            .map_err(|source| StartError::Service { name, source })?;
        services.push(service);
    }
    reporter.line(
        Origin::Demo,
        "waiting for each service's /readyz (NATS connected, streams and consumers bound, its peers reachable) ...",
    );
    // Awaited together; the first that fails ends the wait (and the start) at once.
    let readiness = services.iter().map(|service| async move {
        let name = service.kind().binary_name();
        service
            .wait_ready()
            .await
            .map_err(|source| StartError::Service { name, source })?;
        reporter.line(
            Origin::Demo,
            format!(
                "{name} ready (admin http://{}, config {}, log {})",
                service.admin(),
                service.config_path().display(),
                service.log_path().display()
            ),
        );
        Ok::<(), StartError>(())
    });
    futures::future::try_join_all(readiness).await?;
    Ok(services)
}

pub(crate) fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

pub(crate) fn canonical(path: &Path) -> Result<PathBuf, StartError> {
    path.canonicalize().map_err(|source| StartError::Directory {
        path: path.to_owned(),
        source,
    })
}

fn pid_of(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX))
}

/// Gives a process that was told to stop up to 10 s, then kills it.
fn kill_if_still_running(pid: u32) {
    let pid = pid_of(pid);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while signal::kill(pid, None).is_ok() && !is_zombie(pid) {
        if std::time::Instant::now() >= deadline {
            let _ = signal::kill(pid, Signal::SIGKILL);
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn is_zombie(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|state| state == "Z"))
                .unwrap_or(false)
        })
        .unwrap_or(true)
}
