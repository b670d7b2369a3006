//! The database pool. SQLite by default (a file, zero set-up), PostgreSQL when
//! the URL says so; one code path through sqlx's `Any` driver, so the same
//! queries and the same tests run on both.
//!
//! Each service owns its tables and its migrations; its migration history is
//! kept in a table of its own (`{service}_migrations`), so services can share
//! one database (PostgreSQL in production, or one SQLite file) without their
//! migration versions colliding.

use std::{path::Path, str::FromStr, sync::Once, time::Duration};

use anyhow::Context as _;
use sqlx::{
    AnyPool, Executor as _,
    any::{AnyConnectOptions, AnyPoolOptions},
    migrate::Migrator,
};

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
}

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
        let options = AnyConnectOptions::from_str(url)
            .with_context(|| format!("invalid {} database URL", scheme_of(url)))?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            // No ping before each use: on SQLite a ping is a hand-off to the
            // connection's thread, which cost a fifth of a point read. Broken
            // connections surface as an error on the query instead, and are
            // replaced over time by the lifetime limits.
            .test_before_acquire(false)
            .idle_timeout(Duration::from_secs(10 * 60))
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
                    }
                    Ok(())
                })
            })
            .connect_lazy_with(options);
        Ok(Self { pool, backend })
    }

    /// Runs a service's migrations, recording them in `{service}_migrations`.
    pub async fn migrate(&self, service: &'static str, migrator: Migrator) -> anyhow::Result<()> {
        let mut migrator = migrator;
        migrator.dangerous_set_table_name(format!("{service}_migrations"));
        migrator
            .run(&self.pool)
            .await
            .with_context(|| format!("running {service} migrations"))
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Makes the folder of a SQLite database and the file itself readable by
/// their owner only: the folder 0700, the file 0600 (SQLite gives its WAL
/// and shared-memory files the database file's mode). Sealed data is
/// still data about people, and blind indexes are in clear.
fn prepare_sqlite_file(url: &str) -> anyhow::Result<()> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:")
        .split('?')
        .next()
        .unwrap_or_default();
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
