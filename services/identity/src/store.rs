//! SQL for identity, the same on SQLite and PostgreSQL.
//!
//! Writes are arranged so that a transaction's first statement is a write:
//! on SQLite a transaction that reads first and writes later can fail with
//! SQLITE_BUSY when another writer commits in between, which busy_timeout
//! cannot wait out. Existence checks therefore come from constraint
//! violations (foreign key, unique) rather than from reads beforehand, and
//! updates are optimistic (compare-and-set on `update_time`).

use custodian_runtime::{ApiError, Database, paging::Page, time::now_micros};
use sqlx::{AssertSqlSafe, Row as _, any::AnyRow};

use crate::model::{ALL_KINDS, Attrs, Kind, PersonData, Record};

/// A tenant row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRow {
    pub id: String,
    pub display_name: String,
    pub create_time: i64,
    pub update_time: i64,
}

/// An idempotency key of a Create call.
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub scope: String,
    pub request_id: String,
    pub request_hash: String,
}

/// What a Create call did.
pub enum Created<T> {
    New(T),
    /// An earlier call with the same idempotency key created this resource.
    Replayed(String),
}

#[derive(Clone, Debug)]
pub struct Store {
    db: Database,
}

/// SQL for one kind of record: the table name is a trusted constant.
fn sql(kind: Kind, template: &str) -> AssertSqlSafe<String> {
    AssertSqlSafe(template.replace("{t}", kind.table))
}

const RECORD_COLUMNS: &str = "tenant_id, id, data, attrs, create_time, update_time";

fn record_from_row(row: &AnyRow) -> Result<Record, ApiError> {
    let data: String = row.try_get("data")?;
    let attrs: String = row.try_get("attrs")?;
    Ok(Record {
        tenant_id: row.try_get("tenant_id")?,
        id: row.try_get("id")?,
        data: serde_json::from_str(&data).map_err(ApiError::internal)?,
        attrs: serde_json::from_str(&attrs).map_err(ApiError::internal)?,
        create_time: row.try_get("create_time")?,
        update_time: row.try_get("update_time")?,
    })
}

fn tenant_from_row(row: &AnyRow) -> Result<TenantRow, ApiError> {
    Ok(TenantRow {
        id: row.try_get("id")?,
        display_name: row.try_get("display_name")?,
        create_time: row.try_get("create_time")?,
        update_time: row.try_get("update_time")?,
    })
}

/// The values a record is looked up by. Email and phone are stored already
/// normalised, so equal people have equal keys.
fn lookup_keys(data: &PersonData) -> (Option<String>, Option<String>) {
    let key = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    (key(&data.email), key(&data.phone))
}

fn json<T: serde::Serialize>(value: &T) -> Result<String, ApiError> {
    serde_json::to_string(value).map_err(ApiError::internal)
}

fn db_error_kind(err: &sqlx::Error) -> Option<sqlx::error::ErrorKind> {
    match err {
        sqlx::Error::Database(db) => Some(db.kind()),
        _ => None,
    }
}

/// A later write time than `previous`, even if the clock has not moved.
fn next_update_time(previous: i64) -> i64 {
    now_micros().max(previous + 1)
}

impl Store {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// The resource an idempotency key already created, if any. A key reused
    /// for a different request is refused.
    pub async fn replayed(&self, idem: &Idempotency) -> Result<Option<String>, ApiError> {
        let row = sqlx::query(
            "SELECT request_hash, resource FROM idempotency_keys WHERE scope = $1 AND request_id = $2",
        )
        .bind(&idem.scope)
        .bind(&idem.request_id)
        .fetch_optional(self.db.pool())
        .await?;
        match row {
            None => Ok(None),
            Some(row) => {
                let hash: String = row.try_get("request_hash")?;
                if hash != idem.request_hash {
                    return Err(ApiError::invalid(
                        "request_id",
                        "was already used for a different request",
                    ));
                }
                Ok(Some(row.try_get("resource")?))
            }
        }
    }

    // --- tenants -------------------------------------------------------

