//! Data-subject requests: intake, verification by emailed code, deadlines
//! by jurisdiction, and durable fan-out through the subject contract to
//! every service that holds personal data, with the data a customer
//! controls routed to that customer's inbox and acted on as it instructs.
//!
//! - `api`: `custodian.dsr.v1.RequestService`. The request is a kit
//!   record: the requester's details sealed, found again by email, kept as
//!   proof for its category's retention after completion.
//! - `codes`: one-time codes, stored only as a keyed hash.
//! - `intake`: limits per address on code mails and wrong codes, beyond
//!   which a request is answered as accepted but nothing is mailed.
//! - `flow`: the orchestrator. Every step is a row, claimed with a lease
//!   before it runs and marked after; steps are retried with backoff,
//!   resumed after a restart, never run by two replicas at once, and
//!   idempotent at the services (the request's name goes with every call).
//! - `inbox`: `custodian.dsr.v1.TenantInboxService`.
//! - `reminders`: customers' items reminded, and escalated when overdue.
//! - `bundle`: the export, sealed under the request's key until it is
//!   downloaded or expires.

mod api;
mod bundle;
mod codes;
pub mod deadline;
mod flow;
mod gauges;
mod inbox;
mod intake;
mod mail;
mod proof;
mod reminders;

pub use flow::{LEASE, MAX_BACKOFF};
pub use intake::{CODES_PER_DAY, CODES_PER_HOUR, OPEN_UNVERIFIED, WRONG_CODES_PER_DAY};

use std::sync::{Arc, Mutex};

use custodian_kit::{
    Binding, Context, KitService, Records, Store,
    erasure::Entry,
    retention::{PeerPolicy, StoreSweep, Sweep},
    subject::{StoreSubjectData, SubjectData},
};
use custodian_privacy::{Purpose, retention::SweepCounts};
use custodian_proto::dsr::v1::{
    Request, request_service_server::RequestServiceServer,
    tenant_inbox_service_server::TenantInboxServiceServer,
};
use custodian_proto::privacy::v1::DataCategory;
use custodian_runtime::{
    ApiError,
    server::{Limits, service_name},
};
use futures::future::BoxFuture;
use tokio::sync::Notify;
use tonic::service::RoutesBuilder;

/// The `--target` name of this service.
pub const NAME: &str = "dsr";

/// What dsr's service credential may do when it calls others: carry out
/// data-subject requests through the subject contract, and read the
/// retention policy for its own sweeps.
pub const PEER_PURPOSES: &[Purpose] = &[Purpose::DsrFulfilment, Purpose::Administration];

/// The methods of other services dsr calls, and the only ones its service
/// credential may call (the gate refuses any other): the subject contract
/// on every service a request reaches (`flow.rs`), the retention policy
/// for its sweeps (the kit's `PeerPolicy`), a customer's name, which the
/// requester is told when their request is routed to it, and a customer's
/// administrators, reminded of items it has not instructed (`reminders`).
pub const PEER_CALLS: &[&str] = &[
    "/custodian.subject.v1.SubjectDataService/LocateSubjectData",
    "/custodian.subject.v1.SubjectDataService/ExportSubjectData",
    "/custodian.subject.v1.SubjectDataService/RectifySubjectData",
    "/custodian.subject.v1.SubjectDataService/EraseSubjectData",
    "/custodian.retention.v1.RetentionService/GetRetentionPolicy",
    "/custodian.identity.v1.TenantService/GetTenant",
    "/custodian.identity.v1.UserService/ListUsers",
];

/// What the handlers and the orchestrator share.
pub(crate) struct Core {
    pub context: Context,
    pub store: Store,
    pub requests: Records<Request>,
    /// Wakes the orchestrator when a step may be due.
    pub wake: Notify,
    /// This replica's name on the leases it takes.
    pub worker: String,
}

impl Core {
    pub fn now(&self) -> i64 {
        self.store.now()
    }

    /// The services a data-subject request reaches: every service of the
    /// suite whose declarations say it holds personal data, but this one,
    /// whose requests are the record of the request itself (kept as proof
    /// for their category's retention, found and erased by their own
    /// subject contract).
    pub fn targets(&self) -> Vec<String> {
        self.context
            .subject_services
            .iter()
            .filter(|s| **s != self.context.name)
            .map(|s| (*s).to_owned())
            .collect()
    }
}

