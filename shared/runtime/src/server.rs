//! The server every service runs in: one listener, one tower stack, health,
//! reflection, and a graceful stop.
//!
//! Start-up order matters for Kubernetes: the listener is bound first and
//! health answers NOT_SERVING while each module starts (migrations, peers);
//! only when all are ready do health and the admission gate open. From then
//! on health follows the databases: a module's services are NOT_SERVING
//! while its database does not answer, and `""` (what Kubernetes' readiness
//! probe asks) while any does not; SERVING again once they answer. The
//! process goes on meanwhile: calls are answered UNAVAILABLE. Whether the
//! process itself is alive is the health service [`LIVENESS`]: SERVING
//! whenever the server answers at all, so a liveness probe never restarts a
//! pod only because its database is away. On SIGTERM
//! or Ctrl-C health turns NOT_SERVING at once, the server keeps answering for
//! `shutdown_grace` (so endpoints are removed before it stops), then stops
//! accepting and drains the calls in flight.

use std::{
    future::Future,
    net::SocketAddr,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use anyhow::Context as _;
use futures::future::BoxFuture;
use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
};
use tonic::{
    body::Body, server::NamedService, service::RoutesBuilder, transport::server::TcpIncoming,
};
use tonic_health::{ServingStatus, server::HealthReporter};
use tower::{Layer, Service};
use tower_http::classify::{GrpcCode, GrpcErrorsAsFailures, SharedClassifier};

use crate::{config::Config, telemetry};

/// Limits a module applies to the gRPC services it registers.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_message_bytes: usize,
}

/// One service of the suite (identity, tickets, ...), as the runtime sees it.
pub trait ServiceModule: Send + Sync {
    /// Short name: the `--target` value, the SQLite file name and the
    /// migrations table prefix.
    fn name(&self) -> &'static str;

    /// Full names of the gRPC services it serves, for health.
    fn grpc_services(&self) -> Vec<&'static str>;

    /// Gets ready to serve (migrations, peers). Health stays NOT_SERVING and
    /// calls get UNAVAILABLE until every module has started.
    fn start(&self) -> BoxFuture<'_, anyhow::Result<()>>;

    /// Adds its gRPC services.
    fn register(&self, routes: &mut RoutesBuilder, limits: Limits);

    /// The databases it uses: health of its gRPC services follows them.
    fn databases(&self) -> Vec<crate::Database> {
        Vec::new()
    }

    /// Releases resources (database pools) after the server has drained.
    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// Plain HTTP endpoints served on the same port (a browser beacon, a
    /// script), if any.
    fn http(&self) -> Option<HttpRoutes> {
        None
    }
}

/// Plain HTTP endpoints of a module, for callers that cannot speak gRPC
/// (browsers). They are public: the gate, which knows only declared gRPC
/// methods, does not see them, so each path is named here and nothing else
/// bypasses it. They still wait for readiness and take a permit of the
/// server's concurrency limit; refusals are answered in HTTP (503, 429 with
/// Retry-After), not as gRPC statuses.
pub struct HttpRoutes {
    /// Exact paths the router serves.
    pub paths: Vec<&'static str>,
    pub router: axum::Router,
}

/// Decides, before any handler runs, whether a call may run at all. The
/// service kit provides the implementation (bearer tokens, declared
/// purposes, tenant scope, the hygiene of every value); the runtime only
/// places it in the stack, so no service can forget it.
pub trait Gate: Send + Sync + 'static {
    /// Accepts the call (recording what handlers need in `extensions`) or
    /// refuses it.
    fn admit(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        extensions: &mut http::Extensions,
    ) -> Verdict;

    /// Whether the request message of `path` is checked before its handler.
    fn checks_body(&self, path: &str) -> bool;

    /// Checks one request message (uncompressed, without its frame header).
    #[allow(clippy::result_large_err)] // a refusal is answered as is, once
    fn check_body(
        &self,
        path: &str,
        message: &[u8],
        extensions: &http::Extensions,
    ) -> Result<(), tonic::Status>;
}

/// What a [`Gate`] decided.
pub enum Verdict {
    Admit,
    Refuse(tonic::Status),
    /// Refused once the future has run (a refusal that is itself audited).
    RefuseAfter(BoxFuture<'static, tonic::Status>),
}

/// When the caller of the request stops waiting: its `grpc-timeout`, or the
/// server's request timeout, whichever comes first. Calls to other services
/// carry what is left of it.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(pub std::time::Instant);

/// A bound, not yet running server.
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    config: Config,
    modules: Vec<Arc<dyn ServiceModule>>,
    gate: Arc<dyn Gate>,
    ready_tx: watch::Sender<bool>,
    metrics: Option<TcpListener>,
}

