//! The export of a data subject with 10,000 records across services, from
//! the moment their code is verified to the last byte of the bundle: the
//! fan-out of locate and export through the subject contract (real gRPC,
//! the whole privacy kernel: tokens, audit before answering, decryption),
//! the sealed export parts, and the streamed download.
//!
//! `cargo bench -p custodian-tests --bench dsr_export` (SQLite); with
//! `CUSTODIAN_BENCH_BACKEND=postgres` on the local PostgreSQL. A fixed
//! workload: 3,334 tickets with their first message (6,668 records) and
//! 3,332 feedback entries, all the subject's own, the company's. Prints the
//! figures; the goal is under 2 s.

use std::time::{Duration, Instant};

use custodian_proto::{
    common::v1::PersonName,
    dsr::v1::{
        CreateRequestRequest, DownloadExportRequest, GetRequestRequest, Jurisdiction, Request,
        Requester, VerifyRequestRequest, request,
    },
    feedback::v1::{CreateFeedbackRequest, Feedback, FeedbackAuthor},
    tickets::v1::{CreateTicketRequest, Ticket, ticket},
};
use custodian_tests::{Backend, TestApp, spawn_with};

const TICKETS: usize = 3_334;
const FEEDBACK: usize = 3_332;
const EMAIL: &str = "bulk.subject@example.com";
const WRITERS: usize = 16;

fn person() -> Option<PersonName> {
    Some(PersonName {
        given_name: "Bea".into(),
        family_name: "Bulk".into(),
    })
}

async fn seed(app: &TestApp) {
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let tickets = app.tickets();
        let feedback = app.feedback();
        tasks.spawn(async move {
            let (mut tickets, mut feedback) = (tickets, feedback);
            for i in (w..TICKETS).step_by(WRITERS) {
                tickets
                    .create_ticket(CreateTicketRequest {
                        ticket: Some(Ticket {
                            channel: ticket::Channel::Email as i32,
                            kind: ticket::Kind::Inquiry as i32,
                            category: "billing".into(),
                            subject: format!("Invoice {i}"),
                            requester: Some(custodian_proto::tickets::v1::Requester {
                                person_name: person(),
                                email: EMAIL.into(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        description: "Where is my invoice?".into(),
                        request_id: String::new(),
                    })
                    .await
                    .expect("ticket");
            }
            for _ in (w..FEEDBACK).step_by(WRITERS) {
                feedback
                    .create_feedback(CreateFeedbackRequest {
                        feedback: Some(Feedback {
                            author: Some(FeedbackAuthor {
                                person_name: person(),
                                email: EMAIL.into(),
                                ..Default::default()
                            }),
                            rating: 4,
                            text: "Helpful and quick.".into(),
                            source: "email".into(),
                            ..Default::default()
                        }),
                        request_id: String::new(),
                    })
                    .await
                    .expect("feedback");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("seeding");
    }
}

fn code(app: &TestApp) -> String {
    for entry in std::fs::read_dir(app.db.dir().join("outbox")).expect("outbox") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("mail");
        if let Some(code) = text.lines().find_map(|l| {
            let code = l.strip_prefix("    ")?;
            (code.len() == 8 && code.bytes().all(|b| b.is_ascii_digit())).then(|| code.to_owned())
        }) {
            return code;
        }
    }
    panic!("no code in the outbox");
}

async fn run(backend: Backend) {
    let Some(app) = spawn_with(backend, |_| {}).await else {
        eprintln!("{backend:?} is not available");
        return;
    };
    let began = Instant::now();
    seed(&app).await;
    eprintln!(
        "{backend:?}: seeded {} records in {:.1} s",
        2 * TICKETS + FEEDBACK,
        began.elapsed().as_secs_f64()
    );
    let mut requests = app.dsr_requests();
    let created = requests
        .create_request(CreateRequestRequest {
            request: Some(Request {
                kind: request::Kind::Access as i32,
                jurisdiction: Jurisdiction::Gdpr as i32,
                requester: Some(Requester {
                    person_name: person(),
                    email: EMAIL.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("request")
        .into_inner();
    let verified_at = Instant::now();
    requests
        .verify_request(VerifyRequestRequest {
            name: created.name.clone(),
            code: code(&app),
        })
        .await
        .expect("verified");
    // When each step was first seen done (the server's clock is the
    // tests' manual one, so its history times do not move).
    let mut seen: Vec<(f64, String)> = Vec::new();
    loop {
        let r = requests
            .get_request(GetRequestRequest {
                name: created.name.clone(),
            })
            .await
            .expect("get")
            .into_inner();
        for e in r.history.iter().skip(seen.len()) {
            seen.push((
                verified_at.elapsed().as_secs_f64() * 1e3,
                format!("{} {} ({})", e.kind, e.target, e.description),
            ));
        }
        if r.state == request::State::Completed as i32 {
            break;
        }
        assert!(
            verified_at.elapsed() < Duration::from_secs(120),
            "not completed: {:?}",
            r.history
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let to_complete = verified_at.elapsed();
    let download_began = Instant::now();
    let mut stream = requests
        .download_export(DownloadExportRequest {
            name: created.name.clone(),
        })
        .await
        .expect("download")
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await.expect("chunk") {
        bytes.extend_from_slice(&chunk.data);
    }
    let download = download_began.elapsed();
    let total = verified_at.elapsed();
    let bundle: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON bundle");
    let records = bundle["records"].as_array().map_or(0, Vec::len);
    assert_eq!(
        records,
        2 * TICKETS + FEEDBACK,
        "every record in the bundle"
    );
    let steps: Vec<String> = seen
        .iter()
        .filter(|(_, e)| {
            ["located", "exported", "planned", "completed"]
                .iter()
                .any(|k| e.starts_with(k))
        })
        .map(|(ms, e)| format!("+{ms:.0} ms {e}"))
        .collect();
    println!(
        "dsr export, {backend:?}: {records} records, {:.1} MB bundle; verified → completed {:.0} ms, \
         download {:.0} ms, total {:.0} ms (goal < 2000 ms)",
        bytes.len() as f64 / 1e6,
        to_complete.as_secs_f64() * 1e3,
        download.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3,
    );
    for step in steps {
        println!("  {step}");
    }
    app.stop().await.expect("stop");
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let backend = match std::env::var("CUSTODIAN_BENCH_BACKEND").as_deref() {
        Ok("postgres") => Backend::Postgres,
        _ => Backend::Sqlite,
    };
    run(backend).await;
}
