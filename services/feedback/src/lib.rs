//! Feedback and surveys. Customers' feedback may be published as a
//! testimonial only with consent given for the exact text and the exact
//! fields shown, withdrawable at any time, with every give, withdrawal and
//! voiding kept as proof; survey responses are kept apart from who gave
//! them and come out only in aggregate, k-anonymous, with a guard against
//! differencing queries.

mod surveys;
mod testimonials;

use std::sync::Arc;

use anyhow::Context as _;
use custodian_kit::{
    Call, Context, KitService, Store,
    retention::{PeerPolicy, StoreSweep, Sweep},
    subject::{StoreSubjectData, SubjectData},
};
use custodian_privacy::{Purpose, retention::SweepCounts};
use custodian_proto::{
    common::v1::SubjectIdentifier,
    privacy::v1::{
        Controller as ControllerDecl, DataCategory, DataMapField, DataMapResource, Erasure,
    },
    subject::v1::{ExportSubjectDataResponse, FieldCorrection, SubjectRecord},
};
use custodian_runtime::{ApiError, server::Limits};
use futures::future::BoxFuture;
use tonic::{Status, service::RoutesBuilder};

/// The `--target` name of this service.
pub const NAME: &str = "feedback";

/// What feedback's service credential may do when it calls others: read
/// the published policy versions and authorized users (service delivery),
/// and the retention policy (administration).
pub const PEER_PURPOSES: &[Purpose] = &[Purpose::ServiceDelivery, Purpose::Administration];

/// The methods of other services feedback calls, and the only ones its
/// service credential may call (the gate refuses any other): the policy
/// version a publication consent is given under, a feedback's tenant and
/// author checked with identity for the caller (`testimonials/api.rs`), and
/// the retention policy for its sweeps (the kit's `PeerPolicy`).
pub const PEER_CALLS: &[&str] = &[
    "/custodian.identity.v1.PolicyService/GetPolicyVersionInForce",
    "/custodian.identity.v1.TenantService/GetTenant",
    "/custodian.identity.v1.UserService/GetUser",
    "/custodian.retention.v1.RetentionService/GetRetentionPolicy",
];

/// The feedback service, ready to be handed to the kit.
pub struct Feedback {
    context: Context,
    store: Store,
    testimonials: Arc<testimonials::Part>,
    surveys: Arc<surveys::Part>,
}

impl Feedback {
    pub fn new(context: Context) -> Self {
        let mut bindings = testimonials::Part::bindings();
        bindings.extend(surveys::Part::bindings());
        let store = Store::new(
            context.db.clone(),
            context.privacy.clone(),
            context.clock.clone(),
            bindings,
        );
        Self {
            testimonials: Arc::new(testimonials::Part::new(&context, &store)),
            surveys: Arc::new(surveys::Part::new(&context, &store)),
            context,
            store,
        }
    }
}

