//! `custodian.identity.v1.TenantService`: customer organisations, and the
//! retention each sets for the data held on its behalf.

use custodian_privacy::{Access, retention};
use custodian_proto::{
    audit::v1::AuditOutcome,
    common::v1::DataCategory,
    identity::v1::{
        CreateTenantRequest, DeleteTenantRequest, GetTenantRequest, ListTenantsRequest,
        ListTenantsResponse, RetentionRule, Tenant, UpdateTenantRequest,
        tenant_service_server::TenantService,
    },
};
use custodian_runtime::{
    ApiError,
    error::Violations,
    paging::Page,
    time::{now_micros, to_timestamp},
};
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use crate::{
    access::*,
    model::parse_tenant_name,
    records::{idempotency, request_hash},
    store::{Created, Store, TenantRow},
    validate,
};

const MIN_RETENTION_SECONDS: i64 = 24 * 60 * 60;

pub struct Tenants {
    store: Store,
}

impl Tenants {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// A tenant the caller may not see is answered as missing.
    async fn visible(&self, access: &Access, id: &str) -> Result<(), Status> {
        if access.sees_tenant(id) {
            Ok(())
        } else {
            Err(self
                .store
                .privacy()
                .not_found(access, &format!("tenants/{id}"))
                .await)
        }
    }
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

fn tenant_id(name: &str, field: &str) -> Result<String, ApiError> {
    parse_tenant_name(name)
        .map(str::to_owned)
        .ok_or_else(|| ApiError::invalid(field, "must have the form tenants/{tenant}"))
}

/// A display name is an organisation's name, but it is free text all the
/// same, so it passes the sensitive-data guard too.
fn check_display_name(v: &mut Violations, raw: &str, field: &str) -> String {
    let name = v
        .check(field, validate::bounded(raw, validate::MAX_NAME_CHARS))
        .unwrap_or_default();
    if name.is_empty() && v.is_empty() {
        v.add(field, "is required");
    }
    if let Err(found) = custodian_privacy::check(&name) {
        v.add(
            field,
            format!(
                "contains a {} ({}); sensitive personal information must not be sent",
                found.kind,
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

#[tonic::async_trait]
impl TenantService for Tenants {
    async fn create_tenant(
        &self,
        request: Request<CreateTenantRequest>,
    ) -> Result<Response<Tenant>, Status> {
        let access = self
            .store
            .privacy()
            .authorize(&request, CREATE_TENANT)
            .await?;
        if access.tenant_limit().is_some() {
            return Err(Status::permission_denied(
                "a token limited to a tenant cannot create tenants",
            ));
        }
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let hash = request_hash(&req);
        let tenant = req.tenant.unwrap_or_default();
        let mut v = Violations::new();
        let display_name = check_display_name(&mut v, &tenant.display_name, "tenant.display_name");
        let retention = check_rules(&mut v, &tenant.retention_rules);
        if !req.tenant_id.is_empty() {
            v.check("tenant_id", validate::tenant_id(&req.tenant_id));
        }
        v.finish()?;
        let idem = idempotency("CreateTenant", "", &request_id, hash)?;
        let id = if req.tenant_id.is_empty() {
            uuid::Uuid::now_v7().to_string()
        } else {
            req.tenant_id
        };
        let now = now_micros();
        let row = TenantRow {
            id,
            display_name,
            retention,
            create_time: now,
            update_time: now,
        };
        let row = match self.store.create_tenant(row, idem.as_ref()).await? {
            Created::New(row) => row,
            Created::Replayed(name) => {
                let id = tenant_id(&name, "name")?;
                self.store.get_tenant(&id).await.map_err(|_| {
                    ApiError::FailedPrecondition(format!(
                        "request_id was used to create {name}, which has since been deleted"
                    ))
                })?
            }
        };
        Ok(Response::new(to_proto(row)))
    }

    async fn get_tenant(
        &self,
        request: Request<GetTenantRequest>,
    ) -> Result<Response<Tenant>, Status> {
        let access = self.store.privacy().authorize(&request, GET_TENANT).await?;
        let id = tenant_id(&request.get_ref().name, "name")?;
        self.visible(&access, &id).await?;
        Ok(Response::new(to_proto(self.store.get_tenant(&id).await?)))
    }

    async fn list_tenants(
        &self,
        request: Request<ListTenantsRequest>,
    ) -> Result<Response<ListTenantsResponse>, Status> {
        let access = self
            .store
            .privacy()
            .authorize(&request, LIST_TENANTS)
            .await?;
        let req = request.into_inner();
        let page = Page::parse(req.page_size, &req.page_token, "tenants")?;
        let rows = self
            .store
            .list_tenants(&page, access.tenant_limit())
            .await?;
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
        let access = self
            .store
            .privacy()
            .authorize(&request, UPDATE_TENANT)
            .await?;
        let req = request.into_inner();
        let tenant = req.tenant.unwrap_or_default();
        let id = tenant_id(&tenant.name, "tenant.name")?;
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let mut v = Violations::new();
        if paths.is_empty() {
            v.add("update_mask", "must name at least one field");
        }
        for path in &paths {
            if path != "display_name" && path != "retention_rules" {
                v.add(
                    "update_mask",
                    format!("{path:?} is not updatable; updatable: display_name, retention_rules"),
                );
            }
        }
        let wants = |p: &str| paths.iter().any(|x| x == p);
        let display_name = wants("display_name")
            .then(|| check_display_name(&mut v, &tenant.display_name, "tenant.display_name"));
        let retention =
            wants("retention_rules").then(|| check_rules(&mut v, &tenant.retention_rules));
        v.finish()?;
        self.visible(&access, &id).await?;
        let row = self
            .store
            .update_tenant(&id, display_name.as_deref(), retention.as_deref())
            .await?;
        Ok(Response::new(to_proto(row)))
    }

    async fn delete_tenant(
        &self,
        request: Request<DeleteTenantRequest>,
    ) -> Result<Response<()>, Status> {
        let access = self
            .store
            .privacy()
            .authorize(&request, DELETE_TENANT)
            .await?;
        let req = request.into_inner();
        let id = tenant_id(&req.name, "name")?;
        self.visible(&access, &id).await?;
        let template = self
            .store
            .privacy()
            .event(&access, "", "", &[], AuditOutcome::Ok);
        self.store.delete_tenant(&id, req.force, &template).await?;
        Ok(Response::new(()))
    }
}
