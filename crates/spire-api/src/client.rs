//! [`SpireServerClient`]: typed calls to the SPIRE server's Entry, Agent and Bundle APIs.
//!
//! Batch calls return one outcome per input, in input order, correlated by index: the server
//! returns no entry on most failures, so `results[i].entry` is never used to find the input.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use spiffe::{SpiffeId, TrustDomain, X509Source};
use tonic::Code;
use tonic::transport::Channel;

use crate::connect::{self, Connection};
use crate::error::{
    CallError, ConnectError, CountEntriesError, CreateEntriesError, CreateJoinTokenError,
    DeleteEntriesError, GetAgentError, GetBundleError, GetEntryError, ItemStatus, ListAgentsError,
    ListEntriesError, UpdateEntriesError,
};
use crate::pb::spire::api::server::agent::v1 as agent_pb;
use crate::pb::spire::api::server::bundle::v1 as bundle_pb;
use crate::pb::spire::api::server::entry::v1 as entry_pb;
use crate::pb::spire::api::types as types_pb;
use crate::types::{
    Agent, AgentFilter, Bundle, Entry, EntryFilter, JoinToken, spiffe_id_to_wire, time_from_wire,
};

use agent_pb::agent_client::AgentClient;
use bundle_pb::bundle_client::BundleClient;
use entry_pb::entry_client::EntryClient;

/// A client of one SPIRE server. Cloning is cheap and clones share the connection.
#[derive(Debug, Clone)]
pub struct SpireServerClient {
    channel: Channel,
    connections_opened: Arc<AtomicU64>,
}

/// What happened to one entry of a [`SpireServerClient::batch_create_entries`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    /// The entry was created; this is the server's copy (with its id and revision).
    Created(Entry),
    /// A similar entry (same SPIFFE ID, parent and selector set) already exists: this is the
    /// *existing* entry, whose id and settings may differ from the requested ones. Compare and
    /// update it by its id to converge.
    AlreadyExists(Entry),
    /// The requested id is taken by a different entry (`ALREADY_EXISTS` without an entry).
    IdCollision(ItemStatus),
    /// The server refused the entry as invalid (`INVALID_ARGUMENT`).
    Invalid(ItemStatus),
    /// Any other failure (for example `INTERNAL` from the datastore); see
    /// [`ItemStatus::is_transient`].
    Failed(ItemStatus),
}

/// What happened to one entry of a [`SpireServerClient::batch_update_entries`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "outcomes live briefly in a Vec; boxing the entry would only complicate matching"
)]
pub enum UpdateOutcome {
    /// The entry was updated; this is the server's copy (revision bumped).
    Updated(Entry),
    /// No entry has that id.
    NotFound(ItemStatus),
    /// The server refused the entry as invalid (`INVALID_ARGUMENT`).
    Invalid(ItemStatus),
    /// Any other failure.
    Failed(ItemStatus),
}

/// What happened to one id of a [`SpireServerClient::batch_delete_entries`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    /// No entry had that id (already deleted, for a reconciler).
    NotFound,
    /// Any other failure (`INVALID_ARGUMENT` for an empty id, `INTERNAL`, ...).
    Failed(ItemStatus),
}

const ENTRY_METHOD_COUNT: &str = "Entry/CountEntries";
const ENTRY_METHOD_LIST: &str = "Entry/ListEntries";
const ENTRY_METHOD_GET: &str = "Entry/GetEntry";
const ENTRY_METHOD_CREATE: &str = "Entry/BatchCreateEntry";
const ENTRY_METHOD_UPDATE: &str = "Entry/BatchUpdateEntry";
const ENTRY_METHOD_DELETE: &str = "Entry/BatchDeleteEntry";
const AGENT_METHOD_LIST: &str = "Agent/ListAgents";
const AGENT_METHOD_GET: &str = "Agent/GetAgent";
const AGENT_METHOD_JOIN_TOKEN: &str = "Agent/CreateJoinToken";
const BUNDLE_METHOD_GET: &str = "Bundle/GetBundle";

impl SpireServerClient {
    /// Connects to the server's admin Unix socket now. Every caller that can open the socket is
    /// an administrator (no TLS, no SVID).
    pub async fn connect_unix(path: impl AsRef<Path>) -> Result<SpireServerClient, ConnectError> {
        Ok(SpireServerClient::from_connection(
            connect::unix(path.as_ref()).await?,
        ))
    }

