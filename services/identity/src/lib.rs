//! Identity & contacts: tenants (customer organisations), their authorized
//! users, other individuals' business contact information, and sign-ups for
//! the free Workflow Evaluation. Owns tenants' retention rules, legal
//! holds, tenants' monitoring grants and the published versions of the
//! privacy policy, which every other service asks it for.
//!
//! What is personal, who sees it, how it is checked and what erasure does
//! is declared on the contracts (`proto/custodian/identity/v1`); the service
//! kit applies it. This crate holds what only identity knows: tenants, the
//! rules a person record must meet, and the retention facts.

mod grants;
mod holds;
mod people;
mod policies;
mod tenants;

use std::sync::Arc;

use custodian_kit::{
    Binding, Context, KitService, Store,
    retention::{OwnerPolicy, RetentionOwner, StoreSweep, Sweep},
    subject::{StoreSubjectData, SubjectData},
};
use custodian_proto::identity::v1::{
    Contact, EvaluationSignup, MonitoringGrant, User, contact_service_server::ContactServiceServer,
    evaluation_signup_service_server::EvaluationSignupServiceServer,
    monitoring_grant_service_server::MonitoringGrantServiceServer,
    policy_service_server::PolicyServiceServer, tenant_service_server::TenantServiceServer,
    user_service_server::UserServiceServer,
};
use custodian_runtime::server::{Limits, service_name};
use futures::future::BoxFuture;
use tonic::service::RoutesBuilder;

pub use custodian_kit::call::REDACTED_HEADER;

/// The `--target` name of this service.
pub const NAME: &str = "identity";

/// What identity's service credential may do when it calls others: nothing
/// yet, it only answers.
pub const PEER_PURPOSES: &[custodian_privacy::Purpose] = &[];

/// The methods of other services identity calls: none, so it holds no
/// service credential.
pub const PEER_CALLS: &[&str] = &[];

/// The identity service, ready to be handed to the kit.
pub struct Identity {
    context: Context,
    store: Store,
    people: people::People,
    grants: grants::Grants,
    holds: Arc<holds::Holds>,
}

impl Identity {
    pub fn new(context: Context) -> Self {
        let users = Binding::of::<User>(
            "identity_users",
            service_name::<UserServiceServer<people::People>>(),
            None,
        );
        let contacts = Binding::of::<Contact>(
            "identity_contacts",
            service_name::<ContactServiceServer<people::People>>(),
            None,
        );
        let signups = Binding::of::<EvaluationSignup>(
            "identity_evaluation_signups",
            service_name::<EvaluationSignupServiceServer<people::People>>(),
            None,
        );
        let monitoring_grants = Binding::of::<MonitoringGrant>(
            "identity_monitoring_grants",
            service_name::<MonitoringGrantServiceServer<grants::Grants>>(),
            None,
        );
        let store = Store::new(
            context.db.clone(),
            context.privacy.clone(),
            context.clock.clone(),
            vec![
                users.clone(),
                contacts.clone(),
                signups.clone(),
                monitoring_grants.clone(),
            ],
        );
        let people = people::People::new(
            store.records(&users),
            store.records(&contacts),
            store.records(&signups),
        );
        let grants = grants::Grants::new(store.records(&monitoring_grants));
        let holds = Arc::new(holds::Holds::new(store.clone()));
        Self {
            context,
            store,
            people,
            grants,
            holds,
        }
    }
}

impl KitService for Identity {
    fn name(&self) -> &'static str {
        NAME
    }

    fn grpc_services(&self) -> Vec<&'static str> {
        vec![
            service_name::<TenantServiceServer<tenants::Tenants>>(),
            service_name::<UserServiceServer<people::People>>(),
            service_name::<ContactServiceServer<people::People>>(),
            service_name::<EvaluationSignupServiceServer<people::People>>(),
            service_name::<PolicyServiceServer<policies::Policies>>(),
            service_name::<MonitoringGrantServiceServer<grants::Grants>>(),
        ]
    }

    fn register(&self, routes: &mut RoutesBuilder, limits: Limits) {
        let max = limits.max_message_bytes;
        routes.add_service(
            TenantServiceServer::new(tenants::Tenants::new(self.store.clone()))
                .max_decoding_message_size(max),
        );
        routes.add_service(
            UserServiceServer::new(self.people.clone()).max_decoding_message_size(max),
        );
        routes.add_service(
            ContactServiceServer::new(self.people.clone()).max_decoding_message_size(max),
        );
        routes.add_service(
            EvaluationSignupServiceServer::new(self.people.clone()).max_decoding_message_size(max),
        );
        routes.add_service(
            PolicyServiceServer::new(policies::Policies::new(self.store.clone()))
                .max_decoding_message_size(max),
        );
        routes.add_service(
            MonitoringGrantServiceServer::new(self.grants.clone()).max_decoding_message_size(max),
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

    fn subject_data(&self) -> Arc<dyn SubjectData> {
        Arc::new(
            StoreSubjectData::new(self.store.clone())
                .with_check::<User>(people::check_user)
                .with_check::<Contact>(people::check_contact)
                .with_check::<EvaluationSignup>(people::check_signup)
                .with_check::<MonitoringGrant>(grants::check_grant),
        )
    }

    fn sweeper(&self) -> Arc<dyn Sweep> {
        Arc::new(StoreSweep::new(
            self.store.clone(),
            Arc::new(OwnerPolicy(self.holds.clone())),
        ))
    }

    fn retention_owner(&self) -> Option<Arc<dyn RetentionOwner>> {
        Some(self.holds.clone())
    }
}
