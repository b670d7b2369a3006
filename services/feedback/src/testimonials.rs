//! The testimonials part of the feedback service (being built).

use std::sync::Arc;

use custodian_kit::{Binding, Call, Context, Store, subject::SubjectData};
use custodian_privacy::retention::SweepCounts;
use custodian_runtime::{ApiError, server::Limits};
use futures::future::BoxFuture;
use tonic::service::RoutesBuilder;

/// This part of the service: its records, handlers and duties.
pub struct Part {
    _store: Store,
}

impl Part {
    /// Its kit resources (records sealed, audited and erased by the kit).
    pub fn bindings() -> Vec<Arc<Binding>> {
        Vec::new()
    }

    pub fn new(_context: &Context, store: &Store) -> Self {
        Self {
            _store: store.clone(),
        }
    }

    /// Full names of its gRPC services.
    pub fn grpc_services() -> Vec<&'static str> {
        Vec::new()
    }

    pub fn register(&self, _routes: &mut RoutesBuilder, _limits: Limits) {}

    /// Its part in data-subject rights beyond the kit's own records, if any.
    pub fn subject_data(&self) -> Option<Arc<dyn SubjectData>> {
        None
    }

    /// What its sweep deletes beyond the kit's own retention of records.
    pub fn sweep<'a>(
        &'a self,
        _now: i64,
        _by: Option<&'a Call>,
    ) -> BoxFuture<'a, Result<SweepCounts, ApiError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}
