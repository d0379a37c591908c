//! Re-verification on revocation, against a real SPIRE server with a short `ca_ttl`: the
//! registrar (in-process) records every bundle and announces it; attestations are stored as the
//! attestor stores them, signed with X509-SVIDs the server mints under each CA, and one whose
//! *results* SVID comes from an older CA than its signer's; three rotations are forced
//! (`localauthority x509 prepare/activate`), then the CA active before the third is tainted and
//! revoked. The attestor's revocation consumer (`attestor-revocations`, run as the service runs
//! it) publishes `attestation.revoked` for exactly the attestations one of whose chains that CA
//! issued, once each (a second pass revokes nothing), and marks them in the store; the others
//! still verify offline from the exported history alone and the revoked signer's is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::Utc;
use countersign_attestor::metrics::AttestorMetrics;
use countersign_attestor::revocation::{Revoker, revoked_authorities};
use countersign_events::data::{RevocationKind, SigningChain, TaskRunRef, TrustBundleRotated};
use countersign_events::kv::{Bucket, SnapshotValue};
use countersign_events::{
    AttestationEvent, ConsumerConfig, Delivery, Event, EventSource, KvConfig, run_durable,
};
use countersign_identity::svid::{SigningSvid, SvidLeaf, TrustBundleSet, pem_to_ders};
use countersign_registrar::RegistrarConfig;
use countersign_registrar::bundle_history::history_bucket;
use countersign_runtime::Context;
use countersign_runtime::config::{Environment, parse_config};
use countersign_spire_api::SpireServerClient;
use countersign_test_support::bus::TestBus;
use countersign_test_support::nats::NatsServer;
use countersign_test_support::service::RunningService;
use countersign_test_support::spire::{Spire, SpireOptions};
use countersign_test_support::wait;
use countersign_verdict::Decision;
use countersign_verdict::attestation::{
    AttestationEventExt as _, AttestationFacts, attest_in_context,
};
use countersign_verdict::bundle_history::{
    BundleHistory, BundleRecord, PointInTimeError, issuing_authority,
};
use countersign_verdict::decide::VerifiedDecision;
use countersign_verdict::steps::VerifiedStep;
use countersign_verdict::store::AttestationStore;
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

const ATTESTOR: &str = "spiffe://example.org/countersign/attestor";
const TIMEOUT: Duration = Duration::from_secs(60);

struct Peers {
    nats: NatsServer,
    spire: Spire,
    bus: TestBus,
    admin: SpireServerClient,
}

/// Runs `spire-server <args>` against the test's server and returns its JSON.
async fn spire_server(peers_: &Peers, args: &[&str]) -> serde_json::Value {
    peers_.spire.server_cli(args).await.expect("spire-server")
}

async fn rotate(peers_: &Peers) {
    spire_server(peers_, &["localauthority", "x509", "prepare"]).await;
    let shown = spire_server(peers_, &["localauthority", "x509", "show"]).await;
    let prepared = shown["prepared"]["authority_id"]
        .as_str()
        .expect("a prepared authority")
        .to_owned();
    spire_server(
        peers_,
        &[
            "localauthority",
            "x509",
            "activate",
            "-authorityID",
            &prepared,
        ],
    )
    .await;
}

/// An SVID for `spiffe_id` minted by the server under its active CA.
async fn mint(peers_: &Peers, spiffe_id: &str) -> SigningSvid {
    let minted = peers_
        .spire
        .mint_x509(spiffe_id)
        .await
        .expect("an SVID minted");
    SigningSvid::new(minted.chain, &minted.private_key).expect("a usable SVID")
}

async fn current_bundles(peers_: &Peers) -> TrustBundleSet {
    let bundle = peers_.admin.get_bundle().await.expect("the bundle");
    let mut set = TrustBundleSet::new();
    set.add_der(
        bundle.trust_domain.clone(),
        bundle
            .x509_authorities
            .into_iter()
            .map(|authority| authority.der),
    )
    .expect("usable CAs");
    set
}

/// The CA of the server's bundle that issued `svid`.
fn issuer_of(bundles: &TrustBundleSet, svid: &SigningSvid) -> String {
    let leaf = SvidLeaf::from_der(&svid.chain()[0]).expect("a leaf");
    issuing_authority(bundles, &leaf, &svid.chain()[1..], Utc::now()).expect("an issuing CA")
}

