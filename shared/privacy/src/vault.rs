//! Encryption at rest for a service's personal fields: one data key per
//! data subject, wrapped by the active master key, and keyed blind indexes
//! for exact-match lookups.
//!
//! A service stores each record's personal fields sealed under its
//! subject's data key (with the record's resource name as associated data,
//! so a sealed value copied to another row does not open), and looks records
//! up by blind index, never by plaintext. Erasure deletes the rows and then
//! the subject's key: every other copy of the sealed fields — replicas,
//! backups — becomes unreadable.

use std::sync::Arc;

use custodian_runtime::{ApiError, Database, time::now_micros};
use sqlx::Row as _;

use crate::crypto::{self, BlindIndexKey, CryptoError, DataKey, Keyring, WrappedKey};

/// A subject's key, made unless the email's subject already has one (the
/// unique index on the email's blind index decides, on both backends).
const INSERT_KEY: &str = "INSERT INTO subject_keys (service, id, email_index, wrapped_key, \
     master_key_id, create_time) VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (service, email_index) DO NOTHING RETURNING id";
/// The key of the subject an email's blind index names.
const SELECT_KEY: &str =
    "SELECT id, wrapped_key FROM subject_keys WHERE service = $1 AND email_index = $2";

/// Blind-index domains: equal strings in different domains index apart.
pub const EMAIL: &str = "email";
pub const PHONE: &str = "phone";

fn crypto_error(err: CryptoError) -> ApiError {
    // The error names no plaintext, key or ciphertext.
    ApiError::internal(anyhow::anyhow!("encryption: {err}"))
}

/// One service's keys and key store.
#[derive(Clone)]
pub struct Vault {
    service: &'static str,
    db: Database,
    keyring: Arc<Keyring>,
    index: Arc<BlindIndexKey>,
    /// Data keys already unwrapped, by their wrapped text, each with the
    /// subject it was unwrapped for (see [`Vault::unwrap`]).
    unwrapped: Arc<std::sync::Mutex<std::collections::HashMap<String, (String, DataKey)>>>,
}

