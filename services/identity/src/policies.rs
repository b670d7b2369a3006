//! `custodian.identity.v1.PolicyService`: the published versions of the
//! privacy policy. Append-only and ordered: a version is inserted once,
//! never changed or deleted, and takes effect after every version before
//! it, so "the version in force at a time" has one answer that never
//! changes once that time has passed. Versions are the company's, not
//! personal data: a plain table with its own SQL, as legal holds are.
//! Publishing is audited; reads are not (nothing personal is read).

use custodian_kit::{Call, Idempotency, Store};
use custodian_proto::{
    audit::v1::AuditOutcome,
    identity::v1::{
        GetPolicyVersionInForceRequest, GetPolicyVersionRequest, ListPolicyVersionsRequest,
        ListPolicyVersionsResponse, PolicyVersion, PublishPolicyVersionRequest,
        policy_service_server::PolicyService,
    },
};
use custodian_runtime::{
    ApiError, database::is_unique_violation, error::Violations, paging::Page, time::to_timestamp,
};
use sqlx::{Row as _, any::AnyRow};
use tonic::{Request, Response, Status};

const MAX_VERSION_CHARS: usize = 32;
const MAX_URL_CHARS: usize = 2048;
/// Concurrent publishes race for the next `seq`; the loser tries again.
const PUBLISH_ATTEMPTS: usize = 3;

/// A published version, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
struct VersionRow {
    version: String,
    seq: i64,
    effective_time: i64,
    text_sha256: String,
    url: String,
    publish_time: i64,
}

const COLUMNS: &str = "version, seq, effective_time, text_sha256, url, publish_time";

fn from_row(row: &AnyRow) -> Result<VersionRow, ApiError> {
    Ok(VersionRow {
        version: row.try_get("version")?,
        seq: row.try_get("seq")?,
        effective_time: row.try_get("effective_time")?,
        text_sha256: row.try_get("text_sha256")?,
        url: row.try_get("url")?,
        publish_time: row.try_get("publish_time")?,
    })
}

fn to_proto(row: VersionRow) -> PolicyVersion {
    PolicyVersion {
        name: name_of(&row.version),
        version: row.version,
        effective_time: Some(to_timestamp(row.effective_time)),
        text_sha256: row.text_sha256,
        url: row.url,
        publish_time: Some(to_timestamp(row.publish_time)),
    }
}

/// "policyVersions/{version}".
pub fn name_of(version: &str) -> String {
    format!("policyVersions/{version}")
}

/// A version token: lower-case letters, digits, '-' and '_', starting with
/// a letter or digit (the stack has lower-cased and bounded it).
fn valid_version(version: &str) -> bool {
    !version.is_empty()
        && version.len() <= MAX_VERSION_CHARS
        && version
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && version
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The version of "policyVersions/{version}"; the value is never echoed.
fn version_of(name: &str, field: &str) -> Result<String, ApiError> {
    name.strip_prefix("policyVersions/")
        .filter(|v| valid_version(v))
        .map(str::to_owned)
        .ok_or_else(|| ApiError::invalid(field, "must have the form policyVersions/{version}"))
}

/// Microseconds of a well-formed timestamp (years 1970 to 9999).
pub fn micros_of(t: &prost_types::Timestamp) -> Option<i64> {
    ((0..=253_402_300_799).contains(&t.seconds) && (0..1_000_000_000).contains(&t.nanos))
        .then(|| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000)
}

/// An https URL without spaces or credentials, with a host.
fn valid_url(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("https://") else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    !host.is_empty()
        && !host.contains('@')
        && url.len() <= MAX_URL_CHARS
        && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The version in force at `at`, if any.
pub async fn in_force(store: &Store, at: i64) -> Result<Option<PolicyVersion>, ApiError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM identity_policy_versions WHERE effective_time <= $1 \
         ORDER BY effective_time DESC LIMIT 1"
    )))
    .bind(at)
    .fetch_optional(store.db().pool())
    .await?;
    Ok(row.as_ref().map(from_row).transpose()?.map(to_proto))
}

