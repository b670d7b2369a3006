//! Retention for every service: a sweep that deletes what has expired,
//! from the declarations (each resource's category and retention clock) and
//! the facts identity owns (tenants' own rules, legal holds); and
//! `custodian.retention.v1.RetentionService`, served once per process:
//! SweepExpired for the service `custodian-service` names (or all of them),
//! legal holds and the retention policy from their owner.
//!
//! A service that does not own the facts asks identity over gRPC at every
//! sweep, and deletes nothing when it cannot be had: a sweep that does not
//! know about a legal hold must not run.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use custodian_privacy::{
    Purpose,
    audit::Event,
    retention::{self, AUDIT_RETENTION, SWEEP_BATCH, SweepCounts},
};
use custodian_proto::{
    audit::v1::{AuditAction, AuditOutcome},
    privacy::v1::{Controller, DataCategory},
    retention::v1::{
        CategoryCount, CreateLegalHoldRequest, DeleteLegalHoldRequest, GetRetentionPolicyRequest,
        LegalHold, ListLegalHoldsRequest, ListLegalHoldsResponse, RetentionPolicy,
        SweepExpiredRequest, SweepExpiredResponse,
        retention_service_client::RetentionServiceClient,
        retention_service_server::RetentionService,
    },
};
use custodian_runtime::{
    ApiError,
    time::{Clock, micros},
};
use futures::future::BoxFuture;
use tonic::{Request, Response, Status};

use crate::{
    call::Call,
    gate::SERVICE_HEADER,
    peers::Peers,
    store::{Held, Store, SweepScope},
};

/// Idempotency keys outlive any sensible retry by far after a day.
const IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// The service that owns tenants' rules and legal holds.
pub const OWNER: &str = "identity";

/// A service's sweep of expired data.
pub trait Sweep: Send + Sync + 'static {
    fn service(&self) -> &'static str;
    /// Deletes what has expired at `now` (microseconds) and audits the
    /// counts, as done by `by` (or by the schedule).
    fn sweep<'a>(
        &'a self,
        now: i64,
        by: Option<&'a Call>,
    ) -> BoxFuture<'a, Result<SweepCounts, ApiError>>;
}

/// Where a sweep learns tenants' rules and legal holds.
pub trait PolicySource: Send + Sync + 'static {
    fn policy(&self) -> BoxFuture<'_, Result<RetentionPolicy, ApiError>>;
}

/// Legal holds and the retention policy, kept by their one owner.
pub trait RetentionOwner: Send + Sync + 'static {
    fn create_legal_hold<'a>(
        &'a self,
        call: &'a Call,
        request: CreateLegalHoldRequest,
    ) -> BoxFuture<'a, Result<LegalHold, Status>>;
    fn list_legal_holds<'a>(
        &'a self,
        call: &'a Call,
        request: ListLegalHoldsRequest,
    ) -> BoxFuture<'a, Result<ListLegalHoldsResponse, Status>>;
    fn delete_legal_hold<'a>(
        &'a self,
        call: &'a Call,
        request: DeleteLegalHoldRequest,
    ) -> BoxFuture<'a, Result<(), Status>>;
    fn policy(&self) -> BoxFuture<'_, Result<RetentionPolicy, ApiError>>;
}

/// The owner's own facts, read directly.
pub struct OwnerPolicy(pub Arc<dyn RetentionOwner>);

impl PolicySource for OwnerPolicy {
    fn policy(&self) -> BoxFuture<'_, Result<RetentionPolicy, ApiError>> {
        self.0.policy()
    }
}

/// The owner's facts, asked over gRPC with the service's own credential,
/// afresh for every sweep (which asks once): an answer kept from an earlier
/// sweep would miss a legal hold placed since, and delete what it holds.
pub struct PeerPolicy {
    peers: Peers,
}

impl PeerPolicy {
    pub fn new(peers: Peers) -> Self {
        Self { peers }
    }
}

