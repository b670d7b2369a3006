//! Which database errors mean "the database is away", decided in one place.
//!
//! A refused or lost connection is not a bug: the caller may retry (gRPC
//! UNAVAILABLE), and the service must say whether anything was stored.
//! Every path that meets a database error, through sqlx (the pools, the
//! native PostgreSQL connections) or rusqlite (the native SQLite readers and
//! writers), classifies it here, through [`crate::ApiError`]'s constructors.
//!
//! A fault seen by any call is also remembered ([`seen`]): connections that
//! sat idle since before it are checked before their next use ([`stale`]),
//! so no call meets a connection the outage broke, and the readiness probes
//! look at once instead of at their next tick.

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use sqlx::error::DatabaseError as _;
use tokio::sync::Notify;

/// Why the database could not do what was asked, when the reason is its
/// availability, not the call or a bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// No connection was had: refused, not accepting connections, too many
    /// connections, starting or shutting down, TLS failed, the pool timed
    /// out or is closed. Nothing was sent.
    Unreachable,
    /// A connection broke during the call (an I/O error; the server
    /// terminated it, shut down or crashed). A statement in flight may
    /// have taken effect, unless its transaction had not committed.
    Lost,
    /// SQLite: the file stayed locked beyond the busy timeout. The
    /// statement did not run.
    Busy,
    /// SQLite: the file cannot be opened, read or written (removed, made
    /// read-only, disk full, an I/O error). SQLite kept nothing of the
    /// statement that failed.
    Storage,
}

/// A database fault as a call's outcome: what happened, and whether the
/// caller may take it that nothing was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct Unavailable {
    pub fault: Fault,
    /// False when a change may have been stored (a connection lost while
    /// a commit was on its way, or where the path cannot tell).
    pub nothing_stored: bool,
}

impl Unavailable {
    /// The fault as it is first met: only a lost connection leaves the
    /// outcome open (it may have broken after a commit was sent); a path
    /// that knows its transaction had not committed says so
    /// ([`crate::ApiError::uncommitted`]).
    pub fn new(fault: Fault) -> Self {
        Self {
            fault,
            nothing_stored: fault != Fault::Lost,
        }
    }

    /// What the caller is told: never the driver's text, which can name
    /// the server, its user or a statement.
    pub fn message(&self) -> &'static str {
        match (self.fault, self.nothing_stored) {
            (Fault::Busy, true) => "the database is busy; nothing was stored",
            (_, true) => "the database is unavailable; nothing was stored",
            (_, false) => {
                "the database connection was lost; a change may or may not have been stored"
            }
        }
    }
}

/// Classifies a sqlx error; `None` when it is not about the database's
/// availability (a constraint, a bad statement, a decoding error, ...).
pub fn of_sqlx(err: &sqlx::Error) -> Option<Fault> {
    match err {
        sqlx::Error::Io(io) => Some(of_io(io)),
        sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            Some(Fault::Unreachable)
        }
        sqlx::Error::WorkerCrashed => Some(Fault::Lost),
        sqlx::Error::Database(db) => {
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                of_sqlstate(pg.code(), pg.routine())
            } else if let Some(sqlite) = db.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
                sqlite
                    .code()
                    .and_then(|code| code.parse::<i32>().ok())
                    .and_then(of_sqlite_code)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Classifies a rusqlite error (the native SQLite paths).
pub fn of_rusqlite(err: &rusqlite::Error) -> Option<Fault> {
    match err {
        rusqlite::Error::SqliteFailure(e, _) => of_sqlite_code(e.extended_code),
        _ => None,
    }
}

/// Classifies any error by what it is or wraps: a sqlx or rusqlite error,
/// one shared behind an `Arc` (the batched reads answer many callers with
/// one), or a fault already classified.
pub fn of_error(err: &(dyn std::error::Error + 'static)) -> Option<Unavailable> {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(found) = err.downcast_ref::<Unavailable>() {
            return Some(*found);
        }
        if let Some(found) = err.downcast_ref::<crate::ApiError>()
            && let crate::ApiError::Database(found) = found
        {
            return Some(*found);
        }
        let fault = err
            .downcast_ref::<sqlx::Error>()
            .and_then(of_sqlx)
            .or_else(|| {
                err.downcast_ref::<std::sync::Arc<sqlx::Error>>()
                    .and_then(|e| of_sqlx(e))
            })
            .or_else(|| err.downcast_ref::<rusqlite::Error>().and_then(of_rusqlite));
        if let Some(fault) = fault {
            return Some(Unavailable::new(fault));
        }
        next = err.source();
    }
    None
}

