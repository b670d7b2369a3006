//! Throughput and latency of the suite over real gRPC, on SQLite and on
//! PostgreSQL: `cargo bench -p custodian --bench suite`.
//!
//! A fixed workload against the real server (the all-in-one `Application`,
//! identity and tickets on one database, the production tower stack),
//! started in this process:
//!
//! - `Health/Check`: a baseline that touches no database, so it shows what
//!   tonic, HTTP/2 and the server's layers cost by themselves;
//! - `CreateContact`: distinct valid contacts, each with a name, email, phone,
//!   organisation and notes;
//! - `GetContact`: reads spread over the contacts just created;
//! - `CreateTicket`: web-form tickets from distinct requesters, each with a
//!   first message (a ticket and a message, sealed, audited, in two writes);
//! - `AddMessage`: an agent's first reply to each ticket just opened (the
//!   message, and the ticket's first-response time and state).
//!
//! Each method gets a warm-up that is not counted, then a fixed number of
//! requests from `CONCURRENCY` requests in flight spread over `CONNECTIONS`
//! HTTP/2 connections (one tonic `Channel` each). Every response is checked;
//! the bench exits non-zero when more than 0.1% of a row's requests failed.
//!
//! The load generator and the server share one tokio runtime with two worker
//! threads, on a machine with two cores: the figures are for client and
//! server together on two cores, not for a server with two cores of its own.
//! For scale, a bare tonic echo server reaches ~120k req/s on this machine
//! under h2load with 16 connections x 16 streams (h2load is far cheaper per
//! request than a tonic client); `benches/h2load-get-contact.sh` measures
//! GetContact the same way against the release `custodian` binary.
//!
//! Besides req/s and latency, the table gives `cpu us/req`: CPU time of this
//! process (client and server; not PostgreSQL's own processes) per request.
//! On a shared machine req/s moves with whatever else runs, CPU per request
//! much less.
//!
//! No tracing subscriber is installed, so logging costs nothing here.
//!
//! PostgreSQL is found at `CUSTODIAN_BENCH_POSTGRES_URL` (default: the local
//! server, database `postgres`); the bench creates a database of its own there
//! and drops it at the end. When PostgreSQL cannot be reached, that backend is
//! skipped with a message.
//!
//! For experiments only (the defaults are the workload), these variables
//! override a setting: `CUSTODIAN_BENCH_BACKENDS` (e.g. `sqlite`),
//! `CUSTODIAN_BENCH_CONCURRENCY`, `CUSTODIAN_BENCH_CONNECTIONS`,
//! `CUSTODIAN_BENCH_SQLITE_MAX_CONNECTIONS`,
//! `CUSTODIAN_BENCH_POSTGRES_MAX_CONNECTIONS`, `CUSTODIAN_BENCH_GETS`,
//! `CUSTODIAN_BENCH_CREATES`, `CUSTODIAN_BENCH_TICKETS`.

