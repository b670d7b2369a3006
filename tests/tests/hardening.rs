//! The hardening issue, item by item, on SQLite and PostgreSQL: hostile
//! strings are refused at the door without being stored, echoed or
//! audited; audit events are always storable and their pages always fit a
//! client's message limit; one spelling of an email is one person; the
//! guard sees through Unicode; tokens with impossible lifetimes are
//! refused; undecodable and oversized messages are the caller's error.
//! Items that need the real binary (lost key file, log volume, operator
//! hygiene) are in `services/custodian/tests/hardening.rs`.

use custodian_privacy::{
    Purpose,
    audit::{AuditLog, Event, Filter},
    token::{AUDIENCE, Claims, ISSUER, TokenKind},
};
use custodian_proto::{
    audit::v1::{AuditAction, AuditOutcome, ListAuditEventsRequest},
    common::v1::{SubjectIdentifier, subject_identifier},
    identity::v1::{
        Contact, CreateContactRequest, CreateTenantRequest, GetContactRequest, GetTenantRequest,
        ListContactsRequest, ListTenantsRequest, Tenant,
    },
    subject::v1::LocateSubjectDataRequest,
};
use custodian_runtime::Database;
use custodian_tests::{
    Backend, Bearer, TestApp, fixtures,
    hostile::{self, call_raw},
    storage_test,
};
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use prost::Message as _;
use sqlx::Row as _;
use tonic::{Code, Status};

const TENANT: &str = "acme";

// --- helpers ---------------------------------------------------------------

/// Checks a refusal: its code, a short message, and none of `secrets` in
/// the message or the error details.
#[track_caller]
fn assert_refused(status: &Status, code: Code, secrets: &[&str]) {
    assert_eq!(status.code(), code, "{}", short(status.message()));
    assert!(
        status.message().len() < 400,
        "a message of {} bytes",
        status.message().len()
    );
    let details = String::from_utf8_lossy(status.details());
    for secret in secrets {
        assert!(
            !status.message().contains(secret) && !details.contains(secret),
            "the refusal echoes the value: {}",
            short(status.message())
        );
    }
}

fn short(text: &str) -> String {
    text.chars().take(200).collect()
}

/// Every text of every audit event, straight from the database.
async fn audit_text(app: &TestApp) -> Vec<String> {
    app.sealed().await;
    sqlx::query(
        "SELECT caller, on_behalf_of, purpose, method, resource, subject_ref, fields, detail \
         FROM audit_events",
    )
    .fetch_all(&app.raw)
    .await
    .expect("audit events")
    .iter()
    .map(|r| {
        (0..8)
            .map(|i| r.try_get::<String, _>(i).expect("text"))
            .collect::<Vec<_>>()
            .join("|")
    })
    .collect()
}

