//! What a handler knows about the call it serves. The stack has already
//! authenticated the caller, picked the purpose, checked the tenant scope
//! and every value of the request; it leaves an [`Access`] and a
//! [`Deadline`] in the request, and a handler starts from them.

use std::time::Instant;

use custodian_privacy::{Access, Privacy, Purpose, audit::Event};
use custodian_proto::audit::v1::AuditOutcome;
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
    /// The data-subject request the call serves ("requests/{request}" of
    /// the dsr service), named in the detail of every audit event the call
    /// writes, so the trail of one request can be found again.
    pub request: Option<String>,
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
        Ok(Self::new(
            access,
            request.extensions().get::<Deadline>().map(|d| d.0),
        ))
    }

    /// A call made by `access`, serving no data-subject request.
    pub fn new(access: Access, deadline: Option<Instant>) -> Self {
        Self {
            access,
            deadline,
            request: None,
        }
    }

    pub fn purpose(&self) -> Purpose {
        self.access.purpose()
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

    /// Limits the call to the records held for `tenant_id` ("" for the
    /// company's own), as a caller asks to see less than it may. A caller
    /// already limited to another tenant would see more: refused, and the
    /// call is left as it was.
    ///
    /// The limit is the caller's own tenant limit, narrowed, so every check
    /// that honours it ([`Self::sees_tenant`], [`Self::tenant_limit`], the
    /// store's queries) honours the narrowing too: `Some("")` sees only
    /// records with tenant id "", the company's. A call forwarded with it
    /// carries a tenant's limit; the company's, "", is refused as malformed
    /// by the callee, so a forward fails rather than widens.
    #[allow(clippy::result_large_err)] // answered as is
    pub fn narrow(&mut self, tenant_id: &str) -> Result<(), Status> {
        if self.access.narrow(tenant_id) {
            Ok(())
        } else {
            Err(Status::permission_denied(
                "the caller is limited to one tenant; it cannot act on records of another \
                 controller",
            ))
        }
    }

    /// An audit event of this call on one resource, naming the
    /// data-subject request it serves.
    pub fn event(
        &self,
        privacy: &Privacy,
        resource: &str,
        subject_ref: &str,
        fields: &[&str],
        outcome: AuditOutcome,
    ) -> Event {
        Event {
            detail: self.detail(""),
            ..privacy.event(&self.access, resource, subject_ref, fields, outcome)
        }
    }

    /// An audit event's detail: `what`, then the data-subject request the
    /// call serves, if any.
    pub fn detail(&self, what: &str) -> String {
        match (&self.request, what.is_empty()) {
            (None, _) => what.to_owned(),
            (Some(request), true) => format!("for {request}"),
            (Some(request), false) => format!("{what}; for {request}"),
        }
    }

    /// Who made the call: the person behind a service, or the caller.
    pub fn actor(&self) -> &str {
        let caller = self.access.caller();
        caller.on_behalf_of().unwrap_or(caller.subject())
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
    use custodian_privacy::Method;
    use custodian_proto::audit::v1::AuditAction;

    /// An access as the stack makes it: a real token, verified, then
    /// authorised for the method (no other way to make one exists).
    fn access(tenant: Option<&str>) -> Access {
        use custodian_privacy::token::{TokenIssuer, TokenVerifier, generate_key_pair};
        let (private, public) = generate_key_pair();
        let token = TokenIssuer::from_pem(&private)
            .unwrap()
            .issue(
                "ops:a",
                &[Purpose::Support],
                tenant,
                std::time::Duration::from_secs(60),
            )
            .unwrap();
        let authenticator = custodian_privacy::TokenAuthenticator::new(
            TokenVerifier::from_public_pems([public.as_str()]).unwrap(),
        );
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        let caller = authenticator.caller(&headers).unwrap();
        custodian_privacy::access::authorize(
            Some(&caller),
            Method {
                path: "/x.v1.S/Get",
                action: AuditAction::Read,
                purposes: &[Purpose::Support],
            },
        )
        .unwrap()
    }

    #[test]
    fn a_call_is_narrowed_never_widened() {
        let mut company = Call::new(access(None), None);
        company.narrow("").unwrap();
        assert!(company.sees_tenant("") && !company.sees_tenant("acme"));
        assert_eq!(company.tenant_limit(), Some(""));

        let mut acme = Call::new(access(None), None);
        acme.narrow("acme").unwrap();
        assert!(acme.sees_tenant("acme") && !acme.sees_tenant(""));

        let mut limited = Call::new(access(Some("acme")), None);
        limited.narrow("acme").unwrap();
        for other in ["", "globex"] {
            let err = limited.narrow(other).unwrap_err();
            assert_eq!(err.code(), tonic::Code::PermissionDenied);
            assert_eq!(limited.tenant_limit(), Some("acme"), "left as it was");
        }
    }

    #[test]
    fn events_name_the_request_the_call_serves() {
        let mut call = Call::new(access(None), None);
        assert_eq!(call.detail(""), "");
        assert_eq!(call.detail("2 usage events"), "2 usage events");
        call.request = Some("requests/0190f3c4-5b6a-7c8d-9e0f-1a2b3c4d5e6f".into());
        assert_eq!(
            call.detail(""),
            "for requests/0190f3c4-5b6a-7c8d-9e0f-1a2b3c4d5e6f"
        );
        assert_eq!(
            call.detail("2 usage events"),
            "2 usage events; for requests/0190f3c4-5b6a-7c8d-9e0f-1a2b3c4d5e6f"
        );
    }

    #[test]
    fn a_call_keeps_the_deadline_the_runtime_left_in_the_request() {
        let mut request = tonic::Request::new(());
        request.extensions_mut().insert(access(None));
        assert_eq!(Call::of(&request).unwrap().deadline, None);
        // What the admission stack inserts, by the runtime's own type.
        let at = Instant::now() + std::time::Duration::from_secs(2);
        request
            .extensions_mut()
            .insert(custodian_runtime::server::Deadline(at));
        assert_eq!(Call::of(&request).unwrap().deadline, Some(at));
    }
}
