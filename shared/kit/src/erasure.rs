//! The erasure log: a record of every erasure, kept apart from the
//! databases it erases, so that restoring a service's database from a
//! backup taken before an erasure does not bring the person back. Each
//! service appends its own entries when it erases (the subject router does
//! it for every service, see `subject.rs`), durably, before the erase is
//! acknowledged; each service re-applies the entries its database does not
//! reflect before it serves (`reapply.rs`).
//!
//! An entry holds no personal value: the service, the data-subject request,
//! the controller the erase was narrowed to, the subject asked for as a
//! keyed blind index (or an opaque resource name), the names of the records
//! erased and the ids of the data keys destroyed.
//!
//! The log is its own database: a SQLite file (rollback journal, full
//! sync: an entry is on disk when the append returns, and the file alone is
//! the whole log) or a PostgreSQL database of its own, never a service's.

use std::{
    collections::BTreeSet,
    str::FromStr as _,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use custodian_runtime::{ApiError, Backend};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use sqlx::{
    AnyPool, Executor as _, Row as _,
    any::{AnyConnectOptions, AnyPoolOptions},
};
use tokio::sync::OnceCell;

/// An entry of a service's erasure of a subject's records.
pub const ERASED: &str = "erased";

/// Entries read at once.
const PAGE: i64 = 500;

/// The append-only record of erasures, shared by every service of a
/// process (each entry names its service).
#[derive(Clone)]
pub struct ErasureLog {
    inner: Arc<Inner>,
}

struct Inner {
    pool: AnyPool,
    /// The SQLite file's URL, made private before its first use.
    sqlite_url: Option<String>,
    /// The log's id, once its migrations ran.
    id: OnceCell<String>,
}

impl std::fmt::Debug for ErasureLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ErasureLog").finish_non_exhaustive()
    }
}

/// One entry, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub service: String,
    pub seq: i64,
    /// When the erasure began, in microseconds.
    pub time: i64,
    /// What `body` holds: [`ERASED`], or a kind of the service's own.
    pub kind: String,
    /// "requests/{request}", or empty.
    pub request: String,
    /// JSON.
    pub body: String,
}

/// What an [`ERASED`] entry's body holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Erased {
    /// The controller the erase was narrowed to: `*` for every one, `""`
    /// for the company's own records, else a tenant id.
    pub scope: String,
    /// The subject asked for: `email:<blind index>`, `phone:<blind index>`
    /// or `id:<resource name>`.
    pub subject: String,
    /// The names of the records erased.
    pub records: Vec<String>,
    /// The data keys destroyed.
    pub key_ids: Vec<String>,
}

/// The scope of a call limited to `tenant_limit` (see [`Erased::scope`]).
pub fn scope_of(tenant_limit: Option<&str>) -> String {
    tenant_limit.map_or_else(|| "*".to_owned(), str::to_owned)
}

/// The digest that makes a retry of the same erasure one entry: with a
/// request, the request, what it was narrowed to and the subject; without
/// one, every call is an erasure of its own.
pub fn digest(kind: &str, request: &str, parts: &[&str]) -> String {
    if request.is_empty() {
        return uuid::Uuid::now_v7().to_string();
    }
    let mut hash = Sha256::new();
    for part in [kind, request].iter().chain(parts) {
        hash.update(part.as_bytes());
        hash.update([0x1f]);
    }
    hex::encode(hash.finalize())
}

fn unavailable(what: &str, err: impl std::fmt::Display) -> ApiError {
    // The error names no value; the URL is never shown.
    tracing::warn!(error = %err, "the erasure log: {what}");
    ApiError::Unavailable(format!(
        "the erasure log cannot be {what}; nothing was acknowledged, retry"
    ))
}

