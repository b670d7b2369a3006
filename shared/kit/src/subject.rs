//! `custodian.subject.v1.SubjectDataService`, the one contract of
//! data-subject rights, served once per process and routed to each
//! service's implementation by `custodian-service` metadata (required when
//! the process runs more than one). Each service implements [`SubjectData`];
//! [`StoreSubjectData`] implements it for any [`Store`] from the
//! declarations alone: locate by blind index, export every unit, correct
//! the rectifiable fields, erase as each resource declares.

use std::{collections::HashMap, pin::Pin, sync::Arc};

use custodian_privacy::normalize;
use custodian_proto::{
    audit::v1::AuditOutcome,
    common::v1::{SubjectIdentifier, subject_identifier},
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
use tonic::{Request, Response, Status};

use crate::{
    call::Call,
    declare::DECLARATIONS,
    fields,
    gate::SERVICE_HEADER,
    store::{Found, Row, Store},
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
                privacy.event(
                    &call.access,
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
            if !all.contains(&c.field_path) {
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
                Some(f) if !fields::rectifiable(&f.binding.spec).contains(&c.field_path) => {
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
                let applies = if c.resource.is_empty() {
                    rectifiable.contains(&c.field_path)
                } else {
                    c.resource == name
                };
                if applies {
                    fields::set_rectified(&f.binding.spec, &mut record, &c.field_path, &c.value);
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
        if self.store.replace_rows(call, &changed).await?.is_none() {
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

/// The contract, served once per process.
pub struct SubjectRouter {
    services: Vec<(&'static str, Arc<dyn SubjectData>)>,
}

impl SubjectRouter {
    pub fn new(services: Vec<(&'static str, Arc<dyn SubjectData>)>) -> Self {
        Self { services }
    }

    #[allow(clippy::result_large_err)] // answered as is
    fn pick<T>(&self, request: &Request<T>) -> Result<&Arc<dyn SubjectData>, Status> {
        route(&self.services, request.metadata())
    }
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
        let call = Call::of(&request)?;
        let service = self.pick(&request)?;
        let records = service.locate(&call, request.into_inner().subject).await?;
        Ok(Response::new(LocateSubjectDataResponse { records }))
    }

    type ExportSubjectDataStream = ExportStream;

    async fn export_subject_data(
        &self,
        request: Request<ExportSubjectDataRequest>,
    ) -> Result<Response<Self::ExportSubjectDataStream>, Status> {
        let call = Call::of(&request)?;
        let service = self.pick(&request)?;
        let items = service.export(&call, request.into_inner().subject).await?;
        Ok(Response::new(Box::pin(futures::stream::iter(
            items.into_iter().map(Ok),
        ))))
    }

    async fn rectify_subject_data(
        &self,
        request: Request<RectifySubjectDataRequest>,
    ) -> Result<Response<RectifySubjectDataResponse>, Status> {
        let call = Call::of(&request)?;
        let service = self.pick(&request)?;
        let req = request.into_inner();
        let rectified = service.rectify(&call, req.subject, req.corrections).await?;
        Ok(Response::new(RectifySubjectDataResponse { rectified }))
    }

    async fn erase_subject_data(
        &self,
        request: Request<EraseSubjectDataRequest>,
    ) -> Result<Response<EraseSubjectDataResponse>, Status> {
        let call = Call::of(&request)?;
        let service = self.pick(&request)?;
        let erased = service.erase(&call, request.into_inner().subject).await?;
        Ok(Response::new(EraseSubjectDataResponse { erased }))
    }
}
