//! Web analytics and Platform usage, the suite's hot path: sites, the
//! browser beacon and tracker on the gRPC port, the collector for services,
//! privacy at the door (no raw IP stored, daily-salted visitor hashes, bots
//! dropped, GPC and DNT honoured on the server), cookie consents under the
//! kernel, usage events only inside a tenant's monitoring grant, and
//! reports from k-anonymous daily aggregates.

mod consents;
pub mod door;
pub mod http;
mod ingest;
mod reports;
pub mod rollup;
mod salts;
pub mod sites;
mod subject;
mod sweep;
mod usage;
pub mod writer;

use std::{sync::Arc, time::Duration};

use custodian_kit::{
    Binding, Context, KitService, Store,
    retention::{PeerPolicy, StoreSweep, Sweep},
    subject::{StoreSubjectData, SubjectData},
};
use custodian_privacy::Purpose;
use custodian_proto::analytics::v1::{
    Consent, collector_service_server::CollectorServiceServer,
    consent_service_server::ConsentServiceServer, report_service_server::ReportServiceServer,
    site_service_server::SiteServiceServer, usage_service_server::UsageServiceServer,
};
use custodian_proto::privacy::v1::{
    Controller as ControllerDecl, DataCategory, DataMapField, DataMapResource, Erasure, Lookup,
    Purpose as PurposeProto,
};
use custodian_runtime::{
    HttpRoutes,
    server::{Limits, service_name},
};
use futures::future::BoxFuture;
use tokio::sync::OnceCell;
use tonic::service::RoutesBuilder;

pub use ingest::USAGE_SCOPE;

/// The `--target` name of this service.
pub const NAME: &str = "analytics";

/// The drop counters' site for usage events.
pub const USAGE_SITE: &str = "usage";

/// What analytics' service credential may do when it calls others: read
/// the published policy versions (service delivery) and the retention
/// policy (administration). Grant checks go with the caller's own purpose.
pub const PEER_PURPOSES: &[Purpose] = &[Purpose::ServiceDelivery, Purpose::Administration];

/// The methods of other services analytics calls, and the only ones its
/// service credential may call (the gate refuses any other): the policy
/// version a consent is given under (`consents.rs`), a tenant's monitoring
/// grant and the users of usage events (`ingest.rs`), and the retention
/// policy for its sweeps (the kit's `PeerPolicy`).
pub const PEER_CALLS: &[&str] = &[
    "/custodian.identity.v1.PolicyService/GetPolicyVersionInForce",
    "/custodian.identity.v1.MonitoringGrantService/CheckMonitoringGrant",
    "/custodian.identity.v1.UserService/GetUser",
    "/custodian.retention.v1.RetentionService/GetRetentionPolicy",
];

/// How often each process reloads the sites another replica may have changed.
const SITES_REFRESH: Duration = Duration::from_secs(5);

