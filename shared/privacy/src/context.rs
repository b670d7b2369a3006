//! What a service holds to keep the privacy promises: its audit trail and
//! its vault, and the events every access records. Whether a call may run at
//! all is decided before any handler, in the service kit's stack.

use custodian_proto::audit::v1::AuditOutcome;
use custodian_runtime::{ApiError, Database};
use tonic::Status;

use crate::{
    access::{Access, Caller, Method},
    audit::{AuditLog, Event},
    vault::Vault,
};

/// Who the audit trail names for an erasure applied again from the
/// erasure log.
pub const ERASURE_LOG_ACTOR: &str = "custodian:erasure-log";

/// Who the audit trail names for what an anonymous browser sends to an
/// HTTP door (the analytics beacon).
pub const BEACON_ACTOR: &str = "web:beacon";

/// An actor no token stands behind (see [`Privacy::internal_access`]).
#[derive(Debug, Clone)]
pub enum Actor {
    /// The service itself (`svc:NAME`): its own scheduled work, or the
    /// data-subject request it carries out, named as what it acts for.
    Service { on_behalf_of: Option<String> },
    /// The erasure log applied again before a service answers, for the
    /// request an entry names, limited to the controller the erasure was.
    ErasureLog {
        request: Option<String>,
        tenant: Option<String>,
    },
    /// An anonymous browser at an HTTP door.
    Beacon,
}

/// A service's privacy context.
#[derive(Clone, Debug)]
pub struct Privacy {
    pub audit: AuditLog,
    pub vault: Vault,
}

/// Runs the kernel's migrations in a service's database, recorded under
/// `{service}_privacy_migrations` (and, on SQLite only,
/// `{service}_privacy_sqlite_migrations`).
pub async fn migrate(db: &Database, service: &'static str) -> anyhow::Result<()> {
    db.migrate_recorded_in(
        &format!("{service}_privacy_migrations"),
        sqlx::migrate!("./migrations"),
    )
    .await?;
    // What only one backend runs is recorded apart, under a table of its
    // own, so the shared history stays the same on both.
    if db.backend() == custodian_runtime::Backend::Sqlite {
        db.migrate_recorded_in(
            &format!("{service}_privacy_sqlite_migrations"),
            sqlx::migrate!("./migrations-sqlite"),
        )
        .await?;
    }
    Ok(())
}

impl Privacy {
    pub fn new(audit: AuditLog, vault: Vault) -> Self {
        Self { audit, vault }
    }

    pub fn service(&self) -> &'static str {
        self.audit.service()
    }

    /// Runs the migrations and starts the audit writer. The service kit
    /// calls this for every service before the service itself starts, so no
    /// service can forget it.
    pub async fn start(&self, db: &Database) -> anyhow::Result<()> {
        migrate(db, self.audit.service()).await?;
        self.audit.start().await
    }

    /// The access of an actor no token stands behind, acting in this
    /// service for one `purpose` through `method`: the only way besides
    /// [`crate::access::authorize`] to make an [`Access`]. The caller it
    /// names is fixed by the actor (and, for the service itself, by this
    /// service's name), never chosen: its purposes are `purpose` alone.
    pub fn internal_access(&self, actor: Actor, purpose: crate::Purpose, method: Method) -> Access {
        let (subject, tenant, requested_purpose, on_behalf_of, service) = match actor {
            Actor::Service { on_behalf_of } => (
                format!("svc:{}", self.service()),
                None,
                Some(purpose),
                on_behalf_of,
                true,
            ),
            Actor::ErasureLog { request, tenant } => (
                ERASURE_LOG_ACTOR.to_owned(),
                tenant,
                Some(purpose),
                request,
                true,
            ),
            Actor::Beacon => (BEACON_ACTOR.to_owned(), None, None, None, false),
        };
        Access {
            caller: Caller {
                subject,
                purposes: vec![purpose],
                tenant,
                requested_purpose,
                on_behalf_of,
                service,
            },
            purpose,
            method,
        }
    }

    /// The event of a refused call: the caller's token allows none of the
    /// method's purposes.
    pub fn denied(&self, caller: &Caller, method: Method) -> Event {
        Event {
            caller: caller.subject.clone(),
            on_behalf_of: caller.on_behalf_of.clone().unwrap_or_default(),
            purpose: caller
                .requested_purpose
                .map(|p| p.to_string())
                .unwrap_or_default(),
            method: method.path.to_owned(),
            ..Event::new(method.action, AuditOutcome::Denied)
        }
    }

    /// An event of `access` on one resource.
    pub fn event(
        &self,
        access: &Access,
        resource: &str,
        subject_ref: &str,
        fields: &[&str],
        outcome: AuditOutcome,
    ) -> Event {
        Event {
            caller: access.caller.subject.clone(),
            on_behalf_of: access.caller.on_behalf_of.clone().unwrap_or_default(),
            purpose: access.purpose.to_string(),
            method: access.method.path.to_owned(),
            resource: resource.to_owned(),
            subject_ref: subject_ref.to_owned(),
            fields: fields.iter().map(|f| (*f).to_owned()).collect(),
            ..Event::new(access.method.action, outcome)
        }
    }

    /// Records events of reads (group-committed), returning once stored.
    pub async fn record_all(&self, events: Vec<Event>) -> Result<(), ApiError> {
        let stored =
            futures::future::join_all(events.into_iter().map(|e| self.audit.record(e))).await;
        stored.into_iter().collect()
    }

    /// Records that `resource` was not found (or not visible to the caller)
    /// and returns the NOT_FOUND to answer. Another tenant's resource looks
    /// exactly like a missing one.
    pub async fn not_found(&self, access: &Access, resource: &str) -> Status {
        let event = self.event(access, resource, "", &[], AuditOutcome::NotFound);
        match self.audit.record(event).await {
            Ok(()) => ApiError::not_found(resource).into(),
            Err(err) => err.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Services sharing one SQLite file each create the trail's index by
    /// time in the shared migrations; the SQLite ones drop it again, so
    /// whichever service migrates last, no event pays for it.
    #[tokio::test]
    async fn sqlite_keeps_no_index_by_time() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("shared.db").display());
        let db = Database::connect_lazy(&url, 2).unwrap();
        for service in ["first", "second", "first"] {
            migrate(&db, service).await.unwrap();
        }
        let indexes: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'audit_events' \
             AND sql IS NOT NULL ORDER BY name",
        )
        .fetch_all(db.pool())
        .await
        .unwrap();
        assert_eq!(indexes, ["audit_events_resource", "audit_events_subject"]);
    }
}
