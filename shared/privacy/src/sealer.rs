//! The audit sealer's storage, native per backend. The sealer is the hot
//! write path of every service (each read's event waits on its commit), so
//! it does not go through sqlx's `Any` driver:
//!
//! - SQLite: rusqlite, in place on the sealer's own thread (see
//!   `AuditLog::start`: nothing else runs there, so a pass blocks no one).
//!   sqlx's SQLite driver hands every statement to the connection's
//!   thread, and a pass is a dozen statements; here they run in place,
//!   prepared once, with no hand-off at all.
//! - PostgreSQL: sqlx's native driver, with every event of a pass inserted
//!   by one `UNNEST` statement, and every statement checked by `query!`
//!   against the schema (offline data in `.sqlx/`).
//!
//! Both do the same pass: lock the chain head, take up to `batch` staged
//! events (exactly those committed when the statement looks), chain them and
//! the reads after the head, move the head, commit.

use std::{borrow::Cow, path::PathBuf};

use custodian_runtime::{ApiError, Backend, Database, database::native::PgNative};
use sqlx::Connection as _;

use crate::audit::{Event, Linked, link};

/// The staged events of one pass, oldest first, after their ids.
fn in_order(mut staged: Vec<(String, Event)>) -> Vec<Event> {
    staged.sort_by(|a, b| a.0.cmp(&b.0));
    staged.into_iter().map(|(_, e)| e).collect()
}

pub(crate) enum Sealer {
    Sqlite {
        path: PathBuf,
        checkpointed: bool,
        connection: Option<rusqlite::Connection>,
    },
    Postgres {
        /// Checked before a pass when it may have broken unseen, and made
        /// again after a failed one.
        connection: Box<PgNative>,
        /// The chain head as this sealer last left it: a pass of reads
        /// alone checks it and moves it in the same statement that inserts
        /// the events, one round trip in all.
        head: Option<(i64, String)>,
    },
}

impl Sealer {
    pub(crate) fn new(db: &Database) -> anyhow::Result<Self> {
        Ok(match db.backend() {
            Backend::Sqlite => Self::Sqlite {
                path: db
                    .sqlite_path()
                    .ok_or_else(|| anyhow::anyhow!("the audit trail needs a SQLite file"))?
                    .to_path_buf(),
                checkpointed: db.checkpointed(),
                connection: None,
            },
            Backend::Postgres => Self::Postgres {
                connection: Box::new(PgNative::new(db.url().parse()?)),
                head: None,
            },
        })
    }

    /// One pass; returns how many staged events it sealed. On an error the
    /// connection is dropped, so the next pass starts on a fresh one.
    pub(crate) async fn seal(
        &mut self,
        service: &'static str,
        reads: &[Event],
        batch: i64,
        now: i64,
    ) -> Result<i64, ApiError> {
        if reads.is_empty() && batch == 0 {
            return Ok(0);
        }
        match self {
            Self::Sqlite {
                path,
                checkpointed,
                connection,
            } => {
                let conn = match connection {
                    Some(conn) => conn,
                    None => connection.insert(open_sqlite(path, *checkpointed)?),
                };
                let outcome = seal_sqlite(conn, service, reads, batch, now);
                if outcome.is_err() {
                    *connection = None;
                }
                outcome.map_err(ApiError::internal)
            }
            Self::Postgres { connection, head } => {
                let (conn, _) = connection.get().await?;
                if batch == 0
                    && let Some((seq, hash)) = head.take()
                {
                    match append_postgres(conn, service, reads.to_vec(), seq, hash, now).await {
                        Ok(Some(moved)) => {
                            *head = Some(moved);
                            return Ok(0);
                        }
                        // Another replica's sealer moved the head: the
                        // locked pass below reads it.
                        Ok(None) => {}
                        Err(err) => {
                            connection.failed();
                            return Err(err);
                        }
                    }
                }
                let outcome = seal_postgres(conn, service, reads, batch, now).await;
                match outcome {
                    Ok((sealed, moved)) => {
                        *head = Some(moved);
                        Ok(sealed)
                    }
                    Err(err) => {
                        connection.failed();
                        Err(err)
                    }
                }
            }
        }
    }
}

fn open_sqlite(
    path: &std::path::Path,
    checkpointed: bool,
) -> Result<rusqlite::Connection, ApiError> {
    custodian_runtime::database::open_for_writing(path, checkpointed).map_err(ApiError::internal)
}

