//! The Grafana dashboard and the Prometheus alert rules under `k8s/`: well formed, the
//! PrometheusRule the same as the plain rules file, and every `countersign_*` metric they query
//! exported by the services.
//!
//! The services run for real, in-process, each with its admin server, configured from the
//! ConfigMap and environment the base renders (so the shipped configuration is also proved to
//! load), against real peers: an operator-mode nats-server provisioned from the NACK objects, each
//! service connecting with credentials minted from its shipped permission file; spire-server and
//! spire-agent; etcd and kube-apiserver. Each becomes ready, then its `/metrics` is scraped.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use countersign_runtime::config::{Environment, ServiceConfig, parse_config};
use countersign_runtime::{BoxError, Context, run_service};
use countersign_system_tests::nack::provision;
use countersign_system_tests::nats_auth::{Operator, OperatorNats, Permissions};
use countersign_system_tests::promql::{exported_names, metric_names};
use countersign_system_tests::render::{self, Rendered};
use countersign_system_tests::{http, k8s_dir};
use countersign_test_support::kube::KubeApiserver;
use countersign_test_support::spire::{Spire, SpireOptions};
use serde_json::Value;

/// How long a service may take to become ready against its peers.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

fn rules() -> Value {
    let path = k8s_dir().join("base/observability/alerts.yaml");
    let text = std::fs::read_to_string(&path).expect("reading the rules file");
    serde_saphyr::from_str(&text).expect("the rules file is YAML")
}

fn dashboard() -> Value {
    let path = k8s_dir().join("base/observability/dashboard.json");
    let text = std::fs::read_to_string(&path).expect("reading the dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every PromQL expression of the rules and the dashboard.
fn expressions() -> Vec<String> {
    let mut expressions = Vec::new();
    for group in rules()["groups"].as_array().into_iter().flatten() {
        for rule in group["rules"].as_array().into_iter().flatten() {
            if let Some(expr) = rule["expr"].as_str() {
                expressions.push(expr.to_owned());
            }
        }
    }
    fn targets(panel: &Value, expressions: &mut Vec<String>) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                expressions.push(expr.to_owned());
            }
        }
        for inner in panel["panels"].as_array().into_iter().flatten() {
            targets(inner, expressions);
        }
    }
    for panel in dashboard()["panels"].as_array().into_iter().flatten() {
        targets(panel, &mut expressions);
    }
    expressions
}

#[test]
fn rules_file_has_the_alerts_an_operator_must_act_on() {
    let rules = rules();
    let groups = rules["groups"].as_array().expect("`groups` is a list");
    let mut alerts = BTreeSet::new();
    for group in groups {
        assert!(group["name"].is_string(), "every group is named");
        for rule in group["rules"].as_array().expect("`rules` is a list") {
            let alert = rule["alert"].as_str().expect("every rule is an alert");
            assert!(alerts.insert(alert.to_owned()), "alert {alert} twice");
            assert!(
                !metric_names(rule["expr"].as_str().unwrap_or("")).is_empty(),
                "{alert} queries a Countersign metric"
            );
            assert!(
                matches!(
                    rule["labels"]["severity"].as_str(),
                    Some("warning" | "critical")
                ),
                "{alert} has a severity"
            );
            assert!(
                rule["annotations"]["summary"].is_string(),
                "{alert} has a summary"
            );
            if let Some(duration) = rule.get("for") {
                assert!(duration.is_string(), "{alert}: `for` is a duration");
            }
        }
    }
    for required in [
        "CountersignAttestorRejecting",
        "CountersignDeadLettersGrowing",
        "CountersignReconcileFoundOrphans",
        "CountersignSpireUnreachable",
        "CountersignAttestationSlow",
        "CountersignRegistrationSlow",
    ] {
        assert!(alerts.contains(required), "missing alert {required}");
    }
}

#[test]
fn prometheus_rule_has_the_same_groups_as_the_rules_file() {
    let path = k8s_dir().join("components/prometheus-operator/prometheus-rule.yaml");
    let text = std::fs::read_to_string(&path).expect("reading the PrometheusRule");
    let rule: Value = serde_saphyr::from_str(&text).expect("the PrometheusRule is YAML");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["kind"], "PrometheusRule");
    assert_eq!(rule["spec"]["groups"], rules()["groups"]);
}

#[test]
fn dashboard_covers_lag_verdicts_entries_and_latency() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "countersign");
    let expressions = expressions().join("\n");
    for needle in [
        "jetstream_consumer_num_pending",
        "countersign_attestor_verdicts_total",
        "countersign_registrar_entries_registered_total",
        "countersign_registrar_entries_released_total",
        "countersign_attestation_latency_seconds_bucket",
        "countersign_registration_latency_seconds_bucket",
        "histogram_quantile",
    ] {
        assert!(expressions.contains(needle), "the dashboard shows {needle}");
    }
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        assert!(
            ids.insert(panel["id"].as_i64().expect("panel id")),
            "unique ids"
        );
        assert!(panel["gridPos"]["w"].is_i64(), "every panel is placed");
    }
}

