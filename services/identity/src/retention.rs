//! Retention for identity: the sweep of expired records (tenant rules over
//! the kernel's defaults, legal holds respected) and
//! `custodian.retention.v1.RetentionService`, which runs it on demand and
//! manages legal holds.

use std::{sync::Arc, time::Duration};

use custodian_privacy::{
    Access,
    audit::Event,
    retention::{self, AUDIT_RETENTION, SWEEP_BATCH, SweepCounts, Sweeper},
};
use custodian_proto::{
    audit::v1::{AuditAction, AuditOutcome},
    common::v1::{DataCategory, subject_identifier},
    retention::v1::{
        CategoryCount, CreateLegalHoldRequest, DeleteLegalHoldRequest, LegalHold,
        ListLegalHoldsRequest, ListLegalHoldsResponse, SweepExpiredRequest, SweepExpiredResponse,
        legal_hold, retention_service_server::RetentionService,
    },
};
use custodian_runtime::{
    ApiError,
    error::Violations,
    paging::Page,
    time::{Clock, micros, to_timestamp},
};
use futures::future::BoxFuture;
use tonic::{Request, Response, Status};

use crate::{
    NAME,
    access::{MANAGE_HOLDS, SWEEP},
    model::{CONTACTS, Kind, SIGNUPS, USERS, parse_tenant_name},
    store::{HoldRow, Store},
    tenants::stored_rules,
    validate,
};

/// Idempotency keys outlive any sensible retry by far after a day.
const IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

#[derive(Clone)]
pub struct IdentityRetention {
    store: Store,
    clock: Arc<dyn Clock>,
}

impl IdentityRetention {
    pub fn new(store: Store, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    /// Deletes batches of `kind` older than `cutoff` until none are left.
    async fn sweep_kind(&self, kind: Kind, tenant: &str, cutoff: i64) -> Result<i64, ApiError> {
        let mut total = 0;
        loop {
            let n = self
                .store
                .sweep_records(kind, tenant, cutoff, SWEEP_BATCH)
                .await?;
            total += n;
            if n < SWEEP_BATCH {
                return Ok(total);
            }
        }
    }

    /// One sweep at `now`, audited as done by `actor` (counts only).
    pub async fn run(&self, now: i64, actor: Event) -> Result<SweepCounts, ApiError> {
        let mut counts: SweepCounts = Vec::new();
        let mut add = |category: DataCategory, n: i64| {
            if n > 0 {
                match counts.iter_mut().find(|(c, _)| *c == category) {
                    Some((_, total)) => *total += n,
                    None => counts.push((category, n)),
                }
            }
        };
        if let Some(keep) = retention::default_retention(SIGNUPS.category) {
            add(
                SIGNUPS.category,
                self.sweep_kind(SIGNUPS, "", now - micros(keep)).await?,
            );
        }
        for (tenant, rules) in self.store.tenants_with_retention().await? {
            let rules = stored_rules(&rules);
            for kind in [USERS, CONTACTS] {
                // The tenant's own rule wins over the default.
                let keep = rules
                    .iter()
                    .find(|r| r.category == kind.category as i32)
                    .map(|r| Duration::from_secs(u64::try_from(r.seconds).unwrap_or(0)))
                    .or_else(|| retention::default_retention(kind.category));
                if let Some(keep) = keep {
                    add(
                        kind.category,
                        self.sweep_kind(kind, &tenant, now - micros(keep)).await?,
                    );
                }
            }
        }
        self.store
            .sweep_idempotency_keys(now - micros(IDEMPOTENCY_RETENTION))
            .await?;
        let audit = &self.store.privacy().audit;
        while audit
            .sweep_before(now - micros(AUDIT_RETENTION), SWEEP_BATCH)
            .await?
            == SWEEP_BATCH as u64
        {}
        if !counts.is_empty() {
            let event = Event {
                time: now,
                resource: NAME.to_owned(),
                detail: retention::describe(&counts),
                ..actor
            };
            audit.record(event).await?;
        }
        Ok(counts)
    }
}

impl Sweeper for IdentityRetention {
    fn service(&self) -> &'static str {
        NAME
    }

    fn sweep(&self, now: i64) -> BoxFuture<'_, Result<SweepCounts, ApiError>> {
        let actor = Event {
            caller: "custodian:retention".to_owned(),
            purpose: "retention".to_owned(),
            method: "schedule".to_owned(),
            ..Event::new(AuditAction::Sweep, AuditOutcome::Ok)
        };
        Box::pin(self.run(now, actor))
    }
}

fn hold_to_proto(row: HoldRow) -> LegalHold {
    let target = row
        .tenant_id
        .map(|t| legal_hold::Target::Tenant(format!("tenants/{t}")));
    // An opaque reference: a prefix of the keyed index, never the value.
    let subject_ref = row
        .email_index
        .or(row.phone_index)
        .map(|i| i.chars().take(16).collect())
        .unwrap_or_default();
    LegalHold {
        name: format!("legalHolds/{}", row.id),
        target,
        subject_ref,
        reason: row.reason,
        create_time: Some(to_timestamp(row.create_time)),
    }
}

