//! `custodian.dsr.v1.RequestService`: intake, verification, deadlines,
//! cancellation and the export download. What the orchestrator does with a
//! verified request is in [`crate::flow`].

use std::{pin::Pin, sync::Arc};

use custodian_kit::{
    Arg, Call, Filter, Idempotency, New, Query, Sensitive, Shown, Stored, beside, respond,
};
use custodian_proto::{
    audit::v1::AuditOutcome,
    dsr::v1::{
        Agent, CancelRequestRequest, CreateRequestRequest, DownloadExportRequest,
        DownloadExportResponse, ExtendRequestRequest, GetRequestRequest, Jurisdiction,
        ListRequestsRequest, ListRequestsResponse, Request, RequestEvent,
        ResendVerificationCodeRequest, TenantRouting, VerifyRequestRequest,
        inbox_item::State as InboxState,
        request::{Kind, State},
        request_service_server::RequestService,
        tenant_routing::Decision,
    },
};
use custodian_runtime::{ApiError, error::Violations, paging::Page, time::to_timestamp};
use futures::Stream;
use sqlx::Row as _;
use tonic::{Response, Status};

use crate::{Core, bundle, codes, codes::Checked, deadline, flow, intake, mail};

/// Bytes per chunk of a download.
const CHUNK: usize = 64 * 1024;

#[derive(Clone)]
pub struct Api {
    core: Arc<Core>,
}

impl Api {
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }
}

fn open(state: State) -> bool {
    matches!(
        state,
        State::AwaitingVerification | State::InProgress | State::AwaitingTenants
    )
}

fn state_of(request: &Request) -> State {
    State::try_from(request.state).unwrap_or_default()
}

/// A request's own checks, beyond what its declarations check.
fn check(request: &Request, prefix: &str, v: &mut Violations) {
    let kind = Kind::try_from(request.kind).unwrap_or_default();
    if kind == Kind::Unspecified {
        v.add(format!("{prefix}.kind"), "is required");
    }
    if Jurisdiction::try_from(request.jurisdiction).unwrap_or_default() == Jurisdiction::Unspecified
    {
        v.add(format!("{prefix}.jurisdiction"), "is required");
    }
    if request
        .requester
        .as_ref()
        .is_none_or(|r| r.email.is_empty())
    {
        v.add(
            format!("{prefix}.requester.email"),
            "is required: the verification code is sent there",
        );
    }
    match (kind, request.corrections.is_empty()) {
        (Kind::Rectification, true) => v.add(
            format!("{prefix}.corrections"),
            "a rectification needs at least one correction",
        ),
        (Kind::Rectification, false) | (_, true) => {}
        (_, false) => v.add(
            format!("{prefix}.corrections"),
            "only a rectification carries corrections",
        ),
    }
    for (i, c) in request.corrections.iter().enumerate() {
        if c.field_path.is_empty() {
            v.add(
                format!("{prefix}.corrections[{i}].field_path"),
                "is required",
            );
        }
        if c.value.is_empty() {
            v.add(
                format!("{prefix}.corrections[{i}].value"),
                "is required (erasure is its own kind of request)",
            );
        }
    }
    if let Some(agent) = &request.agent
        && agent.email.is_empty()
        && !agent.display_name.is_empty()
    {
        v.add(
            format!("{prefix}.agent.email"),
            "is required for an authorized agent",
        );
    }
}

