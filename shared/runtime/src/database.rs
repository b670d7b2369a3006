//! The database pool. SQLite by default (a file, zero set-up), PostgreSQL when
//! the URL says so; one code path through sqlx's `Any` driver, so the same
//! queries and the same tests run on both.
//!
//! Each service owns its tables and its migrations; its migration history is
//! kept in a table of its own (`{service}_migrations`), so services can share
//! one database (PostgreSQL in production, or one SQLite file) without their
//! migration versions colliding.
//!
//! A database can go away while the server runs: its errors are classified
//! in [`fault`], readiness follows it through a probe ([`Database::readiness`]),
//! and connections it may have broken are checked before they are used again
//! (the pool's `before_acquire`, [`native::PgNative`]).

use std::{
    path::Path,
    str::FromStr,
    sync::{Arc, Once},
    time::Duration,
};

use anyhow::Context as _;
use sqlx::{
    AnyPool, Executor as _,
    any::{AnyConnectOptions, AnyPoolOptions},
    migrate::Migrator,
    pool::PoolConnectionMetadata,
};
use tokio::sync::{mpsc, oneshot, watch};

pub mod fault;
pub mod native;
mod probe;
pub mod schema;
mod writer;
pub use writer::{SqliteWriter, open_for_writing};

/// Which database engine is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A connection pool and the backend it talks to.
#[derive(Clone, Debug)]
pub struct Database {
    pool: AnyPool,
    backend: Backend,
    /// For the hot paths' native connections; never shown (it can hold a
    /// password).
    url: Arc<str>,
    /// Alive while any clone is: the SQLite checkpointer stops with the last.
    _alive: Arc<()>,
    checkpointed: bool,
    /// Point reads on SQLite, in place (see [`SqliteReader`]).
    reader: Option<Arc<SqliteReader>>,
    /// Point reads on PostgreSQL, batched (see [`PgPointReads`]).
    pg_reads: Option<Arc<PgPointReads>>,
    /// Write transactions on SQLite, in place and grouped (see
    /// [`SqliteWriter`]).
    writer: Option<Arc<SqliteWriter>>,
    /// Whether the database answers, once asked for (see
    /// [`Database::readiness`]).
    probe: Arc<std::sync::OnceLock<watch::Receiver<bool>>>,
}

/// How often the SQLite checkpointer copies the write-ahead log into the
/// database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// What a write-ahead log file keeps of its size once the log starts over.
const WAL_KEPT_BYTES: i64 = 64 * 1024 * 1024;
/// The log's length, in pages, past which the checkpointer starts it over.
const WAL_RESTART_FRAMES: i64 = 64 * 1024;

/// The URL scheme, which is all that may be shown of a database URL: the rest
/// can carry a password.
pub fn scheme_of(url: &str) -> &str {
    url.split_once(':').map_or("unknown", |(scheme, _)| scheme)
}

static DRIVERS: Once = Once::new();

