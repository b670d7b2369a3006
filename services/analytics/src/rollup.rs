//! Daily aggregates, made once a day has ended (and late events can no
//! longer arrive), from its raw events, and k-anonymous when made:
//!
//! - a day with fewer than k visitors is not stored at all;
//! - within each breakdown, cells with fewer than k visitors are merged into
//!   one "(other)" cell, and when that cell itself counts fewer than k, the
//!   next smallest cells join it until it does.
//!
//! So every stored cell counts at least k visitors, and in each breakdown
//! the stored cells add up to the day's total: subtracting rows, breakdowns
//! or ranges from each other only ever yields sums of such cells. Events
//! counted in aggregate only (no visitor hash) weigh as one visitor per
//! cell, whatever their number: the smallest group they could be.
//!
//! Counts protect against people who only read the reports. Whoever can
//! send events can pad a cell with k - 1 fakes and read what is left, so the
//! measured times (time on page, time of a visit) are protected apart:
//!
//! - each cell stores how many visitors sent engagement for it, and reports
//!   show an average of time only over k or more of them (fakes that send
//!   no engagement do not count);
//! - one visitor adds at most [`ENGAGED_CAP_MS`] to a cell's time, and each
//!   stored sum of time carries Laplace noise of scale `cap / ε`
//!   ([`EPSILON`]), drawn once when the cell is made and never again: even
//!   an attacker who knows every other contribution to a cell (its own
//!   fakes, engagement included) learns one visitor's time only up to that
//!   noise. The day's total and its row of the day breakdown are one cell
//!   and share their draw.

use std::collections::{BTreeMap, HashMap, HashSet};

use custodian_proto::analytics::v1::{Dimension, event::Type};
use custodian_runtime::{ApiError, Database};
use sqlx::Row as _;

use crate::door::{DAY_MICROS, LATE_MICROS, day_of};

/// A visit ends after this long without an event.
pub const VISIT_GAP_MICROS: i64 = 30 * 60 * 1_000_000;
/// The key of the merged small cells.
pub const OTHER: &str = "(other)";
/// The referrer key of visits that came without one.
pub const DIRECT: &str = "(direct)";

/// One raw event, as the rollup reads it.
#[derive(Debug, Clone, Default)]
pub struct EventRow {
    pub time: i64,
    pub kind: i32,
    pub path: String,
    pub referrer_host: String,
    pub browser: String,
    pub os: String,
    pub device: String,
    pub visitor: Option<String>,
    pub engaged_ms: i64,
}

/// The most engagement time one visitor adds to one cell of one day (and
/// anonymous events, one at a time): the sensitivity of a sum of time, so
/// the scale of its noise.
pub const ENGAGED_CAP_MS: i64 = 10 * 60 * 1000;
/// The privacy loss of each noisy sum of time, against an attacker who
/// knows every other contribution to the cell. One visitor's day is in one
/// cell of each breakdown per page, referrer, browser, OS and device, and
/// in the total, with two sums each: see the README for what that adds up to.
pub const EPSILON: f64 = 1.0;

/// One stored cell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cell {
    pub dimension: i32,
    pub key: String,
    pub pageviews: i64,
    pub visitors: i64,
    pub visits: i64,
    pub bounces: i64,
    /// Time of the cell's visits, each visitor's capped, plus noise.
    pub visit_ms: i64,
    /// Time of the cell's engagement events, each visitor's capped, plus noise.
    pub engaged_ms: i64,
    pub engagements: i64,
    /// Visitors that sent engagement counted in both sums of time (those
    /// without a hash as one): averages of time need k of them.
    pub engaged_visitors: i64,
}

#[derive(Debug, Default, Clone)]
struct Acc {
    pageviews: i64,
    members: HashSet<u32>,
    anon: bool,
    visits: HashSet<u32>,
    /// Each visitor's engagement time in this cell, before the cap.
    engaged: HashMap<u32, i64>,
    /// Engagement time of events without a visitor hash, each capped alone.
    anon_engaged_ms: i64,
    anon_engaged: bool,
    engagements: i64,
}

impl Acc {
    fn weight(&self) -> usize {
        self.members.len() + usize::from(self.anon)
    }