use std::{
    future::Future,
    process::ExitCode,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use custodian_privacy::{
    Purpose,
    keys::KeyFile,
    token::{TokenIssuer, generate_key_pair},
};
use custodian_proto::{
    common::v1::PersonName,
    identity::v1::{
        Contact, CreateContactRequest, CreateTenantRequest, GetContactRequest, Tenant,
        contact_service_client::ContactServiceClient, tenant_service_client::TenantServiceClient,
    },
    tickets::v1::{
        AddMessageRequest, CreateTicketRequest, Requester, Ticket, TicketMessage,
        ticket::{Channel as TicketChannel, Kind},
        ticket_message,
        ticket_service_client::TicketServiceClient,
    },
};
use custodian_runtime::{Config, server::READY_TIMEOUT, time::SystemClock};
use hdrhistogram::Histogram;
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Requests in flight at once.
const CONCURRENCY: usize = 64;
/// HTTP/2 connections the requests are spread over.
const CONNECTIONS: usize = 4;
/// Requests sent before each measured run, not counted.
const WARMUP: usize = 1_000;
const HEALTH_REQUESTS: usize = 100_000;
const CREATE_REQUESTS: usize = 20_000;
const GET_REQUESTS: usize = 50_000;
const TICKET_REQUESTS: usize = 10_000;

/// Pool size on SQLite. Measured with this bench before the privacy kernel
/// (commit 1706e64; GetContact req/s, CreateContact p99): 1: 8.0k, 39 ms;
/// 2: 9.3k, 34 ms; 4: 12.6k, 35 ms; 8: 13.2k, 56 ms; 16: 14.1k, 99 ms. Reads scale with the pool because a
/// read holds its connection across three hand-offs to sqlx's per-connection
/// SQLite thread (ping on acquire, the query, ping on release); writes take
/// turns on SQLite's one write lock whatever the size, and more connections
/// only add busy-timeout sleeps to their tail. 8 keeps reads within noise of
/// 16 at about half the write p99.
const SQLITE_MAX_CONNECTIONS: u32 = 8;
/// Pool size on PostgreSQL: the server's default. 4, 8 and 16 measured the
/// same within noise, 32 slightly worse (the PostgreSQL backends share the
/// same two cores).
const POSTGRES_MAX_CONNECTIONS: u32 = 16;

/// Above this share of failed requests in any row, the bench fails.
const MAX_ERROR_RATE: f64 = 0.001;

const TENANT: &str = "bench";
const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn main() -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("bench failed: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn label(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Workload settings: the constants above, unless overridden for an
/// experiment.
struct Settings {
    concurrency: usize,
    connections: usize,
    creates: usize,
    gets: usize,
    tickets: usize,
    sqlite_max_connections: u32,
    postgres_max_connections: u32,
    backends: Vec<Backend>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => match value.parse() {
            Ok(parsed) => {
                println!("(override) {name}={value}");
                parsed
            }
            Err(_) => {
                eprintln!("ignoring {name}={value:?}: not a number");
                default
            }
        },
        Err(_) => default,
    }
}

impl Settings {
    fn from_env() -> Self {
        let backends = match std::env::var("CUSTODIAN_BENCH_BACKENDS") {
            Ok(list) => {
                println!("(override) CUSTODIAN_BENCH_BACKENDS={list}");
                let mut backends = Vec::new();
                if list.contains("sqlite") {
                    backends.push(Backend::Sqlite);
                }
                if list.contains("postgres") {
                    backends.push(Backend::Postgres);
                }
                backends
            }
            Err(_) => vec![Backend::Sqlite, Backend::Postgres],
        };
        Self {
            concurrency: env_or("CUSTODIAN_BENCH_CONCURRENCY", CONCURRENCY).max(1),
            connections: env_or("CUSTODIAN_BENCH_CONNECTIONS", CONNECTIONS).max(1),
            creates: env_or("CUSTODIAN_BENCH_CREATES", CREATE_REQUESTS).max(1),
            gets: env_or("CUSTODIAN_BENCH_GETS", GET_REQUESTS),
            tickets: env_or("CUSTODIAN_BENCH_TICKETS", TICKET_REQUESTS).max(WARMUP + 1),
            sqlite_max_connections: env_or(
                "CUSTODIAN_BENCH_SQLITE_MAX_CONNECTIONS",
                SQLITE_MAX_CONNECTIONS,
            ),
            postgres_max_connections: env_or(
                "CUSTODIAN_BENCH_POSTGRES_MAX_CONNECTIONS",
                POSTGRES_MAX_CONNECTIONS,
            ),
            backends,
        }
    }
}

/// One line of the table.
struct Row {
    backend: &'static str,
    method: &'static str,
    requests: usize,
    concurrency: usize,
    elapsed: Duration,
    latency_us: Histogram<u64>,
    errors: usize,
    /// CPU time of this whole process (client and server), if known.
    cpu: Option<Duration>,
}

impl Row {
    fn error_rate(&self) -> f64 {
        self.errors as f64 / self.requests.max(1) as f64
    }
}

/// Runs every backend, prints the table, and says whether the error rate of
/// every row stayed within bounds.
async fn run() -> anyhow::Result<bool> {
    let settings = Settings::from_env();
    sqlx::any::install_default_drivers();
    println!(
        "suite bench: {} in flight over {} HTTP/2 connections; client and server share one 2-worker tokio runtime",
        settings.concurrency, settings.connections
    );
    let mut rows = Vec::new();
    for &backend in &settings.backends {
        let Some(database) = BenchDatabase::create(backend).await? else {
            continue;
        };
        let max_connections = match backend {
            Backend::Sqlite => settings.sqlite_max_connections,
            Backend::Postgres => settings.postgres_max_connections,
        };
        println!(
            "{}: database_max_connections = {max_connections}",
            backend.label()
        );
        let outcome = bench_backend(backend, &database.url, max_connections, &settings).await;
        database.drop_database().await;
        rows.extend(outcome?);
    }

    println!();
    print_table(&rows);
    let mut ok = true;
    for row in &rows {
        if row.errors > 0 {
            println!(
                "!! {} {}: {} of {} requests FAILED ({:.3}%)",
                row.backend,
                row.method,
                row.errors,
                row.requests,
                row.error_rate() * 100.0
            );
        }
        if row.error_rate() > MAX_ERROR_RATE {
            ok = false;
        }
    }
    if !ok {
        println!(
            "FAILED: more than {}% of a row's requests failed",
            MAX_ERROR_RATE * 100.0
        );
    }
    Ok(ok)
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<9} {:<14} {:>9} {:>12} {:>9} {:>8} {:>8} {:>7} {:>11}",
        "backend",
        "method",
        "requests",
        "concurrency",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "cpu us/req"
    );
    for row in rows {
        let ms = |q: f64| row.latency_us.value_at_quantile(q) as f64 / 1000.0;
        let cpu = row.cpu.map_or_else(
            || "-".to_owned(),
            |cpu| {
                format!(
                    "{:.0}",
                    cpu.as_secs_f64() * 1e6 / row.requests.max(1) as f64
                )
            },
        );
        println!(
            "{:<9} {:<14} {:>9} {:>12} {:>9.0} {:>8.2} {:>8.2} {:>7} {:>11}",
            row.backend,
            row.method,
            row.requests,
            row.concurrency,
            row.requests as f64 / row.elapsed.as_secs_f64(),
            ms(0.50),
            ms(0.99),
            row.errors,
            cpu
        );
    }
}

