//! The log and trace pipeline: `tracing` events to stderr (readable on a terminal, JSON lines with
//! `WORKER_LOG_FORMAT=json`), and spans exported over OTLP/HTTP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set. The standard
//! `OTEL_*` variables apply (`OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`, ...). Filter with
//! `RUST_LOG` (default `info`, or the filter the transport passes to [`init_with_default`]).

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Keeps the trace exporter alive; dropping it flushes the spans still buffered.
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|var| {
        std::env::var(var)
            .map(|v| !v.trim().is_empty())
            .unwrap_or(false)
    })
}

/// Installs the global subscriber, unless the application installed one already (then its
/// choice stands and this does nothing). `service` names the service when `OTEL_SERVICE_NAME`
/// is not set. Without `RUST_LOG`, the filter is `info`.
pub fn init(service: &str) -> TelemetryGuard {
    init_with_default(service, "info")
}

/// [`init`] with another filter for when `RUST_LOG` is not set: a transport quiets the client
/// library whose errors it reports itself (`info,<library>=off`).
pub fn init_with_default(service: &str, default_filter: &str) -> TelemetryGuard {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = std::env::var("WORKER_LOG_FORMAT")
        .map(|f| f.eq_ignore_ascii_case("json"))
        .unwrap_or(false);
    let fmt = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        // Readable lines: the semantic-convention attributes (dotted names: `messaging.*`,
        // `otel.*`, `worker.*`) are for trace backends; the log keeps handler, event id, attempt
        // and trace id.
        let fields =
            tracing_subscriber::fmt::format::debug_fn(|writer, field, value| match field.name() {
                name if name.contains('.') => Ok(()),
                "message" => write!(writer, " {value:?}"),
                name => write!(writer, " {name}={value:?}"),
            });
        tracing_subscriber::fmt::layer()
            .fmt_fields(fields)
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed()
    };
    let mut guard = TelemetryGuard::default();
    let otel = if otlp_configured() {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
        {
            Ok(exporter) => {
                let mut resource = Resource::builder();
                if std::env::var("OTEL_SERVICE_NAME").is_err() {
                    resource = resource.with_service_name(service.to_owned());
                }
                let provider = SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource.build())
                    .build();
                let layer = tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer("worker"))
                    .boxed();
                guard.provider = Some(provider);
                Some(layer)
            }
            Err(error) => {
                eprintln!("OTLP trace export disabled: {error}");
                None
            }
        }
    } else {
        None
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init();
    guard
}
