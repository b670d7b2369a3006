//! The privacy kernel as identity keeps it: fields cut down per purpose, an
//! audit event per access in a verifiable hash chain, no plaintext in the
//! database, erasure that destroys the subject's key, and retention that
//! sweeps exactly what has expired. On SQLite and PostgreSQL.

use std::time::Duration;

use custodian_privacy::Purpose;
use custodian_proto::{
    audit::v1::{AuditAction, AuditOutcome, ListAuditEventsRequest, VerifyAuditChainRequest},
    common::v1::{DataCategory, SubjectIdentifier, subject_identifier},
    identity::v1::*,
    retention::v1::{
        CreateLegalHoldRequest, DeleteLegalHoldRequest, LegalHold, SweepExpiredRequest, legal_hold,
    },
    subject::v1::EraseSubjectDataRequest,
};
use custodian_tests::{Backend, Bearer, TestApp, fixtures, storage_test};
use prost_types::FieldMask;
use sqlx::Row as _;
use tonic::Code;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

fn ann() -> Contact {
    Contact {
        person_name: fixtures::name("Annika", "Zwiebelbaum"),
        email: "annika.zwiebelbaum@example.com".into(),
        phone: "+49 30 901820".into(),
        postal_address: fixtures::address("DE"),
        organization: "Baker & Sons".into(),
        job_title: "Buyer".into(),
        notes: "Prefers calls after lunch".into(),
        ..Default::default()
    }
}