impl Database {
    /// Opens a pool for `url`. Connections are made lazily, so a server can
    /// listen (and report NOT_SERVING) while the database is still coming up.
    pub fn connect_lazy(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let backend = match scheme_of(url) {
            "sqlite" => Backend::Sqlite,
            "postgres" | "postgresql" => Backend::Postgres,
            other => anyhow::bail!("unsupported database URL scheme {other:?}"),
        };
        if backend == Backend::Sqlite {
            prepare_sqlite_file(url)?;
        }
        let alive = Arc::new(());
        // SQLite checkpoints in whichever connection commits past the
        // log's threshold, and a checkpoint syncs the file: an audit commit
        // that a read waits on could wait for a disk sync. A thread of its
        // own checkpoints instead, beside the writers, never in their way.
        let file = sqlite_path(backend, url);
        let checkpointer = file.is_some_and(|path| {
            let (path, alive) = (path.to_path_buf(), Arc::downgrade(&alive));
            std::thread::Builder::new()
                .name("sqlite-checkpoint".into())
                .spawn(move || checkpoint(path, alive))
                .is_ok()
        });
        let options = AnyConnectOptions::from_str(url)
            .with_context(|| format!("invalid {} database URL", scheme_of(url)))?;
        let port = postgres_port(url);
        // No ping before every use: on SQLite a ping is a hand-off to the
        // connection's thread, which cost a fifth of a point read, and on
        // PostgreSQL a round trip. A PostgreSQL connection is checked only
        // when it may have broken unseen (see `check_if_stale`): a database
        // that terminated its idle connections while away otherwise failed
        // the first calls after it came back. A SQLite connection is a
        // file's, which no server terminates.
        let mut pool = AnyPoolOptions::new().test_before_acquire(false);
        if backend == Backend::Postgres {
            pool = pool.before_acquire(|conn, meta| {
                Box::pin(async move {
                    check_if_stale(conn, meta).await?;
                    Ok(true)
                })
            });
        }
        let pool = pool
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            // Connections idle this long are closed: a burst's connections
            // do not linger, and none is older than a minute of idleness.
            .idle_timeout(Duration::from_secs(60))
            .max_lifetime(Duration::from_secs(30 * 60))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the one writer; NORMAL is
                        // durable across process crashes and is WAL's usual
                        // pairing; secure_delete overwrites erased personal data
                        // instead of leaving it in free pages.
                        for pragma in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = NORMAL",
                            "PRAGMA foreign_keys = ON",
                            "PRAGMA busy_timeout = 5000",
                            "PRAGMA secure_delete = ON",
                        ] {
                            conn.execute(pragma).await?;
                        }
                        if checkpointer {
                            conn.execute("PRAGMA wal_autocheckpoint = 0").await?;
                        }
                    }
                    if let Some(port) = port {
                        tcp_nodelay_to(port);
                    }
                    Ok(())
                })
            })
            .connect_lazy_with(options);
        Ok(Self {
            pool,
            backend,
            url: url.into(),
            _alive: alive,
            checkpointed: checkpointer,
            reader: file.map(|p| Arc::new(SqliteReader::new(p))),
            writer: match file {
                Some(path) => Some(Arc::new(
                    SqliteWriter::start(path.to_path_buf(), checkpointer)
                        .context("starting the SQLite writer")?,
                )),
                None => None,
            },
            pg_reads: match backend {
                Backend::Postgres => Some(Arc::new(PgPointReads::new(url)?)),
                Backend::Sqlite => None,
            },
            probe: Arc::default(),
        })
    }

    /// True while the database answers: a probe checks it every second,
    /// and at once after a call met a fault (see the `probe` module).
    /// Started on first call (inside the runtime); every clone shares it,
    /// and it ends with the last clone.
    pub fn readiness(&self) -> anyhow::Result<watch::Receiver<bool>> {
        if let Some(receiver) = self.probe.get() {
            return Ok(receiver.clone());
        }
        let target = match self.backend {
            Backend::Postgres => probe::Target::Postgres(Box::new(
                self.url
                    .parse()
                    .with_context(|| format!("invalid {} database URL", scheme_of(&self.url)))?,
            )),
            Backend::Sqlite => match self.sqlite_path() {
                Some(path) => probe::Target::Sqlite(path.to_path_buf()),
                // An in-memory database cannot go away.
                None => return Ok(watch::channel(true).1),
            },
        };
        let scheme = match self.backend {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        };
        Ok(self
            .probe
            .get_or_init(|| probe::start(scheme, target, Arc::downgrade(&self._alive)))
            .clone())
    }

    /// Runs a service's migrations, recording them in `{service}_migrations`.
    pub async fn migrate(&self, service: &'static str, migrator: Migrator) -> anyhow::Result<()> {
        self.migrate_recorded_in(&format!("{service}_migrations"), migrator)
            .await
    }

    /// Runs migrations recorded in `table`, refusing a schema newer than
    /// this release can serve (see [`schema`]).
    pub async fn migrate_recorded_in(&self, table: &str, migrator: Migrator) -> anyhow::Result<()> {
        schema::migrate(&self.pool, table, migrator).await
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL, for a native connection of a hot path. Never log or show
    /// it: it can hold a password.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// True when a task of its own checkpoints this SQLite database (and
    /// connections must not).
    pub fn checkpointed(&self) -> bool {
        self.checkpointed
    }

    /// In-place point reads, on a SQLite file.
    pub fn sqlite_reader(&self) -> Option<&SqliteReader> {
        self.reader.as_deref()
    }

    /// Grouped write transactions in place, on a SQLite file.
    pub fn sqlite_writer(&self) -> Option<&SqliteWriter> {
        self.writer.as_deref()
    }

    /// Batched point reads, on PostgreSQL.
    pub fn pg_point_reads(&self) -> Option<&PgPointReads> {
        self.pg_reads.as_deref()
    }

    /// The database file, on SQLite.
    pub fn sqlite_path(&self) -> Option<&Path> {
        sqlite_path(self.backend, &self.url)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Point reads on a SQLite file without sqlx's hand-off of each query to a
/// connection thread: a read of one row by key takes microseconds in
/// SQLite, less than the two thread switches around it, so it runs in
/// place on the calling task's thread. In WAL mode a reader never waits on
/// the writer. Connections are read-only (`query_only`), opened on first
/// use, one per concurrent reader at most [`READERS`].
#[derive(Debug)]
pub struct SqliteReader {
    path: std::path::PathBuf,
    connections: Vec<std::sync::Mutex<Option<rusqlite::Connection>>>,
}

/// Read connections kept: one per runtime worker thread is all that can be
/// busy at once; a few more cover blocking callers.
const READERS: usize = 8;

impl SqliteReader {
    fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            connections: (0..READERS).map(|_| std::sync::Mutex::new(None)).collect(),
        }
    }

    /// Runs `read` on a free connection (or waits for one, which is only
    /// ever busy for one point read).
    pub fn read<T>(
        &self,
        read: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let mut slot = self.connections.iter().find_map(|c| c.try_lock().ok());
        if slot.is_none() {
            slot = self.connections[0].lock().ok();
        }
        let Some(mut slot) = slot else {
            return Err(rusqlite::Error::InvalidQuery);
        };
        let conn = match slot.as_mut() {
            Some(conn) => conn,
            None => {
                let conn = rusqlite::Connection::open_with_flags(
                    &self.path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
                        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                conn.execute_batch("PRAGMA query_only = ON; PRAGMA busy_timeout = 1000;")?;
                slot.insert(conn)
            }
        };
        let outcome = read(conn);
        if outcome.is_err() {
            // A fresh connection next time, in case this one broke.
            *slot = None;
        }
        outcome
    }
}

/// Point reads on PostgreSQL, batched: the reads of one statement that
/// arrive while its previous batch is at the database go together, as one
/// `WHERE id = ANY($1)`, on sqlx's native driver. A lone read is sent at
/// once, so batching adds no wait; under load, one round trip and one
/// execution in the server serve a whole batch. Measured under h2load
/// before: one query per `GetContact`, and PostgreSQL's backends took
/// about as much of the machine's CPU as the service itself.
pub struct PgPointReads {
    options: sqlx::postgres::PgConnectOptions,
    statements: std::sync::Mutex<std::collections::HashMap<Arc<str>, mpsc::Sender<Wanted>>>,
}

impl std::fmt::Debug for PgPointReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgPointReads").finish_non_exhaustive()
    }
}

