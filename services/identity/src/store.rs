//! SQL for identity, the same on SQLite and PostgreSQL.
//!
//! Personal fields are sealed before they reach SQL and opened after they
//! leave it (see [`custodian_privacy::vault`]); lookups use blind indexes.
//! Every change of personal data appends its audit events inside the same
//! transaction.
//!
//! Writes are arranged so that a transaction's first statement is a write:
//! on SQLite a transaction that reads first and writes later can fail with
//! SQLITE_BUSY when another writer commits in between, which busy_timeout
//! cannot wait out. Existence checks therefore come from constraint
//! violations (foreign key, unique) rather than from reads beforehand, and
//! updates are optimistic (compare-and-set on `update_time`).

use custodian_privacy::{
    Privacy,
    audit::Event,
    crypto::DataKey,
    vault::{EMAIL, PHONE},
};
use custodian_runtime::{ApiError, Database, paging::Page, time::now_micros};
use sqlx::{AssertSqlSafe, Row as _, any::AnyRow};

use crate::model::{ALL_KINDS, Attrs, Kind, PersonData, Record};

/// A tenant row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRow {
    pub id: String,
    pub display_name: String,
    /// JSON of the tenant's retention rules.
    pub retention: String,
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

/// A legal hold row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRow {
    pub id: String,
    pub tenant_id: Option<String>,
    pub email_index: Option<String>,
    pub phone_index: Option<String>,
    pub reason: String,
    pub create_time: i64,
}

#[derive(Clone, Debug)]
pub struct Store {
    db: Database,
    privacy: Privacy,
}

/// SQL for one kind of record: the table name is a trusted constant.
fn sql(kind: Kind, template: &str) -> AssertSqlSafe<String> {
    AssertSqlSafe(template.replace("{t}", kind.table))
}

/// A record with its subject's wrapped data key, in one read.
const SELECT_RECORD: &str = "SELECT r.tenant_id, r.id, r.subject_id, r.data, r.attrs, r.create_time, r.update_time, \
     k.wrapped_key FROM {t} r JOIN subject_keys k ON k.service = 'identity' AND k.id = r.subject_id";

/// Rows whose tenant or subject is under a legal hold are left alone by
/// retention.
const NOT_HELD: &str = "tenant_id NOT IN (SELECT tenant_id FROM legal_holds WHERE tenant_id IS NOT NULL) \
     AND (email_key IS NULL OR email_key NOT IN (SELECT email_index FROM legal_holds WHERE email_index IS NOT NULL)) \
     AND (phone_key IS NULL OR phone_key NOT IN (SELECT phone_index FROM legal_holds WHERE phone_index IS NOT NULL))";

