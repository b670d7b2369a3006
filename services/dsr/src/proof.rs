//! The proof of an erasure request, kept in the erasure log beside the
//! services' own entries: its name, kind, jurisdiction, final state, times
//! and the services that acted, never the requester. Written before the
//! request is marked final; read back before dsr answers, so that a dsr
//! database restored from before the request (or from the middle of it)
//! still shows it done: a minimal record is made again (the requester's
//! details are not in the log), or the half-done one is finished.
//!
//! And the mail dsr sent the requester of an erasure request (the codes,
//! the notices) is deleted from the outbox once the request ends: dsr
//! keeps the request as proof, so no erasure of dsr's own records takes
//! that mail with it.

use custodian_kit::{
    erasure::{Entry, digest},
    mail::{erase_mail, recipient_key},
    reapply::call_for,
};
use custodian_proto::{
    audit::v1::AuditAction,
    dsr::v1::{Request, request},
};
use custodian_runtime::{ApiError, time::to_timestamp};
use serde::{Deserialize, Serialize};
use sqlx::Row as _;
use tonic::Status;

use crate::{Core, flow};

/// The kind of dsr's own entries.
pub const COMPLETED: &str = "completed";

/// What a [`COMPLETED`] entry holds.
#[derive(Debug, Serialize, Deserialize)]
struct Completed {
    kind: i32,
    jurisdiction: i32,
    state: i32,
    receive_time: i64,
    due_time: Option<i64>,
    complete_time: i64,
    /// "tickets", "identity for tenants/acme": as the history names them.
    acted: Vec<String>,
}

/// The services that acted on a request, as its history names them.
async fn acted(core: &Core, request_id: &str) -> Result<Vec<String>, ApiError> {
    let rows = sqlx::query(
        "SELECT service, scope FROM dsr_steps WHERE request_id = $1 AND phase = $2 \
         AND state = 'done' ORDER BY service, scope",
    )
    .bind(request_id)
    .bind(flow::ACT)
    .fetch_all(core.context.db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            let (service, scope): (String, String) = (r.try_get("service")?, r.try_get("scope")?);
            Ok(if scope.is_empty() {
                service
            } else {
                format!("{service} for {scope}")
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(ApiError::from)
}

/// Records in the erasure log that an erasure request ends in `state` at
/// `complete_time`; once per request.
pub async fn record(
    core: &Core,
    request_id: &str,
    message: &Request,
    create_time: i64,
    state: request::State,
    complete_time: i64,
) -> Result<(), Status> {
    let name = flow::request_name(request_id);
    let body = Completed {
        kind: message.kind,
        jurisdiction: message.jurisdiction,
        state: state as i32,
        receive_time: create_time,
        due_time: message.due_time.as_ref().map(crate::ts_micros),
        complete_time,
        acted: acted(core, request_id).await?,
    };
    let body = serde_json::to_string(&body).map_err(ApiError::internal)?;
    core.context
        .erasure_log
        .append(
            crate::NAME,
            COMPLETED,
            &name,
            complete_time,
            &digest(COMPLETED, &name, &[]),
            &body,
        )
        .await?;
    Ok(())
}

/// Deletes what dsr mailed the requester of an erasure request.
pub async fn forget_mail(core: &Core, message: &Request) -> Result<(), Status> {
    if request::Kind::try_from(message.kind).unwrap_or_default() != request::Kind::Erasure {
        return Ok(());
    }
    let email = flow::email_of(message);
    if email.is_empty() {
        return Ok(());
    }
    let key = recipient_key(&core.context.privacy.vault, &email);
    erase_mail(core.context.mailer.as_ref(), crate::NAME, &[key]).await?;
    Ok(())
}

/// Applies a [`COMPLETED`] entry again: the request made again or
/// finished, as the log says it ended. How many requests that changed.
pub async fn restore(core: &Core, entry: &Entry) -> Result<usize, ApiError> {
    if entry.kind != COMPLETED {
        return Ok(0);
    }
    let done: Completed = serde_json::from_str(&entry.body).map_err(ApiError::internal)?;
    let Some(id) = entry.request.strip_prefix("requests/") else {
        return Ok(0);
    };
    let state = request::State::try_from(done.state).unwrap_or(request::State::Completed);
    let pool = core.context.db.pool();
    let existing = sqlx::query("SELECT state FROM dsr_requests WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?
        .map(|r| r.try_get::<i64, _>("state"))
        .transpose()?;
    let now = core.now();
    let restored = "restored";
    match existing {
        Some(current) => {
            let current = request::State::try_from(current as i32).unwrap_or_default();
            if flow::is_final(current) {
                return Ok(0);
            }
            // A backup taken while the request ran: it ended since. Its
            // state, its steps, its run and its history move together.
            let mut also = custodian_kit::beside(|tx| {
                let id = id.to_owned();
                Box::pin(async move {
                    sqlx::query(
                        "UPDATE dsr_steps SET state = 'done', result = $1, lease_owner = NULL, \
                         lease_until = NULL, update_time = $2 WHERE request_id = $3 \
                         AND state = 'pending'",
                    )
                    .bind(restored)
                    .bind(now)
                    .bind(&id)
                    .execute(&mut **tx)
                    .await?;
                    sqlx::query(
                        "UPDATE dsr_runs SET phase = $1, update_time = $2 WHERE request_id = $3",
                    )
                    .bind(flow::DONE)
                    .bind(now)
                    .bind(&id)
                    .execute(&mut **tx)
                    .await?;
                    event(
                        tx,
                        &id,
                        now,
                        restored,
                        "",
                        "finished from the erasure log after a restore: the database was older \
                         than the request's end",
                    )
                    .await
                })
            });
            flow::set_state(core, id, state, Some(done.complete_time), &mut also)
                .await
                .map_err(|s| ApiError::Unavailable(s.message().to_owned()))?;
        }
        None => {
            let message = Request {
                kind: done.kind,
                jurisdiction: done.jurisdiction,
                state: state as i32,
                receive_time: Some(to_timestamp(done.receive_time)),
                due_time: done.due_time.map(to_timestamp),
                complete_time: Some(to_timestamp(done.complete_time)),
                ..Default::default()
            };
            let call = call_for(
                &core.context.privacy,
                entry,
                "*",
                "/custodian.dsr.v1.RequestService/(erasure log)",
                AuditAction::Create,
            );
            let made = core
                .requests
                .restore_anonymous(&call, id, done.receive_time, message)
                .await
                .map_err(|s| ApiError::Unavailable(s.message().to_owned()))?;
            if !made {
                return Ok(0);
            }
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO dsr_runs (request_id, phase, create_time, update_time) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (request_id) DO NOTHING",
            )
            .bind(id)
            .bind(flow::DONE)
            .bind(done.receive_time)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            for target in &done.acted {
                event(&mut tx, id, done.complete_time, "erased", target, "").await?;
            }
            let end = if state == request::State::Completed {
                "completed"
            } else {
                "failed"
            };
            event(&mut tx, id, done.complete_time, end, "", "").await?;
            event(
                &mut tx,
                id,
                now,
                restored,
                "",
                "made again from the erasure log after a restore; the requester's details are \
                 not kept there",
            )
            .await?;
            tx.commit().await?;
        }
    }
    Ok(1)
}

async fn event(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    request_id: &str,
    time: i64,
    kind: &str,
    target: &str,
    description: &str,
) -> Result<(), ApiError> {
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
    .execute(&mut **tx)
    .await?;
    Ok(())
}
