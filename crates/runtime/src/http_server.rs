//! Serving an axum `Router` on a listener with the limits an HTTP server facing the network
//! needs, for the admin server and the watcher's CloudEvents ingress.
//!
//! `axum::serve` waits for ever: a client that sends half its headers, or its headers and then
//! nothing of the body it announced, holds a connection and a task open until it goes away. Here:
//!
//! - the request headers must arrive within [`HttpServerLimits::header_read_timeout`], else the
//!   connection is closed (hyper's `header_read_timeout`; it also bounds an idle keep-alive
//!   connection's wait for its next request);
//! - the whole request, body included, must be handled within
//!   [`HttpServerLimits::request_timeout`], else the answer is `408 Request Timeout` and the
//!   connection is closed.
//!
//! Body sizes are the router's own (`DefaultBodyLimit`), so each server keeps its own cap and its
//! own answer to a body over it. Connections are HTTP/1.1. On shutdown the listener stops
//! accepting, every connection finishes the request it is serving, and [`serve_http`] returns once
//! all have closed.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a failed `accept` (out of file descriptors, say) waits before the next one.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The time limits of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpServerLimits {
    /// How long the request line and headers may take to arrive. Default 10 s.
    pub header_read_timeout: Duration,
    /// How long a whole request may take, from its headers to the response (reading the body
    /// included). Default 60 s.
    pub request_timeout: Duration,
}

impl HttpServerLimits {
    /// 10 s for the headers, 60 s for the whole request.
    pub const DEFAULT: HttpServerLimits = HttpServerLimits {
        header_read_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(60),
    };
}

impl Default for HttpServerLimits {
    fn default() -> Self {
        HttpServerLimits::DEFAULT
    }
}

/// Serves `router` on `listener` with `limits` until `shutdown` completes, then lets every
/// connection finish its request in flight and returns.
pub async fn serve_http(
    listener: TcpListener,
    router: Router,
    limits: HttpServerLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let request_timeout = limits.request_timeout;
    let router = router.layer(axum::middleware::from_fn(
        move |request: Request, next: Next| time_out_request(request_timeout, request, next),
    ));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let stop = CancellationToken::new();
    let connections = TaskTracker::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    tracing::debug!(%error, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let connection = builder.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        let stop = stop.clone();
        connections.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                () = stop.cancelled() => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        });
    }
    drop(listener);
    stop.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Answers `408` and closes the connection when the request is not handled within `limit`.
async fn time_out_request(limit: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_elapsed) => (
            StatusCode::REQUEST_TIMEOUT,
            [(header::CONNECTION, "close")],
            "the request was not completed in time\n",
        )
            .into_response(),
    }
}
