//! The email channel of support tickets, on SQLite and PostgreSQL: inbound
//! mail threaded by its headers or by a ticket reference, duplicates, mail
//! on closed tickets, sensitive data redacted before anything is stored;
//! agent replies delivered to a real SMTP server (aiosmtpd) with their
//! threading headers, or written to the outbox folder by default.
//!
//! Without aiosmtpd the SMTP test is skipped with a message, except under
//! `CI=true`, where it fails.

use std::{fs, path::Path};

use custodian_mail::testing::Aiosmtpd;
use custodian_proto::{
    common::v1::{SubjectIdentifier, subject_identifier},
    subject::v1::ExportSubjectDataRequest,
    tickets::v1::{
        AddMessageRequest, CreateTicketRequest, GetMessageRequest, GetTicketRequest,
        IngestEmailRequest, IngestEmailResponse, ListMessagesRequest, Ticket, TicketMessage,
        UpdateTicketRequest,
        ticket::{Channel, Kind, State},
        ticket_message,
    },
};
use custodian_tests::{Backend, TestApp, fixtures, violations};
use prost_types::FieldMask;
use sqlx::Row as _;
use tokio_stream::StreamExt as _;
use tonic::{Code, Status};

/// A Visa test number (Luhn-valid), as people type it.
const CARD: &str = "4111 1111 1111 1111";
/// An IBAN with valid check digits.
const IBAN: &str = "DE89 3704 0044 0532 0130 00";
/// Every spelling of both that must never be stored.
const SECRETS: [&str; 6] = [
    "4111 1111 1111 1111",
    "4111111111111111",
    "1111 1111",
    "DE89 3704 0044 0532 0130 00",
    "DE89370400440532013000",
    "3704 0044 0532",
];

// --- mail ------------------------------------------------------------------

/// A received mail, as the gateway hands it over.
struct Mail<'a> {
    from: &'a str,
    message_id: Option<&'a str>,
    subject: &'a str,
    in_reply_to: Option<&'a str>,
    references: &'a [&'a str],
    body: &'a str,
}

impl<'a> Mail<'a> {
    fn new(from: &'a str, message_id: &'a str, subject: &'a str, body: &'a str) -> Self {
        Self {
            from,
            message_id: Some(message_id),
            subject,
            in_reply_to: None,
            references: &[],
            body,
        }
    }

    fn raw(&self) -> Vec<u8> {
        let mut raw = format!(
            "From: {}\r\nTo: Support <support@custodian.localhost>\r\nSubject: {}\r\n\
             Date: Mon, 3 Jun 2024 10:00:00 +0000\r\n",
            self.from, self.subject
        );
        if let Some(id) = self.message_id {
            raw.push_str(&format!("Message-ID: <{id}>\r\n"));
        }
        if let Some(id) = self.in_reply_to {
            raw.push_str(&format!("In-Reply-To: <{id}>\r\n"));
        }
        if !self.references.is_empty() {
            let ids: Vec<String> = self.references.iter().map(|r| format!("<{r}>")).collect();
            raw.push_str(&format!("References: {}\r\n", ids.join(" ")));
        }
        raw.push_str("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n");
        raw.push_str(&self.body.replace('\n', "\r\n"));
        raw.push_str("\r\n");
        raw.into_bytes()
    }
}

async fn ingest_to(app: &TestApp, mail: &Mail<'_>, tenant: &str) -> IngestEmailResponse {
    app.tickets()
        .ingest_email(IngestEmailRequest {
            raw_message: mail.raw(),
            tenant: tenant.into(),
        })
        .await
        .expect("ingest")
        .into_inner()
}

async fn ingest(app: &TestApp, mail: &Mail<'_>) -> IngestEmailResponse {
    ingest_to(app, mail, "").await
}

fn reference(ticket: &Ticket) -> String {
    format!(
        "[Ticket#{}]",
        ticket.name.strip_prefix("tickets/").expect("a ticket name")
    )
}

async fn add(
    app: &TestApp,
    parent: &str,
    kind: ticket_message::Kind,
    body: &str,
) -> Result<TicketMessage, Status> {
    app.tickets()
        .add_message(AddMessageRequest {
            parent: parent.into(),
            message: Some(TicketMessage {
                kind: kind as i32,
                body: body.into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn get(app: &TestApp, name: &str) -> Ticket {
    app.tickets()
        .get_ticket(GetTicketRequest { name: name.into() })
        .await
        .expect("get ticket")
        .into_inner()
}

async fn thread(app: &TestApp, parent: &str) -> Vec<TicketMessage> {
    app.tickets()
        .list_messages(ListMessagesRequest {
            parent: parent.into(),
            page_size: 1000,
            page_token: String::new(),
        })
        .await
        .expect("list messages")
        .into_inner()
        .messages
}

async fn set_state(app: &TestApp, name: &str, state: State) {
    app.tickets()
        .update_ticket(UpdateTicketRequest {
            ticket: Some(Ticket {
                name: name.into(),
                state: state as i32,
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["state".into()],
            }),
        })
        .await
        .expect("state changed");
}

/// The header fields of a raw mail, unfolded, as (name, value).
fn headers(raw: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(raw).replace("\r\n", "\n");
    let head = &text[..text.find("\n\n").expect("a header section")];
    let unfolded = head.replace("\n ", " ").replace("\n\t", " ");
    unfolded
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect()
}

fn header(raw: &[u8], name: &str) -> String {
    headers(raw)
        .into_iter()
        .find(|(n, _)| n == &name.to_ascii_lowercase())
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no {name} in:\n{}", String::from_utf8_lossy(raw)))
}

fn body(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw).replace("\r\n", "\n");
    text[text.find("\n\n").expect("a body") + 2..].to_owned()
}

// --- servers ---------------------------------------------------------------

/// Runs `body(app, backend)` on SQLite and on PostgreSQL.
macro_rules! mail_test {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                if let Some(app) = custodian_tests::spawn(Backend::Sqlite).await {
                    ($body)(app, Backend::Sqlite).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(app) = custodian_tests::spawn(Backend::Postgres).await {
                    ($body)(app, Backend::Postgres).await;
                }
            }
        }
    };
}

/// The files of a folder (only `*.{ext}` when given), by name.
fn files_in(dir: &Path, ext: Option<&str>) -> Vec<Vec<u8>> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<_> = entries
        .map(|e| e.expect("folder entry").path())
        .filter(|p| ext.is_none_or(|ext| p.extension().is_some_and(|e| e == ext)))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| fs::read(p).expect("mail file"))
        .collect()
}

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
            let mut bytes = fs::read(&path).unwrap();
            bytes.extend(fs::read(format!("{path}-wal")).unwrap_or_default());
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Backend::Postgres => {
            let tables: Vec<String> = sqlx::query(
                "SELECT CAST(table_name AS TEXT) AS t FROM information_schema.tables \
                 WHERE table_schema = 'public' ORDER BY table_name",
            )
            .fetch_all(&app.raw)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.get::<String, _>("t"))
            .collect();
            assert!(tables.iter().any(|t| t == "tickets_messages"), "{tables:?}");
            let mut text = String::new();
            for table in tables {
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT CAST(t AS TEXT) AS row FROM {table} t"
                )))
                .fetch_all(&app.raw)
                .await
                .unwrap();
                for row in rows {
                    text.push_str(&row.get::<String, _>("row"));
                    text.push('\n');
                }
            }
            text
        }
    }
}

