//! The browser's door, on the gRPC port: `POST /v1/collect` (one event or
//! an array, JSON, also as `text/plain` the way `sendBeacon` and
//! preflight-free `fetch` send it), `POST /v1/consent`, and
//! `GET /v1/tracker.js`. A post's answer allows its origin only when the
//! site does. The client's address is the connection's peer, or the
//! X-Forwarded-For entry a trusted proxy vouches for.
//!
//! Neither door tells a browser which sites exist: a domain that is not a
//! site is answered as a site with the default settings would be (its own
//! https origin allowed), events are answered with how many were received,
//! not what became of each, and preflights alike for every origin.

use std::net::IpAddr;

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    response::Response,
    routing::{get, post},
};
use custodian_kit::Call;
use custodian_privacy::{Actor, Purpose, access::Method};
use custodian_proto::analytics::v1::{
    Consent, ConsentState, Event, RecordConsentRequest, event::Type,
};
use custodian_runtime::{ApiError, HttpRoutes};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::BodyExt as _;
use ipnet::IpNet;
use serde_json::{Map, Value, json};

use crate::{
    consents::Consents,
    door::SiteLookup as _,
    ingest::{IngestError, check_events},
};

/// The largest beacon body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The most events one beacon may carry.
pub const MAX_BEACON_EVENTS: usize = 100;

const TRACKER: &str = include_str!("../assets/tracker.js");

/// What the beacon's handlers share.
#[derive(Clone)]
pub(crate) struct Beacon {
    pub(crate) ingest: crate::LazyIngest,
    pub(crate) consents: Consents,
    pub trusted_proxies: std::sync::Arc<[IpNet]>,
}

/// The routes, for the runtime to serve beside gRPC.
pub(crate) fn routes(beacon: Beacon) -> HttpRoutes {
    let router = Router::new()
        .route("/v1/collect", post(collect).options(preflight))
        .route("/v1/consent", post(consent).options(preflight))
        .route("/v1/tracker.js", get(tracker))
        .with_state(beacon);
    HttpRoutes {
        paths: vec!["/v1/collect", "/v1/consent", "/v1/tracker.js"],
        router,
    }
}

/// Parses `--trusted-proxies`.
pub fn parse_proxies(raw: &[String]) -> anyhow::Result<Vec<IpNet>> {
    raw.iter()
        .map(|p| p.trim())
        // An empty setting (an unset environment variable) trusts nobody.
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<IpNet>()
                .or_else(|_| p.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    anyhow::anyhow!("--trusted-proxies: {p:?} is not an address or CIDR block")
                })
        })
        .collect()
}

fn json_response(status: StatusCode, body: Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, message: &str) -> Response {
    json_response(status, json!({ "error": message }))
}

fn invalid(err: &ApiError) -> Response {
    let violations: Vec<Value> = match err {
        ApiError::InvalidArgument(v) => v
            .iter()
            .map(|f| json!({ "field": f.field, "description": f.description }))
            .collect(),
        _ => Vec::new(),
    };
    json_response(
        StatusCode::BAD_REQUEST,
        json!({ "error": "invalid request", "violations": violations }),
    )
}

fn busy() -> Response {
    let mut response = error(
        StatusCode::TOO_MANY_REQUESTS,
        "the event writer is behind; retry later",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// The client: the peer, or, when the peer is a trusted proxy, the
/// right-most X-Forwarded-For address that is not itself a trusted proxy.
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            // Each trusted hop vouches for the one before it.
            Ok(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            // A hop nobody can vouch for: stop at the last one known.
            Err(_) => break,
        }
    }
    Some(client)
}

fn opted_out(headers: &HeaderMap) -> bool {
    let is_one = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() == "1")
    };
    is_one("sec-gpc") || is_one("dnt")
}

