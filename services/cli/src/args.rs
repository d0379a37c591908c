//! The command line (`clap`): global NATS options and the four subcommands.

use std::path::PathBuf;

use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};
use countersign_verdict::Verdict;

use crate::exit::EXIT_CODES_HELP;

/// `countersign`: check and read Countersign attestations.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "countersign",
    version,
    about = "Check TaskRun results and Countersign attestations offline, and read them from NATS.",
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {
    /// NATS connection options (used by `get` and `tail`).
    #[command(flatten)]
    pub nats: NatsArgs,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// How to reach NATS.
#[derive(Debug, Clone, ClapArgs)]
pub struct NatsArgs {
    /// The NATS server URL.
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "COUNTERSIGN_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// A NATS credentials file (`.creds`).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "COUNTERSIGN_NATS_CREDS"
    )]
    pub nats_creds: Option<PathBuf>,
    /// The subject prefix of the deployment (its streams are `<PREFIX>_*`).
    #[arg(
        long,
        global = true,
        value_name = "PREFIX",
        env = "COUNTERSIGN_PREFIX",
        default_value = "countersign"
    )]
    pub prefix: String,
}

/// The subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Check a TaskRun's signed results offline (a TaskRun JSON: tekton.dev/v1 with
    /// `status.results`, or v1beta1 with `status.taskResults`, as Tekton's CloudEvents carry).
    /// Exit status 1 when the results are rejected.
    VerifyResults(VerifyResultsArgs),
    /// Check a signed attestation offline (a `SignedAttestation`, or an attestation event's data,
    /// or the whole event): its DSSE signature, the attestor's SVID chain and SPIFFE ID.
    /// Exit status 1 when it is not valid.
    Verify(VerifyArgs),
    /// Show the attestation of a TaskRun, from the attestations KV bucket.
    Get(GetArgs),
    /// Follow attestation events as they are published, one line each.
    Tail(TailArgs),
    /// Write a TaskRun's stored attestation as Sigstore bundle files (what `cosign
    /// verify-blob-attestation` reads), with its SLSA VSAs, and optionally the Sigstore trusted
    /// root made from a SPIRE trust bundle.
    Export(ExportArgs),
    /// The trust bundle history the registrar records (for `verify --bundle-history`).
    #[command(subcommand)]
    Bundles(BundlesCommand),
}

/// `export`.
#[derive(Debug, Clone, ClapArgs)]
pub struct ExportArgs {
    /// The TaskRun, `NAMESPACE/NAME` (its latest run of that name).
    #[arg(value_name = "NAMESPACE/NAME", required_unless_present = "uid")]
    pub taskrun: Option<String>,
    /// The TaskRun's UID, instead of the name.
    #[arg(long, value_name = "UID")]
    pub uid: Option<String>,
    /// The directory to write into (created if absent): `attestation.sigstore.json`,
    /// `vsa-<n>.sigstore.json` (0 is the TaskRun's, then one per artifact), `export.json`.
    #[arg(long, value_name = "DIR")]
    pub output: PathBuf,
    /// Also write `trusted_root.json`, cosign's `--trusted-root`, made from this PEM trust
    /// bundle (SPIRE's `bundle show` output) for `--trust-domain`.
    #[arg(long, value_name = "FILE", requires = "trust_domain")]
    pub trust_bundle: Option<PathBuf>,
    /// The trust domain of `--trust-bundle`.
    #[arg(long, value_name = "TD", env = "COUNTERSIGN_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    /// Also name this RFC 3161 timestamp authority (its PEM chain, as its
    /// `/api/v1/timestamp/certchain` serves it) in `trusted_root.json`, for `cosign …
    /// --use-signed-timestamps`.
    #[arg(long, value_name = "FILE", requires = "trust_bundle")]
    pub timestamp_authority_chain: Option<PathBuf>,
}

/// `bundles` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum BundlesCommand {
    /// Write every recorded trust bundle (the `<PREFIX>_TRUST_BUNDLES` bucket) to a file that
    /// `verify --bundle-history` reads offline.
    Export(BundlesExportArgs),
}

