//! Calls between services. A service reaches another through a generated
//! client on a channel to that service (`--peer NAME=URL`, or
//! `CUSTODIAN_PEER_<NAME>`; in the all-in-one, this process's own port),
//! with its own service credential. A call made for a caller carries that
//! caller's purpose, identity, tenant limit, deadline and trace (see
//! [`custodian_privacy::Forward`]), so it can never do more than the call it
//! serves; and `custodian-service` metadata, so a shared contract reaches
//! that service's implementation.
//!
//! No call waits forever on a peer that does not answer (a frozen process,
//! a dead connection, a partition): every call has a deadline, the smaller
//! of the peer timeout (`--peer-timeout`) and what is left of its caller's,
//! sent as `grpc-timeout` and enforced here too, the wait for a free
//! connection included; it ends in DEADLINE_EXCEEDED. A streamed answer (an
//! export of a large subject) has no total deadline but an idle one: each
//! message must follow the one before within the peer timeout. HTTP/2 pings
//! find a dead connection between calls, so the next call does not wait on
//! it.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use custodian_privacy::{Forward, Purpose, token::TokenIssuer};
use futures::{StreamExt as _, future::BoxFuture};
use tonic::{
    Status,
    body::Body,
    codegen::{InterceptedService, Service},
    metadata::{Ascii, MetadataValue},
    transport::{Channel, Endpoint},
};

use custodian_runtime::telemetry::{self, Side};

use crate::{call::Call, gate::SERVICE_HEADER};

/// How long a minted service credential lives; it is renewed at half-life.
const CREDENTIAL_TTL: Duration = Duration::from_secs(60 * 60);

/// The longest a new connection may take, at most the peer timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How often an HTTP/2 ping checks a connection, also while no call is
/// open; a peer that does not answer one within the peer timeout loses the
/// connection, and the next call makes a new one. Tonic servers take pings
/// this often (there is no ping policy in hyper's server).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// A service's own credential: `svc:NAME`, which the callee's gate lets
/// make only the calls NAME declares.
pub enum Credential {
    /// Minted from the key file's signing key, for the purposes the service
    /// needs when calling others: the all-in-one only, the one process that
    /// holds a signing key.
    Mint {
        issuer: TokenIssuer,
        subject: String,
        purposes: Vec<Purpose>,
    },
    /// Read from a file (a Kubernetes Secret) on each renewal: a server
    /// with `--target`, given its credential by the operator.
    File(PathBuf),
    /// None: calls to other services fail (UNAVAILABLE).
    None,
}

/// Where a service's peers are and how it authenticates to them.
#[derive(Clone)]
pub struct Peers {
    inner: Arc<Inner>,
}

struct Inner {
    configured: BTreeMap<String, String>,
    /// The longest wait for an answer, or for a stream's next message.
    timeout: Duration,
    /// This process's own address, once bound, and the services it runs.
    local: OnceLock<(String, Vec<&'static str>)>,
    channels: Mutex<HashMap<String, Channel>>,
    credential: Credential,
    cached: Mutex<Option<(String, Instant)>>,
}

/// The interceptor of a call to a peer.
#[derive(Clone)]
pub struct ToPeer {
    forward: Forward,
    service: MetadataValue<Ascii>,
    peer: Arc<str>,
}

/// When a call to a peer must have its answer, as the interceptor decided
/// it (and told the callee in `grpc-timeout`).
#[derive(Clone, Copy)]
struct Until(Instant);

/// The client span of a call, from the interceptor (which knows the
/// method) to the channel (which sees the answer).
#[derive(Clone)]
struct ClientSpan(tracing::Span);

impl tonic::service::Interceptor for ToPeer {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        // Generated clients name the method in an extension.
        let span = match request.extensions().get::<tonic::GrpcMethod>() {
            Some(method) => telemetry::client_span(method.service(), method.method(), &self.peer),
            None => tracing::Span::none(),
        };
        // Entered while the metadata is written: the callee's span is a
        // child of this one.
        let intercepted = span.in_scope(|| -> Result<_, Status> {
            let timeout = self.forward.timeout()?;
            let mut request = request;
            request
                .metadata_mut()
                .insert(SERVICE_HEADER, self.service.clone());
            let mut request = self.forward.call(request)?;
            if let Some(timeout) = timeout {
                request
                    .extensions_mut()
                    .insert(Until(Instant::now() + timeout));
            }
            Ok(request)
        });
        match intercepted {
            Ok(mut request) => {
                request.extensions_mut().insert(ClientSpan(span));
                Ok(request)
            }
            Err(status) => {
                telemetry::record_grpc_status(&span, status.code(), Side::Client);
                Err(status)
            }
        }
    }
}

/// A channel to a peer with its credentials, for a generated client's
/// `new` (e.g. `UserServiceClient::new(peers.forward(&call, "identity")?)`).
pub type PeerChannel = InterceptedService<Deadlined, ToPeer>;