impl Application {
    /// Binds the listener (port 0 picks a free port; see [`Self::local_addr`]).
    pub async fn bind(
        config: Config,
        modules: Vec<Arc<dyn ServiceModule>>,
        gate: Arc<dyn Gate>,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let metrics = crate::metrics::bind(&config).await?;
        Ok(Self {
            listener,
            local_addr,
            config,
            modules,
            gate,
            ready_tx: watch::channel(false).0,
            metrics,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `/metrics` is served, when `--metrics-listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(crate::metrics::local_addr)
    }

    /// Turns true once every module has started and calls are admitted.
    pub fn readiness(&self) -> watch::Receiver<bool> {
        self.ready_tx.subscribe()
    }

    /// Serves until `signal` completes, then drains.
    pub async fn run_with_shutdown(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            local_addr,
            config,
            modules,
            gate,
            ready_tx,
            metrics,
        } = self;

        let health = HealthReporter::new();
        let service_names: Vec<&'static str> =
            modules.iter().flat_map(|m| m.grpc_services()).collect();
        set_health(&health, &service_names, ServingStatus::NotServing).await;
        health
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .await;

        let mut routes = RoutesBuilder::default();
        routes.add_service(tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(health.clone()),
        ));
        add_reflection(&mut routes)?;
        let limits = Limits {
            max_message_bytes: config.max_message_bytes,
        };
        for module in &modules {
            module.register(&mut routes, limits);
        }
        let mut public = Vec::new();
        let mut router = routes.routes().into_axum_router();
        for http in modules.iter().filter_map(|m| m.http()) {
            public.extend(http.paths);
            router = router.merge(http.router);
        }
        let routes = tonic::service::Routes::from(router);

        let admission = AdmissionLayer::new(
            config.max_concurrent_requests,
            ready_tx.subscribe(),
            gate,
            config.max_message_bytes,
            config.request_timeout,
        )
        .with_public_paths(public);
        // Outermost first: the trace span covers everything, including calls
        // the admission gate refuses, so refusals are visible in traces.
        // HTTP/1.1 too: browsers post their beacons with it.
        let server = tonic::transport::Server::builder()
            .accept_http1(true)
            .timeout(config.request_timeout)
            .layer(
                tower_http::trace::TraceLayer::new(SharedClassifier::new(server_faults()))
                    .make_span_with(|req: &http::Request<Body>| telemetry::grpc_span(req))
                    .on_response(telemetry::RecordStatus)
                    .on_eos(telemetry::RecordStatus)
                    .on_failure(telemetry::OnServerFault),
            )
            .layer(crate::metrics::ServerLayer)
            .layer(admission)
            .add_routes(routes);

        let (stop_tx, stop_rx) = watch::channel(false);
        let mut stop_rx_server = stop_rx.clone();
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let serving = tokio::spawn(server.serve_with_incoming_shutdown(incoming, async move {
            let _ = stop_rx_server.wait_for(|stop| *stop).await;
        }));
        tracing::info!(address = %local_addr, "listening");
        // Refusals are summed up when their window ends, also after a burst
        // with nothing after it.
        let summaries = tokio::spawn(async {
            let mut every = tokio::time::interval(telemetry::SUMMARY_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                telemetry::summarise_refusals();
            }
        });
        // Metrics are served from the start (a slow start is worth seeing)
        // until the server has drained.
        let metrics = metrics.map(|listener| {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(address = %addr, "serving metrics at /metrics");
            }
            let mut stopped = stop_rx.clone();
            crate::metrics::serve(listener, async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            })
        });

        // Start the modules while already answering health checks.
        let startup = async {
            for module in &modules {
                module
                    .start()
                    .await
                    .with_context(|| format!("starting {}", module.name()))?;
            }
            anyhow::Ok(())
        };
        let grace = config.shutdown_grace;
        let following = std::sync::Mutex::new(None::<tokio::task::JoinHandle<()>>);
        let shutdown = async {
            signal.await;
            // Health stops following the databases first: nothing may say
            // SERVING again once stopping has begun.
            let follower = following.lock().ok().and_then(|mut f| f.take());
            if let Some(follower) = follower {
                follower.abort();
                let _ = follower.await;
            }
            tracing::info!("shutting down: reporting NOT_SERVING");
            set_health(&health, &service_names, ServingStatus::NotServing).await;
            if !grace.is_zero() {
                tokio::time::sleep(grace).await;
            }
        };
        tokio::pin!(shutdown);

        let outcome = tokio::select! {
            started = startup => match started {
                Ok(()) => match DatabaseHealth::of(&modules) {
                    Ok(mut databases) => {
                        // The gate opens before health says SERVING: a
                        // caller that waited for SERVING must not be told
                        // "starting".
                        ready_tx.send_replace(true);
                        databases.set(&health).await;
                        if let Ok(mut slot) = following.lock() {
                            *slot = Some(tokio::spawn(databases.follow(health.clone())));
                        }
                        tracing::info!(services = ?service_names, "ready");
                        shutdown.await;
                        Ok(())
                    }
                    Err(err) => Err(err),
                },
                Err(err) => Err(err),
            },
            () = &mut shutdown => Ok(()),
        };

        tracing::info!("draining in-flight calls");
        stop_tx.send_replace(true);
        // Unary calls end within the request timeout; a stream a client
        // keeps open (a health Watch, say) would hold the drain forever, so
        // whatever is still open after that long is cut.
        let drain = config.request_timeout + Duration::from_secs(1);
        let mut serving = serving;
        let served = match tokio::time::timeout(drain, &mut serving).await {
            Ok(joined) => joined.context("server task")?,
            Err(_) => {
                tracing::warn!(
                    ?drain,
                    "calls still open after the drain limit; closing them"
                );
                serving.abort();
                Ok(())
            }
        };
        summaries.abort();
        telemetry::summarise_refusals();
        for module in &modules {
            module.stop().await;
        }
        if let Some(metrics) = metrics {
            let _ = metrics.await;
        }
        served.context("serving gRPC")?;
        tracing::info!("stopped");
        outcome
    }
}

/// The health service that says only that the process answers: what a
/// liveness probe should ask (`grpc: {port: 50051, service: liveness}`).
/// `""` is readiness: it follows the databases, and a restart would not
/// bring a database back.
pub const LIVENESS: &str = "liveness";

/// Health as the databases make it: each module's gRPC services follow its
/// databases, `""` and the services of modules without one (the shared
/// contracts, which reach every service) follow all of them.
struct DatabaseHealth {
    /// One probe per database URL, however many modules share it.
    probes: Vec<watch::Receiver<bool>>,
    /// Each module's service names and the probes of its databases.
    modules: Vec<(Vec<&'static str>, Vec<usize>)>,
}

impl DatabaseHealth {
    fn of(modules: &[Arc<dyn ServiceModule>]) -> anyhow::Result<Self> {
        let mut urls: Vec<String> = Vec::new();
        let mut probes = Vec::new();
        let mut of_modules = Vec::new();
        for module in modules {
            let mut indexes = Vec::new();
            for db in module.databases() {
                let index = match urls.iter().position(|u| u == db.url()) {
                    Some(index) => index,
                    None => {
                        probes.push(db.readiness()?);
                        urls.push(db.url().to_owned());
                        urls.len() - 1
                    }
                };
                if !indexes.contains(&index) {
                    indexes.push(index);
                }
            }
            of_modules.push((module.grpc_services(), indexes));
        }
        Ok(Self {
            probes,
            modules: of_modules,
        })
    }

    /// Sets health from the probes' current states.
    async fn set(&mut self, health: &HealthReporter) {
        let up: Vec<bool> = self
            .probes
            .iter_mut()
            .map(|p| *p.borrow_and_update())
            .collect();
        let status = |up: bool| {
            if up {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            }
        };
        let all = up.iter().all(|u| *u);
        health.set_service_status("", status(all)).await;
        for (names, indexes) in &self.modules {
            let module = if indexes.is_empty() {
                all
            } else {
                indexes.iter().all(|i| up[*i])
            };
            for name in names {
                health.set_service_status(*name, status(module)).await;
            }
        }
    }

    /// Sets health again whenever a probe changes, until the server stops
    /// (the task is aborted) or a probe ends.
    async fn follow(mut self, health: HealthReporter) {
        loop {
            if self.probes.is_empty() {
                return;
            }
            let changed = self.probes.iter_mut().map(|p| Box::pin(p.changed()));
            if futures::future::select_all(changed).await.0.is_err() {
                return;
            }
            self.set(&health).await;
        }
    }
}

async fn set_health(health: &HealthReporter, services: &[&str], status: ServingStatus) {
    health.set_service_status("", status).await;
    for name in services {
        health.set_service_status(*name, status).await;
    }
}

fn add_reflection(routes: &mut RoutesBuilder) -> anyhow::Result<()> {
    // grpcurl 1.8 still asks v1alpha; newer clients ask v1.
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(custodian_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(custodian_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    routes.add_service(v1);
    routes.add_service(v1alpha);
    Ok(())
}

/// Which status codes are the server's fault and logged as failures:
/// INTERNAL, UNKNOWN and DATA_LOSS. A caller's mistake (bad input, unknown
/// resource, no permission), a shed call (RESOURCE_EXHAUSTED), a server
/// still starting (UNAVAILABLE) or a caller's deadline is an answer, not a
/// failure: those are counted (see `telemetry::refused`), and logging each
/// as an error would bury real ones and fill the disk under attack.
fn server_faults() -> GrpcErrorsAsFailures {
    [
        GrpcCode::Cancelled,
        GrpcCode::InvalidArgument,
        GrpcCode::DeadlineExceeded,
        GrpcCode::NotFound,
        GrpcCode::AlreadyExists,
        GrpcCode::PermissionDenied,
        GrpcCode::ResourceExhausted,
        GrpcCode::FailedPrecondition,
        GrpcCode::Aborted,
        GrpcCode::OutOfRange,
        GrpcCode::Unimplemented,
        GrpcCode::Unavailable,
        GrpcCode::Unauthenticated,
    ]
    .into_iter()
    .fold(GrpcErrorsAsFailures::new(), |c, code| c.with_success(code))
}

/// Completes on SIGTERM (Kubernetes) or Ctrl-C (a terminal). The handlers
/// are installed when this is called, not when the future is first polled:
/// call it before announcing the server, or a SIGTERM that arrives in between
/// would kill the process instead of stopping it gracefully.
pub fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate =
            signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        Ok(async move {
            tokio::select! {
                _ = terminate.recv() => {},
                _ = interrupt.recv() => {},
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

/// Paths that bypass admission: probes and tooling must keep working while
/// the server is starting or saturated, or Kubernetes would restart a pod
/// that is merely busy.
fn is_exempt(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.v1.ServerReflection/")
        || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/")
}

/// Admits a call only when the server is ready, the gate accepts it, the
/// server is under its concurrency limit and, for the methods the gate
/// checks, the request message passes. Over the limit the call is shed at
/// once with RESOURCE_EXHAUSTED rather than queued: a queue would only add
/// latency to an overloaded server, and the caller can retry elsewhere. The
/// limit is global (one semaphore for all connections), unlike tonic's
/// per-connection limit.
#[derive(Clone)]
pub struct AdmissionLayer {
    permits: Arc<Semaphore>,
    ready: watch::Receiver<bool>,
    gate: Arc<dyn Gate>,
    max_message_bytes: usize,
    request_timeout: Duration,
    public: Arc<[&'static str]>,
}

impl AdmissionLayer {
    pub fn new(
        max_concurrent: usize,
        ready: watch::Receiver<bool>,
        gate: Arc<dyn Gate>,
        max_message_bytes: usize,
        request_timeout: Duration,
    ) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_concurrent)),
            ready,
            gate,
            max_message_bytes,
            request_timeout,
            public: Arc::from(Vec::new()),
        }
    }

    /// The plain HTTP paths of the modules: admitted without the gate.
    pub fn with_public_paths(mut self, paths: Vec<&'static str>) -> Self {
        self.public = Arc::from(paths);
        self
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            config: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    config: AdmissionLayer,
}

/// A refusal, counted and answered.
fn refuse(status: tonic::Status) -> http::Response<Body> {
    telemetry::refused(status.code());
    status.into_http()
}

/// The deadline a `grpc-timeout` header asks for ("100m", "5S", ...).
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl<S> Service<http::Request<Body>> for Admission<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The service that was polled ready is the one that must be called.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = request.uri().path().to_owned();
        if is_exempt(&path) {
            return Box::pin(inner.call(request));
        }
        let config = &self.config;
        if config.public.contains(&path.as_str()) {
            return public_call(config, inner, request);
        }
        if !*config.ready.borrow() {
            let refusal = refuse(tonic::Status::unavailable("server is starting"));
            return Box::pin(async move { Ok(refusal) });
        }
        // Before the permit: an unauthenticated caller must not be able to
        // take capacity from authenticated ones.
        let mut extensions = std::mem::take(request.extensions_mut());
        match config.gate.admit(&path, request.headers(), &mut extensions) {
            Verdict::Admit => {}
            Verdict::Refuse(status) => {
                let refusal = refuse(status);
                return Box::pin(async move { Ok(refusal) });
            }
            Verdict::RefuseAfter(status) => {
                return Box::pin(async move { Ok(refuse(status.await)) });
            }
        }
        let Ok(permit) = config.permits.clone().try_acquire_owned() else {
            let refusal = refuse(tonic::Status::resource_exhausted(
                "server is at its concurrency limit",
            ));
            return Box::pin(async move { Ok(refusal) });
        };
        let timeout = grpc_timeout(request.headers())
            .map_or(config.request_timeout, |t| t.min(config.request_timeout));
        extensions.insert(Deadline(std::time::Instant::now() + timeout));
        *request.extensions_mut() = extensions;
        if !config.gate.checks_body(&path) {
            return Box::pin(async move {
                let response = inner.call(request).await;
                drop(permit);
                response
            });
        }
        let gate = config.gate.clone();
        let limit = config.max_message_bytes;
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let message = match read_message(body, limit).await {
                Ok(message) => message,
                Err(status) => return Ok(refuse(status)),
            };
            if let Err(status) = gate.check_body(&path, &message[5..], &parts.extensions) {
                return Ok(refuse(status));
            }
            let request =
                http::Request::from_parts(parts, Body::new(http_body_util::Full::new(message)));
            let response = inner.call(request).await;
            drop(permit);
            response
        })
    }
}

/// A call to a module's plain HTTP endpoint: readiness and the concurrency
/// limit apply, answered the HTTP way.
fn public_call<S>(
    config: &AdmissionLayer,
    mut inner: S,
    mut request: http::Request<Body>,
) -> BoxFuture<'static, Result<http::Response<Body>, S::Error>>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    let busy = |status: http::StatusCode| {
        let mut response = http::Response::new(Body::empty());
        *response.status_mut() = status;
        response.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        );
        response
    };
    if !*config.ready.borrow() {
        let response = busy(http::StatusCode::SERVICE_UNAVAILABLE);
        return Box::pin(async move { Ok(response) });
    }
    let Ok(permit) = config.permits.clone().try_acquire_owned() else {
        telemetry::refused(tonic::Code::ResourceExhausted);
        let response = busy(http::StatusCode::TOO_MANY_REQUESTS);
        return Box::pin(async move { Ok(response) });
    };
    request
        .extensions_mut()
        .insert(Deadline(std::time::Instant::now() + config.request_timeout));
    Box::pin(async move {
        let response = inner.call(request).await;
        drop(permit);
        response
    })
}

/// Reads the one framed message of a unary request: over the limit is
/// RESOURCE_EXHAUSTED, anything but one uncompressed frame INVALID_ARGUMENT,
/// and neither says more than that.
async fn read_message(body: Body, limit: usize) -> Result<bytes::Bytes, tonic::Status> {
    use http_body_util::BodyExt as _;
    let too_large = || {
        tonic::Status::resource_exhausted(format!(
            "the request message is larger than the limit of {limit} bytes"
        ))
    };
    let collected = http_body_util::Limited::new(body, limit + 5)
        .collect()
        .await
        .map_err(|err| {
            if err.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                tonic::Status::cancelled("the request ended before its message")
            }
        })?;
    let bytes = collected.to_bytes();
    if bytes.len() < 5 {
        return Err(tonic::Status::invalid_argument(
            "the request is not one gRPC message",
        ));
    }
    if bytes[0] != 0 {
        return Err(tonic::Status::unimplemented(
            "compressed requests are not accepted",
        ));
    }
    let length = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    if length > limit {
        return Err(too_large());
    }
    if bytes.len() != length + 5 {
        return Err(tonic::Status::invalid_argument(
            "the request is not one gRPC message",
        ));
    }
    Ok(bytes)
}

/// Lets a module name a generated server in `grpc_services` without
/// repeating the string.
pub fn service_name<S: NamedService>() -> &'static str {
    S::NAME
}

/// How long a test or tool should wait for a server to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
