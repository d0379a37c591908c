//! Signer: signs TaskRun results with the pod's SVID, in Tekton's format.
//!
//! For clusters whose Tekton entrypointer does not sign (`enforce-nonfalsifiability` off, or a
//! build without SPIRE), a step runs `countersign-signer` after writing its results. It:
//!
//! 1. reads the results directory (Tekton's layout, `/tekton/results/<name>`), in the Task's
//!    declared order when `--results` gives it, else every file by name; signing material left
//!    by an earlier step (`SVID`, `RESULT_MANIFEST`, `*.sig`) is never signed;
//! 2. fetches the pod's X509-SVID from the Workload API (`--socket`, else
//!    `SPIFFE_ENDPOINT_SOCKET`, else Tekton's `unix:///spiffe-workload-api/spire-agent.sock`),
//!    retrying "no identity" (`PERMISSION_DENIED`, the registrar has not created the entry
//!    yet) and an unreachable agent with backoff until `--timeout`;
//! 3. signs exactly as the entrypointer does (`countersign_identity::tekton::sign_results`) and
//!    writes `SVID`, `<name>.sig`, `RESULT_MANIFEST` and `RESULT_MANIFEST.sig` beside the
//!    results, so a Task that declares them as results carries them into the termination
//!    message exactly like the entrypointer's output;
//! 4. with `--print-termination-message`, prints the JSON array the entrypointer would write.
//!
//! Every failure has its own exit code ([`exit_code`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use countersign_identity::crypto::SigningKeyError;
use countersign_identity::svid::{SigningSvid, SigningSvidError};
pub use countersign_identity::tekton::termination::MAX_TERMINATION_MESSAGE_BYTES;
use countersign_identity::tekton::{
    SignResultsError, TerminationMessage, is_signing_key, sign_results, signed_step_entries,
};
use countersign_identity::workload::{
    EndpointConfigError, FetchSvidError, TEKTON_DEFAULT_SOCKET, WorkloadEndpoint,
    fetch_svid_with_retry,
};

/// Exit codes (from BSD's `sysexits.h` where one fits).
pub mod exit_code {
    /// Signed.
    pub const OK: u8 = 0;
    /// `EX_USAGE`: bad flags or an invalid Workload API address.
    pub const USAGE: u8 = 64;
    /// `EX_DATAERR`: a result is not UTF-8, or its name is reserved for signing material.
    pub const BAD_RESULTS: u8 = 65;
    /// `EX_NOINPUT`: the results directory (or a result file) cannot be read.
    pub const RESULTS_UNREADABLE: u8 = 66;
    /// `EX_UNAVAILABLE`: the Workload API socket does not exist.
    pub const NO_SOCKET: u8 = 69;
    /// `EX_SOFTWARE`: signing itself failed.
    pub const SIGNING_FAILED: u8 = 70;
    /// `EX_CANTCREAT`: a signature file cannot be written.
    pub const CANNOT_WRITE: u8 = 73;
    /// `EX_TEMPFAIL`: no SVID before the timeout (no entry for this pod, or no agent).
    pub const TIMED_OUT: u8 = 75;
    /// `EX_PROTOCOL`: the agent refused the request, or sent an SVID that is not usable.
    pub const AGENT_REFUSED: u8 = 76;
    /// `EX_CONFIG`: the SVID's key type cannot sign (only EC P-256 and RSA can).
    pub const UNSUPPORTED_KEY_TYPE: u8 = 78;
}

/// The exit codes, for `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0   the results were signed
  64  usage: bad flags or an invalid Workload API address
  65  a result is not UTF-8, or is named like signing material (SVID, RESULT_MANIFEST, *.sig)
  66  the results directory or a result file cannot be read
  69  the Workload API socket does not exist
  70  signing failed
  73  a signature file cannot be written
  75  no SVID before --timeout (no registration entry for this pod yet, or no agent)
  76  the agent refused the request or sent an unusable SVID
  78  the SVID's key type cannot sign (only EC P-256 and RSA keys can)";