/// What the attestor would store for TaskRun `name`: signed now with an attestor SVID minted
/// under the active CA; its results' SVID is `results_svid` (verified by `bundles`) when given.
async fn attest(
    peers_: &Peers,
    store: &AttestationStore,
    source: &EventSource,
    name: &str,
    results_svid: Option<&SigningSvid>,
) -> Event<AttestationEvent> {
    let svid = mint(peers_, ATTESTOR).await;
    let bundles = current_bundles(peers_).await;
    let taskrun = TaskRunRef {
        cluster: "test-cluster".to_owned(),
        namespace: "default".to_owned(),
        name: name.to_owned(),
        uid: format!("uid-{name}"),
    };
    let decision = match results_svid {
        None => Decision::NoResults,
        Some(results_svid) => Decision::Verified(VerifiedDecision {
            results: BTreeMap::new(),
            signer_step: "build".to_owned(),
            signer: VerifiedStep {
                spiffe_id: format!("spiffe://example.org/ns/default/taskrun/{name}"),
                svid_fingerprint: "00".repeat(32),
                signed_at: Utc::now(),
                issuing_authority: Some(issuer_of(&bundles, results_svid)),
                results: BTreeMap::new(),
                checks: Vec::new(),
            },
            trust_bundle_digest: bundles.digest().to_hex(),
            checks: Vec::new(),
        }),
    };
    let data = attest_in_context(
        &decision,
        AttestationFacts {
            taskrun: &taskrun,
            created: Utc::now(),
            finished: Some(Utc::now()),
            decided_at: Utc::now(),
            current_bundle_digest: &bundles.digest().to_hex(),
        },
        &bundles,
        &svid,
    )
    .expect("signing");
    let event = Event::new(source, data);
    store.create(&taskrun.uid, &event).await.expect("stored");
    event
}

async fn next_rotation(
    events: &mut async_nats::Subscriber,
    sequence_number: u64,
) -> TrustBundleRotated {
    loop {
        let message = tokio::time::timeout(TIMEOUT, events.next())
            .await
            .expect("a bundle-rotated event in time")
            .expect("the subscription is open");
        let event: TrustBundleRotated =
            serde_json::from_slice(&message.payload).expect("bundle-rotated data");
        if event.sequence_number >= sequence_number {
            return event;
        }
    }
}