/// Starts a server on `url`, runs the three workloads, stops the server.
async fn bench_backend(
    backend: Backend,
    url: &str,
    max_connections: u32,
    settings: &Settings,
) -> anyhow::Result<Vec<Row>> {
    let server = BenchServer::start(url, max_connections).await?;
    let outcome = workloads(backend, &server, settings).await;
    server.stop().await?;
    outcome
}

async fn workloads(
    backend: Backend,
    server: &BenchServer,
    settings: &Settings,
) -> anyhow::Result<Vec<Row>> {
    let label = backend.label();
    let channels = server.channels(settings.connections).await?;
    let concurrency = settings.concurrency;
    let mut rows = Vec::new();

    // Health/Check: no database, the floor of what one call costs.
    let health = |client: HealthClient<Authed>, _n: usize| async move {
        let mut client = client;
        let response = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
            .into_inner();
        if response.status == ServingStatus::Serving as i32 {
            Ok(())
        } else {
            Err(format!("health status {}", response.status))
        }
    };
    drive(&channels, WARMUP, concurrency, 0, HealthClient::new, health).await;
    let run = drive(
        &channels,
        HEALTH_REQUESTS,
        concurrency,
        0,
        HealthClient::new,
        health,
    )
    .await;
    rows.push(run.into_row(label, "Health/Check", HEALTH_REQUESTS, concurrency));

    // CreateContact: contact n is c{n}@example.com. The warm-up creates
    // contacts too (numbered after the measured ones); every contact
    // created is a target of the reads below.
    TenantServiceClient::new(channels[0].clone())
        .create_tenant(CreateTenantRequest {
            tenant: Some(Tenant {
                display_name: "Bench Tenant".into(),
                ..Default::default()
            }),
            tenant_id: TENANT.into(),
            request_id: String::new(),
        })
        .await
        .context("creating the bench tenant")?;
    let creates = settings.creates;
    let names: Arc<Vec<OnceLock<String>>> =
        Arc::new((0..creates + WARMUP).map(|_| OnceLock::new()).collect());
    let create = {
        let names = names.clone();
        move |client: ContactServiceClient<Authed>, n: usize| {
            let names = names.clone();
            async move {
                let mut client = client;
                let email = format!("c{n}@example.com");
                let created = client
                    .create_contact(CreateContactRequest {
                        parent: format!("tenants/{TENANT}"),
                        contact: Some(contact(n, &email)),
                        request_id: String::new(),
                    })
                    .await
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                    .into_inner();
                let prefix = format!("tenants/{TENANT}/contacts/");
                if !created.name.starts_with(&prefix) || created.email != email {
                    return Err(format!(
                        "unexpected contact {:?} <{}> for {email}",
                        created.name, created.email
                    ));
                }
                let _ = names[n].set(created.name);
                Ok(())
            }
        }
    };
    drive(
        &channels,
        WARMUP,
        concurrency,
        creates,
        ContactServiceClient::new,
        create.clone(),
    )
    .await;
    let run = drive(
        &channels,
        creates,
        concurrency,
        0,
        ContactServiceClient::new,
        create,
    )
    .await;
    rows.push(run.into_row(label, "CreateContact", creates, concurrency));

    // GetContact over every contact created, in creation order, round and
    // round.
    let names: Arc<Vec<String>> = Arc::new(names.iter().filter_map(|n| n.get().cloned()).collect());
    if names.is_empty() {
        anyhow::bail!("no contact was created, so there is nothing to get");
    }
    let get = move |client: ContactServiceClient<Authed>, n: usize| {
        let name = names[n % names.len()].clone();
        async move {
            let mut client = client;
            let contact = client
                .get_contact(GetContactRequest { name: name.clone() })
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                .into_inner();
            if contact.name != name || !contact.email.ends_with("@example.com") {
                return Err(format!("asked for {name}, got {:?}", contact.name));
            }
            Ok(())
        }
    };
    drive(
        &channels,
        WARMUP,
        concurrency,
        0,
        ContactServiceClient::new,
        get.clone(),
    )
    .await;
    let gets = settings.gets;
    let run = drive(
        &channels,
        gets,
        concurrency,
        0,
        ContactServiceClient::new,
        get,
    )
    .await;
    rows.push(run.into_row(label, "GetContact", gets, concurrency));
    rows.extend(ticket_workloads(label, &channels, settings).await?);
    Ok(rows)
}

