//! The audit sealer with two replicas of the suite on one database: each
//! replica's sealer chains its own reads (on PostgreSQL after the head it
//! last left, moving it only if it is still there) and the changes' staged
//! events, and the chain stays one gapless, verifiable sequence with every
//! event exactly once. On SQLite and PostgreSQL.

use std::{sync::Arc, time::Duration};

use custodian_proto::{
    audit::v1::{AuditAction, ListAuditEventsRequest, VerifyAuditChainRequest},
    identity::v1::{
        CreateContactRequest, GetContactRequest, contact_service_client::ContactServiceClient,
    },
};
use custodian_runtime::time::ManualClock;
use custodian_tests::{Bearer, TestApp, fixtures, storage_test, test_config};
use tonic::transport::Channel;

const ROUNDS: usize = 40;

storage_test!(two_replicas_share_one_chain, |app: TestApp| async move {
    fixtures::tenant(&app, "acme").await;
    // A second replica: the same database, keys and contracts.
    let config = test_config(&app.db);
    let clock = Arc::new(ManualClock::new(custodian_runtime::time::now_micros()));
    let suite = custodian::suite(custodian::Target::All, &config, &app.keys, clock).expect("suite");
    let replica = custodian::bind(config, suite).await.expect("bind");
    let addr = replica.local_addr();
    let mut ready = replica.readiness();
    let task = tokio::spawn(replica.run_with_shutdown(std::future::pending()));
    tokio::time::timeout(Duration::from_secs(30), ready.wait_for(|r| *r))
        .await
        .expect("replica ready within 30s")
        .expect("replica alive");
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let token = app.root_token.clone();
    let clients = [
        app.contacts(),
        ContactServiceClient::with_interceptor(channel, Bearer::new(Some(&token))),
    ];

    // Creates on both replicas (staged events) and reads on both
    // (each replica's sealer), all at once.
    let mut work = Vec::new();
    for round in 0..ROUNDS {
        for (replica, client) in clients.iter().enumerate() {
            let mut client = client.clone();
            work.push(tokio::spawn(async move {
                let created = client
                    .create_contact(CreateContactRequest {
                        parent: "tenants/acme".into(),
                        contact: Some(fixtures::contact(&format!(
                            "r{replica}-{round}@example.com"
                        ))),
                        request_id: String::new(),
                    })
                    .await
                    .expect("create")
                    .into_inner();
                for _ in 0..3 {
                    client
                        .get_contact(GetContactRequest {
                            name: created.name.clone(),
                        })
                        .await
                        .expect("get");
                }
                created.name
            }));
        }
    }
    let mut names = Vec::new();
    for task in work {
        names.push(task.await.expect("task"));
    }
    task.abort();

    let verified = app
        .audit()
        .verify_audit_chain(VerifyAuditChainRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(verified.intact, "{:?}", verified.chains);

    let mut events = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = app
            .audit()
            .list_audit_events(ListAuditEventsRequest {
                page_size: 1000,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        events.extend(page.events);
        page_token = page.next_page_token;
        if page_token.is_empty() {
            break;
        }
    }
    let identity: Vec<_> = events.iter().filter(|e| e.service == "identity").collect();
    for pair in identity.windows(2) {
        assert_eq!(pair[1].sequence, pair[0].sequence + 1, "a gap or a double");
    }
    for name in &names {
        let of = |action: AuditAction| {
            identity
                .iter()
                .filter(|e| &e.resource == name && e.action == action as i32)
                .count()
        };
        assert_eq!(of(AuditAction::Create), 1, "create events of {name}");
        assert_eq!(of(AuditAction::Read), 3, "read events of {name}");
    }
});
