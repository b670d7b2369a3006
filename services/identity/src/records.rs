//! What the three person-record services (users, contacts, evaluation
//! sign-ups) have in common: validation and normalisation, FieldMask
//! updates, idempotent creates and paging. Each tonic service is a thin
//! adapter over these functions.

use custodian_privacy::{Access, Purpose, policy};
use custodian_proto::{audit::v1::AuditOutcome, identity::v1::user};
use custodian_runtime::{ApiError, error::Violations, paging::Page};
use prost::Message;
use sha2::{Digest as _, Sha256};
use tonic::Status;

use crate::{
    model::{Attrs, Kind, PersonData, Record, USERS, parse_tenant_name},
    store::{Created, Idempotency, Store, new_record},
    validate,
};

/// Checks and normalises a record's personal data in place, reporting every
/// bad field (as `{prefix}.{field}`) at once.
pub fn validate_person(
    kind: Kind,
    prefix: &str,
    data: &mut PersonData,
    attrs: &Attrs,
) -> Result<(), ApiError> {
    let mut v = Violations::new();
    let f = |name: &str| format!("{prefix}.{name}");

    for (name, value) in [
        ("person_name.given_name", &mut data.given_name),
        ("person_name.family_name", &mut data.family_name),
    ] {
        if let Some(ok) = v.check(&f(name), validate::bounded(value, validate::MAX_NAME_CHARS)) {
            *value = ok;
        }
    }
    if data.given_name.is_empty() && data.family_name.is_empty() {
        v.add(f("person_name"), "a given or family name is required");
    }

    if let Some(address) = &mut data.postal_address {
        if address.address_lines.len() > validate::MAX_ADDRESS_LINES {
            v.add(
                f("postal_address.address_lines"),
                format!("has more than {} lines", validate::MAX_ADDRESS_LINES),
            );
        }
        for line in &mut address.address_lines {
            if let Some(ok) = v.check(
                &f("postal_address.address_lines"),
                validate::bounded(line, validate::MAX_TEXT_CHARS),
            ) {
                *line = ok;
            }
        }
        address.address_lines.retain(|l| !l.is_empty());
        for (name, value) in [
            ("postal_address.locality", &mut address.locality),
            (
                "postal_address.administrative_area",
                &mut address.administrative_area,
            ),
            ("postal_address.postal_code", &mut address.postal_code),
        ] {
            if let Some(ok) = v.check(&f(name), validate::bounded(value, validate::MAX_TEXT_CHARS))
            {
                *value = ok;
            }
        }
        if let Some(code) = v.check(
            &f("postal_address.region_code"),
            validate::normalize_region_code(&address.region_code),
        ) {
            address.region_code = code;
        }
    }

    let email_required = kind != crate::model::CONTACTS;
    if (!data.email.trim().is_empty() || email_required)
        && let Some(email) = v.check(&f("email"), validate::normalize_email(&data.email))
    {
        data.email = email;
    }
    if !data.phone.trim().is_empty() {
        let region = data.postal_address.as_ref().map(|a| a.region_code.as_str());
        if let Some(phone) = v.check(&f("phone"), validate::normalize_phone(&data.phone, region)) {
            data.phone = phone;
        }
    }
    if !email_required && data.email.trim().is_empty() && data.phone.trim().is_empty() {
        v.add(f("email"), "an email or a phone number is required");
    }

    for (name, value, max) in [
        (
            "organization",
            &mut data.organization,
            validate::MAX_TEXT_CHARS,
        ),
        ("job_title", &mut data.job_title, validate::MAX_TEXT_CHARS),
        ("notes", &mut data.notes, validate::MAX_NOTES_CHARS),
        ("company", &mut data.company, validate::MAX_TEXT_CHARS),
        (
            "nature_of_business",
            &mut data.nature_of_business,
            validate::MAX_NOTES_CHARS,
        ),
    ] {
        if let Some(ok) = v.check(&f(name), validate::bounded(value, max)) {
            *value = ok;
        }
    }

    if kind == USERS {
        if user::Role::try_from(attrs.role).is_err() {
            v.add(f("role"), "is not a known role");
        }
        if user::State::try_from(attrs.state).is_err() {
            v.add(f("state"), "is not a known state");
        }
    }

    // The policy asks customers not to send sensitive personal information;
    // every free-text field is checked, and only the kind found is named.
    let address_lines = data
        .postal_address
        .as_ref()
        .map(|a| a.address_lines.join("\n"))
        .unwrap_or_default();
    let texts = [
        ("person_name.given_name", data.given_name.as_str()),
        ("person_name.family_name", data.family_name.as_str()),
        ("postal_address.address_lines", address_lines.as_str()),
        ("organization", data.organization.as_str()),
        ("job_title", data.job_title.as_str()),
        ("notes", data.notes.as_str()),
        ("company", data.company.as_str()),
        ("nature_of_business", data.nature_of_business.as_str()),
    ];
    for (name, found) in custodian_privacy::check_fields(&texts) {
        v.add(
            f(name),
            format!(
                "contains a {found} ({}); sensitive personal information must not be sent",
                found.as_str()
            ),
        );
    }
    v.finish()
}

