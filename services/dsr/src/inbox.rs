//! `custodian.dsr.v1.TenantInboxService`: what a customer sees of the
//! requests about data it controls, and its instruction. Items hold record
//! references, never values; a caller limited to a tenant sees only that
//! tenant's items, and another tenant's item looks missing.

use std::sync::Arc;

use custodian_kit::Call;
use custodian_proto::{
    audit::v1::AuditOutcome,
    dsr::v1::{
        AcknowledgeInboxItemRequest, GetInboxItemRequest, InboxItem, InstructInboxItemRequest,
        ListInboxItemsRequest, ListInboxItemsResponse, ListOverdueTenantsRequest,
        ListOverdueTenantsResponse, OverdueTenant,
        inbox_item::{Instruction, State},
        request,
        tenant_inbox_service_server::TenantInboxService,
    },
};
use custodian_runtime::{ApiError, paging::Page, time::to_timestamp};
use sqlx::{Row as _, any::AnyRow};
use tonic::{Response, Status};

use crate::{Core, flow};

#[derive(Clone)]
pub struct Inbox {
    core: Arc<Core>,
}

impl Inbox {
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }
}

const COLUMNS: &str = "id, tenant_id, request_id, kind, records, state, reason, due_time, \
     create_time, update_time, reminders, escalate_time";

fn item(row: &AnyRow) -> Result<InboxItem, ApiError> {
    let tenant_id: String = row.try_get("tenant_id")?;
    let id: String = row.try_get("id")?;
    let records: Vec<flow::Located> =
        serde_json::from_str(&row.try_get::<String, _>("records")?).map_err(ApiError::internal)?;
    Ok(InboxItem {
        name: format!("tenants/{tenant_id}/inboxItems/{id}"),
        request: flow::request_name(&row.try_get::<String, _>("request_id")?),
        kind: row.try_get("kind")?,
        records: records.iter().map(flow::Located::reference).collect(),
        state: row.try_get::<i64, _>("state")? as i32,
        reason: row.try_get("reason")?,
        due_time: row.try_get::<Option<i64>, _>("due_time")?.map(to_timestamp),
        create_time: Some(to_timestamp(row.try_get("create_time")?)),
        update_time: Some(to_timestamp(row.try_get("update_time")?)),
        reminders: row.try_get::<i64, _>("reminders")? as i32,
        escalate_time: row
            .try_get::<Option<i64>, _>("escalate_time")?
            .map(to_timestamp),
    })
}

fn reason_context(request_id: &str, tenant_id: &str) -> String {
    format!("dsr_inbox.reason:{request_id}:{tenant_id}")
}

/// Seals a customer's decline reason: its words about a person, kept under
/// the request's key like the request itself (erasing it shreds them).
pub async fn seal_reason(
    core: &Core,
    subject_id: &str,
    request_id: &str,
    tenant_id: &str,
    reason: &str,
) -> Result<String, ApiError> {
    if reason.is_empty() {
        return Ok(String::new());
    }
    core.store
        .seal_beside(
            subject_id,
            reason.as_bytes(),
            &reason_context(request_id, tenant_id),
        )
        .await
}

/// Opens a sealed decline reason; empty once the request's key is gone.
pub async fn open_reason(
    core: &Core,
    subject_id: &str,
    request_id: &str,
    tenant_id: &str,
    sealed: &str,
) -> Result<String, ApiError> {
    if sealed.is_empty() {
        return Ok(String::new());
    }
    let plain = core
        .store
        .open_beside(subject_id, sealed, &reason_context(request_id, tenant_id))
        .await?;
    Ok(plain
        .map(|p| String::from_utf8_lossy(&p).into_owned())
        .unwrap_or_default())
}

/// A decline reason opened, for readers that hold only the request's id.
pub async fn reason_of(
    core: &Core,
    request_id: &str,
    tenant_id: &str,
    sealed: &str,
) -> Result<String, Status> {
    if sealed.is_empty() {
        return Ok(String::new());
    }
    let request = flow::load(core, request_id).await?;
    Ok(open_reason(core, &request.subject_id, request_id, tenant_id, sealed).await?)
}

