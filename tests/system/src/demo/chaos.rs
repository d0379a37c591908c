//! Chaos: the demo's system (every service its own process, real nats-server, SPIRE, etcd and
//! kube-apiserver) under faults, with what must hold afterwards checked from the stores
//! themselves. What `cargo xtask chaos` runs in full and `tests/chaos.rs` runs short.
//!
//! [`Demo::chaos`] plays TaskRuns through the API server in waves (each TaskRun as the demo
//! plays one, quietly: its pod's results signed by the real signer as that pod's workload of the
//! agent; about one in [`ChaosPlan::tampered_one_in`] has a result changed after signing), while
//! faults come at seeded random moments ([`Fault`]): each of watcher, registrar, attestor and
//! relay killed with SIGKILL and started again, nats-server killed with SIGKILL and started
//! again on its store, spire-server and spire-agent killed and started again on their data,
//! kube-apiserver and etcd killed and started again on etcd's data (same port and
//! certificates; the players wait for their API server meanwhile, as Tekton would retry). Each
//! fault's recovery time (until the process is back and ready) is recorded. With
//! [`ChaosPlan::replicas`] 2, every service runs twice and a kill hits one replica; with
//! [`ChaosPlan::nats_nodes`] 3, NATS is a JetStream cluster (every stream and bucket R3) and its
//! kill hits one node, which rejoins on its store.
//!
//! About one TaskRun in [`ChaosPlan::deleted_one_in`] is deleted mid-flight, with its pod,
//! once its first step is done. What is right for it: **no attestation**. It never finished, so
//! there are no final results to attest (Tekton reports no `Succeeded` condition; the watcher
//! publishes `deleted`, not `finished`), and an attestation of a TaskRun that does not exist
//! would vouch for nothing; and its pod's SPIRE entry is released all the same (counted stale
//! otherwise). An attestation of a deleted TaskRun counts as wrong.
//!
//! At the end ([`ChaosReport`]), from `{P}_ATTESTATIONS`, `{P}_DEADLETTER` and SPIRE's entries:
//! attestations missing, duplicated (stream messages per TaskRun UID), with the wrong verdict
//! (an honest TaskRun must be verified, a tampered one rejected with `signature_invalid`, a
//! deleted one not attested), pod
//! entries left in SPIRE once every TaskRun finished, dead letters, services not ready, and the
//! time from each TaskRun's finish (its `Succeeded` status written) to its attestation stored
//! (the stream's own timestamp). The last line reads
//! `chaos: missing <n>, duplicated <n>, wrong <n>, stale <n>, p99 finish->attestation <s> s`.
//!
//! The randomness is a SplitMix64 generator from the printed seed, so a run's fault schedule and
//! its choice of tampered TaskRuns can be replayed (the moments depend on the machine's speed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::RawMessageErrorKind;
use countersign_events::data::{ReasonCode, Verdict};
use countersign_events::{AttestationEvent, DeadLetter, DecodeLimits, StreamKind, decode};
use countersign_test_support::kube::KubeApiserver;
use countersign_test_support::process::PeerFailed;
use countersign_test_support::spire::Spire;
use countersign_test_support::wait::{self, WaitError};
use nix::sys::signal::{self, Signal};
use tokio::sync::{RwLock, watch};

use super::cluster::{
    Cluster, ClusterError, CreatedTaskRun, INTERNAL_ENTRY_TYPE, MessageEntry, Phase,
    RESULT_ENTRY_TYPE, StepSpec, StepState, Terminated, pod_status, taskrun_message,
    taskrun_status,
};
use super::configs::{ServiceKind, Settings};
use super::report::{Origin, Reporter};
use super::scenario::{STEP_RESULTS, TAMPERED};
use super::services::{ServiceProcess, inherited_overrides};
use super::{Binaries, Demo, NatsPeer, PREFIX, Shape, pid_of};
use crate::attestation_count::attestations_in_stream;

/// How long the signer waits for its pod's SVID (the registrar or SPIRE may be down a while).
const SIGNER_TIMEOUT: &str = "60s";

/// How long, after the last TaskRun finished, every attestation and every entry's release are
/// awaited before they are counted missing or stale.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

/// The size of the extra result of an oversized TaskRun ([`ChaosPlan::oversized_every`]): its
/// `finished` event is over nats-server's 1 MiB max payload, the TaskRun object stays under
/// etcd's 1.5 MiB request limit.
pub const OVERSIZED_RESULT_BYTES: usize = 1_100_000;

/// The registrar's id prefix of a pod's workload entry (its default entry prefix + `pod.`).
const POD_ENTRY_PREFIX: &str = "countersign.pod.";

// === the plan ===

/// A fault the chaos run injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The service is killed with SIGKILL, then started again with the same config.
    Kill(ServiceKind),
    /// nats-server is killed with SIGKILL, then started again on the same port and store; on a
    /// JetStream cluster, one node (at random), which rejoins and catches up.
    KillNats,
    /// spire-server is killed with SIGKILL, then started again with its data (same CA).
    KillSpireServer,
    /// spire-agent is killed with SIGKILL, then started again on its data (same node, no new
    /// join token); the signers and the attestor fetch their SVIDs again.
    KillSpireAgent,
    /// kube-apiserver and etcd are killed with SIGKILL, then started again on etcd's data, the
    /// same port and certificates. Tekton and the kubelet (the run's players) wait for their API
    /// server meanwhile; the services' watches break and resume.
    RestartKube,
}

impl Fault {
    /// Every fault.
    pub const ALL: [Fault; 8] = [
        Fault::Kill(ServiceKind::Watcher),
        Fault::Kill(ServiceKind::Registrar),
        Fault::Kill(ServiceKind::Attestor),
        Fault::Kill(ServiceKind::Relay),
        Fault::KillNats,
        Fault::KillSpireServer,
        Fault::KillSpireAgent,
        Fault::RestartKube,
    ];

    /// What was done, for the report.
    pub fn label(self) -> String {
        match self {
            Fault::Kill(kind) => format!("SIGKILL {}", kind.binary_name()),
            Fault::KillNats => "SIGKILL nats-server".to_owned(),
            Fault::KillSpireServer => "SIGKILL spire-server".to_owned(),
            Fault::KillSpireAgent => "SIGKILL spire-agent".to_owned(),
            Fault::RestartKube => "SIGKILL kube-apiserver + etcd".to_owned(),
        }
    }
}

