//! `custodian.subject.v1.SubjectDataService` for identity: where a data
//! subject's records are, a structured export of them, corrections, and
//! erasure. The dsr service speaks only this contract.

use std::pin::Pin;

use custodian_privacy::Access;
use custodian_proto::{
    audit::v1::AuditOutcome,
    common::v1::{SubjectIdentifier, subject_identifier},
    identity::v1::user,
    subject::v1::{
        EraseSubjectDataRequest, EraseSubjectDataResponse, ExportSubjectDataRequest,
        ExportSubjectDataResponse, FieldCorrection, LocateSubjectDataRequest,
        LocateSubjectDataResponse, RectifySubjectDataRequest, RectifySubjectDataResponse,
        SubjectRecord, subject_data_service_server::SubjectDataService,
    },
};
use custodian_runtime::{ApiError, error::Violations, time::to_timestamp};
use futures::Stream;
use prost_types::{Struct, Value, value::Kind as ValueKind};
use tonic::{Request, Response, Status};

use crate::{
    access::*,
    model::{ALL_KINDS, Kind, Record, USERS},
    records::validate_person,
    store::{Store, next_update_time},
    validate,
};

pub struct SubjectData {
    store: Store,
}

impl SubjectData {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Every record of the subject, of every kind.
    /// Every record of the subject that the caller may see, of every kind.
    async fn locate(
        &self,
        access: &Access,
        subject: Option<SubjectIdentifier>,
    ) -> Result<Vec<(Kind, Record)>, ApiError> {
        let mut found = self.locate_all(subject).await?;
        // A caller limited to a tenant acts only on what is held for it.
        found.retain(|(_, record)| access.sees_tenant(&record.tenant_id));
        Ok(found)
    }

    async fn locate_all(
        &self,
        subject: Option<SubjectIdentifier>,
    ) -> Result<Vec<(Kind, Record)>, ApiError> {
        let kind = subject
            .and_then(|s| s.kind)
            .ok_or_else(|| ApiError::invalid("subject", "an email, phone or id is required"))?;
        match kind {
            subject_identifier::Kind::Email(email) => {
                let email = validate::normalize_email(&email)
                    .map_err(|e| ApiError::invalid("subject.email", e))?;
                self.store.find_subject(Some(&email), None).await
            }
            subject_identifier::Kind::Phone(phone) => {
                let phone = validate::normalize_phone(&phone, None)
                    .map_err(|e| ApiError::invalid("subject.phone", e))?;
                self.store.find_subject(None, Some(&phone)).await
            }
            subject_identifier::Kind::Id(name) => {
                let Some((kind, (tenant, id))) = ALL_KINDS
                    .iter()
                    .find_map(|k| k.parse_name(&name).map(|p| (*k, p)))
                else {
                    return Err(ApiError::invalid(
                        "subject.id",
                        "is not the name of a person record held by identity",
                    ));
                };
                match self.store.get_record(kind, tenant, id).await {
                    Ok(record) => Ok(vec![(kind, record)]),
                    Err(ApiError::NotFound(_)) => Ok(Vec::new()),
                    Err(err) => Err(err),
                }
            }
        }
    }
}

impl SubjectData {
    /// One event per record located or exported, stored before answering.
    async fn audit_each(
        &self,
        access: &Access,
        found: &[(Kind, Record)],
        with_fields: bool,
    ) -> Result<(), ApiError> {
        let privacy = self.store.privacy();
        let events = found
            .iter()
            .map(|(kind, record)| {
                let fields = if with_fields { kind.updatable } else { &[] };
                privacy.event(
                    access,
                    &kind.resource_name(&record.tenant_id, &record.id),
                    &record.subject_id,
                    fields,
                    AuditOutcome::Ok,
                )
            })
            .collect();
        privacy.record_all(events).await
    }
}

fn reference(kind: Kind, record: &Record) -> SubjectRecord {
    SubjectRecord {
        resource: kind.resource_name(&record.tenant_id, &record.id),
        service: kind.service.to_owned(),
        data_category: kind.category as i32,
        controller: Some(kind.controller(&record.tenant_id)),
    }
}