fn origin(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn allow_origin(response: &mut Response, origin: &str) {
    if let Ok(value) = HeaderValue::from_str(origin) {
        response
            .headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
    }
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Origin"));
}

/// The origin a site allows when it names none: its domain over https.
fn default_origin(domain: &str) -> String {
    format!("https://{domain}")
}

/// A stable stand-in for the name of a site that does not exist, so that
/// a retried decision for it hashes as the first one did.
fn unknown_site_name(domain: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(domain.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    format!(
        "sites/{}",
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    )
}

/// Whether `origin` may post for the sites with these domains. A domain
/// that is not a site is judged as a site with the default settings: the
/// answer must not tell which sites exist.
fn origin_allowed(beacon: &Beacon, origin: &str, domains: &[String]) -> bool {
    let sites = beacon.ingest.sites.map();
    domains.iter().all(|domain| {
        let domain = domain.trim().to_ascii_lowercase();
        match sites.by_domain(&domain) {
            Some(site) => site.origins().iter().any(|o| o == origin),
            None => default_origin(&domain) == origin,
        }
    })
}

/// Every origin's preflight is answered alike: the post itself is checked
/// against its site's origins, and a preflight that told known origins
/// from others would tell which sites exist. Approving a preflight grants
/// nothing a page could not already send as `text/plain` without one.
async fn preflight(headers: HeaderMap) -> Response {
    let Some(origin) = origin(&headers) else {
        return error(StatusCode::BAD_REQUEST, "a preflight needs an Origin");
    };
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    allow_origin(&mut response, &origin);
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("content-type"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    response
}

async fn tracker() -> Response {
    let mut response = Response::new(Body::from(TRACKER));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/javascript; charset=utf-8"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    // Any page may load the script; what it sends is checked on arrival.
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

/// The body of a JSON post: size limit, content type, syntax.
#[allow(clippy::result_large_err)] // a refusal is answered as is, once
async fn read_json(request: Request) -> Result<(http::request::Parts, Value), Response> {
    let (parts, body) = request.into_parts();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if content_type != "application/json" && content_type != "text/plain" {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be JSON, sent as application/json or text/plain",
        ));
    }
    let bytes = match http_body_util::Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the body is larger than {MAX_BODY_BYTES} bytes"),
            ));
        }
        Err(_) => return Err(error(StatusCode::BAD_REQUEST, "the body ended early")),
    };
    // serde_json's messages quote the input; only the position is told.
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            &format!(
                "the body is not JSON (line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })?;
    Ok((parts, value))
}

/// A field's value by its expected type, or a violation naming it.
struct Fields<'a> {
    object: &'a Map<String, Value>,
    prefix: String,
    violations: &'a mut Vec<(String, &'static str)>,
}

impl Fields<'_> {
    fn string(&mut self, name: &str, required: bool) -> String {
        match self.object.get(name) {
            Some(Value::String(s)) => s.clone(),
            None | Some(Value::Null) if !required => String::new(),
            None | Some(Value::Null) => {
                self.violations
                    .push((format!("{}{name}", self.prefix), "is required"));
                String::new()
            }
            Some(_) => {
                self.violations
                    .push((format!("{}{name}", self.prefix), "must be a string"));
                String::new()
            }
        }
    }

    fn integer(&mut self, name: &str) -> i64 {
        match self.object.get(name) {
            None | Some(Value::Null) => 0,
            Some(Value::Number(n)) if n.as_i64().is_some_and(|n| n >= 0) => {
                n.as_i64().unwrap_or_default()
            }
            Some(_) => {
                self.violations.push((
                    format!("{}{name}", self.prefix),
                    "must be a whole number of 0 or more",
                ));
                0
            }
        }
    }

    fn boolean(&mut self, name: &str) -> bool {
        match self.object.get(name) {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                self.violations
                    .push((format!("{}{name}", self.prefix), "must be true or false"));
                false
            }
        }
    }

    fn consent(&mut self, name: &str) -> ConsentState {
        match self.string(name, false).as_str() {
            "" => ConsentState::Unspecified,
            "granted" => ConsentState::Granted,
            "refused" => ConsentState::Refused,
            _ => {
                self.violations.push((
                    format!("{}{name}", self.prefix),
                    "must be \"granted\" or \"refused\"",
                ));
                ConsentState::Unspecified
            }
        }
    }
}

