//! Support tickets through the generated clients, on SQLite and PostgreSQL,
//! with identity running beside them in the same process: every method, the
//! state machine, bad input (refused, nothing stored), the sensitive-data
//! guard, tenant isolation, SLA clocks on the manual clock, data-subject
//! rights across identity and tickets, and retention. The email channel is
//! in `tickets_mail.rs`.

use std::time::Duration;

use custodian_privacy::Purpose;
use custodian_proto::{
    audit::v1::{AuditAction, AuditOutcome, ListAuditEventsRequest},
    common::v1::{DataCategory, SubjectIdentifier, controller, subject_identifier},
    identity::v1::{
        CreateContactRequest, CreateUserRequest, RetentionRule, Tenant, UpdateTenantRequest,
    },
    retention::v1::{
        CreateLegalHoldRequest, DeleteLegalHoldRequest, LegalHold, SweepExpiredRequest, legal_hold,
    },
    subject::v1::{
        EraseSubjectDataRequest, ExportSubjectDataRequest, FieldCorrection,
        LocateSubjectDataRequest, RectifySubjectDataRequest,
    },
    tickets::v1::{
        AddMessageRequest, CreateTicketRequest, DeleteTicketRequest, GetMessageRequest,
        GetTicketRequest, IngestEmailRequest, ListMessagesRequest, ListRequesterTicketsRequest,
        ListTicketsRequest, Requester, Ticket, TicketMessage, UpdateTicketRequest,
        list_requester_tickets_request,
        ticket::{Channel, Kind, Priority, State},
        ticket_message,
    },
};
use custodian_runtime::time::Clock as _;
use custodian_tests::{Backend, Bearer, TestApp, fixtures, storage_test, violations};
use prost_types::{FieldMask, Timestamp, value::Kind as ValueKind};
use sqlx::Row as _;
use tokio_stream::StreamExt as _;
use tonic::{Code, Status};

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(60 * 60);
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// A Visa test number (Luhn-valid), as people type it.
const CARD: &str = "4111 1111 1111 1111";
/// An IBAN with valid check digits.
const IBAN: &str = "DE89 3704 0044 0532 0130 00";

// --- builders ------------------------------------------------------------

fn tenant_name(tenant: &str) -> String {
    if tenant.is_empty() {
        String::new()
    } else {
        format!("tenants/{tenant}")
    }
}

fn ann(email: &str) -> Option<Requester> {
    Some(Requester {
        person_name: fixtures::name("Ann", "Archer"),
        email: email.into(),
        ..Default::default()
    })
}

/// A troubleshooting request through the web form, category "login".
fn web_ticket(tenant: &str, subject: &str, email: &str) -> Ticket {
    Ticket {
        tenant: tenant_name(tenant),
        channel: Channel::WebForm as i32,
        kind: Kind::Troubleshooting as i32,
        category: "login".into(),
        subject: subject.into(),
        requester: ann(email),
        ..Default::default()
    }
}

