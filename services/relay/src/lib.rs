//! Relay: delivers attestation events from the bus to HTTP CloudEvents sinks (a Knative broker,
//! a Tekton Triggers EventListener, any CloudEvents receiver).
//!
//! Each configured sink has its own durable consumer, `relay-<sink>`, on the attestation stream:
//! sinks fail and recover independently, and N replicas of the relay share each sink's work. An
//! event is POSTed in CloudEvents HTTP **binary content mode** with the attributes it has on the
//! bus, and acked only once the sink answered 2xx. Failures are retried with backoff or
//! dead-lettered on `{prefix}.deadletter.relay-<sink>` with their reason, by the one ack rule of
//! `countersign-events`.
//!
//! - [`config`]: [`RelayConfig`]: `[nats]`, `[bus]` and the `[[sinks]]` list (URL, headers from
//!   files or the environment, filter, retry rules).
//! - [`filter`]: which events a sink gets, as consumer filter subjects and per event.
//! - [`http_binding`]: the binary-mode request (`ce-*` headers, JSON body) of an event.
//! - [`headers`]: a sink's configured headers, secrets included, resolved.
//! - [`sink`]: one sink's client; sending an event and classifying the answer
//!   ([`sink::DeliveryError`]: retryable or permanent).
//! - [`forward`]: the handler of a sink's consumer: filter, deliver, honour `Retry-After`, and
//!   return the typed outcome the consumer settles.
//! - [`metrics`]: the relay's metrics, `countersign_relay_*`.
//! - [`service`]: [`run`]: connect, bind the consumers, run them until shutdown.
//!
//! See `README.md` for every configuration key and how to point the relay at a Knative broker
//! or a Triggers EventListener.

pub mod config;
pub mod filter;
pub mod forward;
pub mod headers;
pub mod http_binding;
pub mod metrics;
pub mod service;
pub mod sink;

pub use config::RelayConfig;
pub use service::{RunError, SERVICE_NAME, run};
