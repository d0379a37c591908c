//! Live runs first: the attestor reads the lifecycle events through two durable consumers on
//! the same subjects, and each event is handled by exactly one of them, by its [`Lane`]:
//!
//! - **live** (durable `attestor`): TaskRuns the watcher published soon after they finished, at
//!   the consumer's full concurrency;
//! - **backlog** (durable `attestor-backlog`): TaskRuns published long after they finished (a
//!   watcher relisting after a restart, a new install on a busy cluster), throttled to
//!   `[backlog] rate` attestations a second at `[backlog] concurrency` handlers, so a backlog of
//!   thousands never queues in front of a TaskRun finishing now.
//!
//! The lane is a pure function of the event ([`lane_of`]: its time, when the watcher published
//! it, against when the TaskRun or step finished), so both consumers agree on every event without
//! talking: each acknowledges the other lane's events unhandled. Nothing is lost (each consumer
//! sees every event and handles its own until acked) and exactly-once attestation holds as it
//! always did (create-if-absent by UID). The backlog lane skips `step-completed`: its `finished`
//! event checks every step itself, so a backlog costs one pass per TaskRun.

use std::time::Duration;

use chrono::{DateTime, Utc};
use countersign_events::{ConsumerConfig, ConsumerSpec, Event, LifecycleEvent, Subjects};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// The durable name of the backlog lane's consumer.
pub const BACKLOG_CONSUMER: &str = "attestor-backlog";

/// `[backlog]`: the backlog lane.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BacklogConfig {
    /// Whether backlog events get their own throttled consumer (otherwise one consumer handles
    /// everything in stream order). Default `true`.
    #[serde(default = "BacklogConfig::default_enabled")]
    pub enabled: bool,
    /// How long after its TaskRun (or step) finished an event may be published and still be
    /// live. Default `60s`.
    #[serde(default = "BacklogConfig::default_after", with = "humantime_serde")]
    pub after: Duration,
    /// Backlog TaskRuns attested per second at most, per replica (0: unthrottled). Default 50.
    #[serde(default = "BacklogConfig::default_rate")]
    pub rate: u32,
    /// Backlog events handled at once, per replica. Default 2.
    #[serde(default = "BacklogConfig::default_concurrency")]
    pub concurrency: usize,
}

impl BacklogConfig {
    const fn default_enabled() -> bool {
        true
    }

    /// Sixty seconds.
    pub const fn default_after() -> Duration {
        Duration::from_secs(60)
    }

    const fn default_rate() -> u32 {
        50
    }

    const fn default_concurrency() -> usize {
        2
    }

    /// The backlog consumer's settings: the live one's, at this lane's concurrency.
    pub fn consumer(&self, live: &ConsumerConfig) -> ConsumerConfig {
        ConsumerConfig {
            concurrency: self.concurrency.max(1),
            ..live.clone()
        }
    }
}

impl Default for BacklogConfig {
    fn default() -> Self {
        BacklogConfig {
            enabled: BacklogConfig::default_enabled(),
            after: BacklogConfig::default_after(),
            rate: BacklogConfig::default_rate(),
            concurrency: BacklogConfig::default_concurrency(),
        }
    }
}

/// The backlog lane's consumer: the attestor's subjects, its own durable name.
pub fn backlog_spec(subjects: &Subjects) -> ConsumerSpec {
    ConsumerSpec::attestor_backlog(subjects)
}

/// Which consumer handles an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Published soon after the TaskRun (or step) finished.
    Live,
    /// Published more than `[backlog] after` after it finished.
    Backlog,
}

impl Lane {
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Live => "live",
            Lane::Backlog => "backlog",
        }
    }
}

/// The lane of `event`: backlog when it was published more than `after` after its TaskRun
/// (`finished`) or step (`step-completed`) finished; live otherwise, and for every event that
/// carries no finish time.
pub fn lane_of(event: &Event<LifecycleEvent>, after: Duration) -> Lane {
    let finished_at: Option<DateTime<Utc>> = match &event.data {
        LifecycleEvent::Finished(finished) => finished.completed_at,
        LifecycleEvent::StepCompleted(step) => step.step.finished_at,
        _ => None,
    };
    let late = finished_at
        .and_then(|finished| (event.time - finished).to_std().ok())
        .is_some_and(|delay| delay > after);
    if late { Lane::Backlog } else { Lane::Live }
}

