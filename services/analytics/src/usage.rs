//! Platform usage events of identified users: `UsageService` (defect
//! investigation only, one audit event per page read) and their part in
//! data-subject rights. A user is stored only as a keyed blind index of
//! their resource name, so the table alone names nobody.

use std::collections::BTreeMap;

use custodian_kit::{Call, Store};
use custodian_proto::{
    analytics::v1::{
        ListUsageEventsRequest, ListUsageEventsResponse, UsageEvent,
        usage_service_server::UsageService,
    },
    audit::v1::AuditOutcome,
    common::v1::{Controller, controller},
    privacy::v1::{DataCategory, Lookup},
    subject::v1::{ExportSubjectDataResponse, SubjectRecord},
};
use custodian_runtime::{ApiError, paging::Page, time::to_timestamp};
use prost_types::{Struct, Value, value::Kind};
use sqlx::Row as _;
use tonic::{Request, Response, Status};

/// The service named in a usage record.
const SERVICE: &str = "custodian.analytics.v1.UsageService";

#[derive(Clone)]
pub struct Usage {
    pub store: Store,
}

/// The tenant id of "tenants/{tenant}/users/{user}", if it is one.
pub fn user_tenant(name: &str) -> Option<&str> {
    let rest = name.strip_prefix("tenants/")?;
    let (tenant, user) = rest.split_once("/users/")?;
    (!tenant.is_empty() && !user.is_empty() && !user.contains('/')).then_some(tenant)
}

struct Row {
    time: i64,
    action: String,
    path: String,
    event_id: Option<String>,
}

