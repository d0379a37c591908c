//! `countersign export`: a TaskRun's stored attestation written as files other tools read.
//!
//! - `attestation.sigstore.json`: the results attestation as a Sigstore bundle v0.3
//!   (`cosign verify-blob-attestation --bundle`, `countersign verify --attestation`);
//! - `vsa-<n>.sigstore.json`: its SLSA VSAs as Sigstore bundles, `0` the TaskRun's, then one
//!   per artifact, as the attestor stored them in `{PREFIX}_EXPORTS`;
//! - `export.json`: the export's manifest (which VSA is about which artifact);
//! - with `--trust-bundle`, `trusted_root.json`: cosign's `--trusted-root` made from a SPIRE
//!   trust bundle (and with `--timestamp-authority-chain`, naming that RFC 3161 timestamp
//!   authority too, for `cosign … --use-signed-timestamps`).
//!
//! An attestation stored before exports existed (no manifest) is still written as its bundle,
//! made here from the stored envelope and chain; it has no VSAs. Nothing read is trusted: the
//! files are for a verifier to check.

use std::io::Write;
use std::path::{Path, PathBuf};

use countersign_events::AttestationEvent;
use countersign_identity::sigstore_bundle::{
    SigstoreBundle, trusted_root_json, trusted_root_json_with_timestamp_authority,
};
use countersign_runtime::error_chain;
use countersign_verdict::attestation::AttestationEventExt as _;
use countersign_verdict::export_store::{EXPORTS_BUCKET, ExportStore};
use countersign_verdict::store::{AttestationStore, StoreError, StoreErrorKind};

use crate::args::{ExportArgs, NatsArgs};
use crate::exit::{CliError, Outcome};
use crate::inputs::{read_bundle, read_timestamp_authority_chain, trust_domain};
use crate::nats::jetstream;

/// The results attestation's file name.
pub const ATTESTATION_FILE: &str = "attestation.sigstore.json";
/// The manifest's file name.
pub const MANIFEST_FILE: &str = "export.json";
/// The trusted root's file name.
pub const TRUSTED_ROOT_FILE: &str = "trusted_root.json";

/// The file name of VSA `index`.
pub fn vsa_file(index: usize) -> String {
    format!("vsa-{index}.sigstore.json")
}