/// The analytics service, ready to be handed to the kit.
pub struct Analytics {
    context: Context,
    store: Store,
    sites: sites::Sites,
    salts: salts::Salts,
    consents: consents::Consents,
    usage: usage::Usage,
    trusted_proxies: Arc<[ipnet::IpNet]>,
    k: usize,
    /// Made at start: the writer needs the runtime and the database.
    writer: Arc<OnceCell<writer::Writer>>,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Analytics {
    pub fn new(context: Context) -> anyhow::Result<Self> {
        let grpc = service_name::<ConsentServiceServer<consents::ConsentApi>>();
        let consents_binding = Binding::of::<Consent>("analytics_consents", grpc, None);
        let store = Store::new(
            context.db.clone(),
            context.privacy.clone(),
            context.clock.clone(),
            vec![consents_binding.clone()],
        );
        let sites = sites::Sites::new(context.db.clone(), context.clock.clone());
        let salts = salts::Salts::new(context.db.clone(), context.clock.clone());
        let consents = consents::Consents {
            records: store.records(&consents_binding),
            sites: sites.clone(),
            peers: context.peers.clone(),
        };
        let k = context.config.report_min_visitors.max(2) as usize;
        let trusted_proxies = http::parse_proxies(&context.config.trusted_proxies)?.into();
        Ok(Self {
            usage: usage::Usage {
                store: store.clone(),
            },
            context,
            store,
            sites,
            salts,
            consents,
            trusted_proxies,
            k,
            writer: Arc::new(OnceCell::new()),
            tasks: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// The collector, once started.
    fn ingest(&self) -> LazyIngest {
        LazyIngest {
            writer: self.writer.clone(),
            sites: self.sites.clone(),
            salts: self.salts.clone(),
            clock: self.context.clock.clone(),
            store: self.store.clone(),
            peers: self.context.peers.clone(),
        }
    }
}

/// The parts of [`ingest::Ingest`] known before start, and the writer
/// made at start (calls are not admitted before then).
#[derive(Clone)]
pub(crate) struct LazyIngest {
    pub(crate) writer: Arc<OnceCell<writer::Writer>>,
    pub(crate) sites: sites::Sites,
    salts: salts::Salts,
    clock: Arc<dyn custodian_runtime::time::Clock>,
    store: Store,
    peers: custodian_kit::peers::Peers,
}

impl LazyIngest {
    pub(crate) fn get(&self) -> Result<ingest::Ingest, tonic::Status> {
        let writer = self
            .writer
            .get()
            .cloned()
            .ok_or_else(|| tonic::Status::unavailable("server is starting"))?;
        Ok(ingest::Ingest {
            sites: self.sites.clone(),
            salts: self.salts.clone(),
            writer,
            clock: self.clock.clone(),
            store: self.store.clone(),
            peers: self.peers.clone(),
        })
    }
}

mod collector {
    //! `custodian.analytics.v1.CollectorService`.

    use std::pin::Pin;

    use custodian_kit::Call;
    use custodian_proto::analytics::v1::{
        CollectEventsRequest, CollectEventsResponse, CollectUsageEventsRequest,
        StreamEventsRequest, StreamEventsResponse, collector_service_server::CollectorService,
    };
    use futures::{Stream, StreamExt as _};
    use tonic::{Request, Response, Status, Streaming};

    use super::LazyIngest;
    use crate::ingest::check_events;

    #[derive(Clone)]
    pub struct CollectorApi {
        pub ingest: LazyIngest,
    }

    #[tonic::async_trait]
    impl CollectorService for CollectorApi {
        async fn collect_events(
            &self,
            request: Request<CollectEventsRequest>,
        ) -> Result<Response<CollectEventsResponse>, Status> {
            Call::of(&request)?;
            let events = request.into_inner().events;
            check_events(&events)?;
            Ok(Response::new(self.ingest.get()?.collect(events).await?))
        }

        type StreamEventsStream =
            Pin<Box<dyn Stream<Item = Result<StreamEventsResponse, Status>> + Send + 'static>>;

        async fn stream_events(
            &self,
            request: Request<Streaming<StreamEventsRequest>>,
        ) -> Result<Response<Self::StreamEventsStream>, Status> {
            Call::of(&request)?;
            let ingest = self.ingest.get()?;
            let batches = request.into_inner();
            // One batch at a time: each is answered after its commit and
            // before the next is read, so answers come in order and a slow
            // writer slows the sender instead of filling memory.
            let answers = batches
                .then(move |batch| {
                    let ingest = ingest.clone();
                    async move {
                        // tonic reports an undecodable message as INTERNAL;
                        // it is the sender's mistake.
                        let batch = batch.map_err(|status| match status.code() {
                            tonic::Code::Internal => Status::invalid_argument(
                                "a batch is not a valid custodian.analytics.v1.StreamEventsRequest message",
                            ),
                            _ => status,
                        })?;
                        check_events(&batch.events)?;
                        let result = ingest.collect(batch.events).await?;
                        Ok(StreamEventsResponse {
                            sequence: batch.sequence,
                            result: Some(result),
                        })
                    }
                })
                // The first refusal ends the stream with its status.
                .scan(
                    false,
                    |failed, answer: Result<StreamEventsResponse, Status>| {
                        let next = if *failed { None } else { Some(answer) };
                        if matches!(next, Some(Err(_))) {
                            *failed = true;
                        }
                        futures::future::ready(next)
                    },
                );
            Ok(Response::new(Box::pin(answers)))
        }

        async fn collect_usage_events(
            &self,
            request: Request<CollectUsageEventsRequest>,
        ) -> Result<Response<CollectEventsResponse>, Status> {
            let call = Call::of(&request)?;
            let ingest = self.ingest.get()?;
            Ok(Response::new(
                ingest.collect_usage(&call, request.into_inner()).await?,
            ))
        }
    }
}

impl KitService for Analytics {
    fn name(&self) -> &'static str {
        NAME
    }

    fn grpc_services(&self) -> Vec<&'static str> {
        vec![
            service_name::<SiteServiceServer<sites::SiteApi>>(),
            service_name::<CollectorServiceServer<collector::CollectorApi>>(),
            service_name::<ReportServiceServer<reports::ReportApi>>(),
            service_name::<ConsentServiceServer<consents::ConsentApi>>(),
            service_name::<UsageServiceServer<usage::Usage>>(),
        ]
    }

    fn register(&self, routes: &mut RoutesBuilder, limits: Limits) {
        let max = limits.max_message_bytes;
        routes.add_service(
            SiteServiceServer::new(sites::SiteApi {
                sites: self.sites.clone(),
            })
            .max_decoding_message_size(max),
        );
        routes.add_service(
            CollectorServiceServer::new(collector::CollectorApi {
                ingest: self.ingest(),
            })
            .max_decoding_message_size(max),
        );
        routes.add_service(
            ReportServiceServer::new(reports::ReportApi {
                db: self.context.db.clone(),
                sites: self.sites.clone(),
                clock: self.context.clock.clone(),
                k: self.k,
            })
            .max_decoding_message_size(max),
        );
        routes.add_service(
            ConsentServiceServer::new(consents::ConsentApi {
                consents: self.consents.clone(),
            })
            .max_decoding_message_size(max),
        );
        routes.add_service(
            UsageServiceServer::new(self.usage.clone()).max_decoding_message_size(max),
        );
    }

    fn held_in_bulk(&self) -> Vec<DataMapResource> {
        let field = |path: &str, visible_to: &[PurposeProto], lookup| DataMapField {
            path: path.to_owned(),
            visible_to: visible_to.iter().map(|p| *p as i32).collect(),
            lookup: lookup as i32,
            encrypted_at_rest: false,
        };
        let thirty_days = Some(prost_types::Duration {
            seconds: 30 * 86_400,
            nanos: 0,
        });
        vec![
            // Raw website events: no one reads them through the API; reports
            // sum k-anonymous daily aggregates made from them.
            DataMapResource {
                message: "custodian.analytics.v1.Event".to_owned(),
                pattern: "sites/{site}/events".to_owned(),
                data_category: DataCategory::UsageEvent as i32,
                controller: ControllerDecl::Company as i32,
                personal_fields: vec![
                    field("client_ip (truncated per site)", &[], Lookup::Unspecified),
                    field(
                        "visitor (keyed hash, salt destroyed within 48 h)",
                        &[],
                        Lookup::Unspecified,
                    ),
                    field(
                        "user_agent (browser, OS, device class only)",
                        &[],
                        Lookup::Unspecified,
                    ),
                ],
                default_retention: thirty_days,
                retention_clock: "time (each site may keep less)".to_owned(),
                tenant_may_set_retention: false,
                erasure: Erasure::Delete as i32,
                purposes: Vec::new(),
            },
            DataMapResource {
                message: "custodian.analytics.v1.UsageEvent".to_owned(),
                pattern: "tenants/{tenant}/users/{user}/usageEvents".to_owned(),
                data_category: DataCategory::UsageEvent as i32,
                controller: ControllerDecl::Tenant as i32,
                personal_fields: vec![field(
                    "user (keyed index)",
                    &[
                        PurposeProto::DefectInvestigation,
                        PurposeProto::DsrFulfilment,
                    ],
                    Lookup::User,
                )],
                default_retention: thirty_days,
                retention_clock: "time".to_owned(),
                tenant_may_set_retention: false,
                erasure: Erasure::Delete as i32,
                purposes: vec![
                    PurposeProto::DefectInvestigation as i32,
                    PurposeProto::DsrFulfilment as i32,
                ],
            },
        ]
    }

    fn http(&self) -> Option<HttpRoutes> {
        Some(http::routes(http::Beacon {
            ingest: self.ingest(),
            consents: self.consents.clone(),
            trusted_proxies: self.trusted_proxies.clone(),
        }))
    }

    fn start(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            let db = &self.context.db;
            db.migrate(NAME, sqlx::migrate!("./migrations/common"))
                .await?;
            // The raw events table differs by backend (partitioned on
            // PostgreSQL): its migrations are recorded apart.
            let events = match db.backend() {
                custodian_runtime::Backend::Sqlite => sqlx::migrate!("./migrations/events-sqlite"),
                custodian_runtime::Backend::Postgres => {
                    sqlx::migrate!("./migrations/events-postgres")
                }
            };
            db.migrate("analytics_events", events).await?;
            self.sites.reload().await?;
            let writer = writer::Writer::start(db, self.context.config.analytics_queue_events)?;
            let _ = self.writer.set(writer);
            if let Ok(mut tasks) = self.tasks.lock() {
                tasks.push(self.sites.refresh_every(SITES_REFRESH));
            }
            Ok(())
        })
    }

    fn store(&self) -> &Store {
        &self.store
    }

    fn subject_data(&self) -> Arc<dyn SubjectData> {
        Arc::new(subject::AnalyticsSubject {
            consents: StoreSubjectData::new(self.store.clone()),
            usage: self.usage.clone(),
        })
    }

    fn sweeper(&self) -> Arc<dyn Sweep> {
        Arc::new(sweep::AnalyticsSweep {
            records: StoreSweep::new(
                self.store.clone(),
                Arc::new(PeerPolicy::new(self.context.peers.clone())),
            ),
            db: self.context.db.clone(),
            sites: self.sites.clone(),
            salts: self.salts.clone(),
            audit: self.context.privacy.audit.clone(),
            k: self.k,
        })
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Ok(mut tasks) = self.tasks.lock() {
                for task in tasks.drain(..) {
                    task.abort();
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_contracts_are_fully_declared() {
        let problems = custodian_kit::DECLARATIONS.problems();
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}
