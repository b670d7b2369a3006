//! `custodian.identity.v1.MonitoringGrantService`: a tenant's permission for
//! the company to monitor its authorized users' use of the Platform, for
//! defect investigation. Grants are kit records held for the tenant (who
//! granted one is personal data: sealed, found by keyed index, exported and
//! erased with that person), so creates, reads and revocations are audited
//! by the store. A grant is never changed but to revoke it; its state
//! (active, expired, revoked) is read from the clock, never stored.
//!
//! Other services (analytics) ask `CheckMonitoringGrant` before accepting
//! usage of a tenant's users; each check is audited too.

use custodian_kit::{Call, Filter, Idempotency, New, Query, Records, Sensitive, Shown, respond};
use custodian_proto::{
    audit::v1::AuditOutcome,
    identity::v1::{
        CheckMonitoringGrantRequest, CheckMonitoringGrantResponse, CreateMonitoringGrantRequest,
        GetMonitoringGrantRequest, ListMonitoringGrantsRequest, ListMonitoringGrantsResponse,
        MonitoringGrant, RevokeMonitoringGrantRequest, monitoring_grant,
        monitoring_grant_service_server::MonitoringGrantService,
    },
};
use custodian_runtime::{
    ApiError,
    error::Violations,
    paging::{MAX_PAGE_SIZE, Page},
    time::to_timestamp,
};
use tonic::{Request, Response, Status};

use crate::policies::micros_of;

/// How far ahead a grant may end: a tenant renews it at least yearly.
const MAX_LIFETIME_MICROS: i64 = 366 * 24 * 60 * 60 * 1_000_000;
const MAX_SCOPES: usize = 8;
const FIELD: &str = "monitoring_grant";

/// Serves monitoring grants.
#[derive(Clone)]
pub struct Grants {
    records: Records<MonitoringGrant>,
}

fn micros(t: &Option<prost_types::Timestamp>) -> Option<i64> {
    t.as_ref().and_then(micros_of)
}

/// Where a grant stands at `now`.
fn state_at(grant: &MonitoringGrant, now: i64) -> monitoring_grant::State {
    use monitoring_grant::State;
    if micros(&grant.revoke_time).is_some_and(|r| r <= now) {
        State::Revoked
    } else if micros(&grant.expire_time).is_none_or(|e| e <= now) {
        State::Expired
    } else {
        State::Active
    }
}

/// The tenant id in "tenants/{tenant}/..." (the stack has checked the form).
fn tenant_of(name: &str) -> Option<&str> {
    name.strip_prefix("tenants/")?.split('/').next()
}

/// A stored grant's own rules, for corrections through the subject
/// contract: the person who granted it belongs to the grant's tenant.
pub fn check_grant(g: &MonitoringGrant, prefix: &str, v: &mut Violations) {
    if !g.granted_by.is_empty() && tenant_of(&g.granted_by) != tenant_of(&g.name) {
        v.add(
            format!("{prefix}.granted_by"),
            "must be an authorized user of the grant's tenant",
        );
    }
}

impl Grants {
    pub fn new(records: Records<MonitoringGrant>) -> Self {
        Self { records }
    }

    fn now(&self) -> i64 {
        self.records.store().now()
    }

    /// The tenant id of `name` ("tenants/{tenant}"), if it exists and the
    /// caller may see it; otherwise NOT_FOUND (audited), as if it did not
    /// exist.
    async fn visible_tenant(&self, call: &Call, name: &str, field: &str) -> Result<String, Status> {
        let id = custodian_kit::pattern::tenant_id(name)
            .ok_or_else(|| ApiError::invalid(field, "must have the form tenants/{tenant}"))?;
        if !call.sees_tenant(id) || !crate::tenants::exists(self.records.store(), id).await? {
            return Err(self.records.not_found(call, &format!("tenants/{id}")).await);
        }
        Ok(id.to_owned())
    }

    /// A grant as the caller's purpose may see it, with its state now.
    fn answer(&self, shown: Shown<MonitoringGrant>) -> Response<MonitoringGrant> {
        let Shown {
            mut message,
            withheld,
        } = shown;
        message.state = state_at(&message, self.now()) as i32;
        respond(message, &withheld)
    }