fn violations_response(violations: Vec<(String, &'static str)>) -> Response {
    let list: Vec<Value> = violations
        .into_iter()
        .map(|(field, description)| json!({ "field": field, "description": description }))
        .collect();
    json_response(
        StatusCode::BAD_REQUEST,
        json!({ "error": "invalid request", "violations": list }),
    )
}

/// The beacon's events as the collector's.
#[allow(clippy::result_large_err)] // a refusal is answered as is, once
fn events_of(
    value: &Value,
    ip: IpAddr,
    user_agent: &str,
    opt_out: bool,
) -> Result<Vec<Event>, Response> {
    let items: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        Value::Object(_) => vec![value],
        _ => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "the body must be an event object or an array of them",
            ));
        }
    };
    if items.is_empty() {
        return Err(error(StatusCode::BAD_REQUEST, "the body holds no event"));
    }
    if items.len() > MAX_BEACON_EVENTS {
        return Err(error(
            StatusCode::BAD_REQUEST,
            &format!("at most {MAX_BEACON_EVENTS} events per request"),
        ));
    }
    let mut violations = Vec::new();
    let mut events = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Some(object) = item.as_object() else {
            violations.push((format!("events[{i}]"), "must be an object"));
            continue;
        };
        let mut f = Fields {
            object,
            prefix: format!("events[{i}]."),
            violations: &mut violations,
        };
        let kind = match f.string("type", true).as_str() {
            "pageview" => Type::Pageview,
            "engagement" => Type::Engagement,
            "" => Type::Unspecified,
            _ => {
                f.violations.push((
                    format!("events[{i}].type"),
                    "must be \"pageview\" or \"engagement\"",
                ));
                Type::Unspecified
            }
        };
        let event = Event {
            site: f.string("site", true),
            r#type: kind as i32,
            url: f.string("url", true),
            referrer: f.string("referrer", false),
            event_id: f.string("event_id", false),
            engaged_ms: f.integer("engaged_ms"),
            consent: f.consent("consent") as i32,
            opt_out: f.boolean("gpc") || opt_out,
            user_agent: user_agent.to_owned(),
            client_ip: ip.to_string(),
            time: None,
        };
        events.push(event);
    }
    if !violations.is_empty() {
        return Err(violations_response(violations));
    }
    Ok(events)
}

fn peer_of(parts: &http::request::Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|info| info.remote_addr())
        .map(|addr| addr.ip())
}

fn user_agent(headers: &HeaderMap) -> String {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .chars()
        .take(1024)
        .collect()
}