/// Microseconds of a timestamp.
pub(crate) fn ts_micros(ts: &prost_types::Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1_000_000)
        .saturating_add(i64::from(ts.nanos / 1000))
}

/// The dsr service, ready to be handed to the kit.
pub struct Dsr {
    core: Arc<Core>,
    running: Mutex<Option<flow::Running>>,
}

impl Dsr {
    pub fn new(context: Context) -> Self {
        let grpc = service_name::<RequestServiceServer<api::Api>>();
        let requests = Binding::of::<Request>("dsr_requests", grpc, None);
        let store = Store::new(
            context.db.clone(),
            context.privacy.clone(),
            context.clock.clone(),
            vec![requests.clone()],
        );
        let core = Arc::new(Core {
            requests: store.records(&requests),
            store,
            context,
            wake: Notify::new(),
            worker: format!("dsr-{}", uuid::Uuid::now_v7().simple()),
        });
        Self {
            core,
            running: Mutex::new(None),
        }
    }
}

impl KitService for Dsr {
    fn name(&self) -> &'static str {
        NAME
    }

    fn grpc_services(&self) -> Vec<&'static str> {
        vec![
            service_name::<RequestServiceServer<api::Api>>(),
            service_name::<TenantInboxServiceServer<inbox::Inbox>>(),
        ]
    }

    fn register(&self, routes: &mut RoutesBuilder, limits: Limits) {
        routes.add_service(
            RequestServiceServer::new(api::Api::new(self.core.clone()))
                .max_decoding_message_size(limits.max_message_bytes),
        );
        routes.add_service(
            TenantInboxServiceServer::new(inbox::Inbox::new(self.core.clone()))
                .max_decoding_message_size(limits.max_message_bytes),
        );
    }

    fn start(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            self.core
                .context
                .db
                .migrate(NAME, sqlx::migrate!("./migrations"))
                .await?;
            // Requests a crashed replica left half done resume here: their
            // steps are rows, and expired leases are taken over.
            let running = flow::start(self.core.clone());
            *self.running.lock().expect("not poisoned") = Some(running);
            Ok(())
        })
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let running = self.running.lock().expect("not poisoned").take();
            if let Some(running) = running {
                running.stop().await;
            }
        })
    }

    fn store(&self) -> &Store {
        &self.core.store
    }

    fn mail_category(&self) -> Option<DataCategory> {
        Some(DataCategory::DsrRecord)
    }

    fn observe_state(&self) -> BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(gauges::observe(&self.core))
    }

    fn restore<'a>(&'a self, entry: &'a Entry) -> BoxFuture<'a, Result<usize, ApiError>> {
        Box::pin(proof::restore(&self.core, entry))
    }

    fn subject_data(&self) -> Arc<dyn SubjectData> {
        // A person's own requests are their data too: found by email,
        // exported and erased by the kit like any record.
        Arc::new(StoreSubjectData::new(self.core.store.clone()))
    }

    fn sweeper(&self) -> Arc<dyn Sweep> {
        Arc::new(DsrSweep {
            records: StoreSweep::new(
                self.core.store.clone(),
                Arc::new(PeerPolicy::new(self.core.context.peers.clone())),
            ),
            core: self.core.clone(),
        })
    }
}

/// The kit's retention of requests (three years after completion),
/// exports past their download time, and the intake limits' counts past
/// their day.
struct DsrSweep {
    records: StoreSweep,
    core: Arc<Core>,
}

impl Sweep for DsrSweep {
    fn service(&self) -> &'static str {
        NAME
    }

    fn sweep<'a>(
        &'a self,
        now: i64,
        by: Option<&'a custodian_kit::Call>,
    ) -> BoxFuture<'a, Result<SweepCounts, ApiError>> {
        Box::pin(async move {
            bundle::sweep_expired(&self.core, now).await?;
            intake::sweep_expired(&self.core, now).await?;
            self.records.sweep(now, by).await
        })
    }
}