// === the services, for real ===

/// A rendered Deployment's environment, with `configMapKeyRef`s resolved from the rendered
/// ConfigMaps, then `overrides` on top (the peers' addresses of this test).
fn environment(base: &Rendered, service: &str, overrides: &[(&str, String)]) -> Environment {
    let deployment = base
        .find("Deployment", &format!("countersign-{service}"))
        .unwrap_or_else(|| panic!("no Deployment for {service}"));
    let mut vars = BTreeMap::new();
    for var in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = var["name"].as_str().unwrap_or_default().to_owned();
        let value = if let Some(value) = var["value"].as_str() {
            value.to_owned()
        } else {
            let reference = &var["valueFrom"]["configMapKeyRef"];
            let config_map = base
                .find("ConfigMap", reference["name"].as_str().unwrap_or_default())
                .unwrap_or_else(|| panic!("{service}: ConfigMap {}", reference["name"]));
            config_map["data"][reference["key"].as_str().unwrap_or_default()]
                .as_str()
                .unwrap_or_else(|| panic!("{service}: {reference}"))
                .to_owned()
        };
        vars.insert(name, value);
    }
    for (name, value) in overrides {
        vars.insert((*name).to_owned(), value.clone());
    }
    vars.into_iter().collect()
}

/// The service's config: the shipped `config.toml` of its ConfigMap, overlaid with `env`.
fn config<C: ServiceConfig>(base: &Rendered, service: &str, env: &Environment) -> C {
    let config_map = base
        .config_map(&format!("countersign-{service}"))
        .unwrap_or_else(|| panic!("no ConfigMap for {service}"));
    let text = config_map["data"]["config.toml"]
        .as_str()
        .unwrap_or_else(|| panic!("{service}: no config.toml"));
    let config: C = parse_config(text, env)
        .unwrap_or_else(|error| panic!("{service}: the shipped config does not load: {error}"));
    config
        .validate()
        .unwrap_or_else(|error| panic!("{service}: the shipped config is invalid: {error}"));
    config
}