fn tenant_from_row(row: &AnyRow) -> Result<TenantRow, ApiError> {
    Ok(TenantRow {
        id: row.try_get("id")?,
        display_name: row.try_get("display_name")?,
        retention: row.try_get("retention")?,
        create_time: row.try_get("create_time")?,
        update_time: row.try_get("update_time")?,
    })
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
pub fn next_update_time(previous: i64) -> i64 {
    now_micros().max(previous + 1)
}

/// Fills an event template with what only the store knows.
fn stamp(template: &Event, resource: String, subject_ref: &str) -> Event {
    Event {
        resource,
        subject_ref: subject_ref.to_owned(),
        ..template.clone()
    }
}

impl Store {
    pub fn new(db: Database, privacy: Privacy) -> Self {
        Self { db, privacy }
    }

    pub fn privacy(&self) -> &Privacy {
        &self.privacy
    }

    /// The blind indexes a record is looked up by.
    fn lookup_keys(&self, data: &PersonData) -> (Option<String>, Option<String>) {
        let vault = &self.privacy.vault;
        let key = |domain: &str, s: &str| (!s.is_empty()).then(|| vault.blind_index(domain, s));
        (key(EMAIL, &data.email), key(PHONE, &data.phone))
    }

    pub fn email_index(&self, email: &str) -> String {
        self.privacy.vault.blind_index(EMAIL, email)
    }

    pub fn phone_index(&self, phone: &str) -> String {
        self.privacy.vault.blind_index(PHONE, phone)
    }

    fn open_record(&self, kind: Kind, row: &AnyRow) -> Result<Record, ApiError> {
        let tenant_id: String = row.try_get("tenant_id")?;
        let id: String = row.try_get("id")?;
        let subject_id: String = row.try_get("subject_id")?;
        let key = self
            .privacy
            .vault
            .unwrap(&subject_id, &row.try_get::<String, _>("wrapped_key")?)?;
        let sealed: String = row.try_get("data")?;
        let plain = self
            .privacy
            .vault
            .open(&key, &sealed, &kind.resource_name(&tenant_id, &id))?;
        let attrs: String = row.try_get("attrs")?;
        Ok(Record {
            data: serde_json::from_slice(&plain).map_err(ApiError::internal)?,
            attrs: serde_json::from_str(&attrs).map_err(ApiError::internal)?,
            tenant_id,
            id,
            subject_id,
            create_time: row.try_get("create_time")?,
            update_time: row.try_get("update_time")?,
        })
    }

    fn seal(&self, kind: Kind, record: &Record, key: &DataKey) -> Result<String, ApiError> {
        let plain = json(&record.data)?;
        Ok(self.privacy.vault.seal(
            key,
            plain.as_bytes(),
            &kind.resource_name(&record.tenant_id, &record.id),
        ))
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
            "INSERT INTO tenants (id, display_name, retention, create_time, update_time) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&tenant.id)
        .bind(&tenant.display_name)
        .bind(&tenant.retention)
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
            "SELECT id, display_name, retention, create_time, update_time FROM tenants WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("tenants/{id}")))?;
        tenant_from_row(&row)
    }

    /// One page of tenants; only `only` when the caller is limited to it.
    pub async fn list_tenants(
        &self,
        page: &Page,
        only: Option<&str>,
    ) -> Result<Vec<TenantRow>, ApiError> {
        let rows = sqlx::query(
            "SELECT id, display_name, retention, create_time, update_time FROM tenants \
             WHERE id > $1 AND ($2 = '' OR id = $2) ORDER BY id LIMIT $3",
        )
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(only.unwrap_or(""))
        .bind(page.fetch_limit())
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(tenant_from_row).collect()
    }

    pub async fn update_tenant(
        &self,
        id: &str,
        display_name: Option<&str>,
        retention: Option<&str>,
    ) -> Result<TenantRow, ApiError> {
        let row = sqlx::query(
            "UPDATE tenants SET display_name = COALESCE($1, display_name), retention = COALESCE($2, retention), \
             update_time = $3 WHERE id = $4 \
             RETURNING id, display_name, retention, create_time, update_time",
        )
        .bind(display_name)
        .bind(retention)
        .bind(now_micros())
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("tenants/{id}")))?;
        tenant_from_row(&row)
    }

    /// Deletes a tenant. Without `force`, only when no person record is held
    /// for it: deleting personal data should never be a side effect. With
    /// it, the tenant's records go too, each audited, and their subjects'
    /// keys are destroyed when nothing else needs them.
    pub async fn delete_tenant(
        &self,
        id: &str,
        force: bool,
        template: &Event,
    ) -> Result<(), ApiError> {
        let mut tx = self.db.pool().begin().await?;
        if !force {
            let deleted = sqlx::query(
                "DELETE FROM tenants WHERE id = $1 \
                 AND NOT EXISTS (SELECT 1 FROM users WHERE tenant_id = $1) \
                 AND NOT EXISTS (SELECT 1 FROM contacts WHERE tenant_id = $1)",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            if deleted.rows_affected() == 0 {
                drop(tx);
                // Tell "not there" from "still holds people".
                self.get_tenant(id).await?;
                return Err(ApiError::FailedPrecondition(format!(
                    "tenants/{id} still has authorized users or contacts; delete them first or set force"
                )));
            }
            tx.commit().await?;
            return Ok(());
        }
        let mut events = Vec::new();
        let mut subjects = Vec::new();
        for kind in ALL_KINDS.into_iter().filter(|k| k.tenant_scoped) {
            let rows = sqlx::query(sql(
                kind,
                "DELETE FROM {t} WHERE tenant_id = $1 RETURNING id, subject_id",
            ))
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                let record_id: String = row.try_get("id")?;
                let subject_id: String = row.try_get("subject_id")?;
                events.push(stamp(
                    template,
                    kind.resource_name(id, &record_id),
                    &subject_id,
                ));
                subjects.push(subject_id);
            }
        }
        let deleted = sqlx::query("DELETE FROM tenants WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(ApiError::not_found(format!("tenants/{id}")));
        }
        sqlx::query("DELETE FROM idempotency_keys WHERE resource LIKE $1")
            .bind(format!("tenants/{id}/%"))
            .execute(&mut *tx)
            .await?;
        self.shred_unused(&mut tx, &subjects).await?;
        self.privacy.audit.append_in_tx(&mut tx, &events).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Destroys the data keys of these subjects that no record uses any more.
    async fn shred_unused(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        subjects: &[String],
    ) -> Result<(), ApiError> {
        let mut seen = std::collections::BTreeSet::new();
        for subject in subjects.iter().filter(|s| seen.insert(s.as_str())) {
            sqlx::query(
                "DELETE FROM subject_keys WHERE service = 'identity' AND id = $1 \
                 AND NOT EXISTS (SELECT 1 FROM users WHERE subject_id = $1) \
                 AND NOT EXISTS (SELECT 1 FROM contacts WHERE subject_id = $1) \
                 AND NOT EXISTS (SELECT 1 FROM evaluation_signups WHERE subject_id = $1)",
            )
            .bind(subject)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    // --- person records --------------------------------------------------

    /// Inserts a record, sealed under its subject's key, with its audit
    /// event, in one transaction.
    pub async fn create_record(
        &self,
        kind: Kind,
        mut record: Record,
        idem: Option<&Idempotency>,
        template: &Event,
    ) -> Result<Created<Record>, ApiError> {
        if let Some(idem) = idem
            && let Some(resource) = self.replayed(idem).await?
        {
            return Ok(Created::Replayed(resource));
        }
        let (email_key, phone_key) = self.lookup_keys(&record.data);
        let mut tx = self.db.pool().begin().await?;
        let (subject_id, key) = self
            .privacy
            .vault
            .subject_key(&mut tx, email_key.as_deref())
            .await?;
        record.subject_id = subject_id;
        let inserted = sqlx::query(sql(
            kind,
            "INSERT INTO {t} (tenant_id, id, subject_id, data, attrs, email_key, phone_key, create_time, update_time) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        ))
        .bind(&record.tenant_id)
        .bind(&record.id)
        .bind(&record.subject_id)
        .bind(self.seal(kind, &record, &key)?)
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
        self.privacy
            .audit
            .append_in_tx(&mut tx, &[stamp(template, name, &record.subject_id)])
            .await?;
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
            None => Err(ApiError::internal(std::io::Error::other(
                "idempotency key vanished",
            ))),
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
            &format!("{SELECT_RECORD} WHERE r.tenant_id = $1 AND r.id = $2"),
        ))
        .bind(tenant_id)
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?
        .ok_or_else(|| ApiError::not_found(kind.resource_name(tenant_id, id)))?;
        self.open_record(kind, &row)
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
        let email_key = email.map(|e| self.email_index(e));
        let rows = sqlx::query(sql(
            kind,
            &format!(
                "{SELECT_RECORD} WHERE r.tenant_id = $1 AND ($2 = '' OR r.email_key = $2) AND r.id > $3 \
                 ORDER BY r.id LIMIT $4"
            ),
        ))
        .bind(tenant_id)
        .bind(email_key.unwrap_or_default())
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(page.fetch_limit())
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(|r| self.open_record(kind, r)).collect()
    }

    /// Reads a record, lets `change` edit it, and writes it back (with its
    /// audit event) only if no one else wrote in between; else retries.
    pub async fn update_record<F>(
        &self,
        kind: Kind,
        tenant_id: &str,
        id: &str,
        template: &Event,
        mut change: F,
    ) -> Result<Record, ApiError>
    where
        F: FnMut(&mut Record) -> Result<(), ApiError>,
    {
        const ATTEMPTS: usize = 5;
        for _ in 0..ATTEMPTS {
            let before = self.get_record(kind, tenant_id, id).await?;
            let mut record = before.clone();
            change(&mut record)?;
            record.update_time = next_update_time(before.update_time);
            if self
                .replace_records(&[(kind, before, record.clone())], template)
                .await?
            {
                return Ok(record);
            }
        }
        Err(ApiError::Unavailable(format!(
            "{} is being changed concurrently; retry",
            kind.resource_name(tenant_id, id)
        )))
    }

    /// Writes corrected records (each as (kind, before, after)) at once, or
    /// none; false if any changed since it was read. A record whose email
    /// changed moves to the data key of the subject with the new email.
    pub async fn replace_records(
        &self,
        changes: &[(Kind, Record, Record)],
        template: &Event,
    ) -> Result<bool, ApiError> {
        // Keys of unchanged subjects are read before the transaction, which
        // must begin with a write (see the module comment). A key read here
        // stays valid: if it is destroyed meanwhile, so is the record, and
        // the compare-and-set below fails.
        let mut kept = std::collections::HashMap::new();
        for (_, before, after) in changes {
            if after.data.email == before.data.email && !kept.contains_key(&before.subject_id) {
                let row = sqlx::query(
                    "SELECT wrapped_key FROM subject_keys WHERE service = 'identity' AND id = $1",
                )
                .bind(&before.subject_id)
                .fetch_optional(self.db.pool())
                .await?;
                let Some(row) = row else { return Ok(false) };
                let key = self.privacy.vault.unwrap(
                    &before.subject_id,
                    &row.try_get::<String, _>("wrapped_key")?,
                )?;
                kept.insert(before.subject_id.clone(), key);
            }
        }
        let mut tx = self.db.pool().begin().await?;
        let mut events = Vec::new();
        let mut released = Vec::new();
        for (kind, before, after) in changes {
            let (email_key, phone_key) = self.lookup_keys(&after.data);
            let mut after = after.clone();
            let fresh;
            let key = if let Some(key) = kept
                .get(&before.subject_id)
                .filter(|_| after.data.email == before.data.email)
            {
                key
            } else {
                let (subject_id, key) = self
                    .privacy
                    .vault
                    .subject_key(&mut tx, email_key.as_deref())
                    .await?;
                after.subject_id = subject_id;
                released.push(before.subject_id.clone());
                fresh = key;
                &fresh
            };
            let result = sqlx::query(sql(
                *kind,
                "UPDATE {t} SET subject_id = $1, data = $2, attrs = $3, email_key = $4, phone_key = $5, update_time = $6 \
                 WHERE tenant_id = $7 AND id = $8 AND update_time = $9",
            ))
            .bind(&after.subject_id)
            .bind(self.seal(*kind, &after, key)?)
            .bind(json(&after.attrs)?)
            .bind(email_key)
            .bind(phone_key)
            .bind(after.update_time)
            .bind(&after.tenant_id)
            .bind(&after.id)
            .bind(before.update_time)
            .execute(&mut *tx)
            .await
            .map_err(|err| self.write_error(*kind, &after.tenant_id, err))?;
            if result.rows_affected() != 1 {
                return Ok(false);
            }
            events.push(Event {
                fields: changed_fields(&before.data, &after.data, &before.attrs, &after.attrs),
                ..stamp(
                    template,
                    kind.resource_name(&after.tenant_id, &after.id),
                    &after.subject_id,
                )
            });
        }
        self.shred_unused(&mut tx, &released).await?;
        self.privacy.audit.append_in_tx(&mut tx, &events).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn delete_record(
        &self,
        kind: Kind,
        tenant_id: &str,
        id: &str,
        template: &Event,
    ) -> Result<(), ApiError> {
        let name = kind.resource_name(tenant_id, id);
        let mut tx = self.db.pool().begin().await?;
        let deleted = sqlx::query(sql(
            kind,
            "DELETE FROM {t} WHERE tenant_id = $1 AND id = $2 RETURNING subject_id",
        ))
        .bind(tenant_id)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = deleted else {
            return Err(ApiError::not_found(name));
        };
        let subject_id: String = row.try_get("subject_id")?;
        // The key's request hash is derived from personal data: it goes with it.
        sqlx::query("DELETE FROM idempotency_keys WHERE resource = $1")
            .bind(&name)
            .execute(&mut *tx)
            .await?;
        self.shred_unused(&mut tx, std::slice::from_ref(&subject_id))
            .await?;
        self.privacy
            .audit
            .append_in_tx(&mut tx, &[stamp(template, name, &subject_id)])
            .await?;
        tx.commit().await?;
        Ok(())
    }

    // --- data subjects ---------------------------------------------------

    /// Every record, of every kind, whose email or phone matches.
    pub async fn find_subject(
        &self,
        email: Option<&str>,
        phone: Option<&str>,
    ) -> Result<Vec<(Kind, Record)>, ApiError> {
        let email_key = email.map(|e| self.email_index(e));
        let phone_key = phone.map(|p| self.phone_index(p));
        let mut found = Vec::new();
        for kind in ALL_KINDS {
            let rows = sqlx::query(sql(
                kind,
                &format!("{SELECT_RECORD} WHERE r.email_key = $1 OR r.phone_key = $2 ORDER BY r.tenant_id, r.id"),
            ))
            // NULL matches nothing, so an absent key never matches a row.
            .bind(email_key.as_deref())
            .bind(phone_key.as_deref())
            .fetch_all(self.db.pool())
            .await?;
            for row in &rows {
                found.push((kind, self.open_record(kind, row)?));
            }
        }
        Ok(found)
    }

    /// Deletes records and destroys their subjects' data keys (crypto-
    /// shredding) when no other record needs them, with one audit event
    /// per record, in one transaction.
    pub async fn erase_records(
        &self,
        records: &[(Kind, Record)],
        template: &Event,
    ) -> Result<(), ApiError> {
        let mut tx = self.db.pool().begin().await?;
        let mut events = Vec::new();
        for (kind, record) in records {
            let name = kind.resource_name(&record.tenant_id, &record.id);
            sqlx::query(sql(
                *kind,
                "DELETE FROM {t} WHERE tenant_id = $1 AND id = $2",
            ))
            .bind(&record.tenant_id)
            .bind(&record.id)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM idempotency_keys WHERE resource = $1")
                .bind(&name)
                .execute(&mut *tx)
                .await?;
            events.push(stamp(template, name, &record.subject_id));
        }
        let subjects: Vec<String> = records.iter().map(|(_, r)| r.subject_id.clone()).collect();
        self.shred_unused(&mut tx, &subjects).await?;
        self.privacy.audit.append_in_tx(&mut tx, &events).await?;
        tx.commit().await?;
        Ok(())
    }

    // --- retention -------------------------------------------------------

    /// Tenants with their retention rules, for the sweeper.
    pub async fn tenants_with_retention(&self) -> Result<Vec<(String, String)>, ApiError> {
        let rows = sqlx::query("SELECT id, retention FROM tenants ORDER BY id")
            .fetch_all(self.db.pool())
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("retention")?)))
            .collect()
    }

    /// Deletes up to `batch` records of `kind` held for `tenant_id` and last
    /// changed before `cutoff`, unless held; destroys unused keys; returns
    /// how many went.
    pub async fn sweep_records(
        &self,
        kind: Kind,
        tenant_id: &str,
        cutoff: i64,
        batch: i64,
    ) -> Result<i64, ApiError> {
        let mut tx = self.db.pool().begin().await?;
        let rows = sqlx::query(sql(
            kind,
            &format!(
                "DELETE FROM {{t}} WHERE tenant_id = $1 AND id IN \
                 (SELECT id FROM {{t}} WHERE tenant_id = $1 AND update_time < $2 AND {NOT_HELD} ORDER BY id LIMIT $3) \
                 RETURNING subject_id"
            ),
        ))
        .bind(tenant_id)
        .bind(cutoff)
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?;
        let subjects = rows
            .iter()
            .map(|row| row.try_get::<String, _>("subject_id"))
            .collect::<Result<Vec<_>, _>>()?;
        self.shred_unused(&mut tx, &subjects).await?;
        tx.commit().await?;
        Ok(rows.len() as i64)
    }

    /// Forgets idempotency keys older than `cutoff`: retries come within
    /// minutes, and the request hashes derive from personal data.
    pub async fn sweep_idempotency_keys(&self, cutoff: i64) -> Result<u64, ApiError> {
        Ok(
            sqlx::query("DELETE FROM idempotency_keys WHERE create_time < $1")
                .bind(cutoff)
                .execute(self.db.pool())
                .await?
                .rows_affected(),
        )
    }

    // --- legal holds -----------------------------------------------------

    pub async fn create_hold(&self, hold: &HoldRow) -> Result<(), ApiError> {
        sqlx::query(
            "INSERT INTO legal_holds (id, tenant_id, email_index, phone_index, reason, create_time) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&hold.id)
        .bind(hold.tenant_id.as_deref())
        .bind(hold.email_index.as_deref())
        .bind(hold.phone_index.as_deref())
        .bind(&hold.reason)
        .bind(hold.create_time)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    pub async fn list_holds(&self, page: &Page) -> Result<Vec<HoldRow>, ApiError> {
        let rows = sqlx::query(
            "SELECT id, tenant_id, email_index, phone_index, reason, create_time FROM legal_holds \
             WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(page.fetch_limit())
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(HoldRow {
                    id: r.try_get("id")?,
                    tenant_id: r.try_get("tenant_id")?,
                    email_index: r.try_get("email_index")?,
                    phone_index: r.try_get("phone_index")?,
                    reason: r.try_get("reason")?,
                    create_time: r.try_get("create_time")?,
                })
            })
            .collect()
    }

    pub async fn delete_hold(&self, id: &str) -> Result<(), ApiError> {
        let deleted = sqlx::query("DELETE FROM legal_holds WHERE id = $1")
            .bind(id)
            .execute(self.db.pool())
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(ApiError::not_found(format!("legalHolds/{id}")));
        }
        Ok(())
    }
}