/// Defaults a new authorized user's role and state.
pub fn default_attrs(kind: Kind, attrs: Attrs) -> Attrs {
    if kind != USERS {
        return Attrs::default();
    }
    Attrs {
        role: if attrs.role == 0 {
            user::Role::Member as i32
        } else {
            attrs.role
        },
        state: if attrs.state == 0 {
            user::State::Active as i32
        } else {
            attrs.state
        },
    }
}

/// Fingerprint of a Create request, to tell a retry from a different request
/// under the same idempotency key.
pub fn request_hash<M: Message>(request: &M) -> String {
    hex::encode(Sha256::digest(request.encode_to_vec()))
}

/// The idempotency key of a Create call, if the caller sent one.
pub fn idempotency(
    method: &str,
    parent: &str,
    request_id: &str,
    request_hash: String,
) -> Result<Option<Idempotency>, ApiError> {
    validate::request_id(request_id).map_err(|e| ApiError::invalid("request_id", e))?;
    Ok((!request_id.is_empty()).then(|| Idempotency {
        scope: format!("{method}:{parent}"),
        request_id: request_id.to_owned(),
        request_hash,
    }))
}

/// The tenant id of a `parent`, or "" for company-held kinds (which have no
/// parent).
pub fn parent_tenant(kind: Kind, parent: &str) -> Result<String, ApiError> {
    if !kind.tenant_scoped {
        return Ok(String::new());
    }
    parse_tenant_name(parent)
        .map(str::to_owned)
        .ok_or_else(|| ApiError::invalid("parent", "must be a tenant name: tenants/{tenant}"))
}

pub fn parse_name(kind: Kind, name: &str) -> Result<(String, String), ApiError> {
    kind.parse_name(name)
        .map(|(t, i)| (t.to_owned(), i.to_owned()))
        .ok_or_else(|| {
            ApiError::invalid(
                "name",
                format!("must have the form {}", kind.name_pattern()),
            )
        })
}

/// The personal fields of a record that hold a value, by resource field name.
fn present_fields(record: &Record) -> Vec<&'static str> {
    let d = &record.data;
    let mut fields = Vec::new();
    let mut add = |name: &'static str, present: bool| {
        if present {
            fields.push(name);
        }
    };
    add(
        "person_name",
        !d.given_name.is_empty() || !d.family_name.is_empty(),
    );
    add("email", !d.email.is_empty());
    add("phone", !d.phone.is_empty());
    add("postal_address", d.postal_address.is_some());
    add("organization", !d.organization.is_empty());
    add("job_title", !d.job_title.is_empty());
    add("notes", !d.notes.is_empty());
    add("company", !d.company.is_empty());
    add("nature_of_business", !d.nature_of_business.is_empty());
    add("role", record.attrs.role != 0);
    add("state", record.attrs.state != 0);
    fields
}

/// A record as the caller's purpose may see it: fields the purpose does not
/// need are cleared. Returns the fields shown and the fields withheld.
pub fn redact(
    kind: Kind,
    purpose: Purpose,
    record: &mut Record,
) -> (Vec<&'static str>, Vec<&'static str>) {
    let visible = policy::visible_fields(purpose, kind.category);
    let (shown, withheld): (Vec<_>, Vec<_>) = present_fields(record)
        .into_iter()
        .partition(|f| visible.contains(f));
    let d = &mut record.data;
    for field in &withheld {
        match *field {
            "person_name" => {
                d.given_name.clear();
                d.family_name.clear();
            }
            "email" => d.email.clear(),
            "phone" => d.phone.clear(),
            "postal_address" => d.postal_address = None,
            "organization" => d.organization.clear(),
            "job_title" => d.job_title.clear(),
            "notes" => d.notes.clear(),
            "company" => d.company.clear(),
            "nature_of_business" => d.nature_of_business.clear(),
            "role" => record.attrs.role = 0,
            "state" => record.attrs.state = 0,
            _ => {}
        }
    }
    (shown, withheld)
}

