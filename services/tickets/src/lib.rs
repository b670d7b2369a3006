//! Support tickets and inquiries: requests by phone, email, in the
//! Platform or through a web form, each with a thread of messages, SLAs per
//! priority, the email channel (inbound mail threaded by its headers, agent
//! replies mailed out), and a requester's history found again by blind
//! index. What is personal, who sees it and what erasure does is declared on
//! the contract (`proto/custodian/tickets/v1`); the service kit applies it.

mod api;
mod gauges;
mod mail;
pub mod sla;

use std::sync::Arc;

use custodian_kit::{
    Binding, Context, KitService, Store,
    retention::{PeerPolicy, StoreSweep, Sweep},
    subject::{StoreSubjectData, SubjectData},
};
use custodian_privacy::Purpose;
use custodian_proto::tickets::v1::{
    Ticket, TicketMessage, ticket_service_server::TicketServiceServer,
};
use custodian_runtime::server::{Limits, service_name};
use futures::future::BoxFuture;
use tonic::service::RoutesBuilder;

pub use sla::SlaPolicy;

/// The `--target` name of this service.
pub const NAME: &str = "tickets";

/// What tickets' service credential may do when it calls others: look up
/// requesters and tenants in identity for its callers (support, service
/// delivery), and read the retention policy for its own sweeps.
pub const PEER_PURPOSES: &[Purpose] = &[
    Purpose::Support,
    Purpose::ServiceDelivery,
    Purpose::Administration,
];

/// The methods of other services tickets calls, and the only ones its
/// service credential may call (the gate refuses any other): a ticket's
/// tenant and requester checked with identity for the caller (`api.rs`),
/// and the retention policy for its sweeps (the kit's `PeerPolicy`).
pub const PEER_CALLS: &[&str] = &[
    "/custodian.identity.v1.TenantService/GetTenant",
    "/custodian.identity.v1.UserService/GetUser",
    "/custodian.retention.v1.RetentionService/GetRetentionPolicy",
];

/// The tickets service, ready to be handed to the kit.
pub struct Tickets {
    context: Context,
    store: Store,
    api: api::Api,
}

impl Tickets {
    /// With the SLA targets of `--ticket-sla` (or the defaults).
    pub fn new(context: Context, sla: SlaPolicy) -> Self {
        let grpc = service_name::<TicketServiceServer<api::Api>>();
        let tickets = Binding::of::<Ticket>("tickets_tickets", grpc, None);
        let messages =
            Binding::of::<TicketMessage>("tickets_messages", grpc, Some(tickets.clone()));
        let store = Store::new(
            context.db.clone(),
            context.privacy.clone(),
            context.clock.clone(),
            vec![tickets.clone(), messages.clone()],
        );
        let api = api::Api::new(
            store.records(&tickets),
            store.records(&messages),
            Arc::new(sla),
            context.peers.clone(),
            context.mailer.clone(),
            context.config.mail_from.clone(),
        );
        Self {
            context,
            store,
            api,
        }
    }
}

impl KitService for Tickets {
    fn name(&self) -> &'static str {
        NAME
    }

    fn grpc_services(&self) -> Vec<&'static str> {
        vec![service_name::<TicketServiceServer<api::Api>>()]
    }

    fn register(&self, routes: &mut RoutesBuilder, limits: Limits) {
        routes.add_service(
            TicketServiceServer::new(self.api.clone())
                .max_decoding_message_size(limits.max_message_bytes),
        );
    }

    fn start(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            self.context
                .db
                .migrate(NAME, sqlx::migrate!("./migrations"))
                .await
        })
    }

    fn store(&self) -> &Store {
        &self.store
    }

    fn mail_category(&self) -> Option<custodian_proto::privacy::v1::DataCategory> {
        Some(custodian_proto::privacy::v1::DataCategory::SupportRequest)
    }

    fn observe_state(&self) -> BoxFuture<'_, Result<(), custodian_runtime::ApiError>> {
        Box::pin(gauges::observe(&self.context.db, self.store.now()))
    }

    fn subject_data(&self) -> Arc<dyn SubjectData> {
        Arc::new(StoreSubjectData::new(self.store.clone()).with_check::<Ticket>(api::check_ticket))
    }

    fn sweeper(&self) -> Arc<dyn Sweep> {
        // Tenants' rules and legal holds belong to identity: asked over gRPC,
        // and nothing is deleted when it cannot answer.
        Arc::new(StoreSweep::new(
            self.store.clone(),
            Arc::new(PeerPolicy::new(self.context.peers.clone())),
        ))
    }
}
