//! The person records held here (authorized users, contacts, evaluation
//! sign-ups) share one shape: a personal document and a few non-personal
//! attributes. This module maps that shape to and from each resource's proto
//! message, and describes each kind of record once.

use custodian_proto::{
    common::v1::{Controller, DataCategory, PersonName, PostalAddress, controller},
    identity::v1::{Contact, EvaluationSignup, User},
};
use custodian_runtime::time::to_timestamp;
use serde::{Deserialize, Serialize};

/// One kind of person record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    /// Table name.
    pub table: &'static str,
    /// Collection segment of the resource name ("users").
    pub collection: &'static str,
    /// Whether records are held for a tenant (else for the company).
    pub tenant_scoped: bool,
    pub category: DataCategory,
    /// The gRPC service that owns the resource, for subject-data references.
    pub service: &'static str,
    /// Human name for messages ("authorized user").
    pub noun: &'static str,
    /// The request field holding the resource ("contact"): the prefix of
    /// field violations.
    pub message_field: &'static str,
    /// Paths an Update may name.
    pub updatable: &'static [&'static str],
}

pub const USERS: Kind = Kind {
    table: "users",
    collection: "users",
    tenant_scoped: true,
    category: DataCategory::AuthorizedUser,
    service: "custodian.identity.v1.UserService",
    noun: "authorized user",
    message_field: "user",
    updatable: &[
        "person_name",
        "person_name.given_name",
        "person_name.family_name",
        "email",
        "phone",
        "postal_address",
        "role",
        "state",
    ],
};

pub const CONTACTS: Kind = Kind {
    table: "contacts",
    collection: "contacts",
    tenant_scoped: true,
    category: DataCategory::BusinessContact,
    service: "custodian.identity.v1.ContactService",
    noun: "contact",
    message_field: "contact",
    updatable: &[
        "person_name",
        "person_name.given_name",
        "person_name.family_name",
        "email",
        "phone",
        "postal_address",
        "organization",
        "job_title",
        "notes",
    ],
};

pub const SIGNUPS: Kind = Kind {
    table: "evaluation_signups",
    collection: "evaluationSignups",
    tenant_scoped: false,
    category: DataCategory::EvaluationSignup,
    service: "custodian.identity.v1.EvaluationSignupService",
    noun: "evaluation sign-up",
    message_field: "evaluation_signup",
    updatable: &[
        "person_name",
        "person_name.given_name",
        "person_name.family_name",
        "email",
        "phone",
        "company",
        "nature_of_business",
    ],
};

pub const ALL_KINDS: [Kind; 3] = [USERS, CONTACTS, SIGNUPS];

impl Kind {
    /// "tenants/{tenant}/users/{id}" or "evaluationSignups/{id}".
    pub fn resource_name(&self, tenant: &str, id: &str) -> String {
        if self.tenant_scoped {
            format!("tenants/{tenant}/{}/{id}", self.collection)
        } else {
            format!("{}/{id}", self.collection)
        }
    }

    /// The form of this kind's resource names, for error messages.
    pub fn name_pattern(&self) -> String {
        self.resource_name("{tenant}", &format!("{{{}}}", self.message_field))
    }

    /// Splits a resource name into (tenant, id); `None` if it is not one of
    /// this kind's names.
    pub fn parse_name<'a>(&self, name: &'a str) -> Option<(&'a str, &'a str)> {
        let parts: Vec<&str> = name.split('/').collect();
        match (self.tenant_scoped, parts.as_slice()) {
            (true, ["tenants", tenant, collection, id])
                if *collection == self.collection && !tenant.is_empty() && !id.is_empty() =>
            {
                Some((tenant, id))
            }
            (false, [collection, id]) if *collection == self.collection && !id.is_empty() => {
                Some(("", id))
            }
            _ => None,
        }
    }

    pub fn controller(&self, tenant: &str) -> Controller {
        let kind = if self.tenant_scoped {
            controller::Kind::Tenant(format!("tenants/{tenant}"))
        } else {
            controller::Kind::Company(true)
        };
        Controller { kind: Some(kind) }
    }
}

/// Parses "tenants/{tenant}".
pub fn parse_tenant_name(name: &str) -> Option<&str> {
    match name.split('/').collect::<Vec<_>>().as_slice() {
        ["tenants", id] if !id.is_empty() => Some(id),
        _ => None,
    }
}

/// The personal fields of a record. Which ones a kind uses is decided by its
/// proto message; unused ones stay empty and are not serialised.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PersonData {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub given_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub family_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub email: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub phone: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postal_address: Option<Address>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub organization: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub job_title: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub notes: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub company: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub nature_of_business: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Address {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub address_lines: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub locality: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub administrative_area: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub postal_code: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub region_code: String,
}

/// Non-personal attributes; only authorized users have any so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Attrs {
    #[serde(skip_serializing_if = "is_zero")]
    pub role: i32,
    #[serde(skip_serializing_if = "is_zero")]
    pub state: i32,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// A stored person record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub tenant_id: String,
    pub id: String,
    /// The data subject whose key seals this record; also the opaque
    /// subject reference of its audit events.
    pub subject_id: String,
    pub data: PersonData,
    pub attrs: Attrs,
    pub create_time: i64,
    pub update_time: i64,
}

