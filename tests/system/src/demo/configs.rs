//! The config file of each service in the demo: TOML with the services' real keys, admin
//! endpoints on 127.0.0.1, everything pointed at the demo's own peers. Only what differs from a
//! service's defaults (or must be local) is written, so each file reads as "what a one-machine
//! deployment changes".

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The four long-running services, in the order they are started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceKind {
    Watcher,
    Registrar,
    Attestor,
    Relay,
}

impl ServiceKind {
    /// Every service, in start order.
    pub const ALL: [ServiceKind; 4] = [
        ServiceKind::Watcher,
        ServiceKind::Registrar,
        ServiceKind::Attestor,
        ServiceKind::Relay,
    ];

    /// The binary's name, also the name of its config and log files.
    pub fn binary_name(self) -> &'static str {
        match self {
            ServiceKind::Watcher => "countersign-watcher",
            ServiceKind::Registrar => "countersign-registrar",
            ServiceKind::Attestor => "countersign-attestor",
            ServiceKind::Relay => "countersign-relay",
        }
    }
}

/// The name of the relay's sink in the demo (its durable consumer is `relay-<name>`).
pub const SINK_NAME: &str = "demo-sink";

/// The cluster name the watcher puts in every event.
pub const CLUSTER_NAME: &str = "demo";

/// What the config files point at.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `nats://127.0.0.1:<port>`.
    pub nats_url: String,
    /// The SPIRE trust domain.
    pub trust_domain: String,
    /// The admin kubeconfig of the demo's kube-apiserver.
    pub kubeconfig: PathBuf,
    /// The SPIRE server's admin socket (the registrar's way in).
    pub server_socket: PathBuf,
    /// `unix:///<agent socket>`: the Workload API (the attestor's SVID).
    pub agent_endpoint: String,
    /// `<demo dir>/pods`: each pod's signer runs from `<pods>/<pod uid>/countersign-signer`.
    pub pods_dir: PathBuf,
    /// Where the relay delivers: the demo's CloudEvents sink.
    pub sink_url: String,
    /// The watcher's Tekton CloudEvents ingress.
    pub ingress: SocketAddr,
    /// Where every service exports its spans (`telemetry.otlp_endpoint`), when traces are shown.
    pub otlp_endpoint: Option<String>,
    /// The registrar's workload selector templates on a real node (the agent's `k8s` attestor);
    /// `None` for the simulated pods, told apart by their signer's path under `pods_dir`.
    pub workload_selectors: Option<Vec<String>>,
}

/// The workload selector templates on a real node: the pod's UID, namespace and service account,
/// which the agent's `k8s` workload attestor matches against what the kubelet says of the
/// calling pod.
pub const K8S_WORKLOAD_SELECTORS: [&str; 3] = [
    "k8s:pod-uid:{pod_uid}",
    "k8s:ns:{namespace}",
    "k8s:sa:{service_account}",
];

/// The path of the signer copy a pod runs, as the registrar's selector template names it
/// (`{pod_uid}` is filled in per pod).
pub fn signer_path_template(pods_dir: &Path) -> String {
    format!("{}/{{pod_uid}}/countersign-signer", pods_dir.display())
}

