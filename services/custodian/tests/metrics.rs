//! Metrics as an operator's Prometheus sees them: the built binary serves
//! `/metrics` on `--metrics-listen`, a real Prometheus (Debian's
//! `prometheus` package) scrapes it every second, and every metric the
//! runbook lists is found through Prometheus's query API after a few calls
//! of every service and a data-subject request. No label holds a personal
//! value.

mod common;

use std::{net::SocketAddr, path::Path, time::Duration};

use common::{Bearer, Log, Server};
use custodian_proto::{
    analytics::v1::{ListSitesRequest, site_service_client::SiteServiceClient},
    common::v1::PersonName,
    dsr::v1::{
        CreateRequestRequest, GetRequestRequest, Jurisdiction, Request, Requester,
        VerifyRequestRequest, request, request_service_client::RequestServiceClient,
    },
    feedback::v1::{ListSurveysRequest, survey_service_client::SurveyServiceClient},
    identity::v1::{
        Contact, CreateContactRequest, CreateTenantRequest, Tenant,
        contact_service_client::ContactServiceClient, tenant_service_client::TenantServiceClient,
    },
    tickets::v1::{ListTicketsRequest, ticket_service_client::TicketServiceClient},
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::service::interceptor::InterceptedService;

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A free loopback port (bound, then released for the child to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 exchange: the status line's code and the body.
async fn http(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let code = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"_-.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The result vector of an instant query.
async fn query(prometheus: SocketAddr, promql: &str) -> Vec<serde_json::Value> {
    let (code, body) = http(
        prometheus,
        &format!(
            "GET /api/v1/query?query={} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            encode(promql)
        ),
    )
    .await;
    if code != 200 {
        return Vec::new();
    }
    // The body may be chunked; the JSON object is what lies between the
    // first '{' and the last '}'.
    let (Some(start), Some(end)) = (body.find('{'), body.rfind('}')) else {
        return Vec::new();
    };
    let json: serde_json::Value = serde_json::from_str(&body[start..=end]).unwrap_or_default();
    json["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

struct Prometheus {
    child: tokio::process::Child,
    addr: SocketAddr,
    log: Log,
}

impl Prometheus {
    async fn start(dir: &Path, target: SocketAddr) -> Self {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: custodian\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = Log::default();
        let mut child = tokio::process::Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting prometheus");
        common::read_lines(child.stdout.take().unwrap(), Some(log.clone()), None);
        common::read_lines(child.stderr.take().unwrap(), Some(log.clone()), None);
        let began = std::time::Instant::now();
        loop {
            if let Ok(stream) = tokio::net::TcpStream::connect(addr).await {
                drop(stream);
                let (code, _) = http(
                    addr,
                    "GET /-/ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                )
                .await;
                if code == 200 {
                    break;
                }
            }
            assert!(
                began.elapsed() < Duration::from_secs(30),
                "prometheus not ready within 30s:\n{}",
                log.text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { child, addr, log }
    }
}

type Authed = InterceptedService<tonic::transport::Channel, Bearer>;

fn token(data_dir: &Path) -> String {
    let out = common::run_ok(&[
        "token",
        "--subject",
        "test:metrics",
        "--purpose",
        "administration",
        "--purpose",
        "service_delivery",
        "--purpose",
        "dsr_fulfilment",
        "--purpose",
        "audit",
        "--data-dir",
        data_dir.to_str().unwrap(),
    ]);
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A few calls of every service, and a data-subject request routed to the
/// tenant that holds the person's data (which mails a code and leaves an
/// inbox item).
async fn drive(server: &Server, data_dir: &Path, authed: Authed) {
    TenantServiceClient::new(authed.clone())
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
    ContactServiceClient::new(authed.clone())
        .create_contact(CreateContactRequest {
            parent: "tenants/acme".into(),
            contact: Some(Contact {
                person_name: Some(PersonName {
                    given_name: "Annika".into(),
                    family_name: "Zwiebelbaum".into(),
                }),
                email: "annika@example.com".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap();
    // Answers or refusals alike are timed: only that each is called counts.
    let _ = TicketServiceClient::new(authed.clone())
        .list_tickets(ListTicketsRequest::default())
        .await;
    let _ = SiteServiceClient::new(authed.clone())
        .list_sites(ListSitesRequest::default())
        .await;
    let _ = SurveyServiceClient::new(authed.clone())
        .list_surveys(ListSurveysRequest::default())
        .await;
    // A beacon for a domain that is no site: dropped, and counted so.
    let body =
        r#"[{"site": "unknown.example", "type": "pageview", "url": "https://unknown.example/"}]"#;
    let (code, _) = http(
        server.addr,
        &format!(
            "POST /v1/collect HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\n\
             User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0.0.0 Safari/537.36\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert_eq!(code, 202, "the beacon");

    let mut requests = RequestServiceClient::new(authed);
    let name = requests
        .create_request(CreateRequestRequest {
            request: Some(Request {
                kind: request::Kind::Access as i32,
                jurisdiction: Jurisdiction::Gdpr as i32,
                requester: Some(Requester {
                    email: "annika@example.com".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .name;
    let code = std::fs::read_dir(data_dir.join("outbox"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .find_map(|text| {
            text.lines().find_map(|l| {
                let code = l.strip_prefix("    ")?;
                (code.len() == 8 && code.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| code.to_owned())
            })
        })
        .expect("the code in the outbox");
    requests
        .verify_request(VerifyRequestRequest {
            name: name.clone(),
            code,
        })
        .await
        .unwrap();
    let began = std::time::Instant::now();
    while requests
        .get_request(GetRequestRequest { name: name.clone() })
        .await
        .unwrap()
        .into_inner()
        .state
        != request::State::AwaitingTenants as i32
    {
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "the request was not routed to the tenant"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Each query must return at least one series (and, where given, one
/// whose value passes the check).
type Check = Option<fn(f64) -> bool>;

const EXPECTED: &[(&str, Check)] = &[
    (
        r#"rpc_server_duration_seconds_count{rpc_service="custodian.identity.v1.ContactService",rpc_method="CreateContact",rpc_grpc_status_code="0"}"#,
        Some(|v| v >= 1.0),
    ),
    (
        r#"rpc_server_duration_seconds_count{rpc_service="custodian.tickets.v1.TicketService"}"#,
        None,
    ),
    (
        r#"rpc_server_duration_seconds_count{rpc_service="custodian.analytics.v1.SiteService"}"#,
        None,
    ),
    (
        r#"rpc_server_duration_seconds_count{rpc_service="custodian.feedback.v1.SurveyService"}"#,
        None,
    ),
    (
        r#"rpc_server_duration_seconds_count{rpc_service="custodian.dsr.v1.RequestService",rpc_method="CreateRequest"}"#,
        None,
    ),
    (
        r#"rpc_server_duration_seconds_bucket{rpc_service="custodian.identity.v1.TenantService",le="+Inf"}"#,
        None,
    ),
    (
        r#"rpc_client_duration_seconds_count{peer_service="identity",rpc_service="custodian.subject.v1.SubjectDataService",rpc_grpc_status_code="0"}"#,
        Some(|v| v >= 1.0),
    ),
    (
        r#"rpc_client_duration_seconds_count{peer_service="tickets"}"#,
        None,
    ),
    (
        r#"db_client_connection_count{db_client_connection_pool_name="identity",db_client_connection_state="idle"}"#,
        None,
    ),
    (
        r#"db_client_connection_count{db_client_connection_pool_name="dsr",db_client_connection_state="used"}"#,
        None,
    ),
    (
        r#"db_client_connection_max{db_client_connection_pool_name="tickets"}"#,
        Some(|v| v >= 1.0),
    ),
    (
        r#"db_client_connection_wait_time_seconds_count{db_client_connection_pool_name="feedback"}"#,
        None,
    ),
    (
        r#"custodian_audit_pending{custodian_service="identity"}"#,
        None,
    ),
    (
        r#"custodian_audit_pending_oldest_age_seconds{custodian_service="analytics"}"#,
        None,
    ),
    (
        r#"custodian_audit_seal_duration_seconds_count{custodian_service="identity"}"#,
        Some(|v| v >= 1.0),
    ),
    (
        r#"custodian_audit_chain_intact{custodian_service="dsr"}"#,
        Some(|v| v == 1.0),
    ),
    (
        r#"custodian_audit_chain_verified_time_seconds{custodian_service="tickets"}"#,
        Some(|v| v > 1.0e9),
    ),
    (
        r#"custodian_analytics_events_accepted_total{custodian_analytics_kind="web"}"#,
        None,
    ),
    (
        r#"custodian_analytics_events_dropped_total{custodian_analytics_kind="web",custodian_analytics_reason="unknown_site"}"#,
        Some(|v| v >= 1.0),
    ),
    ("custodian_analytics_writer_queue", None),
    (
        "custodian_analytics_writer_batch_size_count",
        Some(|v| v >= 1.0),
    ),
    (
        r#"custodian_dsr_requests{custodian_dsr_state="awaiting_tenants",custodian_dsr_kind="access"}"#,
        Some(|v| v == 1.0),
    ),
    (
        r#"custodian_dsr_requests_overdue{custodian_dsr_kind="access"}"#,
        Some(|v| v == 0.0),
    ),
    (
        r#"custodian_dsr_requests_due_soon{custodian_dsr_kind="erasure"}"#,
        Some(|v| v == 0.0),
    ),
    (
        r#"custodian_dsr_steps_oldest_pending_age_seconds{custodian_dsr_step_service="identity"}"#,
        None,
    ),
    ("custodian_dsr_inbox_pending", Some(|v| v >= 1.0)),
    (r#"custodian_tickets{custodian_tickets_state="open"}"#, None),
    (
        r#"custodian_tickets_sla_breaches{custodian_tickets_sla_target="resolution"}"#,
        Some(|v| v == 0.0),
    ),
    (
        r#"custodian_mail_sent_total{custodian_service="dsr"}"#,
        Some(|v| v >= 1.0),
    ),
    (
        r#"custodian_mail_failed_total{custodian_service="tickets"}"#,
        None,
    ),
    (r#"custodian_mail_sending{custodian_service="dsr"}"#, None),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_finds_every_metric_and_no_personal_label() {
    if !Path::new(PROMETHEUS).exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{PROMETHEUS} is missing: `apt-get install prometheus` (.ci/run does)"
        );
        eprintln!("skipped: {PROMETHEUS} is missing (apt-get install prometheus)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log = Log::default();
    let server = Server::start_with(
        &data_dir,
        None,
        "127.0.0.1:0",
        &["--metrics-listen".to_owned(), metrics.to_string()],
        &log,
    )
    .await;
    // The metrics port answers /metrics and nothing else.
    let (code, text) = http(
        metrics,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(code, 200, "{text}");
    let (code, _) = http(
        metrics,
        "GET /v1/tracker.js HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(code, 404);

    let authed = InterceptedService::new(server.channel.clone(), Bearer::new(&token(&data_dir)));
    drive(&server, &data_dir, authed).await;

    let prometheus = Prometheus::start(dir.path(), metrics).await;
    let began = std::time::Instant::now();
    let mut missing: Vec<&str>;
    loop {
        missing = Vec::new();
        for (promql, check) in EXPECTED {
            let found = query(prometheus.addr, promql).await;
            let ok = found.iter().any(|series| {
                let value: f64 = series["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN);
                check.is_none_or(|check| check(value))
            });
            if !ok {
                missing.push(promql);
            }
        }
        if missing.is_empty() || began.elapsed() > Duration::from_secs(45) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        missing.is_empty(),
        "not found in Prometheus after 45s: {missing:#?}\nprometheus:\n{}\ncustodian:\n{}\n/metrics:\n{}",
        prometheus.log.text(),
        server.log.text(),
        http(
            metrics,
            "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .await
        .1
    );

    // Every metric the alerts and the dashboard read is one the suite
    // exports (recording rules' own names aside).
    let (_, names) = http(
        prometheus.addr,
        "GET /api/v1/label/__name__/values HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    let monitoring = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/monitoring");
    // Label names share the metrics' prefixes.
    const LABELS: &[&str] = &[
        "custodian_service",
        "custodian_dsr_kind",
        "custodian_dsr_state",
        "custodian_dsr_step_service",
        "custodian_analytics_kind",
        "custodian_analytics_reason",
        "custodian_tickets_state",
        "custodian_tickets_sla_target",
        "db_client_connection_pool_name",
        "db_client_connection_state",
    ];
    for file in ["rules.yml", "dashboard.json"] {
        let text = std::fs::read_to_string(monitoring.join(file)).unwrap();
        let mut read = 0;
        // Recording rules' names hold a colon and stay whole words here.
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
            let ours = ["rpc_server_", "rpc_client_", "db_client_", "custodian_"]
                .iter()
                .any(|p| word.starts_with(p));
            if !ours || word.contains(':') || LABELS.contains(&word) {
                continue;
            }
            read += 1;
            assert!(
                names.contains(&format!("\"{word}\"")),
                "{file} reads {word}, which Prometheus never scraped"
            );
        }
        assert!(read >= 10, "{file} reads {read} metrics");
    }

    // Nothing personal in any label of any series the suite exports.
    let all = query(
        prometheus.addr,
        r#"{__name__=~"rpc_.*|db_.*|custodian_.*", job="custodian"}"#,
    )
    .await;
    assert!(all.len() > 50, "{} series", all.len());
    for series in &all {
        let labels = series["metric"].to_string().to_lowercase();
        for personal in ["annika", "zwiebelbaum", "example.com", "@", "acme"] {
            assert!(
                !labels.contains(personal),
                "a label holds {personal:?}: {labels}"
            );
        }
    }
    drop(prometheus.child);
}
