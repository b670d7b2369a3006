//! `custodian.subject.v1.SubjectDataService`, the one contract of
//! data-subject rights, served once per process and routed to each
//! service's implementation by `custodian-service` metadata (required when
//! the process runs more than one). Each service implements [`SubjectData`];
//! [`StoreSubjectData`] implements it for any [`Store`] from the
//! declarations alone: locate by blind index, export every unit, correct
//! the rectifiable fields, erase as each resource declares.
//!
//! What a call may reach is settled here, before any implementation runs:
//! the router narrows the call to the controller the request names (never
//! past the caller's own tenant limit), so an implementation only has to
//! honour [`Call::sees_tenant`] as every handler does. The data-subject
//! request a call serves goes on the [`Call`], into the detail of its audit
//! events ([`Call::event`]); Rectify and Erase run once per request.

use std::{collections::HashMap, pin::Pin, sync::Arc};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use custodian_privacy::normalize;
use custodian_proto::privacy::v1::Lookup;
use custodian_proto::{
    audit::v1::AuditOutcome,
    common::v1::{Controller, SubjectIdentifier, controller, subject_identifier},
    subject::v1::{
        EraseSubjectDataRequest, EraseSubjectDataResponse, ExportSubjectDataRequest,
        ExportSubjectDataResponse, FieldCorrection, LocateSubjectDataRequest,
        LocateSubjectDataResponse, RectifySubjectDataRequest, RectifySubjectDataResponse,
        SubjectRecord, subject_data_service_server::SubjectDataService,
    },
};
use custodian_runtime::{ApiError, error::Violations, time::to_timestamp};
use futures::{Stream, future::BoxFuture};
use prost_reflect::DynamicMessage;
use sha2::{Digest as _, Sha256};
use tonic::{Request, Response, Status};

use crate::{
    call::Call,
    declare::DECLARATIONS,
    erasure::{self, Erased, ErasureLog},
    fields,
    gate::SERVICE_HEADER,
    pattern::Pattern,
    store::{Claim, Found, Idempotency, Row, Store},
};

/// A service's part in data-subject rights.
pub trait SubjectData: Send + Sync + 'static {
    /// Which records the subject has here, with category and controller.
    fn locate<'a>(
        &'a self,
        call: &'a Call,
        subject: Option<SubjectIdentifier>,
    ) -> BoxFuture<'a, Result<Vec<SubjectRecord>, Status>>;
    /// Every record of the subject, structured.
    fn export<'a>(
        &'a self,
        call: &'a Call,
        subject: Option<SubjectIdentifier>,
    ) -> BoxFuture<'a, Result<Vec<ExportSubjectDataResponse>, Status>>;
    /// Applies corrections, all or none.
    fn rectify<'a>(
        &'a self,
        call: &'a Call,
        subject: Option<SubjectIdentifier>,
        corrections: Vec<FieldCorrection>,
    ) -> BoxFuture<'a, Result<Vec<SubjectRecord>, Status>>;
    /// Erases the subject's records; idempotent.
    fn erase<'a>(
        &'a self,
        call: &'a Call,
        subject: Option<SubjectIdentifier>,
    ) -> BoxFuture<'a, Result<Vec<SubjectRecord>, Status>>;
}

/// A service's own check of a corrected record (a name is required, say),
/// over the record as the declarations see it. Adds violations under the
/// given prefix.
pub type Check = Arc<dyn Fn(&DynamicMessage, &str, &mut Violations) + Send + Sync>;

/// Subject-data rights over a service's [`Store`], from the declarations.
#[derive(Clone)]
pub struct StoreSubjectData {
    store: Store,
    checks: HashMap<String, Check>,
}

