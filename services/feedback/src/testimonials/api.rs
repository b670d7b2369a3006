//! `custodian.feedback.v1.FeedbackService`. The stack has already checked
//! the caller, the purpose and every value's form; the kit stores, seals,
//! cuts down and audits. Here: the author's link to identity, the consent
//! to publish (given for a text's hash, a set of fields and a keyed hash of
//! their values; withdrawn; voided by a new text or a new value of a field
//! consented to, each change kept with the policy version in force), and
//! the testimonials built from consents that still match, only.

use custodian_kit::{
    Arg, Call, Filter, Idempotency, New, Query, Records, Sensitive, Shown, Stored, peers::Peers,
    respond,
};
use custodian_privacy::Purpose;
use custodian_proto::{
    audit::v1::AuditOutcome,
    feedback::v1::{
        CreateFeedbackRequest, DeleteFeedbackRequest, Feedback, FeedbackAuthor, GetFeedbackRequest,
        GivePublicationConsentRequest, ListFeedbackRequest, ListFeedbackResponse,
        ListPublicationConsentsRequest, ListPublicationConsentsResponse, ListTestimonialsRequest,
        ListTestimonialsResponse, Publication, PublicationConsentEvent, PublicationState,
        Testimonial, TestimonialField, UpdateFeedbackRequest, WithdrawPublicationConsentRequest,
        feedback_service_server::FeedbackService, publication_consent_event::Kind,
    },
    identity::v1::{
        GetPolicyVersionInForceRequest, GetTenantRequest, GetUserRequest,
        policy_service_client::PolicyServiceClient, tenant_service_client::TenantServiceClient,
        user_service_client::UserServiceClient,
    },
};
use custodian_runtime::{ApiError, error::Violations, paging::Page, time::to_timestamp};
use prost::Message as _;
use prost_reflect::ReflectMessage as _;
use sha2::{Digest as _, Sha256};
use tonic::{Request, Response, Status};

/// The handlers, over the kit's records.
#[derive(Clone)]
pub struct Api {
    pub(crate) feedback: Records<Feedback>,
    pub(crate) events: Records<PublicationConsentEvent>,
    pub(crate) peers: Peers,
}