/// The command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "countersign-signer",
    version,
    about = "Signs a TaskRun step's results with the pod's SPIFFE SVID, exactly as Tekton's \
             entrypointer does (SVID, RESULT_MANIFEST, <name>.sig, RESULT_MANIFEST.sig).",
    after_help = EXIT_CODES_HELP
)]
pub struct Args {
    /// The results directory: one file per result, named after it.
    #[arg(long, value_name = "DIR", default_value = "/tekton/results")]
    pub results_dir: PathBuf,
    /// The results to sign in the Task's declared order, comma-separated (missing files are
    /// skipped, as the entrypointer does). Default: every file in the directory, by name.
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    pub results: Option<Vec<String>>,
    /// The Workload API address (`unix:///path` or `tcp://ip:port`).
    #[arg(long, value_name = "ADDRESS", env = "SPIFFE_ENDPOINT_SOCKET", default_value = TEKTON_DEFAULT_SOCKET)]
    pub socket: String,
    /// How long to wait for the pod's SVID (its registration entry may not exist yet).
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Also print the termination-message JSON array (results, then signing material) that
    /// Tekton's entrypointer would write.
    #[arg(long)]
    pub print_termination_message: bool,
    /// Do not write the signing files (with --print-termination-message, to only print).
    #[arg(long, requires = "print_termination_message")]
    pub no_write: bool,
}

/// Why signing failed; [`SignerError::exit_code`] gives the process exit code.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    /// The Workload API address does not parse.
    #[error("invalid Workload API address")]
    Endpoint(#[from] EndpointConfigError),
    /// The Workload API socket does not exist.
    #[error("no Workload API socket at {path}")]
    NoSocket {
        /// The socket path.
        path: PathBuf,
    },
    /// The results directory cannot be read.
    #[error("cannot read the results directory {path}")]
    ResultsDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A result file cannot be read.
    #[error("cannot read result {name}")]
    ResultUnreadable {
        /// The result.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A result is not UTF-8 text.
    #[error("result {name} is not UTF-8 text")]
    ResultNotUtf8 {
        /// The result.
        name: String,
    },
    /// A result name cannot be signed (reserved, duplicated, or with a `,`).
    #[error(transparent)]
    BadResultName(SignResultsError),
    /// Signing failed.
    #[error("signing failed")]
    Signing(#[source] SignResultsError),
    /// No SVID, or an unusable one.
    #[error(transparent)]
    Fetch(#[from] FetchSvidError),
    /// A signing file cannot be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl SignerError {
    /// The process exit code ([`exit_code`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            SignerError::Endpoint(_) => exit_code::USAGE,
            SignerError::NoSocket { .. } => exit_code::NO_SOCKET,
            SignerError::ResultsDir { .. } | SignerError::ResultUnreadable { .. } => {
                exit_code::RESULTS_UNREADABLE
            }
            SignerError::ResultNotUtf8 { .. } | SignerError::BadResultName(_) => {
                exit_code::BAD_RESULTS
            }
            SignerError::Signing(_) => exit_code::SIGNING_FAILED,
            SignerError::Fetch(FetchSvidError::TimedOut { .. }) => exit_code::TIMED_OUT,
            SignerError::Fetch(FetchSvidError::Refused(_)) => exit_code::AGENT_REFUSED,
            SignerError::Fetch(FetchSvidError::Svid(SigningSvidError::Key(
                SigningKeyError::UnsupportedKeyType { .. },
            ))) => exit_code::UNSUPPORTED_KEY_TYPE,
            SignerError::Fetch(FetchSvidError::Svid(_)) => exit_code::AGENT_REFUSED,
            SignerError::Write { .. } => exit_code::CANNOT_WRITE,
        }
    }
}

/// What a run produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The signed results (name, raw value), in manifest order.
    pub results: Vec<(String, String)>,
    /// The SVID's SPIFFE ID.
    pub spiffe_id: String,
    /// The termination-message JSON array (results, then signing material), Go-compact.
    pub termination_message: String,
    /// The signing files written (empty with `--no-write`).
    pub written: Vec<PathBuf>,
}