impl StoreSubjectData {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            checks: HashMap::new(),
        }
    }

    /// Runs `check` on every corrected record of message `M`, as the
    /// service's Update would.
    pub fn with_check<M>(
        mut self,
        check: impl Fn(&M, &str, &mut Violations) + Send + Sync + 'static,
    ) -> Self
    where
        M: prost_reflect::ReflectMessage + Default + prost::Message,
    {
        let name = M::default().descriptor().full_name().to_owned();
        self.checks.insert(
            name,
            Arc::new(
                move |dynamic, prefix, v| match dynamic.transcode_to::<M>() {
                    Ok(message) => check(&message, prefix, v),
                    Err(_) => v.add(prefix, "cannot be read"),
                },
            ),
        );
        self
    }

    async fn find(
        &self,
        call: &Call,
        subject: Option<SubjectIdentifier>,
    ) -> Result<Vec<Found>, ApiError> {
        let kind = subject
            .and_then(|s| s.kind)
            .ok_or_else(|| ApiError::invalid("subject", "an email, phone or id is required"))?;
        match kind {
            subject_identifier::Kind::Email(email) => {
                let email =
                    normalize::email(&email).map_err(|e| ApiError::invalid("subject.email", e))?;
                self.store.find_subject(call, Some(&email), None).await
            }
            subject_identifier::Kind::Phone(phone) => {
                let phone = normalize::phone(&phone, None)
                    .map_err(|e| ApiError::invalid("subject.phone", e))?;
                self.store.find_subject(call, None, Some(&phone)).await
            }
            subject_identifier::Kind::Id(name) => match self.store.find_named(call, &name).await? {
                Some(found) => Ok(found),
                None => Err(ApiError::invalid(
                    "subject.id",
                    format!(
                        "is not the name of a record held by {}",
                        self.store.service()
                    ),
                )),
            },
        }
    }

    fn name(found: &Found) -> String {
        found
            .binding
            .name(&found.row.tenant_id, &found.row.parent_id, &found.row.id)
    }

    fn reference(found: &Found) -> SubjectRecord {
        let spec = &found.binding.spec;
        let controller = found
            .row
            .message
            .get_field_by_name("controller")
            .and_then(|c| c.as_message().and_then(|m| m.transcode_to().ok()));
        SubjectRecord {
            resource: Self::name(found),
            service: found.binding.grpc_service.to_owned(),
            data_category: spec.category() as i32,
            controller,
        }
    }

    /// One event per record, stored before answering.
    async fn audit_each(
        &self,
        call: &Call,
        found: &[Found],
        with_fields: bool,
    ) -> Result<(), ApiError> {
        let privacy = self.store.privacy();
        let events = found
            .iter()
            .map(|f| {
                let fields = if with_fields {
                    fields::present_personal(&f.binding.spec, &f.row.message)
                } else {
                    Vec::new()
                };
                let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
                call.event(
                    privacy,
                    &Self::name(f),
                    &f.row.subject_id,
                    &fields,
                    AuditOutcome::Ok,
                )
            })
            .collect();
        privacy.record_all(events).await
    }

    async fn rectify_found(
        &self,
        call: &Call,
        subject: Option<SubjectIdentifier>,
        corrections: Vec<FieldCorrection>,
    ) -> Result<Vec<SubjectRecord>, Status> {
        let mut v = Violations::new();
        if corrections.is_empty() {
            v.add("corrections", "at least one correction is required");
        }
        let all: Vec<String> = self
            .store
            .bindings()
            .iter()
            .flat_map(|b| fields::rectifiable(&b.spec))
            .collect();
        for (i, c) in corrections.iter().enumerate() {
            let known = self
                .store
                .bindings()
                .iter()
                .any(|b| correctable(&fields::rectifiable(&b.spec), &c.field_path).is_some());
            if !known {
                v.add(
                    format!("corrections[{i}].field_path"),
                    format!("is not a correctable field here; correctable: {}", {
                        let mut unique = all.clone();
                        unique.sort();
                        unique.dedup();
                        unique.join(", ")
                    }),
                );
            }
        }
        v.finish()?;
        let found = self.find(call, subject).await?;
        for (i, c) in corrections.iter().enumerate() {
            if c.resource.is_empty() {
                continue;
            }
            match found.iter().find(|f| Self::name(f) == c.resource) {
                None => return Err(ApiError::not_found(c.resource.clone()).into()),
                Some(f)
                    if correctable(&fields::rectifiable(&f.binding.spec), &c.field_path)
                        .is_none() =>
                {
                    return Err(ApiError::invalid(
                        format!("corrections[{i}].field_path"),
                        format!("{} records have no such field", f.binding.spec.noun()),
                    )
                    .into());
                }
                Some(_) => {}
            }
        }
        let mut changed: Vec<(Arc<crate::store::Binding>, Row, DynamicMessage)> = Vec::new();
        let mut v = Violations::new();
        for f in &found {
            let name = Self::name(f);
            let rectifiable = fields::rectifiable(&f.binding.spec);
            let mut record = f.row.message.clone();
            let mut touched = false;
            for c in &corrections {
                if !c.resource.is_empty() && c.resource != name {
                    continue;
                }
                if let Some(path) = correctable(&rectifiable, &c.field_path) {
                    fields::set_rectified(&f.binding.spec, &mut record, path, &c.value);
                    touched = true;
                }
            }
            if !touched {
                continue;
            }
            // Values are checked as the owning service's Update checks them.
            let prefix = f.binding.spec.noun().replace(' ', "_");
            fields::prepare_stored(&DECLARATIONS, &mut record, &prefix, &mut v);
            if let Some(check) = self.checks.get(f.binding.spec.full_name()) {
                check(&record, &prefix, &mut v);
            }
            changed.push((f.binding.clone(), f.row.clone(), record));
        }
        v.finish()?;
        if self
            .store
            .replace_rows(call, &changed, None)
            .await?
            .is_none()
        {
            return Err(Status::aborted(
                "a record changed while it was being corrected; retry",
            ));
        }
        Ok(found
            .iter()
            .filter(|f| changed.iter().any(|(_, row, _)| row.id == f.row.id))
            .map(Self::reference)
            .collect())
    }
}