/// The config file of `kind`, with its admin endpoint on `admin`.
pub fn config_text(kind: ServiceKind, settings: &Settings, admin: SocketAddr) -> String {
    let common = format!(
        "# {name} in `cargo xtask demo`: only what differs from the defaults.\n\n\
         [admin]\nlisten = {admin}\n\n\
         [shutdown]\ngrace_period = \"5s\"\n\n\
         [nats]\nurl = {nats}\n",
        name = kind.binary_name(),
        admin = quote(&admin.to_string()),
        nats = quote(&settings.nats_url),
    );
    // A quick retry when a dependency is briefly unavailable (the defaults start at 1 s).
    let consumer = "\n[consumer]\nnak_backoff = [\"500ms\", \"1s\", \"2s\", \"5s\"]\n";
    let specific = match kind {
        ServiceKind::Watcher => format!(
            "\n[cluster]\nname = {cluster}\n\n[spire]\ntrust_domain = {td}\n\n\
             [kubernetes]\nkubeconfig = {kubeconfig}\n\n\
             [ingress]\nlisten = {ingress}\n",
            cluster = quote(CLUSTER_NAME),
            td = quote(&settings.trust_domain),
            kubeconfig = quote_path(&settings.kubeconfig),
            ingress = quote(&settings.ingress.to_string()),
        ),
        ServiceKind::Registrar => match &settings.workload_selectors {
            Some(selectors) => format!(
                "{consumer}\n[spire]\ntrust_domain = {td}\nserver_socket_path = {socket}\n\n\
                 [entries]\n\
                 # The agent's k8s attestor asks the node's kubelet who the calling pod is.\n\
                 workload_selectors = [{selectors}]\n",
                td = quote(&settings.trust_domain),
                socket = quote_path(&settings.server_socket),
                selectors = selectors
                    .iter()
                    .map(|selector| quote(selector))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            None => format!(
                "{consumer}\n[spire]\ntrust_domain = {td}\nserver_socket_path = {socket}\n\n\
                 [entries]\n\
                 # Each pod's signer runs from its own copy, so the agent's unix attestor tells pods apart\n\
                 # by path, as the k8s attestor would by pod UID in a cluster.\n\
                 workload_selectors = [{selector}]\n",
                td = quote(&settings.trust_domain),
                socket = quote_path(&settings.server_socket),
                selector = quote(&format!(
                    "unix:path:{}",
                    signer_path_template(&settings.pods_dir)
                )),
            ),
        },
        ServiceKind::Attestor => format!(
            "{consumer}\n[spire]\ntrust_domain = {td}\nsocket_path = {endpoint}\n\n\
             [annotate]\nenabled = true\nkubeconfig = {kubeconfig}\n",
            td = quote(&settings.trust_domain),
            endpoint = quote(&settings.agent_endpoint),
            kubeconfig = quote_path(&settings.kubeconfig),
        ),
        ServiceKind::Relay => format!(
            "\n[[sinks]]\nname = {name}\nurl = {url}\n\n[sinks.retry]\ninitial_backoff = \"500ms\"\n",
            name = quote(SINK_NAME),
            url = quote(&settings.sink_url),
        ),
    };
    let telemetry = match &settings.otlp_endpoint {
        Some(endpoint) => format!("\n[telemetry]\notlp_endpoint = {}\n", quote(endpoint)),
        None => String::new(),
    };
    format!("{common}{specific}{telemetry}")
}

/// The streams every service creates or binds (`[bus.streams.<name>]`).
const STREAMS: [&str; 5] = [
    "taskruns",
    "registrations",
    "attestations",
    "deadletter",
    "trust",
];

/// The sections of `kind`'s KV buckets that take `replicas`.
fn bucket_sections(kind: ServiceKind) -> &'static [&'static str] {
    match kind {
        ServiceKind::Watcher => &["state.kv"],
        ServiceKind::Registrar => &["state", "bundle_history"],
        ServiceKind::Attestor => &[
            "store.attestations",
            "store.index",
            "store.exports",
            "store.step_verdicts",
        ],
        ServiceKind::Relay => &[],
    }
}

/// What `kind`'s config adds on a JetStream cluster: every stream and every KV bucket it
/// creates with `replicas` replicas (every service must ask the same of a shared stream).
/// Empty for a single server (`replicas` 1).
pub fn replication_text(kind: ServiceKind, replicas: usize) -> String {
    if replicas <= 1 {
        return String::new();
    }
    let mut text =
        String::from("\n# On a JetStream cluster: every stream and bucket replicated.\n");
    for section in STREAMS
        .iter()
        .map(|stream| format!("bus.streams.{stream}"))
        .chain(
            bucket_sections(kind)
                .iter()
                .map(|section| (*section).to_owned()),
        )
    {
        text.push_str(&format!("[{section}]\nreplicas = {replicas}\n"));
    }
    text
}

