//! Test harness: starts the real server on 127.0.0.1:0 with a fresh database
//! (a SQLite file in a temporary folder, or a new PostgreSQL database) and
//! hands out generated tonic clients.
//!
//! PostgreSQL is found at `CUSTODIAN_TEST_POSTGRES_URL` (default: the local
//! server, database `postgres`). When it cannot be reached the PostgreSQL run
//! of a test is skipped with a message, except under `CI=true`, where it fails.

use std::{str::FromStr as _, sync::Arc, time::Duration};

use custodian_privacy::{Purpose, keys::KeyFile, token::TokenIssuer};
use custodian_proto::{
    analytics::v1::site_service_client::SiteServiceClient,
    audit::v1::audit_service_client::AuditServiceClient,
    dsr::v1::{
        request_service_client::RequestServiceClient,
        tenant_inbox_service_client::TenantInboxServiceClient,
    },
    feedback::v1::feedback_service_client::FeedbackServiceClient,
    feedback::v1::survey_service_client::SurveyServiceClient,
    identity::v1::{
        contact_service_client::ContactServiceClient,
        evaluation_signup_service_client::EvaluationSignupServiceClient,
        tenant_service_client::TenantServiceClient, user_service_client::UserServiceClient,
    },
    privacy::v1::data_map_service_client::DataMapServiceClient,
    retention::v1::retention_service_client::RetentionServiceClient,
    subject::v1::subject_data_service_client::SubjectDataServiceClient,
    tickets::v1::ticket_service_client::TicketServiceClient,
};
use custodian_runtime::{Config, time::ManualClock};
use sqlx::{AnyPool, Row as _};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{codegen::InterceptedService, transport::Channel};

pub use custodian_runtime::telemetry::init_for_tests;

pub mod hostile;
pub mod notes;

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn postgres_admin_url() -> String {
    std::env::var("CUSTODIAN_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A fresh, empty database for one test, removed when dropped.
pub struct TestDatabase {
    pub url: String,
    /// A private folder for the test: the SQLite file, the mail outbox.
    dir: tempfile::TempDir,
    pg_name: Option<String>,
}

impl TestDatabase {
    /// `None` when PostgreSQL is wanted but not reachable outside CI.
    pub async fn create(backend: Backend) -> Option<Self> {
        sqlx::any::install_default_drivers();
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temporary folder");
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display());
                Some(Self {
                    url,
                    dir,
                    pg_name: None,
                })
            }
            Backend::Postgres => {
                let admin_url = postgres_admin_url();
                let admin = match sqlx::AnyPool::connect(&admin_url).await {
                    Ok(pool) => pool,
                    Err(err) if !in_ci() => {
                        eprintln!(
                            "skipping the PostgreSQL run: cannot reach PostgreSQL ({err}); set CUSTODIAN_TEST_POSTGRES_URL"
                        );
                        return None;
                    }
                    Err(err) => panic!("CI=true and PostgreSQL is unreachable: {err}"),
                };
                let name = format!("custodian_test_{}", uuid::Uuid::new_v4().simple());
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&admin)
                    .await
                    .expect("creating a test database");
                admin.close().await;
                let (base, _) = admin_url
                    .rsplit_once('/')
                    .expect("database URL with a database name");
                Some(Self {
                    url: format!("{base}/{name}"),
                    dir: tempfile::tempdir().expect("temporary folder"),
                    pg_name: Some(name),
                })
            }
        }
    }
}

impl TestDatabase {
    /// The test's private folder (the data folder of its server).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// PostgreSQL: takes the database away while a server uses it: new
    /// connections refused (`ALLOW_CONNECTIONS false`), every open one
    /// terminated. The statements go to the maintenance database, never
    /// to this one. Panics on SQLite.
    pub async fn take_away(&self) {
        let name = self.pg_name.as_deref().expect("a PostgreSQL database");
        admin(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false")).await;
        admin(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ))
        .await;
    }

    /// PostgreSQL: gives it back after [`Self::take_away`].
    pub async fn give_back(&self) {
        let name = self.pg_name.as_deref().expect("a PostgreSQL database");
        admin(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")).await;
    }
}

/// Runs `sql` on the PostgreSQL maintenance database.
async fn admin(sql: &str) {
    let pool = sqlx::AnyPool::connect(&postgres_admin_url())
        .await
        .expect("connecting to the maintenance database");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    pool.close().await;
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        // Drop runs inside the test's runtime, which cannot be blocked on;
        // a thread with its own runtime removes the database.
        let admin_url = postgres_admin_url();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let admin = sqlx::AnyPool::connect(&admin_url).await.ok()?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&admin)
                .await
                .ok()?;
                admin.close().await;
                Some(())
            })
        })
        .join();
    }
}

