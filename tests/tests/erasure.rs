//! Erasure as a holding of its own, in process: the outbox's files expire
//! with the sweep and are in the data map while mail is kept; an erasure
//! the erasure log cannot record changes nothing and is UNAVAILABLE, and
//! once the log is back it is recorded once, with no personal value. (The
//! backup-erase-restore run is the binary's: services/custodian/tests/
//! erasure.rs; the outbox after an erasure through dsr: tests/dsr.rs.)

use std::{fs, time::Duration};

use custodian_proto::{
    common::v1::{SubjectIdentifier, subject_identifier},
    dsr::v1::{CreateRequestRequest, Jurisdiction, Request, Requester, request},
    feedback::v1::{CreateFeedbackRequest, Feedback, FeedbackAuthor},
    privacy::v1::{DataCategory, GetDataMapRequest},
    retention::v1::SweepExpiredRequest,
    subject::v1::{EraseSubjectDataRequest, LocateSubjectDataRequest},
    tickets::v1::{
        AddMessageRequest, CreateTicketRequest, Ticket, TicketMessage, ticket, ticket_message,
    },
};
use custodian_runtime::time::Clock as _;
use custodian_tests::{Backend, TestApp, fixtures, spawn, spawn_with, storage_test};
use sqlx::Row as _;
use tonic::Code;

const DAY: i64 = 86_400_000_000;

/// The `.eml` and `.label` files of the outbox.
fn outbox(app: &TestApp) -> (Vec<String>, Vec<String>) {
    let dir = app.db.dir().join("outbox");
    let mut eml = Vec::new();
    let mut labels = Vec::new();
    for entry in fs::read_dir(dir).expect("the outbox") {
        let path = entry.expect("entry").path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("eml") => eml.push(fs::read_to_string(&path).expect("a mail")),
            Some("label") => labels.push(fs::read_to_string(&path).expect("a label")),
            _ => {}
        }
    }
    (eml, labels)
}