fn assert_no_secret(text: &str, where_: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{secret} in {where_}");
    }
}

/// What tickets exports for the person with this email (a data-subject
/// request's bundle): each record's name and its data, as text.
async fn export(app: &TestApp, email: &str) -> Vec<(String, String)> {
    let mut stream = app
        .subjects_of("tickets")
        .export_subject_data(ExportSubjectDataRequest {
            subject: Some(SubjectIdentifier {
                kind: Some(subject_identifier::Kind::Email(email.into())),
            }),
            ..Default::default()
        })
        .await
        .expect("export")
        .into_inner();
    let mut records = Vec::new();
    while let Some(item) = stream.next().await {
        let item = item.expect("exported record");
        records.push((
            item.record.expect("a record").resource,
            format!("{:?}", item.data.expect("data")),
        ));
    }
    records
}

/// The whole of a person's export, as one text.
async fn export_text(app: &TestApp, email: &str) -> String {
    export(app, email)
        .await
        .into_iter()
        .map(|(name, data)| format!("{name}: {data}\n"))
        .collect()
}

/// An agent reply, with an idempotency key when `request_id` is not empty.
async fn reply(
    app: &TestApp,
    parent: &str,
    body: &str,
    request_id: &str,
) -> Result<TicketMessage, Status> {
    app.tickets()
        .add_message(AddMessageRequest {
            parent: parent.into(),
            message: Some(TicketMessage {
                kind: ticket_message::Kind::AgentReply as i32,
                body: body.into(),
                ..Default::default()
            }),
            request_id: request_id.into(),
        })
        .await
        .map(|r| r.into_inner())
}

// --- inbound -----------------------------------------------------------------

mail_test!(
    inbound_mail_is_threaded_by_headers_and_by_reference,
    |app: TestApp, _backend: Backend| async move {
        fixtures::tenant(&app, "acme").await;
        // A first mail opens an email ticket for the tenant it was sent to.
        let opened = ingest_to(
            &app,
            &Mail::new(
                "Ann Archer <Ann@Example.com>",
                "CAF-1@mail.example.com",
                "Login broken",
                "I cannot log in since Monday.",
            ),
            "tenants/acme",
        )
        .await;
        assert!(opened.new_ticket && !opened.duplicate);
        let ticket = opened.ticket.unwrap();
        assert_eq!(ticket.tenant, "tenants/acme");
        assert_eq!(ticket.channel, Channel::Email as i32);
        assert_eq!(ticket.kind, Kind::Troubleshooting as i32);
        assert_eq!(ticket.state, State::New as i32);
        assert_eq!(ticket.subject, "Login broken");
        let requester = ticket.requester.clone().unwrap();
        assert_eq!(requester.email, "ann@example.com");
        assert_eq!(requester.person_name, fixtures::name("Ann", "Archer"));
        let first = opened.message.unwrap();
        assert_eq!(first.kind, ticket_message::Kind::Requester as i32);
        assert_eq!(first.channel, Channel::Email as i32);
        assert_eq!(first.email_message_id, "CAF-1@mail.example.com");
        assert!(!first.thread_key.is_empty());
        assert!(
            !first.thread_key.contains("CAF"),
            "the key reveals no Message-ID"
        );
        assert!(first.redacted_kinds.is_empty());
        assert_eq!(first.body.trim(), "I cannot log in since Monday.");

        // An agent replies (mailed to the outbox); the requester's answer to
        // that reply's Message-ID joins the thread.
        let reply = add(
            &app,
            &ticket.name,
            ticket_message::Kind::AgentReply,
            "Which browser?",
        )
        .await
        .unwrap();
        assert!(
            reply
                .email_message_id
                .ends_with("@tickets.custodian.localhost"),
            "{}",
            reply.email_message_id
        );
        let answer = ingest(
            &app,
            &Mail {
                in_reply_to: Some(&reply.email_message_id),
                ..Mail::new(
                    "ann@example.com",
                    "CAF-2@mail.example.com",
                    "Re: Login broken",
                    "Firefox.",
                )
            },
        )
        .await;
        assert!(!answer.new_ticket && !answer.duplicate);
        assert_eq!(answer.ticket.as_ref().unwrap().name, ticket.name);

        // By References alone, whatever else they name.
        let by_references = ingest(
            &app,
            &Mail {
                references: &["unknown@elsewhere.example", "CAF-1@mail.example.com"],
                ..Mail::new(
                    "ann@example.com",
                    "CAF-3@mail.example.com",
                    "Another thing",
                    "Also, the logo is blurry.",
                )
            },
        )
        .await;
        assert!(!by_references.new_ticket);
        assert_eq!(by_references.ticket.unwrap().name, ticket.name);

        // By the subject's ticket reference, from the requester.
        let subject = format!("Re: Login broken {}", reference(&ticket));
        let by_subject = ingest(
            &app,
            &Mail::new(
                "Ann Archer <ann@example.com>",
                "CAF-4@mail.example.com",
                &subject,
                "Any news?",
            ),
        )
        .await;
        assert!(!by_subject.new_ticket);
        assert_eq!(by_subject.ticket.unwrap().name, ticket.name);
        let bodies: Vec<String> = thread(&app, &ticket.name)
            .await
            .into_iter()
            .map(|m| m.body.trim().to_owned())
            .collect();
        assert_eq!(
            bodies,
            [
                "I cannot log in since Monday.",
                "Which browser?",
                "Firefox.",
                "Also, the logo is blurry.",
                "Any news?"
            ]
        );

        // The same reference from someone else opens a new ticket.
        let from_eve = ingest(
            &app,
            &Mail::new(
                "Eve <eve@example.com>",
                "EVE-1@mail.example.com",
                &subject,
                "Tell me what Ann wrote.",
            ),
        )
        .await;
        assert!(from_eve.new_ticket);
        let eve_ticket = from_eve.ticket.unwrap();
        assert_ne!(eve_ticket.name, ticket.name);
        assert_eq!(eve_ticket.requester.unwrap().email, "eve@example.com");
        assert_eq!(eve_ticket.tenant, "", "no tenant given: the company's");
        assert_eq!(eve_ticket.kind, Kind::Inquiry as i32);
        assert_eq!(thread(&app, &ticket.name).await.len(), 5);

        // The same mail twice is stored once.
        let tickets = app.count("tickets_tickets").await;
        let messages = app.count("tickets_messages").await;
        let again = ingest(
            &app,
            &Mail::new(
                "Ann Archer <Ann@Example.com>",
                "CAF-1@mail.example.com",
                "Login broken",
                "I cannot log in since Monday.",
            ),
        )
        .await;
        assert!(again.duplicate && !again.new_ticket);
        assert_eq!(again.ticket.unwrap().name, ticket.name);
        assert_eq!(again.message.unwrap(), first);
        assert_eq!(app.count("tickets_tickets").await, tickets);
        assert_eq!(app.count("tickets_messages").await, messages);

        // A requester's mail reopens a pending ticket.
        set_state(&app, &ticket.name, State::Pending).await;
        ingest(
            &app,
            &Mail {
                in_reply_to: Some(&reply.email_message_id),
                ..Mail::new(
                    "ann@example.com",
                    "CAF-5@mail.example.com",
                    "Re: Login broken",
                    "Here is the screenshot.",
                )
            },
        )
        .await;
        assert_eq!(get(&app, &ticket.name).await.state, State::Open as i32);

        // A reply to a closed ticket opens a new one; the closed one stays.
        set_state(&app, &ticket.name, State::Closed).await;
        let closed = get(&app, &ticket.name).await;
        let after_close = ingest(
            &app,
            &Mail {
                in_reply_to: Some(&reply.email_message_id),
                ..Mail::new(
                    "ann@example.com",
                    "CAF-6@mail.example.com",
                    &subject,
                    "It broke again.",
                )
            },
        )
        .await;
        assert!(after_close.new_ticket);
        let reopened = after_close.ticket.unwrap();
        assert_ne!(reopened.name, ticket.name);
        assert_eq!(reopened.requester.unwrap().email, "ann@example.com");
        assert_eq!(get(&app, &ticket.name).await, closed);
        assert_eq!(thread(&app, &ticket.name).await.len(), 6);

        // A mail without a Message-ID is taken, and cannot be threaded to.
        let anonymous = ingest(
            &app,
            &Mail {
                message_id: None,
                ..Mail::new("bob@example.com", "", "Hello", "No id here.")
            },
        )
        .await;
        assert!(anonymous.new_ticket);
        let message = anonymous.message.unwrap();
        assert!(message.email_message_id.is_empty());
        app.stop().await.unwrap();
    }
);

