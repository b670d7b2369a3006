//! A service as the kit sees it, and the assembly of a process from
//! services: each one's privacy kernel started by the kit before the service
//! itself (so no service can forget its audit writer), its data keys checked
//! against the key file, its tables checked against the kit's shape, its
//! sweeps scheduled; the shared contracts served once and routed to each;
//! and the gate built from the declarations of every method served.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use custodian_privacy::{Privacy, TokenAuthenticator, retention::schedule};
use custodian_proto::{
    audit::v1::audit_service_server::AuditServiceServer,
    privacy::v1::{DataCategory, data_map_service_server::DataMapServiceServer},
    retention::v1::retention_service_server::RetentionServiceServer,
    subject::v1::subject_data_service_server::SubjectDataServiceServer,
};
use custodian_runtime::{
    ApiError, Config, Database, HttpRoutes, ServiceModule,
    server::{Limits, service_name},
    time::Clock,
};
use futures::future::BoxFuture;
use tonic::service::RoutesBuilder;

use crate::{
    audit_api::AuditApi,
    datamap::{self, DataMapApi, System},
    declare::DECLARATIONS,
    erasure::{Entry, ErasureLog},
    gate::{KitGate, PeerCalls, Served},
    mail::MailSweep,
    peers::Peers,
    reapply::reapply,
    retention::{RetentionOwner, RetentionRouter, Scheduled, Sweep},
    store::Store,
    subject::{Part, SubjectData, SubjectRouter},
};

/// What a service is handed: its database, its privacy kernel, the clock,
/// its peers, the mailer (a [`crate::mail::ServiceMailer`]: what it sends
/// is labelled for erasure), the erasure log and the process's settings.
#[derive(Clone)]
pub struct Context {
    pub name: &'static str,
    pub db: Database,
    pub privacy: Privacy,
    pub clock: Arc<dyn Clock>,
    pub peers: Peers,
    pub mailer: Arc<dyn custodian_mail::Mailer>,
    pub erasure_log: ErasureLog,
    pub config: Config,
    /// The services of the suite that hold personal data, read from their
    /// declarations as the data map is (see [`holds_personal_data`]),
    /// whether or not this process runs them: whom a data-subject request
    /// must reach.
    pub subject_services: Arc<[&'static str]>,
}

/// Whether `service` holds personal data: whether its entry in the data map
/// (its records and what it holds in bulk) names a personal field. A
/// service that does is reached by every data-subject request.
pub fn holds_personal_data(service: &dyn KitService) -> bool {
    let system = System {
        service: service.name(),
        bindings: service.store().bindings(),
        bulk: service.held_in_bulk(),
        grpc_services: Vec::new(),
    };
    datamap::build(&[system])
        .systems
        .iter()
        .flat_map(|s| &s.resources)
        .any(|r| !r.personal_fields.is_empty())
}

/// One service of the suite (identity, tickets, ...).
pub trait KitService: Send + Sync + 'static {
    /// Short name: the `--target` value, `custodian-service` metadata, the
    /// prefix of its tables.
    fn name(&self) -> &'static str;

    /// Full names of its own gRPC services (not the shared contracts).
    fn grpc_services(&self) -> Vec<&'static str>;

    /// Adds its own gRPC services.
    fn register(&self, routes: &mut RoutesBuilder, limits: Limits);

    /// Gets ready to serve (its migrations). The kit has started the
    /// privacy kernel already.
    fn start(&self) -> BoxFuture<'_, anyhow::Result<()>>;

    /// Its records.
    fn store(&self) -> &Store;

    /// Its part in data-subject rights.
    fn subject_data(&self) -> Arc<dyn SubjectData>;

    /// Its sweep of expired data.
    fn sweeper(&self) -> Arc<dyn Sweep>;

    /// The owner of legal holds and tenants' retention rules (identity).
    fn retention_owner(&self) -> Option<Arc<dyn RetentionOwner>> {
        None
    }

    /// Releases what it holds after the server drained.
    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// Personal data it holds outside the kit's store (bulk tables written
    /// on a native path), described for the data map: what is not in the
    /// map is not in the record of processing.
    fn held_in_bulk(&self) -> Vec<custodian_proto::privacy::v1::DataMapResource> {
        Vec::new()
    }

    /// Its plain HTTP endpoints, if any (see [`HttpRoutes`]).
    fn http(&self) -> Option<HttpRoutes> {
        None
    }

    /// The category of the mail it sends, if it sends any: its outbox
    /// files are a holding of that category, expired by its sweep.
    fn mail_category(&self) -> Option<DataCategory> {
        None
    }

