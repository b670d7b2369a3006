//! Who is calling, and why: authentication of every call by bearer token,
//! and authorisation of each method by purpose and tenant.
//!
//! The service kit runs [`TokenAuthenticator`] and [`authorize`] in the tower
//! stack before any handler, with each method's purposes read from its
//! declaration in the contracts, so an unauthenticated or unauthorised call
//! never reaches service code.
//!
//! A call between services carries the calling service's own credential (a
//! token of kind `service`) and, in metadata, the original caller
//! ([`ON_BEHALF_OF_HEADER`]), the one purpose of the original call and the
//! original caller's tenant limit ([`TENANT_LIMIT_HEADER`]). Only a service
//! credential may send the first and the last: from any other token they are
//! refused, so nobody can forge whom the audit trail names or escape a limit.

use std::sync::Arc;

use custodian_proto::audit::v1::AuditAction;
use tonic::Status;

use crate::token::{Claims, Purpose, TokenError, TokenKind, TokenVerifier, bearer};

/// Metadata naming the purpose of this call, when the token allows several.
pub const PURPOSE_HEADER: &str = "custodian-purpose";
/// Metadata naming who a service acts for (the original caller). Service
/// credentials only.
pub const ON_BEHALF_OF_HEADER: &str = "custodian-on-behalf-of";
/// Metadata carrying the original caller's tenant limit on a forwarded call.
/// Service credentials only; the callee never widens it.
pub const TENANT_LIMIT_HEADER: &str = "custodian-tenant-limit";

/// The authenticated caller, as its token (and, for a service, the call it
/// forwards) says.
///
/// Only the kernel makes one: [`TokenAuthenticator::caller`] from a
/// verified token, or [`crate::Privacy::internal_access`] for the few
/// actors no token stands behind. Its fields are read through getters and
/// never written from outside, so no crate can claim a purpose or escape a
/// tenant limit in code. What such code would look like does not compile
/// (these examples are doc tests that must fail to build):
///
/// A caller claiming every purpose and no tenant limit, written by hand:
///
/// ```compile_fail,E0451
/// use custodian_privacy::{Caller, Purpose};
/// let _forged = Caller {
///     subject: "ops:mallory".to_owned(),
///     purposes: Purpose::ALL.to_vec(),
///     tenant: None,
///     requested_purpose: None,
///     on_behalf_of: None,
///     service: true,
/// };
/// ```
///
/// No public constructor to reach for instead:
///
/// ```compile_fail,E0599
/// use custodian_privacy::{Caller, Purpose};
/// let _caller = Caller::new("ops:mallory", Purpose::ALL.to_vec(), None);
/// ```
///
/// ```compile_fail,E0599
/// let _default = custodian_privacy::Caller::default();
/// ```
///
/// Reading one is what code outside the kernel can do:
///
/// ```
/// fn who(caller: &custodian_privacy::Caller) -> (&str, Option<&str>) {
///     (caller.subject(), caller.tenant())
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's `sub`.
    pub(crate) subject: String,
    /// Purposes the token allows.
    pub(crate) purposes: Vec<Purpose>,
    /// The one tenant the caller is limited to (an id, not "tenants/x"). On
    /// a forwarded call, the original caller's limit.
    pub(crate) tenant: Option<String>,
    /// The purpose the call says it is made for, if it says.
    pub(crate) requested_purpose: Option<Purpose>,
    /// Who a service says it acts for.
    pub(crate) on_behalf_of: Option<String>,
    /// The token is a service credential.
    pub(crate) service: bool,
}

impl Caller {
    /// The token's `sub`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Purposes the token allows.
    pub fn purposes(&self) -> &[Purpose] {
        &self.purposes
    }

    /// The one tenant the caller is limited to, if any.
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// The purpose the call says it is made for, if it says.
    pub fn requested_purpose(&self) -> Option<Purpose> {
        self.requested_purpose
    }

    /// Who a service says it acts for.
    pub fn on_behalf_of(&self) -> Option<&str> {
        self.on_behalf_of.as_deref()
    }

    /// Whether the token is a service credential.
    pub fn is_service(&self) -> bool {
        self.service
    }
}

/// Verifies bearer tokens and tells who is calling.
///
/// An Ed25519 verification costs tens of microseconds, more than the rest
/// of a typical call, and a client sends the same token for many calls: the
/// claims of tokens already verified are kept (by SHA-256 of the token, so
/// no token is held in memory) until they expire. Only a successfully
/// verified token is ever kept; expiry is checked on every use.
pub struct TokenAuthenticator {
    verifier: TokenVerifier,
    verified: std::sync::Mutex<std::collections::HashMap<[u8; 32], Claims>>,
}

