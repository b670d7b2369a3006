//! Users, contacts and evaluation sign-ups through the generated clients,
//! on SQLite and PostgreSQL: every method, validation, the sensitive-data
//! guard, uniqueness, FieldMask updates, paging and idempotent creates.

use custodian_proto::{
    common::v1::{DataCategory, controller},
    identity::v1::{
        Contact, CreateContactRequest, CreateEvaluationSignupRequest, CreateUserRequest,
        DeleteContactRequest, DeleteEvaluationSignupRequest, DeleteUserRequest, EvaluationSignup,
        GetContactRequest, GetEvaluationSignupRequest, GetUserRequest, ListContactsRequest,
        ListEvaluationSignupsRequest, ListUsersRequest, UpdateContactRequest,
        UpdateEvaluationSignupRequest, UpdateUserRequest, User, user,
    },
};
use custodian_tests::{TestApp, fixtures, storage_test, violations};
use prost_types::FieldMask;
use tonic::Code;

fn create_user(tenant: &str, user: User) -> CreateUserRequest {
    CreateUserRequest {
        parent: format!("tenants/{tenant}"),
        user: Some(user),
        request_id: String::new(),
    }
}

fn create_contact(tenant: &str, contact: Contact) -> CreateContactRequest {
    CreateContactRequest {
        parent: format!("tenants/{tenant}"),
        contact: Some(contact),
        request_id: String::new(),
    }
}

