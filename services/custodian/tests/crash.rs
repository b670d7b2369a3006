//! The crash test of the storage: `kill -9` the built `custodian` binary
//! again and again while concurrent clients create contacts, restart it on
//! the same data each time, then check that every acknowledged create is
//! there, the audit chain verifies, and no audit event was lost or doubled.
//! A record and its audit event commit in one transaction, so a kill at any
//! instant leaves both or neither.
//!
//! Runs on SQLite (one data folder kept across restarts) and on PostgreSQL
//! (one database kept across restarts, dropped at the end). PostgreSQL is
//! found at `CUSTODIAN_TEST_POSTGRES_URL` (default: the local server,
//! database `postgres`); when it cannot be reached the PostgreSQL run is
//! skipped with a message, except under `CI=true`, where it fails.
//!
//! The server is started the way `grpcurl.rs` starts it: `--listen
//! 127.0.0.1:0`, the address read from its `custodian: serving ... on ADDR`
//! line, tokens from `custodian token` with its development key file. It is
//! awaited through that line and health, never by sleeping; the only sleep
//! is the deliberate delay before each kill.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use custodian_proto::{
    analytics::v1::{
        CollectEventsRequest, CreateSiteRequest, Event, Site,
        collector_service_client::CollectorServiceClient, event,
        site_service_client::SiteServiceClient,
    },
    audit::v1::{
        AuditAction, AuditEvent, ListAuditEventsRequest, VerifyAuditChainRequest,
        audit_service_client::AuditServiceClient,
    },
    common::v1::PersonName,
    identity::v1::{
        Contact, CreateContactRequest, CreateTenantRequest, GetContactRequest, ListContactsRequest,
        Tenant, contact_service_client::ContactServiceClient,
        tenant_service_client::TenantServiceClient,
    },
};
use tokio::{sync::watch, task::JoinSet};
use tonic::{Status, transport::Channel};

mod common;

