//! A small OCI distribution client: just what attaching a referrer takes, on the workspace's
//! HTTP stack (`reqwest` with rustls and ring, from `countersign_runtime::http_client`).
//!
//! Why not an OCI client crate: `oci-client` (the best kept) brings its own reqwest features
//! and TLS choices, and would be a second HTTP stack to keep on ring; the exporter needs five
//! requests (get a manifest, push a blob, push a manifest, ask for referrers, read an index),
//! which are a few hundred lines here, tested against the real registry.
//!
//! [`RegistryClient::attach`] does, in order:
//!
//! 1. reads the image's manifest by digest (bounded), checks the bytes hash to the digest, and
//!    takes its descriptor as the `subject`;
//! 2. pushes the empty config blob and the bundle blob (skipped when the registry has them);
//! 3. pushes the referrer manifest by its digest ([`crate::referrer`]);
//! 4. if the registry answered with `OCI-Subject`, or serves `GET /v2/<repo>/referrers/<digest>`,
//!    it indexes referrers itself: done (a definite answer to that question is kept per
//!    repository, as `oras` keeps it, so it is asked once);
//! 5. otherwise (404: no Referrers API) updates the tag-schema index `<alg>-<hex>`: read it (an
//!    absent tag is an empty index), add the referrer unless listed, push it with `If-Match`
//!    on the read's `ETag` when the registry gave one, read it back and check the referrer is
//!    listed; a lost race (412, or a concurrent writer's index without ours) is tried again, up
//!    to [`INDEX_UPDATE_ATTEMPTS`] times. That is compare-and-swap as far as the registry allows:
//!    Distribution ignores `If-Match`, so two writers can still interleave; the read-back makes
//!    each writer notice and retry, and the index converges.
//!
//! Authentication follows the registry's `WWW-Authenticate` challenge: `Basic` with the Docker
//! config's credentials, or `Bearer` (the token flow: `GET realm?service=…&scope=repository:<repo>:pull,push`
//! with those credentials, or anonymously). The answer is cached per registry and repository.
//! Credentials are sent only to the allow-listed registry and to a token realm on its own host
//! (or `auth.docker.io` for Docker Hub): a realm elsewhere is asked anonymously. An upload
//! location on another host gets no `Authorization`.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use countersign_runtime::http_client::{BodyError, read_body_bounded};
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use url::Url;

use crate::credentials::Credentials;
use crate::reference::{ImageDigest, ImageTarget, api_host};
use crate::referrer::{
    Descriptor, EMPTY_BLOB, ImageIndex, OCI_INDEX_MEDIA_TYPE, OCI_MANIFEST_MEDIA_TYPE, Referrer,
    referrer_manifest,
};

/// How many times the tag-schema index is read, updated and checked before giving up (a
/// transient failure: the event is retried later).
pub const INDEX_UPDATE_ATTEMPTS: usize = 5;

/// The largest token response read.
pub const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;

/// The manifest media types asked for when reading the image's manifest.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// The header a registry with the Referrers API answers a manifest push with a subject.
const OCI_SUBJECT: &str = "oci-subject";

/// What kind of failure a [`RegistryError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryErrorKind {
    /// The registry could not be reached, timed out, or answered 408, 429 or 5xx. Transient.
    Unavailable,
    /// The image's manifest is not in the repository.
    ImageNotFound,
    /// The registry refused our credentials, or we have none it accepts.
    Denied,
    /// The registry answered with another 4xx.
    Refused,
    /// The registry sent something too large or malformed (a manifest that does not hash to
    /// its digest, an index that is not JSON).
    BadResponse,
    /// The tag-schema index kept changing under us. Transient.
    IndexContended,
}

impl RegistryErrorKind {
    /// The dead-letter code of a permanent failure.
    pub const fn code(self) -> &'static str {
        match self {
            RegistryErrorKind::Unavailable => "registry_unavailable",
            RegistryErrorKind::ImageNotFound => "image_not_found",
            RegistryErrorKind::Denied => "registry_denied",
            RegistryErrorKind::Refused => "registry_refused",
            RegistryErrorKind::BadResponse => "registry_bad_response",
            RegistryErrorKind::IndexContended => "referrers_index_contended",
        }
    }
}