/// CreateTicket, then AddMessage (an agent's first reply) on each ticket.
async fn ticket_workloads(
    label: &'static str,
    channels: &[Authed],
    settings: &Settings,
) -> anyhow::Result<Vec<Row>> {
    let concurrency = settings.concurrency;
    let tickets = settings.tickets;
    let mut rows = Vec::new();
    let names: Arc<Vec<OnceLock<String>>> =
        Arc::new((0..tickets + WARMUP).map(|_| OnceLock::new()).collect());
    let create = {
        let names = names.clone();
        move |client: TicketServiceClient<Authed>, n: usize| {
            let names = names.clone();
            async move {
                let mut client = client;
                let email = format!("r{n}@example.com");
                let created = client
                    .create_ticket(CreateTicketRequest {
                        ticket: Some(ticket(n, &email)),
                        description: "The export to CSV stops halfway with an error.".into(),
                        request_id: String::new(),
                    })
                    .await
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                    .into_inner();
                if !created.name.starts_with("tickets/")
                    || created.requester.as_ref().map(|r| r.email.as_str()) != Some(email.as_str())
                {
                    return Err(format!("unexpected ticket {:?} for {email}", created.name));
                }
                let _ = names[n].set(created.name);
                Ok(())
            }
        }
    };
    drive(
        channels,
        WARMUP,
        concurrency,
        tickets,
        TicketServiceClient::new,
        create.clone(),
    )
    .await;
    let run = drive(
        channels,
        tickets,
        concurrency,
        0,
        TicketServiceClient::new,
        create,
    )
    .await;
    rows.push(run.into_row(label, "CreateTicket", tickets, concurrency));

    // One reply per ticket, so each is the ticket's first: the message and
    // the ticket's first-response time and state change together.
    let names: Arc<Vec<String>> = Arc::new(names.iter().filter_map(|n| n.get().cloned()).collect());
    anyhow::ensure!(names.len() > WARMUP, "too few tickets were created");
    let reply = move |client: TicketServiceClient<Authed>, n: usize| {
        let parent = names[n % names.len()].clone();
        async move {
            let mut client = client;
            let message = client
                .add_message(AddMessageRequest {
                    parent: parent.clone(),
                    message: Some(TicketMessage {
                        kind: ticket_message::Kind::AgentReply as i32,
                        body: "Thanks, we are looking into it; could you send the file's size?"
                            .into(),
                        ..Default::default()
                    }),
                    request_id: String::new(),
                })
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                .into_inner();
            if !message.name.starts_with(&parent) {
                return Err(format!(
                    "asked for a message of {parent}, got {:?}",
                    message.name
                ));
            }
            Ok(())
        }
    };
    // Warm-up replies go to the warm-up tickets (numbered after the measured ones).
    let warm = {
        let reply = reply.clone();
        move |client, n: usize| reply(client, n + tickets)
    };
    drive(
        channels,
        WARMUP,
        concurrency,
        0,
        TicketServiceClient::new,
        warm,
    )
    .await;
    let run = drive(
        channels,
        tickets,
        concurrency,
        0,
        TicketServiceClient::new,
        reply,
    )
    .await;
    rows.push(run.into_row(label, "AddMessage", tickets, concurrency));
    Ok(rows)
}

