//! `custodian.analytics.v1.ReportService`: sums of the k-anonymous daily
//! cells (see [`crate::rollup`]); raw events are never read here. Averages
//! of time are shown only over k visitors that sent engagement, and the
//! days without figures are counted alike whether they had a few visitors
//! or none.

use std::sync::Arc;

use custodian_kit::Call;
use custodian_proto::analytics::v1::{
    ConsentCount, CountConsentsRequest, CountConsentsResponse, Dimension, DropCount,
    GetDropCountsRequest, GetDropCountsResponse, GetReportRequest, Report, ReportRow,
    report_service_server::ReportService,
};
use custodian_runtime::{ApiError, Database, error::Violations, time::Clock, time::to_timestamp};
use sqlx::Row as _;
use tonic::{Request, Response, Status};

use crate::{
    door::day_of,
    rollup::{self, OTHER, day_start, last_final_day},
    sites::{Sites, site_id},
};

/// The longest range a report may cover, in days.
const MAX_DAYS: i64 = 400;

#[derive(Clone)]
pub struct ReportApi {
    pub db: Database,
    pub sites: Sites,
    pub clock: Arc<dyn Clock>,
    pub k: usize,
}

#[derive(Default)]
struct Sums {
    pageviews: i64,
    visitors: i64,
    visits: i64,
    bounces: i64,
    visit_ms: i64,
    engaged_ms: i64,
    engagements: i64,
    engaged_visitors: i64,
}

impl Sums {
    fn row(&self, key: String, k: usize) -> ReportRow {
        let ratio = |a: i64, b: i64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        // Fewer than k visitors' own engagement: a row padded with fakes
        // would show the few real ones' time.
        let withheld = self.engaged_visitors < k as i64;
        // The sums carry noise and may fall below zero; no time is negative.
        let average = |ms: i64, n: i64| {
            if withheld {
                0.0
            } else {
                (ratio(ms, n) / 1000.0).max(0.0)
            }
        };
        ReportRow {
            key,
            pageviews: self.pageviews,
            visitors: self.visitors,
            visits: self.visits,
            bounce_rate: ratio(self.bounces, self.visits),
            average_visit_seconds: average(self.visit_ms, self.visits),
            average_time_on_page_seconds: average(self.engaged_ms, self.engagements),
            time_averages_withheld: withheld,
        }
    }
}

fn micros(t: &Option<prost_types::Timestamp>) -> Option<i64> {
    t.as_ref().map(|t| {
        t.seconds
            .saturating_mul(1_000_000)
            .saturating_add(i64::from(t.nanos / 1000))
    })
}

impl ReportApi {
    async fn sums(
        &self,
        site: &str,
        dimension: i32,
        from: i64,
        to: i64,
    ) -> Result<Vec<(String, Sums)>, ApiError> {
        let rows = sqlx::query(
            "SELECT key, CAST(SUM(pageviews) AS BIGINT) AS pageviews, CAST(SUM(visitors) AS BIGINT) AS visitors, \
             CAST(SUM(visits) AS BIGINT) AS visits, CAST(SUM(bounces) AS BIGINT) AS bounces, \
             CAST(SUM(visit_ms) AS BIGINT) AS visit_ms, CAST(SUM(engaged_ms) AS BIGINT) AS engaged_ms, \
             CAST(SUM(engagements) AS BIGINT) AS engagements, \
             CAST(SUM(engaged_visitors) AS BIGINT) AS engaged_visitors \
             FROM analytics_daily WHERE site_id = $1 AND dimension = $2 AND day >= $3 AND day < $4 GROUP BY key",
        )
        .bind(site)
        .bind(dimension)
        .bind(from as i32)
        .bind(to as i32)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("key")?,
                    Sums {
                        pageviews: r.try_get("pageviews")?,
                        visitors: r.try_get("visitors")?,
                        visits: r.try_get("visits")?,
                        bounces: r.try_get("bounces")?,
                        visit_ms: r.try_get("visit_ms")?,
                        engaged_ms: r.try_get("engaged_ms")?,
                        engagements: r.try_get("engagements")?,
                        engaged_visitors: r.try_get("engaged_visitors")?,
                    },
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(ApiError::internal)
    }