    /// As [`SpireServerClient::connect_unix`], but nothing is dialled until the first call (a
    /// service may start before its SPIRE server).
    pub fn connect_unix_lazy(path: impl AsRef<Path>) -> SpireServerClient {
        SpireServerClient::from_connection(connect::unix_lazy(path.as_ref()))
    }

    /// Connects to the server's TCP port (`host:port`) now, with mTLS: the client presents the
    /// current X509-SVID of `source` (the source keeps it rotated) and accepts only the server
    /// identity `spiffe://<trust_domain>/spire/server`, verified against that trust domain's
    /// bundle from the same source. The caller's SPIFFE ID must be an admin (an entry with
    /// `admin = true`, or listed in the server's `admin_ids`), or calls fail with
    /// `PERMISSION_DENIED`.
    pub async fn connect_tcp(
        address: &str,
        trust_domain: &TrustDomain,
        source: X509Source,
    ) -> Result<SpireServerClient, ConnectError> {
        Ok(SpireServerClient::from_connection(
            connect::tcp(address, trust_domain, source).await?,
        ))
    }

    /// As [`SpireServerClient::connect_tcp`], but nothing is dialled until the first call.
    pub fn connect_tcp_lazy(
        address: &str,
        trust_domain: &TrustDomain,
        source: X509Source,
    ) -> Result<SpireServerClient, ConnectError> {
        Ok(SpireServerClient::from_connection(connect::tcp_lazy(
            address,
            trust_domain,
            source,
        )?))
    }

    fn from_connection(connection: Connection) -> SpireServerClient {
        SpireServerClient {
            channel: connection.channel,
            connections_opened: connection.connections_opened,
        }
    }

    /// How many connections to the server this client (and its clones) has opened so far; more
    /// than one means it reconnected (after a GOAWAY or an outage).
    pub fn connections_opened(&self) -> u64 {
        self.connections_opened.load(Ordering::Relaxed)
    }

    fn entry_client(&self) -> EntryClient<Channel> {
        EntryClient::new(self.channel.clone())
    }

    /// Counts the entries that match `filter`.
    pub async fn count_entries(&self, filter: &EntryFilter) -> Result<u64, CountEntriesError> {
        let request = entry_pb::CountEntriesRequest {
            filter: Some(filter.to_wire()),
        };
        let response = self
            .entry_client()
            .count_entries(request)
            .await
            .map_err(|status| CallError::new(ENTRY_METHOD_COUNT, status))?
            .into_inner();
        // A count is never negative.
        Ok(u64::try_from(response.count).unwrap_or(0))
    }

    /// The entries that match `filter`, read `page_size` at a time (0 asks for everything in one
    /// response, which fails beyond the 4 MiB message limit), following the page tokens.
    pub fn entry_pages(&self, filter: &EntryFilter, page_size: u32) -> EntryPages {
        EntryPages {
            client: self.entry_client(),
            filter: filter.to_wire(),
            page_size: i32::try_from(page_size).unwrap_or(i32::MAX),
            next_token: Some(String::new()),
        }
    }

    /// Every entry that matches `filter`, collected from pages of `page_size`.
    pub async fn list_entries(
        &self,
        filter: &EntryFilter,
        page_size: u32,
    ) -> Result<Vec<Entry>, ListEntriesError> {
        let mut pages = self.entry_pages(filter, page_size);
        let mut entries = Vec::new();
        while let Some(page) = pages.next_page().await? {
            entries.extend(page);
        }
        Ok(entries)
    }

    /// The entry with this id.
    pub async fn get_entry(&self, id: &str) -> Result<Entry, GetEntryError> {
        let request = entry_pb::GetEntryRequest {
            id: id.to_owned(),
            output_mask: None,
        };
        match self.entry_client().get_entry(request).await {
            Ok(response) => Ok(Entry::from_wire(response.into_inner())?),
            Err(status) if status.code() == Code::NotFound => {
                Err(GetEntryError::NotFound { id: id.to_owned() })
            }
            Err(status) => Err(CallError::new(ENTRY_METHOD_GET, status).into()),
        }
    }

