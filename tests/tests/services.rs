//! What crosses service boundaries and key changes: a service calling
//! another for its caller, and master-key rotation without downtime.

use std::sync::Arc;

use custodian_privacy::{Forward, Method, Purpose, keys::KeyFile, vault::Vault};
use custodian_proto::{
    audit::v1::AuditAction,
    common::v1::{SubjectIdentifier, subject_identifier},
    identity::v1::{CreateContactRequest, GetContactRequest},
    subject::v1::{
        LocateSubjectDataRequest, subject_data_service_client::SubjectDataServiceClient,
    },
};
use custodian_runtime::time::SystemClock;
use custodian_tests::{
    Backend, TestApp, TestDatabase, fixtures, storage_test, test_config, test_keys,
};

storage_test!(
    a_service_call_carries_its_token_the_purpose_and_the_person_behind_it,
    |app: TestApp| async move {
        fixtures::tenant(&app, "acme").await;
        app.contacts()
            .create_contact(CreateContactRequest {
                parent: "tenants/acme".into(),
                contact: Some(fixtures::contact("ben@example.com")),
                request_id: String::new(),
            })
            .await
            .unwrap();
        // The dsr service received a request from an operator, and asks identity.
        let operator = custodian_tests::verified_access(
            "ops:alice",
            &[Purpose::DsrFulfilment],
            None,
            Method {
                path: "/custodian.dsr.v1.RequestService/Fulfil",
                action: AuditAction::Export,
                purposes: &[Purpose::DsrFulfilment],
            },
        );
        let service_token = custodian_privacy::token::TokenIssuer::from_pem(
            app.keys.token_signing_key.as_deref().unwrap(),
        )
        .unwrap()
        .issue_service(
            "svc:dsr",
            &[Purpose::DsrFulfilment, Purpose::Support],
            std::time::Duration::from_secs(60),
        )
        .unwrap();
        let mut forward = Forward::new(&service_token, &operator, None).unwrap();
        let mut client = SubjectDataServiceClient::with_interceptor(
            app.channel.clone(),
            move |request: tonic::Request<()>| {
                let mut request = tonic::service::Interceptor::call(&mut forward, request)?;
                request
                    .metadata_mut()
                    .insert("custodian-service", "identity".parse().unwrap());
                Ok(request)
            },
        );
        let found = client
            .locate_subject_data(LocateSubjectDataRequest {
                subject: Some(SubjectIdentifier {
                    kind: Some(subject_identifier::Kind::Email("ben@example.com".into())),
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .records;
        assert_eq!(found.len(), 1);
        let events = app.audit_events().await;
        let locate = events
            .iter()
            .find(|e| e.action == AuditAction::Locate as i32)
            .unwrap();
        assert_eq!(
            (
                locate.caller.as_str(),
                locate.on_behalf_of.as_str(),
                locate.purpose.as_str()
            ),
            ("svc:dsr", "ops:alice", "dsr_fulfilment")
        );
        app.stop().await.unwrap();
    }
);

type Running = (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
    Vec<Vault>,
);

/// Serves the suite on `db` with `keys`, as a restarted server would.
async fn serve(db: &TestDatabase, keys: &KeyFile) -> Running {
    let config = test_config(db);
    let suite =
        custodian::suite(custodian::Target::All, &config, keys, Arc::new(SystemClock)).unwrap();
    let vaults = suite.vaults.clone();
    let app = custodian::bind(config, suite).await.unwrap();
    let addr = format!("http://{}", app.local_addr());
    let mut ready = app.readiness();
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(app.run_with_shutdown(async move {
        let _ = stopped.await;
    }));
    ready.wait_for(|r| *r).await.unwrap();
    (addr, stop, task, vaults)
}

async fn get_contact(addr: &str, keys: &KeyFile, name: &str) -> Result<String, tonic::Status> {
    let token = custodian_tests::issue(keys, "test:ops", &[Purpose::ServiceDelivery], None);
    let channel = tonic::transport::Channel::from_shared(addr.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = custodian_proto::identity::v1::contact_service_client::ContactServiceClient::with_interceptor(channel, custodian_tests::Bearer::new(Some(&token)));
    Ok(client
        .get_contact(GetContactRequest { name: name.into() })
        .await?
        .into_inner()
        .email)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_keys_rotate_without_losing_data() {
    custodian_tests::init_for_tests();
    let db = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let mut keys = test_keys();
    let old = keys.active_master_key.clone();

    // Data written under the first master key.
    let (addr, stop, task, _) = serve(&db, &keys).await;
    let token = custodian_tests::issue(&keys, "test:ops", &Purpose::ALL, None);
    let channel = tonic::transport::Channel::from_shared(addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut tenants =
        custodian_proto::identity::v1::tenant_service_client::TenantServiceClient::with_interceptor(
            channel.clone(),
            custodian_tests::Bearer::new(Some(&token)),
        );
    tenants
        .create_tenant(custodian_proto::identity::v1::CreateTenantRequest {
            tenant: Some(custodian_proto::identity::v1::Tenant {
                display_name: "Acme".into(),
                ..Default::default()
            }),
            tenant_id: "acme".into(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let mut contacts = custodian_proto::identity::v1::contact_service_client::ContactServiceClient::with_interceptor(channel, custodian_tests::Bearer::new(Some(&token)));
    let name = contacts
        .create_contact(CreateContactRequest {
            parent: "tenants/acme".into(),
            contact: Some(fixtures::contact("ben@example.com")),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .name;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();

    // A new master key becomes active; the old one still opens old data.
    keys.add_master_key("mk-test-2").unwrap();
    keys.activate_master_key("mk-test-2").unwrap();
    let (addr, stop, task, vaults) = serve(&db, &keys).await;
    assert_eq!(
        get_contact(&addr, &keys, &name).await.unwrap(),
        "ben@example.com"
    );
    let vault = &vaults[0];
    assert_eq!(vault.key_usage().await.unwrap(), [(old.clone(), 1)]);

    // Rewrap while serving; then every data key is under the new master key.
    assert_eq!(vault.rewrap_all(100).await.unwrap(), 1);
    assert_eq!(
        vault.key_usage().await.unwrap(),
        [("mk-test-2".to_owned(), 1)]
    );
    assert_eq!(
        get_contact(&addr, &keys, &name).await.unwrap(),
        "ben@example.com"
    );
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();

    // The old key retired, the data still reads.
    keys.retire_master_key(&old).unwrap();
    let (addr, stop, task, _) = serve(&db, &keys).await;
    assert_eq!(
        get_contact(&addr, &keys, &name).await.unwrap(),
        "ben@example.com"
    );
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}
