//! `custodian.audit.v1.AuditService`: the audit trails of the services in
//! this process, for callers with the `audit` purpose. Who may call it is
//! decided by the stack, from the method declarations.

use custodian_privacy::audit::{AuditLog, Filter, StoredEvent};
use custodian_proto::audit::v1::{
    AuditEvent, ListAuditEventsRequest, ListAuditEventsResponse, VerifyAuditChainRequest,
    VerifyAuditChainResponse, audit_service_server::AuditService,
};
use custodian_runtime::{ApiError, paging::Page, time::to_timestamp};
use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::call::Call;

/// The most a page of events may take on the wire, well under the 4 MiB a
/// client accepts by default, whatever the events hold.
const PAGE_BYTES: usize = 2 * 1024 * 1024;

pub struct AuditApi {
    logs: Vec<AuditLog>,
}

impl AuditApi {
    pub fn new(mut logs: Vec<AuditLog>) -> Self {
        logs.sort_by_key(|l| l.service());
        Self { logs }
    }
}

fn to_proto(e: StoredEvent) -> AuditEvent {
    AuditEvent {
        sequence: e.seq,
        service: e.service,
        time: Some(to_timestamp(e.event.time)),
        caller: e.event.caller,
        on_behalf_of: e.event.on_behalf_of,
        purpose: e.event.purpose,
        action: e.event.action,
        method: e.event.method,
        resource: e.event.resource,
        subject_ref: e.event.subject_ref,
        fields: e.event.fields,
        outcome: e.event.outcome,
        detail: e.event.detail,
        hash: e.hash,
    }
}

fn micros(t: Option<prost_types::Timestamp>, default: i64) -> i64 {
    t.map_or(default, |t| {
        t.seconds
            .saturating_mul(1_000_000)
            .saturating_add(i64::from(t.nanos) / 1000)
    })
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_events(
        &self,
        request: Request<ListAuditEventsRequest>,
    ) -> Result<Response<ListAuditEventsResponse>, Status> {
        Call::of(&request)?;
        let req = request.into_inner();
        let filter = Filter {
            resource: req.resource,
            subject_ref: req.subject_ref,
            start_time: micros(req.start_time, i64::MIN),
            end_time: micros(req.end_time, i64::MAX),
        };
        let scope = format!(
            "audit|{}|{}|{}|{}",
            filter.resource, filter.subject_ref, filter.start_time, filter.end_time
        );
        let page = Page::parse(req.page_size, &req.page_token, &scope)?;
        // The cursor is "{service}/{seq}": services in name order, then sequence.
        let (after_service, after_seq) = match page.after.as_deref() {
            None => ("", 0),
            Some(cursor) => {
                let (s, n) = cursor.split_once('/').ok_or_else(|| {
                    ApiError::invalid("page_token", "not a token from this query")
                })?;
                (
                    s,
                    n.parse::<i64>().map_err(|_| {
                        ApiError::invalid("page_token", "not a token from this query")
                    })?,
                )
            }
        };
        let mut events = Vec::new();
        for log in self.logs.iter().filter(|l| l.service() >= after_service) {
            let after = if log.service() == after_service {
                after_seq
            } else {
                0
            };
            let want = page.fetch_limit() - events.len() as i64;
            if want <= 0 {
                break;
            }
            events.extend(log.list(&filter, after, want).await?);
        }
        let cursors: Vec<String> = events
            .iter()
            .map(|e| format!("{}/{}", e.service, e.seq))
            .collect();
        let (events, mut next_page_token) = page
            .finish(events.into_iter().zip(cursors).collect(), |(_, c)| {
                c.as_str()
            });
        // A page ends early rather than outgrow what a client accepts.
        let mut out = Vec::with_capacity(events.len());
        let mut bytes = 0;
        for (event, cursor) in events {
            let event = to_proto(event);
            bytes += event.encoded_len() + 8;
            if bytes > PAGE_BYTES && !out.is_empty() {
                next_page_token = page.token_after(&cursor_before(&out));
                break;
            }
            out.push((event, cursor));
        }
        Ok(Response::new(ListAuditEventsResponse {
            events: out.into_iter().map(|(e, _)| e).collect(),
            next_page_token,
        }))
    }

    async fn verify_audit_chain(
        &self,
        request: Request<VerifyAuditChainRequest>,
    ) -> Result<Response<VerifyAuditChainResponse>, Status> {
        Call::of(&request)?;
        let mut chains = Vec::new();
        for log in &self.logs {
            chains.push(log.verify().await?);
        }
        let intact = chains.iter().all(|c| c.intact);
        Ok(Response::new(VerifyAuditChainResponse { chains, intact }))
    }
}

/// The cursor of the last event kept on a page.
fn cursor_before(kept: &[(AuditEvent, String)]) -> String {
    kept.last().map(|(_, c)| c.clone()).unwrap_or_default()
}
