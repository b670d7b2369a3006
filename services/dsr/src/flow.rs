//! The orchestrator. A verified request becomes steps, each a row of
//! `dsr_steps`:
//!
//! 1. `locate`: ask every configured service, through the subject contract,
//!    which records it holds on the verified email; when identity finds the
//!    person's authorized-user records, the other services are asked again
//!    by those names (their records point to users, not emails).
//! 2. plan: records the company controls are acted on at once (one `act`
//!    step per service); records held for a customer are routed to that
//!    customer's inbox, and acted on (`act` steps scoped to that tenant)
//!    only when it instructs so.
//! 3. finish: when every step has run and every customer has answered, the
//!    request completes; `mail` steps tell the requester what happened.
//!
//! A step is claimed with a short lease before it runs (its attempt
//! counted), renewed by a heartbeat while it runs, and marked done or failed
//! after, fenced by that lease: a replica whose lease ran out (or was taken
//! over) stops the step and cannot overwrite another's result, and the
//! steps of a replica that died are taken over a lease later. A failed call
//! is retried with backoff unless it is the caller's fault. Every call
//! carries the request's name, so a service replays what it already did for
//! it: a step cut short by a crash runs again without acting twice. Leases
//! and backoff run on the system clock; deadlines on the injectable one.
//!
//! Steps run independently: each replica keeps up to [`PARALLEL`] in
//! flight, claiming more as each ends, and at most [`PER_TARGET`] for one
//! service (or the mailer), so a service that does not answer (every call
//! to it ends at the peer timeout) holds a few slots and delays only its
//! own steps.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use custodian_kit::{Beside, Call, beside};
use custodian_privacy::{Actor, Method, Purpose};
use custodian_proto::{
    audit::v1::{AuditAction, AuditOutcome},
    common::v1::{Controller, SubjectIdentifier, controller, subject_identifier},
    dsr::v1::{Request, inbox_item::State as InboxItemState, request},
    identity::v1::{GetTenantRequest, tenant_service_client::TenantServiceClient},
    subject::v1::{
        EraseSubjectDataRequest, ExportSubjectDataRequest, FieldCorrection,
        LocateSubjectDataRequest, RectifySubjectDataRequest, SubjectRecord,
        subject_data_service_client::SubjectDataServiceClient,
    },
};
use custodian_runtime::{ApiError, time::now_micros};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use sqlx::Row as _;
use tokio::{
    sync::watch,
    task::{JoinHandle, JoinSet},
};
use tonic::{Code, Status};
use tracing::Instrument as _;

use crate::{Core, bundle, mail, proof};

/// How long a claimed step is ours without a renewal: the steps of a
/// replica that died are taken over this long after its last heartbeat.
pub const LEASE: Duration = Duration::from_secs(10);
/// How often a running step's lease is renewed: a renewal can fail twice
/// (a slow database) before the lease runs out.
const HEARTBEAT: Duration = Duration::from_secs(3);
/// Steps one replica runs at once.
pub const PARALLEL: usize = 16;
/// Steps for one service (or the mailer) one replica runs at once.
pub const PER_TARGET: usize = 4;
/// Longest wait between two attempts of a failing step: once a service is
/// back, its steps go on within this (and sooner, once one of them that
/// had failed succeeds: see [`nudge`]).
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How often idle replicas look for work another replica left.
const POLL: Duration = Duration::from_millis(500);

pub const LOCATE: &str = "locate";
pub const ACT: &str = "act";
pub const MAIL: &str = "mail";

/// Phases of a request's run (`dsr_runs.phase`).
pub const VERIFY: &str = "verify";
pub const LOCATING: &str = "locate";
pub const ACTING: &str = "act";
pub const DONE: &str = "done";
pub const CANCELLED: &str = "cancelled";

/// The subject an email locate step asks for.
pub const BY_EMAIL: &str = "email";

/// The service that holds authorized users: what it finds by email leads
/// to locate steps by user name in the others.
const USERS: &str = "identity";

/// The orchestrator task of this replica.
pub struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

pub fn start(core: Arc<Core>) -> Running {
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut running = JoinSet::new();
        // The target of each running step, by task.
        let mut targets: HashMap<tokio::task::Id, String> = HashMap::new();
        let mut last_sweep = Instant::now();
        loop {
            if *stopped.borrow() {
                break;
            }
            let free = PARALLEL.saturating_sub(running.len());
            let claimed = if free == 0 {
                Vec::new()
            } else {
                let mut busy: HashMap<&str, usize> = HashMap::new();
                for target in targets.values() {
                    *busy.entry(target.as_str()).or_default() += 1;
                }
                match claim(&core, free, &busy).await {
                    Ok(claimed) => claimed,
                    Err(err) => {
                        tracing::warn!(error = %err, "dsr: claiming steps failed; retrying");
                        Vec::new()
                    }
                }
            };
            let idle = claimed.is_empty();
            for step in claimed {
                let target = step.target().to_owned();
                let task = running.spawn(run(core.clone(), step));
                targets.insert(task.id(), target);
            }
            if !idle {
                // More may be due, and slots are left.
                continue;
            }
            // Requests whose last step finished in a replica that died
            // before it moved the request on.
            if last_sweep.elapsed() > Duration::from_secs(5) {
                last_sweep = Instant::now();
                if let Err(err) = advance_all(&core).await {
                    tracing::warn!(error = %err, "dsr: advancing requests failed");
                }
                if let Err(err) = crate::reminders::run(&core).await {
                    tracing::warn!(error = %err, "dsr: reminding customers failed");
                }
            }
            tokio::select! {
                Some(ended) = running.join_next_with_id() => {
                    let id = match ended {
                        Ok((id, ())) => id,
                        Err(err) => {
                            tracing::error!(error = %err, "dsr: a step's task ended abnormally");
                            err.id()
                        }
                    };
                    targets.remove(&id);
                }
                _ = core.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = stopped.changed() => break,
            }
        }
        // Stopping: the steps in flight are left as a crash would leave
        // them (each is idempotent), and their leases released so another
        // replica takes them at once rather than a lease later.
        running.shutdown().await;
        if let Err(err) = release(&core).await {
            tracing::warn!(error = %err, "dsr: releasing leases failed; they run out");
        }
    });
    Running { stop, task }
}

/// One claimed step.
#[derive(Debug, Clone)]
pub struct Step {
    pub id: String,
    pub request_id: String,
    pub phase: String,
    pub service: String,
    pub scope: String,
    pub attempts: i64,
    /// When the claim was asked for: the lease runs from no earlier.
    pub claimed: Instant,
}

impl Step {
    /// What the step waits on, for the slots of one replica: the service
    /// it calls, or the mailer.
    fn target(&self) -> &str {
        if self.phase == MAIL {
            MAIL
        } else {
            &self.service
        }
    }
}

