//! Service-level agreements: for each priority, when the first agent reply
//! is due and when the ticket should be solved. The resolution clock stops
//! while a ticket is pending (waiting for the requester) and the due time
//! moves on by the time it stood still. Breaches are computed from the
//! clock the service is given, so tests move time instead of sleeping.

use std::{collections::BTreeMap, time::Duration};

use custodian_proto::tickets::v1::{TicketSla, ticket::Priority, ticket::State};
use custodian_runtime::time::{micros, to_timestamp};

/// Targets per priority: (first response, resolution).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlaPolicy {
    targets: BTreeMap<i32, (Duration, Duration)>,
}

const HOUR: Duration = Duration::from_secs(60 * 60);

impl Default for SlaPolicy {
    /// Calendar time: urgent 1h/4h, high 4h/1d, normal 8h/3d, low 1d/7d.
    fn default() -> Self {
        Self {
            targets: BTreeMap::from([
                (Priority::Urgent as i32, (HOUR, 4 * HOUR)),
                (Priority::High as i32, (4 * HOUR, 24 * HOUR)),
                (Priority::Normal as i32, (8 * HOUR, 72 * HOUR)),
                (Priority::Low as i32, (24 * HOUR, 7 * 24 * HOUR)),
            ]),
        }
    }
}

impl SlaPolicy {
    /// Reads "urgent=1h/4h,high=4h/1d,..." over the defaults; priorities
    /// not named keep theirs.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut policy = Self::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (priority, targets) = part.split_once('=').ok_or_else(|| {
                anyhow::anyhow!("{part:?}: expected PRIORITY=FIRST_RESPONSE/RESOLUTION")
            })?;
            let priority =
                Priority::from_str_name(&format!("PRIORITY_{}", priority.trim().to_uppercase()))
                    .filter(|p| *p != Priority::Unspecified)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "{priority:?} is not a priority (urgent, high, normal, low)"
                        )
                    })?;
            let (first, resolution) = targets
                .split_once('/')
                .ok_or_else(|| anyhow::anyhow!("{part:?}: expected FIRST_RESPONSE/RESOLUTION"))?;
            let first = humantime::parse_duration(first.trim())?;
            let resolution = humantime::parse_duration(resolution.trim())?;
            anyhow::ensure!(
                !first.is_zero() && first <= resolution,
                "{part:?}: the first response must be due before the resolution"
            );
            policy.targets.insert(priority as i32, (first, resolution));
        }
        Ok(policy)
    }

    fn targets(&self, priority: i32) -> (Duration, Duration) {
        let normal = self.targets[&(Priority::Normal as i32)];
        self.targets.get(&priority).copied().unwrap_or(normal)
    }

    /// The SLA of a ticket opened at `created` with `priority`.
    pub fn start(&self, priority: i32, created: i64) -> TicketSla {
        let (first, resolution) = self.targets(priority);
        TicketSla {
            first_response_due: Some(to_timestamp(created + micros(first))),
            resolution_due: Some(to_timestamp(created + micros(resolution))),
            ..Default::default()
        }
    }

    /// Moves the targets of a ticket whose priority changed, keeping the
    /// time it already spent pending.
    pub fn reprioritise(&self, sla: &mut TicketSla, old: i32, new: i32, created: i64) {
        let (_, old_resolution) = self.targets(old);
        let (first, resolution) = self.targets(new);
        let paused_for = at(&sla.resolution_due)
            .map_or(0, |due| due - created - micros(old_resolution))
            .max(0);
        sla.first_response_due = Some(to_timestamp(created + micros(first)));
        sla.resolution_due = Some(to_timestamp(created + micros(resolution) + paused_for));
    }
}

/// Microseconds of a timestamp.
pub fn at(t: &Option<prost_types::Timestamp>) -> Option<i64> {
    t.map(|t| {
        t.seconds
            .saturating_mul(1_000_000)
            .saturating_add(i64::from(t.nanos) / 1000)
    })
}

/// What a state change does to the clocks.
pub fn on_state(sla: &mut TicketSla, from: State, to: State, now: i64) {
    if from == State::Pending && to != State::Pending {
        resume(sla, now);
    }
    if to == State::Pending && from != State::Pending {
        sla.paused = true;
        sla.pause_time = Some(to_timestamp(now));
    }
}

/// Restarts a stopped resolution clock: the due time moves on by the pause.
fn resume(sla: &mut TicketSla, now: i64) {
    if let (true, Some(paused), Some(due)) =
        (sla.paused, at(&sla.pause_time), at(&sla.resolution_due))
    {
        sla.resolution_due = Some(to_timestamp(due + (now - paused).max(0)));
    }
    sla.paused = false;
    sla.pause_time = None;
}

