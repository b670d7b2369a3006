//! The batched writer, analytics' hot path. Every request hands its events
//! to one writer task and waits; the writer takes whatever has queued
//! (group commit: while one transaction commits, the next batch gathers),
//! stores it in one transaction on the backend's native path, and answers
//! each request only after the commit. A request whose events do not fit in
//! the queue is refused at once (RESOURCE_EXHAUSTED, 429), so memory stays
//! bounded however far the database falls behind.
//!
//! - PostgreSQL: one `INSERT ... SELECT FROM UNNEST(arrays)` per table and
//!   batch into a table partitioned by day (partitions made ahead; retention
//!   drops whole partitions), `ON CONFLICT DO NOTHING RETURNING` telling
//!   which event ids were duplicates.
//! - SQLite: one large transaction of prepared statements on a connection
//!   of the writer's own, run in place (no hand-off to a connection thread
//!   per statement), `synchronous = FULL` so an acknowledged event survives
//!   a crash of the machine as well as of the process.
//!
//! A database that is away fails the batch's requests UNAVAILABLE (see
//! `custodian_runtime::database::fault`), saying whether anything was
//! stored; every event carries its id, so a retry never counts one twice.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex},
};

use custodian_proto::analytics::v1::DropReason;
use custodian_runtime::metrics;
use custodian_runtime::{
    Backend, Database,
    database::fault::{self, Unavailable},
};
use sqlx::{PgPool, Row as _, postgres::PgPoolOptions};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::door::Clean;

/// Rows the writer takes into one transaction.
const BATCH_ROWS: usize = 10_000;

/// A usage event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRow {
    pub tenant_id: String,
    pub user_key: String,
    pub day: i64,
    pub time: i64,
    pub event_id: Option<String>,
    pub action: String,
    pub path: String,
}

/// One dropped event: its site ("" unknown, "usage" for usage events),
/// day and reason.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dropped {
    pub site_id: String,
    pub day: i64,
    pub reason: i32,
}

/// What one request hands the writer.
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<Clean>,
    pub usage: Vec<UsageRow>,
    pub drops: Vec<Dropped>,
}

impl Batch {
    fn rows(&self) -> usize {
        self.events.len() + self.usage.len() + self.drops.len()
    }
}

/// What was stored of one request.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub accepted: i64,
    pub duplicates: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The queue is full: try again later.
    #[error("the event writer is behind; retry later")]
    Busy,
    #[error("storing events failed")]
    Failed(#[source] anyhow::Error),
}

struct Job {
    batch: Batch,
    /// On failure, the database's fault when that is why.
    reply: oneshot::Sender<Result<Written, Option<Unavailable>>>,
    _slots: OwnedSemaphorePermit,
}

/// The writer's handle.
#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::UnboundedSender<Job>,
    slots: Arc<Semaphore>,
}

impl Writer {
    /// Starts the writer task for `db`; at most `queue_rows` rows (events,
    /// usage events, drops) wait for it.
    pub fn start(db: &Database, queue_rows: usize) -> anyhow::Result<Self> {
        let sink = match db.backend() {
            Backend::Postgres => Sink::Postgres {
                pool: {
                    let port = custodian_runtime::database::postgres_port(db.url()).unwrap_or(5432);
                    PgPoolOptions::new()
                        .max_connections(2)
                        .after_connect(move |_, _| {
                            Box::pin(async move {
                                custodian_runtime::database::tcp_nodelay_to(port);
                                Ok(())
                            })
                        })
                        // As the service's own pool: a connection that may
                        // have broken unseen is checked before a batch.
                        .before_acquire(|conn, meta| {
                            Box::pin(async move {
                                custodian_runtime::database::check_if_stale(conn, meta).await?;
                                Ok(true)
                            })
                        })
                        .idle_timeout(std::time::Duration::from_secs(60))
                        .connect_lazy(db.url())?
                },
                partitions: Mutex::default(),
            },
            Backend::Sqlite => Sink::Sqlite {
                path: db
                    .sqlite_path()
                    .ok_or_else(|| {
                        anyhow::anyhow!("analytics needs a SQLite file, not an in-memory database")
                    })?
                    .to_path_buf(),
                conn: Arc::new(Mutex::new(None)),
            },
        };
        let (jobs, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(Arc::new(sink), rx));
        let slots = Arc::new(Semaphore::new(queue_rows.max(1)));
        let waiting = Arc::downgrade(&slots);
        let capacity = queue_rows.max(1);
        // Rows waiting are the queue's slots taken; read when metrics are
        // collected, nothing per request.
        let _ = metrics::meter()
            .i64_observable_gauge("custodian.analytics.writer.queue")
            .with_unit("{row}")
            .with_description("Analytics rows (events, usage events, drops) waiting for the writer")
            .with_callback(move |observer| {
                if let Some(slots) = waiting.upgrade() {
                    let taken = capacity.saturating_sub(slots.available_permits());
                    observer.observe(taken as i64, &[]);
                }
            })
            .build();
        Ok(Self { jobs, slots })
    }

