//! Least privilege, in one table a reviewer can read: for each purpose, which
//! personal fields of each data category a caller may see.
//!
//! Services cut every response down to these fields. A field missing here is
//! never shown for that purpose; a category missing for a purpose shows
//! nothing personal. Field names are those of the resource messages.

use custodian_proto::common::v1::DataCategory;

use crate::token::Purpose;

const USER_ALL: &[&str] = &[
    "person_name",
    "email",
    "phone",
    "postal_address",
    "role",
    "state",
];
const CONTACT_ALL: &[&str] = &[
    "person_name",
    "email",
    "phone",
    "postal_address",
    "organization",
    "job_title",
    "notes",
];
const SIGNUP_ALL: &[&str] = &[
    "person_name",
    "email",
    "phone",
    "company",
    "nature_of_business",
];

/// The personal fields of `category` that `purpose` may see.
pub fn visible_fields(purpose: Purpose, category: DataCategory) -> &'static [&'static str] {
    use DataCategory as C;
    use Purpose as P;
    match (purpose, category) {
        // Running the Platform for the customer, and answering a person's
        // own request about their data, need the whole record.
        (P::ServiceDelivery | P::DsrFulfilment, C::AuthorizedUser) => USER_ALL,
        (P::ServiceDelivery | P::DsrFulfilment, C::BusinessContact) => CONTACT_ALL,
        (P::ServiceDelivery | P::DsrFulfilment, C::EvaluationSignup) => SIGNUP_ALL,

        // Support reaches people, so it sees how to reach them; it does not
        // need where they live or a tenant's private notes.
        (P::Support, C::AuthorizedUser) => &["person_name", "email", "phone", "role", "state"],
        (P::Support, C::BusinessContact) => {
            &["person_name", "email", "phone", "organization", "job_title"]
        }
        (P::Support, C::EvaluationSignup) => &["person_name", "email", "phone", "company"],

        // An investigation needs to know who an account is, not how to
        // phone or visit them.
        (P::SecurityInvestigation, C::AuthorizedUser) => &["person_name", "email", "role", "state"],
        (P::SecurityInvestigation, C::BusinessContact) => &["person_name", "email", "organization"],
        (P::SecurityInvestigation, C::EvaluationSignup) => &["person_name", "email", "company"],

        // Analytics counts and segments; it never sees a name, email, phone
        // or address.
        (P::ProductAnalytics, C::AuthorizedUser) => &["role", "state"],
        (P::ProductAnalytics, C::BusinessContact) => &["organization", "job_title"],
        (P::ProductAnalytics, C::EvaluationSignup) => &["company", "nature_of_business"],

        // Managing a tenant's accounts needs to know who its users are.
        (P::Administration, C::AuthorizedUser) => &["person_name", "email", "role", "state"],

        // Everything else, including the audit purpose, sees nothing personal.
        _ => &[],
    }
}

/// True when `purpose` may see `field` of `category`.
pub fn may_see(purpose: Purpose, category: DataCategory, field: &str) -> bool {
    visible_fields(purpose, category).contains(&field)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analytics_never_sees_contact_points() {
        for category in [
            DataCategory::AuthorizedUser,
            DataCategory::BusinessContact,
            DataCategory::EvaluationSignup,
        ] {
            for field in ["person_name", "email", "phone", "postal_address", "notes"] {
                assert!(
                    !may_see(Purpose::ProductAnalytics, category, field),
                    "{field}"
                );
            }
        }
    }

    #[test]
    fn dsr_fulfilment_sees_whole_records_and_audit_sees_none() {
        assert_eq!(
            visible_fields(Purpose::DsrFulfilment, DataCategory::BusinessContact),
            CONTACT_ALL
        );
        for category in [
            DataCategory::AuthorizedUser,
            DataCategory::BusinessContact,
            DataCategory::EvaluationSignup,
        ] {
            assert!(visible_fields(Purpose::Audit, category).is_empty());
        }
    }
}
