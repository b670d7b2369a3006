//! Service credentials: each names its service, and the gate lets it make
//! only the calls that service declares (`PEER_CALLS`), for the purposes it
//! declares. A compromised pod's credential reaches what that service
//! reaches; it cannot delete contacts, read users or erase anyone it never
//! would.

use std::time::Duration;

use custodian_privacy::{Purpose, token::TokenIssuer};
use custodian_proto::{
    audit::v1::{AuditAction, AuditOutcome},
    common::v1::{SubjectIdentifier, subject_identifier},
    identity::v1::{
        CreateContactRequest, CreateUserRequest, DeleteContactRequest, DeleteTenantRequest,
        GetTenantRequest, GetUserRequest, ListUsersRequest,
        contact_service_client::ContactServiceClient, tenant_service_client::TenantServiceClient,
        user_service_client::UserServiceClient,
    },
    subject::v1::{
        EraseSubjectDataRequest, LocateSubjectDataRequest,
        subject_data_service_client::SubjectDataServiceClient,
    },
};
use custodian_runtime::{Gate as _, Verdict, time::SystemClock};
use custodian_tests::{TestApp, TestDatabase, fixtures, storage_test, test_config, test_keys};
use tonic::{
    Code, Status,
    codegen::http,
    metadata::{Ascii, MetadataValue},
    service::interceptor::InterceptedService,
    transport::Channel,
};

const HOUR: Duration = Duration::from_secs(3600);

fn issuer(app: &TestApp) -> TokenIssuer {
    TokenIssuer::from_pem(app.keys.token_signing_key.as_deref().expect("signing key"))
        .expect("issuer")
}

/// The credential the operator issues for `service` (`custodian token
/// --service`).
fn credential(app: &TestApp, service: &str) -> String {
    custodian::service_credential(&issuer(app), service, HOUR).expect("a service credential")
}

/// Sends a service credential as a peer does: its purpose, and the service
/// a shared contract is for.
fn as_service(
    token: &str,
    purpose: Purpose,
    service: &str,
) -> impl tonic::service::Interceptor + Clone + use<> {
    let auth: MetadataValue<Ascii> = format!("Bearer {token}").parse().unwrap();
    let purpose: MetadataValue<Ascii> = purpose.as_str().parse().unwrap();
    let service: MetadataValue<Ascii> = service.parse().unwrap();
    move |mut r: tonic::Request<()>| -> Result<tonic::Request<()>, Status> {
        let metadata = r.metadata_mut();
        metadata.insert("authorization", auth.clone());
        metadata.insert("custodian-purpose", purpose.clone());
        metadata.insert("custodian-service", service.clone());
        Ok(r)
    }
}

fn client(
    app: &TestApp,
    token: &str,
    purpose: Purpose,
    service: &str,
) -> InterceptedService<Channel, impl tonic::service::Interceptor + use<>> {
    InterceptedService::new(app.channel.clone(), as_service(token, purpose, service))
}

fn ben() -> Option<SubjectIdentifier> {
    Some(SubjectIdentifier {
        kind: Some(subject_identifier::Kind::Email("ben@example.com".into())),
    })
}

fn refused_for_its_calls(status: &Status, subject: &str) {
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains(subject)
            && status
                .message()
                .contains("may make only the calls its service declares"),
        "{}",
        status.message()
    );
}