/// A channel whose calls end at their deadline, and whose streams end when
/// the peer stops sending, both as DEADLINE_EXCEEDED. Tonic's own client
/// timeout starts only once a connection takes the call, and answers
/// CANCELLED; a stream's body has none.
#[derive(Clone)]
pub struct Deadlined {
    channel: Channel,
    peer: Arc<str>,
    idle: Duration,
}

impl Service<http::Request<Body>> for Deadlined {
    type Response = http::Response<Body>;
    type Error = tonic::codegen::StdError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.channel.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let until = request.extensions().get::<Until>().copied();
        let timer = custodian_runtime::metrics::RpcTimer::client(&self.peer, request.uri().path());
        let span = request
            .extensions_mut()
            .remove::<ClientSpan>()
            .map_or_else(tracing::Span::none, |s| s.0);
        let answer = self.channel.call(request);
        let (peer, idle) = (self.peer.clone(), self.idle);
        Box::pin(async move {
            let answer = match until {
                Some(Until(until)) => match tokio::time::timeout_at(until.into(), answer).await {
                    Ok(answer) => answer,
                    Err(_) => {
                        timer.finish(tonic::Code::DeadlineExceeded);
                        telemetry::record_grpc_status(
                            &span,
                            tonic::Code::DeadlineExceeded,
                            Side::Client,
                        );
                        return Err(late(&peer).into());
                    }
                },
                None => answer.await,
            };
            match answer {
                Ok(response) => {
                    // An answer that is only a status has it in its
                    // headers; any other, in its trailers.
                    if let Some(code) = telemetry::grpc_status(response.headers()) {
                        telemetry::record_grpc_status(&span, code, Side::Client);
                    }
                    Ok(timer.observe(response.map(|body| idle_ends(body, idle, peer, span))))
                }
                // The connection's own timer went off first.
                Err(err) if timed_out(&err) => {
                    timer.finish(tonic::Code::DeadlineExceeded);
                    telemetry::record_grpc_status(
                        &span,
                        tonic::Code::DeadlineExceeded,
                        Side::Client,
                    );
                    Err(late(&peer).into())
                }
                Err(err) => {
                    timer.finish(tonic::Code::Unavailable);
                    // What tonic answers a call that never reached the peer.
                    telemetry::record_grpc_status(&span, tonic::Code::Unavailable, Side::Client);
                    Err(err.into())
                }
            }
        })
    }
}

fn late(peer: &str) -> Status {
    Status::deadline_exceeded(format!("the {peer} service did not answer in time"))
}