/// I/O errors that can only happen while connecting mean nothing was sent;
/// any other broke a connection in use.
fn of_io(err: &std::io::Error) -> Fault {
    use std::io::ErrorKind::*;
    match err.kind() {
        ConnectionRefused | NotFound | AddrNotAvailable | HostUnreachable | NetworkUnreachable => {
            Fault::Unreachable
        }
        _ => Fault::Lost,
    }
}

/// PostgreSQL's SQLSTATE codes for a refused or lost connection
/// (https://www.postgresql.org/docs/current/errcodes-appendix.html).
fn of_sqlstate(code: &str, routine: Option<&str>) -> Option<Fault> {
    match code {
        // sqlclient_unable_to_establish_sqlconnection,
        // sqlserver_rejected_establishment_of_sqlconnection
        "08001" | "08004" => Some(Fault::Unreachable),
        // Any other connection exception: the connection is gone.
        c if c.starts_with("08") => Some(Fault::Lost),
        // admin_shutdown (pg_terminate_backend, a fast shutdown),
        // crash_shutdown, database_dropped, idle_session_timeout.
        "57P01" | "57P02" | "57P04" | "57P05" => Some(Fault::Lost),
        // cannot_connect_now (starting up, shutting down, recovering),
        // too_many_connections.
        "57P03" | "53300" => Some(Fault::Unreachable),
        // Refusals of a new connection: the database does not exist (any
        // more), authentication failed or is not allowed. Only ever
        // answered while connecting.
        "3D000" | "28000" | "28P01" => Some(Fault::Unreachable),
        // object_not_in_prerequisite_state is what `ALLOW_CONNECTIONS
        // false` answers ("database ... is not currently accepting
        // connections", from CheckMyDatabase); a statement can raise the
        // same code for other reasons (a sequence's currval), so only
        // that routine counts. Its messages are translated; its routine
        // name is not.
        "55000" if routine == Some("CheckMyDatabase") => Some(Fault::Unreachable),
        // disk_full: nothing of the statement was kept.
        "53100" => Some(Fault::Storage),
        _ => None,
    }
}

/// SQLite's result codes (primary code in the low byte) for a file that is
/// locked, or cannot be opened, read or written.
fn of_sqlite_code(extended: i32) -> Option<Fault> {
    use rusqlite::ffi;
    match extended & 0xff {
        ffi::SQLITE_BUSY | ffi::SQLITE_LOCKED => Some(Fault::Busy),
        ffi::SQLITE_IOERR | ffi::SQLITE_FULL | ffi::SQLITE_CANTOPEN | ffi::SQLITE_READONLY => {
            Some(Fault::Storage)
        }
        _ => None,
    }
}

/// A connection idle longer than this is checked before it is used: one
/// round trip, on a connection that was not busy anyway. Busier ones are
/// checked only after a fault (see [`stale`]).
pub const CHECK_AFTER_IDLE: Duration = Duration::from_secs(1);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// When a call last met a fault, in microseconds after [`epoch`] (0: never).
static LAST_FAULT: AtomicU64 = AtomicU64::new(0);

fn probes() -> &'static Notify {
    static PROBES: Notify = Notify::const_new();
    &PROBES
}

/// Records that a call met `fault`: connections idle since before now are
/// checked before their next use, and the readiness probes look at once.
pub fn seen(fault: Fault) {
    if fault == Fault::Busy {
        // A locked file breaks no connection and is no outage.
        return;
    }
    let now = u64::try_from(epoch().elapsed().as_micros()).unwrap_or(u64::MAX);
    LAST_FAULT.fetch_max(now.max(1), Ordering::AcqRel);
    probes().notify_waiters();
}

