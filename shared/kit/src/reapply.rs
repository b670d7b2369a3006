//! Before a service answers, its database is made to reflect the erasure
//! log again: every entry of the service that the database does not
//! reflect (it was restored from a backup taken before the erasure, or the
//! erase failed after the entry was written) is applied through the
//! service's own erase, the same door an erasure goes through (records
//! deleted or anonymised, children, key shredding, survey links, usage
//! events, audit events), the data keys it destroyed are destroyed again,
//! and the mail it sent the person is deleted.
//!
//! The database keeps how far it reflects the log: a watermark (with the
//! log's id) and the entries above it it erased while serving. A restored
//! database restores its watermark too, which is what makes the newer
//! entries apply again; a database that reflects everything costs two
//! small queries.

use custodian_privacy::{Actor, Method, Privacy, Purpose};
use custodian_proto::{
    audit::v1::AuditAction,
    common::v1::{SubjectIdentifier, subject_identifier},
};
use custodian_runtime::ApiError;
use sqlx::Row as _;
use tonic::Code;

use crate::{
    call::Call,
    erasure::{ERASED, Entry, Erased, ErasureLog},
    module::KitService,
};

/// Who the audit trail names for what is applied again.
pub const REAPPLIER: &str = custodian_privacy::context::ERASURE_LOG_ACTOR;

const ERASE_METHOD: &str = "/custodian.subject.v1.SubjectDataService/EraseSubjectData";

/// The call an entry is applied again with: the erasure log's, for the
/// data-subject request the entry names, narrowed to the controller the
/// erase was.
pub fn call_for(
    privacy: &Privacy,
    entry: &Entry,
    scope: &str,
    path: &'static str,
    action: AuditAction,
) -> Call {
    let request = (!entry.request.is_empty()).then(|| entry.request.clone());
    Call {
        access: privacy.internal_access(
            Actor::ErasureLog {
                request: request.clone(),
                tenant: (scope != "*").then(|| scope.to_owned()),
            },
            Purpose::DsrFulfilment,
            Method {
                path,
                action,
                purposes: &[Purpose::DsrFulfilment],
            },
        ),
        deadline: None,
        request,
    }
}

/// Applies what the service's database does not reflect of the log.
pub(crate) async fn reapply(
    service: &dyn KitService,
    log: &ErasureLog,
    mailer: &dyn custodian_mail::Mailer,
) -> anyhow::Result<()> {
    let store = service.store();
    let name = service.name();
    let db = store.db().pool();
    let log_id = log.id().await?;
    let watermark = sqlx::query("SELECT log_id, seq FROM kit_erasure_watermark WHERE service = $1")
        .bind(name)
        .fetch_optional(db)
        .await?;
    let mut after = match watermark {
        Some(row) if row.try_get::<String, _>("log_id")? == log_id => row.try_get("seq")?,
        Some(_) => {
            tracing::warn!(
                service = name,
                "the erasure log is not the one this database last applied (a new or replaced \
                 log): every entry of it is applied; erasures recorded only in the old log are \
                 not known any more"
            );
            sqlx::query("DELETE FROM kit_erasures_applied WHERE service = $1")
                .bind(name)
                .execute(db)
                .await?;
            0
        }
        None => 0,
    };
    let head = log.head(name).await?;
    if after > head {
        tracing::warn!(
            service = name,
            database = after,
            log = head,
            "the erasure log holds fewer erasures than this database reflects: it was restored \
             from an older backup than the database, and the erasures recorded after that backup \
             are lost from it (a later restore of this database from before them would bring \
             those people back); new entries are numbered after what this database reflects"
        );
        log.raise_head(name, after).await?;
    }
    let applied: std::collections::BTreeSet<i64> =
        sqlx::query("SELECT seq FROM kit_erasures_applied WHERE service = $1 AND seq > $2")
            .bind(name)
            .bind(after)
            .fetch_all(db)
            .await?
            .iter()
            .map(|r| r.try_get("seq"))
            .collect::<Result<_, _>>()?;
    let mut again = 0usize;
    let mut records = 0usize;
    loop {
        let entries = log.entries(name, after).await?;
        let Some(last) = entries.last().map(|e| e.seq) else {
            break;
        };
        for entry in entries.iter().filter(|e| !applied.contains(&e.seq)) {
            let erased = match entry.kind.as_str() {
                ERASED => apply_erased(service, mailer, entry).await?,
                _ => service.restore(entry).await?,
            };
            if erased > 0 {
                again += 1;
                records += erased;
            }
            crate::erasure::mark_applied(store.db(), name, entry.seq).await?;
        }
        after = last;
    }
    // Everything up to `after` is reflected now.
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO kit_erasure_watermark (service, log_id, seq) VALUES ($1, $2, $3) \
         ON CONFLICT (service) DO UPDATE SET log_id = excluded.log_id, seq = excluded.seq",
    )
    .bind(name)
    .bind(&log_id)
    .bind(after)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM kit_erasures_applied WHERE service = $1 AND seq <= $2")
        .bind(name)
        .bind(after)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    if again > 0 {
        tracing::warn!(
            service = name,
            erasures = again,
            records,
            "erasures recorded in the erasure log were not reflected in the database (restored \
             from a backup?) and were applied again"
        );
    }
    Ok(())
}

/// Applies one erasure again; how many records and keys it found.
async fn apply_erased(
    service: &dyn KitService,
    mailer: &dyn custodian_mail::Mailer,
    entry: &Entry,
) -> Result<usize, ApiError> {
    let erased: Erased = serde_json::from_str(&entry.body).map_err(ApiError::internal)?;
    let store = service.store();
    let call = call_for(
        store.privacy(),
        entry,
        &erased.scope,
        ERASE_METHOD,
        AuditAction::Erase,
    );
    let mut names: std::collections::BTreeSet<String> = erased.records.iter().cloned().collect();
    let mut lookups = Vec::new();
    match erased.subject.split_once(':') {
        Some(("id", name)) => {
            names.insert(name.to_owned());
            lookups.push(format!(
                "user:{}",
                store.lookup_key(custodian_proto::privacy::v1::Lookup::User, name)
            ));
        }
        Some(("email" | "phone", _)) => lookups.push(erased.subject.clone()),
        _ => {}
    }
    // What the subject's keys find in this database that was there when
    // the erasure ran: records deleted before it but kept in a backup.
    names.extend(store.names_by_lookups(&call, &lookups, entry.time).await?);
    let data = service.subject_data();
    let mut found = 0;
    for name in &names {
        let subject = Some(SubjectIdentifier {
            kind: Some(subject_identifier::Kind::Id(name.clone())),
        });
        match data.erase(&call, subject).await {
            Ok(erased) => found += erased.len(),
            // A name this part does not hold (a child gone with its
            // parent, a reference another part answered).
            Err(status) if matches!(status.code(), Code::InvalidArgument | Code::NotFound) => {}
            Err(status) => {
                return Err(ApiError::Unavailable(format!(
                    "applying an erasure again failed: {}",
                    status.message()
                )));
            }
        }
    }
    found += store.destroy_keys(&call, &erased.key_ids).await? as usize;
    if let Some(key) = erased.subject.strip_prefix("email:") {
        crate::mail::erase_mail(mailer, service.name(), &[key.to_owned()]).await?;
    }
    Ok(found)
}
