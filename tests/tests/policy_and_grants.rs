//! Identity's published privacy-policy versions and tenants' monitoring
//! grants, through the generated clients on SQLite and PostgreSQL: ordered
//! append-only publishing, the version in force at any time, grants that
//! are active, expire with the (manual) clock or are revoked, the check
//! other services make, tenant isolation and the audit trail.

use std::time::Duration;

use custodian_privacy::Purpose;
use custodian_proto::{
    audit::v1::AuditEvent,
    identity::v1::{
        CheckMonitoringGrantRequest, CreateMonitoringGrantRequest, CreateUserRequest,
        GetMonitoringGrantRequest, GetPolicyVersionInForceRequest, GetPolicyVersionRequest,
        ListMonitoringGrantsRequest, ListPolicyVersionsRequest, MonitoringGrant, PolicyVersion,
        PublishPolicyVersionRequest, RevokeMonitoringGrantRequest, monitoring_grant,
        monitoring_grant_service_client::MonitoringGrantServiceClient,
        policy_service_client::PolicyServiceClient,
    },
    privacy::v1::{AuditAction, AuditOutcome},
};
use custodian_runtime::time::{Clock as _, to_timestamp};
use custodian_tests::{Authed, Bearer, TestApp, fixtures, storage_test, violations};
use tonic::Code;

const DAY: i64 = 24 * 60 * 60 * 1_000_000;
const HASH_A: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const HASH_B: &str = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752";

/// The server's (manual) clock.
fn now(app: &TestApp) -> i64 {
    app.clock.now_micros()
}

fn policies(app: &TestApp) -> PolicyServiceClient<Authed> {
    PolicyServiceClient::with_interceptor(app.channel.clone(), Bearer::new(Some(&app.root_token)))
}

fn grants(app: &TestApp) -> MonitoringGrantServiceClient<Authed> {
    grants_as(app, Bearer::new(Some(&app.root_token)))
}

fn grants_as(app: &TestApp, bearer: Bearer) -> MonitoringGrantServiceClient<Authed> {
    MonitoringGrantServiceClient::with_interceptor(app.channel.clone(), bearer)
}

fn version(token: &str, effective: i64, hash: &str) -> PublishPolicyVersionRequest {
    PublishPolicyVersionRequest {
        policy_version: Some(PolicyVersion {
            version: token.into(),
            effective_time: Some(to_timestamp(effective)),
            text_sha256: hash.into(),
            url: format!("https://example.com/privacy/{token}"),
            ..Default::default()
        }),
        request_id: String::new(),
    }
}

async fn in_force(app: &TestApp, at: Option<i64>) -> Result<PolicyVersion, tonic::Status> {
    policies(app)
        .get_policy_version_in_force(GetPolicyVersionInForceRequest {
            time: at.map(to_timestamp),
        })
        .await
        .map(|r| r.into_inner())
}

async fn versions(app: &TestApp) -> i64 {
    app.count("identity_policy_versions").await
}

