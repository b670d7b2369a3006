//! Which releases a schema serves: expand/contract across upgrades and
//! rollbacks.
//!
//! Migrations run at start and are never undone. A release's migrations
//! only *expand* (new tables, new columns with defaults, new indexes), so the
//! previous release still runs on the schema they leave: during a rolling
//! update both run side by side, and rolling back is starting the older
//! image. What removes or renames (*contract*) ships at least one release
//! after the code stopped using it, and says so with a line
//! `-- custodian: contract` in its SQL.
//!
//! After running its migrations, a release records per migration history
//! table, in `custodian_schema`, the oldest migration a binary must know to
//! serve this schema (the newest contract migration applied) and which
//! release applied the newest one. An older binary meeting migrations it does
//! not know reads that record: if it knows enough it starts without them
//! (sqlx's `ignore_missing`); if not, it stops with a message naming both
//! schema versions, both releases and what to do, instead of sqlx's bare
//! "migration N was previously applied but is missing".

use anyhow::Context as _;
use sqlx::{AnyPool, Row as _, migrate::Migrator};

/// The line that marks a migration as contracting the schema.
pub const CONTRACT_MARKER: &str = "-- custodian: contract";

/// This binary's release, as the record names it.
const RELEASE: &str = env!("CARGO_PKG_VERSION");

const CREATE: &str = "CREATE TABLE IF NOT EXISTS custodian_schema (\
     migrations TEXT PRIMARY KEY, \
     head BIGINT NOT NULL, \
     requires BIGINT NOT NULL, \
     release TEXT NOT NULL)";

/// What a schema's record says.
struct Record {
    head: i64,
    requires: i64,
    release: String,
}

/// Runs `migrator`, recording in `table`, as described in the module's doc.
pub async fn migrate(pool: &AnyPool, table: &str, mut migrator: Migrator) -> anyhow::Result<()> {
    migrator.dangerous_set_table_name(table.to_owned());
    sqlx::query(CREATE).execute(pool).await?;
    let known_head = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    let unknown: Vec<i64> = applied(pool, table)
        .await?
        .into_iter()
        .filter(|v| !migrator.version_exists(*v))
        .collect();
    if let Some(&newest) = unknown.iter().max() {
        let record = record(pool, table).await?;
        let service = table.trim_end_matches("_migrations");
        match record {
            Some(r) if r.requires <= known_head => {
                tracing::warn!(
                    migrations = table,
                    schema = r.head,
                    release = %r.release,
                    known = known_head,
                    "the schema is newer than this release; its newer migrations only expand \
                     it, so this release serves it (an older release running beside a newer \
                     one, or a rollback)"
                );
                migrator.set_ignore_missing(true);
            }
            record => {
                let (head, release, requires) = match &record {
                    Some(r) => (r.head, r.release.as_str(), r.requires),
                    None => (newest, "an unknown release", newest),
                };
                anyhow::bail!(
                    "the {service} database schema is at migration {head} (applied by release \
                     {release}), newer than this release ({RELEASE}) knows: it knows migrations \
                     up to {known_head}, and the schema needs a release that knows migration \
                     {requires} or later. Run release {release} (or newer) again, or restore \
                     the {service} database from a backup taken before that upgrade. Nothing \
                     was changed."
                );
            }
        }
    }
    migrator
        .run(pool)
        .await
        .with_context(|| format!("running the migrations recorded in {table}"))?;
    if unknown.is_empty() {
        let requires = migrator
            .iter()
            .filter(|m| m.sql.as_str().lines().any(|l| l.trim() == CONTRACT_MARKER))
            .map(|m| m.version)
            .max()
            .unwrap_or(0);
        // Never lowers a newer release's record: of two releases starting
        // side by side, the newer one's stands.
        sqlx::query(
            "INSERT INTO custodian_schema (migrations, head, requires, release) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (migrations) DO UPDATE SET head = excluded.head, \
             requires = excluded.requires, release = excluded.release \
             WHERE custodian_schema.head <= excluded.head",
        )
        .bind(table)
        .bind(known_head)
        .bind(requires)
        .bind(RELEASE)
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// The versions recorded as applied in `table`; none when it does not exist
/// yet (a new database).
async fn applied(pool: &AnyPool, table: &str) -> anyhow::Result<Vec<i64>> {
    // The table name is ours (service name + suffix), never a caller's.
    let sql = format!("SELECT version FROM {table} WHERE success = TRUE");
    match sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await {
        Ok(rows) => rows
            .iter()
            .map(|r| r.try_get::<i64, _>("version").map_err(Into::into))
            .collect(),
        Err(sqlx::Error::Database(e))
            if e.message().contains("no such table") || e.message().contains("does not exist") =>
        {
            Ok(Vec::new())
        }
        Err(e) => Err(e.into()),
    }
}

async fn record(pool: &AnyPool, table: &str) -> anyhow::Result<Option<Record>> {
    let row =
        sqlx::query("SELECT head, requires, release FROM custodian_schema WHERE migrations = $1")
            .bind(table)
            .fetch_optional(pool)
            .await?;
    row.map(|r| {
        Ok(Record {
            head: r.try_get("head")?,
            requires: r.try_get("requires")?,
            release: r.try_get("release")?,
        })
    })
    .transpose()
}