/// A running server and a way to stop it.
pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub channel: Channel,
    pub db: TestDatabase,
    /// A separate pool on the same database, for looking at raw rows.
    pub raw: AnyPool,
    /// The server's keys (a fresh set per test).
    pub keys: KeyFile,
    /// The clock retention and audit read; tests move it instead of sleeping.
    pub clock: Arc<ManualClock>,
    /// A token with every purpose and no tenant limit.
    pub root_token: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Settings for a test server; tweak before [`spawn_with`].
pub fn test_config(db: &TestDatabase) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().expect("address"),
        database_url: Some(db.url.clone()),
        // The mail outbox and anything else a server keeps on disk.
        data_dir: db.dir().to_path_buf(),
        database_max_connections: 4,
        // Tests sweep on demand, at the times they choose.
        retention_sweep_interval: Duration::ZERO,
        ..Config::default()
    }
}

/// A fresh key file (master key, blind-index key, token key pair).
pub fn test_keys() -> KeyFile {
    KeyFile::generate("mk-test-1", custodian_privacy::token::generate_key_pair())
}

/// What a server run with `--target SERVICE` holds, made from the suite's
/// test keys: the service's own key file (no signing key) and, for a service
/// that calls others, its credential, written to `config.data_dir` and set
/// as `config.service_token_file`.
pub fn for_target(keys: &KeyFile, service: &str, config: &mut Config) -> KeyFile {
    let (_, mut files) = keys.split(&[service]).expect("splitting the test keys");
    let issuer = TokenIssuer::from_pem(keys.token_signing_key.as_deref().expect("signing key"))
        .expect("issuer");
    if let Ok(token) = custodian::service_credential(&issuer, service, Duration::from_secs(3600)) {
        let path = config.data_dir.join(format!("{service}.token"));
        std::fs::write(&path, token).expect("writing the service credential");
        config.service_token_file = Some(path);
    }
    files.pop().expect("the service's key file")
}

/// Starts the whole suite on `backend`; `None` when that backend is
/// unavailable (outside CI).
pub async fn spawn(backend: Backend) -> Option<TestApp> {
    spawn_with(backend, |_| {}).await
}

pub async fn spawn_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Option<TestApp> {
    spawn_suite(backend, custodian::SERVICES, tweak).await
}

/// Starts the services of `table` (the binary's table, or a longer one) in
/// one process on `backend`.
pub async fn spawn_suite(
    backend: Backend,
    table: &[custodian::Service],
    tweak: impl FnOnce(&mut Config),
) -> Option<TestApp> {
    init_for_tests();
    let db = TestDatabase::create(backend).await?;
    let mut config = test_config(&db);
    tweak(&mut config);
    let keys = test_keys();
    let clock = Arc::new(ManualClock::new(custodian_runtime::time::now_micros()));
    let suite = custodian::suite_of(table, custodian::Target::All, &config, &keys, clock.clone())
        .expect("suite");
    let app = custodian::bind(config, suite).await.expect("bind");
    let addr = app.local_addr();
    let mut ready = app.readiness();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_with_shutdown(async move {
        let _ = stopped.await;
    }));
    tokio::time::timeout(Duration::from_secs(30), ready.wait_for(|r| *r))
        .await
        .expect("server ready within 30s")
        .expect("server task alive");
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let raw = sqlx::pool::PoolOptions::<sqlx::Any>::new()
        .max_connections(2)
        .connect_with(sqlx::any::AnyConnectOptions::from_str(&db.url).expect("url"))
        .await
        .expect("raw pool");
    let root_token = issue(&keys, "test:root", &Purpose::ALL, None);
    Some(TestApp {
        addr,
        channel,
        db,
        raw,
        keys,
        clock,
        root_token,
        stop: Some(stop),
        task: Some(task),
    })
}

/// An access as the kernel makes it, for code that calls the kit without a
/// server: a token for `subject` (signed with a fresh key pair), verified by
/// the kernel's authenticator and authorised for `method`. Outside the
/// kernel there is no other way to make one.
pub fn verified_access(
    subject: &str,
    purposes: &[Purpose],
    tenant: Option<&str>,
    method: custodian_privacy::Method,
) -> custodian_privacy::Access {
    let (private, public) = custodian_privacy::token::generate_key_pair();
    let token = TokenIssuer::from_pem(&private)
        .expect("issuer")
        .issue(subject, purposes, tenant, Duration::from_secs(3600))
        .expect("token");
    let authenticator = custodian_privacy::TokenAuthenticator::new(
        custodian_privacy::token::TokenVerifier::from_public_pems([public.as_str()])
            .expect("verifier"),
    );
    let mut headers = tonic::codegen::http::HeaderMap::new();
    headers.insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ASCII"),
    );
    let caller = authenticator.caller(&headers).expect("a verified caller");
    custodian_privacy::access::authorize(Some(&caller), method)
        .unwrap_or_else(|_| panic!("{subject} may call {}", method.path))
}