/// True when a connection idle since `since` may have broken unseen: it
/// sat idle longer than [`CHECK_AFTER_IDLE`], or since before a fault.
pub fn stale(since: Instant) -> bool {
    if since.elapsed() > CHECK_AFTER_IDLE {
        return true;
    }
    let last = LAST_FAULT.load(Ordering::Acquire);
    last != 0
        && since
            .checked_duration_since(epoch())
            .is_none_or(|after| u64::try_from(after.as_micros()).unwrap_or(u64::MAX) <= last)
}

/// Completes at the next [`seen`] fault (for the readiness probes).
pub(crate) async fn next_fault() {
    probes().notified().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_refusals_and_losses_are_faults_and_nothing_else_is() {
        for (code, routine, fault) in [
            ("08006", None, Some(Fault::Lost)),
            ("08001", None, Some(Fault::Unreachable)),
            ("57P01", None, Some(Fault::Lost)),
            ("57P03", None, Some(Fault::Unreachable)),
            ("53300", None, Some(Fault::Unreachable)),
            ("3D000", None, Some(Fault::Unreachable)),
            ("55000", Some("CheckMyDatabase"), Some(Fault::Unreachable)),
            ("55000", Some("currval_oid"), None),
            ("23505", None, None),
            ("42P01", None, None),
            ("40001", None, None),
        ] {
            assert_eq!(of_sqlstate(code, routine), fault, "{code} {routine:?}");
        }
    }

    #[test]
    fn sqlx_errors_of_the_connection_are_faults() {
        let refused = sqlx::Error::Io(std::io::ErrorKind::ConnectionRefused.into());
        assert_eq!(of_sqlx(&refused), Some(Fault::Unreachable));
        let reset = sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into());
        assert_eq!(of_sqlx(&reset), Some(Fault::Lost));
        assert_eq!(
            of_sqlx(&sqlx::Error::PoolTimedOut),
            Some(Fault::Unreachable)
        );
        assert_eq!(of_sqlx(&sqlx::Error::PoolClosed), Some(Fault::Unreachable));
        assert_eq!(of_sqlx(&sqlx::Error::WorkerCrashed), Some(Fault::Lost));
        assert_eq!(of_sqlx(&sqlx::Error::RowNotFound), None);
        assert_eq!(of_sqlx(&sqlx::Error::Protocol("odd".into())), None);
    }

    #[test]
    fn sqlite_codes_of_the_file_are_faults() {
        use rusqlite::ffi;
        let failure =
            |code| rusqlite::Error::SqliteFailure(ffi::Error::new(code), Some("text".into()));
        assert_eq!(of_rusqlite(&failure(ffi::SQLITE_BUSY)), Some(Fault::Busy));
        assert_eq!(
            of_rusqlite(&failure(ffi::SQLITE_BUSY_SNAPSHOT)),
            Some(Fault::Busy)
        );
        assert_eq!(
            of_rusqlite(&failure(ffi::SQLITE_FULL)),
            Some(Fault::Storage)
        );
        assert_eq!(
            of_rusqlite(&failure(ffi::SQLITE_READONLY_DBMOVED)),
            Some(Fault::Storage)
        );
        assert_eq!(of_rusqlite(&failure(ffi::SQLITE_CONSTRAINT_UNIQUE)), None);
        assert_eq!(of_rusqlite(&rusqlite::Error::QueryReturnedNoRows), None);
    }

    #[test]
    fn a_fault_is_found_through_wrappers() {
        let shared = std::sync::Arc::new(sqlx::Error::PoolTimedOut);
        let wrapped = anyhow::Error::new(shared).context("reading");
        assert_eq!(
            of_error(wrapped.as_ref()),
            Some(Unavailable::new(Fault::Unreachable))
        );
        let plain = anyhow::Error::new(std::io::Error::other("audit event not stored"));
        assert_eq!(of_error(plain.as_ref()), None);
    }

    #[test]
    fn connections_idle_since_before_a_fault_are_stale() {
        let fresh = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        seen(Fault::Lost);
        assert!(stale(fresh), "idle since before the fault");
        std::thread::sleep(Duration::from_millis(2));
        assert!(!stale(Instant::now()), "idle since after it");
        assert!(stale(Instant::now() - CHECK_AFTER_IDLE * 2), "idle long");
    }
}