/// What a chaos run does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChaosPlan {
    /// The seed of every random choice.
    pub seed: u64,
    /// How many TaskRuns are played.
    pub taskruns: usize,
    /// How many are played at once (a wave); the next wave starts when one is played.
    pub wave_size: usize,
    /// About one TaskRun in this many is tampered with.
    pub tampered_one_in: u64,
    /// About one TaskRun in this many is deleted mid-flight (running, a step done; its pod
    /// deleted with it, as the garbage collector would). It never finishes, so it must get no
    /// attestation, and its SPIRE entry must be released all the same.
    pub deleted_one_in: u64,
    /// Every this many TaskRuns, one (never deleted) gets a result of [`OVERSIZED_RESULT_BYTES`]
    /// in its status, so its `finished` event is over nats-server's 1 MiB max payload: it must
    /// be attested `rejected` with `payload_too_large`; 0 for none.
    pub oversized_every: usize,
    /// The shortest and longest pause before each fault.
    pub fault_pause: (Duration, Duration),
    /// The faults chosen from (at random, each in turn before any repeats).
    pub faults: Vec<Fault>,
    /// How many processes of each service run (the system is started with them:
    /// [`Demo::start_with_replicas`]); a kill hits one replica, chosen at random.
    pub replicas: usize,
    /// 1: one nats-server; 3: a JetStream cluster with every stream and bucket R3, of which a
    /// node is killed and started again ([`Fault::KillNats`]).
    pub nats_nodes: usize,
}

impl ChaosPlan {
    /// What the system is started with for this plan.
    pub fn shape(&self) -> Shape {
        Shape {
            replicas: self.replicas,
            nats_nodes: self.nats_nodes,
        }
    }

    /// The short plan on a 3-node JetStream cluster (`tests/chaos.rs`'s own cluster test): 40
    /// TaskRuns in waves of 10, one replica of each service, and one fault, every 1 to 3 s: a
    /// node of the cluster (at random) killed with SIGKILL and started again on its store.
    pub fn short_cluster(seed: u64) -> ChaosPlan {
        ChaosPlan {
            taskruns: 40,
            fault_pause: (Duration::from_secs(1), Duration::from_secs(3)),
            faults: vec![Fault::KillNats],
            replicas: 1,
            nats_nodes: 3,
            ..ChaosPlan::short(seed)
        }
    }

    /// `cargo xtask chaos`: 1,000 TaskRuns in waves of 20, a fault every 2 to 8 s.
    pub fn full(seed: u64) -> ChaosPlan {
        ChaosPlan {
            seed,
            taskruns: 1000,
            wave_size: 20,
            tampered_one_in: 5,
            deleted_one_in: 25,
            oversized_every: 100,
            fault_pause: (Duration::from_secs(2), Duration::from_secs(8)),
            faults: Fault::ALL.to_vec(),
            replicas: 1,
            nats_nodes: 1,
        }
    }

    /// The test suite's: 60 TaskRuns in waves of 10, a fault every 1 to 3 s (so that most
    /// runs go through every fault), two replicas of each service.
    pub fn short(seed: u64) -> ChaosPlan {
        ChaosPlan {
            seed,
            taskruns: 60,
            wave_size: 10,
            tampered_one_in: 5,
            deleted_one_in: 12,
            oversized_every: 30,
            fault_pause: (Duration::from_secs(1), Duration::from_secs(3)),
            faults: Fault::ALL.to_vec(),
            replicas: 2,
            nats_nodes: 1,
        }
    }
}

/// SplitMix64: small, seeded, good enough to pick moments and TaskRuns.
#[derive(Debug, Clone)]
pub struct SeededRandom {
    state: u64,
}

impl SeededRandom {
    pub fn new(seed: u64) -> SeededRandom {
        SeededRandom { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut mixed = self.state;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        mixed ^ (mixed >> 31)
    }

    /// A number in `0..bound` (0 when `bound` is 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            0
        } else {
            self.next_u64() % bound
        }
    }

    /// A duration between `shortest` and `longest`, to the millisecond.
    pub fn between(&mut self, shortest: Duration, longest: Duration) -> Duration {
        let span = longest.saturating_sub(shortest).as_millis();
        let span = u64::try_from(span).unwrap_or(u64::MAX);
        shortest + Duration::from_millis(self.below(span.saturating_add(1)))
    }
}

// === the report ===

/// One fault and how long the system took to be back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub fault: Fault,
    /// When it was injected, since the run began.
    pub at: Duration,
    /// From the kill until the process was back and ready.
    pub took: Duration,
}

/// How many of the slowest attestations a report lists.
pub const SLOWEST_LISTED: usize = 10;

/// One of the TaskRuns whose attestation took longest.
#[derive(Debug, Clone, PartialEq)]
pub struct Slowest {
    /// `ns/name uid`.
    pub taskrun: String,
    /// When it finished, since the run began.
    pub finished_at: Duration,
    /// From its finish to its attestation stored.
    pub took: Duration,
}

/// What a chaos run found.
#[derive(Debug, Clone, Default)]
pub struct ChaosReport {
    pub seed: u64,
    pub taskruns: usize,
    pub tampered: usize,
    /// TaskRuns deleted mid-flight (expected: no attestation, the entry released).
    pub deleted: usize,
    /// TaskRuns with a `finished` event over the max payload (expected: `payload_too_large`).
    pub oversized: usize,
    /// TaskRuns without an attestation (`ns/name uid`).
    pub missing: Vec<String>,
    /// TaskRuns with more than one attestation message, and how many.
    pub duplicated: Vec<(String, usize)>,
    /// TaskRuns attested with another verdict than expected: what was expected and got; and
    /// TaskRuns deleted mid-flight that were attested all the same.
    pub wrong: Vec<String>,
    /// Pod entries left in SPIRE once every TaskRun finished.
    pub stale: Vec<String>,
    /// Dead letters: consumer, reason, code, original subject.
    pub dead_letters: Vec<String>,
    /// Services not running or not ready at the end.
    pub not_ready: Vec<String>,
    /// Each fault and its recovery.
    pub recoveries: Vec<Recovery>,
    /// Finish → attestation of every attested TaskRun.
    pub latencies: Vec<Duration>,
    /// The TaskRuns whose attestation took longest (at most [`SLOWEST_LISTED`], longest
    /// first): each with when it finished in the run, to set beside the faults.
    pub slowest: Vec<Slowest>,
    /// How long the TaskRuns took to play.
    pub played_in: Duration,
}

