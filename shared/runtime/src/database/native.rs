//! A native PostgreSQL connection of a hot path (the batched point reads,
//! the grouped creates, the audit sealer): outside the pool, so it needs
//! the pool's care by hand. It is made on first use (with a time limit),
//! checked before a use when it may have broken unseen (idle for a while,
//! or since before a fault some call met: see [`super::fault::stale`]),
//! and dropped after any error, so the next use makes a fresh one. Without
//! this, a connection the database terminated while idle failed the first
//! call after the database came back.

use std::time::{Duration, Instant};

use sqlx::{Connection as _, PgConnection, postgres::PgConnectOptions};

use super::fault;

/// How long making a connection may take: a database that does not answer
/// is unreachable, not a reason to hold the caller until its deadline.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One native connection, made again when it broke.
pub struct PgNative {
    options: PgConnectOptions,
    connection: Option<PgConnection>,
    /// When the connection was last handed out.
    used: Instant,
}

impl std::fmt::Debug for PgNative {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgNative")
            .field("connected", &self.connection.is_some())
            .finish_non_exhaustive()
    }
}

impl PgNative {
    pub fn new(options: PgConnectOptions) -> Self {
        Self {
            options,
            connection: None,
            used: Instant::now(),
        }
    }

    /// The connection, made now if there is none or the one kept failed
    /// its check; and whether it is one used before (a statement that
    /// fails on it may have met a break no check could see).
    pub async fn get(&mut self) -> Result<(&mut PgConnection, bool), sqlx::Error> {
        if let Some(conn) = self.connection.as_mut()
            && fault::stale(self.used)
            && conn.ping().await.is_err()
        {
            self.connection = None;
        }
        self.used = Instant::now();
        let reused = self.connection.is_some();
        let conn = match self.connection.take() {
            Some(conn) => conn,
            None => connect(&self.options).await?,
        };
        Ok((self.connection.insert(conn), reused))
    }

    /// Forgets the connection after an error: one that failed a statement
    /// is not trusted again.
    pub fn failed(&mut self) {
        self.connection = None;
    }
}

/// Makes a connection within [`CONNECT_TIMEOUT`] (a timeout is
/// `PoolTimedOut`, which classifies as unreachable), with TCP_NODELAY.
pub async fn connect(options: &PgConnectOptions) -> Result<PgConnection, sqlx::Error> {
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(options))
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)??;
    super::tcp_nodelay_to(options.get_port());
    Ok(conn)
}