/// Fills the breach flags as of `now`.
pub fn flag(sla: &mut TicketSla, state: State, solved: Option<i64>, now: i64) {
    let first_due = at(&sla.first_response_due);
    let first = at(&sla.first_response_time);
    sla.first_response_breached = match (first, first_due) {
        (Some(first), Some(due)) => first > due,
        (None, Some(due)) => !matches!(state, State::Solved | State::Closed) && now > due,
        _ => false,
    };
    let due = at(&sla.resolution_due);
    sla.resolution_breached = match (solved, due) {
        (Some(solved), Some(due)) => solved > due,
        (None, Some(due)) if sla.paused => at(&sla.pause_time).is_some_and(|p| p > due),
        (None, Some(due)) => now > due,
        _ => false,
    };
}

/// The tickets whose targets were missed as of `?` (twice): the same rule
/// as [`flag`], over the columns.
pub const BREACHED: &str = "(r.sla_first_response_time IS NULL AND r.state NOT IN (4, 5) AND r.sla_first_response_due < ?) \
    OR (r.sla_first_response_time > r.sla_first_response_due) \
    OR (r.sla_paused = 0 AND r.solve_time IS NULL AND r.sla_resolution_due < ?) \
    OR (r.solve_time IS NOT NULL AND r.solve_time > r.sla_resolution_due) \
    OR (r.sla_paused = 1 AND r.sla_pause_time > r.sla_resolution_due)";

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000_000_000;

    #[test]
    fn the_resolution_clock_stops_while_pending() {
        let policy = SlaPolicy::default();
        let mut sla = policy.start(Priority::High as i32, T0);
        assert_eq!(at(&sla.first_response_due), Some(T0 + micros(4 * HOUR)));
        assert_eq!(at(&sla.resolution_due), Some(T0 + micros(24 * HOUR)));
        // Pending for 10 hours from hour 2: the due time moves 10 hours.
        on_state(&mut sla, State::Open, State::Pending, T0 + micros(2 * HOUR));
        flag(&mut sla, State::Pending, None, T0 + micros(30 * HOUR));
        assert!(!sla.resolution_breached, "no breach while the clock stands");
        on_state(
            &mut sla,
            State::Pending,
            State::Open,
            T0 + micros(12 * HOUR),
        );
        assert_eq!(at(&sla.resolution_due), Some(T0 + micros(34 * HOUR)));
        flag(&mut sla, State::Open, None, T0 + micros(33 * HOUR));
        assert!(!sla.resolution_breached);
        flag(&mut sla, State::Open, None, T0 + micros(35 * HOUR));
        assert!(sla.resolution_breached);
        // No reply yet, four hours gone: the first response is late.
        assert!(sla.first_response_breached);
        // Solved in time is no breach, whatever time it is now.
        flag(
            &mut sla,
            State::Solved,
            Some(T0 + micros(30 * HOUR)),
            T0 + micros(99 * HOUR),
        );
        assert!(!sla.resolution_breached && !sla.first_response_breached);
    }

    #[test]
    fn a_new_priority_keeps_the_paused_time() {
        let policy = SlaPolicy::default();
        let mut sla = policy.start(Priority::Low as i32, T0);
        on_state(&mut sla, State::Open, State::Pending, T0);
        on_state(&mut sla, State::Pending, State::Open, T0 + micros(5 * HOUR));
        policy.reprioritise(&mut sla, Priority::Low as i32, Priority::Urgent as i32, T0);
        assert_eq!(at(&sla.first_response_due), Some(T0 + micros(HOUR)));
        assert_eq!(at(&sla.resolution_due), Some(T0 + micros(9 * HOUR)));
    }

    #[test]
    fn targets_are_configurable() {
        let policy = SlaPolicy::parse("urgent=30m/2h, low=2d/14d").unwrap();
        let sla = policy.start(Priority::Urgent as i32, T0);
        assert_eq!(at(&sla.resolution_due), Some(T0 + micros(2 * HOUR)));
        let sla = policy.start(Priority::Normal as i32, T0);
        assert_eq!(at(&sla.resolution_due), Some(T0 + micros(72 * HOUR)));
        for bad in ["urgent", "soon=1h/2h", "urgent=2h/1h", "urgent=x/1h"] {
            assert!(SlaPolicy::parse(bad).is_err(), "{bad}");
        }
    }
}