/// A token signed with `keys`, valid for an hour.
pub fn issue(keys: &KeyFile, subject: &str, purposes: &[Purpose], tenant: Option<&str>) -> String {
    TokenIssuer::from_pem(keys.token_signing_key.as_deref().expect("signing key"))
        .expect("issuer")
        .issue(subject, purposes, tenant, Duration::from_secs(3600))
        .expect("token")
}

/// Adds a bearer token (and optionally a purpose) to every call.
#[derive(Clone)]
pub struct Bearer {
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    purpose: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    service: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Bearer {
    /// `None` sends no token at all.
    pub fn new(token: Option<&str>) -> Self {
        Self {
            token: token.map(|t| format!("Bearer {t}").parse().expect("ascii token")),
            purpose: None,
            service: None,
        }
    }

    /// Names the service whose implementation of a shared contract
    /// (`SubjectDataService`, `RetentionService`) the calls reach.
    pub fn with_service(mut self, service: &str) -> Self {
        self.service = Some(service.parse().expect("ascii"));
        self
    }

    pub fn with_purpose(mut self, purpose: Purpose) -> Self {
        self.purpose = Some(purpose.as_str().parse().expect("ascii"));
        self
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        if let Some(purpose) = &self.purpose {
            request
                .metadata_mut()
                .insert("custodian-purpose", purpose.clone());
        }
        if let Some(service) = &self.service {
            request
                .metadata_mut()
                .insert("custodian-service", service.clone());
        }
        Ok(request)
    }
}

pub type Authed = InterceptedService<Channel, Bearer>;

macro_rules! clients {
    ($($name:ident, $as_name:ident => $client:ident;)*) => {
        impl TestApp {
            $(
                /// A client calling with the root token.
                pub fn $name(&self) -> $client<Authed> {
                    $client::with_interceptor(self.channel.clone(), Bearer::new(Some(&self.root_token)))
                }

                /// A client calling with `bearer`'s credentials.
                pub fn $as_name(&self, bearer: Bearer) -> $client<Authed> {
                    $client::with_interceptor(self.channel.clone(), bearer)
                }
            )*
        }
    };
}

clients! {
    tenants, tenants_as => TenantServiceClient;
    users, users_as => UserServiceClient;
    contacts, contacts_as => ContactServiceClient;
    signups, signups_as => EvaluationSignupServiceClient;
    retention, retention_as => RetentionServiceClient;
    audit, audit_as => AuditServiceClient;
    tickets, tickets_as => TicketServiceClient;
    data_map, data_map_as => DataMapServiceClient;
    sites, sites_as => SiteServiceClient;
    feedback, feedback_as => FeedbackServiceClient;
    surveys, surveys_as => SurveyServiceClient;
    dsr_requests, dsr_requests_as => RequestServiceClient;
    dsr_inbox, dsr_inbox_as => TenantInboxServiceClient;
}

impl TestApp {
    /// Identity's subject-data contract, with the root token.
    pub fn subjects(&self) -> SubjectDataServiceClient<Authed> {
        self.subjects_of("identity")
    }

    /// One service's subject-data contract, with the root token.
    pub fn subjects_of(&self, service: &str) -> SubjectDataServiceClient<Authed> {
        SubjectDataServiceClient::with_interceptor(
            self.channel.clone(),
            Bearer::new(Some(&self.root_token)).with_service(service),
        )
    }

    /// Identity's subject-data contract, with `bearer`'s credentials.
    pub fn subjects_as(&self, bearer: Bearer) -> SubjectDataServiceClient<Authed> {
        let bearer = if bearer.service.is_some() {
            bearer
        } else {
            bearer.with_service("identity")
        };
        SubjectDataServiceClient::with_interceptor(self.channel.clone(), bearer)
    }

    /// A token for this server.
    pub fn token(&self, purposes: &[Purpose], tenant: Option<&str>) -> String {
        issue(&self.keys, "test:caller", purposes, tenant)
    }

    /// The whole audit trail (up to 1000 events), as the AuditService lists it.
    pub async fn audit_events(&self) -> Vec<custodian_proto::audit::v1::AuditEvent> {
        self.audit()
            .list_audit_events(custodian_proto::audit::v1::ListAuditEventsRequest {
                page_size: 1000,
                ..Default::default()
            })
            .await
            .expect("listing the audit trail")
            .into_inner()
            .events
    }

