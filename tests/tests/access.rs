//! Authentication and authorisation on every method: no token, a malformed,
//! expired or foreign-signed token, a purpose the method does not serve, and
//! a token limited to another tenant. Each refusal has its status code, and
//! nothing is stored or changed. On SQLite and PostgreSQL.

use std::time::Duration;

use custodian_privacy::{Purpose, token::TokenIssuer};
use custodian_proto::{
    audit::v1::{AuditAction, AuditOutcome, ListAuditEventsRequest, VerifyAuditChainRequest},
    common::v1::{SubjectIdentifier, subject_identifier},
    identity::v1::*,
    retention::v1::{
        CreateLegalHoldRequest, DeleteLegalHoldRequest, LegalHold, ListLegalHoldsRequest,
        SweepExpiredRequest, legal_hold,
    },
    subject::v1::{
        EraseSubjectDataRequest, ExportSubjectDataRequest, FieldCorrection,
        LocateSubjectDataRequest, RectifySubjectDataRequest,
    },
};
use custodian_tests::{Bearer, TestApp, fixtures, storage_test};
use prost_types::FieldMask;
use tonic::{Code, Status};

/// Resources of tenant "acme", made with the root token.
struct Names {
    user: String,
    contact: String,
    signup: String,
    hold: String,
}

