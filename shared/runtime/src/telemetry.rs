//! Logs and traces.
//!
//! Logs go through `tracing` (text for a terminal, JSON for collectors).
//! Every span is also an OpenTelemetry span, exported by OTLP when an
//! endpoint is configured and, without one, only given its ids: a JSON log
//! line written inside a span carries its `trace_id` and `span_id`, the ids
//! that the exported span and the `traceparent` sent to other services
//! carry, so the logs of one request can be found from its trace (and
//! grouped without one). W3C trace context (`traceparent`) is read from
//! incoming gRPC metadata by [`grpc_span`] and written to outgoing calls by
//! [`inject_trace_context`], so one data-subject request is one trace across
//! services. Span fields name methods, status codes and resource names,
//! never personal values.

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use opentelemetry::{
    global,
    propagation::{Extractor, Injector},
    trace::{TraceContextExt as _, TracerProvider as _},
};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    propagation::TraceContextPropagator,
    trace::{
        BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter,
        SpanProcessor,
    },
};
use tracing::{Subscriber, dispatcher::WeakDispatch, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{
    EnvFilter, Layer as _,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    layer::SubscriberExt as _,
    registry::LookupSpan,
    util::SubscriberInitExt as _,
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
            tracing::warn!(error = %err, "trace export did not shut down cleanly");
        }
        if let Some(meters) = self.meters.take()
            && let Err(err) = meters.shutdown()
        {
            tracing::warn!(error = %err, "metric export did not shut down cleanly");
        }
    }
}

/// Installs the global subscriber. Call once, from `main`; tests leave it out
/// (or call [`init_for_tests`]) so their output stays quiet.
pub fn init(config: &Config, service_name: &str) -> anyhow::Result<TelemetryGuard> {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_new(&config.log)?;

    // Metrics go out by OTLP with the traces, and to /metrics (see
    // `crate::metrics`).
    let meters = crate::metrics::provider(config, service_name)?;
    let provider = tracer_provider(config, service_name)?;
    global::set_tracer_provider(provider.clone());
    subscriber(config.log_format, filter, std::io::stdout, &provider).try_init()?;
    if config.log_format == LogFormat::Json {
        json_panics();
    }
    Ok(TelemetryGuard {
        provider: Some(provider),
        meters,
    })
}

/// Log lines through `filter` in `format` to `writer`; spans to `provider`.
fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    provider: &SdkTracerProvider,
) -> tracing::Dispatch
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    // The JSON formatter asks the OpenTelemetry layer for a line's ids
    // through the dispatcher, which exists only once the formatter is in it.
    let dispatch = Arc::new(OnceLock::new());
    let fmt = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(writer).boxed(),
        LogFormat::Json => json_layer(writer, dispatch.clone()).boxed(),
    };
    // The log filter applies to log lines only: a quiet log must not switch
    // off the RPC spans that traces are made of.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("custodian"))
        .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    let subscriber: tracing::Dispatch = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .into();
    let _ = dispatch.set(subscriber.downgrade());
    subscriber
}

/// Export settings, sized for the suite's peak (about 7k calls a second,
/// one span each, more for calls between services): a second's worth of
/// spans and more may wait, sent in batches of 2048 at least every second.
/// The SDK's defaults (2048 waiting, 512 a batch, every 5 s) dropped spans
/// at that rate.
pub const SPAN_QUEUE: usize = 16_384;
const SPAN_BATCH: usize = 2_048;
const SPAN_DELAY: Duration = Duration::from_secs(1);

/// Every span gets ids; without an endpoint none is recorded (the sampler
/// drops all: the spans cost their ids and little else), with one the
/// sampling ratio decides for traces that start here, and a caller's
/// decision is kept for those that continue.
fn tracer_provider(config: &Config, service_name: &str) -> anyhow::Result<SdkTracerProvider> {
    let resource = Resource::builder()
        .with_service_name(service_name.to_owned())
        .build();
    let Some(endpoint) = &config.otlp_endpoint else {
        return Ok(SdkTracerProvider::builder()
            .with_sampler(Sampler::AlwaysOff)
            .with_resource(resource)
            .build());
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()?;
    let drops = Arc::new(Drops::default());
    let batches = BatchSpanProcessor::builder(Counted {
        inner: exporter,
        drops: drops.clone(),
    })
    .with_batch_config(
        BatchConfigBuilder::default()
            .with_max_queue_size(SPAN_QUEUE)
            .with_max_export_batch_size(SPAN_BATCH)
            .with_scheduled_delay(SPAN_DELAY)
            .build(),
    )
    .build();
    Ok(SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.trace_sample_ratio,
        ))))
        .with_span_processor(Bounded {
            inner: batches,
            drops,
            limit: SPAN_QUEUE,
        })
        .with_resource(resource)
        .build())
}

