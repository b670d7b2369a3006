//! `custodian.identity.v1.TenantService`: customer organisations and the
//! retention each sets for the data held on its behalf. A tenant is an
//! organisation, not a person: its row is plain, in identity's own table.
//! Who may call what is decided by the stack; a caller limited to a tenant
//! sees only its own, as if no other existed.

use custodian_kit::{Call, Idempotency, Store};
use custodian_privacy::{normalize, retention};
use custodian_proto::{
    audit::v1::AuditOutcome,
    identity::v1::{
        CreateTenantRequest, DeleteTenantRequest, GetTenantRequest, ListTenantsRequest,
        ListTenantsResponse, RetentionRule, Tenant, UpdateTenantRequest,
        tenant_service_server::TenantService,
    },
    privacy::v1::DataCategory,
};
use custodian_runtime::{ApiError, error::Violations, paging::Page, time::to_timestamp};
use serde::{Deserialize, Serialize};
use sqlx::{Row as _, any::AnyRow};
use tonic::{Request, Response, Status};

const MIN_RETENTION_SECONDS: i64 = 24 * 60 * 60;
const MAX_NAME_CHARS: usize = 200;

/// A tenant row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRow {
    pub id: String,
    pub display_name: String,
    /// JSON of the tenant's retention rules.
    pub retention: String,
    pub create_time: i64,
    pub update_time: i64,
}

pub struct Tenants {
    store: Store,
}

/// A retention rule as stored in the tenant row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRule {
    pub category: i32,
    pub seconds: i64,
}

/// The tenant's rules, from the stored JSON.
pub fn stored_rules(json: &str) -> Vec<StoredRule> {
    serde_json::from_str(json).unwrap_or_default()
}

fn from_row(row: &AnyRow) -> Result<TenantRow, ApiError> {
    Ok(TenantRow {
        id: row.try_get("id")?,
        display_name: row.try_get("display_name")?,
        retention: row.try_get("retention")?,
        create_time: row.try_get("create_time")?,
        update_time: row.try_get("update_time")?,
    })
}

fn to_proto(row: TenantRow) -> Tenant {
    Tenant {
        name: format!("tenants/{}", row.id),
        display_name: row.display_name,
        create_time: Some(to_timestamp(row.create_time)),
        update_time: Some(to_timestamp(row.update_time)),
        retention_rules: stored_rules(&row.retention)
            .into_iter()
            .map(|r| RetentionRule {
                data_category: r.category,
                retain_for: Some(prost_types::Duration {
                    seconds: r.seconds,
                    nanos: 0,
                }),
            })
            .collect(),
    }
}

/// "tenants/{tenant}" to its id; the stack has checked the form.
fn tenant_id(name: &str, field: &str) -> Result<String, ApiError> {
    custodian_kit::pattern::tenant_id(name)
        .map(str::to_owned)
        .ok_or_else(|| ApiError::invalid(field, "must have the form tenants/{tenant}"))
}

/// Whether `tenants/{id}` exists.
pub async fn exists(store: &Store, id: &str) -> Result<bool, ApiError> {
    Ok(get(store, id).await?.is_some())
}

async fn get(store: &Store, id: &str) -> Result<Option<TenantRow>, ApiError> {
    let row = sqlx::query(
        "SELECT id, display_name, retention, create_time, update_time FROM identity_tenants WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(store.db().pool())
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// Every tenant with rules of its own, for the retention policy.
pub async fn with_rules(store: &Store) -> Result<Vec<(String, Vec<StoredRule>)>, ApiError> {
    let rows = sqlx::query(
        "SELECT id, retention FROM identity_tenants WHERE retention <> '[]' ORDER BY id",
    )
    .fetch_all(store.db().pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("id")?,
                stored_rules(&r.try_get::<String, _>("retention")?),
            ))
        })
        .collect()
}

/// A display name is an organisation's name, but free text all the same,
/// so it passes the sensitive-data guard too.
fn check_display_name(v: &mut Violations, raw: &str, field: &str) -> String {
    let name = v
        .check(field, normalize::single_line(raw, MAX_NAME_CHARS))
        .unwrap_or_default();
    if name.is_empty() && v.is_empty() {
        v.add(field, "is required");
    }
    if let Err(found) = custodian_privacy::check(&name) {
        v.add(
            field,
            format!(
                "contains {} ({}); sensitive personal information must not be sent",
                found.kind.with_article(),
                found.kind.as_str()
            ),
        );
    }
    name
}

