//! Whether a database answers, for readiness: a task per database checks
//! every [`EVERY`], and at once when a call met a fault (no sooner than
//! [`MIN_GAP`] after its last look, so an outage's flood of failing calls
//! does not become a flood of connection attempts).
//!
//! - PostgreSQL: `SELECT 1` on a connection of the probe's own, outside the
//!   pool (a pool busy with calls is not a lost database); when that fails,
//!   once more on a new connection, which is what a call would meet. Down
//!   only when both fail, each within [`TIMEOUT`].
//! - SQLite: the file opened anew (never created) and read, so a removed
//!   file, one made read-only, or one that cannot be read is down. A file
//!   merely locked by a writer is not: SQLite's reads go on beside it.
//!
//! Changes of state are logged, with the kind of fault and never the
//! driver's text (it can name the server and its user).

use std::{
    path::PathBuf,
    sync::Weak,
    time::{Duration, Instant},
};

use sqlx::{PgConnection, postgres::PgConnectOptions};
use tokio::sync::watch;

use super::{fault, native};

/// How often a database is checked.
pub const EVERY: Duration = Duration::from_secs(1);
/// How long one check may take before the database counts as down.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// The shortest time between two checks, however many calls meet faults.
const MIN_GAP: Duration = Duration::from_millis(200);

/// What a probe looks at.
pub(super) enum Target {
    Postgres(Box<PgConnectOptions>),
    Sqlite(PathBuf),
}

/// Starts the probe of one database; it ends once `alive` is gone (the
/// last handle of the database dropped). It starts from "up": the server
/// has just used the database to start.
pub(super) fn start(
    scheme: &'static str,
    target: Target,
    alive: Weak<()>,
) -> watch::Receiver<bool> {
    let (up, receiver) = watch::channel(true);
    tokio::spawn(run(scheme, target, alive, up));
    receiver
}

async fn run(scheme: &'static str, target: Target, alive: Weak<()>, up: watch::Sender<bool>) {
    let mut connection: Option<PgConnection> = None;
    let mut last = Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep(EVERY) => {}
            () = fault::next_fault() => {}
        }
        tokio::time::sleep_until((last + MIN_GAP).into()).await;
        if alive.strong_count() == 0 || up.is_closed() {
            return;
        }
        last = Instant::now();
        let checked = match &target {
            Target::Postgres(options) => check_postgres(&mut connection, options).await,
            Target::Sqlite(path) => check_sqlite(path.clone()).await,
        };
        let now_up = checked.is_ok();
        if now_up != *up.borrow() {
            match &checked {
                Ok(()) => tracing::warn!(database = scheme, "the database answers again: ready"),
                Err(why) => tracing::warn!(
                    database = scheme,
                    fault = why,
                    "the database does not answer: not ready"
                ),
            }
            up.send_replace(now_up);
        }
    }
}

/// The kind of a failed check, as logged.
type Why = &'static str;

fn why_sqlx(err: &sqlx::Error) -> Why {
    match fault::of_sqlx(err) {
        Some(fault::Fault::Unreachable) => "unreachable",
        Some(fault::Fault::Lost) => "connection lost",
        Some(fault::Fault::Busy) => "busy",
        Some(fault::Fault::Storage) => "storage",
        None => "error",
    }
}

async fn check_postgres(
    connection: &mut Option<PgConnection>,
    options: &PgConnectOptions,
) -> Result<(), Why> {
    if let Some(conn) = connection.as_mut() {
        if select_1(conn).await.is_ok() {
            return Ok(());
        }
        *connection = None;
    }
    let mut conn = native::connect(options).await.map_err(|e| why_sqlx(&e))?;
    select_1(&mut conn).await?;
    *connection = Some(conn);
    Ok(())
}

async fn select_1(conn: &mut PgConnection) -> Result<(), Why> {
    match tokio::time::timeout(TIMEOUT, sqlx::query("SELECT 1").execute(conn)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(why_sqlx(&err)),
        Err(_) => Err("timed out"),
    }
}

async fn check_sqlite(path: PathBuf) -> Result<(), Why> {
    let check = tokio::task::spawn_blocking(move || {
        use rusqlite::OpenFlags;
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|_| "the file cannot be opened")?;
        conn.busy_timeout(TIMEOUT)
            .map_err(|_| "the file cannot be opened")?;
        // SQLite opens a file it may not write read-only, silently.
        if conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(true) {
            return Err("the file is read-only");
        }
        conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
            .map_err(|_| "the file cannot be read")
    });
    match tokio::time::timeout(TIMEOUT, check).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(_)) => Err("the check panicked"),
        Err(_) => Err("timed out"),
    }
}
