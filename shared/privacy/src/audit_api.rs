//! `custodian.audit.v1.AuditService`: the audit trails of the services in
//! this process, for callers with the `audit` purpose.

use custodian_proto::audit::v1::{
    AuditAction, AuditEvent, ListAuditEventsRequest, ListAuditEventsResponse,
    VerifyAuditChainRequest, VerifyAuditChainResponse, audit_service_server::AuditService,
};
use custodian_runtime::{ApiError, paging::Page, time::to_timestamp};
use tonic::{Request, Response, Status};

use crate::{
    access::Method,
    audit::{AuditLog, Filter, StoredEvent},
    context::Privacy,
    token::Purpose,
};

const LIST: Method = Method {
    path: "/custodian.audit.v1.AuditService/ListAuditEvents",
    action: AuditAction::Read,
    purposes: &[Purpose::Audit, Purpose::SecurityInvestigation],
};
const VERIFY: Method = Method {
    path: "/custodian.audit.v1.AuditService/VerifyAuditChain",
    action: AuditAction::Read,
    purposes: &[Purpose::Audit, Purpose::SecurityInvestigation],
};

pub struct AuditApi {
    /// Where refusals of these methods are audited.
    privacy: Privacy,
    logs: Vec<AuditLog>,
}

impl AuditApi {
    pub fn new(privacy: Privacy, mut logs: Vec<AuditLog>) -> Self {
        logs.sort_by_key(|l| l.service());
        Self { privacy, logs }
    }

    /// The trail spans every tenant, so a caller limited to one may not read it.
    async fn authorize<T>(&self, request: &Request<T>, method: Method) -> Result<(), Status> {
        let access = self.privacy.authorize(request, method).await?;
        if access.tenant_limit().is_some() {
            return Err(Status::permission_denied(
                "the audit trail spans every tenant; a token limited to one cannot read it",
            ));
        }
        Ok(())
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
        self.authorize(&request, LIST).await?;
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
        let (events, next_page_token) = page
            .finish(events.into_iter().zip(cursors).collect(), |(_, c)| {
                c.as_str()
            });
        Ok(Response::new(ListAuditEventsResponse {
            events: events.into_iter().map(|(e, _)| to_proto(e)).collect(),
            next_page_token,
        }))
    }

    async fn verify_audit_chain(
        &self,
        request: Request<VerifyAuditChainRequest>,
    ) -> Result<Response<VerifyAuditChainResponse>, Status> {
        self.authorize(&request, VERIFY).await?;
        let mut chains = Vec::new();
        for log in &self.logs {
            chains.push(log.verify().await?);
        }
        let intact = chains.iter().all(|c| c.intact);
        Ok(Response::new(VerifyAuditChainResponse { chains, intact }))
    }
}

/// Serves [`AuditApi`] in a process: one AuditService over the trails of
/// the services it runs.
pub struct AuditModule {
    privacy: Privacy,
    logs: Vec<AuditLog>,
}

impl AuditModule {
    /// `privacy`: where refused calls of the AuditService itself are
    /// audited (the first service's trail).
    pub fn new(privacy: Privacy, logs: Vec<AuditLog>) -> Self {
        Self { privacy, logs }
    }
}

impl custodian_runtime::ServiceModule for AuditModule {
    fn name(&self) -> &'static str {
        "audit"
    }

    fn grpc_services(&self) -> Vec<&'static str> {
        vec![custodian_runtime::server::service_name::<
            custodian_proto::audit::v1::audit_service_server::AuditServiceServer<AuditApi>,
        >()]
    }

    fn start(&self) -> futures::future::BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn register(
        &self,
        routes: &mut tonic::service::RoutesBuilder,
        limits: custodian_runtime::server::Limits,
    ) {
        routes.add_service(
            custodian_proto::audit::v1::audit_service_server::AuditServiceServer::new(
                AuditApi::new(self.privacy.clone(), self.logs.clone()),
            )
            .max_decoding_message_size(limits.max_message_bytes),
        );
    }
}
