//! Analytics' retention: the consent records through the kit; then the
//! day's salts destroyed, ended days rolled up (aggregates first, so expiry
//! never loses them), raw events past their site's retention deleted (on
//! PostgreSQL, whole daily partitions dropped), usage events past theirs.

use custodian_kit::{
    Call,
    retention::{StoreSweep, Sweep},
};
use custodian_privacy::{
    audit::{AuditLog, Event},
    retention::SweepCounts,
};
use custodian_proto::{
    audit::v1::{AuditAction, AuditOutcome},
    privacy::v1::DataCategory,
};
use custodian_runtime::{ApiError, Backend, Database};
use futures::future::BoxFuture;
use sqlx::Row as _;

use crate::{door::day_of, rollup, salts::Salts, sites::Sites};

pub struct AnalyticsSweep {
    pub records: StoreSweep,
    pub db: Database,
    pub sites: Sites,
    pub salts: Salts,
    pub audit: AuditLog,
    pub k: usize,
}

/// The longest any site keeps raw events.
const MAX_RAW_DAYS: i64 = 30;

impl AnalyticsSweep {
    async fn raw(&self, now: i64) -> Result<i64, ApiError> {
        self.salts.destroy_expired().await?;
        rollup::roll_pending(&self.db, now, self.k).await?;
        let mut deleted = 0i64;
        self.sites.reload().await?;
        for site in self.sites.map().all() {
            let cutoff = day_of(now - site.raw_retention_secs.saturating_mul(1_000_000));
            // Only days already rolled up: their aggregates are kept.
            deleted += sqlx::query(
                "DELETE FROM analytics_events WHERE site_id = $1 AND day < $2 AND day IN \
                 (SELECT day FROM analytics_rollups WHERE site_id = $1)",
            )
            .bind(&site.id)
            .bind(cutoff as i32)
            .execute(self.db.pool())
            .await?
            .rows_affected() as i64;
        }
        if self.db.backend() == Backend::Postgres {
            // Past every site's retention: the whole day goes at once.
            let oldest = day_of(now) - MAX_RAW_DAYS;
            let partitions = sqlx::query(
                "SELECT c.relname::text AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                 JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'analytics_events'",
            )
            .fetch_all(self.db.pool())
            .await?;
            for row in partitions {
                let name: String = row.try_get("name")?;
                let Some(day) = name
                    .strip_prefix("analytics_events_p")
                    .and_then(|d| d.parse::<i64>().ok())
                else {
                    continue;
                };
                if day < oldest {
                    let n: i64 = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT COUNT(*) AS n FROM {name}"
                    )))
                    .fetch_one(self.db.pool())
                    .await?
                    .try_get("n")?;
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {name}")))
                        .execute(self.db.pool())
                        .await?;
                    deleted += n;
                }
            }
        }
        Ok(deleted)
    }

    /// Usage events past their tenant's retention (its own rule, or the
    /// default), never a held tenant's. A subject hold names an email or a
    /// phone, which usage events do not carry (only a keyed index of the
    /// user's name), so it reaches them through its tenant only.
    async fn usage(&self, now: i64) -> Result<i64, ApiError> {
        let cutoffs = self
            .records
            .tenant_cutoffs(DataCategory::UsageEvent, now)
            .await?;
        let mut deleted = 0i64;
        for (tenant, cutoff) in &cutoffs.by_tenant {
            deleted += sqlx::query("DELETE FROM analytics_usage WHERE tenant_id = $1 AND time < $2")
                .bind(tenant)
                .bind(cutoff)
                .execute(self.db.pool())
                .await?
                .rows_affected() as i64;
        }
        if let Some(cutoff) = cutoffs.default {
            // The exceptions are few (tenants with a rule or a hold), so a
            // list in the statement stays short.
            let except = cutoffs.not_default();
            let mut sql = "DELETE FROM analytics_usage WHERE time < $1".to_owned();
            if !except.is_empty() {
                let marks: Vec<String> = (2..except.len() + 2).map(|i| format!("${i}")).collect();
                sql.push_str(&format!(" AND tenant_id NOT IN ({})", marks.join(", ")));
            }
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(cutoff);
            for tenant in &except {
                query = query.bind(tenant);
            }
            deleted += query.execute(self.db.pool()).await?.rows_affected() as i64;
        }
        Ok(deleted)
    }
}

impl Sweep for AnalyticsSweep {
    fn service(&self) -> &'static str {
        crate::NAME
    }

    fn sweep<'a>(
        &'a self,
        now: i64,
        by: Option<&'a Call>,
    ) -> BoxFuture<'a, Result<SweepCounts, ApiError>> {
        Box::pin(async move {
            let mut counts = self.records.sweep(now, by).await?;
            let raw = self.raw(now).await?;
            let usage = self.usage(now).await?;
            let ours = raw + usage;
            if ours > 0 {
                match counts
                    .iter_mut()
                    .find(|(c, _)| *c == DataCategory::UsageEvent)
                {
                    Some((_, n)) => *n += ours,
                    None => counts.push((DataCategory::UsageEvent, ours)),
                }
                self.audit
                    .record(Event {
                        time: now,
                        caller: by
                            .map(|c| c.actor().to_owned())
                            .unwrap_or_else(|| "custodian:retention".to_owned()),
                        purpose: "retention".to_owned(),
                        method: "schedule".to_owned(),
                        resource: crate::NAME.to_owned(),
                        detail: format!("{raw} raw web events, {usage} usage events"),
                        ..Event::new(AuditAction::Sweep, AuditOutcome::Ok)
                    })
                    .await?;
            }
            Ok(counts)
        })
    }
}
