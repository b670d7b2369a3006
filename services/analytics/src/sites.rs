//! The registered sites and `SiteService`. Sites hold no personal data:
//! plain rows, read by every event, so each process keeps them in memory
//! and reloads them after a change and every few seconds (another replica
//! may have changed them).

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use custodian_kit::Call;
use custodian_proto::analytics::v1::{
    CreateSiteRequest, DeleteSiteRequest, GetSiteRequest, ListSitesRequest, ListSitesResponse,
    Site, UpdateSiteRequest, site_service_server::SiteService,
};
use custodian_runtime::{
    ApiError, Database,
    database::is_unique_violation,
    error::Violations,
    paging::Page,
    time::{Clock, to_timestamp},
};
use sqlx::Row as _;
use tonic::{Request, Response, Status};

const DEFAULT_V4_BYTES: u8 = 2;
const DEFAULT_V6_BITS: u8 = 48;
const MAX_RETENTION_SECS: i64 = 30 * 86_400;
const MIN_RETENTION_SECS: i64 = 86_400;

/// A site's settings, as the door reads them.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteConfig {
    pub id: String,
    pub domain: String,
    pub allowed_origins: Vec<String>,
    pub kept_query_params: Vec<String>,
    pub ipv4_bytes_kept: u8,
    pub ipv6_bits_kept: u8,
    pub raw_retention_secs: i64,
    pub create_time: i64,
    pub update_time: i64,
}

impl SiteConfig {
    /// Hosts whose pages count as the site's: its domain and the hosts of
    /// its allowed origins.
    pub fn hosts(&self) -> Vec<String> {
        let mut hosts = vec![self.domain.clone()];
        for origin in &self.allowed_origins {
            if let Ok(url) = url::Url::parse(origin)
                && let Some(host) = url.host_str()
            {
                hosts.push(host.to_ascii_lowercase());
            }
        }
        hosts
    }

    /// Origins whose pages may post events from a browser.
    pub fn origins(&self) -> Vec<String> {
        if self.allowed_origins.is_empty() {
            vec![format!("https://{}", self.domain)]
        } else {
            self.allowed_origins.clone()
        }
    }

    fn to_proto(&self) -> Site {
        Site {
            name: format!("sites/{}", self.id),
            domain: self.domain.clone(),
            allowed_origins: self.allowed_origins.clone(),
            kept_query_params: self.kept_query_params.clone(),
            ipv4_bytes_kept: i32::from(self.ipv4_bytes_kept),
            ipv6_bits_kept: i32::from(self.ipv6_bits_kept),
            raw_retention: Some(prost_types::Duration {
                seconds: self.raw_retention_secs,
                nanos: 0,
            }),
            create_time: Some(to_timestamp(self.create_time)),
            update_time: Some(to_timestamp(self.update_time)),
        }
    }
}

/// A snapshot of the sites by domain.
#[derive(Debug, Default, Clone)]
pub struct SiteMap {
    by_domain: HashMap<String, Arc<SiteConfig>>,
}