/// A TOML basic string.
fn quote(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

fn quote_path(path: &Path) -> String {
    quote(&path.display().to_string())
}

#[cfg(test)]
mod tests {
    use countersign_runtime::config::{Environment, ServiceConfig, parse_config};

    use super::*;

    fn settings() -> Settings {
        Settings {
            nats_url: "nats://127.0.0.1:4222".into(),
            trust_domain: "example.org".into(),
            kubeconfig: "/tmp/cs-kube-x/kubeconfig".into(),
            server_socket: "/tmp/cs-spire-x/server/api.sock".into(),
            agent_endpoint: "unix:///tmp/cs-spire-x/agent/api.sock".into(),
            pods_dir: "/tmp/cs-demo-x/pods".into(),
            sink_url: "http://127.0.0.1:8099/".into(),
            ingress: "127.0.0.1:8098".parse().unwrap(),
            otlp_endpoint: None,
            workload_selectors: None,
        }
    }

    fn load<C: ServiceConfig>(kind: ServiceKind) -> C {
        let text = config_text(kind, &settings(), "127.0.0.1:9999".parse().unwrap());
        let config: C = parse_config(&text, &Environment::new())
            .unwrap_or_else(|error| panic!("{kind:?}: {error}\n{text}"));
        config
            .validate()
            .unwrap_or_else(|error| panic!("{kind:?}: {error}\n{text}"));
        assert_eq!(config.admin().listen.to_string(), "127.0.0.1:9999");
        config
    }

    #[test]
    fn replicated_configs_are_valid_and_replicate_every_stream_and_bucket() {
        let text = |kind| {
            let mut text = config_text(kind, &settings(), "127.0.0.1:9999".parse().unwrap());
            text.push_str(&replication_text(kind, 3));
            text
        };
        let watcher: countersign_watcher::WatcherConfig =
            parse_config(&text(ServiceKind::Watcher), &Environment::new()).unwrap();
        assert_eq!(watcher.bus.streams.taskruns.replicas, 3);
        assert_eq!(watcher.state.kv.replicas, 3);
        let registrar: countersign_registrar::RegistrarConfig =
            parse_config(&text(ServiceKind::Registrar), &Environment::new()).unwrap();
        assert_eq!(registrar.bus.streams.trust.replicas, 3);
        assert_eq!(registrar.state.replicas, 3);
        assert_eq!(registrar.bundle_history.replicas, 3);
        let attestor: countersign_attestor::AttestorConfig =
            parse_config(&text(ServiceKind::Attestor), &Environment::new()).unwrap();
        assert_eq!(attestor.bus.streams.attestations.replicas, 3);
        for bucket in [
            &attestor.store.attestations,
            &attestor.store.index,
            &attestor.store.exports,
            &attestor.store.step_verdicts,
        ] {
            assert_eq!(bucket.replicas, 3);
        }
        let relay: countersign_relay::RelayConfig =
            parse_config(&text(ServiceKind::Relay), &Environment::new()).unwrap();
        assert_eq!(relay.bus.streams.deadletter.replicas, 3);
        assert!(replication_text(ServiceKind::Relay, 1).is_empty());
    }

    #[test]
    fn every_config_is_valid_for_its_service() {
        let watcher: countersign_watcher::WatcherConfig = load(ServiceKind::Watcher);
        assert_eq!(watcher.cluster.name, CLUSTER_NAME);
        assert_eq!(watcher.ingress.listen.to_string(), "127.0.0.1:8098");

        let registrar: countersign_registrar::RegistrarConfig = load(ServiceKind::Registrar);
        assert_eq!(
            registrar.entries.workload_selectors,
            ["unix:path:/tmp/cs-demo-x/pods/{pod_uid}/countersign-signer"]
        );
        assert_eq!(
            registrar.spire.server_socket_path.as_deref(),
            Some(Path::new("/tmp/cs-spire-x/server/api.sock"))
        );

        let attestor: countersign_attestor::AttestorConfig = load(ServiceKind::Attestor);
        assert!(attestor.annotate.enabled);
        assert_eq!(
            attestor.spire.socket_path.as_deref(),
            Some("unix:///tmp/cs-spire-x/agent/api.sock")
        );

        let relay: countersign_relay::RelayConfig = load(ServiceKind::Relay);
        assert_eq!(relay.sinks.len(), 1);
        assert_eq!(relay.sinks[0].name, SINK_NAME);
    }

    #[test]
    fn on_a_real_node_the_registrar_uses_the_k8s_selectors() {
        let mut settings = settings();
        settings.workload_selectors = Some(K8S_WORKLOAD_SELECTORS.map(str::to_owned).to_vec());
        let text = config_text(
            ServiceKind::Registrar,
            &settings,
            "127.0.0.1:9999".parse().unwrap(),
        );
        let config: countersign_registrar::RegistrarConfig =
            parse_config(&text, &Environment::new()).unwrap();
        config.validate().unwrap();
        assert_eq!(
            config.entries.workload_selectors,
            K8S_WORKLOAD_SELECTORS.map(str::to_owned)
        );
    }

    #[test]
    fn every_service_exports_its_spans_when_an_otlp_endpoint_is_set() {
        fn endpoint<C: ServiceConfig>(kind: ServiceKind, settings: &Settings) -> Option<String> {
            let text = config_text(kind, settings, "127.0.0.1:9999".parse().unwrap());
            let config: C = parse_config(&text, &Environment::new()).unwrap();
            config
                .telemetry()
                .otlp_endpoint
                .as_ref()
                .map(|url| url.to_string())
        }
        let mut settings = settings();
        assert_eq!(
            endpoint::<countersign_relay::RelayConfig>(ServiceKind::Relay, &settings),
            None
        );
        settings.otlp_endpoint = Some("http://127.0.0.1:4317".into());
        let expected = Some("http://127.0.0.1:4317/".to_owned());
        assert_eq!(
            endpoint::<countersign_watcher::WatcherConfig>(ServiceKind::Watcher, &settings),
            expected
        );
        assert_eq!(
            endpoint::<countersign_registrar::RegistrarConfig>(ServiceKind::Registrar, &settings),
            expected
        );
        assert_eq!(
            endpoint::<countersign_attestor::AttestorConfig>(ServiceKind::Attestor, &settings),
            expected
        );
        assert_eq!(
            endpoint::<countersign_relay::RelayConfig>(ServiceKind::Relay, &settings),
            expected
        );
    }

    #[test]
    fn paths_with_quotes_stay_one_toml_string() {
        for text in [r#"/tmp/a"b\c"#, "/tmp/it's", "/tmp/'\"both\"'"] {
            let document: toml::Table = toml::from_str(&format!("key = {}", quote(text))).unwrap();
            assert_eq!(document["key"].as_str(), Some(text));
        }
    }
}