/// `bundles export`.
#[derive(Debug, Clone, ClapArgs)]
pub struct BundlesExportArgs {
    /// Where to write the history (JSON). Default: standard output.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// `verify-results`.
#[derive(Debug, Clone, ClapArgs)]
pub struct VerifyResultsArgs {
    /// The TaskRun JSON file.
    #[arg(long, value_name = "FILE")]
    pub taskrun: PathBuf,
    /// The trust bundle: PEM CA certificates (SPIRE's `bundle show` output).
    #[arg(long, value_name = "FILE")]
    pub bundle: PathBuf,
    /// The trust domain of the TaskRun's SPIFFE ID (and of every CA in the bundle). Default: the
    /// trust domain the bundle's CAs name, when they name exactly one.
    #[arg(long, value_name = "TD", env = "COUNTERSIGN_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    /// Do not check that the SVID was issued after the TaskRun was created (the replay check),
    /// for offline vectors made with long-lived certificates. The check is reported as skipped.
    #[arg(long)]
    pub skip_replay_check: bool,
    /// Print the verdict as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `verify`.
#[derive(Debug, Clone, ClapArgs)]
pub struct VerifyArgs {
    /// The attestation JSON file.
    #[arg(long, value_name = "FILE")]
    pub attestation: PathBuf,
    /// The trust bundle: PEM CA certificates.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present_any = ["bundle_history", "bundle_history_from_nats"],
        conflicts_with_all = ["bundle_history", "bundle_history_from_nats"]
    )]
    pub bundle: Option<PathBuf>,
    /// Instead of --bundle: a trust bundle history (`countersign bundles export`). The
    /// attestation is checked at its signing time against the bundle recorded for that time,
    /// and refused if the CA that issued the attestor's SVID was revoked since.
    #[arg(long, value_name = "FILE", conflicts_with = "bundle_history_from_nats")]
    pub bundle_history: Option<PathBuf>,
    /// Instead of --bundle-history FILE: read the history from the `<PREFIX>_TRUST_BUNDLES`
    /// bucket over NATS (`--nats-url`), and also refuse an attestation the attestor marked
    /// revoked in the attestations bucket (`authority_revoked`). Offline (a file) is the
    /// default; this flag is the only thing that makes `verify` connect.
    #[arg(long)]
    pub bundle_history_from_nats: bool,
    /// The SPIFFE ID the attestor must have (repeatable). Default:
    /// `spiffe://<--trust-domain>/countersign/attestor`; one of the two is required.
    #[arg(
        long = "attestor-id",
        value_name = "ID",
        env = "COUNTERSIGN_ATTESTOR_ID",
        value_delimiter = ','
    )]
    pub attestor_ids: Vec<String>,
    /// The trust domain: of the default attestor ID, and of every CA in the bundle. Default for
    /// the bundle: the trust domains its CAs name.
    #[arg(long, value_name = "TD", env = "COUNTERSIGN_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    /// When the attestor's SVID must have been valid: `claimed` (the attestation's own signed
    /// decision time; attestor SVIDs live about an hour), `now`, or an RFC 3339 time.
    #[arg(long, value_name = "TIME", default_value = "claimed")]
    pub at: String,
    /// Exit with status 1 unless the attested verdict is `verified`.
    #[arg(long)]
    pub require_verified: bool,
    /// The RFC 3161 timestamp authority's certificate chain (PEM, as its
    /// `/api/v1/timestamp/certchain` serves it). The attestation must then carry a timestamp
    /// token over its signature from that authority (`timestamp_missing`, `timestamp_invalid`
    /// otherwise), and the token's genTime is its signing time: the attestor's SVID and chain
    /// are checked then (unless `--at` names another time). Without it, a token the attestation
    /// carries is neither checked nor used.
    #[arg(long, value_name = "FILE")]
    pub timestamp_authority_chain: Option<PathBuf>,
    /// Print the statement summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `get`.
#[derive(Debug, Clone, ClapArgs)]
pub struct GetArgs {
    /// The TaskRun, `NAMESPACE/NAME` (its latest run of that name).
    #[arg(value_name = "NAMESPACE/NAME", required_unless_present = "uid")]
    pub taskrun: Option<String>,
    /// The TaskRun's UID, instead of (or to pick an older run than) the name.
    #[arg(long, value_name = "UID")]
    pub uid: Option<String>,
    /// Print the stored attestation event (a structured CloudEvent) as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `tail`.
#[derive(Debug, Clone, ClapArgs)]
pub struct TailArgs {
    /// Only TaskRuns of this namespace.
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,
    /// Only this verdict (`no_results` events are of the verified type but have their own
    /// verdict).
    #[arg(long, value_enum)]
    pub verdict: Option<VerdictFilter>,
    /// One JSON object (a structured CloudEvent) per line.
    #[arg(long)]
    pub json: bool,
    /// Start with the events already in the stream, not only new ones.
    #[arg(long)]
    pub from_start: bool,
    /// Stop after this many events.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
}

/// A verdict to filter on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VerdictFilter {
    /// Verified.
    Verified,
    /// Rejected.
    Rejected,
    /// The TaskRun had no results.
    #[value(name = "no_results")]
    NoResults,
}

impl VerdictFilter {
    /// The verdict it matches.
    pub fn verdict(self) -> Verdict {
        match self {
            VerdictFilter::Verified => Verdict::Verified,
            VerdictFilter::Rejected => Verdict::Rejected,
            VerdictFilter::NoResults => Verdict::NoResults,
        }
    }
}