impl ChaosReport {
    /// The 99th percentile (nearest rank) of finish → attestation; zero without any.
    pub fn p99(&self) -> Duration {
        percentile(&self.latencies, 99)
    }

    /// Whether everything held: no count above zero, no dead letter, every service ready.
    pub fn passed(&self) -> bool {
        self.missing.is_empty()
            && self.duplicated.is_empty()
            && self.wrong.is_empty()
            && self.stale.is_empty()
            && self.dead_letters.is_empty()
            && self.not_ready.is_empty()
    }

    /// `chaos: missing <n>, duplicated <n>, wrong <n>, stale <n>, p99 finish->attestation <s> s`
    pub fn last_line(&self) -> String {
        format!(
            "chaos: missing {}, duplicated {}, wrong {}, stale {}, p99 finish->attestation {:.2} s",
            self.missing.len(),
            self.duplicated.len(),
            self.wrong.len(),
            self.stale.len(),
            self.p99().as_secs_f64()
        )
    }

    /// Everything but the last line: the faults and their recoveries, the latencies, and each
    /// TaskRun or service that broke a rule.
    pub fn summary(&self) -> String {
        let mut text = format!(
            "\n== Chaos (seed {}) ==\n{} TaskRuns ({} tampered, {} deleted mid-flight, {} oversized) played in {:.1} s, {} faults\n",
            self.seed,
            self.taskruns,
            self.tampered,
            self.deleted,
            self.oversized,
            self.played_in.as_secs_f64(),
            self.recoveries.len()
        );
        for recovery in &self.recoveries {
            text.push_str(&format!(
                "  at {:>7.1} s  {:<32} back and ready in {:.2} s\n",
                recovery.at.as_secs_f64(),
                recovery.fault.label(),
                recovery.took.as_secs_f64()
            ));
        }
        let longest = self.recoveries.iter().map(|recovery| recovery.took).max();
        text.push_str(&format!(
            "recovery: longest {:.2} s\nfinish->attestation: p50 {:.2} s, p90 {:.2} s, p99 {:.2} s, max {:.2} s ({} attested)\n",
            longest.unwrap_or_default().as_secs_f64(),
            percentile(&self.latencies, 50).as_secs_f64(),
            percentile(&self.latencies, 90).as_secs_f64(),
            self.p99().as_secs_f64(),
            self.latencies.iter().max().copied().unwrap_or_default().as_secs_f64(),
            self.latencies.len()
        ));
        for slow in &self.slowest {
            text.push_str(&format!(
                "  slow: {} finished at {:.1} s, attested {:.2} s later\n",
                slow.taskrun,
                slow.finished_at.as_secs_f64(),
                slow.took.as_secs_f64()
            ));
        }
        text.push_str(&format!("dead letters: {}\n", self.dead_letters.len()));
        let listed: [(&str, Vec<String>); 6] = [
            ("missing", self.missing.clone()),
            (
                "duplicated",
                self.duplicated
                    .iter()
                    .map(|(taskrun, count)| format!("{taskrun}: {count} messages"))
                    .collect(),
            ),
            ("wrong", self.wrong.clone()),
            ("stale", self.stale.clone()),
            ("dead letter", self.dead_letters.clone()),
            ("not ready", self.not_ready.clone()),
        ];
        for (what, lines) in listed {
            for line in lines {
                text.push_str(&format!("  {what}: {line}\n"));
            }
        }
        text
    }
}

/// The `percent`-th percentile (nearest rank) of `values`; zero when empty.
pub fn percentile(values: &[Duration], percent: usize) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = values.to_vec();
    sorted.sort();
    let rank = (percent * sorted.len()).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

// === errors ===

/// Why the chaos run could not be played to its end.
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("{action}")]
    Files {
        action: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TaskRun {taskrun}, step {step}: the signer failed: {detail}")]
    Signer {
        taskrun: String,
        step: String,
        detail: String,
    },
    #[error("{what} did not come back after {fault}")]
    Recover {
        what: String,
        fault: String,
        #[source]
        source: PeerFailed,
    },
    #[error("kube-apiserver and etcd did not come back after {fault}")]
    RestartKube {
        fault: String,
        #[source]
        source: Box<countersign_test_support::kube::StartError>,
    },
    #[error("{fault}: {what}")]
    Inject { fault: String, what: String },
    #[error("waiting")]
    Wait(#[from] WaitError),
    #[error("reading the stores at the end: {what}")]
    Read { what: String },
}

fn files_error(action: String) -> impl FnOnce(std::io::Error) -> ChaosError {
    move |source| ChaosError::Files { action, source }
}

// === the run ===

/// What happens to a TaskRun besides being played.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Fate {
    /// A result changed after signing: `rejected` with `signature_invalid`.
    tampered: bool,
    /// Deleted mid-flight: never finished, so never attested.
    deleted: bool,
    /// A `finished` event over the max payload: `rejected` with `payload_too_large`.
    oversized: bool,
}

/// A TaskRun that was played to its end.
#[derive(Debug, Clone)]
struct Finished {
    label: String,
    uid: String,
    fate: Fate,
    /// When it finished (or was deleted).
    finished_at: SystemTime,
}