/// A request as the API shows it: the record, with its history, the
/// customers it went to and the times the history holds.
pub async fn compose(
    core: &Core,
    mut request: Request,
    id: &str,
    subject_id: &str,
) -> Result<Request, ApiError> {
    let pool = core.context.db.pool();
    let events = sqlx::query(
        "SELECT time, kind, target, description FROM dsr_events WHERE request_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    for row in events {
        let time: i64 = row.try_get("time")?;
        let kind: String = row.try_get("kind")?;
        match kind.as_str() {
            "acknowledged" if request.acknowledge_time.is_none() => {
                request.acknowledge_time = Some(to_timestamp(time));
            }
            "verified" => request.verify_time = Some(to_timestamp(time)),
            _ => {}
        }
        request.history.push(RequestEvent {
            time: Some(to_timestamp(time)),
            kind,
            target: row.try_get("target")?,
            description: row.try_get("description")?,
        });
    }
    let items = sqlx::query(
        "SELECT id, tenant_id, tenant_name, records, state, reason FROM dsr_inbox \
         WHERE request_id = $1 ORDER BY tenant_id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    for row in items {
        let tenant_id: String = row.try_get("tenant_id")?;
        let records: Vec<flow::Located> =
            serde_json::from_str(&row.try_get::<String, _>("records")?)
                .map_err(ApiError::internal)?;
        let decision = match InboxState::try_from(row.try_get::<i64, _>("state")? as i32)
            .unwrap_or_default()
        {
            InboxState::Acknowledged => Decision::Acknowledged,
            InboxState::Fulfilling | InboxState::Fulfilled => Decision::Fulfil,
            InboxState::Declined => Decision::Decline,
            _ => Decision::Pending,
        };
        request.tenants.push(TenantRouting {
            inbox_item: format!(
                "tenants/{tenant_id}/inboxItems/{}",
                row.try_get::<String, _>("id")?
            ),
            tenant: format!("tenants/{tenant_id}"),
            display_name: row
                .try_get::<Option<String>, _>("tenant_name")?
                .unwrap_or_default(),
            records: records.len() as i32,
            decision: decision as i32,
            reason: crate::inbox::open_reason(
                core,
                subject_id,
                id,
                &tenant_id,
                &row.try_get::<String, _>("reason")?,
            )
            .await?,
        });
    }
    // A record found by email and by user name counts once.
    request.records_found = flow::located(core, id)
        .await?
        .into_iter()
        .map(|(_, record)| record.resource)
        .collect::<std::collections::BTreeSet<_>>()
        .len() as i32;
    request.export_expire_time = bundle::expires(core, id).await?.map(to_timestamp);
    request.company_part_time = flow::company_part_time(core, id).await?.map(to_timestamp);
    Ok(request)
}

impl Api {
    async fn show(
        &self,
        call: &Call,
        stored: &Stored<Request>,
    ) -> Result<Response<Request>, Status> {
        let Shown { message, withheld } = self.core.requests.shown(call, stored)?;
        let message = compose(&self.core, message, &stored.id, &stored.subject_id).await?;
        Ok(respond(message, &withheld))
    }

    async fn audited_show(
        &self,
        call: &Call,
        stored: Stored<Request>,
    ) -> Result<Response<Request>, Status> {
        let (id, subject_id) = (stored.id.clone(), stored.subject_id.clone());
        let Shown { message, withheld } = self
            .core
            .requests
            .audited(call, vec![stored])
            .await?
            .remove(0);
        let message = compose(&self.core, message, &id, &subject_id).await?;
        Ok(respond(message, &withheld))
    }

    /// Mails the acknowledgement with a fresh code (and the agent's copy).
    async fn acknowledge(&self, stored: &Stored<Request>) -> Result<(), Status> {
        let core = &self.core;
        let mailbox = intake::mailbox(core, &requester_email(&stored.message));
        let code = codes::generate()?;
        codes::first(core, &stored.id, &mailbox, &code).await?;
        let due = stored
            .message
            .due_time
            .as_ref()
            .map(crate::ts_micros)
            .unwrap_or_default();
        let from = &core.context.config.mail_from;
        let mut mails = vec![mail::acknowledgement(from, &stored.message, due, &code)];
        mails.extend(mail::agent_copy(from, &stored.message, due));
        // Beyond the limits the answer and the history are those of a
        // request acknowledged: only the mail is not sent.
        if !intake::may_mail_code(core, &mailbox, &stored.id, true).await? {
            intake::withheld(core);
            mails.clear();
        }
        for message in &mails {
            if let Err(err) = core.context.mailer.send(message).await {
                tracing::warn!(error = %err, "dsr: the acknowledgement could not be mailed");
                flow::insert_event(
                    core.context.db.pool(),
                    core,
                    &stored.id,
                    "mail_failed",
                    "acknowledgement",
                    "",
                )
                .await?;
                return Err(Status::unavailable(format!(
                    "requests/{} was received, but the acknowledgement could not be mailed; \
                     send the code again with ResendVerificationCode",
                    stored.id
                )));
            }
        }
        flow::insert_event(
            core.context.db.pool(),
            core,
            &stored.id,
            "acknowledged",
            "requester",
            "acknowledgement and code mailed",
        )
        .await?;
        Ok(())
    }
}