/// Runs a service in-process until it is ready, scrapes its `/metrics`, stops it.
async fn scrape<C, F, Fut, E>(name: &str, config: C, service: F) -> String
where
    C: Send + Sync + 'static,
    F: FnOnce(Context<C>) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError> + Send + 'static,
{
    let context = Context::new(name, config);
    let readiness = context.readiness.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the admin port");
    let admin = listener.local_addr().expect("admin address").to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = run_service(
        context,
        listener,
        Duration::from_secs(5),
        async {
            let _ = stopped.await;
        },
        service,
    );
    let scraped = async {
        tokio::time::timeout(READY_TIMEOUT, readiness.wait_ready())
            .await
            .unwrap_or_else(|_| panic!("{name} did not become ready"));
        let answer = http::get(&admin, "/metrics")
            .await
            .unwrap_or_else(|| panic!("{name}: no answer from /metrics"));
        assert_eq!(answer.status, 200, "{name}: /metrics");
        let _ = stop.send(());
        answer.body
    };
    let (outcome, body) = tokio::join!(running, scraped);
    let _ = outcome;
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_queried_is_exported_by_the_services() {
    let queried: BTreeSet<String> = expressions()
        .iter()
        .flat_map(|expression| metric_names(expression))
        .collect();
    assert!(!queried.is_empty());

    let base = render::render("base").unwrap_or_else(|error| panic!("{error}"));
    let dev = render::render("overlays/dev").unwrap_or_else(|error| panic!("{error}"));

    // NATS as a cluster runs it: operator mode, streams and consumers from NACK.
    let operator = Operator::generate().expect("minting the operator");
    let nats = OperatorNats::start(&operator)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let credentials = |user: &str| {
        let permissions = Permissions::shipped(user).expect("the shipped permissions");
        let text = operator
            .user_credentials(user, &permissions)
            .expect("minting credentials");
        nats.write_credentials(user, &text)
            .expect("writing credentials")
            .display()
            .to_string()
    };
    let admin = async_nats::ConnectOptions::with_credentials(
        &operator
            .user_credentials("admin", &Permissions::shipped("admin").expect("admin"))
            .expect("minting"),
    )
    .expect("admin credentials")
    .connect(nats.url())
    .await
    .expect("connecting as admin");
    provision(&admin, &dev)
        .await
        .unwrap_or_else(|error| panic!("provisioning: {error}"));

    let spire = Spire::start(SpireOptions::default())
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let kube = KubeApiserver::shared().await;
    let mut exported = BTreeSet::new();

    // The relay.
    let env = environment(
        &base,
        "relay",
        &[
            ("COUNTERSIGN_NATS__URL", nats.url()),
            ("COUNTERSIGN_NATS__CREDENTIALS_FILE", credentials("relay")),
        ],
    );
    let relay: countersign_relay::config::RelayConfig = config(&base, "relay", &env);
    exported.extend(exported_names(
        &scrape("relay", relay, countersign_relay::run).await,
    ));

    // The watcher, against the kube-apiserver.
    let env = environment(
        &base,
        "watcher",
        &[
            ("COUNTERSIGN_NATS__URL", nats.url()),
            ("COUNTERSIGN_NATS__CREDENTIALS_FILE", credentials("watcher")),
            (
                "COUNTERSIGN_KUBERNETES__KUBECONFIG",
                kube.kubeconfig_path().display().to_string(),
            ),
            ("COUNTERSIGN_INGRESS__LISTEN", "127.0.0.1:0".to_owned()),
        ],
    );
    let watcher: countersign_watcher::WatcherConfig = config(&base, "watcher", &env);
    exported.extend(exported_names(
        &scrape("watcher", watcher, countersign_watcher::run).await,
    ));

    // The registrar, on the SPIRE server's admin socket (the sidecar variant).
    let env = environment(
        &base,
        "registrar",
        &[
            ("COUNTERSIGN_NATS__URL", nats.url()),
            (
                "COUNTERSIGN_NATS__CREDENTIALS_FILE",
                credentials("registrar"),
            ),
            (
                "COUNTERSIGN_SPIRE__SERVER_SOCKET_PATH",
                spire.server_socket_path().display().to_string(),
            ),
            ("COUNTERSIGN_SPIRE__SOCKET_PATH", spire.agent_endpoint()),
        ],
    );
    let registrar: countersign_registrar::config::RegistrarConfig =
        config(&base, "registrar", &env);
    exported.extend(exported_names(
        &scrape("registrar", registrar, countersign_registrar::run).await,
    ));

    // The attestor, with an SVID from the agent's Workload API.
    let attestor_id = format!("spiffe://{}/countersign/attestor", spire.trust_domain());
    spire
        .register_test_process(&attestor_id, false)
        .await
        .unwrap_or_else(|error| panic!("registering the attestor: {error:?}"));
    let env = environment(
        &base,
        "attestor",
        &[
            ("COUNTERSIGN_NATS__URL", nats.url()),
            (
                "COUNTERSIGN_NATS__CREDENTIALS_FILE",
                credentials("attestor"),
            ),
            ("COUNTERSIGN_SPIRE__SOCKET_PATH", spire.agent_endpoint()),
        ],
    );
    let attestor: countersign_attestor::config::AttestorConfig = config(&base, "attestor", &env);
    exported.extend(exported_names(
        &scrape("attestor", attestor, |context| {
            countersign_attestor::run(context)
        })
        .await,
    ));

    // A labelled family shows in a scrape only once one of its series has a sample (the
    // services create series on first use), so a freshly started service cannot show the
    // families of events it has not seen yet (a rejection, a dead letter, a SPIRE error). Those
    // must at least be registered under that exact name by the service's metrics module.
    let missing: Vec<&String> = queried
        .difference(&exported)
        .filter(|name| !registered_in_source(name))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard or the alerts query metrics no service exports or registers: {missing:?}\n\
         scraped: {exported:?}\nnats log:\n{}",
        nats.log_tail()
    );
    // And every service showed up in the scrape with its own metrics.
    for prefix in [
        "countersign_watcher_",
        "countersign_registrar_",
        "countersign_attestor_",
    ] {
        assert!(
            exported.iter().any(|name| name.starts_with(prefix)),
            "no {prefix}* metric was scraped"
        );
    }
}

/// Whether the metrics module of the service a `countersign_<service>_*` name belongs to registers
/// its family under exactly that name (the registration's name string, with the prefix the
/// module adds and the suffixes the encoder adds taken off).
fn registered_in_source(name: &str) -> bool {
    let repo = countersign_test_support::repo_root();
    let Some(rest) = name.strip_prefix("countersign_") else {
        return false;
    };
    let Some((service, family)) = rest.split_once('_') else {
        return false;
    };
    let module = match service {
        "events" => repo.join("crates/events/src/metrics.rs"),
        "watcher" | "registrar" | "attestor" | "relay" => {
            repo.join(format!("services/{service}/src/metrics.rs"))
        }
        _ => return false,
    };
    let Ok(source) = std::fs::read_to_string(module) else {
        return false;
    };
    let mut family = family;
    for suffix in ["_total", "_bucket", "_count", "_sum"] {
        if let Some(stripped) = family.strip_suffix(suffix) {
            family = stripped;
            break;
        }
    }
    let mut candidates = vec![family.to_owned(), format!("{service}_{family}")];
    if let Some(unitless) = family.strip_suffix("_seconds") {
        // Registered with `Unit::Seconds`, which appends the unit.
        if source.contains("Unit::Seconds") {
            candidates.push(unitless.to_owned());
            candidates.push(format!("{service}_{unitless}"));
        }
    }
    candidates
        .iter()
        .any(|candidate| source.contains(&format!("\"{candidate}\"")))
}