impl PolicySource for PeerPolicy {
    fn policy(&self) -> BoxFuture<'_, Result<RetentionPolicy, ApiError>> {
        Box::pin(async move {
            let unavailable = |_| {
                ApiError::Unavailable(format!(
                    "the retention policy cannot be had from {OWNER}; nothing was deleted"
                ))
            };
            let channel = self
                .peers
                .own(OWNER, Purpose::Administration)
                .map_err(unavailable)?;
            Ok(RetentionServiceClient::new(channel)
                .get_retention_policy(GetRetentionPolicyRequest {})
                .await
                .map_err(unavailable)?
                .into_inner())
        })
    }
}

/// The facts of one sweep, ready to ask.
struct Facts {
    held_tenants: HashSet<String>,
    held_subjects: HashSet<String>,
    rules: HashMap<String, HashMap<i32, i64>>,
}

impl Facts {
    fn new(policy: &RetentionPolicy) -> Self {
        let tenant = |name: &str| name.strip_prefix("tenants/").unwrap_or(name).to_owned();
        Self {
            held_tenants: policy.held_tenants.iter().map(|t| tenant(t)).collect(),
            held_subjects: policy.held_subjects.iter().cloned().collect(),
            rules: policy
                .tenants
                .iter()
                .map(|t| {
                    let rules = t
                        .rules
                        .iter()
                        .map(|r| (r.data_category, r.retain_for.map_or(0, |d| d.seconds)))
                        .collect();
                    (tenant(&t.tenant), rules)
                })
                .collect(),
        }
    }

    fn held(&self, tenant: &str, email: Option<&str>, phone: Option<&str>) -> bool {
        self.held_tenants.contains(tenant)
            || email.is_some_and(|e| self.held_subjects.contains(&format!("email:{e}")))
            || phone.is_some_and(|p| self.held_subjects.contains(&format!("phone:{p}")))
    }
}

/// When a bulk holding's rows of one category expire, tenant by tenant,
/// for a service that sweeps a table of its own beside its [`Store`]: the
/// same facts (tenants' rules, legal holds) the store's sweep obeys.
#[derive(Debug, Clone, Default)]
pub struct TenantCutoffs {
    /// Rows of tenants with a rule of their own expire before these times.
    pub by_tenant: Vec<(String, i64)>,
    /// Every other tenant's rows expire before this, if the category expires.
    pub default: Option<i64>,
    /// Tenants under a legal hold: none of their rows may be deleted, and
    /// none of them appears above.
    pub held: Vec<String>,
}

impl TenantCutoffs {
    /// Tenants the default does not apply to: those held and those with
    /// a rule of their own.
    pub fn not_default(&self) -> Vec<String> {
        self.held
            .iter()
            .cloned()
            .chain(self.by_tenant.iter().map(|(t, _)| t.clone()))
            .collect()
    }
}

/// The sweep of a service's [`Store`], from the declarations.
pub struct StoreSweep {
    store: Store,
    policy: Arc<dyn PolicySource>,
}

impl StoreSweep {
    pub fn new(store: Store, policy: Arc<dyn PolicySource>) -> Self {
        Self { store, policy }
    }

    /// The cutoffs of a bulk holding of `category` (held for tenants) at
    /// `now`. Fails, so nothing is deleted, when the facts cannot be had.
    pub async fn tenant_cutoffs(
        &self,
        category: DataCategory,
        now: i64,
    ) -> Result<TenantCutoffs, ApiError> {
        let facts = Facts::new(&self.policy.policy().await?);
        let mut held: Vec<String> = facts.held_tenants.iter().cloned().collect();
        held.sort();
        let by_tenant = if retention::tenant_may_set(category) {
            let mut rules: Vec<(String, i64)> = facts
                .rules
                .iter()
                .filter(|(t, _)| !facts.held_tenants.contains(*t))
                .filter_map(|(t, r)| {
                    r.get(&(category as i32))
                        .map(|s| (t.clone(), now - s.saturating_mul(1_000_000)))
                })
                .collect();
            rules.sort();
            rules
        } else {
            Vec::new()
        };
        Ok(TenantCutoffs {
            by_tenant,
            default: retention::default_retention(category).map(|keep| now - micros(keep)),
            held,
        })
    }