    /// Publishes the gauges of its stored state (see [`crate::observe`]):
    /// one cheap query each, called every few seconds, never per request.
    fn observe_state(&self) -> BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(async { Ok(()) })
    }

    /// Applies again an entry of the erasure log of a kind of its own (the
    /// kit applies its erasures itself), before the service answers.
    fn restore<'a>(&'a self, _entry: &'a Entry) -> BoxFuture<'a, Result<usize, ApiError>> {
        Box::pin(async { Ok(0) })
    }
}

/// Its sweep, with the expiry of its outbox files when it sends mail.
fn sweeper_of(service: &Arc<dyn KitService>, context: &Context) -> Arc<dyn Sweep> {
    let inner = service.sweeper();
    match service.mail_category() {
        Some(category) => Arc::new(MailSweep {
            inner,
            mailer: context.mailer.clone(),
            category,
            retention: context.config.mail_outbox_retention,
            privacy: context.privacy.clone(),
        }),
        None => inner,
    }
}

/// A service wrapped for the runtime.
struct KitModule {
    service: Arc<dyn KitService>,
    context: Context,
    sweep_every: Option<Duration>,
    sweeping: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    observing: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

async fn kit_migrations(db: &Database, service: &'static str) -> anyhow::Result<()> {
    db.migrate_recorded_in(
        &format!("{service}_kit_migrations"),
        sqlx::migrate!("./migrations"),
    )
    .await
}

impl ServiceModule for KitModule {
    fn name(&self) -> &'static str {
        self.service.name()
    }

    fn grpc_services(&self) -> Vec<&'static str> {
        self.service.grpc_services()
    }

    fn start(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            let name = self.service.name();
            let context = &self.context;
            context.privacy.start(&context.db).await?;
            kit_migrations(&context.db, name).await?;
            // A lost or wrong key file must stop the server, not make
            // records silently unreadable (and impossible to locate or erase).
            let missing = context.privacy.vault.missing_master_keys().await?;
            anyhow::ensure!(
                missing.is_empty(),
                "the {name} database holds data keys wrapped by master key(s) {} that the key file does not have: \
                 restore the key file these records were written with (nothing is served until then)",
                missing.join(", ")
            );
            self.service.start().await?;
            self.service.store().check_tables().await?;
            // A database restored from before an erasure must not answer
            // for the person: the erasure log is applied first.
            reapply(
                self.service.as_ref(),
                &context.erasure_log,
                context.mailer.as_ref(),
            )
            .await
            .with_context(|| format!("applying the erasure log to {name}"))?;
            if let Some(every) = self.sweep_every
                && let Ok(mut slot) = self.sweeping.lock()
            {
                *slot = Some(schedule(
                    Arc::new(Scheduled(sweeper_of(&self.service, context))),
                    context.clock.clone(),
                    every,
                ));
            }
            if let Ok(mut slot) = self.observing.lock() {
                *slot = Some(crate::observe::start(
                    self.service.clone(),
                    context.db.clone(),
                    context.privacy.audit.clone(),
                    context.clock.clone(),
                ));
            }
            Ok(())
        })
    }

    fn register(&self, routes: &mut RoutesBuilder, limits: Limits) {
        self.service.register(routes, limits);
    }

    fn http(&self) -> Option<HttpRoutes> {
        self.service.http()
    }

    fn databases(&self) -> Vec<Database> {
        vec![self.context.db.clone()]
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            for slot in [&self.sweeping, &self.observing] {
                if let Some(task) = slot.lock().ok().and_then(|mut t| t.take()) {
                    task.abort();
                }
            }
            self.service.stop().await;
            self.context.db.close().await;
        })
    }
}

/// The shared contracts, served once per process.
struct Contracts {
    subject: Vec<(&'static str, Part)>,
    sweepers: Vec<(&'static str, Arc<dyn Sweep>)>,
    owner: Option<Arc<dyn RetentionOwner>>,
    logs: Vec<custodian_privacy::audit::AuditLog>,
    map: custodian_proto::privacy::v1::DataMap,
    clock: Arc<dyn Clock>,
}

/// The gRPC services every process serves for its services.
pub fn shared_contracts() -> Vec<&'static str> {
    vec![
        service_name::<SubjectDataServiceServer<SubjectRouter>>(),
        service_name::<RetentionServiceServer<RetentionRouter>>(),
        service_name::<AuditServiceServer<AuditApi>>(),
        service_name::<DataMapServiceServer<DataMapApi>>(),
    ]
}

impl ServiceModule for Contracts {
    fn name(&self) -> &'static str {
        "contracts"
    }

