//! The HTTP server's limits against a real client on a raw socket: a request whose body stalls
//! after its headers is answered 408 and closed within the request timeout, and a connection that
//! never finishes its headers is closed within the header-read timeout.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use countersign_runtime::http_server::{HttpServerLimits, serve_http};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Far longer than either limit below: the test fails rather than hangs.
const BOUND: Duration = Duration::from_secs(20);

const LIMITS: HttpServerLimits = HttpServerLimits {
    header_read_timeout: Duration::from_millis(500),
    request_timeout: Duration::from_secs(1),
};

/// Starts a server whose one route reads the whole body; returns its address and the stop token.
async fn start() -> (std::net::SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding");
    let address = listener.local_addr().expect("an address");
    let router = Router::new().route(
        "/",
        post(|body: Bytes| async move { format!("{}", body.len()) }),
    );
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move { serve_http(listener, router, LIMITS, stop.cancelled_owned()).await }
    });
    (address, stop)
}

/// Reads until the server closes the connection (or the bound passes); returns what was read.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    tokio::time::timeout(BOUND, stream.read_to_end(&mut received))
        .await
        .expect("the server closes the connection within the bound")
        .expect("reading the answer");
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test]
async fn a_complete_request_is_answered() {
    let (address, stop) = start().await;
    let mut stream = TcpStream::connect(address).await.expect("connecting");
    stream
        .write_all(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        )
        .await
        .expect("writing");
    let answer = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with('5'), "{answer}");
    stop.cancel();
}

#[tokio::test]
async fn a_body_stalled_after_its_headers_is_cut_off_with_408() {
    let (address, stop) = start().await;
    let mut stream = TcpStream::connect(address).await.expect("connecting");
    let started = tokio::time::Instant::now();
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\npartial")
        .await
        .expect("writing the headers and part of the body");
    let answer = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        started.elapsed() < BOUND,
        "cut off after {:?}",
        started.elapsed()
    );
    stop.cancel();
}

#[tokio::test]
async fn headers_that_never_finish_close_the_connection() {
    let (address, stop) = start().await;
    let mut stream = TcpStream::connect(address).await.expect("connecting");
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("writing half the headers");
    let answer = read_until_closed(&mut stream).await;
    // hyper closes the connection (with a 408 or without a word); it never answers 200.
    assert!(!answer.contains("200"), "{answer}");
    stop.cancel();
}

#[tokio::test]
async fn shutdown_waits_for_the_request_in_flight_then_returns() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding");
    let address = listener.local_addr().expect("an address");
    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let entered_tx = std::sync::Arc::new(std::sync::Mutex::new(Some(entered_tx)));
    let release_rx = std::sync::Arc::new(tokio::sync::Mutex::new(Some(release_rx)));
    let router = Router::new().route(
        "/",
        post(move || {
            let entered_tx = entered_tx.clone();
            let release_rx = release_rx.clone();
            async move {
                if let Some(tx) = entered_tx.lock().expect("lock").take() {
                    let _ = tx.send(());
                }
                if let Some(rx) = release_rx.lock().await.take() {
                    let _ = rx.await;
                }
                "done"
            }
        }),
    );
    let stop = CancellationToken::new();
    let server = tokio::spawn({
        let stop = stop.clone();
        async move { serve_http(listener, router, LIMITS, stop.cancelled_owned()).await }
    });
    let mut stream = TcpStream::connect(address).await.expect("connecting");
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        .await
        .expect("writing");
    tokio::time::timeout(BOUND, entered_rx)
        .await
        .expect("the handler runs")
        .expect("the handler signals");
    stop.cancel();
    release_tx.send(()).expect("the handler waits");
    let answer = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    tokio::time::timeout(BOUND, server)
        .await
        .expect("the server returns after its last connection")
        .expect("the server task")
        .expect("serving");
}
