//! The testimonials part of the feedback service:
//! `custodian.feedback.v1.FeedbackService`.
//!
//! Feedback is a kit resource (its author and text sealed under the
//! author's key, found by email, phone or user name, erased and exported by
//! the kit); its publication-consent history is a child resource, so the
//! author's erasure and export take it too. What is left here is what only
//! testimonials know: consent is for the exact text (its SHA-256) and the
//! exact fields, new text voids it, and a testimonial shows only what was
//! consented to. The handlers live in [`api`].

mod api;

use std::sync::Arc;

use custodian_kit::{Binding, Call, Context, Store, subject::SubjectData};
use custodian_privacy::retention::SweepCounts;
use custodian_proto::feedback::v1::{
    Feedback, PublicationConsentEvent, feedback_service_server::FeedbackServiceServer,
};
use custodian_runtime::{
    ApiError,
    server::{Limits, service_name},
};
use futures::future::BoxFuture;
use tonic::service::RoutesBuilder;

const FEEDBACK_TABLE: &str = "feedback_feedback";
const EVENTS_TABLE: &str = "feedback_consent_events";

/// This part of the service: its records, handlers and duties.
pub struct Part {
    api: api::Api,
}

impl Part {
    /// Its kit resources (records sealed, audited and erased by the kit):
    /// feedback, and the consent events of each.
    pub fn bindings() -> Vec<Arc<Binding>> {
        let grpc = service_name::<FeedbackServiceServer<api::Api>>();
        let feedback = Binding::of::<Feedback>(FEEDBACK_TABLE, grpc, None);
        let events =
            Binding::of::<PublicationConsentEvent>(EVENTS_TABLE, grpc, Some(feedback.clone()));
        vec![feedback, events]
    }

    pub fn new(context: &Context, store: &Store) -> Self {
        // The store was built with this part's bindings (see lib.rs).
        let binding = |table: &str| {
            store
                .bindings()
                .iter()
                .find(|b| b.table == table)
                .cloned()
                .unwrap_or_else(|| panic!("the store lacks the {table} binding"))
        };
        Self {
            api: api::Api {
                feedback: store.records(&binding(FEEDBACK_TABLE)),
                events: store.records(&binding(EVENTS_TABLE)),
                peers: context.peers.clone(),
            },
        }
    }

    /// Full names of its gRPC services.
    pub fn grpc_services() -> Vec<&'static str> {
        vec![service_name::<FeedbackServiceServer<api::Api>>()]
    }

    pub fn register(&self, routes: &mut RoutesBuilder, limits: Limits) {
        routes.add_service(
            FeedbackServiceServer::new(self.api.clone())
                .max_decoding_message_size(limits.max_message_bytes),
        );
    }

    /// Its part in data-subject rights beyond the kit's own records: none.
    /// Feedback and its consent events are kit records, found by the
    /// author's email, phone or user name.
    pub fn subject_data(&self) -> Option<Arc<dyn SubjectData>> {
        None
    }

    /// What its sweep deletes beyond the kit's own retention of records:
    /// nothing. Feedback follows its category's retention through the kit,
    /// and its consent events go with it.
    pub fn sweep<'a>(
        &'a self,
        _now: i64,
        _by: Option<&'a Call>,
    ) -> BoxFuture<'a, Result<SweepCounts, ApiError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}