    /// Stores a request's rows; returns once they are committed.
    pub async fn write(&self, batch: Batch) -> Result<Written, WriteError> {
        let refused = |batch: &Batch| {
            // Refused whole, answered 429: the sender may try again.
            let kind = if batch.usage.is_empty() {
                "web"
            } else {
                "usage"
            };
            crate::ingest::count_dropped(
                kind,
                "queue_full",
                (batch.events.len() + batch.usage.len()) as u64,
            );
            WriteError::Busy
        };
        let rows = u32::try_from(batch.rows().max(1)).map_err(|_| refused(&batch))?;
        let slots = self
            .slots
            .clone()
            .try_acquire_many_owned(rows)
            .map_err(|_| refused(&batch))?;
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job {
                batch,
                reply,
                _slots: slots,
            })
            .map_err(|_| WriteError::Failed(anyhow::anyhow!("the writer has stopped")))?;
        match answer.await {
            Ok(Ok(written)) => Ok(written),
            Ok(Err(Some(unavailable))) => Err(WriteError::Failed(unavailable.into())),
            Ok(Err(None)) => Err(WriteError::Failed(anyhow::anyhow!("storing events failed"))),
            Err(_) => Err(WriteError::Failed(anyhow::anyhow!(
                "the writer has stopped"
            ))),
        }
    }
}

enum Sink {
    Postgres {
        pool: PgPool,
        partitions: Mutex<BTreeSet<i64>>,
    },
    Sqlite {
        path: PathBuf,
        conn: Arc<Mutex<Option<rusqlite::Connection>>>,
    },
}

/// Rows per commit of the writer.
static BATCH_SIZE: std::sync::LazyLock<metrics::Histogram<u64>> = std::sync::LazyLock::new(|| {
    metrics::meter()
        .u64_histogram("custodian.analytics.writer.batch_size")
        .with_unit("{row}")
        .with_description("Rows written by one commit of the analytics writer")
        .with_boundaries(vec![1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 10_000.0])
        .build()
});

