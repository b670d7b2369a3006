//! What a handler knows about the call it serves. The stack has already
//! authenticated the caller, picked the purpose, checked the tenant scope
//! and every value of the request; it leaves an [`Access`] and a
//! [`Deadline`] in the request, and a handler starts from them.

use std::time::Instant;

use custodian_privacy::{Access, Purpose};
use tonic::Status;

/// When the caller stops waiting: the one the runtime's admission stack
/// leaves in the request (its own type, not a look-alike, or no handler
/// would ever find it and no deadline would reach another service).
pub use custodian_runtime::Deadline;

/// One admitted call.
#[derive(Debug, Clone)]
pub struct Call {
    pub access: Access,
    pub deadline: Option<Instant>,
}

/// Metadata naming the fields a purpose withheld, so a caller can tell an
/// empty field from a hidden one.
pub const REDACTED_HEADER: &str = "custodian-redacted-fields";

impl Call {
    /// The call of `request`. Without an [`Access`] the stack did not run:
    /// a wiring bug, refused rather than trusted.
    #[allow(clippy::result_large_err)] // answered as is
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Self, Status> {
        let access = request
            .extensions()
            .get::<Access>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("no authorised caller"))?;
        Ok(Self {
            access,
            deadline: request.extensions().get::<Deadline>().map(|d| d.0),
        })
    }

    pub fn purpose(&self) -> Purpose {
        self.access.purpose
    }

    /// The tenant the caller is limited to, if any.
    pub fn tenant_limit(&self) -> Option<&str> {
        self.access.tenant_limit()
    }

    /// Whether the caller may see records held for `tenant_id` ("" for the
    /// company's own).
    pub fn sees_tenant(&self, tenant_id: &str) -> bool {
        self.access.sees_tenant(tenant_id)
    }

    /// Who made the call: the person behind a service, or the caller.
    pub fn actor(&self) -> &str {
        self.access
            .caller
            .on_behalf_of
            .as_deref()
            .unwrap_or(&self.access.caller.subject)
    }
}

/// Wraps a response, naming withheld fields in metadata.
pub fn respond<T>(message: T, withheld: &[String]) -> tonic::Response<T> {
    let mut response = tonic::Response::new(message);
    if !withheld.is_empty()
        && let Ok(value) = withheld.join(",").parse()
    {
        response.metadata_mut().insert(REDACTED_HEADER, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use custodian_privacy::{Caller, Method};
    use custodian_proto::audit::v1::AuditAction;

    #[test]
    fn a_call_keeps_the_deadline_the_runtime_left_in_the_request() {
        let mut request = tonic::Request::new(());
        request.extensions_mut().insert(Access {
            caller: Caller {
                subject: "ops:a".into(),
                purposes: vec![Purpose::Support],
                tenant: None,
                requested_purpose: None,
                on_behalf_of: None,
                service: false,
            },
            purpose: Purpose::Support,
            method: Method {
                path: "/x.v1.S/Get",
                action: AuditAction::Read,
                purposes: &[Purpose::Support],
            },
        });
        assert_eq!(Call::of(&request).unwrap().deadline, None);
        // What the admission stack inserts, by the runtime's own type.
        let at = Instant::now() + std::time::Duration::from_secs(2);
        request
            .extensions_mut()
            .insert(custodian_runtime::server::Deadline(at));
        assert_eq!(Call::of(&request).unwrap().deadline, Some(at));
    }
}
