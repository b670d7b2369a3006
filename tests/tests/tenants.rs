//! TenantService through the generated client, on SQLite and PostgreSQL.

use custodian_proto::identity::v1::{
    CreateContactRequest, CreateTenantRequest, CreateUserRequest, DeleteTenantRequest,
    GetTenantRequest, ListTenantsRequest, Tenant, UpdateTenantRequest,
};
use custodian_tests::{TestApp, fixtures, storage_test, violations};
use prost_types::FieldMask;
use tonic::Code;

fn create(display_name: &str, tenant_id: &str, request_id: &str) -> CreateTenantRequest {
    CreateTenantRequest {
        tenant: Some(Tenant {
            display_name: display_name.into(),
            ..Default::default()
        }),
        tenant_id: tenant_id.into(),
        request_id: request_id.into(),
    }
}

storage_test!(create_get_list_update_delete, |app: TestApp| async move {
    let mut tenants = app.tenants();
    let acme = tenants
        .create_tenant(create("Acme", "acme", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acme.name, "tenants/acme");
    assert_eq!(acme.display_name, "Acme");
    assert!(acme.create_time.is_some());

    let generated = tenants
        .create_tenant(create("Globex", "", ""))
        .await
        .unwrap()
        .into_inner();
    let id = generated.name.strip_prefix("tenants/").unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "generated id is a UUID");

    let got = tenants
        .get_tenant(GetTenantRequest {
            name: "tenants/acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, acme);

    let list = tenants
        .list_tenants(ListTenantsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.tenants.len(), 2);
    assert!(list.next_page_token.is_empty());

    let updated = tenants
        .update_tenant(UpdateTenantRequest {
            tenant: Some(Tenant {
                name: "tenants/acme".into(),
                display_name: "Acme Corp".into(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["display_name".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.display_name, "Acme Corp");
    assert_eq!(updated.create_time, acme.create_time);
    assert_ne!(updated.update_time, acme.update_time);

    tenants
        .delete_tenant(DeleteTenantRequest {
            name: "tenants/acme".into(),
            force: false,
        })
        .await
        .unwrap();
    let err = tenants
        .get_tenant(GetTenantRequest {
            name: "tenants/acme".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(app.count("identity_tenants").await, 1);
    app.stop().await.unwrap();
});

storage_test!(
    bad_input_is_refused_and_nothing_stored,
    |app: TestApp| async move {
        let mut tenants = app.tenants();
        for (request, field) in [
            (create("", "acme", ""), "tenant.display_name"),
            (create("   ", "acme", ""), "tenant.display_name"),
            (create("Acme", "Acme!", ""), "tenant_id"),
            (create("Acme", "ab", ""), "tenant_id"),
            (create("Acme", "acme", "not-a-uuid"), "request_id"),
            (
                create("Card 4111 1111 1111 1111", "acme", ""),
                "tenant.display_name",
            ),
            (create(&"x".repeat(201), "acme", ""), "tenant.display_name"),
        ] {
            let err = tenants.create_tenant(request).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{field}");
            assert!(
                violations(&err).iter().any(|(f, _)| f == field),
                "{field}: {:?}",
                violations(&err)
            );
            assert!(
                !err.message().contains("4111"),
                "the refused value is not echoed"
            );
        }
        assert_eq!(app.count("identity_tenants").await, 0);

        let err = tenants
            .get_tenant(GetTenantRequest {
                name: "acme".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let err = tenants
            .list_tenants(ListTenantsRequest {
                page_size: -1,
                page_token: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let err = tenants
            .list_tenants(ListTenantsRequest {
                page_size: 1,
                page_token: "bogus".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        app.stop().await.unwrap();
    }
);

storage_test!(
    duplicate_ids_and_idempotent_create,
    |app: TestApp| async move {
        let mut tenants = app.tenants();
        tenants
            .create_tenant(create("Acme", "acme", ""))
            .await
            .unwrap();
        let err = tenants
            .create_tenant(create("Other", "acme", ""))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists);

        let key = uuid::Uuid::new_v4().to_string();
        let first = tenants
            .create_tenant(create("Initech", "", &key))
            .await
            .unwrap()
            .into_inner();
        let retry = tenants
            .create_tenant(create("Initech", "", &key))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(first, retry, "a retry returns the first result");
        assert_eq!(app.count("identity_tenants").await, 2);

        let err = tenants
            .create_tenant(create("Different", "", &key))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "a key reused for another request"
        );
        assert_eq!(app.count("identity_tenants").await, 2);
        app.stop().await.unwrap();
    }
);

storage_test!(update_mask_is_checked, |app: TestApp| async move {
    fixtures::tenant(&app, "acme").await;
    let mut tenants = app.tenants();
    let update = |paths: Vec<&str>, display_name: &str| UpdateTenantRequest {
        tenant: Some(Tenant {
            name: "tenants/acme".into(),
            display_name: display_name.into(),
            ..Default::default()
        }),
        update_mask: Some(FieldMask {
            paths: paths.into_iter().map(String::from).collect(),
        }),
    };
    for (request, field) in [
        (update(vec![], "New"), "update_mask"),
        (update(vec!["name"], "New"), "update_mask"),
        (update(vec!["display_name"], ""), "tenant.display_name"),
    ] {
        let err = tenants.update_tenant(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(violations(&err).iter().any(|(f, _)| f == field));
    }
    let unchanged = tenants
        .get_tenant(GetTenantRequest {
            name: "tenants/acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unchanged.display_name, "Tenant acme");

    let mut missing = update(vec!["display_name"], "New");
    missing.tenant.as_mut().unwrap().name = "tenants/nobody".into();
    assert_eq!(
        tenants.update_tenant(missing).await.unwrap_err().code(),
        Code::NotFound
    );
    app.stop().await.unwrap();
});

storage_test!(delete_with_people_needs_force, |app: TestApp| async move {
    fixtures::tenant(&app, "acme").await;
    app.users()
        .create_user(CreateUserRequest {
            parent: "tenants/acme".into(),
            user: Some(fixtures::user("ann@example.com")),
            request_id: String::new(),
        })
        .await
        .unwrap();
    app.contacts()
        .create_contact(CreateContactRequest {
            parent: "tenants/acme".into(),
            contact: Some(fixtures::contact("ben@example.com")),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let mut tenants = app.tenants();
    let err = tenants
        .delete_tenant(DeleteTenantRequest {
            name: "tenants/acme".into(),
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(!err.message().contains("example.com"));
    assert_eq!(
        (
            app.count("identity_tenants").await,
            app.count("identity_users").await,
            app.count("identity_contacts").await
        ),
        (1, 1, 1)
    );

    tenants
        .delete_tenant(DeleteTenantRequest {
            name: "tenants/acme".into(),
            force: true,
        })
        .await
        .unwrap();
    assert_eq!(
        (
            app.count("identity_tenants").await,
            app.count("identity_users").await,
            app.count("identity_contacts").await
        ),
        (0, 0, 0)
    );

    let err = tenants
        .delete_tenant(DeleteTenantRequest {
            name: "tenants/acme".into(),
            force: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    app.stop().await.unwrap();
});

storage_test!(pagination_over_several_pages, |app: TestApp| async move {
    for i in 0..7 {
        fixtures::tenant(&app, &format!("tenant-{i}")).await;
    }
    let mut tenants = app.tenants();
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = tenants
            .list_tenants(ListTenantsRequest {
                page_size: 3,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.tenants.len() <= 3);
        seen.extend(page.tenants.into_iter().map(|t| t.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..7).map(|i| format!("tenants/tenant-{i}")).collect();
    assert_eq!(seen, expected);
    app.stop().await.unwrap();
});