async fn run(sink: Arc<Sink>, mut rx: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = rx.recv().await {
        let mut rows = first.batch.rows();
        let mut jobs = vec![first];
        while rows < BATCH_ROWS {
            match rx.try_recv() {
                Ok(job) => {
                    rows += job.batch.rows();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        BATCH_SIZE.record(rows as u64, &[]);
        let batches: Vec<&Batch> = jobs.iter().map(|j| &j.batch).collect();
        let outcome = match sink.as_ref() {
            Sink::Postgres { pool, partitions } => write_postgres(pool, partitions, &batches).await,
            Sink::Sqlite { path, conn } => {
                // The batches move to the blocking thread and back.
                let owned: Vec<Batch> = jobs
                    .iter_mut()
                    .map(|j| std::mem::take(&mut j.batch))
                    .collect();
                let path = path.clone();
                let conn = conn.clone();
                match tokio::task::spawn_blocking(move || {
                    let outcome = write_sqlite(&path, &conn, &owned);
                    (owned, outcome)
                })
                .await
                {
                    Ok((owned, outcome)) => {
                        for (job, batch) in jobs.iter_mut().zip(owned) {
                            job.batch = batch;
                        }
                        outcome
                    }
                    Err(err) => Err(anyhow::anyhow!("the SQLite writer panicked: {err}")),
                }
            }
        };
        match outcome {
            Ok(results) => {
                for (job, written) in jobs.into_iter().zip(results) {
                    let _ = job.reply.send(Ok(written));
                }
            }
            Err(err) => {
                let unavailable = fault::of_error(err.as_ref());
                match unavailable {
                    // The readiness probe reports a database that is away.
                    Some(u) => {
                        tracing::debug!(fault = ?u.fault, rows, "analytics events wait for the database")
                    }
                    None => tracing::error!(error = %err, rows, "storing analytics events"),
                }
                for job in jobs {
                    let _ = job.reply.send(Err(unavailable));
                }
            }
        }
    }
}

/// Which of the batches' events were stored, given a test of whether an
/// event with an id was inserted (and not a duplicate); the drops to add
/// for the duplicates.
fn tally(
    batches: &[&Batch],
    mut inserted_event: impl FnMut(usize, usize, &Clean) -> bool,
    mut inserted_usage: impl FnMut(usize, usize, &UsageRow) -> bool,
) -> (Vec<Written>, BTreeMap<Dropped, i64>) {
    let mut results = Vec::with_capacity(batches.len());
    let mut drops: BTreeMap<Dropped, i64> = BTreeMap::new();
    for (b, batch) in batches.iter().enumerate() {
        let mut written = Written::default();
        for (i, event) in batch.events.iter().enumerate() {
            if inserted_event(b, i, event) {
                written.accepted += 1;
            } else {
                written.duplicates += 1;
                *drops
                    .entry(Dropped {
                        site_id: event.site_id.clone(),
                        day: event.day,
                        reason: DropReason::Duplicate as i32,
                    })
                    .or_default() += 1;
            }
        }
        for (i, usage) in batch.usage.iter().enumerate() {
            if inserted_usage(b, i, usage) {
                written.accepted += 1;
            } else {
                written.duplicates += 1;
                *drops
                    .entry(Dropped {
                        site_id: crate::USAGE_SITE.to_owned(),
                        day: usage.day,
                        reason: DropReason::Duplicate as i32,
                    })
                    .or_default() += 1;
            }
        }
        for drop in &batch.drops {
            *drops.entry(drop.clone()).or_default() += 1;
        }
        results.push(written);
    }
    (results, drops)
}

const PARTITION_AHEAD_DAYS: i64 = 2;

/// Makes the daily partitions `days` need (and the next days'), once per
/// process; another replica making the same one at the same time is fine.
pub async fn ensure_partitions(
    pool: &PgPool,
    made: &Mutex<BTreeSet<i64>>,
    days: impl IntoIterator<Item = i64>,
) -> anyhow::Result<()> {
    let mut wanted = BTreeSet::new();
    for day in days {
        for d in day..=day + PARTITION_AHEAD_DAYS {
            wanted.insert(d);
        }
    }
    let missing: Vec<i64> = {
        let made = made.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        wanted.into_iter().filter(|d| !made.contains(d)).collect()
    };
    for day in missing {
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS analytics_events_p{day} PARTITION OF analytics_events FOR VALUES FROM ({day}) TO ({})",
            day + 1
        );
        match sqlx::raw_sql(sqlx::AssertSqlSafe(ddl)).execute(pool).await {
            Ok(_) => {}
            // Made by another replica between our check and our CREATE.
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P07") | Some("23505")) => {}
            Err(err) => return Err(err.into()),
        }
        if let Ok(mut made) = made.lock() {
            made.insert(day);
        }
    }
    Ok(())
}

async fn write_postgres(
    pool: &PgPool,
    partitions: &Mutex<BTreeSet<i64>>,
    batches: &[&Batch],
) -> anyhow::Result<Vec<Written>> {
    let events: Vec<&Clean> = batches.iter().flat_map(|b| &b.events).collect();
    ensure_partitions(pool, partitions, events.iter().map(|e| e.day))
        .await
        .map_err(uncommitted)?;
    let mut tx = pool.begin().await.map_err(|e| uncommitted(e.into()))?;
    let results = stage_postgres(&mut tx, batches)
        .await
        .map_err(uncommitted)?;
    tx.commit().await?;
    Ok(results)
}

/// An error met before the commit: if the database is away, nothing of
/// the batch was stored (its transaction is rolled back with the
/// connection).
fn uncommitted(err: anyhow::Error) -> anyhow::Error {
    match fault::of_error(err.as_ref()) {
        Some(unavailable) => Unavailable {
            nothing_stored: true,
            ..unavailable
        }
        .into(),
        None => err,
    }
}

/// The batches' rows in `tx`, not yet committed; what each stored.
async fn stage_postgres(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    batches: &[&Batch],
) -> anyhow::Result<Vec<Written>> {
    let events: Vec<&Clean> = batches.iter().flat_map(|b| &b.events).collect();
    let usage: Vec<&UsageRow> = batches.iter().flat_map(|b| &b.usage).collect();
    let mut inserted: HashSet<(String, i64, String)> = HashSet::new();
    if !events.is_empty() {
        let rows = sqlx::query(
            "INSERT INTO analytics_events (site_id, day, time, event_id, kind, path, referrer_host, browser, \
             browser_major, os, device, network, visitor, engaged_ms, consent) \
             SELECT * FROM UNNEST($1::text[], $2::int[], $3::bigint[], $4::text[], $5::int[], $6::text[], \
             $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], \
             $14::bigint[], $15::int[]) \
             ON CONFLICT (site_id, day, event_id) DO NOTHING \
             RETURNING site_id, day, event_id",
        )
        .bind(events.iter().map(|e| e.site_id.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.day as i32).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.time).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.event_id.as_deref()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.kind).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.path.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.referrer_host.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.browser.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.browser_major.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.os.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.device.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.network.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.visitor.as_deref()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.engaged_ms).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.consent).collect::<Vec<_>>())
        .fetch_all(&mut **tx)
        .await?;
        for row in rows {
            if let Some(id) = row.try_get::<Option<String>, _>("event_id")? {
                inserted.insert((
                    row.try_get("site_id")?,
                    i64::from(row.try_get::<i32, _>("day")?),
                    id,
                ));
            }
        }
    }
    let mut usage_inserted: HashSet<(String, i64, String)> = HashSet::new();
    if !usage.is_empty() {
        let rows = sqlx::query(
            "INSERT INTO analytics_usage (tenant_id, user_key, day, time, event_id, action, path) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::int[], $4::bigint[], $5::text[], $6::text[], $7::text[]) \
             ON CONFLICT (tenant_id, day, event_id) DO NOTHING \
             RETURNING tenant_id, day, event_id",
        )
        .bind(usage.iter().map(|u| u.tenant_id.as_str()).collect::<Vec<_>>())
        .bind(usage.iter().map(|u| u.user_key.as_str()).collect::<Vec<_>>())
        .bind(usage.iter().map(|u| u.day as i32).collect::<Vec<_>>())
        .bind(usage.iter().map(|u| u.time).collect::<Vec<_>>())
        .bind(usage.iter().map(|u| u.event_id.as_deref()).collect::<Vec<_>>())
        .bind(usage.iter().map(|u| u.action.as_str()).collect::<Vec<_>>())
        .bind(usage.iter().map(|u| u.path.as_str()).collect::<Vec<_>>())
        .fetch_all(&mut **tx)
        .await?;
        for row in rows {
            if let Some(id) = row.try_get::<Option<String>, _>("event_id")? {
                usage_inserted.insert((
                    row.try_get("tenant_id")?,
                    i64::from(row.try_get::<i32, _>("day")?),
                    id,
                ));
            }
        }
    }
    // An id comes back once: the first event that claims it was stored,
    // any later one in the same batch was a duplicate.
    let (results, drops) = tally(
        batches,
        |_, _, e| match &e.event_id {
            None => true,
            Some(id) => inserted.remove(&(e.site_id.clone(), e.day, id.clone())),
        },
        |_, _, u| match &u.event_id {
            None => true,
            Some(id) => usage_inserted.remove(&(u.tenant_id.clone(), u.day, id.clone())),
        },
    );
    if !drops.is_empty() {
        let (keys, counts): (Vec<&Dropped>, Vec<i64>) = drops.iter().unzip();
        sqlx::query(
            "INSERT INTO analytics_drops (site_id, day, reason, count) \
             SELECT * FROM UNNEST($1::text[], $2::int[], $3::int[], $4::bigint[]) \
             ON CONFLICT (site_id, day, reason) DO UPDATE SET count = analytics_drops.count + excluded.count",
        )
        .bind(keys.iter().map(|d| d.site_id.as_str()).collect::<Vec<_>>())
        .bind(keys.iter().map(|d| d.day as i32).collect::<Vec<_>>())
        .bind(keys.iter().map(|d| d.reason).collect::<Vec<_>>())
        .bind(counts)
        .execute(&mut **tx)
        .await?;
    }
    Ok(results)
}

