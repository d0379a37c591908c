//! A client for the SPIRE Server Entry, Agent and Bundle APIs.
//!
//! - [`SpireServerClient`] ([`client`]): connect over the server's admin Unix socket
//!   ([`SpireServerClient::connect_unix`]) or over TCP with mTLS using the caller's own X509-SVID
//!   ([`SpireServerClient::connect_tcp`]); count, list (paged), get, batch-create, batch-update
//!   and batch-delete entries; list and get agents; create join tokens; read the bundle.
//! - [`types`]: the domain types ([`Entry`], [`Selector`], [`EntryFilter`], [`Agent`],
//!   [`Bundle`], ...). SPIFFE IDs are [`spiffe::SpiffeId`].
//! - [`error`]: one error enum per operation, each with `is_transient()`.
//! - [`pb`]: the generated wire messages and tonic clients, compiled from our own `.proto`
//!   descriptions (`proto/`, written from `shared/reference/spire.md`) with `protox`.
//!
//! Batch calls return one outcome per input in input order ([`CreateOutcome`],
//! [`UpdateOutcome`], [`DeleteOutcome`]); only a failure of the call as a whole is an error.

pub mod client;
mod connect;
pub mod error;
pub mod pb;
pub mod types;

pub use client::{CreateOutcome, DeleteOutcome, EntryPages, SpireServerClient, UpdateOutcome};
pub use connect::server_spiffe_id;
pub use error::{
    CallError, ConnectError, CountEntriesError, CreateEntriesError, CreateJoinTokenError,
    DeleteEntriesError, GetAgentError, GetBundleError, GetEntryError, ItemStatus, ListAgentsError,
    ListEntriesError, UpdateEntriesError,
};
pub use tonic::Code;
pub use types::{
    Agent, AgentFilter, Bundle, Entry, EntryError, EntryFilter, FederatesWithFilter, JoinToken,
    JwtAuthority, MalformedResponse, Match, Selector, SelectorError, SelectorFilter, SpiffeId,
    TrustDomain, X509Authority,
};