/// Verified tokens kept at most; past this the memory is simply cleared,
/// which costs one verification per token in use.
const VERIFIED_CAPACITY: usize = 10_000;

/// The longest on-behalf-of value kept: it names a caller, not a document.
const MAX_ON_BEHALF_OF: usize = 200;

impl TokenAuthenticator {
    pub fn new(verifier: TokenVerifier) -> Arc<Self> {
        Arc::new(Self {
            verifier,
            verified: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        use sha2::Digest as _;
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if let Ok(mut verified) = self.verified.lock()
            && let Some(claims) = verified.get(&key)
        {
            if now <= claims.exp.saturating_add(crate::token::LEEWAY_SECS) {
                return Ok(claims.clone());
            }
            verified.remove(&key);
            return Err(TokenError::Expired);
        }
        let claims = self.verifier.verify_at(token, now)?;
        if let Ok(mut verified) = self.verified.lock() {
            if verified.len() >= VERIFIED_CAPACITY {
                verified.clear();
            }
            verified.insert(key, claims.clone());
        }
        Ok(claims)
    }

    /// The caller of a request with these headers, or the refusal to answer.
    #[allow(clippy::result_large_err)] // a refusal is answered as is, once
    pub fn caller(&self, headers: &http::HeaderMap) -> Result<Caller, Status> {
        let value = headers
            .get(http::header::AUTHORIZATION)
            .ok_or_else(|| unauthenticated(&TokenError::Missing))?;
        let token = value
            .to_str()
            .ok()
            .and_then(bearer)
            .ok_or_else(|| unauthenticated(&TokenError::Malformed))?;
        let claims = self.verify(token).map_err(|e| unauthenticated(&e))?;
        let requested_purpose = match headers.get(PURPOSE_HEADER) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|s| s.parse::<Purpose>().ok())
                    .ok_or_else(|| {
                        Status::invalid_argument(format!("{PURPOSE_HEADER} is not a known purpose"))
                    })?,
            ),
        };
        let service = claims.kind == TokenKind::Service;
        let forwarded = |name: &str| -> Result<Option<String>, Status> {
            let Some(value) = headers.get(name) else {
                return Ok(None);
            };
            if !service {
                return Err(Status::permission_denied(format!(
                    "{name} may only be sent with a service credential"
                )));
            }
            let value = value
                .to_str()
                .ok()
                .filter(|v| !v.is_empty() && v.len() <= MAX_ON_BEHALF_OF)
                .ok_or_else(|| Status::invalid_argument(format!("{name} is malformed")))?;
            Ok(Some(value.to_owned()))
        };
        let on_behalf_of = forwarded(ON_BEHALF_OF_HEADER)?;
        let forwarded_limit = forwarded(TENANT_LIMIT_HEADER)?;
        // A forwarded limit narrows the credential's own; two different
        // tenants leave nothing to see, which is refused outright.
        let tenant = match (claims.tenant, forwarded_limit) {
            (Some(own), Some(limit)) if own != limit => {
                return Err(Status::permission_denied(
                    "the forwarded tenant limit contradicts the credential's own",
                ));
            }
            (own, limit) => limit.or(own),
        };
        if service && requested_purpose.is_none() {
            // A service always says which of its purposes it acts for, so
            // it never acts with more than the call it serves.
            return Err(Status::invalid_argument(format!(
                "a service credential must name the purpose in {PURPOSE_HEADER}"
            )));
        }
        Ok(Caller {
            subject: claims.sub,
            purposes: claims.purposes,
            tenant,
            requested_purpose,
            on_behalf_of,
            service,
        })
    }
}

fn unauthenticated(err: &TokenError) -> Status {
    // Reasons are the token error's fixed texts; the token itself never.
    Status::unauthenticated(format!("bearer token refused: {err}"))
}

/// A method that touches personal data: what it does and which purposes it
/// serves, in order of preference. Read from the method's declaration.
#[derive(Debug, Clone, Copy)]
pub struct Method {
    /// gRPC path, "/package.Service/Method".
    pub path: &'static str,
    pub action: AuditAction,
    pub purposes: &'static [Purpose],
}

