//! Erasure outlives backups, with the real binary: the all-in-one holds a
//! person in identity (a contact held for acme), tickets (her ticket, with
//! an agent's reply mailed to her) and feedback; the service databases are
//! backed up; she is erased through a data-subject request (verified with
//! the code from the outbox, acme instructing its part); the databases are
//! restored from the backup and the server started again. She must be
//! found nowhere, exported nowhere, on disk nowhere, and the request's
//! proof must still be there.
//!
//! SQLite: the server is stopped and the service files (with `-wal` and
//! `-shm`) copied out and back. PostgreSQL: `pg_dump` of the service
//! database, dropped, created again and filled with `pg_restore`; the
//! erasure log lives in a database of its own, which is not restored.
//!
//! Also: what a production target refuses to start without.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{Authed, BIN, Bearer, Log, Postgres, Server, SplitKeys};
use custodian_privacy::{Purpose, keys::KeyFile, token::TokenIssuer};
use custodian_proto::{
    common::v1::{PersonName, SubjectIdentifier, subject_identifier},
    dsr::v1::{
        CreateRequestRequest, GetRequestRequest, InstructInboxItemRequest, Jurisdiction,
        ListInboxItemsRequest, Request, Requester, VerifyRequestRequest, inbox_item, request,
        request_service_client::RequestServiceClient,
        tenant_inbox_service_client::TenantInboxServiceClient,
    },
    feedback::v1::{
        CreateFeedbackRequest, Feedback, FeedbackAuthor, GetFeedbackRequest,
        feedback_service_client::FeedbackServiceClient,
    },
    identity::v1::{
        Contact, CreateContactRequest, CreateTenantRequest, GetContactRequest, Tenant,
        contact_service_client::ContactServiceClient, tenant_service_client::TenantServiceClient,
    },
    subject::v1::{
        ExportSubjectDataRequest, LocateSubjectDataRequest,
        subject_data_service_client::SubjectDataServiceClient,
    },
    tickets::v1::{
        AddMessageRequest, CreateTicketRequest, GetTicketRequest, Ticket, TicketMessage, ticket,
        ticket_message, ticket_service_client::TicketServiceClient,
    },
};
use tonic::Code;

const EMAIL: &str = "xanthe.vorwerk@example.com";
const GIVEN: &str = "Xanthe";
const FAMILY: &str = "Vorwerk-Quillfeather";
/// What of her may be on disk nowhere after the erasure.
const TRACES: [&str; 3] = [EMAIL, FAMILY, "Quillfeather"];

const SERVICES: [&str; 4] = ["identity", "tickets", "analytics", "feedback"];
/// The service files of the all-in-one on SQLite (each with -wal, -shm).
const SERVICE_FILES: [&str; 5] = ["identity", "tickets", "analytics", "feedback", "dsr"];