fn json_to_value(json: serde_json::Value) -> Value {
    let kind = match json {
        serde_json::Value::Null => ValueKind::NullValue(0),
        serde_json::Value::Bool(b) => ValueKind::BoolValue(b),
        serde_json::Value::Number(n) => ValueKind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => ValueKind::StringValue(s),
        serde_json::Value::Array(items) => ValueKind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(map) => ValueKind::StructValue(Struct {
            fields: map
                .into_iter()
                .map(|(k, v)| (k, json_to_value(v)))
                .collect(),
        }),
    };
    Value { kind: Some(kind) }
}

/// The record as the subject should receive it: every personal field, in
/// the resource's field names, with enums by name.
fn export(kind: Kind, record: Record) -> Result<ExportSubjectDataResponse, ApiError> {
    let reference = reference(kind, &record);
    let mut json = serde_json::to_value(&record.data).map_err(ApiError::internal)?;
    if let serde_json::Value::Object(map) = &mut json {
        // The export names fields as the resource messages do.
        let given = map.remove("given_name");
        let family = map.remove("family_name");
        let mut name = serde_json::Map::new();
        if let Some(g) = given {
            name.insert("given_name".into(), g);
        }
        if let Some(f) = family {
            name.insert("family_name".into(), f);
        }
        map.insert("person_name".into(), serde_json::Value::Object(name));
        if kind == USERS {
            let role = user::Role::try_from(record.attrs.role)
                .map_or("ROLE_UNSPECIFIED", |r| r.as_str_name());
            let state = user::State::try_from(record.attrs.state)
                .map_or("STATE_UNSPECIFIED", |s| s.as_str_name());
            map.insert("role".into(), role.into());
            map.insert("state".into(), state.into());
        }
    }
    let ValueKind::StructValue(data) = json_to_value(json).kind.unwrap_or(ValueKind::NullValue(0))
    else {
        return Err(ApiError::internal(std::io::Error::other(
            "personal data is not an object",
        )));
    };
    Ok(ExportSubjectDataResponse {
        record: Some(reference),
        data: Some(data),
        create_time: Some(to_timestamp(record.create_time)),
        update_time: Some(to_timestamp(record.update_time)),
    })
}

/// Fields a correction may name: single values, so a correction is one
/// string. Whole messages (a name, an address) are corrected field by field.
const RECTIFIABLE: [&str; 13] = [
    "person_name.given_name",
    "person_name.family_name",
    "email",
    "phone",
    "organization",
    "job_title",
    "notes",
    "company",
    "nature_of_business",
    "postal_address.locality",
    "postal_address.administrative_area",
    "postal_address.postal_code",
    "postal_address.region_code",
];

/// Whether records of `kind` have the field at `path`.
fn has_field(kind: Kind, path: &str) -> bool {
    let top = path.split('.').next().unwrap_or(path);
    kind.updatable.contains(&path) || kind.updatable.contains(&top)
}

fn set_field(record: &mut Record, path: &str, value: &str) {
    let d = &mut record.data;
    let value = value.to_owned();
    match path {
        "person_name.given_name" => d.given_name = value,
        "person_name.family_name" => d.family_name = value,
        "email" => d.email = value,
        "phone" => d.phone = value,
        "organization" => d.organization = value,
        "job_title" => d.job_title = value,
        "notes" => d.notes = value,
        "company" => d.company = value,
        "nature_of_business" => d.nature_of_business = value,
        address_field => {
            let address = d.postal_address.get_or_insert_default();
            match address_field {
                "postal_address.locality" => address.locality = value,
                "postal_address.administrative_area" => address.administrative_area = value,
                "postal_address.postal_code" => address.postal_code = value,
                "postal_address.region_code" => address.region_code = value,
                _ => {}
            }
        }
    }
}

fn check_corrections(corrections: &[FieldCorrection]) -> Result<(), ApiError> {
    let mut v = Violations::new();
    if corrections.is_empty() {
        v.add("corrections", "at least one correction is required");
    }
    for (i, c) in corrections.iter().enumerate() {
        if !RECTIFIABLE.contains(&c.field_path.as_str()) {
            v.add(
                format!("corrections[{i}].field_path"),
                format!(
                    "is not a correctable field; correctable: {}",
                    RECTIFIABLE.join(", ")
                ),
            );
        }
    }
    v.finish()
}