impl SiteMap {
    pub fn by_id(&self, id: &str) -> Option<Arc<SiteConfig>> {
        self.by_domain.values().find(|s| s.id == id).cloned()
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<SiteConfig>> {
        self.by_domain.values()
    }
}

impl crate::door::SiteLookup for SiteMap {
    fn by_domain(&self, domain: &str) -> Option<Arc<SiteConfig>> {
        self.by_domain.get(domain).cloned()
    }
}

/// The sites, stored and cached.
#[derive(Clone)]
pub struct Sites {
    db: Database,
    clock: Arc<dyn Clock>,
    cache: Arc<RwLock<Arc<SiteMap>>>,
}

fn row_to_site(row: &sqlx::any::AnyRow) -> Result<SiteConfig, sqlx::Error> {
    let list = |column: &str| -> Result<Vec<String>, sqlx::Error> {
        let text: String = row.try_get(column)?;
        serde_json::from_str(&text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
    };
    Ok(SiteConfig {
        id: row.try_get("id")?,
        domain: row.try_get("domain")?,
        allowed_origins: list("allowed_origins")?,
        kept_query_params: list("kept_query_params")?,
        ipv4_bytes_kept: u8::try_from(row.try_get::<i32, _>("ipv4_bytes_kept")?).unwrap_or(0),
        ipv6_bits_kept: u8::try_from(row.try_get::<i32, _>("ipv6_bits_kept")?).unwrap_or(0),
        raw_retention_secs: row.try_get("raw_retention")?,
        create_time: row.try_get("create_time")?,
        update_time: row.try_get("update_time")?,
    })
}

const COLUMNS: &str = "id, domain, allowed_origins, kept_query_params, ipv4_bytes_kept, ipv6_bits_kept, raw_retention, create_time, update_time";

impl Sites {
    pub fn new(db: Database, clock: Arc<dyn Clock>) -> Self {
        Self {
            db,
            clock,
            cache: Arc::default(),
        }
    }

    /// The current snapshot.
    pub fn map(&self) -> Arc<SiteMap> {
        self.cache.read().map(|m| m.clone()).unwrap_or_default()
    }

    /// Reads every site again.
    pub async fn reload(&self) -> Result<(), ApiError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM analytics_sites"
        )))
        .fetch_all(self.db.pool())
        .await
        .map_err(ApiError::internal)?;
        let mut by_domain = HashMap::new();
        for row in &rows {
            let site = row_to_site(row).map_err(ApiError::internal)?;
            by_domain.insert(site.domain.clone(), Arc::new(site));
        }
        if let Ok(mut cache) = self.cache.write() {
            *cache = Arc::new(SiteMap { by_domain });
        }
        Ok(())
    }

    /// Reloads every `every` until the task is aborted.
    pub fn refresh_every(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let sites = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(err) = sites.reload().await {
                    tracing::warn!(error = %err, "reloading the analytics sites");
                }
            }
        })
    }

    async fn get(&self, id: &str) -> Result<Option<SiteConfig>, ApiError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM analytics_sites WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(self.db.pool())
        .await
        .map_err(ApiError::internal)?;
        row.as_ref()
            .map(row_to_site)
            .transpose()
            .map_err(ApiError::internal)
    }

    /// The site of a resource name, or NOT_FOUND.
    pub async fn named(&self, name: &str, field: &str) -> Result<SiteConfig, ApiError> {
        let id = site_id(name, field)?;
        self.get(id).await?.ok_or_else(|| ApiError::not_found(name))
    }

    async fn create(&self, request: CreateSiteRequest) -> Result<SiteConfig, ApiError> {
        let site = request.site.unwrap_or_default();
        let mut v = Violations::new();
        let domain = check_domain(&site.domain, "site.domain", &mut v);
        let mut config = SiteConfig {
            id: uuid::Uuid::now_v7().to_string(),
            domain,
            allowed_origins: Vec::new(),
            kept_query_params: Vec::new(),
            ipv4_bytes_kept: DEFAULT_V4_BYTES,
            ipv6_bits_kept: DEFAULT_V6_BITS,
            raw_retention_secs: MAX_RETENTION_SECS,
            create_time: self.clock.now_micros(),
            update_time: self.clock.now_micros(),
        };
        apply(&mut config, &site, &ALL_MUTABLE, &mut v);
        v.finish()?;
        let request_id = (!request.request_id.is_empty()).then_some(request.request_id);
        if let Some(id) = &request_id
            && let Some(existing) = self.by_request(id).await?
        {
            return Ok(existing);
        }
        let inserted = sqlx::query(
            "INSERT INTO analytics_sites (id, domain, allowed_origins, kept_query_params, ipv4_bytes_kept, ipv6_bits_kept, raw_retention, request_id, create_time, update_time) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&config.id)
        .bind(&config.domain)
        .bind(json(&config.allowed_origins))
        .bind(json(&config.kept_query_params))
        .bind(i32::from(config.ipv4_bytes_kept))
        .bind(i32::from(config.ipv6_bits_kept))
        .bind(config.raw_retention_secs)
        .bind(request_id.clone())
        .bind(config.create_time)
        .bind(config.update_time)
        .execute(self.db.pool())
        .await;
        match inserted {
            Ok(_) => {}
            Err(err) if is_unique_violation(&err) => {
                // A retry that raced its first attempt, or the domain taken.
                if let Some(id) = &request_id
                    && let Some(existing) = self.by_request(id).await?
                {
                    return Ok(existing);
                }
                return Err(ApiError::AlreadyExists(
                    "a site with this domain is already registered".to_owned(),
                ));
            }
            Err(err) => return Err(ApiError::internal(err)),
        }
        self.reload().await?;
        Ok(config)
    }

    async fn by_request(&self, request_id: &str) -> Result<Option<SiteConfig>, ApiError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM analytics_sites WHERE request_id = $1"
        )))
        .bind(request_id)
        .fetch_optional(self.db.pool())
        .await
        .map_err(ApiError::internal)?;
        row.as_ref()
            .map(row_to_site)
            .transpose()
            .map_err(ApiError::internal)
    }

    async fn update(&self, request: UpdateSiteRequest) -> Result<SiteConfig, ApiError> {
        let patch = request.site.unwrap_or_default();
        let mut config = self.named(&patch.name, "site.name").await?;
        let paths = request.update_mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            return Err(ApiError::invalid("update_mask", "is required"));
        }
        let mut v = Violations::new();
        let mut fields = Vec::new();
        for path in &paths {
            match ALL_MUTABLE.iter().find(|m| **m == path.as_str()) {
                Some(field) => fields.push(*field),
                None => v.add(
                    "update_mask",
                    format!(
                        "{path:?} cannot be changed; updatable: {}",
                        ALL_MUTABLE.join(", ")
                    ),
                ),
            }
        }
        apply(&mut config, &patch, &fields, &mut v);
        v.finish()?;
        config.update_time = self.clock.now_micros();
        sqlx::query(
            "UPDATE analytics_sites SET allowed_origins = $1, kept_query_params = $2, ipv4_bytes_kept = $3, \
             ipv6_bits_kept = $4, raw_retention = $5, update_time = $6 WHERE id = $7",
        )
        .bind(json(&config.allowed_origins))
        .bind(json(&config.kept_query_params))
        .bind(i32::from(config.ipv4_bytes_kept))
        .bind(i32::from(config.ipv6_bits_kept))
        .bind(config.raw_retention_secs)
        .bind(config.update_time)
        .bind(&config.id)
        .execute(self.db.pool())
        .await
        .map_err(ApiError::internal)?;
        self.reload().await?;
        Ok(config)
    }

    async fn delete(&self, name: &str) -> Result<(), ApiError> {
        let config = self.named(name, "name").await?;
        let mut tx = self.db.pool().begin().await.map_err(ApiError::internal)?;
        for table in [
            "analytics_sites WHERE id",
            "analytics_events WHERE site_id",
            "analytics_daily WHERE site_id",
            "analytics_rollups WHERE site_id",
            "analytics_drops WHERE site_id",
        ] {
            sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table} = $1")))
                .bind(&config.id)
                .execute(&mut *tx)
                .await
                .map_err(ApiError::internal)?;
        }
        tx.commit().await.map_err(ApiError::internal)?;
        self.reload().await
    }

    async fn list(&self, request: ListSitesRequest) -> Result<ListSitesResponse, ApiError> {
        let page = Page::parse(request.page_size, &request.page_token, "sites")?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM analytics_sites WHERE id > $1 ORDER BY id LIMIT $2"
        )))
        .bind(page.after.clone().unwrap_or_default())
        .bind(page.fetch_limit())
        .fetch_all(self.db.pool())
        .await
        .map_err(ApiError::internal)?;
        let sites = rows
            .iter()
            .map(row_to_site)
            .collect::<Result<Vec<_>, _>>()
            .map_err(ApiError::internal)?;
        let (sites, next_page_token) = page.finish(sites, |s| &s.id);
        Ok(ListSitesResponse {
            sites: sites.iter().map(SiteConfig::to_proto).collect(),
            next_page_token,
        })
    }
}

