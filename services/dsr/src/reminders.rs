//! The clock of customers' inbox items. An item the customer has not
//! instructed is reminded to the customer's administrators (its active
//! authorized users with the admin role, asked of identity): a week after
//! it was routed, then weekly, and once more three days before it is due.
//! Past its due time it is escalated, once, to the privacy team (the
//! `--mail-from` mailbox), and the request's history says so. No mail names
//! the person the request is about: only the item, its kind and its due
//! time. Each reminder and escalation is claimed with a compare-and-set, so
//! replicas send each once.

use custodian_mail::Mailbox;
use custodian_privacy::Purpose;
use custodian_proto::{
    dsr::v1::inbox_item::State,
    identity::v1::{ListUsersRequest, user, user_service_client::UserServiceClient},
};
use custodian_runtime::ApiError;
use sqlx::Row as _;
use tonic::Status;

use crate::{Core, flow, mail};

const DAY: i64 = 86_400_000_000;
/// The first reminder, and the time between two.
pub const REMIND_EVERY: i64 = 7 * DAY;
/// The last reminder before the due time.
pub const LAST_REMINDER_BEFORE_DUE: i64 = 3 * DAY;

/// When the reminder after one sent at `now` is due: a week on, or three
/// days before the due time if that comes first; none past the due time.
fn next_reminder(now: i64, due: i64) -> Option<i64> {
    let last = due - LAST_REMINDER_BEFORE_DUE;
    let next = if last > now {
        (now + REMIND_EVERY).min(last)
    } else {
        now + REMIND_EVERY
    };
    (next < due).then_some(next)
}

/// Sends what is due. Called by the orchestrator's idle tick.
pub async fn run(core: &Core) -> Result<(), Status> {
    let now = core.now();
    let waiting = [State::Pending as i64, State::Acknowledged as i64];
    let due_rows = sqlx::query(
        "SELECT id, tenant_id, tenant_name, request_id, kind, due_time, reminders, \
         COALESCE(next_reminder_time, create_time + $1) AS next_time FROM dsr_inbox \
         WHERE state IN ($2, $3) AND escalate_time IS NULL AND due_time IS NOT NULL",
    )
    .bind(REMIND_EVERY)
    .bind(waiting[0])
    .bind(waiting[1])
    .fetch_all(core.context.db.pool())
    .await
    .map_err(ApiError::from)?;
    for row in due_rows {
        let id: String = row.try_get("id").map_err(ApiError::from)?;
        let tenant_id: String = row.try_get("tenant_id").map_err(ApiError::from)?;
        let name: Option<String> = row.try_get("tenant_name").map_err(ApiError::from)?;
        let request_id: String = row.try_get("request_id").map_err(ApiError::from)?;
        let kind: String = row.try_get("kind").map_err(ApiError::from)?;
        let due: i64 = row.try_get("due_time").map_err(ApiError::from)?;
        let reminders: i64 = row.try_get("reminders").map_err(ApiError::from)?;
        let next: i64 = row.try_get("next_time").map_err(ApiError::from)?;
        let tenant = format!("tenants/{tenant_id}");
        let customer = match name {
            Some(name) => format!("{name} ({tenant})"),
            None => tenant.clone(),
        };
        let item = format!("{tenant}/inboxItems/{id}");
        if now >= due {
            escalate(core, &id, &request_id, &tenant, &customer, &item, due).await?;
        } else if now >= next {
            remind(core, &id, reminders, &tenant, &customer, &item, &kind, due).await?;
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)] // one item's facts
async fn remind(
    core: &Core,
    id: &str,
    reminders: i64,
    tenant: &str,
    customer: &str,
    item: &str,
    kind: &str,
    due: i64,
) -> Result<(), Status> {
    let now = core.now();
    let claimed = sqlx::query(
        "UPDATE dsr_inbox SET reminders = reminders + 1, next_reminder_time = $1 \
         WHERE id = $2 AND reminders = $3 AND escalate_time IS NULL",
    )
    .bind(next_reminder(now, due).unwrap_or(due))
    .bind(id)
    .bind(reminders)
    .execute(core.context.db.pool())
    .await
    .map_err(ApiError::from)?;
    if claimed.rows_affected() != 1 {
        return Ok(());
    }
    let admins = match admins(core, tenant).await {
        Ok(admins) => admins,
        Err(status) => {
            // Tried again in a few minutes, not counted.
            undo(core, id, reminders).await?;
            tracing::warn!(code = ?status.code(), %tenant, "dsr: a customer's administrators could not be had for a reminder");
            return Ok(());
        }
    };
    if admins.is_empty() {
        tracing::warn!(%tenant, "dsr: a customer has no active administrator to remind");
        return Ok(());
    }
    let from = &core.context.config.mail_from;
    let message = mail::reminder(from, admins, customer, item, kind, due);
    if let Err(err) = core.context.mailer.send(&message).await {
        undo(core, id, reminders).await?;
        tracing::warn!(error = %err, "dsr: a reminder could not be mailed; retrying");
    }
    Ok(())
}

/// A reminder not sent: tried again in five minutes.
async fn undo(core: &Core, id: &str, reminders: i64) -> Result<(), ApiError> {
    sqlx::query(
        "UPDATE dsr_inbox SET reminders = $1, next_reminder_time = $2 WHERE id = $3 AND reminders = $4",
    )
    .bind(reminders)
    .bind(core.now() + 300_000_000)
    .bind(id)
    .bind(reminders + 1)
    .execute(core.context.db.pool())
    .await?;
    Ok(())
}

async fn escalate(
    core: &Core,
    id: &str,
    request_id: &str,
    tenant: &str,
    customer: &str,
    item: &str,
    due: i64,
) -> Result<(), Status> {
    let now = core.now();
    let mut tx = core
        .context
        .db
        .pool()
        .begin()
        .await
        .map_err(ApiError::from)?;
    let claimed = sqlx::query(
        "UPDATE dsr_inbox SET escalate_time = $1 WHERE id = $2 AND escalate_time IS NULL",
    )
    .bind(now)
    .bind(id)
    .execute(&mut *tx)
    .await
    .map_err(ApiError::from)?;
    if claimed.rows_affected() != 1 {
        return Ok(());
    }
    flow::insert_event_at(
        &mut *tx,
        now,
        request_id,
        "escalated",
        tenant,
        "the customer has not instructed by the due time; the privacy team takes it up",
    )
    .await?;
    tx.commit().await.map_err(ApiError::from)?;
    let from = &core.context.config.mail_from;
    let message = mail::escalation(from, customer, item, &flow::request_name(request_id), due);
    if let Err(err) = core.context.mailer.send(&message).await {
        // The history and the overdue report say it all the same.
        tracing::warn!(error = %err, "dsr: an escalation could not be mailed");
    }
    Ok(())
}

/// The customer's active administrators, as mailboxes.
async fn admins(core: &Core, tenant: &str) -> Result<Vec<Mailbox>, Status> {
    let mut client = UserServiceClient::new(
        core.context
            .peers
            .own("identity", Purpose::Administration)?,
    );
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_users(ListUsersRequest {
                parent: tenant.to_owned(),
                page_size: 1000,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        for user in page.users {
            if user.role == user::Role::Admin as i32 && user.state == user::State::Active as i32 {
                let name = user
                    .person_name
                    .map(|n| {
                        format!("{} {}", n.given_name, n.family_name)
                            .trim()
                            .to_owned()
                    })
                    .unwrap_or_default();
                out.push(Mailbox::new(name, user.email));
            }
        }
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = page.next_page_token;
    }
}
