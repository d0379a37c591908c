//! The system a load run drives: the real peers (nats-server, spire-server and agent, and in
//! API-server mode etcd and kube-apiserver) and every service as its own process, the real
//! release or debug binary with its own config file (the demo's [`ServiceProcess`]), the
//! registrar and the attestor in as many replicas as asked; a CloudEvents sink for the relay
//! that counts deliveries; and followers of the bus that feed the [`Tracker`].

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use countersign_identity::svid::SigningSvid;
use countersign_test_support::kube::KubeApiserver;
use countersign_test_support::nats::NatsServer;
use countersign_test_support::ports::free_port;
use countersign_test_support::spire::{Spire, SpireOptions};
use futures::StreamExt as _;
use tokio::task::JoinHandle;

use super::measure::{ProcSample, Tracker, pids_mentioning};
use super::{LoadError, Mode};
use crate::demo::configs::ServiceKind;
use crate::demo::services::ServiceProcess;
use crate::demo::{Binaries, NODE_NAME, PREFIX, TRUST_DOMAIN, attestor_id};

/// The cluster name in the events.
pub const CLUSTER: &str = "load";

/// The attestor's `[backlog] after` in a load run.
pub const BACKLOG_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// The attestor's `[backlog] rate` in a load run (per replica).
pub const BACKLOG_RATE: u32 = 100;

/// A task aborted when dropped.
#[derive(Debug)]
struct Aborting(JoinHandle<()>);

impl Drop for Aborting {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A process whose CPU and memory are reported.
#[derive(Debug, Clone)]
pub struct Watched {
    /// `countersign-attestor#2`, `nats-server`, ...
    pub name: String,
    pub pid: u32,
}

/// The running system. Dropping it stops everything, services first.
#[derive(Debug)]
pub struct LoadSystem {
    services: Vec<ServiceProcess>,
    followers: Vec<Aborting>,
    kube: Option<KubeApiserver>,
    spire: Spire,
    nats: NatsServer,
    tracker: Tracker,
    watched: Vec<Watched>,
    dir: tempfile::TempDir,
}

impl LoadSystem {
    /// Starts the peers and the services (`replicas` registrars and attestors), and follows
    /// the bus and the sink into a new [`Tracker`].
    pub async fn start(
        binaries: &Binaries,
        mode: Mode,
        replicas: usize,
    ) -> Result<LoadSystem, LoadError> {
        let dir = countersign_test_support::short_tempdir("cs-load-");
        let dir_path = dir.path().to_owned();
        for sub in ["config", "logs"] {
            std::fs::create_dir_all(dir_path.join(sub))
                .map_err(|source| LoadError::start("the working directory", source))?;
        }
        let nats = NatsServer::start()
            .await
            .map_err(|source| LoadError::start("nats-server", source))?;
        let spire = Spire::start(SpireOptions {
            trust_domain: TRUST_DOMAIN.to_owned(),
            node_name: NODE_NAME.to_owned(),
            ..SpireOptions::default()
        })
        .await
        .map_err(|source| LoadError::start("SPIRE", source))?;
        let kube = match mode {
            Mode::ApiServer => Some(
                KubeApiserver::start()
                    .await
                    .map_err(|source| LoadError::start("kube-apiserver", source))?,
            ),
            Mode::Bus => None,
        };
        let attestor_path = binaries
            .attestor
            .canonicalize()
            .map_err(|source| LoadError::start("the attestor binary", source))?;
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
            .map_err(|source| LoadError::start("the attestor's identity", source))?;

        let tracker = Tracker::new();
        let client = async_nats::connect(nats.url())
            .await
            .map_err(|source| LoadError::start("a NATS client", source))?;
        let mut followers = vec![
            follow(
                &client,
                format!("{PREFIX}.attestation.>"),
                tracker.clone(),
                |id, tracker| {
                    if let Some(uid) = id.strip_suffix(":attestation") {
                        tracker.attested(uid);
                    }
                },
            )
            .await?,
            follow(
                &client,
                format!("{PREFIX}.registration.registered.>"),
                tracker.clone(),
                |id, tracker| {
                    if let Some(pod_uid) = id
                        .strip_suffix(":registered")
                        .and_then(|entry| entry.strip_prefix("countersign.pod."))
                    {
                        tracker.registered(pod_uid);
                    }
                },
            )
            .await?,
        ];
        client
            .flush()
            .await
            .map_err(|source| LoadError::start("subscribing to the bus", source))?;
        let (sink_url, sink_task) = start_sink(tracker.clone()).await?;
        followers.push(sink_task);

        let mut plan: Vec<(ServiceKind, usize)> = Vec::new();
        if mode == Mode::ApiServer {
            plan.push((ServiceKind::Watcher, 1));
        }
        for replica in 1..=replicas.max(1) {
            plan.push((ServiceKind::Registrar, replica));
            plan.push((ServiceKind::Attestor, replica));
        }
        plan.push((ServiceKind::Relay, 1));
        let mut services = Vec::new();
        for (kind, replica) in plan {
            let admin = loopback(free_port());
            let name = format!("{}-{replica}", kind.binary_name());
            let config = dir_path.join("config").join(format!("{name}.toml"));
            let text = config_text(kind, &nats, &spire, kube.as_ref(), &sink_url, admin, mode);
            std::fs::write(&config, text)
                .map_err(|source| LoadError::start("a service's config file", source))?;
            let program = match kind {
                ServiceKind::Watcher => &binaries.watcher,
                ServiceKind::Registrar => &binaries.registrar,
                ServiceKind::Attestor => &binaries.attestor,
                ServiceKind::Relay => &binaries.relay,
            };
            let log = dir_path.join("logs").join(format!("{name}.log"));
            let service = ServiceProcess::spawn(kind, program, &config, admin, &log)
                .await
                .map_err(|source| LoadError::start(kind.binary_name(), source))?;
            services.push(service);
        }
        let readiness = services.iter().map(|service| async move {
            service
                .wait_ready()
                .await
                .map_err(|source| LoadError::start(service.kind().binary_name(), source))
        });
        futures::future::try_join_all(readiness).await?;

        let mut watched = Vec::new();
        let mut replicas_seen: std::collections::HashMap<&str, usize> = Default::default();
        for service in &services {
            let name = service.kind().binary_name();
            let replica = replicas_seen.entry(name).or_default();
            *replica += 1;
            if let Some(pid) = service.pid() {
                watched.push(Watched {
                    name: format!("{name}#{replica}"),
                    pid,
                });
            }
        }
        for (name, needle) in [
            ("nats-server", nats.dir().to_owned()),
            ("spire", spire.dir().to_owned()),
        ] {
            for pid in pids_mentioning(&needle) {
                watched.push(Watched {
                    name: format!("{name}[{pid}]"),
                    pid,
                });
            }
        }
        if let Some(kube) = &kube {
            let (apiserver, etcd) = kube.pids();
            watched.extend(apiserver.map(|pid| Watched {
                name: "kube-apiserver".into(),
                pid,
            }));
            watched.extend(etcd.map(|pid| Watched {
                name: "etcd".into(),
                pid,
            }));
        }
        watched.push(Watched {
            name: "load generator".into(),
            pid: std::process::id(),
        });
        Ok(LoadSystem {
            services,
            followers,
            kube,
            spire,
            nats,
            tracker,
            watched,
            dir,
        })
    }

    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    pub fn nats_url(&self) -> String {
        self.nats.url()
    }

