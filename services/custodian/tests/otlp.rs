//! Traces leave the process over OTLP when an endpoint is configured, and a
//! call's W3C `traceparent` makes its span part of the caller's trace. The
//! built binary exports to a stand-in collector served by this test.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::io::AsyncBufReadExt as _;

use custodian_proto::{
    common::v1::PersonName,
    dsr::v1::{
        CreateRequestRequest, GetRequestRequest, Jurisdiction, Request, Requester,
        VerifyRequestRequest, request, request_service_client::RequestServiceClient,
    },
    identity::v1::{
        Contact, CreateContactRequest, CreateTenantRequest, ListTenantsRequest, Tenant,
        contact_service_client::ContactServiceClient, tenant_service_client::TenantServiceClient,
    },
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
};
use tokio_stream::wrappers::TcpListenerStream;

const BIN: &str = env!("CARGO_BIN_EXE_custodian");
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const DSR_TRACE_ID: &str = "5cf92f3577b34da6a3ce929d0e0e4737";

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_with_the_callers_trace_id() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let data_dir = tempfile::tempdir().unwrap();
    // Killed if the test ends early; its exit can be awaited.
    let mut server = tokio::process::Command::new(BIN)
        .env_clear()
        .args(["--listen", "127.0.0.1:0", "--log", "warn", "--data-dir"])
        .arg(data_dir.path())
        .arg("--otlp-endpoint")
        .arg(format!("http://{collector_addr}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(server.stdout.take().unwrap()).lines();
    let addr: SocketAddr = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the serving line within 30s")
            .unwrap()
            .expect("stdout open");
        if let Some(rest) = line.strip_prefix("custodian: serving ") {
            break rest
                .split(" on ")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap();
        }
    };
    let token = String::from_utf8(
        Command::new(BIN)
            .env_clear()
            .args([
                "token",
                "--subject",
                "test:otlp",
                "--purpose",
                "administration",
                "--purpose",
                "service_delivery",
                "--purpose",
                "dsr_fulfilment",
                "--data-dir",
            ])
            .arg(data_dir.path())
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();

    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // Wait for SERVING: the health stream reports each change.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    while health
        .message()
        .await
        .unwrap()
        .expect("health stream open")
        .status
        != tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    {}
    drop(health);
    let mut request = tonic::Request::new(ListTenantsRequest::default());
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", token.trim()).parse().unwrap(),
    );
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    TenantServiceClient::new(channel.clone())
        .list_tenants(request)
        .await
        .unwrap();

    // A call carrying personal data, whose spans must not.
    let bearer = format!("Bearer {}", token.trim());
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
    TenantServiceClient::new(channel.clone())
        .create_tenant(create)
        .await
        .unwrap();
    let mut contact = tonic::Request::new(CreateContactRequest {
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
    });
    contact
        .metadata_mut()
        .insert("authorization", bearer.parse().unwrap());
    ContactServiceClient::new(channel.clone())
        .create_contact(contact)
        .await
        .unwrap();

    // A data-subject request is one trace: the steps dsr runs later, in the
    // background, continue the trace of the call that created it, and so
    // do the calls they make to the other services.
    fn with<T>(bearer: &str, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", bearer.parse().unwrap());
        request
    }
    let authed = |message| with(&bearer, message);
    let authed_get = |message| with(&bearer, message);
    let mut create = authed(CreateRequestRequest {
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
    });
    create.metadata_mut().insert(
        "traceparent",
        format!("00-{DSR_TRACE_ID}-00f067aa0ba902b8-01")
            .parse()
            .unwrap(),
    );
    let mut requests = RequestServiceClient::new(channel);
    let name = requests
        .create_request(create)
        .await
        .unwrap()
        .into_inner()
        .name;
    let code = std::fs::read_dir(data_dir.path().join("outbox"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .find_map(|text| {
            text.lines().find_map(|l| {
                let code = l.strip_prefix("    ")?;
                (code.len() == 8 && code.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| code.to_owned())
            })
        })
        .expect("the code in the outbox");
    requests
        .verify_request(with(
            &bearer,
            VerifyRequestRequest {
                name: name.clone(),
                code,
            },
        ))
        .await
        .unwrap();
    // Annika is a contact of acme: located everywhere, routed to acme.
    let began = std::time::Instant::now();
    while requests
        .get_request(authed_get(GetRequestRequest { name: name.clone() }))
        .await
        .unwrap()
        .into_inner()
        .state
        != request::State::AwaitingTenants as i32
    {
        assert!(began.elapsed() < Duration::from_secs(20), "not routed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Stopping flushes the exporter.
    let pid = server.id().expect("running").to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(20), server.wait())
        .await
        .expect("stops within 20s of SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");

    let exported = collector.0.lock().unwrap().clone();
    let spans: Vec<_> = exported
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .collect();
    let ours = spans
        .iter()
        .find(|s| hex(&s.trace_id) == TRACE_ID)
        .unwrap_or_else(|| panic!("no span in the caller's trace among {} spans", spans.len()));
    assert_eq!(ours.name, "custodian.identity.v1.TenantService/ListTenants");
    assert_eq!(
        hex(&ours.parent_span_id),
        "00f067aa0ba902b7",
        "the caller's span is the parent"
    );
    assert!(spans.iter().any(|s| s.name.ends_with("/CreateContact")));
    let request_trace: Vec<&str> = spans
        .iter()
        .filter(|s| hex(&s.trace_id) == DSR_TRACE_ID)
        .map(|s| s.name.as_str())
        .collect();
    for part in [
        "custodian.dsr.v1.RequestService/CreateRequest",
        "dsr.step",
        "custodian.subject.v1.SubjectDataService/LocateSubjectData",
    ] {
        assert!(
            request_trace.contains(&part),
            "{part} is not in the request's trace: {request_trace:?}"
        );
    }
    // Four services located, each in a step and a call of its own.
    assert!(
        request_trace
            .iter()
            .filter(|n| n.ends_with("/LocateSubjectData"))
            .count()
            >= 4,
        "{request_trace:?}"
    );
    // Each step says which it is and whom it reaches (never its scope,
    // which can name a person's record).
    let steps: Vec<_> = spans
        .iter()
        .filter(|s| hex(&s.trace_id) == DSR_TRACE_ID && s.name == "dsr.step")
        .collect();
    let attribute = |span: &opentelemetry_proto::tonic::trace::v1::Span, key: &str| {
        span.attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref())
            .and_then(|v| match &v.value {
                Some(Value::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
    };
    let mut located: Vec<String> = steps
        .iter()
        .filter(|s| attribute(s, "dsr.step.phase").as_deref() == Some("locate"))
        .filter_map(|s| attribute(s, "dsr.step.service"))
        .collect();
    located.sort();
    located.dedup();
    assert_eq!(
        located,
        ["analytics", "feedback", "identity", "tickets"],
        "{steps:?}"
    );
    assert!(
        steps
            .iter()
            .all(|s| attribute(s, "dsr.step.outcome").is_some()),
        "{steps:?}"
    );
    let everything = format!("{exported:?}");
    for secret in ["annika", "Zwiebelbaum", token.trim()] {
        assert!(
            !everything.contains(secret),
            "exported traces carry a personal value or the token"
        );
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
