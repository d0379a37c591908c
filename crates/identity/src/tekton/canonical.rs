//! The bytes Tekton signs for a result value: `canonical(value)`, Tekton's `getResultValue`
//! (`pkg/spire/verify.go`), which parses the raw text with `ParamValue.UnmarshalJSON` and
//! flattens it:
//!
//! * empty text gives `""`;
//! * text starting with `[` that parses as a JSON array of strings gives the elements joined
//!   with `,` (so `["a,b"]` and `["a","b"]` sign the same bytes);
//! * text starting with `{` that parses as a JSON object of strings gives `k1,v1,k2,v2,...`
//!   with keys sorted bytewise;
//! * text that parses as a JSON string literal (or `null`) gives the unescaped string (or `""`);
//! * anything else is signed as is (`hello`, `sha256:...`, `123`, `[1,2]`).
//!
//! As in Go, a `null` inside an array or object reads as `""`, and duplicate object keys keep the
//! last value. One known divergence: a JSON string with an unpaired UTF-16 surrogate escape
//! (`"\ud800"`) is decoded by Go to U+FFFD but is signed raw here; no realistic result has one.
//!
//! [`ResultValue`] is the typed form found in `status.results[].value`; its
//! [`ResultValue::canonical`] gives the same bytes the step signed for the raw file text.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The bytes Tekton signs for the raw result text `value`.
pub fn canonical(value: &str) -> String {
    if value.is_empty() {
        return String::new();
    }
    if value.starts_with('[')
        && let Ok(elements) = serde_json::from_str::<Vec<Option<String>>>(value)
    {
        return join_array(elements.into_iter().map(Option::unwrap_or_default));
    }
    if value.starts_with('{')
        && let Ok(object) = serde_json::from_str::<BTreeMap<String, Option<String>>>(value)
    {
        return join_object(
            object
                .into_iter()
                .map(|(key, value)| (key, value.unwrap_or_default())),
        );
    }
    match serde_json::from_str::<Option<String>>(value) {
        Ok(string) => string.unwrap_or_default(),
        Err(_) => value.to_owned(),
    }
}

fn join_array(elements: impl Iterator<Item = String>) -> String {
    elements.collect::<Vec<_>>().join(",")
}

fn join_object(sorted_pairs: impl Iterator<Item = (String, String)>) -> String {
    sorted_pairs
        .flat_map(|(key, value)| [key, value])
        .collect::<Vec<_>>()
        .join(",")
}

/// A typed result value as it appears in `status.results[].value` (or `taskResults` in
/// v1beta1): a string, an array of strings or an object of strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ResultValue {
    /// `type: string`: the raw file text (Tekton keeps it unparsed).
    String(String),
    /// `type: array`.
    Array(Vec<String>),
    /// `type: object`.
    Object(BTreeMap<String, String>),
}

impl ResultValue {
    /// The bytes the step signed for this value: `canonical` of a string, the `,`-join of an
    /// array, the sorted `k,v` pairs of an object.
    pub fn canonical(&self) -> String {
        match self {
            Self::String(raw) => canonical(raw),
            Self::Array(elements) => join_array(elements.iter().cloned()),
            Self::Object(object) => join_object(
                object
                    .iter()
                    .map(|(key, value)| (key.clone(), value.clone())),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_empty() {
        assert_eq!(canonical(""), "");
    }

    #[test]
    fn array_of_strings_is_joined() {
        assert_eq!(canonical(r#"["latest","v1.4.2"]"#), "latest,v1.4.2");
        assert_eq!(canonical("[]"), "");
        assert_eq!(canonical(r#"["a",null]"#), "a,");
    }

    #[test]
    fn array_ambiguity_is_preserved() {
        assert_eq!(canonical(r#"["a,b"]"#), canonical(r#"["a","b"]"#));
    }

    #[test]
    fn object_of_strings_is_sorted_pairs() {
        assert_eq!(
            canonical(r#"{"url":"r/app","digest":"sha256:1"}"#),
            "digest,sha256:1,url,r/app"
        );
        // Byte order: upper case before lower case.
        assert_eq!(canonical(r#"{"b":"1","B":"2","a":"3"}"#), "B,2,a,3,b,1");
        assert_eq!(canonical(r#"{"a":"1","a":"2"}"#), "a,2");
        assert_eq!(canonical("{}"), "");
    }

    #[test]
    fn string_literal_is_unquoted() {
        assert_eq!(canonical(r#""x""#), "x");
        assert_eq!(canonical(r#""a\"b\u00e9""#), "a\"bé");
        assert_eq!(canonical("null"), "");
        assert_eq!(canonical(r#"  "padded""#), "padded");
    }

    #[test]
    fn everything_else_is_raw() {
        for raw in [
            "hello",
            "sha256:5d6e",
            "123",
            "[1,2]",
            r#"{"a":1}"#,
            r#"["a"] trailing"#,
            " [\"a\"]",
            "true",
            "-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n",
        ] {
            assert_eq!(canonical(raw), raw, "{raw:?}");
        }
    }

    #[test]
    fn typed_values_match_the_raw_form() {
        let array: ResultValue = serde_json::from_str(r#"["latest","v1.4.2"]"#).unwrap();
        assert_eq!(array.canonical(), canonical(r#"["latest","v1.4.2"]"#));
        let object: ResultValue =
            serde_json::from_str(r#"{"url":"r/app","digest":"sha256:1"}"#).unwrap();
        assert_eq!(object.canonical(), "digest,sha256:1,url,r/app");
        // A string-typed result keeps its raw text, quotes included, and is canonicalised.
        let quoted = ResultValue::String("\"x\"".to_owned());
        assert_eq!(quoted.canonical(), "x");
        let plain = ResultValue::String("abc".to_owned());
        assert_eq!(plain.canonical(), "abc");
    }
}