/// An item as its reader sees it: the reason opened.
async fn opened(core: &Core, mut item: InboxItem) -> Result<InboxItem, Status> {
    if !item.reason.is_empty() {
        let (tenant, _) = parse(&item.name)?;
        item.reason = reason_of(core, &request_id_of(&item), &tenant, &item.reason).await?;
    }
    Ok(item)
}

/// "tenants/{tenant}/inboxItems/{item}" → (tenant, item).
fn parse(name: &str) -> Result<(String, String), ApiError> {
    let bad = || ApiError::invalid("name", "must be tenants/{tenant}/inboxItems/{item}");
    let parts: Vec<&str> = name.split('/').collect();
    match parts.as_slice() {
        ["tenants", tenant, "inboxItems", id] if !tenant.is_empty() && !id.is_empty() => {
            uuid::Uuid::parse_str(id).map_err(|_| bad())?;
            Ok(((*tenant).to_owned(), (*id).to_owned()))
        }
        _ => Err(bad()),
    }
}

impl Inbox {
    async fn audit(&self, call: &Call, names: &[String]) -> Result<(), ApiError> {
        let privacy = &self.core.context.privacy;
        let events = names
            .iter()
            .map(|n| privacy.event(&call.access, n, "", &[], AuditOutcome::Ok))
            .collect();
        privacy.record_all(events).await
    }

    /// The item, if the caller may see it; else NOT_FOUND, audited.
    async fn find(&self, call: &Call, name: &str) -> Result<InboxItem, Status> {
        let (tenant, id) = parse(name)?;
        let row = if call.sees_tenant(&tenant) {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM dsr_inbox WHERE id = $1 AND tenant_id = $2"
            )))
            .bind(&id)
            .bind(&tenant)
            .fetch_optional(self.core.context.db.pool())
            .await
            .map_err(ApiError::from)?
        } else {
            None
        };
        match row {
            Some(row) => opened(&self.core, item(&row)?).await,
            None => Err(self
                .core
                .context
                .privacy
                .not_found(&call.access, name)
                .await),
        }
    }

    /// Moves an item from one of `from` to `to`; false when someone else
    /// moved it first.
    async fn transition(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        id: &str,
        from: &[State],
        to: State,
        reason: &str,
    ) -> Result<bool, ApiError> {
        let mut sql = "UPDATE dsr_inbox SET state = $1, reason = $2, update_time = $3 WHERE id = $4 AND state IN (".to_owned();
        sql.push_str(
            &(0..from.len())
                .map(|i| format!("${}", i + 5))
                .collect::<Vec<_>>()
                .join(", "),
        );
        sql.push(')');
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(to as i64)
            .bind(reason.to_owned())
            .bind(self.core.now())
            .bind(id.to_owned());
        for state in from {
            query = query.bind(*state as i64);
        }
        let moved = query.execute(&mut **tx).await?;
        Ok(moved.rows_affected() == 1)
    }
}

fn request_id_of(item: &InboxItem) -> String {
    item.request
        .strip_prefix("requests/")
        .unwrap_or_default()
        .to_owned()
}

