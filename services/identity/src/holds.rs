//! The retention facts identity owns: legal holds (on a tenant, or on a
//! data subject by keyed blind index only) and each tenant's own rules.
//! Identity's own sweep reads them directly; every other service asks for
//! them through `RetentionService/GetRetentionPolicy`.

use custodian_kit::{
    Call, Store,
    retention::{self, RetentionOwner},
};
use custodian_privacy::normalize;
use custodian_proto::{
    common::v1::subject_identifier,
    privacy::v1::Lookup,
    retention::v1::{
        CategoryRetention, CreateLegalHoldRequest, DeleteLegalHoldRequest, LegalHold,
        ListLegalHoldsRequest, ListLegalHoldsResponse, RetentionPolicy, TenantRetention,
        legal_hold,
    },
};
use custodian_runtime::{ApiError, error::Violations, paging::Page, time::to_timestamp};
use futures::future::BoxFuture;
use sqlx::Row as _;
use tonic::Status;

const MAX_REASON_CHARS: usize = 200;

/// A legal hold row.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HoldRow {
    id: String,
    tenant_id: Option<String>,
    email_index: Option<String>,
    phone_index: Option<String>,
    reason: String,
    create_time: i64,
}

pub struct Holds {
    store: Store,
}

impl Holds {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    async fn create(&self, request: CreateLegalHoldRequest) -> Result<LegalHold, ApiError> {
        let hold = request.legal_hold.unwrap_or_default();
        let mut v = Violations::new();
        let reason = v
            .check(
                "legal_hold.reason",
                normalize::single_line(&hold.reason, MAX_REASON_CHARS),
            )
            .unwrap_or_default();
        if reason.is_empty() && v.is_empty() {
            v.add("legal_hold.reason", "is required");
        }
        if custodian_privacy::check(&reason).is_err() {
            v.add(
                "legal_hold.reason",
                "contains sensitive personal information; give a case reference",
            );
        }
        let mut row = HoldRow {
            id: uuid::Uuid::now_v7().to_string(),
            tenant_id: None,
            email_index: None,
            phone_index: None,
            reason,
            create_time: self.store.now(),
        };
        match hold.target {
            Some(legal_hold::Target::Tenant(name)) => {
                match custodian_kit::pattern::tenant_id(&name) {
                    Some(id) => row.tenant_id = Some(id.to_owned()),
                    None => v.add("legal_hold.tenant", "must have the form tenants/{tenant}"),
                }
            }
            Some(legal_hold::Target::Subject(subject)) => match subject.kind {
                Some(subject_identifier::Kind::Email(e)) => {
                    if let Some(e) = v.check("legal_hold.subject.email", normalize::email(&e)) {
                        row.email_index = Some(self.store.lookup_key(Lookup::Email, &e));
                    }
                }
                Some(subject_identifier::Kind::Phone(p)) => {
                    if let Some(p) = v.check("legal_hold.subject.phone", normalize::phone(&p, None))
                    {
                        row.phone_index = Some(self.store.lookup_key(Lookup::Phone, &p));
                    }
                }
                _ => v.add("legal_hold.subject", "an email or phone is required"),
            },
            None => v.add("legal_hold", "a tenant or a subject is required"),
        }
        v.finish()?;
        if let Some(tenant) = &row.tenant_id
            && !crate::tenants::exists(&self.store, tenant).await?
        {
            return Err(ApiError::not_found(format!("tenants/{tenant}")));
        }
        sqlx::query(
            "INSERT INTO identity_legal_holds (id, tenant_id, email_index, phone_index, reason, create_time) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&row.id)
        .bind(row.tenant_id.as_deref())
        .bind(row.email_index.as_deref())
        .bind(row.phone_index.as_deref())
        .bind(&row.reason)
        .bind(row.create_time)
        .execute(self.store.db().pool())
        .await?;
        Ok(to_proto(row))
    }