fn seal_sqlite(
    conn: &mut rusqlite::Connection,
    service: &'static str,
    reads: &[Event],
    batch: i64,
    now: i64,
) -> rusqlite::Result<i64> {
    use rusqlite::{OptionalExtension as _, params};
    if reads.is_empty() {
        // Nothing to answer: no write lock when nothing is staged.
        let staged: Option<i64> = conn
            .prepare_cached("SELECT 1 FROM audit_pending WHERE service = ?1 LIMIT 1")?
            .query_row([service], |r| r.get(0))
            .optional()?;
        if staged.is_none() {
            return Ok(0);
        }
    }
    // IMMEDIATE: the write lock first, so the head read next cannot change
    // under this pass (a replica's sealer on the same file waits).
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let (seq, hash): (i64, String) = tx
        .prepare_cached("SELECT seq, hash FROM audit_chain WHERE service = ?1")?
        .query_row([service], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let mut staged = Vec::new();
    if batch > 0 {
        let mut take = tx.prepare_cached(
            "DELETE FROM audit_pending WHERE service = ?1 AND id IN \
             (SELECT id FROM audit_pending WHERE service = ?1 ORDER BY id LIMIT ?2) \
             RETURNING id, time, caller, on_behalf_of, purpose, action, method, resource, \
             subject_ref, fields, outcome, detail",
        )?;
        let rows = take.query_map(params![service, batch], |r| {
            Ok((
                r.get::<_, String>(0)?,
                Event {
                    time: r.get(1)?,
                    caller: r.get(2)?,
                    on_behalf_of: r.get(3)?,
                    purpose: r.get(4)?,
                    action: i32::try_from(r.get::<_, i64>(5)?).unwrap_or_default(),
                    method: r.get(6)?,
                    resource: r.get(7)?,
                    subject_ref: r.get(8)?,
                    fields: split_fields(&r.get::<_, String>(9)?),
                    outcome: i32::try_from(r.get::<_, i64>(10)?).unwrap_or_default(),
                    detail: r.get(11)?,
                },
            ))
        })?;
        for row in rows {
            staged.push(row?);
        }
    }
    let sealed = staged.len() as i64;
    let events = in_order(staged)
        .into_iter()
        .map(Cow::Owned)
        .chain(reads.iter().map(Cow::Borrowed));
    let Linked {
        rows,
        head_seq,
        head_hash,
    } = link(service, seq, hash, events, now);
    if !rows.is_empty() {
        let mut insert = tx.prepare_cached(
            "INSERT INTO audit_events (service, seq, time, caller, on_behalf_of, purpose, action, \
             method, resource, subject_ref, fields, outcome, detail, hash) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )?;
        for (seq, e, hash) in &rows {
            let fields = e.fields.join(",");
            let mut params: Vec<&dyn rusqlite::ToSql> = vec![&service, seq];
            let values = e.sqlite_values(&fields);
            params.extend(values.iter().map(|v| v as &dyn rusqlite::ToSql));
            params.push(hash);
            insert.execute(params.as_slice())?;
        }
        drop(insert);
        tx.prepare_cached("UPDATE audit_chain SET seq = ?1, hash = ?2 WHERE service = ?3")?
            .execute(params![head_seq, head_hash, service])?;
    }
    tx.commit()?;
    Ok(sealed)
}

/// Events chained after the head (`seq`, `hash`) in one statement: the
/// head moves only if it is still there, and the events go in only if it
/// moved. Alone, for a pass of reads after the head this sealer last left;
/// inside the locked pass, after the head it just read.
/// Returns the new head, or `None` when the head was elsewhere and nothing
/// was written.
async fn append_postgres(
    conn: &mut sqlx::PgConnection,
    service: &'static str,
    events: Vec<Event>,
    seq: i64,
    hash: String,
    now: i64,
) -> Result<Option<(i64, String)>, ApiError> {
    let Linked {
        rows,
        head_seq,
        head_hash,
    } = link(
        service,
        seq,
        hash.clone(),
        events.into_iter().map(Cow::Owned),
        now,
    );
    let count = rows.len() as u64;
    let mut columns = Columns::default();
    for (seq, e, hash) in rows {
        columns.push(seq, e, hash);
    }
    let done = sqlx::query!(
        "WITH head AS (UPDATE audit_chain SET seq = $2, hash = $3          WHERE service = $1 AND seq = $4 AND hash = $5 RETURNING service)          INSERT INTO audit_events (service, seq, time, caller, on_behalf_of, purpose, action,          method, resource, subject_ref, fields, outcome, detail, hash)          SELECT head.service, e.* FROM head, UNNEST($6::BIGINT[], $7::BIGINT[], $8::TEXT[],          $9::TEXT[], $10::TEXT[], $11::BIGINT[], $12::TEXT[], $13::TEXT[], $14::TEXT[],          $15::TEXT[], $16::BIGINT[], $17::TEXT[], $18::TEXT[]) AS e",
        service,
        head_seq,
        &head_hash,
        seq,
        &hash,
        &columns.seq,
        &columns.time,
        &columns.caller,
        &columns.on_behalf_of,
        &columns.purpose,
        &columns.action,
        &columns.method,
        &columns.resource,
        &columns.subject_ref,
        &columns.fields,
        &columns.outcome,
        &columns.detail,
        &columns.hash,
    )
    .execute(&mut *conn)
    .await?;
    Ok((done.rows_affected() == count).then_some((head_seq, head_hash)))
}

/// A pass under the head's lock; returns how many staged events it sealed
/// and the new head.
async fn seal_postgres(
    conn: &mut sqlx::PgConnection,
    service: &'static str,
    reads: &[Event],
    batch: i64,
    now: i64,
) -> Result<(i64, (i64, String)), ApiError> {
    if reads.is_empty() {
        let staged = sqlx::query_scalar!(
            "SELECT 1 AS one FROM audit_pending WHERE service = $1 LIMIT 1",
            service
        )
        .fetch_optional(&mut *conn)
        .await?;
        if staged.is_none() {
            let head = sqlx::query!(
                "SELECT seq, hash FROM audit_chain WHERE service = $1",
                service
            )
            .fetch_one(&mut *conn)
            .await?;
            return Ok((0, (head.seq, head.hash)));
        }
    }
    let mut tx = conn.begin().await?;
    // The head row's lock makes sealers (one per replica) take turns.
    let head = sqlx::query!(
        "UPDATE audit_chain SET seq = seq WHERE service = $1 RETURNING seq, hash",
        service
    )
    .fetch_one(&mut *tx)
    .await?;
    let staged = if batch > 0 {
        // The batch's ids as an array, taken once: as `id IN (SELECT
        // ... LIMIT)`, PostgreSQL planned (on statistics from an empty
        // table) a nested loop that ran the subquery again for every
        // staged row: 2-6 s a pass after a burst of 50,000 creates,
        // while every read waited for its event to be sealed.
        sqlx::query!(
            "DELETE FROM audit_pending WHERE service = $1 AND id = ANY(ARRAY( \
             SELECT id FROM audit_pending WHERE service = $1 ORDER BY id LIMIT $2)) \
             RETURNING id, time, caller, on_behalf_of, purpose, action, method, resource, \
             subject_ref, fields, outcome, detail",
            service,
            batch
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|r| {
            (
                r.id,
                Event {
                    time: r.time,
                    caller: r.caller,
                    on_behalf_of: r.on_behalf_of,
                    purpose: r.purpose,
                    action: i32::try_from(r.action).unwrap_or_default(),
                    method: r.method,
                    resource: r.resource,
                    subject_ref: r.subject_ref,
                    fields: split_fields(&r.fields),
                    outcome: i32::try_from(r.outcome).unwrap_or_default(),
                    detail: r.detail,
                },
            )
        })
        .collect()
    } else {
        Vec::new()
    };
    let sealed = staged.len() as i64;
    let mut events = in_order(staged);
    events.extend(reads.iter().cloned());
    let moved = if events.is_empty() {
        (head.seq, head.hash)
    } else {
        // Under the head's lock, the head is where it was just read.
        append_postgres(&mut tx, service, events, head.seq, head.hash, now)
            .await?
            .ok_or_else(|| {
                ApiError::internal(std::io::Error::other("audit head moved under its lock"))
            })?
    };
    tx.commit().await?;
    Ok((sealed, moved))
}

/// A pass's events, column by column, for `UNNEST`.
#[derive(Default)]
struct Columns {
    seq: Vec<i64>,
    time: Vec<i64>,
    caller: Vec<String>,
    on_behalf_of: Vec<String>,
    purpose: Vec<String>,
    action: Vec<i64>,
    method: Vec<String>,
    resource: Vec<String>,
    subject_ref: Vec<String>,
    fields: Vec<String>,
    outcome: Vec<i64>,
    detail: Vec<String>,
    hash: Vec<String>,
}

impl Columns {
    fn push(&mut self, seq: i64, e: Cow<'_, Event>, hash: String) {
        let e = e.into_owned();
        self.seq.push(seq);
        self.time.push(e.time);
        self.caller.push(e.caller);
        self.on_behalf_of.push(e.on_behalf_of);
        self.purpose.push(e.purpose);
        self.action.push(i64::from(e.action));
        self.method.push(e.method);
        self.resource.push(e.resource);
        self.subject_ref.push(e.subject_ref);
        self.fields.push(e.fields.join(","));
        self.outcome.push(i64::from(e.outcome));
        self.detail.push(e.detail);
        self.hash.push(hash);
    }
}

pub(crate) fn split_fields(fields: &str) -> Vec<String> {
    if fields.is_empty() {
        Vec::new()
    } else {
        fields.split(',').map(str::to_owned).collect()
    }
}