async fn get(store: &Store, version: &str) -> Result<Option<VersionRow>, ApiError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM identity_policy_versions WHERE version = $1"
    )))
    .bind(version)
    .fetch_optional(store.db().pool())
    .await?;
    row.as_ref().map(from_row).transpose()
}

pub struct Policies {
    store: Store,
}

impl Policies {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Checks a version to publish.
    fn check(&self, version: &PolicyVersion) -> Result<VersionRow, ApiError> {
        let mut v = Violations::new();
        if !valid_version(&version.version) {
            v.add(
                "policy_version.version",
                "is required: 1 to 32 lower-case letters, digits, '-' and '_', starting with a letter or digit",
            );
        }
        let effective_time = match version.effective_time.as_ref() {
            None => {
                v.add("policy_version.effective_time", "is required");
                0
            }
            Some(t) => micros_of(t).unwrap_or_else(|| {
                v.add(
                    "policy_version.effective_time",
                    "must be a valid time between 1970 and 9999",
                );
                0
            }),
        };
        let hash = version.text_sha256.to_ascii_lowercase();
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            v.add(
                "policy_version.text_sha256",
                "is required: the SHA-256 of the text in 64 hexadecimal digits",
            );
        }
        if !version.url.is_empty() && !valid_url(&version.url) {
            v.add(
                "policy_version.url",
                "must be an https URL with a host, without spaces",
            );
        }
        v.finish()?;
        Ok(VersionRow {
            version: version.version.clone(),
            seq: 0,
            effective_time,
            text_sha256: hash,
            url: version.url.clone(),
            publish_time: self.store.now(),
        })
    }

    /// Inserts `row` after the newest version, in one statement that only
    /// inserts when it comes after every published version. Returns the
    /// row as stored.
    async fn insert(
        &self,
        call: &Call,
        mut row: VersionRow,
        idem: Option<&Idempotency>,
    ) -> Result<VersionRow, ApiError> {
        let name = name_of(&row.version);
        for _ in 0..PUBLISH_ATTEMPTS {
            let mut tx = self.store.db().pool().begin().await?;
            // The first statement is the write (see the kit's store). The
            // first version may be backdated (a policy already in force
            // when Custodian started keeping them); later ones may not, so
            // the answer for a past time never changes.
            let inserted = sqlx::query(
                "INSERT INTO identity_policy_versions \
                 (version, seq, effective_time, text_sha256, url, publish_time) \
                 SELECT $1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM identity_policy_versions), \
                 $2, $3, $4, $5 \
                 WHERE NOT EXISTS (SELECT 1 FROM identity_policy_versions \
                   WHERE effective_time >= $2 OR $2 < $5) \
                 RETURNING seq",
            )
            .bind(&row.version)
            .bind(row.effective_time)
            .bind(&row.text_sha256)
            .bind(&row.url)
            .bind(row.publish_time)
            .fetch_optional(&mut *tx)
            .await;
            let seq: i64 = match inserted {
                Ok(Some(r)) => r.try_get("seq")?,
                Ok(None) => {
                    drop(tx);
                    if get(&self.store, &row.version).await?.is_some() {
                        return Err(ApiError::AlreadyExists(format!("{name} already exists")));
                    }
                    return Err(self.out_of_order(&row).await?);
                }
                Err(err) if is_unique_violation(&err) => {
                    drop(tx);
                    if get(&self.store, &row.version).await?.is_some() {
                        return Err(ApiError::AlreadyExists(format!("{name} already exists")));
                    }
                    // Another version took this seq first: look again.
                    continue;
                }
                Err(err) => return Err(err.into()),
            };
            row.seq = seq;
            if let Some(idem) = idem
                && !self.store.remember(&mut tx, idem, &name).await?
            {
                drop(tx);
                return self.replayed(idem).await;
            }
            let event = self
                .store
                .privacy()
                .event(&call.access, &name, "", &[], AuditOutcome::Ok);
            self.store.privacy().audit.commit(tx, &[event]).await?;
            return Ok(row);
        }
        Err(ApiError::Aborted(
            "another version was published at the same time; retry".to_owned(),
        ))
    }

    /// Why `row` could not come next.
    async fn out_of_order(&self, row: &VersionRow) -> Result<ApiError, ApiError> {
        let newest =
            sqlx::query("SELECT MAX(effective_time) AS newest FROM identity_policy_versions")
                .fetch_one(self.store.db().pool())
                .await?
                .try_get::<Option<i64>, _>("newest")?;
        Ok(ApiError::FailedPrecondition(match newest {
            Some(newest) if row.effective_time <= newest => {
                "effective_time must be after the effective_time of the newest published version"
                    .to_owned()
            }
            _ => "effective_time must not be in the past once a version is published".to_owned(),
        }))
    }

    /// The version an idempotency key published.
    async fn replayed(&self, idem: &Idempotency) -> Result<VersionRow, ApiError> {
        let name =
            self.store.replayed(idem).await?.ok_or_else(|| {
                ApiError::internal(std::io::Error::other("idempotency key vanished"))
            })?;
        let version = version_of(&name, "request_id")?;
        get(&self.store, &version)
            .await?
            .ok_or_else(|| ApiError::not_found(name))
    }
}