/// An authorised call: who, for which purpose, through which method.
///
/// Made only by [`authorize`] from a [`Caller`] the kernel verified, or by
/// [`crate::Privacy::internal_access`]; read through getters. The one
/// change allowed from outside is [`Access::narrow`], which only ever
/// takes away. These do not compile (doc tests that must fail to build):
///
/// An access for any purpose, built around a caller from anywhere:
///
/// ```compile_fail,E0451
/// use custodian_privacy::{Access, Caller, Method, Purpose};
/// use custodian_proto::audit::v1::AuditAction;
/// fn forge(caller: Caller) -> Access {
///     Access {
///         caller,
///         purpose: Purpose::DsrFulfilment,
///         method: Method {
///             path: "/custodian.subject.v1.SubjectDataService/EraseSubjectData",
///             action: AuditAction::Erase,
///             purposes: &[Purpose::DsrFulfilment],
///         },
///     }
/// }
/// ```
///
/// A verified access, widened after the fact: its tenant limit dropped:
///
/// ```compile_fail,E0616
/// fn widen(access: &mut custodian_privacy::Access) {
///     access.caller.tenant = None;
/// }
/// ```
///
/// or its purpose changed:
///
/// ```compile_fail,E0616
/// fn widen(access: &mut custodian_privacy::Access) {
///     access.purpose = custodian_privacy::Purpose::DsrFulfilment;
/// }
/// ```
///
/// ```compile_fail,E0599
/// let _access = custodian_privacy::Access::new();
/// ```
///
/// Reading one compiles:
///
/// ```
/// fn why(access: &custodian_privacy::Access) -> custodian_privacy::Purpose {
///     access.purpose()
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Access {
    pub(crate) caller: Caller,
    pub(crate) purpose: Purpose,
    pub(crate) method: Method,
}

/// Why a call was refused before it did anything.
#[derive(Debug)]
pub enum Refusal {
    /// No caller in the request: the authenticator did not run. A wiring
    /// bug, answered as UNAUTHENTICATED rather than trusted.
    NoCaller,
    /// The token allows none of the method's purposes, or the requested one
    /// is not allowed.
    Purpose { caller: Caller },
}

/// Picks the purpose of a call: the one it names (which both the token and
/// the method must allow), else the first of the method's purposes the
/// token allows.
pub fn authorize(caller: Option<&Caller>, method: Method) -> Result<Access, Refusal> {
    let caller = caller.ok_or(Refusal::NoCaller)?.clone();
    let allowed = |p: &Purpose| caller.purposes.contains(p) && method.purposes.contains(p);
    let purpose = match caller.requested_purpose {
        Some(p) if allowed(&p) => Some(p),
        Some(_) => None,
        None => method
            .purposes
            .iter()
            .copied()
            .find(|p| caller.purposes.contains(p)),
    };
    match purpose {
        Some(purpose) => Ok(Access {
            caller,
            purpose,
            method,
        }),
        None => Err(Refusal::Purpose { caller }),
    }
}

impl Access {
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// The purpose the call was authorised for.
    pub fn purpose(&self) -> Purpose {
        self.purpose
    }

    /// The method it was authorised through.
    pub fn method(&self) -> Method {
        self.method
    }

    /// Limits the access to records held for `tenant_id` ("" for the
    /// company's own); whether it did. Refused (false, nothing changed)
    /// when the caller is limited to another tenant already: a limit is
    /// only ever narrowed.
    #[must_use]
    pub fn narrow(&mut self, tenant_id: &str) -> bool {
        match &self.caller.tenant {
            Some(own) if own != tenant_id => false,
            _ => {
                self.caller.tenant = Some(tenant_id.to_owned());
                true
            }
        }
    }

    /// Whether the caller may see a resource held for `tenant_id` ("" for
    /// the company's own records). A caller limited to one tenant sees only
    /// that tenant's records.
    pub fn sees_tenant(&self, tenant_id: &str) -> bool {
        match &self.caller.tenant {
            None => true,
            Some(own) => own == tenant_id,
        }
    }

