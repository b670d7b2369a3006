//! Calls between services. A service reaches another through a generated
//! client on a channel to that service (`--peer NAME=URL`, or
//! `CUSTODIAN_PEER_<NAME>`; in the all-in-one, this process's own port),
//! with its own service credential. A call made for a caller carries that
//! caller's purpose, identity, tenant limit, deadline and trace (see
//! [`custodian_privacy::Forward`]), so it can never do more than the call it
//! serves; and `custodian-service` metadata, so a shared contract reaches
//! that service's implementation.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use custodian_privacy::{Forward, Purpose, token::TokenIssuer};
use tonic::{
    Status,
    codegen::InterceptedService,
    metadata::{Ascii, MetadataValue},
    transport::{Channel, Endpoint},
};

use crate::{call::Call, gate::SERVICE_HEADER};

/// How long a minted service credential lives; it is renewed at half-life.
const CREDENTIAL_TTL: Duration = Duration::from_secs(60 * 60);

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
}

impl tonic::service::Interceptor for ToPeer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        request
            .metadata_mut()
            .insert(SERVICE_HEADER, self.service.clone());
        self.forward.call(request)
    }
}

/// A channel to a peer with its credentials, for a generated client's
/// `new` (e.g. `UserServiceClient::new(peers.forward(&call, "identity")?)`).
pub type PeerChannel = InterceptedService<Channel, ToPeer>;

impl Peers {
    pub fn new(configured: BTreeMap<String, String>, credential: Credential) -> Self {
        Self {
            inner: Arc::new(Inner {
                configured,
                local: OnceLock::new(),
                channels: Mutex::new(HashMap::new()),
                credential,
                cached: Mutex::new(None),
            }),
        }
    }

    /// No peers at all (tests of one service).
    pub fn none() -> Self {
        Self::new(BTreeMap::new(), Credential::None)
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
    fn channel(&self, peer: &str) -> Result<Channel, Status> {
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
        if let Some(channel) = channels.get(peer) {
            return Ok(channel.clone());
        }
        let channel = Endpoint::from_shared(url)
            .map_err(|_| Status::unavailable(format!("the address of {peer} is not a URL")))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(peer.to_owned(), channel.clone());
        Ok(channel)
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
            ToPeer { forward, service },
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
