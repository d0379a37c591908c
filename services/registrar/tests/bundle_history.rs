//! The trust bundle history against a real SPIRE server with a short `ca_ttl`: the registrar
//! records every bundle the server publishes and announces it; attestations are signed, as the
//! attestor signs them, with X509-SVIDs the server mints under each CA; three rotations are
//! forced with `spire-server localauthority x509 prepare/activate`, and one old CA is tainted
//! then revoked. Every attestation is then verified offline from the exported history alone
//! (the file `countersign bundles export` writes), at its signing time: those of the revoked CA
//! are refused as revoked, the rest verify though their SVIDs' CAs are rotated out. A different
//! CA set served under an already-recorded sequence number is refused, never overwritten.

mod common;

use std::time::Duration;

use async_nats::Subscriber;
use base64::Engine as _;
use chrono::Utc;
use common::{Harness, TIMEOUT};
use countersign_events::data::{TaskRunRef, TrustBundleRotated};
use countersign_events::kv::{Bucket, Created, SnapshotValue};
use countersign_events::{AttestationEvent, EventSource};
use countersign_identity::attestation::{
    AttestationTime, AttestationVerifier, SignedAttestation, SignerPolicy,
};
use countersign_identity::crypto::Sha256Digest;
use countersign_identity::spiffe_id::{SpiffeId, TrustDomain};
use countersign_identity::svid::{SigningSvid, SvidLeaf, TrustBundleSet, pem_to_ders};
use countersign_registrar::bundle_history::{
    BundleHistoryMetrics, BundleRecorder, Recorded, history_bucket,
};
use countersign_test_support::peers;
use countersign_test_support::spire::SpireOptions;
use countersign_verdict::Decision;
use countersign_verdict::attestation::{
    AttestationEventExt as _, AttestationFacts, attest_in_context,
};
use countersign_verdict::bundle_history::{
    BundleHistory, BundleHistoryFile, BundleRecord, PointInTimeError, Revocation,
};
use futures::StreamExt as _;

const ATTESTOR: &str = "spiffe://example.org/countersign/attestor";

async fn start() -> Harness {
    Harness::start_with(SpireOptions {
        node_name: "node-1".to_owned(),
        ca_ttl: Some(Duration::from_secs(600)),
        default_x509_svid_ttl: Some(Duration::from_secs(60)),
        ..SpireOptions::default()
    })
    .await
}

