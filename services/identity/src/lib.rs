//! Identity & contacts: tenants (customer organisations), their authorized
//! users, other individuals' business contact information, and sign-ups for
//! the free Workflow Evaluation. Implements the subject-data contract and
//! retention for all of them.

mod access;
mod model;
mod people;
mod records;
mod retention;
mod store;
mod subject;
mod tenants;
pub mod validate;

use std::{sync::Arc, time::Duration};

use custodian_privacy::Privacy;
use custodian_proto::{
    identity::v1::{
        contact_service_server::ContactServiceServer,
        evaluation_signup_service_server::EvaluationSignupServiceServer,
        tenant_service_server::TenantServiceServer, user_service_server::UserServiceServer,
    },
    retention::v1::retention_service_server::RetentionServiceServer,
    subject::v1::subject_data_service_server::SubjectDataServiceServer,
};
use custodian_runtime::{
    Database, ServiceModule,
    server::{Limits, service_name},
    time::Clock,
};
use futures::future::BoxFuture;
use tonic::service::RoutesBuilder;

pub use model::{CONTACTS, Kind, SIGNUPS, USERS};
pub use records::REDACTED_HEADER;

/// The `--target` name of this service.
pub const NAME: &str = "identity";

/// The identity service, ready to be handed to the runtime.
pub struct Identity {
    db: Database,
    store: store::Store,
    retention: retention::IdentityRetention,
    clock: Arc<dyn Clock>,
    sweep_every: Option<Duration>,
    sweeping: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Identity {
    /// `sweep_every`: how often retention runs by itself (`None`: only on
    /// demand).
    pub fn new(
        db: Database,
        privacy: Privacy,
        clock: Arc<dyn Clock>,
        sweep_every: Option<Duration>,
    ) -> Self {
        let store = store::Store::new(db.clone(), privacy);
        Self {
            retention: retention::IdentityRetention::new(store.clone(), clock.clone()),
            store,
            db,
            clock,
            sweep_every,
            sweeping: std::sync::Mutex::new(None),
        }
    }
}

impl ServiceModule for Identity {
    fn name(&self) -> &'static str {
        NAME
    }

    fn grpc_services(&self) -> Vec<&'static str> {
        vec![
            service_name::<TenantServiceServer<tenants::Tenants>>(),
            service_name::<UserServiceServer<people::People>>(),
            service_name::<ContactServiceServer<people::People>>(),
            service_name::<EvaluationSignupServiceServer<people::People>>(),
            service_name::<SubjectDataServiceServer<subject::SubjectData>>(),
            service_name::<RetentionServiceServer<retention::IdentityRetention>>(),
        ]
    }

    fn start(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            self.db
                .migrate(NAME, sqlx::migrate!("./migrations"))
                .await?;
            self.store.privacy().start(&self.db).await?;
            if let Some(every) = self.sweep_every
                && let Ok(mut slot) = self.sweeping.lock()
            {
                let sweeper: Arc<dyn custodian_privacy::retention::Sweeper> =
                    Arc::new(self.retention.clone());
                *slot = Some(custodian_privacy::retention::schedule(
                    sweeper,
                    self.clock.clone(),
                    every,
                ));
            }
            Ok(())
        })
    }

    fn register(&self, routes: &mut RoutesBuilder, limits: Limits) {
        let max = limits.max_message_bytes;
        let people = people::People::new(self.store.clone());
        routes.add_service(
            TenantServiceServer::new(tenants::Tenants::new(self.store.clone()))
                .max_decoding_message_size(max),
        );
        routes.add_service(UserServiceServer::new(people.clone()).max_decoding_message_size(max));
        routes
            .add_service(ContactServiceServer::new(people.clone()).max_decoding_message_size(max));
        routes
            .add_service(EvaluationSignupServiceServer::new(people).max_decoding_message_size(max));
        routes.add_service(
            SubjectDataServiceServer::new(subject::SubjectData::new(self.store.clone()))
                .max_decoding_message_size(max),
        );
        routes.add_service(
            RetentionServiceServer::new(self.retention.clone()).max_decoding_message_size(max),
        );
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(task) = self.sweeping.lock().ok().and_then(|mut t| t.take()) {
                task.abort();
            }
            self.db.close().await;
        })
    }
}