/// Spans handed to the batch processor and not yet to the exporter, and
/// those dropped because too many were: the SDK's own processor drops
/// silently once its queue is full (one line per process lifetime), so the
/// queue is bounded here, where the drops can be counted and reported.
#[derive(Debug, Default)]
struct Drops {
    waiting: AtomicUsize,
    dropped: AtomicU64,
    /// Drops not yet reported, and when the last report was made.
    report: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Drops {
    /// At most one `warn` line per [`SUMMARY_EVERY`], from the exporter's
    /// thread (never from inside a span's end, where logging could
    /// re-enter the subscriber), and a last one at shutdown.
    fn report(&self, last: bool) {
        let Ok(mut reported) = self.report.lock() else {
            return;
        };
        if !last && reported.is_some_and(|at| at.elapsed() < SUMMARY_EVERY) {
            return;
        }
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped == 0 {
            return;
        }
        static COUNTER: std::sync::LazyLock<opentelemetry::metrics::Counter<u64>> =
            std::sync::LazyLock::new(|| {
                global::meter("custodian")
                    .u64_counter("custodian.trace.spans_dropped")
                    .with_description("Spans dropped because export did not keep up")
                    .build()
            });
        COUNTER.add(dropped, &[]);
        tracing::warn!(
            dropped,
            queue = SPAN_QUEUE,
            "trace export is not keeping up: spans dropped (lower --trace-sample-ratio, or check the collector)"
        );
        *reported = Some(std::time::Instant::now());
    }
}

/// The batch processor, behind a bound it can never reach.
#[derive(Debug)]
struct Bounded {
    inner: BatchSpanProcessor,
    drops: Arc<Drops>,
    limit: usize,
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        // The count includes spans the exporter's thread has taken out of
        // the queue but not yet exported: the queue itself never fills.
        if self.drops.waiting.fetch_add(1, Ordering::Relaxed) >= self.limit {
            self.drops.waiting.fetch_sub(1, Ordering::Relaxed);
            self.drops.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let result = self.inner.shutdown_with_timeout(timeout);
        self.drops.report(true);
        result
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, counting what leaves the queue.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    drops: Arc<Drops>,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        self.drops.waiting.fetch_sub(batch.len(), Ordering::Relaxed);
        self.drops.report(false);
        self.inner.export(batch)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The JSON log layer: one object per line, the event's fields at the top
/// level, and the ids of the span it was written in.
fn json_layer<S, W>(
    writer: W,
    dispatch: Arc<OnceLock<WeakDispatch>>,
) -> impl tracing_subscriber::Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .json()
        .with_writer(writer)
        .event_format(WithTraceIds {
            inner: tracing_subscriber::fmt::format()
                .json()
                .flatten_event(true)
                .with_current_span(true),
            dispatch,
        })
}

/// A JSON event formatter that adds `trace_id` and `span_id` (hex, as in
/// OTLP and `traceparent`) of the innermost OpenTelemetry span around the
/// event, when there is one.
struct WithTraceIds<F> {
    inner: F,
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        // The spans around the event as the registry has them: the log
        // filter may hide a call's span from this layer (`--log warn`
        // hides the INFO span of a call a WARN line is written in). Spans
        // below the OpenTelemetry layer's level have no ids: the nearest
        // one above them does.
        let ids = self
            .dispatch
            .get()
            .and_then(WeakDispatch::upgrade)
            .and_then(|dispatch| {
                let registry = dispatch.downcast_ref::<tracing_subscriber::Registry>()?;
                let leaf = match event.parent() {
                    Some(parent) => parent.clone(),
                    None if event.is_contextual() => registry.current_span().id()?.clone(),
                    None => return None,
                };
                registry.span(&leaf)?.scope().find_map(|span| {
                    let cx = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)?;
                    let span = cx.span();
                    let ids = span.span_context();
                    ids.is_valid().then(|| (ids.trace_id(), ids.span_id()))
                })
            });
        let Some((trace_id, span_id)) = ids else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        // The JSON formatter writes one object, then a newline.
        match line.trim_end().strip_suffix('}') {
            Some(object) => writeln!(
                writer,
                "{object},\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}"
            ),
            None => writer.write_str(&line),
        }
    }
}