/// Claims up to `free` due steps, none for a target that already has
/// [`PER_TARGET`] running (`busy`): each one by a compare-and-set on its
/// lease, so of two replicas only one gets it.
async fn claim(
    core: &Core,
    free: usize,
    busy: &HashMap<&str, usize>,
) -> Result<Vec<Step>, ApiError> {
    let pool = core.context.db.pool();
    // The lease runs from `now` in the table; this replica counts it from
    // no later.
    let (at, now) = (Instant::now(), now_micros());
    let full: Vec<&str> = busy
        .iter()
        .filter(|(_, n)| **n >= PER_TARGET)
        .map(|(target, _)| *target)
        .collect();
    // Only placeholders are added to the text: the names are bound.
    let mut sql = "SELECT id, request_id, phase, service, scope, attempts FROM dsr_steps \
         WHERE state = 'pending' AND next_time <= $1 AND (lease_until IS NULL OR lease_until < $1)"
        .to_owned();
    let services: Vec<&str> = full.iter().copied().filter(|t| *t != MAIL).collect();
    if full.contains(&MAIL) {
        sql.push_str(" AND phase <> 'mail'");
    }
    if !services.is_empty() {
        let marks: Vec<String> = (0..services.len()).map(|i| format!("${}", i + 3)).collect();
        sql.push_str(&format!(
            " AND (phase = 'mail' OR service NOT IN ({}))",
            marks.join(", ")
        ));
    }
    sql.push_str(" ORDER BY next_time, id LIMIT $2");
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(now)
        .bind(free as i64);
    for service in &services {
        query = query.bind(*service);
    }
    let rows = query.fetch_all(pool).await?;
    let mut taking: HashMap<String, usize> = HashMap::new();
    let mut claimed = Vec::new();
    for row in rows {
        let id: String = row.try_get("id")?;
        let phase: String = row.try_get("phase")?;
        let service: String = row.try_get("service")?;
        let target = if phase == MAIL {
            MAIL
        } else {
            service.as_str()
        };
        let running = busy.get(target).copied().unwrap_or(0);
        let taken_here = taking.entry(target.to_owned()).or_default();
        if running + *taken_here >= PER_TARGET {
            continue;
        }
        let taken = sqlx::query(
            "UPDATE dsr_steps SET lease_owner = $1, lease_until = $2, attempts = attempts + 1, \
             update_time = $3 WHERE id = $4 AND state = 'pending' \
             AND (lease_until IS NULL OR lease_until < $3)",
        )
        .bind(&core.worker)
        .bind(now + LEASE.as_micros() as i64)
        .bind(now)
        .bind(&id)
        .execute(pool)
        .await?;
        if taken.rows_affected() == 1 {
            *taken_here += 1;
            claimed.push(Step {
                id,
                request_id: row.try_get("request_id")?,
                phase,
                service,
                scope: row.try_get("scope")?,
                attempts: row.try_get::<i64, _>("attempts")? + 1,
                claimed: at,
            });
        }
    }
    Ok(claimed)
}

/// Renews a running step's lease; false if it is no longer ours.
async fn renew(core: &Core, step: &Step) -> Result<bool, ApiError> {
    let now = now_micros();
    let renewed = sqlx::query(
        "UPDATE dsr_steps SET lease_until = $1 WHERE id = $2 AND lease_owner = $3 \
         AND state = 'pending'",
    )
    .bind(now + LEASE.as_micros() as i64)
    .bind(&step.id)
    .bind(&core.worker)
    .execute(core.context.db.pool())
    .await?;
    Ok(renewed.rows_affected() == 1)
}

/// Completes when the step's lease is lost: taken over by another replica
/// (or the step cancelled), or not renewed before it ran out, after which
/// another replica may take it. Never completes while the lease holds.
async fn lease_lost(core: &Core, step: &Step) {
    let mut held_until = step.claimed + LEASE;
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        let asked = Instant::now();
        match tokio::time::timeout_at(held_until.into(), renew(core, step)).await {
            Ok(Ok(true)) => held_until = asked + LEASE,
            Ok(Ok(false)) => {
                tracing::warn!(step = %step.id, "dsr: a step's lease was taken over; it stops here");
                return;
            }
            Ok(Err(err)) if Instant::now() < held_until => {
                tracing::warn!(error = %err, step = %step.id, "dsr: renewing a lease failed; retrying");
            }
            Ok(Err(_)) | Err(_) => {
                tracing::warn!(step = %step.id, "dsr: a step's lease ran out; it stops here");
                return;
            }
        }
    }
}

/// Gives up the leases of this replica's unfinished steps.
async fn release(core: &Core) -> Result<(), ApiError> {
    sqlx::query(
        "UPDATE dsr_steps SET lease_owner = NULL, lease_until = NULL \
         WHERE lease_owner = $1 AND state = 'pending'",
    )
    .bind(&core.worker)
    .execute(core.context.db.pool())
    .await?;
    Ok(())
}

/// What a step left behind.
struct Outcome {
    /// Stored with the step (record references, counts; no values).
    result: String,
    /// For the history.
    event: Option<(String, String, String)>,
}

async fn run(core: Arc<Core>, step: Step) {
    let core = &core;
    let traceparent = traceparent(core, &step.request_id).await.ok().flatten();
    // The phase and the service it reaches, never the scope: a locate
    // step's scope can name a person's record.
    let span = tracing::info_span!(
        "dsr.step",
        otel.name = "dsr.step",
        otel.kind = "internal",
        dsr.step.phase = %step.phase,
        dsr.step.service = %step.service,
        dsr.step.attempt = step.attempts,
        dsr.step.outcome = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
    );
    custodian_runtime::telemetry::continue_trace(&span, traceparent.as_deref());
    async {
        let work = async {
            match step.phase.as_str() {
                LOCATE => locate(core, &step).await,
                ACT => act(core, &step).await,
                MAIL => send(core, &step).await,
                _ => Err(Status::internal("unknown step")),
            }
        };
        // The work stops (is dropped) when the lease is lost: the replica
        // that holds it now runs the step.
        let result = tokio::select! {
            result = work => result,
            () = lease_lost(core, &step) => return,
        };
        let span = tracing::Span::current();
        let outcome = match &result {
            Ok(_) => "done",
            Err(status) if permanent(status) => "failed",
            Err(_) => "retry",
        };
        span.record("dsr.step.outcome", outcome);
        if let Err(status) = &result {
            span.record("otel.status_description", format!("{:?}", status.code()));
        }
        let recorded = match result {
            Ok(outcome) => finish_step(core, &step, "done", &outcome.result, outcome.event).await,
            Err(status) if permanent(&status) => {
                let what = format!("{:?}: {}", status.code(), status.message());
                finish_step(
                    core,
                    &step,
                    "failed",
                    "",
                    Some(("failed".into(), target(&step), what)),
                )
                .await
            }
            Err(status) => retry_later(core, &step, &status).await,
        };
        if let Err(err) = recorded {
            tracing::warn!(error = %err, step = %step.id, "dsr: recording a step failed");
        }
        if let Err(err) = advance(core, &step.request_id).await {
            tracing::warn!(error = %err, request = %step.request_id, "dsr: advancing failed");
        }
    }
    .instrument(span)
    .await
}

/// The caller's fault, not the moment's: retrying cannot help.
fn permanent(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::PermissionDenied
            | Code::NotFound
            | Code::OutOfRange
            | Code::Unimplemented
            | Code::AlreadyExists
    )
}

