//! Feedback and testimonials through the generated clients, on SQLite and
//! PostgreSQL, with identity and tickets beside them in the same process:
//! the publication-consent lifecycle (give, void by new text, give again,
//! withdraw) with its history under the policy version in force; consent
//! voided by a new value of a field it shows (and only such a field); a
//! testimonial shows only what was consented to, to any purpose; the
//! subject contract across identity, tickets and feedback; bad inputs,
//! each refused with nothing stored.

use custodian_privacy::Purpose;
use custodian_proto::{
    common::v1::{SubjectIdentifier, subject_identifier},
    feedback::v1::{
        CreateFeedbackRequest, Feedback, FeedbackAuthor, GetFeedbackRequest,
        GivePublicationConsentRequest, ListPublicationConsentsRequest, ListTestimonialsRequest,
        PublicationConsentEvent, PublicationState, Testimonial, TestimonialField,
        UpdateFeedbackRequest, WithdrawPublicationConsentRequest,
        publication_consent_event::Kind as EventKind,
    },
    identity::v1::{
        CreateContactRequest, CreateUserRequest, PolicyVersion, PublishPolicyVersionRequest,
        policy_service_client::PolicyServiceClient,
    },
    subject::v1::{
        EraseSubjectDataRequest, ExportSubjectDataRequest, FieldCorrection,
        LocateSubjectDataRequest, RectifySubjectDataRequest,
    },
    tickets::v1::{
        CreateTicketRequest, Requester, Ticket,
        ticket::{Channel, Kind as TicketKind},
    },
};
use custodian_runtime::time::{Clock as _, to_timestamp};
use custodian_tests::{Bearer, TestApp, fixtures, storage_test, violations};
use prost::Message as _;
use prost_types::{FieldMask, value::Kind as ValueKind};
use tokio_stream::StreamExt as _;
use tonic::{Code, Status};

const DAY: i64 = 24 * 60 * 60 * 1_000_000;
const TEXT: &str = "Custodian made our audit painless.";
/// SHA-256 of [`TEXT`].
const TEXT_SHA256: &str = "6d7cf9234c98907da58006c525871cbfba7a8f33afcb7c86d3d48b743406eda6";
const NEW_TEXT: &str = "Custodian made our audit painless, and support answered within the hour.";
/// SHA-256 of [`NEW_TEXT`].
const NEW_TEXT_SHA256: &str = "19768a438e892b18ae3d62c1fdd40db4dd2d7bd96c6878116f3baa9d456a5a88";
const POLICY: &str = "policyVersions/v2026_11";
/// A Visa test number (Luhn-valid), as people type it.
const CARD: &str = "4111 1111 1111 1111";

// --- builders ------------------------------------------------------------

fn dana(email: &str) -> Option<FeedbackAuthor> {
    Some(FeedbackAuthor {
        person_name: fixtures::name("Dana", "Quill"),
        email: email.into(),
        phone: "+49 30 901820".into(),
        company: "Northwind Freight".into(),
        job_title: "Head of Compliance".into(),
        user: String::new(),
    })
}

fn feedback(email: &str) -> Feedback {
    Feedback {
        tenant: "tenants/acme".into(),
        author: dana(email),
        rating: 5,
        text: TEXT.into(),
        source: "interview".into(),
        ..Default::default()
    }
}