/// Unwrapped data keys kept at most; past this the memory is simply
/// cleared, which costs one unwrap per subject read again.
const UNWRAPPED_CAPACITY: usize = 4096;

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl Vault {
    pub fn new(
        service: &'static str,
        db: Database,
        keyring: Arc<Keyring>,
        index: Arc<BlindIndexKey>,
    ) -> Self {
        Self {
            service,
            db,
            keyring,
            index,
            unwrapped: Arc::default(),
        }
    }

    pub fn service(&self) -> &'static str {
        self.service
    }

    /// The keyed blind index of a normalised value.
    pub fn blind_index(&self, domain: &str, normalized: &str) -> String {
        self.index.index(domain, normalized)
    }

    fn aad(&self, subject_id: &str) -> Vec<u8> {
        format!("{}/{subject_id}", self.service).into_bytes()
    }

    /// The data key of the subject known by `email_index`, made on first
    /// use; a subject with no email gets a key of its own. Runs inside the
    /// caller's transaction, write first (see the identity store).
    ///
    /// Any backend whose statements take `$n` placeholders: a service's
    /// native SQLite or PostgreSQL transaction as well as sqlx's `Any`.
    pub async fn subject_key<DB>(
        &self,
        tx: &mut sqlx::Transaction<'_, DB>,
        email_index: Option<&str>,
    ) -> Result<(String, DataKey), ApiError>
    where
        DB: sqlx::Database,
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
        DB::Arguments: sqlx::IntoArguments<DB>,
        String: for<'q> sqlx::Encode<'q, DB> + for<'r> sqlx::Decode<'r, DB> + sqlx::Type<DB>,
        Option<String>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        for<'s> &'s str: sqlx::ColumnIndex<DB::Row>,
    {
        let (id, fresh, wrapped) = self.fresh_key();
        let inserted = sqlx::query::<DB>(INSERT_KEY)
            .bind(self.service.to_owned())
            .bind(id.clone())
            .bind(email_index.map(str::to_owned))
            .bind(wrapped.to_text())
            .bind(wrapped.master_key_id.clone())
            .bind(now_micros())
            .fetch_optional(&mut **tx)
            .await?;
        if inserted.is_some() {
            return Ok((id, fresh));
        }
        let row = sqlx::query::<DB>(SELECT_KEY)
            .bind(self.service.to_owned())
            .bind(email_index.map(str::to_owned))
            .fetch_one(&mut **tx)
            .await?;
        let id: String = row.try_get("id")?;
        let key = self.unwrap(&id, &row.try_get::<String, _>("wrapped_key")?)?;
        Ok((id, key))
    }

    /// As [`Self::subject_key`], in a native SQLite transaction (the kit's
    /// grouped writer, see `SqliteWriter`).
    pub fn subject_key_sqlite(
        &self,
        conn: &rusqlite::Connection,
        email_index: Option<&str>,
    ) -> Result<(String, DataKey), ApiError> {
        use rusqlite::OptionalExtension as _;
        let (id, fresh, wrapped) = self.fresh_key();
        let inserted = conn
            .prepare_cached(INSERT_KEY)
            .and_then(|mut insert| {
                insert
                    .query_row(
                        rusqlite::params![
                            self.service,
                            id,
                            email_index,
                            wrapped.to_text(),
                            wrapped.master_key_id,
                            now_micros()
                        ],
                        |r| r.get::<_, String>(0),
                    )
                    .optional()
            })
            .map_err(ApiError::internal)?;
        if inserted.is_some() {
            return Ok((id, fresh));
        }
        let (id, wrapped_text) = conn
            .prepare_cached(SELECT_KEY)
            .and_then(|mut select| {
                select.query_row(rusqlite::params![self.service, email_index], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
            })
            .map_err(ApiError::internal)?;
        let key = self.unwrap(&id, &wrapped_text)?;
        Ok((id, key))
    }

    /// As [`Self::subject_key`] for a group of creates at once, on the
    /// native PostgreSQL driver: one statement makes every key still
    /// missing, one more reads the others. Each email's answer is in its
    /// place; the same email twice gets the same subject, and no email a
    /// subject of its own.
    pub async fn subject_keys_pg(
        &self,
        conn: &mut sqlx::PgConnection,
        emails: &[Option<&str>],
    ) -> Result<Vec<(String, DataKey)>, ApiError> {
        let fresh: Vec<_> = emails.iter().map(|_| self.fresh_key()).collect();
        let made: std::collections::HashSet<String> = sqlx::query_scalar(
            "INSERT INTO subject_keys (service, id, email_index, wrapped_key, master_key_id, \
             create_time) SELECT $1, k.* FROM UNNEST($2::TEXT[], $3::TEXT[], $4::TEXT[], \
             $5::TEXT[], $6::BIGINT[]) AS k ON CONFLICT (service, email_index) DO NOTHING \
             RETURNING id",
        )
        .bind(self.service)
        .bind(
            fresh
                .iter()
                .map(|(id, _, _)| id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(emails)
        .bind(
            fresh
                .iter()
                .map(|(_, _, w)| w.to_text())
                .collect::<Vec<_>>(),
        )
        .bind(
            fresh
                .iter()
                .map(|(_, _, w)| w.master_key_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(vec![now_micros(); emails.len()])
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .collect();
        let wanted: Vec<&str> = emails
            .iter()
            .zip(&fresh)
            .filter(|(_, (id, _, _))| !made.contains(id))
            .filter_map(|(email, _)| *email)
            .collect();
        let mut known = std::collections::HashMap::new();
        if !wanted.is_empty() {
            let rows: Vec<(String, String, String)> = sqlx::query_as(
                "SELECT email_index, id, wrapped_key FROM subject_keys \
                 WHERE service = $1 AND email_index = ANY($2)",
            )
            .bind(self.service)
            .bind(&wanted)
            .fetch_all(&mut *conn)
            .await?;
            for (email, id, wrapped) in rows {
                let key = self.unwrap(&id, &wrapped)?;
                known.insert(email, (id, key));
            }
        }
        emails
            .iter()
            .zip(fresh)
            .map(|(email, (id, key, _))| {
                if made.contains(&id) {
                    return Ok((id, key));
                }
                email
                    .and_then(|e| known.get(e))
                    .map(|(id, key)| (id.clone(), key.clone()))
                    .ok_or_else(|| {
                        ApiError::internal(std::io::Error::other(
                            "a subject key was neither made nor found",
                        ))
                    })
            })
            .collect()
    }

    /// The data key of `subject_id` read inside the caller's transaction,
    /// `None` once destroyed: for a key a service made with
    /// [`Self::subject_key`] to seal what it keeps beside its records (a
    /// survey's free text), read where a second connection from the pool
    /// must not be waited for.
    pub async fn key_of(
        &self,
        conn: &mut sqlx::AnyConnection,
        subject_id: &str,
    ) -> Result<Option<DataKey>, ApiError> {
        let row =
            sqlx::query("SELECT wrapped_key FROM subject_keys WHERE service = $1 AND id = $2")
                .bind(self.service)
                .bind(subject_id)
                .fetch_optional(&mut *conn)
                .await?;
        row.map(|r| self.unwrap(subject_id, &r.try_get::<String, _>("wrapped_key")?))
            .transpose()
    }

    /// A new subject's id and data key, the key wrapped for storing.
    fn fresh_key(&self) -> (String, DataKey, WrappedKey) {
        let id = uuid::Uuid::now_v7().to_string();
        let fresh = DataKey::generate();
        let wrapped = self.keyring.wrap(&fresh, &self.aad(&id));
        (id, fresh, wrapped)
    }

    /// Opens a wrapped key read together with a record.
    ///
    /// Every read of a sealed record unwraps its subject's key: parsing the
    /// text, opening it under the master key and making the data key's AES
    /// schedule cost about as much as the rest of the decryption. A key
    /// unwrapped once is kept by its wrapped text, which every caller still
    /// reads from its subject's row: a destroyed key's row is gone, so
    /// nothing the row no longer holds is ever opened from here. It is
    /// given only for the subject it was unwrapped for; for any other the
    /// full unwrap runs, and fails on the associated data as before.
    pub fn unwrap(&self, subject_id: &str, wrapped_text: &str) -> Result<DataKey, ApiError> {
        if let Ok(unwrapped) = self.unwrapped.lock()
            && let Some((subject, key)) = unwrapped.get(wrapped_text)
            && subject == subject_id
        {
            return Ok(key.clone());
        }
        let wrapped = WrappedKey::from_text(wrapped_text).map_err(crypto_error)?;
        let key = self
            .keyring
            .unwrap(&wrapped, &self.aad(subject_id))
            .map_err(crypto_error)?;
        if let Ok(mut unwrapped) = self.unwrapped.lock() {
            if unwrapped.len() >= UNWRAPPED_CAPACITY {
                unwrapped.clear();
            }
            unwrapped.insert(
                wrapped_text.to_owned(),
                (subject_id.to_owned(), key.clone()),
            );
        }
        Ok(key)
    }

    /// Drops what this process keeps unwrapped of a subject's key; whoever
    /// deletes a key's row calls it. A read that took the row just before
    /// may keep the key again, until the memory is next cleared: it still
    /// opens nothing, as no later read finds the row.
    pub fn forget(&self, subject_id: &str) {
        if let Ok(mut unwrapped) = self.unwrapped.lock() {
            unwrapped.retain(|_, (subject, _)| subject != subject_id);
        }
    }

    pub fn seal(&self, key: &DataKey, plaintext: &[u8], aad: &str) -> String {
        crypto::encrypt(key, plaintext, aad.as_bytes())
    }

    pub fn open(&self, key: &DataKey, sealed: &str, aad: &str) -> Result<Vec<u8>, ApiError> {
        crypto::decrypt(key, sealed, aad.as_bytes()).map_err(crypto_error)
    }

    /// Destroys a subject's data key (crypto-shredding). The caller decides
    /// when no record needs it any more.
    pub async fn destroy_key<DB>(
        &self,
        tx: &mut sqlx::Transaction<'_, DB>,
        subject_id: &str,
    ) -> Result<(), ApiError>
    where
        DB: sqlx::Database,
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
        DB::Arguments: sqlx::IntoArguments<DB>,
        String: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    {
        sqlx::query::<DB>("DELETE FROM subject_keys WHERE service = $1 AND id = $2")
            .bind(self.service.to_owned())
            .bind(subject_id.to_owned())
            .execute(&mut **tx)
            .await?;
        // Whether or not the transaction commits: a key dropped here is
        // only unwrapped again from its row.
        self.forget(subject_id);
        Ok(())
    }

    /// Rewraps every data key still under an older master key with the
    /// active one, `batch` at a time; returns how many were rewrapped. Safe
    /// while serving: each row is replaced only if it did not change.
    pub async fn rewrap_all(&self, batch: i64) -> Result<u64, ApiError> {
        let active = self.keyring.active_id().to_owned();
        let mut total = 0;
        loop {
            let rows = sqlx::query(
                "SELECT id, wrapped_key FROM subject_keys WHERE service = $1 AND master_key_id <> $2 LIMIT $3",
            )
            .bind(self.service)
            .bind(&active)
            .bind(batch)
            .fetch_all(self.db.pool())
            .await?;
            if rows.is_empty() {
                return Ok(total);
            }
            let mut progressed = false;
            for row in rows {
                let id: String = row.try_get("id")?;
                let old: String = row.try_get("wrapped_key")?;
                let wrapped = WrappedKey::from_text(&old).map_err(crypto_error)?;
                let new = self
                    .keyring
                    .rewrap(&wrapped, &self.aad(&id))
                    .map_err(crypto_error)?;
                let done = sqlx::query(
                    "UPDATE subject_keys SET wrapped_key = $1, master_key_id = $2 \
                     WHERE service = $3 AND id = $4 AND wrapped_key = $5",
                )
                .bind(new.to_text())
                .bind(&new.master_key_id)
                .bind(self.service)
                .bind(&id)
                .bind(&old)
                .execute(self.db.pool())
                .await?;
                if done.rows_affected() == 1 {
                    total += 1;
                    progressed = true;
                }
            }
            if !progressed {
                return Ok(total);
            }
        }
    }

    /// How many data keys each master key wraps, for operators.
    pub async fn key_usage(&self) -> Result<Vec<(String, i64)>, ApiError> {
        let rows = sqlx::query(
            "SELECT master_key_id, COUNT(*) AS n FROM subject_keys WHERE service = $1 GROUP BY master_key_id ORDER BY master_key_id",
        )
        .bind(self.service)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("master_key_id")?, r.try_get("n")?)))
            .collect()
    }
}

impl Vault {
    /// Master keys that wrap this service's data keys but are missing from
    /// the key file: its data could not be read, located or erased.
    pub async fn missing_master_keys(&self) -> Result<Vec<String>, ApiError> {
        let rows = sqlx::query(
            "SELECT DISTINCT master_key_id FROM subject_keys WHERE service = $1 ORDER BY master_key_id",
        )
        .bind(self.service)
        .fetch_all(self.db.pool())
        .await?;
        let known: Vec<&str> = self.keyring.key_ids().collect();
        let mut missing = Vec::new();
        for row in rows {
            let id: String = row.try_get("master_key_id")?;
            if !known.contains(&id.as_str()) {
                missing.push(id);
            }
        }
        Ok(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;

    async fn vault(dir: &tempfile::TempDir) -> Vault {
        let url = format!("sqlite://{}", dir.path().join("vault.db").display());
        let db = Database::connect_lazy(&url, 2).unwrap();
        crate::context::migrate(&db, "vaulttest").await.unwrap();
        let keyring = Keyring::new("mk-1", [MasterKey::generate("mk-1").unwrap()]).unwrap();
        Vault::new(
            "vaulttest",
            db,
            Arc::new(keyring),
            Arc::new(BlindIndexKey::generate()),
        )
    }

    fn kept(vault: &Vault) -> Vec<String> {
        let unwrapped = vault.unwrapped.lock().unwrap();
        unwrapped
            .values()
            .map(|(subject, _)| subject.clone())
            .collect()
    }

    /// A key kept unwrapped opens what its subject's key opens, and is
    /// never given for another subject: a wrapped key copied into another
    /// subject's row fails as it did before anything was kept.
    #[tokio::test]
    async fn an_unwrapped_key_is_given_only_for_its_own_subject() {
        let dir = tempfile::tempdir().unwrap();
        let vault = vault(&dir).await;
        let (id, key, wrapped) = vault.fresh_key();
        let text = wrapped.to_text();
        let sealed = vault.seal(&key, b"Ann Archer", "contacts/1");
        for _ in 0..2 {
            let again = vault.unwrap(&id, &text).unwrap();
            assert_eq!(
                vault.open(&again, &sealed, "contacts/1").unwrap(),
                b"Ann Archer"
            );
        }
        assert_eq!(kept(&vault), std::slice::from_ref(&id));
        let other = uuid::Uuid::now_v7().to_string();
        assert!(vault.unwrap(&other, &text).is_err());
        assert_eq!(kept(&vault), [id]);
    }

    /// Destroying a subject's key also drops what this process kept of it.
    #[tokio::test]
    async fn a_destroyed_key_is_no_longer_kept() {
        let dir = tempfile::tempdir().unwrap();
        let vault = vault(&dir).await;
        let mut tx = vault.db.pool().begin().await.unwrap();
        let (id, _) = vault.subject_key(&mut tx, None).await.unwrap();
        tx.commit().await.unwrap();
        let text: String = sqlx::query_scalar(
            "SELECT wrapped_key FROM subject_keys WHERE service = $1 AND id = $2",
        )
        .bind("vaulttest")
        .bind(&id)
        .fetch_one(vault.db.pool())
        .await
        .unwrap();
        vault.unwrap(&id, &text).unwrap();
        assert_eq!(kept(&vault), std::slice::from_ref(&id));
        let mut tx = vault.db.pool().begin().await.unwrap();
        vault.destroy_key(&mut tx, &id).await.unwrap();
        tx.commit().await.unwrap();
        assert!(kept(&vault).is_empty());
    }
}
