//! An artifact of an export, as the place to attach its bundle: the registry host, the
//! repository and the image digest, parsed from the VSA's artifact URI (an `IMAGE_URL`, an
//! `IMAGES` entry, an `ARTIFACT_OUTPUTS` `uri`: TaskRun results, so outside input) and digest.
//!
//! The URI is an image reference without its digest, as Tekton Chains reads it:
//! `registry.example.org/team/app`, `localhost:5000/app:v1` (a tag is dropped: the digest is
//! what is attached to), `team/app` (Docker Hub, `docker.io/team/app`), `app`
//! (`docker.io/library/app`). A `@digest` in the URI must be the artifact's digest. Only
//! `sha256` and `sha512` digests are pushed to (the algorithms registries serve).

use std::fmt;

use countersign_identity::vsa::{ArtifactDigest, DigestAlgorithm};

/// The longest image reference taken (the distribution spec's practical limit is 255 for the
/// repository; the host and tag add to it).
pub const MAX_REFERENCE_BYTES: usize = 512;

/// The longest repository name.
pub const MAX_REPOSITORY_BYTES: usize = 255;

/// The registry Docker Hub's references name.
pub const DOCKER_HUB: &str = "docker.io";

/// The host Docker Hub's registry API is served from.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A registry host as references and the allow-list name it: Docker Hub's other names (its
/// legacy index, its API host) are `docker.io`.
pub fn canonical_host(host: &str) -> &str {
    match host {
        "index.docker.io" | DOCKER_HUB_API => DOCKER_HUB,
        _ => host,
    }
}

/// The host that serves the registry API of `host` (a canonical host): Docker Hub's is not
/// `docker.io`.
pub fn api_host(host: &str) -> &str {
    match host {
        DOCKER_HUB => DOCKER_HUB_API,
        _ => host,
    }
}

/// Where a bundle is attached: `host/repository@digest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageTarget {
    /// The registry as references name it (`docker.io`, `localhost:5000`).
    pub host: String,
    /// The repository (`team/app`).
    pub repository: String,
    /// The image's digest.
    pub digest: ImageDigest,
}

/// A digest a registry serves: `sha256:<64 hex>` or `sha512:<128 hex>`, lower case. The VSA's
/// artifact digest ([`ArtifactDigest`], which also takes `sha384`), narrowed to what the OCI
/// image spec registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageDigest(ArtifactDigest);

/// Why an artifact cannot be attached to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// The URI is empty, too long, or has characters no reference has.
    #[error("the image reference is empty, longer than {MAX_REFERENCE_BYTES} bytes or not ASCII")]
    Malformed,
    /// The host part is not `name[:port]`.
    #[error("the registry host {host:?} is not valid")]
    Host { host: String },
    /// The repository is not the distribution spec's `[a-z0-9]+([._-][a-z0-9]+)*(/...)*`.
    #[error("the repository {repository:?} is not valid")]
    Repository { repository: String },
    /// The tag is not `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
    #[error("the tag {tag:?} is not valid")]
    Tag { tag: String },
    /// The digest is not `sha256:<64 hex>` or `sha512:<128 hex>`.
    #[error("the digest {digest:?} is not a sha256 or sha512 digest")]
    Digest { digest: String },
    /// The URI names a digest other than the artifact's.
    #[error("the reference names digest {in_reference}, the artifact is {artifact}")]
    DigestMismatch {
        in_reference: String,
        artifact: String,
    },
}

impl ImageDigest {
    /// Parses `alg:hex`.
    pub fn parse(text: &str) -> Result<ImageDigest, ReferenceError> {
        match ArtifactDigest::parse(text) {
            Ok(digest) if digest.algorithm() != DigestAlgorithm::Sha384 => Ok(ImageDigest(digest)),
            _ => Err(ReferenceError::Digest {
                digest: text.chars().take(140).collect(),
            }),
        }
    }