fn create_request(ticket: Ticket, description: impl Into<String>) -> CreateTicketRequest {
    CreateTicketRequest {
        ticket: Some(ticket),
        description: description.into(),
        request_id: String::new(),
    }
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

/// A list of one name, to compare with.
fn one(name: &str) -> Vec<String> {
    vec![name.to_owned()]
}

fn has_violation(status: &Status, field: &str) -> bool {
    violations(status).iter().any(|(f, _)| f == field)
}

fn micros(t: &Option<Timestamp>) -> i64 {
    let t = t.expect("a timestamp");
    t.seconds * 1_000_000 + i64::from(t.nanos) / 1000
}

fn us(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap()
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

/// A plain-text mail as a gateway hands it over.
fn mail(from: &str, message_id: &str, subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: support@custodian.localhost\r\nSubject: {subject}\r\n\
         Message-ID: <{message_id}>\r\nDate: Mon, 3 Jun 2024 10:00:00 +0000\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

// --- calls -----------------------------------------------------------------

async fn open(app: &TestApp, ticket: Ticket, description: &str) -> Ticket {
    app.tickets()
        .create_ticket(create_request(ticket, description))
        .await
        .expect("create ticket")
        .into_inner()
}

async fn get(app: &TestApp, name: &str) -> Ticket {
    app.tickets()
        .get_ticket(GetTicketRequest { name: name.into() })
        .await
        .expect("get ticket")
        .into_inner()
}

async fn update(app: &TestApp, patch: Ticket, paths: &[&str]) -> Result<Ticket, Status> {
    app.tickets()
        .update_ticket(UpdateTicketRequest {
            ticket: Some(patch),
            update_mask: mask(paths),
        })
        .await
        .map(|r| r.into_inner())
}

async fn set_state(app: &TestApp, name: &str, state: State) -> Result<Ticket, Status> {
    update(
        app,
        Ticket {
            name: name.into(),
            state: state as i32,
            ..Default::default()
        },
        &["state"],
    )
    .await
}

async fn set_priority(app: &TestApp, name: &str, priority: Priority) -> Ticket {
    update(
        app,
        Ticket {
            name: name.into(),
            priority: priority as i32,
            ..Default::default()
        },
        &["priority"],
    )
    .await
    .expect("priority changed")
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

/// Every page of a ListTickets query, as names.
async fn list_names(app: &TestApp, mut request: ListTicketsRequest) -> Vec<String> {
    let mut names = Vec::new();
    loop {
        let page = app
            .tickets()
            .list_tickets(request.clone())
            .await
            .expect("list tickets")
            .into_inner();
        names.extend(page.tickets.into_iter().map(|t| t.name));
        if page.next_page_token.is_empty() {
            return names;
        }
        request.page_token = page.next_page_token;
    }
}

async fn history(
    app: &TestApp,
    bearer: Option<Bearer>,
    requester: list_requester_tickets_request::Requester,
) -> Result<Vec<String>, Status> {
    let mut client = match bearer {
        Some(b) => app.tickets_as(b),
        None => app.tickets(),
    };
    client
        .list_requester_tickets(ListRequesterTicketsRequest {
            requester: Some(requester),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .map(|r| r.into_inner().tickets.into_iter().map(|t| t.name).collect())
}

fn by_email(e: &str) -> list_requester_tickets_request::Requester {
    list_requester_tickets_request::Requester::Email(e.into())
}

fn by_phone(p: &str) -> list_requester_tickets_request::Requester {
    list_requester_tickets_request::Requester::Phone(p.into())
}

/// Ann Archer as an authorized user of `tenant`.
async fn ann_user(app: &TestApp, tenant: &str, email: &str) -> String {
    let mut user = fixtures::user(email);
    user.phone = "+49 30 901820".into();
    app.users()
        .create_user(CreateUserRequest {
            parent: format!("tenants/{tenant}"),
            user: Some(user),
            request_id: String::new(),
        })
        .await
        .expect("create user")
        .into_inner()
        .name
}

/// What tickets keeps, row by row: both tables, its data keys and its
/// idempotency keys. Equal snapshots mean nothing was stored or changed.
async fn snapshot(app: &TestApp) -> Vec<String> {
    let mut out = Vec::new();
    for (what, sql) in [
        (
            "ticket",
            "SELECT id, data, attrs, update_time FROM tickets_tickets ORDER BY id",
        ),
        (
            "message",
            "SELECT id, data, attrs, update_time FROM tickets_messages ORDER BY id",
        ),
    ] {
        for row in sqlx::query(sql).fetch_all(&app.raw).await.unwrap() {
            out.push(format!(
                "{what} {} {} {} {}",
                row.get::<String, _>("id"),
                row.get::<String, _>("data"),
                row.get::<String, _>("attrs"),
                row.get::<i64, _>("update_time"),
            ));
        }
    }
    for row in sqlx::query("SELECT id FROM subject_keys WHERE service = 'tickets' ORDER BY id")
        .fetch_all(&app.raw)
        .await
        .unwrap()
    {
        out.push(format!("key {}", row.get::<String, _>("id")));
    }
    for row in sqlx::query(
        "SELECT request_id FROM kit_idempotency WHERE service = 'tickets' ORDER BY request_id",
    )
    .fetch_all(&app.raw)
    .await
    .unwrap()
    {
        out.push(format!(
            "idempotency {}",
            row.get::<String, _>("request_id")
        ));
    }
    out
}

async fn tickets_keys(app: &TestApp) -> i64 {
    sqlx::query("SELECT COUNT(*) AS n FROM subject_keys WHERE service = 'tickets'")
        .fetch_one(&app.raw)
        .await
        .unwrap()
        .get::<i64, _>("n")
}

/// A refusal never repeats a card number, however it was typed.
fn assert_no_card(err: &Status) {
    let text = format!("{} {:?}", err.message(), violations(err));
    for fragment in ["4111", "1111 1111", "1111111111", "DE89", "0532"] {
        assert!(!text.contains(fragment), "{fragment} echoed: {text}");
    }
}

// --- every method ----------------------------------------------------------

storage_test!(
    every_method_through_the_generated_client,
    |app: TestApp| async move {
        fixtures::tenant(&app, "acme").await;
        let mut tickets = app.tickets();

        // Without a description: a ticket and no message.
        let quiet = open(
            &app,
            web_ticket("acme", "  Cannot log in ", " Ann@Example.COM "),
            "",
        )
        .await;
        assert!(quiet.name.starts_with("tickets/"), "{}", quiet.name);
        assert_eq!(quiet.tenant, "tenants/acme");
        assert_eq!(quiet.subject, "Cannot log in", "a line is trimmed");
        assert_eq!(quiet.state, State::New as i32, "a new ticket is new");
        assert_eq!(
            quiet.priority,
            Priority::Normal as i32,
            "no priority is normal"
        );
        assert_eq!(quiet.category, "login");
        assert_eq!(quiet.channel, Channel::WebForm as i32);
        let requester = quiet.requester.clone().unwrap();
        assert_eq!(requester.email, "ann@example.com", "email normalised");
        assert_eq!(requester.person_name, fixtures::name("Ann", "Archer"));
        assert_eq!(quiet.data_category, DataCategory::SupportRequest as i32);
        assert_eq!(
            quiet.controller.as_ref().unwrap().kind,
            Some(controller::Kind::Tenant("tenants/acme".into()))
        );
        assert!(quiet.create_time.is_some() && quiet.update_time.is_some());
        assert!(quiet.solve_time.is_none() && quiet.close_time.is_none());
        assert!(quiet.sla.as_ref().unwrap().first_response_due.is_some());
        assert!(thread(&app, &quiet.name).await.is_empty());
        assert_eq!(app.count("tickets_messages").await, 0);

        // With a description: the requester's first message.
        let described = open(
            &app,
            web_ticket("acme", "Error 42 on login", "ann@example.com"),
            "Since Monday I get error 42.\nSee the screenshot.",
        )
        .await;
        let first = thread(&app, &described.name).await;
        assert_eq!(first.len(), 1);
        let first = &first[0];
        assert!(
            first
                .name
                .starts_with(&format!("{}/messages/", described.name)),
            "{}",
            first.name
        );
        assert_eq!(first.kind, ticket_message::Kind::Requester as i32);
        assert_eq!(
            first.body,
            "Since Monday I get error 42.\nSee the screenshot."
        );
        assert_eq!(first.channel, Channel::WebForm as i32);
        assert!(first.author.is_empty(), "the requester is no agent");
        assert_eq!(first.data_category, DataCategory::SupportRequest as i32);
        assert_eq!(
            tickets
                .get_message(GetMessageRequest {
                    name: first.name.clone()
                })
                .await
                .unwrap()
                .into_inner(),
            *first
        );

        // GetTicket gives what CreateTicket gave.
        assert_eq!(get(&app, &described.name).await, described);

        // AddMessage: an agent's reply is the caller's, and opens the ticket.
        let reply = add(
            &app,
            &described.name,
            ticket_message::Kind::AgentReply,
            "Please clear your cookies.",
        )
        .await
        .unwrap();
        assert_eq!(reply.kind, ticket_message::Kind::AgentReply as i32);
        assert_eq!(reply.author, "test:root");
        assert!(
            reply.email_message_id.is_empty(),
            "a web-form ticket is not mailed"
        );
        let opened = get(&app, &described.name).await;
        assert_eq!(opened.state, State::Open as i32);
        assert_eq!(
            opened.sla.as_ref().unwrap().first_response_time,
            reply.create_time
        );
        let note = add(
            &app,
            &described.name,
            ticket_message::Kind::InternalNote,
            "Checked the logs: cookie too large.",
        )
        .await
        .unwrap();
        assert_eq!(note.author, "test:root");

        // ListMessages: oldest first, in pages.
        let page = tickets
            .list_messages(ListMessagesRequest {
                parent: described.name.clone(),
                page_size: 2,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            page.messages
                .iter()
                .map(|m| m.name.clone())
                .collect::<Vec<_>>(),
            [first.name.clone(), reply.name.clone()]
        );
        assert!(!page.next_page_token.is_empty());
        let rest = tickets
            .list_messages(ListMessagesRequest {
                parent: described.name.clone(),
                page_size: 2,
                page_token: page.next_page_token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(rest.messages, vec![note.clone()]);
        assert!(rest.next_page_token.is_empty());
        // A page token belongs to its ticket.
        let err = tickets
            .list_messages(ListMessagesRequest {
                parent: quiet.name.clone(),
                page_size: 2,
                page_token: page.next_page_token,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);

        // A message is found under its own ticket only.
        let message_id = reply.name.rsplit('/').next().unwrap();
        let err = tickets
            .get_message(GetMessageRequest {
                name: format!("{}/messages/{message_id}", quiet.name),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);

        // A purpose that may not see the person gets the ticket without them.
        let analytics = app.token(&[Purpose::ProductAnalytics], None);
        let response = app
            .tickets_as(Bearer::new(Some(&analytics)))
            .get_ticket(GetTicketRequest {
                name: described.name.clone(),
            })
            .await
            .unwrap();
        let withheld = response
            .metadata()
            .get("custodian-redacted-fields")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let cut = response.into_inner();
        assert!(cut.subject.is_empty() && cut.requester.is_none(), "{cut:?}");
        assert_eq!(cut.category, "login");
        assert!(withheld.contains("subject"), "{withheld}");

        // IngestEmail: a mail opens an email ticket (the mail channel in
        // detail is in tickets_mail.rs).
        let ingested = tickets
            .ingest_email(IngestEmailRequest {
                raw_message: mail(
                    "Ben Baker <ben@example.com>",
                    "first@mail.example.com",
                    "Invoice missing",
                    "Where is my invoice?",
                ),
                tenant: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(ingested.new_ticket && !ingested.duplicate);
        let by_mail = ingested.ticket.unwrap();
        assert_eq!(by_mail.channel, Channel::Email as i32);
        assert_eq!(by_mail.kind, Kind::Inquiry as i32);
        assert_eq!(by_mail.subject, "Invoice missing");
        assert_eq!(
            by_mail.controller.unwrap().kind,
            Some(controller::Kind::Company(true)),
            "an outside individual's request is the company's"
        );
        assert_eq!(
            ingested.message.unwrap().body.trim(),
            "Where is my invoice?"
        );

        // DeleteTicket: the ticket and its messages go.
        assert_eq!(app.count("tickets_messages").await, 4);
        tickets
            .delete_ticket(DeleteTicketRequest {
                name: described.name.clone(),
            })
            .await
            .unwrap();
        assert_eq!(app.count("tickets_tickets").await, 2);
        assert_eq!(app.count("tickets_messages").await, 1, "the mail's stays");
        let err = tickets
            .get_ticket(GetTicketRequest {
                name: described.name.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let err = tickets
            .get_message(GetMessageRequest {
                name: reply.name.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let err = tickets
            .delete_ticket(DeleteTicketRequest {
                name: described.name.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "deleting twice");
        app.stop().await.unwrap();
    }
);

storage_test!(
    create_is_idempotent_with_a_request_id,
    |app: TestApp| async move {
        fixtures::tenant(&app, "acme").await;
        let mut tickets = app.tickets();
        let request = CreateTicketRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            ..create_request(
                web_ticket("acme", "Cannot log in", "ann@example.com"),
                "Error 42",
            )
        };
        let first = tickets
            .create_ticket(request.clone())
            .await
            .unwrap()
            .into_inner();
        let retry = tickets
            .create_ticket(request.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(retry, first, "a retry returns the same ticket");
        assert_eq!(app.count("tickets_tickets").await, 1);
        assert_eq!(
            app.count("tickets_messages").await,
            1,
            "and does not add the description again"
        );

        // The same key for another request is refused.
        let before = snapshot(&app).await;
        let mut other = request.clone();
        other.ticket.as_mut().unwrap().subject = "Something else".into();
        let err = tickets.create_ticket(other).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(has_violation(&err, "request_id"), "{:?}", violations(&err));
        assert_eq!(snapshot(&app).await, before);

        // A key that is no UUID is refused at the door.
        let mut bad = request.clone();
        bad.request_id = "retry-1".into();
        let err = tickets.create_ticket(bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(has_violation(&err, "request_id"));
        assert_eq!(snapshot(&app).await, before);

        // AddMessage is idempotent too.
        let add_request = AddMessageRequest {
            parent: first.name.clone(),
            message: Some(TicketMessage {
                kind: ticket_message::Kind::AgentReply as i32,
                body: "On it.".into(),
                ..Default::default()
            }),
            request_id: uuid::Uuid::new_v4().to_string(),
        };
        let once = tickets
            .add_message(add_request.clone())
            .await
            .unwrap()
            .into_inner();
        let twice = tickets
            .add_message(add_request.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(once, twice);
        assert_eq!(app.count("tickets_messages").await, 2);
        app.stop().await.unwrap();
    }
);

storage_test!(
    list_tickets_pages_through_every_filter,
    |app: TestApp| async move {
        fixtures::tenant(&app, "acme").await;
        fixtures::tenant(&app, "globex").await;
        let user = ann_user(&app, "acme", "ann@example.com").await;
        let by_user = |tenant: &str, category: &str| Ticket {
            requester: Some(Requester {
                user: user.clone(),
                ..Default::default()
            }),
            category: category.into(),
            ..web_ticket(tenant, "Help", "")
        };
        let t0 = app.clock.now_micros();
        let t1 = open(&app, by_user("acme", "login"), "").await;
        // The requester's name and email come from the user's record.
        let requester = t1.requester.clone().unwrap();
        assert_eq!(requester.email, "ann@example.com");
        assert_eq!(requester.person_name, fixtures::name("Ann", "Archer"));
        assert_eq!(requester.user, user);
        app.clock.advance(HOUR);
        let t2 = open(
            &app,
            Ticket {
                category: "billing".into(),
                ..web_ticket("acme", "Invoice", "bob@example.com")
            },
            "",
        )
        .await;
        app.clock.advance(HOUR);
        let t3 = open(&app, web_ticket("globex", "Login", "gil@example.com"), "").await;
        app.clock.advance(HOUR);
        let t4 = open(
            &app,
            Ticket {
                category: "billing".into(),
                kind: Kind::Inquiry as i32,
                ..web_ticket("", "Prices", "cat@example.com")
            },
            "",
        )
        .await;
        app.clock.advance(HOUR);
        let t5 = open(&app, by_user("acme", "login"), "").await;
        set_state(&app, &t5.name, State::Pending).await.unwrap();
        let all: Vec<String> = [&t1, &t2, &t3, &t4, &t5]
            .iter()
            .map(|t| t.name.clone())
            .collect();
        let names = |ts: &[&Ticket]| ts.iter().map(|t| t.name.clone()).collect::<Vec<_>>();

        // Pages of two, oldest first.
        let first = app
            .tickets()
            .list_tickets(ListTicketsRequest {
                page_size: 2,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(first.tickets.len(), 2);
        assert_eq!(first.tickets[0], get(&app, &t1.name).await);
        assert_eq!(
            list_names(
                &app,
                ListTicketsRequest {
                    page_size: 2,
                    ..Default::default()
                }
            )
            .await,
            all
        );
        assert_eq!(list_names(&app, ListTicketsRequest::default()).await, all);
        // A page token is bound to its query.
        let err = app
            .tickets()
            .list_tickets(ListTicketsRequest {
                page_size: 2,
                page_token: first.next_page_token.clone(),
                category: "billing".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);

        let list = |request: ListTicketsRequest| {
            list_names(
                &app,
                ListTicketsRequest {
                    page_size: 1,
                    ..request
                },
            )
        };
        assert_eq!(
            list(ListTicketsRequest {
                state: State::Pending as i32,
                ..Default::default()
            })
            .await,
            names(&[&t5])
        );
        assert_eq!(
            list(ListTicketsRequest {
                state: State::New as i32,
                ..Default::default()
            })
            .await,
            names(&[&t1, &t2, &t3, &t4])
        );
        assert_eq!(
            list(ListTicketsRequest {
                category: "login".into(),
                ..Default::default()
            })
            .await,
            names(&[&t1, &t3, &t5])
        );
        assert_eq!(
            list(ListTicketsRequest {
                category: "BILLING".into(),
                ..Default::default()
            })
            .await,
            names(&[&t2, &t4]),
            "categories compare in lower case"
        );
        assert_eq!(
            list(ListTicketsRequest {
                requester_user: user.clone(),
                ..Default::default()
            })
            .await,
            names(&[&t1, &t5])
        );
        assert_eq!(
            list(ListTicketsRequest {
                tenant: "tenants/acme".into(),
                ..Default::default()
            })
            .await,
            names(&[&t1, &t2, &t5])
        );
        assert_eq!(
            list(ListTicketsRequest {
                tenant: "tenants/globex".into(),
                ..Default::default()
            })
            .await,
            names(&[&t3])
        );
        let at = |d: Duration| {
            Some(custodian_runtime::time::to_timestamp(
                t0 + i64::try_from(d.as_micros()).unwrap(),
            ))
        };
        assert_eq!(
            list(ListTicketsRequest {
                create_time_start: at(HOUR),
                create_time_end: at(3 * HOUR),
                ..Default::default()
            })
            .await,
            names(&[&t2, &t3]),
            "from the start, before the end"
        );
        assert_eq!(
            list(ListTicketsRequest {
                create_time_start: at(3 * HOUR),
                ..Default::default()
            })
            .await,
            names(&[&t4, &t5])
        );
        assert_eq!(
            list(ListTicketsRequest {
                create_time_end: at(MINUTE),
                ..Default::default()
            })
            .await,
            names(&[&t1])
        );
        // Filters combine.
        assert_eq!(
            list(ListTicketsRequest {
                tenant: "tenants/acme".into(),
                category: "login".into(),
                state: State::New as i32,
                ..Default::default()
            })
            .await,
            names(&[&t1])
        );

        // SLA breaches: nothing yet; at 9h30 the first replies of t1 (due
        // at 8h) and t2 (due at 9h) are late.
        let breached = ListTicketsRequest {
            sla_breached: true,
            ..Default::default()
        };
        assert!(list(breached.clone()).await.is_empty());
        app.clock.advance(5 * HOUR + 30 * MINUTE);
        assert_eq!(list(breached.clone()).await, names(&[&t1, &t2]));
        assert!(
            get(&app, &t1.name)
                .await
                .sla
                .unwrap()
                .first_response_breached
        );
        assert!(
            !get(&app, &t3.name)
                .await
                .sla
                .unwrap()
                .first_response_breached
        );
        assert_eq!(
            list(ListTicketsRequest {
                category: "billing".into(),
                ..breached.clone()
            })
            .await,
            names(&[&t2])
        );

        // Values of the wrong form are refused at the door.
        for (request, field) in [
            (
                ListTicketsRequest {
                    tenant: "acme".into(),
                    ..Default::default()
                },
                "tenant",
            ),
            (
                ListTicketsRequest {
                    requester_user: "tenants/acme/users/ann".into(),
                    ..Default::default()
                },
                "requester_user",
            ),
            (
                ListTicketsRequest {
                    category: "log in".into(),
                    ..Default::default()
                },
                "category",
            ),
            (
                ListTicketsRequest {
                    state: 42,
                    ..Default::default()
                },
                "state",
            ),
            (
                ListTicketsRequest {
                    page_size: -1,
                    ..Default::default()
                },
                "page_size",
            ),
        ] {
            let err = app.tickets().list_tickets(request).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{field}");
            assert!(
                has_violation(&err, field),
                "{field}: {:?}",
                violations(&err)
            );
        }
        app.stop().await.unwrap();
    }
);

storage_test!(
    requester_history_by_email_and_phone_for_support_only,
    |app: TestApp| async move {
        fixtures::tenant(&app, "acme").await;
        let first = open(&app, web_ticket("", "Prices", "ann@example.com"), "").await;
        let with_phone = open(
            &app,
            Ticket {
                requester: Some(Requester {
                    person_name: fixtures::name("Ann", "Archer"),
                    phone: "+49 30 901820".into(),
                    ..Default::default()
                }),
                channel: Channel::Phone as i32,
                ..web_ticket("acme", "Called about login", "")
            },
            "",
        )
        .await;
        assert_eq!(with_phone.requester.as_ref().unwrap().phone, "+4930901820");
        let second = open(&app, web_ticket("acme", "Login", "ANN@example.com"), "").await;
        open(&app, web_ticket("acme", "Login", "bob@example.com"), "").await;

        assert_eq!(
            history(&app, None, by_email(" Ann@Example.com"))
                .await
                .unwrap(),
            [first.name.clone(), second.name.clone()],
            "found by the normalised email"
        );
        assert_eq!(
            history(&app, None, by_phone("+49 (30) 90 18 20"))
                .await
                .unwrap(),
            one(&with_phone.name)
        );
        assert!(
            history(&app, None, by_email("nobody@example.com"))
                .await
                .unwrap()
                .is_empty()
        );
        // In pages.
        let page = app
            .tickets()
            .list_requester_tickets(ListRequesterTicketsRequest {
                requester: Some(by_email("ann@example.com")),
                page_size: 1,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.tickets.len(), 1);
        let rest = app
            .tickets()
            .list_requester_tickets(ListRequesterTicketsRequest {
                requester: Some(by_email("ann@example.com")),
                page_size: 1,
                page_token: page.next_page_token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(rest.tickets[0].name, second.name);
        assert!(rest.next_page_token.is_empty());
        // The token of one requester is no token for another.
        let err = app
            .tickets()
            .list_requester_tickets(ListRequesterTicketsRequest {
                requester: Some(by_email("bob@example.com")),
                page_size: 1,
                page_token: page.next_page_token,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);

        // Bad values.
        for (requester, field) in [
            (Some(by_email("not an email")), "email"),
            (Some(by_phone("12")), "phone"),
            (None, "requester"),
        ] {
            let err = app
                .tickets()
                .list_requester_tickets(ListRequesterTicketsRequest {
                    requester,
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{field}");
            assert!(
                has_violation(&err, field),
                "{field}: {:?}",
                violations(&err)
            );
        }

        // Support only: refused, and audited, for anyone else.
        let delivery = app.token(&[Purpose::ServiceDelivery, Purpose::Administration], None);
        let err = history(
            &app,
            Some(Bearer::new(Some(&delivery))),
            by_email("ann@example.com"),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        let all = app.token(&Purpose::ALL, None);
        let err = history(
            &app,
            Some(Bearer::new(Some(&all)).with_purpose(Purpose::ServiceDelivery)),
            by_email("ann@example.com"),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "naming another purpose");
        let denied: Vec<_> = app
            .audit_events()
            .await
            .into_iter()
            .filter(|e| e.outcome == AuditOutcome::Denied as i32)
            .collect();
        assert_eq!(denied.len(), 2, "{denied:?}");
        assert!(denied.iter().all(|e| e.service == "tickets"
            && e.method == "/custodian.tickets.v1.TicketService/ListRequesterTickets"));
        app.stop().await.unwrap();
    }
);

// --- updates and states ----------------------------------------------------

storage_test!(
    update_changes_only_the_masked_fields,
    |app: TestApp| async move {
        fixtures::tenant(&app, "acme").await;
        fixtures::tenant(&app, "globex").await;
        let user = ann_user(&app, "acme", "ann@example.com").await;
        let globex_user = ann_user(&app, "globex", "ann@example.com").await;
        let created = open(
            &app,
            web_ticket("acme", "Cannot log in", "ann@example.com"),
            "",
        )
        .await;

        let patch = Ticket {
            name: created.name.clone(),
            subject: "ignored".into(),
            category: "ignored".into(),
            assignee: "ops:alice".into(),
            priority: Priority::High as i32,
            kind: Kind::Inquiry as i32,
            requester: ann("ignored@example.com"),
            ..Default::default()
        };
        let updated = update(&app, patch, &["assignee", "priority"])
            .await
            .unwrap();
        assert_eq!(updated.assignee, "ops:alice");
        assert_eq!(updated.priority, Priority::High as i32);
        assert_eq!(updated.subject, created.subject);
        assert_eq!(updated.category, created.category);
        assert_eq!(updated.kind, created.kind);
        assert_eq!(updated.requester, created.requester);
        assert_eq!(updated.create_time, created.create_time);
        assert!(micros(&updated.update_time) > micros(&created.update_time));

        // One field of the requester.
        let updated = update(
            &app,
            Ticket {
                name: created.name.clone(),
                requester: Some(Requester {
                    email: " Ann.Archer@Example.com".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            &["requester.email"],
        )
        .await
        .unwrap();
        let requester = updated.requester.clone().unwrap();
        assert_eq!(requester.email, "ann.archer@example.com");
        assert_eq!(
            requester.person_name,
            fixtures::name("Ann", "Archer"),
            "the name stays"
        );
        assert_eq!(
            history(&app, None, by_email("ann.archer@example.com"))
                .await
                .unwrap(),
            one(&created.name),
            "found by the new email"
        );
        assert!(
            history(&app, None, by_email("ann@example.com"))
                .await
                .unwrap()
                .is_empty()
        );

        // A link to a user of the ticket's tenant is checked with identity.
        let linked = update(
            &app,
            Ticket {
                name: created.name.clone(),
                requester: Some(Requester {
                    user: user.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            &["requester.user"],
        )
        .await
        .unwrap();
        assert_eq!(linked.requester.unwrap().user, user);
        // The whole requester as a user: what is missing comes from the
        // user's record, as on create.
        let replaced = update(
            &app,
            Ticket {
                name: created.name.clone(),
                requester: Some(Requester {
                    user: user.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            &["requester"],
        )
        .await
        .unwrap();
        let requester = replaced.requester.unwrap();
        assert_eq!(requester.user, user);
        assert_eq!(requester.email, "ann@example.com");
        assert_eq!(requester.phone, "+4930901820");
        assert_eq!(requester.person_name, fixtures::name("Ann", "Archer"));
        assert_eq!(
            history(&app, None, by_email("ann@example.com"))
                .await
                .unwrap(),
            one(&created.name),
            "found by the user's email"
        );

        // Refused, and nothing changes.
        let before = snapshot(&app).await;
        for paths in [
            vec!["no_such_field"],
            vec!["create_time"],
            vec!["sla"],
            vec!["sla.first_response_due"],
            vec!["name"],
            vec!["channel"],
            vec!["tenant"],
            vec!["controller"],
            vec!["assignee", "close_time"],
            vec![],
        ] {
            let err = update(
                &app,
                Ticket {
                    name: created.name.clone(),
                    assignee: "ops:mallory".into(),
                    channel: Channel::Phone as i32,
                    tenant: "tenants/globex".into(),
                    ..Default::default()
                },
                &paths,
            )
            .await
            .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{paths:?}");
            assert!(has_violation(&err, "update_mask"), "{paths:?}: {err:?}");
        }
        let refused: Vec<(Ticket, Vec<&str>, &str)> = vec![
            (
                Ticket {
                    requester: Some(Requester {
                        email: "not an email".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                vec!["requester.email"],
                "ticket.requester.email",
            ),
            (
                Ticket::default(),
                vec!["requester"],
                "ticket.requester.person_name",
            ),
            (Ticket::default(), vec!["kind"], "ticket.kind"),
            (
                Ticket {
                    category: "log in".into(),
                    ..Default::default()
                },
                vec!["category"],
                "ticket.category",
            ),
            (
                Ticket {
                    requester: Some(Requester {
                        user: globex_user.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                vec!["requester.user"],
                "ticket.requester.user",
            ),
            (
                Ticket {
                    subject: format!("card {CARD}"),
                    ..Default::default()
                },
                vec!["subject"],
                "ticket.subject",
            ),
            (
                Ticket {
                    requester: Some(Requester {
                        person_name: fixtures::name("Ann", CARD),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                vec!["requester.person_name"],
                "ticket.requester.person_name.family_name",
            ),
            (
                Ticket {
                    state: State::Unspecified as i32,
                    ..Default::default()
                },
                vec!["state"],
                "ticket.state",
            ),
        ];
        for (patch, paths, field) in refused {
            let err = update(
                &app,
                Ticket {
                    name: created.name.clone(),
                    ..patch
                },
                &paths,
            )
            .await
            .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
            assert!(
                has_violation(&err, field),
                "{field}: {:?}",
                violations(&err)
            );
            assert_no_card(&err);
        }
        assert_eq!(
            snapshot(&app).await,
            before,
            "refused updates change nothing"
        );

        // A missing ticket, and a name of the wrong form.
        let missing = format!("tickets/{}", uuid::Uuid::now_v7());
        let err = update(
            &app,
            Ticket {
                name: missing,
                assignee: "x".into(),
                ..Default::default()
            },
            &["assignee"],
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let err = update(
            &app,
            Ticket {
                name: "tickets/not-a-uuid".into(),
                assignee: "x".into(),
                ..Default::default()
            },
            &["assignee"],
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(has_violation(&err, "ticket.name"), "{:?}", violations(&err));
        assert_eq!(snapshot(&app).await, before);
        app.stop().await.unwrap();
    }
);

/// A company ticket brought to `state` along the shortest valid path.
async fn ticket_in(app: &TestApp, state: State) -> Ticket {
    let t = open(app, web_ticket("", "Help", "ann@example.com"), "").await;
    if state == State::New {
        return t;
    }
    set_state(app, &t.name, state).await.expect("reached")
}

storage_test!(
    every_valid_transition_and_no_invalid_one,
    |app: TestApp| async move {
        use State::*;
        let valid = [
            (New, Open),
            (New, Pending),
            (New, Solved),
            (New, Closed),
            (Open, Pending),
            (Open, Solved),
            (Open, Closed),
            (Pending, Open),
            (Pending, Solved),
            (Pending, Closed),
            (Solved, Open),
            (Solved, Closed),
        ];
        for (from, to) in valid {
            let t = ticket_in(&app, from).await;
            assert_eq!(t.state, from as i32);
            app.clock.advance(MINUTE);
            let moved = set_state(&app, &t.name, to)
                .await
                .unwrap_or_else(|e| panic!("{from:?} -> {to:?}: {e:?}"));
            assert_eq!(moved.state, to as i32, "{from:?} -> {to:?}");
            let now = app.clock.now_micros();
            match to {
                Solved => assert_eq!(micros(&moved.solve_time), now),
                Open => assert!(moved.solve_time.is_none(), "reopened: not solved"),
                Closed => {
                    assert_eq!(micros(&moved.close_time), now, "retention counts from here");
                    assert!(moved.solve_time.is_some());
                }
                _ => {}
            }
            if to != Closed {
                assert!(moved.close_time.is_none());
            }
            let sla = moved.sla.unwrap();
            assert_eq!(sla.paused, to == Pending, "{from:?} -> {to:?}");
            assert_eq!(get(&app, &t.name).await.state, to as i32);
        }

        // A requester's message reopens a solved or pending ticket; an
        // agent's or a note does not.
        for from in [Solved, Pending] {
            let t = ticket_in(&app, from).await;
            add(&app, &t.name, ticket_message::Kind::InternalNote, "Note")
                .await
                .unwrap();
            add(
                &app,
                &t.name,
                ticket_message::Kind::AgentReply,
                "Anything else?",
            )
            .await
            .unwrap();
            assert_eq!(get(&app, &t.name).await.state, from as i32, "{from:?}");
            add(
                &app,
                &t.name,
                ticket_message::Kind::Requester,
                "Yes, one thing",
            )
            .await
            .unwrap();
            let reopened = get(&app, &t.name).await;
            assert_eq!(reopened.state, Open as i32, "{from:?}");
            assert!(reopened.solve_time.is_none() && !reopened.sla.unwrap().paused);
        }

        let invalid = [
            (Solved, Pending),
            (Solved, New),
            (Open, New),
            (Pending, New),
            (Closed, Open),
            (Closed, Pending),
            (Closed, Solved),
            (Closed, New),
            (Closed, Closed),
        ];
        for (from, to) in invalid {
            let t = ticket_in(&app, from).await;
            let before = snapshot(&app).await;
            app.clock.advance(MINUTE);
            let err = set_state(&app, &t.name, to).await.unwrap_err();
            assert_eq!(
                err.code(),
                Code::FailedPrecondition,
                "{from:?} -> {to:?}: {err:?}"
            );
            assert_eq!(snapshot(&app).await, before, "{from:?} -> {to:?}");
            assert_eq!(get(&app, &t.name).await.state, from as i32);
        }
        app.stop().await.unwrap();
    }
);

storage_test!(
    a_closed_ticket_takes_no_update_and_no_message,
    |app: TestApp| async move {
        let t = open(&app, web_ticket("", "Help", "ann@example.com"), "Hello").await;
        set_state(&app, &t.name, State::Closed).await.unwrap();
        let before = snapshot(&app).await;
        for (patch, paths) in [
            (
                Ticket {
                    assignee: "ops:bob".into(),
                    ..Default::default()
                },
                vec!["assignee"],
            ),
            (
                Ticket {
                    priority: Priority::Urgent as i32,
                    ..Default::default()
                },
                vec!["priority"],
            ),
            (
                Ticket {
                    subject: "Reopened?".into(),
                    ..Default::default()
                },
                vec!["subject"],
            ),
            (
                Ticket {
                    requester: ann("new@example.com"),
                    ..Default::default()
                },
                vec!["requester"],
            ),
        ] {
            let err = update(
                &app,
                Ticket {
                    name: t.name.clone(),
                    ..patch
                },
                &paths,
            )
            .await
            .unwrap_err();
            assert_eq!(err.code(), Code::FailedPrecondition, "{paths:?}");
        }
        for kind in [
            ticket_message::Kind::Requester,
            ticket_message::Kind::AgentReply,
            ticket_message::Kind::InternalNote,
        ] {
            let err = add(&app, &t.name, kind, "One more thing")
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::FailedPrecondition, "{kind:?}");
        }
        assert_eq!(snapshot(&app).await, before);
        assert_eq!(thread(&app, &t.name).await.len(), 1);
        app.stop().await.unwrap();
    }
);

// --- bad input ---------------------------------------------------------------

storage_test!(
    bad_input_is_refused_and_nothing_stored,
    |app: TestApp| async move {
        fixtures::tenant(&app, "acme").await;
        fixtures::tenant(&app, "globex").await;
        let globex_user = ann_user(&app, "globex", "ann@example.com").await;
        let missing_user = format!("tenants/acme/users/{}", uuid::Uuid::now_v7());
        let ok = || web_ticket("acme", "Cannot log in", "ann@example.com");
        let cases: Vec<(Ticket, String, &str)> = vec![
            (
                Ticket {
                    requester: ann("not an email"),
                    ..ok()
                },
                String::new(),
                "ticket.requester.email",
            ),
            (
                Ticket {
                    requester: Some(Requester {
                        person_name: fixtures::name("Ann", "Archer"),
                        phone: "12345".into(),
                        ..Default::default()
                    }),
                    ..ok()
                },
                String::new(),
                "ticket.requester.phone",
            ),
            (
                Ticket {
                    channel: Channel::Unspecified as i32,
                    ..ok()
                },
                String::new(),
                "ticket.channel",
            ),
            (
                Ticket {
                    kind: Kind::Unspecified as i32,
                    ..ok()
                },
                String::new(),
                "ticket.kind",
            ),
            (
                Ticket {
                    channel: 42,
                    ..ok()
                },
                String::new(),
                "ticket.channel",
            ),
            (
                Ticket {
                    priority: 9,
                    ..ok()
                },
                String::new(),
                "ticket.priority",
            ),
            (
                Ticket {
                    requester: None,
                    ..ok()
                },
                String::new(),
                "ticket.requester.person_name",
            ),
            (
                Ticket {
                    requester: Some(Requester {
                        email: "ann@example.com".into(),
                        ..Default::default()
                    }),
                    ..ok()
                },
                String::new(),
                "ticket.requester.person_name",
            ),
            (
                Ticket {
                    requester: Some(Requester {
                        person_name: fixtures::name("Ann", ""),
                        ..Default::default()
                    }),
                    ..ok()
                },
                String::new(),
                "ticket.requester.email",
            ),
            (
                Ticket {
                    requester: Some(Requester {
                        user: globex_user.clone(),
                        ..Default::default()
                    }),
                    ..ok()
                },
                String::new(),
                "ticket.requester.user",
            ),
            (
                Ticket {
                    requester: Some(Requester {
                        user: missing_user.clone(),
                        ..Default::default()
                    }),
                    ..ok()
                },
                String::new(),
                "ticket.requester.user",
            ),
            (
                Ticket {
                    requester: Some(Requester {
                        user: "tenants/acme/users/ann".into(),
                        ..Default::default()
                    }),
                    ..ok()
                },
                String::new(),
                "ticket.requester.user",
            ),
            (
                Ticket {
                    tenant: "tenants/initech".into(),
                    ..ok()
                },
                String::new(),
                "ticket.tenant",
            ),
            (
                Ticket {
                    tenant: "acme".into(),
                    ..ok()
                },
                String::new(),
                "ticket.tenant",
            ),
            (
                Ticket {
                    category: "log in!".into(),
                    ..ok()
                },
                String::new(),
                "ticket.category",
            ),
            (
                Ticket {
                    subject: "x".repeat(301),
                    ..ok()
                },
                String::new(),
                "ticket.subject",
            ),
            (
                Ticket {
                    subject: "two\nlines".into(),
                    ..ok()
                },
                String::new(),
                "ticket.subject",
            ),
            (ok(), "nul \u{0} in the text".into(), "description"),
            // Sensitive data, wherever it is sent.
            (
                Ticket {
                    subject: format!("My card {CARD} was charged twice"),
                    ..ok()
                },
                String::new(),
                "ticket.subject",
            ),
            (
                ok(),
                format!("Please refund to card {CARD}, thanks"),
                "description",
            ),
            (ok(), format!("My IBAN is {IBAN}"), "description"),
            (
                Ticket {
                    requester: Some(Requester {
                        person_name: fixtures::name(CARD, "Archer"),
                        email: "ann@example.com".into(),
                        ..Default::default()
                    }),
                    ..ok()
                },
                String::new(),
                "ticket.requester.person_name.given_name",
            ),
            (
                Ticket {
                    requester: Some(Requester {
                        postal_address: Some(custodian_proto::common::v1::PostalAddress {
                            address_lines: vec![format!("Card {CARD}")],
                            ..fixtures::address("DE").unwrap()
                        }),
                        ..ann("ann@example.com").unwrap()
                    }),
                    ..ok()
                },
                String::new(),
                "ticket.requester.postal_address.address_lines",
            ),
            (
                Ticket {
                    assignee: format!("ops {CARD}"),
                    ..ok()
                },
                String::new(),
                "ticket.assignee",
            ),
        ];
        let before = snapshot(&app).await;
        for (ticket, description, field) in cases {
            let err = app
                .tickets()
                .create_ticket(create_request(ticket, description))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
            assert!(
                has_violation(&err, field),
                "{field}: {:?}",
                violations(&err)
            );
            assert_no_card(&err);
            assert_eq!(snapshot(&app).await, before, "{field}: nothing stored");
        }
        assert_eq!(app.count("tickets_tickets").await, 0);
        assert_eq!(app.count("tickets_messages").await, 0);
        assert_eq!(tickets_keys(&app).await, 0);

        // Several problems are reported together.
        let err = app
            .tickets()
            .create_ticket(create_request(
                Ticket {
                    channel: 0,
                    kind: 0,
                    requester: None,
                    ..ok()
                },
                "",
            ))
            .await
            .unwrap_err();
        let fields: Vec<String> = violations(&err).into_iter().map(|(f, _)| f).collect();
        for field in [
            "ticket.channel",
            "ticket.kind",
            "ticket.requester.person_name",
            "ticket.requester.email",
        ] {
            assert!(fields.iter().any(|f| f == field), "{field}: {fields:?}");
        }

        // Messages: required values, sensitive data, names of the wrong form.
        let t = open(&app, ok(), "").await;
        let before = snapshot(&app).await;
        let message_cases: Vec<(String, TicketMessage, &str, Code)> = vec![
            (
                t.name.clone(),
                TicketMessage {
                    body: "Hello".into(),
                    ..Default::default()
                },
                "message.kind",
                Code::InvalidArgument,
            ),
            (
                t.name.clone(),
                TicketMessage {
                    kind: ticket_message::Kind::AgentReply as i32,
                    ..Default::default()
                },
                "message.body",
                Code::InvalidArgument,
            ),
            (
                t.name.clone(),
                TicketMessage {
                    kind: ticket_message::Kind::AgentReply as i32,
                    body: format!("We refunded card {CARD}."),
                    ..Default::default()
                },
                "message.body",
                Code::InvalidArgument,
            ),
            (
                t.name.clone(),
                TicketMessage {
                    kind: ticket_message::Kind::Requester as i32,
                    body: format!("Use IBAN {IBAN} please"),
                    ..Default::default()
                },
                "message.body",
                Code::InvalidArgument,
            ),
            (
                t.name.clone(),
                TicketMessage {
                    kind: 7,
                    body: "Hello".into(),
                    ..Default::default()
                },
                "message.kind",
                Code::InvalidArgument,
            ),
            (
                "tickets/not-a-uuid".into(),
                TicketMessage {
                    kind: ticket_message::Kind::AgentReply as i32,
                    body: "Hello".into(),
                    ..Default::default()
                },
                "parent",
                Code::InvalidArgument,
            ),
            (
                format!("tickets/{}", uuid::Uuid::now_v7()),
                TicketMessage {
                    kind: ticket_message::Kind::AgentReply as i32,
                    body: "Hello".into(),
                    ..Default::default()
                },
                "",
                Code::NotFound,
            ),
        ];
        for (parent, message, field, code) in message_cases {
            let err = app
                .tickets()
                .add_message(AddMessageRequest {
                    parent,
                    message: Some(message),
                    request_id: String::new(),
                })
                .await
                .unwrap_err();
            assert_eq!(err.code(), code, "{field}: {err:?}");
            if !field.is_empty() {
                assert!(
                    has_violation(&err, field),
                    "{field}: {:?}",
                    violations(&err)
                );
            }
            assert_no_card(&err);
        }
        assert_eq!(snapshot(&app).await, before);

        // Names of the wrong form never reach a handler.
        for name in [
            "tickets/not-a-uuid",
            "tickets/ann@example.com",
            "tenants/acme/tickets/0190f3c4-5b6a-7c8d-9e0f-1a2b3c4d5e6f",
            "",
        ] {
            let err = app
                .tickets()
                .get_ticket(GetTicketRequest { name: name.into() })
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{name}");
            assert!(!err.message().contains("ann@"), "not echoed");
            let err = app
                .tickets()
                .delete_ticket(DeleteTicketRequest { name: name.into() })
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{name}");
        }
        let err = app
            .tickets()
            .get_message(GetMessageRequest {
                name: t.name.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "a ticket is no message");
        assert_eq!(snapshot(&app).await, before);
        app.stop().await.unwrap();
    }
);

// --- tenants ---------------------------------------------------------------

storage_test!(
    a_token_of_another_tenant_sees_and_changes_nothing,
    |app: TestApp| async move {
        fixtures::tenant(&app, "acme").await;
        fixtures::tenant(&app, "globex").await;
        let acme = open(
            &app,
            web_ticket("acme", "Cannot log in", "ann@example.com"),
            "Error 42",
        )
        .await;
        let message = thread(&app, &acme.name).await.remove(0);
        let company = open(&app, web_ticket("", "Prices", "ann@example.com"), "").await;
        let before = snapshot(&app).await;

        let globex = app.token(&Purpose::ALL, Some("globex"));
        let mut as_globex = app.tickets_as(Bearer::new(Some(&globex)));
        let not_found = |r: Result<(), Status>, what: &str| {
            assert_eq!(r.expect_err(what).code(), Code::NotFound, "{what}");
        };
        for name in [&acme.name, &company.name] {
            not_found(
                as_globex
                    .get_ticket(GetTicketRequest { name: name.clone() })
                    .await
                    .map(drop),
                "GetTicket",
            );
            not_found(
                as_globex
                    .update_ticket(UpdateTicketRequest {
                        ticket: Some(Ticket {
                            name: name.clone(),
                            assignee: "ops:mallory".into(),
                            ..Default::default()
                        }),
                        update_mask: mask(&["assignee"]),
                    })
                    .await
                    .map(drop),
                "UpdateTicket",
            );
            not_found(
                as_globex
                    .delete_ticket(DeleteTicketRequest { name: name.clone() })
                    .await
                    .map(drop),
                "DeleteTicket",
            );
            not_found(
                as_globex
                    .add_message(AddMessageRequest {
                        parent: name.clone(),
                        message: Some(TicketMessage {
                            kind: ticket_message::Kind::AgentReply as i32,
                            body: "Hi".into(),
                            ..Default::default()
                        }),
                        request_id: String::new(),
                    })
                    .await
                    .map(drop),
                "AddMessage",
            );
            not_found(
                as_globex
                    .list_messages(ListMessagesRequest {
                        parent: name.clone(),
                        ..Default::default()
                    })
                    .await
                    .map(drop),
                "ListMessages",
            );
        }
        not_found(
            as_globex
                .get_message(GetMessageRequest {
                    name: message.name.clone(),
                })
                .await
                .map(drop),
            "GetMessage",
        );
        // Another tenant's is exactly like a missing one.
        let missing_name = format!("tickets/{}", uuid::Uuid::now_v7());
        let missing = as_globex
            .get_ticket(GetTicketRequest {
                name: missing_name.clone(),
            })
            .await
            .unwrap_err();
        let hidden = as_globex
            .get_ticket(GetTicketRequest {
                name: acme.name.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            (hidden.code(), hidden.message().replace(&acme.name, "X")),
            (
                missing.code(),
                missing.message().replace(&missing_name, "X")
            ),
            "the same answer"
        );

        // Lists show nothing of acme's, whatever the filter.
        for request in [
            ListTicketsRequest::default(),
            ListTicketsRequest {
                tenant: "tenants/acme".into(),
                ..Default::default()
            },
            ListTicketsRequest {
                category: "login".into(),
                ..Default::default()
            },
        ] {
            let listed = as_globex
                .list_tickets(request)
                .await
                .unwrap()
                .into_inner()
                .tickets;
            assert!(listed.is_empty(), "{listed:?}");
        }
        let listed = as_globex
            .list_requester_tickets(ListRequesterTicketsRequest {
                requester: Some(by_email("ann@example.com")),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .tickets;
        assert!(listed.is_empty());

        // No ticket for acme, nor for the company.
        let err = as_globex
            .create_ticket(create_request(
                web_ticket("acme", "Hi", "eve@example.com"),
                "",
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        // Mail is the company's: not for a tenant's token.
        let err = as_globex
            .ingest_email(IngestEmailRequest {
                raw_message: mail(
                    "eve@example.com",
                    "eve-1@mail.example.com",
                    &format!("Re: [Ticket#{}]", acme.name.trim_start_matches("tickets/")),
                    "Let me in",
                ),
                tenant: "tenants/acme".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert_eq!(snapshot(&app).await, before, "nothing of acme's changed");

        // Its own tenant works as usual: an empty tenant means its own.
        let own = as_globex
            .create_ticket(create_request(
                web_ticket("", "Hello", "gil@example.com"),
                "Hi",
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(own.tenant, "tenants/globex");
        let listed = as_globex
            .list_tickets(ListTicketsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .tickets;
        assert_eq!(
            listed.iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
            one(&own.name)
        );
        as_globex
            .get_ticket(GetTicketRequest { name: own.name })
            .await
            .unwrap();

        // The attempts on acme's ticket are in the audit trail.
        let events = app
            .audit()
            .list_audit_events(ListAuditEventsRequest {
                resource: acme.name.clone(),
                page_size: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .events;
        let misses = events
            .iter()
            .filter(|e| e.outcome == AuditOutcome::NotFound as i32 && e.caller == "test:caller")
            .count();
        assert!(misses >= 6, "{events:?}");
        app.stop().await.unwrap();
    }
);

// --- SLA -------------------------------------------------------------------

storage_test!(sla_targets_follow_the_priority, |app: TestApp| async move {
    for (priority, first, resolution) in [
        (Priority::Urgent, HOUR, 4 * HOUR),
        (Priority::High, 4 * HOUR, 24 * HOUR),
        (Priority::Normal, 8 * HOUR, 72 * HOUR),
        (Priority::Low, 24 * HOUR, 7 * DAY),
        (Priority::Unspecified, 8 * HOUR, 72 * HOUR),
    ] {
        let t = open(
            &app,
            Ticket {
                priority: priority as i32,
                ..web_ticket("", "Help", "ann@example.com")
            },
            "",
        )
        .await;
        let created = micros(&t.create_time);
        assert_eq!(created, app.clock.now_micros());
        let sla = t.sla.unwrap();
        assert_eq!(
            micros(&sla.first_response_due) - created,
            us(first),
            "{priority:?}"
        );
        assert_eq!(
            micros(&sla.resolution_due) - created,
            us(resolution),
            "{priority:?}"
        );
        assert!(!sla.first_response_breached && !sla.resolution_breached && !sla.paused);
        assert!(sla.first_response_time.is_none() && sla.pause_time.is_none());
    }
    app.stop().await.unwrap();
});

/// `storage_test!` for a server with a tweaked configuration.
macro_rules! configured_test {
    ($name:ident, $tweak:expr, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn run(backend: Backend) {
                if let Some(app) = custodian_tests::spawn_with(backend, $tweak).await {
                    ($body)(app).await;
                }
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
    };
}

configured_test!(
    sla_targets_come_from_the_ticket_sla_setting,
    |config: &mut custodian_runtime::Config| {
        config.ticket_sla = Some("urgent=30m/2h, low=2d/14d".into());
    },
    |app: TestApp| async move {
        for (priority, first, resolution) in [
            (Priority::Urgent, 30 * MINUTE, 2 * HOUR),
            (Priority::Low, 2 * DAY, 14 * DAY),
            // Not named: the default.
            (Priority::Normal, 8 * HOUR, 72 * HOUR),
            (Priority::High, 4 * HOUR, 24 * HOUR),
        ] {
            let t = open(
                &app,
                Ticket {
                    priority: priority as i32,
                    ..web_ticket("", "Help", "ann@example.com")
                },
                "",
            )
            .await;
            let created = micros(&t.create_time);
            let sla = t.sla.unwrap();
            assert_eq!(
                micros(&sla.first_response_due) - created,
                us(first),
                "{priority:?}"
            );
            assert_eq!(
                micros(&sla.resolution_due) - created,
                us(resolution),
                "{priority:?}"
            );
        }
        // 31 minutes without a reply breaks the urgent target.
        let urgent = open(
            &app,
            Ticket {
                priority: Priority::Urgent as i32,
                ..web_ticket("", "Down", "ann@example.com")
            },
            "",
        )
        .await;
        app.clock.advance(31 * MINUTE);
        assert!(
            get(&app, &urgent.name)
                .await
                .sla
                .unwrap()
                .first_response_breached
        );
        app.stop().await.unwrap();
    }
);

async fn breached(app: &TestApp) -> Vec<String> {
    list_names(
        app,
        ListTicketsRequest {
            sla_breached: true,
            ..Default::default()
        },
    )
    .await
}

storage_test!(
    the_first_agent_reply_stops_the_first_response_clock,
    |app: TestApp| async move {
        let urgent = |subject: &str| Ticket {
            priority: Priority::Urgent as i32,
            ..web_ticket("", subject, "ann@example.com")
        };
        let answered = open(&app, urgent("Down"), "All down").await;
        let late = open(&app, urgent("Also down"), "").await;
        let t0 = micros(&answered.create_time);

        // Notes and the requester's own messages are no reply.
        app.clock.advance(10 * MINUTE);
        add(
            &app,
            &answered.name,
            ticket_message::Kind::InternalNote,
            "Looking",
        )
        .await
        .unwrap();
        add(
            &app,
            &answered.name,
            ticket_message::Kind::Requester,
            "Still down",
        )
        .await
        .unwrap();
        let t = get(&app, &answered.name).await;
        assert!(t.sla.unwrap().first_response_time.is_none());
        assert_eq!(t.state, State::New as i32);

        app.clock.advance(20 * MINUTE);
        add(
            &app,
            &answered.name,
            ticket_message::Kind::AgentReply,
            "On it",
        )
        .await
        .unwrap();
        let t = get(&app, &answered.name).await;
        assert_eq!(t.state, State::Open as i32, "a reply opens a new ticket");
        assert_eq!(
            micros(&t.sla.unwrap().first_response_time),
            t0 + us(30 * MINUTE)
        );

        // Two hours on: the answered ticket met its target, the other did not.
        app.clock.advance(2 * HOUR);
        add(
            &app,
            &answered.name,
            ticket_message::Kind::AgentReply,
            "Fixed?",
        )
        .await
        .unwrap();
        let sla = get(&app, &answered.name).await.sla.unwrap();
        assert_eq!(
            micros(&sla.first_response_time),
            t0 + us(30 * MINUTE),
            "a later reply does not move it"
        );
        assert!(!sla.first_response_breached);
        let sla = get(&app, &late.name).await.sla.unwrap();
        assert!(sla.first_response_breached && !sla.resolution_breached);
        assert_eq!(breached(&app).await, one(&late.name));

        // A late reply stays late.
        add(&app, &late.name, ticket_message::Kind::AgentReply, "Sorry")
            .await
            .unwrap();
        assert!(
            get(&app, &late.name)
                .await
                .sla
                .unwrap()
                .first_response_breached
        );
        assert_eq!(breached(&app).await, one(&late.name));
        app.stop().await.unwrap();
    }
);

storage_test!(
    pending_pauses_the_resolution_clock,
    |app: TestApp| async move {
        // Normal: first reply in 8h, solved in 72h.
        let t = open(&app, web_ticket("", "Help", "ann@example.com"), "").await;
        let t0 = micros(&t.create_time);
        app.clock.advance(HOUR);
        add(
            &app,
            &t.name,
            ticket_message::Kind::AgentReply,
            "Which browser?",
        )
        .await
        .unwrap();
        let pending = set_state(&app, &t.name, State::Pending).await.unwrap();
        let sla = pending.sla.unwrap();
        assert!(sla.paused);
        assert_eq!(micros(&sla.pause_time), t0 + us(HOUR));

        // A hundred hours waiting for the requester: no breach.
        app.clock.advance(100 * HOUR);
        let sla = get(&app, &t.name).await.sla.unwrap();
        assert!(sla.paused && !sla.resolution_breached && !sla.first_response_breached);
        assert_eq!(micros(&sla.resolution_due), t0 + us(72 * HOUR));
        assert!(breached(&app).await.is_empty());

        // The requester answers: the clock runs again, 100 hours later.
        add(&app, &t.name, ticket_message::Kind::Requester, "Firefox")
            .await
            .unwrap();
        let reopened = get(&app, &t.name).await;
        assert_eq!(reopened.state, State::Open as i32, "a reply reopens");
        let sla = reopened.sla.unwrap();
        assert!(!sla.paused && sla.pause_time.is_none());
        assert_eq!(micros(&sla.resolution_due), t0 + us(172 * HOUR));
        assert!(!sla.resolution_breached);

        app.clock.advance(70 * HOUR);
        assert!(!get(&app, &t.name).await.sla.unwrap().resolution_breached);
        assert!(breached(&app).await.is_empty());
        app.clock.advance(2 * HOUR);
        let sla = get(&app, &t.name).await.sla.unwrap();
        assert!(sla.resolution_breached && !sla.first_response_breached);
        assert_eq!(breached(&app).await, one(&t.name));

        // Solved late is late for good; solved in time is not.
        set_state(&app, &t.name, State::Solved).await.unwrap();
        app.clock.advance(DAY);
        assert!(get(&app, &t.name).await.sla.unwrap().resolution_breached);
        assert_eq!(breached(&app).await, one(&t.name));
        let quick = open(&app, web_ticket("", "Quick", "ann@example.com"), "").await;
        add(&app, &quick.name, ticket_message::Kind::AgentReply, "Done")
            .await
            .unwrap();
        set_state(&app, &quick.name, State::Solved).await.unwrap();
        app.clock.advance(30 * DAY);
        let sla = get(&app, &quick.name).await.sla.unwrap();
        assert!(!sla.resolution_breached && !sla.first_response_breached);
        assert_eq!(breached(&app).await, one(&t.name));

        // Pending from new pauses too; closing resumes and keeps the result.
        let waiting = open(&app, web_ticket("", "Waiting", "ann@example.com"), "").await;
        let w0 = micros(&waiting.create_time);
        add(
            &app,
            &waiting.name,
            ticket_message::Kind::AgentReply,
            "Need info",
        )
        .await
        .unwrap();
        set_state(&app, &waiting.name, State::Pending)
            .await
            .unwrap();
        app.clock.advance(10 * DAY);
        let closed = set_state(&app, &waiting.name, State::Closed).await.unwrap();
        let sla = closed.sla.unwrap();
        assert_eq!(micros(&sla.resolution_due), w0 + us(72 * HOUR + 10 * DAY));
        assert!(!sla.resolution_breached && !sla.paused);
        app.stop().await.unwrap();
    }
);

storage_test!(
    a_priority_change_moves_the_targets,
    |app: TestApp| async move {
        // Low: 24h / 7d. Pending for five hours, then urgent (1h / 4h).
        let t = open(
            &app,
            Ticket {
                priority: Priority::Low as i32,
                ..web_ticket("", "Slow", "ann@example.com")
            },
            "",
        )
        .await;
        let t0 = micros(&t.create_time);
        set_state(&app, &t.name, State::Pending).await.unwrap();
        app.clock.advance(5 * HOUR);
        set_state(&app, &t.name, State::Open).await.unwrap();
        assert!(breached(&app).await.is_empty());

        let urgent = set_priority(&app, &t.name, Priority::Urgent).await;
        let sla = urgent.sla.unwrap();
        assert_eq!(micros(&sla.first_response_due), t0 + us(HOUR));
        assert_eq!(
            micros(&sla.resolution_due),
            t0 + us(4 * HOUR + 5 * HOUR),
            "the paused hours are kept"
        );
        assert!(sla.first_response_breached, "no reply in the first hour");
        assert!(!sla.resolution_breached);
        assert_eq!(breached(&app).await, one(&t.name));

        // Back to high: 4h / 24h.
        let high = set_priority(&app, &t.name, Priority::High).await;
        let sla = high.sla.unwrap();
        assert_eq!(micros(&sla.first_response_due), t0 + us(4 * HOUR));
        assert_eq!(micros(&sla.resolution_due), t0 + us(29 * HOUR));
        assert!(sla.first_response_breached);
        let low = set_priority(&app, &t.name, Priority::Low).await;
        let sla = low.sla.unwrap();
        assert_eq!(micros(&sla.first_response_due), t0 + us(24 * HOUR));
        assert_eq!(micros(&sla.resolution_due), t0 + us(7 * DAY + 5 * HOUR));
        assert!(!sla.first_response_breached && !sla.resolution_breached);
        assert!(breached(&app).await.is_empty());
        app.stop().await.unwrap();
    }
);

// --- data-subject rights -------------------------------------------------------

fn string_field(data: &prost_types::Struct, key: &str) -> String {
    match data.fields.get(key).and_then(|v| v.kind.clone()) {
        Some(ValueKind::StringValue(s)) => s,
        other => panic!("{key}: {other:?}"),
    }
}

fn struct_field(data: &prost_types::Struct, key: &str) -> prost_types::Struct {
    match data.fields.get(key).and_then(|v| v.kind.clone()) {
        Some(ValueKind::StructValue(s)) => s,
        other => panic!("{key}: {other:?}"),
    }
}

storage_test!(
    subject_rights_across_identity_and_tickets,
    |app: TestApp| async move {
        fixtures::tenant(&app, "acme").await;
        fixtures::tenant(&app, "globex").await;
        // Ann is an authorized user of acme, a contact of globex, and asked
        // support twice: as acme's user, and as herself. Bob asked once.
        let user = ann_user(&app, "acme", "ann@example.com").await;
        let mut contact = fixtures::contact("ann@example.com");
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
            .into_inner()
            .name;
        let as_user = open(
            &app,
            Ticket {
                requester: Some(Requester {
                    user: user.clone(),
                    ..Default::default()
                }),
                ..web_ticket("acme", "Cannot log in", "")
            },
            "Error 42 since Monday",
        )
        .await;
        add(
            &app,
            &as_user.name,
            ticket_message::Kind::AgentReply,
            "Clear cookies",
        )
        .await
        .unwrap();
        let as_herself = open(
            &app,
            Ticket {
                kind: Kind::Inquiry as i32,
                category: "privacy".into(),
                ..web_ticket("", "What do you keep about me?", "ann@example.com")
            },
            "Please tell me.",
        )
        .await;
        let bob = open(
            &app,
            web_ticket("acme", "Invoice", "bob@example.com"),
            "Where?",
        )
        .await;
        let ann_records = {
            let mut names = vec![as_user.name.clone(), as_herself.name.clone()];
            names.extend(
                thread(&app, &as_user.name)
                    .await
                    .into_iter()
                    .map(|m| m.name),
            );
            names.extend(
                thread(&app, &as_herself.name)
                    .await
                    .into_iter()
                    .map(|m| m.name),
            );
            names.sort();
            names
        };
        assert_eq!(ann_records.len(), 5);

        // Locate, through each service.
        let located = app
            .subjects_of("identity")
            .locate_subject_data(LocateSubjectDataRequest {
                subject: email_subject("Ann@Example.com"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .records;
        let mut names: Vec<_> = located.iter().map(|r| r.resource.clone()).collect();
        names.sort();
        let mut expected = vec![user.clone(), contact.clone()];
        expected.sort();
        assert_eq!(names, expected, "identity holds the user and the contact");

        let mut tickets_subjects = app.subjects_of("tickets");
        let located = tickets_subjects
            .locate_subject_data(LocateSubjectDataRequest {
                subject: email_subject("Ann@Example.com"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .records;
        let mut names: Vec<_> = located.iter().map(|r| r.resource.clone()).collect();
        names.sort();
        assert_eq!(
            names, ann_records,
            "tickets holds both tickets and their threads"
        );
        for record in &located {
            assert_eq!(record.service, "custodian.tickets.v1.TicketService");
            assert_eq!(record.data_category, DataCategory::SupportRequest as i32);
            let controller = record.controller.as_ref().unwrap().kind.clone().unwrap();
            if record.resource.starts_with(&as_user.name) {
                assert_eq!(controller, controller::Kind::Tenant("tenants/acme".into()));
            } else {
                assert_eq!(controller, controller::Kind::Company(true));
            }
        }
        // By the user's name: the tickets that name her as the requester.
        let by_user = tickets_subjects
            .locate_subject_data(LocateSubjectDataRequest {
                subject: id_subject(&user),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .records;
        assert_eq!(by_user.len(), 3, "{by_user:?}");
        assert!(
            by_user
                .iter()
                .all(|r| r.resource.starts_with(&as_user.name))
        );

        // Export: the tickets and their messages, as structured data.
        let mut stream = tickets_subjects
            .export_subject_data(ExportSubjectDataRequest {
                subject: email_subject("ann@example.com"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut exported = Vec::new();
        while let Some(item) = stream.next().await {
            exported.push(item.unwrap());
        }
        assert_eq!(exported.len(), 5);
        let of = |name: &str| {
            exported
                .iter()
                .find(|e| e.record.as_ref().unwrap().resource == name)
                .unwrap_or_else(|| panic!("{name} exported"))
                .data
                .clone()
                .unwrap()
        };
        let data = of(&as_herself.name);
        assert_eq!(string_field(&data, "subject"), "What do you keep about me?");
        assert_eq!(string_field(&data, "channel"), "CHANNEL_WEB_FORM");
        assert_eq!(string_field(&data, "category"), "privacy");
        let requester = struct_field(&data, "requester");
        assert_eq!(string_field(&requester, "email"), "ann@example.com");
        assert_eq!(
            string_field(&struct_field(&requester, "person_name"), "given_name"),
            "Ann"
        );
        let data = of(&as_user.name);
        assert_eq!(
            string_field(&struct_field(&data, "requester"), "user"),
            user
        );
        let bodies: Vec<String> = exported
            .iter()
            .filter(|e| e.record.as_ref().unwrap().resource.contains("/messages/"))
            .map(|e| string_field(e.data.as_ref().unwrap(), "body"))
            .collect();
        for body in ["Error 42 since Monday", "Clear cookies", "Please tell me."] {
            assert!(bodies.iter().any(|b| b == body), "{body}: {bodies:?}");
        }
        assert!(exported.iter().all(|e| e.create_time.is_some()));

        // Rectify: all or nothing.
        let correct = |resource: &str, field_path: &str, value: &str| FieldCorrection {
            resource: resource.into(),
            field_path: field_path.into(),
            value: value.into(),
        };
        let before = snapshot(&app).await;
        for corrections in [
            vec![correct("", "requester.email", "not-an-email")],
            vec![
                correct("", "requester.email", "ann.archer@example.com"),
                correct(&as_herself.name, "requester.person_name.family_name", CARD),
            ],
            vec![
                correct("", "requester.email", "ann.archer@example.com"),
                correct(&as_herself.name, "subject", "two\nlines"),
            ],
        ] {
            let err = tickets_subjects
                .rectify_subject_data(RectifySubjectDataRequest {
                    subject: email_subject("ann@example.com"),
                    corrections,
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
            assert_no_card(&err);
        }
        assert_eq!(snapshot(&app).await, before, "a bad value changes nothing");
        let rectified = tickets_subjects
            .rectify_subject_data(RectifySubjectDataRequest {
                subject: email_subject("ann@example.com"),
                corrections: vec![correct("", "requester.email", "Ann.Archer@Example.com")],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .rectified;
        let mut names: Vec<_> = rectified.into_iter().map(|r| r.resource).collect();
        names.sort();
        let mut expected = vec![as_user.name.clone(), as_herself.name.clone()];
        expected.sort();
        assert_eq!(names, expected);
        assert_eq!(
            history(&app, None, by_email("ann.archer@example.com"))
                .await
                .unwrap(),
            [as_user.name.clone(), as_herself.name.clone()],
            "the requester is found by the new email"
        );
        assert!(
            history(&app, None, by_email("ann@example.com"))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            thread(&app, &as_user.name).await.len(),
            2,
            "the thread reads under the new key"
        );
        assert_eq!(tickets_keys(&app).await, 2, "Ann's key and Bob's");

        // Erase in tickets: the person and her messages go, the skeleton stays.
        let erased = tickets_subjects
            .erase_subject_data(EraseSubjectDataRequest {
                subject: email_subject("ann.archer@example.com"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .erased;
        let mut erased_names: Vec<_> = erased.iter().map(|r| r.resource.clone()).collect();
        erased_names.sort();
        assert_eq!(erased_names, ann_records);
        assert_eq!(app.count("tickets_tickets").await, 3, "skeletons stay");
        assert_eq!(app.count("tickets_messages").await, 1, "only Bob's");
        assert_eq!(tickets_keys(&app).await, 1, "Ann's key is destroyed");
        let skeleton = get(&app, &as_herself.name).await;
        assert!(skeleton.requester.is_none(), "{skeleton:?}");
        assert!(skeleton.subject.is_empty());
        assert_eq!(skeleton.channel, Channel::WebForm as i32);
        assert_eq!(skeleton.kind, Kind::Inquiry as i32);
        assert_eq!(skeleton.category, "privacy");
        assert_eq!(skeleton.state, as_herself.state);
        assert_eq!(skeleton.create_time, as_herself.create_time);
        assert!(skeleton.sla.is_some());
        let skeleton = get(&app, &as_user.name).await;
        assert!(skeleton.requester.is_none());
        assert_eq!(skeleton.state, State::Open as i32);
        assert_eq!(skeleton.tenant, "tenants/acme");
        assert!(thread(&app, &as_user.name).await.is_empty());
        let rows = sqlx::query(
            "SELECT subject_id, data, email_key, user_key FROM tickets_tickets WHERE id <> $1",
        )
        .bind(bob.name.trim_start_matches("tickets/"))
        .fetch_all(&app.raw)
        .await
        .unwrap();
        assert_eq!(rows.len(), 2);
        for row in rows {
            assert_eq!(row.get::<String, _>("subject_id"), "");
            assert_eq!(row.get::<String, _>("data"), "");
            assert!(row.get::<Option<String>, _>("email_key").is_none());
            assert!(row.get::<Option<String>, _>("user_key").is_none());
        }
        // Nothing finds her in tickets any more; identity still has her.
        for subject in [
            email_subject("ann.archer@example.com"),
            email_subject("ann@example.com"),
            id_subject(&user),
        ] {
            let located = tickets_subjects
                .locate_subject_data(LocateSubjectDataRequest {
                    subject,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .records;
            assert!(located.is_empty(), "{located:?}");
        }
        assert_eq!(
            app.subjects_of("identity")
                .locate_subject_data(LocateSubjectDataRequest {
                    subject: email_subject("ann@example.com"),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .records
                .len(),
            2
        );
        // Erasing again succeeds and erases nothing.
        let again = tickets_subjects
            .erase_subject_data(EraseSubjectDataRequest {
                subject: email_subject("ann.archer@example.com"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .erased;
        assert!(again.is_empty());
        assert_eq!(app.count("tickets_tickets").await, 3);
        assert_eq!(
            get(&app, &bob.name).await.requester.unwrap().email,
            "bob@example.com",
            "Bob's ticket is untouched"
        );
        assert_eq!(thread(&app, &bob.name).await.len(), 1);

        // Each record has its events in tickets' trail.
        let trail: Vec<_> = app
            .audit_events()
            .await
            .into_iter()
            .filter(|e| e.service == "tickets")
            .collect();
        for record in &ann_records {
            for action in [AuditAction::Locate, AuditAction::Export, AuditAction::Erase] {
                assert!(
                    trail
                        .iter()
                        .any(|e| e.resource == *record && e.action == action as i32),
                    "{record}: no {action:?} event"
                );
            }
        }
        for record in [&as_user.name, &as_herself.name] {
            assert!(
                trail
                    .iter()
                    .any(|e| e.resource == *record && e.action == AuditAction::Rectify as i32),
                "{record}: no rectify event"
            );
        }
        assert!(
            !format!("{trail:?}").contains("ann@"),
            "no email in the trail"
        );
        app.stop().await.unwrap();
    }
);

// --- retention ---------------------------------------------------------------

async fn sweep(app: &TestApp, service: Option<&str>) -> i64 {
    let bearer = Bearer::new(Some(&app.root_token));
    let bearer = match service {
        Some(s) => bearer.with_service(s),
        None => bearer,
    };
    app.retention_as(bearer)
        .sweep_expired(SweepExpiredRequest {})
        .await
        .expect("sweep")
        .into_inner()
        .deleted
        .into_iter()
        .filter(|c| c.service == "tickets")
        .inspect(|c| assert_eq!(c.data_category, DataCategory::SupportRequest as i32))
        .map(|c| c.deleted)
        .sum()
}

async fn exists(app: &TestApp, name: &str) -> bool {
    match app
        .tickets()
        .get_ticket(GetTicketRequest { name: name.into() })
        .await
    {
        Ok(_) => true,
        Err(e) if e.code() == Code::NotFound => false,
        Err(e) => panic!("{e:?}"),
    }
}

async fn set_retention(app: &TestApp, tenant: &str, days: i64) {
    app.tenants()
        .update_tenant(UpdateTenantRequest {
            tenant: Some(Tenant {
                name: format!("tenants/{tenant}"),
                retention_rules: vec![RetentionRule {
                    data_category: DataCategory::SupportRequest as i32,
                    retain_for: Some(prost_types::Duration {
                        seconds: days * 86400,
                        nanos: 0,
                    }),
                }],
                ..Default::default()
            }),
            update_mask: mask(&["retention_rules"]),
        })
        .await
        .expect("retention rule");
}

async fn hold(app: &TestApp, target: legal_hold::Target) -> String {
    app.retention()
        .create_legal_hold(CreateLegalHoldRequest {
            legal_hold: Some(LegalHold {
                target: Some(target),
                reason: "case 12".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("legal hold")
        .into_inner()
        .name
}

storage_test!(
    closed_tickets_expire_after_24_months_unless_held,
    |app: TestApp| async move {
        for tenant in ["acme", "globex", "umbrella", "initech"] {
            fixtures::tenant(&app, tenant).await;
        }
        // acme keeps support requests 30 days, umbrella three years; the
        // others keep the default, 24 months after closing.
        set_retention(&app, "acme", 30).await;
        set_retention(&app, "umbrella", 3 * 365).await;
        let closed = |tenant: &'static str, email: &'static str| {
            let app = &app;
            async move {
                let t = open(app, web_ticket(tenant, "Help", email), "Details").await;
                add(app, &t.name, ticket_message::Kind::AgentReply, "Done")
                    .await
                    .unwrap();
                set_state(app, &t.name, State::Closed).await.unwrap()
            }
        };
        let acme_closed = closed("acme", "a1@example.com").await;
        let acme_open = open(&app, web_ticket("acme", "Open", "a2@example.com"), "Hi").await;
        let globex_closed = closed("globex", "g1@example.com").await;
        let globex_held = closed("globex", "held@example.com").await;
        let umbrella_closed = closed("umbrella", "u1@example.com").await;
        let initech_closed = closed("initech", "i1@example.com").await;
        let company_closed = closed("", "c1@example.com").await;
        let company_solved = open(&app, web_ticket("", "Solved", "c2@example.com"), "").await;
        set_state(&app, &company_solved.name, State::Solved)
            .await
            .unwrap();
        assert_eq!(app.count("tickets_tickets").await, 8);

        // Day 29: nothing has expired.
        app.clock.advance(29 * DAY);
        assert_eq!(sweep(&app, Some("tickets")).await, 0);

        // Holds on initech and on held@example.com.
        let tenant_hold = hold(&app, legal_hold::Target::Tenant("tenants/initech".into())).await;
        let subject_hold = hold(
            &app,
            legal_hold::Target::Subject(SubjectIdentifier {
                kind: Some(subject_identifier::Kind::Email("HELD@example.com".into())),
            }),
        )
        .await;

        // Day 31: acme's own 30 days are up for its closed ticket only.
        app.clock.advance(2 * DAY);
        assert_eq!(sweep(&app, Some("tickets")).await, 1);
        assert!(!exists(&app, &acme_closed.name).await);
        assert!(exists(&app, &acme_open.name).await, "open: never swept");
        assert_eq!(app.count("tickets_tickets").await, 7);

        // 25 months: the default is up; held ones, umbrella's three years,
        // open and solved ones stay. Swept without naming a service.
        app.clock.advance(25 * 30 * DAY);
        assert_eq!(sweep(&app, None).await, 2);
        for (t, kept) in [
            (&globex_closed, false),
            (&company_closed, false),
            (&globex_held, true),
            (&initech_closed, true),
            (&umbrella_closed, true),
            (&acme_open, true),
            (&company_solved, true),
        ] {
            assert_eq!(exists(&app, &t.name).await, kept, "{}", t.subject);
        }

        // Holds lifted: the held ones go.
        for name in [tenant_hold, subject_hold] {
            app.retention()
                .delete_legal_hold(DeleteLegalHoldRequest { name })
                .await
                .unwrap();
        }
        assert_eq!(sweep(&app, Some("tickets")).await, 2);
        assert!(!exists(&app, &globex_held.name).await);
        assert!(!exists(&app, &initech_closed.name).await);

        // Past three years: umbrella's too. Open and solved tickets stay.
        app.clock.advance(365 * DAY);
        assert_eq!(sweep(&app, Some("tickets")).await, 1);
        assert!(!exists(&app, &umbrella_closed.name).await);
        assert_eq!(app.count("tickets_tickets").await, 2);
        // The messages of swept tickets went with them, and their keys.
        let left: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM tickets_messages m WHERE NOT EXISTS \
             (SELECT 1 FROM tickets_tickets t WHERE t.id = m.parent_id)",
        )
        .fetch_one(&app.raw)
        .await
        .unwrap()
        .get("n");
        assert_eq!(left, 0);
        assert_eq!(
            app.count("tickets_messages").await,
            1,
            "acme's open ticket's"
        );
        assert_eq!(tickets_keys(&app).await, 2);

        // Each sweep that deleted something is audited, as counts.
        let sweeps: Vec<_> = app
            .audit_events()
            .await
            .into_iter()
            .filter(|e| e.service == "tickets" && e.action == AuditAction::Sweep as i32)
            .collect();
        assert_eq!(sweeps.len(), 4, "{sweeps:?}");
        assert_eq!(sweeps[0].detail, "support_request=1");
        app.stop().await.unwrap();
    }
);
