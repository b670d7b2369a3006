//! `custodian.identity.v1.TenantService`: customer organisations.

use custodian_proto::identity::v1::{
    CreateTenantRequest, DeleteTenantRequest, GetTenantRequest, ListTenantsRequest,
    ListTenantsResponse, Tenant, UpdateTenantRequest, tenant_service_server::TenantService,
};
use custodian_runtime::{
    ApiError,
    error::Violations,
    paging::Page,
    time::{now_micros, to_timestamp},
};
use tonic::{Request, Response, Status};

use crate::{
    model::parse_tenant_name,
    records::{idempotency, request_hash},
    store::{Created, Store, TenantRow},
    validate,
};

pub struct Tenants {
    store: Store,
}

impl Tenants {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

fn to_proto(row: TenantRow) -> Tenant {
    Tenant {
        name: format!("tenants/{}", row.id),
        display_name: row.display_name,
        create_time: Some(to_timestamp(row.create_time)),
        update_time: Some(to_timestamp(row.update_time)),
    }
}

fn tenant_id(name: &str, field: &str) -> Result<String, ApiError> {
    parse_tenant_name(name)
        .map(str::to_owned)
        .ok_or_else(|| ApiError::invalid(field, "must have the form tenants/{tenant}"))
}

/// A display name is an organisation's name, but it is free text all the
/// same, so it passes the sensitive-data guard too.
fn display_name(raw: &str, field: &str) -> Result<String, ApiError> {
    let mut v = Violations::new();
    let name = v
        .check(field, validate::bounded(raw, validate::MAX_NAME_CHARS))
        .unwrap_or_default();
    if v.is_empty() && name.is_empty() {
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
    v.finish()?;
    Ok(name)
}

#[tonic::async_trait]
impl TenantService for Tenants {
    async fn create_tenant(
        &self,
        request: Request<CreateTenantRequest>,
    ) -> Result<Response<Tenant>, Status> {
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let hash = request_hash(&req);
        let tenant = req.tenant.unwrap_or_default();
        let mut v = Violations::new();
        let name = display_name(&tenant.display_name, "tenant.display_name");
        if let Err(ApiError::InvalidArgument(found)) = &name {
            for violation in found {
                v.add(violation.field.clone(), violation.description.clone());
            }
        }
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
            display_name: name?,
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
        let id = tenant_id(&request.get_ref().name, "name")?;
        Ok(Response::new(to_proto(self.store.get_tenant(&id).await?)))
    }

    async fn list_tenants(
        &self,
        request: Request<ListTenantsRequest>,
    ) -> Result<Response<ListTenantsResponse>, Status> {
        let req = request.into_inner();
        let page = Page::parse(req.page_size, &req.page_token, "tenants")?;
        let rows = self.store.list_tenants(&page).await?;
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
        let req = request.into_inner();
        let tenant = req.tenant.unwrap_or_default();
        let id = tenant_id(&tenant.name, "tenant.name")?;
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        match paths.as_slice() {
            [] => {
                return Err(
                    ApiError::invalid("update_mask", "must name at least one field").into(),
                );
            }
            paths if paths.iter().any(|p| p != "display_name") => {
                return Err(
                    ApiError::invalid("update_mask", "only \"display_name\" is updatable").into(),
                );
            }
            _ => {}
        }
        let name = display_name(&tenant.display_name, "tenant.display_name")?;
        Ok(Response::new(to_proto(
            self.store.update_tenant(&id, &name).await?,
        )))
    }

    async fn delete_tenant(
        &self,
        request: Request<DeleteTenantRequest>,
    ) -> Result<Response<()>, Status> {
        let req = request.into_inner();
        let id = tenant_id(&req.name, "name")?;
        self.store.delete_tenant(&id, req.force).await?;
        Ok(Response::new(()))
    }
}