/// Reports an error that ends the process: with JSON logs, one JSON line
/// on stderr shaped as every other (whether or not [`init`] ran: a bad
/// flag or configuration file fails before it); otherwise as Rust reports
/// an error returned from `main`.
pub fn fatal(err: &anyhow::Error, format: LogFormat) {
    match format {
        LogFormat::Text => eprintln!("Error: {err:?}"),
        LogFormat::Json => {
            on_stderr(|| tracing::error!(error = %format!("{err:#}"), "fatal error"))
        }
    }
}

/// Writes what `log` logs as JSON on stderr, whatever subscriber is
/// installed (if any).
fn on_stderr(log: impl FnOnce()) {
    let subscriber =
        tracing_subscriber::registry().with(json_layer(std::io::stderr, Arc::new(OnceLock::new())));
    tracing::subscriber::with_default(subscriber, log);
}

/// With JSON logs, a panic is one JSON line on stderr too, with the ids of
/// the span it happened in; the hook Rust had (the plain text one) is
/// replaced. Panic messages, like every log line, carry no personal value.
fn json_panics() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let cx = tracing::Span::current().context();
        let span = cx.span();
        let ids = span.span_context();
        let (trace_id, span_id) = match ids.is_valid() {
            true => (ids.trace_id().to_string(), ids.span_id().to_string()),
            false => (String::new(), String::new()),
        };
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("");
        on_stderr(|| {
            tracing::error!(
                panic = message,
                location,
                thread,
                trace_id,
                span_id,
                "panicked"
            )
        });
    }));
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

/// The span of one incoming call, a child of the caller's trace when the
/// request carries W3C trace context. Named and described by OpenTelemetry's
/// conventions for gRPC (`custodian.identity.v1.TenantService/GetTenant`,
/// `rpc.service`, `rpc.method`; [`RecordStatus`] adds
/// `rpc.grpc.status_code`); plain HTTP calls (the analytics beacon) by those
/// for HTTP. Only the method is recorded: request bodies can be personal.
pub fn grpc_span<B>(request: &http::Request<B>) -> tracing::Span {
    let path = request.uri().path();
    let span = match grpc_method(request.headers(), path) {
        Some((service, method)) => tracing::info_span!(
            "grpc",
            otel.name = &path[1..],
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = Empty,
            otel.status_description = Empty,
        ),
        None => tracing::info_span!(
            "http",
            otel.name = format!("{} {path}", request.method()),
            otel.kind = "server",
            http.request.method = %request.method(),
            url.path = path,
            http.response.status_code = Empty,
            otel.status_description = Empty,
        ),
    };
    let parent =
        global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(request.headers())));
    // No parent in the metadata leaves the span a root; nothing to report.
    let _ = span.set_parent(parent);
    span
}

/// The service and method of a gRPC call's path, `/package.Service/Method`.
fn grpc_method<'a>(headers: &http::HeaderMap, path: &'a str) -> Option<(&'a str, &'a str)> {
    let grpc = headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (grpc && !service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

/// The span of a call this process makes to another service (`peer`, the
/// service's name), to be entered while the call's metadata is written, so
/// that the callee's span is its child, and held until the answer ends;
/// [`record_grpc_status`] closes its account.
pub fn client_span(service: &str, method: &str, peer: &str) -> tracing::Span {
    tracing::info_span!(
        "grpc.client",
        otel.name = format!("{service}/{method}"),
        otel.kind = "client",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        peer.service = peer,
        rpc.grpc.status_code = Empty,
        otel.status_description = Empty,
    )
}

/// Which end of a call a span is: they fail by different rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Server,
    Client,
}

/// Records the gRPC status of a call on its span, and marks the span
/// failed by OpenTelemetry's rules for gRPC: on the server, only the codes
/// that are the server's fault (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED,
/// INTERNAL, UNAVAILABLE, DATA_LOSS); on the client, every code but OK. The
/// description is the code's name, never the message.
pub fn record_grpc_status(span: &tracing::Span, code: tonic::Code, side: Side) {
    span.record("rpc.grpc.status_code", code as i64);
    if is_error(code, side) {
        span.record("otel.status_description", grpc_code_name(code));
    }
}

fn is_error(code: tonic::Code, side: Side) -> bool {
    use tonic::Code::*;
    match side {
        Side::Client => code != Ok,
        Side::Server => matches!(
            code,
            Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss
        ),
    }
}

/// The status code's name as gRPC spells it.
fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The `grpc-status` of a response's headers (a call answered with an
/// error at once) or trailers (every other).
pub fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(tonic::Code::from(value.parse::<i32>().ok()?))
}

