//! Collection, shared by the gRPC collector and the browser beacon: the
//! schema every event must meet (one set of rules and messages for both
//! doors), then the privacy door, then the writer.

use custodian_runtime::metrics;
use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::IpAddr,
    sync::Arc,
};

use custodian_kit::{Call, Store, gate::check_message};
use custodian_privacy::Purpose;
use custodian_proto::{
    analytics::v1::{
        CollectEventsRequest, CollectEventsResponse, CollectUsageEventsRequest, ConsentState,
        DropCount, DropReason, Event, UsageEvent, event::Type,
    },
    identity::v1::{
        CheckMonitoringGrantRequest, GetUserRequest,
        monitoring_grant_service_client::MonitoringGrantServiceClient,
        user_service_client::UserServiceClient,
    },
    privacy::v1::Lookup,
};
use custodian_runtime::{ApiError, error::Violations, time::Clock};
use futures::StreamExt as _;
use prost::Message as _;
use prost_reflect::ReflectMessage as _;
use tonic::Status;

use crate::{
    door::{self, Arrived, Verdict, day_of},
    salts::Salts,
    sites::Sites,
    usage,
    writer::{Batch, Dropped, UsageRow, WriteError, Writer},
};

/// The scope a monitoring grant must cover for usage events.
pub const USAGE_SCOPE: &str = "usage_events";

/// Why a batch was not stored.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Invalid(ApiError),
    #[error("the event writer is behind; retry later")]
    Busy,
    #[error("storing events failed")]
    Failed(#[source] anyhow::Error),
}

impl From<IngestError> for Status {
    fn from(err: IngestError) -> Self {
        match err {
            IngestError::Invalid(e) => e.into(),
            IngestError::Busy => {
                Status::resource_exhausted("the event writer is behind; retry in a second")
            }
            IngestError::Failed(e) => ApiError::internal(e).into(),
        }
    }
}

impl From<WriteError> for IngestError {
    fn from(err: WriteError) -> Self {
        match err {
            WriteError::Busy => IngestError::Busy,
            WriteError::Failed(e) => IngestError::Failed(e),
        }
    }
}

impl From<ApiError> for IngestError {
    fn from(err: ApiError) -> Self {
        match err {
            ApiError::InvalidArgument(_) => IngestError::Invalid(err),
            // Kept whole, so that it is answered UNAVAILABLE.
            ApiError::Database(unavailable) => IngestError::Failed(unavailable.into()),
            other => IngestError::Failed(anyhow::anyhow!("{other}")),
        }
    }
}

/// What collection needs.
#[derive(Clone)]
pub struct Ingest {
    pub sites: Sites,
    pub salts: Salts,
    pub writer: Writer,
    pub clock: Arc<dyn Clock>,
    pub store: Store,
    pub peers: custodian_kit::peers::Peers,
}

/// The most events one request may carry.
pub const MAX_EVENTS: usize = 500;

/// How many users of one request are looked up in identity at once.
const USER_CHECKS_AT_ONCE: usize = 8;

/// The schema of a batch: the declared hygiene of every value (the same
/// check the gate makes on unary calls, here also for streams and the
/// beacon), then what each event must hold.
pub fn check_events(events: &[Event]) -> Result<(), ApiError> {
    if events.len() > MAX_EVENTS {
        return Err(ApiError::invalid(
            "events",
            format!("at most {MAX_EVENTS} events per request"),
        ));
    }
    let request = CollectEventsRequest {
        events: events.to_vec(),
    };
    if let Err(status) = check_message(&request.descriptor(), &request.encode_to_vec()) {
        return Err(ApiError::InvalidArgument(violations_of(&status)));
    }
    let mut v = Violations::new();
    for (i, e) in events.iter().enumerate() {
        let at = |field: &str| format!("events[{i}].{field}");
        if e.site.trim().is_empty() {
            v.add(at("site"), "is required");
        }
        match Type::try_from(e.r#type) {
            Ok(Type::Pageview) | Ok(Type::Engagement) => {}
            _ => v.add(at("type"), "must be a page view or an engagement"),
        }
        if e.url.trim().is_empty() {
            v.add(at("url"), "is required");
        }
        if e.client_ip.is_empty() {
            v.add(at("client_ip"), "is required");
        } else if e.client_ip.parse::<IpAddr>().is_err() {
            v.add(at("client_ip"), "must be an IPv4 or IPv6 address");
        }
        if e.r#type == Type::Engagement as i32 && e.engaged_ms < 0 {
            v.add(at("engaged_ms"), "must not be negative");
        }
        if ConsentState::try_from(e.consent).is_err() {
            v.add(at("consent"), "is not a known consent state");
        }
    }
    v.finish()
}