/// Checks retention rules: categories held for tenants, at least a day,
/// each category once.
fn check_rules(v: &mut Violations, rules: &[RetentionRule]) -> String {
    let mut stored: Vec<StoredRule> = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let field = format!("tenant.retention_rules[{i}]");
        let category =
            DataCategory::try_from(rule.data_category).unwrap_or(DataCategory::Unspecified);
        if !retention::tenant_may_set(category) {
            v.add(
                format!("{field}.data_category"),
                "is not a category held on a tenant's behalf",
            );
        }
        let seconds = rule.retain_for.map_or(0, |d| d.seconds);
        if seconds < MIN_RETENTION_SECONDS {
            v.add(format!("{field}.retain_for"), "must be at least one day");
        }
        if stored.iter().any(|r| r.category == rule.data_category) {
            v.add(format!("{field}.data_category"), "appears twice");
        }
        stored.push(StoredRule {
            category: rule.data_category,
            seconds,
        });
    }
    serde_json::to_string(&stored).unwrap_or_else(|_| "[]".to_owned())
}

impl Tenants {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// The tenant, if the caller may see it; a tenant it may not see is
    /// answered (and audited) as missing.
    async fn visible(&self, call: &Call, id: &str) -> Result<TenantRow, Status> {
        if call.sees_tenant(id)
            && let Some(row) = get(&self.store, id).await?
        {
            return Ok(row);
        }
        Err(self
            .store
            .privacy()
            .not_found(&call.access, &format!("tenants/{id}"))
            .await)
    }
}

#[tonic::async_trait]
impl TenantService for Tenants {
    async fn create_tenant(
        &self,
        request: Request<CreateTenantRequest>,
    ) -> Result<Response<Tenant>, Status> {
        Call::of(&request)?;
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let idem = Idempotency::of("CreateTenant", "", &request_id, &req)?;
        let tenant = req.tenant.unwrap_or_default();
        let mut v = Violations::new();
        let display_name = check_display_name(&mut v, &tenant.display_name, "tenant.display_name");
        let retention = check_rules(&mut v, &tenant.retention_rules);
        if !req.tenant_id.is_empty() {
            v.check("tenant_id", normalize::tenant_id(&req.tenant_id));
        }
        v.finish()?;
        if let Some(idem) = &idem
            && let Some(name) = self.store.replayed(idem).await?
        {
            let id = tenant_id(&name, "request_id")?;
            return match get(&self.store, &id).await? {
                Some(row) => Ok(Response::new(to_proto(row))),
                None => Err(ApiError::FailedPrecondition(format!(
                    "request_id was used to create {name}, which has since been deleted"
                ))
                .into()),
            };
        }
        let id = if req.tenant_id.is_empty() {
            uuid::Uuid::now_v7().to_string()
        } else {
            req.tenant_id
        };
        let now = self.store.now();
        let row = TenantRow {
            id,
            display_name,
            retention,
            create_time: now,
            update_time: now,
        };
        let name = format!("tenants/{}", row.id);
        let mut tx = self
            .store
            .db()
            .pool()
            .begin()
            .await
            .map_err(ApiError::from)?;
        let inserted = sqlx::query(
            "INSERT INTO identity_tenants (id, display_name, retention, create_time, update_time) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&row.id)
        .bind(&row.display_name)
        .bind(&row.retention)
        .bind(row.create_time)
        .bind(row.update_time)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(err) if custodian_runtime::database::is_unique_violation(&err) => {
                return Err(ApiError::AlreadyExists(format!("{name} already exists")).into());
            }
            Err(err) => return Err(ApiError::from(err).into()),
        }
        if let Some(idem) = &idem
            && !self.store.remember(&mut tx, idem, &name).await?
        {
            drop(tx);
            // A concurrent call with the same key won: answer with its tenant.
            let name = self.store.replayed(idem).await?.ok_or_else(|| {
                ApiError::internal(std::io::Error::other("idempotency key vanished"))
            })?;
            let id = tenant_id(&name, "request_id")?;
            let row = get(&self.store, &id)
                .await?
                .ok_or_else(|| ApiError::not_found(name))?;
            return Ok(Response::new(to_proto(row)));
        }
        tx.commit().await.map_err(ApiError::from)?;
        Ok(Response::new(to_proto(row)))
    }

    async fn get_tenant(
        &self,
        request: Request<GetTenantRequest>,
    ) -> Result<Response<Tenant>, Status> {
        let call = Call::of(&request)?;
        let id = tenant_id(&request.get_ref().name, "name")?;
        Ok(Response::new(to_proto(self.visible(&call, &id).await?)))
    }

