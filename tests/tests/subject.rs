//! The subject-data contract as identity implements it: locate, export,
//! rectify and erase a person's records across users, contacts and
//! evaluation sign-ups, narrowed to one controller, once per data-subject
//! request, on SQLite and PostgreSQL.

use custodian_privacy::Purpose;
use custodian_proto::{
    audit::v1::{AuditAction, AuditEvent, AuditOutcome},
    common::v1::{Controller, DataCategory, SubjectIdentifier, controller, subject_identifier},
    identity::v1::{
        CreateContactRequest, CreateEvaluationSignupRequest, CreateUserRequest, GetContactRequest,
        GetUserRequest,
    },
    subject::v1::{
        EraseSubjectDataRequest, ExportSubjectDataRequest, FieldCorrection,
        LocateSubjectDataRequest, RectifySubjectDataRequest,
    },
};
use custodian_tests::{Bearer, TestApp, fixtures, storage_test, violations};
use prost_types::value::Kind as ValueKind;
use tokio_stream::StreamExt as _;
use tonic::Code;

fn email(e: &str) -> Option<SubjectIdentifier> {
    Some(SubjectIdentifier {
        kind: Some(subject_identifier::Kind::Email(e.into())),
    })
}

fn phone(p: &str) -> Option<SubjectIdentifier> {
    Some(SubjectIdentifier {
        kind: Some(subject_identifier::Kind::Phone(p.into())),
    })
}

fn id(name: &str) -> Option<SubjectIdentifier> {
    Some(SubjectIdentifier {
        kind: Some(subject_identifier::Kind::Id(name.into())),
    })
}