type DownloadStream = Pin<Box<dyn Stream<Item = Result<DownloadExportResponse, Status>> + Send>>;

#[tonic::async_trait]
impl RequestService for Api {
    async fn create_request(
        &self,
        request: tonic::Request<CreateRequestRequest>,
    ) -> Result<Response<Request>, Status> {
        let call = Call::of(&request)?;
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let idempotency = Idempotency::of("CreateRequest", "", &request_id, &req)?;
        let mut message = req.request.unwrap_or_default();
        let mut v = Violations::new();
        self.core
            .requests
            .prepare(&mut message, "request", Sensitive::Refuse, &mut v)?;
        check(&message, "request", &mut v);
        v.finish()?;
        let now = self.core.now();
        let jurisdiction = Jurisdiction::try_from(message.jurisdiction).unwrap_or_default();
        let due = deadline::due(jurisdiction, now)
            .ok_or_else(|| ApiError::invalid("request.jurisdiction", "is required"))?;
        // What the server decides, whatever the caller sent.
        message.state = State::AwaitingVerification as i32;
        message.receive_time = Some(to_timestamp(now));
        message.due_time = Some(to_timestamp(due));
        message.extension_reason.clear();
        message.complete_time = None;
        message.acknowledge_time = None;
        message.verify_time = None;
        if let Some(agent) = message.agent.as_mut() {
            agent.submitted_by_agent = !agent.email.is_empty();
            if !agent.submitted_by_agent {
                message.agent = None::<Agent>;
            }
        }
        let stored = self
            .core
            .requests
            .create(
                &call,
                New {
                    tenant_id: String::new(),
                    parent_id: String::new(),
                    message,
                    idempotency,
                },
            )
            .await?;
        // The run and its first line of history, once: also on a retry of a
        // create cut short between the record and its run, which goes on
        // from there (the record is the kit's, written by its own door).
        let traceparent = custodian_runtime::telemetry::current_traceparent();
        let mut tx = self
            .core
            .context
            .db
            .pool()
            .begin()
            .await
            .map_err(ApiError::from)?;
        let started = sqlx::query(
            "INSERT INTO dsr_runs (request_id, phase, traceparent, create_time, update_time) \
             VALUES ($1, $2, $3, $4, $4) ON CONFLICT (request_id) DO NOTHING",
        )
        .bind(&stored.id)
        .bind(flow::VERIFY)
        .bind(traceparent)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(ApiError::from)?
        .rows_affected()
            == 1;
        if started {
            let agent = stored
                .message
                .agent
                .as_ref()
                .is_some_and(|a| a.submitted_by_agent);
            let due = stored
                .message
                .due_time
                .as_ref()
                .map(crate::ts_micros)
                .unwrap_or(due);
            flow::insert_event(
                &mut *tx,
                &self.core,
                &stored.id,
                "received",
                "",
                &format!(
                    "{} request{}, due {}",
                    mail::kind_word(Kind::try_from(stored.message.kind).unwrap_or_default()),
                    if agent {
                        " submitted by an authorized agent"
                    } else {
                        ""
                    },
                    mail::date(due)
                ),
            )
            .await?;
        }
        tx.commit().await.map_err(ApiError::from)?;
        if started {
            self.acknowledge(&stored).await?;
        }
        self.show(&call, &stored).await
    }