impl Demo {
    /// Plays `plan`: TaskRuns in waves while faults are injected, then checks the stores.
    /// Progress (each wave, each fault) goes to `progress`.
    pub async fn chaos(
        &mut self,
        plan: &ChaosPlan,
        progress: &Reporter,
    ) -> Result<ChaosReport, ChaosError> {
        progress.heading(format!(
            "Chaos: {} TaskRuns in waves of {}, faults every {:.0}-{:.0} s, seed {}",
            plan.taskruns,
            plan.wave_size,
            plan.fault_pause.0.as_secs_f64(),
            plan.fault_pause.1.as_secs_f64(),
            plan.seed
        ));
        let mut random = SeededRandom::new(plan.seed);
        let fates: Vec<Fate> = (0..plan.taskruns)
            .map(|index| {
                let tampered = random.below(plan.tampered_one_in.max(1)) == 0;
                let oversized = plan.oversized_every > 0
                    && index % plan.oversized_every == plan.oversized_every / 2;
                // An oversized TaskRun must finish (its slot is fixed, so every run has it).
                let deleted = random.below(plan.deleted_one_in.max(1)) == 0 && !oversized;
                Fate {
                    tampered,
                    deleted,
                    oversized,
                }
            })
            .collect();
        // Tekton and the kubelet (the players) hold it shared for each call to their API
        // server; a restart of the API server holds it alone, so they wait instead of failing.
        let api_server_up = RwLock::new(());
        let logs_dir = self.dir.path().join("logs");
        let began = Instant::now();
        let began_at = SystemTime::now();
        let (played_everything, played_everything_seen) = watch::channel(false);
        let Demo {
            services,
            nats,
            spire,
            kube,
            cluster,
            settings,
            binaries,
            ..
        } = self;

        let drive = async {
            let outcome = play_waves(
                Player {
                    cluster,
                    settings,
                    binaries: &*binaries,
                    api_server_up: &api_server_up,
                },
                plan,
                &fates,
                progress,
                began,
            )
            .await;
            // Nobody listening any more only means the faults already stopped.
            let _ = played_everything.send(true);
            outcome
        };
        let inject = inject_faults(
            FaultTargets {
                services,
                nats,
                spire,
                kube,
                api_server_up: &api_server_up,
                binaries: &*binaries,
                logs_dir: &logs_dir,
            },
            plan,
            &mut random,
            played_everything_seen,
            progress,
            began,
        );
        let (played, recoveries) = tokio::join!(drive, inject);
        let played_in = began.elapsed();
        let recoveries = recoveries?;
        let finished = played?;
        progress.line(
            Origin::Demo,
            format!(
                "every TaskRun played in {:.1} s; awaiting every attestation and every entry's release ...",
                played_in.as_secs_f64()
            ),
        );

        let mut report = ChaosReport {
            seed: plan.seed,
            taskruns: finished.len(),
            tampered: finished
                .iter()
                .filter(|taskrun| taskrun.fate.tampered)
                .count(),
            deleted: finished
                .iter()
                .filter(|taskrun| taskrun.fate.deleted)
                .count(),
            oversized: finished
                .iter()
                .filter(|taskrun| taskrun.fate.oversized)
                .count(),
            recoveries,
            played_in,
            ..ChaosReport::default()
        };
        let client = self
            .nats
            .connect()
            .await
            .map_err(|error| ChaosError::Read {
                what: format!("connecting to nats-server: {error}"),
            })?;
        let jetstream = async_nats::jetstream::new(client);
        check_attestations(&jetstream, &finished, began_at, &mut report).await?;
        if report.oversized > 0 && oversized_log_lines(&self.dir.path().join("logs")) == 0 {
            report.wrong.push(format!(
                "{} oversized TaskRun(s), but no watcher log line says why (\"{OVERSIZED_LOG}\")",
                report.oversized
            ));
        }
        report.dead_letters = dead_letters(&jetstream).await?;
        report.stale = stale_entries(&self.spire).await?;
        for service in &self.services {
            let ready = service.is_running()
                && crate::http::get(&service.admin().to_string(), "/readyz")
                    .await
                    .is_some_and(|answer| answer.status == 200);
            if !ready {
                report.not_ready.push(format!(
                    "{} (log {})",
                    service.kind().binary_name(),
                    service.log_path().display()
                ));
            }
        }
        Ok(report)
    }
}

/// Plays the TaskRuns, a wave at a time, and returns them as they finished.
async fn play_waves(
    player: Player<'_>,
    plan: &ChaosPlan,
    fates: &[Fate],
    progress: &Reporter,
    began: Instant,
) -> Result<Vec<Finished>, ChaosError> {
    let mut finished = Vec::with_capacity(plan.taskruns);
    let wave_size = plan.wave_size.max(1);
    for (wave, first) in (0..plan.taskruns).step_by(wave_size).enumerate() {
        let last = (first + wave_size).min(plan.taskruns);
        let plays = (first..last).map(|index| {
            player.play_quietly(
                format!("chaos-{index:04}"),
                fates.get(index).copied().unwrap_or_default(),
            )
        });
        finished.extend(futures::future::try_join_all(plays).await?);
        progress.line(
            Origin::Kube,
            format!(
                "wave {}: TaskRuns {first}-{} finished (at {:.1} s)",
                wave + 1,
                last - 1,
                began.elapsed().as_secs_f64()
            ),
        );
    }
    Ok(finished)
}

/// Tekton and the kubelet, played: what a TaskRun is played with.
#[derive(Clone, Copy)]
struct Player<'a> {
    cluster: &'a Cluster,
    settings: &'a Settings,
    binaries: &'a Binaries,
    /// Held shared for each call to the API server (see [`Fault::RestartKube`]).
    api_server_up: &'a RwLock<()>,
}