    fn absorb(&mut self, other: &Acc) {
        self.pageviews += other.pageviews;
        self.members.extend(&other.members);
        self.anon |= other.anon;
        self.visits.extend(&other.visits);
        // A visitor in two merged cells is one visitor of the merged cell:
        // the cap applies to their sum.
        for (member, ms) in &other.engaged {
            *self.engaged.entry(*member).or_default() += ms;
        }
        self.anon_engaged_ms += other.anon_engaged_ms;
        self.anon_engaged |= other.anon_engaged;
        self.engagements += other.engagements;
    }
}

#[derive(Debug, Default, Clone)]
struct Visit {
    member: u32,
    pageviews: u32,
    engaged: bool,
    ms: i64,
    entry_referrer: String,
}

/// "YYYY-MM-DD" of a day since the epoch (Howard Hinnant's civil date).
pub fn date_of(day: i64) -> String {
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

const BREAKDOWNS: [Dimension; 5] = [
    Dimension::Page,
    Dimension::Referrer,
    Dimension::Browser,
    Dimension::Os,
    Dimension::Device,
];

/// A draw of Laplace noise of scale `scale`, rounded to a whole number,
/// from the operating system's random source. The rounding also removes
/// the floating-point artefacts of the inverse CDF that could tell which
/// value the noise was added to (Mironov, 2012) at this scale.
pub fn laplace(scale: f64) -> Result<i64, getrandom::Error> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)?;
    // 53 random bits, as a uniform in (0, 1) that is never 0 or 1.
    let u = ((u64::from_le_bytes(bytes) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let x = if u < 0.5 {
        scale * (2.0 * u).ln()
    } else {
        -scale * (2.0 * (1.0 - u)).ln()
    };
    Ok(x.round() as i64)
}

/// The noise every stored sum of time gets.
pub fn time_noise() -> Result<i64, getrandom::Error> {
    laplace(ENGAGED_CAP_MS as f64 / EPSILON)
}

/// The stored cells of one site's day, or `None` when the day counts
/// fewer than `k` visitors. `noise` is drawn once per stored sum of time.
pub fn compute<E>(
    mut rows: Vec<EventRow>,
    k: usize,
    day: i64,
    noise: &mut dyn FnMut() -> Result<i64, E>,
) -> Result<Option<Vec<Cell>>, E> {
    rows.sort_by(|a, b| (&a.visitor, a.time).cmp(&(&b.visitor, b.time)));
    let mut members: HashMap<&str, u32> = HashMap::new();
    let mut visits: Vec<Visit> = Vec::new();
    let mut row_visit: Vec<Option<u32>> = Vec::with_capacity(rows.len());
    let mut last: Option<(&str, i64, u32)> = None;
    for row in &rows {
        let Some(visitor) = row.visitor.as_deref() else {
            row_visit.push(None);
            continue;
        };
        let next = members.len() as u32;
        let member = *members.entry(visitor).or_insert(next);
        let visit = match last {
            Some((v, t, idx)) if v == visitor && row.time - t <= VISIT_GAP_MICROS => idx,
            _ => {
                visits.push(Visit {
                    member,
                    ..Visit::default()
                });
                (visits.len() - 1) as u32
            }
        };
        let current = &mut visits[visit as usize];
        if row.kind == Type::Pageview as i32 {
            if current.pageviews == 0 {
                current.entry_referrer = row.referrer_host.clone();
            }
            current.pageviews += 1;
        } else {
            current.ms += row.engaged_ms;
            current.engaged = true;
        }
        last = Some((visitor, row.time, visit));
        row_visit.push(Some(visit));
    }

    let mut cells: BTreeMap<(i32, String), Acc> = BTreeMap::new();
    for (row, visit) in rows.iter().zip(&row_visit) {
        let referrer = match visit {
            Some(v) => visits[*v as usize].entry_referrer.clone(),
            None => row.referrer_host.clone(),
        };
        let referrer = if referrer.is_empty() {
            DIRECT.to_owned()
        } else {
            referrer
        };
        let keys = [
            (Dimension::Unspecified, String::new()),
            (Dimension::Page, row.path.clone()),
            (Dimension::Referrer, referrer),
            (Dimension::Browser, row.browser.clone()),
            (Dimension::Os, row.os.clone()),
            (Dimension::Device, row.device.clone()),
        ];
        let member = row.visitor.as_deref().and_then(|v| members.get(v)).copied();
        for (dimension, key) in keys {
            let acc = cells.entry((dimension as i32, key)).or_default();
            if row.kind == Type::Pageview as i32 {
                acc.pageviews += 1;
            } else {
                acc.engagements += 1;
                match member {
                    Some(m) => *acc.engaged.entry(m).or_default() += row.engaged_ms,
                    None => {
                        acc.anon_engaged_ms += row.engaged_ms.min(ENGAGED_CAP_MS);
                        acc.anon_engaged = true;
                    }
                }
            }
            match member {
                Some(m) => {
                    acc.members.insert(m);
                }
                None => acc.anon = true,
            }
            if let Some(v) = visit {
                acc.visits.insert(*v);
            }
        }
    }

    let Some(total) = cells.get(&(Dimension::Unspecified as i32, String::new())) else {
        return Ok(None);
    };
    if total.weight() < k {
        return Ok(None);
    }
    let mut to_cell = |dimension: i32, key: &str, acc: &Acc| -> Result<Cell, E> {
        let mut visit_ms: HashMap<u32, i64> = HashMap::new();
        for v in &acc.visits {
            let visit = &visits[*v as usize];
            if visit.engaged {
                *visit_ms.entry(visit.member).or_default() += visit.ms;
            }
        }
        let capped = |ms: &i64| (*ms).min(ENGAGED_CAP_MS);
        let engaged_ms: i64 = acc.engaged.values().map(capped).sum::<i64>() + acc.anon_engaged_ms;
        let engaged_here = acc.engaged.len() + usize::from(acc.anon_engaged);
        Ok(Cell {
            dimension,
            key: key.to_owned(),
            pageviews: acc.pageviews,
            visitors: acc.members.len() as i64,
            visits: acc.visits.len() as i64,
            bounces: acc
                .visits
                .iter()
                .filter(|v| visits[**v as usize].pageviews == 1)
                .count() as i64,
            visit_ms: visit_ms.values().map(capped).sum::<i64>() + noise()?,
            engaged_ms: engaged_ms + noise()?,
            engagements: acc.engagements,
            engaged_visitors: engaged_here.min(visit_ms.len()) as i64,
        })
    };
    let total = to_cell(Dimension::Unspecified as i32, "", total)?;
    let day_row = Cell {
        dimension: Dimension::Day as i32,
        key: date_of(day),
        ..total.clone()
    };
    let mut out = vec![total, day_row];
    for dimension in BREAKDOWNS {
        let d = dimension as i32;
        let mut entries: Vec<(&String, &Acc)> = cells
            .iter()
            .filter(|((dim, _), _)| *dim == d)
            .map(|((_, key), acc)| (key, acc))
            .collect();
        // Smallest first, so the cells that join "(other)" are the smallest.
        entries.sort_by(|a, b| (a.1.weight(), a.0).cmp(&(b.1.weight(), b.0)));
        let small = entries
            .iter()
            .take_while(|(_, acc)| acc.weight() < k)
            .count();
        let mut other = Acc::default();
        let mut merged = 0;
        for (_, acc) in &entries[..small] {
            other.absorb(acc);
            merged += 1;
        }
        if merged > 0 {
            while other.weight() < k && merged < entries.len() {
                other.absorb(entries[merged].1);
                merged += 1;
            }
        }
        for (key, acc) in &entries[merged..] {
            out.push(to_cell(d, key, acc)?);
        }
        if merged > 0 {
            out.push(to_cell(d, OTHER, &other)?);
        }
    }
    Ok(Some(out))
}

/// The last day whose events can no longer arrive at `now`.
pub fn last_final_day(now: i64) -> i64 {
    day_of(now - LATE_MICROS) - 1
}

/// Rolls up every ended day that has raw events and no aggregates yet.
/// Returns how many days were rolled. Safe with several replicas: the
/// first to claim a day in `analytics_rollups` makes its cells.
pub async fn roll_pending(db: &Database, now: i64, k: usize) -> Result<usize, ApiError> {
    let pending = sqlx::query(
        "SELECT DISTINCT e.site_id, e.day FROM analytics_events e WHERE e.day <= $1 AND NOT EXISTS \
         (SELECT 1 FROM analytics_rollups r WHERE r.site_id = e.site_id AND r.day = e.day)",
    )
    .bind(last_final_day(now) as i32)
    .fetch_all(db.pool())
    .await
    .map_err(ApiError::internal)?;
    let mut rolled = 0;
    for row in pending {
        let site_id: String = row.try_get("site_id").map_err(ApiError::internal)?;
        let day = i64::from(row.try_get::<i32, _>("day").map_err(ApiError::internal)?);
        if roll_day(db, &site_id, day, now, k).await? {
            rolled += 1;
        }
    }
    Ok(rolled)
}

async fn roll_day(
    db: &Database,
    site_id: &str,
    day: i64,
    now: i64,
    k: usize,
) -> Result<bool, ApiError> {
    let rows = sqlx::query(
        "SELECT time, kind, path, referrer_host, browser, os, device, visitor, engaged_ms \
         FROM analytics_events WHERE site_id = $1 AND day = $2",
    )
    .bind(site_id)
    .bind(day as i32)
    .fetch_all(db.pool())
    .await
    .map_err(ApiError::internal)?;
    let events = rows
        .iter()
        .map(|r| {
            Ok(EventRow {
                time: r.try_get("time")?,
                kind: r.try_get("kind")?,
                path: r.try_get("path")?,
                referrer_host: r.try_get("referrer_host")?,
                browser: r.try_get("browser")?,
                os: r.try_get("os")?,
                device: r.try_get("device")?,
                visitor: r.try_get("visitor")?,
                engaged_ms: r.try_get("engaged_ms")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(ApiError::internal)?;
    let cells = compute(events, k, day, &mut time_noise)
        .map_err(|e| ApiError::internal(anyhow::anyhow!("the random source failed: {e}")))?;
    let mut tx = db.pool().begin().await.map_err(ApiError::internal)?;
    let claimed = sqlx::query(
        "INSERT INTO analytics_rollups (site_id, day, k, suppressed, rolled_time) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (site_id, day) DO NOTHING",
    )
    .bind(site_id)
    .bind(day as i32)
    .bind(k as i32)
    .bind(i32::from(cells.is_none()))
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(ApiError::internal)?;
    if claimed.rows_affected() == 0 {
        return Ok(false);
    }
    for cell in cells.unwrap_or_default() {
        sqlx::query(
            "INSERT INTO analytics_daily (site_id, day, dimension, key, pageviews, visitors, visits, bounces, \
             visit_ms, engaged_ms, engagements, engaged_visitors) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(site_id)
        .bind(day as i32)
        .bind(cell.dimension)
        .bind(cell.key)
        .bind(cell.pageviews)
        .bind(cell.visitors)
        .bind(cell.visits)
        .bind(cell.bounces)
        .bind(cell.visit_ms)
        .bind(cell.engaged_ms)
        .bind(cell.engagements)
        .bind(cell.engaged_visitors)
        .execute(&mut *tx)
        .await
        .map_err(ApiError::internal)?;
    }
    tx.commit().await.map_err(ApiError::internal)?;
    Ok(true)
}

/// The first microsecond of a day.
pub fn day_start(day: i64) -> i64 {
    day * DAY_MICROS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(visitor: Option<&str>, minute: i64, path: &str, browser: &str) -> EventRow {
        EventRow {
            time: minute * 60_000_000,
            kind: Type::Pageview as i32,
            path: path.to_owned(),
            browser: browser.to_owned(),
            os: "Linux".to_owned(),
            device: "desktop".to_owned(),
            visitor: visitor.map(str::to_owned),
            ..EventRow::default()
        }
    }

    fn engage(visitor: Option<&str>, minute: i64, path: &str, ms: i64) -> EventRow {
        EventRow {
            kind: Type::Engagement as i32,
            engaged_ms: ms,
            ..view(visitor, minute, path, "Chrome")
        }
    }

    /// The cells without noise.
    fn exact(rows: Vec<EventRow>, k: usize, day: i64) -> Option<Vec<Cell>> {
        compute(rows, k, day, &mut || Ok::<_, ()>(0)).unwrap()
    }

    fn cell<'a>(cells: &'a [Cell], dimension: Dimension, key: &str) -> Option<&'a Cell> {
        cells
            .iter()
            .find(|c| c.dimension == dimension as i32 && c.key == key)
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(date_of(0), "1970-01-01");
        assert_eq!(date_of(20_421), "2025-11-29");
        assert_eq!(date_of(-1), "1969-12-31");
    }

    #[test]
    fn visits_split_after_thirty_quiet_minutes() {
        let mut rows: Vec<EventRow> = (0..5)
            .map(|i| view(Some(&format!("v{i}")), 0, "/", "Chrome"))
            .collect();
        rows.push(view(Some("v0"), 10, "/a", "Chrome"));
        rows.push(view(Some("v0"), 50, "/b", "Chrome"));
        rows.push(EventRow {
            time: 51 * 60_000_000,
            kind: Type::Engagement as i32,
            path: "/b".to_owned(),
            engaged_ms: 4_000,
            visitor: Some("v0".to_owned()),
            browser: "Chrome".to_owned(),
            os: "Linux".to_owned(),
            device: "desktop".to_owned(),
            ..EventRow::default()
        });
        let cells = exact(rows, 5, 0).unwrap();
        let total = cell(&cells, Dimension::Unspecified, "").unwrap();
        assert_eq!((total.pageviews, total.visitors, total.visits), (7, 5, 6));
        // v1..v4 and v0's second visit bounced; v0's first did not.
        assert_eq!(total.bounces, 5);
        assert_eq!(total.visit_ms, 4_000);
        assert_eq!(total.engagements, 1);
    }

    #[test]
    fn a_day_under_k_is_not_kept() {
        let rows = (0..4)
            .map(|i| view(Some(&format!("v{i}")), i, "/", "Chrome"))
            .collect();
        assert!(exact(rows, 5, 0).is_none());
    }

    #[test]
    fn small_cells_merge_until_the_merge_itself_reaches_k() {
        // 6 on Chrome, 2 on Firefox, 1 on Safari, all on one page.
        let mut rows = Vec::new();
        for i in 0..6 {
            rows.push(view(Some(&format!("c{i}")), i, "/", "Chrome"));
        }
        for i in 0..2 {
            rows.push(view(Some(&format!("f{i}")), i, "/", "Firefox"));
        }
        rows.push(view(Some("s0"), 0, "/", "Safari"));
        let cells = exact(rows, 5, 0).unwrap();
        // Firefox + Safari = 3 < 5, so Chrome (the next smallest) joins
        // them: nothing small can be told apart by subtraction.
        assert!(cell(&cells, Dimension::Browser, "Firefox").is_none());
        assert!(cell(&cells, Dimension::Browser, "Safari").is_none());
        assert!(cell(&cells, Dimension::Browser, "Chrome").is_none());
        let other = cell(&cells, Dimension::Browser, OTHER).unwrap();
        assert_eq!(other.visitors, 9);
        // Every stored cell counts k or more.
        assert!(cells.iter().all(|c| c.visitors >= 5));
    }

    #[test]
    fn anonymous_events_weigh_one_visitor() {
        let mut rows: Vec<EventRow> = (0..5)
            .map(|i| view(Some(&format!("v{i}")), i, "/", "Chrome"))
            .collect();
        // Ten aggregate-only views of one page: perhaps one person.
        for i in 0..10 {
            rows.push(view(None, i, "/secret", "Chrome"));
        }
        let cells = exact(rows, 5, 0).unwrap();
        assert!(cell(&cells, Dimension::Page, "/secret").is_none());
        let total = cell(&cells, Dimension::Unspecified, "").unwrap();
        assert_eq!(total.pageviews, 15);
        assert_eq!(total.visitors, 5);
    }

    #[test]
    fn fakes_without_engagement_do_not_back_an_average() {
        // One real reader of /secret, and six fakes that only load it.
        let mut rows = vec![
            view(Some("real"), 0, "/secret", "Chrome"),
            engage(Some("real"), 1, "/secret", 47_123),
        ];
        for i in 0..6 {
            rows.push(view(Some(&format!("fake{i}")), i, "/secret", "Chrome"));
        }
        let cells = exact(rows, 5, 0).unwrap();
        let secret = cell(&cells, Dimension::Page, "/secret").unwrap();
        assert_eq!((secret.visitors, secret.engaged_visitors), (7, 1));
        let total = cell(&cells, Dimension::Unspecified, "").unwrap();
        assert_eq!(total.engaged_visitors, 1);
    }

    #[test]
    fn engaged_visitors_count_each_visitor_once_and_anonymous_ones_as_one() {
        let mut rows = Vec::new();
        for i in 0..5 {
            let v = format!("v{i}");
            rows.push(view(Some(&v), 0, "/", "Chrome"));
            rows.push(engage(Some(&v), 1, "/", 1_000));
            rows.push(engage(Some(&v), 2, "/", 1_000));
        }
        for i in 0..4 {
            rows.push(engage(None, i, "/", 2_000));
        }
        let cells = exact(rows, 5, 0).unwrap();
        let total = cell(&cells, Dimension::Unspecified, "").unwrap();
        assert_eq!(total.engagements, 14);
        assert_eq!(total.engaged_ms, 18_000);
        // Anonymous events have no visit: the visits' sum counts 5 visitors.
        assert_eq!(total.engaged_visitors, 5);
        assert_eq!(total.visit_ms, 10_000);
    }

    #[test]
    fn a_visitors_time_is_capped_and_every_sum_noised_once() {
        let mut rows = Vec::new();
        for i in 0..5 {
            let v = format!("v{i}");
            rows.push(view(Some(&v), 0, "/", "Chrome"));
            rows.push(engage(Some(&v), 1, "/", 60_000));
        }
        // One visitor stays for hours: only the cap counts.
        rows.push(engage(Some("v0"), 2, "/", 3 * 3_600_000));
        let mut draws = 0;
        let cells = compute(rows, 5, 0, &mut || {
            draws += 1;
            Ok::<_, ()>(draws * 1_000_000)
        })
        .unwrap()
        .unwrap();
        let total = cell(&cells, Dimension::Unspecified, "").unwrap();
        let day = cell(&cells, Dimension::Day, "1970-01-01").unwrap();
        let exact_ms = 4 * 60_000 + ENGAGED_CAP_MS;
        // Two draws for the total (visits, then engagement), shared by its
        // row of the day breakdown: a second draw would average out.
        assert_eq!(total.visit_ms, exact_ms + 1_000_000);
        assert_eq!(total.engaged_ms, exact_ms + 2_000_000);
        assert_eq!(
            (day.visit_ms, day.engaged_ms),
            (total.visit_ms, total.engaged_ms)
        );
        // Every other cell drew its own two.
        let stored = cells.len() as i64;
        assert_eq!(draws, 2 * (stored - 1));
        let mut noises: Vec<i64> = cells
            .iter()
            .filter(|c| c.dimension != Dimension::Day as i32)
            .flat_map(|c| [c.visit_ms - exact_ms, c.engaged_ms - exact_ms])
            .collect();
        noises.sort_unstable();
        noises.dedup();
        assert_eq!(noises.len() as i64, draws);
    }

    #[test]
    fn laplace_draws_have_their_scale() {
        let scale = 600_000.0;
        let n = 20_000;
        let draws: Vec<i64> = (0..n).map(|_| laplace(scale).unwrap()).collect();
        // E|X| = scale and E[X] = 0 for Laplace(0, scale).
        let mean_abs = draws.iter().map(|x| x.unsigned_abs() as f64).sum::<f64>() / n as f64;
        let mean = draws.iter().sum::<i64>() as f64 / n as f64;
        assert!((mean_abs / scale - 1.0).abs() < 0.05, "{mean_abs}");
        assert!(mean.abs() < 0.05 * scale, "{mean}");
        assert!(draws.iter().any(|x| *x < 0) && draws.iter().any(|x| *x > 0));
    }
}
