//! The real `countersign` binary with the trust bundle history: a real SPIRE server (short
//! `ca_ttl`) rotates its CA with `spire-server localauthority x509`, each bundle it publishes is
//! recorded in the history bucket of a real nats-server (as the registrar records them), and
//! attestations signed with X509-SVIDs the server mints are checked by `countersign verify
//! --bundle-history` against the file `countersign bundles export` wrote: at their signing time,
//! offline, each refusal with its own reason; and by `countersign verify
//! --bundle-history-from-nats` against the bucket itself, which also refuses, as `get` does, an
//! attestation the attestor marked revoked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use countersign_cli::exit_code;
use countersign_events::EventPayload as _;
use countersign_events::data::TaskRunRef;
use countersign_events::kv::Bucket;
use countersign_identity::crypto::Sha256Digest;
use countersign_identity::spiffe_id::TrustDomain;
use countersign_identity::svid::{SigningSvid, TrustBundleSet};
use countersign_identity::tekton::VerifiedValue;
use countersign_test_support::nats::NatsServer;
use countersign_test_support::spire::{Spire, SpireOptions};
use countersign_verdict::attestation::{AttestationFacts, attest_in_context};
use countersign_verdict::bundle_history::{BundleHistoryFile, BundleRecord};
use countersign_verdict::decide::{Decision, VerifiedDecision};
use countersign_verdict::revocation::{RevokedAuthority, revocation_event};
use countersign_verdict::steps::VerifiedStep;
use countersign_verdict::store::AttestationStore;

const COUNTERSIGN: &str = env!("CARGO_BIN_EXE_countersign");
const ATTESTOR: &str = "spiffe://example.org/countersign/attestor";

fn countersign(nats: &NatsServer, args: &[&str]) -> Output {
    std::process::Command::new(COUNTERSIGN)
        .args(["--nats-url", &nats.url()])
        .args(args)
        .env_remove("COUNTERSIGN_TRUST_DOMAIN")
        .env_remove("COUNTERSIGN_ATTESTOR_ID")
        .env_remove("COUNTERSIGN_PREFIX")
        .output()
        .expect("running countersign")
}

fn code(output: &Output) -> u8 {
    u8::try_from(output.status.code().unwrap_or(-1)).unwrap_or(u8::MAX)
}

fn verify(nats: &NatsServer, attestation: &Path, history: &Path) -> (u8, serde_json::Value) {
    let output = countersign(
        nats,
        &[
            "verify",
            "--attestation",
            attestation.to_str().expect("UTF-8"),
            "--bundle-history",
            history.to_str().expect("UTF-8"),
            "--trust-domain",
            "example.org",
            "--json",
        ],
    );
    let document = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "{error}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (code(&output), document)
}

/// `verify --bundle-history-from-nats`: the history from the bucket, not a file.
fn verify_from_nats(nats: &NatsServer, attestation: &Path) -> (u8, serde_json::Value) {
    let output = countersign(
        nats,
        &[
            "verify",
            "--attestation",
            attestation.to_str().expect("UTF-8"),
            "--bundle-history-from-nats",
            "--trust-domain",
            "example.org",
            "--json",
        ],
    );
    let document = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "{error}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (code(&output), document)
}

async fn spire_server(spire: &Spire, args: &[&str]) -> serde_json::Value {
    spire.server_cli(args).await.expect("spire-server")
}

fn base64_field(value: &serde_json::Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(value.as_str().expect("base64 text"))
        .expect("base64")
}

