//! Metrics: one set of OpenTelemetry instruments, read by two exports.
//!
//! Every metric is an OpenTelemetry instrument on the global meter
//! provider, named by OpenTelemetry's semantic conventions where one exists
//! (`rpc.server.duration`, `db.client.connection.count`, ...) and under
//! `custodian.` otherwise. [`provider`] builds that provider with a reader
//! per export: OTLP, when `--otlp-endpoint` is set, and Prometheus's text
//! format on `--metrics-listen`'s `/metrics` ([`serve`]), a port of its own
//! that the Service callers use never exposes.
//!
//! Labels are bounded sets, never a caller's value: a gRPC method is named
//! only when the suite's descriptors know it (`_OTHER` otherwise), a status
//! is its number, a service its short name. Gauges of stored state
//! (requests by state, tickets by state, events waiting to be sealed) are
//! observable gauges reading what a periodic cheap query last found
//! ([`publish`]), so no request does work for them.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    pin::Pin,
    sync::{LazyLock, Mutex, PoisonError},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use opentelemetry::{global, metrics::Meter};
use opentelemetry_sdk::{Resource, metrics::SdkMeterProvider};
use prost::Message as _;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::config::Config;

/// For the services' own instruments, without a dependency of their own.
pub use opentelemetry::{
    KeyValue,
    metrics::{Counter, Histogram, UpDownCounter},
};

/// The meter every Custodian instrument is made on.
pub fn meter() -> Meter {
    global::meter("custodian")
}

/// Bucket bounds, in seconds, for call and pass durations: from a
/// sub-millisecond point read to the request timeout.
pub const DURATION_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The registry `/metrics` renders, once [`provider`] made one.
static SCRAPED: std::sync::OnceLock<prometheus::Registry> = std::sync::OnceLock::new();

/// The meter provider for the process: a reader for OTLP when an endpoint
/// is set, and one for `/metrics` when `--metrics-listen` is; `None` when
/// neither is (instruments then cost nothing). Set as the global provider.
pub fn provider(config: &Config, service_name: &str) -> anyhow::Result<Option<SdkMeterProvider>> {
    if config.otlp_endpoint.is_none() && config.metrics_listen.is_none() {
        return Ok(None);
    }
    let mut builder = SdkMeterProvider::builder().with_resource(
        Resource::builder()
            .with_service_name(service_name.to_owned())
            .build(),
    );
    if let Some(endpoint) = &config.otlp_endpoint {
        use opentelemetry_otlp::WithExportConfig as _;
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()?;
        builder = builder.with_periodic_exporter(exporter);
    }
    if config.metrics_listen.is_some() {
        let registry = SCRAPED.get_or_init(prometheus::Registry::new).clone();
        let reader = opentelemetry_prometheus::exporter()
            .with_registry(registry)
            // The scope is always "custodian": a label on every series
            // that says nothing.
            .scope_info_enabled(false)
            .build()?;
        builder = builder.with_reader(reader);
    }
    let provider = builder.build();
    global::set_meter_provider(provider.clone());
    Ok(Some(provider))
}

/// The current metrics in Prometheus's text format.
pub fn render() -> String {
    use prometheus::Encoder as _;
    let Some(registry) = SCRAPED.get() else {
        return String::new();
    };
    let mut text = Vec::new();
    if let Err(err) = prometheus::TextEncoder::new().encode(&registry.gather(), &mut text) {
        tracing::warn!(error = %err, "metrics could not be rendered");
    }
    String::from_utf8(text).unwrap_or_default()
}

/// Serves `GET /metrics` on `listener` until `stop` completes: plain
/// HTTP/1.1, nothing else on the port.
pub fn serve(
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(
                    http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                render(),
            )
        }),
    );
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %err, "the metrics listener failed");
        }
    })
}

/// `(rpc.service, rpc.method)` of a request path, when the suite's
/// descriptors (or health's, or reflection's) know it; `_OTHER` for both
/// otherwise, so a caller cannot make a label of its own.
fn rpc_names(path: &str) -> (&'static str, &'static str) {
    static KNOWN: LazyLock<HashMap<String, (&'static str, &'static str)>> = LazyLock::new(|| {
        let mut known = HashMap::new();
        for set in [
            custodian_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ] {
            let Ok(files) = prost_types::FileDescriptorSet::decode(set) else {
                continue;
            };
            for file in files.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let full: &'static str = Box::leak(
                        format!("{package}.{}", service.name.unwrap_or_default()).into_boxed_str(),
                    );
                    for method in service.method {
                        let method: &'static str =
                            Box::leak(method.name.unwrap_or_default().into_boxed_str());
                        known.insert(format!("/{full}/{method}"), (full, method));
                    }
                }
            }
        }
        for service in [
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            known.insert(
                format!("/{service}/ServerReflectionInfo"),
                (service, "ServerReflectionInfo"),
            );
        }
        known
    });
    KNOWN.get(path).copied().unwrap_or(("_OTHER", "_OTHER"))
}