async fn collect(State(beacon): State<Beacon>, request: Request) -> Response {
    let (parts, value) = match read_json(request).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    let Some(ip) = client_ip(peer_of(&parts), &parts.headers, &beacon.trusted_proxies) else {
        return error(StatusCode::BAD_REQUEST, "the client's address is unknown");
    };
    let events = match events_of(
        &value,
        ip,
        &user_agent(&parts.headers),
        opted_out(&parts.headers),
    ) {
        Ok(events) => events,
        Err(response) => return response,
    };
    if let Err(err) = check_events(&events) {
        return invalid(&err);
    }
    let origin = origin(&parts.headers);
    if let Some(origin) = &origin {
        let domains: Vec<String> = events.iter().map(|e| e.site.clone()).collect();
        if !origin_allowed(&beacon, origin, &domains) {
            return error(
                StatusCode::FORBIDDEN,
                "this origin may not send events for this site",
            );
        }
    }
    let ingest = match beacon.ingest.get() {
        Ok(ingest) => ingest,
        Err(_) => return error(StatusCode::SERVICE_UNAVAILABLE, "server is starting"),
    };
    let received = events.len();
    let mut response = match ingest.collect(events).await {
        // What became of each event (stored, or dropped as a bot, a
        // duplicate, for an unknown site...) is not told to browsers: it
        // would tell which sites exist and which agents pass as people.
        // GetDropCounts tells the site's owners.
        Ok(_) => json_response(StatusCode::ACCEPTED, json!({ "received": received })),
        Err(IngestError::Busy) => busy(),
        Err(IngestError::Invalid(err)) => invalid(&err),
        Err(IngestError::Failed(err)) => match ApiError::internal(err) {
            ApiError::Database(unavailable) => {
                let mut response = error(StatusCode::SERVICE_UNAVAILABLE, unavailable.message());
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                response
            }
            ApiError::Internal(err) => {
                tracing::error!(error = %err, "collecting beacon events");
                error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
            err => {
                tracing::error!(error = %err, "collecting beacon events");
                error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
        },
    };
    if let Some(origin) = &origin {
        allow_origin(&mut response, origin);
    }
    response
}

/// Who records a consent that arrives through the beacon: the browser,
/// anonymous, for service delivery, through this path.
fn beacon_call(privacy: &custodian_privacy::Privacy, deadline: Option<std::time::Instant>) -> Call {
    const PURPOSES: &[Purpose] = &[Purpose::ServiceDelivery];
    Call {
        access: privacy.internal_access(
            Actor::Beacon,
            Purpose::ServiceDelivery,
            Method {
                path: "/v1/consent",
                action: custodian_proto::privacy::v1::AuditAction::Create,
                purposes: PURPOSES,
            },
        ),
        deadline,
        request: None,
    }
}

async fn consent(State(beacon): State<Beacon>, request: Request) -> Response {
    let (parts, value) = match read_json(request).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    let Some(object) = value.as_object() else {
        return error(StatusCode::BAD_REQUEST, "the body must be a JSON object");
    };
    let mut violations = Vec::new();
    let mut f = Fields {
        object,
        prefix: String::new(),
        violations: &mut violations,
    };
    let domain = f.string("site", true).trim().to_ascii_lowercase();
    let consent_id = f.string("consent_id", true);
    let decision = f.consent("decision");
    let categories: Vec<String> = match object.get("categories") {
        None | Some(Value::Null) => vec!["analytics".to_owned()],
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Some(_) => {
            violations.push(("categories".to_owned(), "must be an array of strings"));
            Vec::new()
        }
    };
    if decision == ConsentState::Unspecified && violations.is_empty() {
        violations.push(("decision".to_owned(), "is required"));
    }
    if !violations.is_empty() {
        return violations_response(violations);
    }
    // A domain that is not a registered site is answered as a site with
    // the default settings would be: the beacon must not tell which sites
    // exist (see `Consents::record_for_unknown_site`).
    let site = beacon.ingest.sites.map().by_domain(&domain);
    let origins = match &site {
        Some(site) => site.origins(),
        None => vec![default_origin(&domain)],
    };
    let origin = origin(&parts.headers);
    if let Some(origin) = &origin
        && !origins.iter().any(|o| o == origin)
    {
        return error(
            StatusCode::FORBIDDEN,
            "this origin may not record consent for this site",
        );
    }
    let ip = client_ip(peer_of(&parts), &parts.headers, &beacon.trusted_proxies);
    let request = RecordConsentRequest {
        consent: Some(Consent {
            site: match &site {
                Some(site) => format!("sites/{}", site.id),
                None => unknown_site_name(&domain),
            },
            decision: decision as i32,
            categories,
            ..Consent::default()
        }),
        client_ip: ip.map(|ip| ip.to_string()).unwrap_or_default(),
        user_agent: user_agent(&parts.headers),
        request_id: consent_id,
    };
    let deadline = parts
        .extensions
        .get::<custodian_runtime::Deadline>()
        .map(|d| d.0);
    let recorded = match site {
        Some(_) => beacon
            .consents
            .record(
                &beacon_call(beacon.consents.records.store().privacy(), deadline),
                request,
            )
            .await
            .map(|shown| (shown.message.name, shown.message.policy_version)),
        None => beacon.consents.record_for_unknown_site(request).await,
    };
    let mut response = match recorded {
        Ok((name, policy_version)) => json_response(
            StatusCode::CREATED,
            json!({
                "consent": name,
                "policy_version": policy_version,
            }),
        ),
        Err(status) => {
            let code = match status.code() {
                tonic::Code::InvalidArgument => {
                    return invalid(&ApiError::invalid("consent", status.message()));
                }
                tonic::Code::NotFound => StatusCode::NOT_FOUND,
                tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                tonic::Code::ResourceExhausted => return busy(),
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            error(code, status.message())
        }
    };
    if let Some(origin) = &origin {
        allow_origin(&mut response, origin);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_str(xff).unwrap());
        h
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        let trusted = parse_proxies(&["10.0.0.0/8".to_owned()]).unwrap();
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let stranger: IpAddr = "198.51.100.7".parse().unwrap();
        // A trusted proxy names the client.
        assert_eq!(
            client_ip(Some(proxy), &headers("203.0.113.9"), &trusted),
            Some("203.0.113.9".parse().unwrap())
        );
        // Through two trusted hops, a spoofed first entry is ignored.
        assert_eq!(
            client_ip(
                Some(proxy),
                &headers("1.1.1.1, 203.0.113.9, 10.9.9.9"),
                &trusted
            ),
            Some("203.0.113.9".parse().unwrap())
        );
        // Anyone else's header is ignored.
        assert_eq!(
            client_ip(Some(stranger), &headers("203.0.113.9"), &trusted),
            Some(stranger)
        );
        // Garbage stops the walk at the last address vouched for.
        assert_eq!(
            client_ip(Some(proxy), &headers("nonsense"), &trusted),
            Some(proxy)
        );
    }
}