/// The results to sign: the names given, in that order, whose files exist; or every regular
/// file of the directory by name. Signing material and dot-files are never results.
pub fn read_results(
    dir: &Path,
    declared: Option<&[String]>,
) -> Result<Vec<(String, String)>, SignerError> {
    let dir_error = |source| SignerError::ResultsDir {
        path: dir.to_owned(),
        source,
    };
    let names: Vec<String> = match declared {
        Some(names) => {
            if let Some(name) = names.iter().find(|name| is_signing_key(name)) {
                return Err(SignerError::BadResultName(SignResultsError::ReservedName {
                    name: name.clone(),
                }));
            }
            // Make an unreadable directory an error even when every declared file is missing.
            std::fs::read_dir(dir).map_err(dir_error)?;
            names
                .iter()
                .filter(|name| !name.is_empty())
                .cloned()
                .collect()
        }
        None => {
            let mut names = Vec::new();
            for entry in std::fs::read_dir(dir).map_err(dir_error)? {
                let entry = entry.map_err(dir_error)?;
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                let is_file = entry
                    .file_type()
                    .map(|kind| kind.is_file() || kind.is_symlink())
                    .map_err(dir_error)?;
                if !is_file || name.starts_with('.') || is_signing_key(&name) {
                    continue;
                }
                names.push(name);
            }
            names.sort();
            names
        }
    };
    let mut results = Vec::with_capacity(names.len());
    for name in names {
        let path = dir.join(&name);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            // A declared result the step did not write is skipped, as the entrypointer does.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(SignerError::ResultUnreadable { name, source }),
        };
        let value = String::from_utf8(bytes)
            .map_err(|_| SignerError::ResultNotUtf8 { name: name.clone() })?;
        results.push((name, value));
    }
    Ok(results)
}

/// The socket path of a `unix:` address, if it is one.
fn unix_socket_path(address: &str) -> Option<PathBuf> {
    let path = address
        .strip_prefix("unix://")
        .or_else(|| address.strip_prefix("unix:"))?;
    Some(PathBuf::from(path))
}

/// Signs the results of `args.results_dir` with the SVID from the Workload API.
pub async fn run(args: &Args) -> Result<Signed, SignerError> {
    let endpoint = WorkloadEndpoint::new(args.socket.as_str())?;
    if let Some(path) = unix_socket_path(endpoint.as_str())
        && !path.exists()
    {
        return Err(SignerError::NoSocket { path });
    }
    // Read (and refuse reserved names) before waiting for an SVID.
    let results = read_results(&args.results_dir, args.results.as_deref())?;
    let svid = fetch_svid_with_retry(&endpoint, args.timeout).await?;
    sign_with(args, results, &svid)
}