impl Player<'_> {
    /// Plays one TaskRun as the demo does, without showing it: created with its pod, pending,
    /// running, each step's results signed by the pod's signer (a hard link of the signer at the
    /// path the registrar's selector names), one changed after signing when `tampered`, then
    /// succeeded (with a result of [`OVERSIZED_RESULT_BYTES`] when `oversized`); or, when
    /// `deleted`, deleted with its pod once its first step is done.
    async fn play_quietly(self, name: String, fate: Fate) -> Result<Finished, ChaosError> {
        let Fate {
            tampered, deleted, ..
        } = fate;
        let mut huge_result = fate.oversized.then(|| {
            serde_json::json!({
                "name": "huge",
                "type": "string",
                "value": "x".repeat(OVERSIZED_RESULT_BYTES),
            })
        });
        let Player {
            cluster,
            settings,
            binaries,
            api_server_up,
        } = self;
        let taskrun = {
            let _up = api_server_up.read().await;
            cluster.create_taskrun(&name).await?
        };
        let start_time = now();
        let pod = {
            let _up = api_server_up.read().await;
            cluster.create_pod(&taskrun).await?
        };
        let mut steps: Vec<(StepSpec, StepState)> = taskrun
            .steps
            .iter()
            .map(|spec| (spec.clone(), StepState::Waiting))
            .collect();
        update_statuses(
            self,
            &taskrun,
            &pod.name,
            &start_time,
            Phase::Pending,
            &steps,
            None,
        )
        .await?;

        let pod_dir = settings.pods_dir.join(&pod.uid);
        let results_dir = pod_dir.join("results");
        tokio::fs::create_dir_all(&results_dir)
            .await
            .map_err(files_error(format!("creating {}", results_dir.display())))?;
        let signer = pod_dir.join("countersign-signer");
        // A hard link costs no space (a thousand copies would); a copy where linking cannot work.
        if std::fs::hard_link(&binaries.signer, &signer).is_err() {
            tokio::fs::copy(&binaries.signer, &signer)
                .await
                .map_err(files_error(format!(
                    "copying the signer to {}",
                    signer.display()
                )))?;
        }

        let running_at = now();
        for (_, state) in &mut steps {
            *state = StepState::Running {
                started_at: running_at.clone(),
            };
        }
        update_statuses(
            self,
            &taskrun,
            &pod.name,
            &start_time,
            Phase::Running,
            &steps,
            None,
        )
        .await?;
        let declared = taskrun
            .declared
            .iter()
            .map(|result| result.name.as_str())
            .collect::<Vec<_>>()
            .join(",");
        for index in 0..steps.len() {
            let spec = steps[index].0.clone();
            let step_started = now();
            let started_at_entry = now_millis();
            let writes = STEP_RESULTS
                .iter()
                .find(|(step, _)| *step == spec.name)
                .map(|(_, writes)| *writes)
                .unwrap_or_default();
            for (result, value) in writes {
                let path = results_dir.join(result);
                tokio::fs::write(&path, value)
                    .await
                    .map_err(files_error(format!("writing {}", path.display())))?;
            }
            let mut entries = run_signer(
                &signer,
                &results_dir,
                &declared,
                settings,
                &name,
                &spec.name,
            )
            .await?;
            if let Some(tamper) = TAMPERED
                .tamper
                .filter(|tamper| tampered && tamper.step == spec.name)
                && let Some(entry) = entries.iter_mut().find(|entry| {
                    entry.key == tamper.result && entry.entry_type == RESULT_ENTRY_TYPE
                })
            {
                entry.value = tamper.value.to_owned();
            }
            entries.push(MessageEntry {
                key: "StartedAt".to_owned(),
                value: started_at_entry,
                entry_type: INTERNAL_ENTRY_TYPE,
            });
            // Plain strings and integers always serialize.
            let pod_message = serde_json::to_string(&entries).unwrap_or_default();
            steps[index].1 = StepState::Terminated(Terminated {
                started_at: step_started,
                finished_at: now(),
                container_id: format!("containerd://{}-{}", pod.uid, spec.container),
                taskrun_message: taskrun_message(&entries),
                pod_message,
            });
            update_statuses(
                self,
                &taskrun,
                &pod.name,
                &start_time,
                Phase::Running,
                &steps,
                None,
            )
            .await?;
            if deleted {
                {
                    let _up = api_server_up.read().await;
                    cluster
                        .delete_taskrun_and_pod(&taskrun.name, &pod.name)
                        .await?;
                }
                let deleted_at = SystemTime::now();
                let _ = tokio::fs::remove_dir_all(&pod_dir).await;
                return Ok(Finished {
                    label: format!("{}/{} {}", taskrun.namespace, taskrun.name, taskrun.uid),
                    uid: taskrun.uid,
                    fate,
                    finished_at: deleted_at,
                });
            }
        }
        update_statuses(
            self,
            &taskrun,
            &pod.name,
            &start_time,
            Phase::Succeeded,
            &steps,
            huge_result.take(),
        )
        .await?;
        let finished_at = SystemTime::now();
        let _ = tokio::fs::remove_dir_all(&pod_dir).await;
        Ok(Finished {
            label: format!("{}/{} {}", taskrun.namespace, taskrun.name, taskrun.uid),
            uid: taskrun.uid,
            fate,
            finished_at,
        })
    }
}

/// Patches the pod's status, then the TaskRun's, as the kubelet and then Tekton would.
async fn update_statuses(
    player: Player<'_>,
    taskrun: &CreatedTaskRun,
    pod_name: &str,
    start_time: &str,
    phase: Phase,
    steps: &[(StepSpec, StepState)],
    extra_result: Option<serde_json::Value>,
) -> Result<(), ClusterError> {
    let pod_phase = match phase {
        Phase::Pending => "Pending",
        Phase::Running => "Running",
        Phase::Succeeded => "Succeeded",
    };
    let _up = player.api_server_up.read().await;
    let cluster = player.cluster;
    cluster
        .patch_pod_status(pod_name, pod_status(pod_phase, start_time, steps))
        .await?;
    let mut status = taskrun_status(taskrun, pod_name, start_time, phase, steps, &now());
    if let (Some(extra), Some(results)) = (
        extra_result,
        status
            .get_mut("results")
            .and_then(serde_json::Value::as_array_mut),
    ) {
        results.push(extra);
    }
    cluster.patch_taskrun_status(&taskrun.name, status).await
}