/// The field violations of an INVALID_ARGUMENT status made by the kit.
fn violations_of(status: &Status) -> Vec<tonic_types::FieldViolation> {
    use tonic_types::StatusExt as _;
    status
        .get_details_bad_request()
        .map(|b| b.field_violations)
        .unwrap_or_else(|| vec![tonic_types::FieldViolation::new("events", status.message())])
}

fn micros_of(t: &prost_types::Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1_000_000)
        .saturating_add(i64::from(t.nanos / 1000))
}

struct IngestMetrics {
    accepted: metrics::Counter<u64>,
    dropped: metrics::Counter<u64>,
}

static INGEST: std::sync::LazyLock<IngestMetrics> = std::sync::LazyLock::new(|| {
    let meter = metrics::meter();
    IngestMetrics {
        accepted: meter
            .u64_counter("custodian.analytics.events.accepted")
            .with_unit("{event}")
            .with_description("Analytics events stored, by kind (web, usage)")
            .build(),
        dropped: meter
            .u64_counter("custodian.analytics.events.dropped")
            .with_unit("{event}")
            .with_description(
                "Analytics events not stored, by kind and reason (bot, consent, invalid, \
                 unknown_site, duplicate, unknown_user, queue_full)",
            )
            .build(),
    }
});

/// Counts events of `kind` not stored, for `reason`.
pub(crate) fn count_dropped(kind: &'static str, reason: &'static str, n: u64) {
    if n > 0 {
        INGEST.dropped.add(
            n,
            &[
                metrics::KeyValue::new("custodian.analytics.kind", kind),
                metrics::KeyValue::new("custodian.analytics.reason", reason),
            ],
        );
    }
}

/// The reason's label: its proto name, lower case, without the prefix.
fn reason_label(reason: i32) -> &'static str {
    match DropReason::try_from(reason).unwrap_or(DropReason::Unspecified) {
        DropReason::Unspecified => "unspecified",
        DropReason::Bot => "bot",
        DropReason::Consent => "consent",
        DropReason::Invalid => "invalid",
        DropReason::UnknownSite => "unknown_site",
        DropReason::Duplicate => "duplicate",
        DropReason::UnknownUser => "unknown_user",
    }
}

/// Counts what one request's events became.
fn count(kind: &'static str, accepted: i64, dropped: &BTreeMap<i32, i64>) {
    INGEST.accepted.add(
        accepted.max(0) as u64,
        &[metrics::KeyValue::new("custodian.analytics.kind", kind)],
    );
    for (reason, n) in dropped {
        count_dropped(kind, reason_label(*reason), (*n).max(0) as u64);
    }
}

fn response(accepted: i64, dropped: &BTreeMap<i32, i64>) -> CollectEventsResponse {
    CollectEventsResponse {
        accepted,
        dropped: dropped
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(reason, count)| DropCount {
                reason: *reason,
                count: *count,
            })
            .collect(),
    }
}

