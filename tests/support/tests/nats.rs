//! Smoke test: the nats-server the harness starts is real, with JetStream; and so is its
//! cluster, whose R3 streams survive losing a node.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use countersign_test_support::nats::{NatsCluster, NatsServer};
use countersign_test_support::wait;
use futures::StreamExt;

const WAIT: Duration = Duration::from_secs(10);

async fn next_message(messages: &mut pull::Stream) -> jetstream::Message {
    tokio::time::timeout(WAIT, messages.next())
        .await
        .expect("a message within the timeout")
        .expect("the stream is open")
        .expect("a message, not an error")
}

#[tokio::test]
async fn jetstream_publish_consume_ack_and_redelivery_after_nak() {
    let server = NatsServer::start().await.unwrap();
    let js = server.jetstream().await;
    let stream = js
        .create_stream(stream::Config {
            name: "SMOKE".into(),
            subjects: vec!["smoke.>".into()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();

    let ack = js
        .publish("smoke.one", "first".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.stream, "SMOKE");
    assert_eq!(ack.sequence, 1);

    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("smoke".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();

    let first = next_message(&mut messages).await;
    assert_eq!(first.payload.as_ref(), b"first");
    assert_eq!(first.info().unwrap().delivered, 1);
    first.ack_with(AckKind::Nak(None)).await.unwrap();

    // A nak'd message comes back, marked as a second delivery.
    let again = next_message(&mut messages).await;
    assert_eq!(again.payload.as_ref(), b"first");
    assert_eq!(again.info().unwrap().delivered, 2);
    again.double_ack().await.unwrap();

    js.publish("smoke.two", "second".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let second = next_message(&mut messages).await;
    assert_eq!(second.payload.as_ref(), b"second");
    second.double_ack().await.unwrap();

    // Both acks are durable: nothing is pending on the consumer.
    let mut consumer = stream.get_consumer::<pull::Config>("smoke").await.unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(info.num_ack_pending, 0);
    assert_eq!(info.num_pending, 0);
    assert_eq!(info.delivered.stream_sequence, 2);
}

#[tokio::test]
async fn restart_keeps_the_port_and_the_store() {
    let mut server = NatsServer::start().await.unwrap();
    let js = server.jetstream().await;
    js.create_stream(stream::Config {
        name: "KEEP".into(),
        subjects: vec!["keep".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap();
    js.publish("keep", "durable".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let port = server.port();

    server.restart().await.unwrap();

    assert_eq!(server.port(), port);
    let js = server.jetstream().await;
    let mut stream = js.get_stream("KEEP").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
}

#[tokio::test]
async fn two_servers_do_not_share_ports_or_stores() {
    let (a, b) = tokio::join!(NatsServer::start(), NatsServer::start());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.port(), b.port());
    assert_ne!(a.store_dir(), b.store_dir());
    a.jetstream().await.create_stream("ONLY_A").await.unwrap();
    let names: Vec<String> = b
        .jetstream()
        .await
        .stream_names()
        .map(|n| n.unwrap())
        .collect()
        .await;
    assert!(names.is_empty(), "server b sees {names:?}");
}

#[tokio::test]
async fn a_server_that_cannot_bind_fails_fast_with_its_log() {
    let mut server = NatsServer::start().await.unwrap();
    server.stop();
    // Someone else takes the port while the server is down.
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", server.port())).unwrap();

    let started = std::time::Instant::now();
    let failure = server.restart().await.unwrap_err();

    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        failure.log_tail.contains("address already in use"),
        "{failure}"
    );
}

/// Publishes `payload` on `subject` until it is acknowledged (a stream leader may be being
/// elected), under a timeout.
async fn publish_acked(js: &jetstream::Context, subject: &str, payload: &'static str) {
    wait::until(
        &format!("{subject} to be acknowledged"),
        Duration::from_secs(60),
        || async {
            let sent = js.publish(subject.to_owned(), payload.into()).await.ok()?;
            sent.await.ok()
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn an_r3_stream_keeps_every_message_through_the_loss_of_a_node_which_catches_up() {
    let mut cluster = NatsCluster::start(3).await.unwrap();
    assert_eq!(cluster.urls().split(',').count(), 3);
    let js = jetstream::new(cluster.client().await.unwrap());
    js.create_stream(stream::Config {
        name: "R3".into(),
        subjects: vec!["r3.>".into()],
        storage: stream::StorageType::File,
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    for _ in 0..10 {
        publish_acked(&js, "r3.before", "before").await;
    }

    // The client may be connected to the killed node: it fails over to another.
    cluster.kill(0);
    assert!(!cluster.is_running(0));
    for _ in 0..10 {
        publish_acked(&js, "r3.during", "during").await;
    }

    cluster.restart(0).await.unwrap();
    assert!(cluster.is_running(0));
    // Node n0 rejoins and catches up: every replica current, none offline.
    wait::until_true(
        "every replica of R3 to be current",
        Duration::from_secs(60),
        || async {
            let Ok(mut stream) = js.get_stream("R3").await else {
                return false;
            };
            let Ok(info) = stream.info().await else {
                return false;
            };
            let Some(raft) = info.cluster.as_ref() else {
                return false;
            };
            let mut members: Vec<&str> = raft
                .replicas
                .iter()
                .map(|peer| peer.name.as_str())
                .collect();
            members.extend(raft.leader.as_deref());
            members.sort_unstable();
            members == ["n0", "n1", "n2"]
                && raft
                    .replicas
                    .iter()
                    .all(|peer| peer.current && !peer.offline)
        },
    )
    .await
    .unwrap();
    let mut stream = js.get_stream("R3").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 20);
}