/// Records the status of a served call on its span (see [`grpc_span`]):
/// from the headers of an answer that is only a status, else from the
/// trailers; for plain HTTP, the HTTP status.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordStatus;

impl<B> tower_http::trace::OnResponse<B> for RecordStatus {
    fn on_response(self, response: &http::Response<B>, _: Duration, span: &tracing::Span) {
        if let Some(code) = grpc_status(response.headers()) {
            record_grpc_status(span, code, Side::Server);
        } else if !response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"))
        {
            let status = response.status();
            span.record("http.response.status_code", status.as_u16() as i64);
            if status.is_server_error() {
                span.record("otel.status_description", status.as_str());
            }
        }
    }
}

impl tower_http::trace::OnEos for RecordStatus {
    fn on_eos(self, trailers: Option<&http::HeaderMap>, _: Duration, span: &tracing::Span) {
        if let Some(code) = trailers.and_then(grpc_status) {
            record_grpc_status(span, code, Side::Server);
        }
    }
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
    continue_trace(&span, traceparent);
    span
}

/// Makes `span` (just made, before anything was logged in it) part of the
/// trace a stored `traceparent` names.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(traceparent) = traceparent {
        let carrier: std::collections::HashMap<String, String> =
            [("traceparent".to_owned(), traceparent.to_owned())].into();
        let parent = global::get_text_map_propagator(|p| p.extract(&carrier));
        let _ = span.set_parent(parent);
    }
}

/// Calls refused before or by a handler for the caller's own reasons (bad
/// input, no token, no permission, shed under load): counted as metrics,
/// each logged only at `debug`, and summed up in at most one `warn` line per
/// [`SUMMARY_EVERY`], so that logging stays bounded under any load.
pub fn refused(code: tonic::Code) {
    REFUSALS.record(code);
}

/// Sums up the refusals of a window that has ended; the server calls it
/// every [`SUMMARY_EVERY`].
pub fn summarise_refusals() {
    if let Ok(mut window) = REFUSALS.window.lock() {
        Refusals::summarise(&mut window);
    }
}

