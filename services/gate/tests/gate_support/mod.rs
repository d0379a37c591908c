//! What the gate's integration tests share: attestation events signed as the attestor signs them
//! (an in-toto Statement in a DSSE envelope, signed with the fixture controller SVID), a CA and a
//! serving certificate for the webhook (from test support), and the gate started in-process on
//! the test-support service skeleton (whose readiness cannot be read before the gate has taken
//! its latches).

// Shared by the test files of one test crate, which has no public API: `pub` here is for
// them, so `unreachable_pub` does not apply.
#![allow(unreachable_pub)]
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use countersign_events::data::{
    AttestationRejected, AttestationVerified, ReasonCode as EventReason, ResultSubject, TaskRunRef,
    Verdict as EventVerdict,
};
use countersign_events::{AttestationEvent, Event, EventSource};
use countersign_gate::{GateConfig, run};
use countersign_identity::attestation::SignedAttestation;
use countersign_identity::intoto::{
    PredicateTimes, Statement, Subject, TASKRUN_RESULTS_PREDICATE_TYPE,
    TaskRunRef as PredicateTaskRun, TaskRunResultsPredicate, Verdict,
};
use countersign_identity::svid::SigningSvid;
use countersign_identity::tekton::ReasonCode;
use countersign_runtime::config::{Environment, ServiceConfig, parse_config};
use countersign_runtime::{Context, RunOutcome};
use countersign_test_support::fixtures_dir;
use countersign_test_support::service::RunningService;
pub use countersign_test_support::webhook::WebhookTls;
use countersign_verdict::attestation::to_event_attestation;

/// The fixture SVID the attestor signs with in these tests.
pub fn attestor_svid() -> SigningSvid {
    let dir = fixtures_dir().join("tekton/spire/generated");
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).expect("fixture SVID");
    SigningSvid::from_pem(
        &read("controller-svid.pem"),
        &read("controller-svid.TEST-ONLY.key.pem"),
    )
    .expect("the fixture SVID and key")
}

/// An attestation event about TaskRun `namespace/name` (`uid`): verified with these signed
/// results (name → SHA-256 hex of the canonical value), or rejected with `reason`.
pub fn attestation_event(
    namespace: &str,
    name: &str,
    uid: &str,
    signed_results: &BTreeMap<String, String>,
    rejected: Option<ReasonCode>,
) -> Event<AttestationEvent> {
    let now = Utc::now();
    let verdict = if rejected.is_some() {
        Verdict::Rejected
    } else {
        Verdict::Verified
    };
    let predicate = TaskRunResultsPredicate {
        taskrun: PredicateTaskRun {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: uid.to_owned(),
        },
        cluster: "test".to_owned(),
        spiffe_id: None,
        svid_fingerprint: None,
        trust_bundle_digest: "0".repeat(64),
        verdict,
        reason_code: rejected,
        checks: Vec::new(),
        times: PredicateTimes {
            created: now,
            finished: Some(now),
            verified: now,
        },
        signing: None,
    };
    let subjects: Vec<Subject> = if signed_results.is_empty() || rejected.is_some() {
        vec![Subject {
            name: format!("taskrun/{namespace}/{name}"),
            digest: BTreeMap::from([("sha256".to_owned(), "1".repeat(64))]),
        }]
    } else {
        signed_results
            .iter()
            .map(|(name, digest)| Subject {
                name: name.clone(),
                digest: BTreeMap::from([("sha256".to_owned(), digest.clone())]),
            })
            .collect()
    };
    let statement = Statement::new(subjects, TASKRUN_RESULTS_PREDICATE_TYPE, predicate)
        .expect("a statement with subjects");
    let svid = attestor_svid();
    let signed = SignedAttestation::sign(&statement, &svid).expect("signing the statement");
    let attestation = to_event_attestation(&signed, &svid);
    let taskrun = TaskRunRef {
        cluster: "test".to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        uid: uid.to_owned(),
    };
    let data = match rejected {
        None => AttestationEvent::Verified(AttestationVerified {
            taskrun,
            verdict: EventVerdict::Verified,
            spiffe_id: None,
            svid_fingerprint: None,
            subjects: signed_results
                .iter()
                .map(|(name, digest)| ResultSubject {
                    name: name.clone(),
                    sha256: digest.clone(),
                })
                .collect(),
            attestation,
            attested_at: now,
        }),
        Some(_) => AttestationEvent::Rejected(AttestationRejected {
            taskrun,
            reason: EventReason::SignatureInvalid,
            message: "step build: invalid signature for IMAGE_DIGEST".to_owned(),
            step: Some("build".to_owned()),
            spiffe_id: None,
            attestation,
            attested_at: now,
        }),
    };
    Event::new(&EventSource::service("attestor"), data)
}

/// A gate running in-process.
pub struct RunningGate {
    /// Its context (readiness, shutdown).
    pub context: Context<GateConfig>,
    /// The webhook's port.
    pub webhook_port: u16,
    /// The verdict API's port.
    pub api_port: u16,
    service: Option<RunningService<GateConfig>>,
}

/// A free loopback port.
pub fn free_port() -> u16 {
    countersign_test_support::ports::free_port()
}

impl RunningGate {
    /// Starts the gate with these extra config lines, waits until it is ready: its caches synced,
    /// NATS connected and the attestations replicated (readiness is not-ready from the moment
    /// the gate is started, so this cannot return before the gate has taken its latches).
    pub async fn start(
        nats_url: &str,
        prefix: &str,
        kubeconfig: &std::path::Path,
        tls: &WebhookTls,
        extra: &str,
    ) -> RunningGate {
        let webhook_port = free_port();
        let api_port = free_port();
        let text = format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\
             [nats]\nurl = \"{nats_url}\"\n\
             [bus]\nprefix = \"{prefix}\"\n\
             [webhook]\nlisten = \"127.0.0.1:{webhook_port}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nreload_interval = \"100ms\"\n\
             [api]\nlisten = \"127.0.0.1:{api_port}\"\n\
             [kubernetes]\nkubeconfig = \"{}\"\n{extra}",
            tls.cert_file.display(),
            tls.key_file.display(),
            kubeconfig.display(),
        );
        let config: GateConfig = parse_config(&text, &Environment::new()).expect("a valid config");
        config.validate().expect("a valid config");
        let grace_period = config.shutdown.grace_period;
        let service = RunningService::start(Context::new("gate", config), grace_period, run).await;
        service.wait_ready().await;
        RunningGate {
            context: service.context.clone(),
            webhook_port,
            api_port,
            service: Some(service),
        }
    }

    /// Stops it and waits until it has.
    pub async fn stop(&mut self) -> RunOutcome {
        let service = self.service.take().expect("the gate runs");
        tokio::time::timeout(Duration::from_secs(30), service.stop())
            .await
            .expect("the gate stops in time")
    }
}