    fn grpc_services(&self) -> Vec<&'static str> {
        shared_contracts()
    }

    fn start(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn register(&self, routes: &mut RoutesBuilder, limits: Limits) {
        let max = limits.max_message_bytes;
        routes.add_service(
            SubjectDataServiceServer::new(SubjectRouter::new(self.subject.clone()))
                .max_decoding_message_size(max),
        );
        routes.add_service(
            RetentionServiceServer::new(RetentionRouter::new(
                self.sweepers.clone(),
                self.owner.clone(),
                self.clock.clone(),
            ))
            .max_decoding_message_size(max),
        );
        routes.add_service(
            AuditServiceServer::new(AuditApi::new(self.logs.clone()))
                .max_decoding_message_size(max),
        );
        routes.add_service(
            DataMapServiceServer::new(DataMapApi::new(self.map.clone()))
                .max_decoding_message_size(max),
        );
    }
}

/// A process ready for [`custodian_runtime::Application::bind`].
pub struct Assembled {
    pub modules: Vec<Arc<dyn ServiceModule>>,
    pub gate: Arc<KitGate>,
    pub services: Vec<Arc<dyn KitService>>,
    pub data_map: custodian_proto::privacy::v1::DataMap,
}

/// Assembles a process from services. Refuses when a contract lacks a
/// declaration: whatever is undeclared would be refused or hidden anyway,
/// and is better found before the first call. `callers` are the calls every
/// service of the suite declares it makes on others (see [`PeerCalls`]).
pub fn assemble(
    services: Vec<(Arc<dyn KitService>, Context)>,
    authenticator: Arc<TokenAuthenticator>,
    callers: &[PeerCalls],
    sweep_every: Option<Duration>,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Assembled> {
    let problems = DECLARATIONS.problems();
    anyhow::ensure!(
        problems.is_empty(),
        "the contracts lack declarations:\n{}",
        problems.join("\n")
    );
    anyhow::ensure!(!services.is_empty(), "no service to run");
    let mut modules: Vec<Arc<dyn ServiceModule>> = Vec::new();
    let mut served = Vec::new();
    let mut trails = Vec::new();
    let mut subject = Vec::new();
    let mut sweepers = Vec::new();
    let mut owner = None;
    let mut logs = Vec::new();
    for (service, context) in &services {
        let name = service.name();
        anyhow::ensure!(
            name == context.name,
            "{name} was given the context of {}",
            context.name
        );
        for grpc in service.grpc_services() {
            served.push(Served {
                grpc_service: grpc,
                trail: vec![(name, context.privacy.clone())],
            });
        }
        trails.push((name, context.privacy.clone()));
        subject.push((
            name,
            Part {
                data: service.subject_data(),
                store: service.store().clone(),
                log: context.erasure_log.clone(),
                mailer: context.mailer.clone(),
            },
        ));
        sweepers.push((name, sweeper_of(service, context)));
        if let Some(o) = service.retention_owner() {
            anyhow::ensure!(owner.is_none(), "two services own retention facts");
            owner = Some(o);
        }
        logs.push(context.privacy.audit.clone());
        modules.push(Arc::new(KitModule {
            service: service.clone(),
            context: context.clone(),
            sweep_every,
            sweeping: std::sync::Mutex::new(None),
            observing: std::sync::Mutex::new(None),
        }));
    }
    for grpc in shared_contracts() {
        served.push(Served {
            grpc_service: grpc,
            trail: trails.clone(),
        });
    }
    let mut systems: Vec<System<'_>> = services
        .iter()
        .map(|(service, context)| System {
            service: service.name(),
            bindings: service.store().bindings(),
            bulk: {
                let mut bulk = service.held_in_bulk();
                // Mail kept in files is held like a table row.
                if let Some(category) = service.mail_category()
                    && context.mailer.outbox().is_some()
                {
                    bulk.push(crate::mail::holding(
                        category,
                        context.config.mail_outbox_retention,
                    ));
                }
                bulk
            },
            grpc_services: service
                .grpc_services()
                .into_iter()
                .chain([
                    service_name::<SubjectDataServiceServer<SubjectRouter>>(),
                    service_name::<RetentionServiceServer<RetentionRouter>>(),
                ])
                .collect(),
        })
        .collect();
    systems.sort_by_key(|s| s.service);
    let data_map = datamap::build(&systems);
    drop(systems);
    let gate = Arc::new(
        KitGate::new(authenticator, &served, callers).context("building the access table")?,
    );
    modules.push(Arc::new(Contracts {
        subject,
        sweepers,
        owner,
        logs,
        map: data_map.clone(),
        clock,
    }));
    Ok(Assembled {
        modules,
        gate,
        services: services.into_iter().map(|(s, _)| s).collect(),
        data_map,
    })
}
