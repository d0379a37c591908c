//! Step termination messages: the JSON array of `{key, value, type}` a Tekton step writes to
//! `/tekton/termination`, optionally compressed as `tknz:` + base64 (standard alphabet, no
//! padding) of raw DEFLATE, which Tekton v1.13+ writes when
//! `enable-termination-message-compression` is on.
//!
//! Parsing follows `pkg/termination/parse.go` (v1.15.0): empty text is no entries; `tknz:` is
//! detected and inflated under a 128 KiB limit; all-empty entries are dropped. The `type` is an
//! integer or one of the legacy strings. Encoding writes Go's compact JSON (HTML characters
//! escaped as `\u003c` etc.), so sizes match what the entrypointer produces.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};

use base64::Engine as _;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

/// Prefix of a compressed termination message.
pub const COMPRESSED_PREFIX: &str = "tknz:";

/// Largest decompressed message accepted (Tekton's `maxDecompressedSize`).
pub const MAX_DECOMPRESSED_BYTES: usize = 128 * 1024;

/// Kubernetes' (and Tekton's) limit on one container's termination message.
pub const MAX_TERMINATION_MESSAGE_BYTES: usize = 4096;

/// What an entry is (`pkg/result/result.go`). Closed, with `Other` for values Tekton maps to
/// "unknown" (10), the reserved 2, or absent (0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResultType {
    /// 1: a TaskRun result (and the signing keys, which Tekton writes as type 1 too).
    TaskRunResult,
    /// 3: internal (`StartedAt`, `ExitCode`, `Reason`).
    InternalTektonResult,
    /// 4: a step result.
    StepResult,
    /// 5: step artifacts.
    StepArtifacts,
    /// 6: TaskRun artifacts.
    TaskRunArtifacts,
    /// Any other integer (0 when absent, 10 for unknown legacy strings).
    Other(i64),
}

impl ResultType {
    /// The integer written on the wire.
    pub fn as_i64(self) -> i64 {
        match self {
            Self::TaskRunResult => 1,
            Self::InternalTektonResult => 3,
            Self::StepResult => 4,
            Self::StepArtifacts => 5,
            Self::TaskRunArtifacts => 6,
            Self::Other(value) => value,
        }
    }

    /// From the integer form.
    pub fn from_i64(value: i64) -> Self {
        match value {
            1 => Self::TaskRunResult,
            3 => Self::InternalTektonResult,
            4 => Self::StepResult,
            5 => Self::StepArtifacts,
            6 => Self::TaskRunArtifacts,
            other => Self::Other(other),
        }
    }

    /// From a legacy string form; unknown strings are Tekton's `UnknownResultType` (10).
    pub fn from_legacy_str(value: &str) -> Self {
        match value {
            "TaskRunResult" => Self::TaskRunResult,
            "InternalTektonResult" => Self::InternalTektonResult,
            "StepResult" => Self::StepResult,
            "StepArtifactsResult" => Self::StepArtifacts,
            "TaskRunArtifactsResult" => Self::TaskRunArtifacts,
            _ => Self::Other(10),
        }
    }
}

impl<'de> Deserialize<'de> for ResultType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Int(i64),
            Str(String),
        }
        match Wire::deserialize(deserializer) {
            Ok(Wire::Int(value)) => Ok(Self::from_i64(value)),
            Ok(Wire::Str(value)) => Ok(Self::from_legacy_str(&value)),
            Err(_) => Err(de::Error::custom(
                "result type is neither an integer nor a string",
            )),
        }
    }
}

impl Serialize for ResultType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i64(self.as_i64())
    }
}

/// One `{key, value, type}` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TerminationEntry {
    /// Result name (or `SVID`, `<name>.sig`, `RESULT_MANIFEST`, `StartedAt`, ...).
    #[serde(default)]
    pub key: String,
    /// The raw value text.
    #[serde(default)]
    pub value: String,
    /// The entry type.
    #[serde(rename = "type", default = "absent_type")]
    pub result_type: ResultType,
}

fn absent_type() -> ResultType {
    ResultType::Other(0)
}

impl TerminationEntry {
    /// A type-1 (TaskRun result) entry.
    pub fn task_run_result(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
            result_type: ResultType::TaskRunResult,
        }
    }

    fn is_empty(&self) -> bool {
        self.key.is_empty() && self.value.is_empty() && self.result_type == ResultType::Other(0)
    }
}

