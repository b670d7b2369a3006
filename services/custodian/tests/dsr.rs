//! Data-subject requests across separate processes: identity, tickets,
//! analytics, feedback and dsr each run as their own `custodian --target`,
//! dsr reaching the others through `--peer` over real gRPC. Erasure
//! requests are verified while tickets is down (its steps retry with
//! backoff), then the dsr process is killed with SIGKILL between and during
//! steps, again and again, and restarted on the same database. At the end
//! every request has completed, nothing of the subjects can be located
//! anywhere, every step ran to its end, every record was erased exactly
//! once (one ERASE audit event each, naming the request), and every audit
//! chain verifies.
//!
//! A second dsr replica works on the same database the whole time, never
//! killed: the two claim steps from one table, and the leases keep them
//! from running one step twice.
//!
//! Runs on SQLite (a database file per service, the two dsr replicas on
//! one) and on PostgreSQL (one database shared by all, each service its own
//! tables). Each process holds only its own key file and its own service
//! credential, made as the operator makes them (`custodian keys init`,
//! `custodian token --service`): no process could sign a token.

mod common;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::{Authed, Bearer, Log, Postgres, Server, SplitKeys};
use custodian_privacy::{Purpose, keys::KeyFile, token::TokenIssuer};
use custodian_proto::{
    audit::v1::{
        AuditAction, ListAuditEventsRequest, VerifyAuditChainRequest,
        audit_service_client::AuditServiceClient,
    },
    common::v1::{PersonName, SubjectIdentifier, subject_identifier},
    dsr::v1::{
        CreateRequestRequest, GetRequestRequest, InstructInboxItemRequest, Jurisdiction,
        ListInboxItemsRequest, Request, Requester, VerifyRequestRequest, inbox_item, request,
        request_service_client::RequestServiceClient,
        tenant_inbox_service_client::TenantInboxServiceClient,
    },
    feedback::v1::{
        CreateFeedbackRequest, Feedback, FeedbackAuthor,
        feedback_service_client::FeedbackServiceClient,
    },
    identity::v1::{
        CreateEvaluationSignupRequest, CreateTenantRequest, CreateUserRequest, EvaluationSignup,
        Tenant, User, evaluation_signup_service_client::EvaluationSignupServiceClient,
        tenant_service_client::TenantServiceClient, user_service_client::UserServiceClient,
    },
    subject::v1::{
        LocateSubjectDataRequest, subject_data_service_client::SubjectDataServiceClient,
    },
    tickets::v1::{
        CreateTicketRequest, Ticket, ticket, ticket_service_client::TicketServiceClient,
    },
};
use sqlx::Row as _;
use tonic::transport::Channel;

/// The people whose data is erased.
const PEOPLE: usize = 3;
/// Kills of dsr while it works, after the first.
const KILLS: u64 = 4;
/// How long the whole run may take to settle, and to show progress after a
/// kill: the steps the killed replica held wait out their lease, and a step
/// that failed waits out its backoff. A bound of 90 s, just their sum,
/// failed once in a full run of the suite on a loaded machine.
const SETTLE: Duration =
    Duration::from_secs(custodian_dsr::LEASE.as_secs() + custodian_dsr::MAX_BACKOFF.as_secs() + 60);