type ExportStream = Pin<Box<dyn Stream<Item = Result<ExportSubjectDataResponse, Status>> + Send>>;

#[tonic::async_trait]
impl SubjectDataService for SubjectData {
    async fn locate_subject_data(
        &self,
        request: Request<LocateSubjectDataRequest>,
    ) -> Result<Response<LocateSubjectDataResponse>, Status> {
        let access = self
            .store
            .privacy()
            .authorize(&request, LOCATE_SUBJECT)
            .await?;
        let found = self.locate(&access, request.into_inner().subject).await?;
        self.audit_each(&access, &found, false).await?;
        Ok(Response::new(LocateSubjectDataResponse {
            records: found.iter().map(|(k, r)| reference(*k, r)).collect(),
        }))
    }

    type ExportSubjectDataStream = ExportStream;

    async fn export_subject_data(
        &self,
        request: Request<ExportSubjectDataRequest>,
    ) -> Result<Response<Self::ExportSubjectDataStream>, Status> {
        let access = self
            .store
            .privacy()
            .authorize(&request, EXPORT_SUBJECT)
            .await?;
        let found = self.locate(&access, request.into_inner().subject).await?;
        // Audited before anything is sent.
        self.audit_each(&access, &found, true).await?;
        let items: Vec<Result<ExportSubjectDataResponse, Status>> = found
            .into_iter()
            .map(|(kind, record)| export(kind, record).map_err(Status::from))
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }

    async fn rectify_subject_data(
        &self,
        request: Request<RectifySubjectDataRequest>,
    ) -> Result<Response<RectifySubjectDataResponse>, Status> {
        let access = self
            .store
            .privacy()
            .authorize(&request, RECTIFY_SUBJECT)
            .await?;
        let req = request.into_inner();
        check_corrections(&req.corrections)?;
        let found = self.locate(&access, req.subject).await?;
        for (i, c) in req.corrections.iter().enumerate() {
            if !c.resource.is_empty() {
                match found
                    .iter()
                    .find(|(k, r)| k.resource_name(&r.tenant_id, &r.id) == c.resource)
                {
                    None => return Err(ApiError::not_found(c.resource.clone()).into()),
                    Some((k, _)) if !has_field(*k, &c.field_path) => {
                        return Err(ApiError::invalid(
                            format!("corrections[{i}].field_path"),
                            format!("{} records have no such field", k.noun),
                        )
                        .into());
                    }
                    Some(_) => {}
                }
            }
        }
        let mut changed = Vec::new();
        for (kind, before) in found {
            let name = kind.resource_name(&before.tenant_id, &before.id);
            let mut record = before.clone();
            let mut touched = false;
            for c in &req.corrections {
                let applies = if c.resource.is_empty() {
                    has_field(kind, &c.field_path)
                } else {
                    c.resource == name
                };
                if applies {
                    set_field(&mut record, &c.field_path, &c.value);
                    touched = true;
                }
            }
            if touched {
                validate_person(kind, kind.message_field, &mut record.data, &record.attrs)?;
                record.update_time = next_update_time(before.update_time);
                changed.push((kind, before, record));
            }
        }
        let template = self
            .store
            .privacy()
            .event(&access, "", "", &[], AuditOutcome::Ok);
        if !self.store.replace_records(&changed, &template).await? {
            return Err(Status::aborted(
                "a record changed while it was being corrected; retry",
            ));
        }
        Ok(Response::new(RectifySubjectDataResponse {
            rectified: changed.iter().map(|(k, _, r)| reference(*k, r)).collect(),
        }))
    }

    async fn erase_subject_data(
        &self,
        request: Request<EraseSubjectDataRequest>,
    ) -> Result<Response<EraseSubjectDataResponse>, Status> {
        let access = self
            .store
            .privacy()
            .authorize(&request, ERASE_SUBJECT)
            .await?;
        let found = self.locate(&access, request.into_inner().subject).await?;
        let template = self
            .store
            .privacy()
            .event(&access, "", "", &[], AuditOutcome::Ok);
        self.store.erase_records(&found, &template).await?;
        Ok(Response::new(EraseSubjectDataResponse {
            erased: found.iter().map(|(k, r)| reference(*k, r)).collect(),
        }))
    }
}