fn target(step: &Step) -> String {
    match (step.phase.as_str(), step.scope.as_str()) {
        (MAIL, _) => step.service.clone(),
        (LOCATE, BY_EMAIL) | (ACT, "") => step.service.clone(),
        (LOCATE, user) => format!("{} (by {user})", step.service),
        (_, tenant) => format!("{} for {tenant}", step.service),
    }
}

async fn finish_step(
    core: &Core,
    step: &Step,
    state: &str,
    result: &str,
    event: Option<(String, String, String)>,
) -> Result<(), ApiError> {
    let now = now_micros();
    let mut tx = core.context.db.pool().begin().await?;
    // Fenced by the lease: a replica that lost it leaves the row alone.
    let marked = sqlx::query(
        "UPDATE dsr_steps SET state = $1, result = $2, lease_owner = NULL, lease_until = NULL, \
         error = NULL, update_time = $3 WHERE id = $4 AND lease_owner = $5 AND state = 'pending'",
    )
    .bind(state)
    .bind(result)
    .bind(now)
    .bind(&step.id)
    .bind(&core.worker)
    .execute(&mut *tx)
    .await?;
    if marked.rows_affected() == 1
        && let Some((kind, target, description)) = event
    {
        insert_event(
            &mut *tx,
            core,
            &step.request_id,
            &kind,
            &target,
            &description,
        )
        .await?;
    }
    tx.commit().await?;
    // A step that had failed went through: its service is back.
    if marked.rows_affected() == 1 && state == "done" && step.phase != MAIL && step.attempts > 1 {
        nudge(core, &step.service).await;
    }
    Ok(())
}

/// A service is back: its other steps waiting out a backoff go on now
/// rather than at their next attempt, so requests move on as soon as it
/// answers again. Only on a recovery: a step that fails for reasons of its
/// own keeps its backoff while others succeed. Best effort: the backoff
/// ends anyway.
async fn nudge(core: &Core, service: &str) {
    let now = now_micros();
    let nudged = sqlx::query(
        "UPDATE dsr_steps SET next_time = $1 WHERE service = $2 AND phase <> 'mail' \
         AND state = 'pending' AND next_time > $1 AND lease_owner IS NULL",
    )
    .bind(now)
    .bind(service)
    .execute(core.context.db.pool())
    .await;
    match nudged {
        Ok(done) if done.rows_affected() > 0 => core.wake.notify_one(),
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "dsr: moving waiting steps on failed"),
    }
}

async fn retry_later(core: &Core, step: &Step, status: &Status) -> Result<(), ApiError> {
    let wait = Duration::from_millis(250)
        .saturating_mul(1 << step.attempts.clamp(0, 16) as u32)
        .min(MAX_BACKOFF);
    tracing::info!(
        step = %step.id,
        code = ?status.code(),
        attempts = step.attempts,
        retry_in_ms = wait.as_millis() as u64,
        "dsr: a step will be retried"
    );
    sqlx::query(
        "UPDATE dsr_steps SET lease_owner = NULL, lease_until = NULL, next_time = $1, error = $2, \
         update_time = $3 WHERE id = $4 AND lease_owner = $5 AND state = 'pending'",
    )
    .bind(now_micros() + wait.as_micros() as i64)
    .bind(format!("{:?}", status.code()))
    .bind(now_micros())
    .bind(&step.id)
    .bind(&core.worker)
    .execute(core.context.db.pool())
    .await?;
    Ok(())
}

/// Adds one line to a request's history.
pub async fn insert_event<'c, E>(
    executor: E,
    core: &Core,
    request_id: &str,
    kind: &str,
    target: &str,
    description: &str,
) -> Result<(), ApiError>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    insert_event_at(executor, core.now(), request_id, kind, target, description).await
}

/// As [`insert_event`], at `time` (for work that cannot hold the core).
pub async fn insert_event_at<'c, E>(
    executor: E,
    time: i64,
    request_id: &str,
    kind: &str,
    target: &str,
    description: &str,
) -> Result<(), ApiError>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    sqlx::query(
        "INSERT INTO dsr_events (id, request_id, time, kind, target, description) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(request_id)
    .bind(time)
    .bind(kind)
    .bind(target)
    .bind(description)
    .execute(executor)
    .await?;
    Ok(())
}

/// Adds a step unless it exists: planning twice plans once.
pub async fn insert_step<'c, E>(
    executor: E,
    request_id: &str,
    phase: &str,
    service: &str,
    scope: &str,
) -> Result<(), ApiError>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let now = now_micros();
    sqlx::query(
        "INSERT INTO dsr_steps (id, request_id, phase, service, scope, state, attempts, next_time, \
         create_time, update_time) VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6, $6) \
         ON CONFLICT (request_id, phase, service, scope) DO NOTHING",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(request_id)
    .bind(phase)
    .bind(service)
    .bind(scope)
    .bind(now)
    .execute(executor)
    .await?;
    Ok(())
}

async fn traceparent(core: &Core, request_id: &str) -> Result<Option<String>, ApiError> {
    Ok(
        sqlx::query("SELECT traceparent FROM dsr_runs WHERE request_id = $1")
            .bind(request_id)
            .fetch_optional(core.context.db.pool())
            .await?
            .and_then(|r| r.try_get::<Option<String>, _>("traceparent").ok().flatten()),
    )
}

/// The orchestrator's own call: dsr's service identity, for the request,
/// as `method` (what its audit events name).
pub fn own_call(
    core: &Core,
    request_name: &str,
    method: &'static str,
    action: AuditAction,
) -> Call {
    Call {
        access: core.context.privacy.internal_access(
            Actor::Service {
                on_behalf_of: Some(request_name.to_owned()),
            },
            Purpose::DsrFulfilment,
            Method {
                path: method,
                action,
                purposes: &[Purpose::DsrFulfilment],
            },
        ),
        deadline: None,
        request: Some(request_name.to_owned()),
    }
}

pub fn request_name(request_id: &str) -> String {
    format!("requests/{request_id}")
}

/// The request, whole (the orchestrator needs the verified email).
pub async fn load(core: &Core, request_id: &str) -> Result<custodian_kit::Stored<Request>, Status> {
    let name = request_name(request_id);
    let call = own_call(core, &name, ORCHESTRATE, AuditAction::Read);
    core.requests.find(&call, &name, "name").await
}

const ORCHESTRATE: &str = "/custodian.dsr.v1.RequestService/(orchestrator)";
const LOCATE_METHOD: &str = "/custodian.subject.v1.SubjectDataService/LocateSubjectData";
const EXPORT_METHOD: &str = "/custodian.subject.v1.SubjectDataService/ExportSubjectData";
const RECTIFY_METHOD: &str = "/custodian.subject.v1.SubjectDataService/RectifySubjectData";
const ERASE_METHOD: &str = "/custodian.subject.v1.SubjectDataService/EraseSubjectData";

/// A located record, as a step keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Located {
    pub resource: String,
    pub service: String,
    pub data_category: i32,
    /// "" for the company, else "tenants/{tenant}".
    pub controller: String,
}