/// A histogram of durations in seconds, with [`DURATION_BOUNDS`].
pub fn duration_histogram(name: &'static str, description: &'static str) -> Histogram<f64> {
    meter()
        .f64_histogram(name)
        .with_unit("s")
        .with_description(description)
        .with_boundaries(DURATION_BOUNDS.to_vec())
        .build()
}

static SERVER_DURATION: LazyLock<Histogram<f64>> = LazyLock::new(|| {
    duration_histogram(
        "rpc.server.duration",
        "Duration of calls served, by service, method and gRPC status",
    )
});

static CLIENT_DURATION: LazyLock<Histogram<f64>> = LazyLock::new(|| {
    duration_histogram(
        "rpc.client.duration",
        "Duration of calls to other services of the suite, by peer, method and gRPC status",
    )
});

/// The gRPC status an answer's headers or trailers carry.
fn grpc_status(headers: &http::HeaderMap) -> Option<i64> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// One call being timed: recorded once, when its answer ends (its
/// trailers, the end of its body, or its body dropped unread).
pub struct RpcTimer {
    histogram: &'static LazyLock<Histogram<f64>>,
    start: Instant,
    labels: Vec<KeyValue>,
    status: Option<i64>,
    done: bool,
}

impl RpcTimer {
    fn new(histogram: &'static LazyLock<Histogram<f64>>, path: &str, peer: Option<&str>) -> Self {
        let (service, method) = rpc_names(path);
        let mut labels = vec![
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", service),
            KeyValue::new("rpc.method", method),
        ];
        if let Some(peer) = peer {
            labels.push(KeyValue::new("peer.service", peer.to_owned()));
        }
        Self {
            histogram,
            start: Instant::now(),
            labels,
            status: None,
            done: false,
        }
    }

    /// A call to `peer` (a service name of the suite) on `path`.
    pub fn client(peer: &str, path: &str) -> Self {
        Self::new(&CLIENT_DURATION, path, Some(peer))
    }

    /// A call served on `path`.
    pub fn server(path: &str) -> Self {
        Self::new(&SERVER_DURATION, path, None)
    }

    /// Records the call as ended with `code` now.
    pub fn finish(mut self, code: tonic::Code) {
        self.status = Some(code as i64);
        self.record();
    }

    fn record(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        // An answer without a status was cut off: CANCELLED, as gRPC
        // clients see it.
        let status = self.status.unwrap_or(tonic::Code::Cancelled as i64);
        self.labels
            .push(KeyValue::new("rpc.grpc.status_code", status));
        self.histogram
            .record(self.start.elapsed().as_secs_f64(), &self.labels);
    }

    /// The answer, timed until it ends.
    pub fn observe(mut self, response: http::Response<Body>) -> http::Response<Body> {
        if let Some(status) = grpc_status(response.headers()) {
            // Trailers-only: the status is in the headers, the body empty.
            self.status = Some(status);
            self.record();
            return response;
        }
        response.map(|body| {
            Body::new(Timed {
                inner: body,
                timer: self,
            })
        })
    }
}

impl Drop for RpcTimer {
    fn drop(&mut self) {
        self.record();
    }
}

pin_project_lite::pin_project! {
    /// A body that records its call's timer when its trailers come.
    struct Timed {
        #[pin]
        inner: Body,
        timer: RpcTimer,
    }
}