const ALL_MUTABLE: [&str; 5] = [
    "allowed_origins",
    "kept_query_params",
    "ipv4_bytes_kept",
    "ipv6_bits_kept",
    "raw_retention",
];

fn json(list: &[String]) -> String {
    serde_json::to_string(list).unwrap_or_else(|_| "[]".to_owned())
}

/// The id of "sites/{site}".
pub fn site_id<'a>(name: &'a str, field: &str) -> Result<&'a str, ApiError> {
    name.strip_prefix("sites/")
        .filter(|id| uuid::Uuid::parse_str(id).is_ok())
        .ok_or_else(|| ApiError::invalid(field, "must be a site name, \"sites/{site}\""))
}

/// A host name as the tracker reports it: lower case, no scheme, no port.
fn check_domain(raw: &str, field: &str, v: &mut Violations) -> String {
    let domain = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    if domain.is_empty() {
        v.add(field, "is required");
        return domain;
    }
    let valid = url::Url::parse(&format!("http://{domain}/"))
        .ok()
        .is_some_and(|u| u.host_str() == Some(domain.as_str()) && u.port().is_none())
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if !valid {
        v.add(field, "must be a host name such as www.example.com");
    }
    domain
}

fn apply(config: &mut SiteConfig, site: &Site, fields: &[&str], v: &mut Violations) {
    for field in fields {
        match *field {
            "allowed_origins" => {
                let mut origins = Vec::new();
                for (i, raw) in site.allowed_origins.iter().enumerate() {
                    match url::Url::parse(raw.trim()) {
                        Ok(url)
                            if matches!(url.scheme(), "http" | "https")
                                && url.host_str().is_some()
                                && url.path() == "/"
                                && url.query().is_none() =>
                        {
                            origins.push(url.origin().ascii_serialization());
                        }
                        _ => v.add(
                            format!("site.allowed_origins[{i}]"),
                            "must be an origin such as https://www.example.com",
                        ),
                    }
                }
                origins.dedup();
                config.allowed_origins = origins;
            }
            "kept_query_params" => {
                for (i, p) in site.kept_query_params.iter().enumerate() {
                    if p.is_empty() || p.contains(['&', '=', '#', ' ']) {
                        v.add(
                            format!("site.kept_query_params[{i}]"),
                            "must be a query parameter name",
                        );
                    }
                }
                config.kept_query_params = site.kept_query_params.clone();
            }
            "ipv4_bytes_kept" => match site.ipv4_bytes_kept {
                0 => config.ipv4_bytes_kept = DEFAULT_V4_BYTES,
                n @ 1..=3 => config.ipv4_bytes_kept = n as u8,
                _ => v.add(
                    "site.ipv4_bytes_kept",
                    "must be 1 to 3 (the whole address is never kept)",
                ),
            },
            "ipv6_bits_kept" => match site.ipv6_bits_kept {
                0 => config.ipv6_bits_kept = DEFAULT_V6_BITS,
                n @ 8..=64 if n % 8 == 0 => config.ipv6_bits_kept = n as u8,
                _ => v.add("site.ipv6_bits_kept", "must be 8 to 64, in steps of 8"),
            },
            "raw_retention" => match &site.raw_retention {
                None => config.raw_retention_secs = MAX_RETENTION_SECS,
                Some(d) if (MIN_RETENTION_SECS..=MAX_RETENTION_SECS).contains(&d.seconds) => {
                    config.raw_retention_secs = d.seconds;
                }
                Some(_) => v.add("site.raw_retention", "must be one to 30 days"),
            },
            _ => {}
        }
    }
}