impl Located {
    fn of(record: &SubjectRecord) -> Self {
        Self {
            resource: record.resource.clone(),
            service: record.service.clone(),
            data_category: record.data_category,
            controller: match record.controller.as_ref().and_then(|c| c.kind.as_ref()) {
                Some(controller::Kind::Tenant(t)) => t.clone(),
                _ => String::new(),
            },
        }
    }

    pub fn reference(&self) -> SubjectRecord {
        SubjectRecord {
            resource: self.resource.clone(),
            service: self.service.clone(),
            data_category: self.data_category,
            controller: Some(controller_of(&self.controller)),
        }
    }
}

pub fn controller_of(scope: &str) -> Controller {
    Controller {
        kind: Some(if scope.is_empty() {
            controller::Kind::Company(true)
        } else {
            controller::Kind::Tenant(scope.to_owned())
        }),
    }
}

fn subject(step_scope: &str, email: &str) -> SubjectIdentifier {
    SubjectIdentifier {
        kind: Some(if step_scope == BY_EMAIL {
            subject_identifier::Kind::Email(email.to_owned())
        } else {
            subject_identifier::Kind::Id(step_scope.to_owned())
        }),
    }
}

fn client(
    core: &Core,
    service: &str,
    request: &str,
) -> Result<SubjectDataServiceClient<custodian_kit::peers::PeerChannel>, Status> {
    Ok(SubjectDataServiceClient::new(core.context.peers.acting(
        service,
        Purpose::DsrFulfilment,
        request,
    )?))
}

async fn audit_step(
    core: &Core,
    request: &custodian_kit::Stored<Request>,
    method: &'static str,
    action: AuditAction,
    detail: String,
) -> Result<(), ApiError> {
    let name = request_name(&request.id);
    let call = own_call(core, &name, method, action);
    let mut event = core.context.privacy.event(
        &call.access,
        &name,
        &request.subject_id,
        &[],
        AuditOutcome::Ok,
    );
    event.detail = detail;
    core.context.privacy.record_all(vec![event]).await
}

/// Asks one service where the subject's records are.
async fn locate(core: &Core, step: &Step) -> Result<Outcome, Status> {
    let request = load(core, &step.request_id).await?;
    let name = request_name(&request.id);
    let email = email_of(&request.message);
    audit_step(
        core,
        &request,
        LOCATE_METHOD,
        AuditAction::Locate,
        target(step),
    )
    .await?;
    let answer = client(core, &step.service, &name)?
        .locate_subject_data(LocateSubjectDataRequest {
            subject: Some(subject(&step.scope, &email)),
            controller: None,
            request: name.clone(),
        })
        .await;
    let records: Vec<Located> = match answer {
        Ok(answer) => answer
            .into_inner()
            .records
            .iter()
            .map(Located::of)
            .collect(),
        // A service that does not find records by user name.
        Err(status) if step.scope != BY_EMAIL && status.code() == Code::InvalidArgument => {
            Vec::new()
        }
        Err(status) => return Err(status),
    };
    // The person's authorized-user records lead to what other services hold
    // for that user.
    if step.scope == BY_EMAIL {
        let users: BTreeSet<&str> = records
            .iter()
            .map(|r| r.resource.as_str())
            .filter(|r| is_user_name(r))
            .collect();
        for user in users {
            for service in &core.targets() {
                if *service != step.service {
                    insert_step(
                        core.context.db.pool(),
                        &step.request_id,
                        LOCATE,
                        service,
                        user,
                    )
                    .await?;
                }
            }
        }
    }
    let held_for: BTreeSet<&str> = records
        .iter()
        .filter(|r| !r.controller.is_empty())
        .map(|r| r.controller.as_str())
        .collect();
    let description = if held_for.is_empty() {
        format!("{} records", records.len())
    } else {
        format!(
            "{} records, {} held for {}",
            records.len(),
            records.iter().filter(|r| !r.controller.is_empty()).count(),
            held_for.into_iter().collect::<Vec<_>>().join(", ")
        )
    };
    Ok(Outcome {
        result: serde_json::to_string(&records).map_err(ApiError::internal)?,
        event: Some(("located".into(), target(step), description)),
    })
}

fn is_user_name(resource: &str) -> bool {
    let parts: Vec<&str> = resource.split('/').collect();
    matches!(parts.as_slice(), ["tenants", _, "users", _])
}

pub fn email_of(request: &Request) -> String {
    request
        .requester
        .as_ref()
        .map(|r| r.email.clone())
        .unwrap_or_default()
}

/// Every locate result of a request: (subject asked for, record).
pub async fn located(core: &Core, request_id: &str) -> Result<Vec<(String, Located)>, ApiError> {
    let rows = sqlx::query(
        "SELECT scope, result FROM dsr_steps WHERE request_id = $1 AND phase = $2 AND state = 'done'",
    )
    .bind(request_id)
    .bind(LOCATE)
    .fetch_all(core.context.db.pool())
    .await?;
    let mut out = Vec::new();
    for row in rows {
        let scope: String = row.try_get("scope")?;
        let result: Option<String> = row.try_get("result")?;
        let records: Vec<Located> =
            serde_json::from_str(result.as_deref().unwrap_or("[]")).map_err(ApiError::internal)?;
        out.extend(records.into_iter().map(|r| (scope.clone(), r)));
    }
    Ok(out)
}

/// Carries the request out in one service for one controller, for every
/// subject (email, user names) that located records there.
async fn act(core: &Core, step: &Step) -> Result<Outcome, Status> {
    let request = load(core, &step.request_id).await?;
    let name = request_name(&request.id);
    let email = email_of(&request.message);
    let kind = request::Kind::try_from(request.message.kind).unwrap_or_default();
    let here: Vec<(String, Located)> = located(core, &step.request_id)
        .await?
        .into_iter()
        .filter(|(_, r)| service_of(&r.service, core) == step.service && r.controller == step.scope)
        .collect();
    let subjects: BTreeSet<String> = here.iter().map(|(subject, _)| subject.clone()).collect();
    let controller = Some(controller_of(&step.scope));
    let mut client = client(core, &step.service, &name)?;
    let mut count = 0usize;
    let verb = match kind {
        request::Kind::Access | request::Kind::Portability => {
            audit_step(
                core,
                &request,
                EXPORT_METHOD,
                AuditAction::Export,
                target(step),
            )
            .await?;
            let mut records = Vec::new();
            // A record found by email and by user name is one record.
            let mut seen = BTreeSet::new();
            for subject_key in &subjects {
                let mut stream = client
                    .export_subject_data(ExportSubjectDataRequest {
                        subject: Some(subject(subject_key, &email)),
                        controller: controller.clone(),
                        request: name.clone(),
                    })
                    .await?
                    .into_inner();
                while let Some(item) = stream.next().await {
                    let item = item?;
                    let resource = item.record.as_ref().map(|r| r.resource.clone());
                    if seen.insert(resource) {
                        records.push(item);
                    }
                }
            }
            count = records.len();
            bundle::store_part(core, &request, &step.id, &records).await?;
            "exported"
        }
        request::Kind::Rectification => {
            audit_step(
                core,
                &request,
                RECTIFY_METHOD,
                AuditAction::Rectify,
                target(step),
            )
            .await?;
            for subject_key in &subjects {
                // A correction naming a record goes only where that record is.
                let corrections = request
                    .message
                    .corrections
                    .iter()
                    .filter(|c| {
                        c.resource.is_empty()
                            || here
                                .iter()
                                .any(|(s, r)| s == subject_key && r.resource == c.resource)
                    })
                    .cloned()
                    .collect();
                let answer = rectify_here(
                    &mut client,
                    RectifySubjectDataRequest {
                        subject: Some(subject(subject_key, &email)),
                        corrections,
                        controller: controller.clone(),
                        request: name.clone(),
                    },
                )
                .await?;
                count += answer;
            }
            "rectified"
        }
        request::Kind::Erasure => {
            audit_step(
                core,
                &request,
                ERASE_METHOD,
                AuditAction::Erase,
                target(step),
            )
            .await?;
            for subject_key in &subjects {
                let answer = client
                    .erase_subject_data(EraseSubjectDataRequest {
                        subject: Some(subject(subject_key, &email)),
                        controller: controller.clone(),
                        request: name.clone(),
                    })
                    .await?;
                count += answer.into_inner().erased.len();
            }
            "erased"
        }
        // Objections and restrictions are recorded and routed; no service
        // changes data for them.
        _ => "recorded",
    };
    Ok(Outcome {
        result: count.to_string(),
        event: Some((verb.into(), target(step), format!("{count} records"))),
    })
}