#[tonic::async_trait]
impl TenantInboxService for Inbox {
    async fn list_inbox_items(
        &self,
        request: tonic::Request<ListInboxItemsRequest>,
    ) -> Result<Response<ListInboxItemsResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant = req
            .parent
            .strip_prefix("tenants/")
            .filter(|t| !t.is_empty() && !t.contains('/'))
            .ok_or_else(|| ApiError::invalid("parent", "must be tenants/{tenant}"))?
            .to_owned();
        if !call.sees_tenant(&tenant) {
            return Err(self
                .core
                .context
                .privacy
                .not_found(&call.access, &req.parent)
                .await);
        }
        let page = Page::parse(
            req.page_size,
            &req.page_token,
            &format!("inbox|{tenant}|{}", req.state),
        )?;
        // Newest first: ids are UUIDv7, so they sort by time.
        let mut sql = format!(
            "SELECT {COLUMNS} FROM dsr_inbox WHERE tenant_id = $1 AND ($2 = '' OR id < $2)"
        );
        if req.state != 0 {
            sql.push_str(" AND state = $4");
        }
        sql.push_str(" ORDER BY id DESC LIMIT $3");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(page.after.clone().unwrap_or_default())
            .bind(page.fetch_limit());
        if req.state != 0 {
            query = query.bind(i64::from(req.state));
        }
        let rows = query
            .fetch_all(self.core.context.db.pool())
            .await
            .map_err(ApiError::from)?;
        let mut items = Vec::with_capacity(rows.len());
        for row in &rows {
            items.push(opened(&self.core, item(row)?).await?);
        }
        let (items, next_page_token) =
            page.finish(items, |i| i.name.rsplit('/').next().unwrap_or_default());
        let names: Vec<String> = items.iter().map(|i| i.name.clone()).collect();
        self.audit(&call, &names).await?;
        Ok(Response::new(ListInboxItemsResponse {
            items,
            next_page_token,
        }))
    }

    async fn list_overdue_tenants(
        &self,
        request: tonic::Request<ListOverdueTenantsRequest>,
    ) -> Result<Response<ListOverdueTenantsResponse>, Status> {
        let _call = Call::of(&request)?;
        // Company-wide (the method's scope keeps tenant callers out); counts
        // and customers' names, no person's data.
        let rows = sqlx::query(
            "SELECT tenant_id, MAX(tenant_name) AS tenant_name, COUNT(*) AS n, \
             MIN(due_time) AS oldest, CAST(SUM(reminders) AS BIGINT) AS reminders FROM dsr_inbox \
             WHERE state IN ($1, $2) AND due_time IS NOT NULL AND due_time < $3 \
             GROUP BY tenant_id ORDER BY MIN(due_time), tenant_id",
        )
        .bind(State::Pending as i64)
        .bind(State::Acknowledged as i64)
        .bind(self.core.now())
        .fetch_all(self.core.context.db.pool())
        .await
        .map_err(ApiError::from)?;
        let tenants = rows
            .iter()
            .map(|row| {
                Ok(OverdueTenant {
                    tenant: format!("tenants/{}", row.try_get::<String, _>("tenant_id")?),
                    display_name: row
                        .try_get::<Option<String>, _>("tenant_name")?
                        .unwrap_or_default(),
                    overdue_items: row.try_get::<i64, _>("n")? as i32,
                    oldest_due_time: Some(to_timestamp(row.try_get("oldest")?)),
                    reminders: row.try_get::<i64, _>("reminders")? as i32,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(ApiError::from)?;
        Ok(Response::new(ListOverdueTenantsResponse { tenants }))
    }

    async fn get_inbox_item(
        &self,
        request: tonic::Request<GetInboxItemRequest>,
    ) -> Result<Response<InboxItem>, Status> {
        let call = Call::of(&request)?;
        let item = self.find(&call, &request.get_ref().name).await?;
        self.audit(&call, std::slice::from_ref(&item.name)).await?;
        Ok(Response::new(item))
    }

    async fn acknowledge_inbox_item(
        &self,
        request: tonic::Request<AcknowledgeInboxItemRequest>,
    ) -> Result<Response<InboxItem>, Status> {
        let call = Call::of(&request)?;
        let item = self.find(&call, &request.get_ref().name).await?;
        let (tenant, id) = parse(&item.name)?;
        // The item's state and the request's history, in one transaction.
        let mut tx = self
            .core
            .context
            .db
            .pool()
            .begin()
            .await
            .map_err(ApiError::from)?;
        if self
            .transition(&mut tx, &id, &[State::Pending], State::Acknowledged, "")
            .await?
        {
            flow::insert_event(
                &mut *tx,
                &self.core,
                &request_id_of(&item),
                "tenant_acknowledged",
                &format!("tenants/{tenant}"),
                "",
            )
            .await?;
        }
        tx.commit().await.map_err(ApiError::from)?;
        self.audit(&call, std::slice::from_ref(&item.name)).await?;
        Ok(Response::new(self.find(&call, &item.name).await?))
    }

    async fn instruct_inbox_item(
        &self,
        request: tonic::Request<InstructInboxItemRequest>,
    ) -> Result<Response<InboxItem>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let instruction = Instruction::try_from(req.instruction).unwrap_or_default();
        let reason = req.reason.trim().to_owned();
        match instruction {
            Instruction::Unspecified => {
                return Err(ApiError::invalid("instruction", "must be FULFIL or DECLINE").into());
            }
            Instruction::Decline if reason.is_empty() => {
                return Err(ApiError::invalid(
                    "reason",
                    "is required to decline: the requester is told why",
                )
                .into());
            }
            Instruction::Fulfil if !reason.is_empty() => {
                return Err(ApiError::invalid("reason", "is only given to decline").into());
            }
            _ => {}
        }
        let item = self.find(&call, &req.name).await?;
        let state = State::try_from(item.state).unwrap_or_default();
        let same = matches!(
            (instruction, state),
            (Instruction::Fulfil, State::Fulfilling | State::Fulfilled)
                | (Instruction::Decline, State::Declined)
        );
        if same {
            return Ok(Response::new(item));
        }
        if !matches!(state, State::Pending | State::Acknowledged) {
            return Err(Status::failed_precondition(
                "the item has been decided already (or its request was cancelled)",
            ));
        }
        let (tenant, id) = parse(&item.name)?;
        let scope = format!("tenants/{tenant}");
        let request_id = request_id_of(&item);
        let core = &self.core;
        let stored = flow::load(core, &request_id).await?;
        let kind = request::Kind::try_from(stored.message.kind).unwrap_or_default();
        let sealed = seal_reason(core, &stored.subject_id, &request_id, &tenant, &reason).await?;
        let pool = core.context.db.pool();
        let mut tx = pool.begin().await.map_err(ApiError::from)?;
        let (to, event) = match instruction {
            Instruction::Fulfil => (State::Fulfilling, "tenant_fulfil"),
            _ => (State::Declined, "tenant_declined"),
        };
        let moved = sqlx::query(
            "UPDATE dsr_inbox SET state = $1, reason = $2, update_time = $3 WHERE id = $4 \
             AND state IN ($5, $6)",
        )
        .bind(to as i64)
        .bind(&sealed)
        .bind(core.now())
        .bind(&id)
        .bind(State::Pending as i64)
        .bind(State::Acknowledged as i64)
        .execute(&mut *tx)
        .await
        .map_err(ApiError::from)?;
        if moved.rows_affected() == 1 {
            match instruction {
                Instruction::Fulfil if flow::acts(kind) => {
                    let services: std::collections::BTreeSet<String> = item
                        .records
                        .iter()
                        .map(|r| r.service.split('.').nth(1).unwrap_or_default().to_owned())
                        .collect();
                    for service in services {
                        flow::insert_step(&mut *tx, &request_id, flow::ACT, &service, &scope)
                            .await?;
                    }
                }
                Instruction::Fulfil => {}
                _ => {
                    flow::insert_step(&mut *tx, &request_id, flow::MAIL, "declined", &scope)
                        .await?;
                }
            }
            flow::insert_event(&mut *tx, core, &request_id, event, &scope, "").await?;
        }
        tx.commit().await.map_err(ApiError::from)?;
        self.audit(&call, std::slice::from_ref(&item.name)).await?;
        flow::advance(core, &request_id).await?;
        core.wake.notify_one();
        Ok(Response::new(self.find(&call, &item.name).await?))
    }
}