/// The unit a correction's path names in one resource: the path itself, or
/// else the one unit it ends ("email" is a ticket's "requester.email" and a
/// feedback's "author.email"), so a person can correct "their email" in
/// every service without knowing how each spells it. Two units ending so
/// (an agent's email beside the requester's) name neither: such a record
/// is corrected by its resource name and full path.
fn correctable<'a>(rectifiable: &'a [String], path: &str) -> Option<&'a str> {
    if let Some(exact) = rectifiable.iter().find(|p| *p == path) {
        return Some(exact);
    }
    let suffix = format!(".{path}");
    let mut ending = rectifiable.iter().filter(|p| p.ends_with(&suffix));
    match (ending.next(), ending.next()) {
        (Some(one), None) => Some(one),
        _ => None,
    }
}

impl SubjectData for StoreSubjectData {
    fn locate<'a>(
        &'a self,
        call: &'a Call,
        subject: Option<SubjectIdentifier>,
    ) -> BoxFuture<'a, Result<Vec<SubjectRecord>, Status>> {
        Box::pin(async move {
            let found = self.find(call, subject).await?;
            self.audit_each(call, &found, false).await?;
            Ok(found.iter().map(Self::reference).collect())
        })
    }

    fn export<'a>(
        &'a self,
        call: &'a Call,
        subject: Option<SubjectIdentifier>,
    ) -> BoxFuture<'a, Result<Vec<ExportSubjectDataResponse>, Status>> {
        Box::pin(async move {
            let found = self.find(call, subject).await?;
            // Audited before anything is sent.
            self.audit_each(call, &found, true).await?;
            Ok(found
                .iter()
                .map(|f| ExportSubjectDataResponse {
                    record: Some(Self::reference(f)),
                    data: Some(fields::export(&f.binding.spec, &f.row.message)),
                    create_time: Some(to_timestamp(f.row.create_time)),
                    update_time: Some(to_timestamp(f.row.update_time)),
                })
                .collect())
        })
    }

    fn rectify<'a>(
        &'a self,
        call: &'a Call,
        subject: Option<SubjectIdentifier>,
        corrections: Vec<FieldCorrection>,
    ) -> BoxFuture<'a, Result<Vec<SubjectRecord>, Status>> {
        Box::pin(self.rectify_found(call, subject, corrections))
    }

    fn erase<'a>(
        &'a self,
        call: &'a Call,
        subject: Option<SubjectIdentifier>,
    ) -> BoxFuture<'a, Result<Vec<SubjectRecord>, Status>> {
        Box::pin(async move {
            let found = self.find(call, subject).await?;
            let references: Vec<SubjectRecord> = found.iter().map(Self::reference).collect();
            self.store.erase(call, &found).await?;
            Ok(references)
        })
    }
}