/// Why attaching to a registry failed.
#[derive(Debug, thiserror::Error)]
#[error("{operation}: {detail}")]
pub struct RegistryError {
    kind: RegistryErrorKind,
    operation: &'static str,
    detail: String,
    #[source]
    source: Option<reqwest::Error>,
}

impl RegistryError {
    fn new(kind: RegistryErrorKind, operation: &'static str, detail: impl Into<String>) -> Self {
        RegistryError {
            kind,
            operation,
            detail: detail.into(),
            source: None,
        }
    }

    fn unreachable(operation: &'static str, source: reqwest::Error) -> Self {
        RegistryError {
            kind: RegistryErrorKind::Unavailable,
            operation,
            detail: "the request failed".to_owned(),
            source: Some(source),
        }
    }

    /// The failure's kind.
    pub fn kind(&self) -> RegistryErrorKind {
        self.kind
    }

    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind,
            RegistryErrorKind::Unavailable | RegistryErrorKind::IndexContended
        )
    }
}

/// How the registry lists the referrer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Indexed {
    /// By its Referrers API.
    ReferrersApi,
    /// In the tag-schema index under this tag.
    TagSchema { tag: String },
}

/// One repository of one registry, with the credentials for it.
#[derive(Debug, Clone)]
pub struct Repository<'a> {
    /// `http://host` or `https://host` (Docker Hub: `https://registry-1.docker.io`).
    pub base: Url,
    /// The registry as references name it.
    pub host: &'a str,
    /// The repository.
    pub name: &'a str,
    /// The credentials from the Docker config, if it has some for this host.
    pub credentials: Option<&'a Credentials>,
}

impl<'a> Repository<'a> {
    /// The repository of `target`, over `plain_http` or HTTPS.
    pub fn of(
        target: &'a ImageTarget,
        plain_http: bool,
        credentials: Option<&'a Credentials>,
    ) -> Result<Repository<'a>, RegistryError> {
        let api_host = api_host(&target.host);
        let scheme = if plain_http { "http" } else { "https" };
        let base = Url::parse(&format!("{scheme}://{api_host}/")).map_err(|error| {
            RegistryError::new(
                RegistryErrorKind::Refused,
                "building the registry URL",
                error.to_string(),
            )
        })?;
        Ok(Repository {
            base,
            host: &target.host,
            name: &target.repository,
            credentials,
        })
    }

    fn url(&self, path: &str) -> Result<Url, RegistryError> {
        self.base
            .join(&format!("v2/{}/{path}", self.name))
            .map_err(|error| {
                RegistryError::new(
                    RegistryErrorKind::Refused,
                    "building a URL",
                    error.to_string(),
                )
            })
    }
}

/// The registry client: one HTTP client, and the `Authorization` each repository took.
#[derive(Debug)]
pub struct RegistryClient {
    http: reqwest::Client,
    max_read_bytes: usize,
    authorizations: Mutex<HashMap<(String, String), HeaderValue>>,
    /// Whether each repository (by its registry's API base URL and name) serves the Referrers
    /// API.
    referrers_api: Mutex<HashMap<String, bool>>,
}

impl RegistryClient {
    /// A client over `http`, reading at most `max_read_bytes` of a manifest or index.
    pub fn new(http: reqwest::Client, max_read_bytes: usize) -> RegistryClient {
        RegistryClient {
            http,
            max_read_bytes,
            authorizations: Mutex::new(HashMap::new()),
            referrers_api: Mutex::new(HashMap::new()),
        }
    }

