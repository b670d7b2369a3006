//! Identity & contacts: tenants (customer organisations), their authorized
//! users, other individuals' business contact information, and sign-ups for
//! the free Workflow Evaluation. Implements the subject-data contract for
//! all of them.

mod model;
mod people;
mod records;
mod store;
mod subject;
mod tenants;
pub mod validate;

use std::sync::Arc;

use custodian_proto::{
    identity::v1::{
        contact_service_server::ContactServiceServer,
        evaluation_signup_service_server::EvaluationSignupServiceServer,
        tenant_service_server::TenantServiceServer, user_service_server::UserServiceServer,
    },
    subject::v1::subject_data_service_server::SubjectDataServiceServer,
};
use custodian_runtime::{
    Database, ServiceModule,
    server::{Limits, service_name},
};
use futures::future::BoxFuture;
use tonic::service::RoutesBuilder;

pub use model::{CONTACTS, Kind, SIGNUPS, USERS};

/// The `--target` name of this service.
pub const NAME: &str = "identity";

/// The identity service, ready to be handed to the runtime.
pub struct Identity {
    db: Database,
    store: store::Store,
}

impl Identity {
    pub fn new(db: Database) -> Self {
        Self {
            store: store::Store::new(db.clone()),
            db,
        }
    }

    pub fn module(db: Database) -> Arc<dyn ServiceModule> {
        Arc::new(Self::new(db))
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
        ]
    }

    fn start(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move { self.db.migrate(NAME, sqlx::migrate!("./migrations")).await })
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
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.db.close())
    }
}