storage_test!(
    policy_versions_are_published_in_order_and_found_by_time,
    |app: TestApp| async move {
        let t0 = now(&app);
        let mut client = policies(&app);

        // Nothing published: nothing in force, now or ever.
        assert_eq!(
            in_force(&app, None).await.unwrap_err().code(),
            Code::NotFound
        );

        let first = client
            .publish_policy_version(version("2026-11", t0 + DAY, &HASH_A.to_uppercase()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(first.name, "policyVersions/2026-11");
        assert_eq!(first.text_sha256, HASH_A, "the hash is kept in lower case");
        assert_eq!(first.url, "https://example.com/privacy/2026-11");
        assert_eq!(first.effective_time, Some(to_timestamp(t0 + DAY)));
        assert_eq!(first.publish_time, Some(to_timestamp(t0)));
        let second = client
            .publish_policy_version(version("2027-01", t0 + 10 * DAY, HASH_B))
            .await
            .unwrap()
            .into_inner();

        // Before the first takes effect, between the two, at and after the second.
        for (at, expected) in [
            (t0, None),
            (t0 + DAY - 1, None),
            (t0 + DAY, Some(&first)),
            (t0 + 5 * DAY, Some(&first)),
            (t0 + 10 * DAY - 1, Some(&first)),
            (t0 + 10 * DAY, Some(&second)),
            (t0 + 400 * DAY, Some(&second)),
        ] {
            match (in_force(&app, Some(at)).await, expected) {
                (Ok(got), Some(want)) => assert_eq!(&got, want, "at t0 + {}us", at - t0),
                (Err(status), None) => assert_eq!(status.code(), Code::NotFound),
                (got, want) => panic!("at t0 + {}us: {got:?}, expected {want:?}", at - t0),
            }
        }
        // Without a time: the server's clock.
        assert_eq!(
            in_force(&app, None).await.unwrap_err().code(),
            Code::NotFound
        );
        app.clock.advance(Duration::from_secs(2 * 24 * 3600));
        assert_eq!(in_force(&app, None).await.unwrap(), first);

        // Get and list, in effective order, page by page.
        let got = client
            .get_policy_version(GetPolicyVersionRequest {
                name: "policyVersions/2027-01".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got, second);
        let missing = client
            .get_policy_version(GetPolicyVersionRequest {
                name: "policyVersions/1999-01".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(missing.code(), Code::NotFound);
        let bad_name = client
            .get_policy_version(GetPolicyVersionRequest {
                name: "policies/2027-01".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(bad_name.code(), Code::InvalidArgument);
        let page = client
            .list_policy_versions(ListPolicyVersionsRequest {
                page_size: 1,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.policy_versions, vec![first.clone()]);
        let rest = client
            .list_policy_versions(ListPolicyVersionsRequest {
                page_size: 1,
                page_token: page.next_page_token,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(rest.policy_versions, vec![second.clone()]);
        assert!(rest.next_page_token.is_empty());

        // Every purpose reads, a tenant-limited caller too.
        let analyst = app.token(&[Purpose::ProductAnalytics], Some("acme"));
        let read =
            PolicyServiceClient::with_interceptor(app.channel.clone(), Bearer::new(Some(&analyst)))
                .get_policy_version_in_force(GetPolicyVersionInForceRequest { time: None })
                .await
                .unwrap()
                .into_inner();
        assert_eq!(read, first);
        // Only administration publishes, and never for a single tenant.
        for token in [
            app.token(&[Purpose::ServiceDelivery, Purpose::Support], None),
            app.token(&[Purpose::Administration], Some("acme")),
        ] {
            let refused = PolicyServiceClient::with_interceptor(
                app.channel.clone(),
                Bearer::new(Some(&token)),
            )
            .publish_policy_version(version("2030-01", t0 + 900 * DAY, HASH_A))
            .await
            .unwrap_err();
            assert_eq!(refused.code(), Code::PermissionDenied);
        }
        assert_eq!(versions(&app).await, 2);

        // Publishing is audited; nothing else changed the trail's view of it.
        app.sealed().await;
        let events = app.audit_events().await;
        let published: Vec<&AuditEvent> = events
            .iter()
            .filter(|e| e.method.ends_with("/PublishPolicyVersion"))
            .collect();
        assert_eq!(
            published
                .iter()
                .filter(|e| e.outcome == AuditOutcome::Ok as i32)
                .count(),
            2
        );
        assert!(
            published
                .iter()
                .any(|e| e.resource == "policyVersions/2026-11"
                    && e.action == AuditAction::Create as i32
                    && e.outcome == AuditOutcome::Ok as i32)
        );
        assert_eq!(
            published
                .iter()
                .filter(|e| e.outcome == AuditOutcome::Denied as i32)
                .count(),
            1,
            "the refused purpose is audited (the tenant-limited caller is refused by scope)"
        );
        app.stop().await.unwrap();
    }
);

storage_test!(
    policy_versions_refuse_bad_input_and_store_nothing,
    |app: TestApp| async move {
        let t0 = now(&app);
        let mut client = policies(&app);
        client
            .publish_policy_version(version("2026-11", t0 + DAY, HASH_A))
            .await
            .unwrap();
        client
            .publish_policy_version(version("2027-01", t0 + 10 * DAY, HASH_A))
            .await
            .unwrap();
        let stored = versions(&app).await;
        assert_eq!(stored, 2);

        // Out of order: before or at the newest version's effective time.
        for effective in [t0 + 5 * DAY, t0 + 10 * DAY, t0 - DAY] {
            let status = client
                .publish_policy_version(version("2026-12", effective, HASH_B))
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
            assert!(!status.message().contains(HASH_B));
            assert_eq!(versions(&app).await, stored);
        }
        // After the newest, but in the past: the answer for past times
        // never changes once a version exists.
        app.clock.advance(Duration::from_secs(20 * 24 * 3600));
        let status = client
            .publish_policy_version(version("2027-02", t0 + 15 * DAY, HASH_B))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert_eq!(versions(&app).await, stored);

        // The same version again, even in order.
        let status = client
            .publish_policy_version(version("2026-11", t0 + 30 * DAY, HASH_B))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
        assert_eq!(versions(&app).await, stored);

        // Bad values, each refused naming its field.
        let later = t0 + 40 * DAY;
        let mut cases: Vec<(&str, PublishPolicyVersionRequest)> = Vec::new();
        for hash in [
            "",
            "abc",
            &HASH_A[..63],
            &format!("{HASH_A}0"),
            &"g".repeat(64),
            &format!("sha256:{}", &HASH_A[..57]),
        ] {
            cases.push((
                "policy_version.text_sha256",
                version("2027-03", later, hash),
            ));
        }
        let mut no_time = version("2027-03", later, HASH_A);
        no_time.policy_version.as_mut().unwrap().effective_time = None;
        cases.push(("policy_version.effective_time", no_time));
        let mut bad_time = version("2027-03", later, HASH_A);
        bad_time.policy_version.as_mut().unwrap().effective_time = Some(prost_types::Timestamp {
            seconds: 1,
            nanos: -5,
        });
        cases.push(("policy_version.effective_time", bad_time));
        for url in [
            "http://example.com/privacy",
            "https://",
            "https://user@example.com/p",
        ] {
            let mut bad_url = version("2027-03", later, HASH_A);
            bad_url.policy_version.as_mut().unwrap().url = url.into();
            cases.push(("policy_version.url", bad_url));
        }
        for token in ["", "-2027", "2027/03", "2027 03", &"x".repeat(33)] {
            cases.push(("policy_version.version", version(token, later, HASH_A)));
        }
        for (field, request) in cases {
            let status = client.publish_policy_version(request).await.unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
            assert!(
                violations(&status).iter().any(|(f, _)| f == field),
                "{field}: {:?}",
                violations(&status)
            );
            assert_eq!(versions(&app).await, stored, "{field}");
        }

        // An idempotent retry returns the first answer; the key reused for
        // another request is refused.
        let request_id = uuid::Uuid::new_v4().to_string();
        let mut retry = version("2027-03", later, HASH_A);
        retry.request_id = request_id.clone();
        let once = client
            .publish_policy_version(retry.clone())
            .await
            .unwrap()
            .into_inner();
        let twice = client
            .publish_policy_version(retry)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(once, twice);
        let mut other = version("2027-04", later + DAY, HASH_A);
        other.request_id = request_id;
        let status = client.publish_policy_version(other).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(versions(&app).await, stored + 1);
        app.stop().await.unwrap();
    }
);

/// A user of `tenant`, by resource name.
async fn user(app: &TestApp, tenant: &str, email: &str) -> String {
    app.users()
        .create_user(CreateUserRequest {
            parent: format!("tenants/{tenant}"),
            user: Some(fixtures::user(email)),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .name
}

fn grant(
    tenant: &str,
    granted_by: &str,
    scopes: &[&str],
    expire: i64,
) -> CreateMonitoringGrantRequest {
    CreateMonitoringGrantRequest {
        parent: format!("tenants/{tenant}"),
        monitoring_grant: Some(MonitoringGrant {
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            expire_time: Some(to_timestamp(expire)),
            granted_by: granted_by.into(),
            reason: "Support contract 42, annex B".into(),
            ..Default::default()
        }),
        request_id: String::new(),
    }
}

fn check(tenant: &str, scope: &str, at: Option<i64>) -> CheckMonitoringGrantRequest {
    CheckMonitoringGrantRequest {
        tenant: format!("tenants/{tenant}"),
        scope: scope.into(),
        time: at.map(to_timestamp),
    }
}

async fn grant_rows(app: &TestApp) -> i64 {
    app.count("identity_monitoring_grants").await
}

storage_test!(
    monitoring_grants_are_active_expire_and_are_revoked,
    |app: TestApp| async move {
        let t0 = now(&app);
        fixtures::tenant(&app, "acme").await;
        let admin = user(&app, "acme", "ada.admin@acme.example").await;
        policies(&app)
            .publish_policy_version(version("2026-01", t0 - DAY, HASH_A))
            .await
            .unwrap();
        let mut client = grants(&app);

        let long = client
            .create_monitoring_grant(grant("acme", &admin, &["usage_events"], t0 + 30 * DAY))
            .await
            .unwrap()
            .into_inner();
        assert!(long.name.starts_with("tenants/acme/monitoringGrants/"));
        let id = long.name.rsplit('/').next().unwrap();
        assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
        assert_eq!(long.state, monitoring_grant::State::Active as i32);
        assert_eq!(long.policy_version, "policyVersions/2026-01");
        assert_eq!(long.granted_by, admin);
        assert_eq!(long.create_time, Some(to_timestamp(t0)));
        assert_eq!(long.revoke_time, None);
        let short = client
            .create_monitoring_grant(grant(
                "acme",
                &admin,
                &["Page_Views", "usage_events"],
                t0 + 2 * DAY,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(short.scopes, ["page_views", "usage_events"], "normalised");

        // The check other services make before accepting usage.
        let active = client
            .check_monitoring_grant(check("acme", "usage_events", None))
            .await
            .unwrap()
            .into_inner();
        assert!(active.active);
        assert_eq!(active.grant, long.name, "the one lasting longest");
        assert_eq!(active.expire_time, Some(to_timestamp(t0 + 30 * DAY)));
        let page_views = client
            .check_monitoring_grant(check("acme", "page_views", None))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page_views.grant, short.name);
        for (scope, at) in [
            ("crash_reports", None),
            ("usage_events", Some(t0 - 1)),
            ("usage_events", Some(t0 + 30 * DAY)),
        ] {
            let none = client
                .check_monitoring_grant(check("acme", scope, at))
                .await
                .unwrap()
                .into_inner();
            assert!(!none.active, "{scope} at {at:?}");
            assert!(none.grant.is_empty() && none.expire_time.is_none());
        }

        // Expired: the short grant, once the clock passes its expiry.
        app.clock.advance(Duration::from_secs(3 * 24 * 3600));
        let expired = client
            .get_monitoring_grant(GetMonitoringGrantRequest {
                name: short.name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(expired.state, monitoring_grant::State::Expired as i32);
        assert!(
            !client
                .check_monitoring_grant(check("acme", "page_views", None))
                .await
                .unwrap()
                .into_inner()
                .active
        );
        assert!(
            client
                .check_monitoring_grant(check("acme", "page_views", Some(t0 + DAY)))
                .await
                .unwrap()
                .into_inner()
                .active,
            "history: it was active then"
        );
        let status = client
            .revoke_monitoring_grant(RevokeMonitoringGrantRequest {
                name: short.name.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition);

        // Revoked: the long grant; a second revocation changes nothing.
        let revoked_at = now(&app);
        let revoked = client
            .revoke_monitoring_grant(RevokeMonitoringGrantRequest {
                name: long.name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(revoked.state, monitoring_grant::State::Revoked as i32);
        assert_eq!(revoked.revoke_time, Some(to_timestamp(revoked_at)));
        assert_eq!(revoked.expire_time, long.expire_time);
        app.clock.advance(Duration::from_secs(60));
        let again = client
            .revoke_monitoring_grant(RevokeMonitoringGrantRequest {
                name: long.name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again, revoked);
        let now = client
            .check_monitoring_grant(check("acme", "usage_events", None))
            .await
            .unwrap()
            .into_inner();
        assert!(!now.active);
        let before = client
            .check_monitoring_grant(check("acme", "usage_events", Some(revoked_at - 1)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(before.grant, long.name);

        let listed = client
            .list_monitoring_grants(ListMonitoringGrantsRequest {
                parent: "tenants/acme".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let states: Vec<(String, i32)> = listed
            .monitoring_grants
            .iter()
            .map(|g| (g.name.clone(), g.state))
            .collect();
        assert_eq!(
            states,
            [
                (long.name.clone(), monitoring_grant::State::Revoked as i32),
                (short.name.clone(), monitoring_grant::State::Expired as i32),
            ]
        );

        // Who granted it is personal: sealed at rest, never in plain text.
        let raw: Vec<String> =
            sqlx::query_scalar::<_, String>("SELECT data FROM identity_monitoring_grants")
                .fetch_all(&app.raw)
                .await
                .unwrap();
        assert!(raw.iter().all(|d| !d.contains(&admin) && !d.is_empty()));

        // Created, read, checked and revoked: all in the audit trail.
        app.sealed().await;
        let events = app.audit_events().await;
        let on = |method: &str, resource: &str| {
            events
                .iter()
                .filter(|e| e.method.ends_with(method) && e.resource == resource)
                .map(|e| (e.action, e.outcome))
                .collect::<Vec<_>>()
        };
        let ok = AuditOutcome::Ok as i32;
        assert_eq!(
            on("/CreateMonitoringGrant", &long.name),
            [(AuditAction::Create as i32, ok)]
        );
        assert_eq!(
            on("/RevokeMonitoringGrant", &long.name),
            [(AuditAction::Update as i32, ok); 2]
        );
        assert_eq!(
            on("/GetMonitoringGrant", &short.name),
            [(AuditAction::Read as i32, ok)]
        );
        assert_eq!(on("/ListMonitoringGrants", &long.name).len(), 1);
        assert!(on("/CheckMonitoringGrant", &long.name).len() >= 2);
        assert!(!on("/CheckMonitoringGrant", "tenants/acme").is_empty());
        assert!(
            events
                .iter()
                .filter(|e| e.method.contains("MonitoringGrant"))
                .all(|e| !e.detail.contains(&admin)),
            "no personal value in the trail's details"
        );
        app.stop().await.unwrap();
    }
);

storage_test!(
    monitoring_grants_refuse_bad_input_and_other_tenants,
    |app: TestApp| async move {
        let t0 = now(&app);
        fixtures::tenant(&app, "acme").await;
        fixtures::tenant(&app, "globex").await;
        let ada = user(&app, "acme", "ada@acme.example").await;
        let gus = user(&app, "globex", "gus@globex.example").await;
        let mut client = grants(&app);
        let kept = client
            .create_monitoring_grant(grant("acme", &ada, &["usage_events"], t0 + 30 * DAY))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(kept.policy_version, "", "no policy version was in force");
        let stored = grant_rows(&app).await;

        // An unknown tenant.
        let status = client
            .create_monitoring_grant(grant("initech", &ada, &["usage_events"], t0 + DAY))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(grant_rows(&app).await, stored);

        // Bad grants, each refused naming its field, nothing stored.
        let unknown_user = format!("tenants/acme/users/{}", uuid::Uuid::now_v7());
        let mut cases = vec![
            (
                "monitoring_grant.granted_by",
                grant("acme", &gus, &["usage_events"], t0 + DAY),
            ),
            (
                "monitoring_grant.granted_by",
                grant("acme", &unknown_user, &["usage_events"], t0 + DAY),
            ),
            (
                "monitoring_grant.granted_by",
                grant("acme", "", &["usage_events"], t0 + DAY),
            ),
            (
                "monitoring_grant.scopes",
                grant("acme", &ada, &[], t0 + DAY),
            ),
            (
                "monitoring_grant.scopes[1]",
                grant("acme", &ada, &["usage_events", "usage_events"], t0 + DAY),
            ),
            (
                "monitoring_grant.scopes",
                grant(
                    "acme",
                    &ada,
                    &["a", "b", "c", "d", "e", "f", "g", "h", "i"],
                    t0 + DAY,
                ),
            ),
            (
                "monitoring_grant.expire_time",
                grant("acme", &ada, &["usage_events"], t0 - 1),
            ),
            (
                "monitoring_grant.expire_time",
                grant("acme", &ada, &["usage_events"], t0),
            ),
            (
                "monitoring_grant.expire_time",
                grant("acme", &ada, &["usage_events"], t0 + 367 * DAY),
            ),
        ];
        let mut no_expiry = grant("acme", &ada, &["usage_events"], t0 + DAY);
        no_expiry.monitoring_grant.as_mut().unwrap().expire_time = None;
        cases.push(("monitoring_grant.expire_time", no_expiry));
        let mut card = grant("acme", &ada, &["usage_events"], t0 + DAY);
        card.monitoring_grant.as_mut().unwrap().reason = "paid by 4111 1111 1111 1111".into();
        cases.push(("monitoring_grant.reason", card));
        let mut two_lines = grant("acme", &ada, &["usage_events"], t0 + DAY);
        two_lines.monitoring_grant.as_mut().unwrap().reason = "one\ntwo".into();
        cases.push(("monitoring_grant.reason", two_lines));
        for (field, request) in cases {
            let status = client.create_monitoring_grant(request).await.unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
            let found = violations(&status);
            assert!(found.iter().any(|(f, _)| f == field), "{field}: {found:?}");
            assert!(!status.message().contains("4111"));
            assert_eq!(grant_rows(&app).await, stored, "{field}");
        }
        let status = client
            .check_monitoring_grant(check("acme", "", None))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        let status = client
            .check_monitoring_grant(check("initech", "usage_events", None))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);

        // A caller limited to globex: acme's grants do not exist for it.
        let globex = Bearer::new(Some(
            &app.token(&[Purpose::ServiceDelivery], Some("globex")),
        ));
        let mut limited = grants_as(&app, globex);
        let refusals = [
            limited
                .get_monitoring_grant(GetMonitoringGrantRequest {
                    name: kept.name.clone(),
                })
                .await
                .unwrap_err(),
            limited
                .list_monitoring_grants(ListMonitoringGrantsRequest {
                    parent: "tenants/acme".into(),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
            limited
                .revoke_monitoring_grant(RevokeMonitoringGrantRequest {
                    name: kept.name.clone(),
                })
                .await
                .unwrap_err(),
            limited
                .check_monitoring_grant(check("acme", "usage_events", None))
                .await
                .unwrap_err(),
            limited
                .create_monitoring_grant(grant("acme", &ada, &["usage_events"], t0 + DAY))
                .await
                .unwrap_err(),
        ];
        for status in &refusals {
            assert_eq!(status.code(), Code::NotFound, "{status:?}");
        }
        let own = limited
            .create_monitoring_grant(grant("globex", &gus, &["usage_events"], t0 + DAY))
            .await
            .unwrap()
            .into_inner();
        let listed = limited
            .list_monitoring_grants(ListMonitoringGrantsRequest {
                parent: "tenants/globex".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.monitoring_grants, vec![own]);
        assert!(
            limited
                .check_monitoring_grant(check("globex", "usage_events", None))
                .await
                .unwrap()
                .into_inner()
                .active
        );
        let untouched = client
            .get_monitoring_grant(GetMonitoringGrantRequest {
                name: kept.name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(untouched.state, monitoring_grant::State::Active as i32);

        // Purposes: analytics may not read grants; the check serves the
        // service-delivery credential other services use.
        let analyst = Bearer::new(Some(&app.token(&[Purpose::ProductAnalytics], None)));
        let status = grants_as(&app, analyst)
            .check_monitoring_grant(check("acme", "usage_events", None))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);
        let support = Bearer::new(Some(&app.token(&[Purpose::Support], None)));
        let status = grants_as(&app, support)
            .create_monitoring_grant(grant("acme", &ada, &["usage_events"], t0 + DAY))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);

        // The refusals of the other tenant are in the trail, as not found.
        app.sealed().await;
        let events = app.audit_events().await;
        assert!(
            events
                .iter()
                .filter(|e| e.caller == "test:caller"
                    && e.method.ends_with("/GetMonitoringGrant")
                    && e.resource == kept.name)
                .any(|e| e.outcome == AuditOutcome::NotFound as i32)
        );
        app.stop().await.unwrap();
    }
);
