//! Errors of the SPIRE server client, one enum per operation, each with `is_transient()`.
//!
//! Transient means "retry later with backoff": the server is unreachable, restarting or slow
//! (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, `ABORTED`, `RESOURCE_EXHAUSTED`, or a failure of the
//! local transport such as a refused connection or a client-side timeout). Everything else
//! (`INVALID_ARGUMENT`, `PERMISSION_DENIED`, `UNAUTHENTICATED`, ...) will fail the same way again.

use tonic::Code;

use crate::types::{EntryError, MalformedResponse};

/// Whether a gRPC code means "try again later".
pub(crate) fn code_is_transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::Aborted | Code::ResourceExhausted
    )
}

/// A gRPC call the server refused or the transport could not complete.
#[derive(Debug, thiserror::Error)]
#[error("SPIRE server call {method} failed with {code:?}: {message}", code = .status.code(), message = .status.message())]
pub struct CallError {
    method: &'static str,
    #[source]
    status: tonic::Status,
}

impl CallError {
    pub(crate) fn new(method: &'static str, status: tonic::Status) -> CallError {
        CallError { method, status }
    }

    /// The RPC, such as `Entry/ListEntries`.
    pub fn method(&self) -> &'static str {
        self.method
    }

    /// The gRPC status code (from the server, or made by the local transport).
    pub fn code(&self) -> Code {
        self.status.code()
    }

    /// The status message.
    pub fn message(&self) -> &str {
        self.status.message()
    }

    /// Whether the call failed locally, before or while reaching the server (connection refused,
    /// reset or timed out), rather than with a status the server sent.
    pub fn is_transport_failure(&self) -> bool {
        // Statuses decoded from a server response carry no source; those made from a local
        // connection, HTTP/2 or timeout error do.
        std::error::Error::source(&self.status).is_some()
    }

    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        code_is_transient(self.code())
            || (self.is_transport_failure()
                && matches!(self.code(), Code::Unknown | Code::Cancelled))
    }
}

/// The per-item status of a batch call that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ItemStatus {
    pub code: Code,
    pub message: String,
}

impl ItemStatus {
    /// Whether retrying this item later may succeed.
    pub fn is_transient(&self) -> bool {
        code_is_transient(self.code)
    }
}

/// Connecting to the server failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{address:?} is not a usable SPIRE server address (expected host:port)")]
    InvalidAddress { address: String },
    #[error("building the mTLS client configuration from the workload's X509 source")]
    Tls(#[source] spiffe_rustls::Error),
    #[error("the SPIRE server at {address} cannot be reached")]
    Unavailable {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
}

impl ConnectError {
    /// Whether connecting again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, ConnectError::Unavailable { .. })
    }
}

/// `CountEntries` failed.
#[derive(Debug, thiserror::Error)]
pub enum CountEntriesError {
    #[error(transparent)]
    Call(#[from] CallError),
}

impl CountEntriesError {
    pub fn is_transient(&self) -> bool {
        match self {
            CountEntriesError::Call(error) => error.is_transient(),
        }
    }
}

/// `ListEntries` failed (on any page).
#[derive(Debug, thiserror::Error)]
pub enum ListEntriesError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error(transparent)]
    Malformed(#[from] MalformedResponse),
}

impl ListEntriesError {
    pub fn is_transient(&self) -> bool {
        match self {
            ListEntriesError::Call(error) => error.is_transient(),
            ListEntriesError::Malformed(_) => false,
        }
    }
}