    /// Attaches `bundle` (a Sigstore bundle v0.3 whose statement has `predicate_type`) to the
    /// image `digest` in `repository` (see the module docs).
    pub async fn attach(
        &self,
        repository: &Repository<'_>,
        digest: &ImageDigest,
        bundle: &[u8],
        predicate_type: &str,
        created: DateTime<Utc>,
    ) -> Result<(Indexed, Descriptor), RegistryError> {
        let subject = self.subject(repository, digest).await?;
        let referrer = referrer_manifest(&subject, bundle, predicate_type, created);
        self.push_blob(repository, &referrer.config, Bytes::from_static(EMPTY_BLOB))
            .await?;
        self.push_blob(repository, &referrer.layer, Bytes::copy_from_slice(bundle))
            .await?;
        let answered_subject = self.push_referrer(repository, &referrer).await?;
        if answered_subject || self.serves_referrers(repository, digest).await? {
            return Ok((Indexed::ReferrersApi, referrer.descriptor));
        }
        let tag = digest.fallback_tag();
        self.add_to_tag_index(repository, &tag, &referrer.descriptor)
            .await?;
        Ok((Indexed::TagSchema { tag }, referrer.descriptor))
    }

    /// The image manifest's descriptor, read by digest and checked against it.
    async fn subject(
        &self,
        repository: &Repository<'_>,
        digest: &ImageDigest,
    ) -> Result<Descriptor, RegistryError> {
        const OPERATION: &str = "reading the image manifest";
        let url = repository.url(&format!("manifests/{digest}"))?;
        let response = self
            .send(repository, OPERATION, || {
                self.http
                    .get(url.clone())
                    .header(header::ACCEPT, MANIFEST_ACCEPT)
            })
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Err(RegistryError::new(
                RegistryErrorKind::ImageNotFound,
                OPERATION,
                format!(
                    "{}/{}@{digest} is not in the registry",
                    repository.host, repository.name
                ),
            ));
        }
        let response = expect_success(response, OPERATION)?;
        let content_type = content_type(response.headers());
        let body = read_bounded(response, self.max_read_bytes, OPERATION).await?;
        if !digest.matches(&body) {
            return Err(RegistryError::new(
                RegistryErrorKind::BadResponse,
                OPERATION,
                "the manifest served does not hash to its digest",
            ));
        }
        let media_type = match content_type {
            Some(media_type) if media_type.contains("manifest") || media_type.contains("index") => {
                media_type
            }
            _ => serde_json::from_slice::<MediaTypeOnly>(&body)
                .ok()
                .and_then(|manifest| manifest.media_type)
                .ok_or_else(|| {
                    RegistryError::new(
                        RegistryErrorKind::BadResponse,
                        OPERATION,
                        "the manifest has no media type",
                    )
                })?,
        };
        Ok(Descriptor {
            media_type,
            digest: digest.to_string(),
            size: body.len() as u64,
            artifact_type: None,
            annotations: Default::default(),
        })
    }

    /// Pushes a blob unless the repository has it: `POST` an upload, `PUT` it with the digest.
    async fn push_blob(
        &self,
        repository: &Repository<'_>,
        blob: &Descriptor,
        content: Bytes,
    ) -> Result<(), RegistryError> {
        const OPERATION: &str = "pushing a blob";
        let blob_url = repository.url(&format!("blobs/{}", blob.digest))?;
        let existing = self
            .send(repository, OPERATION, || self.http.head(blob_url.clone()))
            .await?;
        if existing.status().is_success() {
            return Ok(());
        }
        let start_url = repository.url("blobs/uploads/")?;
        let started = self
            .send(repository, OPERATION, || {
                self.http
                    .post(start_url.clone())
                    .header(header::CONTENT_LENGTH, "0")
            })
            .await?;
        let started = expect_success(started, OPERATION)?;
        let location = started
            .headers()
            .get(header::LOCATION)
            .and_then(|value| value.to_str().ok())
            .ok_or_else(|| {
                RegistryError::new(
                    RegistryErrorKind::BadResponse,
                    OPERATION,
                    "the upload answer has no Location",
                )
            })?;
        let mut upload = start_url.join(location).map_err(|error| {
            RegistryError::new(RegistryErrorKind::BadResponse, OPERATION, error.to_string())
        })?;
        upload.query_pairs_mut().append_pair("digest", &blob.digest);
        let same_origin = upload.origin() == repository.base.origin();
        let request = || {
            self.http
                .put(upload.clone())
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(content.clone())
        };
        let finished = if same_origin {
            self.send(repository, OPERATION, request).await?
        } else {
            request()
                .send()
                .await
                .map_err(|error| RegistryError::unreachable(OPERATION, error))?
        };
        expect_success(finished, OPERATION)?;
        Ok(())
    }

    /// Pushes the referrer manifest by digest; whether the registry answered `OCI-Subject` (it
    /// indexes referrers itself).
    async fn push_referrer(
        &self,
        repository: &Repository<'_>,
        referrer: &Referrer,
    ) -> Result<bool, RegistryError> {
        const OPERATION: &str = "pushing the referrer manifest";
        let url = repository.url(&format!("manifests/{}", referrer.descriptor.digest))?;
        let response = self
            .send(repository, OPERATION, || {
                self.http
                    .put(url.clone())
                    .header(header::CONTENT_TYPE, OCI_MANIFEST_MEDIA_TYPE)
                    .body(referrer.manifest.clone())
            })
            .await?;
        let response = expect_success(response, OPERATION)?;
        Ok(response.headers().contains_key(OCI_SUBJECT))
    }

    /// Whether the registry serves the Referrers API (404: it does not), asked once per
    /// repository (as `oras` keeps it): a definite answer (an index, or 404) is kept, anything
    /// else is asked again next time.
    async fn serves_referrers(
        &self,
        repository: &Repository<'_>,
        digest: &ImageDigest,
    ) -> Result<bool, RegistryError> {
        let key = format!("{}{}", repository.base, repository.name);
        let known = self
            .referrers_api
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .copied();
        if let Some(serves) = known {
            return Ok(serves);
        }
        let answer = self.ask_for_referrers(repository, digest).await?;
        let serves = answer == ReferrersAnswer::Served;
        if answer != ReferrersAnswer::Unclear {
            self.referrers_api
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(key, serves);
        }
        Ok(serves)
    }

    async fn ask_for_referrers(
        &self,
        repository: &Repository<'_>,
        digest: &ImageDigest,
    ) -> Result<ReferrersAnswer, RegistryError> {
        const OPERATION: &str = "asking for referrers";
        let url = repository.url(&format!("referrers/{digest}"))?;
        let response = self
            .send(repository, OPERATION, || {
                self.http
                    .get(url.clone())
                    .header(header::ACCEPT, OCI_INDEX_MEDIA_TYPE)
            })
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(ReferrersAnswer::NotServed);
        }
        let response = expect_success(response, OPERATION)?;
        let is_index = content_type(response.headers())
            .is_some_and(|media_type| media_type == OCI_INDEX_MEDIA_TYPE);
        Ok(if is_index {
            ReferrersAnswer::Served
        } else {
            ReferrersAnswer::Unclear
        })
    }

    /// Adds `entry` to the tag-schema index `tag` (see the module docs).
    async fn add_to_tag_index(
        &self,
        repository: &Repository<'_>,
        tag: &str,
        entry: &Descriptor,
    ) -> Result<(), RegistryError> {
        const OPERATION: &str = "updating the referrers tag index";
        let url = repository.url(&format!("manifests/{tag}"))?;
        for attempt in 1..=INDEX_UPDATE_ATTEMPTS {
            let (index, etag) = self.read_tag_index(repository, &url).await?;
            let Some(updated) = index.with(entry) else {
                return Ok(());
            };
            let body = updated.to_bytes();
            let response = self
                .send(repository, OPERATION, || {
                    let request = self
                        .http
                        .put(url.clone())
                        .header(header::CONTENT_TYPE, OCI_INDEX_MEDIA_TYPE)
                        .body(body.clone());
                    match &etag {
                        Some(etag) => request.header(header::IF_MATCH, etag.clone()),
                        None => request.header(header::IF_NONE_MATCH, "*"),
                    }
                })
                .await?;
            if response.status() == StatusCode::PRECONDITION_FAILED {
                tracing::debug!(tag, attempt, "the referrers index changed meanwhile; again");
                continue;
            }
            expect_success(response, OPERATION)?;
            let (written, _) = self.read_tag_index(repository, &url).await?;
            if written.lists(&entry.digest) {
                return Ok(());
            }
            tracing::debug!(
                tag,
                attempt,
                "another writer replaced the referrers index; again"
            );
        }
        Err(RegistryError::new(
            RegistryErrorKind::IndexContended,
            OPERATION,
            format!("{tag} changed under every one of {INDEX_UPDATE_ATTEMPTS} attempts"),
        ))
    }

    /// The tag-schema index and its `ETag`; an absent tag is an empty index.
    async fn read_tag_index(
        &self,
        repository: &Repository<'_>,
        url: &Url,
    ) -> Result<(ImageIndex, Option<HeaderValue>), RegistryError> {
        const OPERATION: &str = "reading the referrers tag index";
        let response = self
            .send(repository, OPERATION, || {
                self.http
                    .get(url.clone())
                    .header(header::ACCEPT, OCI_INDEX_MEDIA_TYPE)
            })
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok((ImageIndex::empty(), None));
        }
        let response = expect_success(response, OPERATION)?;
        let etag = response.headers().get(header::ETAG).cloned();
        let body = read_bounded(response, self.max_read_bytes, OPERATION).await?;
        let index = serde_json::from_slice::<ImageIndex>(&body).map_err(|error| {
            RegistryError::new(
                RegistryErrorKind::BadResponse,
                OPERATION,
                format!("the tag holds no OCI index: {error}"),
            )
        })?;
        Ok((index, etag))
    }

    /// Sends a request built by `build`, answering an authentication challenge once.
    async fn send(
        &self,
        repository: &Repository<'_>,
        operation: &'static str,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        let key = (repository.host.to_owned(), repository.name.to_owned());
        let cached = self
            .authorizations
            .lock()
            .ok()
            .and_then(|map| map.get(&key).cloned());
        let mut request = build();
        if let Some(authorization) = &cached {
            request = request.header(header::AUTHORIZATION, authorization.clone());
        }
        let response = request
            .send()
            .await
            .map_err(|error| RegistryError::unreachable(operation, error))?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let challenge = response
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|value| value.to_str().ok())
            .map(Challenge::parse)
            .ok_or_else(|| {
                RegistryError::new(
                    RegistryErrorKind::Denied,
                    operation,
                    "401 without a WWW-Authenticate challenge",
                )
            })?;
        let authorization = self.answer(repository, operation, &challenge).await?;
        if let Ok(mut map) = self.authorizations.lock() {
            map.insert(key, authorization.clone());
        }
        let response = build()
            .header(header::AUTHORIZATION, authorization)
            .send()
            .await
            .map_err(|error| RegistryError::unreachable(operation, error))?;
        if response.status() == StatusCode::UNAUTHORIZED {
            return Err(RegistryError::new(
                RegistryErrorKind::Denied,
                operation,
                format!(
                    "the registry refused the credentials for {} (401)",
                    repository.host
                ),
            ));
        }
        Ok(response)
    }

    /// The `Authorization` value answering `challenge`.
    async fn answer(
        &self,
        repository: &Repository<'_>,
        operation: &'static str,
        challenge: &Challenge,
    ) -> Result<HeaderValue, RegistryError> {
        let denied =
            |detail: String| RegistryError::new(RegistryErrorKind::Denied, operation, detail);
        let value = match challenge {
            Challenge::Basic => {
                let credentials = repository.credentials.ok_or_else(|| {
                    denied(format!(
                        "{} asks for credentials and the Docker config has none for it",
                        repository.host
                    ))
                })?;
                credentials.basic_header()
            }
            Challenge::Bearer { realm, service } => {
                let token = self
                    .token(repository, operation, realm, service.as_deref())
                    .await?;
                format!("Bearer {token}")
            }
            Challenge::Other(scheme) => {
                return Err(denied(format!(
                    "unsupported authentication scheme {scheme:?}"
                )));
            }
        };
        HeaderValue::from_str(&value)
            .map_err(|_| denied("the credentials are not a header value".to_owned()))
    }

    /// A bearer token for pushing to the repository, from the challenge's realm.
    async fn token(
        &self,
        repository: &Repository<'_>,
        operation: &'static str,
        realm: &str,
        service: Option<&str>,
    ) -> Result<String, RegistryError> {
        let mut url = Url::parse(realm).map_err(|_| {
            RegistryError::new(
                RegistryErrorKind::BadResponse,
                operation,
                "the token realm is not a URL",
            )
        })?;
        if url.scheme() != "https" && repository.base.scheme() == "https" {
            return Err(RegistryError::new(
                RegistryErrorKind::BadResponse,
                operation,
                "the token realm of an HTTPS registry is not HTTPS",
            ));
        }
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            query.append_pair(
                "scope",
                &format!("repository:{}:pull,push", repository.name),
            );
        }
        let trusted_realm = realm_may_have_credentials(&url, &repository.base);
        let mut request = self.http.request(Method::GET, url);
        match repository.credentials {
            Some(credentials) if trusted_realm => {
                request = request.header(header::AUTHORIZATION, credentials.basic_header());
            }
            Some(_) => tracing::warn!(
                realm,
                registry = %repository.base,
                "the registry names a token realm on another host; asking it for a token \
                 anonymously, without the registry's credentials"
            ),
            None => {}
        }
        let response = request
            .send()
            .await
            .map_err(|error| RegistryError::unreachable(operation, error))?;
        if matches!(
            response.status(),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ) {
            return Err(RegistryError::new(
                RegistryErrorKind::Denied,
                operation,
                format!(
                    "the token service refused the credentials ({})",
                    response.status()
                ),
            ));
        }
        let response = expect_success(response, operation)?;
        let body = read_bounded(response, MAX_TOKEN_RESPONSE_BYTES, operation).await?;
        let token: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
            RegistryError::new(
                RegistryErrorKind::BadResponse,
                operation,
                "the token answer is not JSON",
            )
        })?;
        token.token.or(token.access_token).ok_or_else(|| {
            RegistryError::new(
                RegistryErrorKind::BadResponse,
                operation,
                "the token answer has no token",
            )
        })
    }
}