/// Applies the corrections this service has fields for, and the number of
/// records changed. A correction of every record (no `resource`) names the
/// field as one service's resources spell it ("email", "requester.email",
/// "author.email"); a service without that field refuses the path, so such
/// corrections are left out for it instead of failing the request there.
/// Any other refusal stands.
async fn rectify_here(
    client: &mut SubjectDataServiceClient<custodian_kit::peers::PeerChannel>,
    mut request: RectifySubjectDataRequest,
) -> Result<usize, Status> {
    loop {
        if request.corrections.is_empty() {
            return Ok(0);
        }
        let status = match client.rectify_subject_data(request.clone()).await {
            Ok(answer) => return Ok(answer.into_inner().rectified.len()),
            Err(status) => status,
        };
        let foreign = foreign_fields(&status, &request.corrections);
        if foreign.is_empty() {
            return Err(status);
        }
        request.corrections = std::mem::take(&mut request.corrections)
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !foreign.contains(i))
            .map(|(_, c)| c)
            .collect();
    }
}

/// The corrections of every record whose field path a service refused, when
/// those are all it refused; else none.
fn foreign_fields(status: &Status, corrections: &[FieldCorrection]) -> BTreeSet<usize> {
    use tonic_types::StatusExt as _;
    let mut out = BTreeSet::new();
    if status.code() != Code::InvalidArgument {
        return out;
    }
    let Some(bad) = status.get_error_details().bad_request().cloned() else {
        return out;
    };
    for violation in &bad.field_violations {
        let index = violation
            .field
            .strip_prefix("corrections[")
            .and_then(|rest| rest.strip_suffix("].field_path"))
            .and_then(|i| i.parse::<usize>().ok());
        match index {
            Some(i) if corrections.get(i).is_some_and(|c| c.resource.is_empty()) => {
                out.insert(i);
            }
            _ => return BTreeSet::new(),
        }
    }
    out
}

/// The short name of the service that answered with a gRPC service name
/// ("custodian.identity.v1.ContactService" → "identity").
fn service_of(grpc: &str, core: &Core) -> String {
    let package = grpc.split('.').nth(1).unwrap_or_default();
    core.targets()
        .into_iter()
        .find(|s| s.as_str() == package)
        .unwrap_or_else(|| package.to_owned())
}

/// Sends one notice.
async fn send(core: &Core, step: &Step) -> Result<Outcome, Status> {
    // The last word comes last: a refusal or an extension still being
    // mailed goes first (and, for an erasure, is not left in the outbox
    // after the mail to the requester is deleted).
    if step.service == "completed" && unfinished(core, &step.request_id, MAIL, None).await? > 1 {
        return Err(Status::unavailable(
            "the request's other notices are mailed first",
        ));
    }
    let request = load(core, &step.request_id).await?;
    let from = &core.context.config.mail_from;
    let notice_owned;
    let tenants;
    let notice = match step.service.as_str() {
        "routed" => {
            tenants = customers(core, &step.request_id)
                .await?
                .into_iter()
                .map(|(name, _)| name)
                .collect::<Vec<_>>();
            mail::Notice::Routed { tenants: &tenants }
        }
        "company_part" => {
            tenants = customers(core, &step.request_id)
                .await?
                .into_iter()
                .filter(|(_, answered)| !answered)
                .map(|(name, _)| name)
                .collect::<Vec<_>>();
            mail::Notice::CompanyPartDone {
                customers: &tenants,
                export_until: bundle::expires(core, &step.request_id).await?,
            }
        }
        "declined" => {
            notice_owned = decline_reason(core, &step.request_id, &step.scope).await?;
            mail::Notice::Declined {
                tenant: &step.scope,
                reason: &notice_owned,
            }
        }
        "extended" => mail::Notice::Extended {
            reason: &request.message.extension_reason,
            due: request
                .message
                .due_time
                .as_ref()
                .map(crate::ts_micros)
                .unwrap_or_default(),
        },
        "cancelled" => mail::Notice::Cancelled,
        "completed" => mail::Notice::Completed {
            export_until: bundle::expires(core, &step.request_id).await?,
        },
        _ => return Err(Status::internal("unknown notice")),
    };
    for message in mail::notice(from, &request.message, &notice) {
        core.context
            .mailer
            .send(&message)
            .await
            .map_err(|err| Status::unavailable(format!("mail: {err}")))?;
    }
    // The last word to the requester of an erasure is handed over; what
    // was mailed to them is not kept.
    if step.service == "completed" {
        proof::forget_mail(core, &request.message).await?;
    }
    Ok(Outcome {
        result: String::new(),
        event: Some(("mailed".into(), step.service.clone(), String::new())),
    })
}

async fn decline_reason(core: &Core, request_id: &str, tenant: &str) -> Result<String, Status> {
    let tenant_id = tenant.strip_prefix("tenants/").unwrap_or(tenant);
    let sealed =
        sqlx::query("SELECT reason FROM dsr_inbox WHERE request_id = $1 AND tenant_id = $2")
            .bind(request_id)
            .bind(tenant_id)
            .fetch_optional(core.context.db.pool())
            .await
            .map_err(ApiError::from)?
            .map(|r| r.try_get::<String, _>("reason"))
            .transpose()
            .map_err(ApiError::from)?
            .unwrap_or_default();
    crate::inbox::reason_of(core, request_id, tenant_id, &sealed).await
}