const PEERS: [&str; 4] = ["identity", "tickets", "analytics", "feedback"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_processes_and_kill_9_sqlite() {
    let folder = tempfile::tempdir().expect("temporary folder");
    run(folder.path(), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_processes_and_kill_9_postgres() {
    let Some(database) = Postgres::create().await else {
        return;
    };
    let folder = tempfile::tempdir().expect("temporary folder");
    run(folder.path(), Some(&database.url)).await;
}

/// Five processes on fixed ports, so a restarted one is found again.
struct Suite {
    dir: PathBuf,
    keys: SplitKeys,
    database_url: Option<String>,
    ports: BTreeMap<&'static str, u16>,
    log: Log,
    token: String,
    tenant_token: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Suite {
    fn new(dir: &Path, database_url: Option<&str>) -> Self {
        let keys = SplitKeys::init(&dir.join("keys"));
        let signing = KeyFile::load(keys.signing_file()).expect("the operator's signing file");
        let issuer =
            TokenIssuer::from_pem(signing.token_signing_key.as_deref().expect("signing key"))
                .expect("issuer");
        let hour = Duration::from_secs(3600);
        Self {
            dir: dir.to_path_buf(),
            keys,
            database_url: database_url.map(str::to_owned),
            ports: PEERS
                .iter()
                .chain(["dsr", "dsr-b"].iter())
                .map(|name| (*name, free_port()))
                .collect(),
            log: Log::default(),
            token: issuer
                .issue("test:dsr", &Purpose::ALL, None, hour)
                .expect("token"),
            tenant_token: issuer
                .issue(
                    "test:acme-privacy",
                    &[Purpose::DsrFulfilment],
                    Some("acme"),
                    hour,
                )
                .expect("token"),
        }
    }

    fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}", self.ports[name])
    }

    async fn start(&self, name: &'static str) -> Server {
        // The second replica of dsr: its own folder and port, dsr's database.
        let (target, database_url) = match (name, &self.database_url) {
            ("dsr-b", None) => (
                "dsr",
                Some(format!(
                    "sqlite://{}?mode=rwc",
                    self.dir.join("dsr/dsr.db").display()
                )),
            ),
            ("dsr-b", Some(url)) => ("dsr", Some(url.clone())),
            (_, url) => (name, url.clone()),
        };
        let mut args = self.keys.args(target);
        // One erasure log for the suite, apart from every database.
        args.push("--erasure-log".to_owned());
        args.push(format!(
            "sqlite://{}?mode=rwc",
            self.dir.join("erasures.db").display()
        ));
        // Mail into each process's folder, asked for.
        if matches!(target, "tickets" | "dsr") {
            args.push("--mail-outbox".to_owned());
            args.push(self.dir.join(name).join("outbox").display().to_string());
        }
        let peers: &[&str] = match target {
            "identity" => &[],
            "dsr" => &PEERS,
            _ => &["identity"],
        };
        for peer in peers {
            args.push("--peer".to_owned());
            args.push(format!("{peer}={}", self.url(peer)));
        }
        Server::start_with(
            &self.dir.join(name),
            database_url.as_deref(),
            &format!("127.0.0.1:{}", self.ports[name]),
            &args,
            &self.log,
        )
        .await
    }

    fn bearer(&self) -> Bearer {
        Bearer::new(&self.token)
    }

    async fn channel(&self, name: &str) -> Channel {
        Channel::from_shared(self.url(name))
            .expect("URI")
            .connect()
            .await
            .expect("connecting")
    }

    async fn requests(&self) -> RequestServiceClient<Authed> {
        RequestServiceClient::with_interceptor(self.channel("dsr").await, self.bearer())
    }

    /// dsr's database, read directly.
    async fn dsr_db(&self) -> sqlx::AnyPool {
        sqlx::any::install_default_drivers();
        let url = match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.dir.join("dsr/dsr.db").display()),
        };
        sqlx::AnyPool::connect(&url).await.expect("dsr's database")
    }
}

fn email(i: usize) -> String {
    format!("person{i}@example.com")
}

fn name(i: usize) -> Option<PersonName> {
    Some(PersonName {
        given_name: "Erin".into(),
        family_name: format!("Erasmus{i}"),
    })
}