/// Runs the pod's signer over `results_dir` and returns its termination message entries.
async fn run_signer(
    signer: &Path,
    results_dir: &Path,
    declared: &str,
    settings: &Settings,
    taskrun: &str,
    step: &str,
) -> Result<Vec<MessageEntry>, ChaosError> {
    let failed = |detail: String| ChaosError::Signer {
        taskrun: taskrun.to_owned(),
        step: step.to_owned(),
        detail,
    };
    let args: Vec<String> = vec![
        "--results-dir".into(),
        results_dir.display().to_string(),
        "--results".into(),
        declared.to_owned(),
        "--socket".into(),
        settings.agent_endpoint.clone(),
        "--timeout".into(),
        SIGNER_TIMEOUT.into(),
        "--print-termination-message".into(),
        "--no-write".into(),
    ];
    let mut command = tokio::process::Command::new(signer);
    command.args(&args).stdin(Stdio::null()).kill_on_drop(true);
    for name in inherited_overrides() {
        command.env_remove(name);
    }
    let output = command
        .output()
        .await
        .map_err(|error| failed(format!("it did not start: {error}")))?;
    if !output.status.success() {
        return Err(failed(format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    serde_json::from_slice(&output.stdout)
        .map_err(|error| failed(format!("its output is not a termination message: {error}")))
}

/// What the faults act on.
struct FaultTargets<'a> {
    services: &'a mut Vec<ServiceProcess>,
    nats: &'a mut NatsPeer,
    spire: &'a mut Spire,
    kube: &'a mut KubeApiserver,
    api_server_up: &'a RwLock<()>,
    binaries: &'a Binaries,
    logs_dir: &'a Path,
}

/// Injects faults at random moments until every TaskRun was played; returns each fault's
/// recovery.
async fn inject_faults(
    mut targets: FaultTargets<'_>,
    plan: &ChaosPlan,
    random: &mut SeededRandom,
    mut played_everything: watch::Receiver<bool>,
    progress: &Reporter,
    began: Instant,
) -> Result<Vec<Recovery>, ChaosError> {
    let mut recoveries = Vec::new();
    let mut remaining: Vec<Fault> = Vec::new();
    let mut restarts = 0_usize;
    loop {
        let pause = random.between(plan.fault_pause.0, plan.fault_pause.1);
        tokio::select! {
            _ = played_everything.wait_for(|played| *played) => return Ok(recoveries),
            () = tokio::time::sleep(pause) => {}
        }
        if plan.faults.is_empty() {
            continue;
        }
        // Each fault in turn (in a random order) before any repeats.
        if remaining.is_empty() {
            remaining = plan.faults.clone();
        }
        let index = usize::try_from(random.below(remaining.len() as u64)).unwrap_or(0);
        let fault = remaining.swap_remove(index);
        restarts += 1;
        let at = began.elapsed();
        let replica_pick = random.next_u64();
        let took = inject(&mut targets, fault, restarts, replica_pick).await?;
        progress.line(
            Origin::Demo,
            format!(
                "at {:.1} s: {}; back and ready in {:.2} s",
                at.as_secs_f64(),
                fault.label(),
                took.as_secs_f64()
            ),
        );
        recoveries.push(Recovery { fault, at, took });
    }
}

/// Injects one fault and waits until the process is back and ready; returns how long that took.
async fn inject(
    targets: &mut FaultTargets<'_>,
    fault: Fault,
    restart_number: usize,
    replica_pick: u64,
) -> Result<Duration, ChaosError> {
    let recover_error = |what: &str| {
        let what = what.to_owned();
        move |source| ChaosError::Recover {
            what,
            fault: fault.label(),
            source,
        }
    };
    match fault {
        Fault::Kill(kind) => {
            let name = kind.binary_name();
            let replicas: Vec<usize> = targets
                .services
                .iter()
                .enumerate()
                .filter(|(_, service)| service.kind() == kind)
                .map(|(index, _)| index)
                .collect();
            let pick = usize::try_from(replica_pick % replicas.len().max(1) as u64).unwrap_or(0);
            let index = *replicas.get(pick).ok_or_else(|| ChaosError::Inject {
                fault: fault.label(),
                what: format!("{name} is not one of the services"),
            })?;
            let killed = &targets.services[index];
            let pid = killed.pid().ok_or_else(|| ChaosError::Inject {
                fault: fault.label(),
                what: format!("{name} has no pid"),
            })?;
            let began = Instant::now();
            signal::kill(pid_of(pid), Signal::SIGKILL).map_err(|error| ChaosError::Inject {
                fault: fault.label(),
                what: error.to_string(),
            })?;
            wait::until_true(
                &format!("{name} to be gone after SIGKILL"),
                Duration::from_secs(10),
                || async { !killed.is_running() },
            )
            .await?;
            let program = match kind {
                ServiceKind::Watcher => &targets.binaries.watcher,
                ServiceKind::Registrar => &targets.binaries.registrar,
                ServiceKind::Attestor => &targets.binaries.attestor,
                ServiceKind::Relay => &targets.binaries.relay,
            };
            let log = targets
                .logs_dir
                .join(format!("{name}.restart-{restart_number}.log"));
            let config = killed.config_path().to_owned();
            let admin = killed.admin();
            let restarted = ServiceProcess::spawn(kind, program, &config, admin, &log)
                .await
                .map_err(recover_error(name))?;
            restarted.wait_ready().await.map_err(recover_error(name))?;
            targets.services[index] = restarted;
            Ok(began.elapsed())
        }
        Fault::KillNats => match &mut *targets.nats {
            NatsPeer::Server(server) => {
                let pid = peer_pid(
                    &countersign_test_support::peers().nats_server.path,
                    server.dir(),
                )
                .ok_or_else(|| ChaosError::Inject {
                    fault: fault.label(),
                    what: "no nats-server process of this run".to_owned(),
                })?;
                let began = Instant::now();
                let _ = signal::kill(pid, Signal::SIGKILL);
                server
                    .restart()
                    .await
                    .map_err(recover_error("nats-server"))?;
                Ok(began.elapsed())
            }
            NatsPeer::Cluster(cluster) => {
                let node =
                    usize::try_from(replica_pick % cluster.size().max(1) as u64).unwrap_or(0);
                let began = Instant::now();
                // SIGKILL, then the node starts again on its store, rejoins and catches up.
                cluster
                    .restart(node)
                    .await
                    .map_err(recover_error("a nats-server of the cluster"))?;
                Ok(began.elapsed())
            }
        },
        Fault::KillSpireServer => {
            let pid = peer_pid(
                &countersign_test_support::peers().spire_server.path,
                targets.spire.dir(),
            )
            .ok_or_else(|| ChaosError::Inject {
                fault: fault.label(),
                what: "no spire-server process of this run".to_owned(),
            })?;
            let began = Instant::now();
            let _ = signal::kill(pid, Signal::SIGKILL);
            // Reaps the killed process (its stop finds it gone), then starts it on its data.
            targets.spire.stop_server();
            targets
                .spire
                .start_server()
                .await
                .map_err(recover_error("spire-server"))?;
            Ok(began.elapsed())
        }
        Fault::KillSpireAgent => {
            let began = Instant::now();
            targets
                .spire
                .restart_agent()
                .await
                .map_err(recover_error("spire-agent"))?;
            Ok(began.elapsed())
        }
        Fault::RestartKube => {
            // Calls in flight finish first; then the players wait until the API server is back.
            let _down = targets.api_server_up.write().await;
            targets
                .kube
                .restart()
                .await
                .map_err(|source| ChaosError::RestartKube {
                    fault: fault.label(),
                    source: Box::new(source),
                })
        }
    }
}

/// The pid of the process running `program` with an argument under `dir` (a peer's own
/// directory), found in `/proc`.
fn peer_pid(program: &Path, dir: &Path) -> Option<nix::unistd::Pid> {
    let program = program.canonicalize().ok()?;
    let dir = dir.display().to_string();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        let exe: Option<PathBuf> = std::fs::read_link(entry.path().join("exe")).ok();
        if exe.as_deref() != Some(program.as_path()) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&dir) {
            return Some(nix::unistd::Pid::from_raw(pid));
        }
    }
    None
}

