//! One-time verification codes. "We may request certain personal
//! information for the purposes of verifying your identity": the requester
//! proves they read the mailbox the request names. A code is 8 random
//! digits, mailed once and stored only as a keyed hash (HMAC under the
//! blind-index key, bound to the request), good for 15 minutes and 3
//! attempts; a new one replaces it, at most one a minute and 5 per request.

use custodian_runtime::ApiError;
use sqlx::Row as _;
use tonic::Status;

use crate::Core;

const MINUTE: i64 = 60_000_000;
/// How long a code is good for.
pub const VALID_FOR: i64 = 15 * MINUTE;
/// Wrong codes before a code is spent.
pub const MAX_ATTEMPTS: i64 = 3;
/// Codes one request may be sent.
pub const MAX_SENDS: i64 = 5;
/// The least time between two codes.
pub const RESEND_AFTER: i64 = MINUTE;

/// A fresh code.
pub fn generate() -> Result<String, ApiError> {
    let mut buf = [0u8; 8];
    getrandom::fill(&mut buf)
        .map_err(|_| ApiError::internal(std::io::Error::other("no randomness")))?;
    // 10^8 codes; the modulo bias of a 64-bit draw is below 10^-11.
    Ok(format!("{:08}", u64::from_le_bytes(buf) % 100_000_000))
}

/// The stored form of `code` for a request.
pub fn key(core: &Core, request_id: &str, code: &str) -> String {
    core.context.privacy.vault.blind_index(
        "dsr-verification-code",
        &format!("{request_id}:{}", code.trim()),
    )
}

/// What a check of a code found.
pub enum Checked {
    /// The right code; it is spent.
    Right,
    /// A wrong code; this many attempts are left.
    Wrong(i64),
    /// No live code: verified already, or never sent.
    None,
    Expired,
    TooManyAttempts,
}

/// Stores `code` as the first code of a new request (a retried create
/// keeps the code it stored first).
pub async fn first(core: &Core, request_id: &str, mailbox: &str, code: &str) -> Result<(), Status> {
    let now = core.now();
    sqlx::query(
        "INSERT INTO dsr_codes (request_id, code_key, attempts, sends, send_time, expire_time, \
         mailbox_key) VALUES ($1, $2, 0, 1, $3, $4, $5) ON CONFLICT (request_id) DO NOTHING",
    )
    .bind(request_id)
    .bind(key(core, request_id, code))
    .bind(now)
    .bind(now + VALID_FOR)
    .bind(mailbox)
    .execute(core.context.db.pool())
    .await
    .map_err(ApiError::from)?;
    Ok(())
}

/// Whether the request may be sent another code, inside its own limits;
/// the codes sent so far, for [`replace`].
pub async fn may_resend(core: &Core, request_id: &str) -> Result<i64, Status> {
    let now = core.now();
    let row = sqlx::query("SELECT sends, send_time FROM dsr_codes WHERE request_id = $1")
        .bind(request_id)
        .fetch_optional(core.context.db.pool())
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| {
            Status::failed_precondition("the request is not waiting for verification")
        })?;
    let sends: i64 = row.try_get("sends").map_err(ApiError::from)?;
    let sent: i64 = row.try_get("send_time").map_err(ApiError::from)?;
    if sends >= MAX_SENDS {
        return Err(exhausted(format!(
            "{MAX_SENDS} codes were sent for this request already; no more are sent"
        )));
    }
    if now < sent + RESEND_AFTER {
        let wait = (sent + RESEND_AFTER - now + 999_999) / 1_000_000;
        return Err(exhausted(format!(
            "a code was sent less than a minute ago; retry in {wait} s"
        )));
    }
    Ok(sends)
}

/// Replaces the request's live code with `code`, the `sends + 1`th, unless
/// another resend got there first.
pub async fn replace(
    core: &Core,
    request_id: &str,
    mailbox: &str,
    code: &str,
    sends: i64,
) -> Result<(), Status> {
    let now = core.now();
    // Compare-and-set on the send count, so two resends at once send one.
    let updated = sqlx::query(
        "UPDATE dsr_codes SET code_key = $1, attempts = 0, sends = sends + 1, send_time = $2, \
         expire_time = $3, mailbox_key = $4 WHERE request_id = $5 AND sends = $6",
    )
    .bind(key(core, request_id, code))
    .bind(now)
    .bind(now + VALID_FOR)
    .bind(mailbox)
    .bind(request_id)
    .bind(sends)
    .execute(core.context.db.pool())
    .await
    .map_err(ApiError::from)?;
    if updated.rows_affected() == 0 {
        return Err(exhausted(
            "another code was just sent; retry in a minute".to_owned(),
        ));
    }
    Ok(())
}

fn exhausted(message: String) -> Status {
    Status::resource_exhausted(message)
}

/// Checks `code`, counting a wrong attempt. The right code is left for the
/// caller to spend (delete by its [`key`]) in the transaction that acts on
/// it, so a crash leaves it either spent and acted on, or neither.
pub async fn check(core: &Core, request_id: &str, code: &str) -> Result<Checked, ApiError> {
    let now = core.now();
    let pool = core.context.db.pool();
    let Some(row) =
        sqlx::query("SELECT code_key, attempts, expire_time FROM dsr_codes WHERE request_id = $1")
            .bind(request_id)
            .fetch_optional(pool)
            .await?
    else {
        return Ok(Checked::None);
    };
    let attempts: i64 = row.try_get("attempts")?;
    let expire: i64 = row.try_get("expire_time")?;
    if attempts >= MAX_ATTEMPTS {
        return Ok(Checked::TooManyAttempts);
    }
    if now >= expire {
        return Ok(Checked::Expired);
    }
    let right = sqlx::query(
        "SELECT request_id FROM dsr_codes WHERE request_id = $1 AND code_key = $2 \
         AND attempts < $3 AND expire_time > $4",
    )
    .bind(request_id)
    .bind(key(core, request_id, code))
    .bind(MAX_ATTEMPTS)
    .bind(now)
    .fetch_optional(pool)
    .await?;
    if right.is_some() {
        return Ok(Checked::Right);
    }
    let counted = sqlx::query(
        "UPDATE dsr_codes SET attempts = attempts + 1 WHERE request_id = $1 AND attempts < $2",
    )
    .bind(request_id)
    .bind(MAX_ATTEMPTS)
    .execute(pool)
    .await?;
    if counted.rows_affected() == 0 {
        return Ok(Checked::TooManyAttempts);
    }
    Ok(Checked::Wrong(MAX_ATTEMPTS - attempts - 1))
}