    pub fn spire(&self) -> &Spire {
        &self.spire
    }

    pub fn kube_client(&self) -> Option<kube::Client> {
        self.kube.as_ref().map(KubeApiserver::client)
    }

    /// The working directory (configs and logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// How many attestation events the attestation stream holds (JetStream keeps one per
    /// `Nats-Msg-Id`; a second attestation of a TaskRun would be a second message).
    pub async fn attestations_in_stream(&self) -> Result<u64, LoadError> {
        let jetstream = self.nats.jetstream().await;
        crate::attestation_count::attestations_in_stream(&jetstream, PREFIX)
            .await
            .map_err(|source| LoadError::drive("counting the attestations in the stream", source))
    }

    /// The `/metrics` text of every replica of `kind`.
    pub async fn metrics_of(&self, kind: ServiceKind) -> Vec<String> {
        let mut texts = Vec::new();
        for service in self
            .services
            .iter()
            .filter(|service| service.kind() == kind)
        {
            if let Some(answer) = crate::http::get(&service.admin().to_string(), "/metrics").await {
                texts.push(answer.body);
            }
        }
        texts
    }

    /// Every process's CPU and memory now.
    pub fn sample(&self) -> Vec<(Watched, ProcSample)> {
        self.watched
            .iter()
            .filter_map(|watched| Some((watched.clone(), ProcSample::read(watched.pid)?)))
            .collect()
    }

    /// The services that exited (a failure of the run).
    pub fn exited(&self) -> Vec<String> {
        self.services
            .iter()
            .filter(|service| !service.is_running())
            .map(|service| {
                format!(
                    "{} exited; log tail:\n{}",
                    service.kind().binary_name(),
                    service.log_tail()
                )
            })
            .collect()
    }