async fn seed(app: &TestApp) -> Names {
    fixtures::tenant(app, "acme").await;
    fixtures::tenant(app, "globex").await;
    let user = app
        .users()
        .create_user(CreateUserRequest {
            parent: "tenants/acme".into(),
            user: Some(fixtures::user("ann@example.com")),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .name;
    let contact = app
        .contacts()
        .create_contact(CreateContactRequest {
            parent: "tenants/acme".into(),
            contact: Some(fixtures::contact("ben@example.com")),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .name;
    let signup = app
        .signups()
        .create_evaluation_signup(CreateEvaluationSignupRequest {
            evaluation_signup: Some(fixtures::signup("cat@example.com")),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .name;
    let hold = app
        .retention()
        .create_legal_hold(CreateLegalHoldRequest {
            legal_hold: Some(LegalHold {
                target: Some(legal_hold::Target::Tenant("tenants/globex".into())),
                reason: "case 7".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .name;
    Names {
        user,
        contact,
        signup,
        hold,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum M {
    CreateTenant,
    GetTenant,
    ListTenants,
    UpdateTenant,
    DeleteTenant,
    CreateUser,
    GetUser,
    ListUsers,
    UpdateUser,
    DeleteUser,
    CreateContact,
    GetContact,
    ListContacts,
    UpdateContact,
    DeleteContact,
    CreateSignup,
    GetSignup,
    ListSignups,
    UpdateSignup,
    DeleteSignup,
    Locate,
    Export,
    Rectify,
    Erase,
    Sweep,
    CreateHold,
    ListHolds,
    DeleteHold,
    ListAudit,
    VerifyAudit,
}

const ALL: [M; 30] = [
    M::CreateTenant,
    M::GetTenant,
    M::ListTenants,
    M::UpdateTenant,
    M::DeleteTenant,
    M::CreateUser,
    M::GetUser,
    M::ListUsers,
    M::UpdateUser,
    M::DeleteUser,
    M::CreateContact,
    M::GetContact,
    M::ListContacts,
    M::UpdateContact,
    M::DeleteContact,
    M::CreateSignup,
    M::GetSignup,
    M::ListSignups,
    M::UpdateSignup,
    M::DeleteSignup,
    M::Locate,
    M::Export,
    M::Rectify,
    M::Erase,
    M::Sweep,
    M::CreateHold,
    M::ListHolds,
    M::DeleteHold,
    M::ListAudit,
    M::VerifyAudit,
];

fn mask(path: &str) -> Option<FieldMask> {
    Some(FieldMask {
        paths: vec![path.into()],
    })
}

fn ben() -> Option<SubjectIdentifier> {
    Some(SubjectIdentifier {
        kind: Some(subject_identifier::Kind::Email("ben@example.com".into())),
    })
}

/// Calls `m` on acme's resources as `b`; Ok(()) when it succeeded.
async fn call(app: &TestApp, b: Bearer, m: M, n: &Names) -> Result<(), Status> {
    let acme = || "tenants/acme".to_owned();
    match m {
        M::CreateTenant => app
            .tenants_as(b)
            .create_tenant(CreateTenantRequest {
                tenant: Some(Tenant {
                    display_name: "New".into(),
                    ..Default::default()
                }),
                tenant_id: "newco".into(),
                request_id: String::new(),
            })
            .await
            .map(drop),
        M::GetTenant => app
            .tenants_as(b)
            .get_tenant(GetTenantRequest { name: acme() })
            .await
            .map(drop),
        M::ListTenants => app
            .tenants_as(b)
            .list_tenants(ListTenantsRequest::default())
            .await
            .map(drop),
        M::UpdateTenant => app
            .tenants_as(b)
            .update_tenant(UpdateTenantRequest {
                tenant: Some(Tenant {
                    name: acme(),
                    display_name: "Hacked".into(),
                    ..Default::default()
                }),
                update_mask: mask("display_name"),
            })
            .await
            .map(drop),
        M::DeleteTenant => app
            .tenants_as(b)
            .delete_tenant(DeleteTenantRequest {
                name: acme(),
                force: true,
            })
            .await
            .map(drop),
        M::CreateUser => app
            .users_as(b)
            .create_user(CreateUserRequest {
                parent: acme(),
                user: Some(fixtures::user("eve@example.com")),
                request_id: String::new(),
            })
            .await
            .map(drop),
        M::GetUser => app
            .users_as(b)
            .get_user(GetUserRequest {
                name: n.user.clone(),
            })
            .await
            .map(drop),
        M::ListUsers => app
            .users_as(b)
            .list_users(ListUsersRequest {
                parent: acme(),
                ..Default::default()
            })
            .await
            .map(drop),
        M::UpdateUser => app
            .users_as(b)
            .update_user(UpdateUserRequest {
                user: Some(User {
                    name: n.user.clone(),
                    email: "eve@example.com".into(),
                    ..Default::default()
                }),
                update_mask: mask("email"),
            })
            .await
            .map(drop),
        M::DeleteUser => app
            .users_as(b)
            .delete_user(DeleteUserRequest {
                name: n.user.clone(),
            })
            .await
            .map(drop),
        M::CreateContact => app
            .contacts_as(b)
            .create_contact(CreateContactRequest {
                parent: acme(),
                contact: Some(fixtures::contact("eve@example.com")),
                request_id: String::new(),
            })
            .await
            .map(drop),
        M::GetContact => app
            .contacts_as(b)
            .get_contact(GetContactRequest {
                name: n.contact.clone(),
            })
            .await
            .map(drop),
        M::ListContacts => app
            .contacts_as(b)
            .list_contacts(ListContactsRequest {
                parent: acme(),
                ..Default::default()
            })
            .await
            .map(drop),
        M::UpdateContact => app
            .contacts_as(b)
            .update_contact(UpdateContactRequest {
                contact: Some(Contact {
                    name: n.contact.clone(),
                    notes: "changed".into(),
                    ..Default::default()
                }),
                update_mask: mask("notes"),
            })
            .await
            .map(drop),
        M::DeleteContact => app
            .contacts_as(b)
            .delete_contact(DeleteContactRequest {
                name: n.contact.clone(),
            })
            .await
            .map(drop),
        M::CreateSignup => app
            .signups_as(b)
            .create_evaluation_signup(CreateEvaluationSignupRequest {
                evaluation_signup: Some(fixtures::signup("eve@example.com")),
                request_id: String::new(),
            })
            .await
            .map(drop),
        M::GetSignup => app
            .signups_as(b)
            .get_evaluation_signup(GetEvaluationSignupRequest {
                name: n.signup.clone(),
            })
            .await
            .map(drop),
        M::ListSignups => app
            .signups_as(b)
            .list_evaluation_signups(ListEvaluationSignupsRequest::default())
            .await
            .map(drop),
        M::UpdateSignup => app
            .signups_as(b)
            .update_evaluation_signup(UpdateEvaluationSignupRequest {
                evaluation_signup: Some(EvaluationSignup {
                    name: n.signup.clone(),
                    company: "X".into(),
                    ..Default::default()
                }),
                update_mask: mask("company"),
            })
            .await
            .map(drop),
        M::DeleteSignup => app
            .signups_as(b)
            .delete_evaluation_signup(DeleteEvaluationSignupRequest {
                name: n.signup.clone(),
            })
            .await
            .map(drop),
        M::Locate => app
            .subjects_as(b)
            .locate_subject_data(LocateSubjectDataRequest {
                subject: ben(),
                ..Default::default()
            })
            .await
            .map(|r| {
                assert!(
                    r.into_inner().records.is_empty(),
                    "another tenant's subject located"
                )
            }),
        M::Export => {
            let mut stream = app
                .subjects_as(b)
                .export_subject_data(ExportSubjectDataRequest {
                    subject: ben(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            assert!(
                stream.message().await?.is_none(),
                "another tenant's records exported"
            );
            Ok(())
        }
        M::Rectify => app
            .subjects_as(b)
            .rectify_subject_data(RectifySubjectDataRequest {
                subject: ben(),
                corrections: vec![FieldCorrection {
                    resource: String::new(),
                    field_path: "notes".into(),
                    value: "changed".into(),
                }],
                ..Default::default()
            })
            .await
            .map(|r| {
                assert!(
                    r.into_inner().rectified.is_empty(),
                    "another tenant's records rectified"
                )
            }),
        M::Erase => app
            .subjects_as(b)
            .erase_subject_data(EraseSubjectDataRequest {
                subject: ben(),
                ..Default::default()
            })
            .await
            .map(|r| {
                assert!(
                    r.into_inner().erased.is_empty(),
                    "another tenant's records erased"
                )
            }),
        M::Sweep => app
            .retention_as(b)
            .sweep_expired(SweepExpiredRequest {})
            .await
            .map(drop),
        M::CreateHold => app
            .retention_as(b)
            .create_legal_hold(CreateLegalHoldRequest {
                legal_hold: Some(LegalHold {
                    target: Some(legal_hold::Target::Tenant(acme())),
                    reason: "case 8".into(),
                    ..Default::default()
                }),
            })
            .await
            .map(drop),
        M::ListHolds => app
            .retention_as(b)
            .list_legal_holds(ListLegalHoldsRequest::default())
            .await
            .map(drop),
        M::DeleteHold => app
            .retention_as(b)
            .delete_legal_hold(DeleteLegalHoldRequest {
                name: n.hold.clone(),
            })
            .await
            .map(drop),
        M::ListAudit => app
            .audit_as(b)
            .list_audit_events(ListAuditEventsRequest::default())
            .await
            .map(drop),
        M::VerifyAudit => app
            .audit_as(b)
            .verify_audit_chain(VerifyAuditChainRequest {})
            .await
            .map(drop),
    }
}

/// What a caller limited to tenant "globex" gets on acme's resources: they
/// do not exist for it; company-wide methods are refused outright.
fn other_tenant_code(m: M) -> Option<Code> {
    use M::*;
    match m {
        GetTenant | UpdateTenant | DeleteTenant | CreateUser | GetUser | ListUsers | UpdateUser
        | DeleteUser | CreateContact | GetContact | ListContacts | UpdateContact
        | DeleteContact => Some(Code::NotFound),
        CreateTenant | CreateSignup | GetSignup | ListSignups | UpdateSignup | DeleteSignup
        | Sweep | CreateHold | ListHolds | DeleteHold | ListAudit | VerifyAudit => {
            Some(Code::PermissionDenied)
        }
        // Subject rights and the tenant list succeed, over its own data only.
        ListTenants | Locate | Export | Rectify | Erase => None,
    }
}

/// A snapshot of everything the calls could have changed.
async fn state(app: &TestApp, n: &Names) -> Vec<String> {
    let mut out = Vec::new();
    for table in [
        "identity_tenants",
        "identity_users",
        "identity_contacts",
        "identity_evaluation_signups",
        "identity_legal_holds",
        "subject_keys",
    ] {
        out.push(format!("{table}={}", app.count(table).await));
    }
    out.push(format!(
        "{:?}",
        app.users()
            .get_user(GetUserRequest {
                name: n.user.clone()
            })
            .await
            .unwrap()
            .into_inner()
    ));
    out.push(format!(
        "{:?}",
        app.contacts()
            .get_contact(GetContactRequest {
                name: n.contact.clone()
            })
            .await
            .unwrap()
            .into_inner()
    ));
    out.push(format!(
        "{:?}",
        app.signups()
            .get_evaluation_signup(GetEvaluationSignupRequest {
                name: n.signup.clone()
            })
            .await
            .unwrap()
            .into_inner()
    ));
    out.push(format!(
        "{:?}",
        app.tenants()
            .get_tenant(GetTenantRequest {
                name: "tenants/acme".into()
            })
            .await
            .unwrap()
            .into_inner()
    ));
    out
}

storage_test!(
    every_method_refuses_bad_credentials_and_changes_nothing,
    |app: TestApp| async move {
        let n = seed(&app).await;
        let before = state(&app, &n).await;

        let stranger = custodian_tests::test_keys();
        let expired = TokenIssuer::from_pem(app.keys.token_signing_key.as_deref().unwrap())
            .unwrap()
            .issue_at(
                1_000_000_000,
                "test:late",
                &Purpose::ALL,
                None,
                Duration::from_secs(3600),
            )
            .unwrap();
        let foreign = custodian_tests::issue(&stranger, "test:forger", &Purpose::ALL, None);
        let unauthenticated: [(&str, Bearer); 4] = [
            ("no token", Bearer::new(None)),
            ("malformed", Bearer::new(Some("not-a-jwt"))),
            ("expired", Bearer::new(Some(&expired))),
            ("signed by another key", Bearer::new(Some(&foreign))),
        ];
        for m in ALL {
            for (what, bearer) in &unauthenticated {
                let err = call(&app, bearer.clone(), m, &n)
                    .await
                    .expect_err("refused");
                assert_eq!(
                    err.code(),
                    Code::Unauthenticated,
                    "{m:?} with {what}: {err:?}"
                );
                assert!(!err.message().contains("eyJ"), "the token is not echoed");
            }
            // A purpose the method does not serve.
            let wrong = if matches!(m, M::ListAudit | M::VerifyAudit) {
                Purpose::ProductAnalytics
            } else {
                Purpose::Audit
            };
            let err = call(&app, Bearer::new(Some(&app.token(&[wrong], None))), m, &n)
                .await
                .expect_err("refused");
            assert_eq!(err.code(), Code::PermissionDenied, "{m:?} for {wrong}");
            // A purpose the token allows but the call names another.
            let err = call(
                &app,
                Bearer::new(Some(&app.token(&Purpose::ALL, None))).with_purpose(wrong),
                m,
                &n,
            )
            .await
            .expect_err("refused");
            assert_eq!(err.code(), Code::PermissionDenied, "{m:?} naming {wrong}");
        }
        assert_eq!(
            state(&app, &n).await,
            before,
            "refused calls changed nothing"
        );

        // Refusals for purpose were audited.
        let denied = app.audit_events().await;
        let denied: Vec<_> = denied
            .into_iter()
            .filter(|e| e.outcome == AuditOutcome::Denied as i32)
            .collect();
        assert_eq!(denied.len(), ALL.len() * 2);
        assert!(denied.iter().all(|e| e.caller == "test:caller"));
        app.stop().await.unwrap();
    }
);

storage_test!(
    a_tenant_limited_token_sees_only_its_tenant_on_every_method,
    |app: TestApp| async move {
        let n = seed(&app).await;
        let before = state(&app, &n).await;
        let globex = app.token(&Purpose::ALL, Some("globex"));
        for m in ALL {
            let result = call(&app, Bearer::new(Some(&globex)), m, &n).await;
            match other_tenant_code(m) {
                Some(code) => assert_eq!(result.expect_err("refused").code(), code, "{m:?}"),
                None => assert!(result.is_ok(), "{m:?}: {result:?}"),
            }
        }
        assert_eq!(
            state(&app, &n).await,
            before,
            "another tenant's data is untouched"
        );

        let tenants = app
            .tenants_as(Bearer::new(Some(&globex)))
            .list_tenants(ListTenantsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .tenants;
        assert_eq!(
            tenants.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["tenants/globex"]
        );

        // Its own tenant works as usual.
        let mut own = app.contacts_as(Bearer::new(Some(&globex)));
        let created = own
            .create_contact(CreateContactRequest {
                parent: "tenants/globex".into(),
                contact: Some(fixtures::contact("gil@example.com")),
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        own.get_contact(GetContactRequest { name: created.name })
            .await
            .unwrap();

        // Cross-tenant attempts are in the audit trail as NOT_FOUND.
        let events = app
            .audit()
            .list_audit_events(ListAuditEventsRequest {
                resource: n.contact.clone(),
                page_size: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .events;
        assert!(
            events
                .iter()
                .any(|e| e.outcome == AuditOutcome::NotFound as i32
                    && e.action == AuditAction::Read as i32)
        );
        app.stop().await.unwrap();
    }
);
