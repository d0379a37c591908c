//! Logs and traces: a `tracing` subscriber (text or JSON, filtered), an OpenTelemetry tracer
//! provider behind `tracing-opentelemetry` (exporting with OTLP/gRPC when `[telemetry]
//! otlp_endpoint` is set), and the W3C TraceContext propagator as the global text-map propagator.
//!
//! This is the one process-wide piece of a service, set once in `main` by [`init_telemetry`] (the
//! service skeleton does it). Library code and in-process tests never call it; they just emit
//! `tracing` spans and events.
//!
//! The tracer provider is installed even when nothing is exported, so every span has an
//! OpenTelemetry context and the `traceparent` a service receives is carried into what it
//! publishes: one TaskRun stays one trace across services whether or not this one exports.

use std::io::IsTerminal;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::{LogFormat, TelemetryConfig};

/// How long flushing spans may take at exit, so an unreachable collector cannot hold up shutdown.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The OTLP exporter could not be built from `telemetry.otlp_endpoint`.
    #[error("telemetry.otlp_endpoint: building the OTLP exporter: {source}")]
    Exporter {
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// A global `tracing` subscriber was already set (telemetry is initialised once per process).
    #[error("installing the tracing subscriber: {source}")]
    Subscriber {
        #[source]
        source: tracing_subscriber::util::TryInitError,
    },
}

/// Keeps telemetry running; flushes and stops span export when shut down or dropped.
#[must_use = "dropping the guard stops exporting traces"]
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    exporting: bool,
}

impl TelemetryGuard {
    /// Whether spans are being exported with OTLP.
    pub fn is_exporting(&self) -> bool {
        self.exporting
    }

    /// Flushes pending spans (at most [`FLUSH_TIMEOUT`]) and stops the exporter, off the async
    /// worker threads.
    pub async fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            let flushed = tokio::task::spawn_blocking(move || shutdown_provider(&provider)).await;
            if let Err(error) = flushed {
                tracing::warn!(%error, "flushing traces did not finish");
            }
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            shutdown_provider(&provider);
        }
    }
}

fn shutdown_provider(provider: &SdkTracerProvider) {
    if let Err(error) = provider.shutdown_with_timeout(FLUSH_TIMEOUT) {
        tracing::warn!(%error, "flushing traces at exit failed");
    }
}

/// Sets up logging and tracing for the process. Call once, from `main`, inside the Tokio runtime
/// (the OTLP exporter's gRPC channel runs on it). `service_name` is used unless
/// `config.service_name` overrides it.
pub fn init_telemetry(
    service_name: &str,
    config: &TelemetryConfig,
) -> Result<TelemetryGuard, TelemetryError> {
    let service_name = config
        .service_name
        .clone()
        .unwrap_or_else(|| service_name.to_owned());
    let resource = Resource::builder()
        .with_service_name(service_name.clone())
        .build();
    let mut provider = SdkTracerProvider::builder().with_resource(resource);
    let exporting = config.otlp_endpoint.is_some();
    if let Some(endpoint) = &config.otlp_endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.as_str())
            .build()
            .map_err(|source| TelemetryError::Exporter { source })?;
        provider = provider.with_batch_exporter(exporter);
    }
    let provider = provider.build();
    let tracer = provider.tracer(service_name);

    let fmt_layer = match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let otel_layer = tracing_opentelemetry::layer::<Registry>().with_tracer(tracer);
    Registry::default()
        .with(otel_layer)
        .with(fmt_layer)
        .with(config.log_filter.to_env_filter())
        .try_init()
        .map_err(|source| TelemetryError::Subscriber { source })?;

    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(TelemetryGuard {
        provider: Some(provider),
        exporting,
    })
}