/// `GetEntry` failed.
#[derive(Debug, thiserror::Error)]
pub enum GetEntryError {
    #[error("no entry has the id {id:?}")]
    NotFound { id: String },
    #[error(transparent)]
    Call(#[from] CallError),
    #[error(transparent)]
    Malformed(#[from] MalformedResponse),
}

impl GetEntryError {
    pub fn is_transient(&self) -> bool {
        match self {
            GetEntryError::Call(error) => error.is_transient(),
            GetEntryError::NotFound { .. } | GetEntryError::Malformed(_) => false,
        }
    }
}

/// `BatchCreateEntry` failed as a whole (per-entry failures are
/// [`crate::CreateOutcome`]s, not errors).
#[derive(Debug, thiserror::Error)]
pub enum CreateEntriesError {
    #[error("entry {index} of the batch cannot be sent")]
    InvalidEntry {
        index: usize,
        #[source]
        source: EntryError,
    },
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("the server answered {received} results for {sent} entries")]
    ResultCount { sent: usize, received: usize },
    #[error(transparent)]
    Malformed(#[from] MalformedResponse),
}

impl CreateEntriesError {
    pub fn is_transient(&self) -> bool {
        match self {
            CreateEntriesError::Call(error) => error.is_transient(),
            CreateEntriesError::InvalidEntry { .. }
            | CreateEntriesError::ResultCount { .. }
            | CreateEntriesError::Malformed(_) => false,
        }
    }
}

/// `BatchUpdateEntry` failed as a whole (per-entry failures are
/// [`crate::UpdateOutcome`]s, not errors).
#[derive(Debug, thiserror::Error)]
pub enum UpdateEntriesError {
    #[error("entry {index} of the batch cannot be sent")]
    InvalidEntry {
        index: usize,
        #[source]
        source: EntryError,
    },
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("the server answered {received} results for {sent} entries")]
    ResultCount { sent: usize, received: usize },
    #[error(transparent)]
    Malformed(#[from] MalformedResponse),
}

impl UpdateEntriesError {
    pub fn is_transient(&self) -> bool {
        match self {
            UpdateEntriesError::Call(error) => error.is_transient(),
            UpdateEntriesError::InvalidEntry { .. }
            | UpdateEntriesError::ResultCount { .. }
            | UpdateEntriesError::Malformed(_) => false,
        }
    }
}

/// `BatchDeleteEntry` failed as a whole (per-id failures are [`crate::DeleteOutcome`]s).
#[derive(Debug, thiserror::Error)]
pub enum DeleteEntriesError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("the server answered {received} results for {sent} ids")]
    ResultCount { sent: usize, received: usize },
}

impl DeleteEntriesError {
    pub fn is_transient(&self) -> bool {
        match self {
            DeleteEntriesError::Call(error) => error.is_transient(),
            DeleteEntriesError::ResultCount { .. } => false,
        }
    }
}

/// `ListAgents` failed (on any page).
#[derive(Debug, thiserror::Error)]
pub enum ListAgentsError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error(transparent)]
    Malformed(#[from] MalformedResponse),
}

impl ListAgentsError {
    pub fn is_transient(&self) -> bool {
        match self {
            ListAgentsError::Call(error) => error.is_transient(),
            ListAgentsError::Malformed(_) => false,
        }
    }
}

/// `GetAgent` failed.
#[derive(Debug, thiserror::Error)]
pub enum GetAgentError {
    #[error("no agent has the id {id}")]
    NotFound { id: String },
    #[error(transparent)]
    Call(#[from] CallError),
    #[error(transparent)]
    Malformed(#[from] MalformedResponse),
}

impl GetAgentError {
    pub fn is_transient(&self) -> bool {
        match self {
            GetAgentError::Call(error) => error.is_transient(),
            GetAgentError::NotFound { .. } | GetAgentError::Malformed(_) => false,
        }
    }
}

/// `CreateJoinToken` failed.
#[derive(Debug, thiserror::Error)]
pub enum CreateJoinTokenError {
    #[error("a join token's lifetime must be between 1 s and i32::MAX s")]
    InvalidTtl,
    #[error(transparent)]
    Call(#[from] CallError),
}

impl CreateJoinTokenError {
    pub fn is_transient(&self) -> bool {
        match self {
            CreateJoinTokenError::Call(error) => error.is_transient(),
            CreateJoinTokenError::InvalidTtl => false,
        }
    }
}

/// `GetBundle` failed.
#[derive(Debug, thiserror::Error)]
pub enum GetBundleError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error(transparent)]
    Malformed(#[from] MalformedResponse),
}

impl GetBundleError {
    pub fn is_transient(&self) -> bool {
        match self {
            GetBundleError::Call(error) => error.is_transient(),
            GetBundleError::Malformed(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_statuses_are_classified_by_code() {
        let transient = [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::ResourceExhausted,
        ];
        for code in transient {
            assert!(
                CallError::new("Entry/GetEntry", tonic::Status::new(code, "x")).is_transient(),
                "{code:?}"
            );
        }
        let permanent = [
            Code::InvalidArgument,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::NotFound,
            Code::AlreadyExists,
            Code::Internal,
            Code::Unknown,
        ];
        for code in permanent {
            assert!(
                !CallError::new("Entry/GetEntry", tonic::Status::new(code, "x")).is_transient(),
                "{code:?}"
            );
        }
    }

    #[test]
    fn a_local_transport_failure_is_transient() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let status = tonic::Status::from_error(Box::new(io));
        let error = CallError::new("Entry/ListEntries", status);
        assert!(error.is_transport_failure());
        assert!(error.is_transient());
    }
}
