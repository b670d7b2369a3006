//! Which purposes each identity method serves: the one place to read who
//! may call what. The fields each purpose then sees are declared in
//! `custodian_privacy::policy`.

use custodian_privacy::{Method, Purpose as P};
use custodian_proto::audit::v1::AuditAction as A;

macro_rules! method {
    ($name:ident, $service:literal, $method:literal, $action:expr, [$($p:expr),+ $(,)?]) => {
        pub const $name: Method = Method {
            path: concat!("/custodian.identity.v1.", $service, "/", $method),
            action: $action,
            purposes: &[$($p),+],
        };
    };
}

// Tenants are organisations, not people: managing them is administration;
// reading them is part of delivering and supporting the service.
method!(
    CREATE_TENANT,
    "TenantService",
    "CreateTenant",
    A::Create,
    [P::Administration]
);
method!(
    GET_TENANT,
    "TenantService",
    "GetTenant",
    A::Read,
    [P::Administration, P::ServiceDelivery, P::Support]
);
method!(
    LIST_TENANTS,
    "TenantService",
    "ListTenants",
    A::Read,
    [P::Administration, P::ServiceDelivery, P::Support]
);
method!(
    UPDATE_TENANT,
    "TenantService",
    "UpdateTenant",
    A::Update,
    [P::Administration]
);
method!(
    DELETE_TENANT,
    "TenantService",
    "DeleteTenant",
    A::Delete,
    [P::Administration]
);

// Authorized users: the tenant's own administration, and the Platform.
method!(
    CREATE_USER,
    "UserService",
    "CreateUser",
    A::Create,
    [P::ServiceDelivery, P::Administration]
);
method!(
    GET_USER,
    "UserService",
    "GetUser",
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
    "UserService",
    "ListUsers",
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
    "UserService",
    "UpdateUser",
    A::Update,
    [P::ServiceDelivery, P::Administration]
);
method!(
    DELETE_USER,
    "UserService",
    "DeleteUser",
    A::Delete,
    [P::ServiceDelivery, P::Administration]
);

// Contacts: placed by the tenant on the Platform; support may read them.
method!(
    CREATE_CONTACT,
    "ContactService",
    "CreateContact",
    A::Create,
    [P::ServiceDelivery]
);
method!(
    GET_CONTACT,
    "ContactService",
    "GetContact",
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
    "ContactService",
    "ListContacts",
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
    "ContactService",
    "UpdateContact",
    A::Update,
    [P::ServiceDelivery]
);
method!(
    DELETE_CONTACT,
    "ContactService",
    "DeleteContact",
    A::Delete,
    [P::ServiceDelivery]
);

// Evaluation sign-ups: the company's own records.
method!(
    CREATE_SIGNUP,
    "EvaluationSignupService",
    "CreateEvaluationSignup",
    A::Create,
    [P::ServiceDelivery]
);
method!(
    GET_SIGNUP,
    "EvaluationSignupService",
    "GetEvaluationSignup",
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
    "EvaluationSignupService",
    "ListEvaluationSignups",
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
    "EvaluationSignupService",
    "UpdateEvaluationSignup",
    A::Update,
    [P::ServiceDelivery]
);
method!(
    DELETE_SIGNUP,
    "EvaluationSignupService",
    "DeleteEvaluationSignup",
    A::Delete,
    [P::ServiceDelivery]
);

// Data-subject rights: only for fulfilling a request of the person.
pub const LOCATE_SUBJECT: Method = Method {
    path: "/custodian.subject.v1.SubjectDataService/LocateSubjectData",
    action: A::Locate,
    purposes: &[P::DsrFulfilment],
};
pub const EXPORT_SUBJECT: Method = Method {
    path: "/custodian.subject.v1.SubjectDataService/ExportSubjectData",
    action: A::Export,
    purposes: &[P::DsrFulfilment],
};
pub const RECTIFY_SUBJECT: Method = Method {
    path: "/custodian.subject.v1.SubjectDataService/RectifySubjectData",
    action: A::Rectify,
    purposes: &[P::DsrFulfilment],
};
pub const ERASE_SUBJECT: Method = Method {
    path: "/custodian.subject.v1.SubjectDataService/EraseSubjectData",
    action: A::Erase,
    purposes: &[P::DsrFulfilment],
};

// Retention and legal holds: administration of the whole installation.
pub const SWEEP: Method = Method {
    path: "/custodian.retention.v1.RetentionService/SweepExpired",
    action: A::Sweep,
    purposes: &[P::Administration],
};
pub const MANAGE_HOLDS: Method = Method {
    path: "/custodian.retention.v1.RetentionService/LegalHolds",
    action: A::Update,
    purposes: &[P::Administration],
};