/// SHA-256 of a text, 64 lower-case hex digits.
fn sha256(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Feedback someone can stand behind: a rating, a text, a source, and an
/// author (a name, or an authorized user whose record supplies it).
fn check_feedback(f: &Feedback, prefix: &str, v: &mut Violations) {
    let author = f.author.clone().unwrap_or_default();
    let named = author
        .person_name
        .as_ref()
        .is_some_and(|n| !n.given_name.is_empty() || !n.family_name.is_empty());
    if author.user.is_empty() && !named {
        v.add(
            format!("{prefix}.author.person_name"),
            "a given or family name is required (or the author's user)",
        );
    }
    if !(1..=5).contains(&f.rating) {
        v.add(format!("{prefix}.rating"), "must be from 1 to 5");
    }
    if f.text.trim().is_empty() {
        v.add(format!("{prefix}.text"), "is required");
    }
    if f.source.is_empty() {
        v.add(
            format!("{prefix}.source"),
            "is required, e.g. web_form, in_platform, email, interview",
        );
    }
}

/// Blind-index domain of the keyed hash of a testimonial's values.
const VALUES: &str = "feedback.testimonial";

/// The keyed hash of the values a consent to `fields` covers: everything
/// the testimonial shows. `hmac` is the vault's blind index (the values are
/// personal: a plain hash of a name could be guessed back).
type Hmac<'a> = &'a dyn Fn(&str, &str) -> String;

fn values_hmac(hmac: Hmac<'_>, f: &Feedback, fields: &[i32]) -> String {
    // prost's encoding of one message is deterministic: equal values, equal
    // bytes.
    let (shown, _) = testimonial(f, fields);
    hmac(VALUES, &hex::encode(shown.encode_to_vec()))
}

/// Whether a publication consent stands now: given, for this text, and for
/// the values its fields hold now. A consent recorded before values were
/// hashed (no hash) covers nothing that can be checked: it stands for
/// nothing until given again.
fn consented<'f>(f: &'f Feedback, hmac: Hmac<'_>) -> Option<&'f Publication> {
    f.publication.as_ref().filter(|p| {
        p.state == PublicationState::Given as i32
            && p.text_sha256 == sha256(&f.text)
            && !p.values_hmac.is_empty()
            && p.values_hmac == values_hmac(hmac, f, &p.fields)
    })
}

/// The fields of the testimonial (by their names in `Testimonial`) whose
/// value differs between two.
fn changed(before: &Testimonial, after: &Testimonial) -> Vec<String> {
    let (before, after) = (before.transcode_to_dynamic(), after.transcode_to_dynamic());
    before
        .descriptor()
        .fields()
        .filter(|field| before.get_field(field) != after.get_field(field))
        .map(|field| field.name().to_owned())
        .collect()
}

/// Whether changing feedback from `before` to `after` voids consent
/// `given`, and why: the testimonial fields whose value the change made
/// differ. It voids when it changes any, and when the values no longer
/// match the consent whatever this change did (a rectification changed
/// them before, or the consent predates the hash): then with no field
/// named.
fn voiding(
    hmac: Hmac<'_>,
    given: &Publication,
    before: &Feedback,
    after: &Feedback,
) -> Option<Vec<String>> {
    let changed = changed(
        &testimonial(before, &given.fields).0,
        &testimonial(after, &given.fields).0,
    );
    let matches = sha256(&after.text) == given.text_sha256
        && !given.values_hmac.is_empty()
        && values_hmac(hmac, after, &given.fields) == given.values_hmac;
    (!changed.is_empty() || !matches).then_some(changed)
}

/// The testimonial of consented feedback: the text, and only the fields
/// consented to. Also the personal units it shows, for the audit trail.
fn testimonial(f: &Feedback, fields: &[i32]) -> (Testimonial, Vec<&'static str>) {
    let author = f.author.clone().unwrap_or_default();
    let name = author.person_name.unwrap_or_default();
    let mut out = Testimonial {
        text: f.text.clone(),
        ..Default::default()
    };
    let mut shown = vec!["text"];
    for field in fields {
        match TestimonialField::try_from(*field) {
            Ok(TestimonialField::GivenName) => {
                out.given_name = name.given_name.clone();
                shown.push("author.person_name");
            }
            Ok(TestimonialField::FamilyNameInitial) => {
                out.family_name_initial = name
                    .family_name
                    .chars()
                    .next()
                    .map(|c| format!("{}.", c.to_uppercase()))
                    .unwrap_or_default();
                shown.push("author.person_name");
            }
            Ok(TestimonialField::Company) => {
                out.company = author.company.clone();
                shown.push("author.company");
            }
            Ok(TestimonialField::JobTitle) => {
                out.job_title = author.job_title.clone();
                shown.push("author.job_title");
            }
            Ok(TestimonialField::Rating) => out.rating = f.rating,
            // Never consented to (refused when given); never shown.
            _ => {}
        }
    }
    shown.sort_unstable();
    shown.dedup();
    (out, shown)
}

/// The fields of a consent, checked: known, showable, each once, in order.
fn showable(fields: &[i32], v: &mut Violations) -> Vec<i32> {
    let mut out = Vec::new();
    for (i, field) in fields.iter().enumerate() {
        match TestimonialField::try_from(*field) {
            Ok(TestimonialField::Email | TestimonialField::Phone) => v.add(
                format!("fields[{i}]"),
                "email and phone are never published; they cannot be consented to",
            ),
            Ok(TestimonialField::Unspecified) | Err(_) => {
                v.add(format!("fields[{i}]"), "is not a field a testimonial shows")
            }
            Ok(_) => out.push(*field),
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// What identity's answer means here.
fn from_identity(status: Status, field: &str, what: &str) -> ApiError {
    match status.code() {
        tonic::Code::NotFound | tonic::Code::PermissionDenied | tonic::Code::InvalidArgument => {
            ApiError::invalid(field, format!("is not {what}"))
        }
        _ => ApiError::Unavailable(
            "identity could not be reached to check the author; nothing was stored".to_owned(),
        ),
    }
}

/// "tenants/{tenant}" (its form checked by the stack) to the tenant id.
fn tenant_of(name: &str) -> String {
    custodian_kit::pattern::tenant_id(name)
        .unwrap_or_default()
        .to_owned()
}

fn no_consent(name: &str) -> ApiError {
    ApiError::FailedPrecondition(format!(
        "{name} has no publication consent in force to withdraw"
    ))
}

impl Api {
    fn now(&self) -> i64 {
        self.feedback.store().now()
    }

    /// The keyed hash the consents use: the vault's blind index.
    fn hmac(&self) -> impl Fn(&str, &str) -> String + '_ {
        let vault = &self.feedback.store().privacy().vault;
        move |domain, value| vault.blind_index(domain, value)
    }

    /// The privacy-policy version in force now, "" when none was ever
    /// published. Identity not answering is UNAVAILABLE: no consent changes
    /// without knowing what it was given under.
    async fn policy_version(&self) -> Result<String, Status> {
        // Published versions are public facts: the service's own credential
        // reads them, whoever the caller is.
        let channel = self.peers.own("identity", Purpose::ServiceDelivery)?;
        let answer = PolicyServiceClient::new(channel)
            .get_policy_version_in_force(GetPolicyVersionInForceRequest {
                time: Some(to_timestamp(self.now())),
            })
            .await;
        match answer {
            Ok(version) => Ok(version.into_inner().name),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(String::new()),
            Err(status) => {
                tracing::warn!(code = ?status.code(), "identity did not say which policy version is in force");
                Err(Status::unavailable(
                    "the policy version in force cannot be read now; nothing was recorded; retry later",
                ))
            }
        }
    }

    /// Checks with identity that the tenant exists and the caller may see
    /// it (same purpose, tenant limit and deadline as the caller).
    async fn check_tenant(&self, call: &Call, tenant_id: &str) -> Result<(), ApiError> {
        if tenant_id.is_empty() {
            return Ok(());
        }
        let channel = self
            .peers
            .forward(call, "identity")
            .map_err(|s| from_identity(s, "feedback.tenant", "a tenant"))?;
        TenantServiceClient::new(channel)
            .get_tenant(GetTenantRequest {
                name: format!("tenants/{tenant_id}"),
            })
            .await
            .map_err(|s| from_identity(s, "feedback.tenant", "a tenant the caller may see"))?;
        Ok(())
    }

    /// Checks an author's user with identity, for the caller, and fills a
    /// missing name from the user's record as the caller may see it.
    async fn check_user(&self, call: &Call, author: &mut FeedbackAuthor) -> Result<(), ApiError> {
        if author.user.is_empty() {
            return Ok(());
        }
        let channel = self
            .peers
            .forward(call, "identity")
            .map_err(|s| from_identity(s, "feedback.author.user", "an authorized user"))?;
        let user = UserServiceClient::new(channel)
            .get_user(GetUserRequest {
                name: author.user.clone(),
            })
            .await
            .map_err(|s| {
                from_identity(
                    s,
                    "feedback.author.user",
                    "an authorized user the caller may see",
                )
            })?
            .into_inner();
        if author
            .person_name
            .as_ref()
            .is_none_or(|n| n.given_name.is_empty() && n.family_name.is_empty())
        {
            author.person_name = user.person_name;
        }
        Ok(())
    }

    /// Records a consent event of `feedback`.
    async fn record(
        &self,
        call: &Call,
        feedback: &Stored<Feedback>,
        event: PublicationConsentEvent,
        idempotency: Option<Idempotency>,
    ) -> Result<(Stored<PublicationConsentEvent>, bool), Status> {
        self.events
            .create_or_replay(
                call,
                New {
                    tenant_id: feedback.tenant_id.clone(),
                    parent_id: feedback.id.clone(),
                    message: event,
                    idempotency,
                },
            )
            .await
    }

    /// Whether the event with id `event_id` is the last of its feedback's
    /// history.
    async fn is_last(
        &self,
        call: &Call,
        feedback: &Stored<Feedback>,
        event_id: &str,
    ) -> Result<bool, Status> {
        let query = Query {
            parent_id: Some(feedback.id.clone()),
            filters: vec![Filter::AtLeast("id", Arg::Text(format!("{event_id}\u{1}")))],
            ..Default::default()
        };
        let page = Page::parse(1, "", "later")?;
        Ok(self.events.query(call, &query, &page).await?.0.is_empty())
    }

    /// A withdrawal or voiding takes the testimonial down before its event
    /// is written (two writes): if the second failed, the history still
    /// ends with the give. Writes the missing event, under `version`,
    /// before consent changes again.
    async fn settle(
        &self,
        call: &Call,
        feedback: &Stored<Feedback>,
        version: &str,
    ) -> Result<(), Status> {
        let Some(publication) = feedback.message.publication.as_ref() else {
            return Ok(());
        };
        let kind = match PublicationState::try_from(publication.state) {
            Ok(PublicationState::Withdrawn) => Kind::Withdrawn,
            Ok(PublicationState::Voided) => Kind::Voided,
            _ => return Ok(()),
        };
        let Some(given_id) = publication.consent_event.rsplit('/').next() else {
            return Ok(());
        };
        if given_id.is_empty() || !self.is_last(call, feedback, given_id).await? {
            return Ok(());
        }
        tracing::warn!("a consent event was missing from a history; written now");
        let event = PublicationConsentEvent {
            kind: kind as i32,
            text_sha256: publication.text_sha256.clone(),
            fields: publication.fields.clone(),
            values_hmac: publication.values_hmac.clone(),
            policy_version: version.to_owned(),
            actor: call.actor().to_owned(),
            ..Default::default()
        };
        self.record(call, feedback, event, None).await?;
        Ok(())
    }
}

fn user_outside(author: Option<&FeedbackAuthor>, tenant_id: &str) -> bool {
    author
        .map(|a| a.user.as_str())
        .is_some_and(|u| !u.is_empty() && !u.starts_with(&format!("tenants/{tenant_id}/")))
}

#[tonic::async_trait]
impl FeedbackService for Api {
    async fn create_feedback(
        &self,
        request: Request<CreateFeedbackRequest>,
    ) -> Result<Response<Feedback>, Status> {
        let call = Call::of(&request)?;
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let idempotency = Idempotency::of("CreateFeedback", "", &request_id, &req)?;
        let mut feedback = req.feedback.unwrap_or_default();
        // A caller limited to a tenant records feedback for its own tenant.
        let tenant_id = if feedback.tenant.is_empty() {
            call.tenant_limit().unwrap_or_default().to_owned()
        } else {
            tenant_of(&feedback.tenant)
        };
        let mut v = Violations::new();
        self.feedback
            .prepare(&mut feedback, "feedback", Sensitive::Refuse, &mut v)?;
        check_feedback(&feedback, "feedback", &mut v);
        if user_outside(feedback.author.as_ref(), &tenant_id) {
            v.add(
                "feedback.author.user",
                "must be an authorized user of the feedback's tenant",
            );
        }
        v.finish()?;
        if !call.sees_tenant(&tenant_id) {
            return Err(self
                .feedback
                .not_found(&call, &format!("tenants/{tenant_id}"))
                .await);
        }
        self.check_tenant(&call, &tenant_id).await?;
        let mut author = feedback.author.take().unwrap_or_default();
        self.check_user(&call, &mut author).await?;
        feedback.author = Some(author);
        let stored = self
            .feedback
            .create(
                &call,
                New {
                    tenant_id,
                    parent_id: String::new(),
                    message: feedback,
                    idempotency,
                },
            )
            .await?;
        let Shown { message, withheld } = self.feedback.shown(&call, &stored)?;
        Ok(respond(message, &withheld))
    }

    async fn get_feedback(
        &self,
        request: Request<GetFeedbackRequest>,
    ) -> Result<Response<Feedback>, Status> {
        let call = Call::of(&request)?;
        let Shown { message, withheld } = self
            .feedback
            .read(&call, &request.get_ref().name, "name")
            .await?;
        Ok(respond(message, &withheld))
    }

    async fn list_feedback(
        &self,
        request: Request<ListFeedbackRequest>,
    ) -> Result<Response<ListFeedbackResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        if req.rating != 0 && !(1..=5).contains(&req.rating) {
            return Err(ApiError::invalid("rating", "must be from 1 to 5 (or 0 for any)").into());
        }
        let source = req.source.trim().to_ascii_lowercase();
        let scope = format!("feedback|{}|{source}|{}", req.tenant, req.rating);
        let page = Page::parse(req.page_size, &req.page_token, &scope)?;
        let mut query = Query::default();
        if !req.tenant.is_empty() {
            query.tenant = Some(tenant_of(&req.tenant));
        }
        if !source.is_empty() {
            query.filters.push(Filter::Eq("source", Arg::Text(source)));
        }
        if req.rating != 0 {
            query
                .filters
                .push(Filter::Eq("rating", Arg::Int(i64::from(req.rating))));
        }
        let (shown, next_page_token, withheld) = self.feedback.list(&call, &query, &page).await?;
        Ok(respond(
            ListFeedbackResponse {
                feedback: shown.into_iter().map(|s| s.message).collect(),
                next_page_token,
            },
            &withheld,
        ))
    }

    async fn update_feedback(
        &self,
        request: Request<UpdateFeedbackRequest>,
    ) -> Result<Response<Feedback>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let mut patch = req.feedback.unwrap_or_default();
        let name = std::mem::take(&mut patch.name);
        self.feedback.parse(&name, "feedback.name")?;
        let paths = self.feedback.mask(req.update_mask)?;
        // The new values are checked (and normalised, so the new text's hash
        // is the stored text's) before anything is read.
        let mut v = Violations::new();
        self.feedback
            .prepare(&mut patch, "feedback", Sensitive::Refuse, &mut v)?;
        v.finish()?;
        let before = self.feedback.find(&call, &name, "feedback.name").await?;
        if paths.iter().any(|p| p == "author" || p == "author.user") {
            let mut author = patch.author.clone().unwrap_or_default();
            if !author.user.is_empty() {
                self.check_user(&call, &mut author).await?;
                patch.author = Some(author);
            }
        }
        // New text, or a new value of a field consented to, voids a consent
        // in force: what it was in force under is read first, so the
        // voiding is never unrecorded.
        let hmac = self.hmac();
        let voids = match before
            .message
            .publication
            .as_ref()
            .filter(|p| p.state == PublicationState::Given as i32)
        {
            Some(given) => {
                let mut preview = before.message.clone();
                self.feedback.apply_mask(&mut preview, &patch, &paths)?;
                voiding(&hmac, given, &before.message, &preview).is_some()
            }
            None => false,
        };
        let version = if voids {
            Some(self.policy_version().await?)
        } else {
            None
        };
        let mut voided: Option<(Publication, Vec<String>)> = None;
        let stored = self
            .feedback
            .update(
                &call,
                &name,
                "feedback.name",
                "feedback",
                |current, after| {
                    voided = None;
                    self.feedback.apply_mask(after, &patch, &paths)?;
                    let given = current
                        .message
                        .publication
                        .clone()
                        .filter(|p| p.state == PublicationState::Given as i32);
                    if let Some(given) = given
                        && let Some(why) = voiding(&hmac, &given, &current.message, after)
                    {
                        if version.is_none() {
                            return Err(ApiError::Aborted(format!(
                                "{name} changed while it was being updated; retry"
                            )));
                        }
                        after.publication = Some(Publication {
                            state: PublicationState::Voided as i32,
                            ..given.clone()
                        });
                        voided = Some((given, why));
                    }
                    Ok(())
                },
                |after, prefix, v| {
                    check_feedback(after, prefix, v);
                    if user_outside(after.author.as_ref(), &before.tenant_id) {
                        v.add(
                            format!("{prefix}.author.user"),
                            "must be an authorized user of the feedback's tenant",
                        );
                    }
                },
            )
            .await?;
        if let Some((given, changed_fields)) = voided {
            let event = PublicationConsentEvent {
                kind: Kind::Voided as i32,
                text_sha256: given.text_sha256,
                fields: given.fields,
                values_hmac: given.values_hmac,
                changed_fields,
                policy_version: version.unwrap_or_default(),
                actor: call.actor().to_owned(),
                ..Default::default()
            };
            self.record(&call, &stored, event, None).await?;
        }
        let Shown { message, withheld } = self.feedback.shown(&call, &stored)?;
        Ok(respond(message, &withheld))
    }

    async fn delete_feedback(
        &self,
        request: Request<DeleteFeedbackRequest>,
    ) -> Result<Response<()>, Status> {
        let call = Call::of(&request)?;
        self.feedback
            .delete(&call, &request.get_ref().name, "name")
            .await?;
        Ok(Response::new(()))
    }

    async fn give_publication_consent(
        &self,
        request: Request<GivePublicationConsentRequest>,
    ) -> Result<Response<PublicationConsentEvent>, Status> {
        let call = Call::of(&request)?;
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let idempotency =
            Idempotency::of("GivePublicationConsent", &req.feedback, &request_id, &req)?;
        let mut v = Violations::new();
        self.feedback.parse(&req.feedback, "feedback")?;
        let fields = showable(&req.fields, &mut v);
        v.finish()?;
        let feedback = self.feedback.find(&call, &req.feedback, "feedback").await?;
        let version = self.policy_version().await?;
        self.settle(&call, &feedback, &version).await?;
        let hash = sha256(&feedback.message.text);
        let hmac = self.hmac();
        // The proof first: a testimonial is never listed without its record.
        let event = PublicationConsentEvent {
            kind: Kind::Given as i32,
            text_sha256: hash.clone(),
            values_hmac: values_hmac(&hmac, &feedback.message, &fields),
            fields: fields.clone(),
            text: feedback.message.text.clone(),
            policy_version: version,
            actor: call.actor().to_owned(),
            ..Default::default()
        };
        let (event, replayed) = self.record(&call, &feedback, event, idempotency).await?;
        let event_name = event.name();
        let done = feedback
            .message
            .publication
            .as_ref()
            .is_some_and(|p| p.consent_event == event_name);
        // A retry completes what its first call left undone, unless the
        // consent has moved on since.
        if !done && (!replayed || self.is_last(&call, &feedback, &event.id).await?) {
            let (text_sha256, fields, values) = (
                event.message.text_sha256.clone(),
                event.message.fields.clone(),
                event.message.values_hmac.clone(),
            );
            let now = self.now();
            self.feedback
                .update(
                    &call,
                    &req.feedback,
                    "feedback",
                    "feedback",
                    |current, after| {
                        if sha256(&current.message.text) != text_sha256
                            || values_hmac(&hmac, &current.message, &fields) != values
                        {
                            return Err(ApiError::Aborted(format!(
                                "{} changed while consent was being given; \
                                 consent must be given for its new values",
                                req.feedback
                            )));
                        }
                        after.publication = Some(Publication {
                            state: PublicationState::Given as i32,
                            text_sha256: text_sha256.clone(),
                            fields: fields.clone(),
                            values_hmac: values.clone(),
                            consent_event: event_name.clone(),
                            give_time: Some(to_timestamp(now)),
                        });
                        Ok(())
                    },
                    |_, _, _| {},
                )
                .await?;
        }
        let Shown { message, withheld } = self.events.shown(&call, &event)?;
        Ok(respond(message, &withheld))
    }

    async fn withdraw_publication_consent(
        &self,
        request: Request<WithdrawPublicationConsentRequest>,
    ) -> Result<Response<PublicationConsentEvent>, Status> {
        let call = Call::of(&request)?;
        let name = request.into_inner().feedback;
        let feedback = self.feedback.find(&call, &name, "feedback").await?;
        if feedback
            .message
            .publication
            .as_ref()
            .is_none_or(|p| p.state != PublicationState::Given as i32)
        {
            return Err(no_consent(&name).into());
        }
        let version = self.policy_version().await?;
        // Off the list first: a withdrawal takes effect at once.
        let mut withdrawn: Option<Publication> = None;
        let stored = self
            .feedback
            .update(
                &call,
                &name,
                "feedback",
                "feedback",
                |current, after| {
                    let given = current
                        .message
                        .publication
                        .clone()
                        .filter(|p| p.state == PublicationState::Given as i32)
                        .ok_or_else(|| no_consent(&name))?;
                    after.publication = Some(Publication {
                        state: PublicationState::Withdrawn as i32,
                        ..given.clone()
                    });
                    withdrawn = Some(given);
                    Ok(())
                },
                |_, _, _| {},
            )
            .await?;
        let given = withdrawn.unwrap_or_default();
        let event = PublicationConsentEvent {
            kind: Kind::Withdrawn as i32,
            text_sha256: given.text_sha256,
            fields: given.fields,
            values_hmac: given.values_hmac,
            policy_version: version,
            actor: call.actor().to_owned(),
            ..Default::default()
        };
        let (event, _) = self.record(&call, &stored, event, None).await?;
        let Shown { message, withheld } = self.events.shown(&call, &event)?;
        Ok(respond(message, &withheld))
    }

    async fn list_publication_consents(
        &self,
        request: Request<ListPublicationConsentsRequest>,
    ) -> Result<Response<ListPublicationConsentsResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let (publication_consent_events, next_page_token, withheld) = self
            .events
            .list_children(
                &call,
                &self.feedback,
                &req.feedback,
                "feedback",
                req.page_size,
                &req.page_token,
            )
            .await?;
        Ok(respond(
            ListPublicationConsentsResponse {
                publication_consent_events,
                next_page_token,
            },
            &withheld,
        ))
    }

    async fn list_testimonials(
        &self,
        request: Request<ListTestimonialsRequest>,
    ) -> Result<Response<ListTestimonialsResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let page = Page::parse(req.page_size, &req.page_token, "testimonials")?;
        let query = Query {
            filters: vec![Filter::Eq(
                "publication_state",
                Arg::Int(PublicationState::Given as i64),
            )],
            ..Default::default()
        };
        let (records, next_page_token) = self.feedback.query(&call, &query, &page).await?;
        // What is shown is what the author consented to, whatever the
        // caller's purpose; each testimonial's read is audited.
        let privacy = self.feedback.store().privacy();
        let mut testimonials = Vec::new();
        let mut events = Vec::new();
        let hmac = self.hmac();
        for stored in &records {
            // Text or a consented value changed outside UpdateFeedback (a
            // rectification): the consent was for other values, so it is
            // no testimonial.
            let Some(publication) = consented(&stored.message, &hmac) else {
                continue;
            };
            let (shown, fields) = testimonial(&stored.message, &publication.fields);
            events.push(privacy.event(
                &call.access,
                &stored.name(),
                &stored.subject_id,
                &fields,
                AuditOutcome::Ok,
            ));
            testimonials.push(shown);
        }
        privacy.record_all(events).await?;
        Ok(Response::new(ListTestimonialsResponse {
            testimonials,
            next_page_token,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custodian_proto::common::v1::PersonName;

    fn feedback() -> Feedback {
        Feedback {
            author: Some(FeedbackAuthor {
                person_name: Some(PersonName {
                    given_name: "Dana".into(),
                    family_name: "doyle".into(),
                }),
                email: "dana@example.com".into(),
                phone: "+4930123456".into(),
                company: "Doyle GmbH".into(),
                job_title: "CTO".into(),
                user: String::new(),
            }),
            rating: 5,
            text: "Great support.".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_testimonial_shows_only_what_was_consented_to() {
        let f = feedback();
        let (t, shown) = testimonial(&f, &[TestimonialField::GivenName as i32]);
        assert_eq!(
            t,
            Testimonial {
                text: "Great support.".into(),
                given_name: "Dana".into(),
                ..Default::default()
            }
        );
        assert_eq!(shown, ["author.person_name", "text"]);
        let (t, _) = testimonial(
            &f,
            &[
                TestimonialField::FamilyNameInitial as i32,
                TestimonialField::Rating as i32,
                TestimonialField::Email as i32,
                TestimonialField::Phone as i32,
            ],
        );
        assert_eq!(t.family_name_initial, "D.");
        assert_eq!(t.rating, 5);
        assert!(t.given_name.is_empty() && t.company.is_empty());
    }

    #[test]
    fn email_and_phone_cannot_be_consented_to() {
        let mut v = Violations::new();
        let fields = showable(
            &[
                TestimonialField::Company as i32,
                TestimonialField::Email as i32,
                TestimonialField::Company as i32,
                TestimonialField::Phone as i32,
                0,
            ],
            &mut v,
        );
        assert_eq!(fields, [TestimonialField::Company as i32]);
        assert!(!v.is_empty());
    }

    /// A stand-in for the vault's keyed hash, deterministic per input.
    fn hmac(domain: &str, value: &str) -> String {
        sha256(&format!("{domain}\0{value}"))
    }

    fn given(f: &Feedback, fields: &[TestimonialField]) -> Publication {
        let fields: Vec<i32> = fields.iter().map(|f| *f as i32).collect();
        Publication {
            state: PublicationState::Given as i32,
            text_sha256: sha256(&f.text),
            values_hmac: values_hmac(&hmac, f, &fields),
            fields,
            ..Default::default()
        }
    }

    #[test]
    fn consent_stands_only_for_its_text() {
        let mut f = feedback();
        f.publication = Some(given(&f, &[]));
        assert!(consented(&f, &hmac).is_some());
        f.text.push('!');
        assert!(consented(&f, &hmac).is_none());
    }

    #[test]
    fn consent_stands_only_for_the_values_of_its_fields() {
        let mut f = feedback();
        f.publication = Some(given(
            &f,
            &[
                TestimonialField::GivenName,
                TestimonialField::Company,
                TestimonialField::FamilyNameInitial,
            ],
        ));
        assert!(consented(&f, &hmac).is_some());
        // A field not consented to changes freely; so does what the
        // testimonial does not show of a consented one (the family name
        // past its initial).
        f.author.as_mut().unwrap().job_title = "CEO".into();
        f.author
            .as_mut()
            .unwrap()
            .person_name
            .as_mut()
            .unwrap()
            .family_name = "Dunn".into();
        f.rating = 2;
        assert!(consented(&f, &hmac).is_some());
        f.author.as_mut().unwrap().company = "Doyle AG".into();
        assert!(consented(&f, &hmac).is_none());
        // No hash (a consent recorded before values were hashed): nothing
        // to check the values against, so it stands for nothing.
        let mut old = feedback();
        old.publication = Some(Publication {
            values_hmac: String::new(),
            ..given(&old, &[TestimonialField::GivenName])
        });
        assert!(consented(&old, &hmac).is_none());
    }

    #[test]
    fn a_change_voids_consent_naming_the_fields_it_changed() {
        let before = feedback();
        let consent = given(
            &before,
            &[TestimonialField::GivenName, TestimonialField::Rating],
        );
        let mut after = before.clone();
        after.author.as_mut().unwrap().company = "Elsewhere Ltd".into();
        after.author.as_mut().unwrap().job_title = "CEO".into();
        assert_eq!(voiding(&hmac, &consent, &before, &after), None);
        after.rating = 4;
        after
            .author
            .as_mut()
            .unwrap()
            .person_name
            .as_mut()
            .unwrap()
            .given_name = "Dan".into();
        assert_eq!(
            voiding(&hmac, &consent, &before, &after),
            Some(vec!["given_name".to_owned(), "rating".to_owned()])
        );
        let mut text = before.clone();
        text.text = "Changed.".into();
        assert_eq!(
            voiding(&hmac, &consent, &before, &text),
            Some(vec!["text".to_owned()])
        );
        // Values that stopped matching before this change (a
        // rectification): voided, with no field to name.
        let mut rectified = before.clone();
        rectified.rating = 1;
        assert_eq!(
            voiding(&hmac, &consent, &rectified, &rectified),
            Some(Vec::new())
        );
    }
}