/// A valid web-form ticket from an outside individual, distinct for each `n`.
fn ticket(n: usize, email: &str) -> Ticket {
    Ticket {
        channel: TicketChannel::WebForm as i32,
        kind: Kind::Inquiry as i32,
        category: "export".into(),
        subject: format!("Export stops halfway ({n})"),
        requester: Some(Requester {
            person_name: Some(PersonName {
                given_name: "Bench".into(),
                family_name: format!("Requester {n}"),
            }),
            email: email.to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A valid contact, distinct for each `n`.
fn contact(n: usize, email: &str) -> Contact {
    Contact {
        person_name: Some(PersonName {
            given_name: "Bench".into(),
            family_name: format!("Contact {n}"),
        }),
        email: email.to_owned(),
        phone: "+49 30 901820".into(),
        organization: format!("Example Supplies {}", n % 100),
        notes: "Met at the trade fair; prefers email over calls.".into(),
        ..Default::default()
    }
}

/// What one measured run saw.
struct Run {
    elapsed: Duration,
    latency_us: Histogram<u64>,
    errors: usize,
    cpu: Option<Duration>,
}

impl Run {
    fn into_row(
        self,
        backend: &'static str,
        method: &'static str,
        requests: usize,
        concurrency: usize,
    ) -> Row {
        Row {
            backend,
            method,
            requests,
            concurrency,
            elapsed: self.elapsed,
            latency_us: self.latency_us,
            errors: self.errors,
            cpu: self.cpu,
        }
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// One load task's latencies, error count and first error.
type TaskOutcome = (Histogram<u64>, usize, Option<String>);

/// Sends `total` requests numbered `first..first + total`, `concurrency` at
/// a time: each of `concurrency` tasks has its own client on one of
/// `channels` (round robin) and takes the next number when its previous call
/// has answered. `call` sends request `n` and checks the answer.
async fn drive<C, F, Fut>(
    channels: &[Authed],
    total: usize,
    concurrency: usize,
    first: usize,
    make_client: fn(Authed) -> C,
    call: F,
) -> Run
where
    C: Clone + Send + 'static,
    F: Fn(C, usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = process_cpu_time();
    let started = Instant::now();
    let tasks: Vec<JoinHandle<TaskOutcome>> = (0..concurrency)
        .map(|task| {
            let client = make_client(channels[task % channels.len()].clone());
            let next = next.clone();
            let call = call.clone();
            tokio::spawn(async move {
                let mut latency = histogram();
                let mut errors = 0;
                let mut first_error = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let sent = Instant::now();
                    let outcome = call(client.clone(), first + i).await;
                    let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                    latency.saturating_record(micros.max(1));
                    if let Err(err) = outcome {
                        errors += 1;
                        first_error.get_or_insert(err);
                    }
                }
                (latency, errors, first_error)
            })
        })
        .collect();
    let mut latency_us = histogram();
    let mut errors = 0;
    for task in tasks {
        match task.await {
            Ok((task_latency, task_errors, first_error)) => {
                latency_us
                    .add(&task_latency)
                    .expect("histograms with equal bounds");
                if let Some(err) = first_error {
                    eprintln!("error (first of its task): {err}");
                }
                errors += task_errors;
            }
            Err(err) => {
                eprintln!("a load task failed: {err}");
                errors += 1;
            }
        }
    }
    let elapsed = started.elapsed();
    let cpu = process_cpu_time()
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    Run {
        elapsed,
        latency_us,
        errors,
        cpu,
    }
}

/// User plus system CPU time of this process so far, from /proc (Linux;
/// `None` elsewhere).
fn process_cpu_time() -> Option<Duration> {
    // Clock ticks: USER_HZ, which is 100 on every mainstream Linux build.
    const TICKS_PER_SECOND: u64 = 100;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14, stime 15.
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis(
        (utime + stime) * 1000 / TICKS_PER_SECOND,
    ))
}

/// The server under test, running in this process.
struct BenchServer {
    addr: std::net::SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
    authorization: MetadataValue<Ascii>,
}

/// Sends the bench's token with every call, as any client must.
#[derive(Clone)]
struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A connection that authenticates its calls.
type Authed = InterceptedService<Channel, Bearer>;

impl BenchServer {
    async fn start(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        let config = Config {
            listen: "127.0.0.1:0".parse()?,
            database_url: Some(url.to_owned()),
            database_max_connections: max_connections,
            // The mail outbox, unused by this workload: a folder of its own.
            data_dir: std::env::temp_dir().join(format!("custodian-bench-{}", std::process::id())),
            ..Config::default()
        };
        // The production stack: tokens verified, every access audited,
        // personal fields encrypted.
        let keys = KeyFile::generate("mk-bench", generate_key_pair());
        let suite = custodian::suite(
            custodian::Target::All,
            &config,
            &keys,
            Arc::new(SystemClock),
        )?;
        let token =
            TokenIssuer::from_pem(keys.token_signing_key.as_deref().context("signing key")?)?
                .issue(
                    "bench:client",
                    &Purpose::ALL,
                    None,
                    Duration::from_secs(3600),
                )?;
        let app = custodian::bind(config, suite).await?;
        let addr = app.local_addr();
        let mut ready = app.readiness();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_with_shutdown(async move {
            let _ = stopped.await;
        }));
        let started = tokio::time::timeout(READY_TIMEOUT, ready.wait_for(|r| *r))
            .await
            .context("server not ready in time")?
            .is_ok();
        if !started {
            // The server task ended: its error says why.
            return Err(match task.await {
                Ok(Err(err)) => err.context("server stopped while starting"),
                Ok(Ok(())) => anyhow::anyhow!("server stopped while starting"),
                Err(err) => anyhow::anyhow!(err).context("server task failed"),
            });
        }
        Ok(Self {
            addr,
            stop,
            task,
            authorization: format!("Bearer {token}").parse()?,
        })
    }

    /// `n` separate HTTP/2 connections to the server.
    async fn channels(&self, n: usize) -> anyhow::Result<Vec<Authed>> {
        let mut channels = Vec::with_capacity(n);
        for _ in 0..n {
            let channel = Endpoint::from_shared(format!("http://{}", self.addr))?
                .tcp_nodelay(true)
                .connect()
                .await
                .context("connecting to the bench server")?;
            channels.push(InterceptedService::new(
                channel,
                Bearer(self.authorization.clone()),
            ));
        }
        Ok(channels)
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await.context("server task")?
    }
}

/// A fresh database: a SQLite file in a temporary folder, or a new
/// PostgreSQL database.
struct BenchDatabase {
    url: String,
    _dir: Option<tempfile::TempDir>,
    postgres: Option<(String, String)>,
}

fn postgres_admin_url() -> String {
    std::env::var("CUSTODIAN_BENCH_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.into())
}

impl BenchDatabase {
    /// `None` when PostgreSQL is wanted but cannot be reached.
    async fn create(backend: Backend) -> anyhow::Result<Option<Self>> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().context("temporary folder")?;
                let url = format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("identity.db").display()
                );
                Ok(Some(Self {
                    url,
                    _dir: Some(dir),
                    postgres: None,
                }))
            }
            Backend::Postgres => {
                let admin_url = postgres_admin_url();
                let admin = match tokio::time::timeout(
                    Duration::from_secs(5),
                    sqlx::AnyPool::connect(&admin_url),
                )
                .await
                {
                    Ok(Ok(pool)) => pool,
                    Ok(Err(err)) => {
                        println!(
                            "postgres: skipped, cannot reach PostgreSQL ({err}); set CUSTODIAN_BENCH_POSTGRES_URL"
                        );
                        return Ok(None);
                    }
                    Err(_) => {
                        println!(
                            "postgres: skipped, no answer from PostgreSQL within 5s; set CUSTODIAN_BENCH_POSTGRES_URL"
                        );
                        return Ok(None);
                    }
                };
                let name = format!("custodian_bench_{}", uuid::Uuid::new_v4().simple());
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&admin)
                    .await
                    .context("creating the bench database")?;
                admin.close().await;
                let (base, _) = admin_url
                    .rsplit_once('/')
                    .context("CUSTODIAN_BENCH_POSTGRES_URL must name a database")?;
                Ok(Some(Self {
                    url: format!("{base}/{name}"),
                    _dir: None,
                    postgres: Some((admin_url, name)),
                }))
            }
        }
    }

    /// Drops the PostgreSQL database (the SQLite folder goes with `self`).
    async fn drop_database(self) {
        let Some((admin_url, name)) = &self.postgres else {
            return;
        };
        let dropped = async {
            let admin = sqlx::AnyPool::connect(admin_url).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&admin)
            .await?;
            admin.close().await;
            anyhow::Ok(())
        };
        if let Err(err) = dropped.await {
            eprintln!("could not drop the bench database {name}: {err:#}");
        }
    }
}