async fn seed(suite: &Suite) {
    let identity = suite.channel("identity").await;
    TenantServiceClient::with_interceptor(identity.clone(), suite.bearer())
        .create_tenant(CreateTenantRequest {
            tenant: Some(Tenant {
                display_name: "Acme".into(),
                ..Default::default()
            }),
            tenant_id: "acme".into(),
            request_id: String::new(),
        })
        .await
        .expect("tenant");
    let tickets = suite.channel("tickets").await;
    let feedback = suite.channel("feedback").await;
    for i in 0..PEOPLE {
        UserServiceClient::with_interceptor(identity.clone(), suite.bearer())
            .create_user(CreateUserRequest {
                parent: "tenants/acme".into(),
                user: Some(User {
                    person_name: name(i),
                    email: email(i),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect("user");
        EvaluationSignupServiceClient::with_interceptor(identity.clone(), suite.bearer())
            .create_evaluation_signup(CreateEvaluationSignupRequest {
                evaluation_signup: Some(EvaluationSignup {
                    person_name: name(i),
                    email: email(i),
                    company: "Erasmus Freight".into(),
                    nature_of_business: "freight forwarding".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect("signup");
        TicketServiceClient::with_interceptor(tickets.clone(), suite.bearer())
            .create_ticket(CreateTicketRequest {
                ticket: Some(Ticket {
                    channel: ticket::Channel::Email as i32,
                    kind: ticket::Kind::Inquiry as i32,
                    category: "billing".into(),
                    subject: "Invoice".into(),
                    requester: Some(custodian_proto::tickets::v1::Requester {
                        person_name: name(i),
                        email: email(i),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                description: "Where is my invoice?".into(),
                request_id: String::new(),
            })
            .await
            .expect("ticket");
        FeedbackServiceClient::with_interceptor(feedback.clone(), suite.bearer())
            .create_feedback(CreateFeedbackRequest {
                feedback: Some(Feedback {
                    author: Some(FeedbackAuthor {
                        person_name: name(i),
                        email: email(i),
                        ..Default::default()
                    }),
                    rating: 5,
                    text: "Quick and kind.".into(),
                    source: "email".into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .expect("feedback");
    }
}

/// The code mailed to `to`, read from dsr's outbox.
fn code_for(suite: &Suite, to: &str) -> String {
    let outbox = suite.dir.join("dsr/outbox");
    for entry in std::fs::read_dir(&outbox).expect("dsr's outbox") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("mail");
        if !text.lines().any(|l| l.starts_with("To:") && l.contains(to)) {
            continue;
        }
        if let Some(code) = text.lines().find_map(|l| {
            let code = l.strip_prefix("    ")?;
            (code.len() == 8 && code.bytes().all(|b| b.is_ascii_digit())).then(|| code.to_owned())
        }) {
            return code;
        }
    }
    panic!("no code mailed to person {to}");
}

async fn get(suite: &Suite, name: &str) -> Option<Request> {
    let mut client = suite.requests().await;
    client
        .get_request(GetRequestRequest { name: name.into() })
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// Waits until every request satisfies `done`, while dsr may be down.
async fn until(suite: &Suite, names: &[String], what: &str, done: impl Fn(&Request) -> bool) {
    let began = Instant::now();
    loop {
        let mut all = true;
        for name in names {
            match get(suite, name).await {
                Some(r) if done(&r) => {}
                _ => all = false,
            }
        }
        if all {
            return;
        }
        if began.elapsed() >= SETTLE {
            let db = suite.dsr_db().await;
            let steps: Vec<String> = sqlx::query(
                "SELECT request_id, phase, service, scope, state, attempts, error, lease_owner FROM dsr_steps ORDER BY request_id, id",
            )
            .fetch_all(&db)
            .await
            .expect("steps")
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} {} {} {} {:?} {:?}",
                    r.get::<String, _>("request_id"),
                    r.get::<String, _>("phase"),
                    r.get::<String, _>("service"),
                    r.get::<String, _>("scope"),
                    r.get::<String, _>("state"),
                    r.get::<i64, _>("attempts"),
                    r.get::<Option<String>, _>("error"),
                    r.get::<Option<String>, _>("lease_owner"),
                )
            })
            .collect();
            let runs: Vec<String> = sqlx::query("SELECT request_id, phase FROM dsr_runs")
                .fetch_all(&db)
                .await
                .expect("runs")
                .iter()
                .map(|r| {
                    format!(
                        "{} {}",
                        r.get::<String, _>("request_id"),
                        r.get::<String, _>("phase")
                    )
                })
                .collect();
            panic!(
                "requests not {what} within {SETTLE:?}; runs {runs:#?}; steps {steps:#?}; stderr:\n{}",
                suite.log.text()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the requests' histories grow (a step ended): true; false
/// once they all wait for the customer, with nothing left to do.
async fn progressed(suite: &Suite, names: &[String]) -> bool {
    let mut before = None;
    let began = Instant::now();
    loop {
        let mut events = 0;
        let mut waiting = 0;
        for name in names {
            if let Some(r) = get(suite, name).await {
                events += r.history.len();
                waiting += usize::from(r.state == request::State::AwaitingTenants as i32);
            }
        }
        if waiting == names.len() {
            return false;
        }
        match before {
            None => before = Some(events),
            Some(b) if events > b => return true,
            Some(_) => {}
        }
        assert!(
            began.elapsed() < SETTLE,
            "no progress within {SETTLE:?}; stderr:\n{}",
            suite.log.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn located_in(request: &Request, service: &str) -> bool {
    request
        .history
        .iter()
        .any(|e| e.kind == "located" && e.target == service)
}

async fn run(dir: &Path, database_url: Option<&str>) {
    let suite = Suite::new(dir, database_url);
    let mut servers: BTreeMap<&'static str, Server> = BTreeMap::new();
    for name in PEERS.iter().chain(["dsr", "dsr-b"].iter()) {
        servers.insert(name, suite.start(name).await);
    }
    seed(&suite).await;

    let mut names = Vec::new();
    for i in 0..PEOPLE {
        let created = suite
            .requests()
            .await
            .create_request(CreateRequestRequest {
                request: Some(Request {
                    kind: request::Kind::Erasure as i32,
                    jurisdiction: Jurisdiction::Gdpr as i32,
                    requester: Some(Requester {
                        person_name: name(i),
                        email: email(i),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .expect("request")
            .into_inner();
        names.push(created.name);
    }

    // Tickets goes down: its steps fail and wait for it.
    servers.get_mut("tickets").expect("tickets").kill_9().await;
    for (i, name) in names.iter().enumerate() {
        suite
            .requests()
            .await
            .verify_request(VerifyRequestRequest {
                name: name.clone(),
                code: code_for(&suite, &email(i)),
            })
            .await
            .expect("verified");
    }
    until(&suite, &names, "located in the services that are up", |r| {
        ["identity", "analytics", "feedback"]
            .iter()
            .all(|s| located_in(r, s))
    })
    .await;
    for name in &names {
        let r = get(&suite, name).await.expect("request");
        assert!(!located_in(&r, "tickets"), "tickets is down");
    }

    // dsr dies between steps; tickets comes back; dsr restarts and resumes.
    servers.get_mut("dsr").expect("dsr").kill_9().await;
    servers.insert("tickets", suite.start("tickets").await);
    servers.insert("dsr", suite.start("dsr").await);
    // And dies again and again while it works: each time right after it
    // has moved some request on, until every request waits for acme.
    for _ in 0..KILLS {
        if !progressed(&suite, &names).await {
            break;
        }
        servers.get_mut("dsr").expect("dsr").kill_9().await;
        servers.insert("dsr", suite.start("dsr").await);
    }
    until(&suite, &names, "waiting for the customer", |r| {
        r.state == request::State::AwaitingTenants as i32
    })
    .await;

    // The customer instructs; dsr dies right after each instruction.
    let mut inbox = TenantInboxServiceClient::with_interceptor(
        suite.channel("dsr").await,
        Bearer::new(&suite.tenant_token),
    );
    let items = inbox
        .list_inbox_items(ListInboxItemsRequest {
            parent: "tenants/acme".into(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .expect("inbox")
        .into_inner()
        .items;
    assert_eq!(items.len(), PEOPLE, "one item per request");
    for item in items {
        assert_eq!(item.records.len(), 1, "the person's user record");
        let mut inbox = TenantInboxServiceClient::with_interceptor(
            suite.channel("dsr").await,
            Bearer::new(&suite.tenant_token),
        );
        inbox
            .instruct_inbox_item(InstructInboxItemRequest {
                name: item.name,
                instruction: inbox_item::Instruction::Fulfil as i32,
                reason: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("instructed: {e:?}; log:\n{}", suite.log.text()));
        servers.get_mut("dsr").expect("dsr").kill_9().await;
        servers.insert("dsr", suite.start("dsr").await);
    }
    until(&suite, &names, "completed", |r| {
        r.state == request::State::Completed as i32
    })
    .await;

    check(&suite, &names).await;
}

async fn check(suite: &Suite, names: &[String]) {
    // Nothing of the subjects can be located anywhere.
    for service in PEERS {
        for i in 0..PEOPLE {
            let found = SubjectDataServiceClient::with_interceptor(
                suite.channel(service).await,
                suite.bearer(),
            )
            .locate_subject_data(LocateSubjectDataRequest {
                subject: Some(SubjectIdentifier {
                    kind: Some(subject_identifier::Kind::Email(email(i))),
                }),
                ..Default::default()
            })
            .await
            .expect("locate")
            .into_inner()
            .records;
            assert!(
                found.is_empty(),
                "{service} still holds person {i}: {found:?}"
            );
        }
    }

    // Every step ran to its end, each by one replica at a time.
    let db = suite.dsr_db().await;
    let states: Vec<(String, i64)> =
        sqlx::query("SELECT state, COUNT(*) AS n FROM dsr_steps GROUP BY state")
            .fetch_all(&db)
            .await
            .expect("steps")
            .into_iter()
            .map(|r| (r.get("state"), r.get("n")))
            .collect();
    assert!(
        states.iter().all(|(state, _)| state == "done"),
        "every step done: {states:?}"
    );
    let retried: i64 = sqlx::query("SELECT COUNT(*) AS n FROM dsr_steps WHERE attempts > 1")
        .fetch_one(&db)
        .await
        .expect("attempts")
        .get("n");
    assert!(retried > 0, "tickets being down made steps retry");
    db.close().await;

    // Every record erased exactly once, for its request; every chain intact.
    for service in ["identity", "tickets", "feedback"] {
        let mut audit =
            AuditServiceClient::with_interceptor(suite.channel(service).await, suite.bearer());
        let mut erased: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut page_token = String::new();
        loop {
            let page = audit
                .list_audit_events(ListAuditEventsRequest {
                    page_size: 1000,
                    page_token,
                    ..Default::default()
                })
                .await
                .expect("audit trail")
                .into_inner();
            for event in page.events {
                if event.action == AuditAction::Erase as i32
                    && event.method.ends_with("EraseSubjectData")
                {
                    erased.entry(event.resource).or_default().push(event.detail);
                }
            }
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        let minimum = match service {
            // A user and a sign-up each.
            "identity" => 2 * PEOPLE,
            // A ticket and its message each.
            "tickets" => 2 * PEOPLE,
            _ => PEOPLE,
        };
        assert!(
            erased.len() >= minimum,
            "{service}: {} records erased, expected {minimum}: {erased:?}",
            erased.len()
        );
        for (resource, details) in &erased {
            assert_eq!(
                details.len(),
                1,
                "{service}: {resource} erased {} times",
                details.len()
            );
            assert!(
                names.iter().any(|n| details[0].contains(n.as_str())),
                "{service}: the erasure of {resource} names its request: {details:?}"
            );
        }
        let verified = audit
            .verify_audit_chain(VerifyAuditChainRequest {})
            .await
            .expect("verify")
            .into_inner();
        assert!(verified.intact, "{service}: {:?}", verified.chains);
    }
}