    async fn run(&self, now: i64, by: Option<&Call>) -> Result<SweepCounts, ApiError> {
        // Fail closed: without the facts, nothing is deleted.
        let facts = Facts::new(&self.policy.policy().await?);
        let held = |tenant: &str, email: Option<&str>, phone: Option<&str>| {
            facts.held(tenant, email, phone)
        };
        let mut counts: SweepCounts = Vec::new();
        for binding in self.store.bindings().iter().filter(|b| b.parent.is_none()) {
            let category = binding.spec.category();
            let mut deleted = 0;
            let tenant_rules = retention::tenant_may_set(category)
                && binding.spec.controller() != Controller::Company;
            let with_rule: Vec<(String, i64)> = if tenant_rules {
                facts
                    .rules
                    .iter()
                    .filter_map(|(t, r)| r.get(&(category as i32)).map(|s| (t.clone(), *s)))
                    .collect()
            } else {
                Vec::new()
            };
            for (tenant, seconds) in &with_rule {
                let cutoff = now - seconds.saturating_mul(1_000_000);
                deleted += self
                    .sweep_all(binding, Some(tenant), &[], cutoff, &held)
                    .await?;
            }
            if let Some(keep) = retention::default_retention(category) {
                let except: Vec<String> = with_rule.into_iter().map(|(t, _)| t).collect();
                deleted += self
                    .sweep_all(binding, None, &except, now - micros(keep), &held)
                    .await?;
            }
            if deleted > 0 {
                match counts.iter_mut().find(|(c, _)| *c == category) {
                    Some((_, n)) => *n += deleted,
                    None => counts.push((category, deleted)),
                }
            }
        }
        self.store
            .sweep_idempotency(now - micros(IDEMPOTENCY_RETENTION))
            .await?;
        let audit = &self.store.privacy().audit;
        while audit
            .sweep_before(now - micros(AUDIT_RETENTION), SWEEP_BATCH)
            .await?
            == SWEEP_BATCH as u64
        {}
        if !counts.is_empty() {
            let actor = match by {
                Some(call) => {
                    self.store
                        .privacy()
                        .event(&call.access, "", "", &[], AuditOutcome::Ok)
                }
                None => Event {
                    caller: "custodian:retention".to_owned(),
                    purpose: "retention".to_owned(),
                    method: "schedule".to_owned(),
                    ..Event::new(AuditAction::Sweep, AuditOutcome::Ok)
                },
            };
            audit
                .record(Event {
                    time: now,
                    resource: self.store.service().to_owned(),
                    detail: retention::describe(&counts),
                    ..actor
                })
                .await?;
        }
        Ok(counts)
    }

    async fn sweep_all(
        &self,
        binding: &Arc<crate::store::Binding>,
        tenant: Option<&str>,
        except: &[String],
        cutoff: i64,
        held: Held<'_>,
    ) -> Result<i64, ApiError> {
        let scope = SweepScope {
            tenant,
            except,
            cutoff,
            batch: SWEEP_BATCH,
        };
        let mut total = 0;
        let mut after = String::new();
        loop {
            let (deleted, last) = self
                .store
                .sweep_batch(binding, &scope, &after, held)
                .await?;
            total += deleted;
            match last {
                Some(last) => after = last,
                None => return Ok(total),
            }
        }
    }
}

impl Sweep for StoreSweep {
    fn service(&self) -> &'static str {
        self.store.service()
    }

    fn sweep<'a>(
        &'a self,
        now: i64,
        by: Option<&'a Call>,
    ) -> BoxFuture<'a, Result<SweepCounts, ApiError>> {
        Box::pin(self.run(now, by))
    }
}

/// Adapts a [`Sweep`] to the kernel's schedule.
pub struct Scheduled(pub Arc<dyn Sweep>);

impl custodian_privacy::retention::Sweeper for Scheduled {
    fn service(&self) -> &'static str {
        self.0.service()
    }

    fn sweep(&self, now: i64) -> BoxFuture<'_, Result<SweepCounts, ApiError>> {
        self.0.sweep(now, None)
    }
}