/// How long a request may take to complete.
const PATIENCE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_does_not_bring_an_erased_person_back_sqlite() {
    let run = Run::new(None, None);
    backup_erase_restore(&run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_does_not_bring_an_erased_person_back_postgres() {
    let Some(database) = Postgres::create().await else {
        return;
    };
    let Some(log) = Postgres::create().await else {
        return;
    };
    let run = Run::new(Some(database), Some(log));
    backup_erase_restore(&run).await;
}

/// The data folder, the key file, the databases and the tokens of one run.
struct Run {
    data: tempfile::TempDir,
    backup: tempfile::TempDir,
    /// The erasure log as it was at the backup (SQLite), kept apart.
    old_log: tempfile::TempDir,
    key_file: PathBuf,
    database: Option<Postgres>,
    erasure_log: Option<Postgres>,
    token: String,
    acme_token: String,
    log: Log,
}

impl Run {
    fn new(database: Option<Postgres>, erasure_log: Option<Postgres>) -> Self {
        let data = tempfile::tempdir().expect("a data folder");
        let keys_dir = tempfile::tempdir().expect("a key folder").keep();
        let key_file = keys_dir.join("keys.toml");
        let keys = KeyFile::generate(
            "mk-erasure-test",
            custodian_privacy::token::generate_key_pair(),
        );
        keys.write_new(&key_file).expect("writing the key file");
        let issuer = TokenIssuer::from_pem(keys.token_signing_key.as_deref().expect("signing key"))
            .expect("issuer");
        let hour = Duration::from_secs(3600);
        Self {
            data,
            backup: tempfile::tempdir().expect("a backup folder"),
            old_log: tempfile::tempdir().expect("a folder"),
            key_file,
            database,
            erasure_log,
            token: issuer
                .issue("test:erasure", &Purpose::ALL, None, hour)
                .expect("token"),
            acme_token: issuer
                .issue(
                    "test:acme-privacy",
                    &[Purpose::DsrFulfilment],
                    Some("acme"),
                    hour,
                )
                .expect("token"),
            log: Log::default(),
        }
    }

    fn dir(&self) -> &Path {
        self.data.path()
    }

    async fn start(&self) -> Server {
        let mut args = vec!["--key-file".to_owned(), self.key_file.display().to_string()];
        if let Some(log) = &self.erasure_log {
            args.push("--erasure-log".to_owned());
            args.push(log.url.clone());
        }
        Server::start_with(
            self.dir(),
            self.database.as_ref().map(|d| d.url.as_str()),
            "127.0.0.1:0",
            &args,
            &self.log,
        )
        .await
    }

    fn bearer(&self) -> Bearer {
        Bearer::new(&self.token)
    }

    /// The service databases as they are now, copied aside.
    async fn back_up(&self) {
        match &self.database {
            None => {
                for file in service_files(self.dir()) {
                    std::fs::copy(&file, self.backup.path().join(file.file_name().unwrap()))
                        .expect("copying a service file");
                }
                std::fs::copy(
                    self.dir().join("erasures.db"),
                    self.old_log.path().join("erasures.db"),
                )
                .expect("copying the erasure log");
            }
            Some(database) => {
                let dump = self.backup.path().join("services.dump");
                let output = Command::new("pg_dump")
                    .args(["--format=custom", "--file"])
                    .arg(&dump)
                    .arg(&database.url)
                    .output()
                    .expect("running pg_dump");
                assert!(output.status.success(), "pg_dump: {output:?}");
            }
        }
    }

    /// The service databases put back as the backup has them (the server
    /// is stopped).
    async fn restore(&self) {
        match &self.database {
            None => {
                for file in service_files(self.dir()) {
                    std::fs::remove_file(&file).expect("removing a service file");
                }
                for entry in std::fs::read_dir(self.backup.path()).expect("the backup") {
                    let from = entry.expect("entry").path();
                    std::fs::copy(&from, self.dir().join(from.file_name().unwrap()))
                        .expect("restoring a service file");
                }
            }
            Some(database) => {
                let (admin, name) = database
                    .url
                    .rsplit_once('/')
                    .map(|(base, name)| (format!("{base}/postgres"), name.to_owned()))
                    .expect("a database name");
                sqlx::any::install_default_drivers();
                let pool = sqlx::AnyPool::connect(&admin).await.expect("admin");
                for statement in [
                    format!("DROP DATABASE {name} WITH (FORCE)"),
                    format!("CREATE DATABASE {name}"),
                ] {
                    sqlx::query(sqlx::AssertSqlSafe(statement))
                        .execute(&pool)
                        .await
                        .expect("dropping and creating the database");
                }
                pool.close().await;
                let output = Command::new("pg_restore")
                    .args(["--no-owner", "--dbname"])
                    .arg(&database.url)
                    .arg(self.backup.path().join("services.dump"))
                    .output()
                    .expect("running pg_restore");
                assert!(output.status.success(), "pg_restore: {output:?}");
            }
        }
    }
}

/// The SQLite files of the services in `dir` (not the erasure log's).
fn service_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("the data folder") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if SERVICE_FILES
            .iter()
            .any(|s| name == format!("{s}.db") || name.starts_with(&format!("{s}.db-")))
        {
            files.push(path);
        }
    }
    files
}

fn person_name() -> Option<PersonName> {
    Some(PersonName {
        given_name: GIVEN.into(),
        family_name: FAMILY.into(),
    })
}

fn by_email() -> Option<SubjectIdentifier> {
    Some(SubjectIdentifier {
        kind: Some(subject_identifier::Kind::Email(EMAIL.into())),
    })
}

/// Her records: a contact held for acme, a ticket with a reply mailed to
/// her, feedback.
struct Hers {
    contact: String,
    ticket: String,
    feedback: String,
}