/// Ann is an authorized user of acme, a contact held by globex, and signed
/// up for an evaluation; Bob is only a contact.
async fn seed(app: &TestApp) -> (String, String, String) {
    fixtures::tenant(app, "acme").await;
    fixtures::tenant(app, "globex").await;
    let mut user = fixtures::user("ann@example.com");
    user.phone = "+49 30 901820".into();
    let user = app
        .users()
        .create_user(CreateUserRequest {
            parent: "tenants/acme".into(),
            user: Some(user),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut contact = fixtures::contact("ANN@example.com");
    contact.person_name = fixtures::name("Ann", "Archer");
    let contact = app
        .contacts()
        .create_contact(CreateContactRequest {
            parent: "tenants/globex".into(),
            contact: Some(contact),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let signup = app
        .signups()
        .create_evaluation_signup(CreateEvaluationSignupRequest {
            evaluation_signup: Some(fixtures::signup("ann@example.com")),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    app.contacts()
        .create_contact(CreateContactRequest {
            parent: "tenants/globex".into(),
            contact: Some(fixtures::contact("bob@example.com")),
            request_id: String::new(),
        })
        .await
        .unwrap();
    (user.name, contact.name, signup.name)
}

storage_test!(
    locate_finds_every_record_with_its_controller,
    |app: TestApp| async move {
        let (user, contact, signup) = seed(&app).await;
        let mut subjects = app.subjects();
        let found = subjects
            .locate_subject_data(LocateSubjectDataRequest {
                subject: email("Ann@Example.com"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .records;
        let mut names: Vec<_> = found.iter().map(|r| r.resource.clone()).collect();
        names.sort();
        let mut expected = vec![user.clone(), contact.clone(), signup.clone()];
        expected.sort();
        assert_eq!(names, expected);
        for record in &found {
            let controller = record.controller.as_ref().unwrap().kind.clone().unwrap();
            if record.resource == user {
                assert_eq!(record.data_category, DataCategory::AuthorizedUser as i32);
                assert_eq!(controller, controller::Kind::Tenant("tenants/acme".into()));
                assert_eq!(record.service, "custodian.identity.v1.UserService");
            } else if record.resource == contact {
                assert_eq!(record.data_category, DataCategory::BusinessContact as i32);
                assert_eq!(
                    controller,
                    controller::Kind::Tenant("tenants/globex".into())
                );
            } else {
                assert_eq!(record.data_category, DataCategory::EvaluationSignup as i32);
                assert_eq!(controller, controller::Kind::Company(true));
            }
        }

        let by_phone = subjects
            .locate_subject_data(LocateSubjectDataRequest {
                subject: phone("+49 (30) 90 18 20"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .records;
        assert_eq!(
            by_phone
                .iter()
                .map(|r| r.resource.clone())
                .collect::<Vec<_>>(),
            vec![user.clone()]
        );
        let by_id = subjects
            .locate_subject_data(LocateSubjectDataRequest {
                subject: id(&contact),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .records;
        assert_eq!(by_id.len(), 1);
        let nobody = subjects
            .locate_subject_data(LocateSubjectDataRequest {
                subject: email("nobody@example.com"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .records;
        assert!(
            nobody.is_empty(),
            "an unknown subject has no records, not an error"
        );

        for (subject, field) in [
            (None, "subject"),
            (email("not-an-email"), "subject.email"),
            (phone("12"), "subject.phone"),
            (id("tenants/acme"), "subject.id"),
        ] {
            let err = subjects
                .locate_subject_data(LocateSubjectDataRequest {
                    subject,
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument);
            assert!(violations(&err).iter().any(|(f, _)| f == field), "{field}");
        }
        app.stop().await.unwrap();
    }
);

storage_test!(
    export_streams_structured_records,
    |app: TestApp| async move {
        let (user, _, signup) = seed(&app).await;
        let mut stream = app
            .subjects()
            .export_subject_data(ExportSubjectDataRequest {
                subject: email("ann@example.com"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut exported = Vec::new();
        while let Some(item) = stream.next().await {
            exported.push(item.unwrap());
        }
        assert_eq!(exported.len(), 3);
        let field = |data: &prost_types::Struct, key: &str| match data
            .fields
            .get(key)
            .and_then(|v| v.kind.clone())
        {
            Some(ValueKind::StringValue(s)) => s,
            other => panic!("{key}: {other:?}"),
        };
        let of_user = exported
            .iter()
            .find(|e| e.record.as_ref().unwrap().resource == user)
            .unwrap();
        let data = of_user.data.as_ref().unwrap();
        assert_eq!(field(data, "email"), "ann@example.com");
        assert_eq!(field(data, "phone"), "+4930901820");
        assert_eq!(field(data, "role"), "ROLE_MEMBER");
        let Some(ValueKind::StructValue(name)) =
            data.fields.get("person_name").and_then(|v| v.kind.clone())
        else {
            panic!("person_name")
        };
        assert_eq!(field(&name, "given_name"), "Ann");
        assert!(of_user.create_time.is_some());
        let of_signup = exported
            .iter()
            .find(|e| e.record.as_ref().unwrap().resource == signup)
            .unwrap();
        assert_eq!(
            field(of_signup.data.as_ref().unwrap(), "nature_of_business"),
            "freight forwarding"
        );
        app.stop().await.unwrap();
    }
);

storage_test!(rectify_corrects_all_or_nothing, |app: TestApp| async move {
    let (user, contact, _) = seed(&app).await;
    let mut subjects = app.subjects();
    let correct = |resource: &str, field_path: &str, value: &str| FieldCorrection {
        resource: resource.into(),
        field_path: field_path.into(),
        value: value.into(),
    };

    let changed = subjects
        .rectify_subject_data(RectifySubjectDataRequest {
            subject: email("ann@example.com"),
            corrections: vec![
                correct("", "person_name.family_name", "Archer-Smith"),
                correct(&contact, "job_title", "CFO"),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .rectified;
    assert_eq!(changed.len(), 3, "the family name is on every record");
    let c = app
        .contacts()
        .get_contact(GetContactRequest {
            name: contact.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.person_name.unwrap().family_name, "Archer-Smith");
    assert_eq!(c.job_title, "CFO");

    // A bad value anywhere changes nothing anywhere.
    let err = subjects
        .rectify_subject_data(RectifySubjectDataRequest {
            subject: email("ann@example.com"),
            corrections: vec![
                correct("", "person_name.given_name", "Anne"),
                correct(&contact, "notes", "card 4111111111111111"),
            ],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(!err.message().contains("4111"));
    let u = app
        .users()
        .get_user(GetUserRequest { name: user.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(u.person_name.unwrap().given_name, "Ann");

    for (corrections, code) in [
        (vec![], Code::InvalidArgument),
        (
            vec![correct("", "role", "ROLE_ADMIN")],
            Code::InvalidArgument,
        ),
        (vec![correct(&user, "company", "X")], Code::InvalidArgument),
        (
            vec![correct(
                "tenants/acme/users/0190f3c4-5b6a-7c8d-9e0f-000000000000",
                "email",
                "x@example.com",
            )],
            Code::NotFound,
        ),
    ] {
        let err = subjects
            .rectify_subject_data(RectifySubjectDataRequest {
                subject: email("ann@example.com"),
                corrections,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), code);
    }

    // Correcting the email moves the subject: the new address finds them.
    subjects
        .rectify_subject_data(RectifySubjectDataRequest {
            subject: email("ann@example.com"),
            corrections: vec![correct("", "email", "Ann.Archer@Example.com")],
            ..Default::default()
        })
        .await
        .unwrap();
    let found = subjects
        .locate_subject_data(LocateSubjectDataRequest {
            subject: email("ann.archer@example.com"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(found.len(), 3);
    let old = subjects
        .locate_subject_data(LocateSubjectDataRequest {
            subject: email("ann@example.com"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert!(old.is_empty());
    app.stop().await.unwrap();
});

storage_test!(
    erase_is_complete_and_idempotent,
    |app: TestApp| async move {
        let (user, contact, signup) = seed(&app).await;
        let mut subjects = app.subjects();
        let erased = subjects
            .erase_subject_data(EraseSubjectDataRequest {
                subject: email("ann@example.com"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .erased;
        let mut names: Vec<_> = erased.into_iter().map(|r| r.resource).collect();
        names.sort();
        let mut expected = vec![user.clone(), contact, signup];
        expected.sort();
        assert_eq!(names, expected);
        assert_eq!(app.count("identity_users").await, 0);
        assert_eq!(app.count("identity_contacts").await, 1, "Bob stays");
        assert_eq!(app.count("identity_evaluation_signups").await, 0);
        assert_eq!(
            app.users()
                .get_user(GetUserRequest { name: user })
                .await
                .unwrap_err()
                .code(),
            Code::NotFound
        );

        let again = subjects
            .erase_subject_data(EraseSubjectDataRequest {
                subject: email("ann@example.com"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .erased;
        assert!(
            again.is_empty(),
            "erasing again succeeds and erases nothing"
        );
        app.stop().await.unwrap();
    }
);

// --- controllers and data-subject requests ------------------------------

const REQUEST: &str = "requests/0190f3c4-5b6a-7c8d-9e0f-1a2b3c4d5e6f";

fn company() -> Option<Controller> {
    Some(Controller {
        kind: Some(controller::Kind::Company(true)),
    })
}

fn tenant(id: &str) -> Option<Controller> {
    Some(Controller {
        kind: Some(controller::Kind::Tenant(format!("tenants/{id}"))),
    })
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

fn correct(resource: &str, field_path: &str, value: &str) -> FieldCorrection {
    FieldCorrection {
        resource: resource.into(),
        field_path: field_path.into(),
        value: value.into(),
    }
}

/// What a contract call with this controller exports, by name.
async fn exported_names(app: &TestApp, controller: Option<Controller>) -> Vec<String> {
    let mut stream = app
        .subjects()
        .export_subject_data(ExportSubjectDataRequest {
            subject: email("ann@example.com"),
            controller,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut names = Vec::new();
    while let Some(item) = stream.next().await {
        names.push(item.unwrap().record.unwrap().resource);
    }
    sorted(names)
}

/// Successful audit events of the subject-data contract with `action`.
async fn contract_events(app: &TestApp, action: AuditAction) -> Vec<AuditEvent> {
    app.audit_events()
        .await
        .into_iter()
        .filter(|e| {
            e.method
                .starts_with("/custodian.subject.v1.SubjectDataService/")
                && e.action == action as i32
                && e.outcome == AuditOutcome::Ok as i32
        })
        .collect()
}

/// Rows of identity's people tables and of the idempotency keys.
async fn rows(app: &TestApp) -> Vec<i64> {
    let mut out = Vec::new();
    for table in [
        "identity_users",
        "identity_contacts",
        "identity_evaluation_signups",
        "kit_idempotency",
    ] {
        out.push(app.count(table).await);
    }
    out
}

async fn family_name(app: &TestApp, user: &str) -> String {
    app.users()
        .get_user(GetUserRequest { name: user.into() })
        .await
        .unwrap()
        .into_inner()
        .person_name
        .unwrap()
        .family_name
}

storage_test!(
    a_controller_narrows_the_records_a_call_reaches,
    |app: TestApp| async move {
        let (user, contact, signup) = seed(&app).await;

        // Held for one tenant: only that tenant's records.
        assert_eq!(
            exported_names(&app, tenant("acme")).await,
            vec![user.clone()]
        );
        assert_eq!(
            exported_names(&app, tenant("globex")).await,
            vec![contact.clone()]
        );
        assert_eq!(exported_names(&app, company()).await, vec![signup.clone()]);
        assert!(exported_names(&app, tenant("initech")).await.is_empty());

        // The company's own erasure leaves what tenants hold.
        let erased = app
            .subjects()
            .erase_subject_data(EraseSubjectDataRequest {
                subject: email("ann@example.com"),
                controller: company(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .erased;
        assert_eq!(
            erased.into_iter().map(|r| r.resource).collect::<Vec<_>>(),
            vec![signup]
        );
        assert_eq!(app.count("identity_evaluation_signups").await, 0);
        assert_eq!(app.count("identity_users").await, 1);
        assert_eq!(app.count("identity_contacts").await, 2);
        let left = app
            .subjects()
            .locate_subject_data(LocateSubjectDataRequest {
                subject: email("ann@example.com"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .records;
        assert_eq!(
            sorted(left.into_iter().map(|r| r.resource).collect()),
            sorted(vec![user, contact])
        );
        app.stop().await.unwrap();
    }
);

storage_test!(
    a_tenant_limited_caller_cannot_reach_another_controller,
    |app: TestApp| async move {
        let (user, contact, _) = seed(&app).await;
        let token = app.token(&[Purpose::DsrFulfilment], Some("acme"));
        let mut limited = app.subjects_as(Bearer::new(Some(&token)));
        let before = rows(&app).await;
        let denied_before = app
            .audit_events()
            .await
            .iter()
            .filter(|e| e.outcome == AuditOutcome::Denied as i32)
            .count();
        let mut refused = 0;
        for controller in [tenant("globex"), company()] {
            let answers = [
                limited
                    .locate_subject_data(LocateSubjectDataRequest {
                        subject: email("ann@example.com"),
                        controller: controller.clone(),
                        request: REQUEST.into(),
                    })
                    .await
                    .map(drop),
                limited
                    .export_subject_data(ExportSubjectDataRequest {
                        subject: email("ann@example.com"),
                        controller: controller.clone(),
                        request: REQUEST.into(),
                    })
                    .await
                    .map(drop),
                limited
                    .rectify_subject_data(RectifySubjectDataRequest {
                        subject: email("ann@example.com"),
                        corrections: vec![correct("", "person_name.family_name", "Changed")],
                        controller: controller.clone(),
                        request: REQUEST.into(),
                    })
                    .await
                    .map(drop),
                limited
                    .erase_subject_data(EraseSubjectDataRequest {
                        subject: email("ann@example.com"),
                        controller: controller.clone(),
                        request: REQUEST.into(),
                    })
                    .await
                    .map(drop),
            ];
            for answer in answers {
                let err = answer.unwrap_err();
                assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
                assert!(!err.message().contains("globex"));
                refused += 1;
            }
        }
        assert_eq!(rows(&app).await, before, "a refused call changed nothing");
        assert_eq!(family_name(&app, &user).await, "Archer");
        // Each refusal is audited as one, naming the request.
        let events = app.audit_events().await;
        let denied: Vec<&AuditEvent> = events
            .iter()
            .filter(|e| e.outcome == AuditOutcome::Denied as i32)
            .collect();
        assert_eq!(denied.len() - denied_before, refused);
        assert!(
            denied
                .iter()
                .rev()
                .take(refused)
                .all(|e| e.detail.contains(REQUEST))
        );

        // Its own tenant, named or not, is what it may reach.
        let erased = limited
            .erase_subject_data(EraseSubjectDataRequest {
                subject: email("ann@example.com"),
                controller: tenant("acme"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .erased;
        assert_eq!(
            erased.into_iter().map(|r| r.resource).collect::<Vec<_>>(),
            vec![user]
        );
        assert_eq!(app.count("identity_contacts").await, 2);
        assert_eq!(app.count("identity_evaluation_signups").await, 1);
        let c = app
            .contacts()
            .get_contact(GetContactRequest { name: contact })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(c.person_name.unwrap().family_name, "Archer");
        app.stop().await.unwrap();
    }
);

storage_test!(
    rectify_and_erase_run_once_per_request,
    |app: TestApp| async move {
        let (user, contact, signup) = seed(&app).await;
        let mut subjects = app.subjects();
        let rectify = |subject: &str, corrections| RectifySubjectDataRequest {
            subject: email(subject),
            corrections,
            request: REQUEST.into(),
            ..Default::default()
        };
        let family = |name: &str| vec![correct("", "person_name.family_name", name)];

        let first = subjects
            .rectify_subject_data(rectify("ann@example.com", family("Archer-Smith")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(first.rectified.len(), 3);
        let events = contract_events(&app, AuditAction::Rectify).await;
        assert_eq!(events.len(), 3);
        assert!(
            events.iter().all(|e| e.detail == format!("for {REQUEST}")),
            "{:?}",
            events.iter().map(|e| &e.detail).collect::<Vec<_>>()
        );
        let updated = app
            .users()
            .get_user(GetUserRequest { name: user.clone() })
            .await
            .unwrap()
            .into_inner()
            .update_time;

        // A retry (the address spelled otherwise: the same person) gets the
        // first answer; nothing is written or audited again.
        let rows_before = rows(&app).await;
        let again = subjects
            .rectify_subject_data(rectify("Ann@Example.com", family("Archer-Smith")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again, first);
        assert_eq!(contract_events(&app, AuditAction::Rectify).await.len(), 3);
        let u = app
            .users()
            .get_user(GetUserRequest { name: user.clone() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(u.update_time, updated);
        assert_eq!(rows(&app).await, rows_before);

        // Other corrections under the same request are refused, unapplied.
        let err = subjects
            .rectify_subject_data(rectify("ann@example.com", family("Other")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(!err.message().contains("Other"));
        assert_eq!(family_name(&app, &user).await, "Archer-Smith");
        assert_eq!(contract_events(&app, AuditAction::Rectify).await.len(), 3);

        // A call still at work holds the request: a retry is told to come
        // back, and takes over once the claim's lease has run out.
        sqlx::query("UPDATE kit_idempotency SET resource = 'claimed' WHERE scope LIKE 'RectifySubjectData:%'")
            .execute(&app.raw)
            .await
            .unwrap();
        let err = subjects
            .rectify_subject_data(rectify("ann@example.com", family("Archer-Smith")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Aborted);
        app.clock.advance(std::time::Duration::from_secs(600));
        let taken_over = subjects
            .rectify_subject_data(rectify("ann@example.com", family("Archer-Smith")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(taken_over.rectified.len(), 3);
        assert_eq!(contract_events(&app, AuditAction::Rectify).await.len(), 6);

        // Erasure: a retry replays the first answer, and audits nothing.
        let erase = || EraseSubjectDataRequest {
            subject: email("ann@example.com"),
            request: REQUEST.into(),
            ..Default::default()
        };
        let erased = subjects
            .erase_subject_data(erase())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            sorted(erased.erased.iter().map(|r| r.resource.clone()).collect()),
            sorted(vec![user, contact, signup])
        );
        let erase_events = contract_events(&app, AuditAction::Erase).await;
        assert_eq!(erase_events.len(), 3);
        assert!(
            erase_events
                .iter()
                .all(|e| e.detail == format!("for {REQUEST}"))
        );
        let again = subjects
            .erase_subject_data(erase())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again, erased);
        assert_eq!(contract_events(&app, AuditAction::Erase).await.len(), 3);
        // Another request finds nothing left.
        let other = subjects
            .erase_subject_data(EraseSubjectDataRequest {
                request: "requests/0190f3c4-5b6a-7c8d-9e0f-000000000002".into(),
                ..erase()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(other.erased.is_empty());
        app.stop().await.unwrap();
    }
);

storage_test!(
    the_request_is_audited_and_malformed_values_are_refused,
    |app: TestApp| async move {
        let (user, _, _) = seed(&app).await;
        let mut subjects = app.subjects();
        let located = subjects
            .locate_subject_data(LocateSubjectDataRequest {
                subject: email("ann@example.com"),
                request: REQUEST.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .records;
        assert_eq!(located.len(), 3);
        let events = contract_events(&app, AuditAction::Locate).await;
        assert_eq!(events.len(), 3);
        assert!(events.iter().all(|e| e.detail == format!("for {REQUEST}")));
        let mut stream = subjects
            .export_subject_data(ExportSubjectDataRequest {
                subject: email("ann@example.com"),
                controller: tenant("acme"),
                request: REQUEST.into(),
            })
            .await
            .unwrap()
            .into_inner();
        while let Some(item) = stream.next().await {
            item.unwrap();
        }
        let events = contract_events(&app, AuditAction::Export).await;
        assert_eq!(
            events
                .iter()
                .map(|e| e.resource.clone())
                .collect::<Vec<_>>(),
            vec![user.clone()]
        );
        assert_eq!(events[0].detail, format!("for {REQUEST}"));

        let before = (rows(&app).await, app.audit_count().await);
        let bad_requests = [
            "requests/42",
            "requests/0190F3C4-5B6A-7C8D-9E0F-1A2B3C4D5E6F",
            "tickets/0190f3c4-5b6a-7c8d-9e0f-1a2b3c4d5e6f",
            "requests/0190f3c4-5b6a-7c8d-9e0f-1a2b3c4d5e6f/x",
            "ann@example.com",
        ];
        let bad_controllers = [
            (
                Controller {
                    kind: Some(controller::Kind::Tenant("acme".into())),
                },
                "controller.tenant",
            ),
            (
                Controller {
                    kind: Some(controller::Kind::Tenant("tenants/ACME".into())),
                },
                "controller.tenant",
            ),
            (
                Controller {
                    kind: Some(controller::Kind::Tenant(String::new())),
                },
                "controller.tenant",
            ),
            (
                Controller {
                    kind: Some(controller::Kind::Company(false)),
                },
                "controller.company",
            ),
        ];
        let mut cases: Vec<(String, Option<Controller>, &str)> = bad_requests
            .iter()
            .map(|r| ((*r).to_owned(), None, "request"))
            .collect();
        cases.extend(
            bad_controllers
                .into_iter()
                .map(|(c, field)| (REQUEST.to_owned(), Some(c), field)),
        );
        for (request, controller, field) in cases {
            let errors = [
                subjects
                    .locate_subject_data(LocateSubjectDataRequest {
                        subject: email("ann@example.com"),
                        controller: controller.clone(),
                        request: request.clone(),
                    })
                    .await
                    .map(drop)
                    .unwrap_err(),
                subjects
                    .export_subject_data(ExportSubjectDataRequest {
                        subject: email("ann@example.com"),
                        controller: controller.clone(),
                        request: request.clone(),
                    })
                    .await
                    .map(drop)
                    .unwrap_err(),
                subjects
                    .rectify_subject_data(RectifySubjectDataRequest {
                        subject: email("ann@example.com"),
                        corrections: vec![correct("", "person_name.family_name", "Changed")],
                        controller: controller.clone(),
                        request: request.clone(),
                    })
                    .await
                    .map(drop)
                    .unwrap_err(),
                subjects
                    .erase_subject_data(EraseSubjectDataRequest {
                        subject: email("ann@example.com"),
                        controller: controller.clone(),
                        request: request.clone(),
                    })
                    .await
                    .map(drop)
                    .unwrap_err(),
            ];
            for err in errors {
                assert_eq!(
                    err.code(),
                    Code::InvalidArgument,
                    "{field}: {}",
                    err.message()
                );
                assert!(
                    violations(&err).iter().any(|(f, _)| f == field),
                    "{field}: {:?}",
                    violations(&err)
                );
                assert!(!err.message().contains("ann@example.com"));
            }
        }
        assert_eq!(
            (rows(&app).await, app.audit_count().await),
            before,
            "nothing stored, changed or audited"
        );
        assert_eq!(family_name(&app, &user).await, "Archer");
        app.stop().await.unwrap();
    }
);
