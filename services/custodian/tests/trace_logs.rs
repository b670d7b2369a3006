//! Logs join traces: with `--log-format json` every line the process
//! writes, on stdout and stderr, from the first to the last, is a JSON
//! object; a line written while serving a call carries the `trace_id` and
//! `span_id` of the span exported for it by OTLP (here to a stand-in
//! collector served by the test). Spans carry `rpc.grpc.status_code` and
//! fail by OpenTelemetry's rules for gRPC: a server span only for the
//! server's own faults, a client span for every code but OK.

use std::{
    collections::HashMap,
    net::SocketAddr,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use custodian_proto::{
    identity::v1::{
        CreateTenantRequest, ListTenantsRequest, Tenant, tenant_service_client::TenantServiceClient,
    },
    tickets::v1::{
        CreateTicketRequest, Requester, Ticket, ticket, ticket_service_client::TicketServiceClient,
    },
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value,
    trace::v1::{Span, span::SpanKind, status::StatusCode},
};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio_stream::wrappers::TcpListenerStream;

const BIN: &str = env!("CARGO_BIN_EXE_custodian");
/// The trace of a call refused before its handler, which logs the refusal.
const REFUSED_TRACE: &str = "6af92f3577b34da6a3ce929d0e0e4701";
/// The trace of a ticket whose requester identity does not know.
const TICKET_TRACE: &str = "6af92f3577b34da6a3ce929d0e0e4702";
/// The trace of a call to a method nobody serves.
const UNIMPLEMENTED_TRACE: &str = "6af92f3577b34da6a3ce929d0e0e4703";
/// A personal value sent in a request: it must reach no log line and no span.
const EMAIL: &str = "zwiebelbaum@example.com";

/// Keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    fn spans(&self) -> Vec<Span> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| s.spans.clone())
            .collect()
    }
}

/// Collects the lines of a stream until it ends.
fn lines_of(
    stream: impl AsyncRead + Unpin + Send + 'static,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        let mut all = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            all.push(line);
        }
        all
    })
}

fn with_trace<T>(message: T, trace_id: &str, bearer: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    if let Some(bearer) = bearer {
        request
            .metadata_mut()
            .insert("authorization", bearer.parse().unwrap());
    }
    request
}

/// A stand-in collector on a free port.
async fn collector() -> (Collector, SocketAddr) {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (collector, addr)
}

/// The suite with JSON logs, exporting to `collector`: the process, its
/// address (from its serving line), and its stdout and stderr lines, read
/// until it exits.
struct Suite {
    process: tokio::process::Child,
    addr: SocketAddr,
    stdout: tokio::task::JoinHandle<Vec<String>>,
    stderr: tokio::task::JoinHandle<Vec<String>>,
}