#[tonic::async_trait]
impl PolicyService for Policies {
    async fn publish_policy_version(
        &self,
        request: Request<PublishPolicyVersionRequest>,
    ) -> Result<Response<PolicyVersion>, Status> {
        let call = Call::of(&request)?;
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let idem = Idempotency::of("PublishPolicyVersion", "", &request_id, &req)?;
        let row = self.check(&req.policy_version.unwrap_or_default())?;
        if let Some(idem) = &idem
            && self.store.replayed(idem).await?.is_some()
        {
            return Ok(Response::new(to_proto(self.replayed(idem).await?)));
        }
        let row = self.insert(&call, row, idem.as_ref()).await?;
        Ok(Response::new(to_proto(row)))
    }

    async fn get_policy_version(
        &self,
        request: Request<GetPolicyVersionRequest>,
    ) -> Result<Response<PolicyVersion>, Status> {
        Call::of(&request)?;
        let name = &request.get_ref().name;
        let version = version_of(name, "name")?;
        let row = get(&self.store, &version)
            .await?
            .ok_or_else(|| ApiError::not_found(name_of(&version)))?;
        Ok(Response::new(to_proto(row)))
    }

    async fn list_policy_versions(
        &self,
        request: Request<ListPolicyVersionsRequest>,
    ) -> Result<Response<ListPolicyVersionsResponse>, Status> {
        Call::of(&request)?;
        let req = request.into_inner();
        let page = Page::parse(req.page_size, &req.page_token, "policyVersions")?;
        // Keyset on `seq`, carried in the token as a fixed-width string so
        // the tokens sort as the numbers do.
        let after = match page.after.as_deref() {
            None => 0,
            Some(a) => a
                .parse::<i64>()
                .map_err(|_| ApiError::invalid("page_token", "not a token from this query"))?,
        };
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM identity_policy_versions WHERE seq > $1 ORDER BY seq LIMIT $2"
        )))
        .bind(after)
        .bind(page.fetch_limit())
        .fetch_all(self.store.db().pool())
        .await
        .map_err(ApiError::from)?;
        let rows = rows
            .iter()
            .map(|r| from_row(r).map(|row| (format!("{:020}", row.seq), row)))
            .collect::<Result<Vec<_>, _>>()?;
        let (rows, next_page_token) = page.finish(rows, |(key, _)| key.as_str());
        Ok(Response::new(ListPolicyVersionsResponse {
            policy_versions: rows.into_iter().map(|(_, row)| to_proto(row)).collect(),
            next_page_token,
        }))
    }

    async fn get_policy_version_in_force(
        &self,
        request: Request<GetPolicyVersionInForceRequest>,
    ) -> Result<Response<PolicyVersion>, Status> {
        Call::of(&request)?;
        let at = match request.get_ref().time.as_ref() {
            None => self.store.now(),
            Some(t) => {
                micros_of(t).ok_or_else(|| ApiError::invalid("time", "must be a valid time"))?
            }
        };
        match in_force(&self.store, at).await? {
            Some(version) => Ok(Response::new(version)),
            None => Err(
                ApiError::NotFound("policy version in force at the given time".to_owned()).into(),
            ),
        }
    }
}