impl Ingest {
    /// Stores checked events; answers once they are committed.
    pub async fn collect(&self, events: Vec<Event>) -> Result<CollectEventsResponse, IngestError> {
        let now = self.clock.now_micros();
        let salts = self.salts.for_now().await?;
        let sites = self.sites.map();
        let mut batch = Batch::default();
        let mut dropped: BTreeMap<i32, i64> = BTreeMap::new();
        for e in events {
            let arrived = Arrived {
                site: e.site,
                kind: e.r#type,
                url: e.url,
                referrer: e.referrer,
                ip: e.client_ip.parse().ok(),
                user_agent: e.user_agent,
                time: e.time.as_ref().map(micros_of),
                event_id: Some(e.event_id),
                engaged_ms: e.engaged_ms,
                consent: ConsentState::try_from(e.consent).unwrap_or_default(),
                opt_out: e.opt_out,
            };
            match door::admit(arrived, sites.as_ref(), &salts, now) {
                Verdict::Keep(clean) => batch.events.push(*clean),
                Verdict::Drop(site_id, reason) => {
                    *dropped.entry(reason as i32).or_default() += 1;
                    batch.drops.push(Dropped {
                        site_id,
                        day: day_of(now),
                        reason: reason as i32,
                    });
                }
            }
        }
        let written = self.writer.write(batch).await?;
        if written.duplicates > 0 {
            *dropped.entry(DropReason::Duplicate as i32).or_default() += written.duplicates;
        }
        count("web", written.accepted, &dropped);
        Ok(response(written.accepted, &dropped))
    }

    /// Stores usage events of one tenant's users while its monitoring
    /// grant is active; drops them (reason consent) otherwise.
    pub async fn collect_usage(
        &self,
        call: &Call,
        request: CollectUsageEventsRequest,
    ) -> Result<CollectEventsResponse, Status> {
        let now = self.clock.now_micros();
        let mut v = Violations::new();
        let tenant = request
            .events
            .first()
            .map(|e| e.tenant.clone())
            .unwrap_or_default();
        for (i, e) in request.events.iter().enumerate() {
            let at = |field: &str| format!("events[{i}].{field}");
            if e.tenant.is_empty() {
                v.add(at("tenant"), "is required");
            } else if e.tenant != tenant {
                v.add(
                    at("tenant"),
                    "all events of a request must be of one tenant",
                );
            }
            // "tenants/{tenant}/users/{user}" of this very tenant, nothing
            // more: a prefix would let "tenants/a/users/x/../.." through.
            let of_tenant = usage::user_tenant(&e.user)
                .is_some_and(|t| e.tenant.strip_prefix("tenants/") == Some(t));
            if !of_tenant {
                v.add(
                    at("user"),
                    "must be an authorized user of the event's tenant",
                );
            }
            if e.action.is_empty() {
                v.add(at("action"), "is required");
            }
        }
        v.finish()?;
        if request.events.is_empty() {
            return Ok(response(0, &BTreeMap::new()));
        }
        let tenant_id = tenant
            .strip_prefix("tenants/")
            .unwrap_or_default()
            .to_owned();
        if !call.sees_tenant(&tenant_id) {
            return Err(ApiError::not_found(tenant.clone()).into());
        }
        let day = day_of(now);
        let mut batch = Batch::default();
        let mut dropped: BTreeMap<i32, i64> = BTreeMap::new();
        if self.grant_active(call, &tenant).await? {
            let known = self.known_users(call, &request.events).await?;
            for e in request.events {
                if !known.contains(&e.user) {
                    *dropped.entry(DropReason::UnknownUser as i32).or_default() += 1;
                    batch.drops.push(Dropped {
                        site_id: crate::USAGE_SITE.to_owned(),
                        day,
                        reason: DropReason::UnknownUser as i32,
                    });
                    continue;
                }
                let time = e.time.as_ref().map(micros_of).unwrap_or(now);
                if !door::on_time(time, now) {
                    *dropped.entry(DropReason::Invalid as i32).or_default() += 1;
                    batch.drops.push(Dropped {
                        site_id: crate::USAGE_SITE.to_owned(),
                        day,
                        reason: DropReason::Invalid as i32,
                    });
                    continue;
                }
                batch.usage.push(UsageRow {
                    tenant_id: tenant_id.clone(),
                    user_key: self.store.lookup_key(Lookup::User, &e.user),
                    day: day_of(time),
                    time,
                    event_id: (!e.event_id.is_empty()).then_some(e.event_id),
                    action: e.action,
                    path: e
                        .path
                        .split(['?', '#'])
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                });
            }
        } else {
            let n = request.events.len() as i64;
            dropped.insert(DropReason::Consent as i32, n);
            for _ in 0..n {
                batch.drops.push(Dropped {
                    site_id: crate::USAGE_SITE.to_owned(),
                    day,
                    reason: DropReason::Consent as i32,
                });
            }
        }
        let written = self
            .writer
            .write(batch)
            .await
            .map_err(|e| Status::from(IngestError::from(e)))?;
        if written.duplicates > 0 {
            *dropped.entry(DropReason::Duplicate as i32).or_default() += written.duplicates;
        }
        count("usage", written.accepted, &dropped);
        Ok(response(written.accepted, &dropped))
    }

