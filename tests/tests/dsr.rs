//! Data-subject requests end to end, on SQLite and PostgreSQL: the dsr
//! service in the all-in-one process with identity, tickets, analytics and
//! feedback, reached by it over real gRPC through the subject contract.
//! Intake and verification by a code read from the mail (a real SMTP server,
//! aiosmtpd, in the verification test; the outbox folder elsewhere), the
//! fan-out to every service, the export bundle, rectification and erasure
//! of every copy, routing to the customer that controls the data and its
//! instruction, deadlines by jurisdiction on the manual clock, cancellation,
//! and the audit trail of every step.
//!
//! The orchestrator runs in the background: a test waits for a state by
//! polling GetRequest (with a timeout), never by sleeping a fixed time.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use custodian_mail::testing::Aiosmtpd;
use custodian_privacy::Purpose;
use custodian_proto::{
    analytics::v1::{
        CollectUsageEventsRequest, UsageEvent, collector_service_client::CollectorServiceClient,
    },
    audit::v1::{AuditAction, AuditEvent, ListAuditEventsRequest},
    common::v1::{SubjectIdentifier, subject_identifier},
    dsr::v1::{
        AcknowledgeInboxItemRequest, Agent, CancelRequestRequest, CreateRequestRequest,
        DownloadExportRequest, ExtendRequestRequest, GetInboxItemRequest, GetRequestRequest,
        InboxItem, InstructInboxItemRequest, Jurisdiction, ListInboxItemsRequest,
        ListOverdueTenantsRequest, ListRequestsRequest, Request, Requester,
        ResendVerificationCodeRequest, VerifyRequestRequest,
        inbox_item::{Instruction, State as ItemState},
        request::{Kind, State},
        tenant_routing::Decision,
    },
    feedback::v1::{CreateFeedbackRequest, Feedback, FeedbackAuthor, GetFeedbackRequest},
    identity::v1::{
        CreateEvaluationSignupRequest, CreateMonitoringGrantRequest, CreateUserRequest,
        EvaluationSignup, GetEvaluationSignupRequest, GetUserRequest, MonitoringGrant, User,
        monitoring_grant_service_client::MonitoringGrantServiceClient,
    },
    subject::v1::{FieldCorrection, LocateSubjectDataRequest},
    tickets::v1::{
        CreateTicketRequest, GetTicketRequest, Requester as TicketRequester, Ticket,
        ticket::{Channel, Kind as TicketKind},
    },
};
use custodian_runtime::time::{Clock as _, to_timestamp};
use custodian_tests::{
    Authed, Backend, Bearer, TestApp, fixtures, spawn, spawn_with, storage_test, violations,
};
use serde_json::Value;
use sqlx::Row as _;
use tokio_stream::StreamExt as _;
use tonic::{Code, Status};

const MINUTE: Duration = Duration::from_secs(60);
const DAY_MICROS: i64 = 86_400_000_000;
/// How long a test waits for the orchestrator or a mail.
const PATIENCE: Duration = Duration::from_secs(20);
/// A Visa test number (Luhn-valid), as people type it.
const CARD: &str = "4111 1111 1111 1111";
/// The four services a request reaches.
const SERVICES: [&str; 4] = ["identity", "tickets", "analytics", "feedback"];

// --- requests ------------------------------------------------------------

fn requester(email: &str, given: &str, family: &str) -> Option<Requester> {
    Some(Requester {
        person_name: fixtures::name(given, family),
        email: email.into(),
        phone: String::new(),
    })
}

fn dsr(kind: Kind, jurisdiction: Jurisdiction, email: &str) -> Request {
    Request {
        kind: kind as i32,
        jurisdiction: jurisdiction as i32,
        requester: requester(email, "Zora", "Quenby"),
        ..Default::default()
    }
}

fn id_of(name: &str) -> &str {
    name.strip_prefix("requests/").expect("a request name")
}

