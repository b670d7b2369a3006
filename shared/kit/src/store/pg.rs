//! Creates on PostgreSQL, grouped. One create through sqlx's `Any` driver
//! was six round trips (begin, the subject's key twice, the record, its
//! audit event, commit), and under h2load each cost the database about as
//! much CPU as the service: 1.8k creates/s with both processes busy. Here
//! the creates that queue while a group is at the database go together
//! into one transaction, a statement per step for the whole group (the
//! subjects' keys, each table's records, the idempotency keys, the audit
//! events), on sqlx's native driver. If any statement of a group fails (a
//! duplicate, a missing tenant, a retry racing its first call), the group
//! is rolled back and each of its creates runs alone, so every caller gets
//! its own answer, as before. When the database is away there is no such
//! answer to find: the whole group is answered UNAVAILABLE at once.

use std::sync::{Arc, Weak};

use custodian_privacy::audit::Event;
use custodian_runtime::{ApiError, database::native::PgNative};
use prost_reflect::DynamicMessage;
use sqlx::{AssertSqlSafe, Connection as _, postgres::PgConnectOptions};
use tokio::sync::{mpsc, oneshot};

use super::{Arg, Binding, Idempotency, Insert, Refused, StoreInner, Subject, bind};
use crate::store::Store;

/// Creates taken into one group at most (a statement's arguments grow
/// with it; PostgreSQL takes 65,535).
const GROUP: usize = 64;

/// One create waiting for its group.
pub(super) struct Create {
    pub insert: Insert,
    pub reply: oneshot::Sender<Result<(String, DynamicMessage), Refused>>,
}

/// Starts the group loop of a store; it ends with the store.
fn start(store: &Store) -> Result<mpsc::UnboundedSender<Create>, ApiError> {
    let options: PgConnectOptions = store.db().url().parse().map_err(ApiError::from)?;
    let (queue, creates) = mpsc::unbounded_channel();
    tokio::spawn(serve(Arc::downgrade(&store.inner), options, creates));
    Ok(queue)
}

async fn serve(
    store: Weak<StoreInner>,
    options: PgConnectOptions,
    mut creates: mpsc::UnboundedReceiver<Create>,
) {
    let mut connection = PgNative::new(options);
    let mut group = Vec::with_capacity(GROUP);
    while creates.recv_many(&mut group, GROUP).await > 0 {
        let Some(inner) = store.upgrade() else { return };
        let store = Store { inner };
        let conn = match connection.get().await {
            Ok((conn, _)) => conn,
            Err(err) => {
                let err = ApiError::from(err).uncommitted();
                answer_all(&mut group, &err);
                continue;
            }
        };
        let grouped = if group.len() > 1 {
            Some(store.insert_group(conn, &group).await)
        } else {
            None
        };
        match grouped {
            Some(Ok(subjects)) => {
                store.privacy().audit.wake();
                for (create, subject) in group.drain(..).zip(subjects) {
                    let _ = create.reply.send(Ok((subject, create.insert.message)));
                }
                continue;
            }
            // The database is away: alone, each would only fail the same
            // way, one connection attempt after another.
            Some(Err(err)) if err.fault().is_some() => {
                connection.failed();
                answer_all(&mut group, &err);
                continue;
            }
            _ => {}
        }
        // One at a time, each in its own transaction: its own answer.
        let mut broken = false;
        for create in group.drain(..) {
            let outcome = match conn.begin().await {
                Ok(tx) => store.insert_tx(tx, create.insert).await,
                Err(err) => Err(Refused::Failed(ApiError::from(err).uncommitted())),
            };
            if let Err(Refused::Failed(err)) = &outcome
                && err.fault().is_some()
            {
                broken = true;
            }
            let _ = create.reply.send(outcome);
        }
        if broken {
            connection.failed();
        }
    }
}

/// Answers every create of `group` with a database fault.
fn answer_all(group: &mut Vec<Create>, err: &ApiError) {
    for create in group.drain(..) {
        let each = match err.fault() {
            Some(unavailable) => ApiError::Database(unavailable),
            None => super::internal("the group's connection failed"),
        };
        let _ = create.reply.send(Err(Refused::Failed(each)));
    }
}

