//! A lost database, on the real binary and PostgreSQL: the database is
//! taken away while the server runs (new connections refused with
//! `ALLOW_CONNECTIONS false`, every open one terminated) and given back.
//! While it is away every call is UNAVAILABLE (never INTERNAL) and health
//! says NOT_SERVING within seconds, for `""` and for each service, while
//! `liveness` stays SERVING (no restart for a database away); once it
//! is back health says SERVING again, the process never having exited, and
//! then a thousand consecutive calls across the five services all succeed:
//! no call meets a connection the outage broke. A create refused with
//! "nothing was stored" stored nothing, and retried with its request id it
//! is stored once.
//!
//! The test's own statements go to the server's maintenance database, never
//! to the one taken away. PostgreSQL is found as in `crash.rs`; when it
//! cannot be reached the test is skipped with a message, except under
//! `CI=true`, where it fails.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use custodian_proto::{
    analytics::v1::{ListSitesRequest, site_service_client::SiteServiceClient},
    common::v1::PersonName,
    dsr::v1::{ListRequestsRequest, request_service_client::RequestServiceClient},
    feedback::v1::{ListFeedbackRequest, feedback_service_client::FeedbackServiceClient},
    identity::v1::{
        Contact, CreateContactRequest, CreateTenantRequest, GetContactRequest, ListContactsRequest,
        Tenant, contact_service_client::ContactServiceClient,
        tenant_service_client::TenantServiceClient,
    },
    tickets::v1::{ListTicketsRequest, ticket_service_client::TicketServiceClient},
};
use tonic::{Code, Status};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

mod common;

use common::{Authed, BIN, Bearer, Log, Postgres, Server};

/// A call slower than this is a failure: during the outage it must fail
/// fast, not hang.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long health may keep saying SERVING after the database went away,
/// and NOT_SERVING after it came back.
const HEALTH_WITHIN: Duration = Duration::from_secs(5);
/// How long calls are made while the database is away.
const OUTAGE: Duration = Duration::from_secs(4);
/// Consecutive calls that must all succeed once it is back.
const AFTER: usize = 1_000;
/// Clients calling at once, before and after: enough to leave several
/// pooled connections idle when the database goes away.
const WORKERS: usize = 4;