/// `custodian.analytics.v1.SiteService`.
#[derive(Clone)]
pub struct SiteApi {
    pub sites: Sites,
}

#[tonic::async_trait]
impl SiteService for SiteApi {
    async fn create_site(
        &self,
        request: Request<CreateSiteRequest>,
    ) -> Result<Response<Site>, Status> {
        Call::of(&request)?;
        Ok(Response::new(
            self.sites.create(request.into_inner()).await?.to_proto(),
        ))
    }

    async fn get_site(&self, request: Request<GetSiteRequest>) -> Result<Response<Site>, Status> {
        Call::of(&request)?;
        let name = request.into_inner().name;
        Ok(Response::new(
            self.sites.named(&name, "name").await?.to_proto(),
        ))
    }

    async fn list_sites(
        &self,
        request: Request<ListSitesRequest>,
    ) -> Result<Response<ListSitesResponse>, Status> {
        Call::of(&request)?;
        Ok(Response::new(self.sites.list(request.into_inner()).await?))
    }

    async fn update_site(
        &self,
        request: Request<UpdateSiteRequest>,
    ) -> Result<Response<Site>, Status> {
        Call::of(&request)?;
        Ok(Response::new(
            self.sites.update(request.into_inner()).await?.to_proto(),
        ))
    }

    async fn delete_site(
        &self,
        request: Request<DeleteSiteRequest>,
    ) -> Result<Response<()>, Status> {
        Call::of(&request)?;
        self.sites.delete(&request.into_inner().name).await?;
        Ok(Response::new(()))
    }
}