mail_test!(
    sensitive_data_in_mail_is_redacted_before_storage,
    |app: TestApp, backend: Backend| async move {
        let text = format!(
            "Hello,\nplease charge my card {CARD} again.\nOr use IBAN {IBAN}.\nThanks, Ann"
        );
        let subject = format!("Card {CARD}");
        let opened = ingest(
            &app,
            &Mail::new(
                "Ann Archer <ann@example.com>",
                "CARD-1@mail.example.com",
                &subject,
                &text,
            ),
        )
        .await;
        assert!(opened.new_ticket);
        let message = opened.message.unwrap();
        assert_eq!(message.redacted_kinds, ["iban", "payment_card"]);
        assert_no_secret(&message.body, "the response");
        assert!(message.body.contains("Hello,"), "{}", message.body);
        assert!(message.body.contains("Thanks, Ann"), "{}", message.body);
        assert!(message.body.contains("redacted"), "{}", message.body);
        let ticket = opened.ticket.unwrap();
        assert_no_secret(&ticket.subject, "the subject");
        assert!(ticket.subject.starts_with("Card"), "{}", ticket.subject);

        // A reply threaded onto the ticket is redacted too.
        let reply_text = format!("The number again: {}", CARD.replace(' ', "-"));
        let threaded = ingest(
            &app,
            &Mail {
                in_reply_to: Some("CARD-1@mail.example.com"),
                ..Mail::new(
                    "ann@example.com",
                    "CARD-2@mail.example.com",
                    "Re: card",
                    &reply_text,
                )
            },
        )
        .await;
        assert!(!threaded.new_ticket);
        let threaded = threaded.message.unwrap();
        assert_eq!(threaded.redacted_kinds, ["payment_card"]);
        assert!(!threaded.body.contains("4111-1111"), "{}", threaded.body);

        // What was stored is what was redacted: read back, and as raw rows.
        let stored = app
            .tickets()
            .get_message(GetMessageRequest {
                name: message.name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(stored, message);
        for m in thread(&app, &ticket.name).await {
            assert_no_secret(&m.body, "the thread");
            assert!(!m.body.contains("4111-1111"));
        }
        assert_no_secret(&get(&app, &ticket.name).await.subject, "the ticket");
        let rows = sqlx::query("SELECT data, attrs, thread_key FROM tickets_messages")
            .fetch_all(&app.raw)
            .await
            .unwrap();
        assert_eq!(rows.len(), 2);
        for row in rows {
            for column in ["data", "attrs", "thread_key"] {
                let value: String = row.get(column);
                assert_no_secret(&value, column);
                assert!(!value.contains("CARD-1"), "the Message-ID is not in clear");
            }
        }
        let raw = raw_database(&app, backend).await;
        assert!(raw.len() > 1000, "the dump is real");
        assert_no_secret(&raw, &format!("the {backend:?} database"));
        assert!(!raw.contains("4111-1111-1111-1111"));
        assert!(!raw.contains("charge my card"), "bodies are sealed");
        app.stop().await.unwrap();
    }
);

mail_test!(
    a_body_that_is_no_mail_is_refused,
    |app: TestApp, _backend: Backend| async move {
        for (raw, what) in [
            (b"hello, this is not a mail".to_vec(), "plain text"),
            (Vec::new(), "nothing"),
            (b"\r\n\r\nbody only".to_vec(), "no header"),
            (
                b"Subject: no sender\r\nMessage-ID: <x@y>\r\n\r\nHello\r\n".to_vec(),
                "no From",
            ),
            (
                b"From: not an address\r\nSubject: x\r\n\r\nHello\r\n".to_vec(),
                "a bad From",
            ),
        ] {
            let err = app
                .tickets()
                .ingest_email(IngestEmailRequest {
                    raw_message: raw,
                    tenant: String::new(),
                })
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
            assert!(
                violations(&err).iter().any(|(f, _)| f == "raw_message"),
                "{what}: {:?}",
                violations(&err)
            );
        }
        // A tenant of the wrong form is refused at the door.
        let err = app
            .tickets()
            .ingest_email(IngestEmailRequest {
                raw_message: Mail::new("ann@example.com", "x@y", "Hi", "Hello").raw(),
                tenant: "acme".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(app.count("tickets_tickets").await, 0);
        assert_eq!(app.count("tickets_messages").await, 0);
        app.stop().await.unwrap();
    }
);

// --- outbound ----------------------------------------------------------------

mail_test!(
    replies_go_to_the_outbox_by_default,
    |app: TestApp, _backend: Backend| async move {
        let outbox = app.db.dir().join("outbox");
        let opened = ingest(
            &app,
            &Mail::new(
                "Ann Archer <ann@example.com>",
                "ANN-1@mail.example.com",
                "Login broken",
                "Help!",
            ),
        )
        .await;
        let ticket = opened.ticket.unwrap();
        assert!(files_in(&outbox, Some("eml")).is_empty());
        let reply = add(
            &app,
            &ticket.name,
            ticket_message::Kind::AgentReply,
            "Please clear your cookies.",
        )
        .await
        .unwrap();
        // The reply is written to the outbox before AddMessage answers.
        let mails = files_in(&outbox, Some("eml"));
        assert_eq!(mails.len(), 1);
        let raw = &mails[0];
        assert_eq!(
            header(raw, "Message-ID"),
            format!("<{}>", reply.email_message_id)
        );
        assert_eq!(header(raw, "In-Reply-To"), "<ANN-1@mail.example.com>");
        assert!(header(raw, "To").contains("<ann@example.com>"));
        assert_eq!(
            header(raw, "Subject"),
            format!("Re: Login broken {}", reference(&ticket))
        );
        assert!(body(raw).contains("Please clear your cookies."));

        // Notes stay inside.
        add(
            &app,
            &ticket.name,
            ticket_message::Kind::InternalNote,
            "She uses an old browser",
        )
        .await
        .unwrap();
        assert_eq!(files_in(&outbox, Some("eml")).len(), 1);

        // The requester's answer to the file's Message-ID joins the thread.
        let message_id = header(raw, "Message-ID");
        let answer = ingest(
            &app,
            &Mail {
                in_reply_to: Some(message_id.trim_matches(|c| c == '<' || c == '>')),
                ..Mail::new(
                    "ann@example.com",
                    "ANN-2@mail.example.com",
                    "Re: Login broken",
                    "That worked, thanks!",
                )
            },
        )
        .await;
        assert!(!answer.new_ticket);
        assert_eq!(answer.ticket.unwrap().name, ticket.name);
        app.stop().await.unwrap();
    }
);

async fn deliver_over_smtp(backend: Backend) {
    let Some(server) = Aiosmtpd::start() else {
        return;
    };
    let url = server.url();
    let Some(app) = custodian_tests::spawn_with(backend, |config| {
        config.smtp_url = Some(url);
    })
    .await
    else {
        return;
    };
    // Ann writes, then writes again quoting the ticket.
    let opened = ingest(
        &app,
        &Mail::new(
            "Ann Archer <ann@example.com>",
            "ANN-1@mail.example.com",
            "Login broken",
            "Help!",
        ),
    )
    .await;
    let ticket = opened.ticket.unwrap();
    ingest(
        &app,
        &Mail::new(
            "ann@example.com",
            "ANN-2@mail.example.com",
            &format!("Re: Login broken {}", reference(&ticket)),
            "Still broken.",
        ),
    )
    .await;

    let reply = add(
        &app,
        &ticket.name,
        ticket_message::Kind::AgentReply,
        "Please clear your cookies.\nThe Support team",
    )
    .await
    .unwrap();
    // The SMTP transaction, and so the maildir write, ends before
    // AddMessage answers.
    let delivered = server.delivered();
    assert_eq!(delivered.len(), 1);
    let raw = &delivered[0];
    assert_eq!(header(raw, "From"), "Support <support@custodian.localhost>");
    let to = header(raw, "To");
    assert!(
        to.contains("<ann@example.com>") && to.contains("Ann Archer"),
        "{to}"
    );
    assert_eq!(
        header(raw, "Subject"),
        format!("Re: Login broken {}", reference(&ticket))
    );
    assert_eq!(
        header(raw, "Message-ID"),
        format!("<{}>", reply.email_message_id)
    );
    assert_eq!(
        header(raw, "In-Reply-To"),
        "<ANN-2@mail.example.com>",
        "the requester's last mail"
    );
    assert_eq!(
        header(raw, "References"),
        "<ANN-1@mail.example.com> <ANN-2@mail.example.com>"
    );
    // The envelope: to the requester, from the support address.
    assert_eq!(header(raw, "X-RcptTo"), "ann@example.com");
    assert_eq!(header(raw, "X-MailFrom"), "support@custodian.localhost");
    assert_eq!(
        body(raw).trim_end(),
        "Please clear your cookies.\nThe Support team"
    );
    let stored = get(&app, &ticket.name).await;
    assert_eq!(stored.state, State::Open as i32);
    assert_eq!(
        stored.sla.unwrap().first_response_time,
        reply.create_time,
        "the mailed reply is the first response"
    );

    // An internal note is never mailed, nor a reply on a web-form ticket.
    add(
        &app,
        &ticket.name,
        ticket_message::Kind::InternalNote,
        "Old browser, I bet.",
    )
    .await
    .unwrap();
    let web = app
        .tickets()
        .create_ticket(CreateTicketRequest {
            ticket: Some(Ticket {
                channel: Channel::WebForm as i32,
                kind: Kind::Inquiry as i32,
                subject: "Prices".into(),
                requester: Some(custodian_proto::tickets::v1::Requester {
                    person_name: fixtures::name("Ann", "Archer"),
                    email: "ann@example.com".into(),
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
    let web_reply = add(
        &app,
        &web.name,
        ticket_message::Kind::AgentReply,
        "See the site",
    )
    .await
    .unwrap();
    assert!(web_reply.email_message_id.is_empty());

    // A second reply threads after the first.
    let second = add(
        &app,
        &ticket.name,
        ticket_message::Kind::AgentReply,
        "Did it help?",
    )
    .await
    .unwrap();
    let delivered = server.delivered();
    assert_eq!(
        delivered.len(),
        2,
        "the note and the web reply were not mailed"
    );
    let raw = delivered
        .iter()
        .find(|raw| header(raw, "Message-ID") == format!("<{}>", second.email_message_id))
        .expect("the second reply");
    assert_eq!(
        header(raw, "In-Reply-To"),
        format!("<{}>", reply.email_message_id)
    );
    assert_eq!(
        header(raw, "References"),
        format!(
            "<ANN-1@mail.example.com> <ANN-2@mail.example.com> <{}>",
            reply.email_message_id
        )
    );

    // The requester answers the first reply: it joins the thread.
    let answer = ingest(
        &app,
        &Mail {
            in_reply_to: Some(&reply.email_message_id),
            ..Mail::new(
                "ann@example.com",
                "ANN-3@mail.example.com",
                "Re: Login broken",
                "Yes, thanks!",
            )
        },
    )
    .await;
    assert_eq!(answer.ticket.unwrap().name, ticket.name);

    // With the server gone, a reply is not added: the thread never shows
    // what the requester did not get.
    let before = thread(&app, &ticket.name).await;
    drop(server);
    let err = add(
        &app,
        &ticket.name,
        ticket_message::Kind::AgentReply,
        "Anyone there?",
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(thread(&app, &ticket.name).await, before);
    // Nor does a reply that never left count as the first response.
    let fresh = ingest(
        &app,
        &Mail::new(
            "ann@example.com",
            "ANN-4@mail.example.com",
            "New problem",
            "The export fails.",
        ),
    )
    .await
    .ticket
    .unwrap();
    let err = add(
        &app,
        &fresh.name,
        ticket_message::Kind::AgentReply,
        "Looking into it.",
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let after = get(&app, &fresh.name).await;
    assert_eq!(after.state, State::New as i32, "still unanswered");
    assert!(after.sla.unwrap().first_response_time.is_none());
    assert_eq!(thread(&app, &fresh.name).await.len(), 1);
    app.stop().await.unwrap();
}

mod agent_replies_reach_a_real_smtp_server {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        deliver_over_smtp(Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        deliver_over_smtp(Backend::Postgres).await;
    }
}

// --- mail that fails validation, values in headers ---------------------------

/// A raw mail whose body is quoted-printable as written.
fn quoted_printable(from: &str, message_id: &str, subject: &str, qp_body: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: support@custodian.localhost\r\nSubject: {subject}\r\n\
         Message-ID: <{message_id}>\r\nDate: Mon, 3 Jun 2024 10:00:00 +0000\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: quoted-printable\r\n\r\n{qp_body}\r\n"
    )
    .into_bytes()
}

mail_test!(
    mail_that_fails_validation_is_redacted_all_the_same,
    |app: TestApp, backend: Backend| async move {
        // Over 50,000 characters, with a card and an IBAN in what is kept
        // and a card in what is cut off.
        let mut long = format!("My card is {CARD}, my IBAN {IBAN}.\n");
        while long.len() < 60_000 {
            long.push_str("The export still fails with the same error as before.\n");
        }
        long.push_str(&format!("Once more: {CARD}\n"));
        let long = Mail::new(
            "Lou Long <lou@example.com>",
            "LONG-1@mail.example.com",
            "Export",
            &long,
        )
        .raw();
        // One control character (BEL), and a subject with a line separator.
        let bell = Mail::new(
            "Bea Bell <bea@example.com>",
            "BELL-1@mail.example.com",
            &format!("Card {CARD}\u{2028}again"),
            &format!("Ring\u{7} ring. Card {CARD}, IBAN {IBAN}."),
        )
        .raw();
        // A quoted-printable NUL.
        let nul = quoted_printable(
            "Nia Null <nia@example.com>",
            "NUL-1@mail.example.com",
            "Payment",
            &format!("Card=20{}=00 and IBAN {IBAN}.", CARD.replace(' ', "=20")),
        );
        for (raw, email) in [
            (long, "lou@example.com"),
            (bell, "bea@example.com"),
            (nul, "nia@example.com"),
        ] {
            let ingested = app
                .tickets()
                .ingest_email(IngestEmailRequest {
                    raw_message: raw,
                    tenant: String::new(),
                })
                .await
                .unwrap_or_else(|e| panic!("{email}: {e:?}"))
                .into_inner();
            assert!(ingested.new_ticket, "{email}");
            let message = ingested.message.unwrap();
            let ticket = ingested.ticket.unwrap();
            assert_eq!(message.redacted_kinds, ["iban", "payment_card"], "{email}");
            assert_no_secret(&message.body, email);
            assert!(
                message.body.contains("[redacted"),
                "{email}: {}",
                message.body
            );
            assert!(message.body.chars().count() <= 50_000, "{email}");
            assert!(
                !message
                    .body
                    .chars()
                    .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')),
                "{email}: a control character was kept"
            );
            assert_no_secret(&ticket.subject, email);
            assert!(!ticket.subject.contains('\u{2028}'), "{email}");
            // Stored as answered: read back, in the thread, in the export.
            let stored = app
                .tickets()
                .get_message(GetMessageRequest {
                    name: message.name.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(stored, message);
            for m in thread(&app, &ticket.name).await {
                assert_no_secret(&m.body, "the thread");
            }
            let exported = export_text(&app, email).await;
            assert!(exported.contains(&message.name), "{email}: {exported}");
            assert!(exported.contains("[redacted"), "{email}");
            assert_no_secret(&exported, &format!("{email}'s export"));
        }
        assert_no_secret(
            &raw_database(&app, backend).await,
            &format!("the {backend:?} database"),
        );
        app.stop().await.unwrap();
    }
);

mail_test!(
    values_in_a_display_name_or_a_message_id_are_not_stored,
    |app: TestApp, backend: Backend| async move {
        let outbox = app.db.dir().join("outbox");
        let card_id = "4111111111111111@mail.example.com";
        let opened = ingest(
            &app,
            &Mail::new(
                &format!("\"Card {CARD}\" <carl@example.com>"),
                card_id,
                "Hello",
                "Please call me back.",
            ),
        )
        .await;
        assert!(opened.new_ticket);
        let ticket = opened.ticket.unwrap();
        let first = opened.message.unwrap();
        let requester = ticket.requester.clone().unwrap();
        assert_eq!(requester.email, "carl@example.com");
        assert_no_secret(&format!("{requester:?}"), "the requester");
        assert!(!format!("{requester:?}").contains("1111"), "{requester:?}");
        assert_eq!(first.redacted_kinds, ["payment_card"]);
        // Only the keyed hash of such a Message-ID is kept.
        assert_no_secret(&first.email_message_id, "the Message-ID");
        assert!(!first.thread_key.is_empty());

        // That hash still threads Carl's answers and finds his retries.
        let answer = ingest(
            &app,
            &Mail {
                in_reply_to: Some(card_id),
                references: &[card_id, "5500000000000004@mail.example.com"],
                ..Mail::new(
                    "carl@example.com",
                    "CARL-2@mail.example.com",
                    "Re: Hello",
                    "Still waiting.",
                )
            },
        )
        .await;
        assert!(!answer.new_ticket);
        assert_eq!(answer.ticket.unwrap().name, ticket.name);
        let again = ingest(
            &app,
            &Mail::new(
                &format!("\"Card {CARD}\" <carl@example.com>"),
                card_id,
                "Hello",
                "Please call me back.",
            ),
        )
        .await;
        assert!(again.duplicate);
        assert_eq!(again.ticket.unwrap().name, ticket.name);

        // An agent's reply carries no such id in its headers.
        reply(&app, &ticket.name, "We will call you.", "")
            .await
            .unwrap();
        let mails = files_in(&outbox, Some("eml"));
        assert_eq!(mails.len(), 1);
        let head = String::from_utf8_lossy(&mails[0]).into_owned();
        assert!(!head.contains("4111111111111111"), "{head}");
        assert_eq!(
            header(&mails[0], "In-Reply-To"),
            "<CARL-2@mail.example.com>"
        );

        let shown = format!(
            "{:?}{:?}",
            get(&app, &ticket.name).await,
            thread(&app, &ticket.name).await
        );
        assert_no_secret(&shown, "the ticket and its thread");
        assert!(!shown.contains("5500000000000004"));
        let exported = export_text(&app, "carl@example.com").await;
        assert!(exported.contains("Still waiting."), "{exported}");
        assert_no_secret(&exported, "Carl's export");
        assert_no_secret(
            &raw_database(&app, backend).await,
            &format!("the {backend:?} database"),
        );
        app.stop().await.unwrap();
    }
);

// --- who may write into a thread ---------------------------------------------

mail_test!(
    a_stranger_cannot_write_into_someone_elses_thread,
    |app: TestApp, _backend: Backend| async move {
        let outbox = app.db.dir().join("outbox");
        let victor = ingest(
            &app,
            &Mail::new(
                "Victor Vance <victor@example.com>",
                "VIC-1@mail.example.com",
                "Invoice question",
                "Where is my invoice 42?",
            ),
        )
        .await;
        let ticket = victor.ticket.unwrap();
        let answer = reply(&app, &ticket.name, "It is attached.", "")
            .await
            .unwrap();

        // Mallory knows the thread's ids (a forwarded mail, a guess).
        let by_headers = ingest(
            &app,
            &Mail {
                in_reply_to: Some(&answer.email_message_id),
                references: &["VIC-1@mail.example.com", &answer.email_message_id],
                ..Mail::new(
                    "Mallory <mallory@example.com>",
                    "MAL-1@mail.example.com",
                    "Re: Invoice question",
                    "Mallory writes: change the bank account.",
                )
            },
        )
        .await;
        assert!(by_headers.new_ticket && !by_headers.duplicate);
        let hers = by_headers.ticket.unwrap();
        assert_ne!(hers.name, ticket.name);
        assert_eq!(hers.requester.clone().unwrap().email, "mallory@example.com");
        assert_eq!(hers.related_ticket, ticket.name, "it refers to Victor's");
        let by_subject = ingest(
            &app,
            &Mail::new(
                "mallory@example.com",
                "MAL-2@mail.example.com",
                &format!("Re: Invoice question {}", reference(&ticket)),
                "Mallory again.",
            ),
        )
        .await;
        assert!(by_subject.new_ticket);
        let second = by_subject.ticket.unwrap();
        assert_ne!(second.name, ticket.name);
        assert_eq!(second.related_ticket, ticket.name);

        // Victor's thread holds Victor's and the agent's messages only, and
        // his own answer still joins it.
        assert_eq!(thread(&app, &ticket.name).await.len(), 2);
        let his = ingest(
            &app,
            &Mail {
                in_reply_to: Some(&answer.email_message_id),
                ..Mail::new(
                    "victor@example.com",
                    "VIC-2@mail.example.com",
                    "Re: Invoice question",
                    "Thanks, got it.",
                )
            },
        )
        .await;
        assert!(!his.new_ticket);
        assert_eq!(his.ticket.unwrap().name, ticket.name);
        assert_eq!(thread(&app, &ticket.name).await.len(), 3);

        // Each bundle holds its own person's mail and nobody else's.
        let victors = export_text(&app, "victor@example.com").await;
        assert!(victors.contains("Thanks, got it."), "{victors}");
        assert!(!victors.contains("Mallory"), "{victors}");
        let mallorys = export_text(&app, "mallory@example.com").await;
        assert!(mallorys.contains("change the bank account"), "{mallorys}");
        assert!(mallorys.contains("Mallory again."), "{mallorys}");
        for his in [
            "invoice 42",
            "Victor",
            "victor@",
            "It is attached.",
            "got it",
        ] {
            assert!(!mallorys.contains(his), "{his} in {mallorys}");
        }
        // Nothing was mailed but the agent's one reply.
        assert_eq!(files_in(&outbox, Some("eml")).len(), 1);
        app.stop().await.unwrap();
    }
);

mail_test!(
    mail_is_never_threaded_across_tenants,
    |app: TestApp, _backend: Backend| async move {
        fixtures::tenant(&app, "acme").await;
        fixtures::tenant(&app, "beta").await;
        let acme = ingest_to(
            &app,
            &Mail::new(
                "Victor Vance <victor@example.com>",
                "VIC-1@mail.example.com",
                "Login broken",
                "acme's login fails.",
            ),
            "tenants/acme",
        )
        .await
        .ticket
        .unwrap();
        // The same person, through beta's address, naming acme's thread.
        for (i, mail) in [
            Mail {
                in_reply_to: Some("VIC-1@mail.example.com"),
                ..Mail::new(
                    "victor@example.com",
                    "VIC-2@mail.example.com",
                    "Re: Login broken",
                    "beta's text 1",
                )
            },
            Mail::new(
                "victor@example.com",
                "VIC-3@mail.example.com",
                &format!("Re: Login broken {}", reference(&acme)),
                "beta's text 2",
            ),
        ]
        .iter()
        .enumerate()
        {
            let landed = ingest_to(&app, mail, "tenants/beta").await;
            assert!(landed.new_ticket, "mail {i}");
            let beta = landed.ticket.unwrap();
            assert_eq!(beta.tenant, "tenants/beta", "mail {i}");
            assert!(beta.related_ticket.is_empty(), "no link across tenants");
        }
        assert_eq!(thread(&app, &acme.name).await.len(), 1);

        // A company ticket takes nothing through a tenant's address.
        let company = ingest(
            &app,
            &Mail::new(
                "victor@example.com",
                "VIC-4@mail.example.com",
                "Pricing",
                "What does it cost?",
            ),
        )
        .await
        .ticket
        .unwrap();
        assert_eq!(company.tenant, "");
        let landed = ingest_to(
            &app,
            &Mail {
                in_reply_to: Some("VIC-4@mail.example.com"),
                ..Mail::new(
                    "victor@example.com",
                    "VIC-5@mail.example.com",
                    "Re: Pricing",
                    "acme's question",
                )
            },
            "tenants/acme",
        )
        .await;
        assert!(landed.new_ticket);
        assert_eq!(landed.ticket.unwrap().tenant, "tenants/acme");
        assert_eq!(thread(&app, &company.name).await.len(), 1);

        // Replies to the support address (no tenant known) reach the
        // requester's own thread, whoever holds it.
        let answer = ingest(
            &app,
            &Mail {
                in_reply_to: Some("VIC-1@mail.example.com"),
                ..Mail::new(
                    "victor@example.com",
                    "VIC-6@mail.example.com",
                    "Re: Login broken",
                    "Works again.",
                )
            },
        )
        .await;
        assert!(!answer.new_ticket);
        assert_eq!(answer.ticket.unwrap().name, acme.name);
        app.stop().await.unwrap();
    }
);

mail_test!(
    a_known_message_id_from_another_sender_is_not_a_duplicate,
    |app: TestApp, _backend: Backend| async move {
        let victor = Mail::new(
            "Victor Vance <victor@example.com>",
            "VIC-1@mail.example.com",
            "Invoice question",
            "Victor's private question.",
        );
        let mallory = Mail::new(
            "mallory@example.com",
            "VIC-1@mail.example.com",
            "Hello",
            "Mallory's own text.",
        );
        let his = ingest(&app, &victor).await;
        let his_ticket = his.ticket.unwrap();
        let hers = ingest(&app, &mallory).await;
        assert!(hers.new_ticket && !hers.duplicate);
        let her_ticket = hers.ticket.unwrap();
        assert_ne!(her_ticket.name, his_ticket.name);
        assert_eq!(
            her_ticket.requester.clone().unwrap().email,
            "mallory@example.com"
        );
        assert_eq!(hers.message.unwrap().body.trim(), "Mallory's own text.");

        // Each one's retry is a duplicate of their own mail.
        let again = ingest(&app, &mallory).await;
        assert!(again.duplicate);
        assert_eq!(again.ticket.unwrap().name, her_ticket.name);
        let again = ingest(&app, &victor).await;
        assert!(again.duplicate);
        assert_eq!(again.ticket.unwrap().name, his_ticket.name);
        assert_eq!(again.message.unwrap(), his.message.unwrap());
        assert_eq!(app.count("tickets_tickets").await, 2);
        assert_eq!(app.count("tickets_messages").await, 2);

        // Answers to that id go to each sender's own thread.
        for (from, ticket, id) in [
            ("victor@example.com", &his_ticket, "VIC-2@mail.example.com"),
            ("mallory@example.com", &her_ticket, "MAL-2@mail.example.com"),
        ] {
            let answer = ingest(
                &app,
                &Mail {
                    in_reply_to: Some("VIC-1@mail.example.com"),
                    ..Mail::new(from, id, "Re: Hello", "An answer.")
                },
            )
            .await;
            assert!(!answer.new_ticket, "{from}");
            assert_eq!(answer.ticket.unwrap().name, ticket.name, "{from}");
        }
        let victors = export_text(&app, "victor@example.com").await;
        assert!(!victors.contains("Mallory"), "{victors}");
        let mallorys = export_text(&app, "mallory@example.com").await;
        assert!(!mallorys.contains("Victor"), "{mallorys}");
        app.stop().await.unwrap();
    }
);

// --- replies and their headers -----------------------------------------------

mail_test!(
    a_reply_leaves_out_message_ids_that_cannot_be_written,
    |app: TestApp, _backend: Backend| async move {
        let outbox = app.db.dir().join("outbox");
        // A Message-ID that cannot be written in a header.
        let odd = ingest(
            &app,
            &Mail::new(
                "Ann Archer <ann@example.com>",
                "ünï-1@mail.example.com",
                "Login broken",
                "Help!",
            ),
        )
        .await
        .ticket
        .unwrap();
        let first = reply(&app, &odd.name, "Which browser?", "")
            .await
            .expect("a reply despite the odd id");
        let mails = files_in(&outbox, Some("eml"));
        assert_eq!(mails.len(), 1);
        assert_eq!(
            header(&mails[0], "Message-ID"),
            format!("<{}>", first.email_message_id)
        );
        assert!(
            !headers(&mails[0]).iter().any(|(n, _)| n == "in-reply-to"),
            "the unusable id is left out"
        );
        // The next reply threads on the first.
        reply(&app, &odd.name, "Any news?", "").await.unwrap();
        let mails = files_in(&outbox, Some("eml"));
        assert_eq!(mails.len(), 2);
        assert_eq!(
            header(&mails[1], "References"),
            format!("<{}>", first.email_message_id)
        );

        app.stop().await.unwrap();
    }
);

mail_test!(
    a_subject_with_a_line_separator_is_cleaned_and_a_reply_mailed_once,
    |app: TestApp, _backend: Backend| async move {
        let outbox = app.db.dir().join("outbox");
        // Cleaned when the mail arrives, so a reply is mailed once and
        // answered OK (not mailed, then refused, then mailed again).
        let separated = ingest(
            &app,
            &Mail::new(
                "Bob <bob@example.com>",
                "BOB-1@mail.example.com",
                "Login\u{2028}broken",
                "Help!",
            ),
        )
        .await
        .ticket
        .unwrap();
        assert_eq!(separated.subject, "Login broken");
        let key = uuid::Uuid::new_v4().to_string();
        let sent = reply(&app, &separated.name, "Try again.", &key)
            .await
            .expect("the reply is answered OK");
        let mails = files_in(&outbox, Some("eml"));
        assert_eq!(mails.len(), 1);
        assert_eq!(
            header(&mails[0], "Subject"),
            format!("Re: Login broken {}", reference(&separated))
        );
        let retried = reply(&app, &separated.name, "Try again.", &key)
            .await
            .unwrap();
        assert_eq!(retried.name, sent.name);
        assert_eq!(files_in(&outbox, Some("eml")).len(), 1, "not mailed twice");
        let state = get(&app, &separated.name).await;
        assert_eq!(state.state, State::Open as i32);
        assert_eq!(state.sla.unwrap().first_response_time, sent.create_time);
        app.stop().await.unwrap();
    }
);

mail_test!(
    a_reply_that_cannot_be_mailed_is_taken_back_and_a_retry_mails_it_once,
    |app: TestApp, _backend: Backend| async move {
        let outbox = app.db.dir().join("outbox");
        let ticket = ingest(
            &app,
            &Mail::new(
                "Ann Archer <ann@example.com>",
                "ANN-1@mail.example.com",
                "Login broken",
                "Help!",
            ),
        )
        .await
        .ticket
        .unwrap();
        let before = thread(&app, &ticket.name).await;
        // The outbox cannot be written (a file where the folder was).
        fs::remove_dir_all(&outbox).unwrap();
        fs::write(&outbox, b"not a folder").unwrap();
        let key = uuid::Uuid::new_v4().to_string();
        let err = reply(&app, &ticket.name, "Please clear your cookies.", &key)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert_eq!(thread(&app, &ticket.name).await, before);
        let after = get(&app, &ticket.name).await;
        assert_eq!(after.state, State::New as i32);
        assert!(after.sla.unwrap().first_response_time.is_none());

        // Back again: the retry with the same key mails it, once.
        fs::remove_file(&outbox).unwrap();
        fs::create_dir(&outbox).unwrap();
        let sent = reply(&app, &ticket.name, "Please clear your cookies.", &key)
            .await
            .unwrap();
        let again = reply(&app, &ticket.name, "Please clear your cookies.", &key)
            .await
            .unwrap();
        assert_eq!(again.name, sent.name);
        let mails = files_in(&outbox, Some("eml"));
        assert_eq!(mails.len(), 1);
        assert_eq!(
            header(&mails[0], "Message-ID"),
            format!("<{}>", sent.email_message_id)
        );
        assert_eq!(thread(&app, &ticket.name).await.len(), 2);
        let after = get(&app, &ticket.name).await;
        assert_eq!(after.state, State::Open as i32);
        assert_eq!(after.sla.unwrap().first_response_time, sent.create_time);
        app.stop().await.unwrap();
    }
);

/// A TCP front of a real SMTP server that can stall: while holding, each
/// new connection is accepted and not spoken to (a mail server that hangs)
/// until the test releases it (then it is passed through) or cuts it.
struct StallingFront {
    port: u16,
    holding: std::sync::Arc<std::sync::atomic::AtomicBool>,
    held: std::sync::Arc<std::sync::Mutex<Vec<tokio::sync::oneshot::Sender<bool>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl StallingFront {
    async fn start(server_port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let holding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (h, list) = (holding.clone(), held.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let go = if h.load(std::sync::atomic::Ordering::SeqCst) {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    list.lock().unwrap().push(tx);
                    Some(rx)
                } else {
                    None
                };
                tokio::spawn(async move {
                    if let Some(go) = go
                        && go.await != Ok(true)
                    {
                        return;
                    }
                    if let Ok(mut server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", server_port)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Self {
            port,
            holding,
            held,
            task,
        }
    }

    fn hold(&self, on: bool) {
        self.holding.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Passes the held connections through (true) or closes them (false).
    fn settle_held(&self, pass: bool) {
        for held in self.held.lock().unwrap().drain(..) {
            let _ = held.send(pass);
        }
    }
}

/// Polls `done` every 50 ms for up to 20 s.
async fn eventually<F: std::future::Future<Output = bool>>(mut done: impl FnMut() -> F) -> bool {
    for _ in 0..400 {
        if done().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

async fn replies_whose_caller_gave_up(backend: Backend) {
    let Some(server) = Aiosmtpd::start() else {
        return;
    };
    let front = StallingFront::start(server.port()).await;
    let port = front.port;
    let Some(app) = custodian_tests::spawn_with(backend, |config| {
        config.smtp_url = Some(format!("smtp://127.0.0.1:{port}"));
    })
    .await
    else {
        return;
    };
    let ticket = ingest(
        &app,
        &Mail::new(
            "Ann Archer <ann@example.com>",
            "ANN-1@mail.example.com",
            "Login broken",
            "Help!",
        ),
    )
    .await
    .ticket
    .unwrap();
    let request = |key: &str, body: &str| {
        let mut request = tonic::Request::new(AddMessageRequest {
            parent: ticket.name.clone(),
            message: Some(TicketMessage {
                kind: ticket_message::Kind::AgentReply as i32,
                body: body.into(),
                ..Default::default()
            }),
            request_id: key.into(),
        });
        request.set_timeout(std::time::Duration::from_secs(2));
        request
    };

    // The mail server stalls and the caller gives up: the reply is stored,
    // not yet mailed, and a retry meanwhile mails nothing.
    front.hold(true);
    let first = uuid::Uuid::new_v4().to_string();
    let err = app
        .tickets()
        .add_message(request(&first, "Please clear your cookies."))
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    let on_its_way = thread(&app, &ticket.name).await;
    assert_eq!(on_its_way.len(), 2);
    assert!(on_its_way[1].send_time.is_none());
    assert_eq!(get(&app, &ticket.name).await.state, State::New as i32);
    let err = app
        .tickets()
        .add_message(request(&first, "Please clear your cookies."))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    // The server answers again: the reply goes out once and is counted,
    // though nobody waits for it any more.
    front.hold(false);
    front.settle_held(true);
    assert!(
        eventually(|| async { server.delivered().len() == 1 }).await,
        "mailed once the server answers"
    );
    assert!(
        eventually(|| async { get(&app, &ticket.name).await.state == State::Open as i32 }).await
    );
    let sent = app
        .tickets()
        .add_message(request(&first, "Please clear your cookies."))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sent.name, on_its_way[1].name);
    assert!(sent.send_time.is_some());
    assert_eq!(
        header(&server.delivered()[0], "Message-ID"),
        format!("<{}>", sent.email_message_id)
    );

    // A reply whose call never finishes mailing it (its process stopped,
    // here: a send that hangs) is mailed by a retry once the lease of its
    // first call is over, and that first call, failing at last, does not
    // take it back.
    front.hold(true);
    let second = uuid::Uuid::new_v4().to_string();
    app.tickets()
        .add_message(request(&second, "Did it help?"))
        .await
        .unwrap_err();
    front.hold(false);
    app.clock.advance(std::time::Duration::from_secs(120));
    let retried = app
        .tickets()
        .add_message(request(&second, "Did it help?"))
        .await
        .expect("mailed by the retry")
        .into_inner();
    assert!(retried.send_time.is_some());
    let delivered = server.delivered();
    assert_eq!(delivered.len(), 2);
    assert!(
        delivered
            .iter()
            .any(|raw| header(raw, "Message-ID") == format!("<{}>", retried.email_message_id))
    );
    front.settle_held(false);
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let thread_now = thread(&app, &ticket.name).await;
    assert_eq!(thread_now.len(), 3, "nothing was taken back");
    assert!(thread_now.iter().skip(1).all(|m| m.send_time.is_some()));
    app.tickets()
        .add_message(request(&second, "Did it help?"))
        .await
        .unwrap();
    assert_eq!(server.delivered().len(), 2, "each reply mailed once");
    app.stop().await.unwrap();
    front.task.abort();
}

mod a_reply_is_mailed_once_whether_or_not_its_caller_waits {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        replies_whose_caller_gave_up(Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        replies_whose_caller_gave_up(Backend::Postgres).await;
    }
}

mail_test!(
    a_reply_that_can_never_be_mailed_is_refused_and_nothing_stored,
    |app: TestApp, _backend: Backend| async move {
        let outbox = app.db.dir().join("outbox");
        // An address the API takes (a quoted local part) that the mailer
        // cannot write: a retry would never help, so it is no UNAVAILABLE.
        let ticket = app
            .tickets()
            .create_ticket(CreateTicketRequest {
                ticket: Some(Ticket {
                    channel: Channel::Email as i32,
                    kind: Kind::Inquiry as i32,
                    subject: "Prices".into(),
                    requester: Some(custodian_proto::tickets::v1::Requester {
                        person_name: fixtures::name("Ann", "Archer"),
                        email: "\"ann archer\"@example.com".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                description: "How much?".into(),
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let before = thread(&app, &ticket.name).await;
        let err = reply(&app, &ticket.name, "10 euros.", "")
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert!(!err.message().contains("archer"), "{err:?}");
        assert!(!err.message().contains("example.com"), "{err:?}");
        assert_eq!(thread(&app, &ticket.name).await, before);
        let after = get(&app, &ticket.name).await;
        assert_eq!(after.state, State::New as i32);
        assert!(after.sla.unwrap().first_response_time.is_none());
        assert!(files_in(&outbox, Some("eml")).is_empty());
        app.stop().await.unwrap();
    }
);

mail_test!(
    every_spelling_the_guard_knows_is_redacted_from_mail,
    |app: TestApp, _backend: Backend| async move {
        // The guard's spellings (tests/src/hostile.rs): each value alone, in
        // a mail body among ordinary numbers, and quoted in a reply; each
        // arrives once as a well-formed mail and once with a control
        // character, which sends it down the path that cleans the body
        // before redacting it.
        let spellings = custodian_tests::hostile::sensitive_spellings();
        let base: std::collections::BTreeMap<String, String> = spellings
            .iter()
            .filter(|(what, _)| !what.contains(", in a mail body") && !what.contains(", quoted"))
            .cloned()
            .collect();
        for (i, (what, text)) in spellings.iter().enumerate() {
            let root = what
                .trim_end_matches(", in a mail body")
                .trim_end_matches(", quoted in a reply");
            let value = &base[root];
            for (j, body) in [text.clone(), format!("{text}\u{7}")].iter().enumerate() {
                let from = format!("Sam Sender <sam{i}-{j}@example.com>");
                let id = format!("SPELL-{i}-{j}@mail.example.com");
                let ingested = ingest(&app, &Mail::new(&from, &id, "Refund", body)).await;
                let message = ingested.message.expect("the stored message");
                assert!(
                    !custodian_tests::hostile::reveals(value, &message.body),
                    "{what} (path {j}) was stored: {:?}",
                    message.body
                );
                assert!(
                    !message.redacted_kinds.is_empty(),
                    "{what} (path {j}): no kind recorded"
                );
                let stored = get(&app, &ingested.ticket.expect("a ticket").name).await;
                assert!(
                    !custodian_tests::hostile::reveals(value, &format!("{stored:?}")),
                    "{what} (path {j}) is in the ticket"
                );
            }
        }
    }
);