    async fn get_request(
        &self,
        request: tonic::Request<GetRequestRequest>,
    ) -> Result<Response<Request>, Status> {
        let call = Call::of(&request)?;
        let stored = self
            .core
            .requests
            .find(&call, &request.get_ref().name, "name")
            .await?;
        self.audited_show(&call, stored).await
    }

    async fn list_requests(
        &self,
        request: tonic::Request<ListRequestsRequest>,
    ) -> Result<Response<ListRequestsResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let due_before = req.due_before.as_ref().map(crate::ts_micros);
        let scope = format!(
            "requests|{}|{}|{}|{:?}",
            req.state, req.kind, req.overdue, due_before
        );
        let page = Page::parse(req.page_size, &req.page_token, &scope)?;
        let mut query = Query::default();
        if req.state != 0 {
            query
                .filters
                .push(Filter::Eq("state", Arg::Int(i64::from(req.state))));
        }
        if req.kind != 0 {
            query
                .filters
                .push(Filter::Eq("kind", Arg::Int(i64::from(req.kind))));
        }
        let open_states = vec![
            Arg::Int(State::AwaitingVerification as i64),
            Arg::Int(State::InProgress as i64),
            Arg::Int(State::AwaitingTenants as i64),
        ];
        if req.overdue || due_before.is_some() {
            query
                .filters
                .push(Filter::Sql("state IN (?, ?, ?)", open_states));
        }
        if req.overdue {
            query
                .filters
                .push(Filter::Before("due_time", Arg::Int(self.core.now())));
        }
        if let Some(before) = due_before {
            query
                .filters
                .push(Filter::Before("due_time", Arg::Int(before)));
        }
        let (records, next_page_token) = self.core.requests.query(&call, &query, &page).await?;
        let ids: Vec<(String, String)> = records
            .iter()
            .map(|r| (r.id.clone(), r.subject_id.clone()))
            .collect();
        let shown = self.core.requests.audited(&call, records).await?;
        let mut requests = Vec::with_capacity(shown.len());
        let mut withheld = std::collections::BTreeSet::new();
        for (shown, (id, subject_id)) in shown.into_iter().zip(ids) {
            withheld.extend(shown.withheld);
            requests.push(compose(&self.core, shown.message, &id, &subject_id).await?);
        }
        Ok(respond(
            ListRequestsResponse {
                requests,
                next_page_token,
            },
            &withheld.into_iter().collect::<Vec<_>>(),
        ))
    }

    async fn verify_request(
        &self,
        request: tonic::Request<VerifyRequestRequest>,
    ) -> Result<Response<Request>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let core = &self.core;
        let stored = core.requests.find(&call, &req.name, "name").await?;
        if state_of(&stored.message) != State::AwaitingVerification {
            return Err(Status::failed_precondition(
                "the request is not waiting for verification",
            ));
        }
        let event = |kind: &'static str, description: String| {
            let pool = core.context.db.pool();
            let id = stored.id.clone();
            async move { flow::insert_event(pool, core, &id, kind, "requester", &description).await }
        };
        let mailbox = intake::mailbox(core, &requester_email(&stored.message));
        let checked = if intake::may_try_code(core, &mailbox).await? {
            codes::check(core, &stored.id, &req.code).await?
        } else {
            Checked::TooManyAttempts
        };
        match checked {
            Checked::Right => {}
            Checked::Wrong(left) => {
                intake::wrong_code(core, &mailbox).await?;
                event(
                    "verification_failed",
                    format!("wrong code; {left} attempts left"),
                )
                .await?;
                return Err(ApiError::invalid(
                    "code",
                    format!("is not the code that was sent; {left} attempts left"),
                )
                .into());
            }
            Checked::Expired => {
                event("verification_failed", "expired code".into()).await?;
                return Err(Status::failed_precondition(
                    "the code has expired; ask for a new one with ResendVerificationCode",
                ));
            }
            Checked::TooManyAttempts => {
                event("verification_failed", "too many attempts".into()).await?;
                return Err(Status::failed_precondition(
                    "too many wrong codes; ask for a new one with ResendVerificationCode",
                ));
            }
            Checked::None => {
                return Err(Status::failed_precondition(
                    "no code is waiting for this request; ask for one with ResendVerificationCode",
                ));
            }
        }
        // The code spent, the first steps planned, the phase moved, the
        // state and the history changed in one transaction: a crash leaves
        // either all or none, and no reader sees a verified history on a
        // request still waiting for verification.
        let code_key = codes::key(core, &stored.id, &req.code);
        let services = core.targets();
        let traceparent = custodian_runtime::telemetry::current_traceparent();
        let now = core.now();
        let mut verified = beside(|tx| {
            let (id, code_key, services, traceparent) = (
                stored.id.clone(),
                code_key.clone(),
                services.clone(),
                traceparent.clone(),
            );
            Box::pin(async move {
                // Spent here: of two verifies with one code, one spends it.
                let spent =
                    sqlx::query("DELETE FROM dsr_codes WHERE request_id = $1 AND code_key = $2")
                        .bind(&id)
                        .bind(&code_key)
                        .execute(&mut **tx)
                        .await?;
                if spent.rows_affected() != 1 {
                    return Err(ApiError::FailedPrecondition(
                        "a newer code was sent since; verify with that one".into(),
                    ));
                }
                // A create cut short before its run was recorded.
                sqlx::query(
                    "INSERT INTO dsr_runs (request_id, phase, traceparent, create_time, update_time) \
                     VALUES ($1, $2, $3, $4, $4) ON CONFLICT (request_id) DO NOTHING",
                )
                .bind(&id)
                .bind(flow::VERIFY)
                .bind(traceparent)
                .bind(now)
                .execute(&mut **tx)
                .await?;
                let moved = sqlx::query(
                    "UPDATE dsr_runs SET phase = $1, update_time = $2 WHERE request_id = $3 AND phase = $4",
                )
                .bind(flow::LOCATING)
                .bind(custodian_runtime::time::now_micros())
                .bind(&id)
                .bind(flow::VERIFY)
                .execute(&mut **tx)
                .await?;
                if moved.rows_affected() != 1 {
                    return Err(ApiError::internal(anyhow::anyhow!(
                        "a request waiting for verification has a run past it"
                    )));
                }
                for service in &services {
                    flow::insert_step(&mut **tx, &id, flow::LOCATE, service, flow::BY_EMAIL)
                        .await?;
                }
                flow::insert_event_at(
                    &mut **tx,
                    now,
                    &id,
                    "verified",
                    "requester",
                    "email confirmed",
                )
                .await?;
                Ok(())
            })
        });
        // Not moved: a concurrent verify did it all (or a cancel ended the
        // request); the answer shows what is.
        flow::set_state(core, &stored.id, State::InProgress, None, &mut verified).await?;
        core.wake.notify_one();
        let stored = core.requests.find(&call, &req.name, "name").await?;
        self.show(&call, &stored).await
    }

    async fn resend_verification_code(
        &self,
        request: tonic::Request<ResendVerificationCodeRequest>,
    ) -> Result<Response<Request>, Status> {
        let call = Call::of(&request)?;
        let core = &self.core;
        let stored = core
            .requests
            .find(&call, &request.get_ref().name, "name")
            .await?;
        if state_of(&stored.message) != State::AwaitingVerification {
            return Err(Status::failed_precondition(
                "the request is not waiting for verification",
            ));
        }
        let sends = codes::may_resend(core, &stored.id).await?;
        let mailbox = intake::mailbox(core, &requester_email(&stored.message));
        // Beyond the address's limits the live code stays as it is and
        // nothing is mailed, but the answer is that of a code sent.
        if intake::may_mail_code(core, &mailbox, &stored.id, false).await? {
            let code = codes::generate()?;
            codes::replace(core, &stored.id, &mailbox, &code, sends).await?;
            let message = mail::code(&core.context.config.mail_from, &stored.message, &code);
            core.context.mailer.send(&message).await.map_err(|err| {
                tracing::warn!(error = %err, "dsr: a code could not be mailed");
                Status::unavailable("the code could not be mailed; retry in a minute")
            })?;
        } else {
            intake::withheld(core);
        }
        flow::insert_event(
            core.context.db.pool(),
            core,
            &stored.id,
            "code_sent",
            "requester",
            "new code mailed",
        )
        .await?;
        self.show(&call, &stored).await
    }

    async fn extend_request(
        &self,
        request: tonic::Request<ExtendRequestRequest>,
    ) -> Result<Response<Request>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let core = &self.core;
        if req.reason.trim().is_empty() {
            return Err(
                ApiError::invalid("reason", "is required: the requester is told why").into(),
            );
        }
        let reason = req.reason.trim().to_owned();
        let id = core.requests.parse(&req.name, "name")?.id().to_owned();
        // Set by the change, read by the history written with it.
        let new_due = std::sync::atomic::AtomicI64::new(0);
        let now = core.now();
        let mut extended = beside(|tx| {
            let due = new_due.load(std::sync::atomic::Ordering::Relaxed);
            let id = id.clone();
            Box::pin(async move {
                flow::insert_event_at(
                    &mut **tx,
                    now,
                    &id,
                    "extended",
                    "",
                    &format!("due {}", mail::date(due)),
                )
                .await?;
                flow::insert_step(&mut **tx, &id, flow::MAIL, "extended", "").await
            })
        });
        let stored = core
            .requests
            .update_with(
                &call,
                &req.name,
                "name",
                "request",
                |before, after| {
                    if !open(state_of(&before.message)) {
                        return Err(ApiError::FailedPrecondition(
                            "only an open request can be extended".into(),
                        ));
                    }
                    if !before.message.extension_reason.is_empty() {
                        return Err(ApiError::FailedPrecondition(
                            "the deadline was extended already; the law allows one extension"
                                .into(),
                        ));
                    }
                    let jurisdiction =
                        Jurisdiction::try_from(before.message.jurisdiction).unwrap_or_default();
                    let due = before
                        .message
                        .due_time
                        .as_ref()
                        .map(crate::ts_micros)
                        .unwrap_or_default();
                    let due = deadline::extended(jurisdiction, due).ok_or_else(|| {
                        ApiError::FailedPrecondition("the request has no jurisdiction".into())
                    })?;
                    new_due.store(due, std::sync::atomic::Ordering::Relaxed);
                    after.due_time = Some(to_timestamp(due));
                    after.extension_reason = reason.clone();
                    Ok(())
                },
                |_, _, _| {},
                &mut extended,
            )
            .await?;
        core.wake.notify_one();
        self.show(&call, &stored).await
    }

    async fn cancel_request(
        &self,
        request: tonic::Request<CancelRequestRequest>,
    ) -> Result<Response<Request>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let core = &self.core;
        if req.reason.trim().is_empty() {
            return Err(ApiError::invalid("reason", "is required, for the history").into());
        }
        let now = core.now();
        let reason = req.reason.trim().to_owned();
        let id = core.requests.parse(&req.name, "name")?.id().to_owned();
        // Steps not yet run are not run; one running now finishes, and its
        // result is not recorded. All with the state, in its transaction.
        let mut cancelled = beside(|tx| {
            let (id, reason) = (id.clone(), reason.clone());
            Box::pin(async move {
                let micros = custodian_runtime::time::now_micros();
                sqlx::query(
                    "UPDATE dsr_runs SET phase = $1, update_time = $2 WHERE request_id = $3",
                )
                .bind(flow::CANCELLED)
                .bind(micros)
                .bind(&id)
                .execute(&mut **tx)
                .await?;
                sqlx::query(
                    "UPDATE dsr_steps SET state = 'cancelled', update_time = $1 WHERE request_id = $2 \
                     AND state = 'pending' AND phase <> 'mail'",
                )
                .bind(micros)
                .bind(&id)
                .execute(&mut **tx)
                .await?;
                sqlx::query(
                    "UPDATE dsr_inbox SET state = $1, update_time = $2 WHERE request_id = $3 \
                     AND state IN ($4, $5, $6)",
                )
                .bind(InboxState::Cancelled as i64)
                .bind(now)
                .bind(&id)
                .bind(InboxState::Pending as i64)
                .bind(InboxState::Acknowledged as i64)
                .bind(InboxState::Fulfilling as i64)
                .execute(&mut **tx)
                .await?;
                sqlx::query("DELETE FROM dsr_codes WHERE request_id = $1")
                    .bind(&id)
                    .execute(&mut **tx)
                    .await?;
                flow::insert_event_at(&mut **tx, now, &id, "cancelled", "", &reason).await?;
                flow::insert_step(&mut **tx, &id, flow::MAIL, "cancelled", "").await
            })
        });
        let stored = core
            .requests
            .update_with(
                &call,
                &req.name,
                "name",
                "request",
                |before, after| {
                    if !open(state_of(&before.message)) {
                        return Err(ApiError::FailedPrecondition(
                            "only an open request can be cancelled".into(),
                        ));
                    }
                    after.state = State::Cancelled as i32;
                    after.complete_time = Some(to_timestamp(now));
                    Ok(())
                },
                |_, _, _| {},
                &mut cancelled,
            )
            .await?;
        core.wake.notify_one();
        self.show(&call, &stored).await
    }

    type DownloadExportStream = DownloadStream;

    async fn download_export(
        &self,
        request: tonic::Request<DownloadExportRequest>,
    ) -> Result<Response<Self::DownloadExportStream>, Status> {
        let call = Call::of(&request)?;
        let core = &self.core;
        let stored = core
            .requests
            .find(&call, &request.get_ref().name, "name")
            .await?;
        let kind = Kind::try_from(stored.message.kind).unwrap_or_default();
        if !matches!(kind, Kind::Access | Kind::Portability) {
            return Err(Status::failed_precondition(
                "only access and portability requests have an export",
            ));
        }
        // A failed request's export has what was found, for the privacy
        // team that finishes it.
        // While customers decide, what the company controls can be had
        // once its part is done; their parts join as they answer.
        let ready = match state_of(&stored.message) {
            State::Completed | State::Failed => true,
            State::AwaitingTenants => flow::company_part_time(core, &stored.id).await?.is_some(),
            _ => false,
        };
        if !ready {
            return Err(Status::failed_precondition(
                "the export is ready once the company's part of the request is done",
            ));
        }
        let expired = match bundle::expires(core, &stored.id).await? {
            Some(until) => until <= core.now(),
            None => true,
        };
        if expired {
            bundle::sweep_expired(core, core.now()).await?;
            return Err(Status::failed_precondition(
                "the export has expired and was deleted",
            ));
        }
        let Some(document) = bundle::assemble(core, &stored).await? else {
            return Err(Status::failed_precondition("the export no longer exists"));
        };
        // Audited before a byte leaves.
        let event = core.context.privacy.event(
            &call.access,
            &stored.name(),
            &stored.subject_id,
            &["export"],
            AuditOutcome::Ok,
        );
        core.context.privacy.record_all(vec![event]).await?;
        let chunks: Vec<Result<DownloadExportResponse, Status>> = document
            .chunks(CHUNK)
            .map(|c| Ok(DownloadExportResponse { data: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }
}

/// The address a request's mail goes to, which the intake limits count by.
fn requester_email(request: &Request) -> String {
    request
        .requester
        .as_ref()
        .map(|r| r.email.clone())
        .unwrap_or_default()
}
