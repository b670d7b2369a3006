//! The daily salts of visitor hashes (Plausible's scheme). A day's salt is
//! made on its first event, shared by every replica through the database,
//! and destroyed once the next day has ended: at most 48 hours after it was
//! made. After that no hash of that day can be recomputed from an address
//! and a user agent, and hashes of different days cannot be linked.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use custodian_runtime::{ApiError, Database, time::Clock};
use sqlx::Row as _;

use crate::door::{AHEAD_MICROS, LATE_MICROS, SaltFor, day_of};

/// The salts in use, by day.
#[derive(Clone)]
pub struct Salts {
    db: Database,
    clock: Arc<dyn Clock>,
    cache: Arc<Mutex<BTreeMap<i64, [u8; 32]>>>,
}

/// The salts one batch of events may need.
#[derive(Debug, Default)]
pub struct DaySalts(BTreeMap<i64, [u8; 32]>);

impl SaltFor for DaySalts {
    fn salt(&self, day: i64) -> Option<[u8; 32]> {
        self.0.get(&day).copied()
    }
}

/// The oldest day whose salt may still exist at `now`.
fn oldest_kept(now: i64) -> i64 {
    day_of(now) - 1
}

impl Salts {
    pub fn new(db: Database, clock: Arc<dyn Clock>) -> Self {
        Self {
            db,
            clock,
            cache: Arc::default(),
        }
    }

    /// The salts of the days an event arriving now may fall on, made when
    /// missing; destroys those past their time first.
    pub async fn for_now(&self) -> Result<DaySalts, ApiError> {
        let now = self.clock.now_micros();
        let stale = self
            .cache
            .lock()
            .map(|c| c.keys().next().is_some_and(|d| *d < oldest_kept(now)))
            .unwrap_or(false);
        if stale {
            self.destroy_expired().await?;
        }
        let mut out = BTreeMap::new();
        for day in [
            day_of(now - LATE_MICROS),
            day_of(now),
            day_of(now + AHEAD_MICROS),
        ] {
            if out.contains_key(&day) {
                continue;
            }
            let cached = self.cache.lock().ok().and_then(|c| c.get(&day).copied());
            let salt = match cached {
                Some(salt) => salt,
                None => self.load_or_make(day, now).await?,
            };
            out.insert(day, salt);
        }
        Ok(DaySalts(out))
    }

    async fn load_or_make(&self, day: i64, now: i64) -> Result<[u8; 32], ApiError> {
        let mut fresh = [0u8; 32];
        getrandom::fill(&mut fresh).map_err(|e| ApiError::internal(anyhow::anyhow!("{e}")))?;
        // Whoever inserts first wins; every replica then reads the same salt.
        sqlx::query(
            "INSERT INTO analytics_salts (day, salt, create_time) VALUES ($1, $2, $3) ON CONFLICT (day) DO NOTHING",
        )
        .bind(day)
        .bind(hex::encode(fresh))
        .bind(now)
        .execute(self.db.pool())
        .await
        .map_err(ApiError::internal)?;
        let row = sqlx::query("SELECT salt FROM analytics_salts WHERE day = $1")
            .bind(day)
            .fetch_one(self.db.pool())
            .await
            .map_err(ApiError::internal)?;
        let text: String = row.try_get("salt").map_err(ApiError::internal)?;
        let mut salt = [0u8; 32];
        hex::decode_to_slice(text, &mut salt).map_err(ApiError::internal)?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(day, salt);
        }
        Ok(salt)
    }

    /// Destroys the salts of days that ended more than a day ago, in memory
    /// and in the database. Returns how many rows went.
    pub async fn destroy_expired(&self) -> Result<u64, ApiError> {
        let keep_from = oldest_kept(self.clock.now_micros());
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|day, _| *day >= keep_from);
        }
        let done = sqlx::query("DELETE FROM analytics_salts WHERE day < $1")
            .bind(keep_from)
            .execute(self.db.pool())
            .await
            .map_err(ApiError::internal)?;
        Ok(done.rows_affected())
    }
}
