//! The public contract as files: one JSON Schema (draft 2020-12) per event type's data, generated
//! from the Rust types, and an AsyncAPI 3.0 document of the subjects (see [`asyncapi`]).
//!
//! `cargo xtask schemas` writes what [`generate`] returns under `schemas/`; a test fails when the
//! committed files drift from the types. [`validate`] checks any event data against the
//! *committed* schema of its type, so other crates' tests can prove what they emit matches the
//! published contract.

pub mod asyncapi;

use std::path::{Path, PathBuf};

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema};

use crate::data::{
    AttestationRejected, AttestationRevoked, AttestationVerified, EntryRegistered, EntryReleased,
    ExportStored, GateAllowed, GateDenied, GateWarned, StepCompleted, TaskRunCreated,
    TaskRunDeleted, TaskRunFinished, TaskRunScheduled, TrustBundleRotated,
};
use crate::event::Event;
use crate::event_type::EventType;
use crate::payload::EventPayload;

/// The file name of the AsyncAPI document under `schemas/`.
pub const ASYNCAPI_FILE: &str = "asyncapi.yaml";

/// The repository's `schemas/` directory (where the committed contract lives).
pub fn schemas_dir() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    // crates/events -> the repository root.
    manifest_dir
        .parent()
        .and_then(Path::parent)
        .unwrap_or(manifest_dir)
        .join("schemas")
}

/// The JSON Schema of one type's data, with `$id` set to its `dataschema` URI.
pub fn data_schema(event_type: EventType) -> serde_json::Value {
    let mut schema = match event_type {
        EventType::TaskRunCreated => root_schema::<TaskRunCreated>(),
        EventType::TaskRunScheduled => root_schema::<TaskRunScheduled>(),
        EventType::StepCompleted => root_schema::<StepCompleted>(),
        EventType::TaskRunFinished => root_schema::<TaskRunFinished>(),
        EventType::TaskRunDeleted => root_schema::<TaskRunDeleted>(),
        EventType::EntryRegistered => root_schema::<EntryRegistered>(),
        EventType::EntryReleased => root_schema::<EntryReleased>(),
        EventType::AttestationVerified => root_schema::<AttestationVerified>(),
        EventType::AttestationRejected => root_schema::<AttestationRejected>(),
        EventType::AttestationRevoked => root_schema::<AttestationRevoked>(),
        EventType::ExportStored => root_schema::<ExportStored>(),
        EventType::TrustBundleRotated => root_schema::<TrustBundleRotated>(),
        EventType::GateAllowed => root_schema::<GateAllowed>(),
        EventType::GateDenied => root_schema::<GateDenied>(),
        EventType::GateWarned => root_schema::<GateWarned>(),
    }
    .to_value();
    if let Some(object) = schema.as_object_mut() {
        object.insert("$id".into(), event_type.dataschema().into());
    }
    canonical(schema)
}

fn root_schema<T: JsonSchema>() -> Schema {
    SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<T>()
}

/// Every file of `schemas/`, as (path relative to `schemas/`, content). Deterministic: object
/// keys are sorted, whatever serde_json features the build unified.
pub fn generate() -> Vec<(PathBuf, String)> {
    let mut files: Vec<(PathBuf, String)> = EventType::ALL
        .into_iter()
        .map(|event_type| {
            let text = serde_json::to_string_pretty(&data_schema(event_type))
                .unwrap_or_else(|error| unreachable!("a JSON value always serializes: {error}"));
            (
                PathBuf::from(event_type.schema_file_name()),
                format!("{text}\n"),
            )
        })
        .collect();
    files.push((PathBuf::from(ASYNCAPI_FILE), asyncapi::render()));
    files
}

/// Rebuilds a JSON value with every object's keys in sorted order.
pub(crate) fn canonical(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(object) => {
            let mut entries: Vec<(String, serde_json::Value)> = object.into_iter().collect();
            entries.sort_by(|(left, _), (right, _)| left.cmp(right));
            serde_json::Value::Object(
                entries
                    .into_iter()
                    .map(|(key, value)| (key, canonical(value)))
                    .collect(),
            )
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(canonical).collect())
        }
        other => other,
    }
}