impl From<Address> for PostalAddress {
    fn from(a: Address) -> Self {
        Self {
            address_lines: a.address_lines,
            locality: a.locality,
            administrative_area: a.administrative_area,
            postal_code: a.postal_code,
            region_code: a.region_code,
        }
    }
}

impl From<PostalAddress> for Address {
    fn from(a: PostalAddress) -> Self {
        Self {
            address_lines: a.address_lines,
            locality: a.locality,
            administrative_area: a.administrative_area,
            postal_code: a.postal_code,
            region_code: a.region_code,
        }
    }
}

fn name_parts(name: Option<PersonName>) -> (String, String) {
    name.map(|n| (n.given_name, n.family_name))
        .unwrap_or_default()
}

fn person_name(data: &PersonData) -> Option<PersonName> {
    Some(PersonName {
        given_name: data.given_name.clone(),
        family_name: data.family_name.clone(),
    })
}

// Addresses that hold nothing are treated as absent, so an empty message
// from a client never stores an empty document.
fn address(a: Option<PostalAddress>) -> Option<Address> {
    a.map(Address::from).filter(|a| *a != Address::default())
}

impl PersonData {
    pub fn from_user(u: &User) -> Self {
        let (given_name, family_name) = name_parts(u.person_name.clone());
        Self {
            given_name,
            family_name,
            email: u.email.clone(),
            phone: u.phone.clone(),
            postal_address: address(u.postal_address.clone()),
            ..Self::default()
        }
    }

    pub fn from_contact(c: &Contact) -> Self {
        let (given_name, family_name) = name_parts(c.person_name.clone());
        Self {
            given_name,
            family_name,
            email: c.email.clone(),
            phone: c.phone.clone(),
            postal_address: address(c.postal_address.clone()),
            organization: c.organization.clone(),
            job_title: c.job_title.clone(),
            notes: c.notes.clone(),
            ..Self::default()
        }
    }

    pub fn from_signup(s: &EvaluationSignup) -> Self {
        let (given_name, family_name) = name_parts(s.person_name.clone());
        Self {
            given_name,
            family_name,
            email: s.email.clone(),
            phone: s.phone.clone(),
            company: s.company.clone(),
            nature_of_business: s.nature_of_business.clone(),
            ..Self::default()
        }
    }
}

impl Record {
    pub fn into_user(self) -> User {
        User {
            name: USERS.resource_name(&self.tenant_id, &self.id),
            person_name: person_name(&self.data),
            email: self.data.email,
            phone: self.data.phone,
            postal_address: self.data.postal_address.map(Into::into),
            role: self.attrs.role,
            state: self.attrs.state,
            controller: Some(USERS.controller(&self.tenant_id)),
            data_category: USERS.category as i32,
            create_time: Some(to_timestamp(self.create_time)),
            update_time: Some(to_timestamp(self.update_time)),
        }
    }

    pub fn into_contact(self) -> Contact {
        Contact {
            name: CONTACTS.resource_name(&self.tenant_id, &self.id),
            person_name: person_name(&self.data),
            email: self.data.email,
            phone: self.data.phone,
            postal_address: self.data.postal_address.map(Into::into),
            organization: self.data.organization,
            job_title: self.data.job_title,
            notes: self.data.notes,
            controller: Some(CONTACTS.controller(&self.tenant_id)),
            data_category: CONTACTS.category as i32,
            create_time: Some(to_timestamp(self.create_time)),
            update_time: Some(to_timestamp(self.update_time)),
        }
    }

    pub fn into_signup(self) -> EvaluationSignup {
        EvaluationSignup {
            name: SIGNUPS.resource_name(&self.tenant_id, &self.id),
            person_name: person_name(&self.data),
            email: self.data.email,
            phone: self.data.phone,
            company: self.data.company,
            nature_of_business: self.data.nature_of_business,
            controller: Some(SIGNUPS.controller(&self.tenant_id)),
            data_category: SIGNUPS.category as i32,
            create_time: Some(to_timestamp(self.create_time)),
            update_time: Some(to_timestamp(self.update_time)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names_round_trip() {
        let name = CONTACTS.resource_name("acme", "c1");
        assert_eq!(name, "tenants/acme/contacts/c1");
        assert_eq!(CONTACTS.parse_name(&name), Some(("acme", "c1")));
        assert_eq!(USERS.parse_name(&name), None);
        assert_eq!(SIGNUPS.parse_name("evaluationSignups/s1"), Some(("", "s1")));
        assert_eq!(SIGNUPS.parse_name("evaluationSignups/"), None);
        assert_eq!(CONTACTS.parse_name("tenants//contacts/c1"), None);
        assert_eq!(parse_tenant_name("tenants/acme"), Some("acme"));
        assert_eq!(parse_tenant_name("tenants/acme/users"), None);
    }

    #[test]
    fn empty_fields_are_not_stored() {
        let data = PersonData {
            email: "ann@example.com".into(),
            ..PersonData::default()
        };
        assert_eq!(
            serde_json::to_string(&data).unwrap(),
            r#"{"email":"ann@example.com"}"#
        );
    }
}