/// Moves every unfinished request on (after a restart, or when a replica
/// died between a step and its request's next move).
async fn advance_all(core: &Core) -> Result<(), Status> {
    let ids: Vec<String> = sqlx::query("SELECT request_id FROM dsr_runs WHERE phase IN ($1, $2)")
        .bind(LOCATING)
        .bind(ACTING)
        .fetch_all(core.context.db.pool())
        .await
        .map_err(ApiError::from)?
        .into_iter()
        .map(|r| r.try_get("request_id"))
        .collect::<Result<_, _>>()
        .map_err(ApiError::from)?;
    for id in ids {
        advance(core, &id).await?;
    }
    Ok(())
}

async fn phase(core: &Core, request_id: &str) -> Result<Option<String>, ApiError> {
    Ok(
        sqlx::query("SELECT phase FROM dsr_runs WHERE request_id = $1")
            .bind(request_id)
            .fetch_optional(core.context.db.pool())
            .await?
            .map(|r| r.try_get::<String, _>("phase"))
            .transpose()?,
    )
}

/// Moves a phase on, if no one else did.
async fn move_phase(core: &Core, request_id: &str, from: &str, to: &str) -> Result<bool, ApiError> {
    let moved = sqlx::query(
        "UPDATE dsr_runs SET phase = $1, update_time = $2 WHERE request_id = $3 AND phase = $4",
    )
    .bind(to)
    .bind(now_micros())
    .bind(request_id)
    .bind(from)
    .execute(core.context.db.pool())
    .await?;
    Ok(moved.rows_affected() == 1)
}

/// How many steps of `phase` (and `scope`, if given) have not finished.
async fn unfinished(
    core: &Core,
    request_id: &str,
    phase: &str,
    scope: Option<&str>,
) -> Result<i64, ApiError> {
    let row = match scope {
        None => sqlx::query(
            "SELECT COUNT(*) AS n FROM dsr_steps WHERE request_id = $1 AND phase = $2 AND state = 'pending'",
        )
        .bind(request_id)
        .bind(phase)
        .fetch_one(core.context.db.pool())
        .await?,
        Some(scope) => sqlx::query(
            "SELECT COUNT(*) AS n FROM dsr_steps WHERE request_id = $1 AND phase = $2 AND scope = $3 AND state = 'pending'",
        )
        .bind(request_id)
        .bind(phase)
        .bind(scope)
        .fetch_one(core.context.db.pool())
        .await?,
    };
    Ok(row.try_get("n")?)
}

/// Takes a request as far as its finished steps allow. Safe to run again
/// and by several replicas at once: every insert is idempotent, and every
/// move of a phase a compare-and-set.
pub async fn advance(core: &Core, request_id: &str) -> Result<(), Status> {
    match phase(core, request_id).await?.as_deref() {
        Some(LOCATING) => {
            if unfinished(core, request_id, LOCATE, None).await? > 0 {
                return plan_located(core, request_id).await;
            }
            plan(core, request_id).await?;
            if move_phase(core, request_id, LOCATING, ACTING).await? {
                core.wake.notify_one();
            }
            Box::pin(advance(core, request_id)).await
        }
        Some(ACTING) => finish_tenants_and_request(core, request_id).await,
        _ => Ok(()),
    }
}

/// Acts at once on the company's records in each service whose locating
/// is over, while other services are still being asked: a service that
/// does not answer delays only its own part. (What is held for customers
/// waits for every answer: a customer's inbox item lists all of it.) A
/// service's locating is over when its own locate steps are done and no
/// more can come: more come only from the person's user records, which
/// only [`USERS`] holds (see [`is_user_name`]).
async fn plan_located(core: &Core, request_id: &str) -> Result<(), Status> {
    let pending: Vec<(String, String)> = sqlx::query(
        "SELECT service, scope FROM dsr_steps WHERE request_id = $1 AND phase = $2 AND state = 'pending'",
    )
    .bind(request_id)
    .bind(LOCATE)
    .fetch_all(core.context.db.pool())
    .await
    .map_err(ApiError::from)?
    .into_iter()
    .map(|r| Ok((r.try_get("service")?, r.try_get("scope")?)))
    .collect::<Result<_, sqlx::Error>>()
    .map_err(ApiError::from)?;
    if pending
        .iter()
        .any(|(service, scope)| service == USERS && scope == BY_EMAIL)
    {
        return Ok(());
    }
    let asked: BTreeSet<&str> = pending.iter().map(|(s, _)| s.as_str()).collect();
    let ready: BTreeSet<String> = located(core, request_id)
        .await?
        .into_iter()
        .filter(|(_, r)| r.controller.is_empty())
        .map(|(_, r)| service_of(&r.service, core))
        .filter(|s| !asked.contains(s.as_str()))
        .collect();
    if ready.is_empty() {
        return Ok(());
    }
    let request = load(core, request_id).await?;
    if !acts(request::Kind::try_from(request.message.kind).unwrap_or_default()) {
        return Ok(());
    }
    let mut tx = core
        .context
        .db
        .pool()
        .begin()
        .await
        .map_err(ApiError::from)?;
    for service in &ready {
        insert_step(&mut *tx, request_id, ACT, service, "").await?;
    }
    tx.commit().await.map_err(ApiError::from)?;
    core.wake.notify_one();
    Ok(())
}

