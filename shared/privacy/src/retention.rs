//! Retention: how long each category of personal data is kept, in one table,
//! and the schedule that sweeps what has expired.
//!
//! For data held on behalf of a tenant, the tenant's own setting (kept by
//! identity) wins over these defaults. Legal holds pause deletion. What a
//! sweep deleted is written to the audit trail as counts, never values.

use std::{sync::Arc, time::Duration};

use custodian_proto::common::v1::DataCategory;
use custodian_runtime::{ApiError, time::Clock};
use futures::future::BoxFuture;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// Audit events are kept six years (the usual limitation period for claims
/// about how data was handled), then removed from the start of the chain.
pub const AUDIT_RETENTION: Duration = Duration::from_secs(6 * 365 * 24 * 60 * 60);

/// Rows a sweep deletes per statement, so a sweep never holds long locks.
pub const SWEEP_BATCH: i64 = 500;

/// Custodian's default retention per category, counted from a record's
/// last change; `None` keeps it while its account exists.
pub fn default_retention(category: DataCategory) -> Option<Duration> {
    match category {
        // Sign-ups: twelve months after the last contact.
        DataCategory::EvaluationSignup => Some(365 * DAY),
        // Contacts held for a tenant: three years without a change, unless
        // the tenant says otherwise.
        DataCategory::BusinessContact => Some(3 * 365 * DAY),
        // Support requests: 24 months after they close.
        DataCategory::SupportRequest => Some(2 * 365 * DAY),
        // Raw web-analytics events: 30 days; aggregates stay.
        DataCategory::UsageEvent => Some(30 * DAY),
        // Survey responses: 30 days after their survey closes.
        DataCategory::Feedback => Some(30 * DAY),
        // Proof of consent: three years after the decision's last change
        // (a withdrawal is a change), the limitation period for a claim.
        DataCategory::ConsentRecord => Some(3 * 365 * DAY),
        // Data-subject requests: three years after completion, as proof of
        // what was asked and done (CCPA asks for 24 months; GDPR claims
        // reach three years).
        DataCategory::DsrRecord => Some(3 * 365 * DAY),
        // Authorized users are kept while the tenant keeps them (they are
        // deleted with the tenant), unless the tenant sets a retention.
        DataCategory::AuthorizedUser | DataCategory::Unspecified => None,
    }
}

/// Whether a tenant may set its own retention for `category`: only for data
/// held on its behalf.
pub fn tenant_may_set(category: DataCategory) -> bool {
    matches!(
        category,
        DataCategory::AuthorizedUser
            | DataCategory::BusinessContact
            | DataCategory::SupportRequest
            | DataCategory::UsageEvent
            | DataCategory::Feedback
    )
}

/// Deleted counts of one sweep.
pub type SweepCounts = Vec<(DataCategory, i64)>;

/// A service's sweep of expired data.
pub trait Sweeper: Send + Sync {
    fn service(&self) -> &'static str;
    /// Deletes what has expired at `now` (microseconds), in bounded
    /// batches, and audits the counts.
    fn sweep(&self, now: i64) -> BoxFuture<'_, Result<SweepCounts, ApiError>>;
}

/// Sweeps on a schedule until the returned handle is dropped or aborted.
/// Errors are logged and the next round tries again.
pub fn schedule(
    sweeper: Arc<dyn Sweeper>,
    clock: Arc<dyn Clock>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // The first sweep comes one interval after the start, not at it: a
        // start is busy (other services' migrations may want the same
        // SQLite file), and nothing expires in the seconds a restart takes.
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match sweeper.sweep(clock.now_micros()).await {
                Ok(counts) => {
                    let total: i64 = counts.iter().map(|(_, n)| n).sum();
                    if total > 0 {
                        tracing::info!(
                            service = sweeper.service(),
                            deleted = total,
                            "retention sweep"
                        );
                    }
                }
                Err(err) => {
                    tracing::error!(service = sweeper.service(), error = %err, "retention sweep failed")
                }
            }
        }
    })
}

/// "business_contact=3, evaluation_signup=1": the audit detail of a sweep.
pub fn describe(counts: &SweepCounts) -> String {
    counts
        .iter()
        .map(|(c, n)| {
            format!(
                "{}={n}",
                c.as_str_name()
                    .trim_start_matches("DATA_CATEGORY_")
                    .to_lowercase()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_policy() {
        assert_eq!(
            default_retention(DataCategory::EvaluationSignup),
            Some(365 * DAY)
        );
        assert_eq!(default_retention(DataCategory::UsageEvent), Some(30 * DAY));
        assert_eq!(default_retention(DataCategory::AuthorizedUser), None);
        assert!(
            !tenant_may_set(DataCategory::EvaluationSignup),
            "the company's own data"
        );
        assert_eq!(
            describe(&vec![
                (DataCategory::BusinessContact, 3),
                (DataCategory::EvaluationSignup, 1)
            ]),
            "business_contact=3, evaluation_signup=1"
        );
    }
}