    /// Creates entries; one outcome per entry, in the same order. The batch is not atomic: each
    /// entry succeeds or fails on its own.
    pub async fn batch_create_entries(
        &self,
        entries: &[Entry],
    ) -> Result<Vec<CreateOutcome>, CreateEntriesError> {
        let wire_entries = entries
            .iter()
            .enumerate()
            .map(|(index, entry)| {
                entry
                    .to_wire()
                    .map_err(|source| CreateEntriesError::InvalidEntry { index, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let request = entry_pb::BatchCreateEntryRequest {
            entries: wire_entries,
            output_mask: None,
        };
        let response = self
            .entry_client()
            .batch_create_entry(request)
            .await
            .map_err(|status| CallError::new(ENTRY_METHOD_CREATE, status))?
            .into_inner();
        if response.results.len() != entries.len() {
            return Err(CreateEntriesError::ResultCount {
                sent: entries.len(),
                received: response.results.len(),
            });
        }
        response
            .results
            .into_iter()
            .map(|result| {
                let status = item_status(result.status);
                Ok(match (status.code, result.entry) {
                    (Code::Ok, Some(entry)) => CreateOutcome::Created(Entry::from_wire(entry)?),
                    (Code::AlreadyExists, Some(entry)) => {
                        CreateOutcome::AlreadyExists(Entry::from_wire(entry)?)
                    }
                    (Code::AlreadyExists, None) => CreateOutcome::IdCollision(status),
                    (Code::InvalidArgument, _) => CreateOutcome::Invalid(status),
                    (_, _) => CreateOutcome::Failed(status),
                })
            })
            .collect()
    }

    /// Replaces entries, found by id, with these (every field is written: send the whole
    /// entry); one outcome per entry, in the same order. Not atomic.
    pub async fn batch_update_entries(
        &self,
        entries: &[Entry],
    ) -> Result<Vec<UpdateOutcome>, UpdateEntriesError> {
        let wire_entries = entries
            .iter()
            .enumerate()
            .map(|(index, entry)| {
                entry
                    .to_wire()
                    .map_err(|source| UpdateEntriesError::InvalidEntry { index, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let request = entry_pb::BatchUpdateEntryRequest {
            entries: wire_entries,
            input_mask: None,
            output_mask: None,
        };
        let response = self
            .entry_client()
            .batch_update_entry(request)
            .await
            .map_err(|status| CallError::new(ENTRY_METHOD_UPDATE, status))?
            .into_inner();
        if response.results.len() != entries.len() {
            return Err(UpdateEntriesError::ResultCount {
                sent: entries.len(),
                received: response.results.len(),
            });
        }
        response
            .results
            .into_iter()
            .map(|result| {
                let status = item_status(result.status);
                Ok(match (status.code, result.entry) {
                    (Code::Ok, Some(entry)) => UpdateOutcome::Updated(Entry::from_wire(entry)?),
                    (Code::NotFound, _) => UpdateOutcome::NotFound(status),
                    (Code::InvalidArgument, _) => UpdateOutcome::Invalid(status),
                    (_, _) => UpdateOutcome::Failed(status),
                })
            })
            .collect()
    }

    /// Deletes entries by id; one outcome per id, in the same order. Not atomic.
    pub async fn batch_delete_entries(
        &self,
        ids: &[String],
    ) -> Result<Vec<DeleteOutcome>, DeleteEntriesError> {
        let request = entry_pb::BatchDeleteEntryRequest { ids: ids.to_vec() };
        let response = self
            .entry_client()
            .batch_delete_entry(request)
            .await
            .map_err(|status| CallError::new(ENTRY_METHOD_DELETE, status))?
            .into_inner();
        if response.results.len() != ids.len() {
            return Err(DeleteEntriesError::ResultCount {
                sent: ids.len(),
                received: response.results.len(),
            });
        }
        Ok(response
            .results
            .into_iter()
            .map(|result| {
                let status = item_status(result.status);
                match status.code {
                    Code::Ok => DeleteOutcome::Deleted,
                    Code::NotFound => DeleteOutcome::NotFound,
                    _ => DeleteOutcome::Failed(status),
                }
            })
            .collect())
    }

    /// Every attested agent that matches `filter`, collected from pages of `page_size`.
    pub async fn list_agents(
        &self,
        filter: &AgentFilter,
        page_size: u32,
    ) -> Result<Vec<Agent>, ListAgentsError> {
        let mut client = AgentClient::new(self.channel.clone());
        let mut agents = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = agent_pb::ListAgentsRequest {
                filter: Some(filter.to_wire()),
                output_mask: None,
                page_size: i32::try_from(page_size).unwrap_or(i32::MAX),
                page_token: std::mem::take(&mut page_token),
            };
            let response = client
                .list_agents(request)
                .await
                .map_err(|status| CallError::new(AGENT_METHOD_LIST, status))?
                .into_inner();
            let page_was_empty = response.agents.is_empty();
            for agent in response.agents {
                agents.push(Agent::from_wire(agent)?);
            }
            // The server hands out a token after every non-empty page; an empty page ends it.
            if response.next_page_token.is_empty() || page_was_empty {
                return Ok(agents);
            }
            page_token = response.next_page_token;
        }
    }

    /// The attested agent with this SPIFFE ID.
    pub async fn get_agent(&self, id: &SpiffeId) -> Result<Agent, GetAgentError> {
        let request = agent_pb::GetAgentRequest {
            id: Some(spiffe_id_to_wire(id)),
            output_mask: None,
        };
        match AgentClient::new(self.channel.clone())
            .get_agent(request)
            .await
        {
            Ok(response) => Ok(Agent::from_wire(response.into_inner())?),
            Err(status) if status.code() == Code::NotFound => {
                Err(GetAgentError::NotFound { id: id.to_string() })
            }
            Err(status) => Err(CallError::new(AGENT_METHOD_GET, status).into()),
        }
    }

    /// Creates a join token valid for `ttl` (whole seconds, at least one). With `agent_id`, the
    /// server also creates an entry giving the agent that attests with the token this extra
    /// SPIFFE ID (a node alias for workloads parented on it).
    pub async fn create_join_token(
        &self,
        ttl: Duration,
        agent_id: Option<&SpiffeId>,
    ) -> Result<JoinToken, CreateJoinTokenError> {
        let ttl = i32::try_from(ttl.as_secs())
            .ok()
            .filter(|seconds| *seconds >= 1)
            .ok_or(CreateJoinTokenError::InvalidTtl)?;
        let request = agent_pb::CreateJoinTokenRequest {
            ttl,
            token: String::new(),
            agent_id: agent_id.map(spiffe_id_to_wire),
        };
        let token = AgentClient::new(self.channel.clone())
            .create_join_token(request)
            .await
            .map_err(|status| CallError::new(AGENT_METHOD_JOIN_TOKEN, status))?
            .into_inner();
        Ok(JoinToken {
            value: token.value,
            expires_at: time_from_wire(token.expires_at),
        })
    }

    /// The server's own trust bundle (any caller may read it).
    pub async fn get_bundle(&self) -> Result<Bundle, GetBundleError> {
        let bundle = BundleClient::new(self.channel.clone())
            .get_bundle(bundle_pb::GetBundleRequest { output_mask: None })
            .await
            .map_err(|status| CallError::new(BUNDLE_METHOD_GET, status))?
            .into_inner();
        Ok(Bundle::from_wire(bundle)?)
    }
}

/// Pages of a `ListEntries` query; see [`SpireServerClient::entry_pages`].
#[derive(Debug)]
pub struct EntryPages {
    client: EntryClient<Channel>,
    filter: entry_pb::EntryFilter,
    page_size: i32,
    /// `None` once the last page was read.
    next_token: Option<String>,
}

impl EntryPages {
    /// The next non-empty page, or `None` after the last one. After an error the same page is
    /// asked for again on the next call.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Entry>>, ListEntriesError> {
        loop {
            let Some(token) = self.next_token.clone() else {
                return Ok(None);
            };
            let request = entry_pb::ListEntriesRequest {
                filter: Some(self.filter.clone()),
                output_mask: None,
                page_size: self.page_size,
                page_token: token,
            };
            let response = self
                .client
                .list_entries(request)
                .await
                .map_err(|status| CallError::new(ENTRY_METHOD_LIST, status))?
                .into_inner();
            let entries = response
                .entries
                .into_iter()
                .map(Entry::from_wire)
                .collect::<Result<Vec<_>, _>>()?;
            // The server hands out a token after every non-empty page, so the normal end is an
            // empty page; an empty token ends it too.
            self.next_token = Some(response.next_page_token)
                .filter(|token| !token.is_empty() && !entries.is_empty());
            if !entries.is_empty() {
                return Ok(Some(entries));
            }
        }
    }
}

fn item_status(status: Option<types_pb::Status>) -> ItemStatus {
    // A result without a status is treated as the server's "unknown" failure, never as success.
    match status {
        Some(status) => ItemStatus {
            code: Code::from_i32(status.code),
            message: status.message,
        },
        None => ItemStatus {
            code: Code::Unknown,
            message: "result without a status".to_owned(),
        },
    }
}