impl IdentityRetention {
    async fn authorize<T>(
        &self,
        request: &Request<T>,
        method: custodian_privacy::Method,
    ) -> Result<Access, Status> {
        let access = self.store.privacy().authorize(request, method).await?;
        if access.tenant_limit().is_some() {
            return Err(Status::permission_denied(
                "retention is managed for the whole installation; a token limited to a tenant cannot",
            ));
        }
        Ok(access)
    }
}

#[tonic::async_trait]
impl RetentionService for IdentityRetention {
    async fn sweep_expired(
        &self,
        request: Request<SweepExpiredRequest>,
    ) -> Result<Response<SweepExpiredResponse>, Status> {
        let access = self.authorize(&request, SWEEP).await?;
        let actor = self
            .store
            .privacy()
            .event(&access, "", "", &[], AuditOutcome::Ok);
        let counts = self.run(self.clock.now_micros(), actor).await?;
        Ok(Response::new(SweepExpiredResponse {
            deleted: counts
                .into_iter()
                .map(|(c, n)| CategoryCount {
                    service: NAME.to_owned(),
                    data_category: c as i32,
                    deleted: n,
                })
                .collect(),
        }))
    }

    async fn create_legal_hold(
        &self,
        request: Request<CreateLegalHoldRequest>,
    ) -> Result<Response<LegalHold>, Status> {
        self.authorize(&request, MANAGE_HOLDS).await?;
        let hold = request.into_inner().legal_hold.unwrap_or_default();
        let mut v = Violations::new();
        let reason = v
            .check(
                "legal_hold.reason",
                validate::bounded(&hold.reason, validate::MAX_TEXT_CHARS),
            )
            .unwrap_or_default();
        if reason.is_empty() && v.is_empty() {
            v.add("legal_hold.reason", "is required");
        }
        if custodian_privacy::check(&reason).is_err() {
            v.add(
                "legal_hold.reason",
                "contains sensitive personal information; give a case reference",
            );
        }
        let mut row = HoldRow {
            id: uuid::Uuid::now_v7().to_string(),
            tenant_id: None,
            email_index: None,
            phone_index: None,
            reason,
            create_time: self.clock.now_micros(),
        };
        match hold.target {
            Some(legal_hold::Target::Tenant(name)) => match parse_tenant_name(&name) {
                Some(id) => row.tenant_id = Some(id.to_owned()),
                None => v.add("legal_hold.tenant", "must have the form tenants/{tenant}"),
            },
            Some(legal_hold::Target::Subject(subject)) => match subject.kind {
                Some(subject_identifier::Kind::Email(e)) => {
                    if let Some(e) =
                        v.check("legal_hold.subject.email", validate::normalize_email(&e))
                    {
                        row.email_index = Some(self.store.email_index(&e));
                    }
                }
                Some(subject_identifier::Kind::Phone(p)) => {
                    if let Some(p) = v.check(
                        "legal_hold.subject.phone",
                        validate::normalize_phone(&p, None),
                    ) {
                        row.phone_index = Some(self.store.phone_index(&p));
                    }
                }
                _ => v.add("legal_hold.subject", "an email or phone is required"),
            },
            None => v.add("legal_hold", "a tenant or a subject is required"),
        }
        v.finish()?;
        if let Some(tenant) = &row.tenant_id {
            self.store.get_tenant(tenant).await?;
        }
        self.store.create_hold(&row).await?;
        Ok(Response::new(hold_to_proto(row)))
    }

    async fn list_legal_holds(
        &self,
        request: Request<ListLegalHoldsRequest>,
    ) -> Result<Response<ListLegalHoldsResponse>, Status> {
        self.authorize(&request, MANAGE_HOLDS).await?;
        let req = request.into_inner();
        let page = Page::parse(req.page_size, &req.page_token, "legalHolds")?;
        let rows = self.store.list_holds(&page).await?;
        let (rows, next_page_token) = page.finish(rows, |r| r.id.as_str());
        Ok(Response::new(ListLegalHoldsResponse {
            legal_holds: rows.into_iter().map(hold_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn delete_legal_hold(
        &self,
        request: Request<DeleteLegalHoldRequest>,
    ) -> Result<Response<()>, Status> {
        self.authorize(&request, MANAGE_HOLDS).await?;
        let name = request.into_inner().name;
        let id = name
            .strip_prefix("legalHolds/")
            .filter(|id| !id.is_empty() && !id.contains('/'))
            .ok_or_else(|| {
                ApiError::invalid("name", "must have the form legalHolds/{legal_hold}")
            })?;
        self.store.delete_hold(id).await?;
        Ok(Response::new(()))
    }
}