/// Mail from tickets (an agent's reply to Nell) and from dsr (the
/// acknowledgement of her request).
async fn mail_from_two_services(app: &TestApp, email: &str) {
    let ticket = app
        .tickets()
        .create_ticket(CreateTicketRequest {
            ticket: Some(Ticket {
                channel: ticket::Channel::Email as i32,
                kind: ticket::Kind::Inquiry as i32,
                category: "billing".into(),
                subject: "Invoice".into(),
                requester: Some(custodian_proto::tickets::v1::Requester {
                    person_name: fixtures::name("Nell", "Oakhurst"),
                    email: email.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            description: "Where is my invoice?".into(),
            request_id: String::new(),
        })
        .await
        .expect("ticket")
        .into_inner();
    app.tickets()
        .add_message(AddMessageRequest {
            parent: ticket.name,
            message: Some(TicketMessage {
                kind: ticket_message::Kind::AgentReply as i32,
                body: "It is on its way.".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("a reply");
    app.dsr_requests()
        .create_request(CreateRequestRequest {
            request: Some(Request {
                kind: request::Kind::Access as i32,
                jurisdiction: Jurisdiction::Gdpr as i32,
                requester: Some(Requester {
                    person_name: fixtures::name("Nell", "Oakhurst"),
                    email: email.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("a request");
}

async fn sweep(app: &TestApp) -> Vec<(String, i32, i64)> {
    let mut counts: Vec<(String, i32, i64)> = app
        .retention()
        .sweep_expired(SweepExpiredRequest {})
        .await
        .expect("sweep")
        .into_inner()
        .deleted
        .into_iter()
        .map(|c| (c.service, c.data_category, c.deleted))
        .collect();
    counts.sort();
    counts
}

storage_test!(
    outbox_files_expire_with_the_sweep,
    |app: TestApp| async move {
        const EMAIL: &str = "nell.oakhurst@example.com";
        mail_from_two_services(&app, EMAIL).await;
        let (eml, labels) = outbox(&app);
        assert_eq!((eml.len(), labels.len()), (2, 2));
        // A label names its service and a keyed index, never the address.
        let mut services: Vec<&str> = labels
            .iter()
            .map(|l| l.lines().next().expect("a service line"))
            .collect();
        services.sort();
        assert_eq!(services, ["service dsr", "service tickets"]);
        assert!(
            labels
                .iter()
                .all(|l| !l.contains("nell") && !l.contains('@'))
        );

        // Not yet: kept for 30 days by default.
        app.clock.set(app.clock.now_micros() + 29 * DAY);
        assert!(sweep(&app).await.is_empty());
        assert_eq!(outbox(&app).0.len(), 2);

        app.clock.set(app.clock.now_micros() + 2 * DAY);
        assert_eq!(
            sweep(&app).await,
            [
                ("dsr".to_owned(), DataCategory::DsrRecord as i32, 1),
                ("tickets".to_owned(), DataCategory::SupportRequest as i32, 1),
            ]
        );
        let (eml, labels) = outbox(&app);
        assert!(eml.is_empty() && labels.is_empty(), "{eml:?} {labels:?}");
        // Audited, as every sweep is.
        app.sealed().await;
        let audited: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM audit_events WHERE resource IN ('dsr/outbox', 'tickets/outbox')",
        )
        .fetch_one(&app.raw)
        .await
        .expect("audit")
        .get("n");
        assert_eq!(audited, 2);
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_outbox_retention_is_honoured() {
    let Some(app) = spawn_with(Backend::Sqlite, |c| {
        c.mail_outbox_retention = Duration::from_secs(3600);
    })
    .await
    else {
        return;
    };
    mail_from_two_services(&app, "nell@example.com").await;
    app.clock.set(app.clock.now_micros() + 2 * 3_600_000_000);
    assert_eq!(sweep(&app).await.len(), 2);
    assert!(outbox(&app).0.is_empty());
}

/// The outbox holdings of each service in the data map.
async fn outbox_holdings(app: &TestApp) -> Vec<(String, i32)> {
    let map = app
        .data_map()
        .get_data_map(GetDataMapRequest::default())
        .await
        .expect("data map")
        .into_inner();
    map.systems
        .iter()
        .flat_map(|s| {
            s.resources
                .iter()
                .filter(|r| r.pattern == "outbox/{file}")
                .map(|r| (s.service.clone(), r.data_category))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_map_lists_the_outbox_while_mail_is_kept_in_it() {
    let Some(app) = spawn(Backend::Sqlite).await else {
        return;
    };
    assert_eq!(
        outbox_holdings(&app).await,
        [
            ("dsr".to_owned(), DataCategory::DsrRecord as i32),
            ("tickets".to_owned(), DataCategory::SupportRequest as i32),
        ]
    );
    app.stop().await.unwrap();
    let Some(app) = spawn_with(Backend::Sqlite, |c| {
        c.smtp_url = Some("smtp://127.0.0.1:2525".into());
    })
    .await
    else {
        return;
    };
    assert!(outbox_holdings(&app).await.is_empty(), "SMTP keeps nothing");
}

// --- a log that cannot be written ------------------------------------------

fn postgres_admin() -> String {
    std::env::var("CUSTODIAN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

async fn admin(sql: String) {
    let pool = sqlx::AnyPool::connect(&postgres_admin())
        .await
        .expect("PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&pool)
        .await
        .expect("an admin statement");
    pool.close().await;
}

fn by_email(email: &str) -> Option<SubjectIdentifier> {
    Some(SubjectIdentifier {
        kind: Some(subject_identifier::Kind::Email(email.into())),
    })
}

async fn located(app: &TestApp, email: &str) -> usize {
    app.subjects_of("feedback")
        .locate_subject_data(LocateSubjectDataRequest {
            subject: by_email(email),
            ..Default::default()
        })
        .await
        .expect("locate")
        .into_inner()
        .records
        .len()
}

/// The erasure log on a PostgreSQL database of its own, made unreachable
/// while the server runs: the erase answers UNAVAILABLE and nothing is
/// erased; once it is back, the retry erases and is recorded once.
async fn unwritable_log(backend: Backend) {
    sqlx::any::install_default_drivers();
    if sqlx::AnyPool::connect(&postgres_admin()).await.is_err() {
        eprintln!("skipping: the erasure log of this test lives on PostgreSQL");
        return;
    }
    let name = format!("custodian_test_{}_log", uuid::Uuid::new_v4().simple());
    admin(format!("CREATE DATABASE {name}")).await;
    let (base, _) = postgres_admin()
        .rsplit_once('/')
        .map(|(b, d)| (b.to_owned(), d.to_owned()))
        .unwrap();
    let log_url = format!("{base}/{name}");
    let url = log_url.clone();
    let Some(app) = spawn_with(backend, move |c| c.erasure_log = Some(url)).await else {
        admin(format!("DROP DATABASE {name} WITH (FORCE)")).await;
        return;
    };
    const EMAIL: &str = "nell.oakhurst@example.com";
    app.feedback()
        .create_feedback(CreateFeedbackRequest {
            feedback: Some(Feedback {
                author: Some(FeedbackAuthor {
                    person_name: fixtures::name("Nell", "Oakhurst"),
                    email: EMAIL.into(),
                    ..Default::default()
                }),
                rating: 4,
                text: "Fine.".into(),
                source: "email".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("feedback");
    let erase = || EraseSubjectDataRequest {
        subject: by_email(EMAIL),
        request: "requests/0190d4a2-7b1c-7000-8000-000000000001".into(),
        ..Default::default()
    };

    admin(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false")).await;
    admin(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ))
    .await;
    let err = app
        .subjects_of("feedback")
        .erase_subject_data(erase())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("erasure log"), "{}", err.message());
    assert!(!err.message().contains(&name) && !err.message().contains("postgres"));
    assert_eq!(located(&app, EMAIL).await, 1, "nothing was erased");

    admin(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")).await;
    let erased = app
        .subjects_of("feedback")
        .erase_subject_data(erase())
        .await
        .expect("erased once the log is back")
        .into_inner()
        .erased;
    assert_eq!(erased.len(), 1);
    assert_eq!(located(&app, EMAIL).await, 0);
    // The same request again: the same answer, nothing recorded twice.
    let again = app
        .subjects_of("feedback")
        .erase_subject_data(erase())
        .await
        .expect("a retry")
        .into_inner()
        .erased;
    assert_eq!(again, erased);

    let log = sqlx::AnyPool::connect(&log_url).await.expect("the log");
    let entries: Vec<(String, String, String)> =
        sqlx::query("SELECT service, request, body FROM erasure_log ORDER BY service, seq")
            .fetch_all(&log)
            .await
            .expect("entries")
            .iter()
            .map(|r| (r.get("service"), r.get("request"), r.get("body")))
            .collect();
    log.close().await;
    assert_eq!(
        entries.len(),
        2,
        "what was asked, then what was erased: {entries:?}"
    );
    for (service, request, body) in &entries {
        assert_eq!(service, "feedback");
        assert_eq!(request, &erase().request);
        assert!(body.contains("\"subject\":\"email:"), "{body}");
        assert!(!body.to_lowercase().contains("nell"), "{body}");
        assert!(!body.contains('@'), "{body}");
    }
    assert!(entries[1].2.contains(&erased[0].resource));
    app.stop().await.unwrap();
    admin(format!("DROP DATABASE {name} WITH (FORCE)")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_the_log_cannot_record_changes_nothing_sqlite() {
    unwritable_log(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_the_log_cannot_record_changes_nothing_postgres() {
    unwritable_log(Backend::Postgres).await;
}