    /// Returns once the audit sealers have chained every staged event of
    /// the changes committed so far, so the trail can be read straight
    /// from the database.
    pub async fn sealed(&self) {
        sealed(&self.channel, &self.root_token).await;
    }

    /// Sealed audit events, read straight from the database.
    pub async fn audit_count(&self) -> i64 {
        self.sealed().await;
        self.count("audit_events").await
    }

    /// Rows in `table`, read straight from the database.
    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) AS n FROM {table}"
        )))
        .fetch_one(&self.raw)
        .await
        .expect("count")
        .try_get::<i64, _>("n")
        .expect("count column")
    }

    /// Sends the stop signal without waiting.
    pub fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// The server task, to await it after [`Self::signal_stop`].
    pub fn take_task(&mut self) -> Option<JoinHandle<anyhow::Result<()>>> {
        self.task.take()
    }

    /// Stops the server (SIGTERM's path: NOT_SERVING, then drain) and waits.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.raw.close().await;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await?,
            None => Ok(()),
        }
    }
}

/// Runs a storage test once on SQLite and once on PostgreSQL:
/// `storage_test!(name, |app| async move { ... })` makes `name::sqlite` and
/// `name::postgres`.
#[macro_export]
macro_rules! storage_test {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                if let Some(app) = $crate::spawn($crate::Backend::Sqlite).await {
                    ($body)(app).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(app) = $crate::spawn($crate::Backend::Postgres).await {
                    ($body)(app).await;
                }
            }
        }
    };
}

/// The code of an error, and its field violations as (field, description).
pub fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    use tonic_types::StatusExt as _;
    status
        .get_error_details()
        .bad_request()
        .map(|b| {
            b.field_violations
                .iter()
                .map(|v| (v.field.clone(), v.description.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Builders for valid requests, so each test states only what it varies.
pub mod fixtures {
    use custodian_proto::{
        common::v1::{PersonName, PostalAddress},
        identity::v1::{Contact, CreateTenantRequest, EvaluationSignup, Tenant, User},
    };

    use super::TestApp;

    pub fn name(given: &str, family: &str) -> Option<PersonName> {
        Some(PersonName {
            given_name: given.into(),
            family_name: family.into(),
        })
    }

    pub fn address(region: &str) -> Option<PostalAddress> {
        Some(PostalAddress {
            address_lines: vec!["Unter den Linden 1".into()],
            locality: "Berlin".into(),
            administrative_area: String::new(),
            postal_code: "10117".into(),
            region_code: region.into(),
        })
    }

    pub fn user(email: &str) -> User {
        User {
            person_name: name("Ann", "Archer"),
            email: email.into(),
            ..Default::default()
        }
    }

    pub fn contact(email: &str) -> Contact {
        Contact {
            person_name: name("Ben", "Baker"),
            email: email.into(),
            organization: "Baker & Sons".into(),
            ..Default::default()
        }
    }

    pub fn signup(email: &str) -> EvaluationSignup {
        EvaluationSignup {
            person_name: name("Cat", "Cole"),
            email: email.into(),
            company: "Cole Logistics".into(),
            nature_of_business: "freight forwarding".into(),
            ..Default::default()
        }
    }

    /// Creates `tenants/{id}`.
    pub async fn tenant(app: &TestApp, id: &str) -> Tenant {
        app.tenants()
            .create_tenant(CreateTenantRequest {
                tenant: Some(Tenant {
                    display_name: format!("Tenant {id}"),
                    ..Default::default()
                }),
                tenant_id: id.into(),
                request_id: String::new(),
            })
            .await
            .expect("create tenant")
            .into_inner()
    }
}

/// Returns once every change committed so far has its audit events sealed
/// into the chain: a listing makes each service's sealer seal what is
/// staged before it answers (see [`TestApp::sealed`]). The listing asks for
/// nothing (events of the far future), so it reads every service's trail
/// and returns no event.
pub async fn sealed(channel: &Channel, token: &str) {
    let far_future = prost_types::Timestamp {
        seconds: 32_503_680_000, // the year 3000
        nanos: 0,
    };
    let listed =
        custodian_proto::audit::v1::audit_service_client::AuditServiceClient::with_interceptor(
            channel.clone(),
            Bearer::new(Some(token)),
        )
        .list_audit_events(custodian_proto::audit::v1::ListAuditEventsRequest {
            start_time: Some(far_future),
            ..Default::default()
        })
        .await
        .expect("sealing through a listing")
        .into_inner();
    assert!(listed.events.is_empty(), "no event is from the year 3000");
}