/// Why event data did not validate against its committed schema.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    /// The schema file could not be read (run `cargo xtask schemas`).
    #[error("reading the schema {path} (run `cargo xtask schemas`)")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The schema file is not JSON.
    #[error("parsing the schema {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The schema file is not a valid JSON Schema.
    #[error("compiling the schema {path}: {message}")]
    Compile { path: PathBuf, message: String },
    /// The data could not be serialized.
    #[error("serializing the event data")]
    Serialize(#[source] serde_json::Error),
    /// The data does not match the schema.
    #[error("the data of {event_type} does not match its schema: {}", errors.join("; "))]
    Invalid {
        event_type: EventType,
        errors: Vec<String>,
    },
}

/// Validates `data` against the committed schema of `event_type` (formats such as `date-time`
/// are checked too).
pub fn validate(event_type: EventType, data: &serde_json::Value) -> Result<(), ValidateError> {
    let path = schemas_dir().join(event_type.schema_file_name());
    let text = std::fs::read_to_string(&path).map_err(|source| ValidateError::Read {
        path: path.clone(),
        source,
    })?;
    let schema: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| ValidateError::Parse {
            path: path.clone(),
            source,
        })?;
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .map_err(|error| ValidateError::Compile {
            path,
            message: error.to_string(),
        })?;
    let errors: Vec<String> = validator
        .iter_errors(data)
        .map(|error| format!("{} at {}", error, error.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ValidateError::Invalid { event_type, errors })
    }
}

/// Validates an event's data against the committed schema of its type.
pub fn validate_event<T: EventPayload>(event: &Event<T>) -> Result<(), ValidateError> {
    let bytes = event.data.to_json().map_err(ValidateError::Serialize)?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(ValidateError::Serialize)?;
    validate(event.event_type, &value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_schemas_match_the_types() {
        let dir = schemas_dir();
        let mut drifted = Vec::new();
        for (path, content) in generate() {
            let committed = std::fs::read_to_string(dir.join(&path)).unwrap_or_default();
            if committed != content {
                drifted.push(path.display().to_string());
            }
        }
        assert!(
            drifted.is_empty(),
            "schemas/ is out of date with the Rust types ({}): run `cargo xtask schemas`",
            drifted.join(", ")
        );
    }

    #[test]
    fn schemas_reject_unknown_fields_and_name_their_type() {
        for event_type in EventType::ALL {
            let schema = data_schema(event_type);
            assert_eq!(
                schema["$id"],
                serde_json::Value::from(event_type.dataschema())
            );
            assert_eq!(
                schema["title"],
                serde_json::Value::from(event_type.as_str())
            );
            assert_eq!(
                schema["additionalProperties"],
                serde_json::Value::Bool(false)
            );
        }
    }

    #[test]
    fn validation_catches_mismatched_data() {
        let data = serde_json::json!({
            "taskrun": {"cluster": "c", "namespace": "n", "name": "x", "uid": "u"},
            "pod": null
        });
        validate(EventType::TaskRunDeleted, &data).unwrap();
        let wrong = serde_json::json!({"taskrun": {"cluster": "c"}, "extra": 1});
        assert!(matches!(
            validate(EventType::TaskRunDeleted, &wrong),
            Err(ValidateError::Invalid { .. })
        ));
        let bad_time = serde_json::json!({
            "taskrun": {"cluster": "c", "namespace": "n", "name": "x", "uid": "u"},
            "createdAt": "yesterday",
            "serviceAccount": null, "timeoutSeconds": null, "taskName": null
        });
        assert!(matches!(
            validate(EventType::TaskRunCreated, &bad_time),
            Err(ValidateError::Invalid { .. })
        ));
    }
}