async fn create_contact(app: &TestApp, tenant: &str, contact: Contact) -> Contact {
    app.contacts()
        .create_contact(CreateContactRequest {
            parent: format!("tenants/{tenant}"),
            contact: Some(contact),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
}

storage_test!(
    responses_are_cut_down_to_the_purpose,
    |app: TestApp| async move {
        fixtures::tenant(&app, "acme").await;
        let created = create_contact(&app, "acme", ann()).await;
        let get = |purpose: Purpose| {
            let mut client = app.contacts_as(Bearer::new(Some(&app.token(&[purpose], None))));
            let name = created.name.clone();
            async move {
                client
                    .get_contact(GetContactRequest { name })
                    .await
                    .unwrap()
            }
        };

        let analytics = get(Purpose::ProductAnalytics).await;
        let redacted = analytics
            .metadata()
            .get(custodian_identity::REDACTED_HEADER)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let c = analytics.into_inner();
        assert_eq!(
            (c.email.as_str(), c.phone.as_str(), c.notes.as_str()),
            ("", "", "")
        );
        assert!(c.postal_address.is_none());
        assert_eq!(c.person_name.unwrap_or_default(), Default::default());
        assert_eq!(
            c.organization, "Baker & Sons",
            "what analytics may see is there"
        );
        for field in ["email", "phone", "postal_address", "person_name", "notes"] {
            assert!(redacted.contains(field), "{field} named in {redacted}");
        }

        let support = get(Purpose::Support).await.into_inner();
        assert_eq!(support.email, "annika.zwiebelbaum@example.com");
        assert!(
            support.notes.is_empty() && support.postal_address.is_none(),
            "support needs no notes or address"
        );

        let full = get(Purpose::ServiceDelivery).await;
        assert!(
            full.metadata()
                .get(custodian_identity::REDACTED_HEADER)
                .is_none()
        );
        assert_eq!(full.into_inner().notes, "Prefers calls after lunch");

        // The same holds for lists, and the audit trail records what was shown.
        let list = app
            .contacts_as(Bearer::new(Some(
                &app.token(&[Purpose::ProductAnalytics], None),
            )))
            .list_contacts(ListContactsRequest {
                parent: "tenants/acme".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            list.contacts
                .iter()
                .all(|c| c.email.is_empty() && c.phone.is_empty())
        );
        let trail = app.audit_events().await;
        let analytics_reads: Vec<_> = trail
            .iter()
            .filter(|e| e.purpose == "product_analytics")
            .collect();
        assert_eq!(analytics_reads.len(), 2);
        assert!(
            analytics_reads
                .iter()
                .all(|e| !e.fields.contains(&"email".to_owned()))
        );
        app.stop().await.unwrap();
    }
);

storage_test!(
    every_access_is_audited_in_a_verifiable_chain,
    |app: TestApp| async move {
        fixtures::tenant(&app, "acme").await;
        let created = create_contact(&app, "acme", ann()).await;
        app.contacts()
            .get_contact(GetContactRequest {
                name: created.name.clone(),
            })
            .await
            .unwrap();
        app.contacts()
            .update_contact(UpdateContactRequest {
                contact: Some(Contact {
                    name: created.name.clone(),
                    job_title: "Head of Buying".into(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["job_title".into()],
                }),
            })
            .await
            .unwrap();
        let missing = "tenants/acme/contacts/0190f3c4-5b6a-7c8d-9e0f-000000000000";
        assert_eq!(
            app.contacts()
                .get_contact(GetContactRequest {
                    name: missing.into()
                })
                .await
                .unwrap_err()
                .code(),
            Code::NotFound
        );
        app.contacts()
            .delete_contact(DeleteContactRequest {
                name: created.name.clone(),
            })
            .await
            .unwrap();

        let trail = app.audit_events().await;
        let of_contact: Vec<_> = trail
            .iter()
            .filter(|e| e.resource == created.name)
            .collect();
        let actions: Vec<i32> = of_contact.iter().map(|e| e.action).collect();
        assert_eq!(
            actions,
            [
                AuditAction::Create as i32,
                AuditAction::Read as i32,
                AuditAction::Update as i32,
                AuditAction::Delete as i32
            ]
        );
        assert!(of_contact.iter().all(|e| e.caller == "test:root"
            && e.purpose == "service_delivery"
            && !e.subject_ref.is_empty()));
        assert_eq!(
            of_contact[2].fields,
            ["job_title"],
            "an update names the fields it changed"
        );
        assert!(
            trail
                .iter()
                .any(|e| e.resource == missing && e.outcome == AuditOutcome::NotFound as i32)
        );
        // Nothing personal in the trail.
        let text = format!("{trail:?}");
        for value in ["annika", "Zwiebelbaum", "4930901820", "Linden"] {
            assert!(!text.contains(value), "{value} in the audit trail");
        }
        // Filtering by subject finds the contact's events.
        let by_subject = app
            .audit()
            .list_audit_events(ListAuditEventsRequest {
                subject_ref: of_contact[0].subject_ref.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .events;
        assert_eq!(by_subject.len(), 4);
        // Every filter at once (each is written into the query only when
        // given): a window around the subject's events holds all four, one
        // that ends where they begin holds none.
        let first = by_subject[0].time;
        let after_last = by_subject[3].time.map(|t| prost_types::Timestamp {
            seconds: t.seconds + 1,
            ..t
        });
        for (end_time, expected) in [(after_last, 4), (first, 0)] {
            let windowed = app
                .audit()
                .list_audit_events(ListAuditEventsRequest {
                    resource: of_contact[0].resource.clone(),
                    subject_ref: of_contact[0].subject_ref.clone(),
                    start_time: first,
                    end_time,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .events;
            assert_eq!(windowed.len(), expected, "{end_time:?}");
        }

        let verified = app
            .audit()
            .verify_audit_chain(VerifyAuditChainRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(verified.intact, "{verified:?}");
        let identity = verified
            .chains
            .iter()
            .find(|c| c.service == "identity")
            .expect("identity's chain");
        assert_eq!(identity.events_checked, trail.len() as i64);

        // Altering an event is detected where it happened.
        sqlx::query("UPDATE audit_events SET caller = 'someone-else' WHERE seq = 2")
            .execute(&app.raw)
            .await
            .unwrap();
        let verified = app
            .audit()
            .verify_audit_chain(VerifyAuditChainRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(!verified.intact);
        assert_eq!(
            (
                verified
                    .chains
                    .iter()
                    .find(|c| c.service == "identity")
                    .unwrap()
                    .broken_at_sequence,
                verified
                    .chains
                    .iter()
                    .find(|c| c.service == "identity")
                    .unwrap()
                    .problem
                    .as_str()
            ),
            (2, "hash mismatch")
        );
        sqlx::query("UPDATE audit_events SET caller = 'test:root' WHERE seq = 2")
            .execute(&app.raw)
            .await
            .unwrap();
        assert!(
            app.audit()
                .verify_audit_chain(VerifyAuditChainRequest {})
                .await
                .unwrap()
                .into_inner()
                .intact
        );

        // So is deleting one, in the middle or at the end.
        sqlx::query("DELETE FROM audit_events WHERE seq = 3")
            .execute(&app.raw)
            .await
            .unwrap();
        let verified = app
            .audit()
            .verify_audit_chain(VerifyAuditChainRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (
                verified.intact,
                verified
                    .chains
                    .iter()
                    .find(|c| c.service == "identity")
                    .unwrap()
                    .broken_at_sequence,
                verified
                    .chains
                    .iter()
                    .find(|c| c.service == "identity")
                    .unwrap()
                    .problem
                    .as_str()
            ),
            (false, 3, "missing event")
        );
        app.stop().await.unwrap();
    }
);

/// Everything stored in the test database, as text: the SQLite file with
/// its WAL, or every row of every table on PostgreSQL.
async fn raw_database(app: &TestApp, backend: Backend) -> String {
    match backend {
        Backend::Sqlite => {
            let path = app
                .db
                .url
                .trim_start_matches("sqlite://")
                .split('?')
                .next()
                .unwrap()
                .to_owned();
            let mut bytes = std::fs::read(&path).unwrap();
            bytes.extend(std::fs::read(format!("{path}-wal")).unwrap_or_default());
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Backend::Postgres => {
            let mut text = String::new();
            for table in [
                "identity_tenants",
                "identity_users",
                "identity_contacts",
                "identity_evaluation_signups",
                "kit_idempotency",
                "identity_legal_holds",
                "audit_events",
                "audit_pending",
                "subject_keys",
            ] {
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT CAST(t AS TEXT) AS row FROM {table} t"
                )))
                .fetch_all(&app.raw)
                .await
                .unwrap();
                for row in rows {
                    text.push_str(&row.get::<String, _>("row"));
                }
            }
            text
        }
    }
}

async fn stores_no_plaintext(app: TestApp, backend: Backend) {
    fixtures::tenant(&app, "acme").await;
    let created = create_contact(&app, "acme", ann()).await;
    let mut user = fixtures::user("annika.zwiebelbaum@example.com");
    user.person_name = fixtures::name("Annika", "Zwiebelbaum");
    user.phone = "+49 30 901820".into();
    app.users()
        .create_user(CreateUserRequest {
            parent: "tenants/acme".into(),
            user: Some(user),
            request_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap();
    app.contacts()
        .update_contact(UpdateContactRequest {
            contact: Some(Contact {
                name: created.name,
                notes: "Zwiebelbaum called back".into(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["notes".into()],
            }),
        })
        .await
        .unwrap();
    let raw = raw_database(&app, backend).await;
    assert!(
        raw.contains("tenants/acme") || raw.contains("acme"),
        "the dump is real"
    );
    for value in [
        "annika.zwiebelbaum",
        "Zwiebelbaum",
        "Annika",
        "4930901820",
        "+49 30 901820",
        "Unter den Linden",
        "Prefers calls",
    ] {
        assert!(
            !raw.contains(value),
            "{value} readable in the {backend:?} database"
        );
    }
    // And it all reads back through the API.
    let list = app
        .contacts()
        .list_contacts(ListContactsRequest {
            parent: "tenants/acme".into(),
            email: "annika.zwiebelbaum@example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        list.contacts[0].person_name.as_ref().unwrap().family_name,
        "Zwiebelbaum"
    );
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_file_holds_no_plaintext() {
    if let Some(app) = custodian_tests::spawn(Backend::Sqlite).await {
        stores_no_plaintext(app, Backend::Sqlite).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tables_hold_no_plaintext() {
    if let Some(app) = custodian_tests::spawn(Backend::Postgres).await {
        stores_no_plaintext(app, Backend::Postgres).await;
    }
}

storage_test!(
    erasure_removes_rows_and_destroys_the_key,
    |app: TestApp| async move {
        fixtures::tenant(&app, "acme").await;
        fixtures::tenant(&app, "globex").await;
        let first = create_contact(&app, "acme", ann()).await;
        create_contact(&app, "globex", ann()).await;
        create_contact(&app, "acme", fixtures::contact("bob@example.com")).await;
        assert_eq!(
            app.count("subject_keys").await,
            2,
            "one key per person, shared across their records"
        );
        let subject_ref = app
            .audit_events()
            .await
            .into_iter()
            .find(|e| e.resource == first.name)
            .unwrap()
            .subject_ref;

        let erased = app
            .subjects()
            .erase_subject_data(EraseSubjectDataRequest {
                subject: Some(SubjectIdentifier {
                    kind: Some(subject_identifier::Kind::Email(
                        "Annika.Zwiebelbaum@example.com".into(),
                    )),
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .erased;
        assert_eq!(erased.len(), 2);
        assert_eq!(app.count("identity_contacts").await, 1, "Bob stays");
        assert_eq!(
            app.count("subject_keys").await,
            1,
            "Annika's key is destroyed"
        );
        let key_rows = sqlx::query("SELECT COUNT(*) AS n FROM subject_keys WHERE id = $1")
            .bind(&subject_ref)
            .fetch_one(&app.raw)
            .await
            .unwrap()
            .get::<i64, _>("n");
        assert_eq!(key_rows, 0);

        // The trail keeps the erasure, by an opaque reference only.
        let trail = app.audit_events().await;
        let erasures: Vec<_> = trail
            .iter()
            .filter(|e| e.action == AuditAction::Erase as i32)
            .collect();
        assert_eq!(erasures.len(), 2);
        assert!(erasures.iter().all(|e| e.subject_ref == subject_ref));
        assert!(!format!("{trail:?}").to_lowercase().contains("zwiebelbaum"));
        assert!(
            app.audit()
                .verify_audit_chain(VerifyAuditChainRequest {})
                .await
                .unwrap()
                .into_inner()
                .intact
        );
        app.stop().await.unwrap();
    }
);

storage_test!(
    the_sweeper_deletes_exactly_what_has_expired,
    |app: TestApp| async move {
        fixtures::tenant(&app, "acme").await;
        fixtures::tenant(&app, "globex").await;
        fixtures::tenant(&app, "initech").await;
        // acme keeps contacts 30 days; globex and initech keep the default (three years).
        app.tenants()
            .update_tenant(UpdateTenantRequest {
                tenant: Some(Tenant {
                    name: "tenants/acme".into(),
                    retention_rules: vec![RetentionRule {
                        data_category: DataCategory::BusinessContact as i32,
                        retain_for: Some(prost_types::Duration {
                            seconds: 30 * 86400,
                            nanos: 0,
                        }),
                    }],
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["retention_rules".into()],
                }),
            })
            .await
            .unwrap();
        create_contact(&app, "acme", fixtures::contact("a1@example.com")).await;
        create_contact(&app, "acme", fixtures::contact("a2@example.com")).await;
        create_contact(&app, "globex", fixtures::contact("g1@example.com")).await;
        let held = create_contact(&app, "acme", fixtures::contact("held@example.com")).await;
        app.signups()
            .create_evaluation_signup(CreateEvaluationSignupRequest {
                evaluation_signup: Some(fixtures::signup("s1@example.com")),
                request_id: String::new(),
            })
            .await
            .unwrap();
        app.users()
            .create_user(CreateUserRequest {
                parent: "tenants/acme".into(),
                user: Some(fixtures::user("u1@example.com")),
                request_id: String::new(),
            })
            .await
            .unwrap();
        let subject_hold = app
            .retention()
            .create_legal_hold(CreateLegalHoldRequest {
                legal_hold: Some(LegalHold {
                    target: Some(legal_hold::Target::Subject(SubjectIdentifier {
                        kind: Some(subject_identifier::Kind::Email("HELD@example.com".into())),
                    })),
                    reason: "case 12".into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            !subject_hold.subject_ref.is_empty() && !format!("{subject_hold:?}").contains("held@")
        );

        let sweep = |app: &TestApp| {
            let mut client = app.retention();
            async move {
                let mut counts: Vec<(i32, i64)> = client
                    .sweep_expired(SweepExpiredRequest {})
                    .await
                    .unwrap()
                    .into_inner()
                    .deleted
                    .into_iter()
                    .map(|c| (c.data_category, c.deleted))
                    .collect();
                counts.sort();
                counts
            }
        };

        // Day 29: nothing has expired.
        app.clock.advance(29 * DAY);
        assert_eq!(sweep(&app).await, []);
        assert_eq!(app.count("identity_contacts").await, 4);

        // Day 31: acme's own 30 days are up; the held subject stays; globex keeps its default.
        app.clock.advance(2 * DAY);
        assert_eq!(
            sweep(&app).await,
            [(DataCategory::BusinessContact as i32, 2)]
        );
        assert_eq!(app.count("identity_contacts").await, 2);
        app.contacts()
            .get_contact(GetContactRequest {
                name: held.name.clone(),
            })
            .await
            .unwrap();

        // A tenant hold pauses it all for that tenant.
        let tenant_hold = app
            .retention()
            .create_legal_hold(CreateLegalHoldRequest {
                legal_hold: Some(LegalHold {
                    target: Some(legal_hold::Target::Tenant("tenants/globex".into())),
                    reason: "case 13".into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner();

        // Thirteen months: the sign-up (twelve months) goes; globex is held; the
        // authorized user has no retention unless its tenant sets one.
        app.clock.advance(365 * DAY + 30 * DAY);
        assert_eq!(
            sweep(&app).await,
            [(DataCategory::EvaluationSignup as i32, 1)]
        );
        assert_eq!(
            (
                app.count("identity_evaluation_signups").await,
                app.count("identity_users").await
            ),
            (0, 1)
        );

        // Four years: globex is still held, the held subject too.
        app.clock.advance(3 * 365 * DAY);
        assert_eq!(sweep(&app).await, []);
        assert_eq!(app.count("identity_contacts").await, 2);

        // Holds lifted: both go, with their keys.
        app.retention()
            .delete_legal_hold(DeleteLegalHoldRequest {
                name: tenant_hold.name,
            })
            .await
            .unwrap();
        app.retention()
            .delete_legal_hold(DeleteLegalHoldRequest {
                name: subject_hold.name,
            })
            .await
            .unwrap();
        assert_eq!(
            sweep(&app).await,
            [(DataCategory::BusinessContact as i32, 2)]
        );
        assert_eq!(app.count("identity_contacts").await, 0);
        assert_eq!(
            app.count("subject_keys").await,
            1,
            "only the user's key is left"
        );

        // Each sweep is in the audit trail, as counts only.
        let sweeps: Vec<_> = app
            .audit_events()
            .await
            .into_iter()
            .filter(|e| e.action == AuditAction::Sweep as i32)
            .collect();
        assert_eq!(sweeps.len(), 3);
        assert_eq!(sweeps[0].detail, "business_contact=2");
        app.stop().await.unwrap();
    }
);

storage_test!(
    audit_events_expire_after_six_years_and_the_chain_still_verifies,
    |app: TestApp| async move {
        fixtures::tenant(&app, "acme").await;
        let old = create_contact(&app, "acme", fixtures::contact("a@example.com")).await;
        app.clock.advance(6 * 365 * DAY + 2 * DAY);
        let created = create_contact(&app, "acme", fixtures::contact("b@example.com")).await;
        // Contacts three years old are gone too; what matters here is the trail.
        app.retention()
            .sweep_expired(SweepExpiredRequest {})
            .await
            .unwrap();
        let trail = app.audit_events().await;
        assert!(
            trail
                .iter()
                .all(|e| e.resource != old.name || e.action == AuditAction::Sweep as i32),
            "{trail:?}"
        );
        assert!(trail.iter().any(|e| e.resource == created.name));
        assert_eq!(trail[0].sequence, 2, "the first event aged out");
        assert!(
            app.audit()
                .verify_audit_chain(VerifyAuditChainRequest {})
                .await
                .unwrap()
                .into_inner()
                .intact
        );
        app.stop().await.unwrap();
    }
);
