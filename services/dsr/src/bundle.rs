//! The export of an access or portability request: one JSON document with
//! every record found, from every service, each with its controller and
//! data category. Each `act` step seals what it collected under the
//! request's key (so erasing the request shreds the export), and the
//! document is put together when it is downloaded, until it expires; then
//! the parts are deleted.

use custodian_kit::Stored;
use custodian_proto::{
    dsr::v1::{Request, request},
    subject::v1::ExportSubjectDataResponse,
};
use custodian_runtime::ApiError;
use prost_reflect::{ReflectMessage as _, SerializeOptions};
use sqlx::Row as _;

use crate::Core;

fn context(request_id: &str, step_id: &str) -> String {
    format!("dsr_export_parts:{request_id}:{step_id}")
}

fn json_options() -> SerializeOptions {
    SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false)
}

/// Writes one exported record as the bundle shows it: the contract's
/// message in its JSON form, with the proto field names.
fn write_record(out: &mut Vec<u8>, record: &ExportSubjectDataResponse) -> Result<(), ApiError> {
    let dynamic = record.transcode_to_dynamic();
    let mut serializer = serde_json::Serializer::new(out);
    dynamic
        .serialize_with_options(&mut serializer, &json_options())
        .map_err(ApiError::internal)
}

/// Seals what one step collected (a JSON array), replacing what an earlier
/// attempt of the same step left.
pub async fn store_part(
    core: &Core,
    request: &Stored<Request>,
    step_id: &str,
    records: &[ExportSubjectDataResponse],
) -> Result<(), ApiError> {
    let mut plain = Vec::with_capacity(records.len() * 512);
    plain.push(b'[');
    for (i, record) in records.iter().enumerate() {
        if i > 0 {
            plain.push(b',');
        }
        write_record(&mut plain, record)?;
    }
    plain.push(b']');
    let sealed = core
        .store
        .seal_beside(&request.subject_id, &plain, &context(&request.id, step_id))
        .await?;
    let mut tx = core.context.db.pool().begin().await?;
    sqlx::query("DELETE FROM dsr_export_parts WHERE request_id = $1 AND step_id = $2")
        .bind(&request.id)
        .bind(step_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO dsr_export_parts (request_id, step_id, records, sealed) VALUES ($1, $2, $3, $4)",
    )
    .bind(&request.id)
    .bind(step_id)
    .bind(records.len() as i64)
    .bind(sealed)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Until when a request's export may be downloaded.
pub async fn expires(core: &Core, request_id: &str) -> Result<Option<i64>, ApiError> {
    Ok(
        sqlx::query("SELECT export_expire_time FROM dsr_runs WHERE request_id = $1")
            .bind(request_id)
            .fetch_optional(core.context.db.pool())
            .await?
            .map(|r| r.try_get::<Option<i64>, _>("export_expire_time"))
            .transpose()?
            .flatten(),
    )
}

/// The whole document, or `None` when nothing is left to give (the
/// request's key was shredded). The parts are joined as they were sealed:
/// each service's records are distinct resources, deduplicated by the step
/// that collected them.
pub async fn assemble(core: &Core, request: &Stored<Request>) -> Result<Option<Vec<u8>>, ApiError> {
    let rows = sqlx::query(
        "SELECT step_id, records, sealed FROM dsr_export_parts WHERE request_id = $1 ORDER BY step_id",
    )
    .bind(&request.id)
    .fetch_all(core.context.db.pool())
    .await?;
    let mut parts = Vec::with_capacity(rows.len());
    let mut count = 0i64;
    for row in rows {
        let step_id: String = row.try_get("step_id")?;
        let sealed: String = row.try_get("sealed")?;
        count += row.try_get::<i64, _>("records")?;
        let Some(plain) = core
            .store
            .open_beside(
                &request.subject_id,
                &sealed,
                &context(&request.id, &step_id),
            )
            .await?
        else {
            return Ok(None);
        };
        parts.push(plain);
    }
    let kind = request::Kind::try_from(request.message.kind).unwrap_or_default();
    let requester = request.message.requester.clone().unwrap_or_default();
    // Customers still deciding: their parts are not in this copy yet.
    let pending: Vec<String> = crate::flow::customers(core, &request.id)
        .await?
        .into_iter()
        .filter(|(_, answered)| !answered)
        .map(|(name, _)| name)
        .collect();
    let head = serde_json::json!({
        "request": format!("requests/{}", request.id),
        "kind": crate::mail::kind_word(kind),
        "generated_time": crate::mail::date(core.now()),
        "subject": { "email": requester.email },
        "controller_note": "records whose controller is a tenant are held on behalf of that customer",
        "complete": pending.is_empty(),
        "customers_still_deciding": pending,
        "record_count": count,
    });
    let mut out = serde_json::to_vec(&head).map_err(ApiError::internal)?;
    // The head's closing brace gives way to the records.
    out.pop();
    out.extend_from_slice(b",\"records\":[");
    let mut first = true;
    for part in &parts {
        // Each part is a JSON array: its items, without the brackets.
        let items = part
            .get(1..part.len().saturating_sub(1))
            .unwrap_or_default();
        if items.is_empty() {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(items);
    }
    out.extend_from_slice(b"]}");
    Ok(Some(out))
}

/// Deletes exports whose download time is over.
pub async fn sweep_expired(core: &Core, now: i64) -> Result<u64, ApiError> {
    let deleted = sqlx::query(
        "DELETE FROM dsr_export_parts WHERE request_id IN (SELECT request_id FROM dsr_runs \
         WHERE export_expire_time IS NOT NULL AND export_expire_time <= $1)",
    )
    .bind(now)
    .execute(core.context.db.pool())
    .await?;
    Ok(deleted.rows_affected())
}