impl KitService for Feedback {
    fn name(&self) -> &'static str {
        NAME
    }

    fn grpc_services(&self) -> Vec<&'static str> {
        let mut services = testimonials::Part::grpc_services();
        services.extend(surveys::Part::grpc_services());
        services
    }

    fn register(&self, routes: &mut RoutesBuilder, limits: Limits) {
        self.testimonials.register(routes, limits);
        self.surveys.register(routes, limits);
    }

    fn start(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            self.context
                .db
                .migrate(NAME, sqlx::migrate!("./migrations"))
                .await?;
            // Before anything is served: no plaintext an older version
            // wrote stays readable.
            self.surveys
                .seal_plaintext()
                .await
                .map_err(anyhow::Error::from)
                .context("sealing survey free text left in plaintext")?;
            Ok(())
        })
    }

    fn store(&self) -> &Store {
        &self.store
    }

    fn held_in_bulk(&self) -> Vec<DataMapResource> {
        // Survey responses: apart from the respondent (the link to the
        // invitation goes at close), read only as k-anonymous aggregates.
        vec![DataMapResource {
            message: "custodian.feedback.v1.SurveyAnswer".to_owned(),
            pattern: "surveys/{survey}/responses".to_owned(),
            data_category: DataCategory::Feedback as i32,
            controller: ControllerDecl::Company as i32,
            personal_fields: vec![DataMapField {
                path: "text (free-text answers; sensitive data refused; sealed under the survey's key, destroyed with the responses; unlinked from the person at close)"
                    .to_owned(),
                visible_to: Vec::new(),
                lookup: 0,
                encrypted_at_rest: true,
            }],
            default_retention: Some(prost_types::Duration {
                seconds: 30 * 86_400,
                nanos: 0,
            }),
            retention_clock: "the survey's close (aggregates are kept)".to_owned(),
            tenant_may_set_retention: false,
            erasure: Erasure::Delete as i32,
            purposes: Vec::new(),
        }]
    }

    fn subject_data(&self) -> Arc<dyn SubjectData> {
        let mut parts: Vec<Arc<dyn SubjectData>> =
            vec![Arc::new(StoreSubjectData::new(self.store.clone()))];
        parts.extend(self.testimonials.subject_data());
        parts.extend(self.surveys.subject_data());
        Arc::new(Chain(parts))
    }

    fn sweeper(&self) -> Arc<dyn Sweep> {
        Arc::new(FeedbackSweep {
            records: StoreSweep::new(
                self.store.clone(),
                Arc::new(PeerPolicy::new(self.context.peers.clone())),
            ),
            testimonials: self.testimonials.clone(),
            surveys: self.surveys.clone(),
        })
    }
}

/// Data-subject rights over several parts: each finds, exports, corrects
/// and erases what it holds; the answers are joined.
struct Chain(Vec<Arc<dyn SubjectData>>);

impl SubjectData for Chain {
    fn locate<'a>(
        &'a self,
        call: &'a Call,
        subject: Option<SubjectIdentifier>,
    ) -> BoxFuture<'a, Result<Vec<SubjectRecord>, Status>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for part in &self.0 {
                out.extend(part.locate(call, subject.clone()).await?);
            }
            Ok(out)
        })
    }

    fn export<'a>(
        &'a self,
        call: &'a Call,
        subject: Option<SubjectIdentifier>,
    ) -> BoxFuture<'a, Result<Vec<ExportSubjectDataResponse>, Status>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for part in &self.0 {
                out.extend(part.export(call, subject.clone()).await?);
            }
            Ok(out)
        })
    }

    fn rectify<'a>(
        &'a self,
        call: &'a Call,
        subject: Option<SubjectIdentifier>,
        corrections: Vec<FieldCorrection>,
    ) -> BoxFuture<'a, Result<Vec<SubjectRecord>, Status>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for part in &self.0 {
                out.extend(
                    part.rectify(call, subject.clone(), corrections.clone())
                        .await?,
                );
            }
            Ok(out)
        })
    }

    fn erase<'a>(
        &'a self,
        call: &'a Call,
        subject: Option<SubjectIdentifier>,
    ) -> BoxFuture<'a, Result<Vec<SubjectRecord>, Status>> {
        Box::pin(async move {
            // The parts first: they may need the kit's records (a person's
            // link to their responses) to find what to erase.
            let mut out = Vec::new();
            for part in self.0.iter().rev() {
                out.extend(part.erase(call, subject.clone()).await?);
            }
            Ok(out)
        })
    }
}

struct FeedbackSweep {
    records: StoreSweep,
    testimonials: Arc<testimonials::Part>,
    surveys: Arc<surveys::Part>,
}

impl Sweep for FeedbackSweep {
    fn service(&self) -> &'static str {
        NAME
    }

    fn sweep<'a>(
        &'a self,
        now: i64,
        by: Option<&'a Call>,
    ) -> BoxFuture<'a, Result<SweepCounts, ApiError>> {
        Box::pin(async move {
            let mut counts = self.records.sweep(now, by).await?;
            let extra = [
                self.testimonials.sweep(now, by).await?,
                self.surveys.sweep(now, by).await?,
            ];
            for part in extra {
                for (category, n) in part {
                    match counts.iter_mut().find(|(c, _)| *c == category) {
                        Some((_, total)) => *total += n,
                        None => counts.push((category, n)),
                    }
                }
            }
            Ok(counts)
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