impl Store {
    /// Queues a create for its group, starting the group loop on first use.
    pub(super) fn insert_grouped(&self, create: Create) -> Result<(), ApiError> {
        let queue = match self.inner.pg_creates.get() {
            Some(queue) => queue,
            None => {
                let queue = start(self)?;
                self.inner.pg_creates.get_or_init(|| queue)
            }
        };
        queue
            .send(create)
            .map_err(|_| ApiError::Unavailable("the create loop has stopped".into()))
    }

    /// A group's creates in one transaction; returns each one's subject.
    /// On an error nothing of it is kept.
    async fn insert_group(
        &self,
        conn: &mut sqlx::PgConnection,
        group: &[Create],
    ) -> Result<Vec<String>, ApiError> {
        let mut tx = conn.begin().await.map_err(ApiError::from)?;
        let subjects = self
            .stage_group(&mut tx, group)
            .await
            .map_err(ApiError::uncommitted)?;
        tx.commit().await?;
        Ok(subjects)
    }

    /// Everything of a group's creates, in `tx`, not yet committed;
    /// returns each one's subject.
    async fn stage_group(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        group: &[Create],
    ) -> Result<Vec<String>, ApiError> {
        let emails: Vec<Option<&str>> = group
            .iter()
            .filter(|c| matches!(c.insert.subject, Subject::ByEmail))
            .map(|c| c.insert.row.email_key.as_deref())
            .collect();
        let mut made = self
            .vault()
            .subject_keys_pg(&mut *tx, &emails)
            .await?
            .into_iter();
        let mut keys = Vec::with_capacity(group.len());
        for create in group {
            keys.push(match &create.insert.subject {
                Subject::Known(subject, key) => (subject.clone(), key.clone()),
                Subject::ByEmail => made
                    .next()
                    .ok_or_else(|| super::internal("a subject key went missing"))?,
            });
        }
        // Each table's records in one statement.
        let mut tables: Vec<(&Binding, Vec<Vec<Arg>>)> = Vec::new();
        for (create, (subject_id, key)) in group.iter().zip(&keys) {
            let args = self.insert_args(&create.insert, subject_id, key);
            match tables
                .iter_mut()
                .find(|(b, _)| std::ptr::eq(*b, &*create.insert.binding))
            {
                Some((_, rows)) => rows.push(args),
                None => tables.push((&create.insert.binding, vec![args])),
            }
        }
        for (binding, rows) in tables {
            let sql = binding.insert_sql_rows(rows.len());
            let mut q = sqlx::query::<sqlx::Postgres>(AssertSqlSafe(sql));
            for arg in rows.iter().flatten() {
                q = bind(q, arg);
            }
            q.execute(&mut **tx).await?;
        }
        // Every idempotency key at once; one already taken (a retry racing
        // its first call) makes the group fall back, and the retry alone is
        // answered as a replay.
        let keyed: Vec<(&Idempotency, &str)> = group
            .iter()
            .filter_map(|c| c.insert.idem.as_ref().map(|i| (i, c.insert.name.as_str())))
            .collect();
        if !keyed.is_empty() {
            let remembered: Vec<String> = sqlx::query_scalar(
                "INSERT INTO kit_idempotency (service, scope, request_id, request_hash, \
                 resource, create_time) SELECT $1, k.*, $6 FROM UNNEST($2::TEXT[], $3::TEXT[], \
                 $4::TEXT[], $5::TEXT[]) AS k \
                 ON CONFLICT (service, scope, request_id) DO NOTHING RETURNING request_id",
            )
            .bind(self.service())
            .bind(
                keyed
                    .iter()
                    .map(|(i, _)| i.scope.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                keyed
                    .iter()
                    .map(|(i, _)| i.request_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                keyed
                    .iter()
                    .map(|(i, _)| i.request_hash.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(keyed.iter().map(|(_, name)| *name).collect::<Vec<_>>())
            .bind(self.now())
            .fetch_all(&mut **tx)
            .await?;
            if remembered.len() != keyed.len() {
                return Err(super::internal("an idempotency key was taken"));
            }
        }
        let events: Vec<Event> = group
            .iter()
            .zip(&keys)
            .map(|(create, (subject_id, _))| create.insert.event_of(subject_id))
            .collect();
        self.privacy().audit.stage_in_tx(tx, &events).await?;
        Ok(keys.into_iter().map(|(subject_id, _)| subject_id).collect())
    }
}
