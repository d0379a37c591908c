//! The CloudEvents sink the relay delivers to in the demo: an HTTP endpoint on 127.0.0.1 that
//! takes binary-mode CloudEvents (`ce-*` headers), answers 202 Accepted, records each delivery
//! in the [`Observer`] and prints it, as a Knative broker or a Triggers EventListener would
//! receive it.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::bus::{Observer, SinkDelivery};
use super::report::{Origin, Reporter};

/// A running sink. Dropping it stops it.
#[derive(Debug)]
pub struct Sink {
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

#[derive(Debug, Clone)]
struct SinkState {
    observer: Observer,
    reporter: Reporter,
}

impl Sink {
    /// Starts the sink on a free port of 127.0.0.1.
    pub async fn start(observer: Observer, reporter: Reporter) -> std::io::Result<Sink> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let router = Router::new()
            .fallback(receive)
            .with_state(SinkState { observer, reporter });
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Sink {
            address,
            stop: Some(stop),
            task,
        })
    }

    /// `http://127.0.0.1:<port>/`
    pub fn url(&self) -> String {
        format!("http://{}/", self.address)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

async fn receive(
    State(state): State<SinkState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let delivery = SinkDelivery {
        id: header("ce-id"),
        event_type: header("ce-type"),
        subject: header("ce-subject"),
    };
    if delivery.id.is_empty() || delivery.event_type.is_empty() {
        state.reporter.line(
            Origin::Sink,
            "received a request that is not a binary-mode CloudEvent: 400",
        );
        return StatusCode::BAD_REQUEST;
    }
    state.reporter.line(
        Origin::Sink,
        format!(
            "the relay delivered {} about {} (ce-id {}, {} bytes of JSON): 202 Accepted",
            delivery.event_type,
            delivery.subject,
            delivery.id,
            body.len()
        ),
    );
    state.observer.record_delivery(delivery);
    StatusCode::ACCEPTED
}
