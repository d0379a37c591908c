//! The identifiers of a TaskRun (namespace, name, UID) checked against what Kubernetes allows,
//! before any of them goes into a subject, a KV key or an API path.
//!
//! Everything the API server stores passes these checks; a CloudEvent may carry anything. An
//! identifier Kubernetes would refuse is refused here too: at the ingress with 400, on the watch
//! path (which cannot see one from a conforming API server) by skipping the object. So a UID of a
//! few KiB never reaches nats-server as a KV key longer than its control line.
//!
//! - namespace: an RFC 1123 label (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 bytes);
//! - name: an RFC 1123 subdomain (such labels joined by `.`, at most 253 bytes);
//! - UID: 1 to [`MAX_UID_BYTES`] bytes of `[A-Za-z0-9_=-]` (the API server writes UUIDs, 36).

/// The longest namespace: an RFC 1123 label.
pub const MAX_NAMESPACE_BYTES: usize = 63;
/// The longest object name: an RFC 1123 subdomain.
pub const MAX_NAME_BYTES: usize = 253;
/// The longest UID taken. Kubernetes writes UUIDs (36 bytes); the bound leaves room for other
/// API servers while keeping every KV key and event id built from it small.
pub const MAX_UID_BYTES: usize = 128;

/// An identifier Kubernetes does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidIdentifier {
    /// The namespace is not an RFC 1123 label.
    #[error(
        "metadata.namespace is not an RFC 1123 label of at most {MAX_NAMESPACE_BYTES} bytes ({length} bytes)"
    )]
    Namespace { length: usize },
    /// The name is not an RFC 1123 subdomain.
    #[error(
        "metadata.name is not an RFC 1123 subdomain of at most {MAX_NAME_BYTES} bytes ({length} bytes)"
    )]
    Name { length: usize },
    /// The UID is not 1 to [`MAX_UID_BYTES`] bytes of `[A-Za-z0-9_=-]`.
    #[error("metadata.uid is not 1 to {MAX_UID_BYTES} bytes of [A-Za-z0-9_=-] ({length} bytes)")]
    Uid { length: usize },
}

/// Whether `text` is an RFC 1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 bytes.
pub fn is_rfc1123_label(text: &str) -> bool {
    let bytes = text.as_bytes();
    let alphanumeric = |byte: &u8| byte.is_ascii_lowercase() || byte.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAMESPACE_BYTES
        && bytes.first().is_some_and(alphanumeric)
        && bytes.last().is_some_and(alphanumeric)
        && bytes.iter().all(|byte| alphanumeric(byte) || *byte == b'-')
}

/// Whether `text` is an RFC 1123 subdomain: labels joined by `.`, at most 253 bytes.
pub fn is_rfc1123_subdomain(text: &str) -> bool {
    text.len() <= MAX_NAME_BYTES && text.split('.').all(is_rfc1123_label)
}

/// Whether `text` is a UID the watcher takes: 1 to [`MAX_UID_BYTES`] bytes of `[A-Za-z0-9_=-]`.
pub fn is_valid_uid(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_UID_BYTES
        && text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'='))
}

/// Checks a TaskRun's namespace, name and UID.
pub fn check_taskrun_identifiers(
    namespace: &str,
    name: &str,
    uid: &str,
) -> Result<(), InvalidIdentifier> {
    if !is_rfc1123_label(namespace) {
        return Err(InvalidIdentifier::Namespace {
            length: namespace.len(),
        });
    }
    if !is_rfc1123_subdomain(name) {
        return Err(InvalidIdentifier::Name { length: name.len() });
    }
    if !is_valid_uid(uid) {
        return Err(InvalidIdentifier::Uid { length: uid.len() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "6f1c2b8e-4d3a-4e7f-9a51-2c8d0e7b3f14";

    #[test]
    fn what_kubernetes_allows_passes() {
        let label = "a".repeat(63);
        let longest = format!("{label}.{label}.{label}.{}", "a".repeat(61));
        assert_eq!(longest.len(), MAX_NAME_BYTES);
        for name in ["a", "build-push-run-x7k2p", "build.v1", "0abc", &longest] {
            assert!(is_rfc1123_subdomain(name), "{name:?}");
        }
        assert!(is_rfc1123_label(&"a".repeat(63)));
        assert_eq!(check_taskrun_identifiers("ci", "build.v1", UID), Ok(()));
        assert!(is_valid_uid(&"u".repeat(MAX_UID_BYTES)));
    }

    #[test]
    fn each_identifier_is_refused_with_its_own_error() {
        let label = "a".repeat(63);
        let too_long = format!("{label}.{label}.{label}.{}", "a".repeat(62));
        for namespace in ["", "CI", "-ci", "ci-", "c.i", "c_i", &"a".repeat(64)] {
            assert!(
                matches!(
                    check_taskrun_identifiers(namespace, "run", UID),
                    Err(InvalidIdentifier::Namespace { .. })
                ),
                "{namespace:?}"
            );
        }
        for name in [
            "",
            "Run",
            "run.",
            ".run",
            "a..b",
            "run/x",
            "rün",
            &"a".repeat(64),
            &too_long,
        ] {
            assert!(
                matches!(
                    check_taskrun_identifiers("ci", name, UID),
                    Err(InvalidIdentifier::Name { .. })
                ),
                "{name:?}"
            );
        }
        for uid in [
            "",
            "a.b",
            "a b",
            "a*",
            "a>",
            "ü",
            &"u".repeat(MAX_UID_BYTES + 1),
        ] {
            assert!(
                matches!(
                    check_taskrun_identifiers("ci", "run", uid),
                    Err(InvalidIdentifier::Uid { .. })
                ),
                "{uid:?}"
            );
        }
    }
}