    /// The tenant the caller is limited to, if any.
    pub fn tenant_limit(&self) -> Option<&str> {
        self.caller.tenant.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET: Method = Method {
        path: "/x.v1.S/Get",
        action: AuditAction::Read,
        purposes: &[
            Purpose::ServiceDelivery,
            Purpose::Support,
            Purpose::ProductAnalytics,
        ],
    };

    fn caller(purposes: &[Purpose], requested: Option<Purpose>) -> Caller {
        Caller {
            subject: "ops:test".into(),
            purposes: purposes.to_vec(),
            tenant: None,
            requested_purpose: requested,
            on_behalf_of: None,
            service: false,
        }
    }

    fn authenticator() -> (Arc<TokenAuthenticator>, crate::token::TokenIssuer) {
        let (private, public) = crate::token::generate_key_pair();
        let verifier = TokenVerifier::from_public_pems([public.as_str()]).unwrap();
        (
            TokenAuthenticator::new(verifier),
            crate::token::TokenIssuer::from_pem(&private).unwrap(),
        )
    }

    fn headers(token: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        headers
    }

    #[test]
    fn verified_tokens_are_remembered_until_they_expire() {
        let (auth, issuer) = authenticator();
        let token = issuer
            .issue(
                "ops:a",
                &[Purpose::Support],
                Some("acme"),
                std::time::Duration::from_secs(60),
            )
            .unwrap();
        for _ in 0..2 {
            let caller = auth.caller(&headers(&token)).unwrap();
            assert_eq!(
                (caller.subject.as_str(), caller.tenant.as_deref()),
                ("ops:a", Some("acme"))
            );
        }
        assert_eq!(auth.verified.lock().unwrap().len(), 1);

        // A refused token is never remembered.
        assert!(auth.caller(&headers("a.b.c")).is_err());
        assert_eq!(auth.verified.lock().unwrap().len(), 1);

        // A remembered token past its expiry is refused, and forgotten.
        for claims in auth.verified.lock().unwrap().values_mut() {
            claims.exp = 0;
        }
        let err = auth.caller(&headers(&token)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(auth.verified.lock().unwrap().is_empty());
    }

    fn with(token: &str, extra: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut h = headers(token);
        for (k, v) in extra {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_service_credentials_may_forward_a_caller_or_a_limit() {
        let (auth, issuer) = authenticator();
        let hour = std::time::Duration::from_secs(3600);
        let person = issuer
            .issue("ops:mallory", &[Purpose::Support], None, hour)
            .unwrap();
        for header in [ON_BEHALF_OF_HEADER, TENANT_LIMIT_HEADER] {
            let err = auth
                .caller(&with(&person, &[(header, "acme")]))
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::PermissionDenied, "{header}");
        }
        let service = issuer
            .issue_service("svc:dsr", &[Purpose::DsrFulfilment], hour)
            .unwrap();
        let caller = auth
            .caller(&with(
                &service,
                &[
                    (ON_BEHALF_OF_HEADER, "ops:alice"),
                    (TENANT_LIMIT_HEADER, "acme"),
                    (PURPOSE_HEADER, "dsr_fulfilment"),
                ],
            ))
            .unwrap();
        assert!(caller.service);
        assert_eq!(caller.on_behalf_of.as_deref(), Some("ops:alice"));
        assert_eq!(caller.tenant.as_deref(), Some("acme"));
        // A service must say which purpose it acts for.
        let err = auth.caller(&headers(&service)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn picks_the_first_allowed_purpose_or_the_requested_one() {
        let both = caller(&[Purpose::ProductAnalytics, Purpose::Support], None);
        assert_eq!(
            authorize(Some(&both), GET).unwrap().purpose,
            Purpose::Support
        );
        let asked = caller(
            &[Purpose::ProductAnalytics, Purpose::Support],
            Some(Purpose::ProductAnalytics),
        );
        assert_eq!(
            authorize(Some(&asked), GET).unwrap().purpose,
            Purpose::ProductAnalytics
        );
    }

    #[test]
    fn refuses_purposes_the_token_or_the_method_does_not_allow() {
        assert!(matches!(
            authorize(Some(&caller(&[Purpose::Audit], None)), GET),
            Err(Refusal::Purpose { .. })
        ));
        let not_in_token = caller(&[Purpose::Support], Some(Purpose::ServiceDelivery));
        assert!(authorize(Some(&not_in_token), GET).is_err());
        let not_for_method = caller(&[Purpose::Audit, Purpose::Support], Some(Purpose::Audit));
        assert!(authorize(Some(&not_for_method), GET).is_err());
        assert!(matches!(authorize(None, GET), Err(Refusal::NoCaller)));
    }
}

/// Credentials for a call one service makes to another for its caller: the
/// calling service's own credential, the one purpose the original call was
/// made for, who it acts for, the original caller's tenant limit, what is
/// left of its deadline (as `grpc-timeout`, never more than the calling
/// service's own limit: see [`Forward::within`]) and the trace context. The
/// callee authorises the service for that purpose only, audits the person
/// behind it, keeps the caller's tenant limit and joins the same trace: a
/// forwarded call can never do more than the call it serves.
#[derive(Clone)]
pub struct Forward {
    authorization: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    purpose: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    on_behalf_of: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    tenant_limit: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    deadline: Option<std::time::Instant>,
    /// The longest the calling service waits for any answer.
    limit: Option<std::time::Duration>,
}

impl Forward {
    /// For a call made while serving `access`, which must end by `deadline`.
    #[allow(clippy::result_large_err)] // answered as is
    pub fn new(
        credential: &str,
        access: &Access,
        deadline: Option<std::time::Instant>,
    ) -> Result<Self, Status> {
        let invalid = |_| Status::internal("credentials not representable as metadata");
        let origin = access
            .caller
            .on_behalf_of
            .as_deref()
            .unwrap_or(&access.caller.subject);
        Ok(Self {
            authorization: format!("Bearer {credential}").parse().map_err(invalid)?,
            purpose: access.purpose.as_str().parse().map_err(invalid)?,
            on_behalf_of: Some(origin.parse().map_err(invalid)?),
            tenant_limit: access
                .caller
                .tenant
                .as_deref()
                .map(|t| t.parse())
                .transpose()
                .map_err(invalid)?,
            deadline,
            limit: None,
        })
    }

    /// For work a service carries out later for someone recorded with it
    /// (a data-subject request's steps): no live call behind it, so no
    /// deadline or tenant limit to carry, but the callee audits who it is
    /// done for.
    #[allow(clippy::result_large_err)] // answered as is
    pub fn acting(credential: &str, purpose: Purpose, on_behalf_of: &str) -> Result<Self, Status> {
        let invalid = |_| Status::internal("credentials not representable as metadata");
        let mut forward = Self::own(credential, purpose)?;
        forward.on_behalf_of = Some(on_behalf_of.parse().map_err(invalid)?);
        Ok(forward)
    }

    /// For a service's own work (a scheduled sweep): no caller behind it.
    #[allow(clippy::result_large_err)] // answered as is
    pub fn own(credential: &str, purpose: Purpose) -> Result<Self, Status> {
        let invalid = |_| Status::internal("credentials not representable as metadata");
        Ok(Self {
            authorization: format!("Bearer {credential}").parse().map_err(invalid)?,
            purpose: purpose.as_str().parse().map_err(invalid)?,
            on_behalf_of: None,
            tenant_limit: None,
            deadline: None,
            limit: None,
        })
    }

    /// Waits no longer than `limit` for the answer, whatever the caller's
    /// deadline: a caller who waits long (or work that has no caller) must
    /// not hold a call to a peer that does not answer.
    pub fn within(mut self, limit: std::time::Duration) -> Self {
        self.limit = Some(limit);
        self
    }

    /// How long the call may take from now: the smaller of what is left of
    /// the caller's deadline and the limit, if either is set;
    /// DEADLINE_EXCEEDED when the caller's deadline has passed already.
    #[allow(clippy::result_large_err)] // answered as is
    pub fn timeout(&self) -> Result<Option<std::time::Duration>, Status> {
        let left = match self.deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Err(Status::deadline_exceeded(
                        "the deadline passed before the call to another service",
                    ));
                }
                Some(left)
            }
            None => None,
        };
        Ok(match (left, self.limit) {
            (Some(left), Some(limit)) => Some(left.min(limit)),
            (left, limit) => left.or(limit),
        })
    }
}

impl tonic::service::Interceptor for Forward {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        // The callee stops when the original caller (or this service)
        // stops waiting.
        if let Some(timeout) = self.timeout()? {
            request.set_timeout(timeout);
        }
        let metadata = request.metadata_mut();
        metadata.insert("authorization", self.authorization.clone());
        metadata.insert(PURPOSE_HEADER, self.purpose.clone());
        if let Some(origin) = &self.on_behalf_of {
            metadata.insert(ON_BEHALF_OF_HEADER, origin.clone());
        }
        if let Some(limit) = &self.tenant_limit {
            metadata.insert(TENANT_LIMIT_HEADER, limit.clone());
        }
        custodian_runtime::telemetry::inject_trace_context(request)
    }
}
