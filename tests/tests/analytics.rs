//! Web analytics end to end, on SQLite and PostgreSQL: the beacon over real
//! HTTP/1.1 and the collector over gRPC, against the whole suite.

use std::{net::SocketAddr, time::Duration};

use custodian_privacy::Purpose;
use custodian_proto::{
    analytics::v1::{
        CollectEventsRequest, CollectUsageEventsRequest, ConsentState, CountConsentsRequest,
        CreateSiteRequest, Dimension, DropReason, Event, GetConsentRequest, GetDropCountsRequest,
        GetReportRequest, ListUsageEventsRequest, Site, StreamEventsRequest, UsageEvent,
        collector_service_client::CollectorServiceClient,
        consent_service_client::ConsentServiceClient, event::Type,
        report_service_client::ReportServiceClient, site_service_client::SiteServiceClient,
        usage_service_client::UsageServiceClient,
    },
    common::v1::{DataCategory, SubjectIdentifier, subject_identifier},
    identity::v1::{
        CreateMonitoringGrantRequest, CreateUserRequest, MonitoringGrant, PolicyVersion,
        PublishPolicyVersionRequest, RetentionRule, RevokeMonitoringGrantRequest, Tenant,
        UpdateTenantRequest, monitoring_grant_service_client::MonitoringGrantServiceClient,
        policy_service_client::PolicyServiceClient,
    },
    retention::v1::{CreateLegalHoldRequest, LegalHold, legal_hold},
    subject::v1::{EraseSubjectDataRequest, LocateSubjectDataRequest},
};
use custodian_runtime::time::{Clock as _, to_timestamp};
use custodian_tests::{
    Authed, Backend, Bearer, TestApp, fixtures, spawn_with, storage_test, violations,
};
use sqlx::Row as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const CHROME: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36";
const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0";
const ORIGIN: &str = "https://www.example.com";
const DAY: Duration = Duration::from_secs(86_400);

fn sites(app: &TestApp) -> SiteServiceClient<Authed> {
    SiteServiceClient::with_interceptor(app.channel.clone(), Bearer::new(Some(&app.root_token)))
}

fn collector(app: &TestApp) -> CollectorServiceClient<Authed> {
    CollectorServiceClient::with_interceptor(
        app.channel.clone(),
        Bearer::new(Some(&app.root_token)),
    )
}

fn reports(app: &TestApp) -> ReportServiceClient<Authed> {
    ReportServiceClient::with_interceptor(app.channel.clone(), Bearer::new(Some(&app.root_token)))
}