/// From where the records are to what is done with them.
async fn plan(core: &Core, request_id: &str) -> Result<(), Status> {
    let request = load(core, request_id).await?;
    let kind = request::Kind::try_from(request.message.kind).unwrap_or_default();
    let located = located(core, request_id).await?;
    // The company's records, per service; a customer's, per customer.
    let mut company: BTreeSet<String> = BTreeSet::new();
    let mut tenants: BTreeMap<String, BTreeSet<Located>> = BTreeMap::new();
    for (_, record) in &located {
        if record.controller.is_empty() {
            company.insert(service_of(&record.service, core));
        } else {
            tenants
                .entry(record.controller.clone())
                .or_default()
                .insert(record.clone());
        }
    }
    let due = request.message.due_time.as_ref().map(crate::ts_micros);
    let names = customer_names(core, &request_name(request_id), tenants.keys()).await;
    let mut tx = core
        .context
        .db
        .pool()
        .begin()
        .await
        .map_err(ApiError::from)?;
    if acts(kind) {
        for service in &company {
            insert_step(&mut *tx, request_id, ACT, service, "").await?;
        }
    }
    let now = core.now();
    for (tenant, records) in &tenants {
        let tenant_id = tenant.strip_prefix("tenants/").unwrap_or(tenant);
        let references: Vec<Located> = records.iter().cloned().collect();
        sqlx::query(
            "INSERT INTO dsr_inbox (id, tenant_id, request_id, kind, records, state, reason, \
             due_time, create_time, update_time, tenant_name) \
             VALUES ($1, $2, $3, $4, $5, $6, '', $7, $8, $8, $9) \
             ON CONFLICT (request_id, tenant_id) DO NOTHING",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(tenant_id)
        .bind(request_id)
        .bind(mail::kind_word(kind))
        .bind(serde_json::to_string(&references).map_err(ApiError::internal)?)
        .bind(InboxItemState::Pending as i64)
        .bind(due)
        .bind(now)
        .bind(names.get(tenant))
        .execute(&mut *tx)
        .await
        .map_err(ApiError::from)?;
    }
    if !tenants.is_empty() {
        let names: Vec<&str> = tenants.keys().map(String::as_str).collect();
        insert_step(&mut *tx, request_id, MAIL, "routed", &names.join(",")).await?;
    }
    // Written once: the phase move that follows is the planner's commit.
    if phase(core, request_id).await?.as_deref() == Some(LOCATING) {
        let description = format!(
            "{} records: {} the company's, {} held for {} customers",
            located.len(),
            located
                .iter()
                .filter(|(_, r)| r.controller.is_empty())
                .count(),
            located
                .iter()
                .filter(|(_, r)| !r.controller.is_empty())
                .count(),
            tenants.len()
        );
        insert_event(&mut *tx, core, request_id, "planned", "", &description).await?;
        for tenant in tenants.keys() {
            insert_event(&mut *tx, core, request_id, "routed", tenant, "").await?;
        }
    }
    tx.commit().await.map_err(ApiError::from)?;
    Ok(())
}

/// The customers' display names, asked of identity when a request is
/// routed, by resource name. A name that cannot be had now is left out: the
/// requester is then told the customer's resource name, and the request
/// goes on (a name is a courtesy, not a reason to hold a request up).
async fn customer_names<'a>(
    core: &Core,
    request: &str,
    tenants: impl Iterator<Item = &'a String>,
) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for tenant in tenants {
        let channel = match core
            .context
            .peers
            .acting(USERS, Purpose::Administration, request)
        {
            Ok(channel) => channel,
            Err(status) => {
                tracing::warn!(code = ?status.code(), "dsr: customers' names cannot be asked for");
                break;
            }
        };
        match TenantServiceClient::new(channel)
            .get_tenant(GetTenantRequest {
                name: tenant.clone(),
            })
            .await
        {
            Ok(found) => {
                let name = found.into_inner().display_name;
                if !name.is_empty() {
                    names.insert(tenant.clone(), name);
                }
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), %tenant, "dsr: a customer's name could not be had");
            }
        }
    }
    names
}

/// The customers a request was routed to, as the requester is told them
/// ("Acme Corp (tenants/acme)"), and whether each has answered for good.
pub async fn customers(core: &Core, request_id: &str) -> Result<Vec<(String, bool)>, ApiError> {
    let rows = sqlx::query(
        "SELECT tenant_id, tenant_name, state FROM dsr_inbox WHERE request_id = $1 ORDER BY tenant_id",
    )
    .bind(request_id)
    .fetch_all(core.context.db.pool())
    .await?;
    rows.into_iter()
        .map(|row| {
            let tenant = format!("tenants/{}", row.try_get::<String, _>("tenant_id")?);
            let name: Option<String> = row.try_get("tenant_name")?;
            let state = InboxItemState::try_from(row.try_get::<i64, _>("state")? as i32)
                .unwrap_or_default();
            let answered = matches!(state, InboxItemState::Fulfilled | InboxItemState::Declined);
            Ok((
                match name {
                    Some(name) => format!("{name} ({tenant})"),
                    None => tenant,
                },
                answered,
            ))
        })
        .collect()
}

/// Whether the services act on data for this kind of request.
pub fn acts(kind: request::Kind) -> bool {
    matches!(
        kind,
        request::Kind::Access
            | request::Kind::Portability
            | request::Kind::Rectification
            | request::Kind::Erasure
    )
}

async fn finish_tenants_and_request(core: &Core, request_id: &str) -> Result<(), Status> {
    let pool = core.context.db.pool();
    // Customers whose instruction has been carried out.
    let fulfilling: Vec<String> =
        sqlx::query("SELECT tenant_id FROM dsr_inbox WHERE request_id = $1 AND state = $2")
            .bind(request_id)
            .bind(InboxItemState::Fulfilling as i64)
            .fetch_all(pool)
            .await
            .map_err(ApiError::from)?
            .into_iter()
            .map(|r| r.try_get("tenant_id"))
            .collect::<Result<_, _>>()
            .map_err(ApiError::from)?;
    for tenant_id in fulfilling {
        let scope = format!("tenants/{tenant_id}");
        if unfinished(core, request_id, ACT, Some(&scope)).await? == 0 {
            sqlx::query(
                "UPDATE dsr_inbox SET state = $1, update_time = $2 WHERE request_id = $3 \
                 AND tenant_id = $4 AND state = $5",
            )
            .bind(InboxItemState::Fulfilled as i64)
            .bind(core.now())
            .bind(request_id)
            .bind(&tenant_id)
            .bind(InboxItemState::Fulfilling as i64)
            .execute(pool)
            .await
            .map_err(ApiError::from)?;
        }
    }
    let waiting = waiting_customers(core, request_id).await?;
    // Read once per request, not on every pass over a request that waits
    // for its customers: a done company part is a column, not a load.
    if waiting > 0
        && company_part_time(core, request_id).await?.is_none()
        && unfinished(core, request_id, ACT, Some("")).await? == 0
    {
        company_part_done(core, request_id).await?;
    }
    if unfinished(core, request_id, ACT, None).await? > 0 {
        return Ok(());
    }
    if waiting > 0 {
        set_state(
            core,
            request_id,
            request::State::AwaitingTenants,
            None,
            &mut beside(|_| Box::pin(async { Ok(()) })),
        )
        .await?;
        return Ok(());
    }
    finish_request(core, request_id).await
}

/// Customers that have not yet answered for good.
async fn waiting_customers(core: &Core, request_id: &str) -> Result<i64, ApiError> {
    Ok(sqlx::query(
        "SELECT COUNT(*) AS n FROM dsr_inbox WHERE request_id = $1 AND state IN ($2, $3, $4)",
    )
    .bind(request_id)
    .bind(InboxItemState::Pending as i64)
    .bind(InboxItemState::Acknowledged as i64)
    .bind(InboxItemState::Fulfilling as i64)
    .fetch_one(core.context.db.pool())
    .await?
    .try_get("n")?)
}

/// The company's own part done while customers still decide: it is
/// delivered now, on the company's deadline, not on theirs. The export of
/// what the company controls can be downloaded from here on (the customers'
/// parts join it as they answer), and the requester is told which
/// customers hold the rest. Once, whichever replica gets here first.
async fn company_part_done(core: &Core, request_id: &str) -> Result<(), Status> {
    let request = load(core, request_id).await?;
    let kind = request::Kind::try_from(request.message.kind).unwrap_or_default();
    let now = core.now();
    let expiry = matches!(kind, request::Kind::Access | request::Kind::Portability)
        .then(|| now + core.context.config.dsr_export_ttl.as_micros() as i64);
    let mut tx = core
        .context
        .db
        .pool()
        .begin()
        .await
        .map_err(ApiError::from)?;
    let marked = sqlx::query(
        "UPDATE dsr_runs SET company_done_time = $1, export_expire_time = $2, update_time = $3 \
         WHERE request_id = $4 AND phase = $5 AND company_done_time IS NULL",
    )
    .bind(now)
    .bind(expiry)
    .bind(now_micros())
    .bind(request_id)
    .bind(ACTING)
    .execute(&mut *tx)
    .await
    .map_err(ApiError::from)?;
    if marked.rows_affected() == 1 {
        insert_step(&mut *tx, request_id, MAIL, "company_part", "").await?;
        insert_event_at(
            &mut *tx,
            now,
            request_id,
            "company_part_done",
            "",
            "the company's own part is done; customers decide about the rest",
        )
        .await?;
    }
    tx.commit().await.map_err(ApiError::from)?;
    if marked.rows_affected() == 1 {
        core.wake.notify_one();
    }
    Ok(())
}