fn create_signup(signup: EvaluationSignup) -> CreateEvaluationSignupRequest {
    CreateEvaluationSignupRequest {
        evaluation_signup: Some(signup),
        request_id: String::new(),
    }
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

fn has_violation(status: &tonic::Status, field: &str) -> bool {
    violations(status).iter().any(|(f, _)| f == field)
}

storage_test!(users_every_method, |app: TestApp| async move {
    fixtures::tenant(&app, "acme").await;
    let mut users = app.users();
    let mut ann = fixtures::user(" Ann@Example.COM ");
    ann.phone = "030 901820".into();
    ann.postal_address = fixtures::address("de");
    let created = users
        .create_user(create_user("acme", ann))
        .await
        .unwrap()
        .into_inner();
    assert!(created.name.starts_with("tenants/acme/users/"));
    assert_eq!(created.email, "ann@example.com", "email normalised");
    assert_eq!(
        created.phone, "+4930901820",
        "national number read in the address's region"
    );
    assert_eq!(created.postal_address.as_ref().unwrap().region_code, "DE");
    assert_eq!(
        created.role,
        user::Role::Member as i32,
        "role defaults to member"
    );
    assert_eq!(created.state, user::State::Active as i32);
    assert_eq!(created.data_category, DataCategory::AuthorizedUser as i32);
    assert_eq!(
        created.controller.as_ref().unwrap().kind,
        Some(controller::Kind::Tenant("tenants/acme".into()))
    );

    let got = users
        .get_user(GetUserRequest {
            name: created.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, created);

    users
        .create_user(create_user("acme", fixtures::user("bob@example.com")))
        .await
        .unwrap();
    let all = users
        .list_users(ListUsersRequest {
            parent: "tenants/acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.users.len(), 2);
    let by_email = users
        .list_users(ListUsersRequest {
            parent: "tenants/acme".into(),
            email: "ANN@example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        by_email.users,
        vec![created.clone()],
        "filter matches after normalisation"
    );

    // FieldMask: only the named fields change.
    let patch = User {
        name: created.name.clone(),
        state: user::State::Suspended as i32,
        email: "ignored@example.com".into(),
        ..Default::default()
    };
    let updated = users
        .update_user(UpdateUserRequest {
            user: Some(patch),
            update_mask: mask(&["state"]),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.state, user::State::Suspended as i32);
    assert_eq!(updated.email, "ann@example.com");
    assert_eq!(updated.phone, created.phone);
    assert_eq!(updated.person_name, created.person_name);

    users
        .delete_user(DeleteUserRequest {
            name: created.name.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        users
            .get_user(GetUserRequest {
                name: created.name.clone()
            })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        users
            .delete_user(DeleteUserRequest { name: created.name })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(app.count("identity_users").await, 1);
    app.stop().await.unwrap();
});

storage_test!(
    user_email_is_unique_within_a_tenant,
    |app: TestApp| async move {
        fixtures::tenant(&app, "acme").await;
        fixtures::tenant(&app, "globex").await;
        let mut users = app.users();
        let first = users
            .create_user(create_user("acme", fixtures::user("ann@example.com")))
            .await
            .unwrap()
            .into_inner();
        let err = users
            .create_user(create_user("acme", fixtures::user("ANN@EXAMPLE.COM")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists);
        assert!(
            !err.message().to_lowercase().contains("ann@"),
            "the email is not echoed"
        );
        assert_eq!(app.count("identity_users").await, 1);

        // Another tenant may hold the same person.
        users
            .create_user(create_user("globex", fixtures::user("ann@example.com")))
            .await
            .unwrap();

        // Changing another user's email to a taken one is refused too.
        let bob = users
            .create_user(create_user("acme", fixtures::user("bob@example.com")))
            .await
            .unwrap()
            .into_inner();
        let err = users
            .update_user(UpdateUserRequest {
                user: Some(User {
                    name: bob.name.clone(),
                    email: "Ann@example.com".into(),
                    ..Default::default()
                }),
                update_mask: mask(&["email"]),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists);
        let bob_now = users
            .get_user(GetUserRequest { name: bob.name })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(bob_now.email, "bob@example.com");
        assert_eq!(first.email, "ann@example.com");
        app.stop().await.unwrap();
    }
);

storage_test!(
    bad_person_input_is_refused_and_nothing_stored,
    |app: TestApp| async move {
        fixtures::tenant(&app, "acme").await;
        let mut users = app.users();
        let cases: Vec<(User, &str)> = vec![
            (fixtures::user("not an email"), "user.email"),
            (fixtures::user(""), "user.email"),
            (
                User {
                    phone: "12345".into(),
                    ..fixtures::user("a@example.com")
                },
                "user.phone",
            ),
            (
                User {
                    phone: "030 901820".into(),
                    ..fixtures::user("a@example.com")
                },
                "user.phone",
            ),
            (
                User {
                    postal_address: fixtures::address("XX"),
                    ..fixtures::user("a@example.com")
                },
                "user.postal_address.region_code",
            ),
            (
                User {
                    postal_address: fixtures::address(""),
                    ..fixtures::user("a@example.com")
                },
                "user.postal_address.region_code",
            ),
            (
                User {
                    person_name: fixtures::name("", ""),
                    ..fixtures::user("a@example.com")
                },
                "user.person_name",
            ),
            (
                User {
                    role: 42,
                    ..fixtures::user("a@example.com")
                },
                "user.role",
            ),
            (
                User {
                    person_name: fixtures::name("078-05-1120", "Doe"),
                    ..fixtures::user("a@example.com")
                },
                "user.person_name.given_name",
            ),
        ];
        for (user, field) in cases {
            let err = users
                .create_user(create_user("acme", user))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{field}");
            assert!(
                has_violation(&err, field),
                "{field}: {:?}",
                violations(&err)
            );
            assert!(!err.message().contains("12345") && !err.message().contains("078-05"));
        }
        // Several bad fields are reported together.
        let err = users
            .create_user(create_user(
                "acme",
                User {
                    phone: "nope".into(),
                    ..fixtures::user("nope")
                },
            ))
            .await
            .unwrap_err();
        assert!(has_violation(&err, "user.email") && has_violation(&err, "user.phone"));

        let err = users
            .create_user(CreateUserRequest {
                parent: "acme".into(),
                user: Some(fixtures::user("a@example.com")),
                request_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(has_violation(&err, "parent"));
        let err = users
            .create_user(create_user("nobody", fixtures::user("a@example.com")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let err = users
            .get_user(GetUserRequest {
                name: "tenants/acme/contacts/x".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let err = users
            .list_users(ListUsersRequest {
                parent: "tenants/nobody".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(app.count("identity_users").await, 0);
        app.stop().await.unwrap();
    }
);

storage_test!(
    sensitive_data_guard_refuses_free_text,
    |app: TestApp| async move {
        fixtures::tenant(&app, "acme").await;
        let mut contacts = app.contacts();
        let cases = [
            (
                "notes",
                "Customer paid with 4111 1111 1111 1111, exp 12/27",
                "payment_card",
                "4111",
            ),
            (
                "notes",
                "SSN 078-05-1120 for the HR file",
                "us_ssn",
                "078-05",
            ),
            (
                "job_title",
                "Treasurer, IBAN DE89 3704 0044 0532 0130 00",
                "iban",
                "DE89",
            ),
            ("notes", "NI number AB 12 34 56 C", "uk_nino", "AB 12"),
            (
                "organization",
                "Card 5555555555554444",
                "payment_card",
                "5555",
            ),
        ];
        for (field, text, kind, fragment) in cases {
            let mut contact = fixtures::contact("ben@example.com");
            match field {
                "notes" => contact.notes = text.into(),
                "job_title" => contact.job_title = text.into(),
                _ => contact.organization = text.into(),
            }
            let err = contacts
                .create_contact(create_contact("acme", contact))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument);
            let found = violations(&err);
            let (_, description) = found
                .iter()
                .find(|(f, _)| *f == format!("contact.{field}"))
                .expect("field named");
            assert!(description.contains(kind), "{description}");
            assert!(
                !description.contains(fragment) && !err.message().contains(fragment),
                "value not echoed"
            );
        }
        // Ordinary numbers in business notes pass.
        let mut fine = fixtures::contact("ben@example.com");
        fine.notes = "Order 12345678 shipped on 2026-05-01; call +49 30 901820".into();
        contacts
            .create_contact(create_contact("acme", fine))
            .await
            .unwrap();
        assert_eq!(app.count("identity_contacts").await, 1);

        // Updates are guarded too, and leave the record as it was.
        let signup = app
            .signups()
            .create_evaluation_signup(create_signup(fixtures::signup("cat@example.com")))
            .await
            .unwrap()
            .into_inner();
        let err = app
            .signups()
            .update_evaluation_signup(UpdateEvaluationSignupRequest {
                evaluation_signup: Some(EvaluationSignup {
                    name: signup.name.clone(),
                    nature_of_business: "pays by 4012888888881881".into(),
                    ..Default::default()
                }),
                update_mask: mask(&["nature_of_business"]),
            })
            .await
            .unwrap_err();
        assert!(has_violation(&err, "evaluation_signup.nature_of_business"));
        let unchanged = app
            .signups()
            .get_evaluation_signup(GetEvaluationSignupRequest { name: signup.name })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(unchanged.nature_of_business, "freight forwarding");
        app.stop().await.unwrap();
    }
);

storage_test!(
    contacts_every_method_and_field_mask,
    |app: TestApp| async move {
        fixtures::tenant(&app, "acme").await;
        let mut contacts = app.contacts();
        // A contact needs an email or a phone.
        let err = contacts
            .create_contact(create_contact(
                "acme",
                Contact {
                    email: String::new(),
                    ..fixtures::contact("")
                },
            ))
            .await
            .unwrap_err();
        assert!(has_violation(&err, "contact.email"));
        let phone_only = contacts
            .create_contact(create_contact(
                "acme",
                Contact {
                    email: String::new(),
                    phone: "+1 202-456-1111".into(),
                    ..fixtures::contact("")
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(phone_only.phone, "+12024561111");

        let mut ben = fixtures::contact("Ben@Example.com");
        ben.job_title = "Buyer".into();
        ben.notes = "Met at the trade fair".into();
        let created = contacts
            .create_contact(create_contact("acme", ben))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(created.email, "ben@example.com");
        assert_eq!(created.data_category, DataCategory::BusinessContact as i32);
        assert_eq!(
            contacts
                .get_contact(GetContactRequest {
                    name: created.name.clone()
                })
                .await
                .unwrap()
                .into_inner(),
            created
        );

        let patch = Contact {
            name: created.name.clone(),
            person_name: fixtures::name("Benjamin", "ignored"),
            job_title: "Head of Purchasing".into(),
            notes: "ignored".into(),
            ..Default::default()
        };
        let updated = contacts
            .update_contact(UpdateContactRequest {
                contact: Some(patch),
                update_mask: mask(&["person_name.given_name", "job_title"]),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(updated.person_name.as_ref().unwrap().given_name, "Benjamin");
        assert_eq!(updated.person_name.as_ref().unwrap().family_name, "Baker");
        assert_eq!(updated.job_title, "Head of Purchasing");
        assert_eq!(updated.notes, "Met at the trade fair");

        for (paths, field) in [
            (vec![], "update_mask"),
            (vec!["company"], "update_mask"),
            (vec!["email"], "contact.email"),
        ] {
            let patch = Contact {
                name: created.name.clone(),
                email: "broken".into(),
                ..Default::default()
            };
            let err = contacts
                .update_contact(UpdateContactRequest {
                    contact: Some(patch),
                    update_mask: mask(&paths),
                })
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument);
            assert!(has_violation(&err, field), "{field}");
        }
        // Clearing the email of a contact that has no phone is refused.
        let err = contacts
            .update_contact(UpdateContactRequest {
                contact: Some(Contact {
                    name: created.name.clone(),
                    ..Default::default()
                }),
                update_mask: mask(&["email"]),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let after = contacts
            .get_contact(GetContactRequest {
                name: created.name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(after, updated, "failed updates changed nothing");

        let missing = Contact {
            name: "tenants/acme/contacts/0190f3c4-5b6a-7c8d-9e0f-000000000000".into(),
            ..Default::default()
        };
        assert_eq!(
            contacts
                .update_contact(UpdateContactRequest {
                    contact: Some(missing),
                    update_mask: mask(&["notes"])
                })
                .await
                .unwrap_err()
                .code(),
            Code::NotFound
        );

        contacts
            .delete_contact(DeleteContactRequest {
                name: created.name.clone(),
            })
            .await
            .unwrap();
        assert_eq!(
            contacts
                .get_contact(GetContactRequest { name: created.name })
                .await
                .unwrap_err()
                .code(),
            Code::NotFound
        );
        assert_eq!(app.count("identity_contacts").await, 1);
        app.stop().await.unwrap();
    }
);

storage_test!(contacts_page_and_filter, |app: TestApp| async move {
    fixtures::tenant(&app, "acme").await;
    fixtures::tenant(&app, "globex").await;
    let mut contacts = app.contacts();
    let mut created = Vec::new();
    for i in 0..7 {
        let email = if i % 2 == 0 {
            "same@example.com".to_owned()
        } else {
            format!("c{i}@example.com")
        };
        created.push(
            contacts
                .create_contact(create_contact("acme", fixtures::contact(&email)))
                .await
                .unwrap()
                .into_inner()
                .name,
        );
    }
    contacts
        .create_contact(create_contact(
            "globex",
            fixtures::contact("same@example.com"),
        ))
        .await
        .unwrap();

    let list = |token: String, email: &str| ListContactsRequest {
        parent: "tenants/acme".into(),
        page_size: 3,
        page_token: token,
        email: email.into(),
    };
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = contacts
            .list_contacts(list(token, ""))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        seen.extend(page.contacts.into_iter().map(|c| c.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, created, "every contact once, oldest first");

    let page = contacts
        .list_contacts(list(String::new(), "SAME@example.com"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.contacts.len(), 3);
    assert!(
        page.contacts
            .iter()
            .all(|c| c.email == "same@example.com" && c.name.starts_with("tenants/acme/"))
    );
    // A token is bound to its query: it is refused with another filter.
    let err = contacts
        .list_contacts(list(page.next_page_token.clone(), ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let rest = contacts
        .list_contacts(list(page.next_page_token, "same@example.com"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.contacts.len(), 1);
    assert!(rest.next_page_token.is_empty());

    let err = contacts
        .list_contacts(list(String::new(), "not-an-email"))
        .await
        .unwrap_err();
    assert!(has_violation(&err, "email"));
    app.stop().await.unwrap();
});

storage_test!(idempotent_creates, |app: TestApp| async move {
    fixtures::tenant(&app, "acme").await;
    let key = uuid::Uuid::new_v4().to_string();
    let request = CreateContactRequest {
        parent: "tenants/acme".into(),
        contact: Some(fixtures::contact("ben@example.com")),
        request_id: key.clone(),
    };
    let mut contacts = app.contacts();
    let first = contacts
        .create_contact(request.clone())
        .await
        .unwrap()
        .into_inner();
    let retry = contacts
        .create_contact(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, retry);
    assert_eq!(app.count("identity_contacts").await, 1);

    // Concurrent retries still create one record.
    let key2 = uuid::Uuid::new_v4().to_string();
    let mut concurrent = Vec::new();
    for _ in 0..8 {
        let mut client = app.contacts();
        let mut request = request.clone();
        request.request_id = key2.clone();
        concurrent.push(tokio::spawn(async move {
            client
                .create_contact(request)
                .await
                .map(|r| r.into_inner().name)
        }));
    }
    let mut names = Vec::new();
    for task in concurrent {
        names.push(task.await.unwrap().expect("every retry succeeds"));
    }
    names.dedup();
    assert_eq!(names.len(), 1);
    assert_eq!(app.count("identity_contacts").await, 2);

    let mut different = request.clone();
    different.contact.as_mut().unwrap().notes = "changed".into();
    let err = contacts.create_contact(different).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(has_violation(&err, "request_id"));

    // After the record is deleted, the key cannot silently recreate it.
    contacts
        .delete_contact(DeleteContactRequest { name: first.name })
        .await
        .unwrap();
    let err = contacts.create_contact(request).await;
    assert!(
        err.is_ok(),
        "the deleted record's key went with it, so this is a new create"
    );
    assert_eq!(app.count("identity_contacts").await, 2);

    let user_key = uuid::Uuid::new_v4().to_string();
    let user_request = CreateUserRequest {
        parent: "tenants/acme".into(),
        user: Some(fixtures::user("ann@example.com")),
        request_id: user_key,
    };
    let a = app
        .users()
        .create_user(user_request.clone())
        .await
        .unwrap()
        .into_inner();
    let b = app
        .users()
        .create_user(user_request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a, b, "a retried user create is not an email conflict");

    let signup_request = CreateEvaluationSignupRequest {
        evaluation_signup: Some(fixtures::signup("cat@example.com")),
        request_id: uuid::Uuid::new_v4().to_string(),
    };
    let a = app
        .signups()
        .create_evaluation_signup(signup_request.clone())
        .await
        .unwrap()
        .into_inner();
    let b = app
        .signups()
        .create_evaluation_signup(signup_request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a, b);
    assert_eq!(app.count("identity_evaluation_signups").await, 1);
    app.stop().await.unwrap();
});

storage_test!(evaluation_signups_every_method, |app: TestApp| async move {
    let mut signups = app.signups();
    let mut cat = fixtures::signup("Cat@Example.com");
    cat.phone = "+44 20 7946 0958".into();
    let created = signups
        .create_evaluation_signup(create_signup(cat))
        .await
        .unwrap()
        .into_inner();
    assert!(created.name.starts_with("evaluationSignups/"));
    assert_eq!(created.email, "cat@example.com");
    assert_eq!(created.phone, "+442079460958");
    assert_eq!(
        created.controller.as_ref().unwrap().kind,
        Some(controller::Kind::Company(true))
    );
    assert_eq!(created.data_category, DataCategory::EvaluationSignup as i32);
    assert_eq!(
        signups
            .get_evaluation_signup(GetEvaluationSignupRequest {
                name: created.name.clone()
            })
            .await
            .unwrap()
            .into_inner(),
        created
    );

    signups
        .create_evaluation_signup(create_signup(fixtures::signup("dan@example.com")))
        .await
        .unwrap();
    let all = signups
        .list_evaluation_signups(ListEvaluationSignupsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.evaluation_signups.len(), 2);
    let one = signups
        .list_evaluation_signups(ListEvaluationSignupsRequest {
            email: "cat@example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.evaluation_signups, vec![created.clone()]);

    let updated = signups
        .update_evaluation_signup(UpdateEvaluationSignupRequest {
            evaluation_signup: Some(EvaluationSignup {
                name: created.name.clone(),
                company: "Cole Freight".into(),
                ..Default::default()
            }),
            update_mask: mask(&["company"]),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.company, "Cole Freight");
    assert_eq!(updated.email, created.email);

    let err = signups
        .create_evaluation_signup(create_signup(fixtures::signup("")))
        .await
        .unwrap_err();
    assert!(has_violation(&err, "evaluation_signup.email"));
    assert_eq!(app.count("identity_evaluation_signups").await, 2);

    signups
        .delete_evaluation_signup(DeleteEvaluationSignupRequest {
            name: created.name.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        signups
            .get_evaluation_signup(GetEvaluationSignupRequest { name: created.name })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    app.stop().await.unwrap();
});

// Point reads that arrive together are answered together (on PostgreSQL,
// one batched query): each caller still gets its own record, and an
// unknown name in the same burst is NOT_FOUND.
storage_test!(
    concurrent_reads_each_get_their_own_record,
    |app: TestApp| async move {
        fixtures::tenant(&app, "acme").await;
        let mut created = Vec::new();
        for n in 0..40 {
            let contact = app
                .contacts()
                .create_contact(create_contact(
                    "acme",
                    fixtures::contact(&format!("c{n}@example.com")),
                ))
                .await
                .unwrap()
                .into_inner();
            created.push(contact);
        }
        let missing = format!(
            "tenants/acme/contacts/{}",
            uuid::Uuid::now_v7().as_hyphenated()
        );
        let reads = (0..5).flat_map(|_| created.iter()).map(|contact| {
            let mut client = app.contacts();
            let name = contact.name.clone();
            async move {
                client
                    .get_contact(GetContactRequest { name })
                    .await
                    .map(|r| r.into_inner())
            }
        });
        let unknown = (0..5).map(|_| {
            let mut client = app.contacts();
            let name = missing.clone();
            async move { client.get_contact(GetContactRequest { name }).await }
        });
        let (got, unknown) = tokio::join!(
            futures::future::join_all(reads),
            futures::future::join_all(unknown)
        );
        for (answer, expected) in got.into_iter().zip((0..5).flat_map(|_| created.iter())) {
            assert_eq!(&answer.unwrap(), expected);
        }
        for answer in unknown {
            assert_eq!(answer.unwrap_err().code(), Code::NotFound);
        }
    }
);

// Creates that arrive together are written together (on SQLite in one
// transaction of the writer thread, on PostgreSQL in one group of
// statements), yet each caller gets its own answer: a duplicate email or
// an unknown tenant in the burst fails alone, nothing of it is stored, and
// every other create is stored and reads back as it was answered.
storage_test!(
    concurrent_creates_each_get_their_own_answer,
    |app: TestApp| async move {
        fixtures::tenant(&app, "acme").await;
        let users = (0..30)
            .map(|n| ("acme", format!("u{n}@example.com")))
            .chain((0..5).map(|_| ("acme", "dup@example.com".to_owned())))
            .chain((0..5).map(|n| ("nowhere", format!("n{n}@example.com"))))
            .map(|(tenant, email)| {
                let mut client = app.users();
                async move {
                    client
                        .create_user(create_user(tenant, fixtures::user(&email)))
                        .await
                        .map(|r| r.into_inner())
                }
            });
        let contacts = (0..20).map(|_| {
            let mut client = app.contacts();
            async move {
                client
                    .create_contact(create_contact(
                        "acme",
                        fixtures::contact("same@example.com"),
                    ))
                    .await
                    .map(|r| r.into_inner())
            }
        });
        let (users, contacts) = tokio::join!(
            futures::future::join_all(users),
            futures::future::join_all(contacts)
        );
        let mut created = Vec::new();
        for (n, answer) in users.into_iter().enumerate() {
            match (n, answer) {
                (0..30, Ok(user)) => {
                    assert_eq!(user.email, format!("u{n}@example.com"));
                    created.push(user);
                }
                (30..35, Ok(user)) => created.push(user),
                (30..35, Err(err)) => assert_eq!(err.code(), Code::AlreadyExists),
                (35.., Err(err)) => assert_eq!(err.code(), Code::NotFound),
                (n, other) => panic!("create {n}: {other:?}"),
            }
        }
        let dup = created
            .iter()
            .filter(|u| u.email == "dup@example.com")
            .count();
        assert_eq!(dup, 1, "exactly one of the duplicates is created");
        assert_eq!(app.count("identity_users").await, 31);
        let mut client = app.users();
        for user in &created {
            let got = client
                .get_user(GetUserRequest {
                    name: user.name.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(&got, user);
        }
        let mut names: Vec<String> = contacts
            .into_iter()
            .map(|c| c.expect("every contact is created").name)
            .collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 20);
        assert_eq!(app.count("identity_contacts").await, 20);
    }
);