/// Health names checked besides `""`: one gRPC service of each of the five.
const SERVICES: &[&str] = &[
    "custodian.identity.v1.ContactService",
    "custodian.tickets.v1.TicketService",
    "custodian.analytics.v1.SiteService",
    "custodian.feedback.v1.FeedbackService",
    "custodian.dsr.v1.RequestService",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_is_unavailable_and_nothing_fails_once_it_is_back() {
    let Some(database) = Postgres::create().await else {
        return;
    };
    let folder = tempfile::tempdir().expect("temporary folder");
    let data = folder.path().join("data");
    let log = Log::default();
    // Four connections a service's pool: enough to leave several idle
    // when the database goes, few enough beside other tests on the same
    // PostgreSQL server (whose connection limit they share).
    let mut server = Server::start_with(
        &data,
        Some(&database.url),
        "127.0.0.1:0",
        &["--database-max-connections".into(), "4".into()],
        &log,
    )
    .await;
    let clients = Clients::new(&server, &token(&data).await, &log).await;

    // Every service used, by several clients at once, so each pool and
    // native connection exists (and sits idle) when the database goes.
    clients.run(0, 200).await.expect("calls before the outage");
    assert_health(&server, ServingStatus::Serving, &log).await;

    database.take_away().await;
    let gone = Instant::now();
    let mut outcomes: BTreeMap<(Call, String), usize> = BTreeMap::new();
    let mut creates = Vec::new();
    let mut messages = std::collections::BTreeSet::new();
    let mut slowest = Duration::ZERO;
    let mut not_serving = None;
    let mut n = 0;
    while gone.elapsed() < OUTAGE || not_serving.is_none() {
        assert!(
            gone.elapsed() < OUTAGE + HEALTH_WITHIN,
            "health still SERVING {:?} after the database went away; stderr:\n{}",
            gone.elapsed(),
            log.text()
        );
        for call in MIX {
            n += 1;
            let started = Instant::now();
            let outcome = clients.call(call, n).await;
            slowest = slowest.max(started.elapsed());
            let code = outcome.as_ref().err().map_or(Code::Ok, Status::code);
            *outcomes.entry((call, format!("{code:?}"))).or_default() += 1;
            match outcome {
                Err(status) if status.code() == Code::Unavailable => {
                    assert!(
                        status.message().starts_with("the database")
                            || status.message().contains("unavailable"),
                        "{call:?} during the outage: {status:?}"
                    );
                    messages.insert(status.message().to_owned());
                    if call == Call::CreateContact {
                        creates.push((n, status.message().to_owned()));
                    }
                }
                other => panic!(
                    "{call:?} during the outage answered {other:?}, not UNAVAILABLE; stderr:\n{}",
                    log.text()
                ),
            }
        }
        if not_serving.is_none() && all_health(&server, ServingStatus::NotServing).await {
            not_serving = Some(gone.elapsed());
        }
        // Liveness is not readiness: the process is alive, and a restart
        // would not bring the database back.
        assert_eq!(liveness(&server).await, ServingStatus::Serving);
    }
    let not_serving = not_serving.expect("NOT_SERVING");
    eprintln!(
        "NOT_SERVING {not_serving:?} after the database went away; outcomes {outcomes:?}; \
         messages {messages:?}; slowest call {slowest:?}"
    );
    assert!(
        not_serving <= HEALTH_WITHIN,
        "NOT_SERVING after {not_serving:?}"
    );
    assert!(
        server.child.try_wait().expect("process state").is_none(),
        "the process exited while its database was away; stderr:\n{}",
        log.text()
    );

    database.give_back().await;
    let back = Instant::now();
    while !all_health(&server, ServingStatus::Serving).await {
        assert!(
            back.elapsed() < HEALTH_WITHIN,
            "health not SERVING {:?} after the database came back; stderr:\n{}",
            back.elapsed(),
            log.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("SERVING {:?} after the database came back", back.elapsed());

    // Not one failure among the next thousand calls, whichever pooled or
    // native connection each meets.
    if let Err(failure) = clients.run(1_000_000, AFTER).await {
        panic!(
            "a call failed after the database came back: {failure}; stderr:\n{}",
            log.text()
        );
    }

    // A create refused with "nothing was stored" stored nothing; retried
    // with its request id, each create is stored exactly once.
    let mut unknown = 0;
    for (n, message) in &creates {
        let found = clients.contacts_with_email(&outage_email(*n)).await;
        if message.contains("nothing was stored") {
            assert_eq!(
                found, 0,
                "create {n} said \"{message}\" but stored a contact"
            );
        } else {
            unknown += 1;
        }
    }
    for (n, _) in &creates {
        clients
            .create(*n)
            .await
            .unwrap_or_else(|e| panic!("retrying create {n}: {e}"));
        assert_eq!(clients.contacts_with_email(&outage_email(*n)).await, 1);
    }
    eprintln!(
        "{} creates refused during the outage, {unknown} without \"nothing was stored\"",
        creates.len()
    );
    assert!(!creates.is_empty());
    assert!(server.child.try_wait().expect("process state").is_none());
    server.kill_9().await;
}

/// The calls made, in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Call {
    GetContact,
    CreateContact,
    ListContacts,
    ListTickets,
    ListSites,
    ListFeedback,
    ListRequests,
}

const MIX: [Call; 7] = [
    Call::GetContact,
    Call::CreateContact,
    Call::ListContacts,
    Call::ListTickets,
    Call::ListSites,
    Call::ListFeedback,
    Call::ListRequests,
];

fn outage_email(n: usize) -> String {
    format!("outage-{n}@example.com")
}

#[derive(Clone)]
struct Clients {
    contacts: ContactServiceClient<Authed>,
    tickets: TicketServiceClient<Authed>,
    sites: SiteServiceClient<Authed>,
    feedback: FeedbackServiceClient<Authed>,
    requests: RequestServiceClient<Authed>,
    parent: String,
    /// A contact that exists, for GetContact.
    known: String,
}

impl Clients {
    async fn new(server: &Server, token: &str, log: &Log) -> Self {
        let bearer = Bearer::new(token);
        let channel = server.channel.clone();
        let parent = TenantServiceClient::with_interceptor(channel.clone(), bearer.clone())
            .create_tenant(CreateTenantRequest {
                tenant: Some(Tenant {
                    display_name: "Outage".into(),
                    ..Default::default()
                }),
                tenant_id: "outage".into(),
                request_id: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("CreateTenant: {e}; stderr:\n{}", log.text()))
            .into_inner()
            .name;
        let mut clients = Self {
            contacts: ContactServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            tickets: TicketServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            sites: SiteServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            feedback: FeedbackServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            requests: RequestServiceClient::with_interceptor(channel, bearer),
            parent,
            known: String::new(),
        };
        clients.known = clients
            .create(0)
            .await
            .unwrap_or_else(|e| panic!("CreateContact: {e}; stderr:\n{}", log.text()));
        clients
    }

    /// Creates contact `n` (request id and email follow from `n`).
    async fn create(&self, n: usize) -> Result<String, Status> {
        let request = CreateContactRequest {
            parent: self.parent.clone(),
            contact: Some(Contact {
                person_name: Some(PersonName {
                    given_name: "Ben".into(),
                    family_name: "Baker".into(),
                }),
                email: outage_email(n),
                organization: "Baker & Sons".into(),
                ..Default::default()
            }),
            request_id: uuid::Uuid::from_u128(n as u128 + 1).to_string(),
        };
        let created = self.contacts.clone().create_contact(request).await?;
        Ok(created.into_inner().name)
    }

    async fn contacts_with_email(&self, email: &str) -> usize {
        self.contacts
            .clone()
            .list_contacts(ListContactsRequest {
                parent: self.parent.clone(),
                page_size: 10,
                page_token: String::new(),
                email: email.to_owned(),
            })
            .await
            .expect("ListContacts")
            .into_inner()
            .contacts
            .len()
    }

    /// One call of kind `call`; `n` names what a create makes.
    async fn call(&self, call: Call, n: usize) -> Result<(), Status> {
        let outcome = tokio::time::timeout(CALL_TIMEOUT, async {
            match call {
                Call::GetContact => self
                    .contacts
                    .clone()
                    .get_contact(GetContactRequest {
                        name: self.known.clone(),
                    })
                    .await
                    .map(drop),
                Call::CreateContact => self.create(n).await.map(drop),
                Call::ListContacts => self
                    .contacts
                    .clone()
                    .list_contacts(ListContactsRequest {
                        parent: self.parent.clone(),
                        page_size: 5,
                        ..Default::default()
                    })
                    .await
                    .map(drop),
                Call::ListTickets => self
                    .tickets
                    .clone()
                    .list_tickets(ListTicketsRequest {
                        page_size: 5,
                        ..Default::default()
                    })
                    .await
                    .map(drop),
                Call::ListSites => self
                    .sites
                    .clone()
                    .list_sites(ListSitesRequest {
                        page_size: 5,
                        ..Default::default()
                    })
                    .await
                    .map(drop),
                Call::ListFeedback => self
                    .feedback
                    .clone()
                    .list_feedback(ListFeedbackRequest {
                        page_size: 5,
                        ..Default::default()
                    })
                    .await
                    .map(drop),
                Call::ListRequests => self
                    .requests
                    .clone()
                    .list_requests(ListRequestsRequest {
                        page_size: 5,
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            }
        })
        .await;
        outcome.unwrap_or_else(|_| Err(Status::deadline_exceeded("the test's call timeout")))
    }

    /// `calls` calls of the mix from `WORKERS` clients at once (creates
    /// numbered from `first`); the first failure, if any.
    async fn run(&self, first: usize, calls: usize) -> Result<(), String> {
        let mut workers = tokio::task::JoinSet::new();
        for w in 0..WORKERS {
            let clients = self.clone();
            workers.spawn(async move {
                for i in (w..calls).step_by(WORKERS) {
                    let call = MIX[i % MIX.len()];
                    clients
                        .call(call, first + i)
                        .await
                        .map_err(|e| format!("call {i}, {call:?}: {e:?}"))?;
                }
                Ok::<_, String>(())
            });
        }
        while let Some(done) = workers.join_next().await {
            done.expect("worker")?;
        }
        Ok(())
    }
}

/// The status health gives for `""` and each service.
async fn health(server: &Server) -> Vec<(String, Result<ServingStatus, Status>)> {
    let mut health = HealthClient::new(server.channel.clone());
    let mut out = Vec::new();
    for service in std::iter::once("").chain(SERVICES.iter().copied()) {
        let status = tokio::time::timeout(
            CALL_TIMEOUT,
            health.check(HealthCheckRequest {
                service: service.to_owned(),
            }),
        )
        .await
        .unwrap_or_else(|_| Err(Status::deadline_exceeded("health check")))
        .map(|r| r.into_inner().status());
        out.push((service.to_owned(), status));
    }
    out
}

/// What the liveness probe is told.
async fn liveness(server: &Server) -> ServingStatus {
    HealthClient::new(server.channel.clone())
        .check(HealthCheckRequest {
            service: "liveness".into(),
        })
        .await
        .expect("liveness")
        .into_inner()
        .status()
}

/// True when health gives `want` for `""` and every service.
async fn all_health(server: &Server, want: ServingStatus) -> bool {
    health(server)
        .await
        .iter()
        .all(|(_, status)| status.as_ref().is_ok_and(|s| *s == want))
}

async fn assert_health(server: &Server, want: ServingStatus, log: &Log) {
    let health = health(server).await;
    assert!(
        health
            .iter()
            .all(|(_, status)| status.as_ref().is_ok_and(|s| *s == want)),
        "health {health:?}, not {want:?}; stderr:\n{}",
        log.text()
    );
}

/// A token with the purposes of every call above.
async fn token(data_dir: &std::path::Path) -> String {
    let mut command = tokio::process::Command::new(BIN);
    command
        .env_clear()
        .arg("token")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--subject", "test:outage"]);
    for purpose in ["administration", "service_delivery", "audit"] {
        command.args(["--purpose", purpose]);
    }
    let output = command.output().await.expect("running custodian token");
    assert!(
        output.status.success(),
        "custodian token: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .trim()
        .to_owned()
}