/// The server's bundle now: its sequence number and `(DER, tainted)` CAs.
async fn bundle(spire: &Spire) -> (u64, Vec<(Vec<u8>, bool)>) {
    let shown = spire_server(spire, &["bundle", "show"]).await;
    let sequence = shown["sequence_number"]
        .as_str()
        .and_then(|text| text.parse().ok())
        .or_else(|| shown["sequence_number"].as_u64())
        .expect("a sequence number");
    let authorities = shown["x509_authorities"]
        .as_array()
        .expect("authorities")
        .iter()
        .map(|authority| {
            (
                base64_field(&authority["asn1"]),
                authority["tainted"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    (sequence, authorities)
}

/// Records the server's current bundle, as the registrar does.
async fn record(spire: &Spire, bucket: &Bucket<BundleRecord>) -> BundleRecord {
    let (sequence, authorities) = bundle(spire).await;
    let record = BundleRecord::new(
        &TrustDomain::new("example.org").expect("a trust domain"),
        sequence,
        authorities,
        Utc::now(),
    )
    .expect("a record");
    bucket
        .create(&record.key().expect("a key"), &record)
        .await
        .expect("recording");
    record
}

/// An attestation event's data, signed with an SVID minted under the active CA: a `no_results`
/// one, or, with `results_authority`, a `verified` one whose results' SVID that CA issued.
async fn attestation(
    spire: &Spire,
    dir: &Path,
    name: &str,
    results_authority: Option<String>,
) -> PathBuf {
    let minted = spire.mint_x509(ATTESTOR).await.expect("an SVID minted");
    let svid = SigningSvid::new(minted.chain, &minted.private_key).expect("an SVID");
    let (_, authorities) = bundle(spire).await;
    let mut bundles = TrustBundleSet::new();
    bundles
        .add_der(
            TrustDomain::new("example.org").expect("a trust domain"),
            authorities.into_iter().map(|(der, _)| der),
        )
        .expect("CAs");
    let taskrun = TaskRunRef {
        cluster: "test".to_owned(),
        namespace: "default".to_owned(),
        name: name.to_owned(),
        uid: format!("uid-{name}"),
    };
    let decided_at: DateTime<Utc> = Utc::now();
    let decision = match results_authority {
        Some(authority) => Decision::Verified(VerifiedDecision {
            results: BTreeMap::from([(
                "IMAGE_DIGEST".to_owned(),
                VerifiedValue {
                    raw: format!("sha256:{}", "a".repeat(64)),
                    canonical: format!("sha256:{}", "a".repeat(64)),
                },
            )]),
            signer_step: "build".to_owned(),
            signer: VerifiedStep {
                spiffe_id: format!("spiffe://example.org/ns/default/taskrun/{name}"),
                svid_fingerprint: "0".repeat(64),
                signed_at: decided_at,
                issuing_authority: Some(authority),
                results: BTreeMap::new(),
                checks: Vec::new(),
            },
            trust_bundle_digest: bundles.digest().to_hex(),
            checks: Vec::new(),
        }),
        None => Decision::NoResults,
    };
    let event = attest_in_context(
        &decision,
        AttestationFacts {
            taskrun: &taskrun,
            created: decided_at,
            finished: Some(decided_at),
            decided_at,
            current_bundle_digest: &bundles.digest().to_hex(),
        },
        &bundles,
        &svid,
    )
    .expect("signing");
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, event.to_json().expect("serializes")).expect("writing");
    path
}

fn write_history(dir: &Path, name: &str, records: Vec<BundleRecord>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        serde_json::to_vec(&BundleHistoryFile::new(records)).expect("serializes"),
    )
    .expect("writing");
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn attestations_verify_at_their_signing_time_from_the_exported_history() {
    let (nats, spire) = tokio::join!(
        NatsServer::start(),
        Spire::start(SpireOptions {
            ca_ttl: Some(Duration::from_secs(600)),
            default_x509_svid_ttl: Some(Duration::from_secs(60)),
            ..SpireOptions::default()
        })
    );
    let (nats, spire) = (nats.expect("nats-server"), spire.expect("SPIRE"));
    let jetstream = async_nats::jetstream::new(nats.client().await);
    let store = jetstream
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "COUNTERSIGN_TRUST_BUNDLES".to_owned(),
            history: 64,
            ..Default::default()
        })
        .await
        .expect("the history bucket");
    let bucket: Bucket<BundleRecord> = Bucket::new(store);
    let dir = tempfile::tempdir().expect("a temporary directory");

    let first = record(&spire, &bucket).await;
    let under_first = attestation(&spire, dir.path(), "under-first", None).await;
    let first_ca = Sha256Digest::of(&bundle(&spire).await.1[0].0).to_hex();
    // A rotation: the next CA prepared (a new bundle), then activated.
    spire_server(&spire, &["localauthority", "x509", "prepare"]).await;
    let second = record(&spire, &bucket).await;
    let shown = spire_server(&spire, &["localauthority", "x509", "show"]).await;
    let prepared = shown["prepared"]["authority_id"]
        .as_str()
        .expect("prepared")
        .to_owned();
    spire_server(
        &spire,
        &[
            "localauthority",
            "x509",
            "activate",
            "-authorityID",
            &prepared,
        ],
    )
    .await;
    let under_second = attestation(&spire, dir.path(), "under-second", None).await;
    // Signed under the second CA, over results whose SVID the first CA issued.
    let results_under_first = attestation(
        &spire,
        dir.path(),
        "results-under-first",
        Some(first_ca.clone()),
    )
    .await;

    // Exported before any revocation: both verify, each against the bundle of its time.
    let export = dir.path().join("bundles.json");
    let output = countersign(
        &nats,
        &[
            "bundles",
            "export",
            "--output",
            export.to_str().expect("UTF-8"),
        ],
    );
    assert_eq!(
        code(&output),
        exit_code::OK,
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for (attestation, expected) in [
        (&under_first, &first),
        (&under_second, &second),
        (&results_under_first, &second),
    ] {
        let (status, document) = verify(&nats, attestation, &export);
        assert_eq!(status, exit_code::OK, "{document}");
        // The same from the bucket itself.
        let (from_nats, from_nats_document) = verify_from_nats(&nats, attestation);
        assert_eq!(from_nats, exit_code::OK, "{from_nats_document}");
        assert_eq!(
            from_nats_document["signingBundle"],
            document["signingBundle"]
        );
        assert_eq!(
            document["signingBundle"]["sequenceNumber"],
            expected.sequence_number
        );
        assert_eq!(document["signingBundle"]["bundleDigest"], expected.digest);
        assert_eq!(document["signing"]["signerBundleDigest"], expected.digest);
    }

    // The first CA tainted, then revoked: its attestation is refused, the other still verifies.
    let old =
        spire_server(&spire, &["localauthority", "x509", "show"]).await["old"]["authority_id"]
            .as_str()
            .expect("an old authority")
            .to_owned();
    spire_server(
        &spire,
        &["localauthority", "x509", "taint", "-authorityID", &old],
    )
    .await;
    let tainted = record(&spire, &bucket).await;
    spire_server(
        &spire,
        &["localauthority", "x509", "revoke", "-authorityID", &old],
    )
    .await;
    let removed = record(&spire, &bucket).await;
    assert!(removed.sequence_number > tainted.sequence_number);
    let output = countersign(
        &nats,
        &[
            "bundles",
            "export",
            "--output",
            export.to_str().expect("UTF-8"),
        ],
    );
    assert_eq!(code(&output), exit_code::OK);
    let (status, document) = verify(&nats, &under_first, &export);
    assert_eq!(status, exit_code::REJECTED);
    assert_eq!(document["error"], "authority_revoked", "{document}");
    let (status, document) = verify(&nats, &under_second, &export);
    assert_eq!(status, exit_code::OK, "{document}");
    // Its signer's CA is fine, but the CA its results were verified under is not.
    let (status, document) = verify(&nats, &results_under_first, &export);
    assert_eq!(status, exit_code::REJECTED);
    assert_eq!(document["error"], "authority_revoked", "{document}");
    assert!(
        document["message"]
            .as_str()
            .is_some_and(|message| message.contains(&first_ca)),
        "{document}"
    );
    let (status, document) = verify_from_nats(&nats, &under_first);
    assert_eq!(status, exit_code::REJECTED);
    assert_eq!(document["error"], "authority_revoked", "{document}");
    let (status, document) = verify_from_nats(&nats, &under_second);
    assert_eq!(status, exit_code::OK, "{document}");

    // The attestor's revocation mark (what it writes under `{uid}.revoked`) makes `get` and
    // `verify --bundle-history-from-nats` refuse the attestation, `authority_revoked`.
    let bus = countersign_events::Bus::new(
        nats.client().await,
        countersign_events::BusConfig::default(),
        countersign_events::EventMetrics::new(),
    )
    .expect("a bus");
    let store = AttestationStore::ensure(
        &bus,
        &countersign_events::KvConfig::default(),
        &countersign_events::KvConfig::default(),
    )
    .await
    .expect("the attestation buckets");
    let source = countersign_events::EventSource::service("attestor");
    let stored: countersign_events::AttestationEvent =
        countersign_events::AttestationEvent::from_json(
            countersign_events::EventType::AttestationVerified,
            &std::fs::read(&under_second).expect("the attestation"),
        )
        .expect("attestation data");
    let stored = countersign_events::Event::new(&source, stored);
    store
        .create("uid-under-second", &stored)
        .await
        .expect("stored");
    let output = countersign(&nats, &["get", "--uid", "uid-under-second"]);
    assert_eq!(code(&output), exit_code::OK);
    let revoked = revocation_event(
        &stored.data,
        &RevokedAuthority {
            trust_domain: "example.org".to_owned(),
            authority: "ab".repeat(32),
            how: countersign_events::data::RevocationKind::Tainted,
            sequence_number: removed.sequence_number,
        },
        vec![countersign_events::data::SigningChain::Results],
        Utc::now(),
    );
    let revoked = countersign_events::Event::new(
        &source,
        countersign_events::AttestationEvent::Revoked(revoked),
    );
    store
        .record_revocation("uid-under-second", &revoked)
        .await
        .expect("marked");
    let output = countersign(&nats, &["get", "--uid", "uid-under-second", "--json"]);
    assert_eq!(code(&output), exit_code::REJECTED);
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(printed["type"], "dev.countersign.attestation.revoked.v1");
    let (status, document) = verify_from_nats(&nats, &under_second);
    assert_eq!(status, exit_code::REJECTED);
    assert_eq!(document["error"], "authority_revoked", "{document}");
    // The offline check from the file knows nothing of the mark.
    let (status, document) = verify(&nats, &under_second, &export);
    assert_eq!(status, exit_code::OK, "{document}");

    // A history that disagrees with itself.
    let forged = BundleRecord {
        authorities: first.authorities.clone(),
        digest: first.digest.clone(),
        ..second.clone()
    };
    let conflicting = write_history(
        dir.path(),
        "conflict.json",
        vec![first.clone(), second.clone(), forged],
    );
    let (status, document) = verify(&nats, &under_second, &conflicting);
    assert_eq!(status, exit_code::REJECTED);
    assert_eq!(document["error"], "history_conflict", "{document}");

    // No bundle recorded for the signing time.
    let late = BundleRecord {
        first_seen: Utc::now() + chrono::TimeDelta::days(1),
        ..removed.clone()
    };
    let too_late = write_history(dir.path(), "late.json", vec![late]);
    let (status, document) = verify(&nats, &under_second, &too_late);
    assert_eq!(status, exit_code::REJECTED);
    assert_eq!(document["error"], "no_bundle_at_time", "{document}");

    // The bundle of that time does not hold the CA: the chain does not verify at that time.
    let only_first = write_history(dir.path(), "first.json", vec![first.clone()]);
    let (status, document) = verify(&nats, &under_second, &only_first);
    assert_eq!(status, exit_code::REJECTED);
    assert_eq!(document["error"], "chain_invalid_at_time", "{document}");

    // A malformed history is bad input.
    let malformed = dir.path().join("malformed.json");
    std::fs::write(&malformed, b"{\"version\": 1}").expect("writing");
    let output = countersign(
        &nats,
        &[
            "verify",
            "--attestation",
            under_second.to_str().expect("UTF-8"),
            "--bundle-history",
            malformed.to_str().expect("UTF-8"),
            "--trust-domain",
            "example.org",
        ],
    );
    assert_eq!(code(&output), exit_code::BAD_INPUT);
}

/// With `--timestamp-authority-chain`, the genTime of the attestation's RFC 3161 timestamp (from
/// the real timestamp authority) is its signing time, for `--bundle` and `--bundle-history`
/// alike: an attestation whose signed claim of time lies outside its SVID's validity is refused
/// without the flag and verifies with it, at the TSA's time and against the bundle recorded then.
#[tokio::test(flavor = "multi_thread")]
async fn a_verified_timestamp_is_the_signing_time() {
    use countersign_identity::timestamp::{
        TimestampAuthorityChain, TimestampRequest, verify_response,
    };
    use countersign_test_support::timestamp_authority::TimestampAuthority;
    use countersign_verdict::attestation::timestamped_bytes;

    let (nats, spire, authority) = tokio::join!(
        NatsServer::start(),
        Spire::start(SpireOptions::default()),
        TimestampAuthority::start()
    );
    let (nats, spire, authority) = (
        nats.expect("nats-server"),
        spire.expect("SPIRE"),
        authority.expect("the timestamp authority"),
    );
    let jetstream = async_nats::jetstream::new(nats.client().await);
    let store = jetstream
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "COUNTERSIGN_TRUST_BUNDLES".to_owned(),
            history: 64,
            ..Default::default()
        })
        .await
        .expect("the history bucket");
    let bucket: Bucket<BundleRecord> = Bucket::new(store);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let recorded = record(&spire, &bucket).await;

    // Signed now, but claiming a decision a year from now, when its SVID has long expired.
    let minted = spire.mint_x509(ATTESTOR).await.expect("an SVID minted");
    let svid = SigningSvid::new(minted.chain, &minted.private_key).expect("an SVID");
    let (_, authorities) = bundle(&spire).await;
    let mut bundles = TrustBundleSet::new();
    bundles
        .add_der(
            TrustDomain::new("example.org").expect("a trust domain"),
            authorities.into_iter().map(|(der, _)| der),
        )
        .expect("CAs");
    let taskrun = TaskRunRef {
        cluster: "test".to_owned(),
        namespace: "default".to_owned(),
        name: "stamped".to_owned(),
        uid: "uid-stamped".to_owned(),
    };
    let claimed: DateTime<Utc> = Utc::now() + chrono::TimeDelta::days(365);
    let mut event = attest_in_context(
        &Decision::NoResults,
        AttestationFacts {
            taskrun: &taskrun,
            created: claimed,
            finished: Some(claimed),
            decided_at: claimed,
            current_bundle_digest: &bundles.digest().to_hex(),
        },
        &bundles,
        &svid,
    )
    .expect("signing");
    let signature = timestamped_bytes(event.attestation())
        .expect("base64")
        .expect("a signature");
    let request = TimestampRequest::new(&signature).expect("a request");
    let (status, response) = authority
        .post_request(request.der())
        .await
        .expect("the TSA answers");
    assert_eq!(status, 200);
    let chain = TimestampAuthorityChain::from_pem(authority.chain_pem()).expect("a chain");
    let stamp = verify_response(&response, &request, &chain).expect("a verified timestamp");
    event
        .attestation_mut()
        .rfc3161_timestamps
        .push(base64::engine::general_purpose::STANDARD.encode(stamp.response_der()));
    let attestation = dir.path().join("stamped.json");
    std::fs::write(&attestation, event.to_json().expect("serializes")).expect("writing");
    let bundle_file = dir.path().join("bundle.pem");
    std::fs::write(&bundle_file, spire.bundle_pem()).expect("writing");
    let history = dir.path().join("bundles.json");
    let output = countersign(
        &nats,
        &[
            "bundles",
            "export",
            "--output",
            history.to_str().expect("UTF-8"),
        ],
    );
    assert_eq!(code(&output), exit_code::OK);

    let chain_path = authority.chain_path();
    let run = |source: [&str; 2], with_chain: bool| {
        let mut args = vec![
            "verify",
            "--attestation",
            attestation.to_str().expect("UTF-8"),
            source[0],
            source[1],
            "--trust-domain",
            "example.org",
            "--json",
        ];
        if with_chain {
            args.extend([
                "--timestamp-authority-chain",
                chain_path.to_str().expect("UTF-8"),
            ]);
        }
        let output = countersign(&nats, &args);
        let document: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("JSON output");
        (code(&output), document)
    };
    for source in [
        ["--bundle", bundle_file.to_str().expect("UTF-8")],
        ["--bundle-history", history.to_str().expect("UTF-8")],
    ] {
        let (status, document) = run(source, false);
        assert_eq!(status, exit_code::REJECTED, "{document}");
        let (status, document) = run(source, true);
        assert_eq!(status, exit_code::OK, "{document}");
        let gen_time: DateTime<Utc> =
            serde_json::from_value(document["timestamp"]["genTime"].clone()).expect("genTime");
        assert_eq!(gen_time, stamp.gen_time());
    }
    let (_, document) = run(["--bundle-history", history.to_str().expect("UTF-8")], true);
    assert_eq!(
        document["signingBundle"]["sequenceNumber"],
        recorded.sequence_number
    );
}
