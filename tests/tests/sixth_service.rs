//! A sixth service joins the suite with no other change than its line in
//! the binary's table: made here from a small contract of its own (see
//! `custodian_tests::notes`), it appears in the data map, and a
//! data-subject request reaches it (access finds its record and exports
//! it, erasure removes it) because its declarations say it holds personal
//! data; no list of dsr's names it.

use std::time::{Duration, Instant};

use custodian_proto::{
    common::v1::{SubjectIdentifier, subject_identifier},
    dsr::v1::{
        CreateRequestRequest, DownloadExportRequest, GetRequestRequest, Jurisdiction, Request,
        Requester, VerifyRequestRequest,
        request::{Kind, State},
    },
    privacy::v1::GetDataMapRequest,
    subject::v1::LocateSubjectDataRequest,
};
use custodian_tests::{
    Backend, Bearer, TestApp, fixtures,
    notes::{self, CreateNoteRequest, Note, note_service_client::NoteServiceClient},
    spawn_suite,
};
use serde_json::Value;
use tokio_stream::StreamExt as _;

const PATIENCE: Duration = Duration::from_secs(20);
const EMAIL: &str = "wilhelmina.noted@example.com";
const OTHER: &str = "someone.else@example.com";

async fn note(app: &TestApp, email: &str, text: &str) -> Note {
    NoteServiceClient::with_interceptor(app.channel.clone(), Bearer::new(Some(&app.root_token)))
        .create_note(CreateNoteRequest {
            note: Some(Note {
                email: email.into(),
                text: text.into(),
                ..Default::default()
            }),
        })
        .await
        .expect("a note")
        .into_inner()
}

async fn located(app: &TestApp, service: &str, email: &str) -> Vec<String> {
    app.subjects_of(service)
        .locate_subject_data(LocateSubjectDataRequest {
            subject: Some(SubjectIdentifier {
                kind: Some(subject_identifier::Kind::Email(email.into())),
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("locate in {service}: {e}"))
        .into_inner()
        .records
        .into_iter()
        .map(|r| r.resource)
        .collect()
}

/// The request's verification code, read from the mail in the outbox.
async fn code_for(app: &TestApp, request: &str) -> String {
    let id = request.strip_prefix("requests/").expect("a request name");
    let until = Instant::now() + PATIENCE;
    loop {
        let entries = std::fs::read_dir(app.db.dir().join("outbox"))
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_else(|_| Vec::new());
        for path in entries {
            let Ok(raw) = std::fs::read(&path) else {
                continue;
            };
            let Ok(mail) = custodian_mail::parse_inbound(&raw) else {
                continue;
            };
            if mail.subject.contains(id)
                && let Some(code) = mail
                    .text
                    .lines()
                    .map(str::trim)
                    .find(|l| l.len() == 8 && l.bytes().all(|b| b.is_ascii_digit()))
            {
                return code.to_owned();
            }
        }
        assert!(Instant::now() < until, "no code mailed for {request}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Makes a request of `kind` for EMAIL, verifies it, and waits until it is
/// complete.
async fn carried_out(app: &TestApp, kind: Kind) -> Request {
    let mut requests = app.dsr_requests();
    let created = requests
        .create_request(CreateRequestRequest {
            request: Some(Request {
                kind: kind as i32,
                jurisdiction: Jurisdiction::Gdpr as i32,
                requester: Some(Requester {
                    person_name: fixtures::name("Wilhelmina", "Noted"),
                    email: EMAIL.into(),
                    phone: String::new(),
                }),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("a request")
        .into_inner();
    let code = code_for(app, &created.name).await;
    requests
        .verify_request(VerifyRequestRequest {
            name: created.name.clone(),
            code,
        })
        .await
        .expect("verified");
    let until = Instant::now() + PATIENCE;
    loop {
        let request = requests
            .get_request(GetRequestRequest {
                name: created.name.clone(),
            })
            .await
            .expect("get")
            .into_inner();
        if request.state == State::Completed as i32 {
            let failed: Vec<_> = request
                .history
                .iter()
                .filter(|e| e.kind == "failed")
                .collect();
            assert!(failed.is_empty(), "failed steps: {failed:?}");
            return request;
        }
        assert!(
            Instant::now() < until,
            "{} is still {:?}: {:?}",
            created.name,
            request.state,
            request.history
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn bundle(app: &TestApp, request: &str) -> Value {
    let mut stream = app
        .dsr_requests()
        .download_export(DownloadExportRequest {
            name: request.into(),
        })
        .await
        .expect("the bundle")
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend(chunk.expect("a chunk").data);
    }
    serde_json::from_slice(&bytes).expect("one JSON document")
}

async fn sixth_service(backend: Backend) {
    let table = notes::suite();
    let Some(app) = spawn_suite(backend, &table, |_| {}).await else {
        return;
    };

    // In the data map, from its declarations.
    let map = app
        .data_map()
        .get_data_map(GetDataMapRequest::default())
        .await
        .expect("the data map")
        .into_inner();
    let system = map
        .systems
        .iter()
        .find(|s| s.service == notes::NAME)
        .unwrap_or_else(|| panic!("notes in the data map: {map:?}"));
    assert_eq!(system.resources.len(), 1, "{system:?}");
    let resource = &system.resources[0];
    assert_eq!(resource.message, "custodian.notes.v1.Note");
    assert_eq!(resource.pattern, "notes/{note}");
    let personal: Vec<&str> = resource
        .personal_fields
        .iter()
        .map(|f| f.path.as_str())
        .collect();
    assert_eq!(personal, ["email", "text"]);
    assert!(
        system
            .methods
            .iter()
            .any(|m| m.path == "/custodian.notes.v1.NoteService/CreateNote"),
        "{system:?}"
    );

    let hers = note(&app, EMAIL, "Prefers to be called Mina.").await;
    let theirs = note(&app, OTHER, "Asked about invoices.").await;
    assert_eq!(
        located(&app, notes::NAME, EMAIL).await,
        vec![hers.name.clone()]
    );

    // Access: her note is in the export, and nobody else's.
    let access = carried_out(&app, Kind::Access).await;
    let export = bundle(&app, &access.name).await;
    let records = export["records"].as_array().expect("records");
    let found: Vec<&Value> = records
        .iter()
        .filter(|r| r["record"]["service"].as_str() == Some("custodian.notes.v1.NoteService"))
        .collect();
    assert_eq!(found.len(), 1, "her note in the bundle: {export:#}");
    assert_eq!(
        found[0]["record"]["resource"],
        Value::String(hers.name.clone())
    );
    let text = export.to_string();
    assert!(text.contains("Prefers to be called Mina."), "{export:#}");
    assert!(!text.contains("Asked about invoices."), "{export:#}");

    // Erasure: her note is gone, the other stays.
    carried_out(&app, Kind::Erasure).await;
    assert!(located(&app, notes::NAME, EMAIL).await.is_empty());
    assert_eq!(
        located(&app, notes::NAME, OTHER).await,
        vec![theirs.name.clone()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sixth_service_is_mapped_and_reached_by_data_subject_requests_sqlite() {
    sixth_service(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sixth_service_is_mapped_and_reached_by_data_subject_requests_postgres() {
    sixth_service(Backend::Postgres).await;
}