    /// Mints an X509-SVID for `spiffe_id` with the real server's CA, as a step would hold.
    pub async fn mint(&self, spiffe_id: &str) -> Result<SigningSvid, LoadError> {
        let dir = tempfile::tempdir().map_err(|source| LoadError::drive("a temp dir", source))?;
        let output =
            tokio::process::Command::new(&countersign_test_support::peers().spire_server.path)
                .args(["x509", "mint", "-spiffeID", spiffe_id, "-ttl", "2h"])
                .arg("-socketPath")
                .arg(self.spire.server_socket_path())
                .arg("-write")
                .arg(dir.path())
                .output()
                .await
                .map_err(|source| LoadError::drive("spire-server x509 mint", source))?;
        if !output.status.success() {
            return Err(LoadError::Mint {
                spiffe_id: spiffe_id.to_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        let read = |file: &str| {
            std::fs::read_to_string(dir.path().join(file))
                .map_err(|source| LoadError::drive("the minted SVID", source))
        };
        SigningSvid::from_pem(&read("svid.pem")?, &read("key.pem")?)
            .map_err(|source| LoadError::drive("the minted SVID", source))
    }

    /// Stops the services (each drains), then the peers.
    pub fn stop(self) {
        let LoadSystem {
            mut services,
            followers,
            ..
        } = self;
        for service in services.iter_mut().rev() {
            service.stop();
        }
        drop(followers);
    }
}

async fn follow(
    client: &async_nats::Client,
    subject: String,
    tracker: Tracker,
    record: fn(&str, &Tracker),
) -> Result<Aborting, LoadError> {
    let mut subscription = client
        .subscribe(subject)
        .await
        .map_err(|source| LoadError::start("subscribing to the bus", source))?;
    Ok(Aborting(tokio::spawn(async move {
        while let Some(message) = subscription.next().await {
            let id = message
                .headers
                .as_ref()
                .and_then(|headers| headers.get(async_nats::header::NATS_MESSAGE_ID))
                .map(|value| value.as_str().to_owned());
            if let Some(id) = id {
                record(&id, &tracker);
            }
        }
    })))
}

/// The relay's sink: answers 202 and counts each delivery by the attestation's TaskRun UID.
async fn start_sink(tracker: Tracker) -> Result<(String, Aborting), LoadError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| LoadError::start("the sink", source))?;
    let address = listener
        .local_addr()
        .map_err(|source| LoadError::start("the sink", source))?;
    let router = Router::new().fallback(receive).with_state(tracker);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok((format!("http://{address}/"), Aborting(task)))
}

async fn receive(State(tracker): State<Tracker>, headers: HeaderMap) -> StatusCode {
    if let Some(uid) = headers
        .get("ce-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|id| id.strip_suffix(":attestation"))
    {
        tracker.delivered(uid);
    }
    StatusCode::ACCEPTED
}

/// The config of one service of the load run: the demo's peers, admin on loopback, no TaskRun
/// annotation (bus-mode TaskRuns are not in any API server); in API-server mode the attestor
/// allows 2 h of clock skew, because its TaskRuns' SVIDs are minted before the TaskRuns are
/// created (one per name, reused), not by the agent after the pod starts.
fn config_text(
    kind: ServiceKind,
    nats: &NatsServer,
    spire: &Spire,
    kube: Option<&KubeApiserver>,
    sink_url: &str,
    admin: SocketAddr,
    mode: Mode,
) -> String {
    let quote = |text: &str| toml::Value::String(text.to_owned()).to_string();
    let quote_path = |path: &Path| quote(&path.display().to_string());
    let common = format!(
        "[admin]\nlisten = {}\n\n[shutdown]\ngrace_period = \"5s\"\n\n[nats]\nurl = {}\n",
        quote(&admin.to_string()),
        quote(&nats.url())
    );
    let specific = match kind {
        ServiceKind::Watcher => format!(
            "\n[cluster]\nname = {}\n\n[spire]\ntrust_domain = {}\n\n[kubernetes]\nkubeconfig = {}\n\n[ingress]\nlisten = {}\n",
            quote(CLUSTER),
            quote(TRUST_DOMAIN),
            kube.map_or_else(|| quote(""), |kube| quote_path(kube.kubeconfig_path())),
            quote(&loopback(free_port()).to_string()),
        ),
        ServiceKind::Registrar => format!(
            "\n[spire]\ntrust_domain = {}\nserver_socket_path = {}\n",
            quote(TRUST_DOMAIN),
            quote_path(&spire.server_socket_path()),
        ),
        ServiceKind::Attestor => {
            let skew = match mode {
                Mode::ApiServer => "clock_skew = \"2h\"\n",
                Mode::Bus => "",
            };
            // The backlog's TaskRuns finished when the run began (see `drive`), so a short
            // `after` classifies them; live ones are published within the run time.
            format!(
                "\n[spire]\ntrust_domain = {}\nsocket_path = {}\n{skew}\n[backlog]\nafter = {}\nrate = {BACKLOG_RATE}\n",
                quote(TRUST_DOMAIN),
                quote(&spire.agent_endpoint()),
                quote(&format!("{}s", BACKLOG_AFTER.as_secs())),
            )
        }
        ServiceKind::Relay => format!(
            "\n[[sinks]]\nname = \"load-sink\"\nurl = {}\n",
            quote(sink_url)
        ),
    };
    format!("{common}{specific}")
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Where the binaries of a `cargo build` with `profile_dir` (e.g. `target/release`) are.
pub fn binaries_in(profile_dir: &Path) -> Binaries {
    let at = |name: &str| -> PathBuf { profile_dir.join(name) };
    Binaries {
        watcher: at("countersign-watcher"),
        registrar: at("countersign-registrar"),
        attestor: at("countersign-attestor"),
        relay: at("countersign-relay"),
        gate: at("countersign-gate"),
        exporter: at("countersign-exporter"),
        signer: at("countersign-signer"),
        countersign: at("countersign"),
    }
}
