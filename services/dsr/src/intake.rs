//! Limits on what intake mails and how often a mailbox's codes may be
//! guessed, whoever asks: a request for an address (or a resend) beyond
//! them is answered exactly as one within them, but nothing is mailed, so
//! the answer tells no one whether the address is known or limited.
//!
//! Counted per mailbox (a keyed blind index of the address, deleted by the
//! retention sweep once a day old):
//! - code mails: at most [`CODES_PER_HOUR`] an hour and [`CODES_PER_DAY`] a
//!   day, acknowledgements and resends together;
//! - open requests: a new request's code is mailed only while fewer than
//!   [`OPEN_UNVERIFIED`] of the address's requests wait for verification
//!   with a code sent in the last day;
//! - wrong codes: after [`WRONG_CODES_PER_DAY`] in a day, across all the
//!   address's requests, no code of that address is accepted until the day
//!   has passed (each request's own 3 attempts and 5 codes still apply).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use custodian_runtime::ApiError;
use sqlx::Row as _;

use crate::{Core, flow};

const HOUR: i64 = 3_600_000_000;
const DAY: i64 = 24 * HOUR;
/// Code mails one address may be sent in an hour.
pub const CODES_PER_HOUR: i64 = 5;
/// Code mails one address may be sent in a day.
pub const CODES_PER_DAY: i64 = 10;
/// Requests of one address that may wait for verification at once.
pub const OPEN_UNVERIFIED: i64 = 3;
/// Wrong codes one address may be tried with in a day.
pub const WRONG_CODES_PER_DAY: i64 = 10;

const CODE: &str = "code";
const WRONG_CODE: &str = "wrong_code";

/// The mailbox of an address: what the limits count by.
pub fn mailbox(core: &Core, email: &str) -> String {
    core.context
        .privacy
        .vault
        .blind_index("dsr-mailbox", &email.trim().to_lowercase())
}

async fn count(core: &Core, mailbox: &str, kind: &str, since: i64) -> Result<i64, ApiError> {
    Ok(sqlx::query(
        "SELECT COUNT(*) AS n FROM dsr_mailbox_events \
         WHERE mailbox_key = $1 AND kind = $2 AND time > $3",
    )
    .bind(mailbox)
    .bind(kind)
    .bind(since)
    .fetch_one(core.context.db.pool())
    .await?
    .try_get("n")?)
}

async fn record(core: &Core, mailbox: &str, kind: &str) -> Result<(), ApiError> {
    sqlx::query("INSERT INTO dsr_mailbox_events (mailbox_key, kind, time) VALUES ($1, $2, $3)")
        .bind(mailbox)
        .bind(kind)
        .bind(core.now())
        .execute(core.context.db.pool())
        .await?;
    Ok(())
}

/// Deletes counts past their day, with the service's retention sweep
/// (whether or not anyone asks for a code again): the limits read only the
/// last day, and a mailbox's index is kept no longer.
pub async fn sweep_expired(core: &Core, now: i64) -> Result<u64, ApiError> {
    Ok(
        sqlx::query("DELETE FROM dsr_mailbox_events WHERE time <= $1")
            .bind(now - DAY)
            .execute(core.context.db.pool())
            .await?
            .rows_affected(),
    )
}

/// Whether a code may be mailed to `mailbox` now; if so, the mail is
/// counted. `new_request` also counts the address's open requests (the
/// one being acknowledged, `request_id`, aside).
pub async fn may_mail_code(
    core: &Core,
    mailbox: &str,
    request_id: &str,
    new_request: bool,
) -> Result<bool, ApiError> {
    let now = core.now();
    if count(core, mailbox, CODE, now - HOUR).await? >= CODES_PER_HOUR
        || count(core, mailbox, CODE, now - DAY).await? >= CODES_PER_DAY
    {
        return Ok(false);
    }
    if new_request {
        let open: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM dsr_codes c JOIN dsr_runs r ON r.request_id = c.request_id \
             WHERE c.mailbox_key = $1 AND c.request_id <> $2 AND r.phase = $3 AND c.send_time > $4",
        )
        .bind(mailbox)
        .bind(request_id)
        .bind(flow::VERIFY)
        .bind(now - DAY)
        .fetch_one(core.context.db.pool())
        .await?
        .try_get("n")?;
        if open >= OPEN_UNVERIFIED {
            return Ok(false);
        }
    }
    record(core, mailbox, CODE).await?;
    Ok(true)
}

/// Whether codes of `mailbox` may still be tried today.
pub async fn may_try_code(core: &Core, mailbox: &str) -> Result<bool, ApiError> {
    Ok(count(core, mailbox, WRONG_CODE, core.now() - DAY).await? < WRONG_CODES_PER_DAY)
}

/// Counts a wrong code against `mailbox`.
pub async fn wrong_code(core: &Core, mailbox: &str) -> Result<(), ApiError> {
    record(core, mailbox, WRONG_CODE).await
}

/// Notes a mail the limits withheld: one WARN line per minute at most,
/// with the count since the last (an attack would otherwise fill the log).
pub fn withheld(core: &Core) {
    static WITHHELD: AtomicU64 = AtomicU64::new(0);
    static LAST: AtomicI64 = AtomicI64::new(i64::MIN);
    let n = WITHHELD.fetch_add(1, Ordering::Relaxed) + 1;
    let now = core.now();
    let last = LAST.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 60_000_000
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        WITHHELD.fetch_sub(n, Ordering::Relaxed);
        tracing::warn!(
            withheld = n,
            "dsr: intake limits withheld code mails (one address asked too often); answered as sent"
        );
    }
}