/// Spaces the backlog lane's TaskRuns at most `rate` a second (shared by its handlers).
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    next: Mutex<Instant>,
}

impl Throttle {
    /// A throttle of `rate` a second; `None` (unthrottled) for 0.
    pub fn per_second(rate: u32) -> Option<Throttle> {
        (rate > 0).then(|| Throttle {
            interval: Duration::from_secs(1) / rate,
            next: Mutex::new(Instant::now()),
        })
    }

    /// Waits for the next free slot.
    pub async fn wait(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            let slot = (*next).max(Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;
    use countersign_events::EventSource;
    use countersign_events::data::{Outcome, TaskRunDeleted, TaskRunFinished, TaskRunRef};

    use super::*;

    fn taskrun() -> TaskRunRef {
        TaskRunRef {
            cluster: "c".into(),
            namespace: "ns".into(),
            name: "n".into(),
            uid: "u".into(),
        }
    }

    fn deleted() -> LifecycleEvent {
        LifecycleEvent::Deleted(TaskRunDeleted {
            taskrun: taskrun(),
            pod: None,
        })
    }

    #[test]
    fn only_an_event_published_long_after_its_finish_is_backlog() {
        let after = Duration::from_secs(60);
        let source = EventSource::service("watcher");
        let now = Utc::now();
        let event = Event::observed_at(&source, now, deleted());
        assert_eq!(lane_of(&event, after), Lane::Live);
        let finished = |completed: DateTime<Utc>| {
            let data = TaskRunFinished {
                taskrun: taskrun(),
                taskrun_created_at: completed,
                pod: None,
                spiffe_id: None,
                outcome: Outcome::Succeeded,
                reason: "Succeeded".into(),
                message: String::new(),
                started_at: None,
                completed_at: Some(completed),
                results: Vec::new(),
                steps: Vec::new(),
                oversized: None,
                declared_results: Vec::new(),
            };
            Event::observed_at(&source, now, LifecycleEvent::Finished(data))
        };
        assert_eq!(
            lane_of(&finished(now - TimeDelta::seconds(2)), after),
            Lane::Live
        );
        assert_eq!(
            lane_of(&finished(now - TimeDelta::seconds(600)), after),
            Lane::Backlog
        );
        // A finish after the publication (skewed clocks) is live.
        assert_eq!(
            lane_of(&finished(now + TimeDelta::seconds(5)), after),
            Lane::Live
        );
    }

    #[test]
    fn the_backlog_lane_is_on_by_default_and_runs_at_its_own_concurrency() {
        let config: crate::AttestorConfig = countersign_runtime::config::parse_config(
            "[consumer]\nconcurrency = 16\n[backlog]\nrate = 7\n",
            &countersign_runtime::config::Environment::new(),
        )
        .unwrap();
        assert!(config.backlog.enabled);
        assert_eq!(config.backlog.after, Duration::from_secs(60));
        assert_eq!(config.backlog.rate, 7);
        let consumer = config.backlog.consumer(&config.consumer);
        assert_eq!(consumer.concurrency, 2);
        assert_eq!(consumer.max_ack_pending, config.consumer.max_ack_pending);
        let subjects = Subjects::new("countersign").unwrap();
        let spec = backlog_spec(&subjects);
        assert_eq!(spec.name, BACKLOG_CONSUMER);
        assert_eq!(
            spec.filter_subjects,
            ConsumerSpec::attestor(&subjects).filter_subjects
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_throttle_spaces_slots_by_its_interval() {
        let throttle = Throttle::per_second(10).unwrap();
        let started = Instant::now();
        for _ in 0..5 {
            throttle.wait().await;
        }
        assert_eq!(started.elapsed(), Duration::from_millis(400));
        assert!(Throttle::per_second(0).is_none());
    }
}