    /// The users of `events` that identity holds, asked for the caller
    /// (its purpose and tenant limit go along), each once. A user identity
    /// does not know (or will not show this caller) is left out; without an
    /// answer nothing is accepted.
    async fn known_users(
        &self,
        call: &Call,
        events: &[UsageEvent],
    ) -> Result<HashSet<String>, Status> {
        let users: BTreeSet<String> = events.iter().map(|e| e.user.clone()).collect();
        let channel = self.peers.forward(call, "identity")?;
        let checks = users.into_iter().map(move |user| {
            let mut client = UserServiceClient::new(channel.clone());
            async move {
                let answer = client
                    .get_user(GetUserRequest { name: user.clone() })
                    .await;
                match answer {
                    Ok(_) => Ok(Some(user)),
                    Err(status)
                        if matches!(
                            status.code(),
                            tonic::Code::NotFound
                                | tonic::Code::PermissionDenied
                                | tonic::Code::InvalidArgument
                        ) =>
                    {
                        Ok(None)
                    }
                    Err(status) => {
                        tracing::warn!(code = ?status.code(), "identity did not answer a user check");
                        Err(Status::unavailable(
                            "the users cannot be checked now; nothing was stored, retry later",
                        ))
                    }
                }
            }
        });
        let answers: Vec<Result<Option<String>, Status>> = futures::stream::iter(checks)
            .buffer_unordered(USER_CHECKS_AT_ONCE)
            .collect()
            .await;
        let mut known = HashSet::new();
        for answer in answers {
            known.extend(answer?);
        }
        Ok(known)
    }

    /// Asks identity whether `tenant` grants monitoring now, for the
    /// caller (its purpose and tenant limit go along: nothing is widened).
    /// Without an answer nothing is accepted.
    async fn grant_active(&self, call: &Call, tenant: &str) -> Result<bool, Status> {
        let channel = self.peers.forward(call, "identity")?;
        let answer = MonitoringGrantServiceClient::new(channel)
            .check_monitoring_grant(CheckMonitoringGrantRequest {
                tenant: tenant.to_owned(),
                scope: USAGE_SCOPE.to_owned(),
                time: None,
            })
            .await;
        match answer {
            Ok(answer) => Ok(answer.into_inner().active),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(false),
            Err(status) => {
                tracing::warn!(code = ?status.code(), "identity did not answer a monitoring grant check");
                Err(Status::unavailable(
                    "the monitoring grant cannot be checked now; retry later",
                ))
            }
        }
    }
}

/// The purpose analytics' own calls to identity are made for.
pub const OWN_PURPOSE: Purpose = Purpose::ServiceDelivery;