/// Runs `spire-server <args> -socketPath <socket> -output json` and returns its JSON.
async fn spire_server(harness: &Harness, args: &[&str]) -> serde_json::Value {
    let socket = harness.spire.server_socket_path().display().to_string();
    let output = tokio::process::Command::new(&peers().spire_server.path)
        .args(args)
        .args(["-socketPath", &socket, "-output", "json"])
        .output()
        .await
        .expect("running spire-server");
    assert!(
        output.status.success(),
        "spire-server {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("spire-server writes JSON")
}

/// `localauthority x509 prepare`, then `activate` of the prepared authority.
async fn rotate(harness: &Harness) {
    spire_server(harness, &["localauthority", "x509", "prepare"]).await;
    let shown = spire_server(harness, &["localauthority", "x509", "show"]).await;
    let prepared = shown["prepared"]["authority_id"]
        .as_str()
        .expect("a prepared authority")
        .to_owned();
    spire_server(
        harness,
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

/// The `old` authority's id.
async fn old_authority(harness: &Harness) -> String {
    let shown = spire_server(harness, &["localauthority", "x509", "show"]).await;
    shown["old"]["authority_id"]
        .as_str()
        .expect("an old authority")
        .to_owned()
}

/// An attestor SVID minted by the server under its active CA.
async fn mint_attestor_svid(harness: &Harness) -> SigningSvid {
    let minted = spire_server(harness, &["x509", "mint", "-spiffeID", ATTESTOR]).await;
    let minted = &minted[0];
    let decode = |text: &serde_json::Value| {
        base64::engine::general_purpose::STANDARD
            .decode(text.as_str().expect("base64 text"))
            .expect("base64")
    };
    let chain = minted["x509_svid"]
        .as_array()
        .expect("a chain")
        .iter()
        .map(decode)
        .collect();
    SigningSvid::new(chain, &decode(&minted["private_key"])).expect("a usable SVID")
}

/// The server's bundle now, as the attestor's Workload API would give it.
async fn current_bundles(harness: &Harness) -> TrustBundleSet {
    let bundle = harness.admin.get_bundle().await.expect("the bundle");
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

/// An attestation of a TaskRun without results, signed as the attestor signs.
async fn attestation(harness: &Harness, name: &str) -> (SignedAttestation, String) {
    let svid = mint_attestor_svid(harness).await;
    let bundles = current_bundles(harness).await;
    let taskrun = TaskRunRef {
        cluster: harness.cluster.clone(),
        namespace: "default".to_owned(),
        name: name.to_owned(),
        uid: format!("uid-{name}"),
    };
    let event: AttestationEvent = attest_in_context(
        &Decision::NoResults,
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
    let signed = event.signed_attestation().expect("the event's attestation");
    // The attestor's issuing CA, by its digest: the chain's only CA in the bundle that verifies it.
    let leaf = SvidLeaf::from_der(&svid.chain()[0]).expect("a leaf");
    let trust_domain = leaf.spiffe_id().trust_domain().clone();
    let issuer = bundles
        .authorities(&trust_domain)
        .expect("the trust domain")
        .iter()
        .find(|der| {
            let mut alone = TrustBundleSet::new();
            alone.add_der(trust_domain.clone(), [der.to_vec()]).is_ok()
                && alone.verify_chain(&leaf, &[], Utc::now()).is_ok()
        })
        .map(|der| Sha256Digest::of(der).to_hex())
        .expect("an issuing CA");
    (signed, issuer)
}

/// The next bundle-rotated event.
async fn next_rotation(events: &mut Subscriber) -> TrustBundleRotated {
    let message = tokio::time::timeout(TIMEOUT, events.next())
        .await
        .expect("a bundle-rotated event in time")
        .expect("the subscription is open");
    serde_json::from_slice(&message.payload).expect("bundle-rotated data")
}

/// Bundle-rotated events until one of `sequence_number`.
async fn rotation_up_to(events: &mut Subscriber, sequence_number: u64) -> TrustBundleRotated {
    loop {
        let event = next_rotation(events).await;
        if event.sequence_number >= sequence_number {
            return event;
        }
    }
}

/// What `countersign bundles export` writes: every record of the bucket.
async fn export(harness: &Harness, dir: &std::path::Path) -> std::path::PathBuf {
    let store = harness
        .bus
        .bus
        .ensure_kv(&history_bucket(&Default::default()))
        .await
        .expect("the history bucket");
    let bucket: Bucket<BundleRecord> = Bucket::new(store);
    let records = bucket
        .snapshot(None)
        .await
        .expect("a snapshot")
        .into_iter()
        .filter_map(|entry| match entry.value {
            SnapshotValue::Value(record) => Some(record),
            _ => None,
        })
        .collect();
    let path = dir.join("bundles.json");
    std::fs::write(
        &path,
        serde_json::to_vec(&BundleHistoryFile::new(records)).expect("serializes"),
    )
    .expect("writing the export");
    path
}

/// `countersign verify --bundle-history`'s check, from the file alone.
fn verify_from_history(
    history: &BundleHistory,
    attestation: &SignedAttestation,
) -> Result<u64, PointInTimeError> {
    let mut certificates = pem_to_ders(&attestation.certificates)
        .expect("PEM")
        .into_iter();
    let leaf = SvidLeaf::from_der(&certificates.next().expect("a leaf")).expect("an SVID");
    let intermediates: Vec<Vec<u8>> = certificates.collect();
    let statement: serde_json::Value =
        serde_json::from_slice(attestation.envelope.unverified_payload()).expect("JSON");
    let signed_at = chrono::DateTime::parse_from_rfc3339(
        statement["predicate"]["times"]["verified"]
            .as_str()
            .expect("a time"),
    )
    .expect("RFC 3339")
    .to_utc();
    let claimed = statement["predicate"]["signing"]["signerBundleDigest"].as_str();
    let (_, bundle) = history.bundle_for(leaf.spiffe_id().trust_domain(), signed_at, claimed)?;
    let policy = SignerPolicy::exact(SpiffeId::new(ATTESTOR).expect("an id"));
    AttestationVerifier::new(bundle, &policy)
        .verify(attestation, AttestationTime::ClaimedVerificationTime)
        .expect("the signature verifies against the bundle of its time");
    history
        .verify_chain_at(&leaf, &intermediates, signed_at, claimed)
        .map(|chain| chain.sequence_number)
}

#[tokio::test(flavor = "multi_thread")]
async fn rotations_are_recorded_and_old_attestations_verify_from_the_history_alone() {
    let harness = start().await;
    let client = harness.nats.client().await;
    let mut events = client
        .subscribe("countersign.trust.bundle-rotated.>")
        .await
        .expect("subscribing");
    let mut config = harness.config();
    config.bundle_history.poll_interval = Duration::from_millis(100);
    let registrar = harness.start_registrar(config).await;

    let first = next_rotation(&mut events).await;
    assert_eq!(first.trust_domain, "example.org");
    assert_eq!(first.previous_sequence_number, None);
    let mut signed = vec![("under-first", attestation(&harness, "under-first").await)];

    // Three rotations; the CA active before the third is tainted, then revoked.
    let mut sequence = first.sequence_number;
    for name in ["under-second", "under-third"] {
        rotate(&harness).await;
        let rotated = rotation_up_to(&mut events, sequence + 1).await;
        assert_eq!(rotated.previous_sequence_number, Some(sequence));
        assert_eq!(rotated.authorities.len(), 2 + usize::from(sequence > 1));
        sequence = rotated.sequence_number;
        signed.push((name, attestation(&harness, name).await));
    }
    let revoked_id = old_authority(&harness).await;
    spire_server(
        &harness,
        &[
            "localauthority",
            "x509",
            "taint",
            "-authorityID",
            &revoked_id,
        ],
    )
    .await;
    let tainted = rotation_up_to(&mut events, sequence + 1).await;
    let second_ca = signed[1].1.1.clone();
    assert_eq!(tainted.revoked_authorities, vec![second_ca.clone()]);
    assert!(
        tainted
            .authorities
            .iter()
            .any(|authority| authority.tainted && authority.sha256 == second_ca)
    );
    spire_server(
        &harness,
        &[
            "localauthority",
            "x509",
            "revoke",
            "-authorityID",
            &revoked_id,
        ],
    )
    .await;
    let removed = rotation_up_to(&mut events, tainted.sequence_number + 1).await;
    assert!(
        removed
            .authorities
            .iter()
            .all(|authority| authority.sha256 != second_ca)
    );
    rotate(&harness).await;
    let last = rotation_up_to(&mut events, removed.sequence_number + 1).await;
    signed.push(("under-fourth", attestation(&harness, "under-fourth").await));
    assert_eq!(
        registrar.metric("countersign_registrar_bundles_recorded_total"),
        f64::from(u32::try_from(last.sequence_number).expect("small")),
    );

    // Offline, from the exported file alone.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = export(&harness, dir.path()).await;
    registrar.stop_drained().await;
    let file: BundleHistoryFile =
        serde_json::from_slice(&std::fs::read(&path).expect("the export")).expect("a history");
    let history = BundleHistory::from_file(file).expect("the history agrees with itself");
    assert_eq!(
        history.records().count(),
        usize::try_from(last.sequence_number).expect("small")
    );
    let mut verified_under = Vec::new();
    for (name, (attestation, issuer)) in &signed {
        match verify_from_history(&history, attestation) {
            Ok(sequence_number) => {
                assert_ne!(issuer, &second_ca, "{name} is signed under the revoked CA");
                verified_under.push(sequence_number);
            }
            Err(PointInTimeError::AuthorityRevoked { authority, how, .. }) => {
                assert_eq!(*name, "under-second");
                assert_eq!(authority, second_ca);
                assert_eq!(how, Revocation::Tainted);
            }
            Err(other) => panic!("{name}: {other}"),
        }
    }
    assert_eq!(verified_under.len(), 3, "every other attestation verifies");
    // Each verified against the bundle of its own time, not today's.
    assert!(verified_under.windows(2).all(|pair| pair[0] < pair[1]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_different_ca_set_under_a_recorded_sequence_number_is_refused() {
    let harness = start().await;
    let store = harness
        .bus
        .bus
        .ensure_kv(&history_bucket(&Default::default()))
        .await
        .expect("the history bucket");
    let bucket: Bucket<BundleRecord> = Bucket::new(store);
    let mut recorder = BundleRecorder::new(
        harness.admin.clone(),
        bucket.clone(),
        harness.bus.bus.publisher(EventSource::service("registrar")),
        BundleHistoryMetrics::new(),
    );
    let Recorded::New(first) = recorder.record_current().await.expect("recording") else {
        panic!("the first bundle is new");
    };
    assert_eq!(
        recorder.record_current().await.expect("recording"),
        Recorded::Unchanged {
            sequence_number: first.sequence_number
        }
    );
    // Someone recorded the next sequence number with another CA set (the first bundle's).
    let planted = BundleRecord {
        sequence_number: first.sequence_number + 1,
        ..first.clone()
    };
    assert!(matches!(
        bucket
            .create(&planted.key().expect("a key"), &planted)
            .await
            .expect("planting"),
        Created::Stored(_)
    ));
    spire_server(&harness, &["localauthority", "x509", "prepare"]).await;
    assert_eq!(
        recorder.record_current().await.expect("recording"),
        Recorded::Conflict {
            sequence_number: planted.sequence_number
        }
    );
    let kept = bucket
        .get(&planted.key().expect("a key"))
        .await
        .expect("reading")
        .value
        .expect("still there");
    assert_eq!(kept, planted, "the recorded history is never overwritten");
    // And a verifier refuses a history that disagrees with itself.
    let mut served = kept.clone();
    served.authorities = current_bundles(&harness)
        .await
        .authorities(&TrustDomain::new("example.org").expect("a trust domain"))
        .expect("the trust domain")
        .iter()
        .map(|der| countersign_verdict::bundle_history::AuthorityRecord {
            sha256: Sha256Digest::of(der).to_hex(),
            der: base64::engine::general_purpose::STANDARD.encode(der),
            tainted: false,
        })
        .collect();
    assert!(matches!(
        BundleHistory::new([kept, served]),
        Err(countersign_verdict::bundle_history::HistoryError::Conflict { .. })
    ));
}