async fn create(app: &TestApp, request: Request) -> Result<Request, Status> {
    app.dsr_requests()
        .create_request(CreateRequestRequest {
            request: Some(request),
            request_id: String::new(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The request, as a client that honours `UNAVAILABLE` (with its
/// RetryInfo) reads it: on SQLite, a read may wait out the orchestrator's
/// writes and be told to come back.
async fn get(app: &TestApp, name: &str) -> Request {
    let until = Instant::now() + PATIENCE;
    loop {
        match app
            .dsr_requests()
            .get_request(GetRequestRequest { name: name.into() })
            .await
        {
            Ok(found) => return found.into_inner(),
            Err(status) if status.code() == Code::Unavailable && Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => panic!("get request: {status:?}"),
        }
    }
}

async fn verify(app: &TestApp, name: &str, code: &str) -> Result<Request, Status> {
    app.dsr_requests()
        .verify_request(VerifyRequestRequest {
            name: name.into(),
            code: code.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn resend(app: &TestApp, name: &str) -> Result<Request, Status> {
    app.dsr_requests()
        .resend_verification_code(ResendVerificationCodeRequest { name: name.into() })
        .await
        .map(tonic::Response::into_inner)
}

async fn extend(app: &TestApp, name: &str, reason: &str) -> Result<Request, Status> {
    app.dsr_requests()
        .extend_request(ExtendRequestRequest {
            name: name.into(),
            reason: reason.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn cancel(app: &TestApp, name: &str, reason: &str) -> Result<Request, Status> {
    app.dsr_requests()
        .cancel_request(CancelRequestRequest {
            name: name.into(),
            reason: reason.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn list(app: &TestApp, filter: ListRequestsRequest) -> Vec<String> {
    let mut names: Vec<String> = app
        .dsr_requests()
        .list_requests(ListRequestsRequest {
            page_size: 1000,
            ..filter
        })
        .await
        .expect("list requests")
        .into_inner()
        .requests
        .into_iter()
        .map(|r| r.name)
        .collect();
    names.sort();
    names
}

fn state_of(request: &Request) -> State {
    State::try_from(request.state).unwrap_or_default()
}

fn micros(ts: &Option<prost_types::Timestamp>) -> i64 {
    let ts = ts.expect("a timestamp");
    ts.seconds * 1_000_000 + i64::from(ts.nanos) / 1000
}

/// The kinds of the request's history, in order.
fn history(request: &Request) -> Vec<String> {
    request.history.iter().map(|e| e.kind.clone()).collect()
}

/// Polls GetRequest until the request is in `state`; fails after
/// [`PATIENCE`] or when it settles in another final state.
/// Waits for the company's own part of a request to be done.
async fn company_part(app: &TestApp, name: &str) -> Request {
    let until = Instant::now() + PATIENCE;
    loop {
        let request = get(app, name).await;
        if request.company_part_time.is_some() {
            return request;
        }
        assert!(
            Instant::now() < until,
            "the company's part of {name} was not done: {request:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for(app: &TestApp, name: &str, state: State) -> Request {
    let until = Instant::now() + PATIENCE;
    loop {
        let request = get(app, name).await;
        let now = state_of(&request);
        if now == state {
            return request;
        }
        let settled = matches!(now, State::Completed | State::Cancelled);
        assert!(
            !settled && Instant::now() < until,
            "{name} is {now:?}, not {state:?}; history: {:?}",
            request.history
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A request that ended without a failed step.
/// Waits until the request's history says the notice `what` was mailed.
async fn wait_mailed(app: &TestApp, name: &str, what: &str) {
    let until = Instant::now() + PATIENCE;
    loop {
        let request = get(app, name).await;
        if request
            .history
            .iter()
            .any(|e| e.kind == "mailed" && e.target == what)
        {
            return;
        }
        assert!(
            Instant::now() < until,
            "{name}: no {what} notice mailed: {:?}",
            history(&request)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_no_failure(request: &Request) {
    let failed: Vec<_> = request
        .history
        .iter()
        .filter(|e| e.kind == "failed")
        .collect();
    assert!(failed.is_empty(), "failed steps: {failed:?}");
}

// --- mail ----------------------------------------------------------------

/// One mail the suite sent.
#[derive(Debug, Clone)]
struct Mail {
    raw: Vec<u8>,
    /// The To header, lower case.
    to: String,
    subject: String,
    text: String,
}

impl Mail {
    /// The whole mail as text, headers included.
    fn raw_text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }

    fn parse(raw: Vec<u8>) -> Self {
        let parsed = custodian_mail::parse_inbound(&raw).expect("a mail");
        let text = String::from_utf8_lossy(&raw).replace("\r\n", "\n");
        let head = &text[..text.find("\n\n").expect("a header section")];
        let to = head
            .replace("\n ", " ")
            .replace("\n\t", " ")
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("to"))
            .map(|(_, v)| v.trim().to_ascii_lowercase())
            .expect("a To header");
        Self {
            to,
            subject: parsed.subject,
            text: parsed.text,
            raw,
        }
    }

    fn is_to(&self, email: &str) -> bool {
        self.to
            .contains(&format!("<{}>", email.to_ascii_lowercase()))
    }

    /// The verification code in it: a line of eight digits.
    fn code(&self) -> Option<String> {
        self.text
            .lines()
            .map(str::trim)
            .find(|l| l.len() == 8 && l.bytes().all(|b| b.is_ascii_digit()))
            .map(str::to_owned)
    }
}

/// Where the suite's mail goes: the outbox folder, or a real SMTP server.
enum Mails<'a> {
    Outbox(PathBuf),
    Smtp(&'a Aiosmtpd),
}

impl Mails<'_> {
    fn outbox(app: &TestApp) -> Mails<'static> {
        Mails::Outbox(app.db.dir().join("outbox"))
    }

    fn all(&self) -> Vec<Mail> {
        let raws = match self {
            Mails::Smtp(server) => server.delivered(),
            Mails::Outbox(dir) => {
                let Ok(entries) = fs::read_dir(dir) else {
                    return Vec::new();
                };
                let mut paths: Vec<PathBuf> = entries
                    .map(|e| e.expect("outbox entry").path())
                    .filter(|p| p.extension().is_some_and(|e| e == "eml"))
                    .collect();
                paths.sort();
                paths
                    .iter()
                    .map(|p| fs::read(p).expect("outbox file"))
                    .collect()
            }
        };
        raws.into_iter().map(Mail::parse).collect()
    }

    fn to(&self, email: &str) -> Vec<Mail> {
        self.all().into_iter().filter(|m| m.is_to(email)).collect()
    }

    /// The mails to `email` about `request` whose subject contains `what`.
    fn about(&self, email: &str, request: &str, what: &str) -> Vec<Mail> {
        self.to(email)
            .into_iter()
            .filter(|m| m.subject.contains(id_of(request)) && m.subject.contains(what))
            .collect()
    }

    /// Waits for the one mail to `email` about `request` whose subject
    /// contains `what` (the orchestrator sends notices in the background).
    async fn wait(&self, email: &str, request: &str, what: &str) -> Mail {
        let until = Instant::now() + PATIENCE;
        loop {
            let found = self.about(email, request, what);
            match found.as_slice() {
                [one] => return one.clone(),
                [] if Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ => panic!(
                    "expected one mail \"{what}\" about {request}, found {}: {:?}",
                    found.len(),
                    self.to(email)
                        .iter()
                        .map(|m| &m.subject)
                        .collect::<Vec<_>>()
                ),
            }
        }
    }

    /// The code of the acknowledgement of `request`.
    fn first_code(&self, email: &str, request: &str) -> String {
        let mails = self.about(email, request, "please confirm");
        assert_eq!(mails.len(), 1, "one acknowledgement to the requester");
        mails[0].code().expect("a code in the acknowledgement")
    }
}

/// Creates `request`, reads its code from the mail and verifies it.
async fn submit(app: &TestApp, mails: &Mails<'_>, request: Request) -> Request {
    let email = request.requester.as_ref().unwrap().email.clone();
    let created = create(app, request).await.expect("create request");
    assert_eq!(state_of(&created), State::AwaitingVerification);
    let code = mails.first_code(&email, &created.name);
    let verified = verify(app, &created.name, &code).await.expect("verify");
    assert_eq!(state_of(&verified), State::InProgress);
    verified
}

// --- the person's data in the four services -------------------------------

/// Zora's records: an authorized user of acme (held for acme), her usage
/// events there (held for acme, found through the user), an evaluation
/// sign-up, a support ticket and feedback (the company's own).
struct Person {
    email: String,
    user: String,
    signup: String,
    ticket: String,
    feedback: String,
}

/// Tenants acme and globex; acme has an admin and lets us monitor usage.
async fn tenants(app: &TestApp) {
    fixtures::tenant(app, "acme").await;
    fixtures::tenant(app, "globex").await;
    let admin = app
        .users()
        .create_user(CreateUserRequest {
            parent: "tenants/acme".into(),
            user: Some(fixtures::user("admin@acme.example")),
            request_id: String::new(),
        })
        .await
        .expect("admin")
        .into_inner()
        .name;
    MonitoringGrantServiceClient::with_interceptor(
        app.channel.clone(),
        Bearer::new(Some(&app.root_token)),
    )
    .create_monitoring_grant(CreateMonitoringGrantRequest {
        parent: "tenants/acme".into(),
        monitoring_grant: Some(MonitoringGrant {
            scopes: vec![custodian_analytics::USAGE_SCOPE.into()],
            expire_time: Some(to_timestamp(app.clock.now_micros() + 30 * DAY_MICROS)),
            granted_by: admin,
            reason: "defect 1234".into(),
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .expect("monitoring grant");
}

async fn person(app: &TestApp, email: &str, given: &str, family: &str) -> Person {
    let user = app
        .users()
        .create_user(CreateUserRequest {
            parent: "tenants/acme".into(),
            user: Some(User {
                person_name: fixtures::name(given, family),
                email: email.into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("user")
        .into_inner()
        .name;
    let signup = app
        .signups()
        .create_evaluation_signup(CreateEvaluationSignupRequest {
            evaluation_signup: Some(EvaluationSignup {
                person_name: fixtures::name(given, family),
                email: email.into(),
                company: "Quenby Freight".into(),
                nature_of_business: "freight forwarding".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("signup")
        .into_inner()
        .name;
    let ticket = app
        .tickets()
        .create_ticket(CreateTicketRequest {
            ticket: Some(Ticket {
                channel: Channel::WebForm as i32,
                kind: TicketKind::Troubleshooting as i32,
                category: "login".into(),
                subject: "Cannot log in".into(),
                requester: Some(TicketRequester {
                    person_name: fixtures::name(given, family),
                    email: email.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            description: "Error 42 on the login page".into(),
            request_id: String::new(),
        })
        .await
        .expect("ticket")
        .into_inner()
        .name;
    let feedback = app
        .feedback()
        .create_feedback(CreateFeedbackRequest {
            feedback: Some(Feedback {
                author: Some(FeedbackAuthor {
                    person_name: fixtures::name(given, family),
                    email: email.into(),
                    company: "Quenby Freight".into(),
                    ..Default::default()
                }),
                rating: 4,
                text: "Support answered within the hour.".into(),
                source: "interview".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("feedback")
        .into_inner()
        .name;
    let usage = |action: &str| UsageEvent {
        tenant: "tenants/acme".into(),
        user: user.clone(),
        action: action.into(),
        path: "/workflows/42".into(),
        ..Default::default()
    };
    let accepted = CollectorServiceClient::with_interceptor(
        app.channel.clone(),
        Bearer::new(Some(&app.root_token)),
    )
    .collect_usage_events(CollectUsageEventsRequest {
        events: vec![usage("workflow_run"), usage("report_export")],
    })
    .await
    .expect("usage")
    .into_inner()
    .accepted;
    assert_eq!(accepted, 2, "inside acme's monitoring grant");
    Person {
        email: email.into(),
        user,
        signup,
        ticket,
        feedback,
    }
}

fn email_subject(email: &str) -> Option<SubjectIdentifier> {
    Some(SubjectIdentifier {
        kind: Some(subject_identifier::Kind::Email(email.into())),
    })
}

fn id_subject(name: &str) -> Option<SubjectIdentifier> {
    Some(SubjectIdentifier {
        kind: Some(subject_identifier::Kind::Id(name.into())),
    })
}

/// What `service` finds of a subject, by the root caller.
async fn located(app: &TestApp, service: &str, subject: Option<SubjectIdentifier>) -> Vec<String> {
    let mut names: Vec<String> = app
        .subjects_of(service)
        .locate_subject_data(LocateSubjectDataRequest {
            subject,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("locate in {service}: {e}"))
        .into_inner()
        .records
        .into_iter()
        .map(|r| r.resource)
        .collect();
    names.sort();
    names
}

// --- the tenant's inbox -----------------------------------------------------

/// An inbox client of a caller limited to `tenant`.
fn inbox_of(
    app: &TestApp,
    tenant: &str,
) -> custodian_proto::dsr::v1::tenant_inbox_service_client::TenantInboxServiceClient<Authed> {
    app.dsr_inbox_as(Bearer::new(Some(
        &app.token(&[Purpose::DsrFulfilment], Some(tenant)),
    )))
}

/// The item of `request` in `tenant`'s inbox, as that tenant lists it.
async fn item_of(app: &TestApp, tenant: &str, request: &str) -> InboxItem {
    let items = inbox_of(app, tenant)
        .list_inbox_items(ListInboxItemsRequest {
            parent: format!("tenants/{tenant}"),
            ..Default::default()
        })
        .await
        .expect("list inbox")
        .into_inner()
        .items;
    let mine: Vec<InboxItem> = items.into_iter().filter(|i| i.request == request).collect();
    assert_eq!(mine.len(), 1, "one item of {request} in {tenant}'s inbox");
    mine.into_iter().next().unwrap()
}

async fn instruct(
    app: &TestApp,
    tenant: &str,
    item: &str,
    instruction: Instruction,
    reason: &str,
) -> Result<InboxItem, Status> {
    inbox_of(app, tenant)
        .instruct_inbox_item(InstructInboxItemRequest {
            name: item.into(),
            instruction: instruction as i32,
            reason: reason.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn get_item(app: &TestApp, item: &str) -> InboxItem {
    app.dsr_inbox()
        .get_inbox_item(GetInboxItemRequest { name: item.into() })
        .await
        .expect("get inbox item")
        .into_inner()
}

// --- export, audit, raw storage ----------------------------------------------

/// The export bundle of a request: its chunks joined, parsed.
async fn download(app: &TestApp, name: &str) -> Result<Value, Status> {
    let mut stream = app
        .dsr_requests()
        .download_export(DownloadExportRequest { name: name.into() })
        .await?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend(chunk?.data);
    }
    Ok(serde_json::from_slice(&bytes).expect("the bundle is one JSON document"))
}

/// The bundle's records: (service short name, resource, controller, record).
fn bundle_records(bundle: &Value) -> Vec<(String, String, Value, Value)> {
    let records = bundle["records"].as_array().expect("records");
    assert_eq!(
        bundle["record_count"].as_u64(),
        Some(records.len() as u64),
        "record_count counts the records"
    );
    records
        .iter()
        .map(|r| {
            let reference = &r["record"];
            let service = reference["service"]
                .as_str()
                .expect("record.service")
                .split('.')
                .nth(1)
                .expect("custodian.{service}.v1.X")
                .to_owned();
            let resource = reference["resource"]
                .as_str()
                .expect("record.resource")
                .to_owned();
            let controller = reference["controller"].clone();
            assert!(
                controller.get("company") == Some(&Value::Bool(true))
                    || controller.get("tenant").is_some_and(Value::is_string),
                "{resource}: record.controller is the company or a tenant: {controller}"
            );
            let category = reference["data_category"]
                .as_str()
                .unwrap_or_else(|| panic!("{resource}: record.data_category"));
            assert!(
                category.starts_with("DATA_CATEGORY_") && category != "DATA_CATEGORY_UNSPECIFIED",
                "{resource}: {category}"
            );
            (service, resource, controller, r.clone())
        })
        .collect()
}

/// The whole audit trail, page by page.
async fn audit_trail(app: &TestApp) -> Vec<AuditEvent> {
    let mut events = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = app
            .audit()
            .list_audit_events(ListAuditEventsRequest {
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .expect("audit trail")
            .into_inner();
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            return events;
        }
        page_token = page.next_page_token;
    }
}

/// Every byte the database holds, as text: every file of the test's folder
/// (the SQLite files with their WAL, the mail outbox, the erasure log), or
/// every text column of every table on PostgreSQL.
async fn stored_text(app: &TestApp, backend: Backend) -> String {
    match backend {
        Backend::Sqlite => {
            fn walk(dir: &Path, out: &mut Vec<u8>, files: &mut Vec<String>) {
                for entry in fs::read_dir(dir).expect("test folder") {
                    let path = entry.expect("entry").path();
                    if path.is_dir() {
                        walk(&path, out, files);
                    } else {
                        files.push(path.display().to_string());
                        out.extend(fs::read(&path).unwrap_or_default());
                    }
                }
            }
            let mut bytes = Vec::new();
            let mut files = Vec::new();
            walk(app.db.dir(), &mut bytes, &mut files);
            assert!(
                files.iter().any(|f| f.ends_with("test.db")),
                "the database file is read: {files:?}"
            );
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Backend::Postgres => {
            let columns = sqlx::query(
                "SELECT CAST(c.table_name AS TEXT) AS t, CAST(c.column_name AS TEXT) AS c, \
                 CAST(c.data_type AS TEXT) AS d FROM information_schema.columns c \
                 JOIN information_schema.tables t ON t.table_schema = c.table_schema \
                 AND t.table_name = c.table_name \
                 WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE' \
                 ORDER BY c.table_name, c.ordinal_position",
            )
            .fetch_all(&app.raw)
            .await
            .expect("columns");
            let mut text = String::new();
            let mut tables = BTreeSet::new();
            for row in columns {
                let (table, column, kind): (String, String, String) =
                    (row.get("t"), row.get("c"), row.get("d"));
                tables.insert(table.clone());
                let expr = match kind.as_str() {
                    "text" | "character varying" | "character" | "json" | "jsonb" => {
                        format!("CAST(\"{column}\" AS TEXT)")
                    }
                    "bytea" => format!("encode(\"{column}\", 'escape')"),
                    _ => continue,
                };
                let values = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {expr} AS v FROM \"{table}\" WHERE \"{column}\" IS NOT NULL"
                )))
                .fetch_all(&app.raw)
                .await
                .expect("values");
                for value in values {
                    text.push_str(&value.get::<String, _>("v"));
                    text.push('\n');
                }
            }
            for table in ["dsr_requests", "identity_users", "tickets_tickets"] {
                assert!(tables.contains(table), "{table} in {tables:?}");
            }
            text
        }
    }
}

// --- 1. intake and verification ------------------------------------------------

/// Bad requests are refused, each with a field violation, and nothing is
/// stored or mailed.
async fn bad_requests_are_refused(app: &TestApp, mails: &Mails<'_>) {
    let good = || dsr(Kind::Access, Jurisdiction::Gdpr, "zed@example.com");
    let cases: Vec<(&str, Request, &str)> = vec![
        (
            "no email",
            Request {
                requester: requester("", "Zed", "Quenby"),
                ..good()
            },
            "request.requester.email",
        ),
        (
            "no requester",
            Request {
                requester: None,
                ..good()
            },
            "request.requester.email",
        ),
        (
            "not an email",
            Request {
                requester: requester("zed.example.com", "Zed", "Quenby"),
                ..good()
            },
            "request.requester.email",
        ),
        (
            "no kind",
            Request {
                kind: Kind::Unspecified as i32,
                ..good()
            },
            "request.kind",
        ),
        (
            "no jurisdiction",
            Request {
                jurisdiction: Jurisdiction::Unspecified as i32,
                ..good()
            },
            "request.jurisdiction",
        ),
        (
            "corrections on an access request",
            Request {
                corrections: vec![FieldCorrection {
                    resource: String::new(),
                    field_path: "person_name.family_name".into(),
                    value: "Quenby-Smith".into(),
                }],
                ..good()
            },
            "request.corrections",
        ),
        (
            "a rectification without corrections",
            Request {
                kind: Kind::Rectification as i32,
                ..good()
            },
            "request.corrections",
        ),
        (
            "a card number in the details",
            Request {
                kind: Kind::Objection as i32,
                details: format!("Stop charging my card {CARD} for marketing"),
                ..good()
            },
            "request.details",
        ),
    ];
    for (what, request, field) in cases {
        let err = create(app, request).await.expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        let fields = violations(&err);
        assert!(
            fields.iter().any(|(f, _)| f == field),
            "{what}: a violation on {field}: {fields:?}"
        );
        assert!(
            !err.message().contains("4111") && !format!("{fields:?}").contains("4111"),
            "{what}: the card number is not echoed"
        );
    }
    assert_eq!(app.count("dsr_requests").await, 0, "nothing stored");
    assert_eq!(app.count("dsr_events").await, 0);
    assert_eq!(app.count("dsr_codes").await, 0);
    assert!(mails.all().is_empty(), "nothing mailed");
}

async fn verification_test(backend: Backend) {
    let Some(server) = Aiosmtpd::start() else {
        return;
    };
    let url = server.url();
    let Some(app) = spawn_with(backend, |config| {
        config.smtp_url = Some(url);
    })
    .await
    else {
        return;
    };
    let mails = Mails::Smtp(&server);
    let zed = "zed@example.com";
    // Zed signed up for an evaluation: there is something to locate.
    app.signups()
        .create_evaluation_signup(CreateEvaluationSignupRequest {
            evaluation_signup: Some(fixtures::signup(zed)),
            request_id: String::new(),
        })
        .await
        .expect("signup");

    bad_requests_are_refused(&app, &mails).await;

    // A: received, acknowledged, its code mailed over SMTP to Zed only.
    let a = create(&app, dsr(Kind::Access, Jurisdiction::Gdpr, zed))
        .await
        .expect("create A");
    assert!(a.name.starts_with("requests/"), "{}", a.name);
    assert_eq!(state_of(&a), State::AwaitingVerification);
    assert!(a.receive_time.is_some() && a.acknowledge_time.is_some() && a.due_time.is_some());
    assert!(a.verify_time.is_none());
    assert!(
        a.agent.as_ref().is_none_or(|g| !g.submitted_by_agent),
        "no agent"
    );
    assert_eq!(history(&a), ["received", "acknowledged"]);
    let code_a = mails.first_code(zed, &a.name);
    assert_eq!(mails.all().len(), 1);
    // B: an erasure, whose code will expire.
    let b = create(&app, dsr(Kind::Erasure, Jurisdiction::Gdpr, zed))
        .await
        .expect("create B");
    let code_b = mails.first_code(zed, &b.name);

    // C: submitted by an authorized agent for Yul. Yul gets the code; the
    // agent a copy without it.
    let yul = "yul@example.com";
    let agent_email = "casework@lex-partners.example";
    let c = create(
        &app,
        Request {
            requester: requester(yul, "Yul", "Brandt"),
            agent: Some(Agent {
                display_name: "Lex & Partners".into(),
                email: agent_email.into(),
                submitted_by_agent: false,
            }),
            ..dsr(Kind::Access, Jurisdiction::Ccpa, yul)
        },
    )
    .await
    .expect("create C");
    let agent = c.agent.clone().expect("the agent");
    assert!(agent.submitted_by_agent);
    assert_eq!(agent.email, agent_email);
    let code_c = mails.first_code(yul, &c.name);
    assert!(
        mails.first_code(yul, &c.name).len() == 8,
        "an eight-digit code"
    );
    assert!(
        mails.about(yul, &c.name, "please confirm")[0]
            .text
            .contains("authorized agent")
    );
    let to_agent = mails.to(agent_email);
    assert_eq!(to_agent.len(), 1, "the agent's copy");
    assert!(to_agent[0].subject.contains(id_of(&c.name)));
    assert_eq!(to_agent[0].code(), None, "no code for the agent");
    assert!(!to_agent[0].text.contains(&code_c));
    assert!(!String::from_utf8_lossy(&to_agent[0].raw).contains(&code_c));
    assert!(
        !to_agent[0].is_to(yul),
        "the agent's copy goes to the agent only"
    );

    // A wrong code: INVALID_ARGUMENT on `code`, with the attempts left.
    let wrong = |code: &str| {
        let mut other = format!("{:08}", (code.parse::<u64>().unwrap() + 1) % 100_000_000);
        if other == code {
            other = "00000000".into();
        }
        other
    };
    let err = verify(&app, &a.name, &wrong(&code_a)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields = violations(&err);
    assert_eq!(fields.len(), 1, "{fields:?}");
    assert_eq!(fields[0].0, "code");
    assert!(fields[0].1.contains("2 attempts left"), "{fields:?}");
    assert!(!err.message().contains(&code_a), "the code is not echoed");
    let a_now = get(&app, &a.name).await;
    assert_eq!(state_of(&a_now), State::AwaitingVerification);
    assert!(history(&a_now).contains(&"verification_failed".to_owned()));

    // Three wrong codes spend C's code: the right one no longer works.
    for left in [2, 1, 0] {
        let err = verify(&app, &c.name, &wrong(&code_c)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            violations(&err)[0]
                .1
                .contains(&format!("{left} attempts left")),
            "{:?}",
            violations(&err)
        );
    }
    let err = verify(&app, &c.name, &code_c).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(
        state_of(&get(&app, &c.name).await),
        State::AwaitingVerification
    );

    // A new code within a minute of the last: RESOURCE_EXHAUSTED, no mail.
    let sent = mails.all().len();
    let err = resend(&app, &c.name).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(mails.all().len(), sent);
    // A minute later: a new code; the old one no longer works.
    app.clock.advance(MINUTE + Duration::from_secs(1));
    let resent = resend(&app, &c.name).await.expect("resend");
    assert_eq!(state_of(&resent), State::AwaitingVerification);
    let fresh = mails.about(yul, &c.name, "new code");
    assert_eq!(fresh.len(), 1, "the new code is mailed to Yul");
    let new_code_c = fresh[0].code().expect("a new code");
    assert_ne!(new_code_c, code_c);
    assert!(
        mails.about(agent_email, &c.name, "new code").is_empty(),
        "a code never goes to the agent"
    );

    // Nothing was located for any request before its verification.
    for name in [&a.name, &b.name, &c.name] {
        let request = get(&app, name).await;
        assert!(
            !history(&request).contains(&"located".to_owned()),
            "{name}: {:?}",
            history(&request)
        );
        assert_eq!(request.records_found, 0);
    }
    let locates: Vec<AuditEvent> = audit_trail(&app)
        .await
        .into_iter()
        .filter(|e| e.action == AuditAction::Locate as i32)
        .collect();
    assert!(
        locates.is_empty(),
        "located before verification: {locates:?}"
    );
    let steps: i64 = sqlx::query("SELECT COUNT(*) AS n FROM dsr_steps")
        .fetch_one(&app.raw)
        .await
        .unwrap()
        .get("n");
    assert_eq!(steps, 0, "no step is planned before verification");

    let err = verify(&app, &c.name, &code_c).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "the old code: {err:?}");
    let verified_c = verify(&app, &c.name, &new_code_c).await.expect("new code");
    assert_eq!(state_of(&verified_c), State::InProgress);
    assert!(verified_c.verify_time.is_some());
    // A's right code, after one wrong one.
    let verified_a = verify(&app, &a.name, &code_a).await.expect("A's code");
    assert_eq!(state_of(&verified_a), State::InProgress);
    assert!(history(&verified_a).contains(&"verified".to_owned()));
    // A spent code is spent.
    let err = verify(&app, &a.name, &code_a).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // B's code, sixteen minutes on, has expired.
    app.clock.advance(16 * MINUTE);
    let err = verify(&app, &b.name, &code_b).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let b_now = get(&app, &b.name).await;
    assert_eq!(state_of(&b_now), State::AwaitingVerification);
    assert!(!history(&b_now).contains(&"located".to_owned()));
    // ... and a new one works.
    resend(&app, &b.name).await.expect("a new code for B");
    let new_code_b = mails.about(zed, &b.name, "new code")[0]
        .code()
        .expect("B's new code");
    let verified_b = verify(&app, &b.name, &new_code_b).await.expect("B");
    assert_eq!(state_of(&verified_b), State::InProgress);

    // Once verified, the requests are carried out: A finds Zed's sign-up,
    // C finds nothing of Yul.
    let done_a = wait_for(&app, &a.name, State::Completed).await;
    assert_no_failure(&done_a);
    assert!(history(&done_a).contains(&"located".to_owned()));
    assert_eq!(done_a.records_found, 1);
    let done_c = wait_for(&app, &c.name, State::Completed).await;
    assert_no_failure(&done_c);
    assert_eq!(done_c.records_found, 0);
    wait_for(&app, &b.name, State::Completed).await;
    // Both Yul and the agent are told C is done.
    mails.wait(yul, &c.name, "done").await;
    mails.wait(agent_email, &c.name, "done").await;
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_by_mailed_code_sqlite() {
    verification_test(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_by_mailed_code_postgres() {
    verification_test(Backend::Postgres).await;
}

// --- 2. access ---------------------------------------------------------------

storage_test!(
    access_collects_from_every_service_and_the_tenant_part_after_it_fulfils,
    |app: TestApp| async move {
        let mails = Mails::outbox(&app);
        tenants(&app).await;
        let zora = person(&app, "zora.quenby@example.com", "Zora", "Quenby").await;
        // Someone else, who must not be in Zora's bundle.
        person(&app, "other@example.com", "Otto", "Other").await;

        let request = submit(
            &app,
            &mails,
            dsr(Kind::Access, Jurisdiction::Gdpr, &zora.email),
        )
        .await;
        // The company's part is done; acme holds the rest.
        let waiting = wait_for(&app, &request.name, State::AwaitingTenants).await;
        assert_no_failure(&waiting);
        assert_eq!(waiting.tenants.len(), 1, "{:?}", waiting.tenants);
        let routing = &waiting.tenants[0];
        assert_eq!(routing.tenant, "tenants/acme");
        assert_eq!(routing.decision, Decision::Pending as i32);
        assert_eq!(routing.records, 2, "the user and her usage events");
        assert!(waiting.records_found >= 6, "{}", waiting.records_found);
        let routed = mails
            .wait(&zora.email, &request.name, "held for our customers")
            .await;
        assert!(
            routed.text.contains("Tenant acme (tenants/acme)"),
            "the customer by its name: {}",
            routed.text
        );
        // The company's part does not wait for acme: it can be downloaded
        // now, and says who decides about the rest.
        let part = company_part(&app, &request.name).await;
        assert_eq!(part.tenants[0].display_name, "Tenant acme");
        let early = download(&app, &request.name)
            .await
            .expect("the company's part");
        assert_eq!(early["complete"], false);
        assert_eq!(
            early["customers_still_deciding"],
            serde_json::json!(["Tenant acme (tenants/acme)"])
        );
        let early_records = bundle_records(&early);
        assert!(
            early_records
                .iter()
                .all(|(_, _, c, _)| *c == serde_json::json!({"company": true})),
            "no customer's record before it instructs: {early:#}"
        );
        assert_eq!(
            early_records.len(),
            4,
            "the sign-up, the ticket and its message, the feedback"
        );
        let told = mails
            .wait(&zora.email, &request.name, "the company's part")
            .await;
        assert!(
            told.text.contains("Tenant acme (tenants/acme)"),
            "{}",
            told.text
        );

        let item = item_of(&app, "acme", &request.name).await;
        assert_eq!(item.kind, "access");
        let mut referenced: Vec<String> = item.records.iter().map(|r| r.resource.clone()).collect();
        referenced.sort();
        let mut expected = vec![zora.user.clone(), format!("{}/usageEvents", zora.user)];
        expected.sort();
        assert_eq!(referenced, expected);
        instruct(&app, "acme", &item.name, Instruction::Fulfil, "")
            .await
            .expect("fulfil");
        let done = wait_for(&app, &request.name, State::Completed).await;
        assert_no_failure(&done);
        assert!(done.complete_time.is_some());
        assert!(micros(&done.export_expire_time) > app.clock.now_micros());
        assert_eq!(done.tenants[0].decision, Decision::Fulfil as i32);
        mails.wait(&zora.email, &request.name, "done").await;

        let bundle = download(&app, &request.name).await.expect("the bundle");
        assert_eq!(bundle["complete"], true);
        assert_eq!(bundle["request"], Value::String(request.name.clone()));
        assert_eq!(bundle["kind"], "access");
        assert_eq!(
            bundle["subject"]["email"],
            Value::String(zora.email.clone())
        );
        let records = bundle_records(&bundle);
        let services: BTreeSet<&str> = records.iter().map(|(s, ..)| s.as_str()).collect();
        assert_eq!(
            services,
            BTreeSet::from(SERVICES),
            "records of every service"
        );
        let find = |resource: &str| {
            records
                .iter()
                .find(|(_, r, ..)| r == resource)
                .unwrap_or_else(|| panic!("{resource} in the bundle: {bundle:#}"))
        };
        let company = serde_json::json!({"company": true});
        let acme = serde_json::json!({"tenant": "tenants/acme"});
        for resource in [&zora.signup, &zora.ticket, &zora.feedback] {
            assert_eq!(find(resource).2, company, "{resource}");
        }
        assert_eq!(find(&zora.user).2, acme);
        let usage = find(&format!("{}/usageEvents", zora.user));
        assert_eq!(usage.0, "analytics");
        assert_eq!(usage.2, acme);
        assert_eq!(
            find(&zora.signup).3["data"]["email"],
            Value::String(zora.email.clone())
        );
        assert_eq!(
            find(&zora.user).3["record"]["data_category"],
            "DATA_CATEGORY_AUTHORIZED_USER"
        );
        assert_eq!(find(&zora.ticket).3["data"]["subject"], "Cannot log in");
        let text = bundle.to_string();
        assert!(text.contains("Support answered within the hour."));
        assert!(!text.contains("other@example.com"), "only Zora's records");
        assert!(!text.contains("Otto"));
        // Each record once, though found by email and by user name.
        let names: BTreeSet<&str> = records.iter().map(|(_, r, ..)| r.as_str()).collect();
        assert_eq!(names.len(), records.len());

        // A second access request that acme declines: the bundle holds the
        // company's records only.
        let second = submit(
            &app,
            &mails,
            dsr(Kind::Access, Jurisdiction::Gdpr, &zora.email),
        )
        .await;
        wait_for(&app, &second.name, State::AwaitingTenants).await;
        let item = item_of(&app, "acme", &second.name).await;
        instruct(
            &app,
            "acme",
            &item.name,
            Instruction::Decline,
            "Zora left acme; ask our DPO",
        )
        .await
        .expect("decline");
        let done = wait_for(&app, &second.name, State::Completed).await;
        assert_no_failure(&done);
        let bundle = download(&app, &second.name).await.expect("bundle");
        let records = bundle_records(&bundle);
        assert!(
            records.iter().all(|(_, _, c, _)| *c == company),
            "no tenant's record without its instruction: {bundle:#}"
        );
        let services: BTreeSet<&str> = records.iter().map(|(s, ..)| s.as_str()).collect();
        assert_eq!(
            services,
            BTreeSet::from(["identity", "tickets", "feedback"])
        );
        // An erasure request has no bundle.
        let erasure = create(&app, dsr(Kind::Erasure, Jurisdiction::Gdpr, &zora.email))
            .await
            .unwrap();
        let err = download(&app, &erasure.name).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
    }
);

// --- 3. rectification ----------------------------------------------------------

/// Zora's corrected address.
const NEW_EMAIL: &str = "zora.hale@example.com";

storage_test!(
    rectification_changes_every_copy,
    |app: TestApp| async move {
        let mails = Mails::outbox(&app);
        tenants(&app).await;
        let zora = person(&app, "zora.quenby@example.com", "Zora", "Quenby").await;
        let other = person(&app, "other@example.com", "Otto", "Quenby").await;
        let correction = |field_path: &str, value: &str| FieldCorrection {
            resource: String::new(),
            field_path: field_path.into(),
            value: value.into(),
        };
        let request = submit(
            &app,
            &mails,
            Request {
                corrections: vec![
                    // As the person says it: each service finds the one
                    // field of its records these name ("email" is a
                    // ticket's requester.email, a feedback's author.email).
                    correction("person_name.family_name", "Quenby-Hale"),
                    correction("email", NEW_EMAIL),
                ],
                ..dsr(Kind::Rectification, Jurisdiction::UkGdpr, &zora.email)
            },
        )
        .await;
        assert_eq!(request.corrections.len(), 2);
        wait_for(&app, &request.name, State::AwaitingTenants).await;
        let item = item_of(&app, "acme", &request.name).await;
        assert_eq!(item.kind, "rectification");
        instruct(&app, "acme", &item.name, Instruction::Fulfil, "")
            .await
            .expect("fulfil");
        let done = wait_for(&app, &request.name, State::Completed).await;
        assert_no_failure(&done);
        assert!(history(&done).contains(&"rectified".to_owned()));

        // (family name, email) of each copy, as its service's Get shows it.
        let signup_of = |name: String| {
            let app = &app;
            async move {
                let s = app
                    .signups()
                    .get_evaluation_signup(GetEvaluationSignupRequest { name })
                    .await
                    .expect("signup")
                    .into_inner();
                (s.person_name.unwrap().family_name, s.email)
            }
        };
        let user_of = |name: String| {
            let app = &app;
            async move {
                let u = app
                    .users()
                    .get_user(GetUserRequest { name })
                    .await
                    .expect("user")
                    .into_inner();
                (u.person_name.unwrap().family_name, u.email)
            }
        };
        let ticket_of = |name: String| {
            let app = &app;
            async move {
                let r = app
                    .tickets()
                    .get_ticket(GetTicketRequest { name })
                    .await
                    .expect("ticket")
                    .into_inner()
                    .requester
                    .unwrap();
                (r.person_name.unwrap().family_name, r.email)
            }
        };
        let feedback_of = |name: String| {
            let app = &app;
            async move {
                let a = app
                    .feedback()
                    .get_feedback(GetFeedbackRequest { name })
                    .await
                    .expect("feedback")
                    .into_inner()
                    .author
                    .unwrap();
                (a.person_name.unwrap().family_name, a.email)
            }
        };
        let corrected = ("Quenby-Hale".to_owned(), NEW_EMAIL.to_owned());
        assert_eq!(signup_of(zora.signup.clone()).await, corrected);
        assert_eq!(user_of(zora.user.clone()).await, corrected);
        assert_eq!(ticket_of(zora.ticket.clone()).await, corrected);
        assert_eq!(feedback_of(zora.feedback.clone()).await, corrected);
        // Otto, with the same family name, keeps his.
        let otto = ("Quenby".to_owned(), other.email.clone());
        assert_eq!(signup_of(other.signup.clone()).await, otto);
        assert_eq!(user_of(other.user.clone()).await, otto);
        assert_eq!(ticket_of(other.ticket.clone()).await, otto);
        assert_eq!(feedback_of(other.feedback.clone()).await, otto);
        // Her records are found by the new address only.
        for service in ["identity", "tickets", "feedback"] {
            assert!(
                located(&app, service, email_subject(&zora.email))
                    .await
                    .is_empty(),
                "{service}"
            );
            assert!(
                !located(&app, service, email_subject(NEW_EMAIL))
                    .await
                    .is_empty(),
                "{service}"
            );
        }
        mails.wait(&zora.email, &request.name, "done").await;
    }
);

// --- 4. erasure ------------------------------------------------------------------

async fn erasure_test(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let mails = Mails::outbox(&app);
    tenants(&app).await;
    const EMAIL: &str = "xanthe.vorwerk@example.com";
    const FAMILY: &str = "Vorwerk-Quillfeather";
    let xanthe = person(&app, EMAIL, "Xanthe", FAMILY).await;
    let other = person(&app, "other@example.com", "Otto", "Other").await;

    let mut others = Vec::new();
    for service in SERVICES {
        let found = located(&app, service, email_subject(&other.email)).await;
        others.push((service, found));
        // Before: every service but analytics (by user name) finds her.
        let hers = located(&app, service, email_subject(EMAIL)).await;
        assert_eq!(
            hers.is_empty(),
            service == "analytics",
            "{service}: {hers:?}"
        );
    }
    assert_eq!(
        located(&app, "analytics", id_subject(&xanthe.user))
            .await
            .len(),
        1
    );

    let request = submit(&app, &mails, dsr(Kind::Erasure, Jurisdiction::Gdpr, EMAIL)).await;
    wait_for(&app, &request.name, State::AwaitingTenants).await;
    // The company's records are gone already; acme's wait for acme.
    assert!(
        located(&app, "tickets", email_subject(EMAIL))
            .await
            .is_empty()
    );
    assert_eq!(
        located(&app, "identity", email_subject(EMAIL)).await,
        vec![xanthe.user.clone()]
    );
    let item = item_of(&app, "acme", &request.name).await;
    instruct(&app, "acme", &item.name, Instruction::Fulfil, "")
        .await
        .expect("fulfil");
    let done = wait_for(&app, &request.name, State::Completed).await;
    assert_no_failure(&done);
    assert!(history(&done).contains(&"erased".to_owned()));
    // She was told, and what was mailed to her is not kept: the outbox
    // holds no file addressed to her, nor naming her.
    wait_mailed(&app, &request.name, "completed").await;
    assert!(mails.to(EMAIL).is_empty(), "mail to her is kept");
    for mail in mails.all() {
        let raw = String::from_utf8_lossy(&mail.raw).to_lowercase();
        assert!(!raw.contains("xanthe.vorwerk") && !raw.contains("quillfeather"));
    }

    // Nothing of her can be found anywhere, by email or by her user name.
    for service in SERVICES {
        assert!(
            located(&app, service, email_subject(EMAIL))
                .await
                .is_empty(),
            "{service} still finds her by email"
        );
    }
    let err = app
        .subjects_of("analytics")
        .locate_subject_data(LocateSubjectDataRequest {
            subject: id_subject(&xanthe.user),
            ..Default::default()
        })
        .await;
    match err {
        Ok(found) => assert!(found.into_inner().records.is_empty()),
        Err(status) => assert_eq!(status.code(), Code::InvalidArgument),
    }
    let usage_left: i64 = sqlx::query("SELECT COUNT(*) AS n FROM analytics_usage")
        .fetch_one(&app.raw)
        .await
        .unwrap()
        .get("n");
    assert_eq!(usage_left, 2, "only Otto's usage events are left");
    let gone = app
        .users()
        .get_user(GetUserRequest {
            name: xanthe.user.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    // Otto is untouched.
    for (service, before) in &others {
        assert_eq!(
            &located(&app, service, email_subject(&other.email)).await,
            before,
            "{service}"
        );
    }
    // The request itself is kept as proof, its requester sealed.
    let proof = located(&app, "dsr", email_subject(EMAIL)).await;
    assert_eq!(proof, vec![request.name.clone()]);

    // And the database holds no trace of her in plain text.
    app.sealed().await;
    let stored = stored_text(&app, backend).await;
    assert!(
        stored.contains(&format!("for {}", request.name)),
        "the scan reads what is stored (the audit trail names the request)"
    );
    for trace in [EMAIL, FAMILY, "xanthe.vorwerk", "Quillfeather"] {
        assert!(!stored.contains(trace), "{trace} is stored in plain text");
    }
    assert!(
        !stored.to_lowercase().contains("xanthe.vorwerk"),
        "not in any case"
    );
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_leaves_no_trace_sqlite() {
    erasure_test(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_leaves_no_trace_postgres() {
    erasure_test(Backend::Postgres).await;
}

// --- 5. routing to the tenant ---------------------------------------------------

storage_test!(
    the_tenant_sees_its_item_and_its_instruction_is_carried_out_once,
    |app: TestApp| async move {
        let mails = Mails::outbox(&app);
        tenants(&app).await;
        let zora = person(&app, "zora.quenby@example.com", "Zora", "Quenby").await;
        let request = submit(
            &app,
            &mails,
            dsr(Kind::Erasure, Jurisdiction::Gdpr, &zora.email),
        )
        .await;
        let waiting = wait_for(&app, &request.name, State::AwaitingTenants).await;
        let routing = waiting.tenants[0].clone();

        // acme sees it in its inbox, with references only.
        let item = item_of(&app, "acme", &request.name).await;
        assert_eq!(item.name, routing.inbox_item);
        assert!(item.name.starts_with("tenants/acme/inboxItems/"));
        assert_eq!(item.state, ItemState::Pending as i32);
        assert_eq!(item.kind, "erasure");
        assert_eq!(item.due_time, waiting.due_time);
        assert!(item.records.iter().all(|r| r.controller.is_some()));
        let bytes = format!("{item:?}");
        assert!(!bytes.contains(&zora.email) && !bytes.contains("Quenby"));

        // globex cannot see, acknowledge or instruct it.
        let mut globex = inbox_of(&app, "globex");
        let err = globex
            .get_inbox_item(GetInboxItemRequest {
                name: item.name.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let err = globex
            .list_inbox_items(ListInboxItemsRequest {
                parent: "tenants/acme".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let own = globex
            .list_inbox_items(ListInboxItemsRequest {
                parent: "tenants/globex".into(),
                ..Default::default()
            })
            .await
            .expect("globex's own inbox")
            .into_inner();
        assert!(own.items.is_empty());
        let err = globex
            .acknowledge_inbox_item(AcknowledgeInboxItemRequest {
                name: item.name.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let err = instruct(&app, "globex", &item.name, Instruction::Fulfil, "")
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(get_item(&app, &item.name).await, item, "unchanged");

        // acme acknowledges.
        let acknowledged = inbox_of(&app, "acme")
            .acknowledge_inbox_item(AcknowledgeInboxItemRequest {
                name: item.name.clone(),
            })
            .await
            .expect("acknowledge")
            .into_inner();
        assert_eq!(acknowledged.state, ItemState::Acknowledged as i32);
        assert_eq!(
            get(&app, &request.name).await.tenants[0].decision,
            Decision::Acknowledged as i32
        );
        // Bad instructions change nothing.
        for (instruction, reason, field) in [
            (Instruction::Decline, "", "reason"),
            (Instruction::Decline, "   ", "reason"),
            (Instruction::Unspecified, "", "instruction"),
            (Instruction::Fulfil, "because", "reason"),
        ] {
            let err = instruct(&app, "acme", &item.name, instruction, reason)
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{instruction:?}");
            assert!(
                violations(&err).iter().any(|(f, _)| f == field),
                "{:?}",
                violations(&err)
            );
        }
        assert_eq!(get_item(&app, &item.name).await, acknowledged);
        assert!(
            located(&app, "identity", email_subject(&zora.email))
                .await
                .contains(&zora.user),
            "nothing of acme's is erased before its instruction"
        );

        // FULFIL: acme's records are erased, the request completes.
        let fulfilling = instruct(&app, "acme", &item.name, Instruction::Fulfil, "")
            .await
            .expect("fulfil");
        assert!(
            [ItemState::Fulfilling as i32, ItemState::Fulfilled as i32].contains(&fulfilling.state)
        );
        let done = wait_for(&app, &request.name, State::Completed).await;
        assert_no_failure(&done);
        assert_eq!(done.tenants[0].decision, Decision::Fulfil as i32);
        let fulfilled = get_item(&app, &item.name).await;
        assert_eq!(fulfilled.state, ItemState::Fulfilled as i32);
        let err = app
            .users()
            .get_user(GetUserRequest {
                name: zora.user.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "acme's user record is erased");
        assert!(
            located(&app, "analytics", id_subject(&zora.user))
                .await
                .is_empty(),
            "and her usage events"
        );
        // The same instruction again: unchanged; the opposite: refused.
        let again = instruct(&app, "acme", &item.name, Instruction::Fulfil, "")
            .await
            .expect("the same instruction again");
        assert_eq!(again, fulfilled);
        let err = instruct(
            &app,
            "acme",
            &item.name,
            Instruction::Decline,
            "changed our mind",
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert_eq!(get_item(&app, &item.name).await, fulfilled);
        let events = get(&app, &request.name).await;
        assert_eq!(
            history(&events)
                .iter()
                .filter(|k| *k == "tenant_fulfil")
                .count(),
            1
        );

        // A separate request that acme declines: the requester is told why.
        let otto = person(&app, "otto@example.com", "Otto", "Other").await;
        let declined = submit(
            &app,
            &mails,
            dsr(Kind::Erasure, Jurisdiction::Gdpr, &otto.email),
        )
        .await;
        wait_for(&app, &declined.name, State::AwaitingTenants).await;
        let item = item_of(&app, "acme", &declined.name).await;
        let reason = "Otto's account is under a legal hold until 2031";
        let decided = instruct(&app, "acme", &item.name, Instruction::Decline, reason)
            .await
            .expect("decline");
        assert_eq!(decided.state, ItemState::Declined as i32);
        assert_eq!(decided.reason, reason);
        // The customer's words about Otto are sealed, like the request.
        let stored: Vec<String> = sqlx::query("SELECT reason FROM dsr_inbox")
            .fetch_all(&app.raw)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>("reason"))
            .collect();
        assert!(stored.iter().any(|r| !r.is_empty()));
        assert!(
            stored.iter().all(|r| !r.contains("legal hold")),
            "{stored:?}"
        );
        let again = instruct(&app, "acme", &item.name, Instruction::Decline, reason)
            .await
            .expect("the same again");
        assert_eq!(again, decided);
        let err = instruct(&app, "acme", &item.name, Instruction::Fulfil, "")
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        let done = wait_for(&app, &declined.name, State::Completed).await;
        assert_eq!(done.tenants[0].decision, Decision::Decline as i32);
        assert_eq!(done.tenants[0].reason, reason);
        // He was told why (the notice's words: dsr's mail tests); once his
        // erasure request is done, what was mailed to him is not kept.
        wait_mailed(&app, &declined.name, "declined").await;
        wait_mailed(&app, &declined.name, "completed").await;
        assert!(mails.to(&otto.email).is_empty());
        // Declined: acme's records of Otto stay; the company's are erased.
        assert_eq!(
            located(&app, "identity", email_subject(&otto.email)).await,
            vec![otto.user.clone()]
        );
        assert!(
            located(&app, "feedback", email_subject(&otto.email))
                .await
                .is_empty()
        );
    }
);

// --- 6. deadlines, extension, cancellation ---------------------------------------

/// 2027-01-31 10:00 UTC, in microseconds.
const RECEIVED: i64 = 1_801_389_600_000_000;
/// One calendar month later: February has no 31st, so its last day.
const GDPR_DUE: i64 = 1_803_808_800_000_000; // 2027-02-28 10:00 UTC
/// Two more months from the first due time.
const GDPR_EXTENDED: i64 = 1_808_906_400_000_000; // 2027-04-28 10:00 UTC
const CCPA_DUE: i64 = RECEIVED + 45 * DAY_MICROS; // 2027-03-17 10:00 UTC
const CCPA_EXTENDED: i64 = CCPA_DUE + 45 * DAY_MICROS; // 2027-05-01 10:00 UTC

storage_test!(
    deadlines_follow_the_jurisdiction_and_extend_once,
    |app: TestApp| async move {
        let mails = Mails::outbox(&app);
        app.clock.set(RECEIVED);
        let gdpr = create(&app, dsr(Kind::Access, Jurisdiction::Gdpr, "g@example.com"))
            .await
            .unwrap();
        let ccpa = create(
            &app,
            dsr(Kind::Erasure, Jurisdiction::Ccpa, "c@example.com"),
        )
        .await
        .unwrap();
        assert_eq!(micros(&gdpr.receive_time), RECEIVED);
        assert_eq!(micros(&gdpr.due_time), GDPR_DUE);
        assert_eq!(micros(&ccpa.due_time), CCPA_DUE);
        assert!(
            mails.first_code("g@example.com", &gdpr.name).len() == 8
                && mails.about("g@example.com", &gdpr.name, "please confirm")[0]
                    .text
                    .contains("2027-02-28 10:00 UTC"),
            "the acknowledgement names the due date"
        );

        let overdue = || {
            list(
                &app,
                ListRequestsRequest {
                    overdue: true,
                    ..Default::default()
                },
            )
        };
        let due_before = |micros: i64| {
            list(
                &app,
                ListRequestsRequest {
                    due_before: Some(to_timestamp(micros)),
                    ..Default::default()
                },
            )
        };
        assert!(overdue().await.is_empty());
        assert_eq!(
            due_before(RECEIVED + 30 * DAY_MICROS).await,
            vec![gdpr.name.clone()]
        );
        let mut both = vec![gdpr.name.clone(), ccpa.name.clone()];
        both.sort();
        assert_eq!(due_before(RECEIVED + 60 * DAY_MICROS).await, both);
        assert!(due_before(RECEIVED).await.is_empty());
        assert_eq!(
            list(
                &app,
                ListRequestsRequest {
                    kind: Kind::Erasure as i32,
                    ..Default::default()
                }
            )
            .await,
            vec![ccpa.name.clone()]
        );

        // A day past GDPR's due date, it is overdue; CCPA's is not.
        app.clock.set(GDPR_DUE + DAY_MICROS);
        assert_eq!(overdue().await, vec![gdpr.name.clone()]);

        // Extending needs a reason, and changes nothing without one.
        for reason in ["", "   "] {
            let err = extend(&app, &gdpr.name, reason).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument);
            assert!(violations(&err).iter().any(|(f, _)| f == "reason"));
        }
        let unchanged = get(&app, &gdpr.name).await;
        assert_eq!(micros(&unchanged.due_time), GDPR_DUE);
        assert!(unchanged.extension_reason.is_empty());

        let reason = "Your records span three archived systems";
        let extended = extend(&app, &gdpr.name, reason).await.expect("extend");
        assert_eq!(micros(&extended.due_time), GDPR_EXTENDED);
        assert_eq!(extended.extension_reason, reason);
        assert!(history(&extended).contains(&"extended".to_owned()));
        let told = mails.wait("g@example.com", &gdpr.name, "more time").await;
        assert!(told.text.contains(reason), "{}", told.text);
        assert!(told.text.contains("2027-04-28 10:00 UTC"), "{}", told.text);
        assert!(overdue().await.is_empty(), "no longer overdue");
        // Once only.
        let err = extend(&app, &gdpr.name, "still more").await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        let after = get(&app, &gdpr.name).await;
        assert_eq!(micros(&after.due_time), GDPR_EXTENDED);
        assert_eq!(after.extension_reason, reason);

        let extended = extend(&app, &ccpa.name, "A customer holds most of it")
            .await
            .expect("extend CCPA");
        assert_eq!(micros(&extended.due_time), CCPA_EXTENDED);
        mails.wait("c@example.com", &ccpa.name, "more time").await;

        // Cancelling: a reason is required; a cancelled request is closed.
        let err = cancel(&app, &ccpa.name, "").await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(
            state_of(&get(&app, &ccpa.name).await),
            State::AwaitingVerification
        );
        let code = mails.first_code("c@example.com", &ccpa.name);
        let cancelled = cancel(&app, &ccpa.name, "the requester withdrew")
            .await
            .expect("cancel");
        assert_eq!(state_of(&cancelled), State::Cancelled);
        assert!(cancelled.complete_time.is_some());
        mails.wait("c@example.com", &ccpa.name, "cancelled").await;
        for err in [
            verify(&app, &ccpa.name, &code).await.unwrap_err(),
            cancel(&app, &ccpa.name, "again").await.unwrap_err(),
            extend(&app, &ccpa.name, "again").await.unwrap_err(),
        ] {
            assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        }
        assert!(
            due_before(CCPA_EXTENDED + DAY_MICROS)
                .await
                .iter()
                .all(|n| *n != ccpa.name)
        );
        assert_eq!(
            list(
                &app,
                ListRequestsRequest {
                    state: State::Cancelled as i32,
                    ..Default::default()
                }
            )
            .await,
            vec![ccpa.name.clone()]
        );
    }
);

storage_test!(
    a_cancelled_request_runs_no_more_steps,
    |app: TestApp| async move {
        let mails = Mails::outbox(&app);
        tenants(&app).await;
        let zora = person(&app, "zora.quenby@example.com", "Zora", "Quenby").await;
        let request = submit(
            &app,
            &mails,
            dsr(Kind::Erasure, Jurisdiction::Gdpr, &zora.email),
        )
        .await;
        wait_for(&app, &request.name, State::AwaitingTenants).await;
        let item = item_of(&app, "acme", &request.name).await;
        let cancelled = cancel(&app, &request.name, "the requester withdrew")
            .await
            .expect("cancel");
        assert_eq!(state_of(&cancelled), State::Cancelled);
        assert_eq!(
            get_item(&app, &item.name).await.state,
            ItemState::Cancelled as i32
        );
        // acme's instruction comes too late: nothing of acme's is erased.
        let err = instruct(&app, "acme", &item.name, Instruction::Fulfil, "")
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        mails.wait(&zora.email, &request.name, "cancelled").await;
        let pending: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM dsr_steps WHERE request_id = $1 AND state = 'pending' \
             AND phase <> 'mail'",
        )
        .bind(id_of(&request.name))
        .fetch_one(&app.raw)
        .await
        .unwrap()
        .get("n");
        assert_eq!(pending, 0, "no step but a notice waits to run");
        let tenant_steps: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM dsr_steps WHERE request_id = $1 AND phase = 'act' \
             AND scope = 'tenants/acme'",
        )
        .bind(id_of(&request.name))
        .fetch_one(&app.raw)
        .await
        .unwrap()
        .get("n");
        assert_eq!(tenant_steps, 0, "acme's part is never planned");
        assert_eq!(
            located(&app, "identity", email_subject(&zora.email)).await,
            vec![zora.user.clone()],
            "acme's user record stays"
        );
        assert_eq!(
            located(&app, "analytics", id_subject(&zora.user))
                .await
                .len(),
            1
        );
        let after = get(&app, &request.name).await;
        assert_eq!(state_of(&after), State::Cancelled);
        assert!(history(&after).contains(&"cancelled".to_owned()));
        assert!(!history(&after).contains(&"completed".to_owned()));
    }
);

// --- 7. the audit trail ------------------------------------------------------------

storage_test!(
    every_step_is_audited_with_the_request,
    |app: TestApp| async move {
        let mails = Mails::outbox(&app);
        tenants(&app).await;
        let zora = person(&app, "zora.quenby@example.com", "Zora", "Quenby").await;
        let request = submit(
            &app,
            &mails,
            dsr(Kind::Access, Jurisdiction::Gdpr, &zora.email),
        )
        .await;
        wait_for(&app, &request.name, State::AwaitingTenants).await;
        let item = item_of(&app, "acme", &request.name).await;
        instruct(&app, "acme", &item.name, Instruction::Fulfil, "")
            .await
            .expect("fulfil");
        wait_for(&app, &request.name, State::Completed).await;
        download(&app, &request.name).await.expect("the bundle");

        let trail = audit_trail(&app).await;
        let for_request = format!("for {}", request.name);
        // Each service's trail names the request with every locate and
        // export it did for it.
        for service in SERVICES {
            let events: Vec<&AuditEvent> = trail
                .iter()
                .filter(|e| e.service == service && e.detail.contains(&for_request))
                .collect();
            for action in [AuditAction::Locate, AuditAction::Export] {
                assert!(
                    events.iter().any(|e| e.action == action as i32),
                    "{service}: no {action:?} event for {}: {events:#?}",
                    request.name
                );
            }
            assert!(
                events.iter().all(|e| e.purpose == "dsr_fulfilment"),
                "{service}: {events:#?}"
            );
        }
        // The records acme controls were exported only after its
        // instruction, and named in the export events.
        let exported: BTreeSet<&str> = trail
            .iter()
            .filter(|e| e.action == AuditAction::Export as i32 && e.detail.contains(&for_request))
            .map(|e| e.resource.as_str())
            .collect();
        for resource in [&zora.signup, &zora.ticket, &zora.feedback, &zora.user] {
            assert!(
                exported.contains(resource.as_str()),
                "{resource}: {exported:?}"
            );
        }
        assert!(exported.contains(format!("{}/usageEvents", zora.user).as_str()));
        // dsr's own trail: received, verified, every locate and export step,
        // the tenant's inbox, the download.
        let own: Vec<&AuditEvent> = trail
            .iter()
            .filter(|e| e.service == "dsr" && e.resource == request.name)
            .collect();
        for action in [
            AuditAction::Create,
            AuditAction::Update,
            AuditAction::Read,
            AuditAction::Locate,
            AuditAction::Export,
        ] {
            assert!(
                own.iter().any(|e| e.action == action as i32),
                "dsr: no {action:?} on {}: {own:#?}",
                request.name
            );
        }
        assert!(
            trail
                .iter()
                .any(|e| e.service == "dsr" && e.resource == item.name),
            "the inbox calls are audited"
        );
        // No audit event holds her email or name.
        let text = format!("{trail:?}");
        assert!(!text.contains(&zora.email));
        assert!(!text.contains("Quenby"));
    }
);

// --- a peer that never answers --------------------------------------------

/// A stand-in for a service that accepts connections and never answers, as
/// a frozen process does: its sockets are held open and never read.
async fn silent_peer() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (url, task)
}

/// (state, attempts, error) of a request's locate steps in `service`.
async fn locate_steps(app: &TestApp, request: &str, service: &str) -> Vec<(String, i64, String)> {
    sqlx::query(
        "SELECT state, attempts, error FROM dsr_steps WHERE request_id = $1 AND phase = 'locate' \
         AND service = $2",
    )
    .bind(id_of(request))
    .bind(service)
    .fetch_all(&app.raw)
    .await
    .expect("steps")
    .iter()
    .map(|r| {
        (
            r.get("state"),
            r.get("attempts"),
            r.get::<Option<String>, _>("error").unwrap_or_default(),
        )
    })
    .collect()
}

/// Feedback's address leads to a peer that never answers. Each call to it
/// ends at the peer timeout (DEADLINE_EXCEEDED) and its steps are retried
/// later; meanwhile the other services' steps run to their end, the
/// company's records there exported, so the request waits on feedback's
/// part only.
async fn silent_peer_test(backend: Backend) {
    const TIMEOUT: Duration = Duration::from_millis(500);
    let (silent, _listening) = silent_peer().await;
    let Some(app) = spawn_with(backend, |c| {
        c.peers.insert("feedback".into(), silent.clone());
        c.peer_timeout = TIMEOUT;
    })
    .await
    else {
        return;
    };
    let mails = Mails::outbox(&app);
    tenants(&app).await;
    let zora = person(&app, "zora.quenby@example.com", "Zora", "Quenby").await;
    let verified = Instant::now();
    let request = submit(
        &app,
        &mails,
        dsr(Kind::Access, Jurisdiction::Gdpr, &zora.email),
    )
    .await;

    // The first call to feedback ends at the timeout, and is to be retried.
    let first_failure = loop {
        let steps = locate_steps(&app, &request.name, "feedback").await;
        if steps.iter().any(|(_, _, error)| !error.is_empty()) {
            break verified.elapsed();
        }
        assert!(
            verified.elapsed() < PATIENCE,
            "no call to feedback ended within {PATIENCE:?}: {steps:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        first_failure >= TIMEOUT && first_failure < TIMEOUT + Duration::from_secs(3),
        "the call waited the peer timeout, {TIMEOUT:?}, not {first_failure:?}"
    );

    // Identity's and tickets' parts are done while feedback never answers.
    let until = Instant::now() + PATIENCE;
    let parts = loop {
        let now = get(&app, &request.name).await;
        let exported = |service: &str| {
            now.history
                .iter()
                .any(|e| e.kind == "exported" && e.target == service)
        };
        if exported("identity") && exported("tickets") {
            break now;
        }
        assert!(
            Instant::now() < until,
            "the other services' parts did not run: {:?}",
            history(&now)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(state_of(&parts), State::InProgress, "feedback's part waits");
    for service in ["identity", "tickets", "analytics"] {
        let steps = locate_steps(&app, &request.name, service).await;
        assert!(
            !steps.is_empty() && steps.iter().all(|(state, _, _)| state == "done"),
            "{service}: {steps:?}"
        );
    }
    // Feedback's steps are retried, each attempt ended by the deadline.
    let until = Instant::now() + PATIENCE;
    loop {
        let steps = locate_steps(&app, &request.name, "feedback").await;
        let retried = steps.iter().any(|(state, attempts, error)| {
            state == "pending" && *attempts >= 2 && error == "DeadlineExceeded"
        });
        if retried {
            break;
        }
        assert!(Instant::now() < until, "feedback's steps: {steps:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_answers_delays_only_its_own_steps_sqlite() {
    silent_peer_test(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_answers_delays_only_its_own_steps_postgres() {
    silent_peer_test(Backend::Postgres).await;
}

// --- a request's state and its history --------------------------------------

/// Makes the database refuse `op` on `table` (when `when` holds), as a
/// database that fails between two writes would: a trigger.
async fn refuse(app: &TestApp, trigger: &str, op: &str, table: &str, when: &str) {
    let statements = if app.db.url.starts_with("postgres") {
        vec![
            "CREATE OR REPLACE FUNCTION custodian_test_refuse() RETURNS trigger \
             LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$"
                .to_owned(),
            format!(
                "CREATE TRIGGER {trigger} BEFORE {op} ON {table} FOR EACH ROW WHEN ({when}) \
                 EXECUTE FUNCTION custodian_test_refuse()"
            ),
        ]
    } else {
        vec![format!(
            "CREATE TRIGGER {trigger} BEFORE {op} ON {table} FOR EACH ROW WHEN {when} \
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )]
    };
    for statement in statements {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&app.raw)
            .await
            .expect("trigger");
    }
}

async fn allow(app: &TestApp, trigger: &str, table: &str) {
    let statement = if app.db.url.starts_with("postgres") {
        format!("DROP TRIGGER {trigger} ON {table}")
    } else {
        format!("DROP TRIGGER {trigger}")
    };
    sqlx::query(sqlx::AssertSqlSafe(statement))
        .execute(&app.raw)
        .await
        .expect("dropping the trigger");
}

async fn steps_of(app: &TestApp, request: &str) -> i64 {
    sqlx::query("SELECT COUNT(*) AS n FROM dsr_steps WHERE request_id = $1")
        .bind(id_of(request))
        .fetch_one(&app.raw)
        .await
        .expect("steps")
        .get("n")
}

storage_test!(
    a_requests_state_and_its_history_change_together,
    |app: TestApp| async move {
        let mails = Mails::outbox(&app);
        let email = "yan.ostrava@example.com";
        let created = create(&app, dsr(Kind::Access, Jurisdiction::Gdpr, email))
            .await
            .expect("create");
        let code = mails.first_code(email, &created.name);

        // Verification: the state cannot be written, so nothing of the
        // verification is: not the history, the steps, or the spent code.
        refuse(&app, "refuse_state", "UPDATE", "dsr_requests", "1 = 1").await;
        verify(&app, &created.name, &code)
            .await
            .expect_err("the state cannot be written");
        let now = get(&app, &created.name).await;
        assert_eq!(state_of(&now), State::AwaitingVerification);
        assert!(
            !history(&now).contains(&"verified".to_owned()),
            "the history says verified, the state does not: {:?}",
            history(&now)
        );
        assert_eq!(steps_of(&app, &created.name).await, 0, "no step planned");
        allow(&app, "refuse_state", "dsr_requests").await;

        // Completion: the history's last line cannot be written, so the
        // request is not shown completed without it.
        refuse(
            &app,
            "refuse_completed",
            "INSERT",
            "dsr_events",
            "NEW.kind = 'completed'",
        )
        .await;
        let verified = verify(&app, &created.name, &code)
            .await
            .expect("the same code, once the database takes it");
        assert_eq!(state_of(&verified), State::InProgress);
        assert!(history(&verified).contains(&"verified".to_owned()));
        let until = Instant::now() + PATIENCE;
        loop {
            let pending: i64 = sqlx::query(
                "SELECT COUNT(*) AS n FROM dsr_steps WHERE request_id = $1 AND state = 'pending'",
            )
            .bind(id_of(&created.name))
            .fetch_one(&app.raw)
            .await
            .unwrap()
            .get("n");
            if pending == 0 {
                break;
            }
            assert!(Instant::now() < until, "steps still pending");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The orchestrator tries to finish it, and fails, for a while.
        let watching = Instant::now() + Duration::from_secs(2);
        while Instant::now() < watching {
            let now = get(&app, &created.name).await;
            assert_ne!(
                state_of(&now),
                State::Completed,
                "completed without its history: {:?}",
                history(&now)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        allow(&app, "refuse_completed", "dsr_events").await;
        let done = wait_for(&app, &created.name, State::Completed).await;
        assert_eq!(
            history(&done)
                .iter()
                .filter(|k| k.as_str() == "completed")
                .count(),
            1,
            "{:?}",
            history(&done)
        );

        // Cancellation: the history's line cannot be written, so the
        // request is not cancelled.
        let other = create(
            &app,
            dsr(Kind::Erasure, Jurisdiction::Gdpr, "ula.ostrava@example.com"),
        )
        .await
        .expect("create");
        refuse(
            &app,
            "refuse_cancelled",
            "INSERT",
            "dsr_events",
            "NEW.kind = 'cancelled'",
        )
        .await;
        cancel(&app, &other.name, "the requester withdrew")
            .await
            .expect_err("the history cannot be written");
        let now = get(&app, &other.name).await;
        assert_eq!(
            state_of(&now),
            State::AwaitingVerification,
            "cancelled without its history: {:?}",
            history(&now)
        );
        allow(&app, "refuse_cancelled", "dsr_events").await;
        let cancelled = cancel(&app, &other.name, "the requester withdrew")
            .await
            .expect("cancel");
        assert_eq!(state_of(&cancelled), State::Cancelled);
        assert!(history(&cancelled).contains(&"cancelled".to_owned()));
        app.stop().await.expect("stop");
    }
);

// --- intake limits ---------------------------------------------------------

/// What an answer says, apart from its name and whose it is.
fn shape(request: &Request) -> Request {
    Request {
        name: String::new(),
        requester: None,
        ..request.clone()
    }
}

storage_test!(
    one_address_is_mailed_a_few_codes_however_often_it_is_asked_and_answers_do_not_tell,
    |app: TestApp| async move {
        let mails = Mails::outbox(&app);
        // The company holds data of one address, none of the other.
        let known = "known@example.com";
        let unknown = "nobody@example.com";
        app.signups()
            .create_evaluation_signup(CreateEvaluationSignupRequest {
                evaluation_signup: Some(fixtures::signup(known)),
                request_id: String::new(),
            })
            .await
            .expect("signup");

        // 100 requests for the known address, then one for the unknown.
        let mut answers = Vec::new();
        for _ in 0..100 {
            answers.push(
                create(&app, dsr(Kind::Access, Jurisdiction::Gdpr, known))
                    .await
                    .expect("answered as accepted"),
            );
        }
        let stranger = create(&app, dsr(Kind::Access, Jurisdiction::Gdpr, unknown))
            .await
            .expect("answered as accepted");

        // Mailed: the first few open requests' codes, nothing after.
        let open = custodian_dsr::OPEN_UNVERIFIED as usize;
        let to_known = mails.to(known);
        assert_eq!(
            to_known.len(),
            open,
            "one acknowledgement each, {open} in all"
        );
        for (i, answer) in answers.iter().enumerate() {
            let mailed = mails.about(known, &answer.name, "please confirm").len();
            assert_eq!(mailed, usize::from(i < open), "request {i}");
        }
        assert_eq!(
            mails.to(unknown).len(),
            1,
            "another address has its own limits"
        );

        // Every answer is the same, limited or not, known or not.
        let first = shape(&answers[0]);
        for (i, answer) in answers.iter().enumerate() {
            assert_eq!(shape(answer), first, "request {i}");
            assert_eq!(
                shape(&get(&app, &answer.name).await),
                shape(&get(&app, &answers[0].name).await)
            );
        }
        assert_eq!(shape(&stranger), first);

        // Resends: answered as sent; the address gets at most its hourly
        // count of code mails, whichever requests ask.
        app.clock.advance(MINUTE + Duration::from_secs(1));
        for answer in &answers[..10] {
            let resent = resend(&app, &answer.name).await.expect("answered as sent");
            assert_eq!(state_of(&resent), State::AwaitingVerification);
        }
        let codes = mails.to(known).len();
        assert_eq!(
            codes,
            custodian_dsr::CODES_PER_HOUR as usize,
            "{codes} code mails in the hour"
        );

        // The day's limit holds across hours.
        for hour in 1..=4 {
            app.clock.advance(Duration::from_secs(3600));
            for answer in &answers[10 + hour * 10..20 + hour * 10] {
                resend(&app, &answer.name).await.expect("answered as sent");
            }
        }
        assert_eq!(mails.to(known).len(), custodian_dsr::CODES_PER_DAY as usize);
    }
);

storage_test!(
    wrong_codes_are_counted_per_address_across_its_requests,
    |app: TestApp| async move {
        let mails = Mails::outbox(&app);
        let email = "target@example.com";
        let wrong = |code: &str| {
            let n: u32 = code.parse().unwrap();
            format!("{:08}", (n + 1) % 100_000_000)
        };
        // One request, its code resent (each resend gives 3 fresh attempts)
        // until the address has been tried with ten wrong codes in a day.
        let created = create(&app, dsr(Kind::Access, Jurisdiction::Gdpr, email))
            .await
            .expect("create");
        let mut code = mails.first_code(email, &created.name);
        let mut tried = 0;
        while tried < custodian_dsr::WRONG_CODES_PER_DAY {
            for _ in 0..3 {
                if tried == custodian_dsr::WRONG_CODES_PER_DAY {
                    break;
                }
                let err = verify(&app, &created.name, &wrong(&code))
                    .await
                    .unwrap_err();
                assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
                tried += 1;
            }
            if tried < custodian_dsr::WRONG_CODES_PER_DAY {
                app.clock.advance(MINUTE + Duration::from_secs(1));
                resend(&app, &created.name).await.expect("resend");
                let resent = mails.about(email, &created.name, "new code");
                code = resent.last().expect("a new code").code().expect("a code");
            }
        }
        // Now even the right code is refused, and nothing moves.
        let err = verify(&app, &created.name, &code).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert_eq!(
            state_of(&get(&app, &created.name).await),
            State::AwaitingVerification
        );
        // A request of its own does not reset the count.
        let other = create(&app, dsr(Kind::Erasure, Jurisdiction::Gdpr, email))
            .await
            .expect("create");
        let other_code = mails.first_code(email, &other.name);
        let err = verify(&app, &other.name, &other_code).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert_eq!(
            state_of(&get(&app, &other.name).await),
            State::AwaitingVerification
        );

        // A day later the address may try again.
        app.clock.advance(Duration::from_secs(86_400));
        resend(&app, &other.name).await.expect("resend");
        let fresh = mails.about(email, &other.name, "new code");
        let fresh = fresh.last().expect("a new code").code().expect("a code");
        let verified = verify(&app, &other.name, &fresh).await.expect("verified");
        assert_eq!(state_of(&verified), State::InProgress);

        // The counts outlive their day only until the retention sweep.
        assert!(app.count("dsr_mailbox_events").await > 0);
        app.clock.advance(Duration::from_secs(86_400 + 60));
        app.retention()
            .sweep_expired(custodian_proto::retention::v1::SweepExpiredRequest::default())
            .await
            .expect("sweep");
        assert_eq!(app.count("dsr_mailbox_events").await, 0);
    }
);

storage_test!(
    a_customer_that_never_answers_does_not_hold_up_the_company_part,
    |app: TestApp| async move {
        let mails = Mails::outbox(&app);
        tenants(&app).await;
        let zora = person(&app, "zora.quenby@example.com", "Zora", "Quenby").await;
        // acme's administrator, whom reminders go to.
        app.users()
            .create_user(CreateUserRequest {
                parent: "tenants/acme".into(),
                user: Some(User {
                    role: custodian_proto::identity::v1::user::Role::Admin as i32,
                    ..fixtures::user("privacy@acme.example")
                }),
                request_id: String::new(),
            })
            .await
            .expect("admin");
        let mut part_names = Vec::new();
        for kind in [Kind::Access, Kind::Erasure] {
            let request = submit(&app, &mails, dsr(kind, Jurisdiction::Gdpr, &zora.email)).await;
            part_names.push(request.name.clone());
            wait_for(&app, &request.name, State::AwaitingTenants).await;
            let part = company_part(&app, &request.name).await;
            // Done within the company's deadline, while acme says nothing.
            assert!(micros(&part.company_part_time) <= micros(&part.due_time));
            assert_eq!(state_of(&part), State::AwaitingTenants);
            assert!(
                part.history.iter().any(|e| e.kind == "company_part_done"),
                "{:?}",
                part.history
            );
            // The person's status names who holds the rest.
            assert_eq!(part.tenants.len(), 1);
            assert_eq!(part.tenants[0].tenant, "tenants/acme");
            assert_eq!(part.tenants[0].display_name, "Tenant acme");
            assert_eq!(part.tenants[0].decision, Decision::Pending as i32);
            let told = mails
                .wait(&zora.email, &request.name, "the company's part")
                .await;
            assert!(
                told.text.contains("Tenant acme (tenants/acme)"),
                "{}",
                told.text
            );
            match kind {
                Kind::Access => {
                    let bundle = download(&app, &request.name)
                        .await
                        .expect("the company's part");
                    assert_eq!(bundle["complete"], false);
                    let records = bundle_records(&bundle);
                    assert_eq!(records.len(), 4, "{bundle:#}");
                    assert!(part.export_expire_time.is_some());
                }
                _ => {
                    // What the company controls is gone; acme's user is not.
                    assert!(
                        located(&app, "tickets", email_subject(&zora.email))
                            .await
                            .is_empty()
                    );
                    assert!(
                        located(&app, "feedback", email_subject(&zora.email))
                            .await
                            .is_empty()
                    );
                    assert_eq!(
                        located(&app, "identity", email_subject(&zora.email)).await,
                        vec![zora.user.clone()],
                        "the sign-up erased, acme's user kept"
                    );
                }
            }
        }
        // A week on, acme's administrator is reminded of each item, with
        // nothing about Zora in the mail.
        let reminded = |n: usize| {
            let mails = &mails;
            async move {
                let until = Instant::now() + PATIENCE;
                loop {
                    let found: Vec<Mail> = mails
                        .to("privacy@acme.example")
                        .into_iter()
                        .filter(|m| m.subject.starts_with("Reminder"))
                        .collect();
                    if found.len() >= n || Instant::now() > until {
                        return found;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        // (The orchestrator looks every 5 s when idle.)
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(
            mails.to("privacy@acme.example").is_empty(),
            "no reminder before a week"
        );
        app.clock.advance(Duration::from_secs(7 * 86_400 + 60));
        let first = reminded(2).await;
        assert_eq!(first.len(), 2, "one reminder per item");
        for mail in &first {
            assert!(
                mail.text.contains("Tenant acme (tenants/acme)"),
                "{}",
                mail.text
            );
            assert!(
                mail.text.contains("tenants/acme/inboxItems/"),
                "{}",
                mail.text
            );
            for personal in [zora.email.as_str(), "Zora", "Quenby"] {
                assert!(
                    !mail.raw_text().contains(personal),
                    "{personal} in a reminder"
                );
            }
        }
        assert!(
            mails.to("admin@acme.example").is_empty(),
            "members are not reminded, administrators are"
        );
        let item = item_of(&app, "acme", &part_names[0]).await;
        assert_eq!(item.reminders, 1);
        assert!(item.escalate_time.is_none());

        // The deadline passes with acme silent: the request is overdue for
        // its customer's part only; the company's was done in time. The
        // privacy team is told, once per item, and the history says so.
        app.clock.advance(Duration::from_secs(40 * 86_400));
        let overdue = app
            .dsr_requests()
            .list_requests(ListRequestsRequest {
                overdue: true,
                ..Default::default()
            })
            .await
            .expect("overdue")
            .into_inner()
            .requests;
        assert_eq!(overdue.len(), 2);
        let until = Instant::now() + PATIENCE;
        let escalations = loop {
            let found: Vec<Mail> = mails
                .all()
                .into_iter()
                .filter(|m| m.subject.starts_with("Overdue"))
                .collect();
            if found.len() >= 2 || Instant::now() > until {
                break found;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(escalations.len(), 2, "one escalation per item");
        for mail in &escalations {
            assert!(mail.text.contains("Tenant acme"), "{}", mail.text);
            assert!(!mail.raw_text().contains(&zora.email));
        }
        for name in &part_names {
            let request = get(&app, name).await;
            assert!(
                request
                    .history
                    .iter()
                    .any(|e| e.kind == "escalated" && e.target == "tenants/acme"),
                "{:?}",
                request.history
            );
            let item = item_of(&app, "acme", name).await;
            assert!(item.escalate_time.is_some());
        }
        let report = app
            .dsr_inbox()
            .list_overdue_tenants(ListOverdueTenantsRequest {})
            .await
            .expect("report")
            .into_inner()
            .tenants;
        assert_eq!(report.len(), 1, "{report:?}");
        assert_eq!(report[0].tenant, "tenants/acme");
        assert_eq!(report[0].display_name, "Tenant acme");
        assert_eq!(report[0].overdue_items, 2);
        assert_eq!(report[0].reminders, 2);
        // A caller limited to a tenant gets no company-wide report.
        let refused = inbox_of(&app, "acme")
            .list_overdue_tenants(ListOverdueTenantsRequest {})
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(
            overdue
                .iter()
                .all(|r| micros(&r.company_part_time) <= micros(&r.due_time))
        );
    }
);