// === the checks at the end ===

/// Waits (up to [`SETTLE_TIMEOUT`]) until the attestation stream holds a message per TaskRun,
/// then reads every message and counts what is missing, duplicated or wrong, and the latencies.
async fn check_attestations(
    jetstream: &async_nats::jetstream::Context,
    finished: &[Finished],
    began_at: SystemTime,
    report: &mut ChaosReport,
) -> Result<(), ChaosError> {
    let stream_name = stream_name(StreamKind::Attestations)?;
    let wanted = finished
        .iter()
        .filter(|taskrun| !taskrun.fate.deleted)
        .count() as u64;
    // A timeout here is not an error: what never came is counted missing below. The poll
    // counts (the server's per-subject counts); the messages are read once, afterwards.
    let _ = wait::until_true(
        "an attestation of every TaskRun",
        SETTLE_TIMEOUT,
        || async {
            attestations_in_stream(jetstream, PREFIX)
                .await
                .is_ok_and(|count| count >= wanted)
        },
    )
    .await;
    let mut by_uid: BTreeMap<String, Vec<(AttestationEvent, SystemTime)>> = BTreeMap::new();
    for message in attestation_messages(jetstream, &stream_name).await? {
        let stored_at = stored_at(&message);
        let Ok(event) = decode::<AttestationEvent>(
            Some(&message.headers),
            &message.payload,
            &DecodeLimits::default(),
        ) else {
            report
                .wrong
                .push("an undecodable message in the attestation stream".to_owned());
            continue;
        };
        let uid = event.data.taskrun().uid.clone();
        by_uid.entry(uid).or_default().push((event.data, stored_at));
    }
    for taskrun in finished {
        if taskrun.fate.deleted {
            // Deleted before it finished: there are no final results to attest, and Tekton
            // never reports it finished, so no attestation is right (its step verdicts may
            // exist; its entry is released, checked as stale).
            if let Some(attestations) = by_uid.get(&taskrun.uid) {
                report.wrong.push(format!(
                    "{}: deleted mid-flight, yet {} attestation message(s)",
                    taskrun.label,
                    attestations.len()
                ));
            }
            continue;
        }
        let Some(attestations) = by_uid.get(&taskrun.uid) else {
            report.missing.push(taskrun.label.clone());
            continue;
        };
        if attestations.len() > 1 {
            report
                .duplicated
                .push((taskrun.label.clone(), attestations.len()));
        }
        let (first, stored_at) = &attestations[0];
        let fate = taskrun.fate;
        let right = match first {
            AttestationEvent::Verified(data) => {
                !fate.tampered && !fate.oversized && data.verdict == Verdict::Verified
            }
            AttestationEvent::Rejected(data) if fate.oversized => {
                data.reason == ReasonCode::PayloadTooLarge
            }
            AttestationEvent::Rejected(data) => {
                fate.tampered && data.reason == ReasonCode::SignatureInvalid
            }
            AttestationEvent::Revoked(_) => false,
        };
        if !right {
            let got = match first {
                AttestationEvent::Verified(data) => format!("{:?}", data.verdict),
                AttestationEvent::Rejected(data) => format!("rejected ({})", data.reason.as_str()),
                AttestationEvent::Revoked(data) => format!("revoked ({})", data.authority),
            };
            let expected = if fate.oversized {
                "rejected (payload_too_large)"
            } else if fate.tampered {
                "rejected (signature_invalid)"
            } else {
                "verified"
            };
            report
                .wrong
                .push(format!("{}: {got}, expected {expected}", taskrun.label));
        }
        let took = stored_at
            .duration_since(taskrun.finished_at)
            .unwrap_or(Duration::ZERO);
        report.latencies.push(took);
        report.slowest.push(Slowest {
            taskrun: taskrun.label.clone(),
            finished_at: taskrun
                .finished_at
                .duration_since(began_at)
                .unwrap_or(Duration::ZERO),
            took,
        });
    }
    report
        .slowest
        .sort_by(|a, b| b.took.cmp(&a.took).then_with(|| a.taskrun.cmp(&b.taskrun)));
    report.slowest.truncate(SLOWEST_LISTED);
    Ok(())
}

/// What the watcher logs (at warn, with the event's size and the limit) when a `finished`
/// event is over the bus's max payload and goes out trimmed.
const OVERSIZED_LOG: &str = "the finished event is over the bus's max payload";

/// How many lines of the watchers' logs (every replica, every restart) say that a `finished`
/// event went out trimmed, naming its size and the limit.
fn oversized_log_lines(logs_dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(logs_dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|name| name.starts_with("countersign-watcher"))
        })
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .map(|text| {
            text.lines()
                .filter(|line| {
                    line.contains(OVERSIZED_LOG) && line.contains("bytes") && line.contains("limit")
                })
                .count()
        })
        .sum()
}

/// Every dead letter, as `consumer: reason (code) from subject`.
async fn dead_letters(
    jetstream: &async_nats::jetstream::Context,
) -> Result<Vec<String>, ChaosError> {
    let stream_name = stream_name(StreamKind::DeadLetter)?;
    let mut letters = Vec::new();
    for message in read_stream(jetstream, &stream_name).await? {
        let letter = DeadLetter::from_parts(&message.headers, message.payload);
        letters.push(match letter {
            Some(letter) => format!(
                "{}: {} ({}) from {}: {}",
                letter.consumer,
                letter.reason,
                letter.code.unwrap_or_default(),
                letter.original_subject,
                letter.detail
            ),
            None => "a dead letter without its headers".to_owned(),
        });
    }
    Ok(letters)
}