    pub async fn create_tenant(
        &self,
        tenant: TenantRow,
        idem: Option<&Idempotency>,
    ) -> Result<Created<TenantRow>, ApiError> {
        if let Some(idem) = idem
            && let Some(resource) = self.replayed(idem).await?
        {
            return Ok(Created::Replayed(resource));
        }
        let mut tx = self.db.pool().begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO tenants (id, display_name, create_time, update_time) VALUES ($1, $2, $3, $4)",
        )
        .bind(&tenant.id)
        .bind(&tenant.display_name)
        .bind(tenant.create_time)
        .bind(tenant.update_time)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(err) if custodian_runtime::database::is_unique_violation(&err) => {
                return Err(ApiError::AlreadyExists(format!(
                    "tenants/{} already exists",
                    tenant.id
                )));
            }
            Err(err) => return Err(err.into()),
        }
        let name = format!("tenants/{}", tenant.id);
        if let Some(idem) = idem
            && !self.remember(&mut tx, idem, &name).await?
        {
            drop(tx);
            return self.replay_after_race(idem).await;
        }
        tx.commit().await?;
        Ok(Created::New(tenant))
    }

    pub async fn get_tenant(&self, id: &str) -> Result<TenantRow, ApiError> {
        let row = sqlx::query(
            "SELECT id, display_name, create_time, update_time FROM tenants WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("tenants/{id}")))?;
        tenant_from_row(&row)
    }

    pub async fn list_tenants(&self, page: &Page) -> Result<Vec<TenantRow>, ApiError> {
        let rows = sqlx::query(
            "SELECT id, display_name, create_time, update_time FROM tenants \
             WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(page.fetch_limit())
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(tenant_from_row).collect()
    }

    pub async fn update_tenant(&self, id: &str, display_name: &str) -> Result<TenantRow, ApiError> {
        let row = sqlx::query(
            "UPDATE tenants SET display_name = $1, update_time = $2 WHERE id = $3 \
             RETURNING id, display_name, create_time, update_time",
        )
        .bind(display_name)
        .bind(now_micros())
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("tenants/{id}")))?;
        tenant_from_row(&row)
    }

    /// Deletes a tenant. Without `force`, only when no person record is held
    /// for it: deleting personal data should never be a side effect.
    pub async fn delete_tenant(&self, id: &str, force: bool) -> Result<(), ApiError> {
        let mut tx = self.db.pool().begin().await?;
        let deleted = if force {
            sqlx::query("DELETE FROM tenants WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?
        } else {
            sqlx::query(
                "DELETE FROM tenants WHERE id = $1 \
                 AND NOT EXISTS (SELECT 1 FROM users WHERE tenant_id = $1) \
                 AND NOT EXISTS (SELECT 1 FROM contacts WHERE tenant_id = $1)",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?
        };
        if deleted.rows_affected() == 0 {
            drop(tx);
            // Tell "not there" from "still holds people".
            self.get_tenant(id).await?;
            return Err(ApiError::FailedPrecondition(format!(
                "tenants/{id} still has authorized users or contacts; delete them first or set force"
            )));
        }
        sqlx::query("DELETE FROM idempotency_keys WHERE resource LIKE $1")
            .bind(format!("tenants/{id}/%"))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    // --- person records --------------------------------------------------

    pub async fn create_record(
        &self,
        kind: Kind,
        record: Record,
        idem: Option<&Idempotency>,
    ) -> Result<Created<Record>, ApiError> {
        if let Some(idem) = idem
            && let Some(resource) = self.replayed(idem).await?
        {
            return Ok(Created::Replayed(resource));
        }
        let (email_key, phone_key) = lookup_keys(&record.data);
        let mut tx = self.db.pool().begin().await?;
        let inserted = sqlx::query(sql(
            kind,
            "INSERT INTO {t} (tenant_id, id, data, attrs, email_key, phone_key, create_time, update_time) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        ))
        .bind(&record.tenant_id)
        .bind(&record.id)
        .bind(json(&record.data)?)
        .bind(json(&record.attrs)?)
        .bind(email_key)
        .bind(phone_key)
        .bind(record.create_time)
        .bind(record.update_time)
        .execute(&mut *tx)
        .await;
        if let Err(err) = inserted {
            return Err(self.write_error(kind, &record.tenant_id, err));
        }
        let name = kind.resource_name(&record.tenant_id, &record.id);
        if let Some(idem) = idem
            && !self.remember(&mut tx, idem, &name).await?
        {
            drop(tx);
            return self.replay_after_race(idem).await;
        }
        tx.commit().await?;
        Ok(Created::New(record))
    }

    /// Stores an idempotency key; false if a concurrent call with the same
    /// key got there first.
    async fn remember(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        idem: &Idempotency,
        resource: &str,
    ) -> Result<bool, ApiError> {
        let stored = sqlx::query(
            "INSERT INTO idempotency_keys (scope, request_id, request_hash, resource, create_time) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&idem.scope)
        .bind(&idem.request_id)
        .bind(&idem.request_hash)
        .bind(resource)
        .bind(now_micros())
        .execute(&mut **tx)
        .await;
        match stored {
            Ok(_) => Ok(true),
            Err(err) if custodian_runtime::database::is_unique_violation(&err) => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    async fn replay_after_race<T>(&self, idem: &Idempotency) -> Result<Created<T>, ApiError> {
        match self.replayed(idem).await? {
            Some(resource) => Ok(Created::Replayed(resource)),
            None => Err(ApiError::internal(anyhow_msg("idempotency key vanished"))),
        }
    }

    fn write_error(&self, kind: Kind, tenant_id: &str, err: sqlx::Error) -> ApiError {
        match db_error_kind(&err) {
            Some(sqlx::error::ErrorKind::UniqueViolation) => ApiError::AlreadyExists(format!(
                "an {} with this email already exists in tenants/{tenant_id}",
                kind.noun
            )),
            Some(sqlx::error::ErrorKind::ForeignKeyViolation) => {
                ApiError::not_found(format!("tenants/{tenant_id}"))
            }
            _ => err.into(),
        }
    }

    pub async fn get_record(
        &self,
        kind: Kind,
        tenant_id: &str,
        id: &str,
    ) -> Result<Record, ApiError> {
        let row = sqlx::query(sql(
            kind,
            &format!("SELECT {RECORD_COLUMNS} FROM {{t}} WHERE tenant_id = $1 AND id = $2"),
        ))
        .bind(tenant_id)
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?
        .ok_or_else(|| ApiError::not_found(kind.resource_name(tenant_id, id)))?;
        record_from_row(&row)
    }

    /// One page of a tenant's records (or the company's, with tenant ""),
    /// optionally only those with a given email.
    pub async fn list_records(
        &self,
        kind: Kind,
        tenant_id: &str,
        email: Option<&str>,
        page: &Page,
    ) -> Result<Vec<Record>, ApiError> {
        let rows = sqlx::query(sql(
            kind,
            &format!(
                "SELECT {RECORD_COLUMNS} FROM {{t}} \
                 WHERE tenant_id = $1 AND ($2 = '' OR email_key = $2) AND id > $3 \
                 ORDER BY id LIMIT $4"
            ),
        ))
        .bind(tenant_id)
        .bind(email.unwrap_or(""))
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(page.fetch_limit())
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(record_from_row).collect()
    }

    /// Reads a record, lets `change` edit it, and writes it back only if no
    /// one else wrote in between (else reads again and retries).
    pub async fn update_record<F>(
        &self,
        kind: Kind,
        tenant_id: &str,
        id: &str,
        mut change: F,
    ) -> Result<Record, ApiError>
    where
        F: FnMut(&mut Record) -> Result<(), ApiError>,
    {
        const ATTEMPTS: usize = 5;
        for _ in 0..ATTEMPTS {
            let mut record = self.get_record(kind, tenant_id, id).await?;
            let previous = record.update_time;
            change(&mut record)?;
            record.update_time = next_update_time(previous);
            if self.replace_record(kind, &record, previous).await? {
                return Ok(record);
            }
        }
        Err(ApiError::Unavailable(format!(
            "{} is being changed concurrently; retry",
            kind.resource_name(tenant_id, id)
        )))
    }

    /// Compare-and-set write of a whole record; false if it changed since
    /// `previous_update_time`.
    async fn replace_record(
        &self,
        kind: Kind,
        record: &Record,
        previous_update_time: i64,
    ) -> Result<bool, ApiError> {
        self.compare_and_set(self.db.pool(), kind, record, previous_update_time)
            .await
    }

    async fn compare_and_set<'e, E>(
        &self,
        executor: E,
        kind: Kind,
        record: &Record,
        previous_update_time: i64,
    ) -> Result<bool, ApiError>
    where
        E: sqlx::Executor<'e, Database = sqlx::Any>,
    {
        let (email_key, phone_key) = lookup_keys(&record.data);
        let result = sqlx::query(sql(
            kind,
            "UPDATE {t} SET data = $1, attrs = $2, email_key = $3, phone_key = $4, update_time = $5 \
             WHERE tenant_id = $6 AND id = $7 AND update_time = $8",
        ))
        .bind(json(&record.data)?)
        .bind(json(&record.attrs)?)
        .bind(email_key)
        .bind(phone_key)
        .bind(record.update_time)
        .bind(&record.tenant_id)
        .bind(&record.id)
        .bind(previous_update_time)
        .execute(executor)
        .await
        .map_err(|err| self.write_error(kind, &record.tenant_id, err))?;
        Ok(result.rows_affected() == 1)
    }

    pub async fn delete_record(
        &self,
        kind: Kind,
        tenant_id: &str,
        id: &str,
    ) -> Result<(), ApiError> {
        let name = kind.resource_name(tenant_id, id);
        let mut tx = self.db.pool().begin().await?;
        let deleted = sqlx::query(sql(
            kind,
            "DELETE FROM {t} WHERE tenant_id = $1 AND id = $2",
        ))
        .bind(tenant_id)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if deleted.rows_affected() == 0 {
            return Err(ApiError::not_found(name));
        }
        // The key's request hash is derived from personal data: it goes with it.
        sqlx::query("DELETE FROM idempotency_keys WHERE resource = $1")
            .bind(&name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    // --- data subjects ---------------------------------------------------

    /// Every record, of every kind, whose email or phone key matches.
    pub async fn find_subject(
        &self,
        email_key: Option<&str>,
        phone_key: Option<&str>,
    ) -> Result<Vec<(Kind, Record)>, ApiError> {
        let mut found = Vec::new();
        for kind in ALL_KINDS {
            let rows = sqlx::query(sql(
                kind,
                &format!(
                    "SELECT {RECORD_COLUMNS} FROM {{t}} WHERE email_key = $1 OR phone_key = $2 \
                     ORDER BY tenant_id, id"
                ),
            ))
            // NULL matches nothing, so an absent key never matches a row.
            .bind(email_key)
            .bind(phone_key)
            .fetch_all(self.db.pool())
            .await?;
            for row in &rows {
                found.push((kind, record_from_row(row)?));
            }
        }
        Ok(found)
    }

    /// Writes several corrected records at once, or none; false if any of
    /// them changed since it was read.
    pub async fn replace_records(&self, records: &[(Kind, Record, i64)]) -> Result<bool, ApiError> {
        let mut tx = self.db.pool().begin().await?;
        for (kind, record, previous) in records {
            if !self
                .compare_and_set(&mut *tx, *kind, record, *previous)
                .await?
            {
                return Ok(false);
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Deletes records (and their idempotency keys) in one transaction.
    pub async fn erase_records(&self, records: &[(Kind, Record)]) -> Result<(), ApiError> {
        let mut tx = self.db.pool().begin().await?;
        for (kind, record) in records {
            sqlx::query(sql(
                *kind,
                "DELETE FROM {t} WHERE tenant_id = $1 AND id = $2",
            ))
            .bind(&record.tenant_id)
            .bind(&record.id)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM idempotency_keys WHERE resource = $1")
                .bind(kind.resource_name(&record.tenant_id, &record.id))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

fn anyhow_msg(msg: &'static str) -> std::io::Error {
    std::io::Error::other(msg)
}

/// Attributes default for a new record.
pub fn new_record(tenant_id: &str, data: PersonData, attrs: Attrs) -> Record {
    let now = now_micros();
    Record {
        tenant_id: tenant_id.to_owned(),
        id: uuid::Uuid::now_v7().to_string(),
        data,
        attrs,
        create_time: now,
        update_time: now,
    }
}