    /// Checks a new grant of `tenant_id`, after the kit's normalisation.
    async fn check_new(
        &self,
        tenant_id: &str,
        grant: &MonitoringGrant,
        v: &mut Violations,
    ) -> Result<(), ApiError> {
        let now = self.now();
        if grant.scopes.is_empty() {
            v.add(format!("{FIELD}.scopes"), "at least one scope is required");
        }
        if grant.scopes.len() > MAX_SCOPES {
            v.add(
                format!("{FIELD}.scopes"),
                format!("at most {MAX_SCOPES} scopes"),
            );
        }
        for (i, scope) in grant.scopes.iter().enumerate() {
            if scope.is_empty() {
                v.add(format!("{FIELD}.scopes[{i}]"), "must not be empty");
            } else if grant.scopes[..i].contains(scope) {
                v.add(format!("{FIELD}.scopes[{i}]"), "appears twice");
            }
        }
        if grant.expire_time.is_some() {
            match micros(&grant.expire_time) {
                None => v.add(format!("{FIELD}.expire_time"), "must be a valid time"),
                Some(t) if t <= now => {
                    v.add(format!("{FIELD}.expire_time"), "must be in the future")
                }
                Some(t) if t - now > MAX_LIFETIME_MICROS => v.add(
                    format!("{FIELD}.expire_time"),
                    "must be at most 366 days ahead; renew the grant instead",
                ),
                Some(_) => {}
            }
        }
        if grant.granted_by.is_empty() {
            v.add(format!("{FIELD}.granted_by"), "is required");
        } else if tenant_of(&grant.granted_by) != Some(tenant_id) {
            v.add(
                format!("{FIELD}.granted_by"),
                "must be an authorized user of the tenant the grant is for",
            );
        } else {
            let user_id = grant.granted_by.rsplit('/').next().unwrap_or("");
            let found = sqlx::query(
                "SELECT 1 AS found FROM identity_users WHERE id = $1 AND tenant_id = $2",
            )
            .bind(user_id)
            .bind(tenant_id)
            .fetch_optional(self.records.store().db().pool())
            .await?;
            if found.is_none() {
                v.add(
                    format!("{FIELD}.granted_by"),
                    "is not an authorized user of the tenant the grant is for",
                );
            }
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl MonitoringGrantService for Grants {
    async fn create_monitoring_grant(
        &self,
        request: Request<CreateMonitoringGrantRequest>,
    ) -> Result<Response<MonitoringGrant>, Status> {
        let call = Call::of(&request)?;
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let idem = Idempotency::of("CreateMonitoringGrant", &req.parent, &request_id, &req)?;
        let tenant_id = self.visible_tenant(&call, &req.parent, "parent").await?;
        let mut grant = req.monitoring_grant.unwrap_or_default();
        let mut v = Violations::new();
        self.records
            .prepare(&mut grant, FIELD, Sensitive::Refuse, &mut v)?;
        self.check_new(&tenant_id, &grant, &mut v).await?;
        v.finish()?;
        // The consent records the policy it was given under.
        grant.policy_version = crate::policies::in_force(self.records.store(), self.now())
            .await?
            .map(|p| p.name)
            .unwrap_or_default();
        let stored = self
            .records
            .create(
                &call,
                New {
                    tenant_id,
                    parent_id: String::new(),
                    message: grant,
                    idempotency: idem,
                },
            )
            .await?;
        Ok(self.answer(self.records.shown(&call, &stored)?))
    }

    async fn get_monitoring_grant(
        &self,
        request: Request<GetMonitoringGrantRequest>,
    ) -> Result<Response<MonitoringGrant>, Status> {
        let call = Call::of(&request)?;
        let shown = self
            .records
            .read(&call, &request.get_ref().name, "name")
            .await?;
        Ok(self.answer(shown))
    }

    async fn list_monitoring_grants(
        &self,
        request: Request<ListMonitoringGrantsRequest>,
    ) -> Result<Response<ListMonitoringGrantsResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant_id = self.visible_tenant(&call, &req.parent, "parent").await?;
        let page = Page::parse(
            req.page_size,
            &req.page_token,
            &format!("{}|{tenant_id}", self.records.spec().full_name()),
        )?;
        let query = Query {
            tenant: Some(tenant_id),
            ..Default::default()
        };
        let (shown, next_page_token, withheld) = self.records.list(&call, &query, &page).await?;
        let now = self.now();
        let monitoring_grants = shown
            .into_iter()
            .map(|s| {
                let mut g = s.message;
                g.state = state_at(&g, now) as i32;
                g
            })
            .collect();
        Ok(respond(
            ListMonitoringGrantsResponse {
                monitoring_grants,
                next_page_token,
            },
            &withheld,
        ))
    }

    async fn revoke_monitoring_grant(
        &self,
        request: Request<RevokeMonitoringGrantRequest>,
    ) -> Result<Response<MonitoringGrant>, Status> {
        let call = Call::of(&request)?;
        let name = request.into_inner().name;
        let now = self.now();
        let current = self.records.find(&call, &name, "name").await?;
        match state_at(&current.message, now) {
            // Already revoked: answered unchanged (and audited as read).
            monitoring_grant::State::Revoked => {
                let shown = self.records.audited(&call, vec![current]).await?;
                return Ok(self.answer(shown.into_iter().next().ok_or_else(|| {
                    ApiError::internal(std::io::Error::other("audited nothing"))
                })?));
            }
            monitoring_grant::State::Expired => {
                return Err(ApiError::FailedPrecondition(format!(
                    "{name} has expired; there is nothing left to revoke"
                ))
                .into());
            }
            _ => {}
        }
        let stored = self
            .records
            .update(
                &call,
                &name,
                "name",
                FIELD,
                |_, after| {
                    // A concurrent revocation keeps its own time.
                    if after.revoke_time.is_none() {
                        after.revoke_time = Some(to_timestamp(now));
                    }
                    Ok(())
                },
                check_grant,
            )
            .await?;
        Ok(self.answer(self.records.shown(&call, &stored)?))
    }

    async fn check_monitoring_grant(
        &self,
        request: Request<CheckMonitoringGrantRequest>,
    ) -> Result<Response<CheckMonitoringGrantResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let scope = req.scope.trim().to_ascii_lowercase();
        let mut v = Violations::new();
        if scope.is_empty() {
            v.add("scope", "is required");
        }
        let at = match req.time.as_ref() {
            None => self.now(),
            Some(t) => micros_of(t).unwrap_or_else(|| {
                v.add("time", "must be a valid time");
                0
            }),
        };
        v.finish()?;
        let tenant_id = self.visible_tenant(&call, &req.tenant, "tenant").await?;
        let query = Query {
            tenant: Some(tenant_id.clone()),
            parent_id: None,
            filters: vec![Filter::Sql(
                "r.create_time <= ? AND r.expire_time > ? AND (r.revoke_time IS NULL OR r.revoke_time > ?)",
                vec![
                    custodian_kit::Arg::Int(at),
                    custodian_kit::Arg::Int(at),
                    custodian_kit::Arg::Int(at),
                ],
            )],
        };
        let page_scope = format!("check|{tenant_id}");
        let mut token = String::new();
        let mut best: Option<(i64, custodian_kit::Stored<MonitoringGrant>)> = None;
        loop {
            let page = Page::parse(MAX_PAGE_SIZE as i32, &token, &page_scope)?;
            let (grants, next) = self.records.query(&call, &query, &page).await?;
            for grant in grants {
                if !grant.message.scopes.contains(&scope) {
                    continue;
                }
                let expire = micros(&grant.message.expire_time).unwrap_or(0);
                if best.as_ref().is_none_or(|(e, _)| expire > *e) {
                    best = Some((expire, grant));
                }
            }
            if next.is_empty() {
                break;
            }
            token = next;
        }
        // Every check is audited: the grant it relied on, or the tenant
        // that had none.
        let privacy = self.records.store().privacy();
        let (resource, subject) = match &best {
            Some((_, g)) => (g.name(), g.subject_id.clone()),
            None => (format!("tenants/{tenant_id}"), String::new()),
        };
        privacy
            .record_all(vec![privacy.event(
                &call.access,
                &resource,
                &subject,
                &[],
                AuditOutcome::Ok,
            )])
            .await?;
        Ok(Response::new(match best {
            Some((expire, grant)) => CheckMonitoringGrantResponse {
                active: true,
                grant: grant.name(),
                expire_time: Some(to_timestamp(expire)),
            },
            None => CheckMonitoringGrantResponse::default(),
        }))
    }
}