/// Metadata naming the fields a purpose withheld, so a caller can tell an
/// empty field from a hidden one.
pub const REDACTED_HEADER: &str = "custodian-redacted-fields";

/// Wraps a response, naming withheld fields in metadata.
pub fn respond<T>(message: T, withheld: &[&str]) -> tonic::Response<T> {
    let mut response = tonic::Response::new(message);
    if !withheld.is_empty()
        && let Ok(value) = withheld.join(",").parse()
    {
        response.metadata_mut().insert(REDACTED_HEADER, value);
    }
    response
}

/// Refuses records the caller may not see as if they did not exist (and
/// audits the attempt).
async fn visible(store: &Store, access: &Access, tenant: &str, name: &str) -> Result<(), Status> {
    if access.sees_tenant(tenant) {
        Ok(())
    } else {
        Err(store.privacy().not_found(access, name).await)
    }
}

/// Maps a NOT_FOUND from the store to an audited one.
async fn audit_not_found<T>(
    store: &Store,
    access: &Access,
    name: &str,
    result: Result<T, ApiError>,
) -> Result<T, Status> {
    match result {
        Err(ApiError::NotFound(_)) => Err(store.privacy().not_found(access, name).await),
        other => other.map_err(Status::from),
    }
}

/// Creates a record (after validation) and returns it, or returns the record
/// an earlier call with the same idempotency key created.
pub async fn create(
    store: &Store,
    access: &Access,
    kind: Kind,
    tenant_id: &str,
    mut data: PersonData,
    attrs: Attrs,
    idem: Option<Idempotency>,
) -> Result<(Record, Vec<&'static str>), Status> {
    if kind.tenant_scoped {
        visible(store, access, tenant_id, &format!("tenants/{tenant_id}")).await?;
    }
    let attrs = default_attrs(kind, attrs);
    validate_person(kind, kind.message_field, &mut data, &attrs)?;
    let mut record = new_record(tenant_id, data, attrs);
    let template =
        store
            .privacy()
            .event(access, "", "", &present_fields(&record), AuditOutcome::Ok);
    record = match store
        .create_record(kind, record, idem.as_ref(), &template)
        .await?
    {
        Created::New(record) => record,
        Created::Replayed(name) => {
            let (tenant, id) = parse_name(kind, &name)?;
            store.get_record(kind, &tenant, &id).await.map_err(|_| {
                ApiError::FailedPrecondition(format!(
                    "request_id was used to create {name}, which has since been deleted"
                ))
            })?
        }
    };
    let (_, withheld) = redact(kind, access.purpose, &mut record);
    Ok((record, withheld))
}

/// Reads one record, cut down to what the purpose may see; the read is
/// audited before it is answered.
pub async fn get(
    store: &Store,
    access: &Access,
    kind: Kind,
    name: &str,
) -> Result<(Record, Vec<&'static str>), Status> {
    let (tenant, id) = parse_name(kind, name)?;
    visible(store, access, &tenant, name).await?;
    let mut record = audit_not_found(
        store,
        access,
        name,
        store.get_record(kind, &tenant, &id).await,
    )
    .await?;
    let (shown, withheld) = redact(kind, access.purpose, &mut record);
    let event = store
        .privacy()
        .event(access, name, &record.subject_id, &shown, AuditOutcome::Ok);
    store.privacy().audit.record(event).await?;
    Ok((record, withheld))
}