async fn create(app: &TestApp, feedback: Feedback) -> Result<Feedback, Status> {
    app.feedback()
        .create_feedback(CreateFeedbackRequest {
            feedback: Some(feedback),
            request_id: String::new(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn give(
    app: &TestApp,
    name: &str,
    fields: &[TestimonialField],
    request_id: &str,
) -> Result<PublicationConsentEvent, Status> {
    app.feedback()
        .give_publication_consent(GivePublicationConsentRequest {
            feedback: name.into(),
            fields: fields.iter().map(|f| *f as i32).collect(),
            request_id: request_id.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn withdraw(app: &TestApp, name: &str) -> Result<PublicationConsentEvent, Status> {
    app.feedback()
        .withdraw_publication_consent(WithdrawPublicationConsentRequest {
            feedback: name.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn get(app: &TestApp, name: &str) -> Feedback {
    app.feedback()
        .get_feedback(GetFeedbackRequest { name: name.into() })
        .await
        .expect("get feedback")
        .into_inner()
}

/// The testimonials a caller with only `purpose` sees, and the answer's
/// bytes, to look for what must not be in it.
async fn testimonials_for(app: &TestApp, purpose: Purpose) -> (Vec<Testimonial>, Vec<u8>) {
    let token = app.token(&[purpose], None);
    let answer = app
        .feedback_as(Bearer::new(Some(&token)))
        .list_testimonials(ListTestimonialsRequest::default())
        .await
        .expect("list testimonials")
        .into_inner();
    let bytes = answer.encode_to_vec();
    (answer.testimonials, bytes)
}

async fn testimonials(app: &TestApp) -> Vec<Testimonial> {
    app.feedback()
        .list_testimonials(ListTestimonialsRequest::default())
        .await
        .expect("list testimonials")
        .into_inner()
        .testimonials
}

async fn history(app: &TestApp, name: &str) -> Vec<PublicationConsentEvent> {
    app.feedback()
        .list_publication_consents(ListPublicationConsentsRequest {
            feedback: name.into(),
            ..Default::default()
        })
        .await
        .expect("list publication consents")
        .into_inner()
        .publication_consent_events
}

async fn publish_policy(app: &TestApp) {
    PolicyServiceClient::with_interceptor(app.channel.clone(), Bearer::new(Some(&app.root_token)))
        .publish_policy_version(PublishPolicyVersionRequest {
            policy_version: Some(PolicyVersion {
                version: "v2026_11".into(),
                effective_time: Some(to_timestamp(app.clock.now_micros() - DAY)),
                text_sha256: "ab".repeat(32),
                url: "https://example.com/privacy/v2026_11".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("publish a policy version");
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

fn has_violation(status: &Status, field: &str) -> bool {
    violations(status).iter().any(|(f, _)| f == field)
}

fn email_subject(e: &str) -> Option<SubjectIdentifier> {
    Some(SubjectIdentifier {
        kind: Some(subject_identifier::Kind::Email(e.into())),
    })
}

fn id_subject(name: &str) -> Option<SubjectIdentifier> {
    Some(SubjectIdentifier {
        kind: Some(subject_identifier::Kind::Id(name.into())),
    })
}

async fn located(app: &TestApp, service: &str, subject: Option<SubjectIdentifier>) -> Vec<String> {
    let mut names: Vec<String> = app
        .subjects_of(service)
        .locate_subject_data(LocateSubjectDataRequest {
            subject,
            ..Default::default()
        })
        .await
        .expect("locate")
        .into_inner()
        .records
        .into_iter()
        .map(|r| r.resource)
        .collect();
    names.sort();
    names
}

async fn exported(app: &TestApp, service: &str, email: &str) -> Vec<(String, prost_types::Struct)> {
    let mut stream = app
        .subjects_of(service)
        .export_subject_data(ExportSubjectDataRequest {
            subject: email_subject(email),
            ..Default::default()
        })
        .await
        .expect("export")
        .into_inner();
    let mut out = Vec::new();
    while let Some(item) = stream.next().await {
        let item = item.expect("an exported record");
        out.push((item.record.unwrap().resource, item.data.unwrap_or_default()));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn string_field(data: &prost_types::Struct, key: &str) -> String {
    match data.fields.get(key).and_then(|v| v.kind.clone()) {
        Some(ValueKind::StringValue(s)) => s,
        other => panic!("{key}: {other:?}"),
    }
}

// --- the consent lifecycle -----------------------------------------------

storage_test!(
    consent_is_for_the_exact_text_and_fields_and_every_change_is_kept,
    |app: TestApp| async move {
        fixtures::tenant(&app, "acme").await;
        publish_policy(&app).await;
        let created = create(&app, feedback("dana@example.com")).await.unwrap();
        let name = created.name.clone();
        assert!(name.starts_with("feedback/"), "{name}");
        assert_eq!(
            created.publication.unwrap_or_default().state,
            PublicationState::Unspecified as i32
        );
        // No consent: no testimonial.
        assert!(testimonials(&app).await.is_empty());

        // Consent to the given name and the company.
        let given = give(
            &app,
            &name,
            &[TestimonialField::Company, TestimonialField::GivenName],
            "",
        )
        .await
        .unwrap();
        assert_eq!(given.kind, EventKind::Given as i32);
        assert_eq!(given.text_sha256, TEXT_SHA256);
        assert_eq!(given.text, TEXT, "what was agreed is kept as proof");
        assert_eq!(given.policy_version, POLICY);
        assert_eq!(
            given.fields,
            [
                TestimonialField::GivenName as i32,
                TestimonialField::Company as i32
            ]
        );
        assert!(given.name.starts_with(&format!("{name}/consentEvents/")));
        let publication = get(&app, &name).await.publication.unwrap();
        assert_eq!(publication.state, PublicationState::Given as i32);
        assert_eq!(publication.text_sha256, TEXT_SHA256);
        assert_eq!(publication.consent_event, given.name);

        // Listed with exactly the consented fields, to every purpose the
        // method serves; nothing else of Dana's is in the answer.
        let expected = Testimonial {
            text: TEXT.into(),
            given_name: "Dana".into(),
            company: "Northwind Freight".into(),
            ..Default::default()
        };
        for purpose in [Purpose::ServiceDelivery, Purpose::ProductAnalytics] {
            let (listed, bytes) = testimonials_for(&app, purpose).await;
            assert_eq!(listed, std::slice::from_ref(&expected), "{purpose:?}");
            let text = String::from_utf8_lossy(&bytes);
            for secret in [
                "dana@example.com",
                "901820",
                "Quill",
                "Head of Compliance",
                name.as_str(),
                "acme",
            ] {
                assert!(!text.contains(secret), "{purpose:?} sees {secret}");
            }
        }
        // A caller limited to another tenant sees none of acme's.
        let globex = app.token(&[Purpose::ServiceDelivery], Some("globex"));
        let listed = app
            .feedback_as(Bearer::new(Some(&globex)))
            .list_testimonials(ListTestimonialsRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(listed.testimonials.is_empty());
        // Each testimonial read is audited, naming what it showed.
        app.sealed().await;
        let reads: Vec<_> = app
            .audit_events()
            .await
            .into_iter()
            .filter(|e| e.method.ends_with("/ListTestimonials") && e.resource == name)
            .collect();
        assert_eq!(reads.len(), 2, "one per listing");
        for read in &reads {
            assert_eq!(
                read.fields,
                ["author.company", "author.person_name", "text"],
                "{read:?}"
            );
        }
        // A purpose ListTestimonials does not serve sees none.
        let support = app.token(&[Purpose::Support], None);
        let refused = app
            .feedback_as(Bearer::new(Some(&support)))
            .list_testimonials(ListTestimonialsRequest::default())
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied);

        // New text voids the consent: off the list at once.
        let edited = app
            .feedback()
            .update_feedback(UpdateFeedbackRequest {
                feedback: Some(Feedback {
                    name: name.clone(),
                    text: NEW_TEXT.into(),
                    ..Default::default()
                }),
                update_mask: mask(&["text"]),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(edited.text, NEW_TEXT);
        let publication = edited.publication.unwrap();
        assert_eq!(publication.state, PublicationState::Voided as i32);
        assert!(testimonials(&app).await.is_empty());
        // A change that leaves the text alone voids nothing more.
        app.feedback()
            .update_feedback(UpdateFeedbackRequest {
                feedback: Some(Feedback {
                    name: name.clone(),
                    rating: 4,
                    ..Default::default()
                }),
                update_mask: mask(&["rating"]),
            })
            .await
            .unwrap();
        assert_eq!(history(&app, &name).await.len(), 2);

        // Given again, for the new text (retried with its key: once).
        let key = uuid::Uuid::new_v4().to_string();
        let again = give(&app, &name, &[TestimonialField::GivenName], &key)
            .await
            .unwrap();
        let retried = give(&app, &name, &[TestimonialField::GivenName], &key)
            .await
            .unwrap();
        assert_eq!(again.name, retried.name);
        assert_eq!(again.text_sha256, NEW_TEXT_SHA256);
        assert_eq!(
            testimonials(&app).await,
            [Testimonial {
                text: NEW_TEXT.into(),
                given_name: "Dana".into(),
                ..Default::default()
            }]
        );

        // Withdrawn: off at once; withdrawing again has nothing to withdraw.
        let withdrawn = withdraw(&app, &name).await.unwrap();
        assert_eq!(withdrawn.kind, EventKind::Withdrawn as i32);
        assert!(testimonials(&app).await.is_empty());
        assert_eq!(
            get(&app, &name).await.publication.unwrap().state,
            PublicationState::Withdrawn as i32
        );
        let refused = withdraw(&app, &name).await.unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition);

        // The history: give, void, give, withdraw; what was agreed, under
        // which policy version.
        let events = history(&app, &name).await;
        let kinds: Vec<i32> = events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                EventKind::Given as i32,
                EventKind::Voided as i32,
                EventKind::Given as i32,
                EventKind::Withdrawn as i32
            ]
        );
        let hashes: Vec<&str> = events.iter().map(|e| e.text_sha256.as_str()).collect();
        assert_eq!(
            hashes,
            [TEXT_SHA256, TEXT_SHA256, NEW_TEXT_SHA256, NEW_TEXT_SHA256]
        );
        assert!(events.iter().all(|e| e.policy_version == POLICY));
        assert!(events.iter().all(|e| e.create_time.is_some()));
        assert_eq!(events[2].text, NEW_TEXT);
        assert_eq!(events[3].fields, [TestimonialField::GivenName as i32]);
        assert_eq!(app.count("feedback_consent_events").await, 4);

        // A purpose that may not see the text sees the feedback without it.
        let analytics = app.token(&[Purpose::ProductAnalytics], None);
        let seen = app
            .feedback_as(Bearer::new(Some(&analytics)))
            .get_feedback(GetFeedbackRequest { name: name.clone() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(seen.text, NEW_TEXT);
        assert!(seen.author.unwrap_or_default().email.is_empty());
    }
);

async fn update(app: &TestApp, name: &str, patch: Feedback, paths: &[&str]) -> Feedback {
    app.feedback()
        .update_feedback(UpdateFeedbackRequest {
            feedback: Some(Feedback {
                name: name.into(),
                ..patch
            }),
            update_mask: mask(paths),
        })
        .await
        .expect("update feedback")
        .into_inner()
}

fn author(change: impl FnOnce(&mut FeedbackAuthor)) -> Feedback {
    let mut author = FeedbackAuthor::default();
    change(&mut author);
    Feedback {
        author: Some(author),
        ..Default::default()
    }
}

storage_test!(
    consent_covers_the_values_of_its_fields_as_they_were,
    |app: TestApp| async move {
        use TestimonialField::{Company, GivenName};
        fixtures::tenant(&app, "acme").await;
        publish_policy(&app).await;
        let name = create(&app, feedback("dana@example.com"))
            .await
            .unwrap()
            .name;
        let shown = |given: &str, company: &str| Testimonial {
            text: TEXT.into(),
            given_name: given.into(),
            company: company.into(),
            ..Default::default()
        };
        give(&app, &name, &[GivenName, Company], "").await.unwrap();
        assert_eq!(
            testimonials(&app).await,
            [shown("Dana", "Northwind Freight")]
        );
        // The values are kept as a keyed hash only.
        let publication = get(&app, &name).await.publication.unwrap();
        assert_eq!(publication.values_hmac.len(), 43, "HMAC-SHA-256, base64url");

        // A field not consented to changes without voiding anything.
        update(
            &app,
            &name,
            author(|a| a.job_title = "COO".into()),
            &["author.job_title"],
        )
        .await;
        assert_eq!(
            testimonials(&app).await,
            [shown("Dana", "Northwind Freight")]
        );
        assert_eq!(history(&app, &name).await.len(), 1);

        // A new company voids the consent: it was for the old one.
        let edited = update(
            &app,
            &name,
            author(|a| a.company = "Southwind Logistics".into()),
            &["author.company"],
        )
        .await;
        assert_eq!(
            edited.publication.unwrap().state,
            PublicationState::Voided as i32
        );
        assert!(
            testimonials(&app).await.is_empty(),
            "not listed under the new company"
        );
        let events = history(&app, &name).await;
        let kinds: Vec<i32> = events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [EventKind::Given as i32, EventKind::Voided as i32]);
        assert_eq!(events[1].changed_fields, ["company"]);
        assert_eq!(events[1].values_hmac, events[0].values_hmac);
        assert_eq!(events[1].fields, events[0].fields);
        assert_eq!(events[1].policy_version, POLICY);

        // Consent for the new values; then a new given name voids it.
        give(&app, &name, &[GivenName, Company], "").await.unwrap();
        assert_eq!(
            testimonials(&app).await,
            [shown("Dana", "Southwind Logistics")]
        );
        update(
            &app,
            &name,
            author(|a| a.person_name = fixtures::name("Dora", "Quill")),
            &["author.person_name"],
        )
        .await;
        assert!(
            testimonials(&app).await.is_empty(),
            "not listed under the new name"
        );
        let events = history(&app, &name).await;
        assert_eq!(events.len(), 4);
        assert_eq!(events[3].kind, EventKind::Voided as i32);
        assert_eq!(events[3].changed_fields, ["given_name"]);

        // A value rectified outside UpdateFeedback (a data-subject request)
        // is no longer what was consented to: not listed from then on, and
        // the next change records the voiding.
        give(&app, &name, &[GivenName, Company], "").await.unwrap();
        assert_eq!(
            testimonials(&app).await,
            [shown("Dora", "Southwind Logistics")]
        );
        app.subjects_of("feedback")
            .rectify_subject_data(RectifySubjectDataRequest {
                subject: email_subject("dana@example.com"),
                corrections: vec![FieldCorrection {
                    resource: name.clone(),
                    field_path: "author.company".into(),
                    value: "Eastwind Partners".into(),
                }],
                ..Default::default()
            })
            .await
            .expect("rectify");
        assert!(testimonials(&app).await.is_empty(), "rectified: not listed");
        update(
            &app,
            &name,
            author(|a| a.job_title = "CEO".into()),
            &["author.job_title"],
        )
        .await;
        let events = history(&app, &name).await;
        assert_eq!(events.len(), 6);
        assert_eq!(events[5].kind, EventKind::Voided as i32);
        assert!(events[5].changed_fields.is_empty(), "{:?}", events[5]);

        // New text still voids, and says so.
        give(&app, &name, &[GivenName], "").await.unwrap();
        update(
            &app,
            &name,
            Feedback {
                text: NEW_TEXT.into(),
                ..Default::default()
            },
            &["text"],
        )
        .await;
        assert!(testimonials(&app).await.is_empty());
        let events = history(&app, &name).await;
        assert_eq!(events[7].kind, EventKind::Voided as i32);
        assert_eq!(events[7].changed_fields, ["text"]);
    }
);

// --- data-subject rights across identity, tickets and feedback -------------

storage_test!(
    one_person_is_found_exported_and_erased_in_identity_tickets_and_feedback,
    |app: TestApp| async move {
        fixtures::tenant(&app, "acme").await;
        const EMAIL: &str = "dana@example.com";
        let contact = app
            .contacts()
            .create_contact(CreateContactRequest {
                parent: "tenants/acme".into(),
                contact: Some(fixtures::contact(EMAIL)),
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let ticket = app
            .tickets()
            .create_ticket(CreateTicketRequest {
                ticket: Some(Ticket {
                    tenant: "tenants/acme".into(),
                    channel: Channel::WebForm as i32,
                    kind: TicketKind::Inquiry as i32,
                    category: "privacy".into(),
                    subject: "Where is my testimonial?".into(),
                    requester: Some(Requester {
                        person_name: fixtures::name("Dana", "Quill"),
                        email: EMAIL.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                description: String::new(),
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let mine = create(&app, feedback("Dana@Example.com")).await.unwrap();
        let given = give(&app, &mine.name, &[TestimonialField::GivenName], "")
            .await
            .unwrap();
        // Someone else's testimonial stays through Dana's erasure.
        let other = create(
            &app,
            Feedback {
                author: Some(FeedbackAuthor {
                    person_name: fixtures::name("Eli", "Stone"),
                    email: "eli@example.com".into(),
                    ..Default::default()
                }),
                ..feedback("eli@example.com")
            },
        )
        .await
        .unwrap();
        give(&app, &other.name, &[TestimonialField::GivenName], "")
            .await
            .unwrap();
        // Feedback from an authorized user, found by the user's name.
        let user = app
            .users()
            .create_user(CreateUserRequest {
                parent: "tenants/acme".into(),
                user: Some(fixtures::user("ann@example.com")),
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let by_user = create(
            &app,
            Feedback {
                author: Some(FeedbackAuthor {
                    user: user.name.clone(),
                    ..Default::default()
                }),
                ..feedback("")
            },
        )
        .await
        .unwrap();
        assert_eq!(
            by_user.author.unwrap().person_name,
            fixtures::name("Ann", "Archer"),
            "the name comes from the user's record"
        );
        assert_eq!(
            located(&app, "feedback", id_subject(&user.name)).await,
            std::slice::from_ref(&by_user.name)
        );
        assert_eq!(testimonials(&app).await.len(), 2);

        // Each service finds its own records of Dana.
        assert_eq!(
            located(&app, "identity", email_subject(EMAIL)).await,
            std::slice::from_ref(&contact.name)
        );
        assert_eq!(
            located(&app, "tickets", email_subject(EMAIL)).await,
            std::slice::from_ref(&ticket.name)
        );
        let mut expected = vec![mine.name.clone(), given.name.clone()];
        expected.sort();
        assert_eq!(
            located(&app, "feedback", email_subject(EMAIL)).await,
            expected
        );

        // Exports: the contact, the ticket, the feedback and her consent.
        let identity = exported(&app, "identity", EMAIL).await;
        assert_eq!(identity.len(), 1);
        assert_eq!(string_field(&identity[0].1, "email"), EMAIL);
        let tickets = exported(&app, "tickets", EMAIL).await;
        assert_eq!(tickets.len(), 1);
        assert_eq!(
            string_field(&tickets[0].1, "subject"),
            "Where is my testimonial?"
        );
        let feedback_export = exported(&app, "feedback", EMAIL).await;
        let names: Vec<&str> = feedback_export.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, expected);
        let (_, data) = feedback_export
            .iter()
            .find(|(n, _)| *n == mine.name)
            .unwrap();
        assert_eq!(string_field(data, "text"), TEXT);
        let (_, data) = feedback_export
            .iter()
            .find(|(n, _)| *n == given.name)
            .unwrap();
        assert_eq!(string_field(data, "text"), TEXT, "the consent she gave");

        // Erased everywhere; nothing of hers is found again.
        for service in ["identity", "tickets", "feedback"] {
            app.subjects_of(service)
                .erase_subject_data(EraseSubjectDataRequest {
                    subject: email_subject(EMAIL),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("erasing in {service}: {e}"));
        }
        for service in ["identity", "tickets", "feedback"] {
            assert!(
                located(&app, service, email_subject(EMAIL))
                    .await
                    .is_empty(),
                "{service} still holds Dana's data"
            );
            assert!(exported(&app, service, EMAIL).await.is_empty(), "{service}");
        }
        let refused = app
            .feedback()
            .get_feedback(GetFeedbackRequest {
                name: mine.name.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::NotFound);
        let left = testimonials(&app).await;
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].given_name, "Eli");
        // Her consent events went with her feedback; Eli's stay.
        assert_eq!(app.count("feedback_consent_events").await, 1);
        assert_eq!(app.count("feedback_feedback").await, 2);
    }
);

// --- bad inputs ------------------------------------------------------------

storage_test!(
    bad_inputs_are_refused_and_nothing_is_stored,
    |app: TestApp| async move {
        fixtures::tenant(&app, "acme").await;
        // Ratings out of range.
        for rating in [0, 6, -1] {
            let refused = create(
                &app,
                Feedback {
                    rating,
                    ..feedback("dana@example.com")
                },
            )
            .await
            .unwrap_err();
            assert_eq!(refused.code(), Code::InvalidArgument);
            assert!(has_violation(&refused, "feedback.rating"), "{refused:?}");
        }
        // Sensitive data in the text, never echoed.
        let refused = create(
            &app,
            Feedback {
                text: format!("Loved it; my card is {CARD}"),
                ..feedback("dana@example.com")
            },
        )
        .await
        .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(has_violation(&refused, "feedback.text"), "{refused:?}");
        assert!(!refused.message().contains("4111"));
        // No author, no text, no source.
        let refused = create(
            &app,
            Feedback {
                rating: 3,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        for field in [
            "feedback.author.person_name",
            "feedback.text",
            "feedback.source",
        ] {
            assert!(has_violation(&refused, field), "{field}: {refused:?}");
        }
        assert_eq!(app.count("feedback_feedback").await, 0);

        let stored = create(&app, feedback("dana@example.com")).await.unwrap();
        let name = stored.name.clone();

        // Email and phone are never published, whatever else is asked.
        for fields in [
            vec![TestimonialField::Email],
            vec![TestimonialField::GivenName, TestimonialField::Phone],
            vec![TestimonialField::Unspecified],
        ] {
            let refused = give(&app, &name, &fields, "").await.unwrap_err();
            assert_eq!(refused.code(), Code::InvalidArgument, "{fields:?}");
        }
        // Consent to feedback that does not exist.
        let unknown = format!("feedback/{}", uuid::Uuid::now_v7());
        let refused = give(&app, &unknown, &[TestimonialField::GivenName], "")
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::NotFound);
        // Withdrawing what was never given.
        let refused = withdraw(&app, &name).await.unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition);
        // Sensitive data, or a bad rating, through an update.
        for (patch, path) in [
            (
                Feedback {
                    name: name.clone(),
                    text: format!("Card {CARD}"),
                    ..Default::default()
                },
                "text",
            ),
            (
                Feedback {
                    name: name.clone(),
                    rating: 9,
                    ..Default::default()
                },
                "rating",
            ),
        ] {
            let refused = app
                .feedback()
                .update_feedback(UpdateFeedbackRequest {
                    feedback: Some(patch),
                    update_mask: mask(&[path]),
                })
                .await
                .unwrap_err();
            assert_eq!(refused.code(), Code::InvalidArgument, "{path}");
            assert!(
                has_violation(&refused, &format!("feedback.{path}")),
                "{refused:?}"
            );
        }
        // Nothing changed, nothing recorded, nothing listed.
        let now = get(&app, &name).await;
        assert_eq!((now.text.as_str(), now.rating), (TEXT, 5));
        assert_eq!(now.update_time, stored.update_time);
        assert_eq!(app.count("feedback_feedback").await, 1);
        assert_eq!(app.count("feedback_consent_events").await, 0);
        assert!(history(&app, &name).await.is_empty());
        assert!(testimonials(&app).await.is_empty());
    }
);

// --- a withdrawal whose event was lost ---------------------------------------

storage_test!(
    a_lost_withdrawal_event_is_written_before_consent_changes_again,
    |app: TestApp| async move {
        fixtures::tenant(&app, "acme").await;
        let name = create(&app, feedback("dana@example.com"))
            .await
            .unwrap()
            .name;
        give(&app, &name, &[TestimonialField::Rating], "")
            .await
            .unwrap();
        withdraw(&app, &name).await.unwrap();
        // As if the process died between taking the testimonial down and
        // writing the withdrawal's event.
        sqlx::query("DELETE FROM feedback_consent_events WHERE kind = 2")
            .execute(&app.raw)
            .await
            .unwrap();
        assert_eq!(history(&app, &name).await.len(), 1);
        assert!(testimonials(&app).await.is_empty(), "it stays down");

        give(&app, &name, &[TestimonialField::Rating], "")
            .await
            .unwrap();
        let kinds: Vec<i32> = history(&app, &name).await.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                EventKind::Given as i32,
                EventKind::Withdrawn as i32,
                EventKind::Given as i32
            ]
        );
        assert_eq!(
            testimonials(&app).await,
            [Testimonial {
                text: TEXT.into(),
                rating: 5,
                ..Default::default()
            }]
        );
    }
);

// --- identity unreachable ------------------------------------------------------

/// Consent is never recorded without the policy version it was given
/// under: with identity unreachable, giving is UNAVAILABLE and nothing is
/// stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_consent_is_recorded_while_identity_cannot_say_which_policy_is_in_force() {
    let app = custodian_tests::spawn_with(custodian_tests::Backend::Sqlite, |c| {
        // Nothing listens on port 1.
        c.peers
            .insert("identity".into(), "http://127.0.0.1:1".into());
    })
    .await
    .unwrap();
    // Feedback held for the company: creating it needs no call to identity.
    let name = create(
        &app,
        Feedback {
            tenant: String::new(),
            ..feedback("dana@example.com")
        },
    )
    .await
    .unwrap()
    .name;
    let refused = give(&app, &name, &[TestimonialField::GivenName], "")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(app.count("feedback_consent_events").await, 0);
    assert_eq!(
        get(&app, &name).await.publication.unwrap_or_default().state,
        PublicationState::Unspecified as i32
    );
    assert!(testimonials(&app).await.is_empty());
    app.stop().await.unwrap();
}
