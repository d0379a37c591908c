//! A Countersign service run in-process on the runtime's skeleton, as its `main` would run it but
//! with a channel instead of SIGTERM (mini-redis style): [`RunningService::start`] binds a free
//! loopback admin port, spawns [`run_service`] with the service's `run` function, and hands back
//! its [`Context`] (readiness, metrics) and admin address. Stopping it drains as SIGTERM would,
//! and returns the [`RunOutcome`]; dropping it asks it to stop and leaves the rest to the test's
//! runtime.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use countersign_runtime::health::ReadinessStatus;
use countersign_runtime::{BoxError, Context, RunOutcome, run_service};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a service may take to become ready, or to stop.
pub const TIMEOUT: Duration = Duration::from_secs(90);

/// The readiness latch held from [`RunningService::start`] until the service's task has started.
pub const SPAWNING_LATCH: &str = "service task spawned";

/// A service running in-process.
pub struct RunningService<C> {
    /// Its context: readiness, metrics, shutdown, configuration.
    pub context: Context<C>,
    /// Its admin server's address (`/livez`, `/readyz`, `/metrics`).
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<RunOutcome>>,
}

impl<C> std::fmt::Debug for RunningService<C> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RunningService")
            .field("service", &self.context.service_name)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

impl<C: Send + Sync + 'static> RunningService<C> {
    /// Starts `run` with `context` on a free admin port, draining within `grace_period` when
    /// stopped. Does not wait for readiness (see [`RunningService::wait_ready`]).
    pub async fn start<F, Fut, E>(context: Context<C>, grace_period: Duration, run: F) -> Self
    where
        F: FnOnce(Context<C>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a free admin port");
        let admin = listener.local_addr().expect("the admin address");
        let (stop, stopped) = oneshot::channel::<()>();
        // Until the spawned task first polls `run_service`, nothing holds a latch and readiness
        // reads "ready": hold one until `run_service` has taken its own (it takes them before its
        // first await), so `wait_ready` right after `start` cannot return early.
        let spawning = context.readiness.latch(SPAWNING_LATCH);
        let service = run_service(
            context.clone(),
            listener,
            grace_period,
            async move {
                let _ = stopped.await;
            },
            run,
        );
        let task = tokio::spawn(async move {
            let mut service = std::pin::pin!(service);
            let first = futures::poll!(service.as_mut());
            spawning.release();
            match first {
                std::task::Poll::Ready(outcome) => outcome,
                std::task::Poll::Pending => service.await,
            }
        });
        RunningService {
            context,
            admin,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Waits until every readiness latch is released (what `/readyz` answers 200 to); panics
    /// with the pending latches after [`TIMEOUT`], or when the service is draining instead.
    pub async fn wait_ready(&self) {
        let readiness = &self.context.readiness;
        let status = tokio::time::timeout(TIMEOUT, readiness.wait_ready())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} is not ready: {}",
                    self.context.service_name,
                    readiness.status()
                )
            });
        assert_eq!(
            status,
            ReadinessStatus::Ready,
            "{} is not ready",
            self.context.service_name
        );
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> String {
        self.context.metrics.encode()
    }

    /// The value of one series of `/metrics` (0 when absent), written as exposed, e.g.
    /// `countersign_events_consumed_total{consumer="relay-a",outcome="ack"}`.
    pub fn metric(&self, series: &str) -> f64 {
        crate::metrics::value(&self.metrics(), series)
    }

    /// Asks the service to stop (as SIGTERM would), without waiting.
    pub fn request_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Whether the service has ended.
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the service (as SIGTERM would) and returns how it ended.
    pub async fn stop(mut self) -> RunOutcome {
        self.request_stop();
        self.wait_finished().await
    }

    /// Stops the service and asserts that it drained within its grace period.
    pub async fn stop_drained(self) {
        let name = self.context.service_name.clone();
        let outcome = self.stop().await;
        assert!(
            matches!(outcome, RunOutcome::Drained { .. }),
            "{name} did not drain: {outcome:?}"
        );
    }

    /// Waits, without asking it to stop, until the service ends on its own (it failed, say), and
    /// returns how it ended.
    pub async fn wait_finished(mut self) -> RunOutcome {
        let task = self.task.take().expect("the service task is awaited once");
        tokio::time::timeout(TIMEOUT, task)
            .await
            .unwrap_or_else(|_| panic!("{} did not end in time", self.context.service_name))
            .unwrap_or_else(|error| panic!("the task of {}: {error}", self.context.service_name))
    }
}

impl<C> Drop for RunningService<C> {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_service_just_started_is_not_ready_before_its_task_runs() {
        let context = Context::new("held", ());
        let service = RunningService::start(context, Duration::from_secs(1), |ctx| async move {
            let held = ctx.readiness.latch("held by the service");
            ctx.shutdown.cancelled().await;
            drop(held);
            Ok::<(), std::io::Error>(())
        })
        .await;
        // On this current-thread runtime the spawned task has not run yet: without the spawning
        // latch, readiness would read "ready" here.
        assert!(!service.context.readiness.status().is_ready());
        crate::wait::until("the service to take its latch", TIMEOUT, || {
            let status = service.context.readiness.status();
            async move {
                status
                    .to_string()
                    .contains("held by the service")
                    .then_some(())
            }
        })
        .await
        .expect("the service's own latch");
        assert!(!service.context.readiness.status().is_ready());
        service.stop_drained().await;
    }
}
