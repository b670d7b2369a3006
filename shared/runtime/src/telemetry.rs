//! Logs and traces.
//!
//! Logs go through `tracing` (text for a terminal, JSON for collectors).
//! When an OTLP endpoint is configured, spans are also exported as
//! OpenTelemetry traces. W3C trace context (`traceparent`) is read from
//! incoming gRPC metadata by [`grpc_span`] and written to outgoing calls by
//! [`inject_trace_context`], so one data-subject request is one trace across
//! services. Span fields name methods and resource names, never personal
//! values.

use opentelemetry::{
    global,
    propagation::{Extractor, Injector},
    trace::TracerProvider as _,
};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{
    EnvFilter, Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

use crate::config::{Config, LogFormat};

/// Flushes and stops trace and metric export when dropped.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    meters: Option<opentelemetry_sdk::metrics::SdkMeterProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            eprintln!("trace export did not shut down cleanly: {err}");
        }
        if let Some(meters) = self.meters.take()
            && let Err(err) = meters.shutdown()
        {
            eprintln!("metric export did not shut down cleanly: {err}");
        }
    }
}

/// Installs the global subscriber. Call once, from `main`; tests leave it out
/// (or call [`init_for_tests`]) so their output stays quiet.
pub fn init(config: &Config, service_name: &str) -> anyhow::Result<TelemetryGuard> {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_new(&config.log)?;
    let fmt = match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer().boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
    };

    // Metrics go out by OTLP with the traces, and to /metrics (see
    // `crate::metrics`).
    let meters = crate::metrics::provider(config, service_name)?;
    let provider = match &config.otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        Resource::builder()
                            .with_service_name(service_name.to_owned())
                            .build(),
                    )
                    .build(),
            )
        }
        None => None,
    };
    // The log filter applies to log lines only: a quiet log must not switch
    // off the RPC spans that traces are made of.
    let otel = provider.as_ref().map(|p| {
        global::set_tracer_provider(p.clone());
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("custodian"))
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });

    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init()?;
    Ok(TelemetryGuard { provider, meters })
}

/// A quiet subscriber for tests: warnings and errors only, captured by the
/// test harness. Safe to call many times.
pub fn init_for_tests() {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("CUSTODIAN_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// The span of one incoming RPC, a child of the caller's trace when the
/// request carries W3C trace context. Only the method is recorded: request
/// bodies can be personal.
pub fn grpc_span<B>(request: &http::Request<B>) -> tracing::Span {
    let method = request.uri().path();
    let span = tracing::info_span!(
        "grpc",
        otel.name = method,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.method = method,
    );
    let parent =
        global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(request.headers())));
    // No parent in the metadata leaves the span a root; nothing to report.
    let _ = span.set_parent(parent);
    span
}

/// A tonic interceptor for outgoing calls: carries the current trace context
/// in `traceparent` metadata.
#[allow(clippy::result_large_err)] // the signature tonic's interceptors require
pub fn inject_trace_context(
    mut request: tonic::Request<()>,
) -> Result<tonic::Request<()>, tonic::Status> {
    let cx = tracing::Span::current().context();
    global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut MetadataInjector(request.metadata_mut()))
    });
    Ok(request)
}

/// The current trace context as a W3C `traceparent` value, to be stored
/// with work that continues later (a data-subject request's steps); `None`
/// when nothing is traced.
pub fn current_traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    let mut carrier = std::collections::HashMap::new();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
    carrier.remove("traceparent")
}

/// A span for work continuing the trace a stored `traceparent` names, so
/// work resumed later (or by another replica) joins the same trace.
pub fn continuing_span(name: &'static str, traceparent: Option<&str>) -> tracing::Span {
    let span = tracing::info_span!("work", otel.name = name, otel.kind = "internal");
    if let Some(traceparent) = traceparent {
        let carrier: std::collections::HashMap<String, String> =
            [("traceparent".to_owned(), traceparent.to_owned())].into();
        let parent = global::get_text_map_propagator(|p| p.extract(&carrier));
        let _ = span.set_parent(parent);
    }
    span
}

