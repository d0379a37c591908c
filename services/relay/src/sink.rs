//! One HTTP CloudEvents sink: its client, URL, headers and deadline, sending one event and saying
//! what the answer means.
//!
//! | the sink... | [`DeliveryError`] | what the relay does |
//! |---|---|---|
//! | answered 2xx | none: delivered | ack |
//! | could not be reached, or did not answer in time | `Transport` | retry with backoff |
//! | answered 408, 425, 429 or 5xx | `Status` (retryable) | retry, waiting at least its `Retry-After` |
//! | answered any other status (4xx; 3xx, as redirects are not followed) | `Status` (permanent) | dead letter `rejected`, code `http_<status>`, with the status and the start of the body |
//!
//! Redirects are not followed: a POST must not turn into a GET, and a sink's URL should be the
//! one it answers on.

use std::time::{Duration, SystemTime};

use countersign_events::{AttestationEvent, Event};
use countersign_runtime::bounded_read::{ReadFileError, read_bounded};
use countersign_runtime::config::Environment;
use countersign_runtime::http_client::{
    HttpClientError, HttpClientOptions, TrustRoots, http_client_builder,
};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use url::Url;

use crate::config::{MAX_SINK_FILE_BYTES, SinkConfig};
use crate::headers::{HeaderError, SinkHeaders};
use crate::http_binding::{BindingError, binary_mode_request};

/// How much of a refusing sink's response body is kept for the dead letter.
pub const BODY_EXCERPT_BYTES: usize = 512;

/// The most a connection may take, below the whole request's deadline.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a sink could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The CA file could not be read, or holds more than [`MAX_SINK_FILE_BYTES`].
    #[error("sink {sink}: reading the CA file")]
    ReadCaFile {
        sink: String,
        #[source]
        source: ReadFileError,
    },
    /// The task reading the CA file ended without an answer (the runtime is shutting down).
    #[error("sink {sink}: reading the CA file was cancelled")]
    ReadCaFileCancelled { sink: String },
    /// The HTTP client could not be built (a bad CA file, among others).
    #[error("sink {sink}: building the HTTP client")]
    Client {
        sink: String,
        #[source]
        source: HttpClientError,
    },
    /// A header could not be resolved.
    #[error("sink {sink}: resolving its headers")]
    Header {
        sink: String,
        #[source]
        source: HeaderError,
    },
}

/// What kind of failure a [`DeliveryError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryErrorKind {
    /// The sink could not be reached (connection refused, DNS, TLS, reset).
    Connect,
    /// The sink did not answer within the timeout.
    Timeout,
    /// The sink answered a status worth retrying (408, 425, 429, 5xx).
    RetryableStatus,
    /// The sink answered a status that will not change (other 4xx, 3xx).
    PermanentStatus,
    /// A configured header could not be read (a token file missing while it is rotated).
    Header,
    /// The event could not be encoded as an HTTP request.
    Encode,
}

impl DeliveryErrorKind {
    /// Whether trying again later may succeed.
    pub const fn is_retryable(self) -> bool {
        match self {
            DeliveryErrorKind::Connect
            | DeliveryErrorKind::Timeout
            | DeliveryErrorKind::RetryableStatus
            | DeliveryErrorKind::Header => true,
            DeliveryErrorKind::PermanentStatus | DeliveryErrorKind::Encode => false,
        }
    }
}

/// Why one delivery attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The request did not get an answer (connect, send, timeout).
    #[error("sending to sink {sink}")]
    Transport {
        sink: String,
        #[source]
        source: reqwest::Error,
    },
    /// The sink answered with a status other than 2xx.
    #[error("sink {sink} answered {status}{}", excerpt_suffix(body_excerpt))]
    Status {
        sink: String,
        status: StatusCode,
        /// The sink's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
        /// The start of the response body (lossy UTF-8, control characters replaced).
        body_excerpt: String,
    },
    /// A configured header could not be read.
    #[error("sink {sink}: reading a header")]
    Header {
        sink: String,
        #[source]
        source: HeaderError,
    },
    /// The event could not be encoded.
    #[error("sink {sink}: encoding the event as an HTTP request")]
    Encode {
        sink: String,
        #[source]
        source: BindingError,
    },
}

fn excerpt_suffix(excerpt: &str) -> String {
    if excerpt.is_empty() {
        String::new()
    } else {
        format!(": {excerpt}")
    }
}