impl Suite {
    async fn start(
        data_dir: &std::path::Path,
        collector: Option<SocketAddr>,
        args: &[&str],
    ) -> Self {
        let mut process = tokio::process::Command::new(BIN)
            .env_clear()
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .args(collector.map(|c| format!("--otlp-endpoint=http://{c}")))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // The address, from the first lines; the rest is kept for later.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let stdout = process.stdout.take().unwrap();
        let stdout = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut all = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send(line.clone());
                all.push(line);
            }
            all
        });
        let stderr = lines_of(process.stderr.take().unwrap());
        let addr: SocketAddr = loop {
            let line = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .expect("the serving line within 30s")
                .expect("stdout open");
            let line: Value = serde_json::from_str(&line)
                .unwrap_or_else(|err| panic!("not JSON ({err}): {line}"));
            if line["message"] == "serving" {
                break line["address"].as_str().unwrap().parse().unwrap();
            }
        };
        Self {
            process,
            addr,
            stdout,
            stderr,
        }
    }

    /// A channel, once the suite is ready. Health is checked, not
    /// watched: a stream cut short would have no status.
    async fn ready(&self) -> tonic::transport::Channel {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let began = std::time::Instant::now();
        while health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner()
            .status
            != tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        {
            assert!(began.elapsed() < Duration::from_secs(30), "not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        channel
    }

    /// Stops it with SIGTERM (which flushes the exporter); its lines.
    async fn stop(mut self) -> (Vec<String>, Vec<String>) {
        let pid = self.process.id().expect("running").to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = tokio::time::timeout(Duration::from_secs(20), self.process.wait())
            .await
            .expect("stops within 20s of SIGTERM")
            .unwrap();
        assert!(status.success(), "{status}");
        (self.stdout.await.unwrap(), self.stderr.await.unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_ids_of_the_exported_spans() {
    let (collector, collector_addr) = collector().await;
    let data_dir = tempfile::tempdir().unwrap();
    // The runtime's refusals are logged at debug, inside the call.
    let suite = Suite::start(
        data_dir.path(),
        Some(collector_addr),
        &["--log", "info,custodian_runtime=debug"],
    )
    .await;
    let token = String::from_utf8(
        Command::new(BIN)
            .env_clear()
            .args([
                "token",
                "--subject",
                "test:logs",
                "--purpose",
                "administration",
                "--purpose",
                "support",
                "--data-dir",
            ])
            .arg(data_dir.path())
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let bearer = format!("Bearer {}", token.trim());

    let channel = suite.ready().await;

    let mut tenants = TenantServiceClient::new(channel.clone());
    let mut create = tonic::Request::new(CreateTenantRequest {
        tenant: Some(Tenant {
            display_name: "Acme".into(),
            ..Default::default()
        }),
        tenant_id: "acme".into(),
        request_id: String::new(),
    });
    create
        .metadata_mut()
        .insert("authorization", bearer.parse().unwrap());
    tenants.create_tenant(create).await.unwrap();

    // No token: refused before any handler, and the refusal logged.
    let refused = tenants
        .list_tenants(with_trace(
            ListTenantsRequest::default(),
            REFUSED_TRACE,
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // A requester identity does not know: tickets asks it (a client span),
    // identity answers not OK (its server span), tickets refuses.
    let refused = TicketServiceClient::new(channel.clone())
        .create_ticket(with_trace(
            CreateTicketRequest {
                ticket: Some(Ticket {
                    tenant: "tenants/acme".into(),
                    channel: ticket::Channel::Email as i32,
                    kind: ticket::Kind::Troubleshooting as i32,
                    category: "billing".into(),
                    subject: "Invoice".into(),
                    requester: Some(Requester {
                        email: EMAIL.into(),
                        user: "tenants/acme/users/0190f3c4-5b6a-7c8d-9e0f-1a2b3c4d5e6f".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                description: "Where is my invoice?".into(),
                request_id: String::new(),
            },
            TICKET_TRACE,
            Some(&bearer),
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");

    // A method nobody serves: UNIMPLEMENTED, a server's failure.
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let unimplemented = grpc
        .unary::<(), (), _>(
            with_trace((), UNIMPLEMENTED_TRACE, Some(&bearer)),
            tonic::codegen::http::uri::PathAndQuery::from_static(
                "/custodian.identity.v1.TenantService/Nope",
            ),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(unimplemented.code(), tonic::Code::Unimplemented);

    let (stdout, stderr) = suite.stop().await;

    // Every line, on both streams, is a JSON object.
    let lines: Vec<Value> = stdout
        .iter()
        .chain(&stderr)
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(value) if value.is_object() => value,
            _ => panic!("a line that is not a JSON object: {line}"),
        })
        .collect();
    assert!(
        lines.iter().any(|l| l["message"] == "stopped"),
        "{stdout:?}"
    );

    let spans = collector.spans();
    let by_ids: HashMap<(String, String), &Span> = spans
        .iter()
        .map(|s| ((hex(&s.trace_id), hex(&s.span_id)), s))
        .collect();

    // Each line written in a span names one that was exported.
    let joined: Vec<&Value> = lines
        .iter()
        .filter(|l| l.get("trace_id").is_some())
        .collect();
    for line in &joined {
        let ids = (
            line["trace_id"].as_str().unwrap().to_owned(),
            line["span_id"]
                .as_str()
                .expect("a span_id beside the trace_id")
                .to_owned(),
        );
        assert_eq!(ids.0.len(), 32, "{line}");
        assert_eq!(ids.1.len(), 16, "{line}");
        assert!(by_ids.contains_key(&ids), "no span exported for {line}");
    }

    // The refusal's line is the refused call's: same trace, same span.
    let refusal = joined
        .iter()
        .find(|l| l["message"] == "call refused" && l["trace_id"] == REFUSED_TRACE)
        .unwrap_or_else(|| panic!("no refusal logged in its trace: {stdout:#?}"));
    let span = by_ids[&(
        REFUSED_TRACE.to_owned(),
        refusal["span_id"].as_str().unwrap().to_owned(),
    )];
    assert_eq!(span.name, "custodian.identity.v1.TenantService/ListTenants");
    assert_eq!(span.kind, SpanKind::Server as i32);
    assert_eq!(int(span, "rpc.grpc.status_code"), Some(16));
    assert_eq!(
        text(span, "rpc.service").as_deref(),
        Some("custodian.identity.v1.TenantService")
    );
    assert_eq!(text(span, "rpc.method").as_deref(), Some("ListTenants"));
    // UNAUTHENTICATED is the caller's matter, not the server's failure.
    assert_eq!(status_of(span), StatusCode::Unset);

    // Every call's span, server and client, carries its status code.
    for span in &spans {
        if text(span, "rpc.system").as_deref() == Some("grpc") {
            assert!(
                int(span, "rpc.grpc.status_code").is_some(),
                "no rpc.grpc.status_code on {}",
                span.name
            );
        }
    }

    // The ticket: the call to identity failed for tickets (its client span
    // is an error), while identity answered as it should (its server span
    // is not), and the server span is the client span's child.
    let in_trace = |trace: &str| -> Vec<&Span> {
        spans.iter().filter(|s| hex(&s.trace_id) == trace).collect()
    };
    let ticket = in_trace(TICKET_TRACE);
    let find = |kind: SpanKind, name: &str| {
        ticket
            .iter()
            .copied()
            .find(|s| s.kind == kind as i32 && s.name == name)
            .unwrap_or_else(|| {
                panic!(
                    "no {kind:?} span {name} in {:?}",
                    ticket.iter().map(|s| &s.name).collect::<Vec<_>>()
                )
            })
    };
    let create = find(
        SpanKind::Server,
        "custodian.tickets.v1.TicketService/CreateTicket",
    );
    assert_eq!(int(create, "rpc.grpc.status_code"), Some(3));
    assert_eq!(status_of(create), StatusCode::Unset);
    let client = find(
        SpanKind::Client,
        "custodian.identity.v1.UserService/GetUser",
    );
    let served = find(
        SpanKind::Server,
        "custodian.identity.v1.UserService/GetUser",
    );
    let code = int(client, "rpc.grpc.status_code").expect("a status code");
    assert_ne!(code, 0);
    assert_eq!(int(served, "rpc.grpc.status_code"), Some(code));
    assert_eq!(status_of(client), StatusCode::Error);
    assert_eq!(status_of(served), StatusCode::Unset);
    assert_eq!(text(client, "peer.service").as_deref(), Some("identity"));
    assert_eq!(
        served.parent_span_id, client.span_id,
        "the callee's span is the client span's child"
    );
    assert_eq!(client.parent_span_id, create.span_id);
    // The tenant check before it succeeded: a client span with OK, unset.
    let tenant = find(
        SpanKind::Client,
        "custodian.identity.v1.TenantService/GetTenant",
    );
    assert_eq!(int(tenant, "rpc.grpc.status_code"), Some(0));
    assert_eq!(status_of(tenant), StatusCode::Unset);

    // UNIMPLEMENTED is the server's failure.
    let nope = in_trace(UNIMPLEMENTED_TRACE);
    assert_eq!(nope.len(), 1, "{nope:?}");
    assert_eq!(int(nope[0], "rpc.grpc.status_code"), Some(12));
    assert_eq!(status_of(nope[0]), StatusCode::Error);
    assert_eq!(
        nope[0].status.as_ref().map(|s| s.message.as_str()),
        Some("UNIMPLEMENTED")
    );

    let everything = format!("{spans:?}{stdout:?}{stderr:?}");
    for secret in [EMAIL, token.trim()] {
        assert!(
            !everything.contains(secret),
            "a log line or a span carries a personal value or the token"
        );
    }
}

/// With a ratio of 0, the traces that start here are not exported; a
/// caller's sampled trace still is, and the logs of both calls carry ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sample_ratio_applies_to_traces_that_start_here() {
    let (collector, collector_addr) = collector().await;
    let data_dir = tempfile::tempdir().unwrap();
    let suite = Suite::start(
        data_dir.path(),
        Some(collector_addr),
        &[
            "--log",
            "info,custodian_runtime=debug",
            "--trace-sample-ratio",
            "0",
        ],
    )
    .await;
    let mut tenants = TenantServiceClient::new(suite.ready().await);
    for _ in 0..20 {
        tenants
            .list_tenants(ListTenantsRequest::default())
            .await
            .unwrap_err();
    }
    tenants
        .list_tenants(with_trace(
            ListTenantsRequest::default(),
            REFUSED_TRACE,
            None,
        ))
        .await
        .unwrap_err();
    let (stdout, _) = suite.stop().await;

    let spans = collector.spans();
    assert!(
        spans.iter().all(|s| hex(&s.trace_id) == REFUSED_TRACE),
        "{:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    assert_eq!(spans.len(), 1, "the caller's sampled call");
    // Not exported, yet each refusal's line names its own trace.
    let refusals: Vec<Value> = stdout
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["message"] == "call refused")
        .collect();
    assert_eq!(refusals.len(), 21);
    let mut traces: Vec<&str> = refusals
        .iter()
        .map(|l| l["trace_id"].as_str().expect("a trace_id"))
        .collect();
    traces.sort();
    traces.dedup();
    assert_eq!(traces.len(), 21, "one trace a call");
}

/// Without an OTLP endpoint nothing is exported, but the lines of one call
/// still share its ids, the ones its `traceparent` named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_carry_ids_without_an_endpoint() {
    let data_dir = tempfile::tempdir().unwrap();
    let suite = Suite::start(
        data_dir.path(),
        None,
        &["--log", "info,custodian_runtime=debug"],
    )
    .await;
    let mut tenants = TenantServiceClient::new(suite.ready().await);
    tenants
        .list_tenants(with_trace(
            ListTenantsRequest::default(),
            REFUSED_TRACE,
            None,
        ))
        .await
        .unwrap_err();
    let (stdout, stderr) = suite.stop().await;
    let lines: Vec<Value> = stdout
        .iter()
        .chain(&stderr)
        .map(|l| serde_json::from_str(l).unwrap_or_else(|err| panic!("not JSON ({err}): {l}")))
        .collect();
    let refusal = lines
        .iter()
        .find(|l| l["message"] == "call refused")
        .expect("the refusal logged");
    assert_eq!(refusal["trace_id"], REFUSED_TRACE);
    assert_eq!(refusal["span_id"].as_str().map(str::len), Some(16));
}

/// A burst of refused calls that then stops is still summed up, in one WARN
/// line, once its window has ended; each refusal alone stays at DEBUG.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_refusals_is_summed_up_after_it_ends() {
    let data_dir = tempfile::tempdir().unwrap();
    let suite = Suite::start(data_dir.path(), None, &[]).await;
    let mut tenants = TenantServiceClient::new(suite.ready().await);
    for _ in 0..25 {
        let refused = tenants
            .list_tenants(ListTenantsRequest::default())
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    }
    // Nothing more is asked: the summary comes from the window's end.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let (stdout, stderr) = suite.stop().await;
    let lines: Vec<Value> = stdout
        .iter()
        .chain(&stderr)
        .map(|l| serde_json::from_str(l).unwrap_or_else(|err| panic!("not JSON ({err}): {l}")))
        .collect();
    let summaries: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "many calls refused")
        .collect();
    assert_eq!(summaries.len(), 1, "{lines:#?}");
    assert_eq!(summaries[0]["level"], "WARN");
    assert_eq!(summaries[0]["refused"], 25);
    assert_eq!(summaries[0]["by_code"], "Unauthenticated=25");
    assert!(
        !lines.iter().any(|l| l["message"] == "call refused"),
        "single refusals stay at DEBUG"
    );
}

/// A start that fails is reported as JSON too: a flag clap refuses, a
/// configuration it cannot read.
#[test]
fn fatal_errors_are_json_lines() {
    for args in [
        &["--log-format", "json", "--listen", "nowhere"][..],
        &[
            "--log-format=json",
            "--config",
            "/nonexistent/custodian.toml",
        ][..],
        &["--log-format", "json", "--log", "[[not a filter"][..],
    ] {
        let data_dir = tempfile::tempdir().unwrap();
        let output = Command::new(BIN)
            .env_clear()
            .args(args)
            .arg("--data-dir")
            .arg(data_dir.path())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?}");
        let text =
            String::from_utf8(output.stdout).unwrap() + &String::from_utf8(output.stderr).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|err| panic!("{args:?}: not JSON ({err}): {line}"))
            })
            .collect();
        let last = lines
            .last()
            .unwrap_or_else(|| panic!("{args:?}: nothing said"));
        assert_eq!(last["level"], "ERROR", "{args:?}: {last}");
        assert!(!last["error"].as_str().unwrap().is_empty(), "{last}");
    }
    // Text stays text.
    let output = Command::new(BIN)
        .env_clear()
        .args(["--config", "/nonexistent/custodian.toml"])
        .output()
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.starts_with("Error: "), "{stderr}");
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a any_value::Value> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn int(span: &Span, key: &str) -> Option<i64> {
    match attribute(span, key)? {
        any_value::Value::IntValue(n) => Some(*n),
        other => panic!("{key} is {other:?}"),
    }
}

fn text(span: &Span, key: &str) -> Option<String> {
    match attribute(span, key)? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        other => panic!("{key} is {other:?}"),
    }
}

fn status_of(span: &Span) -> StatusCode {
    span.status
        .as_ref()
        .map_or(StatusCode::Unset, |s| StatusCode::try_from(s.code).unwrap())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