    async fn list_tenants(
        &self,
        request: Request<ListTenantsRequest>,
    ) -> Result<Response<ListTenantsResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let page = Page::parse(req.page_size, &req.page_token, "tenants")?;
        let rows = sqlx::query(
            "SELECT id, display_name, retention, create_time, update_time FROM identity_tenants \
             WHERE id > $1 AND ($2 = '' OR id = $2) ORDER BY id LIMIT $3",
        )
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(call.tenant_limit().unwrap_or(""))
        .bind(page.fetch_limit())
        .fetch_all(self.store.db().pool())
        .await
        .map_err(ApiError::from)?;
        let rows = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
        let (rows, next_page_token) = page.finish(rows, |r| r.id.as_str());
        Ok(Response::new(ListTenantsResponse {
            tenants: rows.into_iter().map(to_proto).collect(),
            next_page_token,
        }))
    }

    async fn update_tenant(
        &self,
        request: Request<UpdateTenantRequest>,
    ) -> Result<Response<Tenant>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant = req.tenant.unwrap_or_default();
        let id = tenant_id(&tenant.name, "tenant.name")?;
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let mut v = Violations::new();
        if paths.is_empty() {
            v.add("update_mask", "must name at least one field");
        }
        for (i, path) in paths.iter().enumerate() {
            if path != "display_name" && path != "retention_rules" {
                v.add(
                    "update_mask",
                    format!(
                        "paths[{i}] is not updatable; updatable: display_name, retention_rules"
                    ),
                );
            }
        }
        let wants = |p: &str| paths.iter().any(|x| x == p);
        let display_name = wants("display_name")
            .then(|| check_display_name(&mut v, &tenant.display_name, "tenant.display_name"));
        let retention =
            wants("retention_rules").then(|| check_rules(&mut v, &tenant.retention_rules));
        v.finish()?;
        self.visible(&call, &id).await?;
        let row = sqlx::query(
            // A later time than the last write, even if the clock has not moved.
            "UPDATE identity_tenants SET display_name = COALESCE($1, display_name), \
             retention = COALESCE($2, retention), \
             update_time = CASE WHEN $3 > update_time THEN $3 ELSE update_time + 1 END WHERE id = $4 \
             RETURNING id, display_name, retention, create_time, update_time",
        )
        .bind(display_name)
        .bind(retention)
        .bind(self.store.now())
        .bind(&id)
        .fetch_optional(self.store.db().pool())
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::not_found(format!("tenants/{id}")))?;
        Ok(Response::new(to_proto(from_row(&row)?)))
    }

    /// Without `force`, only a tenant that holds no person record goes:
    /// deleting personal data should never be a side effect. With it, the
    /// tenant's records go too, each audited, their keys destroyed when
    /// nothing else needs them.
    async fn delete_tenant(
        &self,
        request: Request<DeleteTenantRequest>,
    ) -> Result<Response<()>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let id = tenant_id(&req.name, "name")?;
        self.visible(&call, &id).await?;
        if !req.force {
            let deleted = sqlx::query(
                "DELETE FROM identity_tenants WHERE id = $1 \
                 AND NOT EXISTS (SELECT 1 FROM identity_users WHERE tenant_id = $1) \
                 AND NOT EXISTS (SELECT 1 FROM identity_contacts WHERE tenant_id = $1) \
                 AND NOT EXISTS (SELECT 1 FROM identity_monitoring_grants WHERE tenant_id = $1)",
            )
            .bind(&id)
            .execute(self.store.db().pool())
            .await
            .map_err(ApiError::from)?;
            if deleted.rows_affected() == 0 {
                if !exists(&self.store, &id).await? {
                    return Err(ApiError::not_found(format!("tenants/{id}")).into());
                }
                return Err(ApiError::FailedPrecondition(format!(
                    "tenants/{id} still has authorized users, contacts or monitoring grants; delete the users and contacts first, or set force (which also removes its grants)"
                ))
                .into());
            }
            return Ok(Response::new(()));
        }
        let template = self
            .store
            .privacy()
            .event(&call.access, "", "", &[], AuditOutcome::Ok);
        let store = self.store.clone();
        self.store
            .in_tx(move |tx| {
                Box::pin(async move {
                    let events = store.purge_tenant(tx, &id, &template).await?;
                    let deleted = sqlx::query("DELETE FROM identity_tenants WHERE id = $1")
                        .bind(&id)
                        .execute(&mut **tx)
                        .await?;
                    if deleted.rows_affected() == 0 {
                        return Err(ApiError::not_found(format!("tenants/{id}")));
                    }
                    store.privacy().audit.stage_in_tx(tx, &events).await?;
                    Ok(())
                })
            })
            .await?;
        Ok(Response::new(()))
    }
}