/// The signer chain's point-in-time check from the history alone (what
/// `countersign verify --bundle-history` does).
fn verify_signer_from_history(
    history: &BundleHistory,
    event: &Event<AttestationEvent>,
) -> Result<u64, PointInTimeError> {
    let signed = event.data.signed_attestation().expect("the attestation");
    let mut certificates = pem_to_ders(&signed.certificates).expect("PEM").into_iter();
    let leaf = SvidLeaf::from_der(&certificates.next().expect("a leaf")).expect("an SVID");
    let intermediates: Vec<Vec<u8>> = certificates.collect();
    let statement: serde_json::Value =
        serde_json::from_slice(signed.envelope.unverified_payload()).expect("JSON");
    let signing = &statement["predicate"]["signing"];
    let signed_at =
        chrono::DateTime::parse_from_rfc3339(signing["signedAt"].as_str().expect("a signing time"))
            .expect("RFC 3339")
            .to_utc();
    history
        .verify_chain_at(
            &leaf,
            &intermediates,
            signed_at,
            signing["signerBundleDigest"].as_str(),
        )
        .map(|chain| chain.sequence_number)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_ca_revokes_exactly_the_attestations_signed_under_it_once() {
    let (nats, spire) = tokio::join!(
        NatsServer::start(),
        Spire::start(SpireOptions {
            node_name: "node-1".to_owned(),
            ca_ttl: Some(Duration::from_secs(600)),
            default_x509_svid_ttl: Some(Duration::from_secs(60)),
            ..SpireOptions::default()
        })
    );
    let nats = nats.expect("nats-server starts");
    let spire = spire.expect("SPIRE starts");
    let bus = TestBus::connect(&nats, "attestor").await;
    let admin = SpireServerClient::connect_unix(spire.server_socket_path())
        .await
        .expect("the admin socket");
    let peers_ = Peers {
        nats,
        spire,
        bus,
        admin,
    };
    let client = peers_.nats.client().await;
    let mut rotations = client
        .subscribe("countersign.trust.bundle-rotated.>")
        .await
        .expect("subscribing");
    let mut revocations = client
        .subscribe("countersign.attestation.revoked.>")
        .await
        .expect("subscribing");

    // The registrar records the bundles.
    let toml = format!(
        "[nats]\nurl = {url:?}\n[spire]\ntrust_domain = \"example.org\"\nserver_socket_path = {socket:?}\n\
         [bundle_history]\npoll_interval = \"100ms\"\n",
        url = peers_.nats.url(),
        socket = peers_.spire.server_socket_path().display().to_string(),
    );
    let config: RegistrarConfig =
        parse_config(&toml, &Environment::new()).expect("a valid registrar configuration");
    let registrar = RunningService::start(
        Context::new("registrar", config),
        Duration::from_secs(30),
        countersign_registrar::run,
    )
    .await;
    registrar.wait_ready().await;

    // The attestor's store and its revocation consumer, as the service runs them.
    peers_.bus.bus.ensure_streams().await.expect("the streams");
    let store =
        AttestationStore::ensure(&peers_.bus.bus, &KvConfig::default(), &KvConfig::default())
            .await
            .expect("the attestation buckets");
    let source = EventSource::service("attestor");
    let revoker = Revoker::new(
        store.clone(),
        peers_.bus.bus.publisher(EventSource::service("attestor")),
        AttestorMetrics::new(),
    );
    let spec = countersign_events::ConsumerSpec::attestor_revocations(peers_.bus.subjects());
    let consumer = peers_
        .bus
        .bus
        .ensure_consumer(&spec, &ConsumerConfig::default())
        .await
        .expect("the revocations consumer");
    let token = CancellationToken::new();
    let consuming = {
        let (bus, revoker, token) = (peers_.bus.bus.clone(), revoker.clone(), token.clone());
        tokio::spawn(async move {
            let handler = move |event: Event<TrustBundleRotated>, delivery: Delivery| {
                let revoker = revoker.clone();
                async move { revoker.handle(event, delivery).await }
            };
            run_durable(&bus, &spec, consumer, handler, token).await
        })
    };

    // Under the first CA; three rotations, one attestation under each new CA; one whose
    // results SVID is minted under the second CA and signed later under the third.
    let first = next_rotation(&mut rotations, 0).await;
    let mut stored = vec![attest(&peers_, &store, &source, "under-first", None).await];
    rotate(&peers_).await;
    let mut sequence = next_rotation(&mut rotations, first.sequence_number + 1)
        .await
        .sequence_number;
    stored.push(attest(&peers_, &store, &source, "under-second", None).await);
    let results_under_second = mint(
        &peers_,
        "spiffe://example.org/ns/default/taskrun/results-under-second",
    )
    .await;
    let second_ca = issuer_of(&current_bundles(&peers_).await, &results_under_second);
    rotate(&peers_).await;
    sequence = next_rotation(&mut rotations, sequence + 1)
        .await
        .sequence_number;
    stored.push(attest(&peers_, &store, &source, "under-third", None).await);
    stored.push(
        attest(
            &peers_,
            &store,
            &source,
            "results-under-second",
            Some(&results_under_second),
        )
        .await,
    );

    // Taint the second CA (the old one now), then revoke it, then rotate once more.
    let shown = spire_server(&peers_, &["localauthority", "x509", "show"]).await;
    let old_id = shown["old"]["authority_id"]
        .as_str()
        .expect("an old authority")
        .to_owned();
    spire_server(
        &peers_,
        &["localauthority", "x509", "taint", "-authorityID", &old_id],
    )
    .await;
    let tainted = next_rotation(&mut rotations, sequence + 1).await;
    assert_eq!(tainted.revoked_authorities, vec![second_ca.clone()]);
    spire_server(
        &peers_,
        &["localauthority", "x509", "revoke", "-authorityID", &old_id],
    )
    .await;
    let removed = next_rotation(&mut rotations, tainted.sequence_number + 1).await;
    rotate(&peers_).await;
    next_rotation(&mut rotations, removed.sequence_number + 1).await;
    stored.push(attest(&peers_, &store, &source, "under-fourth", None).await);

    // The revoked events: exactly the two attestations with a chain under the second CA.
    let mut seen = BTreeMap::new();
    while seen.len() < 2 {
        let message = tokio::time::timeout(TIMEOUT, revocations.next())
            .await
            .expect("a revoked event in time")
            .expect("the subscription is open");
        let event = countersign_events::decode::<AttestationEvent>(
            message.headers.as_ref(),
            &message.payload,
            &countersign_events::DecodeLimits::default(),
        )
        .expect("an attestation.revoked event");
        let revoked = event.data.revocation().expect("a revocation").clone();
        assert_eq!(revoked.authority, second_ca);
        assert_eq!(revoked.how, RevocationKind::Tainted);
        assert_eq!(revoked.sequence_number, tainted.sequence_number);
        assert_eq!(event.id, format!("{}:revoked", revoked.taskrun.uid));
        seen.insert(revoked.taskrun.name.clone(), revoked.chains.clone());
    }
    assert_eq!(
        seen,
        BTreeMap::from([
            (
                "results-under-second".to_owned(),
                vec![SigningChain::Results]
            ),
            ("under-second".to_owned(), vec![SigningChain::Signer]),
        ])
    );
    // Each marked in the store; the others not.
    for event in &stored {
        let taskrun = event.data.taskrun();
        let marked = store.revocation(&taskrun.uid).await.expect("reading");
        assert_eq!(
            marked.is_some(),
            seen.contains_key(&taskrun.name),
            "{}",
            taskrun.name
        );
    }
    // Once: the consumer settles the bundle events, and a second pass (a redelivery, a replay)
    // revokes nothing and publishes nothing.
    let last_trust_message = peers_
        .bus
        .message_count(countersign_events::StreamKind::Trust)
        .await;
    peers_
        .bus
        .wait_consumer_settled(
            countersign_events::StreamKind::Trust,
            "attestor-revocations",
            last_trust_message,
        )
        .await;
    assert_eq!(
        revoker
            .revoke_under(&revoked_authorities(&tainted))
            .await
            .expect("a second pass"),
        0
    );
    let revoked_in_stream = wait::until(
        "the revoked events in the attestations stream",
        TIMEOUT,
        || async {
            let count = peers_
                .bus
                .stream_messages(countersign_events::StreamKind::Attestations)
                .await
                .into_iter()
                .filter(|message| message.subject.contains(".attestation.revoked."))
                .count();
            (count >= 2).then_some(count)
        },
    )
    .await
    .expect("in the stream");
    assert_eq!(revoked_in_stream, 2);

    // Offline, from the history alone: the other signers verify at their time; the revoked
    // signer's is refused as revoked.
    let history_store = peers_
        .bus
        .bus
        .ensure_kv(&history_bucket(&Default::default()))
        .await
        .expect("the history bucket");
    let records: Vec<BundleRecord> = Bucket::<BundleRecord>::new(history_store)
        .snapshot(None)
        .await
        .expect("a snapshot")
        .into_iter()
        .filter_map(|entry| match entry.value {
            SnapshotValue::Value(record) => Some(record),
            _ => None,
        })
        .collect();
    let history = BundleHistory::new(records).expect("the history agrees with itself");
    let mut verified = BTreeSet::new();
    for event in &stored {
        let name = event.data.taskrun().name.clone();
        match verify_signer_from_history(&history, event) {
            Ok(_) => {
                verified.insert(name);
            }
            Err(PointInTimeError::AuthorityRevoked { authority, .. }) => {
                assert_eq!(name, "under-second");
                assert_eq!(authority, second_ca);
            }
            Err(other) => panic!("{name}: {other}"),
        }
    }
    assert_eq!(
        verified,
        BTreeSet::from(
            [
                "under-first",
                "under-third",
                "results-under-second",
                "under-fourth"
            ]
            .map(str::to_owned)
        )
    );

    token.cancel();
    consuming
        .await
        .expect("the consumer task")
        .expect("the consumer stops cleanly");
    registrar.stop_drained().await;
}