/// Calls refused before or by a handler for the caller's own reasons (bad
/// input, no token, no permission, shed under load): counted as metrics,
/// each logged only at `debug`, and summed up in at most one `warn` line per
/// [`SUMMARY_EVERY`], so that logging stays bounded under any load.
pub fn refused(code: tonic::Code) {
    REFUSALS.record(code);
}

/// How often refusals are summed up in the log, at most.
pub const SUMMARY_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Below this many refusals in a window, no summary is logged at all.
const SUMMARY_THRESHOLD: u64 = 100;

static REFUSALS: std::sync::LazyLock<Refusals> = std::sync::LazyLock::new(Refusals::new);

struct Refusals {
    counter: opentelemetry::metrics::Counter<u64>,
    window: std::sync::Mutex<Window>,
}

struct Window {
    start: std::time::Instant,
    counts: std::collections::BTreeMap<i32, u64>,
}

impl Refusals {
    fn new() -> Self {
        Self {
            counter: global::meter("custodian")
                .u64_counter("custodian.rpc.refused")
                .with_description("Calls refused for the caller's reasons, by gRPC status code")
                .build(),
            window: std::sync::Mutex::new(Window {
                start: std::time::Instant::now(),
                counts: Default::default(),
            }),
        }
    }

    fn record(&self, code: tonic::Code) {
        self.counter.add(
            1,
            &[opentelemetry::KeyValue::new(
                "rpc.grpc.status_code",
                code as i64,
            )],
        );
        tracing::debug!(code = ?code, "call refused");
        let Ok(mut window) = self.window.lock() else {
            return;
        };
        *window.counts.entry(code as i32).or_default() += 1;
        if window.start.elapsed() < SUMMARY_EVERY {
            return;
        }
        let total: u64 = window.counts.values().sum();
        if total >= SUMMARY_THRESHOLD {
            let by_code = window
                .counts
                .iter()
                .map(|(code, n)| format!("{:?}={n}", tonic::Code::from(*code)))
                .collect::<Vec<_>>()
                .join(", ");
            tracing::warn!(
                refused = total,
                seconds = window.start.elapsed().as_secs(),
                by_code = %by_code,
                "many calls refused"
            );
        }
        window.start = std::time::Instant::now();
        window.counts.clear();
    }
}

/// Logs the server's own faults (INTERNAL and the like) at `error`, at most
/// [`FAULTS_PER_WINDOW`] per [`SUMMARY_EVERY`]; the rest are counted and
/// summed up. Handlers already log what went wrong, without values.
#[derive(Clone, Copy, Debug, Default)]
pub struct OnServerFault;

/// Fault lines logged per window at most.
pub const FAULTS_PER_WINDOW: u64 = 20;

static FAULTS: std::sync::LazyLock<std::sync::Mutex<(std::time::Instant, u64)>> =
    std::sync::LazyLock::new(|| std::sync::Mutex::new((std::time::Instant::now(), 0)));

impl tower_http::trace::OnFailure<tower_http::classify::GrpcFailureClass> for OnServerFault {
    fn on_failure(
        &mut self,
        class: tower_http::classify::GrpcFailureClass,
        latency: std::time::Duration,
        _span: &tracing::Span,
    ) {
        static COUNTER: std::sync::LazyLock<opentelemetry::metrics::Counter<u64>> =
            std::sync::LazyLock::new(|| {
                global::meter("custodian")
                    .u64_counter("custodian.rpc.server_faults")
                    .with_description("Calls that failed for the server's reasons")
                    .build()
            });
        COUNTER.add(1, &[]);
        let Ok(mut window) = FAULTS.lock() else {
            return;
        };
        if window.0.elapsed() >= SUMMARY_EVERY {
            if window.1 > FAULTS_PER_WINDOW {
                tracing::error!(
                    suppressed = window.1 - FAULTS_PER_WINDOW,
                    "more server faults than logged"
                );
            }
            *window = (std::time::Instant::now(), 0);
        }
        window.1 += 1;
        if window.1 <= FAULTS_PER_WINDOW {
            tracing::error!(classification = %class, latency_ms = latency.as_millis() as u64, "call failed");
        }
    }
}
