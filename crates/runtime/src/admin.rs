//! The admin HTTP server: `/livez`, `/readyz` and `/metrics` on the `[admin] listen` address.
//!
//! - `/livez`: 200 `live` while the process serves requests (the runtime and its main loop are up).
//! - `/readyz`: 200 `ready` once every readiness latch is released and the service is not
//!   draining; otherwise 503 with `waiting for: <latch names>` or `draining`.
//! - `/metrics`: the registry in the OpenMetrics text format.
//!
//! Like the rest of the runtime it takes an already-bound listener, so tests bind `127.0.0.1:0`
//! and read the address back ([`bind_admin`], then `local_addr`).

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use crate::http_server::{HttpServerLimits, serve_http};
use tokio_util::sync::CancellationToken;

use crate::health::{Readiness, ReadinessStatus};
use crate::metrics::{Metrics, OPENMETRICS_CONTENT_TYPE};

/// What the admin endpoints report on.
#[derive(Clone, Debug)]
pub struct AdminState {
    /// Backs `/readyz`.
    pub readiness: Readiness,
    /// Backs `/metrics`.
    pub metrics: Metrics,
}

/// Why the admin listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("binding the admin server to {address}: {source}")]
pub struct BindError {
    pub address: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Why the admin server stopped serving before it was told to.
#[derive(Debug, thiserror::Error)]
#[error("the admin server failed: {source}")]
pub struct ServeError {
    #[source]
    pub source: std::io::Error,
}

/// Binds the admin listener (`[admin] listen`).
pub async fn bind_admin(address: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| BindError { address, source })
}

/// The admin routes, for serving on a listener of the caller's own.
pub fn admin_router(state: AdminState) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves the admin routes on `listener` until `stop` is cancelled, then finishes open requests.
pub async fn serve_admin(
    listener: TcpListener,
    state: AdminState,
    stop: CancellationToken,
) -> Result<(), ServeError> {
    serve_http(
        listener,
        admin_router(state),
        HttpServerLimits::DEFAULT,
        async move { stop.cancelled().await },
    )
    .await
    .map_err(|source| ServeError { source })
}

async fn livez() -> &'static str {
    "live\n"
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let status = state.readiness.status();
    let code = match status {
        ReadinessStatus::Ready => StatusCode::OK,
        ReadinessStatus::Pending(_) | ReadinessStatus::Draining => StatusCode::SERVICE_UNAVAILABLE,
    };
    (code, format!("{status}\n")).into_response()
}

async fn metrics(State(state): State<AdminState>) -> Response {
    (
        [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
        state.metrics.encode(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    async fn get_path(state: &AdminState, path: &str) -> (StatusCode, String) {
        let response = admin_router(state.clone())
            .oneshot(
                Request::get(path)
                    .body(Body::empty())
                    .expect("a valid request"),
            )
            .await
            .expect("the router is infallible");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("a small body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn state() -> AdminState {
        AdminState {
            readiness: Readiness::new(),
            metrics: Metrics::empty(),
        }
    }

    #[tokio::test]
    async fn readyz_lists_pending_latches_with_503() {
        let state = state();
        let latch = state.readiness.latch("nats connected");
        let (status, body) = get_path(&state, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("nats connected"), "{body}");
        latch.release();
        let (status, _) = get_path(&state, "/readyz").await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn readyz_is_503_while_draining() {
        let state = state();
        state.readiness.start_draining();
        let (status, body) = get_path(&state, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("draining"), "{body}");
        let (status, _) = get_path(&state, "/livez").await;
        assert_eq!(status, StatusCode::OK, "a draining service is still alive");
    }

    #[tokio::test]
    async fn metrics_are_served_as_openmetrics() {
        let state = state();
        let counter: prometheus_client::metrics::counter::Counter = Default::default();
        state
            .metrics
            .register("test_events", "Events", counter.clone());
        counter.inc();
        let response = admin_router(state.clone())
            .oneshot(
                Request::get("/metrics")
                    .body(Body::empty())
                    .expect("a valid request"),
            )
            .await
            .expect("the router is infallible");
        assert_eq!(
            response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some(OPENMETRICS_CONTENT_TYPE)
        );
        let (_, body) = get_path(&state, "/metrics").await;
        assert!(body.contains("countersign_test_events_total 1"), "{body}");
    }
}