/// Why a termination message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TerminationMessageError {
    /// The `tknz:` payload is not base64 (standard alphabet, no padding).
    #[error("compressed termination message is not unpadded base64")]
    Base64(#[source] base64::DecodeError),
    /// The payload is not raw DEFLATE.
    #[error("compressed termination message does not inflate")]
    Inflate(#[source] std::io::Error),
    /// Inflated past [`MAX_DECOMPRESSED_BYTES`].
    #[error("decompressed termination message exceeds {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// Not a JSON array of entries.
    #[error("termination message is not a JSON array of entries")]
    Json(#[source] serde_json::Error),
}

/// A parsed termination message, entries in written order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TerminationMessage {
    entries: Vec<TerminationEntry>,
}

impl TerminationMessage {
    /// Parses plain or `tknz:` text. Empty text is an empty message.
    pub fn parse(text: &str) -> Result<Self, TerminationMessageError> {
        if text.is_empty() {
            return Ok(Self::default());
        }
        let json = match text.strip_prefix(COMPRESSED_PREFIX) {
            Some(encoded) => decompress(encoded)?,
            None => text.to_owned(),
        };
        let entries: Vec<TerminationEntry> =
            serde_json::from_str(&json).map_err(TerminationMessageError::Json)?;
        Ok(Self {
            entries: entries
                .into_iter()
                .filter(|entry| !entry.is_empty())
                .collect(),
        })
    }

    /// From entries (in the order a step would write them).
    pub fn from_entries(entries: Vec<TerminationEntry>) -> Self {
        Self { entries }
    }

    /// The entries in written order.
    pub fn entries(&self) -> &[TerminationEntry] {
        &self.entries
    }

    /// Type-1 entries by key, the last one winning for duplicate keys (as Tekton de-duplicates).
    pub fn task_run_results(&self) -> BTreeMap<String, String> {
        self.entries
            .iter()
            .filter(|entry| entry.result_type == ResultType::TaskRunResult)
            .map(|entry| (entry.key.clone(), entry.value.clone()))
            .collect()
    }

    /// Go-compact JSON, as `pkg/termination/write.go` writes it (`type` omitted when 0).
    pub fn to_json(&self) -> String {
        let mut out = String::from("[");
        for (index, entry) in self.entries.iter().enumerate() {
            if index > 0 {
                out.push(',');
            }
            out.push_str("{\"key\":");
            push_go_json_string(&mut out, &entry.key);
            out.push_str(",\"value\":");
            push_go_json_string(&mut out, &entry.value);
            if entry.result_type.as_i64() != 0 {
                out.push_str(",\"type\":");
                out.push_str(&entry.result_type.as_i64().to_string());
            }
            out.push('}');
        }
        out.push(']');
        out
    }

    /// `tknz:` form of [`Self::to_json`]: raw DEFLATE (best compression), base64 without
    /// padding. Tekton writes it only when it is shorter than the plain JSON.
    pub fn to_compressed(&self) -> String {
        compress(self.to_json().as_bytes())
    }
}

/// `tknz:` + base64 (no padding) of raw DEFLATE of `json`.
pub fn compress(json: &[u8]) -> String {
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing into a Vec cannot fail.
    let deflated = encoder
        .write_all(json)
        .and_then(|()| encoder.finish())
        .unwrap_or_default();
    format!(
        "{COMPRESSED_PREFIX}{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(deflated)
    )
}

fn decompress(encoded: &str) -> Result<String, TerminationMessageError> {
    // Go's base64 decoder skips CR and LF.
    let cleaned: String = encoded
        .chars()
        .filter(|character| *character != '\r' && *character != '\n')
        .collect();
    let deflated = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(cleaned)
        .map_err(TerminationMessageError::Base64)?;
    let mut inflated = Vec::new();
    flate2::read::DeflateDecoder::new(deflated.as_slice())
        .take(MAX_DECOMPRESSED_BYTES as u64 + 1)
        .read_to_end(&mut inflated)
        .map_err(TerminationMessageError::Inflate)?;
    if inflated.len() > MAX_DECOMPRESSED_BYTES {
        return Err(TerminationMessageError::TooLarge {
            limit: MAX_DECOMPRESSED_BYTES,
        });
    }
    String::from_utf8(inflated).map_err(|error| {
        TerminationMessageError::Json(de::Error::custom(format!(
            "decompressed message is not UTF-8: {error}"
        )))
    })
}

/// Appends `value` as a JSON string literal the way Go's `encoding/json` writes it: `<`, `>`,
/// `&`, U+2028 and U+2029 as `\u` escapes, `\n`, `\r`, `\t`, `\b`, `\f` short, other control
/// characters as `\u00XX`.
fn push_go_json_string(out: &mut String, value: &str) {
    out.push('"');
    for character in value.chars() {
        match character {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", u32::from(character)));
            }
            control if u32::from(control) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", u32::from(control)));
            }
            other => out.push(other),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_int_and_legacy_string_types_and_drops_empty_entries() {
        let message = TerminationMessage::parse(
            r#"[{"key":"a","value":"1","type":1},{"key":"b","value":"2","type":"TaskRunResult"},{},{"key":"StartedAt","value":"x","type":"InternalTektonResult"},{"key":"c","value":"3","type":"Bogus"}]"#,
        )
        .unwrap();
        let types: Vec<ResultType> = message
            .entries()
            .iter()
            .map(|entry| entry.result_type)
            .collect();
        assert_eq!(
            types,
            vec![
                ResultType::TaskRunResult,
                ResultType::TaskRunResult,
                ResultType::InternalTektonResult,
                ResultType::Other(10),
            ]
        );
    }

    #[test]
    fn duplicate_keys_last_wins() {
        let message = TerminationMessage::parse(
            r#"[{"key":"a","value":"1","type":1},{"key":"a","value":"2","type":1}]"#,
        )
        .unwrap();
        assert_eq!(message.task_run_results()["a"], "2");
    }

    #[test]
    fn empty_text_is_empty() {
        assert!(TerminationMessage::parse("").unwrap().entries().is_empty());
    }

    #[test]
    fn go_json_encoding_escapes_html() {
        let message = TerminationMessage::from_entries(vec![TerminationEntry::task_run_result(
            "a", "<x>&\"\n",
        )]);
        assert_eq!(
            message.to_json(),
            r#"[{"key":"a","value":"\u003cx\u003e\u0026\"\n","type":1}]"#
        );
        assert_eq!(
            TerminationMessage::parse(&message.to_json()).unwrap(),
            message
        );
    }

    #[test]
    fn tknz_round_trip_with_independent_compression() {
        let json = r#"[{"key":"commit","value":"abc","type":1}]"#;
        // Compress here with flate2 + unpadded base64 directly, not through `compress`.
        let mut encoder =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(json.as_bytes()).unwrap();
        let text = format!(
            "tknz:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(encoder.finish().unwrap())
        );
        let message = TerminationMessage::parse(&text).unwrap();
        assert_eq!(message.task_run_results()["commit"], "abc");
        // And our own compressor round-trips.
        assert_eq!(
            TerminationMessage::parse(&message.to_compressed()).unwrap(),
            message
        );
    }

    #[test]
    fn tknz_over_the_limit_is_refused() {
        let big_value = "a".repeat(MAX_DECOMPRESSED_BYTES);
        let json = format!(r#"[{{"key":"k","value":"{big_value}","type":1}}]"#);
        let text = compress(json.as_bytes());
        assert!(text.len() < MAX_TERMINATION_MESSAGE_BYTES);
        assert!(matches!(
            TerminationMessage::parse(&text),
            Err(TerminationMessageError::TooLarge { .. })
        ));
        // Exactly at the limit is accepted.
        let filler = MAX_DECOMPRESSED_BYTES - r#"[{"key":"k","value":"","type":1}]"#.len();
        let json = format!(
            r#"[{{"key":"k","value":"{}","type":1}}]"#,
            "a".repeat(filler)
        );
        assert_eq!(json.len(), MAX_DECOMPRESSED_BYTES);
        assert!(TerminationMessage::parse(&compress(json.as_bytes())).is_ok());
    }

    #[test]
    fn tknz_with_padding_or_garbage_is_refused() {
        assert!(matches!(
            TerminationMessage::parse("tknz:AAAA=="),
            Err(TerminationMessageError::Base64(_))
        ));
        assert!(matches!(
            TerminationMessage::parse("tknz:////"),
            Err(TerminationMessageError::Inflate(_))
        ));
        assert!(matches!(
            TerminationMessage::parse("not json"),
            Err(TerminationMessageError::Json(_))
        ));
    }
}