/// How often refusals are summed up in the log, at most.
pub const SUMMARY_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Below this many refusals in a window, no summary is logged at all: a
/// caller's occasional mistake is no news.
const SUMMARY_THRESHOLD: u64 = 10;

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
        Self::summarise(&mut window);
    }

    /// Logs the window's summary once it is [`SUMMARY_EVERY`] old. Called by
    /// each refusal and by a timer ([`summarise_refusals`]): a burst that
    /// ends is summed up too, not only one that goes on.
    fn summarise(window: &mut Window) {
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use opentelemetry::trace::{Span as _, Tracer as _};

    use super::*;

    /// Keeps what it is sent.
    #[derive(Debug, Default, Clone)]
    struct Kept(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Kept {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    #[test]
    fn spans_beyond_the_bound_are_counted_not_queued() {
        let kept = Kept::default();
        let drops = Arc::new(Drops::default());
        // No export before shutdown: every span ended waits.
        let batches = BatchSpanProcessor::builder(Counted {
            inner: kept.clone(),
            drops: drops.clone(),
        })
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(16)
                .with_max_export_batch_size(16)
                .with_scheduled_delay(Duration::from_secs(3600))
                .build(),
        )
        .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Bounded {
                inner: batches,
                drops: drops.clone(),
                limit: 2,
            })
            .build();
        let tracer = provider.tracer("test");
        for _ in 0..5 {
            tracer.start("work").end();
        }
        assert_eq!(drops.waiting.load(Ordering::Relaxed), 2);
        assert_eq!(drops.dropped.load(Ordering::Relaxed), 3);
        provider.shutdown().unwrap();
        assert_eq!(kept.0.lock().unwrap().len(), 2, "what waited is exported");
        assert_eq!(drops.waiting.load(Ordering::Relaxed), 0);
        assert_eq!(
            drops.dropped.load(Ordering::Relaxed),
            0,
            "the drops are reported at shutdown"
        );
    }

    /// A line's writer for tests.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_carry_the_ids_of_the_call_even_when_its_span_is_filtered_out() {
        global::set_text_map_propagator(TraceContextPropagator::new());
        let provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::AlwaysOff)
            .build();
        let lines = Lines::default();
        let writer = lines.clone();
        // The call's span is INFO, hidden from the log by "warn".
        let dispatch = subscriber(
            LogFormat::Json,
            EnvFilter::new("warn"),
            move || writer.clone(),
            &provider,
        );
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        tracing::dispatcher::with_default(&dispatch, || {
            let request = http::Request::builder()
                .uri("/custodian.x.v1.S/Get")
                .header("content-type", "application/grpc")
                .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
                .body(())
                .unwrap();
            let span = grpc_span(&request);
            span.in_scope(|| {
                tracing::warn!("inside");
                let _inner = tracing::debug_span!("below the spans' level").entered();
                tracing::warn!("deeper");
            });
            tracing::warn!("outside");
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let ids = format!("\"trace_id\":\"{trace}\",\"span_id\":\"");
        assert!(
            lines[0].contains("\"inside\"") && lines[0].contains(&ids),
            "{text}"
        );
        assert!(
            !lines[0].contains("00f067aa0ba902b7"),
            "the call's own span: {text}"
        );
        let span_id = |line: &str| {
            line.split("\"span_id\":\"")
                .nth(1)
                .map(|s| s[..16].to_owned())
        };
        assert_eq!(span_id(lines[1]), span_id(lines[0]), "{text}");
        assert!(
            lines[2].contains("\"outside\"") && !lines[2].contains("trace_id"),
            "{text}"
        );
        assert!(lines[0].ends_with('}'), "{text}");
    }

    #[test]
    fn error_status_follows_the_grpc_conventions() {
        use tonic::Code::*;
        let server_faults = [
            Unknown,
            DeadlineExceeded,
            Unimplemented,
            Internal,
            Unavailable,
            DataLoss,
        ];
        for code in (0..=16).map(tonic::Code::from) {
            assert_eq!(
                is_error(code, Side::Server),
                server_faults.contains(&code),
                "{code:?}"
            );
            assert_eq!(is_error(code, Side::Client), code != Ok, "{code:?}");
            assert_eq!(
                tonic::Code::from(code as i32),
                code,
                "{}",
                grpc_code_name(code)
            );
        }
        assert_eq!(grpc_code_name(Unimplemented), "UNIMPLEMENTED");
    }

    #[test]
    fn only_grpc_calls_are_named_by_service_and_method() {
        let mut grpc = http::HeaderMap::new();
        grpc.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc+proto"),
        );
        assert_eq!(
            grpc_method(&grpc, "/custodian.identity.v1.TenantService/GetTenant"),
            Some(("custodian.identity.v1.TenantService", "GetTenant"))
        );
        for path in ["/", "/a", "//b", "/a/", "/a/b/c"] {
            assert_eq!(grpc_method(&grpc, path), None, "{path}");
        }
        assert_eq!(
            grpc_method(&http::HeaderMap::new(), "/custodian.x.v1.S/M"),
            None,
            "a plain HTTP call"
        );
    }

    #[test]
    fn grpc_status_is_read_from_headers_or_trailers() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(grpc_status(&headers), None);
        headers.insert("grpc-status", http::HeaderValue::from_static("14"));
        assert_eq!(grpc_status(&headers), Some(tonic::Code::Unavailable));
        headers.insert("grpc-status", http::HeaderValue::from_static("x"));
        assert_eq!(grpc_status(&headers), None);
    }
}