storage_test!(
    a_service_credential_cannot_call_what_its_service_does_not_call,
    |app: TestApp| async move {
        fixtures::tenant(&app, "acme").await;
        let contact = app
            .contacts()
            .create_contact(CreateContactRequest {
                parent: "tenants/acme".into(),
                contact: Some(fixtures::contact("ben@example.com")),
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        app.users()
            .create_user(CreateUserRequest {
                parent: "tenants/acme".into(),
                user: Some(fixtures::user("ann@example.com")),
                request_id: String::new(),
            })
            .await
            .unwrap();
        let tickets = credential(&app, "tickets");
        let analytics = credential(&app, "analytics");
        let dsr = credential(&app, "dsr");

        // Tickets deletes no contact: its credential holds service_delivery,
        // which DeleteContact serves, yet the call is not one tickets makes.
        let refused =
            ContactServiceClient::new(client(&app, &tickets, Purpose::ServiceDelivery, "identity"))
                .delete_contact(DeleteContactRequest {
                    name: contact.name.clone(),
                })
                .await
                .unwrap_err();
        refused_for_its_calls(&refused, "svc:tickets");
        // Analytics reads one user it is told about (to check usage), but
        // never lists a tenant's users.
        let refused = UserServiceClient::new(client(
            &app,
            &analytics,
            Purpose::ServiceDelivery,
            "identity",
        ))
        .list_users(ListUsersRequest {
            parent: "tenants/acme".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
        refused_for_its_calls(&refused, "svc:analytics");
        // Nor erases anyone, whatever purpose it names.
        for purpose in [Purpose::ServiceDelivery, Purpose::DsrFulfilment] {
            let refused =
                SubjectDataServiceClient::new(client(&app, &analytics, purpose, "identity"))
                    .erase_subject_data(EraseSubjectDataRequest {
                        subject: ben(),
                        request: "requests/forged".into(),
                        ..Default::default()
                    })
                    .await
                    .unwrap_err();
            assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        }
        // Dsr deletes no tenant, though it holds administration (for the
        // retention policy), which DeleteTenant serves.
        let refused =
            TenantServiceClient::new(client(&app, &dsr, Purpose::Administration, "identity"))
                .delete_tenant(DeleteTenantRequest {
                    name: "tenants/acme".into(),
                    force: true,
                })
                .await
                .unwrap_err();
        refused_for_its_calls(&refused, "svc:dsr");

        // Nothing changed: the contact, the user and the tenant are there.
        assert_eq!(app.count("identity_contacts").await, 1);
        assert_eq!(app.count("identity_users").await, 1);
        let found = app
            .subjects()
            .locate_subject_data(LocateSubjectDataRequest {
                subject: ben(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .records;
        assert_eq!(found.len(), 1, "ben's contact is still there");
        app.tenants()
            .get_tenant(GetTenantRequest {
                name: "tenants/acme".into(),
            })
            .await
            .expect("acme is still there");

        // What each does call goes through, with the same credentials.
        TenantServiceClient::new(client(&app, &tickets, Purpose::Support, "identity"))
            .get_tenant(GetTenantRequest {
                name: "tenants/acme".into(),
            })
            .await
            .expect("tickets checks a ticket's tenant");
        let located =
            SubjectDataServiceClient::new(client(&app, &dsr, Purpose::DsrFulfilment, "identity"))
                .locate_subject_data(LocateSubjectDataRequest {
                    subject: ben(),
                    ..Default::default()
                })
                .await
                .expect("dsr locates a subject")
                .into_inner();
        assert_eq!(located.records.len(), 1);

        // Every refusal is in the trail of the service the call was for.
        let events = app.audit_events().await;
        let denied: Vec<(&str, &str)> = events
            .iter()
            .filter(|e| e.outcome == AuditOutcome::Denied as i32)
            .map(|e| (e.caller.as_str(), e.method.as_str()))
            .collect();
        for expected in [
            (
                "svc:tickets",
                "/custodian.identity.v1.ContactService/DeleteContact",
            ),
            (
                "svc:analytics",
                "/custodian.identity.v1.UserService/ListUsers",
            ),
            (
                "svc:analytics",
                "/custodian.subject.v1.SubjectDataService/EraseSubjectData",
            ),
            (
                "svc:dsr",
                "/custodian.identity.v1.TenantService/DeleteTenant",
            ),
        ] {
            assert!(denied.contains(&expected), "{expected:?} in {denied:?}");
        }
        assert!(
            !events
                .iter()
                .any(|e| e.outcome != AuditOutcome::Denied as i32
                    && (e.action == AuditAction::Erase as i32
                        || e.action == AuditAction::Delete as i32)),
            "nothing was erased or deleted"
        );
        app.stop().await.unwrap();
    }
);

storage_test!(
    a_credential_of_no_service_or_for_purposes_its_service_lacks_is_refused,
    |app: TestApp| async move {
        fixtures::tenant(&app, "acme").await;
        let user = app
            .users()
            .create_user(CreateUserRequest {
                parent: "tenants/acme".into(),
                user: Some(fixtures::user("ann@example.com")),
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        // Signed by the right key, but naming a service the suite lacks.
        let billing = issuer(&app)
            .issue_service("svc:billing", &[Purpose::Administration], HOUR)
            .unwrap();
        let refused =
            TenantServiceClient::new(client(&app, &billing, Purpose::Administration, "identity"))
                .get_tenant(GetTenantRequest {
                    name: "tenants/acme".into(),
                })
                .await
                .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(
            refused.message().contains("names no service of this suite"),
            "{}",
            refused.message()
        );
        assert!(
            !refused.message().contains("billing"),
            "{}",
            refused.message()
        );

        // Feedback's credential, issued by hand with a purpose feedback
        // never calls others for: GetUser is one of feedback's calls and
        // serves support, yet support is refused; its own purpose is not.
        let wide = issuer(&app)
            .issue_service(
                "svc:feedback",
                &[
                    Purpose::ServiceDelivery,
                    Purpose::Administration,
                    Purpose::Support,
                ],
                HOUR,
            )
            .unwrap();
        let get = GetUserRequest {
            name: user.name.clone(),
        };
        let refused = UserServiceClient::new(client(&app, &wide, Purpose::Support, "identity"))
            .get_user(get.clone())
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(
            refused.message().contains("for that purpose"),
            "{}",
            refused.message()
        );
        UserServiceClient::new(client(&app, &wide, Purpose::ServiceDelivery, "identity"))
            .get_user(get)
            .await
            .expect("feedback reads an author's user for service delivery");

        let denied = app
            .audit_events()
            .await
            .into_iter()
            .filter(|e| e.outcome == AuditOutcome::Denied as i32)
            .map(|e| (e.caller, e.method))
            .collect::<Vec<_>>();
        assert!(
            denied.contains(&(
                "svc:billing".to_owned(),
                "/custodian.identity.v1.TenantService/GetTenant".to_owned()
            )),
            "{denied:?}"
        );
        assert!(
            denied.contains(&(
                "svc:feedback".to_owned(),
                "/custodian.identity.v1.UserService/GetUser".to_owned()
            )),
            "{denied:?}"
        );
        app.stop().await.unwrap();
    }
);

/// The whole table: for every method the all-in-one serves and every
/// service's credential, the gate admits the call exactly when the service
/// declares it (and a purpose of its own serves it). A service whose code
/// made a call it does not declare would be refused here, and in every
/// flow test of the suite that makes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_admits_each_service_credential_to_exactly_its_declared_calls() {
    let db = TestDatabase::create(custodian_tests::Backend::Sqlite)
        .await
        .expect("SQLite");
    let keys = test_keys();
    let suite = custodian::suite(
        custodian::Target::All,
        &test_config(&db),
        &keys,
        std::sync::Arc::new(SystemClock),
    )
    .expect("the suite");
    let issuer = TokenIssuer::from_pem(keys.token_signing_key.as_deref().unwrap()).unwrap();
    let mut paths: Vec<String> = suite.gate.paths().cloned().collect();
    paths.sort();
    let mut admitted_anywhere = 0;
    for declared in custodian::peer_calls() {
        // Identity calls no one and is issued no credential; one forged
        // for it, with any purpose, must reach nothing.
        let purposes = if declared.purposes.is_empty() {
            &[Purpose::Administration][..]
        } else {
            declared.purposes
        };
        let token = issuer
            .issue_service(&declared.subject(), purposes, HOUR)
            .unwrap();
        for path in &paths {
            let method = custodian_kit::DECLARATIONS.method(path).unwrap();
            let serves: Vec<Purpose> = method
                .policy
                .purposes()
                .filter_map(Purpose::from_proto)
                .collect();
            // The purpose a peer would name: one both sides hold, else its
            // own first (refused either way).
            let purpose = serves
                .iter()
                .copied()
                .find(|p| purposes.contains(p))
                .or(purposes.first().copied());
            let mut headers = http::HeaderMap::new();
            headers.insert(
                http::header::AUTHORIZATION,
                format!("Bearer {token}").parse().unwrap(),
            );
            if let Some(purpose) = purpose {
                headers.insert("custodian-purpose", purpose.as_str().parse().unwrap());
            }
            let verdict = suite
                .gate
                .admit(path, &headers, &mut http::Extensions::new());
            let expected = declared.calls.contains(&path.as_str());
            match verdict {
                Verdict::Admit => {
                    assert!(expected, "{} was admitted to {path}", declared.service);
                    admitted_anywhere += 1;
                }
                Verdict::Refuse(status) => {
                    assert!(!expected, "{}: {path}: {status:?}", declared.service);
                    assert_eq!(status.code(), Code::PermissionDenied, "{path}");
                }
                // Audited refusals; the trail is not started here.
                Verdict::RefuseAfter(_) => {
                    assert!(!expected, "{} was refused {path}", declared.service);
                }
            }
        }
        assert!(
            declared.calls.iter().all(|c| paths.iter().any(|p| p == c)),
            "{} declares a call the suite does not serve",
            declared.service
        );
    }
    let declared_total: usize = custodian::peer_calls().iter().map(|d| d.calls.len()).sum();
    assert_eq!(admitted_anywhere, declared_total);
    assert!(
        custodian::peer_calls()
            .iter()
            .any(|d| d.service == "identity" && d.calls.is_empty()),
        "identity calls no one"
    );
}

#[test]
fn a_credential_is_issued_only_for_a_service_of_the_suite_with_exactly_its_purposes() {
    let (private, public) = custodian_privacy::token::generate_key_pair();
    let issuer = TokenIssuer::from_pem(&private).unwrap();
    let verifier =
        custodian_privacy::token::TokenVerifier::from_public_pems([public.as_str()]).unwrap();
    for declared in custodian::peer_calls() {
        let issued = custodian::service_credential(&issuer, declared.service, HOUR);
        if declared.calls.is_empty() {
            let err = issued.unwrap_err().to_string();
            assert!(err.contains("needs no service credential"), "{err}");
            continue;
        }
        let claims = verifier.verify(&issued.unwrap()).unwrap();
        assert_eq!(claims.sub, format!("svc:{}", declared.service));
        assert_eq!(claims.kind, custodian_privacy::token::TokenKind::Service);
        let mut wanted = declared.purposes.to_vec();
        wanted.sort();
        assert_eq!(claims.purposes, wanted);
    }
    for unknown in ["billing", "", "svc:dsr", "all"] {
        let err = custodian::service_credential(&issuer, unknown, HOUR)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no service"), "{unknown}: {err}");
        assert!(err.contains("tickets"), "lists the services: {err}");
    }
}