async fn seed(run: &Run, server: &Server) -> Hers {
    let channel = server.channel.clone();
    TenantServiceClient::with_interceptor(channel.clone(), run.bearer())
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
    let contact = ContactServiceClient::with_interceptor(channel.clone(), run.bearer())
        .create_contact(CreateContactRequest {
            parent: "tenants/acme".into(),
            contact: Some(Contact {
                person_name: person_name(),
                email: EMAIL.into(),
                organization: "Quillfeather Freight".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("contact")
        .into_inner()
        .name;
    let mut tickets = TicketServiceClient::with_interceptor(channel.clone(), run.bearer());
    let ticket = tickets
        .create_ticket(CreateTicketRequest {
            ticket: Some(Ticket {
                channel: ticket::Channel::Email as i32,
                kind: ticket::Kind::Inquiry as i32,
                category: "billing".into(),
                subject: "Invoice".into(),
                requester: Some(custodian_proto::tickets::v1::Requester {
                    person_name: person_name(),
                    email: EMAIL.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            description: "Where is my invoice?".into(),
            request_id: String::new(),
        })
        .await
        .expect("ticket")
        .into_inner()
        .name;
    tickets
        .add_message(AddMessageRequest {
            parent: ticket.clone(),
            message: Some(TicketMessage {
                kind: ticket_message::Kind::AgentReply as i32,
                body: format!("Dear {GIVEN} {FAMILY}, your invoice is on its way."),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("an agent's reply");
    let feedback = FeedbackServiceClient::with_interceptor(channel.clone(), run.bearer())
        .create_feedback(CreateFeedbackRequest {
            feedback: Some(Feedback {
                author: Some(FeedbackAuthor {
                    person_name: person_name(),
                    email: EMAIL.into(),
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
        .expect("feedback")
        .into_inner()
        .name;
    Hers {
        contact,
        ticket,
        feedback,
    }
}

/// The `.eml` files of the outbox, as text.
fn mails(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir.join("outbox")) else {
        return Vec::new();
    };
    entries
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .map(|p| std::fs::read_to_string(p).expect("a mail"))
        .collect()
}

/// The code of the acknowledgement mailed to her for `request`.
fn code(dir: &Path, request: &str) -> String {
    let id = request.rsplit('/').next().unwrap();
    mails(dir)
        .iter()
        .filter(|m| m.contains(id) && m.to_lowercase().contains(EMAIL))
        .find_map(|m| {
            m.lines().find_map(|l| {
                let code = l.strip_prefix("    ")?;
                (code.len() == 8 && code.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| code.to_owned())
            })
        })
        .expect("the code in the outbox")
}

async fn requests(run: &Run, server: &Server) -> RequestServiceClient<Authed> {
    RequestServiceClient::with_interceptor(server.channel.clone(), run.bearer())
}

async fn get(run: &Run, server: &Server, name: &str) -> Request {
    requests(run, server)
        .await
        .get_request(GetRequestRequest { name: name.into() })
        .await
        .expect("get request")
        .into_inner()
}

/// Waits until `done` holds of the request.
async fn wait(run: &Run, server: &Server, name: &str, what: &str, done: impl Fn(&Request) -> bool) {
    let began = Instant::now();
    loop {
        let request = get(run, server, name).await;
        if done(&request) {
            return;
        }
        assert!(
            began.elapsed() < PATIENCE,
            "{name} not {what} within {PATIENCE:?}: {request:?}; stderr:\n{}",
            run.log.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn state(request: &Request) -> request::State {
    request::State::try_from(request.state).unwrap_or_default()
}

/// Erases her through a data-subject request, acme instructing its part;
/// returns once the request completed and its notice was handed over.
async fn erase(run: &Run, server: &Server) -> String {
    let created = requests(run, server)
        .await
        .create_request(CreateRequestRequest {
            request: Some(Request {
                kind: request::Kind::Erasure as i32,
                jurisdiction: Jurisdiction::Gdpr as i32,
                requester: Some(Requester {
                    person_name: person_name(),
                    email: EMAIL.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("create request")
        .into_inner();
    let name = created.name.clone();
    requests(run, server)
        .await
        .verify_request(VerifyRequestRequest {
            name: name.clone(),
            code: code(run.dir(), &name),
        })
        .await
        .expect("verify");
    wait(run, server, &name, "routed to acme", |r| {
        state(r) == request::State::AwaitingTenants
    })
    .await;
    let mut inbox = TenantInboxServiceClient::with_interceptor(
        server.channel.clone(),
        Bearer::new(&run.acme_token),
    );
    let item = inbox
        .list_inbox_items(ListInboxItemsRequest {
            parent: "tenants/acme".into(),
            ..Default::default()
        })
        .await
        .expect("acme's inbox")
        .into_inner()
        .items
        .into_iter()
        .find(|i| i.request == name)
        .expect("the request in acme's inbox");
    inbox
        .instruct_inbox_item(InstructInboxItemRequest {
            name: item.name,
            instruction: inbox_item::Instruction::Fulfil as i32,
            reason: String::new(),
        })
        .await
        .expect("acme instructs");
    wait(run, server, &name, "completed and mailed", |r| {
        state(r) == request::State::Completed
            && r.history
                .iter()
                .any(|e| e.kind == "mailed" && e.target == "completed")
    })
    .await;
    name
}

fn subjects(run: &Run, server: &Server, service: &str) -> SubjectDataServiceClient<Authed> {
    SubjectDataServiceClient::with_interceptor(
        server.channel.clone(),
        run.bearer().with_service(service),
    )
}

/// Nothing of her is located or exported by any service, and her records
/// are gone by name.
async fn found_nowhere(run: &Run, server: &Server, hers: &Hers) {
    for service in SERVICES {
        let located = subjects(run, server, service)
            .locate_subject_data(LocateSubjectDataRequest {
                subject: by_email(),
                ..Default::default()
            })
            .await
            .expect("locate")
            .into_inner()
            .records;
        assert!(located.is_empty(), "{service} locates her: {located:?}");
        let mut exported = subjects(run, server, service)
            .export_subject_data(ExportSubjectDataRequest {
                subject: by_email(),
                ..Default::default()
            })
            .await
            .expect("export")
            .into_inner();
        let first = exported.message().await.expect("export stream");
        assert!(first.is_none(), "{service} exports her: {first:?}");
    }
    let contact = ContactServiceClient::with_interceptor(server.channel.clone(), run.bearer())
        .get_contact(GetContactRequest {
            name: hers.contact.clone(),
        })
        .await;
    assert_eq!(contact.map(|_| ()).unwrap_err().code(), Code::NotFound);
    // A ticket is kept anonymised: without its requester.
    let ticket = TicketServiceClient::with_interceptor(server.channel.clone(), run.bearer())
        .get_ticket(GetTicketRequest {
            name: hers.ticket.clone(),
        })
        .await
        .expect("the anonymised ticket")
        .into_inner();
    assert!(
        ticket
            .requester
            .is_none_or(|r| r.email.is_empty() && r.person_name.is_none()),
        "the ticket still names her"
    );
    let feedback = FeedbackServiceClient::with_interceptor(server.channel.clone(), run.bearer())
        .get_feedback(GetFeedbackRequest {
            name: hers.feedback.clone(),
        })
        .await;
    assert_eq!(feedback.map(|_| ()).unwrap_err().code(), Code::NotFound);
}

/// `grep -r` of the data folder for each trace of her finds nothing (the
/// outbox, the SQLite files, the erasure log: every file).
fn on_disk_nowhere(run: &Run, when: &str) {
    for trace in TRACES {
        let output = Command::new("grep")
            .args(["-r", "-a", "-i", "-l", "--", trace])
            .arg(run.dir())
            .output()
            .expect("running grep");
        assert_eq!(
            output.status.code(),
            Some(1),
            "{when}: grep -r finds {trace:?} in {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
}

async fn backup_erase_restore(run: &Run) {
    let mut server = run.start().await;
    let hers = seed(run, &server).await;
    assert!(
        mails(run.dir()).iter().any(|m| m.contains(FAMILY)),
        "the agent's reply to her is in the outbox"
    );
    server.kill_9().await;
    run.back_up().await;

    let mut server = run.start().await;
    let request = erase(run, &server).await;
    found_nowhere(run, &server, &hers).await;
    assert!(
        !mails(run.dir())
            .iter()
            .any(|m| m.to_lowercase().contains(EMAIL) || m.contains(FAMILY)),
        "the outbox holds no mail to her or about her"
    );
    on_disk_nowhere(run, "after the erasure");
    server.kill_9().await;

    run.restore().await;
    let mut server = run.start().await;
    assert!(
        run.log.text().contains("were applied again"),
        "the start says it applied erasures again; stderr:\n{}",
        run.log.text()
    );
    found_nowhere(run, &server, &hers).await;
    on_disk_nowhere(run, "after the restore");
    // The proof of the request is still there, completed, saying where it
    // erased.
    let proof = get(run, &server, &request).await;
    assert_eq!(state(&proof), request::State::Completed, "{proof:?}");
    assert_eq!(
        request::Kind::try_from(proof.kind).unwrap(),
        request::Kind::Erasure
    );
    assert!(proof.complete_time.is_some(), "{proof:?}");
    let erased: Vec<&str> = proof
        .history
        .iter()
        .filter(|e| e.kind == "erased")
        .map(|e| e.target.as_str())
        .collect();
    for service in ["identity for tenants/acme", "tickets", "feedback"] {
        assert!(erased.contains(&service), "{service} in {erased:?}");
    }
    server.kill_9().await;
    if run.database.is_none() {
        log_older_than_the_databases(run, &hers).await;
    }
}

/// The wrong way round: the erasure log put back from the backup, older
/// than the databases. Said at start, and nothing comes back (the
/// databases reflect the erasure).
async fn log_older_than_the_databases(run: &Run, hers: &Hers) {
    std::fs::copy(
        run.old_log.path().join("erasures.db"),
        run.dir().join("erasures.db"),
    )
    .expect("putting the old log back");
    let mut server = run.start().await;
    assert!(
        run.log
            .text()
            .contains("the erasure log holds fewer erasures than this database reflects"),
        "{}",
        run.log.text()
    );
    found_nowhere(run, &server, hers).await;
    server.kill_9().await;
}

// --- what production refuses ----------------------------------------------------

/// Runs `custodian` with `args` until it exits by itself, which it must,
/// and returns what it wrote to stderr.
fn refused(args: &[&str]) -> String {
    let data = tempfile::tempdir().expect("a data folder");
    refused_in(data.path(), args)
}

/// As [`refused`], with `data` as the data folder.
fn refused_in(data: &Path, args: &[&str]) -> String {
    // The keys a server of that target is given in production (its own key
    // file and credential), so what is refused is what the test names.
    let key_args = match args.iter().position(|a| *a == "--target") {
        // (SplitKeys::args begins with the --target the caller gives.)
        Some(i) => SplitKeys::init(&data.join("keys")).args(args[i + 1])[2..].to_vec(),
        None => {
            let keys = data.join("keys.toml");
            KeyFile::generate("mk-refuse", custodian_privacy::token::generate_key_pair())
                .write_new(&keys)
                .expect("a key file");
            vec!["--key-file".to_owned(), keys.display().to_string()]
        }
    };
    let output = Command::new(BIN)
        .env_clear()
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args(&key_args)
        .args(args)
        .output()
        .expect("running custodian");
    assert!(
        !output.status.success(),
        "custodian {args:?} started: {output:?}"
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_target_that_mails_refuses_to_start_without_smtp_or_an_outbox_asked_for() {
    let log = tempfile::tempdir().expect("a folder");
    let log_url = format!(
        "sqlite://{}?mode=rwc",
        log.path().join("erasures.db").display()
    );
    let stderr = refused(&["--target", "tickets", "--erasure-log", &log_url]);
    assert!(
        stderr.contains("--smtp-url") && stderr.contains("--mail-outbox"),
        "{stderr}"
    );
    assert!(stderr.contains("tickets sends mail"), "{stderr}");
    let mut dsr = vec!["--target", "dsr", "--erasure-log", &log_url];
    let peers = dsr_peers();
    dsr.extend(peers.iter().map(String::as_str));
    let stderr = refused(&dsr);
    assert!(stderr.contains("dsr sends mail"), "{stderr}");
    // Both at once is no answer either.
    let stderr = refused(&[
        "--erasure-log",
        &log_url,
        "--smtp-url",
        "smtp://127.0.0.1:2525",
        "--mail-outbox",
        "/tmp/outbox",
    ]);
    assert!(stderr.contains("choose one"), "{stderr}");
}

/// `--peer NAME=URL` for each of `names`.
fn peers_of(names: &[&str]) -> Vec<String> {
    names
        .iter()
        .flat_map(|name| ["--peer".to_owned(), format!("{name}=http://{name}:50051")])
        .collect()
}

/// `--peer` for each service holding personal data.
fn dsr_peers() -> Vec<String> {
    peers_of(&["identity", "tickets", "analytics", "feedback"])
}

/// dsr reaches every service whose declarations say it holds personal
/// data; one it cannot reach (run elsewhere, with no `--peer`) stops it at
/// start, named, instead of being skipped by every request.
#[test]
fn dsr_refuses_to_start_without_a_peer_for_each_service_holding_personal_data() {
    let log = tempfile::tempdir().expect("a folder");
    let log_url = format!(
        "sqlite://{}?mode=rwc",
        log.path().join("erasures.db").display()
    );
    let outbox = log.path().join("outbox").display().to_string();
    let base = [
        "--target",
        "dsr",
        "--erasure-log",
        &log_url,
        "--mail-outbox",
        &outbox,
    ];
    let stderr = refused(&base);
    assert!(
        stderr.contains("cannot reach identity, tickets, analytics, feedback"),
        "{stderr}"
    );
    assert!(stderr.contains("--peer"), "{stderr}");
    // One missing of four is named alone.
    let mut args = base.to_vec();
    let three = peers_of(&["identity", "tickets", "feedback"]);
    args.extend(three.iter().map(String::as_str));
    let stderr = refused(&args);
    assert!(
        stderr.contains("cannot reach analytics, which holds"),
        "{stderr}"
    );
    assert!(!stderr.contains("identity"), "{stderr}");
    // The old hand-kept list is refused, saying where targets come from.
    let mut args = base.to_vec();
    let peers = dsr_peers();
    args.extend(peers.iter().map(String::as_str));
    args.extend(["--dsr-services", "identity"]);
    let stderr = refused(&args);
    assert!(
        stderr.contains("declarations say it holds personal"),
        "{stderr}"
    );
}

#[test]
fn a_target_refuses_to_start_without_an_erasure_log_of_its_own() {
    let stderr = refused(&["--target", "identity"]);
    assert!(stderr.contains("--erasure-log"), "{stderr}");
    let db = tempfile::tempdir().expect("a folder");
    let url = format!(
        "sqlite://{}?mode=rwc",
        db.path().join("identity.db").display()
    );
    // The same file, spelled differently.
    let same = format!("sqlite:{}", db.path().join("identity.db").display());
    let stderr = refused(&[
        "--target",
        "identity",
        "--database-url",
        &url,
        "--erasure-log",
        &same,
    ]);
    assert!(stderr.contains("own database"), "{stderr}");
    // The all-in-one's own SQLite files too.
    let data = tempfile::tempdir().expect("a folder");
    std::fs::create_dir(data.path().join("sub")).expect("a folder");
    let stderr = refused_in(
        data.path(),
        &[
            "--erasure-log",
            &format!("sqlite://{}", data.path().join("sub/../dsr.db").display()),
        ],
    );
    assert!(stderr.contains("dsr's own database"), "{stderr}");
}

/// What the refusals leave out starts: tickets with its outbox asked for,
/// identity (which sends no mail) without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_with_what_it_needs_starts() {
    let data = tempfile::tempdir().expect("a data folder");
    let keys = SplitKeys::init(&data.path().join("keys"));
    let log_url = format!(
        "sqlite://{}?mode=rwc",
        data.path().join("erasures.db").display()
    );
    let log = Log::default();
    for (target, extra) in [
        (
            "tickets",
            vec![
                "--mail-outbox".to_owned(),
                data.path().join("mail").display().to_string(),
            ],
        ),
        ("identity", vec![]),
    ] {
        let mut args = keys.args(target);
        args.extend(["--erasure-log".to_owned(), log_url.clone()]);
        args.extend(extra);
        let mut server =
            Server::start_with(&data.path().join(target), None, "127.0.0.1:0", &args, &log).await;
        server.kill_9().await;
    }
    assert!(data.path().join("mail").is_dir(), "the outbox asked for");
    assert!(
        log.text().contains("mail is NOT sent"),
        "said at WARN: {}",
        log.text()
    );
}