impl DeliveryError {
    /// What kind of failure this is.
    pub fn kind(&self) -> DeliveryErrorKind {
        match self {
            DeliveryError::Transport { source, .. } if source.is_timeout() => {
                DeliveryErrorKind::Timeout
            }
            DeliveryError::Transport { .. } => DeliveryErrorKind::Connect,
            DeliveryError::Status { status, .. } if is_retryable_status(*status) => {
                DeliveryErrorKind::RetryableStatus
            }
            DeliveryError::Status { .. } => DeliveryErrorKind::PermanentStatus,
            DeliveryError::Header { .. } => DeliveryErrorKind::Header,
            DeliveryError::Encode { .. } => DeliveryErrorKind::Encode,
        }
    }

    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind().is_retryable()
    }

    /// The sink's `Retry-After`, when it answered with one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            DeliveryError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The HTTP status, when the sink answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            DeliveryError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The dead-letter code: `http_<status>` or `unencodable` for the permanent failures (the
    /// only ones dead-lettered under it); the retryable kinds have codes for logs.
    pub fn dead_letter_code(&self) -> String {
        match self {
            DeliveryError::Status { status, .. } => format!("http_{}", status.as_u16()),
            DeliveryError::Encode { .. } => "unencodable".to_owned(),
            DeliveryError::Transport { .. } => "unreachable".to_owned(),
            DeliveryError::Header { .. } => "header_unavailable".to_owned(),
        }
    }
}

/// Whether a status is worth retrying: 408 Request Timeout, 425 Too Early, 429 Too Many
/// Requests, and every 5xx.
pub fn is_retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 425 | 429) || status.is_server_error()
}

/// A `Retry-After` value: delay-seconds, or an HTTP date (the delay until then, zero if past).
/// `None` when absent or unreadable.
pub fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let date = SystemTime::from(date.with_timezone(&chrono::Utc));
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An HTTP CloudEvents sink, ready to send.
#[derive(Debug, Clone)]
pub struct Sink {
    name: String,
    url: Url,
    timeout: Duration,
    client: reqwest::Client,
    headers: SinkHeaders,
}

impl Sink {
    /// Builds the sink's client and resolves its headers (`env` for `from_env`). The CA file is
    /// read once, here, and at most [`MAX_SINK_FILE_BYTES`] of it.
    pub async fn new(config: &SinkConfig, env: &Environment) -> Result<Sink, SinkError> {
        let roots = match &config.ca_file {
            None => TrustRoots::Native,
            Some(path) => {
                let path = path.clone();
                let pem =
                    tokio::task::spawn_blocking(move || read_bounded(&path, MAX_SINK_FILE_BYTES))
                        .await
                        .map_err(|_| SinkError::ReadCaFileCancelled {
                            sink: config.name.clone(),
                        })?
                        .map_err(|source| SinkError::ReadCaFile {
                            sink: config.name.clone(),
                            source,
                        })?;
                let certificates = TrustRoots::certificates_from_pem(&pem).map_err(|source| {
                    SinkError::Client {
                        sink: config.name.clone(),
                        source,
                    }
                })?;
                TrustRoots::NativeAnd(certificates)
            }
        };
        let client_error = |source| SinkError::Client {
            sink: config.name.clone(),
            source,
        };
        let options = HttpClientOptions::new()
            .roots(roots)
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(MAX_CONNECT_TIMEOUT))
            .user_agent(concat!("countersign-relay/", env!("CARGO_PKG_VERSION")));
        let client = http_client_builder(options)
            .map_err(client_error)?
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|source| client_error(HttpClientError::Build { source }))?;
        let headers = SinkHeaders::resolve(&config.headers, env)
            .await
            .map_err(|source| SinkError::Header {
                sink: config.name.clone(),
                source,
            })?;
        Ok(Sink {
            name: config.name.clone(),
            url: config.url.clone(),
            timeout: config.timeout,
            client,
            headers,
        })
    }

    /// The sink's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// POSTs `event` in binary content mode and returns the status once the sink answered 2xx.
    pub async fn deliver(
        &self,
        event: &Event<AttestationEvent>,
    ) -> Result<StatusCode, DeliveryError> {
        let (binding_headers, body) =
            binary_mode_request(event).map_err(|source| DeliveryError::Encode {
                sink: self.name.clone(),
                source,
            })?;
        let mut headers = self
            .headers
            .current()
            .await
            .map_err(|source| DeliveryError::Header {
                sink: self.name.clone(),
                source,
            })?;
        // The binding's own headers win (configuration cannot name them anyway).
        headers.extend(binding_headers);
        let mut response = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .body(body)
            .timeout(self.timeout)
            .send()
            .await
            // The URL may carry a token in its query: keep it out of logs and dead letters.
            .map_err(|source| DeliveryError::Transport {
                sink: self.name.clone(),
                source: source.without_url(),
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(status);
        }
        let retry_after = parse_retry_after(response.headers(), SystemTime::now());
        let body_excerpt = read_excerpt(&mut response).await;
        Err(DeliveryError::Status {
            sink: self.name.clone(),
            status,
            retry_after,
            body_excerpt,
        })
    }
}