use common::{Authed, BIN, Bearer, Log, Postgres, Server};
/// A create slower than this on a live server is a failure; it also bounds
/// a call whose server is gone.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Kills per backend.
const ROUNDS: u64 = 8;
/// Clients creating at once, each on its own connection.
const WORKERS: u64 = 16;
/// Listing page size: the most the API gives.
const PAGE_SIZE: i32 = 1000;
/// Purposes of the test's token: creating tenants, creating and reading
/// contacts, reading the audit trail.
const PURPOSES: &[&str] = &[
    "administration",
    "service_delivery",
    "audit",
    "product_analytics",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_concurrent_creates_sqlite() {
    let folder = tempfile::tempdir().expect("temporary folder");
    crash_test("sqlite", &folder.path().join("data"), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_concurrent_creates_postgres() {
    let Some(database) = Postgres::create().await else {
        return;
    };
    let folder = tempfile::tempdir().expect("temporary folder");
    crash_test("postgres", &folder.path().join("data"), Some(&database.url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_concurrent_event_batches_sqlite() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let data = folder.path().join("data");
    let url = format!("sqlite://{}", data.join("analytics.db").display());
    events_crash_test("sqlite", &data, None, &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_concurrent_event_batches_postgres() {
    let Some(database) = Postgres::create().await else {
        return;
    };
    let folder = tempfile::tempdir().expect("temporary folder");
    events_crash_test(
        "postgres",
        &folder.path().join("data"),
        Some(&database.url),
        &database.url,
    )
    .await;
}

/// Events per batch in the analytics crash test.
const BATCH: usize = 20;

/// The analytics writer's promise under `kill -9`: a batch is answered only
/// after its events commit, so every acknowledged event is stored after a
/// restart; and since every event carries an id, a batch that got no answer
/// can be sent again without counting anything twice.
async fn events_crash_test(backend: &str, data_dir: &Path, database_url: Option<&str>, db: &str) {
    let began = Instant::now();
    let log = Log::default();
    let mut server = Server::start(data_dir, database_url, &log).await;
    let token = token(data_dir).await;
    SiteServiceClient::with_interceptor(server.channel.clone(), Bearer::new(&token))
        .create_site(CreateSiteRequest {
            site: Some(Site {
                domain: "www.example.com".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateSite: {e}\nserver stderr:\n{}", log.text()));
    let mut acknowledged: BTreeSet<String> = BTreeSet::new();
    let mut uncertain: Vec<Vec<Event>> = Vec::new();
    for round in 0..ROUNDS {
        if round > 0 {
            server = Server::start(data_dir, database_url, &log).await;
        }
        let killed = Arc::new(AtomicBool::new(false));
        let (acks, mut acked_so_far) = watch::channel(0usize);
        let acks = Arc::new(acks);
        let mut clients = JoinSet::new();
        for worker in 0..WORKERS / 2 {
            let channel = Channel::from_shared(format!("http://{}", server.addr))
                .expect("URI")
                .connect_lazy();
            let collector = CollectorServiceClient::with_interceptor(channel, Bearer::new(&token));
            let (killed, acks) = (Arc::clone(&killed), Arc::clone(&acks));
            let prefix = format!("r{round}-w{worker}");
            clients.spawn(async move {
                let mut collector = collector;
                let mut seen: (Vec<String>, Option<Vec<Event>>) = (Vec::new(), None);
                for n in 0.. {
                    if killed.load(Ordering::SeqCst) {
                        break;
                    }
                    let events: Vec<Event> = (0..BATCH)
                        .map(|i| Event {
                            site: "www.example.com".into(),
                            r#type: event::Type::Pageview as i32,
                            url: format!("https://www.example.com/{prefix}/{n}"),
                            user_agent:
                                "Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0.0.0 Safari/537.36"
                                    .into(),
                            client_ip: format!("203.0.113.{}", i + 1),
                            event_id: format!("{prefix}-{n}-{i}"),
                            ..Default::default()
                        })
                        .collect();
                    let request = CollectEventsRequest {
                        events: events.clone(),
                    };
                    match tokio::time::timeout(CALL_TIMEOUT, collector.collect_events(request))
                        .await
                    {
                        Ok(Ok(answer)) if answer.get_ref().accepted == BATCH as i64 => {
                            seen.0.extend(events.into_iter().map(|e| e.event_id));
                            acks.send_modify(|n| *n += 1);
                        }
                        Ok(Ok(answer)) => {
                            return Err(format!(
                                "a fresh batch was not stored whole: {:?}",
                                answer.get_ref()
                            ));
                        }
                        failed => {
                            if !killed.load(Ordering::SeqCst) {
                                return Err(format!(
                                    "CollectEvents failed while the server was up: {failed:?}"
                                ));
                            }
                            seen.1 = Some(events);
                            break;
                        }
                    }
                }
                Ok(seen)
            });
        }
        let target = kill_after(round) / 4 + 1;
        tokio::time::timeout(CALL_TIMEOUT * 10, acked_so_far.wait_for(|n| *n >= target))
            .await
            .unwrap_or_else(|_| panic!("round {round}: fewer than {target} batches acknowledged"))
            .expect("clients alive");
        killed.store(true, Ordering::SeqCst);
        server.kill_9().await;
        while let Some(seen) = clients.join_next().await {
            let (acked, unsure) = seen
                .expect("client task")
                .unwrap_or_else(|failure| panic!("{failure}\nserver stderr:\n{}", log.text()));
            acknowledged.extend(acked);
            uncertain.extend(unsure);
        }
    }
    assert!(!uncertain.is_empty(), "no kill hit a batch in flight");

    server = Server::start(data_dir, database_url, &log).await;
    let stored = stored_event_ids(db).await;
    for id in &acknowledged {
        assert_eq!(
            stored.get(id),
            Some(&1),
            "the acknowledged event {id} is not stored once"
        );
    }
    let unsure_ids: BTreeSet<String> = uncertain
        .iter()
        .flatten()
        .map(|e| e.event_id.clone())
        .collect();
    for id in stored.keys() {
        assert!(
            acknowledged.contains(id) || unsure_ids.contains(id),
            "{id} is stored but was never acknowledged nor in flight"
        );
    }
    // The sender retries what got no answer: stored once, whatever the kill left.
    let mut collector =
        CollectorServiceClient::with_interceptor(server.channel.clone(), Bearer::new(&token));
    for events in &uncertain {
        collector
            .collect_events(CollectEventsRequest {
                events: events.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("retrying a batch: {e}\nserver stderr:\n{}", log.text()));
    }
    let stored = stored_event_ids(db).await;
    assert!(
        stored.values().all(|n| *n == 1),
        "an event was stored twice"
    );
    assert_eq!(stored.len(), acknowledged.len() + unsure_ids.len());
    eprintln!(
        "{backend}: {ROUNDS} kills in {:?}: {} events acknowledged, {} batches uncertain",
        began.elapsed(),
        acknowledged.len(),
        uncertain.len(),
    );
    drop(server);
}

/// How often each event id is stored, read straight from the database.
async fn stored_event_ids(url: &str) -> BTreeMap<String, i64> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url)
        .await
        .expect("the analytics database");
    let rows = sqlx::query(
        "SELECT event_id, COUNT(*) AS n FROM analytics_events WHERE event_id IS NOT NULL GROUP BY event_id",
    )
    .fetch_all(&pool)
    .await
    .expect("reading events");
    pool.close().await;
    use sqlx::Row as _;
    rows.iter()
        .map(|r| (r.get::<String, _>("event_id"), r.get::<i64, _>("n")))
        .collect()
}

/// One attempted create, kept so an uncertain one can be retried as is.
struct Attempt {
    email: String,
    request: CreateContactRequest,
}

/// What one client saw until the server was killed.
#[derive(Default)]
struct Seen {
    /// (contact name, email) of every create answered OK.
    acknowledged: Vec<(String, String)>,
    /// The create in flight when the server died: no answer, so it may or
    /// may not have been stored.
    uncertain: Option<Attempt>,
}

async fn crash_test(backend: &str, data_dir: &Path, database_url: Option<&str>) {
    let began = Instant::now();
    let log = Log::default();
    let mut server = Server::start(data_dir, database_url, &log).await;
    let token = token(data_dir).await;
    let parent = TenantServiceClient::with_interceptor(server.channel.clone(), Bearer::new(&token))
        .create_tenant(CreateTenantRequest {
            tenant: Some(Tenant {
                display_name: "Crash Test".into(),
                ..Default::default()
            }),
            tenant_id: "crash".into(),
            request_id: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateTenant: {e}\nserver stderr:\n{}", log.text()))
        .into_inner()
        .name;

    let mut acknowledged: Vec<(String, String)> = Vec::new();
    let mut uncertain: Vec<Attempt> = Vec::new();
    for round in 0..ROUNDS {
        if round > 0 {
            server = Server::start(data_dir, database_url, &log).await;
        }
        let killed = Arc::new(AtomicBool::new(false));
        let (acks, mut acked_so_far) = watch::channel(0usize);
        let acks = Arc::new(acks);
        let mut clients = JoinSet::new();
        for worker in 0..WORKERS {
            // A connection per client, so the kill cuts many connections
            // mid-request, not one.
            let channel = Channel::from_shared(format!("http://{}", server.addr))
                .expect("URI")
                .connect_lazy();
            let contacts = ContactServiceClient::with_interceptor(channel, Bearer::new(&token));
            clients.spawn(create_until_killed(
                contacts,
                parent.clone(),
                format!("r{round}-w{worker}"),
                Arc::clone(&killed),
                Arc::clone(&acks),
            ));
        }
        let target = kill_after(round);
        tokio::time::timeout(CALL_TIMEOUT * 10, acked_so_far.wait_for(|n| *n >= target))
            .await
            .unwrap_or_else(|_| panic!("round {round}: fewer than {target} creates acknowledged"))
            .expect("clients alive");
        // Set before the kill: an error seen while it is unset came from a
        // live server.
        killed.store(true, Ordering::SeqCst);
        server.kill_9().await;
        let (mut acked, mut unsure) = (0, 0);
        let joined = tokio::time::timeout(2 * CALL_TIMEOUT, async {
            while let Some(seen) = clients.join_next().await {
                let seen = seen
                    .expect("client task")
                    .unwrap_or_else(|failure| panic!("{failure}\nserver stderr:\n{}", log.text()));
                acked += seen.acknowledged.len();
                acknowledged.extend(seen.acknowledged);
                if let Some(attempt) = seen.uncertain {
                    unsure += 1;
                    uncertain.push(attempt);
                }
            }
        })
        .await;
        assert!(
            joined.is_ok(),
            "round {round}: clients still busy {:?} after the kill",
            2 * CALL_TIMEOUT
        );
        eprintln!(
            "{backend}: round {round}: killed after {target} acknowledged: \
             {acked} acknowledged, {unsure} uncertain"
        );
    }
    assert!(
        !acknowledged.is_empty(),
        "no create was acknowledged in {ROUNDS} rounds: nothing was tested"
    );
    assert!(
        !uncertain.is_empty(),
        "no kill hit a create in flight: the crash window was never tested"
    );

    server = Server::start(data_dir, database_url, &log).await;
    let check = Check {
        contacts: ContactServiceClient::with_interceptor(
            server.channel.clone(),
            Bearer::new(&token),
        ),
        audit: AuditServiceClient::with_interceptor(
            server.channel.clone(),
            Bearer::new(&token).with_service("identity"),
        ),
        parent: parent.clone(),
        log: log.clone(),
    };

    // The state the kills left, before the retries below add creates.
    check.chain_intact().await;
    let events = check.identity_events().await;
    check_sequences(&events);
    let created = check.create_events(&events);
    let stored = check.stored_contacts().await;

    for (name, email) in &acknowledged {
        assert_eq!(
            stored.get(name),
            Some(email),
            "the acknowledged create of {email} ({name}) is not stored as acknowledged"
        );
        assert_eq!(
            created.get(name),
            Some(&1),
            "the acknowledged create of {email} ({name}) has not exactly one create event"
        );
    }
    for (name, email) in &stored {
        assert_eq!(
            created.get(name),
            Some(&1),
            "the stored contact {email} ({name}) has not exactly one create event"
        );
    }
    for name in created.keys() {
        assert!(
            stored.contains_key(name),
            "a create event names {name}, which is not stored: its change was lost"
        );
    }
    let attempted: BTreeSet<&str> = acknowledged
        .iter()
        .map(|(_, email)| email.as_str())
        .chain(uncertain.iter().map(|a| a.email.as_str()))
        .collect();
    let by_email: BTreeMap<&str, &str> = stored
        .iter()
        .map(|(name, email)| (email.as_str(), name.as_str()))
        .collect();
    assert_eq!(
        by_email.len(),
        stored.len(),
        "an email is stored twice: a create was doubled"
    );
    for email in by_email.keys() {
        assert!(
            attempted.contains(email),
            "{email} is stored but was never acknowledged nor in flight at a kill"
        );
    }
    let uncertain_stored = uncertain
        .iter()
        .filter(|a| by_email.contains_key(a.email.as_str()))
        .count();
    assert_eq!(
        stored.len(),
        acknowledged.len() + uncertain_stored,
        "stored contacts are not the acknowledged plus the uncertain ones stored"
    );

    // GetContact too, not only the listing: the record reads back whole.
    check.get_all(&acknowledged).await;

    // A client that got no answer retries with the same request_id: the
    // first call's contact if it was stored, else a new one; once, either way.
    for attempt in &uncertain {
        let retried = check
            .contacts
            .clone()
            .create_contact(attempt.request.clone())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "retrying the uncertain create of {}: {e}\nserver stderr:\n{}",
                    attempt.email,
                    log.text()
                )
            })
            .into_inner();
        assert_eq!(retried.email, attempt.email);
        if let Some(name) = by_email.get(attempt.email.as_str()) {
            assert_eq!(
                retried.name, *name,
                "the retry of {} with its request_id made another contact",
                attempt.email
            );
        }
    }
    let events = check.identity_events().await;
    check_sequences(&events);
    let created = check.create_events(&events);
    let stored = check.stored_contacts().await;
    assert_eq!(
        stored.len(),
        acknowledged.len() + uncertain.len(),
        "after the retries, every attempted create is stored once"
    );
    for (name, email) in &stored {
        assert_eq!(
            created.get(name),
            Some(&1),
            "after the retries, {email} ({name}) has not exactly one create event"
        );
    }
    assert_eq!(
        created.len(),
        stored.len(),
        "create events of unstored contacts"
    );
    check.chain_intact().await;

    eprintln!(
        "{backend}: {ROUNDS} kills in {:?}: {} creates acknowledged, {} uncertain \
         ({uncertain_stored} of them stored before the retry)",
        began.elapsed(),
        acknowledged.len(),
        uncertain.len(),
    );
}

/// Spreads the kills over a creating round: after 10 to 160 creates of the
/// round were acknowledged, with creates of every client still in flight.
fn kill_after(round: u64) -> usize {
    10 + (round as usize * 37) % 150
}

/// Creates contacts one after another until the server is killed. Returns
/// why, if a create failed while the server was up.
async fn create_until_killed(
    mut contacts: ContactServiceClient<Authed>,
    parent: String,
    prefix: String,
    killed: Arc<AtomicBool>,
    acks: Arc<watch::Sender<usize>>,
) -> Result<Seen, String> {
    let mut seen = Seen::default();
    for n in 0.. {
        if killed.load(Ordering::SeqCst) {
            break;
        }
        let email = format!("{prefix}-{n}@example.com");
        let request = CreateContactRequest {
            parent: parent.clone(),
            contact: Some(Contact {
                person_name: Some(PersonName {
                    given_name: "Ben".into(),
                    family_name: "Baker".into(),
                }),
                email: email.clone(),
                organization: "Baker & Sons".into(),
                ..Default::default()
            }),
            request_id: uuid::Uuid::new_v4().to_string(),
        };
        let answer = tokio::time::timeout(CALL_TIMEOUT, contacts.create_contact(request.clone()));
        match answer.await {
            Ok(Ok(contact)) => {
                let contact = contact.into_inner();
                if contact.email != email {
                    return Err(format!(
                        "CreateContact of {email} answered with {}",
                        contact.email
                    ));
                }
                seen.acknowledged.push((contact.name, email));
                acks.send_modify(|n| *n += 1);
            }
            failed => {
                if !killed.load(Ordering::SeqCst) {
                    let why = match failed {
                        Ok(Err(status)) => status.to_string(),
                        _ => format!("no answer within {CALL_TIMEOUT:?}"),
                    };
                    return Err(format!(
                        "CreateContact of {email} failed while the server was up: {why}"
                    ));
                }
                seen.uncertain = Some(Attempt { email, request });
                break;
            }
        }
    }
    Ok(seen)
}

/// Reads the restarted server's state.
struct Check {
    contacts: ContactServiceClient<Authed>,
    audit: AuditServiceClient<Authed>,
    parent: String,
    log: Log,
}

impl Check {
    fn failed(&self, what: &str, status: &Status) -> String {
        format!("{what}: {status}\nserver stderr:\n{}", self.log.text())
    }

    /// Every chain intact, identity's among them.
    async fn chain_intact(&self) {
        let verified = self
            .audit
            .clone()
            .verify_audit_chain(VerifyAuditChainRequest {})
            .await
            .unwrap_or_else(|e| panic!("{}", self.failed("VerifyAuditChain", &e)))
            .into_inner();
        assert!(verified.intact, "{:?}", verified.chains);
        let identity = verified
            .chains
            .iter()
            .find(|c| c.service == "identity")
            .unwrap_or_else(|| panic!("no identity chain in {:?}", verified.chains));
        assert!(identity.intact, "{identity:?}");
        assert!(identity.events_checked > 0, "{identity:?}");
        // A kill can leave events staged by committed creates; the restart
        // alone (no request) seals them before the server serves.
        assert!(
            verified.chains.iter().all(|c| c.unsealed_events == 0),
            "staged events not sealed by the restart: {:?}",
            verified.chains
        );
    }

    /// Identity's whole trail, every page.
    async fn identity_events(&self) -> Vec<AuditEvent> {
        let mut events = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .audit
                .clone()
                .list_audit_events(ListAuditEventsRequest {
                    page_size: PAGE_SIZE,
                    page_token,
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("{}", self.failed("ListAuditEvents", &e)))
                .into_inner();
            events.extend(page.events.into_iter().filter(|e| e.service == "identity"));
            if page.next_page_token.is_empty() {
                return events;
            }
            page_token = page.next_page_token;
        }
    }

    /// Create events per contact name of the tenant.
    fn create_events(&self, events: &[AuditEvent]) -> BTreeMap<String, usize> {
        let prefix = format!("{}/contacts/", self.parent);
        let mut created = BTreeMap::new();
        for event in events {
            if event.action == AuditAction::Create as i32 && event.resource.starts_with(&prefix) {
                *created.entry(event.resource.clone()).or_default() += 1;
            }
        }
        created
    }

    /// The tenant's contacts (name to email), every page.
    async fn stored_contacts(&self) -> BTreeMap<String, String> {
        let mut stored = BTreeMap::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .contacts
                .clone()
                .list_contacts(ListContactsRequest {
                    parent: self.parent.clone(),
                    page_size: PAGE_SIZE,
                    page_token,
                    email: String::new(),
                })
                .await
                .unwrap_or_else(|e| panic!("{}", self.failed("ListContacts", &e)))
                .into_inner();
            for contact in page.contacts {
                let name = contact.name.clone();
                assert!(
                    stored.insert(contact.name, contact.email).is_none(),
                    "ListContacts gave {name} twice"
                );
            }
            if page.next_page_token.is_empty() {
                return stored;
            }
            page_token = page.next_page_token;
        }
    }

    /// GetContact of every (name, email), a few at a time.
    async fn get_all(&self, contacts: &[(String, String)]) {
        let mut readers = JoinSet::new();
        let per_reader = contacts.len().div_ceil(WORKERS as usize).max(1);
        for chunk in contacts.chunks(per_reader) {
            let chunk = chunk.to_vec();
            let mut client = self.contacts.clone();
            readers.spawn(async move {
                for (name, email) in chunk {
                    let got = client
                        .get_contact(GetContactRequest { name: name.clone() })
                        .await
                        .map_err(|e| format!("GetContact {name} ({email}): {e}"))?
                        .into_inner();
                    if got.name != name || got.email != email {
                        return Err(format!(
                            "GetContact {name} ({email}) gave {} ({})",
                            got.name, got.email
                        ));
                    }
                }
                Ok::<_, String>(())
            });
        }
        while let Some(read) = readers.join_next().await {
            if let Err(failure) = read.expect("reader task") {
                panic!("{failure}\nserver stderr:\n{}", self.log.text());
            }
        }
    }
}

/// One chain, every position once: from 1 (nothing was swept: the first
/// retention sweep comes an hour after a start), up by one each event.
fn check_sequences(events: &[AuditEvent]) {
    let sequences: Vec<i64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(
        sequences.first(),
        Some(&1),
        "identity's trail does not start at 1"
    );
    for pair in sequences.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "identity's trail jumps from {} to {}",
            pair[0],
            pair[1]
        );
    }
}

/// A token from `custodian token`, signed with the data folder's key file.
async fn token(data_dir: &Path) -> String {
    let mut command = tokio::process::Command::new(BIN);
    command
        .env_clear()
        .arg("token")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--subject", "test:crash"]);
    for purpose in PURPOSES {
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