async fn create_contact(app: &TestApp, contact: Contact) -> Result<Contact, Status> {
    app.contacts()
        .create_contact(CreateContactRequest {
            parent: format!("tenants/{TENANT}"),
            contact: Some(contact),
            request_id: String::new(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// An audit trail of `service` on the server's database, written beside
/// the server's own writer (as `custodian::suite` builds one).
async fn audit_log(app: &TestApp, service: &'static str) -> AuditLog {
    let db = Database::connect_lazy(&app.db.url, 2).expect("database");
    let log = AuditLog::new(service, db, app.clock.clone());
    log.start().await.expect("audit writer");
    log
}

/// Rows of `table` now.
async fn rows(app: &TestApp, tables: &[&str]) -> Vec<i64> {
    let mut out = Vec::new();
    for table in tables {
        out.push(app.count(table).await);
    }
    out
}

// --- 1. NUL bytes ---------------------------------------------------------------

storage_test!(
    nul_bytes_are_refused_before_storage,
    |app: TestApp| async move {
        fixtures::tenant(&app, TENANT).await;
        let before = (app.count("identity_tenants").await, audit_text(&app).await);

        let err = app
            .contacts()
            .list_contacts(ListContactsRequest {
                parent: "tenants/ac\u{0}me".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_refused(&err, Code::InvalidArgument, &["\u{0}"]);
        assert!(err.message().contains("parent"), "{}", err.message());

        let err = app
            .tenants()
            .create_tenant(CreateTenantRequest {
                tenant: Some(Tenant {
                    display_name: "Ac\u{0}me Holdings".into(),
                    ..Default::default()
                }),
                tenant_id: "acme-holdings".into(),
                request_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_refused(&err, Code::InvalidArgument, &["\u{0}", "Holdings"]);
        assert!(
            err.message().contains("tenant.display_name"),
            "{}",
            err.message()
        );

        for name in [
            "tenants/ac\u{0}me".to_owned(),
            format!("tenants/{TENANT}\u{0}"),
        ] {
            let err = app
                .tenants()
                .get_tenant(GetTenantRequest { name })
                .await
                .unwrap_err();
            assert_refused(&err, Code::InvalidArgument, &["\u{0}"]);
        }

        // Nothing stored, and the trail is as it was: no event for any of them.
        let after = (app.count("identity_tenants").await, audit_text(&app).await);
        assert_eq!(after, before);
        assert!(after.1.iter().all(|t| !t.contains('\u{0}')));
    }
);

storage_test!(
    nul_bearing_calls_do_not_fail_concurrent_reads,
    |app: TestApp| async move {
        fixtures::tenant(&app, TENANT).await;
        let contact = create_contact(&app, fixtures::contact("ben@example.com"))
            .await
            .unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..4 {
            let (mut contacts, mut tenants) = (app.contacts(), app.tenants());
            let name = contact.name.clone();
            tasks.spawn(async move {
                for i in 0..24 {
                    let status = match (task + i) % 3 {
                        0 => contacts
                            .get_contact(GetContactRequest {
                                name: format!("{name}\u{0}"),
                            })
                            .await
                            .unwrap_err(),
                        1 => contacts
                            .list_contacts(ListContactsRequest {
                                parent: "tenants/ac\u{0}me".into(),
                                ..Default::default()
                            })
                            .await
                            .unwrap_err(),
                        _ => tenants
                            .create_tenant(CreateTenantRequest {
                                tenant: Some(Tenant {
                                    display_name: "x\u{0}".into(),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            })
                            .await
                            .unwrap_err(),
                    };
                    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
                }
            });
        }
        for _ in 0..32 {
            let mut contacts = app.contacts();
            let name = contact.name.clone();
            tasks.spawn(async move {
                for _ in 0..8 {
                    let got = contacts
                        .get_contact(GetContactRequest { name: name.clone() })
                        .await
                        .expect("a legitimate read beside hostile calls");
                    assert_eq!(got.into_inner().name, name);
                }
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.expect("task");
        }
        // Every legitimate read was audited, and the chain is intact.
        let reads = audit_text(&app)
            .await
            .iter()
            .filter(|t| t.contains("/GetContact|"))
            .count();
        assert_eq!(reads, 32 * 8);
        let verified = app
            .audit()
            .verify_audit_chain(custodian_proto::audit::v1::VerifyAuditChainRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(verified.intact, "{verified:?}");
    }
);

storage_test!(
    the_audit_writer_isolates_a_bad_event,
    |app: TestApp| async move {
        let log = audit_log(&app, "identity").await;
        let good = |i: usize| Event {
            caller: format!("test:good-{i}"),
            purpose: "audit".into(),
            method: "/test.Hardening/Good".into(),
            resource: format!("tenants/{TENANT}"),
            ..Event::new(AuditAction::Read, AuditOutcome::Ok)
        };
        let bad = |i: usize| Event {
            caller: format!("test:bad-{i}\u{0}"),
            resource: format!("tenants/ac\u{0}me/{}", "x".repeat(100_000)),
            fields: vec!["e\u{1}mail".into(), "\u{0}".repeat(10)],
            detail: "\u{7f}".repeat(1 << 20),
            ..Event::new(AuditAction::Read, AuditOutcome::Failed)
        };
        let mut writes = Vec::new();
        for i in 0..96 {
            let event = if i % 12 == 5 { bad(i) } else { good(i) };
            let log = log.clone();
            writes.push(tokio::spawn(async move { log.record(event).await }));
        }
        for write in writes {
            write
                .await
                .unwrap()
                .expect("every event is stored, the bad ones made storable");
        }
        let stored = log
            .list(
                &Filter {
                    resource: String::new(),
                    subject_ref: String::new(),
                    start_time: i64::MIN,
                    end_time: i64::MAX,
                },
                0,
                10_000,
            )
            .await
            .unwrap();
        for i in (0..96).filter(|i| i % 12 != 5) {
            let caller = format!("test:good-{i}");
            assert_eq!(
                stored.iter().filter(|e| e.event.caller == caller).count(),
                1,
                "{caller}"
            );
        }
        let bad: Vec<_> = stored
            .iter()
            .filter(|e| e.event.caller.starts_with("test:bad-"))
            .collect();
        assert_eq!(bad.len(), 8);
        for e in bad {
            let texts = [&e.event.caller, &e.event.resource, &e.event.detail];
            assert!(texts.iter().all(|t| !t.chars().any(char::is_control)));
            assert!(texts.iter().all(|t| t.chars().count() <= 512));
        }
        let verified = log.verify().await.unwrap();
        assert!(verified.intact, "{verified:?}");
        assert!(verified.events_checked >= 96);
    }
);

// --- 2. resource names and audit pages -----------------------------------------------

storage_test!(
    names_are_checked_by_form_and_never_echoed_or_audited,
    |app: TestApp| async move {
        fixtures::tenant(&app, TENANT).await;
        let audited = app.audit_count().await;

        let huge = format!("tenants/{TENANT}/contacts/{}", "x".repeat(3_900_000));
        let err = app
            .contacts()
            .get_contact(GetContactRequest { name: huge })
            .await
            .unwrap_err();
        assert_refused(&err, Code::InvalidArgument, &["xxxxxxxxxxxxxxxxx"]);
        assert_eq!(app.audit_count().await, audited);

        let email = format!("tenants/{TENANT}/contacts/john.doe.private@gmail.com");
        let err = app
            .contacts()
            .get_contact(GetContactRequest {
                name: email.clone(),
            })
            .await
            .unwrap_err();
        assert_refused(&err, Code::InvalidArgument, &["john.doe", "gmail"]);
        let err = app
            .contacts()
            .delete_contact(custodian_proto::identity::v1::DeleteContactRequest { name: email })
            .await
            .unwrap_err();
        assert_refused(&err, Code::InvalidArgument, &["john.doe", "gmail"]);
        assert_eq!(app.audit_count().await, audited);
        assert!(
            audit_text(&app)
                .await
                .iter()
                .all(|t| !t.contains("gmail") && !t.contains("john.doe"))
        );
    }
);

storage_test!(
    audit_pages_fit_the_message_limit_whatever_the_events_hold,
    |app: TestApp| async move {
        let log = audit_log(&app, "identity").await;
        // Longer than any stored text, in four-byte characters.
        let max = |tag: &str| format!("{tag}{}", "\u{1d54f}".repeat(600));
        const EVENTS: usize = 1100;
        let mut pending = Vec::new();
        for i in 0..EVENTS {
            let event = Event {
                caller: max(&format!("c{i}")),
                on_behalf_of: max("o"),
                purpose: max("p"),
                method: max("m"),
                resource: max("r\u{0}"),
                subject_ref: max("s"),
                fields: (0..4).map(|f| max(&format!("f{f}"))).collect(),
                detail: max("d"),
                ..Event::new(AuditAction::Read, AuditOutcome::Ok)
            };
            let log = log.clone();
            pending.push(tokio::spawn(async move { log.record(event).await }));
        }
        for p in pending {
            p.await.unwrap().expect("stored");
        }

        // The generated client keeps tonic's default 4 MiB decoding limit.
        let page = |token: String| {
            let mut audit = app.audit();
            async move {
                audit
                    .list_audit_events(ListAuditEventsRequest {
                        page_size: 1000,
                        page_token: token,
                        ..Default::default()
                    })
                    .await
                    .expect("a page within the client's message limit")
                    .into_inner()
            }
        };
        let first = page(String::new()).await;
        assert!(!first.events.is_empty());
        assert!(first.events.len() < 1000, "{}", first.events.len());
        assert!(
            !first.next_page_token.is_empty(),
            "a page cut short goes on"
        );
        assert!(first.encoded_len() <= 4 << 20);
        let second = page(first.next_page_token.clone()).await;
        assert!(!second.events.is_empty());
        assert_eq!(
            second.events[0].sequence,
            first.events.last().unwrap().sequence + 1,
            "no event skipped between pages"
        );
        for e in first.events.iter().chain(&second.events) {
            assert!(e.resource.chars().count() <= 512);
            assert!(!e.resource.contains('\u{0}'));
        }
    }
);

// --- 4. one mailbox, one person ------------------------------------------------------

fn by_email(email: &str) -> Option<SubjectIdentifier> {
    Some(SubjectIdentifier {
        kind: Some(subject_identifier::Kind::Email(email.into())),
    })
}

storage_test!(
    emails_that_look_the_same_are_one_person,
    |app: TestApp| async move {
        fixtures::tenant(&app, TENANT).await;
        for (created_as, found_as) in [
            ("jose\u{301}@example.com", "jos\u{e9}@example.com"),
            ("mar\u{ed}a@example.com", "MARI\u{301}A@example.com"),
            ("user@m\u{fc}nchen.example", "user@xn--mnchen-3ya.example"),
            (
                "other@xn--mnchen-3ya.example",
                "Other@Mu\u{308}nchen.example",
            ),
            (
                "\u{ff46}\u{ff55}\u{ff4c}\u{ff4c}@example.com",
                "full@example.com",
            ),
            (
                "wide@example.com",
                "\u{ff37}\u{ff29}\u{ff24}\u{ff25}@example.com",
            ),
        ] {
            let contact = create_contact(&app, fixtures::contact(created_as))
                .await
                .unwrap();
            let located = app
                .subjects()
                .locate_subject_data(LocateSubjectDataRequest {
                    subject: by_email(found_as),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .records;
            assert_eq!(
                located.iter().map(|r| &r.resource).collect::<Vec<_>>(),
                [&contact.name],
                "{created_as:?} located as {found_as:?}"
            );
            let listed = app
                .contacts()
                .list_contacts(ListContactsRequest {
                    parent: format!("tenants/{TENANT}"),
                    email: found_as.into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .contacts;
            assert_eq!(
                listed.iter().map(|c| &c.name).collect::<Vec<_>>(),
                [&contact.name],
                "{created_as:?} listed as {found_as:?}"
            );
        }

        let tables = ["identity_contacts", "subject_keys"];
        let before = rows(&app, &tables).await;
        for hidden in [
            "ann\u{200b}@example.com",
            "an\u{200d}n@example.com",
            "\u{feff}ann@example.com",
            "ann@exam\u{200b}ple.com",
        ] {
            let err = create_contact(&app, fixtures::contact(hidden))
                .await
                .unwrap_err();
            assert_refused(&err, Code::InvalidArgument, &[hidden]);
            assert!(err.message().contains("contact.email"), "{}", err.message());
        }
        assert_eq!(rows(&app, &tables).await, before, "nothing stored");
    }
);

// --- 5. the guard through the API -------------------------------------------------

storage_test!(
    the_guard_sees_through_spellings_and_spares_business_notes,
    |app: TestApp| async move {
        fixtures::tenant(&app, TENANT).await;
        let tables = ["identity_contacts", "subject_keys"];
        let before = rows(&app, &tables).await;
        let notes = [
            "card \u{ff14}\u{ff11}\u{ff11}\u{ff11} \u{ff11}\u{ff11}\u{ff11}\u{ff11} \u{ff11}\u{ff11}\u{ff11}\u{ff11} \u{ff11}\u{ff11}\u{ff11}\u{ff11}",
            "card 4111\u{200b}1111\u{200b}1111\u{200b}1111",
            "card 4\u{200d}111 1111 1111 1111",
            "card 4111\u{a0}1111\u{a0}1111\u{a0}1111",
            "card 4111.1111.1111.1111",
            "card 4111/1111/1111/1111",
            "card 4111 1111\n1111 1111, exp 12/30",
            "SSN 123\u{2010}45\u{2010}6789",
            "SSN 123456789",
            "ssn: 123456789",
            "IBAN DE89-3704-0044-0532-0130-00",
        ];
        for text in notes {
            let err = create_contact(
                &app,
                Contact {
                    notes: text.into(),
                    ..fixtures::contact("ben@example.com")
                },
            )
            .await
            .unwrap_err();
            assert_refused(
                &err,
                Code::InvalidArgument,
                &[text, "4111", "1111", "6789", "3704", "0130"],
            );
            assert!(
                err.message().contains("contact.notes"),
                "{text:?}: {}",
                err.message()
            );
        }
        for email in [
            "4111111111111111@example.com",
            "ben.4111-1111-1111-1111@example.com",
            "\u{ff14}\u{ff11}\u{ff11}\u{ff11}\u{ff11}\u{ff11}\u{ff11}\u{ff11}\u{ff11}\u{ff11}\u{ff11}\u{ff11}\u{ff11}\u{ff11}\u{ff11}\u{ff11}@example.com",
        ] {
            let err = create_contact(&app, fixtures::contact(email))
                .await
                .unwrap_err();
            assert_refused(&err, Code::InvalidArgument, &[email, "4111", "1111"]);
            assert!(
                err.message().contains("contact.email"),
                "{email:?}: {}",
                err.message()
            );
        }
        assert_eq!(rows(&app, &tables).await, before, "nothing stored");

        // Business notes with numbers in them pass.
        for (i, text) in [
            "Order 123456789",
            "order 12345678, shipped 2024-05-01",
            "meeting 01/05/2024 at 14:30",
            "Invoice 2024-000123 paid",
            "call +49 30 1234 5678 or +1 (415) 555-2671",
            "Tel.: 0049 (0)30/1234-5678",
            "version 1.2.3.4, build 20240501",
            "v2024.05.01",
            "server 192.168.100.200",
            "ISBN 978-3-16-148410-0",
            "EUR 1.234.567,89",
        ]
        .into_iter()
        .chain(hostile::BUSINESS_NOTES.iter().copied())
        .enumerate()
        {
            create_contact(
                &app,
                Contact {
                    notes: text.into(),
                    ..fixtures::contact(&format!("note{i}@example.com"))
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{text:?} refused: {}", e.message()));
        }
    }
);

storage_test!(
    the_guard_refuses_every_spelling_of_a_card_or_account_number,
    |app: TestApp| async move {
        fixtures::tenant(&app, TENANT).await;
        let tables = ["identity_contacts", "subject_keys"];
        let before = rows(&app, &tables).await;
        let spellings = hostile::sensitive_spellings();
        assert!(spellings.len() > 80, "{} spellings", spellings.len());
        for (what, text) in &spellings {
            let err = create_contact(
                &app,
                Contact {
                    notes: text.clone(),
                    ..fixtures::contact("ben@example.com")
                },
            )
            .await
            .expect_err(what);
            assert_refused(&err, Code::InvalidArgument, &[text]);
            assert!(!hostile::reveals(text, err.message()), "{what}: echoed");
            let fields = custodian_tests::violations(&err);
            assert!(
                fields.iter().any(|(field, rule)| field == "contact.notes"
                    && (rule.contains("(payment_card)") || rule.contains("(iban)"))),
                "{what}: {fields:?}"
            );
        }
        assert_eq!(rows(&app, &tables).await, before, "nothing stored");

        // The message names the kind with its article.
        let err = create_contact(
            &app,
            Contact {
                notes: "IBAN DE89.3704.0044.0532.0130.00".into(),
                ..fixtures::contact("ben@example.com")
            },
        )
        .await
        .unwrap_err();
        assert!(
            err.message().contains("contains an IBAN (iban)"),
            "{}",
            err.message()
        );
        let err = app
            .tenants()
            .create_tenant(CreateTenantRequest {
                tenant: Some(Tenant {
                    display_name: "Acme DE89 3704 0044 0532 0130 00".into(),
                    ..Default::default()
                }),
                tenant_id: "acme-iban".into(),
                request_id: String::new(),
            })
            .await
            .unwrap_err();
        assert!(
            err.message().contains("contains an IBAN (iban)"),
            "{}",
            err.message()
        );
    }
);

/// Cases of the property test of the guard's spellings: each is three
/// calls, so many are cheap.
fn spelling_cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(64)
}

storage_test!(
    the_guard_refuses_random_spellings_through_the_api,
    |app: TestApp| async move {
        fixtures::tenant(&app, TENANT).await;
        let tables = ["identity_contacts", "identity_tenants", "subject_keys"];
        let before = rows(&app, &tables).await;
        let handle = tokio::runtime::Handle::current();
        let mut runner = TestRunner::new(Config {
            cases: spelling_cases(),
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&hostile::sensitive_spelling(), |(what, value)| {
            tokio::task::block_in_place(|| {
                handle.block_on(refuses_in_guarded_fields(&app, &what, &value))
            })
            .map_err(TestCaseError::fail)
        });
        if let Err(err) = result {
            panic!("{err}");
        }
        assert_eq!(rows(&app, &tables).await, before, "nothing stored");
    }
);

/// Sends `value`, among words, in three guard-scanned fields of requests
/// otherwise valid: a contact's notes (free text over lines), its
/// organisation and a tenant's display name (single lines, which may refuse
/// a spelling over quoted lines for its line break or tab instead). Each must be
/// refused as the caller's error, naming the field, without echoing it.
async fn refuses_in_guarded_fields(app: &TestApp, what: &str, value: &str) -> Result<(), String> {
    let text = format!("Re order 4411-2233: {value}, thanks");
    // Line breaks and tabs are refused by one-line fields before the guard.
    let single_line = !text.chars().any(char::is_control);
    let notes = create_contact(
        app,
        Contact {
            notes: text.clone(),
            ..fixtures::contact("ben@example.com")
        },
    )
    .await;
    let organization = create_contact(
        app,
        Contact {
            organization: text.clone(),
            ..fixtures::contact("ben@example.com")
        },
    )
    .await;
    let tenant = app
        .tenants()
        .create_tenant(CreateTenantRequest {
            tenant: Some(Tenant {
                display_name: text.clone(),
                ..Default::default()
            }),
            tenant_id: "spelled".into(),
            request_id: String::new(),
        })
        .await
        .map(tonic::Response::into_inner);
    let results = [
        ("contact.notes", notes.map(|_| ()), true),
        (
            "contact.organization",
            organization.map(|_| ()),
            single_line,
        ),
        ("tenant.display_name", tenant.map(|_| ()), single_line),
    ];
    for (field, result, by_the_guard) in results {
        let Err(err) = result else {
            return Err(format!("{what}: {field} accepted it"));
        };
        if err.code() != Code::InvalidArgument {
            return Err(format!("{what}: {field} answered {:?}", err.code()));
        }
        if hostile::reveals(value, err.message())
            || hostile::reveals(value, &String::from_utf8_lossy(err.details()))
        {
            return Err(format!("{what}: {field} echoed it"));
        }
        let fields = custodian_tests::violations(&err);
        let named = fields.iter().any(|(f, rule)| {
            f == field
                && (!by_the_guard || rule.contains("(payment_card)") || rule.contains("(iban)"))
        });
        if !named {
            return Err(format!("{what}: {field} refused with {fields:?}"));
        }
    }
    Ok(())
}

// --- 7. token lifetimes ---------------------------------------------------------------

fn sign(app: &TestApp, iat: u64, exp: u64) -> String {
    let claims = Claims {
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        sub: "test:forger".into(),
        purposes: Purpose::ALL.to_vec(),
        tenant: None,
        iat,
        exp,
        jti: "hardening".into(),
        kind: TokenKind::Caller,
    };
    let key = jsonwebtoken::EncodingKey::from_ed_pem(
        app.keys
            .token_signing_key
            .as_deref()
            .expect("a signing key")
            .as_bytes(),
    )
    .expect("the key file's signing key");
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
        &claims,
        &key,
    )
    .expect("signed")
}

storage_test!(
    signed_tokens_with_impossible_lifetimes_are_refused,
    |app: TestApp| async move {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let list = |token: String| {
            let mut tenants = app.tenants_as(Bearer::new(Some(&token)));
            async move { tenants.list_tenants(ListTenantsRequest::default()).await }
        };
        // The same key and claims with a real lifetime are accepted.
        list(sign(&app, now, now + 3600))
            .await
            .expect("a token signed with the real key");
        for (iat, exp) in [
            (now, 9_999_999_999),
            (now, u64::MAX),
            (now - 60, now + 400 * 24 * 3600),
            (now + 3600, now + 7200),
            (u64::MAX - 10, u64::MAX),
        ] {
            let token = sign(&app, iat, exp);
            let err = list(token.clone()).await.unwrap_err();
            assert_refused(&err, Code::Unauthenticated, &[&token]);
        }
    }
);

// --- 9. malformed, oversized and differently spelled requests -----------------

storage_test!(
    undecodable_requests_are_invalid_arguments_without_decoder_words,
    |app: TestApp| async move {
        let metadata = [("authorization", format!("Bearer {}", app.root_token))];
        for (path, body) in [
            (
                "/custodian.identity.v1.TenantService/GetTenant",
                vec![0x0a, 0xff, 0xff],
            ),
            (
                "/custodian.identity.v1.TenantService/GetTenant",
                vec![0x0a, 0x05, b'a'],
            ),
            (
                "/custodian.identity.v1.ContactService/GetContact",
                vec![0xff; 12],
            ),
            (
                "/custodian.identity.v1.ContactService/ListContacts",
                vec![0x08],
            ),
            (
                "/custodian.identity.v1.ContactService/ListContacts",
                vec![0x0f, 0x01],
            ),
            (
                "/custodian.identity.v1.TenantService/CreateTenant",
                vec![0x0a, 0x02, 0x12, 0x05],
            ),
            (
                "/custodian.identity.v1.TenantService/GetTenant",
                vec![0x0a, 0x02, 0xc0, 0xaf],
            ),
            (
                "/custodian.audit.v1.AuditService/ListAuditEvents",
                vec![0x28, 0x80, 0x80],
            ),
        ] {
            let err = call_raw(&app.channel, path, body.clone(), &metadata)
                .await
                .unwrap_err();
            assert_refused(&err, Code::InvalidArgument, &[]);
            let lower = err.message().to_lowercase();
            for word in [
                "buffer",
                "decode",
                "varint",
                "wire type",
                "utf-8",
                "utf8",
                "underflow",
                "prost",
                "tag",
            ] {
                assert!(
                    !lower.contains(word),
                    "{path} {body:02x?}: {}",
                    err.message()
                );
            }
        }
        assert_eq!(app.count("identity_tenants").await, 0);
    }
);

mod messages_over_the_limit_are_resource_exhausted {
    use super::*;

    async fn run(backend: Backend) {
        let Some(app) =
            custodian_tests::spawn_with(backend, |c| c.max_message_bytes = 64 * 1024).await
        else {
            return;
        };
        fixtures::tenant(&app, TENANT).await;
        let metadata = [("authorization", format!("Bearer {}", app.root_token))];
        let request = |notes: usize| {
            CreateContactRequest {
                parent: format!("tenants/{TENANT}"),
                contact: Some(Contact {
                    notes: "n".repeat(notes),
                    ..fixtures::contact("ben@example.com")
                }),
                request_id: String::new(),
            }
            .encode_to_vec()
        };
        let path = "/custodian.identity.v1.ContactService/CreateContact";
        let err = call_raw(&app.channel, path, request(100_000), &metadata)
            .await
            .unwrap_err();
        assert_refused(&err, Code::ResourceExhausted, &["nnnnnnnnnnnnnnnnn"]);
        // Under the limit, the same call is judged on its contents.
        let err = call_raw(&app.channel, path, request(60_000), &metadata)
            .await
            .unwrap_err();
        assert_refused(&err, Code::InvalidArgument, &["nnnnnnnnnnnnnnnnn"]);
        assert!(err.message().contains("contact.notes"), "{}", err.message());
        assert_eq!(app.count("identity_contacts").await, 0);
        call_raw(&app.channel, path, request(100), &metadata)
            .await
            .expect("a small request");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        run(Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        run(Backend::Postgres).await;
    }
}

storage_test!(
    a_request_id_in_upper_and_lower_case_is_one_key,
    |app: TestApp| async move {
        let id = "0190F3C4-5B6A-7C8D-9E0F-1A2B3C4D5E6F";
        let create = |request_id: String| {
            let mut tenants = app.tenants();
            async move {
                tenants
                    .create_tenant(CreateTenantRequest {
                        tenant: Some(Tenant {
                            display_name: "Acme".into(),
                            ..Default::default()
                        }),
                        tenant_id: String::new(),
                        request_id,
                    })
                    .await
                    .unwrap()
                    .into_inner()
            }
        };
        let upper = create(id.into()).await;
        let lower = create(id.to_lowercase()).await;
        assert_eq!(upper.name, lower.name);
        assert_eq!(app.count("identity_tenants").await, 1);

        let contact = |request_id: &str| CreateContactRequest {
            parent: upper.name.clone(),
            contact: Some(fixtures::contact("ben@example.com")),
            request_id: request_id.into(),
        };
        let key = "A1B2C3D4-0000-4000-8000-00000000000F";
        let first = app.contacts().create_contact(contact(key)).await.unwrap();
        let again = app
            .contacts()
            .create_contact(contact(&key.to_lowercase()))
            .await
            .unwrap();
        assert_eq!(first.into_inner().name, again.into_inner().name);
        assert_eq!(app.count("identity_contacts").await, 1);
    }
);

// --- every method, every string field, hostile values (property) ------------

/// Cases of the property test: each calls every method with every kind of
/// hostile value in every string field (some 1,500 calls), so a few cases
/// already give each field several values of each kind.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3)
}

storage_test!(
    every_method_refuses_hostile_strings_without_harm,
    |app: TestApp| async move {
        fixtures::tenant(&app, TENANT).await;
        let mut prober = hostile::Prober::new(&app).await;
        let slots: usize = prober.targets.iter().map(|t| t.slots.len()).sum();
        // Every contract of the suite is found without naming one here.
        for service in [
            "custodian.identity.v1.TenantService",
            "custodian.identity.v1.ContactService",
            "custodian.tickets.v1.TicketService",
            "custodian.subject.v1.SubjectDataService",
            "custodian.retention.v1.RetentionService",
            "custodian.audit.v1.AuditService",
        ] {
            assert!(
                prober
                    .targets
                    .iter()
                    .any(|t| t.path.starts_with(&format!("/{service}/"))),
                "{service} not probed"
            );
        }
        assert!(slots > 100, "{slots} string fields");
        // An empty request is never the server's fault either.
        for target in prober.targets.clone() {
            let metadata = [
                ("authorization", format!("Bearer {}", app.root_token)),
                ("custodian-service", "identity".to_owned()),
            ];
            if let Err(status) = call_raw(
                &app.channel,
                &target.path,
                hostile::empty_request(&target),
                &metadata,
            )
            .await
            {
                assert!(
                    !matches!(status.code(), Code::Internal | Code::Unknown),
                    "{}: {:?} {}",
                    target.path,
                    status.code(),
                    short(status.message())
                );
            }
        }
        prober.snapshot_now().await;

        let prober = std::sync::Mutex::new(prober);
        let handle = tokio::runtime::Handle::current();
        let mut runner = TestRunner::new(Config {
            cases: cases(),
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&hostile::case(), |case| {
            tokio::task::block_in_place(|| {
                let mut prober = prober.lock().unwrap_or_else(|e| e.into_inner());
                handle.block_on(prober.sweep(&case))
            })
            .map_err(TestCaseError::fail)
        });
        let prober = prober.into_inner().unwrap_or_else(|e| e.into_inner());
        eprintln!(
            "{} methods, {slots} string fields: {} calls, {} refused, accepted {:?}; \
             a card or account number taken (not stored) by {:?}",
            prober.targets.len(),
            prober.calls,
            prober.refused,
            prober.accepted,
            prober.accepted_sensitive,
        );
        if let Err(err) = result {
            panic!("{err}");
        }
    }
);