/// How long a retry of Rectify or Erase with the same data-subject request
/// finds the first call at work (ABORTED) before it takes the claim over:
/// far beyond what such a call takes, so only a call whose process stopped
/// loses its claim.
const CLAIM_LEASE_MICROS: i64 = 5 * 60 * 1_000_000;

/// The blind-index domain of the keys that remember answers by request.
const ANSWER_DOMAIN: &str = "subject-request";

/// One service's part: its implementation, the store where its answers
/// are remembered, the erasure log it records its erasures in, and its
/// mailer (whose outbox files go with the person).
#[derive(Clone)]
pub struct Part {
    pub data: Arc<dyn SubjectData>,
    pub store: Store,
    pub log: ErasureLog,
    pub mailer: Arc<dyn custodian_mail::Mailer>,
}

/// The contract, served once per process. Before a service's part runs it
/// narrows the call to the controller asked for and reads the data-subject
/// request served (named in every audit event); Rectify and Erase run once
/// per request, a retry replaying the first answer.
pub struct SubjectRouter {
    services: Vec<(&'static str, Part)>,
}

impl SubjectRouter {
    /// Each service's part.
    pub fn new(services: Vec<(&'static str, Part)>) -> Self {
        Self { services }
    }

    /// The part the call names, and the call narrowed to `controller` and
    /// carrying the request `served`. Nothing is touched when either is
    /// malformed or the controller is outside the caller's tenant limit
    /// (which is audited as a denial).
    async fn admit<T>(
        &self,
        request: &Request<T>,
        controller: Option<&Controller>,
        served: &str,
    ) -> Result<(&Part, Call), Status> {
        let mut call = Call::of(request)?;
        let part = route(&self.services, request.metadata())?;
        let mut v = Violations::new();
        let tenant = controlled_by(controller, &mut v);
        call.request = served_request(served, &mut v);
        v.finish()?;
        if let Some(tenant) = tenant
            && let Err(status) = call.narrow(&tenant)
        {
            let privacy = part.store.privacy();
            let resource = if tenant.is_empty() {
                String::new()
            } else {
                format!("tenants/{tenant}")
            };
            let mut event = call.event(privacy, &resource, "", &[], AuditOutcome::Denied);
            event.detail = call.detail("a controller outside the caller's tenant");
            privacy.audit.record(event).await?;
            return Err(status);
        }
        Ok((part, call))
    }
}

/// The tenant id `controller` limits a call to ("" for the company's own
/// records), `None` when it is unset.
fn controlled_by(controller: Option<&Controller>, v: &mut Violations) -> Option<String> {
    match controller.and_then(|c| c.kind.as_ref()) {
        None => None,
        Some(controller::Kind::Company(true)) => Some(String::new()),
        Some(controller::Kind::Company(false)) => {
            v.add(
                "controller.company",
                "must be true when set (leave controller unset for every record)",
            );
            None
        }
        Some(controller::Kind::Tenant(name)) => {
            let form = Pattern::parse("tenants/{tenant}").expect("a valid pattern");
            match form
                .parse_name(name)
                .and_then(|vars| vars.tenant().map(str::to_owned))
            {
                Some(tenant) => Some(tenant),
                None => {
                    v.add("controller.tenant", form.describe());
                    None
                }
            }
        }
    }
}

/// The data-subject request a call serves, `None` when it names none.
fn served_request(name: &str, v: &mut Violations) -> Option<String> {
    if name.is_empty() {
        return None;
    }
    let form = Pattern::parse("requests/{request}").expect("a valid pattern");
    if form.parse_name(name).is_none() {
        v.add("request", form.describe());
        return None;
    }
    Some(name.to_owned())
}

/// The key a Rectify or Erase answer is remembered under, when the call
/// serves a data-subject request: per service (the store's), method and
/// request, and per the records the call may see and the subject it names,
/// so one request can erase the company's records now and a tenant's once
/// it instructs so, or reach a person by email and by user name. The rest
/// of the request (`rest`: the corrections) must be the same on a retry.
/// Subject and corrections enter the table only through the keyed blind
/// index.
fn answer_key(
    store: &Store,
    call: &Call,
    method: &str,
    subject: &Option<SubjectIdentifier>,
    rest: &[u8],
) -> Option<Idempotency> {
    let request_id = call.request.as_deref()?.strip_prefix("requests/")?;
    let sees = match call.tenant_limit() {
        None => "*".to_owned(),
        Some(tenant) => format!("tenant:{tenant}"),
    };
    let who = match subject.as_ref().and_then(|s| s.kind.as_ref()) {
        Some(subject_identifier::Kind::Email(e)) => {
            format!(
                "email:{}",
                normalize::email(e).unwrap_or_else(|_| e.clone())
            )
        }
        Some(subject_identifier::Kind::Phone(p)) => format!(
            "phone:{}",
            normalize::phone(p, None).unwrap_or_else(|_| p.clone())
        ),
        Some(subject_identifier::Kind::Id(name)) => format!("id:{name}"),
        None => String::new(),
    };
    let vault = &store.privacy().vault;
    Some(Idempotency {
        scope: format!(
            "{method}:{}",
            vault.blind_index(ANSWER_DOMAIN, &format!("{sees}\u{1f}{who}"))
        ),
        request_id: request_id.to_owned(),
        request_hash: vault.blind_index(ANSWER_DOMAIN, &hex::encode(Sha256::digest(rest))),
    })
}

/// Runs `work` once per `key`: a retry gets the first answer, and nothing
/// is changed or audited again. Without a key, just runs it.
///
/// The answer is remembered after the work, not in its transaction: a
/// service's part may change its records in several (feedback's parts,
/// analytics' consents and usage events). The key is claimed first, so a
/// concurrent retry is refused rather than run twice; only a process that
/// stops between the work and remembering its answer lets a retry (after
/// the lease) run the work again, which finds what is left to do.
async fn once<R>(
    store: &Store,
    key: Option<Idempotency>,
    work: impl Future<Output = Result<R, Status>>,
) -> Result<R, Status>
where
    R: prost::Message + Default,
{
    let Some(key) = key else {
        return work.await;
    };
    // A caller that goes away (its process killed) drops this future at
    // whichever await it is in: armed from before the claim is asked for
    // until the answer is stored, the guard then gives the claim back at
    // once, not after the lease. Releasing deletes only a claim made at
    // `claimed` and never answered, so an early or late release is
    // harmless.
    let claimed = store.now();
    let mut guard = ClaimGuard {
        store: store.clone(),
        key: Some(key.clone()),
        claimed,
    };
    let outcome = store.claim(&key, claimed, CLAIM_LEASE_MICROS).await?;
    if !matches!(outcome, Claim::Ours(_)) {
        guard.key = None;
    }
    match outcome {
        Claim::Ours(_) => {}
        Claim::Answered(answer) => {
            let bytes = STANDARD.decode(answer).map_err(|_| {
                ApiError::internal(std::io::Error::other("a stored answer is not base64"))
            })?;
            return Ok(R::decode(bytes.as_slice()).map_err(ApiError::internal)?);
        }
        Claim::Busy => {
            return Err(Status::aborted(
                "another call is carrying out this request for this subject; retry",
            ));
        }
        Claim::Different => {
            return Err(ApiError::FailedPrecondition(
                "this request was already carried out for this subject with other corrections; \
                 they are not applied"
                    .to_owned(),
            )
            .into());
        }
    };
    let worked = work.await;
    let answered = match worked {
        Ok(answer) => {
            let encoded = STANDARD.encode(answer.encode_to_vec());
            if let Err(err) = store.settle(&key, claimed, &encoded).await {
                // Done, only not remembered: the answer is still true.
                tracing::warn!(service = store.service(), error = %err, "remembering the answer to a data-subject request");
            }
            Ok(answer)
        }
        Err(status) => {
            if let Err(err) = store.release(&key, claimed).await {
                // The claim lapses with its lease.
                tracing::warn!(service = store.service(), error = %err, "releasing a data-subject request after a failure");
            }
            Err(status)
        }
    };
    guard.key = None;
    answered
}

/// Gives a claim back when the work holding it is dropped unfinished.
struct ClaimGuard {
    store: Store,
    key: Option<Idempotency>,
    claimed: i64,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else {
            return;
        };
        let (store, claimed) = (self.store.clone(), self.claimed);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(err) = store.release(&key, claimed).await {
                    tracing::warn!(service = store.service(), error = %err, "releasing a data-subject request whose caller went away");
                }
            });
        }
    }
}