    /// The algorithm, `sha256` or `sha512`.
    pub fn algorithm(&self) -> &'static str {
        self.0.algorithm().as_str()
    }

    /// The hex digits.
    pub fn hex(&self) -> &str {
        self.0.hex()
    }

    /// Whether `content` hashes to this digest, by its own algorithm.
    pub fn matches(&self, content: &[u8]) -> bool {
        let algorithm = match self.0.algorithm() {
            DigestAlgorithm::Sha512 => &ring::digest::SHA512,
            DigestAlgorithm::Sha384 => &ring::digest::SHA384,
            DigestAlgorithm::Sha256 => &ring::digest::SHA256,
        };
        let computed = ring::digest::digest(algorithm, content);
        let hex: String = computed
            .as_ref()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        hex == self.0.hex()
    }

    /// The OCI tag-schema fallback tag of this digest: `<alg>-<hex>`, at most 128 characters.
    pub fn fallback_tag(&self) -> String {
        let mut tag = format!("{}-{}", self.algorithm(), self.hex());
        tag.truncate(128);
        tag
    }
}

impl fmt::Display for ImageDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl ImageTarget {
    /// Parses an artifact `uri` (an image reference, see the module docs) and its `digest`.
    pub fn parse(uri: &str, digest: &str) -> Result<ImageTarget, ReferenceError> {
        let digest = ImageDigest::parse(digest)?;
        if uri.is_empty() || uri.len() > MAX_REFERENCE_BYTES || !uri.is_ascii() {
            return Err(ReferenceError::Malformed);
        }
        let name_and_tag = match uri.split_once('@') {
            Some((name, in_reference)) => {
                let named = ImageDigest::parse(in_reference)?;
                if named != digest {
                    return Err(ReferenceError::DigestMismatch {
                        in_reference: named.to_string(),
                        artifact: digest.to_string(),
                    });
                }
                name
            }
            None => uri,
        };
        // A tag follows the last `:` after the last `/` (a port is before the first `/`).
        let last_slash = name_and_tag.rfind('/').map_or(0, |index| index + 1);
        let name = match name_and_tag[last_slash..].split_once(':') {
            Some((_, tag)) => {
                if !is_valid_tag(tag) {
                    return Err(ReferenceError::Tag {
                        tag: tag.to_owned(),
                    });
                }
                &name_and_tag[..name_and_tag.len() - tag.len() - 1]
            }
            None => name_and_tag,
        };
        let (host, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), rest.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        let host = canonical_host(&host).to_owned();
        if !is_valid_registry_host(&host) {
            return Err(ReferenceError::Host { host });
        }
        let repository = if host == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if !is_valid_repository(&repository) {
            return Err(ReferenceError::Repository { repository });
        }
        Ok(ImageTarget {
            host,
            repository,
            digest,
        })
    }
}

impl fmt::Display for ImageTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}", self.host, self.repository, self.digest)
    }
}

/// Whether `host` is a registry host as references name it: DNS labels of `[a-z0-9-]` joined by
/// dots (or `localhost`, or an IPv4 address), with an optional `:port`. Lower case only, so the
/// allow-list compares hosts as strings.
pub fn is_valid_registry_host(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    let port_ok = port.is_none_or(|port| {
        !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
    });
    let name_ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    port_ok && name_ok
}