    async fn list(
        &self,
        request: ListLegalHoldsRequest,
    ) -> Result<ListLegalHoldsResponse, ApiError> {
        let page = Page::parse(request.page_size, &request.page_token, "legalHolds")?;
        let rows = sqlx::query(
            "SELECT id, tenant_id, email_index, phone_index, reason, create_time FROM identity_legal_holds \
             WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(page.fetch_limit())
        .fetch_all(self.store.db().pool())
        .await?;
        let rows = rows
            .iter()
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
            .collect::<Result<Vec<_>, ApiError>>()?;
        let (rows, next_page_token) = page.finish(rows, |r| r.id.as_str());
        Ok(ListLegalHoldsResponse {
            legal_holds: rows.into_iter().map(to_proto).collect(),
            next_page_token,
        })
    }

    async fn delete(&self, request: DeleteLegalHoldRequest) -> Result<(), ApiError> {
        let name = request.name;
        let id = name
            .strip_prefix("legalHolds/")
            .filter(|id| !id.is_empty() && !id.contains('/'))
            .ok_or_else(|| {
                ApiError::invalid("name", "must have the form legalHolds/{legal_hold}")
            })?;
        let deleted = sqlx::query("DELETE FROM identity_legal_holds WHERE id = $1")
            .bind(id)
            .execute(self.store.db().pool())
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(ApiError::not_found(name));
        }
        Ok(())
    }

    async fn read_policy(&self) -> Result<RetentionPolicy, ApiError> {
        let tenants = crate::tenants::with_rules(&self.store)
            .await?
            .into_iter()
            .map(|(id, rules)| TenantRetention {
                tenant: format!("tenants/{id}"),
                rules: rules
                    .into_iter()
                    .map(|r| CategoryRetention {
                        data_category: r.category,
                        retain_for: Some(prost_types::Duration {
                            seconds: r.seconds,
                            nanos: 0,
                        }),
                    })
                    .collect(),
            })
            .collect();
        let rows =
            sqlx::query("SELECT tenant_id, email_index, phone_index FROM identity_legal_holds")
                .fetch_all(self.store.db().pool())
                .await?;
        let mut held_tenants = Vec::new();
        let mut held_subjects = Vec::new();
        for row in rows {
            if let Some(t) = row.try_get::<Option<String>, _>("tenant_id")? {
                held_tenants.push(format!("tenants/{t}"));
            }
            if let Some(e) = row.try_get::<Option<String>, _>("email_index")? {
                held_subjects.push(format!("email:{e}"));
            }
            if let Some(p) = row.try_get::<Option<String>, _>("phone_index")? {
                held_subjects.push(format!("phone:{p}"));
            }
        }
        Ok(RetentionPolicy {
            tenants,
            held_tenants,
            held_subjects,
            defaults: retention::defaults(),
        })
    }
}

fn to_proto(row: HoldRow) -> LegalHold {
    let target = row
        .tenant_id
        .map(|t| legal_hold::Target::Tenant(format!("tenants/{t}")));
    // An opaque reference: a prefix of the keyed index, never the value.
    let subject_ref = row
        .email_index
        .or(row.phone_index)
        .map(|i| i.chars().take(16).collect())
        .unwrap_or_default();
    LegalHold {
        name: format!("legalHolds/{}", row.id),
        target,
        subject_ref,
        reason: row.reason,
        create_time: Some(to_timestamp(row.create_time)),
    }
}

impl RetentionOwner for Holds {
    fn create_legal_hold<'a>(
        &'a self,
        _call: &'a Call,
        request: CreateLegalHoldRequest,
    ) -> BoxFuture<'a, Result<LegalHold, Status>> {
        Box::pin(async move { Ok(self.create(request).await?) })
    }

    fn list_legal_holds<'a>(
        &'a self,
        _call: &'a Call,
        request: ListLegalHoldsRequest,
    ) -> BoxFuture<'a, Result<ListLegalHoldsResponse, Status>> {
        Box::pin(async move { Ok(self.list(request).await?) })
    }

    fn delete_legal_hold<'a>(
        &'a self,
        _call: &'a Call,
        request: DeleteLegalHoldRequest,
    ) -> BoxFuture<'a, Result<(), Status>> {
        Box::pin(async move { Ok(self.delete(request).await?) })
    }

    fn policy(&self) -> BoxFuture<'_, Result<RetentionPolicy, ApiError>> {
        Box::pin(self.read_policy())
    }
}