impl Usage {
    async fn rows(
        &self,
        user: &str,
        from: i64,
        to: i64,
        offset: i64,
        limit: i64,
    ) -> Result<Vec<Row>, ApiError> {
        let key = self.store.lookup_key(Lookup::User, user);
        let rows = sqlx::query(
            "SELECT time, action, path, event_id FROM analytics_usage WHERE user_key = $1 AND time >= $2 AND time < $3 \
             ORDER BY time, action, path LIMIT $4 OFFSET $5",
        )
        .bind(key)
        .bind(from)
        .bind(to)
        .bind(limit)
        .bind(offset)
        .fetch_all(self.store.db().pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Row {
                    time: r.try_get("time")?,
                    action: r.try_get("action")?,
                    path: r.try_get("path")?,
                    event_id: r.try_get("event_id")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(ApiError::internal)
    }

    fn record(user: &str, tenant: &str) -> SubjectRecord {
        SubjectRecord {
            resource: format!("{user}/usageEvents"),
            service: SERVICE.to_owned(),
            data_category: DataCategory::UsageEvent as i32,
            controller: Some(Controller {
                kind: Some(controller::Kind::Tenant(format!("tenants/{tenant}"))),
            }),
        }
    }

    /// The user's usage record, if they have events.
    pub async fn locate(&self, call: &Call, user: &str) -> Result<Vec<SubjectRecord>, ApiError> {
        let Some(tenant) = user_tenant(user) else {
            return Ok(Vec::new());
        };
        if !call.sees_tenant(tenant) {
            return Ok(Vec::new());
        }
        let key = self.store.lookup_key(Lookup::User, user);
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM analytics_usage WHERE user_key = $1")
            .bind(&key)
            .fetch_one(self.store.db().pool())
            .await?
            .try_get("n")?;
        if n == 0 {
            return Ok(Vec::new());
        }
        // Located as the kit locates its records: audited, without fields.
        let privacy = self.store.privacy();
        let resource = format!("{user}/usageEvents");
        let mut event = call.event(privacy, &resource, &key, &[], AuditOutcome::Ok);
        event.detail = call.detail(&format!("{n} usage events"));
        privacy.audit.record(event).await?;
        Ok(vec![Self::record(user, tenant)])
    }

    /// Every usage event of the user, as one exported record.
    pub async fn export(
        &self,
        call: &Call,
        user: &str,
    ) -> Result<Vec<ExportSubjectDataResponse>, ApiError> {
        let Some(tenant) = user_tenant(user) else {
            return Ok(Vec::new());
        };
        if !call.sees_tenant(tenant) {
            return Ok(Vec::new());
        }
        let rows = self.rows(user, i64::MIN, i64::MAX, 0, i64::MAX).await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        // Audited before anything is sent, as ListUsageEvents is.
        let privacy = self.store.privacy();
        let key = self.store.lookup_key(Lookup::User, user);
        let resource = format!("{user}/usageEvents");
        let mut event = call.event(
            privacy,
            &resource,
            &key,
            &["usage_events"],
            AuditOutcome::Ok,
        );
        event.detail = call.detail(&format!("{} usage events", rows.len()));
        privacy.audit.record(event).await?;
        let text = |s: String| Value {
            kind: Some(Kind::StringValue(s)),
        };
        let events: Vec<Value> = rows
            .iter()
            .map(|r| {
                let mut fields = BTreeMap::new();
                fields.insert("time".to_owned(), text(format!("{}", to_timestamp(r.time))));
                fields.insert("action".to_owned(), text(r.action.clone()));
                fields.insert("path".to_owned(), text(r.path.clone()));
                Value {
                    kind: Some(Kind::StructValue(Struct { fields })),
                }
            })
            .collect();
        let mut data = BTreeMap::new();
        data.insert(
            "usage_events".to_owned(),
            Value {
                kind: Some(Kind::ListValue(prost_types::ListValue { values: events })),
            },
        );
        Ok(vec![ExportSubjectDataResponse {
            record: Some(Self::record(user, tenant)),
            data: Some(Struct { fields: data }),
            create_time: rows.first().map(|r| to_timestamp(r.time)),
            update_time: rows.last().map(|r| to_timestamp(r.time)),
        }])
    }

    /// Deletes the user's usage events, audited.
    pub async fn erase(&self, call: &Call, user: &str) -> Result<Vec<SubjectRecord>, ApiError> {
        let Some(tenant) = user_tenant(user) else {
            return Ok(Vec::new());
        };
        if !call.sees_tenant(tenant) {
            return Ok(Vec::new());
        }
        let key = self.store.lookup_key(Lookup::User, user);
        let privacy = self.store.privacy();
        let mut tx = self.store.db().pool().begin().await?;
        let deleted = sqlx::query("DELETE FROM analytics_usage WHERE user_key = $1")
            .bind(&key)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Ok(Vec::new());
        }
        let resource = format!("{user}/usageEvents");
        let mut event = call.event(privacy, &resource, &key, &[], AuditOutcome::Ok);
        event.detail = call.detail(&format!("{deleted} usage events"));
        privacy.audit.commit(tx, &[event]).await?;
        Ok(vec![Self::record(user, tenant)])
    }
}

#[tonic::async_trait]
impl UsageService for Usage {
    async fn list_usage_events(
        &self,
        request: Request<ListUsageEventsRequest>,
    ) -> Result<Response<ListUsageEventsResponse>, Status> {
        let call = Call::of(&request)?;
        let request = request.into_inner();
        let Some(tenant) = user_tenant(&request.user) else {
            return Err(
                ApiError::invalid("user", "must be \"tenants/{tenant}/users/{user}\"").into(),
            );
        };
        if !call.sees_tenant(tenant) {
            return Err(self
                .store
                .privacy()
                .not_found(&call.access, &request.user)
                .await);
        }
        let micros = |t: &Option<prost_types::Timestamp>| {
            t.as_ref()
                .map(|t| t.seconds.saturating_mul(1_000_000) + i64::from(t.nanos / 1000))
        };
        let from = micros(&request.start_time).unwrap_or(i64::MIN);
        let to = micros(&request.end_time).unwrap_or(i64::MAX);
        let page = Page::parse(request.page_size, &request.page_token, &request.user)?;
        let offset: i64 = match &page.after {
            Some(after) => after
                .parse()
                .map_err(|_| ApiError::invalid("page_token", "not a token from this query"))?,
            None => 0,
        };
        let rows = self
            .rows(&request.user, from, to, offset, page.fetch_limit())
            .await?;
        let more = rows.len() as i64 > page.size;
        let rows: Vec<Row> = rows.into_iter().take(page.size as usize).collect();
        // One audit event for the page, naming how many events were read:
        // durable before anything is answered.
        let key = self.store.lookup_key(Lookup::User, &request.user);
        let mut event = self.store.privacy().event(
            &call.access,
            &format!("{}/usageEvents", request.user),
            &key,
            &["usage_events"],
            AuditOutcome::Ok,
        );
        event.detail = format!("{} usage events", rows.len());
        self.store.privacy().audit.record(event).await?;
        let next_page_token = if more {
            page.token_after(&(offset + page.size).to_string())
        } else {
            String::new()
        };
        Ok(Response::new(ListUsageEventsResponse {
            events: rows
                .into_iter()
                .map(|r| UsageEvent {
                    tenant: format!("tenants/{tenant}"),
                    user: request.user.clone(),
                    action: r.action,
                    path: r.path,
                    time: Some(to_timestamp(r.time)),
                    event_id: r.event_id.unwrap_or_default(),
                })
                .collect(),
            next_page_token,
        }))
    }
}