/// Signs `results` with `svid` and writes (unless `--no-write`) the signing files.
pub fn sign_with(
    args: &Args,
    results: Vec<(String, String)>,
    svid: &SigningSvid,
) -> Result<Signed, SignerError> {
    let signing = sign_results(&results, svid).map_err(|error| match error {
        SignResultsError::Signing(_) => SignerError::Signing(error),
        other => SignerError::BadResultName(other),
    })?;
    let mut written = Vec::new();
    if !args.no_write {
        for entry in &signing {
            let path = args.results_dir.join(&entry.key);
            std::fs::write(&path, entry.value.as_bytes()).map_err(|source| SignerError::Write {
                path: path.clone(),
                source,
            })?;
            written.push(path);
        }
    }
    let termination_message = TerminationMessage::from_entries(
        signed_step_entries(&results, svid).map_err(SignerError::Signing)?,
    )
    .to_json();
    Ok(Signed {
        results,
        spiffe_id: svid.spiffe_id().to_string(),
        termination_message,
        written,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path) -> Args {
        Args::try_parse_from([
            "countersign-signer",
            "--results-dir",
            dir.to_str().unwrap(),
            "--socket",
            "unix:///nonexistent/agent.sock",
        ])
        .unwrap()
    }

    #[test]
    fn every_file_by_name_skipping_signing_material_and_dot_files() {
        let dir = tempfile::tempdir().unwrap();
        for (name, value) in [
            ("tags", "[\"a\"]"),
            ("commit", "abc"),
            ("SVID", "pem"),
            ("commit.sig", "sig"),
            ("RESULT_MANIFEST", "commit"),
            (".hidden", "x"),
        ] {
            std::fs::write(dir.path().join(name), value).unwrap();
        }
        std::fs::create_dir(dir.path().join("subdir")).unwrap();
        let results = read_results(dir.path(), None).unwrap();
        assert_eq!(
            results,
            vec![
                ("commit".to_owned(), "abc".to_owned()),
                ("tags".to_owned(), "[\"a\"]".to_owned())
            ]
        );
    }

    #[test]
    fn declared_order_is_kept_and_missing_files_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b"), "2").unwrap();
        std::fs::write(dir.path().join("a"), "1").unwrap();
        let declared = ["b".to_owned(), "missing".to_owned(), "a".to_owned()];
        let results = read_results(dir.path(), Some(&declared)).unwrap();
        let names: Vec<&str> = results.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["b", "a"]);
        let reserved = ["a".to_owned(), "a.sig".to_owned()];
        let error = read_results(dir.path(), Some(&reserved)).unwrap_err();
        assert_eq!(error.exit_code(), exit_code::BAD_RESULTS);
    }

    #[test]
    fn unreadable_directories_and_non_utf8_results_have_their_exit_codes() {
        let missing = read_results(Path::new("/nonexistent/results"), None).unwrap_err();
        assert_eq!(missing.exit_code(), exit_code::RESULTS_UNREADABLE);
        let declared = ["a".to_owned()];
        let missing = read_results(Path::new("/nonexistent/results"), Some(&declared)).unwrap_err();
        assert_eq!(missing.exit_code(), exit_code::RESULTS_UNREADABLE);

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bin"), [0xff, 0xfe]).unwrap();
        let error = read_results(dir.path(), None).unwrap_err();
        assert!(matches!(error, SignerError::ResultNotUtf8 { .. }));
        assert_eq!(error.exit_code(), exit_code::BAD_RESULTS);
    }

    #[tokio::test]
    async fn a_missing_socket_fails_fast_and_a_bad_address_is_usage() {
        let dir = tempfile::tempdir().unwrap();
        let error = run(&args(dir.path())).await.unwrap_err();
        assert!(matches!(error, SignerError::NoSocket { .. }));
        assert_eq!(error.exit_code(), exit_code::NO_SOCKET);

        let mut bad = args(dir.path());
        bad.socket = "http://agent:8081".into();
        let error = run(&bad).await.unwrap_err();
        assert_eq!(error.exit_code(), exit_code::USAGE);
    }

    #[test]
    fn an_unsupported_key_type_has_its_own_code() {
        let error = SignerError::Fetch(FetchSvidError::Svid(SigningSvidError::Key(
            SigningKeyError::UnsupportedKeyType {
                algorithm: "EC key on curve P-384".into(),
            },
        )));
        assert_eq!(error.exit_code(), exit_code::UNSUPPORTED_KEY_TYPE);
    }

    #[test]
    fn no_write_requires_printing() {
        assert!(Args::try_parse_from(["countersign-signer", "--no-write"]).is_err());
        let parsed = Args::try_parse_from([
            "countersign-signer",
            "--no-write",
            "--print-termination-message",
            "--results",
            "a,b",
            "--timeout",
            "3s",
        ])
        .unwrap();
        assert_eq!(parsed.results, Some(vec!["a".to_owned(), "b".to_owned()]));
        assert_eq!(parsed.timeout, Duration::from_secs(3));
    }
}
