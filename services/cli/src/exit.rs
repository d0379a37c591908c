//! Exit codes and the command's errors: every error says what failed, readably, and maps to
//! one documented exit code.

use std::path::PathBuf;

use countersign_runtime::nats::NatsConnectError;
use countersign_verdict::store::{StoreError, StoreErrorKind};

/// Exit codes (from BSD's `sysexits.h` where one fits).
pub mod exit_code {
    /// Verified (or no results), valid, found, or done.
    pub const OK: u8 = 0;
    /// The results were rejected, or the attestation is not valid (or not `verified` with
    /// `--require-verified`).
    pub const REJECTED: u8 = 1;
    /// `get`: no attestation for that TaskRun.
    pub const NOT_FOUND: u8 = 3;
    /// `EX_USAGE`: bad arguments.
    pub const USAGE: u8 = 64;
    /// `EX_DATAERR`: an input file is not what it should be (TaskRun, attestation, bundle).
    pub const BAD_INPUT: u8 = 65;
    /// `EX_NOINPUT`: an input file cannot be read.
    pub const NO_INPUT: u8 = 66;
    /// `EX_UNAVAILABLE`: NATS is unreachable, or the deployment's streams or buckets are missing.
    pub const UNAVAILABLE: u8 = 69;
    /// `EX_SOFTWARE`: anything else (writing the output failed).
    pub const SOFTWARE: u8 = 70;
}

/// The exit codes, for `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0   verified (or no results), valid, found
  1   the results were rejected, or the attestation is not valid
      (or its verdict is not `verified` with --require-verified)
  3   get: no attestation for that TaskRun
  64  usage: bad arguments (for verify: neither --attestor-id nor --trust-domain)
  65  an input file is not a TaskRun, an attestation or a PEM bundle
  66  an input file cannot be read
  69  NATS is unreachable, or the attestation stream or buckets do not exist
  70  internal error (the output could not be written)";

/// Why a command could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// An input file cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An input file is not what it should be.
    #[error("{path} is not {expected}: {reason}")]
    BadInput {
        /// The file.
        path: PathBuf,
        /// What it should be.
        expected: &'static str,
        /// Why not.
        reason: String,
    },
    /// NATS is unreachable or refused us.
    #[error(transparent)]
    Connect(#[from] NatsConnectError),
    /// A bucket operation failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The attestation stream cannot be read.
    #[error("reading the attestation stream {stream}")]
    Stream {
        /// The stream.
        stream: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No attestation for the TaskRun asked for.
    #[error("no attestation for {0}")]
    NotFound(String),
    /// Writing the output failed.
    #[error("writing the output")]
    Output(#[from] std::io::Error),
}

impl CliError {
    /// The exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => exit_code::USAGE,
            CliError::Read { .. } => exit_code::NO_INPUT,
            CliError::BadInput { .. } => exit_code::BAD_INPUT,
            CliError::Connect(_) | CliError::Stream { .. } => exit_code::UNAVAILABLE,
            CliError::Store(error) => match error.kind() {
                StoreErrorKind::Corrupt => exit_code::BAD_INPUT,
                StoreErrorKind::Key => exit_code::USAGE,
                StoreErrorKind::Unavailable
                | StoreErrorKind::MissingBucket
                | StoreErrorKind::Encode => exit_code::UNAVAILABLE,
            },
            CliError::NotFound(_) => exit_code::NOT_FOUND,
            CliError::Output(_) => exit_code::SOFTWARE,
        }
    }

    /// The error and its causes, joined by `: `.
    pub fn chain(&self) -> String {
        countersign_runtime::error_chain(self)
    }
}

/// How a command that completed ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Verified, valid, found, done.
    Success,
    /// Rejected, or not valid.
    Rejected,
}

impl Outcome {
    /// The exit code.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Success => exit_code::OK,
            Outcome::Rejected => exit_code::REJECTED,
        }
    }
}
