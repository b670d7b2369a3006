//! The gauges of data-subject requests, from one look at the tables every
//! few seconds (see `custodian_kit::observe`): requests by state and kind,
//! those overdue and those due within three days, the oldest step still
//! pending, and tenants' inbox items waiting for the customer. Labels are
//! the proto enums' names: bounded, never a person's.

use custodian_kit::observe::by_label;
use custodian_proto::dsr::v1::{inbox_item, request::Kind, request::State};
use custodian_runtime::{
    ApiError,
    metrics::{self, KeyValue, StateGauge},
};
use sqlx::Row as _;

use crate::{Core, NAME};

static REQUESTS: StateGauge = StateGauge {
    name: "custodian.dsr.requests",
    description: "Data-subject requests, by state and kind",
    unit: "{request}",
};
static OVERDUE: StateGauge = StateGauge {
    name: "custodian.dsr.requests.overdue",
    description: "Open data-subject requests past their legal due time, by kind",
    unit: "{request}",
};
static DUE_SOON: StateGauge = StateGauge {
    name: "custodian.dsr.requests.due_soon",
    description: "Open data-subject requests due within 3 days (not yet overdue), by kind",
    unit: "{request}",
};
static OLDEST_STEP: StateGauge = StateGauge {
    name: "custodian.dsr.steps.oldest_pending_age",
    description: "Age of the oldest step still pending at a service (0 when none is), by service",
    unit: "s",
};
static INBOX_PENDING: StateGauge = StateGauge {
    name: "custodian.dsr.inbox.pending",
    description: "Tenants' inbox items waiting for the customer (pending or acknowledged)",
    unit: "{item}",
};

/// Within this of its due time, an open request is due soon.
const DUE_SOON_WITHIN: i64 = 3 * 86_400 * 1_000_000;

/// States in which the legal clock runs (the query names their numbers).
#[cfg_attr(not(test), allow(dead_code))]
const OPEN: [State; 4] = [
    State::AwaitingVerification,
    State::InProgress,
    State::AwaitingTenants,
    State::Failed,
];

const KINDS: [Kind; 6] = [
    Kind::Access,
    Kind::Portability,
    Kind::Rectification,
    Kind::Erasure,
    Kind::Objection,
    Kind::Restriction,
];

const STATES: [State; 6] = [
    State::AwaitingVerification,
    State::InProgress,
    State::AwaitingTenants,
    State::Completed,
    State::Cancelled,
    State::Failed,
];

fn kind_label(kind: Kind) -> &'static str {
    match kind {
        Kind::Unspecified => "unspecified",
        Kind::Access => "access",
        Kind::Portability => "portability",
        Kind::Rectification => "rectification",
        Kind::Erasure => "erasure",
        Kind::Objection => "objection",
        Kind::Restriction => "restriction",
    }
}

fn state_label(state: State) -> &'static str {
    match state {
        State::Unspecified => "unspecified",
        State::AwaitingVerification => "awaiting_verification",
        State::InProgress => "in_progress",
        State::AwaitingTenants => "awaiting_tenants",
        State::Completed => "completed",
        State::Cancelled => "cancelled",
        State::Failed => "failed",
    }
}

pub(crate) async fn observe(core: &Core) -> Result<(), ApiError> {
    let pool = core.context.db.pool();
    let now = core.now();
    // One scan gives every count: by state and kind, and of the open
    // ones (the states in `OPEN`), how many are overdue or due soon.
    let rows = sqlx::query(
        "SELECT state, kind, COUNT(*) AS n, \
         SUM(CASE WHEN state IN (1, 2, 3, 6) AND due_time < $1 THEN 1 ELSE 0 END) AS overdue, \
         SUM(CASE WHEN state IN (1, 2, 3, 6) AND due_time >= $1 AND due_time < $2 THEN 1 ELSE 0 END) AS soon \
         FROM dsr_requests GROUP BY state, kind",
    )
    .bind(now)
    .bind(now.saturating_add(DUE_SOON_WITHIN))
    .fetch_all(pool)
    .await?;
    let mut requests = Vec::new();
    let mut overdue = Vec::new();
    let mut soon = Vec::new();
    for row in &rows {
        let state = State::try_from(row.try_get::<i64, _>("state")? as i32).unwrap_or_default();
        let kind = Kind::try_from(row.try_get::<i64, _>("kind")? as i32).unwrap_or_default();
        let n: i64 = row.try_get("n")?;
        let late: Option<i64> = row.try_get("overdue")?;
        let near: Option<i64> = row.try_get("soon")?;
        requests.push(((state_label(state), kind_label(kind)), n as f64));
        overdue.push((kind_label(kind).to_owned(), late.unwrap_or(0) as f64));
        soon.push((kind_label(kind).to_owned(), near.unwrap_or(0) as f64));
    }
    let mut by_state_kind = Vec::new();
    for state in STATES {
        for kind in KINDS {
            let key = (state_label(state), kind_label(kind));
            let n = requests
                .iter()
                .filter(|(k, _)| *k == key)
                .map(|(_, n)| n)
                .sum();
            by_state_kind.push((
                vec![
                    KeyValue::new("custodian.dsr.state", key.0),
                    KeyValue::new("custodian.dsr.kind", key.1),
                ],
                n,
            ));
        }
    }
    let kinds: Vec<&'static str> = KINDS.iter().map(|k| kind_label(*k)).collect();
    metrics::publish(&REQUESTS, NAME, by_state_kind);
    metrics::publish(
        &OVERDUE,
        NAME,
        by_label("custodian.dsr.kind", &kinds, &overdue),
    );
    metrics::publish(
        &DUE_SOON,
        NAME,
        by_label("custodian.dsr.kind", &kinds, &soon),
    );

    let steps = sqlx::query(
        "SELECT service, MIN(create_time) AS oldest FROM dsr_steps WHERE state = 'pending' GROUP BY service",
    )
    .fetch_all(pool)
    .await?;
    let mut ages = Vec::new();
    for row in &steps {
        let service: String = row.try_get("service")?;
        let oldest: Option<i64> = row.try_get("oldest")?;
        let age = oldest.map_or(0.0, |t| now.saturating_sub(t).max(0) as f64 / 1e6);
        ages.push((service, age));
    }
    // The services a request reaches: a bounded set, and each appears at 0.
    let targets = core.targets();
    let services: Vec<&str> = targets.iter().map(String::as_str).collect();
    metrics::publish(
        &OLDEST_STEP,
        NAME,
        by_label("custodian.dsr.step_service", &services, &ages),
    );

    let inbox = sqlx::query("SELECT COUNT(*) AS n FROM dsr_inbox WHERE state IN ($1, $2)")
        .bind(inbox_item::State::Pending as i64)
        .bind(inbox_item::State::Acknowledged as i64)
        .fetch_one(pool)
        .await?;
    let n: i64 = inbox.try_get("n")?;
    metrics::publish(&INBOX_PENDING, NAME, vec![(Vec::new(), n as f64)]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_counts_the_open_states() {
        let open: Vec<i32> = OPEN.iter().map(|s| *s as i32).collect();
        assert_eq!(open, [1, 2, 3, 6]);
    }
}