/// Names of the fields an update changed, for its audit event.
fn changed_fields(before: &PersonData, after: &PersonData, a: &Attrs, b: &Attrs) -> Vec<String> {
    let mut fields = Vec::new();
    let mut check = |name: &str, changed: bool| {
        if changed {
            fields.push(name.to_owned());
        }
    };
    check(
        "person_name",
        before.given_name != after.given_name || before.family_name != after.family_name,
    );
    check("email", before.email != after.email);
    check("phone", before.phone != after.phone);
    check(
        "postal_address",
        before.postal_address != after.postal_address,
    );
    check("organization", before.organization != after.organization);
    check("job_title", before.job_title != after.job_title);
    check("notes", before.notes != after.notes);
    check("company", before.company != after.company);
    check(
        "nature_of_business",
        before.nature_of_business != after.nature_of_business,
    );
    check("role", a.role != b.role);
    check("state", a.state != b.state);
    fields
}

/// A new record's identity and times (its subject is chosen when it is stored).
pub fn new_record(tenant_id: &str, data: PersonData, attrs: Attrs) -> Record {
    let now = now_micros();
    Record {
        tenant_id: tenant_id.to_owned(),
        id: uuid::Uuid::now_v7().to_string(),
        subject_id: String::new(),
        data,
        attrs,
        create_time: now,
        update_time: now,
    }
}