impl ErasureLog {
    /// A lazy pool on `url`; the log is created on first use.
    pub fn connect_lazy(url: &str) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let scheme = custodian_runtime::database::scheme_of(url);
        let backend = match scheme {
            "sqlite" => Backend::Sqlite,
            "postgres" | "postgresql" => Backend::Postgres,
            other => anyhow::bail!("unsupported erasure log URL scheme {other:?}"),
        };
        let options = AnyConnectOptions::from_str(url)
            .with_context(|| format!("invalid {scheme} erasure log URL"))?;
        // Erasures are rare and a service's appends take turns anyway: two
        // connections a process, mostly none (they close when idle).
        let pool = AnyPoolOptions::new()
            .max_connections(2)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(5))
            .idle_timeout(Duration::from_secs(10 * 60))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // A rollback journal and a full sync: a committed
                        // entry survives a power cut, and the file alone is
                        // the whole log (no -wal to copy with it).
                        for pragma in [
                            "PRAGMA busy_timeout = 5000",
                            "PRAGMA journal_mode = DELETE",
                            "PRAGMA synchronous = FULL",
                        ] {
                            conn.execute(pragma).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect_lazy_with(options);
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                sqlite_url: (backend == Backend::Sqlite).then(|| url.to_owned()),
                id: OnceCell::new(),
            }),
        })
    }

    fn pool(&self) -> &AnyPool {
        &self.inner.pool
    }

    /// The log's id, its tables made on first use.
    pub async fn id(&self) -> Result<String, ApiError> {
        self.inner
            .id
            .get_or_try_init(|| async {
                if let Some(url) = &self.inner.sqlite_url {
                    private_file(url).map_err(|e| unavailable("created", e))?;
                }
                let mut migrator = sqlx::migrate!("./erasure-log");
                migrator.dangerous_set_table_name("erasure_log_migrations");
                // Several processes may share a SQLite log, and sqlx takes
                // no lock there: two starting at once both apply the first
                // migration (IF NOT EXISTS) and one fails recording it;
                // looked at again, it is applied.
                let mut attempt = 0;
                while let Err(err) = migrator.run(self.pool()).await {
                    attempt += 1;
                    if attempt == 5 {
                        return Err(unavailable("read", err));
                    }
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                }
                sqlx::query(
                    "INSERT INTO erasure_log_meta (key, value) VALUES ('id', $1) \
                     ON CONFLICT (key) DO NOTHING",
                )
                .bind(uuid::Uuid::new_v4().to_string())
                .execute(self.pool())
                .await
                .map_err(|e| unavailable("written", e))?;
                let id: String =
                    sqlx::query_scalar("SELECT value FROM erasure_log_meta WHERE key = 'id'")
                        .fetch_one(self.pool())
                        .await
                        .map_err(|e| unavailable("read", e))?;
                Ok(id)
            })
            .await
            .cloned()
    }

    /// Appends an entry and answers its sequence number, once it is
    /// durably stored; with a digest already there (the same erasure
    /// again), the first entry's, and nothing is written.
    pub async fn append(
        &self,
        service: &str,
        kind: &str,
        request: &str,
        time: i64,
        digest: &str,
        body: &str,
    ) -> Result<Entry, ApiError> {
        self.id().await?;
        let written = async {
            let mut tx = self.pool().begin().await?;
            // The head first: a write, so that on SQLite the transaction
            // holds the write lock from its start, and on PostgreSQL the
            // row lock orders the appends of one service.
            sqlx::query(
                "INSERT INTO erasure_log_head (service, seq) VALUES ($1, 0) \
                 ON CONFLICT (service) DO NOTHING",
            )
            .bind(service)
            .execute(&mut *tx)
            .await?;
            let seq: i64 = sqlx::query_scalar(
                "UPDATE erasure_log_head SET seq = seq + 1 WHERE service = $1 RETURNING seq",
            )
            .bind(service)
            .fetch_one(&mut *tx)
            .await?;
            let earlier = sqlx::query(
                "SELECT seq, time, kind, request, body FROM erasure_log \
                 WHERE service = $1 AND digest = $2",
            )
            .bind(service)
            .bind(digest)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = earlier {
                tx.rollback().await?;
                return Ok::<_, sqlx::Error>(Entry {
                    service: service.to_owned(),
                    seq: row.try_get("seq")?,
                    time: row.try_get("time")?,
                    kind: row.try_get("kind")?,
                    request: row.try_get("request")?,
                    body: row.try_get("body")?,
                });
            }
            sqlx::query(
                "INSERT INTO erasure_log (service, seq, time, kind, request, digest, body) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(service)
            .bind(seq)
            .bind(time)
            .bind(kind)
            .bind(request)
            .bind(digest)
            .bind(body)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Entry {
                service: service.to_owned(),
                seq,
                time,
                kind: kind.to_owned(),
                request: request.to_owned(),
                body: body.to_owned(),
            })
        };
        written.await.map_err(|e| unavailable("written", e))
    }

    /// A service's entries after `after`, in order, at most a page.
    pub async fn entries(&self, service: &str, after: i64) -> Result<Vec<Entry>, ApiError> {
        self.id().await?;
        let rows = sqlx::query(
            "SELECT seq, time, kind, request, body FROM erasure_log \
             WHERE service = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(service)
        .bind(after)
        .bind(PAGE)
        .fetch_all(self.pool())
        .await
        .map_err(|e| unavailable("read", e))?;
        rows.iter()
            .map(|row| {
                Ok(Entry {
                    service: service.to_owned(),
                    seq: row.try_get("seq")?,
                    time: row.try_get("time")?,
                    kind: row.try_get("kind")?,
                    request: row.try_get("request")?,
                    body: row.try_get("body")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| unavailable("read", e))
    }

    /// The last sequence number given to a service (0 for none).
    pub async fn head(&self, service: &str) -> Result<i64, ApiError> {
        self.id().await?;
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM erasure_log_head WHERE service = $1")
                .bind(service)
                .fetch_optional(self.pool())
                .await
                .map_err(|e| unavailable("read", e))?;
        Ok(seq.unwrap_or(0))
    }

    /// Moves a service's head up to `seq`: a database that reflects more
    /// than the log holds (the log restored from an older backup) must
    /// never see new entries numbered below what it already applied.
    pub async fn raise_head(&self, service: &str, seq: i64) -> Result<(), ApiError> {
        self.id().await?;
        let raised = async {
            let mut tx = self.pool().begin().await?;
            sqlx::query(
                "INSERT INTO erasure_log_head (service, seq) VALUES ($1, 0) \
                 ON CONFLICT (service) DO NOTHING",
            )
            .bind(service)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE erasure_log_head SET seq = $2 WHERE service = $1 AND seq < $2")
                .bind(service)
                .bind(seq)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        };
        raised.await.map_err(|e| unavailable("written", e))
    }

    pub async fn close(&self) {
        self.pool().close().await;
    }
}

/// Makes a SQLite log's folder 0700 and its file 0600, as the services'
/// files are: it holds keyed indexes of addresses.
fn private_file(url: &str) -> anyhow::Result<()> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    let path = std::path::Path::new(path);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        custodian_runtime::database::create_private_dir(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).with_context(|| {
        format!(
            "creating the erasure log file in {}",
            path.parent().unwrap_or(path).display()
        )
    })?;
    Ok(())
}

// --- what an erase destroyed, noted on its way --------------------------------

tokio::task_local! {
    /// The note of the erase running on this task, if any: the store puts
    /// the data keys it destroys in it, whichever part of a service erased.
    static NOTE: Arc<Mutex<Note>>;
}

/// What the parts of one erase destroyed beyond the records they answer.
#[derive(Debug, Default)]
pub(crate) struct Note {
    pub key_ids: BTreeSet<String>,
}

/// Runs `erase` with a note, and returns what it noted.
pub(crate) async fn noting<T>(erase: impl Future<Output = T>) -> (T, Note) {
    let note = Arc::new(Mutex::new(Note::default()));
    let out = NOTE.scope(note.clone(), erase).await;
    let note = std::mem::take(&mut *note.lock().unwrap_or_else(|p| p.into_inner()));
    (out, note)
}

/// Notes data keys destroyed by the erase running on this task (none runs
/// for a retention sweep: nothing is noted).
pub(crate) fn note_destroyed(ids: impl IntoIterator<Item = String>) {
    let _ = NOTE.try_with(|note| {
        if let Ok(mut note) = note.lock() {
            note.key_ids.extend(ids);
        }
    });
}

// --- what a service database reflects -----------------------------------------

/// Marks an entry as reflected in a service's database (it erased there
/// while serving), so the next start does not apply it again.
pub(crate) async fn mark_applied(
    db: &custodian_runtime::Database,
    service: &str,
    seq: i64,
) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO kit_erasures_applied (service, seq) VALUES ($1, $2) \
         ON CONFLICT (service, seq) DO NOTHING",
    )
    .bind(service)
    .bind(seq)
    .execute(db.pool())
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(dir: &tempfile::TempDir) -> ErasureLog {
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("erasures.db").display()
        );
        ErasureLog::connect_lazy(&url).unwrap()
    }

    #[tokio::test]
    async fn appends_are_numbered_per_service_and_a_retry_is_the_first_entry() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(&dir);
        let first = log
            .append("tickets", ERASED, "requests/1", 10, "d1", "{\"a\":1}")
            .await
            .unwrap();
        assert_eq!(first.seq, 1);
        let other = log
            .append("identity", ERASED, "requests/1", 11, "d1", "{}")
            .await
            .unwrap();
        assert_eq!(other.seq, 1, "numbered per service");
        // The same digest again: the first entry, nothing written.
        let again = log
            .append("tickets", ERASED, "requests/1", 12, "d1", "{\"a\":2}")
            .await
            .unwrap();
        assert_eq!(again, first);
        let second = log
            .append("tickets", ERASED, "", 13, "d2", "{}")
            .await
            .unwrap();
        assert_eq!(second.seq, 2, "a rolled-back retry takes no number");
        let entries = log.entries("tickets", 0).await.unwrap();
        assert_eq!(entries, vec![first.clone(), second.clone()]);
        assert_eq!(log.entries("tickets", 1).await.unwrap(), vec![second]);
        assert_eq!(log.head("tickets").await.unwrap(), 2);
        assert_eq!(log.head("analytics").await.unwrap(), 0);
        // The id stays the log's.
        let id = log.id().await.unwrap();
        log.close().await;
        let reopened = self::log(&dir);
        assert_eq!(reopened.id().await.unwrap(), id);
        assert_eq!(reopened.entries("tickets", 0).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_raised_head_numbers_new_entries_above_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(&dir);
        log.raise_head("dsr", 7).await.unwrap();
        log.raise_head("dsr", 3).await.unwrap();
        let entry = log.append("dsr", ERASED, "", 1, "x", "{}").await.unwrap();
        assert_eq!(entry.seq, 8);
    }

    #[test]
    fn digests_tell_erasures_apart() {
        let a = digest(ERASED, "requests/1", &["*", "email:k"]);
        assert_eq!(a, digest(ERASED, "requests/1", &["*", "email:k"]));
        assert_ne!(a, digest(ERASED, "requests/1", &["", "email:k"]));
        assert_ne!(a, digest(ERASED, "requests/2", &["*", "email:k"]));
        // Without a request every call is its own.
        assert_ne!(digest(ERASED, "", &["*"]), digest(ERASED, "", &["*"]));
    }

    #[tokio::test]
    async fn an_unreachable_log_is_unavailable_and_names_no_url() {
        let log =
            ErasureLog::connect_lazy("postgres://secret-user:hunter2@127.0.0.1:1/log").unwrap();
        let err = log
            .append("tickets", ERASED, "", 1, "d", "{}")
            .await
            .unwrap_err();
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(!status.message().contains("hunter2"));
        assert!(!status.message().contains("secret-user"));
    }
}