/// The subject asked for, as the erasure log keeps it (see
/// [`Erased::subject`]): an email or phone only as its blind index. `None`
/// when there is none or it is malformed (the erase refuses it).
fn keyed_subject(store: &Store, subject: &Option<SubjectIdentifier>) -> Option<String> {
    match subject.as_ref().and_then(|s| s.kind.as_ref())? {
        subject_identifier::Kind::Email(e) => {
            let email = normalize::email(e).ok()?;
            Some(format!("email:{}", store.lookup_key(Lookup::Email, &email)))
        }
        subject_identifier::Kind::Phone(p) => {
            let phone = normalize::phone(p, None).ok()?;
            Some(format!("phone:{}", store.lookup_key(Lookup::Phone, &phone)))
        }
        subject_identifier::Kind::Id(name) if !name.is_empty() => Some(format!("id:{name}")),
        subject_identifier::Kind::Id(_) => None,
    }
}

/// Appends one entry of this erasure; its sequence number.
async fn record(
    part: &Part,
    request: &str,
    time: i64,
    stage: &str,
    entry: &Erased,
) -> Result<i64, Status> {
    let store = &part.store;
    let digest = erasure::digest(
        erasure::ERASED,
        request,
        &[&entry.scope, &entry.subject, stage],
    );
    let body = serde_json::to_string(entry).map_err(ApiError::internal)?;
    let logged = part
        .log
        .append(
            store.service(),
            erasure::ERASED,
            request,
            time,
            &digest,
            &body,
        )
        .await?;
    Ok(logged.seq)
}