pub async fn list(
    store: &Store,
    access: &Access,
    kind: Kind,
    parent: &str,
    page_size: i32,
    page_token: &str,
    email: &str,
) -> Result<(Vec<Record>, String, Vec<&'static str>), Status> {
    let tenant = parent_tenant(kind, parent)?;
    let email = if email.trim().is_empty() {
        None
    } else {
        Some(validate::normalize_email(email).map_err(|e| ApiError::invalid("email", e))?)
    };
    // The scope binds the token to this parent and filter.
    let page = Page::parse(
        page_size,
        page_token,
        &format!("{}|{tenant}|{}", kind.table, email.as_deref().unwrap_or("")),
    )?;
    if kind.tenant_scoped {
        let parent_name = format!("tenants/{tenant}");
        visible(store, access, &tenant, &parent_name).await?;
        // An unknown parent is NOT_FOUND, not an empty list.
        audit_not_found(store, access, &parent_name, store.get_tenant(&tenant).await).await?;
    }
    let rows = store
        .list_records(kind, &tenant, email.as_deref(), &page)
        .await?;
    let (mut rows, next) = page.finish(rows, |r| r.id.as_str());
    let mut events = Vec::with_capacity(rows.len());
    let mut withheld_all = std::collections::BTreeSet::new();
    for record in &mut rows {
        let (shown, withheld) = redact(kind, access.purpose, record);
        withheld_all.extend(withheld);
        let name = kind.resource_name(&record.tenant_id, &record.id);
        events.push(store.privacy().event(
            access,
            &name,
            &record.subject_id,
            &shown,
            AuditOutcome::Ok,
        ));
    }
    store.privacy().record_all(events).await?;
    Ok((rows, next, withheld_all.into_iter().collect()))
}

/// Copies the fields named by `path` from `patch` into `record`.
fn apply_path(record: &mut Record, path: &str, patch: &PersonData, patch_attrs: &Attrs) {
    let d = &mut record.data;
    match path {
        "person_name" => {
            d.given_name = patch.given_name.clone();
            d.family_name = patch.family_name.clone();
        }
        "person_name.given_name" => d.given_name = patch.given_name.clone(),
        "person_name.family_name" => d.family_name = patch.family_name.clone(),
        "email" => d.email = patch.email.clone(),
        "phone" => d.phone = patch.phone.clone(),
        "postal_address" => d.postal_address = patch.postal_address.clone(),
        "organization" => d.organization = patch.organization.clone(),
        "job_title" => d.job_title = patch.job_title.clone(),
        "notes" => d.notes = patch.notes.clone(),
        "company" => d.company = patch.company.clone(),
        "nature_of_business" => d.nature_of_business = patch.nature_of_business.clone(),
        "role" => record.attrs.role = patch_attrs.role,
        "state" => record.attrs.state = patch_attrs.state,
        _ => {}
    }
}

/// Applies a FieldMask update (AIP-134): only the named fields change, then
/// the whole record is validated again.
#[allow(clippy::too_many_arguments)] // one per part of an AIP-134 update
pub async fn update(
    store: &Store,
    access: &Access,
    kind: Kind,
    name: &str,
    mask: Option<prost_types::FieldMask>,
    patch: PersonData,
    patch_attrs: Attrs,
) -> Result<(Record, Vec<&'static str>), Status> {
    let prefix = kind.message_field;
    let (tenant, id) = parse_name(kind, name).map_err(|_| {
        ApiError::invalid(
            format!("{prefix}.name"),
            format!("must have the form {}", kind.name_pattern()),
        )
    })?;
    let paths = mask.map(|m| m.paths).unwrap_or_default();
    if paths.is_empty() {
        return Err(ApiError::invalid("update_mask", "must name at least one field").into());
    }
    let allowed = kind.updatable;
    let mut v = Violations::new();
    for path in &paths {
        if !allowed.contains(&path.as_str()) {
            v.add(
                "update_mask",
                format!(
                    "{path:?} is not an updatable field; updatable: {}",
                    allowed.join(", ")
                ),
            );
        }
    }
    v.finish()?;
    visible(store, access, &tenant, name).await?;
    let template = store.privacy().event(access, "", "", &[], AuditOutcome::Ok);
    let updated = store
        .update_record(kind, &tenant, &id, &template, |record| {
            for path in &paths {
                apply_path(record, path, &patch, &patch_attrs);
            }
            validate_person(kind, prefix, &mut record.data, &record.attrs)
        })
        .await;
    let mut record = audit_not_found(store, access, name, updated).await?;
    let (_, withheld) = redact(kind, access.purpose, &mut record);
    Ok((record, withheld))
}

pub async fn delete(store: &Store, access: &Access, kind: Kind, name: &str) -> Result<(), Status> {
    let (tenant, id) = parse_name(kind, name)?;
    visible(store, access, &tenant, name).await?;
    let template = store.privacy().event(access, "", "", &[], AuditOutcome::Ok);
    audit_not_found(
        store,
        access,
        name,
        store.delete_record(kind, &tenant, &id, &template).await,
    )
    .await
}