impl http_body::Body for Timed {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.timer.status = grpc_status(trailers);
                    this.timer.record();
                }
            }
            Poll::Ready(Some(Err(status))) => {
                this.timer.status = Some(status.code() as i64);
                this.timer.record();
            }
            Poll::Ready(None) => this.timer.record(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Times every gRPC call the server answers, refusals included, as
/// `rpc.server.duration`. Plain HTTP requests (the analytics beacon) are
/// not gRPC calls and are left out.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerLayer;

impl<S> Layer<S> for ServerLayer {
    type Service = Timing<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timing { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Timing<S> {
    inner: S,
}

impl<S> Service<http::Request<Body>> for Timing<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if !grpc {
            return Box::pin(self.inner.call(request));
        }
        let timer = RpcTimer::server(request.uri().path());
        let answer = self.inner.call(request);
        Box::pin(async move {
            match answer.await {
                Ok(response) => Ok(timer.observe(response)),
                Err(err) => {
                    timer.finish(tonic::Code::Unknown);
                    Err(err)
                }
            }
        })
    }
}

/// What one periodic query found for one gauge of stored state.
pub struct StateGauge {
    pub name: &'static str,
    pub description: &'static str,
    pub unit: &'static str,
}

type Series = Vec<(Vec<KeyValue>, f64)>;

/// Each gauge's series, per service that published them.
static STATE: LazyLock<Mutex<BTreeMap<&'static str, BTreeMap<&'static str, Series>>>> =
    LazyLock::new(Default::default);

/// The gauges registered so far (each once per process).
static REGISTERED: LazyLock<Mutex<HashSet<&'static str>>> = LazyLock::new(Default::default);

/// Sets what `service`'s last look at its stored state found for `gauge`,
/// replacing what it published before (a state that emptied is published
/// as 0 by the caller, or disappears). `custodian.service` is added to
/// every series.
pub fn publish(gauge: &'static StateGauge, service: &'static str, series: Series) {
    {
        let mut registered = REGISTERED.lock().unwrap_or_else(PoisonError::into_inner);
        if registered.insert(gauge.name) {
            let name = gauge.name;
            // The instrument lives as long as the provider does: the SDK
            // keeps its callback.
            let _ = meter()
                .f64_observable_gauge(name)
                .with_description(gauge.description)
                .with_unit(gauge.unit)
                .with_callback(move |observer| {
                    let state = STATE.lock().unwrap_or_else(PoisonError::into_inner);
                    let Some(services) = state.get(name) else {
                        return;
                    };
                    for (service, series) in services {
                        for (labels, value) in series {
                            let mut labels = labels.clone();
                            labels.push(KeyValue::new("custodian.service", *service));
                            observer.observe(*value, &labels);
                        }
                    }
                })
                .build();
        }
    }
    STATE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(gauge.name)
        .or_default()
        .insert(service, series);
}

/// The pools whose connections `db.client.connection.*` report, by
/// service.
static POOLS: LazyLock<Mutex<BTreeMap<&'static str, sqlx::AnyPool>>> =
    LazyLock::new(Default::default);

static POOL_WAIT: LazyLock<Histogram<f64>> = LazyLock::new(|| {
    meter()
        .f64_histogram("db.client.connection.wait_time")
        .with_unit("s")
        .with_description(
            "Time to obtain a connection from the service's pool, sampled by a probe every \
             few seconds",
        )
        .with_boundaries(DURATION_BOUNDS.to_vec())
        .build()
});

/// Reports `pool` as `service`'s connection pool: connections in use and
/// idle, the most it may open, and a sampled acquire time ([`sample_pool`]).
pub fn watch_pool(service: &'static str, pool: sqlx::AnyPool) {
    static INSTRUMENTS: std::sync::Once = std::sync::Once::new();
    INSTRUMENTS.call_once(|| {
        let _ = meter()
            .i64_observable_up_down_counter("db.client.connection.count")
            .with_unit("{connection}")
            .with_description("Connections of the service's pool, by state (used, idle)")
            .with_callback(|observer| {
                let pools = POOLS.lock().unwrap_or_else(PoisonError::into_inner);
                for (service, pool) in pools.iter() {
                    let idle = pool.num_idle() as i64;
                    let size = i64::from(pool.size());
                    for (state, n) in [("idle", idle), ("used", (size - idle).max(0))] {
                        observer.observe(
                            n,
                            &[
                                KeyValue::new("db.client.connection.pool.name", *service),
                                KeyValue::new("db.client.connection.state", state),
                            ],
                        );
                    }
                }
            })
            .build();
        let _ = meter()
            .i64_observable_up_down_counter("db.client.connection.max")
            .with_unit("{connection}")
            .with_description("The most connections the service's pool may open")
            .with_callback(|observer| {
                let pools = POOLS.lock().unwrap_or_else(PoisonError::into_inner);
                for (service, pool) in pools.iter() {
                    observer.observe(
                        i64::from(pool.options().get_max_connections()),
                        &[KeyValue::new("db.client.connection.pool.name", *service)],
                    );
                }
            })
            .build();
    });
    POOLS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(service, pool);
}

/// Times one acquire of a connection from `service`'s pool, as a request
/// would wait for one now: a sample of the pool's waiting, taken by the
/// periodic look at the service's state rather than on every request.
pub async fn sample_pool(service: &'static str, pool: &sqlx::AnyPool) {
    let start = Instant::now();
    // A pool that cannot give a connection within its acquire timeout is
    // reported as having waited that long.
    let _ = pool.acquire().await;
    POOL_WAIT.record(
        start.elapsed().as_secs_f64(),
        &[KeyValue::new("db.client.connection.pool.name", service)],
    );
}

/// How often services look at their stored state for the gauges.
pub const STATE_EVERY: Duration = Duration::from_secs(10);

/// Binds `--metrics-listen`, if set.
pub async fn bind(config: &Config) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    use anyhow::Context as _;
    let Some(addr) = config.metrics_listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics listener {addr}"))?;
    Ok(Some(listener))
}

/// The address a bound metrics listener serves on.
pub fn local_addr(listener: &tokio::net::TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}