/// One read waiting for its batch.
struct Wanted {
    id: String,
    done: oneshot::Sender<Result<Option<Arc<sqlx::postgres::PgRow>>, Arc<sqlx::Error>>>,
}

/// Batches of one statement at the database at once.
const BATCHES_IN_FLIGHT: usize = 2;
/// Ids in one batch, at most.
const BATCH_IDS: usize = 256;

impl PgPointReads {
    fn new(url: &str) -> anyhow::Result<Self> {
        let options: sqlx::postgres::PgConnectOptions = url
            .parse()
            .with_context(|| format!("invalid {} database URL", scheme_of(url)))?;
        Ok(Self {
            options,
            statements: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// The row of `sql` whose `id` column is `id`. `sql` selects a column
    /// named `id` and takes the ids as its one parameter, a text array:
    /// `... WHERE r.id = ANY($1)`. It is the project's own text, never a
    /// caller's.
    pub async fn read(
        &self,
        sql: &str,
        id: &str,
    ) -> Result<Option<Arc<sqlx::postgres::PgRow>>, Arc<sqlx::Error>> {
        let queue = {
            let mut statements = self
                .statements
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match statements.get(sql) {
                Some(queue) => queue.clone(),
                None => {
                    let sql: Arc<str> = sql.into();
                    let (queue, receiver) = mpsc::channel(4 * BATCH_IDS);
                    let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
                    for _ in 0..BATCHES_IN_FLIGHT {
                        tokio::spawn(batches(self.options.clone(), sql.clone(), receiver.clone()));
                    }
                    statements.insert(sql, queue.clone());
                    queue
                }
            }
        };
        let (done, answer) = oneshot::channel();
        let gone = || Arc::new(sqlx::Error::PoolClosed);
        queue
            .send(Wanted {
                id: id.to_owned(),
                done,
            })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// Takes whatever reads of one statement wait (at least one, at most
/// [`BATCH_IDS`]) and answers them with one query, until every sender is
/// gone. Each of these loops keeps a connection of its own (a pool's
/// bookkeeping cost more than the query's here), made again after an error.
async fn batches(
    options: sqlx::postgres::PgConnectOptions,
    sql: Arc<str>,
    receiver: Arc<tokio::sync::Mutex<mpsc::Receiver<Wanted>>>,
) {
    use sqlx::Row as _;
    let mut connection = native::PgNative::new(options);
    loop {
        let mut wanted = Vec::new();
        {
            let mut receiver = receiver.lock().await;
            match receiver.recv().await {
                Some(first) => wanted.push(first),
                None => return,
            }
            while wanted.len() < BATCH_IDS {
                match receiver.try_recv() {
                    Ok(more) => wanted.push(more),
                    Err(_) => break,
                }
            }
        }
        let ids: Vec<&str> = wanted.iter().map(|w| w.id.as_str()).collect();
        let mut rows = read_batch(&mut connection, &sql, &ids).await;
        // A connection used before can have broken in a way no check saw
        // (the database restarted between two batches): a read changes
        // nothing, so it is tried once more, on a fresh connection.
        if let Err((err, true)) = &rows
            && fault::of_sqlx(err) == Some(fault::Fault::Lost)
        {
            connection.failed();
            rows = read_batch(&mut connection, &sql, &ids).await;
        }
        let rows = rows.map_err(|(err, _)| err);
        // A row whose id cannot be read fails the batch: answering
        // NOT_FOUND for it would hide the fault.
        let found = rows.and_then(|rows| {
            rows.into_iter()
                .map(|row| Ok((row.try_get::<String, _>("id")?, Arc::new(row))))
                .collect::<Result<std::collections::HashMap<_, _>, sqlx::Error>>()
        });
        match found {
            Ok(by_id) => {
                for w in wanted {
                    let _ = w.done.send(Ok(by_id.get(&w.id).cloned()));
                }
            }
            Err(err) => {
                connection.failed();
                let err = Arc::new(err);
                for w in wanted {
                    let _ = w.done.send(Err(err.clone()));
                }
            }
        }
    }
}

/// One batch's query; the error says whether the connection was used
/// before.
async fn read_batch(
    connection: &mut native::PgNative,
    sql: &str,
    ids: &[&str],
) -> Result<Vec<sqlx::postgres::PgRow>, (sqlx::Error, bool)> {
    let (conn, reused) = connection.get().await.map_err(|e| (e, false))?;
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(ids)
        .fetch_all(conn)
        .await
        .map_err(|e| (e, reused))
}

/// The pool's check of a connection before a call gets it: a ping, when
/// the connection sat idle long enough, or since before a fault, to have
/// broken unseen (see [`fault::stale`]). A failed ping drops it and the
/// pool makes another.
pub async fn check_if_stale<C: sqlx::Connection>(
    conn: &mut C,
    meta: PoolConnectionMetadata,
) -> Result<(), sqlx::Error> {
    let idle_since = std::time::Instant::now()
        .checked_sub(meta.idle_for)
        .unwrap_or_else(std::time::Instant::now);
    if fault::stale(idle_since) {
        conn.ping().await?;
    }
    Ok(())
}

/// The TCP port of a PostgreSQL URL (5432 when it names none); `None` for
/// other databases.
pub fn postgres_port(url: &str) -> Option<u16> {
    matches!(scheme_of(url), "postgres" | "postgresql").then(|| {
        url::Url::parse(url)
            .ok()
            .and_then(|u| u.port())
            .unwrap_or(5432)
    })
}

/// Turns Nagle's algorithm off on every TCP socket of this process that is
/// connected to `port`. sqlx 0.9.0 no longer sets TCP_NODELAY on its
/// connections (launchbadge/sqlx#4335; the fix, #4336, is not released), so
/// a query whose messages leave in two segments waits for the server's
/// delayed ACK: 40 ms. Measured here: analytics ingest on PostgreSQL over
/// TCP ran at a quarter of the same over a Unix socket. Called right after
/// each connection is made; remove when sqlx sets it again. The socket is
/// found by its peer's port, as sqlx does not hand out its descriptor; a
/// wrongly matched socket only gets TCP_NODELAY too, which harms nothing.
pub fn tcp_nodelay_to(port: u16) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::BorrowedFd;
        let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
            return;
        };
        for entry in entries.flatten() {
            let is_socket = std::fs::read_link(entry.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
                .filter(|fd| *fd >= 0 && is_socket)
            else {
                continue;
            };
            // SAFETY: the descriptor is open (listed just now) and only
            // borrowed for two socket calls. Were it closed and reused in
            // between, they would fail (ENOTSOCK, EBADF) or set TCP_NODELAY
            // on another socket: no memory is touched either way.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            let socket = socket2::SockRef::from(&fd);
            let to_port = socket
                .peer_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .is_some_and(|a| a.port() == port);
            if to_port {
                let _ = socket.set_tcp_nodelay(true);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = port;
}

/// Checkpoints the SQLite database at `path` until the last clone of its
/// [`Database`] is dropped, on a thread and a rusqlite connection of its
/// own. PASSIVE: it copies what no reader still needs and waits for nobody.
///
/// The checkpointer before this one (a task on the request runtime, through
/// sqlx) copied nothing under h2load while requests kept coming: the log
/// reached 3 GB, the database file kept its one page, and every page a
/// reader looked up searched the whole log's index. This one copied
/// throughout the same run. Past [`WAL_RESTART_FRAMES`] it also starts the
/// log over, which a writer does only at a moment no reader is in the log,
/// and under steady reads there is none; `journal_size_limit` then gives
/// the file back its space.
fn checkpoint(path: std::path::PathBuf, alive: std::sync::Weak<()>) {
    let mut connection: Option<rusqlite::Connection> = None;
    let mut failing = false;
    loop {
        std::thread::sleep(CHECKPOINT_EVERY);
        if alive.strong_count() == 0 {
            return;
        }
        let conn = match connection.as_mut() {
            Some(conn) => conn,
            None => match rusqlite::Connection::open_with_flags(
                &path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            ) {
                Ok(conn) => connection.insert(conn),
                Err(_) => continue,
            },
        };
        let checkpoint = |mode: &str| {
            conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            })
        };
        // While readers never stop, the log is copied but never started
        // over (a writer starts it over only when no reader is in it), so
        // past a size the checkpointer waits a moment for the readers in
        // it (each a point read) and starts it over itself.
        let outcome = conn
            .execute_batch(&format!(
                "PRAGMA journal_size_limit = {WAL_KEPT_BYTES}; PRAGMA busy_timeout = 100;"
            ))
            .and_then(|()| checkpoint("PASSIVE"))
            .and_then(|(log, copied)| {
                if log > WAL_RESTART_FRAMES {
                    checkpoint("RESTART")
                } else {
                    Ok((log, copied))
                }
            });
        match outcome {
            Ok((log, copied)) => {
                failing = false;
                tracing::trace!(log, copied, "SQLite checkpoint");
            }
            Err(err) => {
                // Once per spell of failures, not four times a second.
                if !failing {
                    tracing::warn!(error = %err, "SQLite checkpoint failed");
                }
                failing = true;
                connection = None;
            }
        }
    }
}

/// The database file of a SQLite URL; `None` for other databases and for
/// an in-memory one.
fn sqlite_path(backend: Backend, url: &str) -> Option<&Path> {
    (backend == Backend::Sqlite)
        .then(|| sqlite_file(url))
        .filter(|p| !p.is_empty() && *p != ":memory:")
        .map(Path::new)
}

/// The file part of a SQLite URL.
fn sqlite_file(url: &str) -> &str {
    url.trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:")
        .split('?')
        .next()
        .unwrap_or_default()
}

/// Makes the folder of a SQLite database and the file itself readable by
/// their owner only: the folder 0700, the file 0600 (SQLite gives its WAL
/// and shared-memory files the database file's mode). Sealed data is
/// still data about people, and blind indexes are in clear.
fn prepare_sqlite_file(url: &str) -> anyhow::Result<()> {
    let path = sqlite_file(url);
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    let path = Path::new(path);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .with_context(|| format!("creating database file {}", path.display()))?;
    #[cfg(unix)]
    for file in [
        path.to_path_buf(),
        path.with_extension("db-wal"),
        path.with_extension("db-shm"),
    ] {
        if file.exists() {
            std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .with_context(|| format!("restricting {}", file.display()))?;
        }
    }
    Ok(())
}

/// Creates `dir` (and its parents) readable by its owner only, and
/// restricts it if it already exists.
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating folder {}", dir.display()))?;
    #[cfg(unix)]
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("restricting folder {}", dir.display()))?;
    Ok(())
}

/// True when `err` is a unique-constraint violation, on either backend.
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// .cargo/config.toml's LIBSQLITE3_FLAGS reached the bundled SQLite:
    /// without them every thread on any database takes turns on two
    /// process-wide mutexes (README, "Two process-wide costs").
    #[test]
    fn sqlite_is_built_without_its_process_wide_mutexes() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let options: Vec<String> = conn
            .prepare("PRAGMA compile_options")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "{options:?}"
        );
        assert!(
            !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
            "{options:?}"
        );
    }

    /// Under reads and writes that never pause, the checkpointer keeps
    /// copying the log into the database file: what was written a few
    /// checkpoints ago is in the file, not only in the log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_is_copied_while_reads_never_stop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busy.db");
        let url = format!("sqlite://{}", path.display());
        let db = Database::connect_lazy(&url, 2).unwrap();
        assert!(db.checkpointed());
        sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
            .execute(db.pool())
            .await
            .unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (db, stop) = (db.clone(), stop.clone());
            std::thread::spawn(move || {
                let reader = db.sqlite_reader().unwrap();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    reader
                        .read(|c| c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get::<_, i64>(0)))
                        .unwrap();
                }
            })
        };
        let mut writer = rusqlite::Connection::open(&path).unwrap();
        writer
            .execute_batch("PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 0;")
            .unwrap();
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let mut write = |rows: usize| {
            let tx = writer.transaction().unwrap();
            for _ in 0..rows {
                tx.execute("INSERT INTO t (v) VALUES (zeroblob(1000))", [])
                    .unwrap();
            }
            tx.commit().unwrap();
        };
        // Writes that span several checkpoints; then, still writing, the
        // file must come to hold what was written then.
        let start = std::time::Instant::now();
        while start.elapsed() < CHECKPOINT_EVERY * 4 {
            write(4);
        }
        let written = size(&path.with_extension("db-wal")) / 2;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while size(&path) < written && std::time::Instant::now() < deadline {
            write(4);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        reader.join().unwrap();
        assert!(
            size(&path) >= written,
            "the database file has {} bytes of the {written} written",
            size(&path)
        );
    }
}
