//! Which purposes each identity method serves: the one place to read who
//! may call what. The fields each purpose then sees are declared in
//! `custodian_privacy::policy`.

use custodian_privacy::{Method, Purpose as P};
use custodian_proto::audit::v1::AuditAction as A;

macro_rules! method {
    ($name:ident, $path:literal, $action:expr, [$($p:expr),+ $(,)?]) => {
        pub const $name: Method = Method {
            path: $path,
            action: $action,
            purposes: &[$($p),+],
        };
    };
}

// Tenants are organisations, not people: managing them is administration;
// reading them is part of delivering and supporting the service.
method!(
    CREATE_TENANT,
    "/custodian.identity.v1.TenantService/CreateTenant",
    A::Create,
    [P::Administration]
);
method!(
    GET_TENANT,
    "/custodian.identity.v1.TenantService/GetTenant",
    A::Read,
    [P::Administration, P::ServiceDelivery, P::Support]
);
method!(
    LIST_TENANTS,
    "/custodian.identity.v1.TenantService/ListTenants",
    A::Read,
    [P::Administration, P::ServiceDelivery, P::Support]
);
method!(
    UPDATE_TENANT,
    "/custodian.identity.v1.TenantService/UpdateTenant",
    A::Update,
    [P::Administration]
);
method!(
    DELETE_TENANT,
    "/custodian.identity.v1.TenantService/DeleteTenant",
    A::Delete,
    [P::Administration]
);

// Authorized users: the tenant's own administration, and the Platform.
method!(
    CREATE_USER,
    "/custodian.identity.v1.UserService/CreateUser",
    A::Create,
    [P::ServiceDelivery, P::Administration]
);
method!(
    GET_USER,
    "/custodian.identity.v1.UserService/GetUser",
    A::Read,
    [
        P::ServiceDelivery,
        P::Administration,
        P::Support,
        P::SecurityInvestigation,
        P::ProductAnalytics
    ]
);
method!(
    LIST_USERS,
    "/custodian.identity.v1.UserService/ListUsers",
    A::Read,
    [
        P::ServiceDelivery,
        P::Administration,
        P::Support,
        P::SecurityInvestigation,
        P::ProductAnalytics
    ]
);
method!(
    UPDATE_USER,
    "/custodian.identity.v1.UserService/UpdateUser",
    A::Update,
    [P::ServiceDelivery, P::Administration]
);
method!(
    DELETE_USER,
    "/custodian.identity.v1.UserService/DeleteUser",
    A::Delete,
    [P::ServiceDelivery, P::Administration]
);

// Contacts: placed by the tenant on the Platform; support may read them.
method!(
    CREATE_CONTACT,
    "/custodian.identity.v1.ContactService/CreateContact",
    A::Create,
    [P::ServiceDelivery]
);
method!(
    GET_CONTACT,
    "/custodian.identity.v1.ContactService/GetContact",
    A::Read,
    [
        P::ServiceDelivery,
        P::Support,
        P::SecurityInvestigation,
        P::ProductAnalytics
    ]
);
method!(
    LIST_CONTACTS,
    "/custodian.identity.v1.ContactService/ListContacts",
    A::Read,
    [
        P::ServiceDelivery,
        P::Support,
        P::SecurityInvestigation,
        P::ProductAnalytics
    ]
);
method!(
    UPDATE_CONTACT,
    "/custodian.identity.v1.ContactService/UpdateContact",
    A::Update,
    [P::ServiceDelivery]
);
method!(
    DELETE_CONTACT,
    "/custodian.identity.v1.ContactService/DeleteContact",
    A::Delete,
    [P::ServiceDelivery]
);

// Evaluation sign-ups: the company's own records.
method!(
    CREATE_SIGNUP,
    "/custodian.identity.v1.EvaluationSignupService/CreateEvaluationSignup",
    A::Create,
    [P::ServiceDelivery]
);
method!(
    GET_SIGNUP,
    "/custodian.identity.v1.EvaluationSignupService/GetEvaluationSignup",
    A::Read,
    [
        P::ServiceDelivery,
        P::Support,
        P::SecurityInvestigation,
        P::ProductAnalytics
    ]
);
method!(
    LIST_SIGNUPS,
    "/custodian.identity.v1.EvaluationSignupService/ListEvaluationSignups",
    A::Read,
    [
        P::ServiceDelivery,
        P::Support,
        P::SecurityInvestigation,
        P::ProductAnalytics
    ]
);
method!(
    UPDATE_SIGNUP,
    "/custodian.identity.v1.EvaluationSignupService/UpdateEvaluationSignup",
    A::Update,
    [P::ServiceDelivery]
);
method!(
    DELETE_SIGNUP,
    "/custodian.identity.v1.EvaluationSignupService/DeleteEvaluationSignup",
    A::Delete,
    [P::ServiceDelivery]
);

// Data-subject rights: only for fulfilling a request of the person.
method!(
    LOCATE_SUBJECT,
    "/custodian.subject.v1.SubjectDataService/LocateSubjectData",
    A::Locate,
    [P::DsrFulfilment]
);
method!(
    EXPORT_SUBJECT,
    "/custodian.subject.v1.SubjectDataService/ExportSubjectData",
    A::Export,
    [P::DsrFulfilment]
);
method!(
    RECTIFY_SUBJECT,
    "/custodian.subject.v1.SubjectDataService/RectifySubjectData",
    A::Rectify,
    [P::DsrFulfilment]
);
method!(
    ERASE_SUBJECT,
    "/custodian.subject.v1.SubjectDataService/EraseSubjectData",
    A::Erase,
    [P::DsrFulfilment]
);

// Retention and legal holds: administration of the whole installation.
method!(
    SWEEP,
    "/custodian.retention.v1.RetentionService/SweepExpired",
    A::Sweep,
    [P::Administration]
);
method!(
    MANAGE_HOLDS,
    "/custodian.retention.v1.RetentionService/LegalHolds",
    A::Update,
    [P::Administration]
);