/// The distribution spec's repository name: components of `[a-z0-9]+([._-][a-z0-9]+)*` (with
/// `__` and runs of `-` allowed as separators) joined by `/`.
fn is_valid_repository(repository: &str) -> bool {
    !repository.is_empty()
        && repository.len() <= MAX_REPOSITORY_BYTES
        && repository.split('/').all(|component| {
            let bytes = component.as_bytes();
            !bytes.is_empty()
                && bytes[0].is_ascii_alphanumeric()
                && bytes[bytes.len() - 1].is_ascii_alphanumeric()
                && bytes.iter().all(|&b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
                && !component.contains("..")
                && !component.contains("___")
        })
}

fn is_valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c";

    fn digest() -> String {
        format!("sha256:{HEX}")
    }

    #[test]
    fn content_is_checked_by_the_digest_s_own_algorithm() {
        let empty_sha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let empty_sha512 = "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce\
                            47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e";
        let sha256 = ImageDigest::parse(&format!("sha256:{empty_sha256}")).unwrap();
        let sha512 = ImageDigest::parse(&format!("sha512:{empty_sha512}")).unwrap();
        assert!(sha256.matches(b""));
        assert!(sha512.matches(b""));
        assert!(!sha256.matches(b"{}"));
        assert!(!sha512.matches(b"{}"));
    }

    #[test]
    fn references_name_a_host_a_repository_and_the_digest() {
        let target = ImageTarget::parse("localhost:5000/team/app", &digest()).unwrap();
        assert_eq!(target.host, "localhost:5000");
        assert_eq!(target.repository, "team/app");
        assert_eq!(target.digest.to_string(), digest());
        assert_eq!(
            target.to_string(),
            format!("localhost:5000/team/app@{}", digest())
        );

        let tagged = ImageTarget::parse("registry.example.org/app:v1.4.2", &digest()).unwrap();
        assert_eq!(
            (tagged.host.as_str(), tagged.repository.as_str()),
            ("registry.example.org", "app")
        );
        let pinned =
            ImageTarget::parse(&format!("localhost:5000/app@{}", digest()), &digest()).unwrap();
        assert_eq!(pinned.repository, "app");
    }

    #[test]
    fn docker_hub_names_are_expanded() {
        let library = ImageTarget::parse("alpine", &digest()).unwrap();
        assert_eq!(
            (library.host.as_str(), library.repository.as_str()),
            ("docker.io", "library/alpine")
        );
        let team = ImageTarget::parse("team/app:latest", &digest()).unwrap();
        assert_eq!(
            (team.host.as_str(), team.repository.as_str()),
            ("docker.io", "team/app")
        );
    }

    #[test]
    fn malformed_references_are_refused_each_with_its_reason() {
        let refuse = |uri: &str| ImageTarget::parse(uri, &digest()).unwrap_err();
        assert_eq!(refuse(""), ReferenceError::Malformed);
        assert_eq!(refuse(&"a".repeat(600)), ReferenceError::Malformed);
        assert!(matches!(
            refuse("Registry.example.org/app"),
            ReferenceError::Host { .. }
        ));
        assert!(matches!(
            refuse("a.example:99999999/app"),
            ReferenceError::Host { .. }
        ));
        assert!(matches!(
            refuse("a.example/App"),
            ReferenceError::Repository { .. }
        ));
        assert!(matches!(
            refuse("a.example/app/"),
            ReferenceError::Repository { .. }
        ));
        assert!(matches!(
            refuse("a.example/app:-bad"),
            ReferenceError::Tag { .. }
        ));
        let other = format!("sha256:{}", "0".repeat(64));
        assert!(matches!(
            refuse(&format!("a.example/app@{other}")),
            ReferenceError::DigestMismatch { .. }
        ));
    }

    #[test]
    fn only_registry_digests_are_taken() {
        assert!(ImageDigest::parse(&digest()).is_ok());
        assert!(ImageDigest::parse(&format!("sha512:{}", "a".repeat(128))).is_ok());
        for bad in [
            "sha1:abc",
            "sha256:ABC",
            "sha256",
            &format!("sha256:{}", &HEX[1..]),
            // A VSA may name a sha384 digest; the OCI image spec registers none.
            &format!("sha384:{}", "a".repeat(96)),
        ] {
            assert!(matches!(
                ImageDigest::parse(bad),
                Err(ReferenceError::Digest { .. })
            ));
        }
        assert_eq!(
            ImageDigest::parse(&digest()).unwrap().fallback_tag(),
            format!("sha256-{HEX}")
        );
        assert_eq!(
            ImageDigest::parse(&format!("sha512:{}", "a".repeat(128)))
                .unwrap()
                .fallback_tag()
                .len(),
            128
        );
    }

    #[test]
    fn registry_hosts_are_lower_case_names_with_an_optional_port() {
        for good in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "ghcr.io",
            "a-b.example.org",
        ] {
            assert!(is_valid_registry_host(good), "{good}");
        }
        for bad in [
            "",
            "GHCR.io",
            "a..b",
            "-a.example",
            "a.example:",
            "a.example:port",
            "https://a",
        ] {
            assert!(!is_valid_registry_host(bad), "{bad}");
        }
    }
}
