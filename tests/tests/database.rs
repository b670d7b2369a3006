//! A database that goes away while the server runs, in process (the real
//! binary's run is `services/custodian/tests/outage.rs`):
//!
//! - PostgreSQL, at the runtime's level: what a refused and a terminated
//!   connection are once classified (never INTERNAL), the readiness probe
//!   following the database down and up, and the first statements after it
//!   is back succeeding on the pool and on the native batched reads.
//! - SQLite, through the server: a file locked beyond the busy timeout is
//!   UNAVAILABLE, "nothing was stored", and nothing was; a removed file
//!   makes health NOT_SERVING.

use std::{
    str::FromStr as _,
    time::{Duration, Instant},
};

use custodian_proto::identity::v1::{CreateContactRequest, ListContactsRequest};
use custodian_runtime::{ApiError, Database, database::fault};
use custodian_tests::{Backend, TestApp, TestDatabase, fixtures, spawn};
use sqlx::ConnectOptions as _;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// How long readiness may lag the database, either way.
const WITHIN: Duration = Duration::from_secs(5);

async fn wait_for(ready: &mut tokio::sync::watch::Receiver<bool>, want: bool) -> Duration {
    let start = Instant::now();
    tokio::time::timeout(WITHIN, ready.wait_for(|up| *up == want))
        .await
        .unwrap_or_else(|_| panic!("readiness not {want} within {WITHIN:?}"))
        .expect("probe running");
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_or_terminated_postgres_connection_is_unavailable_and_readiness_follows() {
    let Some(test_db) = TestDatabase::create(Backend::Postgres).await else {
        return;
    };
    let db = Database::connect_lazy(&test_db.url, 4).expect("pool");
    sqlx::raw_sql(
        "CREATE TABLE t (id TEXT PRIMARY KEY, v TEXT NOT NULL); INSERT INTO t VALUES ('a', 'x')",
    )
    .execute(db.pool())
    .await
    .expect("table");
    let reads = db.pg_point_reads().expect("batched reads");
    let read = "SELECT id, v FROM t WHERE id = ANY($1)";
    assert!(reads.read(read, "a").await.expect("read").is_some());
    let mut ready = db.readiness().expect("probe");
    assert!(*ready.borrow());

    test_db.take_away().await;
    // The pool's idle connection was terminated, and new ones are refused.
    let Err(err) = sqlx::query("SELECT v FROM t").fetch_all(db.pool()).await else {
        panic!("a query succeeded while the database was away");
    };
    let api = ApiError::from(err);
    assert!(
        matches!(api, ApiError::Database(_)),
        "a query on a terminated or refused connection: {api:?}"
    );
    let status = tonic::Status::from(api);
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // The batched reads' native connection too, and the error they share
    // among their callers is classified the same way.
    let Err(err) = reads.read(read, "a").await else {
        panic!("a batched read succeeded while the database was away");
    };
    assert!(
        matches!(ApiError::internal(err), ApiError::Database(_)),
        "a batched read while the database is away"
    );
    // What PostgreSQL answers a new connection to a database that does not
    // allow connections: SQLSTATE 55000, classified as refused.
    let Err(refused) = sqlx::postgres::PgConnectOptions::from_str(&test_db.url)
        .expect("options")
        .connect()
        .await
    else {
        panic!("a connection was made while the database was away");
    };
    let sqlx::Error::Database(ref db_err) = refused else {
        panic!("refused with {refused:?}");
    };
    assert_eq!(db_err.code().as_deref(), Some("55000"), "{refused:?}");
    assert_eq!(fault::of_sqlx(&refused), Some(fault::Fault::Unreachable));
    let down = wait_for(&mut ready, false).await;
    eprintln!("readiness false {down:?} after the database went away");

    test_db.give_back().await;
    let up = wait_for(&mut ready, true).await;
    eprintln!("readiness true {up:?} after it came back");
    // The first statements after it is back succeed, on the pool and on
    // the batched reads (whose loops keep native connections of their
    // own, one of which the outage broke unseen).
    let rows = sqlx::query("SELECT v FROM t")
        .fetch_all(db.pool())
        .await
        .expect("a query once the database is back");
    assert_eq!(rows.len(), 1);
    let (a, b) = tokio::join!(reads.read(read, "a"), reads.read(read, "a"));
    assert!(a.expect("a read once the database is back").is_some());
    assert!(b.expect("a read once the database is back").is_some());
    db.close().await;
}

fn contact_request(email: &str) -> CreateContactRequest {
    CreateContactRequest {
        parent: "tenants/acme".into(),
        contact: Some(fixtures::contact(email)),
        request_id: String::new(),
    }
}

async fn contacts_with_email(app: &TestApp, email: &str) -> usize {
    app.contacts()
        .list_contacts(ListContactsRequest {
            parent: "tenants/acme".into(),
            page_size: 10,
            email: email.into(),
            ..Default::default()
        })
        .await
        .expect("ListContacts")
        .into_inner()
        .contacts
        .len()
}

fn sqlite_file(app: &TestApp) -> std::path::PathBuf {
    app.db.dir().join("test.db")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_file_locked_beyond_the_busy_timeout_is_unavailable_and_stores_nothing() {
    let app = spawn(Backend::Sqlite).await.expect("SQLite");
    fixtures::tenant(&app, "acme").await;
    let contacts_before = app.count("identity_contacts").await;

    // Another process's writer holds the file's write lock past the
    // server's busy timeout.
    let holder = rusqlite::Connection::open(sqlite_file(&app)).expect("open");
    holder
        .execute_batch("BEGIN IMMEDIATE")
        .expect("the write lock");
    let started = Instant::now();
    let err = app
        .contacts()
        .create_contact(contact_request("locked@example.com"))
        .await
        .expect_err("the file is locked");
    eprintln!("refused after {:?}", started.elapsed());
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(err.message(), "the database is busy; nothing was stored");
    // Health does not follow a lock: the database is there, and busy.
    let health = HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);
    holder.execute_batch("ROLLBACK").expect("release");
    drop(holder);

    assert_eq!(contacts_with_email(&app, "locked@example.com").await, 0);
    assert_eq!(app.count("identity_contacts").await, contacts_before);
    // Nor did it leave an audit event (it was the first create of a
    // contact).
    let creates = app
        .audit_events()
        .await
        .into_iter()
        .filter(|e| e.method.ends_with("CreateContact"))
        .count();
    assert_eq!(creates, 0);
    app.contacts()
        .create_contact(contact_request("locked@example.com"))
        .await
        .expect("the same create once the lock is gone");
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_sqlite_file_is_not_serving() {
    let app = spawn(Backend::Sqlite).await.expect("SQLite");
    fixtures::tenant(&app, "acme").await;
    app.contacts()
        .create_contact(contact_request("before@example.com"))
        .await
        .expect("create");

    let file = sqlite_file(&app);
    for path in [
        file.clone(),
        file.with_extension("db-wal"),
        file.with_extension("db-shm"),
    ] {
        let _ = std::fs::remove_file(path);
    }
    let gone = Instant::now();
    let mut health = HealthClient::new(app.channel.clone());
    loop {
        let status = health
            .check(HealthCheckRequest {
                service: "custodian.identity.v1.ContactService".into(),
            })
            .await
            .expect("health")
            .into_inner()
            .status();
        if status == ServingStatus::NotServing {
            break;
        }
        assert!(gone.elapsed() < WITHIN, "still {status:?} after {WITHIN:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "NOT_SERVING {:?} after the file was removed",
        gone.elapsed()
    );
    // And `""`, which Kubernetes' readiness probe asks.
    let all = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health")
        .into_inner()
        .status();
    assert_eq!(all, ServingStatus::NotServing);
    app.stop().await.unwrap();
}
