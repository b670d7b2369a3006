//! Calls between services never wait forever, and a data-subject request's
//! steps are independent: identity, tickets, analytics, feedback and dsr
//! each run as their own `custodian --target`, on PostgreSQL, a database
//! each, dsr reaching the others through `--peer`.
//!
//! - Feedback is frozen (SIGSTOP) while two requests run, one verified
//!   after the freeze: every step of theirs in the other services runs to
//!   its end meanwhile (located, exported or erased), feedback's calls end
//!   at the peer timeout and are retried, and both requests complete within
//!   seconds of SIGCONT.
//! - Two dsr replicas on one database: the first holds a step in flight to
//!   a frozen feedback, its lease renewed by a heartbeat well past the
//!   lease (the second replica does not take it), and is killed with
//!   SIGKILL; the second resumes the step within 15 s (the measured time is
//!   printed).

mod common;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::{Authed, Bearer, Log, Postgres, Server, SplitKeys};
use custodian_privacy::{Purpose, keys::KeyFile, token::TokenIssuer};
use custodian_proto::{
    common::v1::PersonName,
    dsr::v1::{
        CreateRequestRequest, GetRequestRequest, Jurisdiction, Request, Requester,
        VerifyRequestRequest, request, request_service_client::RequestServiceClient,
    },
    feedback::v1::{
        CreateFeedbackRequest, Feedback, FeedbackAuthor,
        feedback_service_client::FeedbackServiceClient,
    },
    identity::v1::{
        CreateEvaluationSignupRequest, EvaluationSignup,
        evaluation_signup_service_client::EvaluationSignupServiceClient,
    },
    tickets::v1::{
        CreateTicketRequest, Ticket, ticket, ticket_service_client::TicketServiceClient,
    },
};
use sqlx::Row as _;
use tonic::transport::Channel;

const PEERS: [&str; 4] = ["identity", "tickets", "analytics", "feedback"];
/// The peer timeout of the replicas that are not meant to hold a call.
const PEER_TIMEOUT: &str = "2s";
/// How long the steps that do not wait on feedback may take.
const PATIENCE: Duration = Duration::from_secs(60);
/// After SIGCONT, a request completes within the longest backoff of a step
/// waiting for feedback, and a little work.
const AFTER_THAW: Duration = Duration::from_secs(custodian_dsr::MAX_BACKOFF.as_secs() + 5);
/// The bound of the issue: a killed replica's steps resume within this.
const RESUME: Duration = Duration::from_secs(15);