/// Runs `export`.
pub async fn export(
    nats: &NatsArgs,
    args: &ExportArgs,
    out: &mut dyn Write,
) -> Result<Outcome, CliError> {
    let trusted_root = match (&args.trust_bundle, &args.trust_domain) {
        (Some(path), Some(text)) => {
            let trust_domain = trust_domain(text)?;
            let bundles = read_bundle(path, Some(&trust_domain))?;
            let root = match &args.timestamp_authority_chain {
                Some(chain_path) => trusted_root_json_with_timestamp_authority(
                    &bundles,
                    &trust_domain,
                    &read_timestamp_authority_chain(chain_path)?,
                ),
                None => trusted_root_json(&bundles, &trust_domain),
            };
            Some(root.map_err(|error| CliError::BadInput {
                path: path.clone(),
                expected: "a PEM trust bundle",
                reason: error_chain(&error),
            })?)
        }
        _ => None,
    };
    let (jetstream, subjects) = jetstream(nats).await?;
    let attestations = AttestationStore::open(&jetstream, &subjects).await?;
    let uid = match (&args.uid, &args.taskrun) {
        (Some(uid), _) => uid.clone(),
        (None, Some(taskrun)) => {
            let (namespace, name) = taskrun
                .split_once('/')
                .filter(|(namespace, name)| !namespace.is_empty() && !name.is_empty())
                .ok_or_else(|| CliError::Usage(format!("{taskrun:?} is not NAMESPACE/NAME")))?;
            attestations
                .lookup(namespace, name)
                .await?
                .ok_or_else(|| CliError::NotFound(format!("TaskRun {taskrun}")))?
                .uid
        }
        (None, None) => return Err(CliError::Usage("give NAMESPACE/NAME or --uid".to_owned())),
    };
    let attestation = attestations
        .get(&uid)
        .await?
        .ok_or_else(|| CliError::NotFound(format!("TaskRun uid {uid}")))?;

    std::fs::create_dir_all(&args.output).map_err(|source| CliError::Read {
        path: args.output.clone(),
        source,
    })?;
    let exports = match ExportStore::open(&jetstream, &subjects).await {
        Ok(exports) => Some(exports),
        Err(error) if error.kind() == StoreErrorKind::MissingBucket => None,
        Err(error) => return Err(error.into()),
    };
    let manifest = match &exports {
        Some(exports) => exports.manifest(&uid).await?,
        None => None,
    };
    match (exports, manifest) {
        (Some(exports), Some(manifest)) => {
            let bucket = subjects
                .kv_bucket_name(EXPORTS_BUCKET)
                .map_err(StoreError::from)?;
            let bundle = stored_bundle(&exports, &bucket, &manifest.data.bundle_key).await?;
            let path = write(&args.output, ATTESTATION_FILE, &bundle)?;
            writeln!(
                out,
                "wrote {} (the results attestation, verdict {})",
                path.display(),
                attestation.data.verdict()
            )?;
            for (index, vsa) in manifest.data.vsas.iter().enumerate() {
                let bundle = stored_bundle(&exports, &bucket, &vsa.key).await?;
                let path = write(&args.output, &vsa_file(index), &bundle)?;
                let about = match &vsa.artifact {
                    Some(artifact) => format!("{}@{}", artifact.uri, artifact.digest),
                    None => format!("the TaskRun, {}", vsa.resource_uri),
                };
                writeln!(
                    out,
                    "wrote {} (VSA {:?} for {about})",
                    path.display(),
                    vsa.verification_result
                )?;
            }
            let manifest_json = serde_json::to_vec_pretty(&manifest.data)
                .map_err(|error| CliError::Output(std::io::Error::other(error)))?;
            let path = write(&args.output, MANIFEST_FILE, &manifest_json)?;
            writeln!(out, "wrote {}", path.display())?;
        }
        _ => {
            let path = write_results_bundle(&args.output, &attestation.data)?;
            writeln!(
                out,
                "wrote {} (the results attestation, verdict {}); no VSAs are stored for it",
                path.display(),
                attestation.data.verdict()
            )?;
        }
    }
    if let Some(root) = trusted_root {
        let path = write(&args.output, TRUSTED_ROOT_FILE, &root)?;
        writeln!(out, "wrote {}", path.display())?;
    }
    Ok(Outcome::Success)
}

/// A bundle the manifest names (which the attestor stored before the manifest).
async fn stored_bundle(
    exports: &ExportStore,
    bucket: &str,
    key: &str,
) -> Result<Vec<u8>, StoreError> {
    exports
        .bundle(key)
        .await?
        .map(|bytes| bytes.to_vec())
        .ok_or_else(|| {
            StoreError::Kv(countersign_events::kv::KvError::Vanished {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
            })
        })
}

/// The results bundle made from the stored event itself.
fn write_results_bundle(dir: &Path, event: &AttestationEvent) -> Result<PathBuf, CliError> {
    let corrupt = |source: Box<dyn std::error::Error + Send + Sync>| {
        CliError::Store(StoreError::Corrupt {
            bucket: "attestations".to_owned(),
            key: event.taskrun().uid.clone(),
            source,
        })
    };
    let signed = event
        .signed_attestation()
        .map_err(|error| corrupt(Box::new(error)))?;
    let bundle =
        SigstoreBundle::from_attestation(&signed).map_err(|error| corrupt(Box::new(error)))?;
    write(dir, ATTESTATION_FILE, &bundle.to_json())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, CliError> {
    let path = dir.join(name);
    std::fs::write(&path, bytes)?;
    Ok(path)
}