/// Erases through the service's part, recorded in the erasure log before
/// and after, durably, before it is answered: first what is asked (the
/// subject, as a blind index, and the controller), so that nothing is
/// erased that the log does not know of (a log that cannot be written
/// makes the erase UNAVAILABLE, and nothing changed; an erase that does not
/// finish is applied again when the service next starts); then what was
/// erased and the data keys destroyed. A retry of the same request writes
/// neither again. Then the mail the service sent the person is deleted.
async fn erase_recorded(
    part: &Part,
    call: &Call,
    subject: Option<SubjectIdentifier>,
) -> Result<EraseSubjectDataResponse, Status> {
    let store = &part.store;
    let Some(keyed) = keyed_subject(store, &subject) else {
        // Refused as malformed by the part; nothing to record.
        let erased = part.data.erase(call, subject).await?;
        return Ok(EraseSubjectDataResponse { erased });
    };
    let began = store.now();
    let request = call.request.clone().unwrap_or_default();
    let mut entry = Erased {
        scope: erasure::scope_of(call.tenant_limit()),
        subject: keyed,
        records: Vec::new(),
        key_ids: Vec::new(),
    };
    let mut logged = vec![record(part, &request, began, "asked", &entry).await?];
    let (erased, note) = crate::erasure::noting(part.data.erase(call, subject)).await;
    let erased = erased?;
    entry.records = erased.iter().map(|r| r.resource.clone()).collect();
    entry.key_ids = note.key_ids.into_iter().collect();
    if !entry.records.is_empty() || !entry.key_ids.is_empty() {
        logged.push(record(part, &request, began, "erased", &entry).await?);
    }
    // Reflected here now: the next start need not apply them again.
    for seq in logged {
        if let Err(err) = erasure::mark_applied(store.db(), store.service(), seq).await {
            // The next start only looks again.
            tracing::warn!(service = store.service(), error = %err, "marking an erasure as reflected");
        }
    }
    if let Some(key) = entry.subject.strip_prefix("email:") {
        crate::mail::erase_mail(part.mailer.as_ref(), store.service(), &[key.to_owned()]).await?;
    }
    Ok(EraseSubjectDataResponse { erased })
}