fn open_sqlite(path: &PathBuf) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // The database's own checkpointer copies the WAL back (see
    // custodian_runtime::Database); a commit here never does.
    conn.execute_batch(
        "PRAGMA busy_timeout = 5000; PRAGMA synchronous = FULL; PRAGMA wal_autocheckpoint = 0;",
    )?;
    Ok(conn)
}

fn write_sqlite(
    path: &PathBuf,
    slot: &Mutex<Option<rusqlite::Connection>>,
    batches: &[Batch],
) -> anyhow::Result<Vec<Written>> {
    let mut slot = slot.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    if slot.is_none() {
        *slot = Some(open_sqlite(path)?);
    }
    let conn = slot
        .as_mut()
        .ok_or_else(|| anyhow::anyhow!("no connection"))?;
    let outcome = sqlite_tx(conn, batches);
    if outcome.is_err() {
        // A fresh connection next time, in case this one broke.
        *slot = None;
    }
    outcome
}

fn sqlite_tx(conn: &mut rusqlite::Connection, batches: &[Batch]) -> anyhow::Result<Vec<Written>> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut fresh_events: HashMap<(usize, usize), bool> = HashMap::new();
    let mut fresh_usage: HashMap<(usize, usize), bool> = HashMap::new();
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO analytics_events (site_id, day, time, event_id, kind, path, referrer_host, browser, \
             browser_major, os, device, network, visitor, engaged_ms, consent) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15) \
             ON CONFLICT (site_id, day, event_id) DO NOTHING",
        )?;
        for (b, batch) in batches.iter().enumerate() {
            for (i, e) in batch.events.iter().enumerate() {
                let changed = insert.execute(rusqlite::params![
                    e.site_id,
                    e.day,
                    e.time,
                    e.event_id,
                    e.kind,
                    e.path,
                    e.referrer_host,
                    e.browser,
                    e.browser_major,
                    e.os,
                    e.device,
                    e.network,
                    e.visitor,
                    e.engaged_ms,
                    e.consent,
                ])?;
                fresh_events.insert((b, i), changed == 1);
            }
        }
        let mut insert = tx.prepare_cached(
            "INSERT INTO analytics_usage (tenant_id, user_key, day, time, event_id, action, path) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (tenant_id, day, event_id) DO NOTHING",
        )?;
        for (b, batch) in batches.iter().enumerate() {
            for (i, u) in batch.usage.iter().enumerate() {
                let changed = insert.execute(rusqlite::params![
                    u.tenant_id,
                    u.user_key,
                    u.day,
                    u.time,
                    u.event_id,
                    u.action,
                    u.path,
                ])?;
                fresh_usage.insert((b, i), changed == 1);
            }
        }
    }
    let refs: Vec<&Batch> = batches.iter().collect();
    let (results, drops) = tally(
        &refs,
        |b, i, _| fresh_events.get(&(b, i)).copied().unwrap_or(false),
        |b, i, _| fresh_usage.get(&(b, i)).copied().unwrap_or(false),
    );
    {
        let mut upsert = tx.prepare_cached(
            "INSERT INTO analytics_drops (site_id, day, reason, count) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (site_id, day, reason) DO UPDATE SET count = analytics_drops.count + excluded.count",
        )?;
        for (drop, count) in &drops {
            upsert.execute(rusqlite::params![
                drop.site_id,
                drop.day,
                drop.reason,
                count
            ])?;
        }
    }
    tx.commit()?;
    Ok(results)
}