    async fn report(&self, request: GetReportRequest) -> Result<Report, ApiError> {
        let mut v = Violations::new();
        let start = micros(&request.start_time);
        let end = micros(&request.end_time);
        if start.is_none() {
            v.add("start_time", "is required");
        }
        if end.is_none() {
            v.add("end_time", "is required");
        }
        let dimension = Dimension::try_from(request.dimension).unwrap_or(Dimension::Unspecified);
        v.finish()?;
        let (from, requested_to) = (
            day_of(start.unwrap_or_default()),
            day_of(end.unwrap_or_default()),
        );
        if requested_to <= from {
            return Err(ApiError::invalid(
                "end_time",
                "must be on a later day than start_time",
            ));
        }
        if requested_to - from > MAX_DAYS {
            return Err(ApiError::invalid(
                "end_time",
                format!("a report covers at most {MAX_DAYS} days"),
            ));
        }
        let site = self.sites.named(&request.site, "site").await?;
        let now = self.clock.now_micros();
        rollup::roll_pending(&self.db, now, self.k).await?;
        // Days that have not ended are never counted: a report taken twice
        // during a day would otherwise tell what happened in between.
        let to = requested_to.min(last_final_day(now) + 1).max(from);
        let total = self
            .sums(&site.id, Dimension::Unspecified as i32, from, to)
            .await?
            .into_iter()
            .next()
            .map(|(_, s)| s)
            .unwrap_or_default();
        let mut rows = Vec::new();
        let mut other = None;
        if dimension != Dimension::Unspecified {
            for (key, sums) in self.sums(&site.id, dimension as i32, from, to).await? {
                if key == OTHER {
                    other = Some(sums.row(key, self.k));
                } else {
                    rows.push(sums.row(key, self.k));
                }
            }
        }
        rows.sort_by(|a, b| b.pageviews.cmp(&a.pageviews).then(a.key.cmp(&b.key)));
        // Every day of the range without figures, whatever kept it out: a
        // day with one visitor must look like a day with none.
        let kept_days: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM analytics_daily WHERE site_id = $1 AND dimension = $2 \
             AND day >= $3 AND day < $4",
        )
        .bind(&site.id)
        .bind(Dimension::Unspecified as i32)
        .bind(from as i32)
        .bind(to as i32)
        .fetch_one(self.db.pool())
        .await?
        .try_get("n")?;
        let suppressed_days = (to - from) - kept_days;
        Ok(Report {
            rows,
            other,
            total: Some(total.row(String::new(), self.k)),
            k: self.k as i32,
            start_time: Some(to_timestamp(day_start(from))),
            end_time: Some(to_timestamp(day_start(to))),
            suppressed_days: suppressed_days as i32,
        })
    }
}

#[tonic::async_trait]
impl ReportService for ReportApi {
    async fn get_report(
        &self,
        request: Request<GetReportRequest>,
    ) -> Result<Response<Report>, Status> {
        Call::of(&request)?;
        Ok(Response::new(self.report(request.into_inner()).await?))
    }

    async fn get_drop_counts(
        &self,
        request: Request<GetDropCountsRequest>,
    ) -> Result<Response<GetDropCountsResponse>, Status> {
        Call::of(&request)?;
        let request = request.into_inner();
        let site = if request.site.is_empty() {
            String::new()
        } else {
            site_id(&request.site, "site")?.to_owned()
        };
        let now = self.clock.now_micros();
        let from = micros(&request.start_time)
            .map(day_of)
            .unwrap_or(i64::from(i32::MIN));
        let to = micros(&request.end_time)
            .map(day_of)
            .unwrap_or(day_of(now) + 1);
        let rows = sqlx::query(
            "SELECT reason, CAST(SUM(count) AS BIGINT) AS n FROM analytics_drops \
             WHERE ($1 = '' OR site_id = $1) AND day >= $2 AND day < $3 GROUP BY reason ORDER BY reason",
        )
        .bind(&site)
        .bind(from.max(i64::from(i32::MIN)) as i32)
        .bind(to.min(i64::from(i32::MAX)) as i32)
        .fetch_all(self.db.pool())
        .await
        .map_err(ApiError::from)?;
        let dropped = rows
            .iter()
            .map(|r| {
                Ok(DropCount {
                    reason: r.try_get("reason")?,
                    count: r.try_get("n")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(ApiError::from)?;
        Ok(Response::new(GetDropCountsResponse { dropped }))
    }

    async fn count_consents(
        &self,
        request: Request<CountConsentsRequest>,
    ) -> Result<Response<CountConsentsResponse>, Status> {
        Call::of(&request)?;
        let site = request.into_inner().site;
        if !site.is_empty() {
            site_id(&site, "site")?;
        }
        let rows = sqlx::query(
            "SELECT policy_version, decision, COUNT(*) AS n FROM analytics_consents \
             WHERE ($1 = '' OR site = $1) GROUP BY policy_version, decision ORDER BY policy_version, decision",
        )
        .bind(&site)
        .fetch_all(self.db.pool())
        .await
        .map_err(ApiError::from)?;
        let counts = rows
            .iter()
            .map(|r| {
                Ok(ConsentCount {
                    policy_version: r.try_get("policy_version")?,
                    decision: r.try_get::<i64, _>("decision")? as i32,
                    count: r.try_get("n")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(ApiError::from)?;
        Ok(Response::new(CountConsentsResponse { counts }))
    }
}
