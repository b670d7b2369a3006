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

// The kernel's audit API takes a service's own transaction, native or
// `Any`: events staged in a native SQLite or PostgreSQL transaction are
// sealed into the chain like any other.
storage_test!(
    events_staged_in_a_native_transaction_are_sealed,
    |app: TestApp| async move {
        use custodian_privacy::audit::{AuditLog, Event, Filter};
        use custodian_proto::audit::v1::AuditOutcome;

        let db = custodian_runtime::Database::connect_lazy(&app.db.url, 2).expect("database");
        let log = AuditLog::new(
            "native-check",
            db,
            Arc::new(custodian_runtime::time::SystemClock),
        );
        log.start().await.expect("sealer");
        let event = |resource: &str| Event {
            caller: "test:native".into(),
            resource: resource.into(),
            ..Event::new(AuditAction::Update, AuditOutcome::Ok)
        };
        if app.db.url.starts_with("sqlite") {
            let pool = sqlx::SqlitePool::connect(&app.db.url).await.expect("pool");
            let tx = pool.begin().await.expect("begin");
            log.commit(tx, &[event("things/1"), event("things/2")])
                .await
                .expect("staged");
            // A rolled-back change leaves no event.
            let mut tx = pool.begin().await.expect("begin");
            log.stage_in_tx(&mut tx, &[event("things/3")])
                .await
                .expect("staged");
            tx.rollback().await.expect("rollback");
        } else {
            let pool = sqlx::PgPool::connect(&app.db.url).await.expect("pool");
            let tx = pool.begin().await.expect("begin");
            log.commit(tx, &[event("things/1"), event("things/2")])
                .await
                .expect("staged");
            let mut tx = pool.begin().await.expect("begin");
            log.stage_in_tx(&mut tx, &[event("things/3")])
                .await
                .expect("staged");
            tx.rollback().await.expect("rollback");
        }
        let listed = log
            .list(
                &Filter {
                    resource: String::new(),
                    subject_ref: String::new(),
                    start_time: 0,
                    end_time: i64::MAX,
                },
                0,
                10,
            )
            .await
            .expect("list");
        let resources: Vec<&str> = listed.iter().map(|e| e.event.resource.as_str()).collect();
        assert_eq!(resources, ["things/1", "things/2"]);
        assert_eq!(
            listed.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2],
            "sealed in order"
        );
        let verified = log.verify().await.expect("verify");
        assert!(verified.intact, "{verified:?}");
        assert_eq!(verified.events_checked, 2);
        assert_eq!(verified.unsealed_events, 0);
    }
);