fn timed_out(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(err) = source {
        if err.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// The body of an answer, ended with DEADLINE_EXCEEDED when the peer sends
/// nothing for `idle`. It holds the call's span, which ends with it, and
/// records the status the trailers bring.
fn idle_ends(body: Body, idle: Duration, peer: Arc<str>, span: tracing::Span) -> Body {
    let frames = http_body_util::BodyStream::new(body);
    let frames = futures::stream::unfold(Some(frames), move |frames| {
        let (peer, span) = (peer.clone(), span.clone());
        async move {
            let mut frames = frames?;
            match tokio::time::timeout(idle, frames.next()).await {
                Ok(Some(frame)) => {
                    if let Some(code) = frame
                        .as_ref()
                        .ok()
                        .and_then(|f| f.trailers_ref())
                        .and_then(telemetry::grpc_status)
                    {
                        telemetry::record_grpc_status(&span, code, Side::Client);
                    }
                    Some((frame, Some(frames)))
                }
                Ok(None) => None,
                Err(_) => {
                    telemetry::record_grpc_status(
                        &span,
                        tonic::Code::DeadlineExceeded,
                        Side::Client,
                    );
                    Some((
                        Err(Status::deadline_exceeded(format!(
                            "the {peer} service stopped sending"
                        ))),
                        None,
                    ))
                }
            }
        }
    });
    Body::new(http_body_util::StreamBody::new(frames))
}

impl Peers {
    /// Peers at `configured` addresses, called with `credential`, each
    /// call waiting at most `timeout` (see the module's documentation).
    pub fn new(
        configured: BTreeMap<String, String>,
        credential: Credential,
        timeout: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                configured,
                timeout,
                local: OnceLock::new(),
                channels: Mutex::new(HashMap::new()),
                credential,
                cached: Mutex::new(None),
            }),
        }
    }

    /// No peers at all (tests of one service).
    pub fn none() -> Self {
        Self::new(BTreeMap::new(), Credential::None, Duration::from_secs(5))
    }

    /// Tells where this process serves, and which services it runs: those
    /// are reached through its own port.
    pub fn set_local(&self, addr: std::net::SocketAddr, services: Vec<&'static str>) {
        let host = if addr.ip().is_unspecified() {
            match addr {
                std::net::SocketAddr::V4(_) => "127.0.0.1".to_owned(),
                std::net::SocketAddr::V6(_) => "[::1]".to_owned(),
            }
        } else {
            match addr {
                std::net::SocketAddr::V4(a) => a.ip().to_string(),
                std::net::SocketAddr::V6(a) => format!("[{}]", a.ip()),
            }
        };
        let _ = self
            .inner
            .local
            .set((format!("http://{host}:{}", addr.port()), services));
    }

    fn url(&self, peer: &str) -> Option<String> {
        if let Some(url) = self.inner.configured.get(peer) {
            return Some(url.clone());
        }
        self.inner
            .local
            .get()
            .filter(|(_, services)| services.contains(&peer))
            .map(|(url, _)| url.clone())
    }

    #[allow(clippy::result_large_err)] // answered as is
    fn channel(&self, peer: &str) -> Result<Deadlined, Status> {
        let url = self.url(peer).ok_or_else(|| {
            Status::unavailable(format!(
                "no address for the {peer} service (--peer {peer}=URL)"
            ))
        })?;
        let mut channels = self
            .inner
            .channels
            .lock()
            .map_err(|_| Status::internal("internal error"))?;
        let timeout = self.inner.timeout;
        let channel = match channels.get(peer) {
            Some(channel) => channel.clone(),
            None => {
                let channel = Endpoint::from_shared(url)
                    .map_err(|_| {
                        Status::unavailable(format!("the address of {peer} is not a URL"))
                    })?
                    .connect_timeout(CONNECT_TIMEOUT.min(timeout))
                    .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                    .keep_alive_timeout(timeout)
                    .keep_alive_while_idle(true)
                    .tcp_nodelay(true)
                    .connect_lazy();
                channels.insert(peer.to_owned(), channel.clone());
                channel
            }
        };
        Ok(Deadlined {
            channel,
            peer: Arc::from(peer),
            idle: timeout,
        })
    }

    /// The service's credential, renewed before it expires.
    #[allow(clippy::result_large_err)] // answered as is
    fn credential(&self) -> Result<String, Status> {
        let mut cached = self
            .inner
            .cached
            .lock()
            .map_err(|_| Status::internal("internal error"))?;
        if let Some((token, renew_at)) = cached.as_ref()
            && Instant::now() < *renew_at
        {
            return Ok(token.clone());
        }
        let token = match &self.inner.credential {
            Credential::Mint {
                issuer,
                subject,
                purposes,
            } => issuer
                .issue_service(subject, purposes, CREDENTIAL_TTL)
                .map_err(|_| Status::internal("internal error"))?,
            Credential::File(path) => std::fs::read_to_string(path)
                .map(|t| t.trim().to_owned())
                .map_err(|_| Status::unavailable("the service credential file cannot be read"))?,
            Credential::None => {
                return Err(Status::unavailable(
                    "this service has no credential to call other services",
                ));
            }
        };
        *cached = Some((token.clone(), Instant::now() + CREDENTIAL_TTL / 2));
        Ok(token)
    }

    fn routed(&self, peer: &str, forward: Forward) -> Result<PeerChannel, Status> {
        let service = peer
            .parse()
            .map_err(|_| Status::internal("internal error"))?;
        Ok(InterceptedService::new(
            self.channel(peer)?,
            ToPeer {
                forward: forward.within(self.inner.timeout),
                service,
                peer: Arc::from(peer),
            },
        ))
    }

    /// A channel to `peer` for a call made while serving `call`: the same
    /// purpose, the caller behind it, its tenant limit and its deadline.
    #[allow(clippy::result_large_err)] // answered as is
    pub fn forward(&self, call: &Call, peer: &str) -> Result<PeerChannel, Status> {
        let forward = Forward::new(&self.credential()?, &call.access, call.deadline)?;
        self.routed(peer, forward)
    }

    /// A channel to `peer` for work done later for someone recorded with
    /// it (a data-subject request's steps), for one purpose its credential
    /// holds; the callee audits `on_behalf_of`.
    #[allow(clippy::result_large_err)] // answered as is
    pub fn acting(
        &self,
        peer: &str,
        purpose: Purpose,
        on_behalf_of: &str,
    ) -> Result<PeerChannel, Status> {
        let forward = Forward::acting(&self.credential()?, purpose, on_behalf_of)?;
        self.routed(peer, forward)
    }

    /// A channel to `peer` for the service's own work (a scheduled sweep),
    /// for one purpose its credential holds.
    #[allow(clippy::result_large_err)] // answered as is
    pub fn own(&self, peer: &str, purpose: Purpose) -> Result<PeerChannel, Status> {
        let forward = Forward::own(&self.credential()?, purpose)?;
        self.routed(peer, forward)
    }
}