/// What a registry answered to `GET /v2/<repo>/referrers/<digest>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReferrersAnswer {
    /// An OCI index: it serves the Referrers API.
    Served,
    /// 404: it does not.
    NotServed,
    /// A success that is not an index: taken as "not served" this time, asked again next time.
    Unclear,
}

/// Whether the registry's credentials may go to the token `realm` it named: only a realm on
/// the registry's own host (and port), or Docker Hub's token service for Docker Hub. A 401 answer
/// is outside input (a proxy, a shared front end can shape it), so a realm elsewhere gets an
/// anonymous request.
fn realm_may_have_credentials(realm: &Url, registry: &Url) -> bool {
    let same_host = realm.host_str() == registry.host_str()
        && realm.port_or_known_default() == registry.port_or_known_default();
    let docker_hub = registry.host_str() == Some(api_host(crate::reference::DOCKER_HUB))
        && realm.scheme() == "https"
        && realm.host_str() == Some("auth.docker.io");
    same_host || docker_hub
}

#[derive(Deserialize)]
struct MediaTypeOnly {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm="…"`.
    Basic,
    /// `Bearer realm="…",service="…"` (the token flow).
    Bearer {
        realm: String,
        service: Option<String>,
    },
    /// Anything else.
    Other(String),
}

impl Challenge {
    /// Parses a `WWW-Authenticate` value.
    pub fn parse(value: &str) -> Challenge {
        let (scheme, params) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => Challenge::Basic,
            "bearer" => {
                let params = parse_params(params);
                match params.get("realm") {
                    Some(realm) => Challenge::Bearer {
                        realm: realm.clone(),
                        service: params.get("service").cloned(),
                    },
                    None => Challenge::Other(scheme.to_owned()),
                }
            }
            _ => Challenge::Other(scheme.chars().take(32).collect()),
        }
    }
}

/// `key="value",key=value` pairs of a challenge (quoted values may hold commas).
fn parse_params(text: &str) -> HashMap<String, String> {
    let mut params = HashMap::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remainder) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        params.insert(key, value.to_owned());
        rest = remainder.trim_start().trim_start_matches(',').trim_start();
    }
    params
}

fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(|value| value.split(';').next().unwrap_or(value).trim().to_owned())
}

/// The response if it is a success, else the error its status means.
fn expect_success(response: Response, operation: &'static str) -> Result<Response, RegistryError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let kind = match status {
        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => {
            RegistryErrorKind::Unavailable
        }
        status if status.is_server_error() => RegistryErrorKind::Unavailable,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => RegistryErrorKind::Denied,
        _ => RegistryErrorKind::Refused,
    };
    Err(RegistryError::new(
        kind,
        operation,
        format!("the registry answered {status}"),
    ))
}

/// The body, refused past `limit` bytes.
async fn read_bounded(
    response: Response,
    limit: usize,
    operation: &'static str,
) -> Result<Bytes, RegistryError> {
    read_body_bounded(response, limit)
        .await
        .map(Bytes::from)
        .map_err(|error| match error {
            BodyError::TooLarge { limit } => RegistryError::new(
                RegistryErrorKind::BadResponse,
                operation,
                format!("the answer is larger than {limit} bytes"),
            ),
            BodyError::Read(error) => RegistryError::unreachable(operation, error),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_parsed() {
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Challenge::Basic
        );
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#
            ),
            Challenge::Bearer {
                realm: "https://auth.example/token".to_owned(),
                service: Some("registry.example".to_owned()),
            }
        );
        assert_eq!(
            Challenge::parse("Bearer service=x"),
            Challenge::Other("Bearer".to_owned())
        );
        assert_eq!(
            Challenge::parse("Negotiate"),
            Challenge::Other("Negotiate".to_owned())
        );
    }

    #[test]
    fn statuses_are_classified() {
        for (kind, transient) in [
            (RegistryErrorKind::Unavailable, true),
            (RegistryErrorKind::IndexContended, true),
            (RegistryErrorKind::ImageNotFound, false),
            (RegistryErrorKind::Denied, false),
            (RegistryErrorKind::Refused, false),
            (RegistryErrorKind::BadResponse, false),
        ] {
            assert_eq!(
                RegistryError::new(kind, "x", "y").is_transient(),
                transient,
                "{kind:?}"
            );
        }
    }

    #[test]
    fn credentials_go_only_to_a_token_realm_of_the_registry_itself() {
        let url = |text: &str| Url::parse(text).unwrap();
        let registry = url("https://registry.example.org/");
        assert!(realm_may_have_credentials(
            &url("https://registry.example.org/token"),
            &registry
        ));
        assert!(!realm_may_have_credentials(
            &url("https://collector.evil.example/token"),
            &registry
        ));
        assert!(!realm_may_have_credentials(
            &url("https://registry.example.org:8443/token"),
            &registry
        ));
        let hub = url("https://registry-1.docker.io/");
        assert!(realm_may_have_credentials(
            &url("https://auth.docker.io/token"),
            &hub
        ));
        assert!(!realm_may_have_credentials(
            &url("https://auth.docker.io/token"),
            &registry
        ));
    }

    #[test]
    fn repositories_address_the_api_host() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let hub = ImageTarget::parse("team/app", &digest).unwrap();
        let repository = Repository::of(&hub, false, None).unwrap();
        assert_eq!(
            repository.url("manifests/x").unwrap().as_str(),
            "https://registry-1.docker.io/v2/team/app/manifests/x"
        );
        let local = ImageTarget::parse("localhost:5000/app", &digest).unwrap();
        let repository = Repository::of(&local, true, None).unwrap();
        assert_eq!(
            repository.url("blobs/uploads/").unwrap().as_str(),
            "http://localhost:5000/v2/app/blobs/uploads/"
        );
    }
}