/// Five services (and a second dsr replica) on fixed ports, so a
/// restarted one is found again, each on its own PostgreSQL database.
struct Suite {
    dir: PathBuf,
    keys: SplitKeys,
    databases: BTreeMap<&'static str, Postgres>,
    ports: BTreeMap<&'static str, u16>,
    log: Log,
    token: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Suite {
    /// `None` when PostgreSQL cannot be reached outside CI.
    async fn new(dir: &Path) -> Option<Self> {
        let mut databases = BTreeMap::new();
        for name in PEERS.iter().chain(["dsr"].iter()) {
            databases.insert(*name, Postgres::create().await?);
        }
        // As production runs: each service with its own key file and
        // credential, the signing key with the operator.
        let keys = SplitKeys::init(&dir.join("keys"));
        let signing = KeyFile::load(keys.signing_file()).expect("the operator's signing file");
        let issuer =
            TokenIssuer::from_pem(signing.token_signing_key.as_deref().expect("signing key"))
                .expect("issuer");
        Some(Self {
            dir: dir.to_path_buf(),
            keys,
            databases,
            ports: PEERS
                .iter()
                .chain(["dsr", "dsr-b"].iter())
                .map(|name| (*name, free_port()))
                .collect(),
            log: Log::default(),
            token: issuer
                .issue("test:peers", &Purpose::ALL, None, Duration::from_secs(3600))
                .expect("token"),
        })
    }

    fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}", self.ports[name])
    }

    /// Starts `name` ("dsr-b": a second dsr replica on dsr's database).
    async fn start(&self, name: &'static str, more: &[&str]) -> Server {
        let target = if name == "dsr-b" { "dsr" } else { name };
        let mut args = self.keys.target_args(target, &self.dir);
        let peers: &[&str] = match target {
            "identity" => &[],
            "dsr" => &PEERS,
            _ => &["identity"],
        };
        for peer in peers {
            args.push("--peer".to_owned());
            args.push(format!("{peer}={}", self.url(peer)));
        }
        args.extend(more.iter().map(|a| (*a).to_owned()));
        Server::start_with(
            &self.dir.join(name),
            Some(&self.databases[target].url),
            &format!("127.0.0.1:{}", self.ports[name]),
            &args,
            &self.log,
        )
        .await
    }

    async fn channel(&self, name: &str) -> Channel {
        Channel::from_shared(self.url(name))
            .expect("URI")
            .connect()
            .await
            .expect("connecting")
    }

    fn bearer(&self) -> Bearer {
        Bearer::new(&self.token)
    }

    async fn requests(&self, dsr: &str) -> RequestServiceClient<Authed> {
        RequestServiceClient::with_interceptor(self.channel(dsr).await, self.bearer())
    }

    /// dsr's database, read directly.
    async fn dsr_db(&self) -> sqlx::AnyPool {
        sqlx::any::install_default_drivers();
        sqlx::AnyPool::connect(&self.databases["dsr"].url)
            .await
            .expect("dsr's database")
    }

    /// The company's records of person `i`: a sign-up, a ticket, feedback.
    async fn seed(&self, i: usize) {
        EvaluationSignupServiceClient::with_interceptor(
            self.channel("identity").await,
            self.bearer(),
        )
        .create_evaluation_signup(CreateEvaluationSignupRequest {
            evaluation_signup: Some(EvaluationSignup {
                person_name: name(i),
                email: email(i),
                company: "Fenwick Freight".into(),
                nature_of_business: "freight forwarding".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("signup");
        TicketServiceClient::with_interceptor(self.channel("tickets").await, self.bearer())
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
        FeedbackServiceClient::with_interceptor(self.channel("feedback").await, self.bearer())
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

    async fn create(&self, dsr: &str, i: usize, kind: request::Kind) -> String {
        self.requests(dsr)
            .await
            .create_request(CreateRequestRequest {
                request: Some(Request {
                    kind: kind as i32,
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
            .into_inner()
            .name
    }

    async fn verify(&self, dsr: &str, name: &str, i: usize) {
        let verified = self
            .requests(dsr)
            .await
            .verify_request(VerifyRequestRequest {
                name: name.to_owned(),
                code: self.code_for(dsr, &email(i)),
            })
            .await
            .unwrap_or_else(|e| panic!("verified: {e:?}; stderr:\n{}", self.log.text()))
            .into_inner();
        assert_eq!(verified.state, request::State::InProgress as i32);
    }

    /// The code mailed to `to`, read from the outbox of the replica `dsr`.
    fn code_for(&self, dsr: &str, to: &str) -> String {
        let outbox = self.dir.join(dsr).join("outbox");
        for entry in std::fs::read_dir(&outbox).expect("dsr's outbox") {
            let text = std::fs::read_to_string(entry.expect("entry").path()).expect("mail");
            if !text.lines().any(|l| l.starts_with("To:") && l.contains(to)) {
                continue;
            }
            if let Some(code) = text.lines().find_map(|l| {
                let code = l.strip_prefix("    ")?;
                (code.len() == 8 && code.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| code.to_owned())
            }) {
                return code;
            }
        }
        panic!("no code mailed to {to}");
    }

    async fn get(&self, dsr: &str, name: &str) -> Request {
        self.requests(dsr)
            .await
            .get_request(GetRequestRequest { name: name.into() })
            .await
            .expect("the request")
            .into_inner()
    }
}

fn email(i: usize) -> String {
    format!("fenwick{i}@example.com")
}

fn name(i: usize) -> Option<PersonName> {
    Some(PersonName {
        given_name: "Fay".into(),
        family_name: format!("Fenwick{i}"),
    })
}

/// SIGSTOP or SIGCONT.
fn signal(server: &Server, signal: &str) {
    let pid = server.child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {signal} {pid}");
}

/// One step as dsr's table has it.
#[derive(Debug, Clone, PartialEq)]
struct StepRow {
    request: String,
    phase: String,
    service: String,
    state: String,
    attempts: i64,
    error: Option<String>,
    lease_owner: Option<String>,
    lease_until: Option<i64>,
}

async fn steps(db: &sqlx::AnyPool) -> Vec<StepRow> {
    sqlx::query(
        "SELECT request_id, phase, service, state, attempts, error, lease_owner, lease_until \
         FROM dsr_steps ORDER BY request_id, id",
    )
    .fetch_all(db)
    .await
    .expect("steps")
    .iter()
    .map(|r| StepRow {
        request: format!("requests/{}", r.get::<String, _>("request_id")),
        phase: r.get("phase"),
        service: r.get("service"),
        state: r.get("state"),
        attempts: r.get("attempts"),
        error: r.get("error"),
        lease_owner: r.get("lease_owner"),
        lease_until: r.get("lease_until"),
    })
    .collect()
}

fn did(request: &Request, kind: &str, service: &str) -> bool {
    request
        .history
        .iter()
        .any(|e| e.kind == kind && e.target == service)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_peer_delays_only_its_own_steps_postgres() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let Some(suite) = Suite::new(folder.path()).await else {
        return;
    };
    let mut servers = BTreeMap::new();
    for name in PEERS {
        servers.insert(name, suite.start(name, &[]).await);
    }
    servers.insert(
        "dsr",
        suite.start("dsr", &["--peer-timeout", PEER_TIMEOUT]).await,
    );
    suite.seed(0).await;
    suite.seed(1).await;
    let access = suite.create("dsr", 0, request::Kind::Access).await;
    let erasure = suite.create("dsr", 1, request::Kind::Erasure).await;
    let names = [access.clone(), erasure.clone()];
    let db = suite.dsr_db().await;

    // Feedback freezes; one request is verified at once, the other once a
    // call to feedback hangs.
    signal(&servers["feedback"], "-STOP");
    suite.verify("dsr", &access, 0).await;
    let began = Instant::now();
    while !steps(&db)
        .await
        .iter()
        .any(|s| s.service == "feedback" && s.lease_owner.is_some())
    {
        assert!(began.elapsed() < PATIENCE, "no call to feedback began");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    suite.verify("dsr", &erasure, 1).await;

    // Every step of both requests outside feedback runs to its end while
    // feedback is frozen: located, then exported or erased.
    let began = Instant::now();
    loop {
        let now = steps(&db).await;
        let others: Vec<&StepRow> = now.iter().filter(|s| s.service != "feedback").collect();
        let acted = |name: &str, service: &str| {
            now.iter().any(|s| {
                s.request == name && s.phase == "act" && s.service == service && s.state == "done"
            })
        };
        let all_acted = ["identity", "tickets"]
            .iter()
            .all(|service| acted(&access, service) && acted(&erasure, service));
        if all_acted && others.iter().all(|s| s.state == "done") {
            break;
        }
        assert!(
            began.elapsed() < PATIENCE,
            "the other services' steps did not finish while feedback was frozen: {now:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let frozen_for = began.elapsed();
    for (name, verb) in [(&access, "exported"), (&erasure, "erased")] {
        let now = suite.get("dsr", name).await;
        for service in ["identity", "tickets"] {
            assert!(did(&now, verb, service), "{name}: {:#?}", now.history);
        }
        assert!(did(&now, "located", "analytics"), "{:#?}", now.history);
        assert!(!did(&now, "located", "feedback"), "feedback is frozen");
        assert_eq!(now.state, request::State::InProgress as i32);
    }
    // Feedback's calls ended at the deadline and wait to be retried.
    let began = Instant::now();
    loop {
        let now = steps(&db).await;
        let feedback: Vec<&StepRow> = now.iter().filter(|s| s.service == "feedback").collect();
        assert!(
            feedback.iter().all(|s| s.state == "pending"),
            "{feedback:#?}"
        );
        let retried = names.iter().all(|name| {
            feedback.iter().any(|s| {
                &s.request == name
                    && s.attempts >= 2
                    && s.error.as_deref() == Some("DeadlineExceeded")
            })
        });
        if retried {
            break;
        }
        assert!(began.elapsed() < PATIENCE, "{feedback:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Feedback thaws: both requests complete within seconds.
    signal(&servers["feedback"], "-CONT");
    let thawed = Instant::now();
    loop {
        let mut done = 0;
        for name in &names {
            if suite.get("dsr", name).await.state == request::State::Completed as i32 {
                done += 1;
            }
        }
        if done == names.len() {
            break;
        }
        assert!(
            thawed.elapsed() < AFTER_THAW,
            "not completed within {AFTER_THAW:?} of SIGCONT: {:#?}; stderr:\n{}",
            steps(&db).await,
            suite.log.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let completed_in = thawed.elapsed();
    println!(
        "feedback frozen: the other services' steps of both requests ended within {frozen_for:?}; \
         both requests completed {completed_in:?} after SIGCONT"
    );
    assert!(did(
        &suite.get("dsr", &access).await,
        "exported",
        "feedback"
    ));
    assert!(did(&suite.get("dsr", &erasure).await, "erased", "feedback"));
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_steps_resume_within_15_seconds_postgres() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let Some(suite) = Suite::new(folder.path()).await else {
        return;
    };
    let mut servers = BTreeMap::new();
    for name in PEERS {
        servers.insert(name, suite.start(name, &[]).await);
    }
    // The first replica waits long for its peers: its call to a frozen
    // feedback stays in flight, the step leased, until it is killed.
    servers.insert("dsr", suite.start("dsr", &["--peer-timeout", "120s"]).await);
    suite.seed(0).await;
    let name = suite.create("dsr", 0, request::Kind::Erasure).await;
    let db = suite.dsr_db().await;
    signal(&servers["feedback"], "-STOP");
    suite.verify("dsr", &name, 0).await;
    let held = |now: &[StepRow]| {
        now.iter()
            .find(|s| s.service == "feedback" && s.state == "pending" && s.lease_owner.is_some())
            .cloned()
    };
    let began = Instant::now();
    let first = loop {
        if let Some(step) = held(&steps(&db).await) {
            break step;
        }
        assert!(
            began.elapsed() < PATIENCE,
            "the first replica took no feedback step"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let owner = first.lease_owner.clone().expect("leased");

    // The second replica runs beside it; past a whole lease, the first
    // still holds the step: its heartbeat renews the lease.
    servers.insert(
        "dsr-b",
        suite
            .start("dsr-b", &["--peer-timeout", PEER_TIMEOUT])
            .await,
    );
    tokio::time::sleep(custodian_dsr::LEASE + Duration::from_secs(2)).await;
    let still = steps(&db)
        .await
        .into_iter()
        .find(|s| s.request == first.request && s.phase == first.phase && s.service == "feedback")
        .expect("the step");
    assert_eq!(
        still.lease_owner.as_deref(),
        Some(owner.as_str()),
        "{still:?}"
    );
    assert_eq!(still.attempts, first.attempts, "run once: {still:?}");
    assert!(
        still.lease_until > first.lease_until,
        "the lease was renewed: {first:?} then {still:?}"
    );

    // The first replica dies holding it; feedback thaws.
    servers.get_mut("dsr").expect("dsr").kill_9().await;
    let killed = Instant::now();
    signal(&servers["feedback"], "-CONT");
    let mut resumed = None;
    let done = loop {
        let step = steps(&db)
            .await
            .into_iter()
            .find(|s| {
                s.request == first.request && s.phase == first.phase && s.service == "feedback"
            })
            .expect("the step");
        if resumed.is_none()
            && (step.state == "done"
                || step
                    .lease_owner
                    .as_deref()
                    .is_some_and(|o| o != owner.as_str()))
        {
            resumed = Some(killed.elapsed());
        }
        if step.state == "done" {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < RESUME + Duration::from_secs(30),
            "not resumed: {step:?}; stderr:\n{}",
            suite.log.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let resumed = resumed.expect("resumed");
    println!(
        "kill -9 of the replica holding the step: the other replica took it over {resumed:?} \
         after the kill and finished it {done:?} after"
    );
    assert!(resumed <= RESUME, "resumed after {resumed:?}");
    assert!(done <= RESUME, "finished after {done:?}");

    let began = Instant::now();
    while suite.get("dsr-b", &name).await.state != request::State::Completed as i32 {
        assert!(
            began.elapsed() < PATIENCE,
            "{:#?}; stderr:\n{}",
            steps(&db).await,
            suite.log.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    db.close().await;
}