/// Reads at most [`BODY_EXCERPT_BYTES`] of the body; what could not be read is left out.
async fn read_excerpt(response: &mut reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < BODY_EXCERPT_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    bytes.truncate(BODY_EXCERPT_BYTES);
    let text = String::from_utf8_lossy(&bytes);
    text.chars()
        .map(|character| {
            if character.is_control() {
                ' '
            } else {
                character
            }
        })
        .collect::<String>()
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use countersign_runtime::bounded_read::ReadFileErrorKind;
    use reqwest::header::HeaderValue;

    use super::*;

    fn sink_config(ca_file: &std::path::Path) -> SinkConfig {
        serde_json::from_value(serde_json::json!({
            "name": "listener",
            "url": "https://127.0.0.1:1/",
            "ca_file": ca_file,
        }))
        .expect("a sink configuration")
    }

    #[tokio::test]
    async fn the_ca_file_is_read_up_to_the_limit() {
        let endless = Sink::new(&sink_config("/dev/zero".as_ref()), &Environment::new()).await;
        match endless {
            Err(SinkError::ReadCaFile { source, .. }) => {
                assert_eq!(source.kind(), ReadFileErrorKind::TooLarge)
            }
            other => panic!("expected a CA file too large, got {other:?}"),
        }
        let missing = Sink::new(
            &sink_config("/nonexistent/countersign/ca.pem".as_ref()),
            &Environment::new(),
        )
        .await;
        match missing {
            Err(SinkError::ReadCaFile { source, .. }) => {
                assert_eq!(source.kind(), ReadFileErrorKind::Io)
            }
            other => panic!("expected a missing CA file, got {other:?}"),
        }
    }

    #[test]
    fn statuses_are_retryable_or_permanent_as_documented() {
        for retryable in [408, 425, 429, 500, 502, 503, 504, 599] {
            assert!(
                is_retryable_status(StatusCode::from_u16(retryable).unwrap()),
                "{retryable}"
            );
        }
        for permanent in [300, 301, 307, 400, 401, 403, 404, 409, 413, 415, 422] {
            assert!(
                !is_retryable_status(StatusCode::from_u16(permanent).unwrap()),
                "{permanent}"
            );
        }
    }

    #[test]
    fn status_errors_have_their_kind_code_and_retry_after() {
        let error = |status: u16, retry_after| DeliveryError::Status {
            sink: "s".into(),
            status: StatusCode::from_u16(status).unwrap(),
            retry_after,
            body_excerpt: "nope".into(),
        };
        let unavailable = error(503, Some(Duration::from_secs(3)));
        assert_eq!(unavailable.kind(), DeliveryErrorKind::RetryableStatus);
        assert!(unavailable.is_retryable());
        assert_eq!(unavailable.retry_after(), Some(Duration::from_secs(3)));
        let bad = error(400, None);
        assert_eq!(bad.kind(), DeliveryErrorKind::PermanentStatus);
        assert!(!bad.is_retryable());
        assert_eq!(bad.dead_letter_code(), "http_400");
        assert_eq!(bad.status(), Some(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
            parse_retry_after(&headers, now)
        };
        assert_eq!(with("120"), Some(Duration::from_secs(120)));
        assert_eq!(with(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            with("Sun, 06 Nov 1994 08:50:07 GMT"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            with("Sun, 06 Nov 1994 08:00:00 GMT"),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(with("soon"), None);
        assert_eq!(with("-5"), None);
        assert_eq!(parse_retry_after(&HeaderMap::new(), now), None);
    }
}
