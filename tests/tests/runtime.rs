//! The shared runtime as a caller sees it: health, reflection, admission
//! (start-up gate and load shedding), message limits and graceful shutdown.

use std::sync::Arc;

use custodian_privacy::Purpose;
use custodian_proto::identity::v1::{CreateContactRequest, ListTenantsRequest};
use custodian_runtime::{Application, ServiceModule, server::Limits, time::SystemClock};
use custodian_tests::{
    Backend, Bearer, TestDatabase, fixtures, issue, spawn, spawn_with, test_config, test_keys,
};
use futures::future::BoxFuture;
use tokio_stream::StreamExt as _;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

async fn health(channel: &Channel, service: &str) -> ServingStatus {
    let response = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner();
    ServingStatus::try_from(response.status).unwrap()
}

#[tokio::test]
async fn health_reports_every_service_serving() {
    let app = spawn(Backend::Sqlite).await.unwrap();
    for service in [
        "",
        "custodian.identity.v1.TenantService",
        "custodian.identity.v1.UserService",
        "custodian.identity.v1.ContactService",
        "custodian.identity.v1.EvaluationSignupService",
        "custodian.subject.v1.SubjectDataService",
    ] {
        assert_eq!(
            health(&app.channel, service).await,
            ServingStatus::Serving,
            "{service:?}"
        );
    }
    let unknown = HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest {
            service: "custodian.nothing.v1.Nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn reflection_v1_lists_the_contracts() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let app = spawn(Backend::Sqlite).await.unwrap();
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(app.channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(Ok(response)) = responses.next().await else {
        panic!("no reflection answer")
    };
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("not a service list")
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "custodian.identity.v1.ContactService",
        "custodian.subject.v1.SubjectDataService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn over_the_concurrency_limit_calls_are_shed_but_probes_answer() {
    // No permits at all: every admitted call would exceed the limit.
    let app = spawn_with(Backend::Sqlite, |c| c.max_concurrent_requests = 0)
        .await
        .unwrap();
    let err = app
        .tenants()
        .list_tenants(ListTenantsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(
        health(&app.channel, "").await,
        ServingStatus::Serving,
        "health bypasses admission"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn oversized_messages_are_resource_exhausted() {
    let app = spawn_with(Backend::Sqlite, |c| c.max_message_bytes = 2048)
        .await
        .unwrap();
    fixtures::tenant(&app, "acme").await;
    let mut contact = fixtures::contact("ben@example.com");
    contact.notes = "n".repeat(4096);
    let err = app
        .contacts()
        .create_contact(CreateContactRequest {
            parent: "tenants/acme".into(),
            contact: Some(contact),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    // A message over the limit is RESOURCE_EXHAUSTED, as gRPC convention
    // has it, and says only the limit.
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(!err.message().contains("nnnn"));
    assert_eq!(app.count("identity_contacts").await, 0);
    app.stop().await.unwrap();
}

/// A module whose start-up waits until the test lets it finish.
struct SlowStart(Arc<tokio::sync::Notify>);

impl ServiceModule for SlowStart {
    fn name(&self) -> &'static str {
        "slow"
    }
    fn grpc_services(&self) -> Vec<&'static str> {
        Vec::new()
    }
    fn start(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            self.0.notified().await;
            Ok(())
        })
    }
    fn register(&self, _: &mut tonic::service::RoutesBuilder, _: Limits) {}
}

#[tokio::test]
async fn not_serving_until_started_then_draining_on_shutdown() {
    custodian_tests::init_for_tests();
    let db = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let mut config = test_config(&db);
    config.shutdown_grace = std::time::Duration::from_secs(2);
    let release = Arc::new(tokio::sync::Notify::new());
    let keys = test_keys();
    let suite = custodian::suite(
        custodian::Target::All,
        &config,
        &keys,
        Arc::new(SystemClock),
    )
    .unwrap();
    let mut modules: Vec<Arc<dyn ServiceModule>> = vec![Arc::new(SlowStart(release.clone()))];
    modules.extend(suite.modules);
    let app = Application::bind(config, modules, suite.gate)
        .await
        .unwrap();
    let bearer = Bearer::new(Some(&issue(
        &keys,
        "test:ops",
        &[Purpose::Administration],
        None,
    )));
    let addr = app.local_addr();
    let mut ready = app.readiness();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_with_shutdown(async move {
        let _ = stop_rx.await;
    }));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut tenants =
        custodian_proto::identity::v1::tenant_service_client::TenantServiceClient::with_interceptor(
            channel.clone(),
            bearer,
        );

    // Starting: probes answer NOT_SERVING and calls are turned away.
    assert_eq!(health(&channel, "").await, ServingStatus::NotServing);
    assert_eq!(
        health(&channel, "custodian.identity.v1.TenantService").await,
        ServingStatus::NotServing
    );
    assert_eq!(
        tenants
            .list_tenants(ListTenantsRequest::default())
            .await
            .unwrap_err()
            .code(),
        Code::Unavailable
    );

    release.notify_one();
    ready.wait_for(|r| *r).await.unwrap();
    assert_eq!(health(&channel, "").await, ServingStatus::Serving);
    tenants
        .list_tenants(ListTenantsRequest::default())
        .await
        .unwrap();

    // Stopping: NOT_SERVING at once, while calls are still answered during
    // the grace period (load balancers are still catching up).
    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.next().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );
    stop_tx.send(()).unwrap();
    assert_eq!(
        watch.next().await.unwrap().unwrap().status,
        ServingStatus::NotServing as i32
    );
    tenants
        .list_tenants(ListTenantsRequest::default())
        .await
        .unwrap();
    drop(watch);

    // Then it drains and stops cleanly; the port no longer accepts calls.
    tokio::time::timeout(std::time::Duration::from_secs(30), task)
        .await
        .expect("stops after the grace period")
        .unwrap()
        .unwrap();
    assert!(
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn an_open_stream_cannot_hold_the_drain_forever() {
    let mut app = spawn_with(Backend::Sqlite, |c| {
        c.request_timeout = std::time::Duration::from_secs(1)
    })
    .await
    .unwrap();
    // A health Watch never ends by itself.
    let mut watch = HealthClient::new(app.channel.clone())
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.next().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );
    app.signal_stop();
    let task = app.take_task().unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(20), task)
        .await
        .expect("the drain is bounded")
        .unwrap()
        .unwrap();
}