/// The implementation a call names in `custodian-service` metadata; without
/// one, the only implementation, if there is only one.
#[allow(clippy::result_large_err)] // answered as is
pub fn route<'a, T>(
    services: &'a [(&'static str, T)],
    metadata: &tonic::metadata::MetadataMap,
) -> Result<&'a T, Status> {
    let names = || {
        services
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match metadata.get(SERVICE_HEADER).and_then(|v| v.to_str().ok()) {
        Some(name) => services
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s)
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "{SERVICE_HEADER} names no service served here; served here: {}",
                    names()
                ))
            }),
        None => match services {
            [(_, only)] => Ok(only),
            _ => Err(Status::invalid_argument(format!(
                "this server runs several services: name one in {SERVICE_HEADER} metadata ({})",
                names()
            ))),
        },
    }
}

type ExportStream = Pin<Box<dyn Stream<Item = Result<ExportSubjectDataResponse, Status>> + Send>>;

#[tonic::async_trait]
impl SubjectDataService for SubjectRouter {
    async fn locate_subject_data(
        &self,
        request: Request<LocateSubjectDataRequest>,
    ) -> Result<Response<LocateSubjectDataResponse>, Status> {
        let (part, call) = {
            let r = request.get_ref();
            self.admit(&request, r.controller.as_ref(), &r.request)
                .await?
        };
        let records = part
            .data
            .locate(&call, request.into_inner().subject)
            .await?;
        Ok(Response::new(LocateSubjectDataResponse { records }))
    }

    type ExportSubjectDataStream = ExportStream;

    async fn export_subject_data(
        &self,
        request: Request<ExportSubjectDataRequest>,
    ) -> Result<Response<Self::ExportSubjectDataStream>, Status> {
        let (part, call) = {
            let r = request.get_ref();
            self.admit(&request, r.controller.as_ref(), &r.request)
                .await?
        };
        let items = part
            .data
            .export(&call, request.into_inner().subject)
            .await?;
        Ok(Response::new(Box::pin(futures::stream::iter(
            items.into_iter().map(Ok),
        ))))
    }

    async fn rectify_subject_data(
        &self,
        request: Request<RectifySubjectDataRequest>,
    ) -> Result<Response<RectifySubjectDataResponse>, Status> {
        let (part, call) = {
            let r = request.get_ref();
            self.admit(&request, r.controller.as_ref(), &r.request)
                .await?
        };
        let req = request.into_inner();
        let corrections: Vec<u8> = req
            .corrections
            .iter()
            .flat_map(prost::Message::encode_length_delimited_to_vec)
            .collect();
        let key = answer_key(
            &part.store,
            &call,
            "RectifySubjectData",
            &req.subject,
            &corrections,
        );
        let answer = once(&part.store, key, async {
            let rectified = part
                .data
                .rectify(&call, req.subject.clone(), req.corrections)
                .await?;
            Ok(RectifySubjectDataResponse { rectified })
        })
        .await?;
        Ok(Response::new(answer))
    }

    async fn erase_subject_data(
        &self,
        request: Request<EraseSubjectDataRequest>,
    ) -> Result<Response<EraseSubjectDataResponse>, Status> {
        let (part, call) = {
            let r = request.get_ref();
            self.admit(&request, r.controller.as_ref(), &r.request)
                .await?
        };
        let subject = request.into_inner().subject;
        let key = answer_key(&part.store, &call, "EraseSubjectData", &subject, &[]);
        let answer = once(&part.store, key, erase_recorded(part, &call, subject)).await?;
        Ok(Response::new(answer))
    }
}

#[cfg(test)]
mod tests {
    use super::correctable;

    #[test]
    fn a_path_names_itself_or_the_one_unit_it_ends() {
        let ticket: Vec<String> = [
            "subject",
            "requester.email",
            "requester.person_name.family_name",
        ]
        .map(str::to_owned)
        .to_vec();
        assert_eq!(correctable(&ticket, "subject"), Some("subject"));
        assert_eq!(correctable(&ticket, "email"), Some("requester.email"));
        assert_eq!(
            correctable(&ticket, "person_name.family_name"),
            Some("requester.person_name.family_name")
        );
        assert_eq!(correctable(&ticket, "phone"), None);
        // "mail" is not a segment of "requester.email".
        assert_eq!(correctable(&ticket, "mail"), None);
        let request: Vec<String> = ["requester.email", "agent.email"]
            .map(str::to_owned)
            .to_vec();
        assert_eq!(correctable(&request, "email"), None, "ambiguous");
        assert_eq!(correctable(&request, "agent.email"), Some("agent.email"));
    }
}