async fn site(app: &TestApp, domain: &str) -> Site {
    sites(app)
        .create_site(CreateSiteRequest {
            site: Some(Site {
                domain: domain.into(),
                allowed_origins: vec![ORIGIN.into()],
                kept_query_params: vec!["page".into()],
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("create site")
        .into_inner()
}

/// One HTTP/1.1 exchange: (status, headers in lower case, body).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    stream.write_all(body).await.expect("write body");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

async fn beacon(app: &TestApp, body: &str, extra: &[(&str, &str)]) -> (u16, String) {
    let mut headers = vec![("Content-Type", "text/plain"), ("User-Agent", CHROME)];
    headers.extend_from_slice(extra);
    let (status, _, body) = http(app.addr, "POST", "/v1/collect", &headers, body.as_bytes()).await;
    (status, body)
}

fn pageview(domain: &str, path: &str) -> serde_json::Value {
    serde_json::json!({"site": domain, "type": "pageview", "url": format!("https://{domain}{path}")})
}

async fn rows(app: &TestApp, sql: &str) -> Vec<sqlx::any::AnyRow> {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_all(&app.raw)
        .await
        .expect("query")
}

async fn drops(app: &TestApp) -> Vec<(i32, i64)> {
    let response = reports(app)
        .get_drop_counts(GetDropCountsRequest::default())
        .await
        .expect("drop counts")
        .into_inner();
    response
        .dropped
        .iter()
        .map(|d| (d.reason, d.count))
        .collect()
}

fn grpc_event(domain: &str, path: &str, ip: &str) -> Event {
    Event {
        site: domain.into(),
        r#type: Type::Pageview as i32,
        url: format!("https://{domain}{path}"),
        user_agent: CHROME.into(),
        client_ip: ip.into(),
        ..Default::default()
    }
}

storage_test!(
    each_drop_reason_is_counted_without_identifiers,
    |app: TestApp| async move {
        let s = site(&app, "www.example.com").await;
        let bot = serde_json::json!([pageview("www.example.com", "/")]);
        let (status, _) = http(
            app.addr,
            "POST",
            "/v1/collect",
            &[
                ("Content-Type", "text/plain"),
                (
                    "User-Agent",
                    "Googlebot/2.1 (+http://www.google.com/bot.html)",
                ),
            ],
            bot.to_string().as_bytes(),
        )
        .await
        .into_status_body();
        assert_eq!(status, 202);
        let headless = CHROME.replace("Chrome/", "HeadlessChrome/");
        let (status, _, _) = http(
            app.addr,
            "POST",
            "/v1/collect",
            &[("Content-Type", "text/plain"), ("User-Agent", &headless)],
            bot.to_string().as_bytes(),
        )
        .await;
        assert_eq!(status, 202);
        let batch = serde_json::json!([
            pageview("unknown.example.org", "/"),
            // A URL of another host is not the site's page.
            {"site": "www.example.com", "type": "pageview", "url": "https://evil.test/"},
            {"site": "www.example.com", "type": "pageview", "url": "https://www.example.com/a", "event_id": "e-1"},
            {"site": "www.example.com", "type": "pageview", "url": "https://www.example.com/a", "event_id": "e-1"},
        ]);
        let (status, body) = beacon(&app, &batch.to_string(), &[]).await;
        assert_eq!(status, 202, "{body}");
        // The browser learns how many events were received, not what
        // became of each: that would tell which sites exist.
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer, serde_json::json!({"received": 4}));
        // A duplicate in a later request as well.
        let again = serde_json::json!({"site": "www.example.com", "type": "pageview", "url": "https://www.example.com/a", "event_id": "e-1"});
        let (status, _) = beacon(&app, &again.to_string(), &[]).await;
        assert_eq!(status, 202);

        // Usage outside a monitoring grant: dropped for consent.
        fixtures::tenant(&app, "acme").await;
        let usage = collector(&app)
            .collect_usage_events(CollectUsageEventsRequest {
                events: vec![UsageEvent {
                    tenant: "tenants/acme".into(),
                    user: "tenants/acme/users/01a2292e-3340-7397-9606-2244d640ebd9".into(),
                    action: "workflow_run".into(),
                    ..Default::default()
                }],
            })
            .await
            .expect("usage")
            .into_inner();
        assert_eq!(usage.accepted, 0);
        assert_eq!(
            usage
                .dropped
                .iter()
                .map(|d| (d.reason, d.count))
                .collect::<Vec<_>>(),
            vec![(DropReason::Consent as i32, 1)]
        );

        let counted = drops(&app).await;
        for (reason, n) in [
            (DropReason::Bot, 2),
            (DropReason::Consent, 1),
            (DropReason::Invalid, 1),
            (DropReason::UnknownSite, 1),
            (DropReason::Duplicate, 2),
        ] {
            assert!(
                counted.contains(&(reason as i32, n)),
                "{reason:?}: {counted:?}"
            );
        }
        // The counters hold a site, a day, a reason and a number: nothing else.
        let columns = rows(&app, "SELECT * FROM analytics_drops").await;
        assert!(columns.iter().all(|r| r.len() == 4));
        assert_eq!(app.count("analytics_events").await, 1);
        let by_site = reports(&app)
            .get_drop_counts(GetDropCountsRequest {
                site: s.name.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            by_site
                .dropped
                .iter()
                .all(|d| d.reason != DropReason::UnknownSite as i32)
        );
    }
);

/// What a bad body is, its extra headers, the body and the status expected.
type BadBody<'a> = (&'a str, Vec<(&'a str, &'a str)>, String, u16);

/// A small extension so a status can be compared at once.
trait StatusBody {
    fn into_status_body(self) -> (u16, String);
}

impl StatusBody for (u16, Vec<(String, String)>, String) {
    fn into_status_body(self) -> (u16, String) {
        (self.0, self.2)
    }
}

storage_test!(
    consent_states_decide_the_visitor_hash,
    |app: TestApp| async move {
        site(&app, "www.example.com").await;
        // A published policy version: every consent records the one in force.
        PolicyServiceClient::with_interceptor(
            app.channel.clone(),
            Bearer::new(Some(&app.root_token)),
        )
        .publish_policy_version(PublishPolicyVersionRequest {
            policy_version: Some(PolicyVersion {
                version: "v2026_11".into(),
                effective_time: Some(to_timestamp(app.clock.now_micros() - 1_000_000)),
                text_sha256: "a".repeat(64),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("publish");
        let event = |path: &str, consent: Option<&str>| {
            let mut e = pageview("www.example.com", path);
            if let Some(c) = consent {
                e["consent"] = c.into();
            }
            e
        };
        let (s, b) = beacon(
            &app,
            &serde_json::json!([event("/unset", None), event("/granted", Some("granted"))])
                .to_string(),
            &[],
        )
        .await;
        assert_eq!(s, 202, "{b}");
        beacon(&app, &event("/refused", Some("refused")).to_string(), &[]).await;
        beacon(&app, &event("/gpc", None).to_string(), &[("Sec-GPC", "1")]).await;
        beacon(
            &app,
            &event("/dnt", Some("granted")).to_string(),
            &[("DNT", "1")],
        )
        .await;
        let mut gpc_field = event("/gpc-field", None);
        gpc_field["gpc"] = true.into();
        beacon(&app, &gpc_field.to_string(), &[]).await;
        let stored = rows(
            &app,
            "SELECT path, visitor FROM analytics_events ORDER BY path",
        )
        .await;
        let hashed: Vec<(String, bool)> = stored
            .iter()
            .map(|r| {
                (
                    r.get::<String, _>("path"),
                    r.get::<Option<String>, _>("visitor").is_some(),
                )
            })
            .collect();
        assert_eq!(
            hashed,
            vec![
                ("/dnt".into(), false),
                ("/gpc".into(), false),
                ("/gpc-field".into(), false),
                ("/granted".into(), true),
                ("/refused".into(), false),
                ("/unset".into(), true),
            ]
        );

        // The decision itself, recorded from the browser and kept under the kernel.
        let (status, _, body) = http(
        app.addr,
        "POST",
        "/v1/consent",
        &[("Content-Type", "text/plain"), ("User-Agent", CHROME), ("Origin", ORIGIN)],
        br#"{"site": "www.example.com", "consent_id": "0b0c3f55-1f4e-4b8e-9a57-4f1d2b9f5e11", "decision": "granted", "categories": ["analytics"]}"#,
    )
    .await;
        assert_eq!(status, 201, "{body}");
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["policy_version"], "policyVersions/v2026_11");
        let name = answer["consent"].as_str().unwrap().to_owned();
        // A retry of the same decision is the same record.
        let (_, _, again) = http(
        app.addr,
        "POST",
        "/v1/consent",
        &[("Content-Type", "text/plain"), ("User-Agent", CHROME)],
        br#"{"site": "www.example.com", "consent_id": "0b0c3f55-1f4e-4b8e-9a57-4f1d2b9f5e11", "decision": "granted", "categories": ["analytics"]}"#,
    )
    .await;
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&again).unwrap()["consent"],
            name.as_str()
        );
        http(
        app.addr,
        "POST",
        "/v1/consent",
        &[("Content-Type", "text/plain"), ("User-Agent", CHROME)],
        br#"{"site": "www.example.com", "consent_id": "7d0c3f55-1f4e-4b8e-9a57-4f1d2b9f5e11", "decision": "refused"}"#,
    )
    .await;
        let consent = ConsentServiceClient::with_interceptor(
            app.channel.clone(),
            Bearer::new(Some(&app.root_token)).with_purpose(Purpose::DsrFulfilment),
        )
        .get_consent(GetConsentRequest { name: name.clone() })
        .await
        .expect("get consent")
        .into_inner();
        assert_eq!(consent.decision, ConsentState::Granted as i32);
        assert_eq!(consent.categories, vec!["analytics".to_owned()]);
        assert_eq!(consent.ip_prefix, "127.0.0.0");
        assert_eq!(consent.browser, "Chrome 156 / Linux");
        // Sealed: the network and browser are not in the row in clear.
        let raw = rows(&app, "SELECT data FROM analytics_consents").await;
        assert!(
            raw.iter()
                .all(|r| !r.get::<String, _>("data").contains("127.0.0.0"))
        );
        let counts = reports(&app)
            .count_consents(CountConsentsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .counts;
        let counts: Vec<(String, i32, i64)> = counts
            .into_iter()
            .map(|c| (c.policy_version, c.decision, c.count))
            .collect();
        assert_eq!(
            counts,
            vec![
                (
                    "policyVersions/v2026_11".into(),
                    ConsentState::Granted as i32,
                    1
                ),
                (
                    "policyVersions/v2026_11".into(),
                    ConsentState::Refused as i32,
                    1
                ),
            ]
        );
        // The visitor can ask about their record by its name (their cookie).
        let found = app
            .subjects_of("analytics")
            .locate_subject_data(LocateSubjectDataRequest {
                subject: Some(SubjectIdentifier {
                    kind: Some(subject_identifier::Kind::Id(name.clone())),
                }),
                ..Default::default()
            })
            .await
            .expect("locate")
            .into_inner();
        assert_eq!(found.records.len(), 1);
        app.subjects_of("analytics")
            .erase_subject_data(EraseSubjectDataRequest {
                subject: Some(SubjectIdentifier {
                    kind: Some(subject_identifier::Kind::Id(name.clone())),
                }),
                ..Default::default()
            })
            .await
            .expect("erase");
        assert_eq!(app.count("analytics_consents").await, 1);
    }
);

async fn user(app: &TestApp, tenant: &str, email: &str) -> String {
    app.users()
        .create_user(CreateUserRequest {
            parent: format!("tenants/{tenant}"),
            user: Some(fixtures::user(email)),
            request_id: String::new(),
        })
        .await
        .expect("user")
        .into_inner()
        .name
}

fn usage_event(tenant: &str, user: &str, action: &str) -> UsageEvent {
    UsageEvent {
        tenant: format!("tenants/{tenant}"),
        user: user.into(),
        action: action.into(),
        path: "/workflows/42?secret=1".into(),
        ..Default::default()
    }
}

storage_test!(
    usage_is_accepted_only_inside_an_active_grant,
    |app: TestApp| async move {
        fixtures::tenant(&app, "acme").await;
        let admin = user(&app, "acme", "admin@acme.example").await;
        let worker = user(&app, "acme", "worker@acme.example").await;
        let grants = || {
            MonitoringGrantServiceClient::with_interceptor(
                app.channel.clone(),
                Bearer::new(Some(&app.root_token)),
            )
        };
        let send = |action: &str| {
            let request = CollectUsageEventsRequest {
                events: vec![usage_event("acme", &worker, action)],
            };
            let mut client = collector(&app);
            async move {
                client
                    .collect_usage_events(request)
                    .await
                    .expect("usage")
                    .into_inner()
            }
        };
        let now = app.clock.now_micros();
        let grant = grants()
            .create_monitoring_grant(CreateMonitoringGrantRequest {
                parent: "tenants/acme".into(),
                monitoring_grant: Some(MonitoringGrant {
                    scopes: vec![custodian_analytics::USAGE_SCOPE.into()],
                    expire_time: Some(to_timestamp(now + 2 * 86_400_000_000)),
                    granted_by: admin.clone(),
                    reason: "defect 1234".into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .expect("grant")
            .into_inner();
        // Active.
        assert_eq!(send("workflow_run").await.accepted, 1);
        // Expired.
        app.clock.advance(3 * DAY);
        let expired = send("workflow_run").await;
        assert_eq!(
            (expired.accepted, expired.dropped[0].reason),
            (0, DropReason::Consent as i32)
        );
        // A new grant, then revoked.
        let now = app.clock.now_micros();
        let second = grants()
            .create_monitoring_grant(CreateMonitoringGrantRequest {
                parent: "tenants/acme".into(),
                monitoring_grant: Some(MonitoringGrant {
                    scopes: vec![custodian_analytics::USAGE_SCOPE.into()],
                    expire_time: Some(to_timestamp(now + 86_400_000_000)),
                    granted_by: admin.clone(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .expect("second grant")
            .into_inner();
        assert_eq!(send("report_export").await.accepted, 1);
        grants()
            .revoke_monitoring_grant(RevokeMonitoringGrantRequest { name: second.name })
            .await
            .expect("revoke");
        assert_eq!(send("report_export").await.accepted, 0);
        drop(grant);
        assert_eq!(app.count("analytics_usage").await, 2);
        // The user is stored only as a keyed index; the path without its query.
        let stored = rows(&app, "SELECT user_key, path FROM analytics_usage").await;
        for row in &stored {
            assert!(!row.get::<String, _>("user_key").contains("users/"));
            assert_eq!(row.get::<String, _>("path"), "/workflows/42");
        }

        // Raw usage is read only for defect investigation, audited per page.
        let list = |purpose: Purpose| {
            let mut client = UsageServiceClient::with_interceptor(
                app.channel.clone(),
                Bearer::new(Some(&app.root_token)).with_purpose(purpose),
            );
            let user = worker.clone();
            async move {
                client
                    .list_usage_events(ListUsageEventsRequest {
                        user,
                        ..Default::default()
                    })
                    .await
            }
        };
        let denied = list(Purpose::Support)
            .await
            .expect_err("support may not read usage");
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        let before = app.audit_count().await;
        let read = list(Purpose::DefectInvestigation)
            .await
            .expect("read")
            .into_inner();
        assert_eq!(read.events.len(), 2);
        assert_eq!(
            app.audit_count().await,
            before + 1,
            "one audit event for the page"
        );
        let events = app.audit_events().await;
        assert!(events.iter().any(|e| e.method.ends_with("ListUsageEvents")
            && e.purpose == "defect_investigation"
            && e.detail.contains("2 usage events")));

        // The user's usage through the subject contract.
        let subject = || SubjectIdentifier {
            kind: Some(subject_identifier::Kind::Id(worker.clone())),
        };
        let located = app
            .subjects_of("analytics")
            .locate_subject_data(LocateSubjectDataRequest {
                subject: Some(subject()),
                ..Default::default()
            })
            .await
            .expect("locate")
            .into_inner();
        assert_eq!(located.records.len(), 1);
        app.subjects_of("analytics")
            .erase_subject_data(EraseSubjectDataRequest {
                subject: Some(subject()),
                ..Default::default()
            })
            .await
            .expect("erase");
        assert_eq!(app.count("analytics_usage").await, 0);
    }
);

storage_test!(
    salts_rotate_daily_and_are_destroyed,
    |app: TestApp| async move {
        site(&app, "www.example.com").await;
        let hash_of = |path: &'static str| {
            let app = &app;
            async move {
                beacon(app, &pageview("www.example.com", path).to_string(), &[]).await;
                rows(
                    app,
                    &format!("SELECT visitor, day FROM analytics_events WHERE path = '{path}'"),
                )
                .await
                .first()
                .map(|r| {
                    (
                        r.get::<Option<String>, _>("visitor").unwrap(),
                        r.get::<i32, _>("day"),
                    )
                })
                .expect("stored")
            }
        };
        let (first, day1) = hash_of("/one").await;
        let (same, _) = hash_of("/two").await;
        assert_eq!(first, same, "one visitor within a day");
        app.clock.advance(DAY);
        let (next, day2) = hash_of("/three").await;
        assert_eq!(day2, day1 + 1);
        assert_ne!(first, next, "nobody is followed across days");
        let salt_days = || async {
            rows(&app, "SELECT day FROM analytics_salts ORDER BY day")
                .await
                .iter()
                .map(|r| r.get::<i32, _>("day"))
                .collect::<Vec<_>>()
        };
        assert!(salt_days().await.contains(&day1));
        // Once the next day has ended, the first day's salt is gone.
        app.clock.advance(DAY);
        hash_of("/four").await;
        assert!(
            !salt_days().await.contains(&day1),
            "{:?}",
            salt_days().await
        );
        assert!(salt_days().await.iter().all(|d| *d > day1));
    }
);

/// Sends page views of `visitors` distinct visitors (distinct addresses)
/// over gRPC, each visitor's events as the callback gives them.
async fn visits(app: &TestApp, domain: &str, visitors: &[(&str, &str, &[&str])]) {
    let mut events = Vec::new();
    for (ip, agent, paths) in visitors {
        for path in *paths {
            let mut e = grpc_event(domain, path, ip);
            e.user_agent = (*agent).into();
            events.push(e);
        }
    }
    let answer = collector(app)
        .collect_events(CollectEventsRequest { events })
        .await
        .expect("collect")
        .into_inner();
    assert!(answer.dropped.is_empty(), "{answer:?}");
}

async fn report(
    app: &TestApp,
    site: &str,
    dimension: Dimension,
    days: i64,
) -> custodian_proto::analytics::v1::Report {
    let now = app.clock.now_micros();
    reports(app)
        .get_report(GetReportRequest {
            site: site.into(),
            start_time: Some(to_timestamp(now - days * 86_400_000_000)),
            end_time: Some(to_timestamp(now)),
            dimension: dimension as i32,
        })
        .await
        .expect("report")
        .into_inner()
}

storage_test!(
    reports_suppress_small_cells_and_resist_subtraction,
    |app: TestApp| async move {
        let s = site(&app, "www.example.com").await;
        // Day 1: 4 visitors (k - 1): the day is kept out entirely.
        let four: Vec<(String, &str, &[&str])> = (0..4)
            .map(|i| (format!("203.0.113.{i}"), CHROME, &["/"][..]))
            .collect();
        let four: Vec<(&str, &str, &[&str])> =
            four.iter().map(|(a, b, c)| (a.as_str(), *b, *c)).collect();
        visits(&app, "www.example.com", &four).await;
        app.clock.advance(DAY);
        // Day 2: 7 visitors: 5 on Chrome reading /, /pricing; 2 on Firefox,
        // one of them on /secret.
        let mut day2: Vec<(String, &str, &[&str])> = (0..5)
            .map(|i| (format!("198.51.100.{i}"), CHROME, &["/", "/pricing"][..]))
            .collect();
        day2.push(("198.51.100.50".into(), FIREFOX, &["/"][..]));
        day2.push(("198.51.100.51".into(), FIREFOX, &["/secret"][..]));
        let day2: Vec<(&str, &str, &[&str])> =
            day2.iter().map(|(a, b, c)| (a.as_str(), *b, *c)).collect();
        visits(&app, "www.example.com", &day2).await;
        // Nothing of today is reported while it lasts.
        let live = report(&app, &s.name, Dimension::Unspecified, 3).await;
        assert_eq!(live.total.unwrap().pageviews, 0);
        // Both days end (and the hour late events may take).
        app.clock.advance(DAY + Duration::from_secs(2 * 3600));
        let total = report(&app, &s.name, Dimension::Unspecified, 3).await;
        assert_eq!(total.k, 5);
        // Every day of the range but the one of 7 visitors: the day of 4
        // is told as the empty days are.
        let span = (total.end_time.unwrap().seconds - total.start_time.unwrap().seconds) / 86_400;
        assert_eq!(i64::from(total.suppressed_days), span - 1);
        let t = total.total.unwrap();
        assert_eq!((t.pageviews, t.visitors, t.visits), (12, 7, 7));
        assert!((t.bounce_rate - 2.0 / 7.0).abs() < 1e-9);

        let by_browser = report(&app, &s.name, Dimension::Browser, 3).await;
        // Firefox (2 visitors) is merged; "(other)" itself must reach k, so
        // Chrome joins it: no browser row, and nothing to subtract.
        assert!(by_browser.rows.is_empty(), "{:?}", by_browser.rows);
        assert_eq!(by_browser.other.as_ref().unwrap().visitors, 7);

        let by_page = report(&app, &s.name, Dimension::Page, 3).await;
        let keys: Vec<&str> = by_page.rows.iter().map(|r| r.key.as_str()).collect();
        // /secret (one visitor) is merged; alone it would be isolated by
        // subtraction, so /pricing (the next smallest) joins it.
        assert_eq!(keys, vec!["/"]);
        assert!(by_page.rows.iter().all(|r| r.visitors >= 5));
        // /secret (one visitor) cannot be recovered: the total minus the rows
        // is "(other)", which counts k or more visitors.
        let shown: i64 = by_page.rows.iter().map(|r| r.pageviews).sum();
        let other = by_page.other.as_ref().expect("the merged cells");
        assert_eq!(shown + other.pageviews, t.pageviews);
        assert!(other.visitors >= 5, "{other:?}");
        // Another range over the same days adds nothing new either.
        let one_day = report(&app, &s.name, Dimension::Page, 1).await;
        assert!(
            one_day
                .rows
                .iter()
                .chain(one_day.other.iter())
                .all(|r| r.visitors == 0 || r.visitors >= 5)
        );
        // The aggregates outlive the raw events.
        app.clock.advance(40 * DAY);
        app.retention()
            .sweep_expired(custodian_proto::retention::v1::SweepExpiredRequest::default())
            .await
            .expect("sweep");
        assert_eq!(app.count("analytics_events").await, 0);
        let later = reports(&app)
            .get_report(GetReportRequest {
                site: s.name.clone(),
                start_time: Some(to_timestamp(app.clock.now_micros() - 45 * 86_400_000_000)),
                end_time: Some(to_timestamp(app.clock.now_micros())),
                dimension: Dimension::Day as i32,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(later.total.unwrap().pageviews, 12);
        assert_eq!(later.rows.len(), 1);
    }
);

storage_test!(
    a_day_of_exactly_k_visitors_is_kept,
    |app: TestApp| async move {
        let s = site(&app, "www.example.com").await;
        let five: Vec<String> = (0..5).map(|i| format!("203.0.113.{i}")).collect();
        let five: Vec<(&str, &str, &[&str])> = five
            .iter()
            .map(|ip| (ip.as_str(), CHROME, &["/"][..]))
            .collect();
        visits(&app, "www.example.com", &five).await;
        app.clock.advance(DAY + Duration::from_secs(2 * 3600));
        let r = report(&app, &s.name, Dimension::Page, 2).await;
        let span = (r.end_time.unwrap().seconds - r.start_time.unwrap().seconds) / 86_400;
        assert_eq!(i64::from(r.suppressed_days), span - 1);
        assert_eq!(r.rows.len(), 1);
        assert_eq!(r.rows[0].visitors, 5);
    }
);

async fn forwarded_test(backend: Backend) {
    let Some(app) = spawn_with(backend, |c| c.trusted_proxies = vec!["127.0.0.1/32".into()]).await
    else {
        return;
    };
    site(&app, "www.example.com").await;
    let (status, _) = beacon(
        &app,
        &pageview("www.example.com", "/via-proxy").to_string(),
        &[("X-Forwarded-For", "192.0.2.1, 203.0.113.77")],
    )
    .await;
    assert_eq!(status, 202);
    let network =
        rows(&app, "SELECT network FROM analytics_events").await[0].get::<String, _>("network");
    assert_eq!(
        network, "203.0.0.0",
        "the proxy's word for the client, truncated"
    );
    drop(app);

    // Without trusted proxies, anyone's X-Forwarded-For is ignored.
    let Some(app) = spawn_with(backend, |_| {}).await else {
        return;
    };
    site(&app, "www.example.com").await;
    beacon(
        &app,
        &pageview("www.example.com", "/spoofed").to_string(),
        &[("X-Forwarded-For", "203.0.113.77")],
    )
    .await;
    let network =
        rows(&app, "SELECT network FROM analytics_events").await[0].get::<String, _>("network");
    assert_eq!(network, "127.0.0.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_from_a_trusted_proxy_only_sqlite() {
    forwarded_test(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_from_a_trusted_proxy_only_postgres() {
    forwarded_test(Backend::Postgres).await;
}

storage_test!(
    bad_bodies_are_refused_and_nothing_is_stored,
    |app: TestApp| async move {
        site(&app, "www.example.com").await;
        let good = pageview("www.example.com", "/").to_string();
        let too_many =
            serde_json::Value::Array(vec![pageview("www.example.com", "/"); 101]).to_string();
        let huge = format!("[{}]", vec![good.as_str(); 2000].join(","));
        let cases: Vec<BadBody> = vec![
        ("not JSON", vec![], "{nope".into(), 400),
        ("a number", vec![], "5".into(), 400),
        ("empty array", vec![], "[]".into(), 400),
        ("missing type and url", vec![], r#"{"site":"www.example.com"}"#.into(), 400),
        ("unknown type", vec![], r#"{"site":"www.example.com","type":"click","url":"https://www.example.com/"}"#.into(), 400),
        ("site not a string", vec![], r#"{"site":5,"type":"pageview","url":"https://www.example.com/"}"#.into(), 400),
        ("negative engagement", vec![], r#"{"site":"www.example.com","type":"engagement","url":"https://www.example.com/","engaged_ms":-1}"#.into(), 400),
        ("bad consent", vec![], r#"{"site":"www.example.com","type":"pageview","url":"https://www.example.com/","consent":"maybe"}"#.into(), 400),
        ("control character", vec![], "{\"site\":\"www.example.com\",\"type\":\"pageview\",\"url\":\"https://www.example.com/\\u0000\"}".into(), 400),
        ("too many events", vec![], too_many, 400),
        ("too large", vec![], huge, 413),
        ("wrong content type", vec![("Content-Type", "application/x-www-form-urlencoded")], good.clone(), 415),
        ("foreign origin", vec![("Origin", "https://evil.test")], good.clone(), 403),
    ];
        for (what, extra, body, expected) in cases {
            let mut headers = vec![("User-Agent", CHROME)];
            if !extra.iter().any(|(k, _)| *k == "Content-Type") {
                headers.push(("Content-Type", "application/json"));
            }
            headers.extend(extra);
            let (status, _, answer) =
                http(app.addr, "POST", "/v1/collect", &headers, body.as_bytes()).await;
            assert_eq!(status, expected, "{what}: {answer}");
            assert!(
                answer.is_empty() || serde_json::from_str::<serde_json::Value>(&answer).is_ok(),
                "{what}"
            );
            assert!(!answer.contains("nope"), "{what}: the input is not echoed");
        }
        // The schema's violations name the fields.
        let (_, _, answer) = http(
        app.addr,
        "POST",
        "/v1/collect",
        &[("Content-Type", "application/json"), ("User-Agent", CHROME)],
        br#"[{"site":"www.example.com","type":"pageview","url":"https://www.example.com/"},{"site":"www.example.com"}]"#,
    )
    .await;
        let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
        let fields: Vec<&str> = answer["violations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["field"].as_str().unwrap())
            .collect();
        assert_eq!(fields, vec!["events[1].type", "events[1].url"]);
        // Over gRPC: the same schema, INVALID_ARGUMENT, the whole batch refused.
        let mut bad = grpc_event("www.example.com", "/", "");
        bad.r#type = Type::Unspecified as i32;
        let refused = collector(&app)
            .collect_events(CollectEventsRequest {
                events: vec![grpc_event("www.example.com", "/", "203.0.113.1"), bad],
            })
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        let fields: Vec<String> = violations(&refused).into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, vec!["events[1].type", "events[1].client_ip"]);
        // A consent without a decision.
        let (status, _, _) = http(
            app.addr,
            "POST",
            "/v1/consent",
            &[("Content-Type", "application/json")],
            br#"{"site":"www.example.com","consent_id":"0b0c3f55-1f4e-4b8e-9a57-4f1d2b9f5e11"}"#,
        )
        .await;
        assert_eq!(status, 400);
        assert_eq!(app.count("analytics_events").await, 0);
        assert_eq!(app.count("analytics_drops").await, 0);
        assert_eq!(app.count("analytics_consents").await, 0);
    }
);

storage_test!(
    the_stream_answers_batches_in_order,
    |app: TestApp| async move {
        site(&app, "www.example.com").await;
        let batches: Vec<StreamEventsRequest> = (1..=3)
            .map(|sequence| StreamEventsRequest {
                sequence,
                events: (0..sequence)
                    .map(|i| {
                        grpc_event(
                            "www.example.com",
                            &format!("/b{sequence}/{i}"),
                            "203.0.113.5",
                        )
                    })
                    .collect(),
            })
            .collect();
        let mut answers = collector(&app)
            .stream_events(tokio_stream::iter(batches))
            .await
            .expect("stream")
            .into_inner();
        let mut seen = Vec::new();
        while let Some(answer) = answers.message().await.expect("answer") {
            seen.push((answer.sequence, answer.result.unwrap().accepted));
        }
        assert_eq!(seen, vec![(1, 1), (2, 2), (3, 3)]);
        assert_eq!(app.count("analytics_events").await, 6);
        // A bad batch ends the stream with its status; the ones before it stay.
        let mut bad = grpc_event("www.example.com", "/", "203.0.113.5");
        bad.url.clear();
        let batches = vec![
            StreamEventsRequest {
                sequence: 1,
                events: vec![grpc_event("www.example.com", "/ok", "203.0.113.5")],
            },
            StreamEventsRequest {
                sequence: 2,
                events: vec![bad],
            },
        ];
        let mut answers = collector(&app)
            .stream_events(tokio_stream::iter(batches))
            .await
            .expect("stream")
            .into_inner();
        assert_eq!(answers.message().await.expect("first").unwrap().sequence, 1);
        let refused = answers.message().await.expect_err("second refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert_eq!(app.count("analytics_events").await, 7);
    }
);

storage_test!(
    no_raw_address_is_stored_and_sites_are_checked,
    |app: TestApp| async move {
        let s = site(&app, "www.example.com").await;
        let (status, _) = beacon(
            &app,
            &pageview("www.example.com", "/?page=2&email=ann%40example.com").to_string(),
            &[],
        )
        .await;
        assert_eq!(status, 202);
        collector(&app)
            .collect_events(CollectEventsRequest {
                events: vec![grpc_event(
                    "www.example.com",
                    "/x",
                    "2001:db8:abcd:12:1:2:3:4",
                )],
            })
            .await
            .expect("collect");
        let stored = rows(
            &app,
            "SELECT path, network, browser, os, device FROM analytics_events ORDER BY path",
        )
        .await;
        let seen: Vec<(String, String)> = stored
            .iter()
            .map(|r| (r.get::<String, _>("path"), r.get::<String, _>("network")))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("/?page=2".into(), "127.0.0.0".into()),
                ("/x".into(), "2001:db8:abcd::".into()),
            ]
        );
        assert_eq!(stored[0].get::<String, _>("browser"), "Chrome");
        assert_eq!(stored[0].get::<String, _>("os"), "Linux");
        assert_eq!(stored[0].get::<String, _>("device"), "desktop");
        // Sites: the whole address is never kept; a domain is one site.
        let refused = sites(&app)
            .create_site(CreateSiteRequest {
                site: Some(Site {
                    domain: "other.example.com".into(),
                    ipv4_bytes_kept: 4,
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .expect_err("4 bytes");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        let taken = sites(&app)
            .create_site(CreateSiteRequest {
                site: Some(Site {
                    domain: "WWW.example.com".into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .expect_err("taken");
        assert_eq!(taken.code(), tonic::Code::AlreadyExists);
        let listed = sites(&app)
            .list_sites(custodian_proto::analytics::v1::ListSitesRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.sites.len(), 1);
        assert_eq!(listed.sites[0].name, s.name);
    }
);

/// The writer held up (a lock on what it writes), a queue of 25 events,
/// five beacons of 10 events at once: at most two fit, the others are
/// refused at once with 429 and Retry-After, and once the writer moves the
/// ones that waited are stored, and only they.
async fn backpressure_test(backend: Backend) {
    let Some(app) = spawn_with(backend, |c| c.analytics_queue_events = 25).await else {
        return;
    };
    site(&app, "www.example.com").await;
    // The day's salt and partition exist before the writer is held.
    beacon(
        &app,
        &pageview("www.example.com", "/primer").to_string(),
        &[],
    )
    .await;
    let mut hold = app.raw.begin().await.expect("begin");
    let lock = match backend {
        Backend::Sqlite => "DELETE FROM analytics_drops WHERE day = -1",
        Backend::Postgres => "LOCK TABLE analytics_events IN ACCESS EXCLUSIVE MODE",
    };
    sqlx::query(lock).execute(&mut *hold).await.expect("lock");
    let ten = serde_json::Value::Array(
        (0..10)
            .map(|i| pageview("www.example.com", &format!("/held/{i}")))
            .collect(),
    )
    .to_string();
    let (answers_tx, mut answers) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..5 {
        let (addr, body, answers_tx) = (app.addr, ten.clone(), answers_tx.clone());
        tokio::spawn(async move {
            let answer = http(
                addr,
                "POST",
                "/v1/collect",
                &[("Content-Type", "text/plain"), ("User-Agent", CHROME)],
                body.as_bytes(),
            )
            .await;
            let _ = answers_tx.send(answer);
        });
    }
    let mut refused = 0;
    while refused < 3 {
        let (status, headers, _) = answers.recv().await.expect("an answer");
        assert_eq!(status, 429, "nothing is stored while the writer is held");
        assert!(headers.iter().any(|(k, v)| k == "retry-after" && v == "1"));
        refused += 1;
    }
    hold.rollback().await.expect("release");
    let mut accepted = 0;
    for _ in 0..2 {
        match answers.recv().await.expect("an answer") {
            (202, _, _) => accepted += 1,
            (429, _, _) => refused += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(refused + accepted, 5, "every beacon is answered");
    assert!(
        accepted >= 1,
        "the queued beacons are stored once the writer moves"
    );
    assert_eq!(app.count("analytics_events").await, 1 + 10 * accepted);
    // Over gRPC the same refusal is RESOURCE_EXHAUSTED: a batch larger than
    // the whole queue never fits.
    let events: Vec<Event> = (0..30)
        .map(|i| grpc_event("www.example.com", &format!("/big/{i}"), "203.0.113.9"))
        .collect();
    let status = collector(&app)
        .collect_events(CollectEventsRequest { events })
        .await
        .expect_err("over the queue");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(app.count("analytics_events").await, 1 + 10 * accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_behind_refuses_with_429_sqlite() {
    backpressure_test(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_behind_refuses_with_429_postgres() {
    backpressure_test(Backend::Postgres).await;
}

// --- what a site owner who can send events may learn --------------------------

/// The agents an attacker gives its fake visitors: each its own hash.
fn fake_agent(i: usize) -> String {
    CHROME.replace("Chrome/156.0.0.0", &format!("Chrome/{}.0.0.0", 140 + i))
}

fn engagement(domain: &str, path: &str, ip: &str, agent: &str, ms: i64) -> Event {
    Event {
        r#type: Type::Engagement as i32,
        engaged_ms: ms,
        user_agent: agent.into(),
        ..grpc_event(domain, path, ip)
    }
}

fn view_as(domain: &str, path: &str, ip: &str, agent: &str) -> Event {
    Event {
        user_agent: agent.into(),
        ..grpc_event(domain, path, ip)
    }
}

async fn collect_all(app: &TestApp, events: Vec<Event>) {
    let answer = collector(app)
        .collect_events(CollectEventsRequest { events })
        .await
        .expect("collect")
        .into_inner();
    assert!(answer.dropped.is_empty(), "{answer:?}");
}

/// One real visitor reads /secret for 47.123 s. On one site the attacker
/// adds six fakes that only load the page; on another its six fakes send
/// engagement of 10 s each, known to it. Before, the first report showed
/// the real visitor's exact time as a 7-visitor row's average, and the
/// second gave it away by subtraction.
const REAL_MS: i64 = 47_123;
const FAKE_MS: i64 = 10_000;

storage_test!(
    a_row_padded_with_fakes_does_not_give_away_a_visitors_time,
    |app: TestApp| async move {
        let quiet = site(&app, "quiet.example.com").await;
        let noisy = site(&app, "noisy.example.com").await;
        for (domain, fakes_engage) in [("quiet.example.com", false), ("noisy.example.com", true)] {
            let mut events = vec![
                view_as(domain, "/secret", "198.51.100.77", CHROME),
                engagement(domain, "/secret", "198.51.100.77", CHROME, REAL_MS),
            ];
            for i in 0..6 {
                let agent = fake_agent(i);
                events.push(view_as(domain, "/secret", "203.0.113.66", &agent));
                if fakes_engage {
                    events.push(engagement(
                        domain,
                        "/secret",
                        "203.0.113.66",
                        &agent,
                        FAKE_MS,
                    ));
                }
            }
            collect_all(&app, events).await;
        }
        app.clock.advance(DAY + Duration::from_secs(2 * 3600));

        // Fakes without engagement: the row shows (counts can be padded),
        // its time does not.
        let by_page = report(&app, &quiet.name, Dimension::Page, 2).await;
        let secret = by_page
            .rows
            .iter()
            .find(|r| r.key == "/secret")
            .expect("row");
        assert_eq!(secret.visitors, 7);
        for row in [secret, by_page.total.as_ref().unwrap()] {
            assert_ne!(row.average_time_on_page_seconds, REAL_MS as f64 / 1000.0);
            assert_ne!(row.average_visit_seconds, REAL_MS as f64 / 7000.0);
            assert!(row.time_averages_withheld, "{row:?}");
            assert_eq!(
                (row.average_time_on_page_seconds, row.average_visit_seconds),
                (0.0, 0.0)
            );
        }

        // Fakes with engagement the attacker knows: 7 engaged visitors, so
        // the averages show, but subtracting the fakes' own time no longer
        // gives the real visitor's.
        let by_page = report(&app, &noisy.name, Dimension::Page, 2).await;
        let secret = by_page
            .rows
            .iter()
            .find(|r| r.key == "/secret")
            .expect("row");
        for row in [secret, by_page.total.as_ref().unwrap()] {
            assert!(!row.time_averages_withheld, "{row:?}");
            let recovered = |average: f64| (average * 7_000.0).round() as i64 - 6 * FAKE_MS;
            assert_ne!(
                recovered(row.average_time_on_page_seconds),
                REAL_MS,
                "{row:?}"
            );
            assert_ne!(recovered(row.average_visit_seconds), REAL_MS, "{row:?}");
        }
        // Nor is the exact sum kept at rest.
        let stored = rows(
            &app,
            &format!(
                "SELECT engaged_ms, visit_ms, engaged_visitors FROM analytics_daily \
                 WHERE site_id = '{}' AND key = '/secret'",
                noisy.name.trim_start_matches("sites/")
            ),
        )
        .await;
        assert_eq!(stored.len(), 1);
        let exact = REAL_MS + 6 * FAKE_MS;
        assert_ne!(stored[0].get::<i64, _>("engaged_ms"), exact);
        assert_ne!(stored[0].get::<i64, _>("visit_ms"), exact);
        assert_eq!(stored[0].get::<i64, _>("engaged_visitors"), 7);
    }
);

storage_test!(
    a_day_with_a_few_visitors_is_told_as_a_day_with_none,
    |app: TestApp| async move {
        let few = site(&app, "few.example.com").await;
        let none = site(&app, "none.example.com").await;
        collect_all(
            &app,
            (0..3)
                .map(|i| grpc_event("few.example.com", "/", &format!("203.0.113.{i}")))
                .collect(),
        )
        .await;
        app.clock.advance(DAY + Duration::from_secs(2 * 3600));
        let a = report(&app, &few.name, Dimension::Day, 3).await;
        let b = report(&app, &none.name, Dimension::Day, 3).await;
        let span = (a.end_time.unwrap().seconds - a.start_time.unwrap().seconds) / 86_400;
        assert_eq!(
            (a.suppressed_days, a.rows.len(), a.total.unwrap().pageviews),
            (b.suppressed_days, b.rows.len(), b.total.unwrap().pageviews)
        );
        assert_eq!(i64::from(a.suppressed_days), span);
    }
);

storage_test!(
    the_beacon_does_not_tell_which_sites_exist,
    |app: TestApp| async move {
        site(&app, "www.example.com").await;
        let consent = |domain: &str, id: &str, decision: &str, origin: Option<&str>| {
            let body = serde_json::json!({"site": domain, "consent_id": id, "decision": decision})
                .to_string();
            let origin = origin.map(str::to_owned);
            let addr = app.addr;
            async move {
                let mut headers = vec![("Content-Type", "text/plain"), ("User-Agent", CHROME)];
                if let Some(origin) = &origin {
                    headers.push(("Origin", origin.as_str()));
                }
                let (status, _, body) =
                    http(addr, "POST", "/v1/consent", &headers, body.as_bytes()).await;
                (
                    status,
                    serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default(),
                )
            }
        };
        let shape = |answer: &serde_json::Value| {
            let name = answer["consent"].as_str().unwrap_or_default();
            let id = name.strip_prefix("consents/").unwrap_or_default();
            let uuid = uuid::Uuid::parse_str(id).ok();
            (
                answer
                    .as_object()
                    .map(|o| o.keys().cloned().collect::<Vec<_>>()),
                uuid.map(|u| u.get_version_num()),
                answer["policy_version"].clone(),
            )
        };
        let known = "www.example.com";
        let unknown = "nowhere.example.org";
        let ids = [
            "0b0c3f55-1f4e-4b8e-9a57-4f1d2b9f5e11",
            "1b0c3f55-1f4e-4b8e-9a57-4f1d2b9f5e11",
        ];
        let (s1, a1) = consent(known, ids[0], "granted", None).await;
        let (s2, a2) = consent(unknown, ids[1], "granted", None).await;
        assert_eq!((s1, s2), (201, 201), "{a1} {a2}");
        assert_eq!(shape(&a1), shape(&a2));
        assert_eq!(shape(&a1).1, Some(7));
        // A retry answers the same name; another request under the same key
        // is refused alike.
        for (domain, id, first) in [(known, ids[0], &a1), (unknown, ids[1], &a2)] {
            let (status, again) = consent(domain, id, "granted", None).await;
            assert_eq!(
                (status, &again["consent"]),
                (201, &first["consent"]),
                "{domain}"
            );
            let (status, _) = consent(domain, id, "refused", None).await;
            assert_eq!(status, 400, "{domain}");
        }
        // Origins: the site's own is allowed, another refused, for both.
        for domain in [known, unknown] {
            let own = format!("https://{domain}");
            let (status, _) = consent(
                domain,
                &uuid::Uuid::new_v4().to_string(),
                "refused",
                Some(&own),
            )
            .await;
            assert_eq!(status, 201, "{domain}");
            let (status, _) = consent(
                domain,
                &uuid::Uuid::new_v4().to_string(),
                "refused",
                Some("https://evil.test"),
            )
            .await;
            assert_eq!(status, 403, "{domain}");
        }
        // Only the known site's decisions are stored.
        assert_eq!(app.count("analytics_consents").await, 2);

        // Timing of the same order: the unknown site's answer also waits
        // for identity and the database.
        let mut median = Vec::new();
        for domain in [known, unknown] {
            let mut times = Vec::new();
            for _ in 0..15 {
                let started = std::time::Instant::now();
                let (status, _) =
                    consent(domain, &uuid::Uuid::new_v4().to_string(), "refused", None).await;
                times.push(started.elapsed());
                assert_eq!(status, 201);
            }
            times.sort();
            median.push(times[times.len() / 2]);
        }
        let ratio = median[0].as_secs_f64() / median[1].as_secs_f64();
        assert!((0.1..10.0).contains(&ratio), "medians {median:?}");

        // Events: the same answer, with an Origin or without.
        for domain in [known, unknown] {
            let body = pageview(domain, "/").to_string();
            let (status, answer) = beacon(&app, &body, &[]).await;
            assert_eq!(
                (status, answer.as_str()),
                (202, r#"{"received":1}"#),
                "{domain}"
            );
            let own = format!("https://{domain}");
            let (status, _) = beacon(&app, &body, &[("Origin", &own)]).await;
            assert_eq!(status, 202, "{domain}");
            let (status, _) = beacon(&app, &body, &[("Origin", "https://evil.test")]).await;
            assert_eq!(status, 403, "{domain}");
        }
        // Preflights alike for every origin.
        for origin in [
            "https://www.example.com",
            "https://nowhere.example.org",
            "https://evil.test",
        ] {
            let (status, headers, _) = http(
                app.addr,
                "OPTIONS",
                "/v1/collect",
                &[
                    ("Origin", origin),
                    ("Access-Control-Request-Method", "POST"),
                ],
                b"",
            )
            .await;
            assert_eq!(status, 204, "{origin}");
            assert!(headers.contains(&("access-control-allow-origin".into(), origin.into())));
        }
    }
);

storage_test!(
    late_events_count_until_their_day_is_rolled_up,
    |app: TestApp| async move {
        let s = site(&app, "www.example.com").await;
        let hour: i64 = 3_600_000_000;
        let day: i64 = 24 * hour;
        // Half past midnight (UTC).
        let now = app.clock.now_micros();
        let midnight = (now.div_euclid(day) + 1) * day;
        app.clock
            .advance(Duration::from_micros((midnight + hour / 2 - now) as u64));
        let at = |ip: String, time: i64| Event {
            time: Some(to_timestamp(time)),
            ..grpc_event("www.example.com", "/", &ip)
        };
        // Yesterday at ten to one: almost a day old, from a client that was
        // offline. Counted: yesterday is rolled up only at one o'clock.
        let late: Vec<Event> = (0..5)
            .map(|i| {
                at(
                    format!("203.0.113.{i}"),
                    midnight - day + hour - 600_000_000,
                )
            })
            .collect();
        let answer = collector(&app)
            .collect_events(CollectEventsRequest { events: late })
            .await
            .expect("collect")
            .into_inner();
        assert_eq!(
            (answer.accepted, answer.dropped.len()),
            (5, 0),
            "{answer:?}"
        );
        // The day before yesterday is rolled up already.
        let answer = collector(&app)
            .collect_events(CollectEventsRequest {
                events: vec![at("203.0.113.9".into(), midnight - day - 1)],
            })
            .await
            .expect("collect")
            .into_inner();
        assert_eq!(answer.accepted, 0);
        assert_eq!(answer.dropped[0].reason, DropReason::Invalid as i32);
        // Past one o'clock yesterday's aggregates are made; an event of it
        // that comes now is dropped, and they stay as they were.
        app.clock.advance(Duration::from_secs(3600));
        let answer = collector(&app)
            .collect_events(CollectEventsRequest {
                events: vec![at("203.0.113.10".into(), midnight - 1)],
            })
            .await
            .expect("collect")
            .into_inner();
        assert_eq!(answer.accepted, 0);
        assert_eq!(answer.dropped[0].reason, DropReason::Invalid as i32);
        let r = report(&app, &s.name, Dimension::Day, 2).await;
        assert_eq!(r.rows.len(), 1, "{r:?}");
        assert_eq!((r.rows[0].pageviews, r.rows[0].visitors), (5, 5));
    }
);

storage_test!(
    usage_events_need_a_user_identity_holds_in_the_tenant,
    |app: TestApp| async move {
        fixtures::tenant(&app, "acme").await;
        fixtures::tenant(&app, "beta").await;
        let admin = user(&app, "acme", "admin@acme.example").await;
        let worker = user(&app, "acme", "worker@acme.example").await;
        let stranger = user(&app, "beta", "stranger@beta.example").await;
        let stranger_id = stranger.rsplit('/').next().unwrap().to_owned();
        MonitoringGrantServiceClient::with_interceptor(
            app.channel.clone(),
            Bearer::new(Some(&app.root_token)),
        )
        .create_monitoring_grant(CreateMonitoringGrantRequest {
            parent: "tenants/acme".into(),
            monitoring_grant: Some(MonitoringGrant {
                scopes: vec![custodian_analytics::USAGE_SCOPE.into()],
                expire_time: Some(to_timestamp(app.clock.now_micros() + 86_400_000_000)),
                granted_by: admin.clone(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("grant");
        let send = |users: Vec<String>| {
            let request = CollectUsageEventsRequest {
                events: users
                    .iter()
                    .map(|u| usage_event("acme", u, "workflow_run"))
                    .collect(),
            };
            let mut client = collector(&app);
            async move { client.collect_usage_events(request).await }
        };
        // Beta's user under acme's name, and a user nobody created:
        // dropped and counted; acme's own user is stored.
        let answer = send(vec![
            worker.clone(),
            format!("tenants/acme/users/{stranger_id}"),
            format!("tenants/acme/users/{}", uuid::Uuid::now_v7()),
        ])
        .await
        .expect("usage")
        .into_inner();
        assert_eq!(answer.accepted, 1, "{answer:?}");
        assert_eq!(
            answer
                .dropped
                .iter()
                .map(|d| (d.reason, d.count))
                .collect::<Vec<_>>(),
            vec![(DropReason::UnknownUser as i32, 2)]
        );
        assert_eq!(app.count("analytics_usage").await, 1);
        // Not a user of the tenant by its very name: the whole request is
        // refused, as the schema's other breaches are, and nothing stored.
        for bad in [
            String::new(),
            stranger.clone(),
            format!("{worker}/x"),
            format!("{worker}/../../../beta/users/{stranger_id}"),
            "tenants/acme/users/".to_owned(),
        ] {
            let refused = send(vec![worker.clone(), bad.clone()])
                .await
                .expect_err("refused");
            assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{bad:?}");
            let fields: Vec<String> = violations(&refused).into_iter().map(|(f, _)| f).collect();
            assert_eq!(fields, vec!["events[1].user".to_owned()], "{bad:?}");
        }
        assert_eq!(app.count("analytics_usage").await, 1);
        let counted = drops(&app).await;
        assert!(
            counted.contains(&(DropReason::UnknownUser as i32, 2)),
            "{counted:?}"
        );
    }
);

/// One usage event of a new user of `tenant`, under a grant of its own.
async fn one_usage_event(app: &TestApp, tenant: &str) {
    fixtures::tenant(app, tenant).await;
    let admin = user(app, tenant, &format!("admin@{tenant}.example")).await;
    let worker = user(app, tenant, &format!("worker@{tenant}.example")).await;
    MonitoringGrantServiceClient::with_interceptor(
        app.channel.clone(),
        Bearer::new(Some(&app.root_token)),
    )
    .create_monitoring_grant(CreateMonitoringGrantRequest {
        parent: format!("tenants/{tenant}"),
        monitoring_grant: Some(MonitoringGrant {
            scopes: vec![custodian_analytics::USAGE_SCOPE.into()],
            expire_time: Some(to_timestamp(app.clock.now_micros() + 86_400_000_000)),
            granted_by: admin,
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .expect("grant");
    let answer = collector(app)
        .collect_usage_events(CollectUsageEventsRequest {
            events: vec![usage_event(tenant, &worker, "workflow_run")],
        })
        .await
        .expect("usage")
        .into_inner();
    assert_eq!(answer.accepted, 1, "{answer:?}");
}

async fn usage_tenants(app: &TestApp) -> Vec<String> {
    rows(
        app,
        "SELECT tenant_id FROM analytics_usage ORDER BY tenant_id",
    )
    .await
    .iter()
    .map(|row| row.get::<String, _>("tenant_id"))
    .collect()
}

storage_test!(
    usage_events_expire_by_their_tenants_rule_and_never_under_a_legal_hold,
    |app: TestApp| async move {
        for tenant in ["acme", "beta", "gamma"] {
            one_usage_event(&app, tenant).await;
        }
        // acme is under a legal hold; beta keeps usage 90 days; gamma
        // keeps the default, 30 days.
        app.retention()
            .create_legal_hold(CreateLegalHoldRequest {
                legal_hold: Some(LegalHold {
                    target: Some(legal_hold::Target::Tenant("tenants/acme".into())),
                    reason: "case 12".into(),
                    ..Default::default()
                }),
            })
            .await
            .expect("legal hold");
        app.tenants()
            .update_tenant(UpdateTenantRequest {
                tenant: Some(Tenant {
                    name: "tenants/beta".into(),
                    retention_rules: vec![RetentionRule {
                        data_category: DataCategory::UsageEvent as i32,
                        retain_for: Some(prost_types::Duration {
                            seconds: 90 * 86_400,
                            nanos: 0,
                        }),
                    }],
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["retention_rules".into()],
                }),
            })
            .await
            .expect("retention rule");
        let sweep = || async {
            app.retention()
                .sweep_expired(custodian_proto::retention::v1::SweepExpiredRequest::default())
                .await
                .expect("sweep")
        };

        app.clock.advance(40 * DAY);
        sweep().await;
        assert_eq!(usage_tenants(&app).await, vec!["acme", "beta"]);
        app.clock.advance(60 * DAY);
        sweep().await;
        assert_eq!(
            usage_tenants(&app).await,
            vec!["acme"],
            "held, whatever its age"
        );
    }
);