/// The pod entries left in SPIRE, once they are all released or [`SETTLE_TIMEOUT`] passed.
async fn stale_entries(spire: &Spire) -> Result<Vec<String>, ChaosError> {
    let socket = spire.server_socket_path();
    let list = || async {
        let output =
            tokio::process::Command::new(&countersign_test_support::peers().spire_server.path)
                .args(["entry", "show", "-socketPath"])
                .arg(&socket)
                .args(["-output", "json"])
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output()
                .await
                .ok()?;
        if !output.status.success() {
            return None;
        }
        let listed: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        Some(
            listed
                .get("entries")
                .and_then(serde_json::Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|entry| entry.get("id").and_then(serde_json::Value::as_str))
                .filter(|id| id.starts_with(POD_ENTRY_PREFIX))
                .map(str::to_owned)
                .collect::<Vec<String>>(),
        )
    };
    let _ = wait::until_true("every pod entry to be released", SETTLE_TIMEOUT, || async {
        list().await.is_some_and(|left| left.is_empty())
    })
    .await;
    list().await.ok_or_else(|| ChaosError::Read {
        what: "listing SPIRE's entries with spire-server entry show".to_owned(),
    })
}

fn stream_name(kind: StreamKind) -> Result<String, ChaosError> {
    countersign_events::Subjects::new(PREFIX)
        .map(|subjects| subjects.stream_name(kind))
        .map_err(|error| ChaosError::Read {
            what: error.to_string(),
        })
}

/// The stream's message count and last sequence.
async fn stream_state(
    jetstream: &async_nats::jetstream::Context,
    stream_name: &str,
) -> Option<(u64, u64)> {
    let mut stream = jetstream.get_stream(stream_name).await.ok()?;
    let info = stream.info().await.ok()?;
    Some((info.state.messages, info.state.last_sequence))
}

/// How long a stream read at the end waits for the stream to answer (a leader after a node kill).
const STREAM_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Every message of a stream.
async fn read_stream(
    jetstream: &async_nats::jetstream::Context,
    stream_name: &str,
) -> Result<Vec<StreamMessage>, ChaosError> {
    let read_error = |what: String| ChaosError::Read { what };
    // On a cluster a node was just killed: the stream may have no leader for a few seconds.
    let (_, last_sequence) = wait::until(
        &format!("the stream {stream_name} to answer"),
        STREAM_READ_TIMEOUT,
        || stream_state(jetstream, stream_name),
    )
    .await
    .map_err(|error| read_error(format!("the stream {stream_name}: {error}")))?;
    let stream = wait::until(
        &format!("the stream {stream_name} to be found"),
        STREAM_READ_TIMEOUT,
        || async { jetstream.get_stream(stream_name).await.ok() },
    )
    .await
    .map_err(|error| read_error(format!("the stream {stream_name}: {error}")))?;
    let mut messages = Vec::new();
    for sequence in 1..=last_sequence {
        // Asked until the server answers: a message, or that it was deleted (skipped). Anything
        // else (no leader yet, a timeout) is asked again.
        let message = wait::until(
            &format!("message {sequence} of {stream_name}"),
            STREAM_READ_TIMEOUT,
            || async {
                match stream.get_raw_message(sequence).await {
                    Ok(message) => Some(Some(message)),
                    Err(error) if error.kind() == RawMessageErrorKind::NoMessageFound => Some(None),
                    Err(_) => None,
                }
            },
        )
        .await
        .map_err(|error| read_error(format!("the stream {stream_name}: {error}")))?;
        messages.extend(message);
    }
    Ok(messages)
}

/// The messages of the attestations stream that are attestations (it also keeps the exports
/// and the gate's decisions, under their own subject roots).
async fn attestation_messages(
    jetstream: &async_nats::jetstream::Context,
    stream_name: &str,
) -> Result<Vec<StreamMessage>, ChaosError> {
    let root = format!("{PREFIX}.attestation.");
    let mut messages = read_stream(jetstream, stream_name).await?;
    messages.retain(|message| message.subject.as_str().starts_with(&root));
    Ok(messages)
}

/// When the server stored a message.
fn stored_at(message: &StreamMessage) -> SystemTime {
    let nanos = u64::try_from(message.time.unix_timestamp_nanos()).unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos)
}

/// Now, as Kubernetes writes times (RFC 3339, seconds).
fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Now, as Tekton's entrypoint writes `StartedAt`.
fn now_millis() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_choices() {
        let mut first = SeededRandom::new(42);
        let mut second = SeededRandom::new(42);
        let draws: Vec<u64> = (0..10).map(|_| first.below(1000)).collect();
        assert_eq!(
            draws,
            (0..10).map(|_| second.below(1000)).collect::<Vec<_>>()
        );
        assert_ne!(draws, {
            let mut other = SeededRandom::new(43);
            (0..10).map(|_| other.below(1000)).collect::<Vec<_>>()
        });
        let pause = first.between(Duration::from_secs(2), Duration::from_secs(8));
        assert!(pause >= Duration::from_secs(2) && pause <= Duration::from_secs(8));
        assert_eq!(first.below(0), 0);
    }

    #[test]
    fn the_percentile_is_the_nearest_rank() {
        let values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&values, 99), Duration::from_millis(99));
        assert_eq!(percentile(&values, 50), Duration::from_millis(50));
        assert_eq!(percentile(&[], 99), Duration::ZERO);
        assert_eq!(
            percentile(&[Duration::from_secs(3)], 99),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn the_summary_lists_the_slowest_attestations_with_when_they_finished() {
        let report = ChaosReport {
            latencies: vec![Duration::from_millis(14_180)],
            slowest: vec![Slowest {
                taskrun: "chaos/run-0612 uid-612".into(),
                finished_at: Duration::from_millis(124_900),
                took: Duration::from_millis(14_180),
            }],
            ..ChaosReport::default()
        };
        assert!(
            report.summary().contains(
                "  slow: chaos/run-0612 uid-612 finished at 124.9 s, attested 14.18 s later\n"
            ),
            "{}",
            report.summary()
        );
    }

    #[test]
    fn the_last_line_counts_each_kind_and_any_count_fails_the_run() {
        let mut report = ChaosReport {
            latencies: vec![Duration::from_millis(1500)],
            ..ChaosReport::default()
        };
        assert!(report.passed());
        assert_eq!(
            report.last_line(),
            "chaos: missing 0, duplicated 0, wrong 0, stale 0, p99 finish->attestation 1.50 s"
        );
        report.duplicated.push(("default/a uid".into(), 2));
        assert!(!report.passed());
        assert!(report.last_line().contains("duplicated 1"));
        let mut dead = ChaosReport::default();
        dead.dead_letters.push("attestor: rejected".into());
        assert!(!dead.passed(), "a dead letter fails the run");
    }
}
