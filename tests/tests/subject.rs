//! The subject-data contract as identity implements it: locate, export,
//! rectify and erase a person's records across users, contacts and
//! evaluation sign-ups, on SQLite and PostgreSQL.

use custodian_proto::{
    common::v1::{DataCategory, SubjectIdentifier, controller, subject_identifier},
    identity::v1::{
        CreateContactRequest, CreateEvaluationSignupRequest, CreateUserRequest, GetContactRequest,
        GetUserRequest,
    },
    subject::v1::{
        EraseSubjectDataRequest, ExportSubjectDataRequest, FieldCorrection,
        LocateSubjectDataRequest, RectifySubjectDataRequest,
    },
};
use custodian_tests::{TestApp, fixtures, storage_test, violations};
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
            })
            .await
            .unwrap()
            .into_inner()
            .records;
        assert_eq!(by_id.len(), 1);
        let nobody = subjects
            .locate_subject_data(LocateSubjectDataRequest {
                subject: email("nobody@example.com"),
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
                .locate_subject_data(LocateSubjectDataRequest { subject })
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
        })
        .await
        .unwrap();
    let found = subjects
        .locate_subject_data(LocateSubjectDataRequest {
            subject: email("ann.archer@example.com"),
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(found.len(), 3);
    let old = subjects
        .locate_subject_data(LocateSubjectDataRequest {
            subject: email("ann@example.com"),
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