/// `RetentionService`, served once per process.
pub struct RetentionRouter {
    sweepers: Vec<(&'static str, Arc<dyn Sweep>)>,
    owner: Option<Arc<dyn RetentionOwner>>,
    clock: Arc<dyn Clock>,
}

impl RetentionRouter {
    pub fn new(
        sweepers: Vec<(&'static str, Arc<dyn Sweep>)>,
        owner: Option<Arc<dyn RetentionOwner>>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            sweepers,
            owner,
            clock,
        }
    }

    #[allow(clippy::result_large_err)] // answered as is
    fn owner(&self) -> Result<&Arc<dyn RetentionOwner>, Status> {
        self.owner.as_ref().ok_or_else(|| {
            Status::unimplemented(format!(
                "legal holds and tenant retention rules are kept by {OWNER}, which this server does not run"
            ))
        })
    }
}

#[tonic::async_trait]
impl RetentionService for RetentionRouter {
    async fn sweep_expired(
        &self,
        request: Request<SweepExpiredRequest>,
    ) -> Result<Response<SweepExpiredResponse>, Status> {
        let call = Call::of(&request)?;
        let chosen: Vec<&(&'static str, Arc<dyn Sweep>)> =
            match request.metadata().get(SERVICE_HEADER) {
                None => self.sweepers.iter().collect(),
                Some(_) => {
                    let one = crate::subject::route(&self.sweepers, request.metadata())?;
                    self.sweepers
                        .iter()
                        .filter(|(_, s)| Arc::ptr_eq(s, one))
                        .collect()
                }
            };
        let now = self.clock.now_micros();
        let mut deleted = Vec::new();
        for (service, sweeper) in chosen {
            for (category, n) in sweeper.sweep(now, Some(&call)).await? {
                deleted.push(CategoryCount {
                    service: (*service).to_owned(),
                    data_category: category as i32,
                    deleted: n,
                });
            }
        }
        Ok(Response::new(SweepExpiredResponse { deleted }))
    }

    async fn create_legal_hold(
        &self,
        request: Request<CreateLegalHoldRequest>,
    ) -> Result<Response<LegalHold>, Status> {
        let call = Call::of(&request)?;
        let hold = self
            .owner()?
            .create_legal_hold(&call, request.into_inner())
            .await?;
        Ok(Response::new(hold))
    }

    async fn list_legal_holds(
        &self,
        request: Request<ListLegalHoldsRequest>,
    ) -> Result<Response<ListLegalHoldsResponse>, Status> {
        let call = Call::of(&request)?;
        Ok(Response::new(
            self.owner()?
                .list_legal_holds(&call, request.into_inner())
                .await?,
        ))
    }

    async fn delete_legal_hold(
        &self,
        request: Request<DeleteLegalHoldRequest>,
    ) -> Result<Response<()>, Status> {
        let call = Call::of(&request)?;
        self.owner()?
            .delete_legal_hold(&call, request.into_inner())
            .await?;
        Ok(Response::new(()))
    }

    async fn get_retention_policy(
        &self,
        request: Request<GetRetentionPolicyRequest>,
    ) -> Result<Response<RetentionPolicy>, Status> {
        Call::of(&request)?;
        Ok(Response::new(self.owner()?.policy().await?))
    }
}

/// The suite's default retention per category, for the policy's answer.
pub fn defaults() -> Vec<custodian_proto::retention::v1::CategoryRetention> {
    [
        DataCategory::AuthorizedUser,
        DataCategory::BusinessContact,
        DataCategory::EvaluationSignup,
        DataCategory::SupportRequest,
        DataCategory::UsageEvent,
        DataCategory::Feedback,
        DataCategory::ConsentRecord,
        DataCategory::DsrRecord,
    ]
    .into_iter()
    .filter_map(|c| {
        retention::default_retention(c).map(|d| custodian_proto::retention::v1::CategoryRetention {
            data_category: c as i32,
            retain_for: Some(prost_types::Duration {
                seconds: d.as_secs() as i64,
                nanos: 0,
            }),
        })
    })
    .collect()
}
