//! The gauges of tickets, from one look at the table every few seconds
//! (see `custodian_kit::observe`): tickets by state, and the open ones
//! past an SLA target now (by the rule of `sla::flag`).

use custodian_kit::observe::by_label;
use custodian_runtime::{
    ApiError, Database,
    metrics::{self, StateGauge},
};
use sqlx::Row as _;

use crate::NAME;

static TICKETS: StateGauge = StateGauge {
    name: "custodian.tickets",
    description: "Tickets, by state",
    unit: "{ticket}",
};
static BREACHES: StateGauge = StateGauge {
    name: "custodian.tickets.sla_breaches",
    description: "Tickets not yet solved past an SLA target, by target (first_response, resolution)",
    unit: "{ticket}",
};

const STATES: [&str; 5] = ["new", "open", "pending", "solved", "closed"];

pub(crate) async fn observe(db: &Database, now: i64) -> Result<(), ApiError> {
    let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM tickets_tickets GROUP BY state")
        .fetch_all(db.pool())
        .await?;
    let mut counts = Vec::new();
    for row in &rows {
        let state: i64 = row.try_get("state")?;
        let n: i64 = row.try_get("n")?;
        // The proto's numbers: NEW = 1 ... CLOSED = 5.
        if let Some(label) = usize::try_from(state - 1).ok().and_then(|i| STATES.get(i)) {
            counts.push(((*label).to_owned(), n as f64));
        }
    }
    metrics::publish(
        &TICKETS,
        NAME,
        by_label("custodian.tickets.state", &STATES, &counts),
    );
    let row = sqlx::query(
        "SELECT \
         SUM(CASE WHEN sla_first_response_time IS NULL AND sla_first_response_due < $1 THEN 1 ELSE 0 END) AS first, \
         SUM(CASE WHEN sla_resolution_due IS NOT NULL AND ( \
             (sla_paused = 0 AND sla_resolution_due < $1) OR \
             (sla_paused <> 0 AND sla_pause_time > sla_resolution_due)) THEN 1 ELSE 0 END) AS resolution \
         FROM tickets_tickets WHERE state IN (1, 2, 3) AND solve_time IS NULL",
    )
    .bind(now)
    .fetch_one(db.pool())
    .await?;
    let first: Option<i64> = row.try_get("first")?;
    let resolution: Option<i64> = row.try_get("resolution")?;
    metrics::publish(
        &BREACHES,
        NAME,
        by_label(
            "custodian.tickets.sla_target",
            &["first_response", "resolution"],
            &[
                ("first_response".to_owned(), first.unwrap_or(0) as f64),
                ("resolution".to_owned(), resolution.unwrap_or(0) as f64),
            ],
        ),
    );
    Ok(())
}
