//! The shared NATS connection against a real nats-server.

use std::time::Duration;

use countersign_runtime::nats::{NatsConfig, connect};
use countersign_test_support::nats::NatsServer;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn connect_waits_for_a_server_that_is_down_at_start_up() {
    let mut server = NatsServer::start().await.unwrap();
    server.stop();
    let config = NatsConfig::for_url(server.url());
    let shutdown = CancellationToken::new();
    let connecting = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { connect(&config, "countersign-test", &shutdown).await }
    });
    server.restart().await.unwrap();

    let client = tokio::time::timeout(Duration::from_secs(30), connecting)
        .await
        .expect("connected once the server came back")
        .unwrap()
        .unwrap()
        .expect("not shut down");
    client.flush().await.unwrap();
    assert_eq!(client.server_info().port, server.port());
}