/// When the company's own part of a request was done, if it was done
/// before the request ended (customers held some of the data).
pub async fn company_part_time(core: &Core, request_id: &str) -> Result<Option<i64>, ApiError> {
    Ok(
        sqlx::query("SELECT company_done_time FROM dsr_runs WHERE request_id = $1")
            .bind(request_id)
            .fetch_optional(core.context.db.pool())
            .await?
            .map(|r| r.try_get::<Option<i64>, _>("company_done_time"))
            .transpose()?
            .flatten(),
    )
}

/// Every step run and every customer answered: the request ends.
async fn finish_request(core: &Core, request_id: &str) -> Result<(), Status> {
    let pool = core.context.db.pool();
    let request = load(core, request_id).await?;
    let kind = request::Kind::try_from(request.message.kind).unwrap_or_default();
    // A step that failed for good leaves the request to the privacy team,
    // and the requester is not told it is done.
    let failed: i64 = sqlx::query(
        "SELECT COUNT(*) AS n FROM dsr_steps WHERE request_id = $1 AND phase <> $2 AND state = 'failed'",
    )
    .bind(request_id)
    .bind(MAIL)
    .fetch_one(pool)
    .await
    .map_err(ApiError::from)?
    .try_get("n")
    .map_err(ApiError::from)?;
    let end = if failed > 0 {
        request::State::Failed
    } else {
        request::State::Completed
    };
    // Done: the export (if any) may be downloaded until its expiry.
    let expiry = matches!(kind, request::Kind::Access | request::Kind::Portability)
        .then(|| core.now() + core.context.config.dsr_export_ttl.as_micros() as i64);
    let (event, description) = match end {
        request::State::Completed => ("completed", String::new()),
        _ => (
            "failed",
            format!("{failed} steps failed; the privacy team finishes the request"),
        ),
    };
    // The run ends with the request's state: its phase, the export's
    // expiry, the requester's notice and the history, all in the
    // transaction that sets the state.
    let now = core.now();
    let mut finish = beside(|tx| {
        let (request_id, description) = (request_id.to_owned(), description.clone());
        Box::pin(async move {
            let moved = sqlx::query(
                "UPDATE dsr_runs SET phase = $1, update_time = $2 WHERE request_id = $3 AND phase = $4",
            )
            .bind(DONE)
            .bind(now_micros())
            .bind(&request_id)
            .bind(ACTING)
            .execute(&mut **tx)
            .await?;
            if moved.rows_affected() == 1 {
                // The whole export is kept its full time from completion,
                // also when the company's part could be had before.
                if let Some(expiry) = expiry {
                    sqlx::query(
                        "UPDATE dsr_runs SET export_expire_time = $1 WHERE request_id = $2",
                    )
                    .bind(expiry)
                    .bind(&request_id)
                    .execute(&mut **tx)
                    .await?;
                }
                if end == request::State::Completed {
                    insert_step(&mut **tx, &request_id, MAIL, "completed", "").await?;
                }
                insert_event_at(&mut **tx, now, &request_id, event, "", &description).await?;
            }
            Ok(())
        })
    });
    // The proof of an erasure goes to the erasure log before the request
    // is final: a restored dsr database still shows it.
    if kind == request::Kind::Erasure {
        proof::record(
            core,
            request_id,
            &request.message,
            request.create_time,
            end,
            now,
        )
        .await?;
    }
    if !set_state(core, request_id, end, Some(now), &mut finish).await? {
        // Set already: by another replica, which ended the run too, or by
        // a cancel, which ended it otherwise. Either way this is a no-op,
        // unless a crash before this version left the run to end.
        alone(core, &mut finish).await?;
    }
    if end == request::State::Failed {
        proof::forget_mail(core, &request.message).await?;
    }
    core.wake.notify_one();
    Ok(())
}

/// Whether a request's state is final: nothing moves it on.
pub fn is_final(state: request::State) -> bool {
    matches!(
        state,
        request::State::Completed | request::State::Cancelled | request::State::Failed
    )
}

/// Whether a request in state `before` may move to `state`: only forward.
/// A final state is never left, and a request leaves verification only
/// once, so a late writer (a verify answered after the orchestrator
/// finished, a completion racing a cancel) cannot move it back.
fn moves(before: request::State, state: request::State) -> bool {
    before != state
        && !is_final(before)
        && !(state == request::State::InProgress && before != request::State::AwaitingVerification)
}

/// Sets a request's state (and completion time) through the kit: sealed
/// record, compare-and-set, audited as the orchestrator; and `also` (its
/// history, its run) in the same transaction, so no reader ever sees the
/// one without the other. False, with nothing done, when the state does not
/// move (see [`moves`]): another writer moved it, and wrote what went with
/// that.
pub async fn set_state(
    core: &Core,
    request_id: &str,
    state: request::State,
    complete: Option<i64>,
    also: Beside<'_>,
) -> Result<bool, Status> {
    let name = request_name(request_id);
    let current = load(core, request_id).await?;
    if !moves(
        request::State::try_from(current.message.state).unwrap_or_default(),
        state,
    ) {
        return Ok(false);
    }
    let call = own_call(core, &name, ORCHESTRATE, AuditAction::Update);
    // Read again on each attempt of the compare-and-set.
    let mut overtaken = false;
    let moved = core
        .requests
        .update_with(
            &call,
            &name,
            "name",
            "request",
            |before, r| {
                let was = request::State::try_from(before.message.state).unwrap_or_default();
                if !moves(was, state) {
                    overtaken = true;
                    return Err(ApiError::FailedPrecondition("moved already".into()));
                }
                r.state = state as i32;
                if let Some(at) = complete {
                    r.complete_time = Some(custodian_runtime::time::to_timestamp(at));
                }
                Ok(())
            },
            |_, _, _| {},
            also,
        )
        .await;
    match moved {
        Ok(_) => Ok(true),
        // Another writer moved it in between: theirs stands.
        Err(_) if overtaken => Ok(false),
        Err(status) => Err(status),
    }
}

/// Runs `work` in a transaction of its own.
async fn alone(core: &Core, work: Beside<'_>) -> Result<(), Status> {
    let mut tx = core
        .context
        .db
        .pool()
        .begin()
        .await
        .map_err(ApiError::from)?;
    work(&mut tx).await?;
    tx.commit().await.map_err(ApiError::from)?;
    Ok(())
}
