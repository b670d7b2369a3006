//! What each service reports of its stored state, for the gauges: a task
//! per service that looks every [`STATE_EVERY`] with cheap queries (a count
//! over an index, a minimum), so no request does that work; and the audit
//! chain verified on a schedule of its own, its result a gauge an alert
//! watches.

use std::{sync::Arc, time::Duration};

use custodian_runtime::{
    ApiError, Database,
    metrics::{self, KeyValue, STATE_EVERY, StateGauge},
    time::Clock,
};
use sqlx::Row as _;

use crate::module::KitService;

/// How often each service walks its audit chain (`VerifyAuditChain`).
pub const VERIFY_EVERY: Duration = Duration::from_secs(15 * 60);

pub static AUDIT_PENDING: StateGauge = StateGauge {
    name: "custodian.audit.pending",
    description: "Audit events of committed changes waiting to be sealed into the chain",
    unit: "{event}",
};

pub static AUDIT_PENDING_AGE: StateGauge = StateGauge {
    name: "custodian.audit.pending.oldest_age",
    description: "Age of the oldest audit event waiting to be sealed (0 when none waits)",
    unit: "s",
};

pub static AUDIT_CHAIN_INTACT: StateGauge = StateGauge {
    name: "custodian.audit.chain.intact",
    description: "1 when the service's audit chain verified at its last scheduled check, 0 when it did not",
    unit: "",
};

pub static AUDIT_CHAIN_VERIFIED: StateGauge = StateGauge {
    name: "custodian.audit.chain.verified_time",
    description: "When the audit chain was last verified, in seconds since the Unix epoch",
    unit: "s",
};

/// Looks at `service`'s state now and every [`STATE_EVERY`], and verifies
/// its chain now and every [`VERIFY_EVERY`], until aborted.
pub fn start(
    service: Arc<dyn KitService>,
    db: Database,
    audit: custodian_privacy::audit::AuditLog,
    clock: Arc<dyn Clock>,
) -> tokio::task::JoinHandle<()> {
    let name = service.name();
    metrics::watch_pool(name, db.pool().clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(STATE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut verified: Option<tokio::time::Instant> = None;
        loop {
            tick.tick().await;
            metrics::sample_pool(name, db.pool()).await;
            if let Err(err) = audit_pending(name, &db, clock.as_ref()).await {
                tracing::debug!(service = name, error = %err, "audit backlog not read");
            }
            if let Err(err) = service.observe_state().await {
                tracing::debug!(service = name, error = %err, "state gauges not read");
            }
            if verified.is_none_or(|at| at.elapsed() >= VERIFY_EVERY) {
                match audit.verify().await {
                    Ok(chain) => {
                        verified = Some(tokio::time::Instant::now());
                        if !chain.intact {
                            // The sequence and the problem say where, never what.
                            tracing::error!(
                                service = name,
                                broken_at_sequence = chain.broken_at_sequence,
                                problem = %chain.problem,
                                "the audit chain does not verify"
                            );
                        }
                        metrics::publish(
                            &AUDIT_CHAIN_INTACT,
                            name,
                            vec![(Vec::new(), if chain.intact { 1.0 } else { 0.0 })],
                        );
                        metrics::publish(
                            &AUDIT_CHAIN_VERIFIED,
                            name,
                            vec![(Vec::new(), clock.now_micros() as f64 / 1e6)],
                        );
                    }
                    // A database that is away is the probe's to report;
                    // the chain is verified when it answers again.
                    Err(err) => {
                        tracing::debug!(service = name, error = %err, "audit chain not verified")
                    }
                }
            }
        }
    })
}

async fn audit_pending(
    service: &'static str,
    db: &Database,
    clock: &dyn Clock,
) -> Result<(), ApiError> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n, MIN(time) AS oldest FROM audit_pending WHERE service = $1",
    )
    .bind(service)
    .fetch_one(db.pool())
    .await?;
    let n: i64 = row.try_get("n")?;
    let oldest: Option<i64> = row.try_get("oldest")?;
    let age = oldest.map_or(0.0, |t| {
        (clock.now_micros().saturating_sub(t)).max(0) as f64 / 1e6
    });
    metrics::publish(&AUDIT_PENDING, service, vec![(Vec::new(), n as f64)]);
    metrics::publish(&AUDIT_PENDING_AGE, service, vec![(Vec::new(), age)]);
    Ok(())
}

/// Series of one gauge, one per `label` value, from `(value, count)` rows;
/// every value in `all` appears, at 0 when no row has it, so a state that
/// empties reads 0 instead of vanishing.
pub fn by_label(
    label: &'static str,
    all: &[&str],
    rows: &[(String, f64)],
) -> Vec<(Vec<KeyValue>, f64)> {
    let mut series: Vec<(Vec<KeyValue>, f64)> = all
        .iter()
        .map(|value| {
            let n = rows
                .iter()
                .filter(|(v, _)| v == value)
                .map(|(_, n)| n)
                .sum();
            (vec![KeyValue::new(label, (*value).to_owned())], n)
        })
        .collect();
    series.sort_by(|a, b| a.0[0].value.as_str().cmp(&b.0[0].value.as_str()));
    series
}
